"""evaluate.py with ``trial_paths: root`` (issue #15): a trial list of paths of any layout and depth,
relative to the data folder itself, gives the scores of the same trials in the VoxCeleb layout."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from speechbrain_ssrl.data.trials import TrialListError, read_trials, resolve_trial_paths
from speechbrain_ssrl.export import export_encoder
from test_evaluate import RECIPE, TINY, _load_evaluate_script, _synthetic_corpus

torch.set_num_threads(1)


def _any_layout(corpus, root):
    """The corpus's trial files copied to another layout (flat names, nested dates) + the trial list in it."""
    new_of = {}
    with open(os.path.join(corpus, "veri_test2.txt")) as f:
        lines = [line.split() for line in f if line.strip()]
    for _, a, b in lines:
        for rel in (a, b):
            if rel not in new_of:
                k = len(new_of)
                new = f"call_{k}.wav" if k % 2 else f"2024/{k % 3}/rec {k}.wav"  # flat, nested, a space
                os.makedirs(os.path.dirname(os.path.join(root, new)) or root, exist_ok=True)
                shutil.copyfile(os.path.join(corpus, "wav", rel), os.path.join(root, new))
                new_of[rel] = new.replace(" ", "_")
                if " " in new:
                    os.replace(os.path.join(root, new), os.path.join(root, new_of[rel]))
    trials = os.path.join(root, "my_trials.txt")
    with open(trials, "w") as f:
        f.writelines(f"{lab} {new_of[a]} {new_of[b]}\n" for lab, a, b in lines)
    return trials, new_of


def test_read_and_resolve_relative_to_root(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.wav").write_bytes(b"")
    (tmp_path / "y.wav").write_bytes(b"")
    lst = tmp_path / "t.txt"
    lst.write_text("1 a/x.wav y.wav\n0 y.wav a/x.wav\n")
    with pytest.raises(TrialListError, match="not of the form <speaker>/<session>/<utterance>.wav.*trial_paths: root"):
        read_trials(lst)  # the VoxCeleb layout stays the default
    trials = read_trials(lst, relative_to="root")
    assert resolve_trial_paths(trials, str(tmp_path), relative_to="root") == {
        "a/x.wav": str(tmp_path / "a" / "x.wav"), "y.wav": str(tmp_path / "y.wav")}
    lst.write_text("1 ../x.wav y.wav\n")
    with pytest.raises(TrialListError, match=r"line 1: path '../x.wav' contains '..'"):
        read_trials(lst, relative_to="root")
    lst.write_text("1 a/x.wav z.wav\n")
    with pytest.raises(FileNotFoundError, match=r"1 file\(s\).*do not exist under .*\n  z.wav\nFix: point data_folder"):
        resolve_trial_paths(read_trials(lst, relative_to="root"), str(tmp_path), relative_to="root")


def test_evaluate_trial_paths_root_equals_voxceleb_layout(tmp_path):
    corpus = _synthetic_corpus(str(tmp_path / "vox"))
    root = str(tmp_path / "mine")
    os.makedirs(root)
    trials, _ = _any_layout(corpus, root)
    torch.manual_seed(0)
    model = export_encoder(ECAPA_TDNN(**TINY).eval(), tmp_path / "run" / "pretrained")
    evaluate = _load_evaluate_script()
    common = [f"--model={model}", "--device=cpu", "--num_threads=1", "--noprogressbar", "--det_plot=False"]
    yaml = os.path.join(RECIPE, "hparams", "verification.yaml")
    evaluate.main([yaml, f"--data_folder={corpus}", f"--output_folder={tmp_path / 'e1'}", *common])
    evaluate.main([yaml, f"--data_folder={root}", f"--trials={trials}", "--trial_paths=root",
                   f"--output_folder={tmp_path / 'e2'}", *common])
    r1 = json.loads((tmp_path / "e1" / "results.json").read_text())["veri_test2"]
    r2 = json.loads((tmp_path / "e2" / "results.json").read_text())["my_trials"]
    assert r1["n_trials"] == r2["n_trials"] and r1["n_target"] == r2["n_target"]
    assert abs(r1["eer"] - r2["eer"]) < 1e-6 and abs(r1["min_dcf_0.01"] - r2["min_dcf_0.01"]) < 1e-6
    s1 = [float(line.split()[3]) for line in (tmp_path / "e1" / "scores_veri_test2.txt").read_text().splitlines()]
    s2 = [float(line.split()[3]) for line in (tmp_path / "e2" / "scores_my_trials.txt").read_text().splitlines()]
    assert np.allclose(s1, s2, atol=1e-6)
    # AS-norm needs a cohort given: the wav/<speaker>/ default does not exist in another layout
    with pytest.raises(ValueError, match="as-norm with trial_paths=root.*Fix: pass cohort_csv"):
        evaluate.main([yaml, f"--data_folder={root}", f"--trials={trials}", "--trial_paths=root", "--score_norm=as-norm",
                       f"--output_folder={tmp_path / 'e3'}", *common])
