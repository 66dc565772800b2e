#!/usr/bin/env python3
"""Speaker-verification evaluation of an exported or checkpointed speaker encoder.

    python evaluate.py hparams/verification.yaml --model=<folder> --data_folder=<root> [--trials=a.txt,b.txt]
        [--score_norm=as-norm --cohort_csv=<training output>/save/train.csv] [--device=cuda:0]

Embeds every utterance named by the trial lists once (full length; only files of equal length share a
forward pass, so an embedding is that of the file alone), scores the
trials by cosine similarity (and optionally AS-norm against an unlabelled cohort) and writes
``results.json`` ({"<list>": {"eer": %, "eer_se": %, "min_dcf_0.01", "min_dcf_0.05", "n_trials", ...}}),
``scores_<list>.txt`` and ``det_curve.png`` to the output folder (see hparams/verification.yaml).

A test file at another sample rate is resampled and a multi-channel one averaged to mono, with a
warning naming the files (``convert_audio: False`` refuses them instead); a file that is not audio,
holds no sample or a NaN / inf sample is refused, naming it: no score is ever computed from wrong
audio. Refusals end with one line (``--debug`` shows the traceback).
"""

import logging
import os
import sys

import torch
from hyperpyyaml import resolve_references

import speechbrain as sb

from speechbrain_ssrl import recipe_checks
from speechbrain_ssrl.evaluation import VOXCELEB1_LISTS, evaluate_model, resolve_trial_lists
from speechbrain_ssrl.export import resolve_model_source

logger = logging.getLogger("evaluate")


def training_output_folder(model: str):
    """The training output folder (holding save/ or pretrained/) a model path belongs to, if any."""
    model = os.path.abspath(model)
    if os.path.isdir(os.path.join(model, "save")):
        return model
    kind, path = resolve_model_source(model)
    folder = path if kind == "export" else os.path.dirname(path)
    if kind == "export" and os.path.basename(folder) == "pretrained":
        return os.path.dirname(folder)
    if os.path.basename(folder).startswith("CKPT+") and os.path.basename(os.path.dirname(folder)) == "save":
        return os.path.dirname(os.path.dirname(folder))
    return None


def default_output_folder(model: str) -> str:
    out = training_output_folder(model)
    if out is not None:
        return out
    model = os.path.abspath(model).rstrip(os.sep)
    return model + "_evaluation"


def pick_device(hparams, run_opts) -> str:
    if "device" in getattr(run_opts, "overridden_args", ()) and run_opts["device"]:
        return run_opts["device"]
    if hparams.get("device"):
        return str(hparams["device"])
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def set_threads(device: str, num_threads) -> int:
    """CPU threads: the hparam, else the cores this process may use (respects taskset / cgroups)."""
    if num_threads is None:
        try:
            num_threads = len(os.sched_getaffinity(0))
        except AttributeError:
            num_threads = os.cpu_count() or 1
        env = os.environ.get("OMP_NUM_THREADS")
        if env and env.isdigit():
            num_threads = min(num_threads, int(env))
    num_threads = max(1, int(num_threads))
    if device.startswith("cpu"):
        torch.set_num_threads(num_threads)
    return num_threads


def setup_logging(output_folder: str) -> list:
    """Logs to <output_folder>/verification_log.txt (and stdout); returns the handlers added."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fh = logging.FileHandler(os.path.join(output_folder, "verification_log.txt"))
    fh.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    added = [fh]
    if not any(type(h) is logging.StreamHandler for h in root.handlers):
        sh = logging.StreamHandler(sys.stdout)
        sh.setFormatter(logging.Formatter("%(message)s"))
        added.append(sh)
    for h in added:
        root.addHandler(h)
    return added


def format_table(results) -> str:
    keys = [k for k in ("eer", "eer_se", "min_dcf_0.01", "min_dcf_0.05", "n_trials")]
    lines = [f"{'trial list':<28}" + "".join(f"{k:>14}" for k in keys)]
    for name, m in results.items():
        cells = []
        for k in keys:
            v = m.get(k)
            cells.append(f"{'-':>14}" if v is None else f"{v:>14d}" if isinstance(v, int) else f"{v:>14.4f}")
        lines.append(f"{name:<28}" + "".join(cells))
    return "\n".join(lines)


def main(argv=None):
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:] if argv is None else argv)
    hparams = recipe_checks.load_hparams(hparams_file, overrides, program="evaluate.py")  # refuses unknown keys

    model = os.path.abspath(os.path.expanduser(str(hparams["model"])))
    out = hparams.get("output_folder") or default_output_folder(model)
    out = os.path.abspath(os.path.expanduser(str(out)))
    os.makedirs(out, exist_ok=True)
    handlers = setup_logging(out)
    try:
        return run(hparams_file, hparams, overrides, run_opts, model, out)
    finally:
        for h in handlers:
            logging.getLogger().removeHandler(h)
            h.close()


def run(hparams_file, hparams, overrides, run_opts, model, out):
    data_folder = hparams["data_folder"]
    with open(hparams_file, encoding="utf-8") as f, open(os.path.join(out, "verification_hyperparams.yaml"), "w") as w:
        w.write(resolve_references(f, overrides).getvalue())

    device = pick_device(hparams, run_opts)
    threads = set_threads(device, hparams.get("num_threads"))
    trial_lists = resolve_trial_lists(hparams.get("trials"), data_folder, hparams.get("default_trials") or tuple(VOXCELEB1_LISTS))
    logger.info("model %s | device %s (%d CPU threads) | trial lists %s | output %s", model, device, threads, trial_lists, out)

    cohort_csv = hparams.get("cohort_csv")
    norm = str(hparams.get("score_norm") or "none")
    if norm.lower() != "none" and not cohort_csv:
        train_out = training_output_folder(model)
        cand = os.path.join(train_out, "save", "train.csv") if train_out else None
        if cand and os.path.isfile(cand):
            cohort_csv = cand
            logger.info("AS-norm cohort from the training CSV %s (unlabelled: only its wav column is read)", cand)

    results = evaluate_model(
        model,
        trial_lists,
        data_folder,
        trial_paths=str(hparams.get("trial_paths", "wav")),
        max_seconds=hparams.get("max_seconds"),
        batch_seconds=float(hparams.get("batch_seconds", 240.0)),
        max_batch=int(hparams.get("max_batch", 64)),
        device=device,
        convert_audio=bool(hparams.get("convert_audio", True)),
        p_targets=tuple(hparams.get("p_targets", (0.01, 0.05))),
        compute_se=bool(hparams.get("compute_se", True)),
        score_norm=norm,
        cohort_csv=cohort_csv,
        cohort_size=hparams.get("cohort_size"),
        cohort_max_seconds=hparams.get("cohort_max_seconds"),
        topk=int(hparams.get("cohort_topk", 300)),
        seed=int(hparams.get("seed", 0)),
        output_folder=out,
        det_plot=bool(hparams.get("det_plot", True)),
        save_scores=bool(hparams.get("save_scores", True)),
        progress=not run_opts["noprogressbar"],
        num_workers=int(hparams.get("num_workers") or 0),
    )
    print(format_table(results))
    print(f"results: {os.path.join(out, 'results.json')}")
    return results


if __name__ == "__main__":
    recipe_checks.run_script(main, sys.argv[1:], "evaluate.py")
