"""Our scoring against SpeechBrain's, on a trained MiniVox model (the 1-epoch tiny DINO of the CI corpus).

* SpeechBrain's ``metric_stats.EER`` / ``minDCF`` of our evaluate.py's scores equal the figures it reports;
* ``hparams/verification_speechbrain.yaml`` (for SpeechBrain's ``speaker_verification_cosine.py``) loads
  the export from its local folder and embeds as our export does;
* with a SpeechBrain source tree in ``SPEECHBRAIN_SOURCE``: SpeechBrain's script itself on the same model
  and trials gives the same scores, EER and minDCF (``bench/speechbrain_scorer.py``).
"""

import json
import os

import pytest
import soundfile as sf
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_ssrl.evaluation import evaluate_model

os.environ["HF_HUB_OFFLINE"] = "1"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(REPO, "recipes", "VoxCeleb", "SSRL")
SB_SOURCE = os.environ.get("SPEECHBRAIN_SOURCE", "")


def _arch(pretrained):
    with open(os.path.join(pretrained, "ecapa.json"), encoding="utf-8") as f:
        return json.load(f)


def test_speechbrain_metrics_of_our_scores_equal_ours(dino_ci, minivox_ci, tmp_path, bench_script):
    bench = bench_script("speechbrain_scorer")
    trials = os.path.join(minivox_ci, "veri_test2.txt")
    res = evaluate_model(os.path.join(dino_ci, "pretrained"), [trials], minivox_ci, device="cpu",
                         output_folder=str(tmp_path), det_plot=False, save_scores=True, progress=False)
    ours = res["veri_test2"]
    scores = bench.read_scores(os.path.join(tmp_path, "scores_veri_test2.txt"))
    assert len(scores) == ours["n_trials"] and {lab for lab, _ in scores.values()} == {0, 1}
    sb = bench.sb_metrics(scores)
    assert 0 < ours["eer"] < 100
    assert sb["eer"] == pytest.approx(ours["eer"], abs=1e-4)
    assert sb["min_dcf_0.01"] == pytest.approx(ours["min_dcf_0.01"], abs=1e-6)


def test_verification_yaml_for_speechbrain_loads_the_export(dino_ci, minivox_ci, tmp_path):
    from speechbrain.inference.speaker import EncoderClassifier

    pretrained = os.path.join(dino_ci, "pretrained")
    arch = _arch(pretrained)
    overrides = {"data_folder": minivox_ci, "verification_file": os.path.join(minivox_ci, "veri_test2.txt"),
                 "pretrain_path": pretrained, "output_folder": str(tmp_path / "sb"), "channels": arch["channels"],
                 "lin_neurons": arch["lin_neurons"], "attention_channels": arch["attention_channels"],
                 "se_channels": arch["se_channels"]}
    with open(os.path.join(RECIPE, "hparams", "verification_speechbrain.yaml"), encoding="utf-8") as f:
        hp = load_hyperpyyaml(f, overrides)
    os.makedirs(hp["save_folder"], exist_ok=True)  # the script's create_experiment_directory makes it
    hp["pretrainer"].collect_files()
    hp["pretrainer"].load_collected()
    model = hp["embedding_model"].eval()
    enc = EncoderClassifier.from_hparams(source=pretrained, savedir=str(tmp_path / "enc"))
    with open(os.path.join(minivox_ci, "veri_test2.txt")) as f:
        rel = f.readline().split()[1]
    wav, sr = sf.read(os.path.join(minivox_ci, "wav", rel), dtype="float32")
    assert sr == 16000
    x = torch.from_numpy(wav).unsqueeze(0)
    lens = torch.ones(1)
    with torch.no_grad():  # speaker_verification_cosine.compute_embedding
        e_sb = model(hp["mean_var_norm"](hp["compute_features"](x), lens), lens).squeeze(1)
        e_ours = enc.encode_batch(x, lens).squeeze(1)
    assert e_sb.shape == e_ours.shape == (1, arch["lin_neurons"])
    assert torch.allclose(e_sb, e_ours, atol=1e-5)


@pytest.mark.skipif(not os.path.isfile(os.path.join(SB_SOURCE, "recipes", "VoxCeleb", "SpeakerRec",
                                                    "speaker_verification_cosine.py")),
                    reason="set SPEECHBRAIN_SOURCE to a SpeechBrain source tree to run its scorer")
def test_speechbrain_scorer_script_agrees(dino_ci, minivox_ci, tmp_path, bench_script):
    bench = bench_script("speechbrain_scorer")
    res = bench.main(["--speechbrain", SB_SOURCE, "--model", os.path.join(dino_ci, "pretrained"),
                         "--data_folder", minivox_ci, "--out", str(tmp_path), "--threads", "1"])
    # the script's own figures are those of its scores; SpeechBrain's metrics of ours are evaluate.py's
    assert res["speechbrain_script_logged"]["eer"] == pytest.approx(
        res["speechbrain_metrics_of_speechbrain_scores"]["eer"], abs=1e-3)
    assert res["speechbrain_script_logged"]["min_dcf_x100"] == pytest.approx(
        res["speechbrain_metrics_of_speechbrain_scores"]["min_dcf_0.01"], abs=1e-3)
    assert res["speechbrain_metrics_of_our_scores"]["eer"] == pytest.approx(res["our_evaluate_reported"]["eer"], abs=1e-4)
    # the same trials, scores that differ only by the batching's padding (see the bench's docstring)
    assert res["n_trials"] > 0 and res["score_correlation"] > 0.9
