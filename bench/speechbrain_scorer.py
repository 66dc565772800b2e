#!/usr/bin/env python3
"""Our evaluate.py against SpeechBrain's own VoxCeleb scorer on one exported model.

    python bench/speechbrain_scorer.py --speechbrain <SpeechBrain source tree> --model <export folder> \
        --data_folder <MiniVox or VoxCeleb1 root> [--trials <list>] [--out bench/results/speechbrain_scorer]

Runs SpeechBrain's ``recipes/VoxCeleb/SpeakerRec/speaker_verification_cosine.py`` (from the given source
tree, in a scratch copy of its ``recipes/VoxCeleb`` layout) with ``hparams/verification_speechbrain.yaml``
on the export, and our ``evaluate.py`` (plain cosine) on the same export and trial list; compares the two
per-trial score lists and their EER / minDCF (p_target 0.01), SpeechBrain's ``metric_stats`` applied to
both. Writes ``<out>/speechbrain_scorer.json``. Needs no network (trial list and model are local files).

The two scorers batch the files differently (SpeechBrain: 8 per batch sorted by duration; evaluate.py: up
to 64 / 240 s sorted by length) and ECAPA embeddings of zero-padded files change (the convolutions see the
padded frames), so their per-trial scores differ; the metrics of one score list agree exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "VoxCeleb", "SSRL")


def read_scores(path: str) -> dict:
    """``enrol test label score`` lines → {(enrol, test): (label, score)} with ids without ``.wav``."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) != 4:
                continue
            e, t = (re.sub(r"\.wav$", "", p) for p in parts[:2])
            out[(e, t)] = (int(parts[2]), float(parts[3]))
    return out


def sb_metrics(scores: dict) -> dict:
    from speechbrain.utils.metric_stats import EER, minDCF

    lab = np.array([v[0] for v in scores.values()])
    s = torch.tensor([v[1] for v in scores.values()], dtype=torch.float64)
    pos, neg = s[lab == 1], s[lab == 0]
    eer, _ = EER(pos, neg)
    dcf, _ = minDCF(pos, neg, p_target=0.01)
    # SpeechBrain's minDCF is the raw cost; ours (and the NIST convention) divides it by min(p, 1 - p)
    return {"eer": float(eer) * 100, "min_dcf_0.01_raw": float(dcf), "min_dcf_0.01": float(dcf) / 0.01,
            "n_trials": int(len(lab))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--speechbrain", default=os.environ.get("SPEECHBRAIN_SOURCE"),
                    help="SpeechBrain source tree (holding recipes/VoxCeleb/SpeakerRec); default $SPEECHBRAIN_SOURCE")
    ap.add_argument("--model", required=True, help="export folder (<training output>/pretrained)")
    ap.add_argument("--data_folder", required=True, help="corpus root holding wav/ and the trial list")
    ap.add_argument("--trials", default=None, help="trial list (default <data_folder>/veri_test2.txt)")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "speechbrain_scorer"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compare_only", action="store_true",
                    help="only compare the score files already in --out (speechbrain/scores.txt, ssrl/scores_<list>.txt)")
    a = ap.parse_args(argv)
    if not a.speechbrain:
        raise SystemExit("--speechbrain: give a SpeechBrain source tree (or set SPEECHBRAIN_SOURCE)")
    vox = os.path.join(os.path.abspath(a.speechbrain), "recipes", "VoxCeleb")
    script = os.path.join(vox, "SpeakerRec", "speaker_verification_cosine.py")
    for p in (script, os.path.join(vox, "voxceleb_prepare.py")):
        if not os.path.isfile(p):
            raise SystemExit(f"{p} not found: --speechbrain must be a SpeechBrain source tree")
    model = os.path.abspath(a.model)
    data = os.path.abspath(a.data_folder)
    trials = os.path.abspath(a.trials or os.path.join(data, "veri_test2.txt"))
    with open(os.path.join(model, "ecapa.json"), encoding="utf-8") as f:
        arch = json.load(f)
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), PYTHONUNBUFFERED="1")

    sb_out, ours_out = os.path.join(out, "speechbrain"), os.path.join(out, "ssrl")
    sb_seconds = ours_seconds = None
    # 1. SpeechBrain's scorer, in a scratch copy of its recipes/VoxCeleb layout
    if not a.compare_only:
        work = tempfile.mkdtemp(prefix="sb_scorer-", dir=out)
        try:
            os.makedirs(os.path.join(work, "SpeakerRec"))
            shutil.copy(script, os.path.join(work, "SpeakerRec"))
            shutil.copy(os.path.join(vox, "voxceleb_prepare.py"), work)
            shutil.rmtree(sb_out, ignore_errors=True)
            cmd = [sys.executable, "speaker_verification_cosine.py",
                   os.path.join(RECIPE, "hparams", "verification_speechbrain.yaml"),
                   f"--data_folder={data}", f"--verification_file={trials}", f"--pretrain_path={model}",
                   f"--output_folder={sb_out}", f"--channels={json.dumps(arch['channels'])}",
                   f"--lin_neurons={arch['lin_neurons']}", f"--attention_channels={arch['attention_channels']}",
                   f"--se_channels={arch['se_channels']}", "--device=cpu"]
            t0 = time.time()
            with open(os.path.join(out, "speechbrain.log"), "w") as log:
                subprocess.run(cmd, cwd=os.path.join(work, "SpeakerRec"), env=env, check=True, stdout=log,
                               stderr=subprocess.STDOUT)
            sb_seconds = time.time() - t0
        finally:
            shutil.rmtree(work, ignore_errors=True)
    sb_scores = read_scores(os.path.join(sb_out, "scores.txt"))
    with open(os.path.join(sb_out, "log.txt"), encoding="utf-8") as f:  # what the script itself reported
        log_text = f.read()
    logged = {k: float(m[-1]) for k, m in (("eer", re.findall(r"EER\(%\)=([0-9.eE+-]+)", log_text)),
                                          ("min_dcf_x100", re.findall(r"minDCF=([0-9.eE+-]+)", log_text))) if m}

    # 2. our evaluate.py, plain cosine, on the same list
    if not a.compare_only:
        t0 = time.time()
        with open(os.path.join(out, "ssrl.log"), "w") as log:
            subprocess.run([sys.executable, "evaluate.py", "hparams/verification.yaml", f"--model={model}",
                            f"--data_folder={data}", f"--trials={trials}", f"--output_folder={ours_out}",
                            "--device=cpu", "--noprogressbar"], cwd=RECIPE, env=env, check=True, stdout=log,
                           stderr=subprocess.STDOUT)
        ours_seconds = time.time() - t0
    name = os.path.splitext(os.path.basename(trials))[0]
    ours_scores = read_scores(os.path.join(ours_out, f"scores_{name}.txt"))
    with open(os.path.join(ours_out, "results.json"), encoding="utf-8") as f:
        ours_reported = json.load(f)[name]

    keys = sorted(set(sb_scores) & set(ours_scores))
    if not keys or len(keys) != len(sb_scores) or len(keys) != len(ours_scores):
        raise SystemExit(f"the two score files name different trials ({len(sb_scores)} vs {len(ours_scores)})")
    d = np.array([sb_scores[k][1] - ours_scores[k][1] for k in keys])
    res = {
        "what": "SpeechBrain's speaker_verification_cosine.py vs recipes/VoxCeleb/SSRL/evaluate.py, plain cosine",
        "model": model, "data_folder": data, "trials": trials, "n_trials": len(keys),
        "speechbrain_source": os.path.abspath(a.speechbrain),
        "speechbrain_script_logged": logged,
        "speechbrain_metrics_of_speechbrain_scores": sb_metrics(sb_scores),
        "speechbrain_metrics_of_our_scores": sb_metrics(ours_scores),
        "our_evaluate_reported": {k: ours_reported[k] for k in ("eer", "eer_se", "min_dcf_0.01", "n_trials")},
        "score_abs_diff_max": float(np.abs(d).max()), "score_abs_diff_mean": float(np.abs(d).mean()),
        "score_correlation": float(np.corrcoef([sb_scores[k][1] for k in keys], [ours_scores[k][1] for k in keys])[0, 1]),
        "seconds": {"speechbrain": sb_seconds and round(sb_seconds, 1), "ours": ours_seconds and round(ours_seconds, 1)},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), {a.threads} thread(s)",
        "torch": torch.__version__,
    }
    with open(os.path.join(out, "speechbrain_scorer.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
