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

__all__ = ["METHODS", "MAX_CELLS", "check_method", "cluster_connectivity", "merge_connected", "spectral_clustering",
           "union_pairs"]

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


def cluster_connectivity(x: torch.Tensor, labels: torch.Tensor, n_neighbors: int = 10):
    """How strongly the k-NN graph of the rows of ``x`` joins each pair of clusters of ``labels`` (ids 0..k-1).

    The graph: each row's ``n_neighbors`` cosine nearest neighbours (itself excluded), symmetrised, 0/1 weights
    (the graph :func:`spectral_clustering` partitions, without its self loops). Connectivity of clusters a, b =
    the graph's edges between them / the smaller of the two clusters' total degrees: 1 when every edge of the
    smaller cluster leads into the other, 0 when none does. Sparse: O(N · n_neighbors) edges, k x k counts.

    Returns numpy arrays ``(a, b, connectivity)`` over the pairs a < b joined by at least one edge, strongest first
    (ties in (a, b) order)."""
    from scipy import sparse
    from sklearn.neighbors import kneighbors_graph

    xf = torch.nn.functional.normalize(torch.as_tensor(x).detach().to("cpu", torch.float32), dim=1).numpy()
    y = torch.as_tensor(labels).to("cpu", torch.long).numpy()
    n = xf.shape[0]
    if y.shape != (n,):
        raise ValueError(f"need one label per row: {y.shape[0] if y.ndim else 0} labels for {n} rows")
    if n < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    graph = kneighbors_graph(xf, min(int(n_neighbors), n - 1), metric="cosine", mode="connectivity", include_self=False)
    graph = ((graph + graph.T) > 0).astype(np.float64)
    k = int(y.max()) + 1
    member = sparse.csr_matrix((np.ones(n), (np.arange(n), y)), shape=(n, k))
    edges = (member.T @ graph @ member).tocoo()  # (k, k): within (diagonal) and between clusters
    degree = np.asarray((member.T @ graph).sum(axis=1)).ravel()
    keep = edges.row < edges.col
    a, b, e = edges.row[keep].astype(np.int64), edges.col[keep].astype(np.int64), edges.data[keep]
    conn = e / np.maximum(np.minimum(degree[a], degree[b]), 1.0)
    order = np.lexsort((b, a, -conn))
    return a[order], b[order], conn[order]


class _Groups:
    """Union-find over cluster ids 0..k-1: which clusters have been joined (path halving; the smaller id leads)."""

    def __init__(self, k: int):
        self.parent = list(range(int(k)))

    def root(self, c: int) -> int:
        parent = self.parent
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    def join(self, p: int, q: int) -> bool:
        """Joins the groups of p and q; False when they were one group already."""
        rp, rq = self.root(int(p)), self.root(int(q))
        if rp == rq:
            return False
        self.parent[max(rp, rq)] = min(rp, rq)
        return True

    def relabel(self, y: torch.Tensor) -> torch.Tensor:
        """Labels ``y`` (ids < k) by group, renumbered 0..m-1 in order of each group's first utterance."""
        roots = np.array([self.root(c) for c in range(len(self.parent))], dtype=np.int64)[y.numpy()]
        _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
        return torch.as_tensor(np.argsort(np.argsort(first))[inverse], dtype=torch.long)


def union_pairs(labels: torch.Tensor, pairs) -> torch.Tensor:
    """The labels with every listed pair of clusters joined (transitively: pairs (1, 2) and (2, 3) make one
    cluster), renumbered 0..m-1 in order of the first utterance of each merged cluster."""
    y = torch.as_tensor(labels).to("cpu", torch.long)
    groups = _Groups(int(y.max()) + 1 if y.numel() else 0)
    for p, q in pairs:
        groups.join(p, q)
    return groups.relabel(y)


def merge_connected(x: torch.Tensor, labels: torch.Tensor, min_connectivity: float, n_neighbors: int = 10,
                    min_clusters: int = 2):
    """Joins the pairs of clusters whose k-NN connectivity (:func:`cluster_connectivity`) is at least
    ``min_connectivity`` (yaml ``recluster_merge_connectivity``; neither paper nor release), strongest first, as
    long as at least ``min_clusters`` clusters remain (a low threshold on a dense graph would join everything).
    Returns the merged labels (0..m-1, as :func:`union_pairs` numbers them) and how many clusters the merging
    removed; ``min_connectivity`` ``None`` (or no labels): a copy of the labels and 0.

    Why: at K0 above the speaker count a clustering splits speakers, and the two halves of a speaker share more
    neighbour edges than two speakers do on average; merging them lets a run's cluster count fall as the
    representation joins them. It cannot tell a split speaker from two close speakers (a voice and its transformed
    copy): on MiniVox the most connected true-speaker pairs reach the same connectivity as the most connected split
    pairs (``bench/cluster_count_probe.py --graph_merge``)."""
    y = torch.as_tensor(labels).to("cpu", torch.long)
    if min_connectivity is None or y.numel() == 0:
        return y.clone(), 0
    tau = float(min_connectivity)
    if not 0.0 < tau <= 1.0:  # the yaml key is checked by reclustering.recluster_merge_connectivity
        raise ValueError(f"min_connectivity: {min_connectivity!r} must be in (0, 1]")
    a, b, conn = cluster_connectivity(x, y, n_neighbors)
    present = int(torch.unique(y).numel())
    groups, count = _Groups(int(y.max()) + 1), present
    strong = conn >= tau
    for p, q in zip(a[strong].tolist(), b[strong].tolist()):
        if count <= int(min_clusters):
            break
        count -= int(groups.join(p, q))  # a pair inside one group already joins nothing
    return groups.relabel(y), present - count
