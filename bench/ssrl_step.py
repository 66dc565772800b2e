#!/usr/bin/env python
"""Throughput of the full SSRL training step (stage 2) on one device, fed by the real data pipeline.

    python bench/ssrl_step.py                       # GPU, full size: fp32 + bf16, loader + synthetic
    python bench/ssrl_step.py --quick               # tiny CPU sanity run (C=64, batch 4, 3 steps)
    python bench/ssrl_step.py --runs bf16:synthetic:compile --out-name ssrl_step_compile

One step is exactly what ``SSRLBrain.fit_batch`` does in the recipe (``hparams/ssrl_ecapa.yaml`` is
loaded with hyperpyyaml, only sizes and paths overridden; the update phase, so the queue vote is on):

* student: 2 s crop, ``RandomAugment`` of the yaml's ``add_noise`` / ``add_reverb`` (``NoiseBank`` /
  ``RIRBank``: noise / RIR CSVs written by ``make_augment_csv``, loaded once into device memory),
  Fbank(80) + sentence mean norm on the device, ECAPA forward, AAM
  loss against the current labels weighted by the clean probabilities, backward, Adam step (with
  SpeechBrain's gradient-norm clip);
* teacher: 6 s clean crop, ECAPA forward (no grad), relabel = nearest of K=8000 AAM prototypes, queue
  peek vote, teacher loss (recorded for the GMM);
* EMA update of teacher encoder + classifier.

Modes
  loader     batches from ``speechbrain_ssrl.data.views.student_teacher_dataset`` over a generated
             on-disk corpus (random-length 4-10 s PCM16 wavs of tones + noise), a torch DataLoader with
             PaddedBatch collate, ``--workers`` workers and pinned memory. "data wait" = time blocked
             in ``next(loader)`` / total step time (each step ends with a device sync: ``fit_batch``
             returns the loss on the CPU, so the GPU is idle while the loop waits).
  synthetic  the same step on batches already on the device (no loader): compute only. The student
             augmentation is the yaml's, as in training (NoiseBank/RIRBank read the noise / RIR
             files once, on the first step; speechbrain's AddNoise/AddReverb, if put back, read
             them in the main process on every call). Followed by a per-phase breakdown (each phase
             timed alone between device syncs; see ``phases_ms``).

A run spec is ``precision:mode[:compile][:cudnnbench]`` (precision fp32 | bf16 | fp16; "fp32" keeps
SpeechBrain's default quirk ``allow_tf32``, i.e. TF32 matmuls/convolutions; ``fp32strict`` turns TF32
off). ``compile`` = ``nn.Module.compile()`` on the student and teacher encoders (in place, so the
EMA's parameter names are unchanged); ``cudnnbench`` = ``torch.backends.cudnn.benchmark = True``.
There is no channels-last option: the encoder is 1-D (Conv1d on (B, C, T)).

FLOPs: 45 GFLOP per utterance for the full-size step (ECAPA C=1024, 512-d): student 2 s forward
7.5 + backward ~15, teacher 6 s forward 22.5 (convolutions and matmuls; the K=8000 classifier adds
~0.05). The script also counts them with ``torch.utils.flop_counter`` on a meta-device copy of the
configured encoder (``flops.counted_*``). Achieved TFLOP/s = GFLOP/utt x utt/s / 1000, reported
against the H100/H200 dense bf16 peak measured in this workplace (~790 TFLOP/s).

Writes JSON to ``$OUT/<out-name>_<device>.json`` when ``OUT`` is set, else ``bench/out/``; the JSON
is rewritten after every run, so a run cut short by a timeout still leaves the finished ones.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

T_START = time.perf_counter()
PEAK_BF16_TFLOPS = 790.0  # dense bf16 matmul, measured on H100 / H200 here (KINDS.md: 769-798)
SR = 16000
VOX2_UTTERANCES = 1_092_009  # VoxCeleb2 dev: one epoch = this many steps' worth of utterances


def say(*a):
    print(f"[{time.perf_counter() - T_START:7.1f}s]", *a, flush=True)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ---------------------------------------------------------------------------------------- environment
def device_info(device: str) -> dict:
    info = {
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "env": {k: os.environ[k] for k in ("PYTORCH_CUDA_ALLOC_CONF", "OMP_NUM_THREADS", "SB_DISABLE_QUIRKS") if k in os.environ},
    }
    try:
        import speechbrain

        info["speechbrain"] = speechbrain.__version__
    except Exception:  # noqa: BLE001
        pass
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        info.update(
            name=torch.cuda.get_device_name(0),
            total_memory_gib=round(p.total_memory / 2**30, 1),
            multiprocessors=p.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        info["name"] = f"cpu-{platform.machine()}"
    return info


def out_path(out_name: str, dev_name: str, explicit: str | None = None) -> str:
    if explicit:
        return explicit.replace("{device}", slug(dev_name))
    folder = os.environ.get("OUT") or os.path.join(ROOT, "bench", "out")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{out_name}_{slug(dev_name)}.json")


def write_json(path: str, obj: dict) -> None:
    obj["seconds_total"] = round(time.perf_counter() - T_START, 1)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    os.replace(tmp, path)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def memory_stats(device: str) -> dict:
    if not device.startswith("cuda"):
        return {}
    return {
        "gpu_mem_peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "gpu_mem_peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
    }


# ---------------------------------------------------------------------------------------- corpus
def _tone_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """A crude speech-like signal: harmonic tones with vibrato, a syllable-rate envelope, noise."""
    t = np.arange(n, dtype=np.float32) / SR
    f0 = rng.uniform(90, 300)
    vib = 1.0 + 0.03 * np.sin(2 * np.pi * rng.uniform(3, 7) * t, dtype=np.float32)
    phase = 2 * np.pi * f0 * np.cumsum(vib, dtype=np.float64).astype(np.float32) / SR
    x = np.zeros(n, dtype=np.float32)
    for h in range(1, 5):
        x += rng.uniform(0.2, 1.0) / h * np.sin(h * phase, dtype=np.float32)
    env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6.3), dtype=np.float32) ** 2
    x = x * env + rng.uniform(0.01, 0.2) * rng.standard_normal(n).astype(np.float32)
    return 0.3 * x / (np.abs(x).max() + 1e-6)


def _colored_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    from scipy.signal import lfilter  # scipy is a speechbrain dependency

    w = rng.standard_normal(n).astype(np.float32)
    a = rng.uniform(0.0, 0.98)  # one-pole low-pass: white to brown-ish
    y = lfilter([1.0 - a], [1.0, -a], w).astype(np.float32)
    return 0.3 * y / (np.abs(y).max() + 1e-6)


def _rir(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n, dtype=np.float32) / SR
    rt60 = rng.uniform(0.2, 0.8)
    h = rng.standard_normal(n).astype(np.float32) * np.exp(-6.9 * t / rt60).astype(np.float32)
    h[: int(rng.integers(0, 80))] = 0.0
    h[int(rng.integers(0, 80))] = 1.0  # direct path
    return h / np.abs(h).max()


def _write_one(job):
    import soundfile as sf

    path, kind, n, seed = job
    rng = np.random.default_rng(seed)
    x = {"speech": _tone_noise, "noise": _colored_noise, "rir": _rir}[kind](rng, n)
    sf.write(path, x, SR, subtype="PCM_16" if kind != "rir" else "FLOAT")
    return n


def make_corpus(root: str, n_files: int, n_noise: int, n_rir: int, procs: int, seed: int = 0, min_s: float = 4.0, max_s: float = 10.0) -> dict:
    """Writes ``root/wav/*.wav`` (+ ``root/train.csv``), ``root/noise/*.wav``, ``root/rir/*.wav``."""
    rng = np.random.default_rng(seed)
    jobs, rows = [], []
    for sub in ("wav", "noise", "rir"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i in range(n_files):
        n = int(rng.uniform(min_s, max_s) * SR)
        p = os.path.join(root, "wav", f"utt{i:06d}.wav")
        jobs.append((p, "speech", n, seed * 1_000_003 + i))
        rows.append((f"utt{i:06d}", f"{n / SR:.3f}", p, 0, n, f"spk{i % 100:03d}"))
    for i in range(n_noise):
        jobs.append((os.path.join(root, "noise", f"noise{i:04d}.wav"), "noise", int(rng.uniform(3, 8) * SR), seed * 7919 + i + 10**8))
    for i in range(n_rir):
        jobs.append((os.path.join(root, "rir", f"rir{i:04d}.wav"), "rir", int(rng.uniform(0.3, 0.8) * SR), seed * 104729 + i + 2 * 10**8))
    if procs > 1 and len(jobs) > 64:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(procs) as pool:
            samples = sum(pool.imap_unordered(_write_one, jobs, chunksize=16))
    else:
        samples = sum(map(_write_one, jobs))
    csv_path = os.path.join(root, "train.csv")
    if n_files:
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ID", "duration", "wav", "start", "stop", "spk_id"])
            w.writerows(rows)
    train_seconds = sum(r[4] for r in rows) / SR
    return {
        "root": root,
        "train_csv": csv_path if n_files else None,
        "noise_dir": os.path.join(root, "noise"),
        "rir_dir": os.path.join(root, "rir"),
        "n_files": n_files,
        "n_noise": n_noise,
        "n_rir": n_rir,
        "train_hours": round(train_seconds / 3600, 3),
        "bytes_written": int(samples * 2),
    }


# ---------------------------------------------------------------------------------------- flops
def count_ecapa_gflops(ecapa_kwargs: dict, seconds: float, backward: bool) -> float:
    """GFLOP per utterance of the ECAPA on a ``seconds`` crop (meta device, no compute)."""
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    from torch.utils.flop_counter import FlopCounterMode

    frames = int(round(seconds * SR)) // 160 + 1  # Fbank: 25 ms window, 10 ms hop, centred
    with torch.device("meta"):
        m = ECAPA_TDNN(**ecapa_kwargs)
        x = torch.randn(2, frames, int(ecapa_kwargs.get("input_size", 80)))  # batch 2: BN in train mode
    m.train()
    fc = FlopCounterMode(display=False)
    with fc:
        y = m(x)
        if backward:
            y.float().sum().backward()
    return fc.get_total_flops() / 2 / 1e9


# ---------------------------------------------------------------------------------------- yaml / brain
def load_hparams(yaml_path: str, overrides: dict) -> dict:
    from hyperpyyaml import load_hyperpyyaml

    with open(yaml_path, encoding="utf-8") as f:
        return load_hyperpyyaml(f, overrides)


def run_opts(device: str, precision: str) -> dict:
    return {"device": device, "precision": precision, "noprogressbar": True}


class PrecisionFlags:
    """fp32strict: TF32 off for the duration of a run (SpeechBrain's import turns it on)."""

    def __init__(self, precision: str, cudnn_benchmark: bool) -> None:
        self.precision, self.cudnn_benchmark = precision, cudnn_benchmark

    def __enter__(self):
        b = torch.backends
        self.saved = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark)
        if self.precision == "fp32strict":
            b.cuda.matmul.allow_tf32 = False
            b.cudnn.allow_tf32 = False
        b.cudnn.benchmark = bool(self.cudnn_benchmark)
        return self

    def flags(self) -> dict:
        b = torch.backends
        return {"tf32_matmul": b.cuda.matmul.allow_tf32, "tf32_cudnn": b.cudnn.allow_tf32, "cudnn_benchmark": b.cudnn.benchmark}

    def __exit__(self, *exc):
        b = torch.backends
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark = self.saved
        return False


def sb_precision(p: str) -> str:
    return "fp32" if p == "fp32strict" else p


def parse_run(spec: str) -> dict:
    """``precision:mode[:compile][:cudnnbench][:bN]`` -> run dict (``bN``: batch N for this run)."""
    parts = spec.strip().split(":")
    if len(parts) < 2:
        raise SystemExit(f"bad run spec {spec!r}: expected precision:mode[:compile][:cudnnbench][:bN]")
    prec, mode, flags = parts[0], parts[1], set(parts[2:])
    if prec not in ("fp32", "fp32strict", "bf16", "fp16"):
        raise SystemExit(f"bad precision in {spec!r}")
    if mode not in ("loader", "synthetic"):
        raise SystemExit(f"bad mode in {spec!r}")
    batch = None
    for f in list(flags):
        if re.fullmatch(r"b\d+", f):
            batch = int(f[1:])
            flags.discard(f)
    unknown = flags - {"compile", "cudnnbench"}
    if unknown:
        raise SystemExit(f"unknown flags {sorted(unknown)} in {spec!r}")
    return {"name": spec.strip(), "precision": prec, "mode": mode, "compile": "compile" in flags, "cudnn_benchmark": "cudnnbench" in flags, "batch": batch}


def build_ssrl_brain(args, corpus: dict, work: str, precision: str, compile_model: bool, device: str):
    """SSRLBrain from ``ssrl_ecapa.yaml`` (sizes / paths overridden), ready for ``fit_batch``."""
    from speechbrain_ssrl.brains.ssrl import SSRLBrain
    from speechbrain_ssrl.data.augment_data import make_augment_csv

    ch = args.channels
    overrides = {
        "data_folder": corpus["root"],
        "dino_folder": work,
        "output_folder": os.path.join(work, "ssrl_out"),
        "batch_size": args.batch,
        "num_workers": args.workers,
        "channels": [ch, ch, ch, ch, 3 * ch],
        "emb_dim": args.emb_dim,
        "K0": args.k0,
        "fixed_label_epochs": 1,  # epoch 2 below: update phase (queue peek vote on), teacher labelling
        "number_of_epochs": 10,
    }
    hp = load_hparams(args.yaml, overrides)
    make_augment_csv(corpus["noise_dir"], hp["noise_csv"])
    make_augment_csv(corpus["rir_dir"], hp["rir_csv"])
    if compile_model:
        hp["embedding_model"].compile(mode=args.compile_mode) if args.compile_mode else hp["embedding_model"].compile()
        hp["teacher_model"].compile(mode=args.compile_mode) if args.compile_mode else hp["teacher_model"].compile()
    brain = SSRLBrain(
        modules=hp["modules"],
        opt_class=hp["opt_class"],
        hparams=hp,
        run_opts=run_opts(device, sb_precision(precision)),
        checkpointer=hp["checkpointer"],
    )
    n_utt = corpus["n_files"] or args.n_index
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(args.k0, (n_utt,), generator=g)
    centroids = torch.randn(args.k0, args.emb_dim, generator=g)
    brain.steps_per_epoch = 1000  # nominal (schedules only)
    brain.setup_pseudo_labels(labels, centroids)
    hp["epoch_counter"].current = 2
    brain.on_fit_start()
    brain.modules.train()
    brain.on_stage_start(__import__("speechbrain").Stage.TRAIN, 2)
    return brain, hp


def make_loader(args, hp, corpus: dict, n_batches: int):
    from speechbrain.dataio.dataloader import make_dataloader

    from speechbrain_ssrl.data.views import student_teacher_dataset

    ds = student_teacher_dataset(
        corpus["train_csv"], hp["crop_sampler"], student_seconds=hp["student_seconds"], teacher_seconds=hp["teacher_seconds"], sample_rate=hp["sample_rate"]
    )
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=n_batches * args.batch, generator=torch.Generator().manual_seed(1))
    kw = dict(batch_size=args.batch, sampler=sampler, num_workers=args.workers, pin_memory=args.device.startswith("cuda"), drop_last=True)
    if args.workers > 0:
        kw.update(persistent_workers=False, prefetch_factor=args.prefetch)
    return make_dataloader(ds, **kw)


def synthetic_batches(args, hp, n_utt: int, n: int, device: str):
    """``n`` PaddedBatches already on the device: random speech-like audio, random utterance indices."""
    from speechbrain.dataio.batch import PaddedBatch

    ns = int(round(hp["student_seconds"] * hp["sample_rate"]))
    nt = int(round(hp["teacher_seconds"] * hp["sample_rate"]))
    g = torch.Generator(device="cpu").manual_seed(2)
    out = []
    for b in range(n):
        idx = torch.randperm(n_utt, generator=g)[: args.batch]
        t = 0.1 * torch.randn(args.batch, nt, generator=g)
        t = t * (1 + torch.sin(torch.arange(nt) / 800.0))  # not stationary white noise
        off = torch.randint(0, nt - ns + 1, (1,), generator=g).item()
        s = t[:, off : off + ns].clone()
        ex = [{"id": f"syn{b}_{i}", "index": int(idx[i]), "student_view": s[i], "teacher_view": t[i]} for i in range(args.batch)]
        out.append(PaddedBatch(ex).to(device))
    return out


# ---------------------------------------------------------------------------------------- timing
def time_ssrl_steps(brain, batches_iter, n_warm: int, n_steps: int, device: str, time_left) -> dict:
    """Runs ``n_warm`` + ``n_steps`` ``fit_batch`` calls; per-step wall time and the time in next(batch)."""
    waits, totals, losses = [], [], []
    for i in range(n_warm + n_steps):
        if i >= n_warm and time_left() < 0:
            say("  time budget reached: stopping this run early")
            break
        t0 = time.perf_counter()
        batch = next(batches_iter)
        t1 = time.perf_counter()
        brain.step += 1
        loss = brain.fit_batch(batch)
        sync(device)
        t2 = time.perf_counter()
        losses.append(float(loss))
        if i >= n_warm:
            waits.append(t1 - t0)
            totals.append(t2 - t0)
        say(f"  step {i + 1:3d}/{n_warm + n_steps}{' (warm-up)' if i < n_warm else ''}: {1e3 * (t2 - t0):8.1f} ms  (data wait {1e3 * (t1 - t0):7.1f} ms)  loss {float(loss):.3f}")
    return {"waits": waits, "totals": totals, "losses": losses}


def summarise(t: dict, batch: int, gflop_per_utt: float) -> dict:
    totals, waits = t["totals"], t["waits"]
    if not totals:
        return {"error": "no timed step"}
    total = sum(totals)
    ups = batch * len(totals) / total
    tflops = gflop_per_utt * ups / 1e3
    return {
        "timed_steps": len(totals),
        "utt_per_s": round(ups, 1),
        "steps_per_s": round(len(totals) / total, 3),
        "step_ms_mean": round(1e3 * total / len(totals), 2),
        "step_ms_median": round(1e3 * statistics.median(totals), 2),
        "step_ms_min": round(1e3 * min(totals), 2),
        "step_ms_max": round(1e3 * max(totals), 2),
        "data_wait_frac": round(sum(waits) / total, 4),
        "data_wait_ms_mean": round(1e3 * sum(waits) / len(waits), 2),
        "voxceleb2_epoch_minutes": round(VOX2_UTTERANCES / ups / 60, 1),
        "achieved_tflops": round(tflops, 2),
        "frac_bf16_peak": round(tflops / PEAK_BF16_TFLOPS, 4),
        "loss_first": t["losses"][0] if t["losses"] else None,
        "loss_last": t["losses"][-1] if t["losses"] else None,
        "losses_finite": all(math.isfinite(x) for x in t["losses"]),
    }


def ssrl_phases(brain, batch, reps: int, device: str) -> dict:
    """Each part of the step timed alone (device sync before/after), median over ``reps``, in ms.

    Mirrors ``SSRLBrain.compute_forward`` / ``compute_objectives`` / ``optimizers_step`` /
    ``on_fit_batch_end``; ``features_*`` are extra standalone calls (also contained in the forwards).
    """
    from speechbrain_ssrl.ema import ema_update_
    from speechbrain_ssrl.losses import weighted_mean

    h, state = brain.hparams, brain.state
    res: dict = {}

    def tick(name, t0):
        sync(device)
        res.setdefault(name, []).append(1e3 * (time.perf_counter() - t0))
        return time.perf_counter()

    for _ in range(reps):
        batch = batch.to(brain.device)
        idx = torch.as_tensor(batch.index).to(brain.device).long().flatten()
        s_wav, _ = batch.student_view
        t_wav, _ = batch.teacher_view
        sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            brain.features(s_wav)
        t = tick("features_student", t)
        with torch.no_grad():
            brain.features(t_wav)
        t = tick("features_teacher", t)
        with brain.training_ctx:
            brain.teacher.train(h.teacher_bn == "train")
            with torch.no_grad():
                t_emb = brain.embed(brain.teacher, t_wav).float()
            t = tick("teacher_forward", t)
            with torch.no_grad():
                y_hat, cos = h.teacher_classifier.nearest(t_emb)
                y_t = state.teacher_targets(idx, y_hat, use_queue=True)
                lam = h.teacher_classifier.teacher_loss(cos, y_t)
            state.record(idx, y_hat, lam)
            t = tick("relabel_vote_teacher_loss", t)
            s_aug = h.student_augment(s_wav)
            t = tick("student_augment", t)
            s_emb = brain.embed(brain.modules.embedding_model, s_aug).float()
            t = tick("student_forward", t)
            y = state.targets(idx)
            per_sample = brain.modules.classifier(s_emb, y, reduction="none")
            loss = weighted_mean(per_sample, state.weights(idx))
            t = tick("student_aam_loss", t)
        loss.backward()
        t = tick("student_backward", t)
        brain.optimizers_step()
        t = tick("optimizer_step_clip_adam", t)
        ema_update_(brain._teacher_modules(), brain._student_modules(), 0.999, buffers=brain._buffer_mode())
        t = tick("ema_update", t)
    out = {k: round(statistics.median(v), 2) for k, v in res.items()}
    out["sum_of_step_phases"] = round(sum(v for k, v in out.items() if not k.startswith("features_")), 2)
    return out


# ---------------------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny CPU sanity run: C=64, batch 4, 3 steps")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=15, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--prefetch", type=int, default=4, help="DataLoader prefetch_factor")
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], help="fp32 bf16 fp16 fp32strict")
    ap.add_argument("--modes", nargs="+", default=["loader", "synthetic"], choices=["loader", "synthetic"])
    ap.add_argument("--compile", action="store_true", help="also run each precision's synthetic mode with the encoders compiled")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's default)")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="also run each precision's synthetic mode with cudnn.benchmark")
    ap.add_argument("--runs", default=None, help="explicit comma-separated run specs precision:mode[:compile][:cudnnbench] (overrides the above)")
    ap.add_argument("--phase-reps", type=int, default=3, help="repetitions of the per-phase breakdown after synthetic runs (0: off)")
    ap.add_argument("--channels", type=int, default=1024)
    ap.add_argument("--emb-dim", type=int, default=512)
    ap.add_argument("--k0", type=int, default=8000)
    ap.add_argument("--files", type=int, default=2000, help="generated training wavs (4-10 s)")
    ap.add_argument("--noise-files", type=int, default=200)
    ap.add_argument("--rir-files", type=int, default=100)
    ap.add_argument("--n-index", type=int, default=100000, help="utterances in the label state when no corpus is written (synthetic only)")
    ap.add_argument("--yaml", default=os.path.join(ROOT, "recipes", "VoxCeleb", "SSRL", "hparams", "ssrl_ecapa.yaml"))
    ap.add_argument("--time-budget", type=float, default=1e9, help="seconds: later runs are skipped once spent")
    ap.add_argument("--out", default=None, help="JSON path ('{device}' is replaced); default $OUT or bench/out")
    ap.add_argument("--out-name", default="ssrl_step")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads of the main process (default: 1 on CPU)")
    args = ap.parse_args(argv)

    if args.quick:
        args.channels, args.batch, args.steps, args.warmup = 64, 4, 3, 1
        args.files, args.noise_files, args.rir_files, args.workers, args.prefetch = 24, 4, 4, 1, 2
        args.phase_reps = min(args.phase_reps, 1)
        args.n_index = 64
        args.device = args.device or "cpu"
    args.device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    if args.threads or not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads or 1)

    if args.runs:
        runs = [parse_run(s) for s in args.runs.split(",") if s.strip()]
    else:
        specs = [f"{p}:{m}" for p in args.precision for m in args.modes]
        specs += [f"{p}:synthetic:cudnnbench" for p in args.precision if args.cudnn_benchmark]
        specs += [f"{p}:synthetic:compile" for p in args.precision if args.compile]
        runs = [parse_run(s) for s in specs]
    need_corpus = any(r["mode"] == "loader" for r in runs)

    info = device_info(args.device)
    path = out_path(args.out_name, info["name"], args.out)
    say(f"device {info['name']}  torch {info['torch']}  speechbrain {info.get('speechbrain')}  -> {path}")
    result = {
        "bench": "ssrl_step",
        "info": info,
        "config": {k: v for k, v in vars(args).items() if k not in ("runs",)},
        "runs_requested": [r["name"] for r in runs],
        "peak_bf16_tflops": PEAK_BF16_TFLOPS,
        "runs": [],
    }

    work = tempfile.mkdtemp(prefix="ssrl_bench_")
    t0 = time.perf_counter()
    corpus = make_corpus(
        os.path.join(work, "corpus"),
        args.files if need_corpus else 0,
        args.noise_files,
        args.rir_files,
        procs=max(1, min(16, os.cpu_count() or 1)) if args.device.startswith("cuda") else 1,
    )
    corpus["seconds"] = round(time.perf_counter() - t0, 1)
    result["corpus"] = corpus
    say(f"corpus: {corpus['n_files']} wavs ({corpus['train_hours']} h), {corpus['n_noise']} noise, {corpus['n_rir']} rir in {corpus['seconds']} s")

    ch = args.channels
    ecapa_kwargs = {"input_size": 80, "channels": [ch, ch, ch, ch, 3 * ch], "lin_neurons": args.emb_dim}
    try:
        sf_ = count_ecapa_gflops(ecapa_kwargs, 2.0, backward=False)
        sfb = count_ecapa_gflops(ecapa_kwargs, 2.0, backward=True)
        tf_ = count_ecapa_gflops(ecapa_kwargs, 6.0, backward=False)
        counted = {"student_fwd": round(sf_, 3), "student_bwd": round(sfb - sf_, 3), "teacher_fwd": round(tf_, 3), "total": round(sfb + tf_, 3)}
    except Exception as e:  # noqa: BLE001
        counted = {"error": repr(e)}
    estimate = 45.0 if ch == 1024 else counted.get("total", float("nan"))
    result["flops"] = {
        "estimate_gflop_per_utt": estimate,
        "estimate_note": "full size: student 2 s fwd 7.5 + bwd ~15, teacher 6 s fwd 22.5 (conv/matmul only; classifier ~0.05)",
        "counted_gflop_per_utt": counted,
    }
    say(f"GFLOP/utt: estimate {estimate}, counted {counted}")
    write_json(path, result)

    deadline = T_START + args.time_budget
    for r in runs:
        if time.perf_counter() > deadline:
            say(f"skip {r['name']}: time budget spent")
            result["runs"].append({**r, "skipped": "time budget"})
            write_json(path, result)
            continue
        rargs = argparse.Namespace(**{**vars(args), "batch": r["batch"] or args.batch})
        say(f"=== run {r['name']} (batch {rargs.batch})")
        rec = dict(r, batch=rargs.batch)
        brain = hp = loader = it = batches = None
        free_memory(args.device)
        t_run = time.perf_counter()
        try:
            with PrecisionFlags(r["precision"], r["cudnn_benchmark"]) as pf:
                rec.update(pf.flags())
                brain, hp = build_ssrl_brain(rargs, corpus, work, r["precision"], r["compile"], args.device)
                n_batches = args.warmup + args.steps
                if r["mode"] == "loader":
                    loader = make_loader(rargs, hp, corpus, n_batches)
                    it = iter(loader)
                    rec["workers"] = rargs.workers
                else:
                    n_utt = corpus["n_files"] or args.n_index
                    batches = synthetic_batches(rargs, hp, n_utt, 2, args.device)
                    it = (batches[i % len(batches)] for i in range(10**9))
                rec["setup_s"] = round(time.perf_counter() - t_run, 1)
                t = time_ssrl_steps(brain, it, args.warmup, args.steps, args.device, lambda: deadline - time.perf_counter())
                rec.update(summarise(t, rargs.batch, estimate))
                rec.update(memory_stats(args.device))
                if r["mode"] == "synthetic" and args.phase_reps > 0 and time.perf_counter() < deadline:
                    rec["phases_ms"] = ssrl_phases(brain, batches[0], args.phase_reps, args.device)
                    say(f"  phases (ms): {rec['phases_ms']}")
        except Exception as e:  # noqa: BLE001
            rec["error"] = f"{type(e).__name__}: {e}"[:2000]
            traceback.print_exc()
            say(f"  FAILED: {rec['error'][:300]}")
        finally:
            del it, loader, batches, brain, hp
            free_memory(args.device)
        rec["run_s"] = round(time.perf_counter() - t_run, 1)
        if "utt_per_s" in rec:
            say(
                f"  {r['name']}: {rec['utt_per_s']} utt/s, step {rec['step_ms_median']} ms (median), data wait {100 * rec['data_wait_frac']:.1f}%, "
                f"{rec['achieved_tflops']} TFLOP/s = {100 * rec['frac_bf16_peak']:.2f}% of bf16 peak, mem {rec.get('gpu_mem_peak_allocated_gib', '-')} GiB"
            )
        result["runs"].append(rec)
        write_json(path, result)

    # --------------------------------------------------------------- table
    print(f"\nSSRL step on {info['name']}: ECAPA C={args.channels}, {args.emb_dim}-d, K0={args.k0}, batch {args.batch}, "
          f"{estimate} GFLOP/utt, bf16 peak {PEAK_BF16_TFLOPS:.0f} TFLOP/s", flush=True)
    print(f"{'run':32s} {'utt/s':>8s} {'step ms':>8s} {'wait%':>6s} {'TFLOP/s':>8s} {'%peak':>6s} {'GiB':>6s}", flush=True)
    for rec in result["runs"]:
        if "utt_per_s" in rec:
            print(f"{rec['name']:32s} {rec['utt_per_s']:8.1f} {rec['step_ms_median']:8.1f} {100 * rec['data_wait_frac']:6.1f} "
                  f"{rec['achieved_tflops']:8.2f} {100 * rec['frac_bf16_peak']:6.2f} {rec.get('gpu_mem_peak_allocated_gib', float('nan')):6.1f}", flush=True)
        else:
            print(f"{rec['name']:32s} {rec.get('error') or rec.get('skipped')}"[:160], flush=True)
    write_json(path, result)
    print(f"wrote {path}", flush=True)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
