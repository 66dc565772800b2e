#!/usr/bin/env python
"""k-means benchmark: speechbrain_ssrl.clustering against scikit-learn / faiss (CPU) or plain torch (GPU).

CPU mode (default): 100,000 x 192, K = 1,000 (``--quick``: 20,000 x 64, K = 100), Euclidean, the same
initial centroids and iteration count for every method: ours (fp32 with and without bounds, and bf16 +
exact re-check),
scikit-learn ``KMeans(n_init=1, algorithm="lloyd")`` and faiss-cpu ``Kmeans`` when installed. Reports
seconds per iteration and the final inertia (all evaluated the same way, exactly, from each method's
final centroids).

GPU mode (``--gpu``): N = 1,092,009 (VoxCeleb2-dev's utterance count), K = 8,000, D = 512 and 192,
spherical. Per assignment pass on the same centroids: the bf16 matmul floor (product only), a plain
bf16 matmul + argmax, the plain fp32 chunked reference ("the authors' way": argmax of ``x @ C.T`` in
chunks, TF32 off), ours with the torch backend and with the fused Triton kernel (a small config sweep),
each with its agreement with the fp32 reference. Then full runs to convergence (no label change or
relative inertia decrease < 1e-4, at most 100 iterations) of the fp32 reference loop and of ours (with
and without the bounds that skip rows whose label cannot change; same result), from the same initial
centroids: ms per Lloyd iteration and seconds to convergence.

GPU data: 5,994 random speaker centres on the unit sphere; each speaker has sessions (videos, about
24 per speaker as in VoxCeleb2) whose centres lie at cosine ``a ~ U(0.80, 0.90)`` from the speaker
centre; utterances lie at cosine ``b ~ U(0.75, 0.90)`` from their session centre, so the cosine to the
own speaker centre is about ``a b`` = 0.6-0.8 (mean ~0.7), same-session pairs ~0.68, same-speaker
different-session pairs ~0.5, different speakers ~0 +- 1/sqrt(D). Utterances per speaker are
log-normal (VoxCeleb2-like spread). Not uniform noise, where near ties are far more common.

Usage::

    python bench/kmeans.py                 # CPU, writes bench/results/kmeans_cpu-<threads>core.json
    python bench/kmeans.py --quick         # small CPU sanity run
    python bench/kmeans.py --gpu --out "$OUT/kmeans_{device}.json"   # ~1.5-2.5 min on an H100

GPU mode obeys ``--time-limit`` (seconds after the imports): ours runs before the fp32 reference's
run to convergence, which is capped by what is left (``--ref-cap`` at most); D = 192 is skipped when
D = 512 used up the budget.

Imports only torch / numpy (scikit-learn, faiss when present): no speechbrain needed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _early_threads(argv):
    """Thread counts must be set before numpy / torch are imported."""
    threads = 2
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            threads = int(argv[i + 1])
        elif a.startswith("--threads="):
            threads = int(a.split("=", 1)[1])
    if "--gpu" not in argv:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
    return threads


_THREADS = _early_threads(sys.argv[1:])

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, ROOT)
from speechbrain_ssrl import clustering as cl  # noqa: E402

T_START = time.perf_counter()


def say(*a):
    print(f"[{time.perf_counter() - T_START:7.1f}s]", *a, flush=True)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def speaker_data(N, D, S, seed=0, device="cpu", sessions_per_speaker=24.0, chunk=1 << 18):
    """Unit vectors around S speaker centres with session structure (see the module docstring)."""
    S = min(S, N // 2)  # (tiny dry runs) at least 2 utterances per speaker
    g = torch.Generator(device="cpu").manual_seed(seed)
    spk_c = torch.nn.functional.normalize(torch.randn(S, D, generator=g), dim=1)
    # utterances per speaker: log-normal weights, at least 2 each
    w = torch.exp(0.5 * torch.randn(S, generator=g))
    counts = torch.floor(w / w.sum() * (N - 2 * S)).long() + 2
    counts[: N - int(counts.sum())] += 1
    spk = torch.repeat_interleave(torch.arange(S), counts)
    spk = spk[torch.randperm(N, generator=g)]
    # sessions: Poisson-ish count per speaker (>= 1); utterance -> session uniformly
    n_sess = torch.clamp(torch.poisson(torch.full((S,), sessions_per_speaker), generator=g).long(), min=1)
    sess_off = torch.cumsum(n_sess, 0) - n_sess
    sess_of = sess_off[spk] + (torch.rand(N, generator=g) * n_sess[spk]).long().clamp_max(n_sess[spk] - 1)
    n_total_sess = int(n_sess.sum())
    sess_spk = torch.repeat_interleave(torch.arange(S), n_sess)
    a_spk = 0.80 + 0.10 * torch.rand(S, generator=g)
    xi = torch.nn.functional.normalize(torch.randn(n_total_sess, D, generator=g), dim=1)
    a = a_spk[sess_spk][:, None]
    sess_c = torch.nn.functional.normalize(a * spk_c[sess_spk] + torch.sqrt(1 - a * a) * xi, dim=1)
    dev = torch.device(device)
    sess_c = sess_c.to(dev)
    x = torch.empty(N, D, device=dev)
    gd = torch.Generator(device=dev).manual_seed(seed + 1)
    b_all = (0.75 + 0.15 * torch.rand(N, generator=g)).to(dev)
    sess_of_d = sess_of.to(dev)
    for s in range(0, N, chunk):
        e = min(s + chunk, N)
        eta = torch.nn.functional.normalize(torch.randn(e - s, D, generator=gd, device=dev), dim=1)
        b = b_all[s:e, None]
        x[s:e] = torch.nn.functional.normalize(b * sess_c[sess_of_d[s:e]] + torch.sqrt(1 - b * b) * eta, dim=1)
    cos_own = (x[: min(N, 100000)].cpu() * spk_c[spk[: min(N, 100000)]]).sum(1)
    return x, spk, dict(cos_to_own_speaker_mean=float(cos_own.mean()), cos_to_own_speaker_p5=float(cos_own.quantile(0.05)),
                        cos_to_own_speaker_p95=float(cos_own.quantile(0.95)), n_sessions=n_total_sess)


def random_init(x, K, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    idx = torch.randperm(x.shape[0], generator=g)[:K].to(x.device)
    return x[idx].clone()


def exact_inertia(x, C, spherical):
    """Inertia of the final centroids, evaluated the same way for every method (exact fp32 assignment)."""
    lab = cl.assign(x, C, spherical=spherical, precision="fp32")
    if spherical:
        xn = torch.nn.functional.normalize(x.float(), dim=1)
        cn = torch.nn.functional.normalize(C.float().to(x.device), dim=1)
        return float((1 - (xn * cn[lab]).sum(1)).double().sum()), lab
    Cd = C.float().to(x.device)
    return float(((x.float() - Cd[lab]) ** 2).sum(1).double().sum()), lab


# ------------------------------------------------------------------------------------------------
# CPU mode
# ------------------------------------------------------------------------------------------------
def run_cpu(args):
    torch.set_num_threads(_THREADS)
    if args.quick:
        N, D, K, S, T = 20000, 64, 100, 80, 10
    else:
        N, D, K, S, T = 100000, 192, 1000, 750, 20
    say(f"CPU mode: N={N} D={D} K={K}, {T} Lloyd iterations, Euclidean, {_THREADS} thread(s)")
    x, spk, data_info = speaker_data(N, D, S, seed=args.seed)
    C0 = random_init(x, K, seed=args.seed)
    xn = x.numpy().astype(np.float32)
    rows = []

    def record(name, seconds, iters, C, extra=None):
        inertia, lab = exact_inertia(x, torch.as_tensor(np.asarray(C), dtype=torch.float32), spherical=False)
        r = dict(method=name, seconds=seconds, iterations=iters, ms_per_iter=1000 * seconds / max(iters, 1),
                 inertia=inertia, labels=lab)
        r.update(extra or {})
        rows.append(r)
        say(f"  {name:28s} {seconds:7.2f} s  {r['ms_per_iter']:8.1f} ms/iter  inertia {inertia:.6g}")

    for prec, bounds in (("fp32", True), ("fp32", False), ("bf16", True)):
        t = time.perf_counter()
        res = cl.kmeans(x, K, init=C0, n_iter=T, tol=0.0, spherical=False, precision=prec, bounds=bounds,
                        progress=args.verbose)
        dt = time.perf_counter() - t
        lloyd = sum(h["seconds"] for h in res.history)
        record(f"ours torch {prec}{'' if bounds else ', no bounds'}", dt, res.n_iter, res.centroids,
               dict(lloyd_seconds=lloyd, rechecked=res.info["stats"]["rechecked"], bounds=bounds,
                    searched_fraction=[h["searched_local"] / N for h in res.history],
                    ms_per_iteration=[1000 * h["seconds"] for h in res.history]))

    try:
        from sklearn.cluster import KMeans

        t = time.perf_counter()
        km = KMeans(K, init=C0.numpy(), n_init=1, max_iter=T, tol=0.0, algorithm="lloyd", random_state=0).fit(xn)
        dt = time.perf_counter() - t
        record("scikit-learn KMeans", dt, int(km.n_iter_), km.cluster_centers_, dict(sklearn_inertia=float(km.inertia_)))
    except ImportError:
        say("  scikit-learn not installed: skipped")

    try:
        import faiss

        faiss.omp_set_num_threads(_THREADS)
        t = time.perf_counter()
        fk = faiss.Kmeans(D, K, niter=T, seed=args.seed, verbose=False, spherical=False,
                          max_points_per_centroid=max(256, N // K + 1), min_points_per_centroid=1)
        fk.train(xn, init_centroids=C0.numpy())
        dt = time.perf_counter() - t
        record("faiss-cpu Kmeans", dt, T, fk.centroids)
    except ImportError:
        say("  faiss-cpu not installed: skipped (pip install faiss-cpu)")

    ref = next(r for r in rows if r["method"] == "scikit-learn KMeans") if any(
        r["method"] == "scikit-learn KMeans" for r in rows) else rows[0]
    for r in rows:
        r["inertia_rel_diff_vs_sklearn"] = (r["inertia"] - ref["inertia"]) / ref["inertia"]
        r["label_agreement_vs_sklearn"] = float((r["labels"] == ref["labels"]).double().mean())
    print()
    print(f"k-means on CPU ({platform.processor() or platform.machine()}, {_THREADS} threads): "
          f"N={N}, D={D}, K={K}, same init, {T} iterations")
    hdr = f"| {'method':28s} | {'s total':>8s} | {'ms/iter':>8s} | {'final inertia':>14s} | {'vs sklearn':>10s} | {'labels = sklearn':>16s} |"
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r['method']:28s} | {r['seconds']:8.2f} | {r['ms_per_iter']:8.1f} | {r['inertia']:14.6g} | "
              f"{100 * r['inertia_rel_diff_vs_sklearn']:+9.3f}% | {100 * r['label_agreement_vs_sklearn']:15.2f}% |")
    for r in rows:
        r.pop("labels")
    ok = all(abs(r["inertia_rel_diff_vs_sklearn"]) < 0.01 for r in rows)
    print(f"final inertia within 1% of scikit-learn for every method: {ok}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load:
        print(f"load average at the end (1/5/15 min): {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
    return dict(mode="cpu", N=N, D=D, K=K, iterations=T, threads=_THREADS, data=data_info, results=rows,
                inertia_within_1pct=ok, machine=platform.machine(), processor=platform.processor(),
                cpu_count=os.cpu_count(), load_average_end=load)


# ------------------------------------------------------------------------------------------------
# GPU mode
# ------------------------------------------------------------------------------------------------
def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cuda_time(fn, reps=3, warmup=1):
    for _ in range(warmup):
        out = fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times), out


def ref_assign(x, C, chunk=65536):
    """The plain fp32 chunked reference ("authors' way"): argmax of x @ C.T, TF32 off."""
    N = x.shape[0]
    labels = torch.empty(N, dtype=torch.int64, device=x.device)
    best = torch.empty(N, dtype=torch.float32, device=x.device)
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        for s in range(0, N, chunk):
            v, i = (x[s : s + chunk] @ C.T).max(dim=1)
            labels[s : s + chunk] = i
            best[s : s + chunk] = v
    finally:
        torch.set_float32_matmul_precision(prev)
    return labels, best


def ref_kmeans(x, C0, max_iter, tol, time_cap):
    """The reference loop: fp32 argmax + index_add_ update, spherical, empty clusters keep their centre."""
    N, K = x.shape[0], C0.shape[0]
    C = C0.clone()
    prev_labels, prev_inertia, times = None, None, []
    t_all = time.perf_counter()
    it = 0
    for it in range(1, max_iter + 1):
        sync()
        t = time.perf_counter()
        labels, best = ref_assign(x, C)
        inertia = float(N - best.double().sum())
        sums = torch.zeros(K, x.shape[1], device=x.device).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=K)
        C = torch.where((counts > 0)[:, None], torch.nn.functional.normalize(sums, dim=1), C)
        changed = N if prev_labels is None else int((labels != prev_labels).sum())
        sync()
        times.append(time.perf_counter() - t)
        stop = changed == 0 or (prev_inertia is not None and prev_inertia - inertia <= tol * abs(prev_inertia))
        prev_labels, prev_inertia = labels, inertia
        if stop or time.perf_counter() - t_all > time_cap:
            break
    return dict(C=C, labels=prev_labels, iterations=it, times=times, total=time.perf_counter() - t_all,
                converged=bool(stop), inertia=prev_inertia)


def run_gpu(args):
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device visible")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"dry-run-{dev.type}"
    say(f"GPU mode on {name}; torch {torch.__version__}")
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    N, K, S = args.n, args.k, 5994
    dims = [int(d) for d in args.dims.split(",")]
    out = dict(mode="gpu", device=name, torch=torch.__version__, triton=triton_version, N=N, K=K, speakers=S, runs={})
    deadline = T_START + args.time_limit
    best_cfg = None
    for D in dims:
        if time.perf_counter() > deadline:
            say(f"time limit reached: D={D} skipped")
            break
        res = dict(D=D)
        out["runs"][str(D)] = res
        say(f"=== D={D}: generating {N} x {D} speaker-structured unit vectors ({S} speakers)")
        x, spk, info = speaker_data(N, D, S, seed=args.seed, device=dev)
        res["data"] = info
        say(f"    data: {info}")
        C0 = random_init(x, K, seed=args.seed)
        # centroids after a few reference iterations: the tie structure of a real run
        say("    3 reference iterations to get realistic centroids")
        Cm = ref_kmeans(x, C0, 3, 0.0, 60)["C"]
        xb = x.to(torch.bfloat16)
        Cb = Cm.to(torch.bfloat16)
        chunk = cl._default_chunk(K, dev)
        res["chunk_rows"] = chunk

        def floor():
            for s in range(0, N, chunk):
                torch.mm(xb[s : s + chunk], Cb.T)

        def plain_bf16():
            lab = torch.empty(N, dtype=torch.int64, device=dev)
            for s in range(0, N, chunk):
                lab[s : s + chunk] = torch.mm(xb[s : s + chunk], Cb.T).argmax(dim=1)
            return lab

        t_ref, (ref_lab, _) = cuda_time(lambda: ref_assign(x, Cm), reps=2)
        say(f"    fp32 reference assignment: {1000 * t_ref:.1f} ms")
        t_floor, _ = cuda_time(floor)
        say(f"    bf16 matmul floor (no reduction): {1000 * t_floor:.1f} ms")
        t_plain, plain_lab = cuda_time(plain_bf16)
        agree_plain = float((plain_lab == ref_lab).double().mean())
        say(f"    plain bf16 matmul + argmax: {1000 * t_plain:.1f} ms, agreement {100 * agree_plain:.4f}%")
        res["assign_ms"] = dict(fp32_reference=1000 * t_ref, bf16_matmul_floor=1000 * t_floor,
                                plain_bf16_argmax=1000 * t_plain)
        res["agreement_vs_fp32"] = dict(plain_bf16_argmax=agree_plain)

        t_ours_t = float("inf")
        for strategy in ("max2", "topk"):
            cl.TORCH_STRATEGY[dev.type] = strategy
            a_torch = cl._Assigner(x, True, "bf16", "torch", None, None)
            t_s, (lab_t, _) = cuda_time(lambda: a_torch(Cm), reps=2)
            key = f"ours_torch_bf16_recheck_{strategy}"
            res["assign_ms"][key] = 1000 * t_s
            res["agreement_vs_fp32"][key] = float((lab_t == ref_lab).double().mean())
            res[f"rechecked_fraction_torch_{strategy}"] = a_torch.stats["rechecked"] / max(a_torch.stats["rows"], 1)
            res[f"full_row_fraction_torch_{strategy}"] = a_torch.stats["full_rows"] / max(a_torch.stats["rows"], 1)
            say(f"    ours torch ({strategy}) bf16 + re-check: {1000 * t_s:.1f} ms, agreement "
                f"{100 * res['agreement_vs_fp32'][key]:.4f}%, rechecked "
                f"{100 * res[f'rechecked_fraction_torch_{strategy}']:.2f}% of rows, full-row path "
                f"{100 * res[f'full_row_fraction_torch_{strategy}']:.3f}%")
            a_torch = None
            if t_s < t_ours_t:
                t_ours_t, best_strategy = t_s, strategy
        cl.TORCH_STRATEGY[dev.type] = best_strategy
        res["torch_strategy"] = best_strategy

        backend = "torch"
        if cl._triton_module() is not None and cl._triton_selfcheck(dev, D, False):
            configs = cl.TRITON_CONFIGS if (best_cfg is None and not args.no_sweep) else [best_cfg or cl.TRITON_CONFIG]
            sweep = []
            for cfg in configs:
                if time.perf_counter() > deadline - 30:
                    break
                try:
                    t_k, _ = cuda_time(lambda: cl.triton_top3(xb, Cb, None, config=cfg), reps=2)
                    sweep.append(dict(config=cfg, kernel_ms=1000 * t_k))
                    say(f"    triton top-3 kernel {cfg}: {1000 * t_k:.1f} ms")
                except Exception as err:  # a config that does not compile / fit
                    sweep.append(dict(config=cfg, error=repr(err)[:300]))
                    say(f"    triton config {cfg} failed: {err!r}"[:300])
            good = [s for s in sweep if "kernel_ms" in s]
            res["triton_sweep"] = sweep
            if good:
                best_cfg = min(good, key=lambda s: s["kernel_ms"])["config"]
                cl.TRITON_CONFIG.clear()
                cl.TRITON_CONFIG.update(best_cfg)
                a_tri = cl._Assigner(x, True, "bf16", "triton", None, None)
                t_ours_k, (lab_k, _) = cuda_time(lambda: a_tri(Cm), reps=3)
                res["assign_ms"]["ours_triton_bf16_recheck"] = 1000 * t_ours_k
                res["agreement_vs_fp32"]["ours_triton_bf16_recheck"] = float((lab_k == ref_lab).double().mean())
                res["rechecked_fraction_triton"] = a_tri.stats["rechecked"] / max(a_tri.stats["rows"], 1)
                res["full_row_fraction_triton"] = a_tri.stats["full_rows"] / max(a_tri.stats["rows"], 1)
                res["triton_config"] = best_cfg
                say(f"    ours triton bf16 + re-check: {1000 * t_ours_k:.1f} ms, agreement "
                    f"{100 * res['agreement_vs_fp32']['ours_triton_bf16_recheck']:.4f}%, rechecked "
                    f"{100 * res['rechecked_fraction_triton']:.2f}%, full rows {100 * res['full_row_fraction_triton']:.3f}%")
                del a_tri
                backend = "triton" if t_ours_k < t_ours_t else "torch"
                # the same kernel on fp16 inputs (spherical data: 8x smaller rounding, fewer re-checks)
                if cl._triton_selfcheck(dev, D, False, "fp16"):
                    a16 = cl._Assigner(x, True, "fp16", "triton", None, None)
                    t16, (lab16, _) = cuda_time(lambda: a16(Cm), reps=3)
                    res["assign_ms"]["ours_triton_fp16_recheck"] = 1000 * t16
                    res["agreement_vs_fp32"]["ours_triton_fp16_recheck"] = float((lab16 == ref_lab).double().mean())
                    res["rechecked_fraction_triton_fp16"] = a16.stats["rechecked"] / max(a16.stats["rows"], 1)
                    say(f"    ours triton fp16 + re-check: {1000 * t16:.1f} ms, agreement "
                        f"{100 * res['agreement_vs_fp32']['ours_triton_fp16_recheck']:.4f}%, rechecked "
                        f"{100 * res['rechecked_fraction_triton_fp16']:.2f}%")
                    del a16, lab16
        else:
            say("    Triton unavailable or failed its self-check: torch backend only")
        res["backend_used"] = backend

        # the centroid update alone (sparse CSR product) vs index_add_
        t_upd, _ = cuda_time(lambda: cl._cluster_sums(x, ref_lab, K), reps=3)
        t_ia, _ = cuda_time(lambda: torch.zeros(K, D, device=dev).index_add_(0, ref_lab, x), reps=3)
        res["update_ms"] = dict(csr_product=1000 * t_upd, index_add=1000 * t_ia)
        say(f"    centroid sums: CSR product {1000 * t_upd:.1f} ms, index_add_ {1000 * t_ia:.1f} ms")
        xb = Cb = None
        if dev.type == "cuda":
            torch.cuda.empty_cache()

        # full runs to convergence from the same init: ours first (the headline), then the reference
        # under what is left of the time budget (a reserve is kept for the next D)
        # ours without bounds first (every iteration searches every row), then with bounds (the default)
        runs = {}
        for key, bounds, prec in (("kmeans_ours_no_bounds", False, "bf16"), ("kmeans_ours_fp16", True, "fp16"),
                                  ("kmeans_ours", True, "bf16")):
            say(f"    ours ({backend}, {prec}, bounds {bounds}) to convergence ...")
            sync()
            t = time.perf_counter()
            try:
                ours = cl.kmeans(x, K, init=C0, n_iter=args.max_iter, tol=args.tol, precision=prec, backend=backend,
                                 bounds=bounds, progress=args.verbose, verbose=True)
            except Exception as err:  # fp16 on a backend/device that lacks it: report, go on
                res[key] = dict(error=repr(err)[:300])
                say(f"    failed: {err!r}"[:300])
                continue
            sync()
            total = time.perf_counter() - t
            it_times = [h["seconds"] for h in ours.history]
            st = ours.info["stats"]
            res[key] = dict(
                backend=backend, precision=prec, bounds=bounds, iterations=ours.n_iter, converged=ours.converged, seconds=total,
                ms_per_iter=1000 * float(np.mean(it_times)), ms_per_iter_median=1000 * float(np.median(it_times)),
                ms_per_iteration=[1000 * v for v in it_times],
                searched_fraction=[h["searched_local"] / N for h in ours.history],
                inertia=ours.inertia, rechecked_fraction=st["rechecked"] / max(st["rows"], 1),
                n_nonempty=int(torch.unique(ours.labels).numel()))
            say(f"    ours, {prec}, bounds {bounds}: {ours.n_iter} iterations, {total:.2f} s, "
                f"{1000 * np.median(it_times):.1f} ms/iter (median; per iteration: "
                f"{' '.join(f'{1000 * v:.0f}' for v in it_times)}), converged {ours.converged}")
            runs[key] = ours
        b = runs.get("kmeans_ours")
        if b is not None and "kmeans_ours_no_bounds" in runs:
            a = runs["kmeans_ours_no_bounds"]
            res["bounds_same_result"] = bool(torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids))
            say(f"    bounds on/off: same labels and centroids: {res['bounds_same_result']}")
        if b is not None and "kmeans_ours_fp16" in runs:  # exact re-check in both: the same run (up to exact ties)
            res["fp16_vs_bf16_final_labels"] = float((runs["kmeans_ours_fp16"].labels == b.labels).double().mean())
        a = b = runs = None
        # the same final centroids -> the same assignment as the fp32 reference?
        ref_on_ours, _ = ref_assign(x, ours.centroids)
        res["agreement_vs_fp32"]["ours_final_labels_vs_fp32_assign_of_same_centroids"] = float(
            (ref_on_ours == ours.labels).double().mean())
        ref_on_ours = None

        reserve = 35.0 if D != dims[-1] else 5.0
        cap = min(args.ref_cap, deadline - time.perf_counter() - reserve)
        if cap < 3:
            say("    reference fp32 k-means to convergence: skipped (time budget)")
        else:
            say(f"    reference fp32 k-means to convergence (cap {cap:.0f} s) ...")
            ref = ref_kmeans(x, C0, args.max_iter, args.tol, cap)
            res["kmeans_reference_fp32"] = dict(
                iterations=ref["iterations"], converged=ref["converged"], seconds=ref["total"],
                ms_per_iter=1000 * float(np.mean(ref["times"])), ms_per_iter_median=1000 * float(np.median(ref["times"])),
                inertia=ref["inertia"], stopped_by_time_cap=not ref["converged"] and ref["iterations"] < args.max_iter)
            say(f"    reference: {ref['iterations']} iterations, {ref['total']:.1f} s, "
                f"{1000 * np.median(ref['times']):.1f} ms/iter, converged {ref['converged']}")
            if ref["labels"] is not None:
                res["agreement_vs_fp32"]["independent_runs_final_labels"] = float(
                    (ref["labels"] == ours.labels).double().mean())
            ref = None
        if D == dims[-1] and time.perf_counter() < deadline - 15:
            # k-means++ seeding on the default subsample (min(N, 40 K) rows), once, if time is left
            M = min(N, max(40 * K, 10000))
            P = x[torch.randperm(N, generator=torch.Generator().manual_seed(1))[:M].to(dev)]
            sync()
            t = time.perf_counter()
            cl.kmeans_plusplus(P, K, torch.Generator().manual_seed(0))
            sync()
            res["kmeanspp_seconds"] = time.perf_counter() - t
            res["kmeanspp_sample"] = M
            say(f"    k-means++ seeding of {K} centres from {M} rows: {res['kmeanspp_seconds']:.1f} s")
            P = None
        x = ours = None
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return out


def print_gpu_table(out):
    print()
    print(f"k-means on {out['device']}: N={out['N']}, K={out['K']}, spherical, speaker-structured data")
    hdr = "| D | what | ms per assignment / iteration | agreement with fp32 |"
    print(hdr)
    print("|---|---|---|---|")
    for D, r in out["runs"].items():
        for key, ms in r.get("assign_ms", {}).items():
            ag = r.get("agreement_vs_fp32", {}).get(key)
            print(f"| {D} | assign: {key} | {ms:.1f} | {'' if ag is None else f'{100 * ag:.4f}%'} |")
        for key in ("kmeans_reference_fp32", "kmeans_ours_no_bounds", "kmeans_ours_fp16", "kmeans_ours"):
            if key in r and "error" not in r[key]:
                k = r[key]
                print(f"| {D} | {key}: {k['iterations']} it, {k['seconds']:.2f} s to convergence"
                      f"{' (' + k['backend'] + ')' if 'backend' in k else ''} | {k['ms_per_iter_median']:.1f} (median) | |")
        if "update_ms" in r:
            print(f"| {D} | centroid sums (CSR / index_add_) | {r['update_ms']['csr_product']:.1f} / "
                  f"{r['update_ms']['index_add']:.1f} | |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="GPU mode (N = 1,092,009, K = 8,000, D = 512 and 192)")
    p.add_argument("--quick", action="store_true", help="small CPU sanity run")
    p.add_argument("--out", default=None, help="JSON path; '{device}' is replaced by the machine's name")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch, BLAS, OpenMP, faiss)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="print every k-means iteration")
    p.add_argument("--n", type=int, default=1_092_009, help="GPU mode: rows")
    p.add_argument("--k", type=int, default=8000, help="GPU mode: clusters")
    p.add_argument("--dims", default="512,192", help="GPU mode: feature dimensions")
    p.add_argument("--max-iter", type=int, default=100, help="GPU mode: iteration cap of the full runs")
    p.add_argument("--tol", type=float, default=1e-4, help="GPU mode: relative inertia decrease to stop")
    p.add_argument("--ref-cap", type=float, default=40.0, help="GPU mode: seconds cap of the fp32 reference run")
    p.add_argument("--time-limit", type=float, default=170.0, help="GPU mode: overall budget (seconds)")
    p.add_argument("--no-sweep", action="store_true", help="GPU mode: no Triton config sweep")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # "cpu": dry run of the GPU mode
    args = p.parse_args()

    if args.gpu:
        out = run_gpu(args)
        device = slug(out["device"])
        print_gpu_table(out)
    else:
        out = run_cpu(args)
        device = f"cpu-{_THREADS}core" + ("-quick" if args.quick else "")
    out["seconds_total"] = time.perf_counter() - T_START
    path = args.out or os.path.join(ROOT, "bench", "results", "kmeans_{device}.json")
    path = path.replace("{device}", device)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    say(f"wrote {path}")
    if args.gpu:
        print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
