"""export: EncoderClassifier round trip equals the in-training embedding; bad architectures and folders fail."""

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
    # one copy (#14): the package's hparams/inference_ecapa.yaml (package data), no second one at the root
    pkg = os.path.join(REPO, "speechbrain_ssrl", "hparams", "inference_ecapa.yaml")
    assert os.path.samefile(template_path(), pkg)
    assert not os.path.exists(os.path.join(REPO, "hparams", "inference_ecapa.yaml"))


def test_round_trip_module(tmp_path):
    teacher = _trained_like()
    out = export_encoder(teacher, tmp_path / "pretrained")
    assert sorted(os.listdir(out)) == [
        "ecapa.json", "embedding_model.ckpt", "export_info.json", "hyperparams.yaml", "mean_var_norm_emb.ckpt"
    ]
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


# --------------------------------------------------------------------------------------------------
# what EncoderClassifier / SpeakerRecognition users call (issue 14): a round trip through each call
# --------------------------------------------------------------------------------------------------
@pytest.fixture()
def no_download(monkeypatch):
    """Any download SpeechBrain would start (HuggingFace or URL) fails the test."""
    from speechbrain.utils import fetching

    def refuse(*a, **k):
        raise AssertionError(f"a download was attempted: {a} {k}")

    monkeypatch.setattr(fetching, "download_file_hf", refuse)
    monkeypatch.setattr(fetching, "download_file", refuse)


def _write_wavs(folder):
    import soundfile as sf

    wavs, _ = _audio()
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, n in enumerate((24000, 18000)):
        paths.append(os.path.join(folder, f"utt{i}.wav"))
        sf.write(paths[-1], wavs[i, :n].numpy(), 16000, subtype="FLOAT")
    stereo = os.path.join(folder, "stereo_8k.wav")
    x = wavs[0, ::2].numpy()
    sf.write(stereo, torch.stack([torch.from_numpy(x), 0.5 * torch.from_numpy(x)], 1).numpy(), 8000, subtype="FLOAT")
    return paths, stereo


def test_speechbrain_interfaces_round_trip(tmp_path, monkeypatch, no_download):
    """encode_batch(normalize False / True), load_audio, encode_file, verify_files, classify_*: an export of
    a small random model loaded from a relative local folder, SpeechBrain's classes and ours."""
    from speechbrain.inference.speaker import EncoderClassifier, SpeakerRecognition

    from speechbrain_ssrl.inference import SSRLSpeakerEncoder, load_pretrained

    teacher = _trained_like()
    export_encoder(teacher, tmp_path / "models" / "pretrained")
    (utt0, utt1), stereo = _write_wavs(tmp_path / "audio")
    wavs, lens = _audio()
    ref = _training_embedding(teacher, wavs, lens)
    monkeypatch.chdir(tmp_path)

    # SpeechBrain's own class, a relative source that exists from the current directory
    enc = EncoderClassifier.from_hparams(source="models/pretrained")
    assert float((enc.encode_batch(wavs, lens) - ref).abs().max()) < 1e-5
    assert float((enc.encode_batch(wavs, lens, normalize=True) - ref).abs().max()) < 1e-5  # identity statistics
    wav0 = enc.load_audio("audio/utt0.wav")
    assert wav0.shape == (24000,) and float((wav0 - wavs[0]).abs().max()) < 1e-6
    mixed = enc.load_audio("audio/stereo_8k.wav")  # 8 kHz stereo -> 16 kHz mono
    assert mixed.dim() == 1 and abs(mixed.shape[0] - 24000) <= 2
    e0 = enc.encode_batch(wav0.unsqueeze(0))[0, 0]
    with pytest.raises(AttributeError, match="classifier"):  # documented: no speaker classifier
        enc.classify_batch(wavs, lens)

    # SpeakerRecognition.verify_files: the cosine of the two embeddings, threshold 0.25
    ver = SpeakerRecognition.from_hparams(source=os.path.abspath("models/pretrained"))
    e1 = ver.encode_batch(ver.load_audio("audio/utt1.wav").unsqueeze(0))[0, 0]
    score, decision = ver.verify_files("audio/utt0.wav", "audio/utt1.wav")
    cos = torch.nn.functional.cosine_similarity(e0, e1, dim=-1, eps=1e-6)
    assert abs(float(score) - float(cos)) < 1e-5 and bool(decision) == (float(cos) > 0.25)
    e1_ref = _training_embedding(teacher, wavs[1:2, :18000], torch.ones(1))[0, 0]
    assert float((e1 - e1_ref).abs().max()) < 1e-5

    # our loader: a relative path SpeechBrain would take for a HuggingFace id ("missing/.." does not exist)
    ours = load_pretrained("missing/../models/pretrained")
    assert isinstance(ours, SSRLSpeakerEncoder) and isinstance(ours, EncoderClassifier)
    assert float((ours.encode_file("audio/utt0.wav") - e0).abs().max()) < 1e-5
    assert ours.encode_file("audio/stereo_8k.wav", normalize=True).shape == (1, 1, 16)
    assert float((ours(wavs, lens) - ref).abs().max()) < 1e-5
    assert abs(float(ours.verify_files(utt0, utt1)[0]) - float(cos)) < 1e-5
    for call in (lambda: ours.classify_batch(wavs, lens), lambda: ours.classify_file(utt0)):
        with pytest.raises(NotImplementedError, match="trained without speaker labels"):
            call()
    with pytest.raises(FileNotFoundError, match=r"model folder .*/models/missing does not exist.*HuggingFace"):
        load_pretrained("models/missing")
    with pytest.raises(FileNotFoundError, match="holds no hyperparams.yaml"):
        load_pretrained("audio")
    # an interface of the caller's choice, e.g. SpeechBrain's own
    assert type(load_pretrained(tmp_path / "models" / "pretrained", interface=SpeakerRecognition)) is SpeakerRecognition


def test_normalize_with_embedding_stats(tmp_path, no_download):
    """export_encoder(embedding_stats=E): encode_batch(normalize=True) subtracts E's mean; a re-export of that
    folder keeps the statistics; a wrong shape is refused before anything is written."""
    from speechbrain_ssrl.inference import load_pretrained

    teacher = _trained_like()
    stats = torch.randn(300, 1, 16, generator=torch.Generator().manual_seed(3)) + 2.0
    out = export_encoder(teacher, tmp_path / "pretrained", embedding_stats=stats)
    assert json.load(open(os.path.join(out, "export_info.json")))["mean_var_norm_emb"] == "mean of 300 embeddings"
    wavs, lens = _audio()
    enc = load_pretrained(out)
    raw, normed = enc.encode_batch(wavs, lens), enc.encode_batch(wavs, lens, normalize=True)
    assert float((normed - (raw - stats.mean(0))).abs().max()) < 1e-5
    assert float((enc.encode_batch(wavs, lens, normalize=True) - normed).abs().max()) == 0  # frozen statistics
    again = export_encoder(out, tmp_path / "copy")
    assert float((load_pretrained(again).encode_batch(wavs, lens, normalize=True) - normed).abs().max()) < 1e-6
    with pytest.raises(ExportError, match=r"embedding_stats must be \(N, 16\)"):
        export_encoder(teacher, tmp_path / "bad", embedding_stats=torch.randn(10, 8))
    assert not (tmp_path / "bad").exists()


def test_exports_without_embedding_norm_still_load(tmp_path):
    """A folder exported before mean_var_norm_emb existed verifies and loads (evaluate.py, run_experiments);
    a yaml that declares it without its file is named."""
    import re

    teacher = _trained_like()
    out = export_encoder(teacher, tmp_path / "old")
    path = os.path.join(out, "hyperparams.yaml")
    text = open(path, encoding="utf-8").read()
    text = re.sub(r"\nmean_var_norm_emb: !new:[^\n]*\n(    [^\n]*\n)+", "\n", text)
    text = re.sub(r"\n +mean_var_norm_emb: !ref <mean_var_norm_emb>", "", text)
    from ruamel.yaml import YAML

    doc = YAML(typ="rt").load(text)
    assert "mean_var_norm_emb" not in doc and "mean_var_norm_emb" not in doc["modules"]
    assert list(doc["pretrainer"]["loadables"]) == ["embedding_model"]
    open(path, "w", encoding="utf-8").write(text)
    os.remove(os.path.join(out, "mean_var_norm_emb.ckpt"))
    verify_export(out)
    fn, _ = load_embed_fn(out)
    wavs, lens = _audio()
    assert float((fn(wavs, lens) - _training_embedding(teacher, wavs, lens)[:, 0]).abs().max()) < 1e-5

    out2 = export_encoder(teacher, tmp_path / "new")
    os.remove(os.path.join(out2, "mean_var_norm_emb.ckpt"))
    with pytest.raises(ExportError, match="declares mean_var_norm_emb but .*mean_var_norm_emb.ckpt does not exist"):
        verify_export(out2)
    torch.save({"count": 3, "glob_mean": torch.zeros(8), "glob_std": torch.ones(8)}, os.path.join(out2, "mean_var_norm_emb.ckpt"))
    with pytest.raises(ExportError, match="statistics of 16-d embeddings"):
        verify_export(out2)


def test_find_encoder_checkpoint_newest_by_checkpoint_time(tmp_path):
    """A DINO folder's teacher: the export when there is one, else the newest save/CKPT+* by its recorded
    time (not by name), and a clear error naming the folder when there is neither."""
    from speechbrain_ssrl.brains.base import find_encoder_checkpoint

    for name, unixtime in (("CKPT+a-newer", 200.0), ("CKPT+b-older", 100.0)):
        d = tmp_path / "save" / name
        d.mkdir(parents=True)
        (d / "teacher_model.ckpt").write_bytes(b"x")
        (d / "CKPT.yaml").write_text(f"unixtime: {unixtime}\n")
        os.utime(d / "teacher_model.ckpt", (1e9 + unixtime, 1e9 - unixtime))  # file times disagree with the record
    assert find_encoder_checkpoint(str(tmp_path)) == str(tmp_path / "save" / "CKPT+a-newer" / "teacher_model.ckpt")
    (tmp_path / "pretrained").mkdir()
    (tmp_path / "pretrained" / "embedding_model.ckpt").write_bytes(b"x")
    assert find_encoder_checkpoint(str(tmp_path)) == str(tmp_path / "pretrained" / "embedding_model.ckpt")
    with pytest.raises(FileNotFoundError, match="no usable teacher"):
        find_encoder_checkpoint(str(tmp_path / "empty"))
