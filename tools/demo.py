#!/usr/bin/env python3
"""`make demo`: MiniVox (demo size) → MFCC baseline → random-init ECAPA → DINO → SSRL → evaluation.

Every step is a command a user could type (shown in the log); each is skipped when its output is
complete and resumes from its checkpoint when interrupted, so re-running the demo continues where it
stopped. A training folder records what made it (``demo_step.json``: the train.py arguments and the yaml's
digest); one made by other settings (e.g. an older yaml) is refused, never reused or mixed. Prints and writes a
results table (``<out>/results.md``, ``<out>/results.json``) with EER ± leave-one-test-speaker-out standard error,
minDCF, the pseudo-label quality (NMI, purity, clusters, the most true speakers in one cluster) and wall times
(``<out>/timings.json``: each step's time as it ran, kept when a later invocation skips it). Uses the GPU when one is
present.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import time


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "VoxCeleb", "SSRL")


def sh(cmd, cwd=None, log=None):
    print("\n$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    with open(log, "a") if log else open(os.devnull, "w") as lf:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            lf.write(line)
            if "%|" not in line and "it/s" not in line and "s/it" not in line:
                sys.stdout.write(line)
        rc = proc.wait()
    if rc != 0:
        raise SystemExit(f"command failed ({rc}): {' '.join(cmd)}\n(see {log})")
    return time.time() - t0


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def history(folder):
    path = os.path.join(folder, "history.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_timings(out):
    """The step times recorded by earlier invocations of this demo in ``out`` (``timings.json``; a demo run before
    that file existed left them in ``results.json``), so a resumed demo reports what each step cost when it ran."""
    path = os.path.join(out, "timings.json")
    if os.path.exists(path):
        return load_json(path)
    old = os.path.join(out, "results.json")
    return dict(load_json(old).get("timings_seconds") or {}) if os.path.exists(old) else {}


def save_timings(out, timings):
    tmp = os.path.join(out, "timings.json.tmp")
    with open(tmp, "w") as f:
        json.dump(timings, f, indent=2)
    os.replace(tmp, os.path.join(out, "timings.json"))


#: the record of what made a training step's folder (arguments + yaml digest)
STEP_STAMP = "demo_step.json"


def step_stamp(args):
    """What a training step's output depends on: its train.py arguments (yaml first, without the output folder)
    and the text of that yaml (a pulled change to the MiniVox yamls makes an older demo folder another model)."""
    with open(os.path.join(RECIPE, args[0]), "rb") as f:
        return {"train_args": list(args), "yaml_sha256": hashlib.sha256(f.read()).hexdigest()}


def claim_step_folder(folder, stamp, fix):
    """Refuses, in one line, a step folder that another demo's settings made (its ``demo_step.json`` differs, or it
    has none: a demo from before that file, whose settings cannot be checked); else records ``stamp`` in it."""
    path = os.path.join(folder, STEP_STAMP)
    if os.path.exists(path):
        old = load_json(path)
        if old == stamp:
            return
        what = []
        if old.get("yaml_sha256") != stamp["yaml_sha256"]:
            what.append(f"{stamp['train_args'][0]} changed since")
        new_args, old_args = stamp["train_args"][1:], old.get("train_args", [])[1:]
        changed = [a for a in new_args if a not in old_args] + [f"(was {a})" for a in old_args if a not in new_args]
        if changed:
            what.append("arguments " + " ".join(changed))
        raise SystemExit(f"{folder} was made by other demo settings ({'; '.join(what) or STEP_STAMP + ' differs'}): "
                         f"{fix}")
    if os.path.isdir(folder) and os.listdir(folder):
        raise SystemExit(f"{folder} is an older demo's output without {STEP_STAMP} (its settings cannot be checked "
                         f"against today's yaml): {fix}")
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(stamp, f, indent=2)


def last(rows, key):
    """The last non-empty value of ``key`` in a history."""
    vals = [r.get(key) for r in rows if r.get(key) not in (None, "")]
    return vals[-1] if vals else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/minivox_demo")
    ap.add_argument("--out", default="results/demo")
    ap.add_argument("--size", default="demo", help="MiniVox size (ci, demo, large)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="default: cuda:0 when available, else cpu")
    ap.add_argument("--precision", default=None, help="fp32/bf16 (default: bf16 on a GPU, fp32 on the CPU)")
    ap.add_argument("--dino_epochs", type=int, default=None)
    ap.add_argument("--ssrl_epochs", type=int, default=None)
    # a validation re-embeds the 690 test utterances (~26-28 s on 2 CPU cores, 1.8 of the 31 demo minutes of
    # 2026-11-30 at every 5 epochs and the last) and does not change the model (it embeds a copy of the teacher, crops
    # seeded apart from training: tests/integration/test_validation_read_only.py); the evaluation step scores every
    # exported model on the same trials, so the demo does not validate during training
    ap.add_argument("--validate_every", type=int, default=0,
                    help="epochs between teacher validations in both trainings (then the last epoch too; 0 = none)")
    ap.add_argument("--extra", nargs="*", default=[], help="extra --key=value overrides for both training runs")
    a = ap.parse_args()
    import torch

    device = a.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    precision = a.precision or ("bf16" if device.startswith("cuda") else "fp32")
    data, out = os.path.abspath(a.data), os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, "demo_log.txt")
    py = sys.executable
    env_threads = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(min(2, os.cpu_count() or 1)))}
    os.environ.update(env_threads)
    timings = load_timings(out)  # step -> seconds, kept across invocations (a skipped step keeps its time)
    t_start = time.time()

    def step(name, seconds):
        timings[name] = seconds
        save_timings(out, timings)

    common = [f"--data_folder={data}", f"--device={device}", f"--precision={precision}",
              f"--validate_every={a.validate_every}"] + list(a.extra)
    runs = {  # name -> train.py arguments (the yaml first; the output folder is added when it runs)
        "random_init": ["hparams/minivox/dino_ecapa.yaml", "--export_untrained=True", "--number_of_epochs=0"],
        "dino": ["hparams/minivox/dino_ecapa.yaml"] + ([f"--number_of_epochs={a.dino_epochs}"] if a.dino_epochs else []),
        "ssrl": ["hparams/minivox/ssrl_ecapa.yaml", f"--dino_folder={os.path.join(out, 'dino')}"]
        + ([f"--number_of_epochs={a.ssrl_epochs}"] if a.ssrl_epochs else []),
    }
    runs = {name: [args[0], *common, *args[1:]] for name, args in runs.items()}
    # every training folder is checked before anything runs (a refusal costs no step)
    fix = f"remove {out} (make clean-demo) to run the demo afresh, or pass another --out"
    for name, args in runs.items():
        claim_step_folder(os.path.join(out, name), step_stamp(args), fix)
    # 1. corpus (the builder leaves a complete build untouched: only a build that ran is timed)
    info = os.path.join(data, "build_info.json")
    built = os.path.exists(info) and bool(load_json(info).get("complete"))
    t = sh([py, "-m", "speechbrain_ssrl.data.minivox", "--size", a.size, "--out", data, "--seed", str(a.seed)], log=log)
    if not built:
        step("minivox_build", t)
    # 2. MFCC yardstick
    mfcc_json = os.path.join(out, "mfcc", "results.json")
    if not os.path.exists(mfcc_json):
        step("mfcc", sh([py, "-m", "speechbrain_ssrl.baselines", "--data_folder", data, "--out", mfcc_json,
                         "--scores", os.path.join(out, "mfcc", "scores_veri_test2.txt")], log=log))
    results = {}
    for name, args in runs.items():
        folder = os.path.join(out, name)
        if not os.path.exists(os.path.join(folder, "pretrained", "embedding_model.ckpt")):
            step(f"train_{name}", sh([py, "train.py", args[0], f"--output_folder={folder}", *args[1:]], cwd=RECIPE, log=log))
        res_json = os.path.join(folder, "results.json")
        if not os.path.exists(res_json):
            step(f"eval_{name}", sh([py, "evaluate.py", "hparams/verification.yaml", f"--model={folder}/pretrained",
                                     f"--data_folder={data}", f"--trials={data}/veri_test2.txt", f"--output_folder={folder}",
                                     f"--device={device}"], cwd=RECIPE, log=log))
        results[name] = next(iter(load_json(res_json).values()))
    results["mfcc"] = next(iter(load_json(mfcc_json).values()))

    save_timings(out, timings)  # also when every step was skipped (an older demo's timings, read once)
    write_results(out, data, results, timings, device, precision, time.time() - t_start)


LABELS = {"mfcc": "MFCC mean+std, cosine", "random_init": "ECAPA, random init (BN re-estimated)",
          "dino": "DINO teacher (stage 1)", "ssrl": "SSRL teacher (stage 2)"}


def write_results(out, data, results, timings, device, precision, invocation_seconds):
    """``<out>/results.md`` and ``results.json``: the table (EER ± SE, minDCF, SSRL's labels start → end and the
    most true speakers in one home, training wall minutes as each step ran), the paired EER differences and the
    step times; ``results``: system → its evaluation's result dict."""
    from speechbrain_ssrl.scoring import paired_eer_difference

    h_ssrl = history(os.path.join(out, "ssrl"))
    meta = load_json(os.path.join(data, "build_info.json")).get("stats", {})
    lines = ["| system | EER % (± SE) | minDCF 0.01 | minDCF 0.05 | NMI | purity | clusters | max speakers / home | "
             "train wall (min) |", "|---|---|---|---|---|---|---|---|---|"]
    for name in ("mfcc", "random_init", "dino", "ssrl"):
        r = results[name]
        nmi = purity = clusters = homes = "-"
        if name == "ssrl" and h_ssrl:
            moved = lambda k, f: f"{f(h_ssrl[0].get(k))} → {f(h_ssrl[-1].get(k))}"  # noqa: E731
            num = lambda v: f"{float(v or 'nan'):.3f}"  # noqa: E731
            nmi, purity, clusters = moved("nmi", num), moved("purity", num), moved("n_clusters", str)
            homes = last(h_ssrl, "max_speakers_per_home") or "-"
        w = timings.get(f"train_{name}")
        w = f"{w / 60:.1f}" if w else ("-" if name == "mfcc" else "(not timed)")
        lines.append(f"| {LABELS[name]} | {r['eer']:.2f} ± {r.get('eer_se', float('nan')):.2f} | {r['min_dcf_0.01']:.3f} | "
                     f"{r['min_dcf_0.05']:.3f} | {nmi} | {purity} | {clusters} | {homes} | {w} |")
    diffs = {}
    s = lambda n: os.path.join(out, n, "scores_veri_test2.txt")  # noqa: E731
    for x, y in (("ssrl", "dino"), ("ssrl", "mfcc"), ("dino", "mfcc"), ("dino", "random_init")):
        if os.path.exists(s(x)) and os.path.exists(s(y)):
            diffs[f"{x} - {y}"] = paired_eer_difference(s(x), s(y))
    lines.append("")
    lines.append("Paired EER differences (points, leave-one-test-speaker-out SE; 'holds' = |diff| > 2 SE):")
    for k, (v, se) in diffs.items():
        lines.append(f"- {k}: {v:+.2f} ± {se:.2f} ({'holds' if abs(v) > 2 * se else 'within 2 SE'})")
    if h_ssrl:
        lines.append(f"- SSRL clusters: K0 = {h_ssrl[0].get('n_clusters')} at the start, {h_ssrl[-1].get('n_clusters')} at the end; "
                     f"true training speakers: {meta.get('train_speakers')}")
    steps = ", ".join(f"{k} {v / 60:.1f}" for k, v in timings.items())
    lines.append(f"- device {device}, precision {precision}; demo steps {sum(timings.values()) / 60:.1f} min in all, "
                 f"each as it ran ({steps}){'' if 'minivox_build' in timings else '; MiniVox build not timed (it was there)'}; "
                 f"this invocation {invocation_seconds / 60:.1f} min")
    table = "\n".join(lines)
    print("\n" + table)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"results": results, "paired_differences": {k: {"diff": v, "se": se} for k, (v, se) in diffs.items()},
                   "timings_seconds": timings, "device": device, "precision": precision, "corpus": meta}, f, indent=2)
    return table

if __name__ == "__main__":
    main()
