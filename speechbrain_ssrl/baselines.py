"""The MFCC mean+std cosine yardstick: a speaker-verification score that learns nothing.

Each utterance is embedded as the per-utterance mean and standard deviation of its MFCCs
(SpeechBrain's ``MFCC``: c1-c20 from 40 mel bands, no deltas; c0, the loudness, is dropped), the
embeddings are mean- and variance-normalised over the test set (``norm="mean"``: mean only), and each
trial is scored by cosine similarity. A learned model that does not beat this number has learned
nothing about speakers.

CLI::

    python -m speechbrain_ssrl.baselines --data_folder data/minivox_demo [--trials FILE] [--out results.json]

The result holds the EER (%) with its leave-one-test-speaker-out standard error and the normalised
minDCF at p_target 0.01 and 0.05 (``speechbrain_ssrl.scoring``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from speechbrain.dataio.dataio import read_audio
from speechbrain.lobes.features import MFCC

from speechbrain_ssrl import scoring
from speechbrain_ssrl.data.trials import read_trials, resolve_trial_paths, split_data_folders

__all__ = ["MfccMeanStd", "normalise", "mfcc_baseline", "main"]


class MfccMeanStd:
    """Embeds a waveform as [mean, std] of its MFCC frames (a ``2 * n_mfcc`` vector)."""

    def __init__(self, n_mfcc: int = 20, n_mels: int = 40, sample_rate: int = 16000):
        self.n_mfcc = n_mfcc
        # one more coefficient than kept: c0 (log energy) measures loudness, not the speaker, and
        # would dominate the cosine
        self.mfcc = MFCC(deltas=False, context=False, n_mfcc=n_mfcc + 1, n_mels=n_mels, sample_rate=sample_rate)

    @torch.no_grad()
    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav`` (T,) or (1, T) float -> (2 * n_mfcc,): mean and std of c1..c{n_mfcc}."""
        x = wav.float().reshape(1, -1)
        feats = self.mfcc(x)[0][:, 1:]  # (frames, n_mfcc), c0 dropped
        return torch.cat([feats.mean(0), feats.std(0, unbiased=False)])

    def embed_files(self, paths: Sequence[str], progress: bool = True) -> torch.Tensor:
        """(N, 2 * n_mfcc) embeddings of the files, in order."""
        out = []
        for p in tqdm(paths, desc="MFCC mean+std", unit="utt", disable=not progress):
            wav = read_audio(p)
            if wav.dim() > 1:
                wav = wav.mean(-1)
            out.append(self(wav))
        return torch.stack(out)


def normalise(emb: torch.Tensor, norm: str = "meanvar") -> torch.Tensor:
    """Normalises embeddings over the set: ``"mean"`` subtracts the mean, ``"meanvar"`` also divides
    each dimension by its standard deviation (so that no MFCC coefficient dominates the cosine)."""
    if norm not in ("mean", "meanvar"):
        raise ValueError(f"norm must be 'mean' or 'meanvar', got {norm!r}")
    emb = emb - emb.mean(0, keepdim=True)
    if norm == "meanvar":
        emb = emb / emb.std(0, keepdim=True).clamp_min(1e-8)
    return emb


def mfcc_baseline(
    data_folder: Union[str, Sequence[str]],
    trials_file: Optional[str] = None,
    n_mfcc: int = 20,
    norm: str = "meanvar",
    progress: bool = True,
    scores_file: Optional[str] = None,
) -> Dict[str, float]:
    """Scores the trial list with the MFCC mean+std cosine baseline.

    Args:
        data_folder: corpus root(s) with ``wav/`` (comma-separated or a list).
        trials_file: ``veri_test2.txt``-format list (default: ``<first root>/veri_test2.txt``).
        n_mfcc: coefficients c1..c{n_mfcc} are used (c0 dropped).
        norm: ``"meanvar"`` (default: mean and variance normalised over the test set) or ``"mean"``.
        scores_file: optional path for the per-trial scores (``enrol test label score`` lines, the
            format of ``evaluate.py``'s ``scores_<list>.txt``, for paired comparisons).
    Returns:
        ``eer`` and ``eer_se`` (%), ``min_dcf_0.01``, ``min_dcf_0.05``, ``n_trials``,
        ``n_target_trials``, ``n_utterances``, ``seconds``.
    """
    t0 = time.time()
    roots = split_data_folders(data_folder)
    trials_file = trials_file or os.path.join(roots[0], "veri_test2.txt")
    trials = read_trials(trials_file)
    paths = resolve_trial_paths(trials, roots, trials_file=trials_file)
    rels = sorted(paths)
    emb = MfccMeanStd(n_mfcc=n_mfcc).embed_files([paths[r] for r in rels], progress=progress)
    emb = normalise(emb, norm)  # over the test set
    index = {r: i for i, r in enumerate(rels)}
    a = torch.tensor([index[t.enrol] for t in trials])
    b = torch.tensor([index[t.test] for t in trials])
    scores = scoring.cosine_scores(emb[a], emb[b]).numpy().astype(np.float64)
    labels = np.array([t.label for t in trials])
    if scores_file:
        os.makedirs(os.path.dirname(os.path.abspath(scores_file)), exist_ok=True)
        with open(scores_file, "w", encoding="utf-8") as f:
            for t, v in zip(trials, scores.tolist()):
                f.write(f"{t.enrol} {t.test} {t.label} {v:.6f}\n")
    res: Dict[str, float] = dict(
        scoring.eer_with_se(scores, labels, [t.enrol_spk for t in trials], [t.test_spk for t in trials])
    )
    pos, neg = scoring.split_scores(scores, labels)
    for p in (0.01, 0.05):
        res[f"min_dcf_{p:g}"] = scoring.min_dcf(pos, neg, p_target=p)[0]
    res.update(
        n_trials=len(trials),
        n_target_trials=int(labels.sum()),
        n_utterances=len(rels),
        seconds=round(time.time() - t0, 2),
    )
    return {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in res.items()}


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    """CLI: prints the EER ± SE and minDCF; ``--out`` writes ``{"<trial list>": {...}}`` as JSON."""
    ap = argparse.ArgumentParser(description="MFCC mean+std cosine speaker-verification baseline.")
    ap.add_argument("--data_folder", required=True, help="corpus root(s) holding wav/ (comma-separated)")
    ap.add_argument("--trials", default=None, help="trial list (default: <data_folder>/veri_test2.txt)")
    ap.add_argument("--out", default=None, help="write the results to this JSON file")
    ap.add_argument("--scores", default=None, help="write per-trial scores (enrol test label score) to this file")
    ap.add_argument("--n_mfcc", type=int, default=20)
    ap.add_argument("--norm", choices=["meanvar", "mean"], default="meanvar",
                    help="normalisation over the test set (default: mean and variance)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    res = mfcc_baseline(a.data_folder, a.trials, n_mfcc=a.n_mfcc, norm=a.norm, scores_file=a.scores)
    name = os.path.basename(a.trials) if a.trials else "veri_test2.txt"
    print(
        f"MFCC mean+std cosine on {name}: EER {res['eer']:.2f} ± {res['eer_se']:.2f} % "
        f"(leave-one-speaker-out SE), minDCF(0.01) {res['min_dcf_0.01']:.3f}, "
        f"minDCF(0.05) {res['min_dcf_0.05']:.3f}, {res['n_trials']} trials, {res['seconds']:.1f} s"
    )
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump({name: res}, f, indent=2)
            f.write("\n")
    return res


if __name__ == "__main__":
    main()
