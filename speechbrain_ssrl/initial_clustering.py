"""The initial clustering step (SSRL stage 2's start, and every round of the iterative baseline).

Teacher embeddings of every training utterance (full length, or capped at ``max_seconds``), batched by
length, L2-normalised → k-means (K0 clusters, spherical by default) → labels ``y0`` (CSV order) and
centroids ``mu`` (the AAM classifier's initial rows), saved as ``out_dir/initial_clustering.pt`` and
reused when present.

Under DDP with ``distributed=True`` (every rank calls it) the embeddings are sharded over the ranks, each
reading its files with ``num_workers`` DataLoader workers, and all-gathered; the main process then runs
k-means and saves the file, which the other ranks load. Without it (or inside ``run_on_main``) one
process embeds everything. The embeddings, and so the clustering, are the same either way.

The CSV's ``spk_id`` column is never used for clustering; when present it only feeds a diagnostic
:func:`speechbrain_ssrl.metrics.pseudo_label_report` (NMI, purity, ...), logged and stored in the file.

Saved file (``torch.save`` of plain containers, loadable with ``weights_only=True``)::

    labels     LongTensor (N,)   cluster of each CSV row, in CSV order
    centroids  FloatTensor (k, D) unit-norm in spherical mode
    ids        list[str] (N,)    the CSV IDs, in order
    k          int
    config     dict              the arguments that produced it (seed, n_iter, max_seconds, ...)
    inertia, n_iter, converged, seconds_embed, seconds_kmeans, report (dict or None), version
"""

from __future__ import annotations

import csv
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from speechbrain.utils.distributed import ddp_broadcast

from speechbrain_ssrl.clustering import KMeansResult, kmeans, label_centroids, mean_cosine
from speechbrain_ssrl.distributed import collective_ok
from speechbrain_ssrl.reclustering import recluster_merge_connectivity
from speechbrain_ssrl.spectral_clustering import check_method, merge_connected, spectral_clustering

logger = logging.getLogger(__name__)

FILENAME = "initial_clustering.pt"
_VERSION = 1


def _read_csv(train_csv: str, replacements: Optional[Dict[str, str]] = None):
    if not os.path.isfile(train_csv):
        raise FileNotFoundError(f"training CSV not found: {train_csv}")
    with open(train_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{train_csv} has no rows: re-run the data preparation")
    for key in ("ID", "wav"):
        if key not in rows[0]:
            raise ValueError(f"{train_csv} lacks the column {key!r} (expected ID,duration,wav,start,stop,spk_id)")
    ids = [r["ID"] for r in rows]
    if len(set(ids)) != len(ids):
        seen, dup = set(), None
        for i in ids:
            if i in seen:
                dup = i
                break
            seen.add(i)
        raise ValueError(f"{train_csv}: the ID column must be unique (duplicate: {dup!r})")
    wavs = []
    for r in rows:
        w = r["wav"]
        for key, val in (replacements or {}).items():
            w = w.replace("$" + key, str(val)).replace("{" + key + "}", str(val))
        wavs.append(w)
    durations: Optional[List[float]] = None
    if "duration" in rows[0]:
        try:
            durations = [float(r["duration"]) for r in rows]
        except (TypeError, ValueError):
            durations = None  # read from the file headers instead
    spk = None
    if "spk_id" in rows[0] and all(r.get("spk_id") for r in rows):
        spk = [r["spk_id"] for r in rows]
    return ids, wavs, durations, spk


def load_initial_clustering(
    path: str, expected_ids: Optional[Sequence[str]] = None, expected_k: Optional[int] = None
) -> Dict[str, Any]:
    """Loads a saved initial clustering and checks it against the current CSV IDs (and k).

    When the same IDs come in another order, the labels are permuted to the expected order.
    Raises ValueError (naming the fix: delete the file or change ``out_dir``) when IDs or k differ.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read the initial clustering {path} ({err}); delete it to recompute") from err
    for key in ("labels", "centroids", "ids", "k"):
        if not isinstance(data, dict) or key not in data:
            raise ValueError(f"{path} is not an initial clustering file (no {key!r}); delete it to recompute")
    fix = f"delete {path} to recompute it, or choose another out_dir"
    if expected_k is not None and int(data["k"]) != int(expected_k):
        raise ValueError(f"{path} holds k = {data['k']} clusters but k = {expected_k} was asked: {fix}")
    if expected_ids is not None:
        saved = list(data["ids"])
        want = list(expected_ids)
        if saved != want:
            if len(saved) == len(want) and set(saved) == set(want):
                pos = {u: i for i, u in enumerate(saved)}
                perm = torch.tensor([pos[u] for u in want], dtype=torch.long)
                data["labels"] = data["labels"][perm]
                data["ids"] = want
                logger.info("initial clustering %s: same utterances in another CSV order, labels reordered", path)
            else:
                missing = [u for u in want if u not in set(saved)]
                extra = len(set(saved) - set(want))
                raise ValueError(
                    f"{path} was computed for another set of utterances ({len(saved)} saved vs {len(want)} in "
                    f"the CSV; {len(missing)} new, e.g. {missing[:2]}, {extra} gone): {fix}"
                )
    return data


def initial_clustering(
    embed_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    train_csv: str,
    out_dir: str,
    k: int,
    *,
    max_seconds: Optional[float] = None,
    n_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    device: str = "cpu",
    spherical: bool = True,
    init: str = "k-means++",
    batch_seconds: float = 240.0,
    max_batch: int = 64,
    progress: bool = True,
    precision: str = "auto",
    chunk_size: Optional[int] = None,
    replacements: Optional[Dict[str, str]] = None,
    filename: str = FILENAME,
    sample_rate: int = 16000,
    num_workers: int = 0,
    distributed: bool = False,
    init_labels: Optional[torch.Tensor] = None,
    compare_labels: Optional[torch.Tensor] = None,
    embeddings: Optional[torch.Tensor] = None,
    method: str = "kmeans",
    n_neighbors: int = 10,
    merge_connectivity: Optional[float] = None,
) -> Dict[str, Any]:
    """Embeds every utterance of ``train_csv``, clusters into ``k``, saves and returns the result.

    Args:
        embed_fn: ``embed_fn(wavs (B, T), lens (B,) relative) -> (B, D)`` (the teacher), on ``device``.
        train_csv: SpeechBrain CSV (``ID,duration,wav,start,stop,spk_id``; one row per utterance).
        out_dir: where ``initial_clustering.pt`` is written (and reused from, when present).
        k: number of clusters (K0 = 8000 for VoxCeleb2).
        max_seconds: cap per utterance (its start is kept); ``None`` = full length.
        n_iter, tol, seed, spherical, init, precision, chunk_size: passed to :func:`kmeans`.
        batch_seconds, max_batch: audio per embedding batch (batches group similar lengths).
        replacements: ``{"data_root": "/path"}`` fills ``$data_root`` / ``{data_root}`` in the wav column.
        sample_rate: the training audio's rate (another rate makes a file unusable, as in training).
        num_workers: DataLoader worker processes that read the audio (0: the calling process reads it).
        distributed: under DDP, call it on every rank: the embedding is sharded over the ranks, k-means runs
            on the main process, every rank returns the saved result (see the module docstring).
        init_labels: (N,) labels in CSV order whose ``k`` clusters start k-means (their normalised mean
            embeddings, in ascending label order) instead of ``init``: a re-clustering that starts from the
            current labels (``reclustering.py``); saved as ``init: labels``.
        compare_labels: (N,) labels in CSV order (any ids) that the result may replace: the k-means objective
            (``clustering.mean_cosine``) of the result (``objective``) and of these labels (``compare_objective``)
            on the same embeddings are saved with it, so a reused result still has both (``reclustering.accepts``).
        embeddings: (N, D) embeddings in CSV order, already computed (under DDP the same on every rank): nothing
            is embedded and ``embed_fn`` is not called (``reclustering.epoch_embeddings``: the teacher embeddings
            an SSRL epoch recorded); L2-normalised here, as computed ones are; saved as ``embeddings: given``.
        method: ``kmeans`` (paper and release) or ``spectral`` (``spectral_clustering.py``: the k-NN graph of
            the embeddings with ``n_neighbors`` neighbours per row, partitioned into at most ``k`` clusters;
            ``n_iter``, ``tol``, ``init`` and ``precision`` unused; the centroids are the clusters' normalised
            means, a cluster left empty gets a random unit row). Saved in the config (a reused file made with
            another method is reported).
        merge_connectivity: ``None`` or a threshold in (0, 1]: after the clustering, every pair of clusters
            whose connectivity in the embeddings' ``n_neighbors``-NN graph is at least this joins
            (``spectral_clustering.merge_connected``; fewer clusters than ``k``: the ids left over own nothing and
            get random unit centroids); saved in the config and as ``merged`` (clusters removed).
    Returns:
        dict with ``labels`` (LongTensor (N,), CSV order), ``centroids`` (k, D), ``ids`` (list), and the
        saved extras (``inertia``, ``n_iter``, ``report``, ``path``, ...).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    merge_connectivity = recluster_merge_connectivity(merge_connectivity, key="merge_connectivity")
    ids, wavs, durations, spk = _read_csv(train_csv, replacements)
    path = os.path.join(out_dir, filename)
    shard = bool(distributed) and collective_ok()
    if ddp_broadcast(os.path.isfile(path)) if shard else os.path.isfile(path):  # rank 0's view decides
        data = load_initial_clustering(path, expected_ids=ids, expected_k=k)
        logger.info("initial clustering: reusing %s (%d utterances, k = %d)", path, len(ids), k)
        now = dict(max_seconds=max_seconds, n_iter=n_iter, seed=seed, spherical=spherical, init=init, method=method)
        if method != "kmeans" or merge_connectivity is not None:
            now["n_neighbors"] = int(n_neighbors)
        now["merge_connectivity"] = merge_connectivity
        # k-means files do not name their method; files made without merging do not name a threshold
        saved = {"method": "kmeans", "merge_connectivity": None, **(data.get("config") or {})}
        diff = {key: (saved.get(key), val) for key, val in now.items() if key in saved and saved[key] != val}
        if diff:
            logger.warning(
                "initial clustering %s was made with other settings (saved, now): %s; reusing it anyway "
                "(delete the file to recompute)", path, diff,
            )
        data["path"] = path
        return data
    if k > len(ids):
        raise ValueError(f"k = {k} clusters but {train_csv} has only {len(ids)} utterances")
    if embeddings is not None and tuple(embeddings.shape[:1]) != (len(ids),):
        raise ValueError(f"embeddings must have one row per utterance of {train_csv} ({len(ids)}), got {tuple(embeddings.shape)}")
    if embeddings is None:  # given embeddings need no audio
        missing = [w for w in wavs if not os.path.isfile(w)]
        if len(missing) == len(wavs):
            raise FileNotFoundError(
                f"none of the {len(wavs)} audio files of {train_csv} exists, e.g. {missing[0]}: is the corpus mounted? "
                "Re-run the data preparation if it moved"
            )

    check_method(method, n_neighbors, from_labels=init == "labels" or init_labels is not None)
    if init == "labels" and init_labels is None:
        raise ValueError("init: labels needs init_labels (the labels whose clusters start k-means)")
    if init_labels is not None:
        init_labels = torch.as_tensor(init_labels).to("cpu", torch.long)
        if init_labels.numel() != len(ids) or torch.unique(init_labels).numel() != k:
            raise ValueError(f"init_labels must give each of the {len(ids)} utterances one of exactly k = {k} labels")
        init = "labels"
    if compare_labels is not None:
        compare_labels = torch.as_tensor(compare_labels).to("cpu", torch.long)
        if compare_labels.numel() != len(ids):
            raise ValueError(f"compare_labels must give each of the {len(ids)} utterances a label, got {compare_labels.numel()}")
    config = dict(
        train_csv=os.path.abspath(train_csv), k=k, max_seconds=max_seconds, n_iter=n_iter, tol=tol, seed=seed,
        spherical=spherical, init=init, precision=precision, batch_seconds=batch_seconds, max_batch=max_batch,
        embeddings="computed" if embeddings is None else "given",
    )
    if method != "kmeans":  # k-means files keep their old config (reused without a settings warning)
        config.update(method=method, n_neighbors=int(n_neighbors))
    if merge_connectivity is not None:  # files made without merging keep their config
        config.update(merge_connectivity=merge_connectivity, n_neighbors=int(n_neighbors))
    t0 = time.perf_counter()
    if embeddings is None:
        emb = _embed_all(
            embed_fn, train_csv, ids, wavs, durations, max_seconds, batch_seconds, max_batch, device, progress,
            sample_rate, num_workers, shard,
        )
    else:
        # L2-normalised, as _embed_all's
        emb = torch.nn.functional.normalize(torch.as_tensor(embeddings).detach().to("cpu", torch.float32), dim=1)
    t_embed = time.perf_counter() - t0
    logger.info("initial clustering: %d embeddings of dimension %d %s in %.1f s", emb.shape[0], emb.shape[1],
                "computed" if embeddings is None else "given", t_embed)
    if not shard:
        return _cluster_and_save(emb, ids, spk, k, path, out_dir, config, t_embed, n_iter=n_iter, tol=tol, seed=seed,
                                 spherical=spherical, init=init, device=device, precision=precision,
                                 chunk_size=chunk_size, progress=progress, init_labels=init_labels,
                                 compare_labels=compare_labels, method=method, n_neighbors=n_neighbors,
                                 merge_connectivity=merge_connectivity)
    failure, data = None, None
    if torch.distributed.get_rank() == 0:  # (not SpeechBrain's if_main_process: it reads RANK from the environment)
        try:
            data = _cluster_and_save(emb, ids, spk, k, path, out_dir, config, t_embed, n_iter=n_iter, tol=tol,
                                     seed=seed, spherical=spherical, init=init, device=device, precision=precision,
                                     chunk_size=chunk_size, progress=progress, init_labels=init_labels,
                                     compare_labels=compare_labels, method=method, n_neighbors=n_neighbors,
                                     merge_connectivity=merge_connectivity)  # the main process: every rank's share
        except Exception as e:  # noqa: BLE001 - the other ranks are told, then it is raised here
            failure = e
    message = ddp_broadcast(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    if message is not None:
        raise RuntimeError(f"initial clustering failed on the main process: {message}")
    if data is None:  # the other ranks: the main process's saved result
        data = load_initial_clustering(path, expected_ids=ids, expected_k=k)
        data["path"] = path
    return data


def _full_centroids(emb: torch.Tensor, labels: torch.Tensor, k: int, spherical: bool, seed: int) -> torch.Tensor:
    """The (k, D) centroids of ``labels`` (ids < k); ids without a member (a spectral partition's or a merge's
    leftovers) get random unit rows: they own nothing, and pruning drops them."""
    centroids = label_centroids(emb, labels, k, spherical).float()
    empty = torch.isnan(centroids).any(dim=1)
    if bool(empty.any()):
        g = torch.Generator().manual_seed(int(seed))
        centroids[empty] = torch.nn.functional.normalize(torch.randn(int(empty.sum()), emb.shape[1], generator=g), dim=1)
    return centroids


def _cluster_and_save(emb, ids, spk, k, path, out_dir, config, t_embed, *, n_iter, tol, seed, spherical, init, device,
                      precision, chunk_size, progress, init_labels=None,
                      compare_labels=None, method="kmeans", n_neighbors=10,
                      merge_connectivity=None) -> Dict[str, Any]:
    """k-means (or spectral clustering) of ``emb``, then (``merge_connectivity``) the merging of strongly connected
    clusters, the diagnostic report, and the atomic save (one process); ``compare_labels``: both partitions'
    k-means objectives saved."""
    t0 = time.perf_counter()
    if method == "spectral":
        labels = spectral_clustering(emb, k, n_neighbors=n_neighbors, seed=seed)
        centroids = _full_centroids(emb, labels, k, spherical, seed)
        objective = mean_cosine(emb, labels)
        res = KMeansResult(centroids, labels, float(emb.shape[0]) * (1.0 - objective), 0, True)
        t_kmeans = time.perf_counter() - t0
        logger.info("initial clustering: spectral (k-NN graph, %d neighbours) into k = %d, %.1f s, %d non-empty "
                    "clusters, mean cosine to the own centroid %.4f", n_neighbors, k, t_kmeans,
                    int(torch.unique(labels).numel()), objective)
    else:
        if init_labels is not None:  # the labels' clusters, in ascending label order
            init = label_centroids(emb, torch.unique(init_labels, return_inverse=True)[1], k, spherical)
        # distributed=False: under DDP this runs on the main process only (the others load the file)
        res = kmeans(
            emb, k, n_iter=n_iter, tol=tol, seed=seed, spherical=spherical, init=init, device=device,
            precision=precision, chunk_size=chunk_size, distributed=False, progress=progress,
        )
        t_kmeans = time.perf_counter() - t0
        logger.info(
            "initial clustering: k-means k = %d, %d iterations (converged: %s), inertia %.6g, %.1f s, %d non-empty "
            "clusters", k, res.n_iter, res.converged, res.inertia, t_kmeans, int(torch.unique(res[1]).numel()),
        )
    centroids, labels = res
    labels = labels.cpu().long()
    centroids = centroids.cpu().float()
    merged = 0
    if merge_connectivity is not None:  # the pairs of clusters the k-NN graph joins most become one
        merged_labels, merged = merge_connected(emb, labels, merge_connectivity, n_neighbors=n_neighbors)
        if merged:
            labels = merged_labels
            centroids = _full_centroids(emb, labels, k, spherical, seed)
        logger.info("initial clustering: merging the clusters of k-NN connectivity >= %g (%d neighbours) removed %d "
                    "clusters, %d left", merge_connectivity, n_neighbors, merged, int(torch.unique(labels).numel()))

    report = None
    if spk is not None:  # diagnostics only: the true ids never entered the clustering
        from speechbrain_ssrl.metrics import pseudo_label_report

        report = pseudo_label_report(labels, spk)
        logger.info(
            "initial clustering vs true speakers (diagnostic): NMI %.4f, ARI %.4f, accuracy %.4f, purity %.4f, "
            "clusters %d, speakers %d",
            report["nmi"], report["ari"], report["accuracy"], report["purity"], report["n_clusters"],
            report["n_classes"],
        )

    data = dict(
        labels=labels, centroids=centroids, ids=list(ids), k=int(k), config=config, inertia=float(res.inertia),
        n_iter=int(res.n_iter), converged=bool(res.converged), seconds_embed=float(t_embed),
        seconds_kmeans=float(t_kmeans), report=report, version=_VERSION, merged=int(merged),
    )
    if compare_labels is not None:  # plain floats: checkpoint-safe
        data["objective"] = mean_cosine(emb, labels)
        data["compare_objective"] = mean_cosine(emb, compare_labels)
    os.makedirs(out_dir, exist_ok=True)
    tmp = path + f".tmp{os.getpid()}"
    torch.save(data, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written file to be reused
    logger.info("initial clustering saved to %s", path)
    data["path"] = path
    return data


def embed_training_set(
    embed_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    train_csv: str,
    *,
    max_seconds: Optional[float] = None,
    device: str = "cpu",
    progress: bool = True,
    sample_rate: int = 16000,
    batch_seconds: float = 240.0,
    max_batch: int = 64,
    num_workers: int = 0,
) -> Tuple[List[str], torch.Tensor]:
    """(CSV IDs, L2-normalised embeddings (N, D)) of every training utterance, read as for the initial
    clustering (an unusable file is skipped and listed; its row embeds the next row that reads)."""
    ids, wavs, durations, _ = _read_csv(train_csv)
    emb = _embed_all(embed_fn, train_csv, ids, wavs, durations, max_seconds, batch_seconds, max_batch, device, progress,
                     sample_rate, num_workers)
    return list(ids), emb


def _sample_ranges(train_csv: str, n: int) -> List[Tuple[int, Optional[int]]]:
    """(start, stop) in samples of each row (the CSV's ``start`` / ``stop`` columns; (0, None) = the whole file)."""
    with open(train_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows[:n]:
        start, stop = (r.get("start") or "").strip(), (r.get("stop") or "").strip()
        out.append((int(float(start)) if start else 0, int(float(stop)) if stop else None))
    return out


def _embed_all(embed_fn, train_csv, ids, wavs, durations, max_seconds, batch_seconds, max_batch, device, progress,
               sample_rate, num_workers=0, distributed=False):
    """L2-normalised embeddings of ``wavs`` (N, D) on the CPU (see ``embeddings.extract_embeddings``).

    Files are read like the training views (``views.read_with_fallback`` at ``sample_rate``): an unusable file is
    recorded in the run's ``skipped_files.txt`` and its row embeds the next row that reads, the row the
    training loader gives in its place.
    """
    from speechbrain_ssrl.data.views import bad_file_list, read_checked, read_with_fallback
    from speechbrain_ssrl.embeddings import extract_embeddings

    rows = [{"ID": i, "wav": w} for i, w in zip(ids, wavs)]
    bad = bad_file_list(train_csv)
    ranges = _sample_ranges(train_csv, len(ids))

    def read_row(j: int, ms: Optional[float]) -> torch.Tensor:
        start, stop = ranges[j]  # a segment of a longer recording (data_format folder / csv), or the whole file
        if ms is not None:
            cap = start + int(round(ms * sample_rate))
            stop = cap if stop is None else min(stop, cap)
        return read_checked(wavs[j], start, stop, sample_rate)

    def read(i: int, ms: Optional[float]) -> torch.Tensor:
        return read_with_fallback(rows, i, lambda j: read_row(j, ms), bad_files=bad)[1]

    return extract_embeddings(
        embed_fn, wavs, durations=durations, max_seconds=max_seconds, batch_seconds=batch_seconds,
        max_batch=max_batch, device=device, normalize=True, progress=progress, desc="initial clustering: embeddings",
        sample_rate=sample_rate, read_fn=read, num_workers=num_workers, distributed=distributed,
        pad=True,  # padded batches of similar length: far fewer passes over 10^6 training files (embeddings.py)
    )
