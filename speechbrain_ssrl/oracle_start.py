"""A diagnostic start for the label-correction bench: the true speaker labels with a chosen fraction randomised.

SSRL claims to *correct* noisy pseudo labels. To measure that apart from the quality of the k-means start,
``run_experiments.py --start oracle`` starts stage 2 from labels whose noise is known: every training
utterance gets its true speaker (``split: speaker``, K0 = number of speakers) or its speaker's session
(``split: session``: each speaker split into one cluster per recording session, a line a channel-aware
model can learn, never a random split), then a fraction ``noise`` of the utterances, chosen at random,
get a label drawn uniformly from all K0 clusters. The centroids (the AAM classifier's first rows) are the
normalised mean DINO embeddings of each cluster's members, as k-means would give them.

The true labels enter the *start only*, and only in this diagnostic mode (named so in every table); a
loop that reflects removes the noise from such a start, one that mixes speakers loses NMI from it. The
saved file has the format of ``initial_clustering.pt``, so the recipe picks it up like a k-means result.
"""

from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

SPLITS = ("speaker", "session")


def session_of(wav_path: str) -> str:
    """The recording session of a VoxCeleb-layout file: ``.../<speaker>/<session>/<utt>.wav`` → ``<session>``."""
    return os.path.basename(os.path.dirname(os.path.normpath(wav_path)))


def oracle_labels(
    speakers: Sequence[str], sessions: Sequence[str], noise: float, split: str = "speaker", seed: int = 0
) -> Tuple[torch.Tensor, int, Dict[str, float]]:
    """(labels (N,), K0, info): true speaker (or speaker-session) ids, a fraction ``noise`` randomised.

    ``info`` holds ``noise``, ``split``, ``k``, ``n_randomised`` and ``n_changed`` (randomised utterances
    whose new label differs from the true one: about ``noise x (1 - 1/K0)`` of them).
    """
    if split not in SPLITS:
        raise ValueError(f"oracle split must be one of {SPLITS}, got {split!r}")
    if not 0.0 <= float(noise) <= 1.0:
        raise ValueError(f"oracle noise must be in [0, 1], got {noise}")
    if len(speakers) != len(sessions):
        raise ValueError(f"{len(speakers)} speakers for {len(sessions)} sessions")
    keys: List[Tuple[str, ...]] = [(s,) if split == "speaker" else (s, t) for s, t in zip(speakers, sessions)]
    ids = {k: i for i, k in enumerate(sorted(set(keys)))}
    clean = torch.tensor([ids[k] for k in keys], dtype=torch.long)
    K = len(ids)
    g = torch.Generator().manual_seed(int(seed))
    pick = torch.rand(clean.numel(), generator=g) < float(noise)
    labels = clean.clone()
    labels[pick] = torch.randint(0, K, (int(pick.sum()),), generator=g)
    info = {"noise": float(noise), "split": split, "k": K, "n_randomised": int(pick.sum()),
            "n_changed": int((labels != clean).sum()), "seed": int(seed)}
    return labels, K, info


def save_oracle_start(
    path: str, ids: Sequence[str], labels: torch.Tensor, embeddings: torch.Tensor, k: int, info: Dict
) -> Dict:
    """Writes ``labels`` with centroids = normalised cluster means of ``embeddings`` in the
    ``initial_clustering.pt`` format (atomically); a cluster with no member gets a random unit row."""
    x = F.normalize(embeddings.float(), dim=1)
    sums = torch.zeros(k, x.shape[1]).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k)
    centroids = F.normalize(torch.randn(k, x.shape[1], generator=torch.Generator().manual_seed(0)), dim=1)
    centroids[counts > 0] = F.normalize(sums[counts > 0], dim=1)
    data = dict(labels=labels.long(), centroids=centroids, ids=list(ids), k=int(k), config={"oracle": dict(info)},
                inertia=0.0, n_iter=0, converged=True, seconds_embed=0.0, seconds_kmeans=0.0, report=None, version=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + f".tmp{os.getpid()}"
    torch.save(data, tmp)
    os.replace(tmp, path)
    return data
