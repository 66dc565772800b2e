"""export: EncoderClassifier round trip equals the in-training embedding; bad architectures and folders fail."""

import filecmp
import json
import os

import pytest
import torch

from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from speechbrain.processing.features import InputNormalization
from speechbrain_ssrl.export import ExportError, export_encoder, load_embed_fn, template_path, verify_export

torch.set_num_threads(1)
os.environ["HF_HUB_OFFLINE"] = "1"

SMALL = dict(input_size=80, channels=[32, 32, 32, 32, 96], lin_neurons=16, attention_channels=16, se_channels=16)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _trained_like(seed=0, **kw):
    """A small ECAPA with non-trivial weights and BN running statistics (as after training)."""
    torch.manual_seed(seed)
    m = ECAPA_TDNN(**{**SMALL, **kw})
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
        m.train()
        for _ in range(3):
            m(torch.randn(4, 120, 80) * 2 + 1)
    return m.eval()


def _audio():
    g = torch.Generator().manual_seed(1)
    t = torch.arange(24000) / 16000
    wavs = 0.1 * torch.randn(3, 24000, generator=g) + 0.3 * torch.sin(2 * torch.pi * 220 * t)
    wavs[1, 18000:] = 0
    wavs[2, 12000:] = 0
    return wavs, torch.tensor([1.0, 0.75, 0.5])


@torch.no_grad()
def _training_embedding(model, wavs, lens):
    feats = Fbank(n_mels=80, left_frames=0, right_frames=0, deltas=False)(wavs)
    feats = InputNormalization(norm_type="sentence", std_norm=False)(feats, lens)
    return model.eval()(feats, lens)  # (B, 1, D)


def _encoder_classifier_embedding(folder, savedir, wavs, lens):
    from speechbrain.inference.speaker import EncoderClassifier

    clf = EncoderClassifier.from_hparams(source=os.path.abspath(folder), savedir=str(savedir))
    return clf.encode_batch(wavs, lens)


def test_template_shipped_with_package():
    assert filecmp.cmp(template_path(), os.path.join(REPO, "hparams", "inference_ecapa.yaml"), shallow=False)


def test_round_trip_module(tmp_path):
    teacher = _trained_like()
    out = export_encoder(teacher, tmp_path / "pretrained")
    assert sorted(os.listdir(out)) == ["ecapa.json", "embedding_model.ckpt", "export_info.json", "hyperparams.yaml"]
    wavs, lens = _audio()
    ref = _training_embedding(teacher, wavs, lens)
    got = _encoder_classifier_embedding(out, tmp_path / "cache", wavs, lens)
    assert got.shape == ref.shape == (3, 1, 16)
    assert float((got - ref).abs().max()) < 1e-5
    # the evaluate.py loader gives the same embedding
    fn, _ = load_embed_fn(out)
    assert float((fn(wavs, lens) - ref[:, 0]).abs().max()) < 1e-5


def test_round_trip_checkpoint_folder_prefers_teacher(tmp_path):
    teacher, student = _trained_like(0), _trained_like(1)
    ckpt = tmp_path / "run" / "save" / "CKPT+2024-01-01+00-00-00+00"
    ckpt.mkdir(parents=True)
    torch.save(student.state_dict(), ckpt / "embedding_model.ckpt")
    torch.save(torch.nn.ModuleDict({"encoder": teacher}).state_dict(), ckpt / "teacher.ckpt")  # prefixed keys
    (tmp_path / "run" / "ecapa.json").write_text(json.dumps(SMALL))
    wavs, lens = _audio()
    ref = _training_embedding(teacher, wavs, lens)
    for source in (ckpt, tmp_path / "run"):  # the CKPT folder, or the training output folder (newest CKPT)
        out = export_encoder(source, tmp_path / "pretrained", overwrite=True)
        got = _encoder_classifier_embedding(out, tmp_path / f"cache_{source.name}", wavs, lens)
        assert float((got - ref).abs().max()) < 1e-5


def test_architecture_from_training_hyperparams(tmp_path):
    """A training output folder without ecapa.json: the architecture comes from its hyperparams.yaml."""
    teacher = _trained_like(dilations=[1, 2, 2, 2, 1])
    run = tmp_path / "run"
    ckpt = run / "save" / "CKPT+x"
    ckpt.mkdir(parents=True)
    torch.save(teacher.state_dict(), ckpt / "teacher_model.ckpt")
    (run / "hyperparams.yaml").write_text(
        "n_mels: 80\nseed: 3\n"
        "embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN\n"
        "    input_size: 80\n    channels: [32, 32, 32, 32, 96]\n    lin_neurons: 16\n"
        "    attention_channels: 16\n    se_channels: 16\n    dilations: [1, 2, 2, 2, 1]\n"
        "teacher_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN\n"
        "    input_size: !ref <n_mels>\n    channels: [32, 32, 32, 32, 96]\n    lin_neurons: 16\n"
        "    attention_channels: 16\n    se_channels: 16\n    dilations: [1, 2, 2, 2, 1]\n"
        "opt_class: !name:torch.optim.Adam\n"
    )
    out = export_encoder(run, tmp_path / "pretrained")
    wavs, lens = _audio()
    got = _encoder_classifier_embedding(out, tmp_path / "cache", wavs, lens)
    assert float((got - _training_embedding(teacher, wavs, lens)).abs().max()) < 1e-5


def test_wrong_architecture(tmp_path):
    ckpt = tmp_path / "other.ckpt"
    torch.save(ECAPA_TDNN(**{**SMALL, "channels": [64, 64, 64, 64, 192]}).state_dict(), ckpt)
    with pytest.raises(ExportError, match="other.ckpt.*another architecture"):
        export_encoder(ckpt, tmp_path / "a", ecapa_kwargs=SMALL)
    torch.save(torch.nn.Sequential(torch.nn.Linear(80, 16)).state_dict(), ckpt)
    with pytest.raises(ExportError, match=r"other.ckpt.*missing key.*unexpected key.*'0.weight'"):
        export_encoder(ckpt, tmp_path / "b", ecapa_kwargs=SMALL)
    with pytest.raises(ExportError, match="no architecture"):
        export_encoder(ckpt, tmp_path / "c")  # no ecapa_kwargs and nothing to read them from
    # kwargs that load (same shapes) but compute something else than the given module
    with pytest.raises(ExportError, match="does not compute the same embedding"):
        export_encoder(_trained_like(), tmp_path / "d", ecapa_kwargs={**SMALL, "dilations": [1, 1, 1, 1, 1]})
    with pytest.raises(ExportError, match="n_mels"):
        export_encoder(_trained_like(), tmp_path / "e", n_mels=40)
    assert not any((tmp_path / x).exists() and os.listdir(tmp_path / x) for x in "abcde")


def test_existing_folder(tmp_path):
    m = _trained_like()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists with other content"):
        export_encoder(m, foreign)
    with pytest.raises(ExportError, match="not from an export"):
        export_encoder(m, foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"

    out = export_encoder(m, tmp_path / "pre", extra_files=[str(foreign / "notes.txt")])
    assert (tmp_path / "pre" / "notes.txt").exists()
    with pytest.raises(ExportError, match="previous export"):
        export_encoder(m, out)
    export_encoder(_trained_like(1), out, overwrite=True)  # a previous export (with its extras) is replaced
    assert not (tmp_path / "pre" / "notes.txt").exists()
    verify_export(out)

    # a corrupted export (weights of another size) fails the key check loudly
    torch.save(ECAPA_TDNN(**{**SMALL, "lin_neurons": 8}).state_dict(), os.path.join(out, "embedding_model.ckpt"))
    with pytest.raises(ExportError, match="embedding_model.ckpt"):
        verify_export(out)
