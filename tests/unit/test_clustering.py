"""Tests of speechbrain_ssrl.clustering (k-means, assignment, exact low-precision re-check, DDP)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from ddp_utils import free_port, init_gloo
from sklearn.metrics import normalized_mutual_info_score

from speechbrain_ssrl.clustering import KMeansResult, assign, kmeans, margin_factor

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def blobs(n=3000, k=20, d=32, spread=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1) * 3
    y = torch.arange(n) % k
    x = centres[y] + spread * 3 * torch.randn(n, d, generator=g)
    return x, y


def ref_assign(x, c, spherical):
    """The plain reference: argmax of the score in float64 (or fp32) chunks."""
    x = x.double()
    c = c.double()
    if spherical:
        x = torch.nn.functional.normalize(x, dim=1)
        c = torch.nn.functional.normalize(c, dim=1)
        return (x @ c.T).argmax(1)
    return (x @ c.T - 0.5 * (c * c).sum(1)).argmax(1)


# ------------------------------------------------------------------------------------------------
# recovery of clusters
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spherical", [True, False])
def test_recovers_blobs_random_init_best_of_restarts(spherical):
    # random init can put two centres in one blob (a local optimum Lloyd cannot leave), hence the
    # usual restarts: the lowest-inertia run of 10 seeds recovers the blobs
    x, y = blobs(n=1600, k=8)
    runs = [kmeans(x, 8, spherical=spherical, init="random", seed=s) for s in range(10)]
    best = min(runs, key=lambda r: r.inertia)
    assert normalized_mutual_info_score(y.numpy(), best.labels.numpy()) > 0.95


@pytest.mark.parametrize("spherical", [True, False])
@pytest.mark.parametrize("init", ["k-means++"])
def test_recovers_blobs(spherical, init):
    x, y = blobs()
    res = kmeans(x, 20, spherical=spherical, init=init, seed=3, n_iter=50)
    c, labels = res  # unpacks as a pair
    assert isinstance(res, KMeansResult)
    assert c.shape == (20, 32) and labels.shape == (3000,) and labels.dtype == torch.int64
    assert normalized_mutual_info_score(y.numpy(), labels.numpy()) > 0.95
    assert res.converged and 1 <= res.n_iter <= 50
    assert res.inertia > 0 and len(res.history) >= 1
    if spherical:
        assert torch.allclose(c.norm(dim=1), torch.ones(20), atol=1e-5)
    # labels are consistent with the returned centroids
    assert torch.equal(labels, ref_assign(x, c, spherical))


def test_inertia_definitions():
    x, _ = blobs(n=600, k=5, d=8)
    r = kmeans(x, 5, spherical=False, seed=0)
    c, lab = r
    assert r.inertia == pytest.approx(float(((x - c[lab]) ** 2).sum()), rel=1e-5)
    r = kmeans(x, 5, spherical=True, seed=0)
    c, lab = r
    xn = torch.nn.functional.normalize(x, dim=1)
    assert r.inertia == pytest.approx(float((1 - (xn * c[lab]).sum(1)).sum()), rel=1e-5)


def test_matches_sklearn_with_same_init():
    from sklearn.cluster import KMeans

    x, _ = blobs(n=2000, k=10, d=16, spread=0.4, seed=1)
    init = x[torch.randperm(2000, generator=torch.Generator().manual_seed(0))[:10]]
    ours = kmeans(x, 10, spherical=False, init=init, n_iter=15, tol=0.0, precision="fp32")
    sk = KMeans(10, init=init.double().numpy(), n_init=1, max_iter=15, tol=0.0, algorithm="lloyd").fit(x.double().numpy())
    assert ours.inertia == pytest.approx(sk.inertia_, rel=1e-4)
    assert np.array_equal(ours.labels.numpy(), sk.labels_)


# ------------------------------------------------------------------------------------------------
# low precision + exact re-check == fp32 reference
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["topk", "max2"])
@pytest.mark.parametrize("spherical", [True, False])
def test_bf16_recheck_matches_reference_on_near_ties(spherical, strategy, monkeypatch):
    import speechbrain_ssrl.clustering as cl

    monkeypatch.setitem(cl.TORCH_STRATEGY, "cpu", strategy)  # "max2" is the CUDA default
    g = torch.Generator().manual_seed(0)
    # random data and centroids: many near ties (the hard case for low precision)
    x = torch.randn(6000, 48, generator=g) + (0 if spherical else 0.5)
    c = torch.randn(300, 48, generator=g)
    c[7] = c[3]  # an exact tie: the lower index must win, as argmax does
    ref = ref_assign(x, c, spherical)
    for precision in ("bf16", "tf32", "fp32"):
        lab = assign(x, c, spherical=spherical, precision=precision, chunk_size=1000)
        assert torch.equal(lab, ref), precision
    plain = assign(x, c, spherical=spherical, precision="bf16", tie_margin=0.0)
    assert (plain != ref).any()  # without the re-check, bf16 alone does disagree here
    lab, score = assign(x, c, spherical=spherical, return_scores=True, precision="bf16")
    if spherical:
        expect = (torch.nn.functional.normalize(x, dim=1) * torch.nn.functional.normalize(c, dim=1)[lab]).sum(1)
    else:
        expect = ((x - c[lab]) ** 2).sum(1)
    assert torch.allclose(score, expect, atol=1e-4)


@pytest.mark.parametrize("strategy", ["topk", "max2"])
def test_many_candidates_path(strategy, monkeypatch):
    import speechbrain_ssrl.clustering as cl

    monkeypatch.setitem(cl.TORCH_STRATEGY, "cpu", strategy)
    # centroids that are almost identical: every row has > 4 candidates inside the margin, and with
    # more than 64 of them the row is re-scored in full fp32
    g = torch.Generator().manual_seed(1)
    base = torch.randn(1, 32, generator=g)
    for n_c in (40, 90):
        c = base + 1e-3 * torch.randn(n_c, 32, generator=g)
        x = torch.randn(500, 32, generator=g)
        for spherical in (True, False):
            assert torch.equal(assign(x, c, spherical=spherical, precision="bf16"), ref_assign(x, c, spherical))


@pytest.mark.parametrize("spherical", [True, False])
def test_kmeans_bf16_equals_fp32_run(spherical):
    x, _ = blobs(n=4000, k=30, d=24, spread=0.3, seed=2)
    a = kmeans(x, 30, spherical=spherical, precision="fp32", seed=5, n_iter=30, tol=0)
    b = kmeans(x, 30, spherical=spherical, precision="bf16", seed=5, n_iter=30, tol=0, chunk_size=700)
    assert torch.equal(a.labels, b.labels)
    assert torch.allclose(a.centroids, b.centroids, atol=1e-6)
    assert b.inertia == pytest.approx(a.inertia, rel=1e-6)
    assert b.info["precision"] == "bf16" and b.info["stats"]["rechecked"] > 0


def test_fp16_spherical_equals_fp32_run_and_refuses_euclidean():
    x, _ = blobs(n=3000, k=30, d=24, spread=0.3, seed=2)
    a = kmeans(x, 30, precision="fp32", seed=5, n_iter=30, tol=0)
    h = kmeans(x, 30, precision="fp16", seed=5, n_iter=30, tol=0)
    b = kmeans(x, 30, precision="bf16", seed=5, n_iter=30, tol=0)
    assert torch.equal(a.labels, h.labels) and torch.allclose(a.centroids, h.centroids, atol=1e-6)
    # fp16's finer rounding leaves fewer rows inside the re-check margin than bf16's
    assert 0 < h.info["stats"]["rechecked"] < b.info["stats"]["rechecked"]
    assert margin_factor("fp16", 512) < margin_factor("bf16", 512) / 4
    with pytest.raises(ValueError, match="spherical"):
        kmeans(x, 30, precision="fp16", spherical=False)


def test_margin_factor_bounds():
    assert margin_factor("fp32", 512) == 0.0
    f = margin_factor("bf16", 512)
    assert 3 * 2**-8 < f < 3.2 * 2**-8
    assert margin_factor("bf16", 512, backend="triton") < f
    assert margin_factor("tf32", 512) < f


# ------------------------------------------------------------------------------------------------
# determinism, chunking, empty clusters
# ------------------------------------------------------------------------------------------------
def test_deterministic_for_a_seed_and_chunk_independent():
    x, _ = blobs(n=2000, k=15, d=16, spread=0.5, seed=4)
    a = kmeans(x, 15, seed=11)
    b = kmeans(x, 15, seed=11, chunk_size=333)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)
    c = kmeans(x, 15, seed=12)
    assert not torch.equal(a.centroids, c.centroids)
    # numpy input and a float64 tensor give the same result
    d = kmeans(x.numpy(), 15, seed=11)
    assert torch.equal(a.labels, d.labels)


def test_kmeanspp_subsample_and_k_equals_n():
    x, y = blobs(n=1500, k=10, d=8)
    r = kmeans(x, 10, init_sample_size=200, seed=0)
    assert normalized_mutual_info_score(y.numpy(), r.labels.numpy()) > 0.9
    small = torch.randn(7, 4)
    r = kmeans(small, 7, spherical=False)
    assert sorted(r.labels.tolist()) == list(range(7))
    assert r.inertia == pytest.approx(0.0, abs=1e-5)
    r = kmeans(small, 1, spherical=False)
    assert torch.allclose(r.centroids[0], small.mean(0), atol=1e-6)


def test_empty_cluster_reseeded_euclidean():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 2, generator=g) * 0.1
    b = torch.randn(200, 2, generator=g) * 0.1 + torch.tensor([10.0, 0.0])
    far = torch.tensor([[5.0, 30.0]])  # one outlier
    x = torch.cat([a, b, far])
    init = torch.tensor([[0.0, 0.0], [10.0, 0.0], [500.0, 500.0]])  # centroid 2 captures nothing
    r = kmeans(x, 3, spherical=False, init=init, n_iter=20)
    assert r.history[0]["empty"] == 1
    counts = torch.bincount(r.labels, minlength=3)
    assert (counts > 0).all()
    # the farthest point (the outlier) became the new centre
    assert torch.allclose(r.centroids[2], far[0]) and r.labels[-1] == 2
    assert r.info["n_empty"] == 0


def test_empty_cluster_reseeded_spherical_duplicate_init():
    x, y = blobs(n=900, k=3, d=8, seed=6)
    init = torch.stack([x[0], x[0], x[1], x[2]])  # duplicates: cluster 1 loses every tie
    r = kmeans(x, 4, init=init, n_iter=30)
    assert r.history[0]["empty"] >= 1
    assert (torch.bincount(r.labels, minlength=4) > 0).all()
    assert torch.isfinite(r.centroids).all()


# ------------------------------------------------------------------------------------------------
# bounds (rows whose label cannot change are not searched again)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spherical,precision", [(True, "fp32"), (False, "fp32"), (True, "bf16"), (False, "bf16")])
def test_bounds_give_the_same_run_with_less_search(spherical, precision):
    x, _ = blobs(n=3000, k=40, d=32, spread=0.6, seed=8)
    kw = dict(spherical=spherical, precision=precision, seed=3, n_iter=40, tol=0, chunk_size=500)
    a = kmeans(x, 50, bounds=False, **kw)
    b = kmeans(x, 50, bounds=True, **kw)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    assert a.n_iter == b.n_iter and a.inertia == b.inertia and a.converged == b.converged
    assert a.info["stats"]["skipped"] == 0 and all(h["searched_local"] == 3000 for h in a.history)
    # not vacuous: later iterations searched only some rows
    assert b.info["stats"]["skipped"] > 0
    assert min(h["searched_local"] for h in b.history) < 3000 // 2


def test_bounds_with_reseeding_and_far_moves():
    x, _ = blobs(n=900, k=3, d=8, seed=6)
    init = torch.stack([x[0], x[0], x[1], x[2]])  # duplicates: a cluster is emptied and re-seeded
    for spherical in (True, False):
        a = kmeans(x, 4, init=init, n_iter=30, spherical=spherical, bounds=False)
        b = kmeans(x, 4, init=init, n_iter=30, spherical=spherical, bounds=True)
        assert a.history[0]["empty"] >= 1
        assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)


@pytest.mark.parametrize("movers", [0, 3, None])
@pytest.mark.parametrize("spherical", [True, False])
def test_bounds_catch_a_centroid_that_jumps_onto_a_row(spherical, movers):
    """One centroid moves onto row 7 while the others stay: row 7 (and any row now closer to it)
    must be relabelled, the rest may be skipped; the result equals a full search."""
    from speechbrain_ssrl.clustering import AssignmentBounds, _Assigner, _prepare

    x, _ = blobs(n=600, k=6, d=16, spread=0.3, seed=9)
    xf = _prepare(x, None, spherical)
    g = torch.Generator().manual_seed(1)
    C = xf[torch.randperm(600, generator=g)[:6]].clone()
    for precision in ("fp32", "bf16"):
        bnd = AssignmentBounds(_Assigner(xf, spherical, precision, "torch", None, None), movers=movers)
        labels, _ = bnd(C, None)
        C2 = C.clone()
        j = int((labels[7] + 1) % 6)
        C2[j] = xf[7]
        got, best = bnd(C2, labels)
        ref = ref_assign(xf, C2, spherical)
        assert torch.equal(got, ref) and got[7] == j
        if movers != 0:  # the jumper is scored directly, the others barely moved: most rows skip
            assert bnd.a.stats["skipped"] > 300
        # the bound holds: no other centroid scores above it (float64)
        S = xf.double() @ C2.double().T
        if not spherical:
            S = S - 0.5 * (C2.double() ** 2).sum(1)
        S[torch.arange(600), got] = float("-inf")
        assert bool((S.max(1).values <= bnd.upper.double()).all())


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
def test_bad_input():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="NaN/inf"):
        kmeans(torch.cat([x, torch.tensor([[0.0, float("nan"), 1.0]])]), 2)
    with pytest.raises(ValueError, match="NaN/inf"):
        kmeans(torch.cat([x, torch.tensor([[float("inf"), 0.0, 1.0]])]), 2)
    with pytest.raises(ValueError, match="k = 11.*N = 10"):
        kmeans(x, 11)
    with pytest.raises(ValueError, match="k must be >= 1"):
        kmeans(x, 0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        kmeans(x, -3)
    with pytest.raises(TypeError, match="k must be an int"):
        kmeans(x, 2.5)
    with pytest.raises(ValueError, match="empty"):
        kmeans(torch.zeros(0, 3), 1)
    with pytest.raises(TypeError, match="floating-point"):
        kmeans(torch.ones(10, 3, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="floating-point"):
        kmeans(np.ones((10, 3), dtype=np.int32), 2)
    with pytest.raises(ValueError, match="2-D"):
        kmeans(torch.randn(10), 2)
    with pytest.raises(ValueError, match="2-D"):
        kmeans(torch.randn(2, 5, 3), 2)
    with pytest.raises(TypeError, match="torch.Tensor"):
        kmeans([[1.0, 2.0]], 1)
    with pytest.raises(ValueError, match="all-zero"):
        kmeans(torch.cat([x, torch.zeros(1, 3)]), 2, spherical=True)
    with pytest.raises(ValueError, match="precision"):
        kmeans(x, 2, precision="fp8")
    with pytest.raises(ValueError, match="init"):
        kmeans(x, 2, init="kmeans||")
    with pytest.raises(ValueError, match="shape"):
        kmeans(x, 2, init=torch.randn(3, 3))
    with pytest.raises(ValueError, match="n_iter"):
        kmeans(x, 2, n_iter=0)
    with pytest.raises(ValueError, match="D = 4"):
        assign(x, torch.randn(2, 4))
    with pytest.raises(ValueError, match="NaN/inf"):
        assign(torch.full((2, 3), float("nan")), torch.randn(2, 3))


# ------------------------------------------------------------------------------------------------
# DDP: 2 CPU processes (gloo), half the data each == one process on all the data
# ------------------------------------------------------------------------------------------------
def _ddp_configs():
    return [
        dict(spherical=True, precision="bf16", init="k-means++"),
        dict(spherical=False, precision="fp32", init="random"),
    ]


def _ddp_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    init_gloo(rank, world, port)
    try:
        x, _ = blobs(n=1203, k=12, d=16, spread=0.4, seed=8)
        half = (x.shape[0] + 1) // 2
        shard = x[:half] if rank == 0 else x[half:]
        outs = []
        for cfg in _ddp_configs():
            r = kmeans(shard, 12, seed=2, n_iter=40, **cfg)
            outs.append(dict(centroids=r.centroids, labels=r.labels, inertia=r.inertia, n_iter=r.n_iter))
        torch.save(outs, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_equal_single_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    x, _ = blobs(n=1203, k=12, d=16, spread=0.4, seed=8)
    for cfg, a, b in zip(_ddp_configs(), r0, r1):
        single = kmeans(x, 12, seed=2, n_iter=40, distributed=False, **cfg)
        assert torch.equal(a["centroids"], b["centroids"]), cfg  # identical on both ranks
        assert torch.allclose(a["centroids"], single.centroids, atol=1e-5), cfg
        assert torch.equal(torch.cat([a["labels"], b["labels"]]), single.labels), cfg
        assert a["inertia"] == pytest.approx(single.inertia, rel=1e-5)
        assert a["n_iter"] == single.n_iter


# ------------------------------------------------------------------------------------------------
# the fused Triton kernel's logic, in Triton's CPU interpreter (the GPU run is in bench/kmeans.py)
# ------------------------------------------------------------------------------------------------
_INTERPRETER_PROBE = textwrap.dedent(
    """
    import torch, triton, triton.language as tl

    @triton.jit
    def k(Out, n):  # a loop bound that is a runtime integer, as in the k-means kernel
        acc = 0
        for i in range(0, n):
            acc += 1
        tl.store(Out, acc)

    out = torch.zeros(1, dtype=torch.int32)
    k[(1,)](out, 3)
    assert int(out[0]) == 3
    print("OK")
    """
)


def _interpreter_takes_runtime_loop_bounds(env) -> bool:
    """Triton 3.6's CPU interpreter under NumPy 2.5 fails on any loop bound that is a runtime integer
    (``int()`` of its 1-element array handle; seen on the H200 image: triton 3.6.0, numpy 2.5.2), while
    Triton 3.8 runs it. That is the interpreter's limit, not the kernel's: the compiled kernel runs there
    (bench/kmeans.py --gpu)."""
    out = subprocess.run([sys.executable, "-c", _INTERPRETER_PROBE], env=env, capture_output=True, text=True, timeout=120)
    if out.returncode == 0 and "OK" in out.stdout:
        return True
    # only that known limit skips; any other failure of the probe fails the test
    assert "only 0-dimensional arrays can be converted" in out.stderr, out.stdout + out.stderr
    return False


def test_triton_kernel_logic_in_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT)
    if not _interpreter_takes_runtime_loop_bounds(env):
        import numpy
        import triton

        pytest.skip(f"Triton {triton.__version__}'s interpreter cannot run a runtime loop bound under NumPy "
                    f"{numpy.__version__} (its limit, not the kernel's); Triton 3.8 can")
    script = textwrap.dedent(
        """
        import torch
        torch.set_num_threads(1)
        from speechbrain_ssrl import clustering as cl
        g = torch.Generator().manual_seed(0)
        cfg = dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=1)
        for n, k, d, bias in [(100, 37, 40, False), (70, 70, 32, True), (40, 2, 16, False), (33, 1, 16, True)]:
            x = torch.randn(n, d, generator=g); c = torch.randn(k, d, generator=g)
            if k > 5:
                c[5] = c[3]
            b = -0.5 * (c * c).sum(1) if bias else None
            V, I = cl.triton_top3(x, c, b, config=cfg)
            S = x @ c.T + (b if bias else 0)
            m = min(3, k)
            rv = S.topk(m, dim=1).values
            assert (V[:, :m] - rv).abs().max() < 1e-4, (n, k)
            assert torch.equal(I[:, 0], S.argmax(1)), (n, k)
            if k > 1:
                assert (S.gather(1, I[:, 1:2]).squeeze(1) - rv[:, 1]).abs().max() < 1e-4
            if k < 3:
                assert torch.isinf(V[:, k:]).all()
        # the full backend path (re-check on the kernel's top-3) against the reference
        cl.TRITON_CONFIG.update(cfg)
        x = torch.randn(300, 24, generator=g); c = torch.randn(50, 24, generator=g)
        c[9] = c[8]
        for sph in (True, False):
            ref = cl.assign(x, c, spherical=sph, precision="fp32")
            got = cl.assign(x, c, spherical=sph, precision="bf16", backend="triton", tie_margin=0.3)
            assert torch.equal(ref, got), sph
        # k-means on the kernel with and without bounds
        x = torch.randn(400, 16, generator=g) + 3 * torch.randn(8, 16, generator=g).repeat(50, 1)
        runs = [cl.kmeans(x, 10, precision="bf16", backend="triton", seed=0, tol=0, bounds=b) for b in (False, True)]
        assert torch.equal(runs[0].labels, runs[1].labels) and torch.equal(runs[0].centroids, runs[1].centroids)
        assert runs[1].info["stats"]["skipped"] > 0
        print("OK")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_triton_kernel_compiles_for_hopper(dtype):
    """Ahead-of-time compile for sm_90 (no GPU needed): the kernel lowers to wgmma, is software-pipelined
    (several shared-memory stages) and does not spill registers."""
    pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        pytest.skip("this Triton has no AOT compile API")
    import triton

    import speechbrain_ssrl.clustering as cl

    kern = cl._define_triton_kernel()
    cfg = dict(cl.TRITON_CONFIG)
    sig = dict(X=f"*{dtype}", C=f"*{dtype}", Bias="*fp32", V="*fp32", I="*i32", N="i32", K="i32", D="constexpr",
               HAS_BIAS="constexpr", BLOCK_M="constexpr", BLOCK_N="constexpr", BLOCK_K="constexpr")
    const = dict(D=192, HAS_BIAS=True, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"])
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(5)}  # torch allocations are 16-byte aligned
    try:
        cc = triton.compile(ASTSource(fn=kern, signature=sig, constexprs=const, attrs=attrs),
                            target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]))
    except (ImportError, FileNotFoundError) as err:  # a Triton build without the NVIDIA toolchain
        pytest.skip(f"no NVIDIA backend: {err}")
    ptx = cc.asm["ptx"]
    assert "wgmma.mma_async" in ptx and "cp.async" in ptx
    stage = (cfg["BLOCK_M"] + cfg["BLOCK_N"]) * cfg["BLOCK_K"] * 2
    assert cc.metadata.shared >= 2 * stage  # pipelined


def test_import_does_not_pull_speechbrain():
    """bench/kmeans.py runs on GPU machines without speechbrain: the module must import alone."""
    code = "import sys, speechbrain_ssrl.clustering; assert 'speechbrain' not in sys.modules, 'speechbrain imported'"
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
