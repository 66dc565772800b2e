"""Speaker-verification evaluation of an embedding model on ``veri_test2.txt``-format trial lists.

:func:`evaluate_model` is the core of ``recipes/VoxCeleb/SSRL/evaluate.py`` and of the per-epoch
validation of the training brains: it embeds every utterance named by the trial lists once (full
length by default, batched by length), scores the trials by cosine similarity (optionally also with
AS-norm against a cohort of *unlabelled* utterances, reported as ``<list>_asnorm``) and returns::

    {"<list>": {"eer": %, "eer_se": % (leave-one-test-speaker-out), "min_dcf_0.01": .., "min_dcf_0.05": ..,
                "n_trials": .., "n_target": .., "n_nontarget": .., "eer_threshold": ..}, ...}

With ``output_folder`` it also writes ``results.json`` (that dict), ``scores_<list>.txt`` (lines
``enrol test label score``) and ``det_curve.png``.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import random
import tempfile
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from speechbrain_ssrl import scoring
from speechbrain_ssrl.data.trials import read_trials, resolve_trial_paths, split_data_folders
from speechbrain_ssrl.data.trials import trial_files as _distinct_files
from speechbrain_ssrl.data.voxceleb import read_trial_list
from speechbrain_ssrl.embeddings import extract_embeddings, extract_readable_embeddings

logger = logging.getLogger(__name__)

EmbedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PathLike = Union[str, "os.PathLike[str]"]

#: the cleaned VoxCeleb1 trial lists (VoxCeleb1-O, -E, -H)
VOXCELEB1_LISTS = {"veri_test2.txt": "VoxCeleb1-O", "list_test_all2.txt": "VoxCeleb1-E", "list_test_hard2.txt": "VoxCeleb1-H"}


# --------------------------------------------------------------------------------------------------
# trial lists and cohorts
# --------------------------------------------------------------------------------------------------
def find_trial_list(name: PathLike, data_folders) -> Optional[str]:
    """An existing trial list: ``name`` itself, or under a data folder or its ``meta/`` subfolder."""
    name = os.fspath(name)
    if os.path.isfile(name):
        return os.path.abspath(name)
    if os.path.isabs(name):
        return None
    for root in split_data_folders(data_folders):
        for cand in (os.path.join(root, name), os.path.join(root, "meta", name)):
            if os.path.isfile(cand):
                return cand
    return None


def resolve_trial_lists(trials, data_folders, defaults: Sequence[str] = tuple(VOXCELEB1_LISTS)) -> List[str]:
    """Trial list paths from a hyperparameter value.

    ``trials`` is None/empty (the VoxCeleb1 O/E/H ``defaults`` that exist; at least one must), a path,
    a comma-separated string or a list. Explicitly named lists must exist.
    """
    if trials is None or (isinstance(trials, (str, list, tuple)) and len(trials) == 0):
        found = [p for p in (find_trial_list(n, data_folders) for n in defaults) if p]
        if not found:
            raise FileNotFoundError(
                f"none of the default trial lists {list(defaults)} is in {split_data_folders(data_folders)} "
                "(or their meta/ subfolder): pass --trials=<veri_test2.txt-format file>[,<more>]"
            )
        return found
    names = [s.strip() for s in trials.split(",")] if isinstance(trials, str) else [os.fspath(t) for t in trials]
    out = []
    for n in names:
        if not n:
            continue
        p = find_trial_list(n, data_folders)
        if p is None:
            raise FileNotFoundError(
                f"trial list {n} not found (looked for the path itself and under "
                f"{', '.join(split_data_folders(data_folders))} and their meta/ subfolders)"
            )
        out.append(p)
    if not out:
        raise ValueError("no trial list given")
    return out


def list_name(path: str, taken: Sequence[str] = ()) -> str:
    """Key of a trial list in results.json: its file name without extension (made unique)."""
    base = os.path.splitext(os.path.basename(path))[0]
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def cohort_files_from_csv(csv_file: PathLike, wav_key: str = "wav") -> List[str]:
    """The distinct audio files of a SpeechBrain CSV (``wav`` column; labels are not read)."""
    with open(csv_file, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        key = next((k for k in (wav_key, "wav", "file", "path") if k in cols), None)
        if key is None:
            raise ValueError(f"{csv_file} has no '{wav_key}' column (columns: {cols})")
        files = list(dict.fromkeys(row[key] for row in reader if row.get(key)))
    if not files:
        raise ValueError(f"{csv_file} lists no audio file for the AS-norm cohort")
    return files


def cohort_files_from_folders(data_folders, exclude_speakers: Sequence[str] = ()) -> List[str]:
    """All ``<root>/wav/<spk>/<session>/<utt>.wav`` whose speaker folder is not a test speaker."""
    excl = set(exclude_speakers)
    files = []
    for root in split_data_folders(data_folders):
        for spk_dir in sorted(glob.glob(os.path.join(root, "wav", "*"))):
            if os.path.basename(spk_dir) not in excl:
                files.extend(sorted(glob.glob(os.path.join(spk_dir, "**", "*.wav"), recursive=True)))
    return files


def sample_cohort(files: Sequence[str], size: Optional[int], seed: int = 0, exclude: Sequence[str] = ()) -> List[str]:
    excl = {os.path.abspath(f) for f in exclude}
    files = [f for f in files if os.path.abspath(f) not in excl]
    if size is not None and len(files) > size:
        files = sorted(random.Random(seed).sample(list(files), int(size)))
    if len(files) < 2:
        raise ValueError(
            f"the AS-norm cohort has {len(files)} utterance(s): give a training CSV (cohort_csv) of utterances "
            "that are not in the trial lists"
        )
    missing = [f for f in files if not os.path.isfile(f)]
    if len(missing) == len(files):
        raise FileNotFoundError(f"none of the {len(files)} cohort files exists, e.g. {missing[:3]}")
    if missing:
        logger.warning("AS-norm cohort: %d file(s) do not exist and are left out, e.g. %s", len(missing), missing[:3])
    return [f for f in files if f not in set(missing)]


# --------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------
def write_scores(path: str, trials, scores) -> None:
    s = torch.as_tensor(scores).double().tolist()
    with open(path, "w", encoding="utf-8") as f:
        for t, v in zip(trials, s):
            label, enrol, test = scoring.trial_fields(t)
            f.write(f"{enrol} {test} {label} {v:.6f}\n")


def plot_det(curves: Mapping[str, Tuple[np.ndarray, np.ndarray, float]], path: str, title: str = "DET curve") -> str:
    """DET curves (miss vs false-alarm rate on normal-deviate axes) of ``{name: (far, frr, eer_percent)}``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from scipy.stats import norm

    ticks = np.array([0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 40, 60, 80, 90, 95, 98, 99]) / 100
    lo, hi = 0.0001, 0.995
    fig = Figure(figsize=(6, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, (far, frr, eer_pct)) in enumerate(curves.items()):
        x = norm.ppf(np.clip(far, lo, hi))
        y = norm.ppf(np.clip(frr, lo, hi))
        line = ax.plot(x, y, lw=1.5, ls="--" if name.endswith("_asnorm") else "-", label=f"{name} (EER {eer_pct:.2f}%)")[0]
        e = norm.ppf(np.clip(eer_pct / 100, lo, hi))
        ax.plot([e], [e], "o", color=line.get_color(), ms=4)
    ax.plot(norm.ppf([lo, hi]), norm.ppf([lo, hi]), color="0.8", lw=0.8, zorder=0)
    pos = norm.ppf(ticks)
    labels = [f"{100 * t:g}" for t in ticks]
    ax.set_xticks(pos)
    ax.set_xticklabels(labels, rotation=90)
    ax.set_yticks(pos)
    ax.set_yticklabels(labels)
    ax.set_xlim(norm.ppf(lo), norm.ppf(hi))
    ax.set_ylim(norm.ppf(lo), norm.ppf(hi))
    ax.set_xlabel("false-alarm rate (%)")
    ax.set_ylabel("miss rate (%)")
    ax.set_title(title)
    ax.grid(True, color="0.9")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


# --------------------------------------------------------------------------------------------------
# the evaluation
# --------------------------------------------------------------------------------------------------
def _as_embed_fn(model, device: str, tmp_dir: str) -> EmbedFn:
    if callable(model) and not isinstance(model, (str, os.PathLike)):
        if isinstance(model, torch.nn.Module):
            raise TypeError(
                "evaluate_model takes an embed_fn(wavs, lens) -> (B, D) (front end included) or a model folder, "
                "not a bare nn.Module"
            )
        return model
    from speechbrain_ssrl.export import load_embed_fn

    fn, desc = load_embed_fn(model, device=device, savedir=tmp_dir)
    logger.info("evaluating %s", desc)
    return fn


def evaluate_model(
    model: Union[EmbedFn, PathLike],
    trial_files: Union[PathLike, Sequence[PathLike]],
    data_folders: Union[PathLike, Sequence[PathLike]],
    *,
    names: Optional[Sequence[str]] = None,
    trial_paths: str = "wav",
    max_seconds: Optional[float] = None,
    batch_seconds: float = 240.0,
    max_batch: int = 64,
    device: str = "cpu",
    convert_audio: bool = True,
    p_targets: Sequence[float] = (0.01, 0.05),
    compute_se: bool = True,
    score_norm: Optional[str] = None,
    cohort_files: Optional[Sequence[str]] = None,
    cohort_csv: Optional[PathLike] = None,
    cohort_size: Optional[int] = 10000,
    cohort_max_seconds: Optional[float] = None,
    topk: int = 300,
    seed: int = 0,
    output_folder: Optional[PathLike] = None,
    det_plot: bool = True,
    save_scores: bool = True,
    progress: bool = True,
    num_workers: int = 0,
) -> Dict[str, Dict[str, float]]:
    """Verification metrics of a model on one or more trial lists.

    Args:
        model: ``embed_fn(wavs (B, T), lens (B,)) -> (B, D)`` (the caller handles eval mode / BN), or
            a model path: an exported folder, a checkpoint folder or a training output folder.
        trial_files: ``veri_test2.txt``-format lists (paths relative to ``<data_folder>/wav/``).
        data_folders: corpus root(s) (a list or a comma-separated string).
        trial_paths: ``wav`` (paths ``<speaker>/<session>/<utt>`` under ``<data_folder>/wav/``) or ``root``
            (paths of any depth relative to the data folder itself; AS-norm then needs a cohort given). The
            EER's standard error leaves out one first path component at a time (the speaker folder of a
            ``<speaker>/...`` layout; in a flat folder, one file).
        names: keys for results (default: each list's file name without extension).
        max_seconds: cap per utterance (None = full length); a cut file is named in a warning.
        convert_audio: test files at another sample rate are resampled and multi-channel files averaged
            (one warning naming the files); False: such a file is refused (``BadAudioError`` naming it and
            its rate). A file that is not audio, holds no sample or a NaN / inf sample is always refused.
        score_norm: None/"none" or "as-norm". AS-norm results are added as ``<name>_asnorm``.
        cohort_files / cohort_csv: unlabelled cohort utterances (a list of files, or the ``wav``
            column of a training CSV). Default: all ``<root>/wav`` utterances of speakers that are
            in none of the trial lists. Unusable cohort files are left out with a warning (and, for a
            training CSV, recorded in its ``skipped_files.txt``, whose files are not read).
        cohort_size: cohort utterances drawn at random (seeded); None = all.
        topk: the ``topk`` cohort scores closest to each utterance give its normalisation stats.
        output_folder: when given, results.json, scores_<name>.txt and det_curve.png are written.
        num_workers: DataLoader worker processes that read the trial and cohort audio (0: this process);
            the embeddings, and so the scores, do not depend on it.
    Returns:
        ``{name: metrics}`` (see the module docstring).
    """
    if isinstance(trial_files, (str, os.PathLike)):
        trial_files = [trial_files]
    trial_files = [os.fspath(t) for t in trial_files]
    if not trial_files:
        raise ValueError("evaluate_model: no trial list given")
    norm = (score_norm or "none").lower().replace("_", "-")
    if norm in ("asnorm", "as-norm", "s-norm", "snorm"):
        norm = "as-norm"
    elif norm not in ("none", "no", "off", "false"):
        raise ValueError(f"score_norm must be 'none' or 'as-norm', got {score_norm!r}")
    if norm == "as-norm" and trial_paths != "wav" and cohort_files is None and not cohort_csv:
        raise ValueError(
            f"score_norm=as-norm with trial_paths={trial_paths}: the cohort cannot be taken from <data_folder>/wav/"
            "<speaker>/... (no speaker layout). Fix: pass cohort_csv (e.g. the training run's save/train.csv)"
        )

    # trial lists -> files (each list checked on its own, so errors name it)
    lists: List[Tuple[str, str, list]] = []
    abs_of: Dict[str, str] = {}
    for i, path in enumerate(trial_files):
        trials = read_trial_list(path) if trial_paths == "wav" else read_trials(path, relative_to=trial_paths)
        n_target = sum(t.label for t in trials)
        if n_target in (0, len(trials)):
            raise ValueError(
                f"trial list {path} has only {'target' if n_target else 'non-target'} trials ({len(trials)}): "
                "EER and minDCF need both classes"
            )
        abs_of.update(resolve_trial_paths(trials, data_folders, trials_file=path, relative_to=trial_paths))
        name = names[i] if names is not None else list_name(path, [n for n, _, _ in lists])
        lists.append((name, path, trials))

    out_dir = None
    if output_folder is not None:
        out_dir = os.path.abspath(os.fspath(output_folder))
        os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ssrl_eval_") as tmp_dir:  # a checkpoint is exported there
        embed_fn = _as_embed_fn(model, device, tmp_dir)
        return _evaluate(
            embed_fn, lists, abs_of, data_folders, out_dir=out_dir, max_seconds=max_seconds,
            batch_seconds=batch_seconds, max_batch=max_batch, device=device, convert_audio=convert_audio, p_targets=p_targets,
            compute_se=compute_se, norm=norm, cohort_files=cohort_files, cohort_csv=cohort_csv,
            cohort_size=cohort_size, cohort_max_seconds=cohort_max_seconds, topk=topk, seed=seed,
            det_plot=det_plot, save_scores=save_scores, progress=progress, num_workers=num_workers,
        )


def _cohort_embeddings(embed_fn, files, cohort_csv, size, seed, exclude, topk, **kwargs) -> torch.Tensor:
    """Embeddings of the AS-norm cohort; unusable files are left out (named in a warning). A cohort from a
    training CSV shares the run's ``skipped_files.txt``: files found bad in training are not read, new
    ones are added to it."""
    from speechbrain_ssrl.data.views import bad_file_list

    bad_list = bad_file_list(os.fspath(cohort_csv)) if cohort_csv else None
    if bad_list is not None:
        known = [f for f in files if bad_list.reason(f) is not None]
        if known:
            logger.info("AS-norm cohort: %d file(s) listed in %s are left out", len(known), bad_list.path)
            files = [f for f in files if bad_list.reason(f) is None]
    files = sample_cohort(files, size, seed=seed, exclude=exclude)
    emb, kept, bad = extract_readable_embeddings(embed_fn, files, desc="cohort embeddings", **kwargs)
    for path, why in bad.items():
        if bad_list is not None:
            bad_list.add(path, why, " (AS-norm cohort)")
        else:
            logger.warning("AS-norm cohort: %s left out: %s", path, why)
    if len(kept) < 2:
        raise ValueError(f"the AS-norm cohort has {len(kept)} usable utterance(s): give another cohort_csv")
    logger.info("AS-norm cohort: %d unlabelled utterances, top-%d", len(kept), topk)
    return emb


def _evaluate(embed_fn, lists, abs_of, data_folders, *, out_dir, max_seconds, batch_seconds, max_batch, device,
              convert_audio, p_targets, compute_se, norm, cohort_files, cohort_csv, cohort_size, cohort_max_seconds, topk, seed,
              det_plot, save_scores, progress, num_workers=0) -> Dict[str, Dict[str, float]]:
    rel_files = list(dict.fromkeys(f for _, _, tr in lists for f in _distinct_files(tr)))

    logger.info("embedding %d utterances of %d trial list(s)", len(rel_files), len(lists))
    emb = extract_embeddings(
        embed_fn,
        [abs_of[f] for f in rel_files],
        max_seconds=max_seconds,
        batch_seconds=batch_seconds,
        max_batch=max_batch,
        device=device,
        progress=progress,
        desc="trial embeddings",
        convert_audio=convert_audio,
        num_workers=num_workers,
    )
    emb_of = {f: emb[i] for i, f in enumerate(rel_files)}

    cohort = None
    if norm == "as-norm":
        test_speakers = {scoring.speaker_of(f) for f in rel_files}
        if cohort_files is None:
            cohort_files = cohort_files_from_csv(cohort_csv) if cohort_csv else cohort_files_from_folders(data_folders, test_speakers)
        cohort = _cohort_embeddings(
            embed_fn, cohort_files, cohort_csv, cohort_size, seed, list(abs_of.values()), topk,
            max_seconds=cohort_max_seconds, batch_seconds=batch_seconds, max_batch=max_batch, device=device,
            progress=progress, num_workers=num_workers,
        )

    results: Dict[str, Dict[str, float]] = {}
    curves = {}
    for name, path, trials in lists:
        labels = np.array([t.label for t in trials])
        spk_a = [scoring.speaker_of(t.enrol) for t in trials] if compute_se else None
        spk_b = [scoring.speaker_of(t.test) for t in trials] if compute_se else None
        variants = [(name, None)]
        if cohort is not None:
            variants.append((f"{name}_asnorm", cohort))
        for key, coh in variants:
            scores = scoring.score_trials(emb_of, trials, cohort_emb=coh, topk=topk)
            try:
                m = scoring.trial_metrics(scores, labels, p_targets, spk_a, spk_b)
            except ValueError as e:
                raise ValueError(f"trial list {path}: {e}") from e
            results[key] = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in m.items()}
            logger.info(
                "%s: EER %.2f%% (se %s), %s, %d trials", key, m["eer"], f"{m['eer_se']:.2f}" if "eer_se" in m else "-",
                ", ".join(f"minDCF(p={p:g}) {m[f'min_dcf_{p:g}']:.4f}" for p in p_targets), m["n_trials"],
            )
            if out_dir is not None:
                if save_scores:
                    write_scores(os.path.join(out_dir, f"scores_{key}.txt"), trials, scores)
                if det_plot:
                    pos, neg = scoring.split_scores(scores, labels)
                    far, frr = scoring.det_curve(pos, neg)
                    curves[key] = (far, frr, m["eer"])

    if out_dir is not None:
        with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, allow_nan=False)
        if det_plot and curves:
            plot_det(curves, os.path.join(out_dir, "det_curve.png"))
    return results
