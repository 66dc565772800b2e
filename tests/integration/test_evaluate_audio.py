"""Issue 16: evaluate.py never scores wrong audio with exit code 0.

8 kHz and stereo 44.1 kHz trial files are resampled / downmixed with a warning naming them (or refused
with ``--convert_audio=False``); a header-only test file and an unknown key are refused in one line.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

from speechbrain_ssrl.export import export_encoder
from test_evaluate import RECIPE, TINY, _synthetic_corpus

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    corpus = _synthetic_corpus(str(root / "vox"))
    torch.manual_seed(0)
    model = export_encoder(ECAPA_TDNN(**TINY).eval(), str(root / "model"))
    return corpus, model, root


def evaluate(corpus, model, out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "evaluate.py", "hparams/verification.yaml", f"--model={model}", f"--data_folder={corpus}",
           f"--output_folder={out}", "--device=cpu", "--num_threads=1", "--noprogressbar", *extra]
    p = subprocess.run(cmd, cwd=RECIPE, env=env, capture_output=True, text=True, timeout=300)
    p.log = p.stdout + p.stderr
    return p


def scores(out):
    with open(os.path.join(out, "scores_veri_test2.txt")) as f:
        return {tuple(line.split()[:2]): float(line.split()[3]) for line in f}


def trial_files(corpus):
    with open(os.path.join(corpus, "veri_test2.txt")) as f:
        first = f.readline().split()
    return first[1], first[2]


def test_other_rates_and_channels_are_converted_with_a_warning_or_refused(setup, tmp_path):
    corpus, model, _ = setup
    ok(evaluate(corpus, model, tmp_path / "ref"))
    ref = scores(tmp_path / "ref")
    changed = str(tmp_path / "vox")
    shutil.copytree(corpus, changed)
    a, b = trial_files(corpus)
    pa, pb = (os.path.join(changed, "wav", *p.split("/")) for p in (a, b))
    x, _ = sf.read(pa, dtype="float32")
    sf.write(pa, np.stack([resample_poly(x, 441, 160)] * 2, axis=1).astype(np.float32), 44100)  # stereo 44.1 kHz
    y, _ = sf.read(pb, dtype="float32")
    sf.write(pb, resample_poly(y, 1, 2).astype(np.float32), 8000, subtype="PCM_16")  # 8 kHz
    p = ok(evaluate(changed, model, tmp_path / "conv"))
    assert f"{pa}: 2 channels averaged to mono, resampled from 44100 Hz" in p.log
    assert f"{pb}: resampled from 8000 Hz to 16000 Hz" in p.log
    got = scores(tmp_path / "conv")
    untouched = [k for k in ref if a not in k and b not in k]
    assert all(got[k] == pytest.approx(ref[k], abs=1e-5) for k in untouched)
    with_a = [k for k in ref if a in k and b not in k]
    assert with_a and all(got[k] == pytest.approx(ref[k], abs=0.02) for k in with_a)  # the same audio again
    # the 8 kHz copy scores as its band-limited 16 kHz original (the old reader took its samples as 16 kHz ones)
    assert abs(got[(a, b)] - ref[(a, b)]) < 0.05, (got[(a, b)], ref[(a, b)])

    p = evaluate(changed, model, tmp_path / "strict", "--convert_audio=False")
    line = refused(p)
    assert "Hz, 1 channel(s), not 16000 Hz mono" in line or "Hz, 2 channel(s), not 16000 Hz mono" in line
    assert pa in line or pb in line
    assert not os.path.exists(tmp_path / "strict" / "results.json")


def test_header_only_test_file_and_unknown_key_are_refused_in_one_line(setup, tmp_path):
    corpus, model, _ = setup
    broken = str(tmp_path / "vox")
    shutil.copytree(corpus, broken)
    a, _ = trial_files(corpus)
    path = os.path.join(broken, "wav", *a.split("/"))
    sf.write(path, np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16")
    line = refused(evaluate(broken, model, tmp_path / "e1"))
    assert f"{path}: no audio samples (a header only" in line
    line = refused(evaluate(corpus, model, tmp_path / "e2", "--max_second=3"))
    assert "--max_second is not a key of" in line and "'max_seconds'" in line
    assert not os.path.exists(tmp_path / "e2")


def ok(p):
    assert p.returncode == 0, p.log[-4000:]
    return p


def refused(p):
    assert p.returncode == 1, p.log[-4000:]
    assert "Traceback" not in p.log, p.log[-4000:]
    return p.stderr.strip().splitlines()[-1]
