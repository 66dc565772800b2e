"""evaluate.py / evaluation.evaluate_model on a CI-size MiniVox with a freshly exported tiny random ECAPA."""

import importlib.util
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from speechbrain_ssrl.data.trials import TrialListError
from speechbrain_ssrl.evaluation import evaluate_model
from speechbrain_ssrl.export import export_encoder

torch.set_num_threads(1)
os.environ["HF_HUB_OFFLINE"] = "1"

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(REPO, "recipes", "VoxCeleb", "SSRL")
TINY = dict(input_size=80, channels=[16, 16, 16, 16, 48], lin_neurons=16, attention_channels=8, se_channels=8)


def _synthetic_corpus(root):
    """VoxCeleb layout with harmonic 'voices' (fallback when the MiniVox fixture is unavailable)."""
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 2) / 16000
    speakers = {f"id{i:05d}": 100 + 40 * i for i in range(6)}
    files = {}
    for spk, f0 in speakers.items():
        for u in range(3):
            rel = f"{spk}/sess{u % 2}/{u:05d}.wav"
            n = int(16000 * (1.0 + 0.5 * u))
            x = sum(np.sin(2 * np.pi * f0 * h * t[:n]) / h for h in (1, 2, 3)) * 0.2 + 0.02 * rng.standard_normal(n)
            path = os.path.join(root, "wav", *rel.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            sf.write(path, x.astype(np.float32), 16000)
            files.setdefault(spk, []).append(rel)
    test = sorted(speakers)[:4]  # id00004/5 stay out of the trials (cohort speakers)
    lines = []
    for i, a in enumerate(test):
        lines.append(f"1 {files[a][0]} {files[a][1]}")
        lines.append(f"1 {files[a][2]} {files[a][0]}")
        for b in test[i + 1 :]:
            lines.append(f"0 {files[a][0]} {files[b][1]}")
    with open(os.path.join(root, "veri_test2.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def corpus(request, tmp_path_factory):
    """The CI MiniVox (conftest); a synthetic corpus of the same layout where it cannot be built."""
    try:
        return str(request.getfixturevalue("minivox_ci"))
    except (pytest.FixtureLookupError, pytest.skip.Exception):
        return _synthetic_corpus(str(tmp_path_factory.mktemp("vox")))


def _train_csv(corpus, path):
    """A SpeechBrain-style train CSV of the utterances of speakers outside the trial list."""
    with open(os.path.join(corpus, "veri_test2.txt")) as f:
        test_spk = {p.split("/")[0] for line in f for p in line.split()[1:]}
    rows = []
    for spk in sorted(os.listdir(os.path.join(corpus, "wav"))):
        if spk not in test_spk:
            for dirpath, _, names in sorted(os.walk(os.path.join(corpus, "wav", spk))):
                rows += [os.path.join(dirpath, n) for n in sorted(names) if n.endswith(".wav")]
    assert len(rows) >= 2
    with open(path, "w") as f:
        f.write("ID,duration,wav,start,stop,spk_id\n")
        for i, r in enumerate(rows):
            f.write(f"utt{i},1.0,{r},0,16000,unused\n")
    return len(rows)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    m = ECAPA_TDNN(**TINY).eval()
    run = tmp_path_factory.mktemp("run")
    out = export_encoder(m, run / "pretrained")
    return m, str(run), out


def _load_evaluate_script():
    spec = importlib.util.spec_from_file_location("ssrl_evaluate", os.path.join(RECIPE, "evaluate.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _n_lines(path):
    with open(path) as f:
        return sum(1 for line in f if line.strip() and not line.startswith("#"))


def test_evaluate_script_exported_model(corpus, tiny_model, tmp_path):
    _, _, pretrained = tiny_model
    evaluate = _load_evaluate_script()
    out = tmp_path / "eval"
    evaluate.main([
        os.path.join(RECIPE, "hparams", "verification.yaml"),
        f"--model={pretrained}",
        f"--data_folder={corpus}",
        f"--output_folder={out}",
        "--device=cpu",
        "--num_threads=1",
        "--noprogressbar",
    ])
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["veri_test2"]  # the default lists that exist: only VoxCeleb1-O's name here
    r = results["veri_test2"]
    n = _n_lines(os.path.join(corpus, "veri_test2.txt"))
    assert r["n_trials"] == n and r["n_target"] + r["n_nontarget"] == n
    assert 0.0 <= r["eer"] <= 100.0
    assert "eer_se" in r and (np.isnan(r["eer_se"]) or 0.0 <= r["eer_se"] <= 100.0)
    for k in ("min_dcf_0.01", "min_dcf_0.05"):
        assert 0.0 <= r[k] <= 1.0 + 1e-9  # normalised minDCF never exceeds the cost of a fixed decision
    assert (out / "det_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _n_lines(out / "scores_veri_test2.txt") == n
    assert (out / "verification_log.txt").exists()


def test_evaluate_checkpoint_folder_with_asnorm(corpus, tiny_model, tmp_path):
    """A training output folder without pretrained/: its newest checkpoint is exported and scored;
    results.json goes to that folder by default; AS-norm is reported separately."""
    model, _, _ = tiny_model
    run = tmp_path / "run"
    ckpt = run / "save" / "CKPT+2024-01-01+00-00-00+00"
    ckpt.mkdir(parents=True)
    torch.save(model.state_dict(), ckpt / "teacher_model.ckpt")
    (run / "ecapa.json").write_text(json.dumps(TINY))
    n_cohort = _train_csv(corpus, run / "save" / "train.csv")  # picked up as the unlabelled cohort
    evaluate = _load_evaluate_script()
    results = evaluate.main([
        os.path.join(RECIPE, "hparams", "verification.yaml"),
        f"--model={run}",
        f"--data_folder={corpus}",
        f"--trials={os.path.join(corpus, 'veri_test2.txt')}",
        "--score_norm=as-norm",
        "--cohort_topk=5",
        "--cohort_max_seconds=2.0",
        "--compute_se=False",
        "--device=cpu",
        "--noprogressbar",
    ])
    saved = json.loads((run / "results.json").read_text())
    assert set(saved) == {"veri_test2", "veri_test2_asnorm"} == set(results)
    assert saved["veri_test2_asnorm"]["n_trials"] == saved["veri_test2"]["n_trials"]
    assert 0 <= saved["veri_test2_asnorm"]["eer"] <= 100 and "eer_se" not in saved["veri_test2"]
    assert (run / "det_curve.png").exists() and (run / "scores_veri_test2_asnorm.txt").exists()
    log = (run / "verification_log.txt").read_text()
    assert "train.csv" in log and f"AS-norm cohort: {n_cohort} unlabelled utterances" in log


def test_evaluate_model_embed_fn_matches_folder(corpus, tiny_model):
    """The library call with an embed_fn (as the brains use it) gives the numbers of the exported folder."""
    from speechbrain.lobes.features import Fbank
    from speechbrain.processing.features import InputNormalization

    model, _, pretrained = tiny_model
    fbank, norm = Fbank(n_mels=80), InputNormalization(norm_type="sentence", std_norm=False)

    @torch.no_grad()
    def embed_fn(wavs, lens):
        return model(norm(fbank(wavs), lens), lens).squeeze(1)

    trials = os.path.join(corpus, "veri_test2.txt")
    a = evaluate_model(embed_fn, [trials], corpus, progress=False)["veri_test2"]
    b = evaluate_model(pretrained, trials, corpus, progress=False, compute_se=False)["veri_test2"]
    assert a["eer"] == pytest.approx(b["eer"], abs=1e-6)
    assert a["min_dcf_0.01"] == pytest.approx(b["min_dcf_0.01"], abs=1e-6)


def test_bad_input(corpus, tmp_path):
    def embed_fn(wavs, lens):
        return torch.randn(wavs.shape[0], 8)

    with open(os.path.join(corpus, "veri_test2.txt")) as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    bad = tmp_path / "missing.txt"
    bad.write_text(lines[0] + "\n" + "0 nobody/x/1.wav " + lines[0].split()[1] + "\n")
    with pytest.raises(FileNotFoundError, match="nobody/x/1.wav"):
        evaluate_model(embed_fn, [bad], corpus, progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(TrialListError, match="no trial"):
        evaluate_model(embed_fn, [empty], corpus, progress=False)
    one = tmp_path / "one_class.txt"
    one.write_text("\n".join(line for line in lines if line.startswith("1 ")) + "\n")
    with pytest.raises(ValueError, match="only target"):
        evaluate_model(embed_fn, [one], corpus, progress=False)
    with pytest.raises(FileNotFoundError, match="trial list"):
        evaluate_model(embed_fn, [tmp_path / "absent.txt"], corpus, progress=False)
    with pytest.raises(FloatingPointError, match="non-finite"):
        evaluate_model(lambda w, l: torch.full((w.shape[0], 8), float("nan")), [os.path.join(corpus, "veri_test2.txt")],
                       corpus, progress=False)
    with pytest.raises(ValueError, match="score_norm"):
        evaluate_model(embed_fn, [os.path.join(corpus, "veri_test2.txt")], corpus, score_norm="z-norm")
