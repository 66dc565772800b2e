"""Spectral clustering of speaker embeddings on their k-nearest-neighbour graph (``cluster_method: spectral``).

Neither the paper nor the release: both cluster with k-means. At MiniVox scale k-means of the DINO teacher's
embeddings merges whole groups of similar speakers into a few large clusters (the largest of K0 = 200 holds 60-65
utterances, the majority home of 4-6 speakers) while splitting others; a partition of the k-NN graph follows the
local neighbourhoods instead and keeps clusters near the speakers' size (``bench/cluster_count_probe.py``, rows
``spectral_nn*``; recipe README). This is scikit-learn's ``SpectralClustering`` (a symmetric k-NN connectivity
graph, its normalised Laplacian's ``k`` leading eigenvectors, ``assign_labels="cluster_qr"``: no k-means on the
spectral embedding, no extra random start), wrapped here so that the recipe's clustering returns labels and
centroids as k-means does.

Cost: the graph is O(N · n_neighbors), but the eigensolver computes ``k`` eigenvectors of an N x N sparse matrix
(a dense (N, k) block and more), and its time depends on the data and grows steeply: MiniVox's 2,320 x 200 teacher
embeddings take 0.7-0.9 s on 2 CPU cores; ``bench/spectral_scale.py`` on synthetic speaker embeddings (16-core host,
``bench/results/spectral_scale_16core.json``): 2,320 x 200 0.6 s, 10,000 x 862 23 s, 25,000 x 2,155 over 110 s
(k-means 0.07-0.14 s). VoxCeleb2's 1.09 M x 8,000 is out of reach: use ``cluster_method: kmeans`` there.
:func:`spectral_clustering` refuses inputs above ``max_cells`` = N x k (default 5e8, about 4 GB for one float64
(N, k) block) with one line that names the fix (``cluster_method: kmeans``).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

__all__ = ["METHODS", "MAX_CELLS", "check_method", "spectral_clustering"]

METHODS = ("kmeans", "spectral")
MAX_CELLS = 5e8  # N x k above which the dense eigenvector block alone is several GB: refused


def check_method(method: str, n_neighbors: int, from_labels: bool = False, key: str = "cluster_method") -> str:
    """``method`` if it is one of :data:`METHODS`, ``n_neighbors`` >= 1 (for ``spectral``) and, when the clustering
    is to start from the current labels (``from_labels``: ``recluster_init: labels``), the method is k-means; else
    one-line ``ValueError``s naming the yaml keys. The recipe checks at start what the clustering checks again."""
    if method not in METHODS:
        raise ValueError(f"{key}: {method!r} is not one of {', '.join(METHODS)}")
    if method == "spectral" and (isinstance(n_neighbors, bool) or int(n_neighbors) < 1):
        raise ValueError(f"spectral_neighbors: {n_neighbors!r} must be a positive int")
    if from_labels and method != "kmeans":
        raise ValueError(f"recluster_init: labels is k-means only, but {key} is {method}: set recluster_init: "
                         "k-means++ or cluster_method: kmeans")
    return method


def spectral_clustering(x: torch.Tensor, k: int, n_neighbors: int = 10, seed: int = 0,
                        max_cells: float = MAX_CELLS) -> torch.Tensor:
    """Labels (N,) in 0..k-1 of the rows of ``x`` (L2-normalised here, so the k-NN graph is the cosine one).

    The graph keeps ``n_neighbors`` neighbours per row (symmetrised, 0/1 weights); a graph that is not connected
    is fine (scikit-learn warns; the warning is silenced: small components become their own clusters). Ids are
    renumbered so that they are 0..m-1 in order of first appearance, m <= k (the QR assignment can leave an id
    empty)."""
    from sklearn.cluster import SpectralClustering

    xf = torch.nn.functional.normalize(torch.as_tensor(x).detach().to("cpu", torch.float32), dim=1)
    n = xf.shape[0]
    if not 1 <= int(k) < n:
        raise ValueError(f"spectral clustering: k = {k} must be between 1 and the {n} rows - 1")
    if float(n) * float(k) > float(max_cells):
        raise ValueError(f"cluster_method: spectral needs an N x k = {n} x {k} eigenvector block (> {max_cells:.0e} "
                         "cells); use cluster_method: kmeans at this scale")
    nn = min(int(n_neighbors), n - 1)
    model = SpectralClustering(n_clusters=int(k), affinity="nearest_neighbors", n_neighbors=nn,
                               assign_labels="cluster_qr", random_state=int(seed))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        raw = model.fit(xf.numpy()).labels_
    # order of first appearance: stable ids whatever sklearn's numbering
    _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    return torch.as_tensor(np.argsort(np.argsort(first))[inverse], dtype=torch.long)
