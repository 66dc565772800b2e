"""k-means for pseudo labels: pure torch, CPU and CUDA, chunked, exact in low precision, DDP-aware.

SSRL clusters about 1.09 M teacher embeddings into K0 = 8000 before stage 2, and the iterative baseline
does it every round. :func:`kmeans` is Lloyd's algorithm with

* **spherical** (cosine; the default, inputs and centroids are L2-normalised, centroids re-normalised
  after every update) or **Euclidean** mode;
* **k-means++** (plain D^2 sampling, Arthur & Vassilvitskii 2007) or **random** initialisation, or
  given initial centroids. k-means++ runs on a random subsample of ``init_sample_size`` points
  (default ``min(N, max(40 k, 10000))``, drawn with the seed) so that its k sequential passes stay
  cheap at N = 1 M;
* **chunked assignment**: rows are processed ``chunk_size`` at a time, so the N x K score matrix never
  exists (only a chunk x K block does);
* **low-precision distance products with an exact re-check** (``precision="bf16"``, ``"fp16"`` (spherical
  only) or ``"tf32"``): the
  scores ``x . c`` (``x . c - |c|^2 / 2`` in Euclidean mode) are computed in bf16/TF32 with fp32
  accumulation. From the rounding-error bound of that product (``margin_factor``) every score is within
  ``e = f * (|x| max|c| + max|b|)`` of its exact value, so any centroid whose low-precision score is
  more than ``2 e`` below the row's best cannot be the exact argmax. Rows whose runner-up is inside that
  margin are re-scored exactly in fp32 over all their candidates. Assignments therefore equal those of
  an fp32 computation (up to fp32 rounding itself, i.e. exact ties), at roughly the speed of the
  low-precision product. ``tie_margin`` overrides the bound (``0`` = plain low-precision argmax);
* torch backend: per row chunk one low-precision product, then either the top-4 of every row
  (``TORCH_STRATEGY[device] = "topk"``, the CPU default) or the row max + the max of the rest, with the
  top-4 only for the ambiguous rows (``"max2"``, the CUDA default);
* on CUDA, an optional fused **Triton** kernel (``backend="triton"``, chosen by ``"auto"`` when Triton
  works) computes the bf16 product and the running top-3 of every row in registers, so the chunk x K
  block is never written to memory; a one-off self-check against torch guards it;
* **bounds** (``bounds=True``, :class:`AssignmentBounds`): after the first iterations most rows cannot
  change cluster; each row keeps an upper bound on its other centroids' scores (Hamerly's bound, with
  the few centroids that moved most scored directly), and only rows whose own exact score falls below
  it are searched again. The labels are those of a full search (tested on the CPU), the work per iteration
  falls as the centroids settle (on an H200, 1.09 M x 512 into 8,000: equal labels on bench/kmeans.py's
  data, 99.996 % on a simpler set, where rows at fp32-rounding ties went their own way;
  bench/kmeans_determinism.py);
* **centroid update** as a sparse (CSR) cluster-membership x data product, no atomics: bit-repeatable on the
  CPU; on CUDA the sparse product is not (sums differ by up to 5e-7 between two calls on an H200; the labels
  of two runs were still equal: bench/kmeans_determinism.py);
* **empty clusters** re-seeded deterministically with the points farthest from their centroids;
* **convergence** when no label changes, or when the inertia drops by less than ``tol`` (relative);
* **DDP**: when ``torch.distributed`` is initialised (and ``distributed`` is not ``False``), each rank
  passes its shard; the initial sample is drawn over the global row index (shards in rank order), the
  sums, counts and inertia are all-reduced, and every rank ends with the same centroids, bit for bit.
  With all ranks' shards concatenated in rank order, the result equals the single-process run (up to
  the fp32 summation order of the cluster sums; tested to 1e-5).

Inertia: Euclidean, the sum of squared distances to the assigned centroid; spherical, the sum of
``1 - cos(x, c)`` (half the squared distance between unit vectors).

This module imports only torch (Triton lazily, on CUDA); it never imports speechbrain, so the
benchmark can run on a machine without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

log = logging.getLogger(__name__)

__all__ = ["kmeans", "kmeans_fit", "assign", "KMeansResult", "AssignmentBounds", "margin_factor", "kmeans_plusplus",
           "label_centroids", "mean_cosine"]

_PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
#: low-precision input dtypes (the products accumulate in fp32)
_LOW_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_BACKENDS = ("auto", "torch", "triton")
#: unit roundoff of the inputs of the low-precision product. bf16 inputs are rounded to nearest by
#: torch (2^-8); TF32 inputs may be truncated by the tensor cores (an ulp, 2^-10).
_INPUT_U = {"bf16": 2.0**-8, "fp16": 2.0**-11, "tf32": 2.0**-10, "fp32": 0.0}
#: rounding of the product's output: bf16 output from torch.mm, fp32 elsewhere (in the slack below)
_OUTPUT_U = {"bf16": 2.0**-8, "fp16": 2.0**-11, "tf32": 0.0, "fp32": 0.0}
#: fp32 products and row-wise dots: |computed - exact| <= _FP32_FACTOR (D + 2) sum_i |x_i c_i| (accumulation
#: over D terms, 2^-24 each, taken 4x, as in margin_factor)
_FP32_FACTOR = 4.0 * 2.0**-24
#: top candidates kept per row by the torch backend's "topk" strategy
_TORCH_TOPK = 4
#: how the torch backend finds each row's best and runner-up: "topk" (top-4 values and indices) or
#: "max2" (max with index, then the max of the rest; ambiguous rows take the candidate path)
TORCH_STRATEGY = {"cpu": "topk", "cuda": "max2"}
#: per device: upcast the bf16 score block to fp32 before the reductions (exact; measured no faster on
#: this project's 2-core CPU, so off)
_UPCAST_SCORES: Dict[str, bool] = {}
#: rows with more candidates inside the margin than this are re-scored with a full fp32 row
_MAX_CANDIDATES = 64


# ----------------------------------------------------------------------------------------------
# result type
# ----------------------------------------------------------------------------------------------
class KMeansResult(tuple):
    """``(centroids, labels)`` that also carries ``inertia``, ``n_iter``, ``converged``, ``history``, ``info``.

    Unpacks as a pair: ``centroids, labels = kmeans(x, k)``.
    """

    def __new__(cls, centroids, labels, inertia=float("nan"), n_iter=0, converged=False, history=None, info=None):
        self = tuple.__new__(cls, (centroids, labels))
        self.inertia = float(inertia)
        self.n_iter = int(n_iter)
        self.converged = bool(converged)
        self.history = list(history or [])
        self.info = dict(info or {})
        return self

    @property
    def centroids(self) -> torch.Tensor:
        return self[0]

    @property
    def labels(self) -> torch.Tensor:
        return self[1]

    def __reduce__(self):
        return (KMeansResult, (self[0], self[1], self.inertia, self.n_iter, self.converged, self.history, self.info))

    def __repr__(self):
        return (
            f"KMeansResult(centroids={tuple(self[0].shape)}, labels={tuple(self[1].shape)}, "
            f"inertia={self.inertia:.6g}, n_iter={self.n_iter}, converged={self.converged})"
        )


# ----------------------------------------------------------------------------------------------
# helpers: validation, precision contexts, distributed
# ----------------------------------------------------------------------------------------------
def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if np is not None and isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{name} must hold floating-point values, got a numpy array of dtype {x.dtype}")
        return torch.from_numpy(x)
    raise TypeError(f"{name} must be a torch.Tensor (or numpy array) of shape (N, D), got {type(x).__name__}")


def _check_matrix(x, name: str) -> torch.Tensor:
    x = _as_tensor(x, name)
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    if x.is_complex() or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float32/float64/bf16/fp16), got {x.dtype}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has D = 0 features (shape {tuple(x.shape)})")
    return x


def _nonfinite_rows(x: torch.Tensor) -> torch.Tensor:
    return (~torch.isfinite(x)).any(dim=1)


@contextlib.contextmanager
def _matmul_mode(mode: str):
    """``mode`` = "highest" (exact fp32 products, no TF32) or "high" (TF32 allowed); also keeps cuBLAS
    from reducing bf16 partial sums in bf16 (so the error bound's fp32 accumulation holds)."""
    prev = torch.get_float32_matmul_precision()
    cm = getattr(torch.backends.cuda, "matmul", None)
    prev_red = getattr(cm, "allow_bf16_reduced_precision_reduction", None) if cm is not None else None
    try:
        torch.set_float32_matmul_precision(mode)
        if prev_red is not None:
            cm.allow_bf16_reduced_precision_reduction = False
        yield
    finally:
        torch.set_float32_matmul_precision(prev)
        if prev_red is not None:
            cm.allow_bf16_reduced_precision_reduction = prev_red


class _Dist:
    """Thin wrapper over torch.distributed collectives (moves tensors to the backend's device)."""

    def __init__(self, dist):
        self.dist = dist
        self.world = dist.get_world_size()
        self.rank = dist.get_rank()
        backend = str(dist.get_backend()).lower()
        if "nccl" in backend:
            self.comm = torch.device("cuda", torch.cuda.current_device())
        else:
            self.comm = torch.device("cpu")

    def _to(self, t):
        return t.to(self.comm) if t.device != self.comm else t

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        c = self._to(t).contiguous()
        if c is t:
            c = t.clone()
        self.dist.all_reduce(c, op=getattr(self.dist.ReduceOp, op.upper()))
        return c.to(t.device)

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        c = self._to(t).contiguous().clone()
        self.dist.broadcast(c, src=src)
        return c.to(t.device)

    def all_gather(self, t: torch.Tensor) -> List[torch.Tensor]:
        """Gathers tensors whose first dimension may differ between ranks."""
        n = torch.tensor([t.shape[0]], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64, device=self.comm) for _ in range(self.world)]
        self.dist.all_gather(sizes, self._to(n))
        sizes = [int(s.item()) for s in sizes]
        m = max(sizes)
        pad = torch.zeros((m,) + tuple(t.shape[1:]), dtype=t.dtype, device=self.comm)
        pad[: t.shape[0]] = self._to(t)
        out = [torch.zeros_like(pad) for _ in range(self.world)]
        self.dist.all_gather(out, pad)
        return [o[:s].to(t.device) for o, s in zip(out, sizes)]


def _get_dist(distributed) -> Optional[_Dist]:
    if distributed is False:
        return None
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        dist = None
    ready = dist is not None and dist.is_available() and dist.is_initialized()
    if not ready:
        if distributed is True:
            raise RuntimeError("kmeans(distributed=True) needs an initialised torch.distributed process group")
        return None
    if dist.get_world_size() == 1:
        return None
    return _Dist(dist)


def margin_factor(precision: str, D: int, backend: str = "torch", bias: bool = False) -> float:
    """Relative error bound ``f`` of one low-precision score: ``|s~ - s| <= f * sum_i |x_i c_i|``.

    Input rounding of both operands (``2 u_in``), output rounding (bf16 output of torch.mm: ``u``; the
    Triton kernel keeps fp32), fp32 accumulation over ``D`` terms (``D 2^-24``, taken 4x), 1% slack for
    second-order terms. With a bias added by ``addmm`` in bf16, a second output rounding is allowed for.
    """
    if precision == "fp32":
        return 0.0
    u_in = _INPUT_U[precision]
    u_out = _OUTPUT_U[precision] if backend == "torch" else 0.0
    if bias:
        u_out *= 2
    return 1.01 * (2 * u_in + u_out) + 4.0 * (D + 2) * 2.0**-24


def _scores_are_bf16(precision: str) -> bool:
    return precision in _LOW_DTYPES


def _default_chunk(K: int, device: torch.device) -> int:
    if device.type == "cuda":
        rows = (2**28 // max(K, 1)) // 1024 * 1024
        return int(max(1024, min(65536, rows)))
    return int(max(256, min(8192, 2**22 // max(K, 1))))


# ----------------------------------------------------------------------------------------------
# optional fused Triton kernel: bf16 product + running top-3 per row (never writes the score block)
# ----------------------------------------------------------------------------------------------
_TRITON = None  # None = not tried; False = unavailable; else the kernel
triton = tl = None  # the modules, imported lazily by _define_triton_kernel (CUDA machines only)
_TRITON_STATE: Dict[Any, bool] = {}  # (device, D, has_bias) -> self-check passed
#: launch configuration; the benchmark may sweep others (``TRITON_CONFIGS``) and set the best here
TRITON_CONFIG = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)
#: the sweep of ``bench/kmeans.py --gpu``. With D <= 512 the kernel is bound by L2 -> SM traffic,
#: N K D 2 bytes (1/BLOCK_M + 1/BLOCK_N), as much as by the tensor cores: larger tiles pay if they fit
TRITON_CONFIGS = [
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=256, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=256, BLOCK_K=64, num_warps=4, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4),
]


def _triton_module():
    """Imports Triton and defines the kernel on first use (only where CUDA or the interpreter is on)."""
    global _TRITON
    if _TRITON is not None:
        return _TRITON or None
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        _TRITON = False
        return None
    try:
        _TRITON = _define_triton_kernel()
    except ImportError:  # pragma: no cover - no triton
        _TRITON = False
        return None
    except Exception as err:  # pragma: no cover
        warnings.warn(f"kmeans: Triton kernel unavailable ({err!r}); using the torch backend")
        _TRITON = False
        return None
    return _TRITON


def _define_triton_kernel():
    global triton, tl
    import triton as _triton
    import triton.language as _tl

    # Triton resolves the names in the kernel body through this module's globals
    triton, tl = _triton, _tl
    return _make_kernel()


def _make_kernel():
    # N varies from call to call once bounds search row subsets: no per-value specialisation (Triton
    # would otherwise compile a variant for N % 16 == 0 and N == 1 on first sight, ~1 s each)
    @triton.jit(do_not_specialize=["N", "K"])
    def _top3_kernel(
        X, C, Bias, V, I, N, K,
        D: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        # one program: BLOCK_M rows against all K centroids, tile by tile; the (BLOCK_M, BLOCK_N)
        # fp32 score tile lives in registers and only its row-wise top-3 is merged into the state
        pid = tl.program_id(0)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < N
        rows64 = rows.to(tl.int64)
        offs_n = tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        KSTEPS: tl.constexpr = (D + BLOCK_K - 1) // BLOCK_K
        EVEN_K: tl.constexpr = (D % BLOCK_K) == 0
        n_tiles = tl.cdiv(K, BLOCK_N)
        NEG = float("-inf")
        r1 = tl.full((BLOCK_M,), NEG, tl.float32)
        r2 = tl.full((BLOCK_M,), NEG, tl.float32)
        r3 = tl.full((BLOCK_M,), NEG, tl.float32)
        i1 = tl.zeros((BLOCK_M,), tl.int32)
        i2 = tl.zeros((BLOCK_M,), tl.int32)
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for t in range(0, n_tiles * KSTEPS):  # flattened (tile, k-step) loop: pipelines across tiles
            nt = t // KSTEPS
            kk = t - nt * KSTEPS
            cols = nt * BLOCK_N + offs_n
            ks = kk * BLOCK_K + offs_k
            if EVEN_K:
                a = tl.load(X + rows64[:, None] * D + ks[None, :], mask=rmask[:, None], other=0.0)
                b = tl.load(C + cols.to(tl.int64)[:, None] * D + ks[None, :], mask=(cols < K)[:, None], other=0.0)
            else:
                kmask = ks < D
                a = tl.load(X + rows64[:, None] * D + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
                b = tl.load(
                    C + cols.to(tl.int64)[:, None] * D + ks[None, :],
                    mask=(cols < K)[:, None] & kmask[None, :],
                    other=0.0,
                )
            acc = tl.dot(a, tl.trans(b), acc)
            if kk == KSTEPS - 1:
                s = acc
                if HAS_BIAS:
                    s = s + tl.load(Bias + cols, mask=cols < K, other=0.0)[None, :]
                s = tl.where((cols < K)[None, :], s, NEG)
                t1, j1 = tl.max(s, axis=1, return_indices=True)
                s = tl.where(offs_n[None, :] == j1[:, None], NEG, s)
                t2, j2 = tl.max(s, axis=1, return_indices=True)
                s = tl.where(offs_n[None, :] == j2[:, None], NEG, s)
                t3 = tl.max(s, axis=1)
                g1 = nt * BLOCK_N + j1
                g2 = nt * BLOCK_N + j2
                # merge two descending triples; the running one holds lower indices and wins ties
                a_first = r1 >= t1
                n1 = tl.where(a_first, r1, t1)
                m1 = tl.where(a_first, i1, g1)
                p1 = tl.where(a_first, r2, r1)
                pi = tl.where(a_first, i2, i1)
                p2 = tl.where(a_first, r3, r2)
                q1 = tl.where(a_first, t1, t2)
                qi = tl.where(a_first, g1, g2)
                q2 = tl.where(a_first, t2, t3)
                p_first = p1 >= q1
                r2 = tl.where(p_first, p1, q1)
                i2 = tl.where(p_first, pi, qi)
                r3 = tl.where(p_first, tl.maximum(p2, q1), tl.maximum(p1, q2))
                r1 = n1
                i1 = m1
                acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        tl.store(V + rows64 * 3 + 0, r1, mask=rmask)
        tl.store(V + rows64 * 3 + 1, r2, mask=rmask)
        tl.store(V + rows64 * 3 + 2, r3, mask=rmask)
        tl.store(I + rows64 * 2 + 0, i1, mask=rmask)
        tl.store(I + rows64 * 2 + 1, i2, mask=rmask)

    return _top3_kernel


def triton_top3(x_low: torch.Tensor, c_low: torch.Tensor, bias: Optional[torch.Tensor] = None, config=None):
    """Row-wise top-3 scores (N, 3) fp32 and top-2 indices (N, 2) int64 of ``x_low @ c_low.T (+ bias)``.

    Low-level entry for tests and the benchmark; ``kmeans``/``assign`` call it through the backend.
    """
    kern = _triton_module()
    if kern is None:
        raise RuntimeError("Triton is not available on this machine")
    cfg = dict(TRITON_CONFIG if config is None else config)
    N, D = x_low.shape
    K = c_low.shape[0]
    x_low = x_low.contiguous()
    c_low = c_low.contiguous()
    V = torch.empty(N, 3, dtype=torch.float32, device=x_low.device)
    I = torch.empty(N, 2, dtype=torch.int32, device=x_low.device)
    has_bias = bias is not None
    b = bias.float().contiguous() if has_bias else V  # dummy pointer when unused
    bm = cfg.pop("BLOCK_M")
    grid = (triton.cdiv(N, bm),)
    ctx = torch.cuda.device(x_low.device) if x_low.device.type == "cuda" else contextlib.nullcontext()
    with ctx:
        kern[grid](x_low, c_low, b, V, I, N, K, D=D, HAS_BIAS=has_bias, BLOCK_M=bm, **cfg)
    return V, I.long()


# ----------------------------------------------------------------------------------------------
# assignment
# ----------------------------------------------------------------------------------------------
class _Assigner:
    """Nearest-centroid search over a fixed data shard ``x`` (fp32, on the compute device)."""

    def __init__(self, x: torch.Tensor, spherical: bool, precision: str, backend: str,
                 chunk_size: Optional[int], tie_margin: Optional[float]):
        self.x = x
        self.N, self.D = x.shape
        self.dev = x.device
        self.spherical = spherical
        self.precision = precision
        self.backend = backend
        self.chunk_size = chunk_size
        self.tie_margin = tie_margin
        self.xnorm = x.norm(dim=1) if not spherical else None
        self.x_low = None
        self.low_dtype = _LOW_DTYPES.get(precision)
        if self.low_dtype is not None:
            self.x_low = x.to(self.low_dtype)
        self.stats = {"rows": 0, "rechecked": 0, "full_rows": 0, "exact_full": 0, "skipped": 0}
        self._top = None  # per call: (low-precision best index, best value, runner-up value), see runner_up_bound

    def subset(self, rows: torch.Tensor) -> "_Assigner":
        """The same search over the rows ``rows`` of this shard only (statistics are shared)."""
        sub = _Assigner.__new__(_Assigner)
        sub.__dict__.update(self.__dict__)
        sub.x = self.x.index_select(0, rows)
        sub.N = int(rows.numel())
        sub.xnorm = None if self.xnorm is None else self.xnorm.index_select(0, rows)
        sub.x_low = None if self.x_low is None else self.x_low.index_select(0, rows)
        sub._top = None
        return sub

    # -- per call -----------------------------------------------------------------------------
    def __call__(self, C: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Labels (N,) int64 and the (approximate, low-precision for unambiguous rows) best scores (N,)."""
        C = C.to(self.dev, torch.float32).contiguous()
        K = C.shape[0]
        bias = None if self.spherical else -0.5 * (C * C).sum(1)
        chunk = self.chunk_size or _default_chunk(K, self.dev)
        labels = torch.empty(self.N, dtype=torch.int64, device=self.dev)
        best = torch.empty(self.N, dtype=torch.float32, device=self.dev)
        self._top = (
            torch.empty(self.N, dtype=torch.int64, device=self.dev),
            torch.empty(self.N, dtype=torch.float32, device=self.dev),
            torch.empty(self.N, dtype=torch.float32, device=self.dev),
        )
        self.stats["rows"] += self.N
        if self.precision == "fp32":
            self._run_exact(C, bias, chunk, labels, best)
            return labels, best
        backend = self.backend
        if backend == "triton":
            self._run_triton(C, bias, labels, best)
        else:
            self._run_torch(C, bias, chunk, labels, best)
        return labels, best

    def _keep_top(self, s: int, e: int, i1: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> None:
        t_i, t_v1, t_v2 = self._top
        t_i[s:e] = i1
        t_v1[s:e] = v1
        t_v2[s:e] = v2

    def score_error(self, C: torch.Tensor, rows: Optional[torch.Tensor] = None, exact: bool = False,
                    backend: Optional[str] = None) -> torch.Tensor:
        """Per-row bound (R,) on ``|computed score - exact score|`` of this search's products against
        centroids ``C`` (``backend``: of that backend's products instead; ``exact``: of an fp32 product
        or row-wise dot, whatever the precision)."""
        bias = None if self.spherical else -0.5 * (C * C).sum(1)
        if exact or self.precision == "fp32":
            f = _FP32_FACTOR * (self.D + 2)
            backend = "torch"
        else:
            backend = backend or self.backend
            f = margin_factor(self.precision, self.D + (0 if bias is None else 1), backend, bias is not None)
        cmax = float(C.norm(dim=1).max())
        # the Triton kernel adds the bias in fp32 (no rounding worth counting); torch rounds it to bf16
        bmax = 0.0 if (bias is None or (backend == "triton" and not exact)) else float(bias.abs().max())
        if self.spherical:
            xn = torch.ones(self.N if rows is None else rows.numel(), device=self.dev)
        else:
            xn = self.xnorm if rows is None else self.xnorm[rows]
        # slack: the fp32 norms themselves are computed, not exact
        return f * (xn * (cmax * (1 + 1e-6)) + bmax * (1 + 1e-6)) * (1 + 1e-5)

    def runner_up_bound(self, C: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Upper bound (N,) on the exact score of every centroid other than ``labels`` (the labels the
        last call returned), from that call's low-precision best and runner-up values: a row whose
        exact label is its low-precision best has no other score above the runner-up value; otherwise
        the low-precision best itself is the largest other score. Plus the error bound of one score."""
        i1, v1, v2 = self._top
        return torch.where(labels == i1, v2, v1) + self.score_error(C)

    def _margin(self, rows, C, backend):
        """Per-row margin (R,) below the row's best low-precision score inside which ties are re-checked:
        two scores' error bounds (``score_error``), or the ``tie_margin`` override."""
        if self.tie_margin is not None:
            return torch.full((rows.numel() if rows is not None else self.N,), float(self.tie_margin),
                              device=self.dev)
        return 2.0 * self.score_error(C, rows, backend=backend)

    def _low_scores(self, xl: torch.Tensor, Cl: torch.Tensor, bias_l: Optional[torch.Tensor]) -> torch.Tensor:
        if self.low_dtype is not None:
            if bias_l is None:
                return xl @ Cl.T
            return torch.addmm(bias_l, xl, Cl.T)
        with _matmul_mode("high"):  # tf32
            if bias_l is None:
                return xl @ Cl.T
            return torch.addmm(bias_l, xl, Cl.T)

    def _low_inputs(self, C, bias):
        if self.low_dtype is not None:
            return self.x_low, C.to(self.low_dtype), (None if bias is None else bias.to(self.low_dtype))
        return self.x, C, bias

    def _run_exact(self, C, bias, chunk, labels, best):
        with _matmul_mode("highest"):
            for s in range(0, self.N, chunk):
                xr = self.x[s : s + chunk]
                S = xr @ C.T if bias is None else torch.addmm(bias, xr, C.T)
                v, i = S.max(dim=1)
                labels[s : s + chunk] = i
                best[s : s + chunk] = v
                if S.shape[1] > 1:
                    S.scatter_(1, i[:, None], float("-inf"))
                    v2 = S.amax(dim=1)
                else:
                    v2 = torch.full_like(v, float("-inf"))
                self._keep_top(s, s + xr.shape[0], i, v, v2)

    def _run_torch(self, C, bias, chunk, labels, best):
        K = C.shape[0]
        xl, Cl, bl = self._low_inputs(C, bias)
        margin = self._margin(None, C, "torch")
        m = min(_TORCH_TOPK, K)
        strategy = TORCH_STRATEGY.get(self.dev.type, "topk")
        upcast = _UPCAST_SCORES.get(self.dev.type, False) and _scores_are_bf16(self.precision)
        with _matmul_mode("highest"):
            for s in range(0, self.N, chunk):
                e = min(s + chunk, self.N)
                S = self._low_scores(xl[s:e], Cl, bl)
                if upcast:
                    S = S.float()
                if strategy == "max2" and K > 1:
                    v1, i1 = S.max(dim=1)
                    S.scatter_(1, i1[:, None], float("-inf"))
                    v2 = S.amax(dim=1)
                    bst = v1.float()
                    self._keep_top(s, e, i1, bst, v2.float())
                    amb = v2.float() >= bst - margin[s:e]
                    rows = torch.nonzero(amb).squeeze(1)
                    if rows.numel():  # only the ambiguous rows get the top-m treatment
                        S[rows, i1[rows]] = v1[rows]  # restore the best before the candidate search
                        Sa = S[rows]
                        vals, idx = Sa.topk(m, dim=1)
                        known = idx[:, : m - 1] if m < K else idx
                        l, b = self._resolve(s + rows, vals.float(), known, margin[s:e][rows], C, bias, S_block=Sa)
                        i1[rows] = l
                        bst[rows] = b
                    labels[s:e] = i1
                    best[s:e] = bst
                    continue
                vals, idx = S.topk(m, dim=1)
                vals = vals.float()
                self._keep_top(s, e, idx[:, 0], vals[:, 0], vals[:, 1] if m > 1 else torch.full_like(vals[:, 0], float("-inf")))
                if m < K:
                    known = idx[:, : m - 1]
                else:
                    known = idx
                lab, bst = self._resolve(torch.arange(s, e, device=self.dev), vals, known, margin[s:e], C, bias, S_block=S)
                labels[s:e] = lab
                best[s:e] = bst

    def _run_triton(self, C, bias, labels, best):
        if self.dev.type == "cpu":  # Triton's CPU interpreter (tests): no bf16 there, fp32 is exact-er
            V, I = triton_top3(self.x, C, bias)
        else:
            V, I = triton_top3(self.x_low, C.to(self.low_dtype), bias)
        margin = self._margin(None, C, "triton")
        self._keep_top(0, self.N, I[:, 0], V[:, 0], V[:, 1])
        # rows are resolved in slices to bound the temporary memory of the exact re-check
        step = 1 << 18
        with _matmul_mode("highest"):
            for s in range(0, self.N, step):
                e = min(s + step, self.N)
                grows = torch.arange(s, e, device=self.dev)
                lab, bst = self._resolve(grows, V[s:e], I[s:e], margin[s:e], C, bias, S_block=None)
                labels[s:e] = lab
                best[s:e] = bst

    # -- the exact re-check ---------------------------------------------------------------------
    def _resolve(self, grows, vals, known, margin, C, bias, S_block):
        """From the descending low-precision top values ``vals`` (R, m) of the rows ``grows`` (R,) and the
        indices of the first ``known.shape[1]`` of them, returns exact labels. Rows whose runner-up is
        within ``margin`` of the best are re-scored in fp32 over every candidate (all centroids within
        the margin); ``S_block`` (R, K), when given, holds the rows' low-precision scores."""
        K = C.shape[0]
        lab = known[:, 0].clone()
        bst = vals[:, 0].clone()
        if K == 1:
            return lab, bst
        thr = vals[:, 0] - margin
        amb = vals[:, 1] >= thr
        n_amb = int(amb.sum())
        if n_amb == 0:
            return lab, bst
        self.stats["rechecked"] += n_amb
        mi = known.shape[1]
        if mi >= K:
            closed = torch.ones_like(amb)
        else:
            closed = vals[:, mi] < thr  # the first value without an index is outside the margin
        rows_a = torch.nonzero(amb & closed).squeeze(1)
        if rows_a.numel():
            cand = known[rows_a]
            cmask = vals[rows_a, :mi] >= thr[rows_a, None]
            l, b = self._exact_among(grows[rows_a], cand, cmask, C, bias)
            lab[rows_a] = l
            bst[rows_a] = b
        rows_b = torch.nonzero(amb & ~closed).squeeze(1)
        if rows_b.numel():
            l, b = self._resolve_full(grows[rows_b], C, bias, None if S_block is None else S_block[rows_b])
            lab[rows_b] = l
            bst[rows_b] = b
        return lab, bst

    def _exact_among(self, grows, cand, cmask, C, bias):
        """Exact fp32 argmax over candidate centroids ``cand`` (F, m) (masked by ``cmask``)."""
        F, m = cand.shape
        out_l = torch.empty(F, dtype=torch.int64, device=self.dev)
        out_b = torch.empty(F, dtype=torch.float32, device=self.dev)
        step = max(1, (1 << 25) // max(1, m * self.D))
        for s in range(0, F, step):
            e = min(s + step, F)
            ci = cand[s:e]
            xr = self.x[grows[s:e]]
            ex = (xr.unsqueeze(1) * C[ci]).sum(-1)
            if bias is not None:
                ex = ex + bias[ci]
            ex = ex.masked_fill(~cmask[s:e], float("-inf"))
            mx = ex.max(dim=1).values
            # among exact ties the lowest centroid index wins, as argmax does
            pick = torch.where(ex == mx[:, None], ci, torch.full_like(ci, C.shape[0])).min(dim=1).values
            out_l[s:e] = pick
            out_b[s:e] = mx
        return out_l, out_b

    def _resolve_full(self, grows, C, bias, S_rows):
        """Rows with many near-ties: all centroids within the margin of the low-precision row."""
        self.stats["full_rows"] += int(grows.numel())
        if S_rows is None:  # Triton path: recompute these rows with torch (bf16 output, its own margin)
            xl, Cl, bl = self._low_inputs(C, bias)
            S_rows = self._low_scores(xl[grows], Cl, bl)
        margin = self._margin(grows, C, "torch")
        S_rows = S_rows.float()
        v1 = S_rows.max(dim=1).values
        thr = v1 - margin
        cmask_full = S_rows >= thr[:, None]
        cnt = cmask_full.sum(1)
        out_l = torch.empty(grows.numel(), dtype=torch.int64, device=self.dev)
        out_b = torch.empty(grows.numel(), dtype=torch.float32, device=self.dev)
        few = cnt <= _MAX_CANDIDATES
        rf = torch.nonzero(few).squeeze(1)
        if rf.numel():
            mc = int(cnt[rf].max())
            vals, idx = S_rows[rf].topk(mc, dim=1)
            l, b = self._exact_among(grows[rf], idx, vals >= thr[rf, None], C, bias)
            out_l[rf] = l
            out_b[rf] = b
        rm = torch.nonzero(~few).squeeze(1)
        if rm.numel():
            self.stats["exact_full"] += int(rm.numel())
            xr = self.x[grows[rm]]
            S = xr @ C.T if bias is None else torch.addmm(bias, xr, C.T)
            v, i = S.max(dim=1)
            out_l[rm] = i
            out_b[rm] = v
        return out_l, out_b


def _triton_selfcheck(device: torch.device, D: int, has_bias: bool, precision: str = "bf16") -> bool:
    """Runs the kernel once on a small random problem of the same D and compares with torch."""
    key = (str(device), D, has_bias, precision)
    if key in _TRITON_STATE:
        return _TRITON_STATE[key]
    ok = False
    try:
        g = torch.Generator(device="cpu").manual_seed(1234)
        n, k = 1000, 333
        x = torch.randn(n, D, generator=g).to(device)
        c = torch.randn(k, D, generator=g).to(device)
        xl, cl = x.to(_LOW_DTYPES[precision]), c.to(_LOW_DTYPES[precision])
        bias = (-0.5 * (c * c).sum(1)) if has_bias else None
        V, I = triton_top3(xl, cl, bias)
        with _matmul_mode("highest"):
            S = xl.float() @ cl.float().T
            if bias is not None:
                S = S + bias
        ref_v, ref_i = S.topk(3, dim=1)
        scale = S.abs().max().clamp_min(1.0)
        close = (V - ref_v).abs().max() <= 1e-3 * scale
        gap = ref_v[:, 0] - ref_v[:, 1]
        clear = gap > 1e-3 * scale
        same = bool((I[clear, 0] == ref_i[clear, 0]).all())
        ok = bool(close) and same
        if not ok:
            warnings.warn("kmeans: the Triton kernel failed its self-check; using the torch backend")
    except Exception as err:  # compile or launch failure
        warnings.warn(f"kmeans: the Triton kernel failed ({err!r}); using the torch backend")
        ok = False
    _TRITON_STATE[key] = ok
    return ok


def _resolve_options(device: torch.device, precision: str, backend: str, D: int, has_bias: bool):
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "tf32"
        else:
            precision = "fp32"
    if precision == "fp16" and has_bias:
        raise ValueError(
            "precision='fp16' is for spherical k-means only (unit vectors; fp16 overflows at 65504 on "
            "Euclidean data of arbitrary scale): use precision='bf16' with spherical=False")
    if backend == "auto":
        backend = "torch"
        if precision in _LOW_DTYPES and device.type == "cuda" and _triton_module() is not None:
            if _triton_selfcheck(device, D, has_bias, precision):
                backend = "triton"
    elif backend == "triton":
        if precision not in _LOW_DTYPES:
            raise ValueError(f"backend='triton' needs precision 'bf16' or 'fp16', got {precision!r}")
        if _triton_module() is None:
            raise RuntimeError("backend='triton' requested but Triton is not available (CUDA + triton needed)")
    return precision, backend


def _prepare(x, device, spherical, name="x") -> torch.Tensor:
    x = _check_matrix(x, name)
    dev = torch.device(device) if device is not None else x.device
    xf = x.to(device=dev, dtype=torch.float32)
    if spherical:
        xf = torch.nn.functional.normalize(xf, dim=1)
    return xf.contiguous()


def assign(
    x,
    centroids,
    *,
    spherical: bool = True,
    chunk_size: Optional[int] = None,
    precision: str = "auto",
    tie_margin: Optional[float] = None,
    backend: str = "auto",
    device=None,
    return_scores: bool = False,
):
    """Nearest centroid of every row of ``x`` (chunked; the same precision options as :func:`kmeans`).

    Args:
        x: (N, D) float tensor (or numpy array).
        centroids: (K, D) float tensor. In spherical mode both are L2-normalised first.
        return_scores: also return the exact best score per row (cosine in spherical mode, squared
            Euclidean distance otherwise).
    Returns:
        labels (N,) int64 on the compute device (``device`` or ``x``'s), or ``(labels, scores)``.
    """
    x = _check_matrix(x, "x")
    c = _check_matrix(centroids, "centroids")
    if c.shape[1] != x.shape[1]:
        raise ValueError(f"centroids have D = {c.shape[1]} but x has D = {x.shape[1]}")
    if c.shape[0] < 1:
        raise ValueError("centroids is empty (K = 0)")
    if x.shape[0] == 0:
        empty = torch.empty(0, dtype=torch.int64, device=device or x.device)
        return (empty, torch.empty(0, device=empty.device)) if return_scores else empty
    xf = _prepare(x, device, spherical)
    bad = _nonfinite_rows(xf)
    if bool(bad.any()):
        raise ValueError(f"x has {int(bad.sum())} row(s) with NaN/inf values (first: row {int(bad.nonzero()[0])})")
    C = c.to(device=xf.device, dtype=torch.float32)
    if not bool(torch.isfinite(C).all()):
        raise ValueError("centroids contain NaN/inf values")
    if spherical:
        C = torch.nn.functional.normalize(C, dim=1)
    prec, be = _resolve_options(xf.device, precision, backend, xf.shape[1], not spherical)
    a = _Assigner(xf, spherical, prec, be, chunk_size, tie_margin)
    labels, _ = a(C)
    if not return_scores:
        return labels
    return labels, _exact_best(xf, C, labels, spherical)


def _exact_best(xf, C, labels, spherical, step=1 << 16):
    out = torch.empty(xf.shape[0], dtype=torch.float32, device=xf.device)
    for s in range(0, xf.shape[0], step):
        xr = xf[s : s + step]
        cr = C[labels[s : s + step]]
        if spherical:
            out[s : s + step] = (xr * cr).sum(1)
        else:
            out[s : s + step] = ((xr - cr) ** 2).sum(1)
    return out


# ----------------------------------------------------------------------------------------------
# update, initialisation
# ----------------------------------------------------------------------------------------------
def _cluster_sums(x: torch.Tensor, labels: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster sums (k, D) fp32 and counts (k,) int64, as a CSR membership x data product (no atomics;
    bit-repeatable on the CPU, not on CUDA, where the sparse product's summation order may change)."""
    counts = torch.bincount(labels, minlength=k)
    order = torch.sort(labels, stable=True).indices
    crow = torch.zeros(k + 1, dtype=torch.int64, device=x.device)
    torch.cumsum(counts, 0, out=crow[1:])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            A = torch.sparse_csr_tensor(
                crow, order, torch.ones(order.numel(), dtype=x.dtype, device=x.device),
                size=(k, x.shape[0]), check_invariants=False,
            )
            with _matmul_mode("highest"):
                sums = A @ x
        if sums.layout != torch.strided:
            sums = sums.to_dense()
    except (RuntimeError, NotImplementedError, TypeError):  # pragma: no cover - sparse unsupported
        sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
        sums.index_add_(0, labels, x.double())
        sums = sums.float()
    return sums, counts


def kmeans_plusplus(P: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Plain k-means++ (D^2 sampling) on the rows of ``P`` (M, D); returns the indices (k,) of the seeds.

    Random numbers come from the CPU ``generator`` so that the choice is the same on every device.
    Memory is O(M): one distance vector is updated per new centre.
    """
    M = P.shape[0]
    dev = P.device
    u = torch.rand(k, generator=generator, dtype=torch.float64)
    first = min(int(u[0].item() * M), M - 1)
    u_dev = u.to(dev)
    sq = (P * P).sum(1)
    idx = torch.empty(k, dtype=torch.int64, device=dev)
    idx[0] = first
    with _matmul_mode("highest"):
        d2 = (sq - 2.0 * (P @ P[first]) + sq[first]).clamp_min_(0.0)
        for i in range(1, k):
            cs = torch.cumsum(d2.double(), 0)
            tgt = (u_dev[i] * cs[-1]).reshape(1)
            j = torch.searchsorted(cs, tgt, right=True).clamp_(max=M - 1)
            idx[i : i + 1] = j
            c = P.index_select(0, j).squeeze(0)
            d2 = torch.minimum(d2, (sq - 2.0 * (P @ c) + sq.index_select(0, j)).clamp_min_(0.0))
    return idx


def _gather_global_rows(xf: torch.Tensor, gidx: torch.Tensor, offset: int, dist: Optional[_Dist]) -> torch.Tensor:
    """Rows with global indices ``gidx`` (shards in rank order), identical on every rank."""
    gidx = gidx.to(xf.device)
    if dist is None:
        return xf.index_select(0, gidx)
    n = xf.shape[0]
    out = torch.zeros(gidx.numel(), xf.shape[1], dtype=xf.dtype, device=xf.device)
    own = (gidx >= offset) & (gidx < offset + n)
    out[own] = xf.index_select(0, gidx[own] - offset)
    return dist.all_reduce(out)


# ----------------------------------------------------------------------------------------------
# bounds: skip the rows whose label cannot change
# ----------------------------------------------------------------------------------------------
class AssignmentBounds:
    """Hamerly's bounds (Hamerly 2010) for Lloyd iterations, exact in mixed precision.

    After a search, every row ``i`` keeps an upper bound ``u_i`` on the exact score of every centroid
    other than its own (from the low-precision runner-up plus that product's error bound). When the
    centroids move, the score of centroid ``j`` cannot rise by more than ``|x_i| |c_j' - c_j| +
    |b_j' - b_j|`` (``b = -|c|^2 / 2`` in Euclidean mode). A few centroids move far (re-seeded ones,
    small clusters) while most barely move, so the ``movers`` centroids that moved most are scored
    directly (one small low-precision product, plus its error bound) and ``u_i`` grows only by the
    largest move among the others. A row whose exact score for its own (moved) centroid, less its fp32
    error, still exceeds both keeps its label for certain; only the other rows are searched again (all
    of them when more than ``full_fraction`` are). The labels are those of a full search, so k-means
    gives the same result with and without bounds.
    """

    def __init__(self, assigner: _Assigner, full_fraction: float = 0.5, movers: Optional[int] = None,
                 step: Optional[int] = None):
        self.a = assigner
        self.full_fraction = full_fraction
        self.movers = movers  # default: chosen per iteration (_choose_movers)
        # rows per block of the row-wise products (small on the CPU: the gathered centroids stay in cache)
        self.step = step or (1 << 17 if assigner.dev.type == "cuda" else 4096)
        self.C_prev: Optional[torch.Tensor] = None
        self.upper: Optional[torch.Tensor] = None

    def _choose_movers(self, K: int, lhs: torch.Tensor, rise) -> Optional[int]:
        """How many of the farthest-moved centroids to score directly: the count among 0, K/64 ... K/4
        that minimises its product's cost (m/K of a full search) plus the fraction of rows still to
        search, estimated from the other centroids' moves alone (one pass over the rows); ``None`` when
        even that optimistic estimate exceeds ``full_fraction`` for every count (search all rows)."""
        if self.movers is not None:
            return max(0, min(K - 1, int(self.movers)))
        cand = sorted({0, *[min(K - 1, max(1, K // d)) for d in (64, 32, 16, 8, 4)]})
        cand = [c for c in cand if 0 <= c < K]
        mt = torch.tensor(cand, device=lhs.device)
        frac = (lhs[:, None] <= self.upper[:, None] + rise(mt)).float().mean(0).tolist()
        if min(frac) > self.full_fraction:  # the estimate is optimistic: no choice avoids a full search
            return None
        cost = [c / K + (f if f <= self.full_fraction else 1.0) for c, f in zip(cand, frac)]
        return cand[min(range(len(cand)), key=cost.__getitem__)]

    def _movers_max(self, C: torch.Tensor, O: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Upper bound (N,) on the exact scores of centroids ``O`` other than each row's own."""
        a = self.a
        CO = C.index_select(0, O)
        bO = None if a.spherical else -0.5 * (CO * CO).sum(1)
        if a.precision == "fp32":
            xl, Cl, bl = a.x, CO, bO
        else:
            xl, Cl, bl = a._low_inputs(CO, bO)
        out = torch.empty(a.N, dtype=torch.float32, device=a.dev)
        with _matmul_mode("highest"):
            for s in range(0, a.N, self.step):
                e = min(s + self.step, a.N)
                S = a._low_scores(xl[s:e], Cl, bl) if a.precision != "fp32" else (
                    xl[s:e] @ Cl.T if bl is None else torch.addmm(bl, xl[s:e], Cl.T))
                S = S.float().masked_fill_(labels[s:e, None] == O[None, :], float("-inf"))
                out[s:e] = S.amax(dim=1)
        return out + a.score_error(C, backend="torch")

    def _own_scores(self, C: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Exact-in-fp32 score of each row's own centroid, row-wise (chunked)."""
        x = self.a.x
        out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
        bias = None if self.a.spherical else -0.5 * (C * C).sum(1)
        for s in range(0, x.shape[0], self.step):
            lab = labels[s : s + self.step]
            v = (x[s : s + self.step] * C.index_select(0, lab)).sum(1)
            out[s : s + self.step] = v if bias is None else v + bias.index_select(0, lab)
        return out

    def __call__(self, C: torch.Tensor, labels: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Labels (N,) and best scores (N,) for centroids ``C``; ``labels`` are the previous call's."""
        a = self.a
        C = C.to(a.dev, torch.float32).contiguous()
        if self.C_prev is None or labels is None or self.C_prev.shape != C.shape:
            return self._search_all(C)
        K = C.shape[0]
        move = (C - self.C_prev).norm(dim=1)
        db = None
        if not a.spherical:
            db = 0.5 * ((C * C).sum(1) - (self.C_prev * self.C_prev).sum(1)).abs()
        # centroids by how far they can raise a unit-norm row's score; suffix maxima: the largest move /
        # bias change among all but the first m
        order = (move if db is None else move + db).argsort(descending=True)
        suf_move = move[order].flip(0).cummax(0).values.flip(0)
        suf_db = None if db is None else db[order].flip(0).cummax(0).values.flip(0)
        own = self._own_scores(C, labels)
        err = a.score_error(C, exact=True)
        lhs = own - 3.0 * err  # <= the exact own score, less 2 err for the fp32 search's own rounding

        def rise(m: torch.Tensor) -> torch.Tensor:  # (M,) movers counts -> (N, M) bound on the others' rise
            r = suf_move[m].unsqueeze(0).expand(a.N, -1)
            return r if db is None else a.xnorm[:, None] * r + suf_db[m].unsqueeze(0)

        m = self._choose_movers(K, lhs, rise)
        if m is None:
            return self._search_all(C)
        upper = self.upper + rise(torch.tensor([m], device=a.dev)).squeeze(1) * (1 + 1e-6)
        if m > 0:
            upper = torch.maximum(upper, self._movers_max(C, order[:m], labels))
        safe = lhs > upper
        rows = torch.nonzero(~safe).squeeze(1)
        n = int(rows.numel())
        if n > self.full_fraction * a.N:
            return self._search_all(C)
        a.stats["skipped"] += a.N - n
        labels = labels.clone()
        best = own
        if n:
            sub = a.subset(rows)
            l, b = sub(C)
            labels[rows] = l
            best[rows] = b
            upper[rows] = sub.runner_up_bound(C, l)
        self.upper = upper
        self.C_prev = C
        return labels, best

    def _search_all(self, C: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        labels, best = self.a(C)
        self.upper = self.a.runner_up_bound(C, labels)
        self.C_prev = C
        return labels, best


# ----------------------------------------------------------------------------------------------
# the main entry
# ----------------------------------------------------------------------------------------------
def kmeans(
    x,
    k: int,
    *,
    n_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    spherical: bool = True,
    init: Union[str, torch.Tensor] = "k-means++",
    init_sample_size: Optional[int] = None,
    device=None,
    chunk_size: Optional[int] = None,
    precision: str = "auto",
    tie_margin: Optional[float] = None,
    backend: str = "auto",
    distributed: Optional[bool] = None,
    bounds: bool = True,
    progress: bool = False,
    verbose: bool = False,
) -> KMeansResult:
    """k-means (Lloyd) of the rows of ``x`` into ``k`` clusters.

    Args:
        x: (N, D) float tensor or numpy array; under DDP, this rank's shard.
        k: number of clusters, 1 <= k <= N (global N under DDP).
        n_iter: maximum number of Lloyd iterations (assignment + update).
        tol: stop when the inertia decreases by less than ``tol`` (relative) between iterations;
            ``0`` = only when no label changes (or ``n_iter``).
        seed: seeds a CPU ``torch.Generator`` for the initialisation: same seed, same result.
        spherical: cosine k-means on L2-normalised rows with unit-norm centroids (else Euclidean).
        init: "k-means++", "random" (k distinct random rows) or a (k, D) tensor of initial centroids.
        init_sample_size: k-means++ seeds from a random subsample of this many rows
            (default ``min(N, max(40 k, 10000))``); ``0`` = all rows.
        device: compute device (default: ``x``'s). ``x`` is copied there in fp32 (and bf16).
        chunk_size: rows per assignment block (default: 64 Mi scores on CPU, 256 Mi on CUDA).
        precision: "fp32" (exact products), "tf32", "bf16" (fast, with exact re-check of near ties),
            "fp16" (spherical only: same speed as bf16 on tensor cores, 8x smaller rounding error, so
            fewer rows need the re-check),
            or "auto" (bf16 on CUDA, fp32 on CPU).
        tie_margin: override of the automatic error-bound margin (score units); 0 disables the
            re-check (plain low-precision argmax).
        backend: "auto" (fused Triton kernel on CUDA in bf16 when it works, else torch), "torch",
            "triton".
        distributed: None = use torch.distributed when initialised (world size > 1); False = never;
            True = required.
        bounds: skip rows whose label provably cannot change (Hamerly's bounds, see
            :class:`AssignmentBounds`): same labels and centroids as without, less work per iteration
            once the centroids move little. Off when ``tie_margin`` is given.
        progress: print one line per iteration (rank 0). verbose: log one line per iteration (INFO).
    Returns:
        :class:`KMeansResult`: unpacks as ``(centroids (k, D) fp32, labels (N,) int64)``, both on the
        compute device, consistent with each other (the labels are the assignment to the returned
        centroids); plus ``.inertia``, ``.n_iter``, ``.converged``, ``.history`` and ``.info``.
    """
    t_start = time.perf_counter()
    if isinstance(k, bool) or not hasattr(k, "__index__") or (isinstance(k, torch.Tensor) and k.is_floating_point()):
        raise TypeError(f"k must be an int, got {type(k).__name__} ({k!r})")
    k = int(k.__index__())
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter must be an int >= 1, got {n_iter!r}")
    if tie_margin is not None and not (float(tie_margin) >= 0):
        raise ValueError(f"tie_margin must be >= 0 (or None for the automatic bound), got {tie_margin!r}")
    if not (tol >= 0):
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if isinstance(init, str) and init not in ("k-means++", "random"):
        raise ValueError(f"init must be 'k-means++', 'random' or a (k, D) tensor, got {init!r}")
    x = _check_matrix(x, "x")
    dist = _get_dist(distributed)

    # ---- global sizes and input checks (collective, so every rank raises together) -----------
    n_local, D = x.shape
    if dist is not None:
        sizes = torch.cat(dist.all_gather(torch.tensor([[n_local, D]], dtype=torch.int64)))
        if bool((sizes[:, 1] != D).any()):
            raise ValueError(f"ranks pass different feature sizes D: {sizes[:, 1].tolist()}")
        ns = sizes[:, 0].tolist()
        offset = int(sum(ns[: dist.rank]))
        N = int(sum(ns))
        if min(ns) == 0 and N > 0:
            raise ValueError(f"every rank must pass at least one row; rows per rank: {ns}")
    else:
        offset, N = 0, n_local
    if N == 0:
        raise ValueError("x is empty (N = 0 rows): nothing to cluster")
    if k > N:
        raise ValueError(f"k = {k} clusters requested but x has only N = {N} rows (k must be <= N)")
    xf = _prepare(x, device, spherical)
    dev = xf.device
    bad = _nonfinite_rows(xf)
    n_bad = int(bad.sum())
    if dist is not None:
        n_bad_all = int(dist.all_reduce(torch.tensor([n_bad], dtype=torch.int64)).item())
    else:
        n_bad_all = n_bad
    if n_bad_all:
        where = f" (first local row: {int(bad.nonzero()[0])})" if n_bad else ""
        raise ValueError(f"x has {n_bad_all} row(s) with NaN/inf values{where}; remove or fix them before k-means")
    if spherical:
        zero = int((xf.abs().sum(dim=1) == 0).sum())
        if dist is not None:
            zero = int(dist.all_reduce(torch.tensor([zero], dtype=torch.int64)).item())
        if zero:
            raise ValueError(f"x has {zero} all-zero row(s): they have no direction for spherical k-means")

    precision_r, backend_r = _resolve_options(dev, precision, backend, D, not spherical)
    assigner = _Assigner(xf, spherical, precision_r, backend_r, chunk_size, tie_margin)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    rank0 = dist is None or dist.rank == 0

    # ---- initialisation -------------------------------------------------------------------------
    t0 = time.perf_counter()
    if isinstance(init, str):
        if init == "random":
            gidx = torch.randperm(N, generator=gen)[:k]
            C = _gather_global_rows(xf, gidx, offset, dist)
        else:
            M = init_sample_size
            if M is None:
                M = min(N, max(40 * k, 10000))
            elif M == 0 or M >= N:
                M = N
            if M < k:
                raise ValueError(f"init_sample_size = {M} is smaller than k = {k}")
            if M < N:
                gidx = torch.randperm(N, generator=gen)[:M].sort().values
            else:
                gidx = torch.arange(N)
            P = _gather_global_rows(xf, gidx, offset, dist) if M < N or dist is not None else xf
            seeds = kmeans_plusplus(P, k, gen)
            C = P.index_select(0, seeds)
            del P
    else:
        C = _check_matrix(init, "init").to(dev, torch.float32)
        if tuple(C.shape) != (k, D):
            raise ValueError(f"init centroids must have shape ({k}, {D}), got {tuple(C.shape)}")
        if not bool(torch.isfinite(C).all()):
            raise ValueError("init centroids contain NaN/inf values")
    if spherical:
        C = torch.nn.functional.normalize(C, dim=1)
    C = C.contiguous()
    if dist is not None:
        C = dist.broadcast(C, 0)
    t_init = time.perf_counter() - t0

    # ---- Lloyd iterations ---------------------------------------------------------------------
    sq_total = float((xf * xf).sum(1).double().sum()) if not spherical else float(n_local)
    if dist is not None:
        sq_total = float(dist.all_reduce(torch.tensor([sq_total], dtype=torch.float64)).item())

    def reduce_stats(labels):
        sums, counts = _cluster_sums(xf, labels, k)
        if dist is not None:
            sums = dist.all_reduce(sums)
            counts = dist.all_reduce(counts)
        return sums, counts

    def inertia_of(C_used, sums, counts):
        dot = float((C_used.double() * sums.double()).sum())
        if spherical:
            return N - dot
        return sq_total - 2.0 * dot + float((counts.double() * (C_used.double() ** 2).sum(1)).sum())

    bnd = AssignmentBounds(assigner) if (bounds and tie_margin is None) else None
    history: List[Dict[str, Any]] = []
    prev_labels = None
    prev_inertia = None
    labels = None
    consistent = False
    converged = False
    reseeded_prev = False
    it = 0
    for it in range(1, n_iter + 1):
        ti = time.perf_counter()
        amb0 = assigner.stats["rechecked"]
        rows0 = assigner.stats["rows"]
        labels, best = bnd(C, labels) if bnd is not None else assigner(C)
        sums, counts = reduce_stats(labels)
        inertia = inertia_of(C, sums, counts)
        if prev_labels is None:
            changed = N
        else:
            ch = (labels != prev_labels).sum().reshape(1)
            changed = int(dist.all_reduce(ch).item()) if dist is not None else int(ch.item())
        C_new, n_empty = _new_centroids(C, sums, counts, spherical)
        if n_empty:
            C_new = _reseed(C_new, counts, sums, xf, labels, best, spherical, offset, dist)
        if dev.type == "cuda" and (progress or verbose):
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - ti
        rechecked = assigner.stats["rechecked"] - amb0
        searched = assigner.stats["rows"] - rows0
        rec = dict(iter=it, inertia=inertia, changed=changed, empty=n_empty, rechecked_local=rechecked,
                   searched_local=searched, seconds=dt)
        history.append(rec)
        if rank0 and (progress or verbose):
            line = (
                f"kmeans iter {it:3d}: inertia {inertia:.6g}  changed {changed} ({changed / N:.3%})  "
                f"empty {n_empty}  searched {searched}  rechecked {rechecked}  {dt * 1000:.1f} ms"
            )
            if progress:
                print(line, file=sys.stderr, flush=True)
            if verbose:
                log.info(line)
        if changed == 0 and n_empty == 0 and not reseeded_prev:
            C = C_new
            consistent = converged = True
            break
        if prev_inertia is not None and n_empty == 0 and (prev_inertia - inertia) <= tol * abs(prev_inertia):
            C = C_new
            converged = True
            break
        C = C_new
        prev_labels = labels
        prev_inertia = inertia
        reseeded_prev = n_empty > 0

    if not consistent:  # final assignment so that labels and centroids agree
        labels, best = bnd(C, labels) if bnd is not None else assigner(C)
        sums, counts = reduce_stats(labels)
        inertia = inertia_of(C, sums, counts)
    n_empty_final = int((counts == 0).sum())
    if n_empty_final and rank0:
        warnings.warn(
            f"kmeans: {n_empty_final} of {k} clusters own no point in the final assignment "
            f"({'converged' if converged else 'stopped at n_iter'}; few distinct points, or more iterations needed)"
        )
    if dist is not None:  # guard against any drift: rank 0's centroids are the result
        C = dist.broadcast(C, 0)
    info = dict(
        precision=precision_r, backend=backend_r, device=str(dev), init_seconds=t_init,
        seconds=time.perf_counter() - t_start, n_empty=n_empty_final, world_size=1 if dist is None else dist.world,
        stats=dict(assigner.stats), n_rows=N, counts=counts.cpu(),
    )
    return KMeansResult(C, labels, inertia, it, converged, history, info)


def kmeans_fit(x, k: int, **kwargs) -> KMeansResult:
    """Alias of :func:`kmeans` (the result carries ``inertia``, ``n_iter``, ``converged``, ``history``)."""
    return kmeans(x, k, **kwargs)


def label_centroids(x: torch.Tensor, labels: torch.Tensor, k: int, spherical: bool = True) -> torch.Tensor:
    """The centroids (k, D) of a labelling with ids 0..k-1, as a Lloyd update computes them (spherical: the
    normalised sum of the normalised rows): ``kmeans(init=...)`` from labels, or a partition's objective.
    Clusters without a member are NaN."""
    xf = _prepare(x, None, spherical)
    labels = torch.as_tensor(labels).to(xf.device, torch.long)
    sums, counts = _cluster_sums(xf, labels, k)
    return _new_centroids(torch.zeros(k, xf.shape[1], device=xf.device), sums, counts, spherical)[0]


def mean_cosine(x: torch.Tensor, labels: torch.Tensor) -> float:
    """The spherical k-means objective of a partition: the mean cosine of each (normalised) row to its
    cluster's normalised mean (ids need not be 0..k-1). A label-free comparison of two partitions of the same
    embeddings: a k-means result against the labels it would replace (``reclustering.py``)."""
    xf = torch.nn.functional.normalize(torch.as_tensor(x).float(), dim=1)
    lab = torch.as_tensor(labels).to(xf.device, torch.long)
    if lab.numel() != xf.shape[0]:
        raise ValueError(f"{lab.numel()} labels for {xf.shape[0]} embeddings")
    centroids = label_centroids(xf, lab, int(lab.max()) + 1)  # ids without members: NaN rows, never indexed
    return float((xf * centroids[lab]).sum(dim=1).mean())


def _new_centroids(C, sums, counts, spherical):
    nonempty = counts > 0
    if spherical:
        norm = sums.norm(dim=1)
        ok = nonempty & (norm > 1e-12 * counts.clamp_min(1).float())
        C_new = torch.where(ok[:, None], sums / norm.clamp_min(1e-30)[:, None], C)
    else:
        ok = nonempty
        C_new = torch.where(ok[:, None], sums / counts.clamp_min(1).float()[:, None], C)
    n_empty = int((~ok).sum())
    if n_empty:
        C_new = C_new.clone()
        C_new[~ok] = float("nan")  # marked for re-seeding
    return C_new.contiguous(), n_empty


def _reseed(C_new, counts, sums, xf, labels, best, spherical, offset, dist):
    """Empty (or degenerate) clusters get the points farthest from their current centroid.

    Deterministic: candidates are ordered by distance (descending), then global row index.
    """
    empty = torch.nonzero(torch.isnan(C_new[:, 0])).squeeze(1)
    e = int(empty.numel())
    if spherical:
        d = 1.0 - best
    else:
        d = (xf * xf).sum(1) - 2.0 * best
    m = min(e, d.numel())
    v, i = torch.topk(d, m)
    cand_d = v.double().cpu()
    cand_g = (i + offset).cpu()
    cand_x = xf[i]
    if dist is not None:
        cand_d = torch.cat(dist.all_gather(cand_d))
        cand_g = torch.cat(dist.all_gather(cand_g))
        cand_x = torch.cat(dist.all_gather(cand_x))
    order = torch.argsort(cand_g, stable=True)
    order = order[torch.argsort(-cand_d[order], stable=True)]
    pick = order[:e]
    C_new = C_new.clone()
    C_new[empty[: pick.numel()]] = cand_x[pick.to(cand_x.device)].to(C_new.device)
    if pick.numel() < e:  # fewer rows than empty clusters: keep them at random rows (stays empty)
        C_new[empty[pick.numel():]] = cand_x[:1].to(C_new.device)
    if spherical:
        C_new = torch.nn.functional.normalize(C_new, dim=1)
    return C_new.contiguous()
