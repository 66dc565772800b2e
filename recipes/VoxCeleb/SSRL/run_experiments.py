#!/usr/bin/env python3
"""The paper's comparison on a prepared corpus: SSRL against the 5-round iterative baseline, and ablations.

    python run_experiments.py --data_folder=<corpus> --out=<folder> [--config minivox|full] [--device cuda:0]

Runs, in this order, each as the ``train.py`` command a user would type (shown and logged):

1. DINO (stage 1), once; every other system starts from its teacher (or ``--dino_folder`` reuses a run);
2. the iterative baseline (``hparams/<config>/iterative_ecapa.yaml``), rounds 1..R;
3. SSRL, SSRL without noisy-label modelling (``noisy_label_model=False``; ``recluster_if=always``, since
   ``never_noisy`` reads that model), without the label queue (``queue_length=1``) and without cluster pruning
   (``prune_clusters=False``; with it, ``ssrl_prune``, where the yaml does not prune, as the MiniVox yaml: a row
   whose overrides the yaml already holds is not run); without the in-run re-clustering (``ssrl_no_recluster``:
   ``recluster_every=0``, ``recluster_epochs=[]``) when ``--systems`` names it;

then evaluates every final model (DINO, the baseline after every round, the SSRL variants) on the
held-out test trials (cosine scoring, EER with its leave-one-test-speaker-out standard error, minDCF
at p_target 0.01 and 0.05), and writes into ``--out``: ``results.md`` (the table, paired EER
differences against SSRL with their standard errors and a "holds" column, the git commit and the
exact command), ``results.json`` (every number of the table and more) and ``plots/`` (cluster count vs
epoch, NMI vs epoch and vs round, EER vs cost). ``--update_readme`` also copies them next to the
recipe README and replaces its section between ``<!-- minivox-results:start -->`` and
``<!-- minivox-results:end -->`` (``--readme_marker`` names another section).

Overrides: ``--key=value`` arguments this script does not know (and ``--extra key=value ...``) go to
every train.py run whose yaml has the key (e.g. a toy model: ``--channels=[32,32,32,32,96]``);
``--extra_dino`` / ``--extra_iterative`` / ``--extra_ssrl key=value ...`` to one stage only (e.g.
``--extra_iterative lr_start=5e-4`` tunes the baseline alone). ``--plan_only`` prints the plan.

Systems (``--systems``, default: the baseline and the four SSRL rows above): ``--variant NAME=OVERRIDES``
adds an SSRL row with its own train.py overrides (a candidate setting, e.g.
``--variant "ssrl_kmeans=--relabel_prototypes=kmeans --relabel_kmeans_iterations=3"``); ``--supervised``
adds the *supervised ceiling*: the same SSRL model and step budget trained on the true speaker labels
(fixed, no noisy-label weighting), i.e. what labels would give.

Label-correction bench (a DIAGNOSTIC mode, named so in every table): ``--start oracle`` starts every
system from the true speaker labels (``--oracle_split speaker``: K0 = the number of speakers;
``session``: one cluster per speaker session) with ``--oracle_noise`` of the utterances given a random
label (``speechbrain_ssrl.oracle_start``), instead of the k-means of the DINO teacher; a loop that
reflects removes that noise.

Budget accounting (the same for every system): the cost of a system is the number of optimiser
steps of its training after DINO (DINO's are shared by all and reported once), with the same batch
size on the same corpus, plus its measured wall time (training epochs + k-means clusterings, each
clustering including the embedding of every training utterance; per-epoch validation excluded). By
default every SSRL variant trains for ``rounds x epochs_per_round`` epochs, so that one SSRL run costs
as many steps as the whole R-round baseline; the baseline after round r costs r/R of it.

Resumable: every step is skipped when its outputs are complete and resumes from its checkpoint when
interrupted, so re-running the same command continues where it stopped (and does no training once
everything is done). The k-means of the DINO teacher's embeddings (SSRL's y0 and the baseline's
round-1 labels) is computed once and copied to every SSRL variant when their clustering settings
match; its cost is counted for every system.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import filecmp
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import yaml

RECIPE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(RECIPE)))

#: the SSRL runs: (name, label in the table, train.py overrides)
SSRL_VARIANTS = [
    ("ssrl", "SSRL", []),
    # recluster_if: never_noisy reads the noisy-label model, so without it the run re-clusters at every listed epoch
    ("ssrl_no_noisy", "SSRL w/o noisy-label modelling", ["--noisy_label_model=False", "--recluster_if=always"]),
    ("ssrl_no_queue", "SSRL w/o label queue (L = 1)", ["--queue_length=1"]),
    ("ssrl_no_prune", "SSRL w/o cluster pruning", ["--prune_clusters=False"]),
    # the pruning ablation the other way round, for a yaml that does not prune (a default row only where it changes
    # something: a row whose overrides repeat the yaml is dropped, see repeated_rows)
    ("ssrl_prune", "SSRL with cluster pruning (paper and release)", ["--prune_clusters=True"]),
]
#: SSRL rows run only when --systems names them (a no-op where the yaml does not re-cluster, as hparams/ssrl_ecapa.yaml)
OPTIONAL_VARIANTS = [
    ("ssrl_no_recluster", "SSRL w/o re-clustering", ["--recluster_every=0", "--recluster_epochs=[]"]),
]

#: Planning estimates for --config minivox on the CPU with 2 torch threads (seconds), measured on the
#: demo-size MiniVox with the small ECAPA of hparams/minivox (fit_batch medians on a lightly shared
#: 2-core machine). Only the printed plan uses them; every number in the results comes from the runs.
CPU_ESTIMATES = {
    "dino_step": 1.25,  # one DINO step (2 global 2 s + 2 local 1 s crops, batch 32)
    "ssrl_step": 0.52,  # one SSRL step (student 2 s, augmented half the time + teacher 4 s clean, batch 32)
    "iterative_step": 0.30,  # one baseline step (student only)
    "epoch_overhead": 4.0,  # reading crops (main process), checkpoint, history and plots, per epoch
    "embed_utt": 0.014,  # embedding one utterance (full length <= 8 s) for k-means, validation or test
    "bn_recal": 4.0,  # BN re-estimation before every clustering / validation (20 batches of 32 x 3 s)
    "process": 12.0,  # start-up of one train.py process (imports, data checks), and one model load
}


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------
def log_line(msg: str, log: Optional[str] = None) -> None:
    print(msg, flush=True)
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(msg + "\n")


def sh(cmd: Sequence[str], cwd: str, log: str, env: Dict[str, str]) -> float:
    """Runs ``cmd``, echoing its log lines (not progress bars); returns its wall time in seconds."""
    where = cwd != os.getcwd()
    log_line("\n$ " + (f"(cd {os.path.relpath(cwd)} && " if where else "") + shlex.join(cmd) + (")" if where else ""), log)
    t0 = time.time()
    with open(log, "a", encoding="utf-8") as lf:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            lf.write(line)
            if "it/s" in line or "s/it" in line or line.startswith("kmeans iter"):
                continue
            sys.stdout.write(line)
        rc = proc.wait()
    if rc != 0:
        raise SystemExit(f"command failed ({rc}): {shlex.join(cmd)}\n(full log: {log})")
    return time.time() - t0


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


def read_history(folder: str) -> List[Dict[str, str]]:
    path = os.path.join(folder, "history.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def num(v) -> Optional[float]:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def override_value(extra: Sequence[str], key: str) -> Optional[str]:
    """The value of ``--key=value`` in a list of overrides (the last one wins)."""
    val = None
    for a in extra:
        if a.startswith(f"--{key}="):
            val = a.split("=", 1)[1]
    return val


def yaml_value(path: str, key: str, extra: Sequence[str] = ()) -> Optional[str]:
    """A top-level scalar of a recipe yaml as text (``--key=value`` in ``extra`` wins); no instantiation."""
    val = override_value(extra, key)
    if val is not None:
        return val
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(rf"^{re.escape(key)}:\s*([^#\n]*?)\s*(#.*)?$", line)
            if m:
                return m.group(1)
    return None


def same_yaml_value(a: Optional[str], b: Optional[str]) -> bool:
    """Two yaml scalars as text are the same value (``1`` and ``1.0``, ``True`` and ``true``, ``[]`` and ``[ ]``)."""
    if a is None or b is None:
        return False
    try:
        return yaml.safe_load(a) == yaml.safe_load(b)
    except yaml.YAMLError:
        return a.strip() == b.strip()


def repeated_rows(variants, path: str, extra: Sequence[str]) -> Dict[str, str]:
    """The SSRL rows (other than ``ssrl``) whose every override already holds in the yaml at ``path`` (with the
    run's ``extra`` overrides): name -> ``key: value, ...`` (such a row would train ssrl again)."""
    out = {}
    for name, _, args in variants:
        pairs = [x[2:].split("=", 1) for x in args]
        if name != "ssrl" and pairs and all(same_yaml_value(yaml_value(path, k, extra), v) for k, v in pairs):
            out[name] = ", ".join(f"{k}: {v}" for k, v in pairs)
    return out


def stage_yaml(config: str, stage: str) -> str:
    """The yaml of a stage (dino, ssrl, iterative) for --config minivox (hparams/minivox/) or full (hparams/)."""
    return os.path.join(RECIPE, "hparams", *(["minivox"] if config == "minivox" else []), f"{stage}_ecapa.yaml")


def stage_overrides(a, stage: str) -> List[str]:
    """The ``--key=value`` overrides of one stage's runs: those of every run, then the stage's own (--extra_<stage>)."""
    return list(a.extra) + list(getattr(a, "stage_extra", {}).get(stage, []))


def yaml_keys(path: str) -> List[str]:
    """Top-level keys of a recipe yaml (lines ``key:`` at column 0)."""
    with open(path, encoding="utf-8") as f:
        return re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:", f.read(), re.M)


def overrides_for(path: str, extra: Sequence[str]) -> List[str]:
    """The ``--key=value`` overrides whose key the yaml has (train.py refuses unknown keys)."""
    keys = set(yaml_keys(path))
    return [e for e in extra if e[2:].split("=", 1)[0] in keys]


def git_info() -> Dict[str, object]:
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    if not re.fullmatch(r"[0-9a-f]{40}", commit):  # not a git checkout (e.g. a copied tree)
        commit = ""
    dirty = bool(git("status", "--porcelain"))  # modified or untracked (not ignored) files: not the commit alone
    return {"commit": commit or "unknown", "dirty": dirty}


def file_stamp(path: str) -> Dict[str, object]:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime": st.st_mtime}


# --------------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------------
class Plan:
    """What runs, with how many epochs / steps, and (minivox on the CPU) how long it should take."""

    def __init__(self, a, n_train: int, n_test_utts: int):
        self.a = a
        self.yaml = {k: stage_yaml(a.config, k) for k in ("dino", "ssrl", "iterative")}
        self.n_train, self.n_test_utts = n_train, n_test_utts
        self.ov = {k: stage_overrides(a, k) for k in self.yaml}
        bs = {k: int(float(yaml_value(y, "batch_size", self.ov[k]))) for k, y in self.yaml.items()}
        self.steps_per_epoch = {k: n_train // b for k, b in bs.items()}
        self.batch = bs
        self.dino_epochs = a.dino_epochs or int(float(yaml_value(self.yaml["dino"], "number_of_epochs", self.ov["dino"])))
        self.rounds = a.rounds
        self.epochs_per_round = a.epochs_per_round or int(float(yaml_value(self.yaml["iterative"], "epochs_per_round",
                                                                           self.ov["iterative"])))
        self.ssrl_epochs = a.ssrl_epochs or self.rounds * self.epochs_per_round
        self.validate_every = a.validate_every

    def rows(self) -> List[Dict[str, object]]:
        E = CPU_ESTIMATES
        est = self.a.config == "minivox" and not str(self.a.device).startswith("cuda")
        spe = self.steps_per_epoch
        v_every = self.validate_every or 1
        valid = self.n_test_utts * E["embed_utt"] + E["bn_recal"]  # one validation
        test_eval = self.n_test_utts * E["embed_utt"] + E["process"] / 4
        clustering = self.n_train * E["embed_utt"] + E["bn_recal"]

        def n_valid(epochs):
            return len(range(v_every, epochs + 1, v_every)) + (0 if epochs % v_every == 0 else 1)

        def minutes(kind, epochs, extra):
            steps = spe[kind] * epochs
            return (steps * E[f"{kind}_step"] + epochs * E["epoch_overhead"] + E["process"] + extra) / 60 if est else None

        out = []
        if not self.a.dino_folder:
            out.append(dict(system="DINO (shared initialisation)", epochs=self.dino_epochs, steps=spe["dino"] * self.dino_epochs,
                            minutes=minutes("dino", self.dino_epochs, n_valid(self.dino_epochs) * valid + test_eval)))
        # a round: clustering + training + one validation (the minivox yaml validates the round's last epoch only)
        total = self.epochs_per_round * self.rounds
        if "iterative" in self.a.systems:
            out.append(dict(system=f"iterative baseline ({self.rounds} rounds x {self.epochs_per_round} epochs)",
                            epochs=total, steps=spe["iterative"] * total,
                            minutes=minutes("iterative", total, self.rounds * (clustering + valid + test_eval))))
        for i, (name, label, args) in enumerate(self.a.variants):  # SSRL also validates its start (epoch 0)
            # and re-clusters at its scheduled epochs (at most: recluster_if may skip some), each a clustering pass
            n_rc = self.reclusterings(list(self.ov["ssrl"]) + list(args))
            out.append(dict(system=label[:46], epochs=self.ssrl_epochs, steps=spe["ssrl"] * self.ssrl_epochs,
                            minutes=minutes("ssrl", self.ssrl_epochs,
                                            (1 + n_valid(self.ssrl_epochs)) * valid + test_eval + n_rc * clustering)))
        return out

    def reclusterings(self, overrides: Sequence[str]) -> int:
        """How many re-clusterings an SSRL run with these overrides schedules (``recluster_epochs`` and
        ``recluster_every`` of the yaml, as train.py reads them; 0 when the keys are absent)."""
        import ast

        from speechbrain_ssrl.reclustering import recluster_epochs, recluster_every

        y, n = self.yaml["ssrl"], self.ssrl_epochs
        listed = ast.literal_eval(yaml_value(y, "recluster_epochs", overrides) or "[]") or []
        every = int(float(yaml_value(y, "recluster_every", overrides) or 0))
        fixed = int(float(yaml_value(y, "fixed_label_epochs", overrides) or 0))
        return len(set(recluster_epochs(listed, n)) | set(recluster_every(every, fixed, n)))

    def text(self) -> str:
        rows = self.rows()
        lines = [
            f"Plan ({self.a.config} config, {self.n_train} training utterances, batch {self.batch['ssrl']} -> "
            f"{self.steps_per_epoch['ssrl']} steps per epoch; {self.n_test_utts} test utterances):",
            f"  {'system':<46}{'epochs':>8}{'steps':>8}{'est. min':>10}",
        ]
        for r in rows:
            m = "-" if r["minutes"] is None else f"{r['minutes']:.1f}"
            lines.append(f"  {r['system']:<46}{r['epochs']:>8}{r['steps']:>8}{m:>10}")
        if all(r["minutes"] is not None for r in rows):
            lines.append(f"  {'total (estimate, 2 CPU threads)':<62}{sum(r['minutes'] for r in rows):>10.1f}")
        else:
            lines.append("  (time estimates exist only for --config minivox on the CPU)")
        lines.append(f"  {self.budget()}; validation every {self.validate_every or 'yaml'} epoch(s)")
        return "\n".join(lines)

    def budget(self) -> str:
        """One line on the step budgets (equal unless --ssrl_epochs says otherwise)."""
        base = self.rounds * self.epochs_per_round
        same = self.ssrl_epochs * self.steps_per_epoch["ssrl"] == base * self.steps_per_epoch["iterative"]
        return (f"{'equal' if same else 'UNEQUAL'} step budget: every SSRL variant {self.ssrl_epochs} epochs "
                f"({self.ssrl_epochs * self.steps_per_epoch['ssrl']} steps) {'=' if same else 'vs'} the baseline's "
                f"{self.rounds} rounds x {self.epochs_per_round} epochs ({base * self.steps_per_epoch['iterative']} steps; "
                f"{self.steps_per_epoch['ssrl']} steps per epoch, batch {self.batch['ssrl']})")


# --------------------------------------------------------------------------------------------------
# evaluation and statistics
# --------------------------------------------------------------------------------------------------
def portable(cmd: List[str]) -> List[str]:
    """A train.py command with the recipe folder's own paths made relative to it (``.../recipes/VoxCeleb/SSRL/hparams/x``
    → ``hparams/x``), so a finished run's stamp also matches in another clone or worktree of the repository."""
    marker = os.sep + os.path.join("recipes", "VoxCeleb", "SSRL") + os.sep
    return [arg.split(marker, 1)[1] if marker in arg else arg for arg in cmd]


def stamp_matches(path: str, stamp: Dict) -> bool:
    """Whether the JSON file ``path`` exists and records ``stamp`` (compared as JSON) under "stamp"."""
    return os.path.exists(path) and read_json(path).get("stamp") == json.loads(json.dumps(stamp))


def evaluate(model_folder: str, out_dir: str, trials: List[str], data_folder: str, device: str, log: str) -> Dict:
    """Test-trial metrics of ``model_folder/pretrained`` (cached in ``out_dir`` with a model stamp)."""
    from speechbrain_ssrl.evaluation import evaluate_model

    ckpt = os.path.join(model_folder, "pretrained", "embedding_model.ckpt")
    # "batches": evaluations before equal-length batches (embeddings.py, pad=False) are computed again
    stamp = {"model": file_stamp(ckpt), "trials": [os.path.abspath(t) for t in trials], "batches": "equal-length"}
    res_path, stamp_path = os.path.join(out_dir, "results.json"), os.path.join(out_dir, "stamp.json")
    if stamp_matches(stamp_path, stamp) and os.path.exists(res_path):
        return read_json(res_path)
    log_line(f"evaluating {os.path.relpath(model_folder)} on {', '.join(os.path.basename(t) for t in trials)}", log)
    t0 = time.time()
    res = evaluate_model(os.path.join(model_folder, "pretrained"), trials, data_folder, device=device,
                         output_folder=out_dir, det_plot=False, progress=False)
    write_json(stamp_path, {"stamp": stamp, "seconds": round(time.time() - t0, 1)})
    return res


def recluster_k(starts: Dict[str, tuple], yaml_k0) -> int:
    """k of the "re-clustered" columns: the diagnostic start's K0 when the systems start from it (the bench's
    K0 = the speakers, whichever systems run; not the supervised ceiling's), else the yaml's K0."""
    shared = [k for name, (_, k) in starts.items() if name != "supervised"]
    return int(shared[0]) if shared else int(float(yaml_k0))


def recluster(model_folder: str, out_dir: str, train_csv: str, k: int, max_seconds: Optional[float], device: str,
              log: str) -> Dict:
    """Pseudo-label report (NMI, purity, ...) of a fresh k-means (``k`` clusters, seed 0) of the training
    utterances' embeddings by ``model_folder/pretrained``: how good labels the model's *representation*
    would give, next to the labels it was trained on (cached in ``out_dir`` with a model stamp)."""
    import torch

    from speechbrain_ssrl.export import load_embed_fn
    from speechbrain_ssrl.initial_clustering import FILENAME, initial_clustering

    ckpt = os.path.join(model_folder, "pretrained", "embedding_model.ckpt")
    stamp = {"model": file_stamp(ckpt), "train_csv": file_stamp(train_csv), "k": k, "max_seconds": max_seconds}
    res_path = os.path.join(out_dir, "recluster.json")
    if stamp_matches(res_path, stamp):
        return read_json(res_path)["report"]
    log_line(f"re-clustering the training set with {os.path.relpath(model_folder)} (k = {k})", log)
    os.makedirs(out_dir, exist_ok=True)
    old = os.path.join(out_dir, FILENAME)
    if os.path.exists(old):
        os.remove(old)  # made with another model
    t0 = time.time()
    fn, _ = load_embed_fn(os.path.join(model_folder, "pretrained"), device=device, savedir=os.path.join(out_dir, "model"))
    with torch.no_grad():
        res = initial_clustering(fn, train_csv, out_dir, k, max_seconds=max_seconds, seed=0, device=device, progress=False)
    report = {key: (float(v) if isinstance(v, float) else v) for key, v in (res.get("report") or {}).items()}
    write_json(res_path, {"stamp": stamp, "report": report, "seconds": round(time.time() - t0, 1)})
    return report


def oracle_start_file(dino: str, train_csv: str, train_rows: List[Dict[str, str]], out_dir: str, noise: float,
                      split: str, max_seconds: Optional[float], device: str, log: str):
    """The label-correction bench's start (``speechbrain_ssrl.oracle_start``): true labels, ``noise`` of them
    randomised, centroids = mean DINO embeddings; cached in ``out_dir`` with a stamp. Returns (path, K0, info)."""
    import torch

    from speechbrain_ssrl.export import load_embed_fn
    from speechbrain_ssrl.initial_clustering import FILENAME, embed_training_set
    from speechbrain_ssrl.oracle_start import oracle_labels, save_oracle_start, session_of

    if not all(r.get("spk_id") for r in train_rows):
        raise SystemExit("--start oracle / --supervised need the speaker ids of the training CSV (spk_id column)")
    labels, k, info = oracle_labels([r["spk_id"] for r in train_rows], [session_of(r["wav"]) for r in train_rows],
                                    noise, split, seed=0)
    path = os.path.join(out_dir, FILENAME)
    ckpt = os.path.join(dino, "pretrained", "embedding_model.ckpt")
    stamp = {"model": file_stamp(ckpt), "info": info, "max_seconds": max_seconds, "n": len(train_rows)}
    if stamp_matches(os.path.join(out_dir, "stamp.json"), stamp) and os.path.exists(path):
        return path, k, info
    log_line(f"diagnostic start: true labels ({split}), {noise:.0%} randomised, K0 = {k}: embedding with the DINO "
             "teacher for the centroids", log)
    os.makedirs(out_dir, exist_ok=True)
    fn, _ = load_embed_fn(os.path.join(dino, "pretrained"), device=device, savedir=os.path.join(out_dir, "model"))
    with torch.no_grad():
        ids, emb = embed_training_set(fn, train_csv, max_seconds=max_seconds, device=device, progress=False)
    if ids != [r["ID"] for r in train_rows]:
        raise SystemExit(f"{train_csv} changed while the diagnostic start was made: re-run")
    save_oracle_start(path, ids, labels, emb, k, info)
    write_json(os.path.join(out_dir, "stamp.json"), {"stamp": stamp})
    return path, k, info


def clustering_seconds(path: str) -> float:
    import torch

    if not os.path.exists(path):
        return 0.0
    d = torch.load(path, map_location="cpu", weights_only=True)
    return float(d.get("seconds_embed", 0.0)) + float(d.get("seconds_kmeans", 0.0))


def run_cost(folder: str, clustering_file: Optional[str] = None) -> Dict[str, object]:
    """Steps and wall time of a single training run from its history.csv (+ its clustering)."""
    rows = [r for r in read_history(folder) if (num(r.get("epoch")) or 0) >= 1]
    train_s = sum(num(r.get("epoch_seconds")) or 0.0 for r in rows)
    valid_s = sum(num(r.get("valid_seconds")) or 0.0 for r in rows)
    clus_s = clustering_seconds(clustering_file) if clustering_file else 0.0
    steps = int(num(rows[-1].get("steps")) or 0) if rows else 0
    return {"epochs": len(rows), "steps": steps, "train_seconds": round(train_s, 1), "cluster_seconds": round(clus_s, 1),
            "wall_seconds": round(train_s + clus_s, 1), "valid_seconds": round(valid_s, 1)}


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------
def make_plots(res: Dict, out: str) -> Dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    pdir = os.path.join(out, "plots")
    os.makedirs(pdir, exist_ok=True)
    systems = res["systems"]
    ssrl_names = [n for n in res.get("variants", [v[0] for v in SSRL_VARIANTS]) if n in systems]
    n_true = res["corpus"].get("train_speakers")
    files = {}

    def col(rows, key, x="epoch"):
        pts = [(num(r.get(x)), num(r.get(key))) for r in rows]
        pts = [(u, v) for u, v in pts if u is not None and v is not None]
        return [u for u, _ in pts], [v for _, v in pts]

    def short_label(n):  # a --variant row's label spells out its overrides: its NAME in legends
        return systems[n]["label"] if len(systems[n]["label"]) <= 40 else n

    def ssrl_vs_epoch(ax, key, ylabel, title, hline=None):
        """One history column of every SSRL variant against the epoch."""
        for n in ssrl_names:
            x, y = col(systems[n]["history"], key)
            ax.plot(x, y, marker="o", ms=3, label=short_label(n))
        if hline:
            ax.axhline(hline[0], color="0.4", ls="--", lw=1, label=hline[1])
        ax.set_xlabel("epoch (0 = k-means of the DINO teacher)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

    # cluster count vs epoch
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ssrl_vs_epoch(ax, "n_clusters", "clusters owning utterances", "Cluster count vs epoch (SSRL variants)",
                  hline=(n_true, f"true training speakers ({n_true})") if n_true else None)
    fig.tight_layout()
    files["cluster_count"] = os.path.join(pdir, "cluster_count.png")
    fig.savefig(files["cluster_count"], dpi=100)
    plt.close(fig)

    # NMI vs epoch (SSRL) and vs round (baseline)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    ssrl_vs_epoch(a1, "nmi", "NMI of the pseudo labels vs true speakers", "SSRL: NMI vs epoch")
    rounds = res["iterative_rounds"]
    a2.plot([r["round"] for r in rounds], [r.get("nmi") for r in rounds], marker="s", color="C7", label="iterative baseline")
    a2.set_xlabel("round (labels: k-means of the previous round's model)")
    a2.set_title("Iterative baseline: NMI vs round")
    a2.set_xticks([r["round"] for r in rounds])
    a2.grid(alpha=0.3)
    fig.tight_layout()
    files["nmi"] = os.path.join(pdir, "nmi.png")
    fig.savefig(files["nmi"], dpi=100)
    plt.close(fig)

    # the loop's diagnostics: the teacher's raw assignments, the largest cluster, the clean detector
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ssrl_vs_epoch(axes[0], "hat_nmi", "NMI of the teacher's assignments ŷ", "Teacher assignments vs epoch")
    ssrl_vs_epoch(axes[1], "size_max", "utterances in the largest cluster", "Largest cluster vs epoch")
    ssrl_vs_epoch(axes[2], "clean_lift", "precision of p >= 0.5 / base rate", "Clean detector lift (1 = chance)")
    fig.tight_layout()
    files["label_dynamics"] = os.path.join(pdir, "label_dynamics.png")
    fig.savefig(files["label_dynamics"], dpi=100)
    plt.close(fig)

    # EER vs cost
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    panels = ((axes[0], "steps", "training steps after DINO"),
              (axes[1], "wall_minutes", "wall minutes after DINO (training + clustering)"))
    for ax, key, xlabel in panels:
        it = [systems[f"iterative_r{r['round']}"] for r in rounds if f"iterative_r{r['round']}" in systems]
        xs = [s["cost"][key] for s in it]
        ys = [s["test"]["eer"] for s in it]
        es = [s["test"].get("eer_se") or 0 for s in it]
        if it:
            ax.errorbar(xs, ys, yerr=es, marker="s", color="C7", capsize=3, label="iterative baseline, rounds 1..R")
        for s, x, y in zip(it, xs, ys):
            ax.annotate(f"r{s['round']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if "dino" in systems:
            d = systems["dino"]
            ax.errorbar([0], [d["test"]["eer"]], yerr=[d["test"].get("eer_se") or 0], marker="D", color="k", capsize=3,
                        label="DINO (start)")
        span = max([s["cost"][key] for s in systems.values()] + [1e-9])
        for i, n in enumerate(ssrl_names):
            s = systems[n]
            dodge = (i - (len(ssrl_names) - 1) / 2) * 0.012 * span  # side by side when the costs are equal
            ax.errorbar([s["cost"][key] + dodge], [s["test"]["eer"]], yerr=[s["test"].get("eer_se") or 0], marker="o^vP"[i % 4],
                        color=f"C{i}", capsize=3, ls="none", label=short_label(n))
        if "ssrl" in systems and key == "steps":
            x, y = col(systems["ssrl"]["history"], "eer", x="steps")
            if len(x) >= 2:
                ax.plot(x, y, color="C0", lw=1, ls=":", label="SSRL per epoch (validation trials)")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"EER % on {res['test_list']} (± LOSO SE)")
    axes[0].legend(fontsize=7)
    fig.suptitle("EER vs cost")
    fig.tight_layout()
    files["eer_vs_cost"] = os.path.join(pdir, "eer_vs_cost.png")
    fig.savefig(files["eer_vs_cost"], dpi=100)
    plt.close(fig)
    return files


# --------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------
def fmt(v, spec=".3f", none="-"):
    return none if v is None else format(v, spec)


def report_markdown(res: Dict, plot_prefix: str = "plots/", heading: str = "#") -> str:
    systems = res["systems"]
    g = res["git"]
    lines = [
        f"{heading} SSRL vs the iterative baseline: {res['corpus']['name']}"
        + (f", training seed {res['train_seed']}" if res.get("train_seed") is not None else ""),
        "",
        f"- command: `{res['command']}` (run from `{res['cwd']}`)",
        f"- commit: `{g['commit']}`" + (" (with uncommitted or untracked changes)" if g["dirty"] else ""),
        f"- finished {res['finished']}; device `{res['device']}`, precision {res['precision']}, "
        f"{res['threads']} CPU thread(s); config `{res['config']}`",
        f"- corpus: {res['corpus']['n_train']} training utterances (true speakers: {res['corpus'].get('train_speakers', '?')}, "
        f"used for NMI / purity only), test list `{res['test_list']}` with {res['test_n_trials']} trials "
        f"of {res['test_speakers']} speakers",
        f"- start of every system: {res.get('start', 'k-means of the DINO teacher')}",
        f"- cost accounting: {res['budget']}",
        "",
        f"{heading}# Test trials: EER and minDCF; pseudo-label quality; cost",
        "",
        "| System | EER % (± SE) | minDCF 0.01 | minDCF 0.05 | NMI | purity | clusters | max speakers / home | "
        "NMI re-clustered | purity re-clustered | steps | wall min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in res["order"]:
        s = systems[name]
        t, lab, c, rc = s["test"], s.get("labels") or {}, s["cost"], s.get("reclustered") or {}
        st = s.get("labels_start") or {}

        def moved(key, spec=".3f"):  # "start → end" for runs that relabel (SSRL rows), else the labels' value
            end = lab.get(key)
            if key == "n_clusters":
                end_s = "-" if end is None else str(end)
                return f"{int(st[key])} → {end_s}" if st.get(key) is not None else end_s
            return f"{fmt(st[key], spec)} → {fmt(end, spec)}" if st.get(key) is not None else fmt(end, spec)

        lines.append(
            f"| {s['label']} | {t['eer']:.2f} ± {fmt(t.get('eer_se'), '.2f')} | {fmt(t.get('min_dcf_0.01'))} | "
            f"{fmt(t.get('min_dcf_0.05'))} | {moved('nmi')} | {moved('purity')} | {moved('n_clusters') if lab else '-'} | "
            f"{lab.get('max_speakers_per_home', '-')} | {fmt(rc.get('nmi'))} | {fmt(rc.get('purity'))} | {c['steps']} | "
            f"{c['wall_minutes']:.{1 if c['wall_minutes'] >= 1 else 2}f} |"
        )
    k_re = next((s["reclustered"].get("n_clusters") for s in systems.values() if s.get("reclustered")), "K0")
    lines += [
        "",
        "EER ± leave-one-test-speaker-out (jackknife) standard error. NMI / purity / clusters: the labels the final "
        "model was trained on (SSRL rows: start → after the last epoch; baseline round r: the labels of round r, its clustering of round r - 1's model), "
        "against the true speakers; max speakers / home: the most true speakers whose majority cluster is one cluster "
        "(`label_merges.csv`). Re-clustered: a fresh k-means (k = "
        f"{k_re}, seed 0) of the training utterances embedded by the system's final model, i.e. the labels its "
        "representation would give (for baseline round r, the labels of round r + 1). Steps and wall minutes: "
        "training after DINO (DINO's row: DINO itself, shared by all), "
        "baseline rounds cumulative; wall = training epochs + clusterings (embedding all training utterances + k-means), "
        "validation excluded.",
        "",
        f"{heading}# Paired EER differences against {systems[res.get('reference', 'ssrl')]['label']} (same trials)",
        "",
        "| System | EER(system) − EER(reference), points | SE | holds (\\|diff\\| > 2 SE) |",
        "|---|---|---|---|",
    ]
    for name in res["order"]:
        d = res["paired_vs_ssrl"].get(name)
        if d is None:
            continue
        verdict = "no (within 2 SE)"
        if d["holds"]:
            verdict = "yes: reference better" if d["diff"] > 0 else "yes: reference worse"
        lines.append(f"| {systems[name]['label']} | {d['diff']:+.2f} | {d['se']:.2f} | {verdict} |")
    lines += [
        "",
        "Positive = the reference has the lower EER. The standard error of a difference is the jackknife over test "
        "speakers of the paired difference (each left-out speaker removes all its trials from both systems).",
        "",
        f"{heading}# Plots",
        "",
        f"![EER vs cost]({plot_prefix}eer_vs_cost.png)",
        f"![NMI vs epoch and round]({plot_prefix}nmi.png)",
        f"![cluster count vs epoch]({plot_prefix}cluster_count.png)",
        f"![teacher assignments, largest cluster, clean detector vs epoch]({plot_prefix}label_dynamics.png)",
        "",
    ]
    if res.get("notes"):
        lines += [f"{heading}# Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(lines)


def update_readme(res: Dict, out: str, readme: str, marker: str, assets: str) -> str:
    """Copies results.md/json and plots/ to ``<README folder>/<assets>`` and replaces the README's section."""
    readme_section(readme, marker)  # refuses a README without the section before anything is copied
    dest = os.path.join(os.path.dirname(os.path.abspath(readme)), assets)
    os.makedirs(os.path.join(dest, "plots"), exist_ok=True)
    for f in ("results.md", "results.json"):
        shutil.copy2(os.path.join(out, f), os.path.join(dest, f))
    for f in os.listdir(os.path.join(out, "plots")):
        if f.endswith(".png"):
            shutil.copy2(os.path.join(out, "plots", f), os.path.join(dest, "plots", f))
    readme_section(readme, marker, report_markdown(res, plot_prefix=f"{assets}/plots/", heading="###"))
    return readme


def readme_section(readme: str, marker: str, body: Optional[str] = None) -> None:
    """Replaces the README's section ``<!-- marker:start -->`` ... ``<!-- marker:end -->`` with ``body``; with
    ``body`` None only checks that the section exists (refused in one line otherwise)."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    if start not in text or end not in text or text.index(start) > text.index(end):
        raise SystemExit(f"{readme} has no section {start} ... {end}: add the two marker lines where the table goes")
    if body is not None:
        with open(readme, "w", encoding="utf-8") as f:
            f.write(text[: text.index(start) + len(start)] + "\n" + body + "\n" + text[text.index(end):])


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Example: python run_experiments.py --data_folder=../../../data/minivox_demo "
                                 "--out=results/experiments")
    ap.add_argument("--data_folder", required=True,
                    help="corpus root(s) holding wav/<spk>/<session>/<utt>.wav; comma-separated for several")
    ap.add_argument("--out", required=True, help="output folder (everything goes here)")
    ap.add_argument("--config", choices=("minivox", "full"), default="minivox", help="hparams/minivox/*.yaml or hparams/*.yaml")
    ap.add_argument("--device", default=None, help="default: cuda:0 when available, else cpu")
    ap.add_argument("--precision", default=None, help="fp32/bf16/fp16 (default: bf16 on a GPU, fp32 on the CPU)")
    ap.add_argument("--trials", default=None, help="test trial list(s), comma-separated (default: <data_folder>/veri_test2.txt); "
                    "the first one's speakers are excluded from training and it heads the table")
    b = ap.add_argument_group("budget")
    b.add_argument("--rounds", type=int, default=5, help="rounds of the iterative baseline (default 5)")
    b.add_argument("--epochs_per_round", type=int, default=None, help="epochs of a baseline round (default: the yaml's)")
    b.add_argument("--ssrl_epochs", type=int, default=None, help="epochs of every SSRL run (default: rounds x epochs_per_round)")
    b.add_argument("--dino_epochs", type=int, default=None, help="DINO epochs (default: the yaml's)")
    b.add_argument("--dino_folder", default=None, help="reuse this finished DINO run (same architecture) instead of training one")
    b.add_argument("--teacher_label", default="DINO teacher (stage 1, initialisation of all)",
                   help="the tables' name of the starting teacher (e.g. when --dino_folder is a diagnostic, not DINO)")
    b.add_argument("--validate_every", type=int, default=None,
                   help="epochs between per-epoch validations of the SSRL and DINO runs (the last epoch always; default: "
                   "minivox 2, full: the yaml's)")
    ap.add_argument("--extra", nargs="*", default=[],
                    help="key=value overrides for every train.py run whose yaml has the key (e.g. a toy model); any "
                    "other --key=value argument of this script is passed on the same way")
    for stage in ("dino", "iterative", "ssrl"):
        ap.add_argument(f"--extra_{stage}", nargs="*", default=[],
                        help=f"key=value overrides for the {stage} run(s) only (e.g. --extra_iterative lr_start=5e-4)")
    sy = ap.add_argument_group("systems")
    sy.add_argument("--systems", default=None,
                    help="comma-separated systems to run: iterative, ssrl, ssrl_no_noisy, ssrl_no_queue, ssrl_no_prune, "
                    "ssrl_prune, ssrl_no_recluster, supervised and the NAMEs of --variant (default: iterative, ssrl and "
                    "the ablation rows that change the yaml's setting, so one of ssrl_no_prune / ssrl_prune, plus "
                    "supervised and every --variant when given; a named row that changes nothing is refused)")
    sy.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                    help="an extra SSRL row: NAME=--key=value[ --key=value ...] (repeatable)")
    sy.add_argument("--reference", default=None, metavar="NAME",
                    help="the SSRL row the paired EER differences are taken against (default: ssrl when it runs, else "
                    "the first SSRL row)")
    sy.add_argument("--supervised", action="store_true",
                    help="add the supervised ceiling: SSRL's model and steps on the true speaker labels, fixed")
    st = ap.add_argument_group("start (label-correction bench, a diagnostic mode)")
    st.add_argument("--start", choices=("kmeans", "oracle"), default="kmeans",
                    help="kmeans: the k-means of the DINO teacher (the method); oracle: true labels, partly randomised")
    st.add_argument("--oracle_noise", type=float, default=0.3, help="fraction of utterances given a random label")
    st.add_argument("--oracle_split", choices=("speaker", "session"), default="speaker",
                    help="speaker: one cluster per speaker; session: one per speaker session (a learnable split)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: OMP_NUM_THREADS, else min(2, cores))")
    ap.add_argument("--recluster", choices=("auto", "on", "off"), default="auto",
                    help="also k-means the training set with every final model (NMI/purity 're-clustered'); "
                         "auto: on with --config minivox (at VoxCeleb2 scale each is a pass over 1 M utterances)")
    ap.add_argument("--plan_only", action="store_true", help="print the plan and exit")
    ap.add_argument("--update_readme", action="store_true",
                    help="copy the results next to README.md and replace its marked section")
    ap.add_argument("--readme_marker", default="minivox-results", help="README section <!-- NAME:start --> ... <!-- NAME:end -->")
    ap.add_argument("--readme_file", default=os.path.join(RECIPE, "README.md"),
                    help="the README to update (default: the recipe's)")
    ap.add_argument("--readme_assets", default=None,
                    help="folder next to README.md for the copied results (default: from the marker)")
    a, unknown = ap.parse_known_args(argv)
    bad = [u for u in unknown if not (u.startswith("--") and "=" in u)]
    if bad:
        ap.error(f"unrecognized arguments: {' '.join(bad)} (train.py overrides are written --key=value)")
    dashed = lambda xs: [e if e.startswith("--") else "--" + e for e in xs]  # noqa: E731
    a.extra = dashed(a.extra) + unknown
    a.stage_extra = {k: dashed(getattr(a, f"extra_{k}")) for k in ("dino", "iterative", "ssrl")}
    if a.validate_every is None and a.config == "minivox":
        a.validate_every = 2
    a.variants = list(SSRL_VARIANTS)
    for v in a.variant:
        name, sep, ov = v.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_]+", name) or name in [n for n, _, _ in a.variants + OPTIONAL_VARIANTS]:
            ap.error(f"--variant {v!r}: write NAME=--key=value ... with a new NAME of letters, digits and _")
        args = shlex.split(ov)
        if not args or any(not (x.startswith("--") and "=" in x) for x in args):
            ap.error(f"--variant {v!r}: overrides are written --key=value")
        a.variants.append((name, f"SSRL {name} ({' '.join(x[2:] for x in args)})", args))
    default = ["iterative"] + [n for n, _, _ in a.variants] + (["supervised"] if a.supervised else [])
    a.variants += OPTIONAL_VARIANTS
    known = ["iterative", "supervised"] + [n for n, _, _ in a.variants]
    given = a.systems is not None
    if not given:
        a.systems = default
    else:
        a.systems = [x.strip() for x in a.systems.split(",") if x.strip()]
        bad = [x for x in a.systems if x not in known]
        if bad:
            ap.error(f"--systems: unknown {', '.join(bad)} (known: {', '.join(known)})")
    ssrl_yaml = stage_yaml(a.config, "ssrl")
    repeats = repeated_rows([v for v in a.variants if v[0] in a.systems], ssrl_yaml, stage_overrides(a, "ssrl"))
    # a row asked for by name (--systems or --variant) that changes nothing is refused, a default one dropped
    own = {v.partition("=")[0] for v in a.variant}
    named = [n for n in repeats if n in own or (given and n in a.systems)]
    if named:
        flag = "--variant" if named[0] in own else "--systems"
        ap.error(f"{flag} {named[0]}: {repeats[named[0]]} is already so in {os.path.relpath(ssrl_yaml, RECIPE)}, "
                 f"so the row would repeat ssrl; drop it from {flag}")
    a.systems = [x for x in a.systems if x not in repeats]
    a.variants = [v for v in a.variants if v[0] in a.systems]
    if a.reference is not None and a.reference not in [n for n, _, _ in a.variants]:
        ap.error(f"--reference {a.reference}: not an SSRL row of --systems ({', '.join(n for n, _, _ in a.variants)})")
    if "supervised" in a.systems:
        a.variants.append(("supervised", "Supervised ceiling (true speaker labels, fixed; same steps)",
                           ["--update_labels=False", "--noisy_label_model=False", "--recluster_every=0",
                            "--recluster_epochs=[]", "--recluster_if=always"]))
    return a


def main(argv=None):  # noqa: C901 (one linear script)
    a = parse_args(argv)
    threads = a.threads or int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    from speechbrain_ssrl.brains.iterative import completed_rounds, round_folder
    from speechbrain_ssrl.data.trials import read_trials, trial_files
    from speechbrain_ssrl.data.voxceleb import prepare_voxceleb
    from speechbrain_ssrl.scoring import paired_eer_difference

    device = a.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    precision = a.precision or ("bf16" if device.startswith("cuda") else "fp32")
    out = os.path.abspath(a.out)
    data_roots = [os.path.abspath(p) for p in a.data_folder.split(",") if p]
    data = ",".join(data_roots)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    log = os.path.join(out, "logs", "run_experiments.log")
    trials = [os.path.abspath(t) for t in (a.trials.split(",") if a.trials else [os.path.join(data_roots[0], "veri_test2.txt")])]
    for t in trials:
        if not os.path.isfile(t):
            raise SystemExit(f"test trial list not found: {t} (pass --trials)")
    command = "python " + shlex.join(sys.argv if argv is None else [sys.argv[0], *argv])
    log_line(f"\n=== {datetime.datetime.now().isoformat(timespec='seconds')} {command}", log)

    # one data preparation shared by every run (identical CSVs, so labels and trials line up)
    prepared = os.path.join(out, "prepared")
    prepare_voxceleb(data_roots, prepared, trials[0])
    train_csv = os.path.join(prepared, "train.csv")
    valid_trials = os.path.join(prepared, os.path.basename(trials[0]))
    with open(train_csv, newline="", encoding="utf-8") as f:
        train_rows = list(csv.DictReader(f))
    test_utts = sorted({u for t in trials for u in trial_files(read_trials(t))})
    plan = Plan(a, len(train_rows), len(test_utts))
    log_line(plan.text(), log)
    if a.plan_only:
        return None

    unused = [e for e in a.extra if not any(e in overrides_for(y, a.extra) for y in plan.yaml.values())]
    unused += [e for k, y in plan.yaml.items() for e in a.stage_extra[k] if e not in overrides_for(y, a.stage_extra[k])]
    if unused:
        raise SystemExit(f"overrides that the recipe yamls do not have: {' '.join(unused)}")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    py = sys.executable
    common = [f"--data_folder={data}", f"--train_annotation={train_csv}", f"--valid_trials={valid_trials}",
              f"--verification_file={trials[0]}", "--skip_prep=True", f"--device={device}", f"--precision={precision}",
              "--noprogressbar"]
    val = [f"--validate_every={a.validate_every}"] if a.validate_every else []
    stamps_dir = os.path.join(out, "logs")
    timings: Dict[str, float] = {}

    def train(name: str, yaml: str, folder: str, args: List[str], done) -> None:
        """train.py unless ``done()`` and the same command already completed (stamp)."""
        stage = next(k for k, y in plan.yaml.items() if y == yaml)
        cmd = [py, "train.py", yaml, f"--output_folder={folder}", *common, *args, *overrides_for(yaml, a.extra),
               *a.stage_extra[stage]]
        stamp_path = os.path.join(stamps_dir, f"{name}.done.json")
        if done() and os.path.exists(stamp_path) and portable(read_json(stamp_path).get("cmd") or []) == portable(cmd[1:]):
            log_line(f"{name}: complete, skipped ({os.path.relpath(folder)})", log)
            return
        if os.path.exists(stamp_path):
            os.remove(stamp_path)
        timings[name] = sh(cmd, RECIPE, os.path.join(out, "logs", f"{name}.log"), env)
        if not done():
            raise SystemExit(f"{name}: train.py finished but its outputs are incomplete (see logs/{name}.log)")
        write_json(stamp_path, {"cmd": cmd[1:], "seconds_this_invocation": timings[name]})

    exported = lambda folder: (lambda: os.path.isfile(os.path.join(folder, "pretrained", "embedding_model.ckpt")))  # noqa: E731

    # 1. DINO
    if a.dino_folder:
        dino = os.path.abspath(a.dino_folder)
        if not exported(dino)():
            raise SystemExit(f"--dino_folder={dino}: no pretrained/embedding_model.ckpt: point it at a finished DINO run "
                             "(or leave it out to train DINO here)")
    else:
        dino = os.path.join(out, "dino")
        train("dino", plan.yaml["dino"], dino, [f"--number_of_epochs={plan.dino_epochs}", *val], exported(dino))

    # 1b. the start: k-means of the DINO teacher (train.py computes it), or the bench's diagnostic start
    cap = yaml_value(plan.yaml["ssrl"], "cluster_max_seconds", plan.ov["ssrl"])
    cap = None if cap in (None, "null", "None") else float(cap)
    starts: Dict[str, tuple] = {}  # system -> (initial clustering file, K0)
    method = yaml_value(plan.yaml["ssrl"], "cluster_method", plan.ov["ssrl"]) or "kmeans"
    method_desc = ("k-means" if method == "kmeans" else
                   f"{method} clustering ({yaml_value(plan.yaml['ssrl'], 'spectral_neighbors', plan.ov['ssrl'])}-NN graph)")
    start_desc = f"{method_desc} (K0 = {yaml_value(plan.yaml['ssrl'], 'K0', plan.ov['ssrl'])}) of the DINO teacher's embeddings"
    if a.start == "oracle":
        f, k, info = oracle_start_file(dino, train_csv, train_rows, os.path.join(out, "oracle_start"), a.oracle_noise,
                                       a.oracle_split, cap, device, log)
        starts = {n: (f, k) for n in ["iterative"] + [v[0] for v in a.variants]}
        start_desc = (f"DIAGNOSTIC start (label-correction bench): the true speaker labels "
                      f"({'one cluster per speaker' if a.oracle_split == 'speaker' else 'one cluster per speaker session'}, "
                      f"K0 = {k}) with {a.oracle_noise:.0%} of the utterances given a random label "
                      f"({info['n_changed']} of {len(train_rows)} changed); centroids = mean DINO embeddings")
    if "supervised" in a.systems:
        f, k, _ = oracle_start_file(dino, train_csv, train_rows, os.path.join(out, "supervised_start"), 0.0, "speaker",
                                    cap, device, log)
        starts["supervised"] = (f, k)

    def place_start(system: str, target: str) -> List[str]:
        """Copies the system's diagnostic start into its clustering folder; the K0 override it needs."""
        if system not in starts:
            return []
        src, k = starts[system]
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not (os.path.exists(target) and filecmp.cmp(src, target, shallow=False)):
            shutil.copy2(src, target)
        return [f"--K0={k}"]

    # 2. the iterative baseline
    it = os.path.join(out, "iterative")
    if "iterative" in a.systems:
        k_args = place_start("iterative", os.path.join(round_folder(it, 1), "initial_clustering.pt"))
        train("iterative", plan.yaml["iterative"], it,
              [f"--dino_folder={dino}", f"--rounds={plan.rounds}", f"--epochs_per_round={plan.epochs_per_round}", *k_args],
              lambda: completed_rounds(it) >= plan.rounds and exported(it)())

    # 3. SSRL and its ablations (their y0 = the baseline's round-1 k-means when the settings match)
    keys = ("K0", "cluster_max_seconds", "kmeans_iterations", "kmeans_init", "seed", "bn_recal_batches",
            "bn_recal_batch_size", "bn_recal_seconds", "channels", "emb_dim", "cluster_method", "spectral_neighbors")
    same_clustering = all(yaml_value(plan.yaml["ssrl"], k, plan.ov["ssrl"])
                          == yaml_value(plan.yaml["iterative"], k, plan.ov["iterative"])
                          for k in keys)
    y0 = os.path.join(round_folder(it, 1), "initial_clustering.pt")
    notes = []
    for name, label, args in a.variants:
        folder = os.path.join(out, name)
        target = os.path.join(folder, "initial_clustering", "initial_clustering.pt")
        k_args = place_start(name, target)
        if not k_args and same_clustering and os.path.exists(y0) and not os.path.exists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(y0, target)
            log_line(f"{name}: initial clustering copied from the baseline's round 1 ({os.path.relpath(y0)})", log)
        train(name, plan.yaml["ssrl"], folder,
              [f"--dino_folder={dino}", f"--number_of_epochs={plan.ssrl_epochs}", *val, *args, *k_args], exported(folder))
    if same_clustering and "iterative" in a.systems and a.start == "kmeans":
        notes.append(f"SSRL's initial labels y0 and the baseline's round-1 labels are one {method_desc} of the DINO teacher's "
                     "embeddings (computed once; its cost is counted in every system).")

    # 4. evaluation on the test trials
    eval_dir = os.path.join(out, "eval")
    models = {"dino": dino}
    if "iterative" in a.systems:
        for r in range(1, plan.rounds + 1):
            models[f"iterative_r{r}"] = round_folder(it, r)
    for name, _, _ in a.variants:
        models[name] = os.path.join(out, name)
    tests = {n: evaluate(f, os.path.join(eval_dir, n), trials, data, device, log) for n, f in models.items()}
    # 4b. what labels each final model's embeddings would give: a fresh k-means with SSRL's K0
    do_recluster = a.recluster == "on" or (a.recluster == "auto" and a.config == "minivox")
    do_recluster = do_recluster and any(r.get("spk_id") for r in train_rows)
    k_re = recluster_k(starts, yaml_value(plan.yaml["ssrl"], "K0", plan.ov["ssrl"]))
    reclustered = {n: recluster(f, os.path.join(eval_dir, n, "recluster"), train_csv, k_re, cap, device, log)
                   for n, f in models.items()} if do_recluster else {}
    list_names = list(next(iter(tests.values())).keys())
    main_list = list_names[0]

    # 5. collect
    rounds = []
    for r in (read_history(it) if "iterative" in a.systems else []):
        rounds.append({k: (int(float(v)) if k in ("round", "epochs", "steps", "total_steps", "n_clusters", "k") else num(v))
                       for k, v in r.items() if v != ""})
    systems: Dict[str, Dict] = {}
    dcost = run_cost(dino)
    systems["dino"] = {"label": a.teacher_label, "labels": None,
                       "cost": dict(dcost, wall_minutes=dcost["wall_seconds"] / 60), "history": read_history(dino)}
    for r in rounds:
        rr = r["round"]
        systems[f"iterative_r{rr}"] = {
            "label": f"Iterative baseline, round {rr}" + (f" of {plan.rounds}" if rr == plan.rounds else ""),
            "round": rr,
            "labels": {k: r.get(k) for k in ("nmi", "ari", "purity", "accuracy", "n_clusters")},
            "cost": {"steps": r["total_steps"], "wall_seconds": r["total_wall_seconds"],
                     "wall_minutes": r["total_wall_seconds"] / 60,
                     "round_steps": r["steps"], "round_wall_seconds": r["wall_seconds"],
                     "epochs": sum(q["epochs"] for q in rounds if q["round"] <= rr)},
            "history": read_history(round_folder(it, rr)),
        }
        merged = num((systems[f"iterative_r{rr}"]["history"] or [{}])[-1].get("max_speakers_per_home"))
        if merged is not None:
            systems[f"iterative_r{rr}"]["labels"]["max_speakers_per_home"] = int(merged)
    for name, label, args in a.variants:
        folder = os.path.join(out, name)
        hist = read_history(folder)
        last = hist[-1] if hist else {}
        cost = run_cost(folder, os.path.join(folder, "initial_clustering", "initial_clustering.pt"))
        first = hist[0] if hist else {}
        label_keys = ("nmi", "ari", "purity", "accuracy", "n_clusters", "max_speakers_per_home")
        systems[name] = {"label": label, "overrides": args,
                         "labels": {k: (int(float(last[k])) if k in ("n_clusters", "max_speakers_per_home") else num(last.get(k)))
                                    for k in label_keys if last.get(k) not in (None, "")},
                         "labels_start": {k: num(first.get(k)) for k in ("nmi", "purity", "n_clusters")
                                          if first.get(k) not in (None, "")},
                         "cost": dict(cost, wall_minutes=cost["wall_seconds"] / 60), "history": hist}
    for n in systems:
        systems[n]["test"] = tests[n][main_list]
        systems[n]["test_all_lists"] = tests[n]
        systems[n]["reclustered"] = reclustered.get(n)
    order = ["dino"] + [f"iterative_r{r['round']}" for r in rounds] + [n for n, _, _ in a.variants]
    paired = {}
    reference = a.reference or ("ssrl" if "ssrl" in systems else a.variants[0][0])
    ref = os.path.join(eval_dir, reference, f"scores_{main_list}.txt")
    for n in order:
        if n == reference:
            continue
        d, se = paired_eer_difference(os.path.join(eval_dir, n, f"scores_{main_list}.txt"), ref)
        paired[n] = {"diff": d, "se": se, "holds": bool(np.isfinite(se) and abs(d) > 2 * se)}

    speakers = {s for r in train_rows for s in [r.get("spk_id")] if s}
    main_trials = read_trials(trials[0])
    build_info = os.path.join(data_roots[0], "build_info.json")
    corpus = {"name": os.path.basename(data_roots[0].rstrip("/")), "data_folder": data, "n_train": len(train_rows),
              "train_speakers": len(speakers) or None}
    if os.path.exists(build_info):
        bi = read_json(build_info)
        corpus["minivox"] = {"size": bi.get("size"), "seed": bi.get("seed"), "stats": bi.get("stats")}
        corpus["name"] = f"MiniVox ({bi.get('size')}, corpus seed {bi.get('seed')})"
    from speechbrain_ssrl.scoring import speaker_of

    notes.append(f"Wall times are measured as the runs went ({threads} torch thread(s) on `{device}`), on a machine that "
                 "may have been running other work: compare steps first.")
    notes.append(f"The per-epoch / per-round validation EERs (history.csv, plots) are on the first test list "
                 f"(`{os.path.basename(trials[0])}`, as in the recipe); nothing is selected with them: every system's "
                 "final model is its last epoch (baseline: the last epoch of each round).")
    res = {
        "command": command, "cwd": os.path.relpath(os.getcwd(), REPO) if os.getcwd().startswith(REPO) else os.getcwd(),
        "git": git_info(), "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": device, "precision": precision, "threads": threads, "config": a.config,
        "train_seed": yaml_value(plan.yaml["ssrl"], "seed", plan.ov["ssrl"]),
        "plan": plan.rows(), "budget": f"{plan.budget()}; DINO: {dcost['epochs']} epochs, {dcost['steps']} steps, shared by all",
        "corpus": corpus, "test_list": main_list, "test_lists": list_names,
        "test_n_trials": len(main_trials),
        "test_speakers": len({speaker_of(t.enrol) for t in main_trials} | {speaker_of(t.test) for t in main_trials}),
        "systems": systems, "order": order, "iterative_rounds": rounds, "paired_vs_ssrl": paired,
        "reference": reference, "variants": [n for n, _, _ in a.variants], "start": start_desc,
        "timings_this_invocation_seconds": timings, "notes": notes,
    }
    plots = make_plots(res, out)
    res["plots"] = {k: os.path.relpath(v, out) for k, v in plots.items()}
    write_json(os.path.join(out, "results.json"), res)
    md = report_markdown(res)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(md + "\n")
    log_line("\n" + md, log)
    if a.update_readme:
        assets = a.readme_assets or a.readme_marker.replace("-results", "_results").replace("-", "_")
        log_line(f"updated {update_readme(res, out, a.readme_file, a.readme_marker, assets)}", log)
    return res


if __name__ == "__main__":
    main()
