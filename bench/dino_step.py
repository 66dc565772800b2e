#!/usr/bin/env python
"""Throughput of the full-size DINO training step (stage 1) on one device, synthetic in-GPU batches.

    python bench/dino_step.py                        # GPU: bf16 then fp32, batch 128
    python bench/dino_step.py --quick                # tiny CPU sanity run (C=64, batch 4, 3 steps)

The model and step are the recipe's: ``hparams/dino_ecapa.yaml`` loaded with hyperpyyaml (ECAPA
C=1024, 512-d, DINOHead 2048/256 -> 65,536 prototypes, 2 x 4 s global + 4 x 2 s local crops, SGD,
per-parameter clipping), one ``DINOBrain.fit_batch`` per step: teacher forward on the clean global
crops, student forward on all six crops (each augmented with probability 0.8 by speechbrain
``AddNoise`` / ``AddReverb`` reading generated noise / RIR files), DINO loss, backward, SGD step,
EMA of teacher encoder + head, centre update. Epoch 2 (the prototype layer is not frozen).
Batches are already on the device (no DataLoader): this measures compute.

FLOPs per utterance (counted with ``torch.utils.flop_counter`` on a meta-device copy; full size):
teacher 2 x 4 s forward (2 x 15.0) + student 2 x 4 s forward+backward (2 x 44.8) + 4 x 2 s
forward+backward (4 x 22.5) ~ 210 GFLOP, the head adds ~0.1.

If a batch does not fit in GPU memory the run is retried at half the batch (down to --min-batch),
and the JSON records the OOM. Writes ``$OUT/dino_step_<device>.json`` (else ``bench/out/``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import ssrl_step as common  # noqa: E402
from ssrl_step import ROOT, say  # noqa: E402

SR = common.SR


def count_head_gflops(in_dim: int, out_dim: int, hidden: int, bottleneck: int, backward: bool) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from speechbrain_ssrl.dino import DINOHead

    with torch.device("meta"):
        h = DINOHead(in_dim, out_dim, hidden, bottleneck)
        x = torch.randn(2, in_dim)
    h.train()
    fc = FlopCounterMode(display=False)
    with fc:
        y = h(x)
        if backward:
            y.float().sum().backward()
    return fc.get_total_flops() / 2 / 1e9


def build_dino_brain(args, aug: dict, work: str, precision: str, batch: int, device: str):
    from speechbrain_ssrl.brains.dino import DINOBrain
    from speechbrain_ssrl.data.augment_data import make_augment_csv

    ch = args.channels
    overrides = {
        "data_folder": aug["root"],
        "output_folder": os.path.join(work, "dino_out"),
        "batch_size": batch,
        "num_workers": 0,
        "channels": [ch, ch, ch, ch, 3 * ch],
        "emb_dim": args.emb_dim,
        "n_prototypes": args.prototypes,
        "head_hidden": args.hidden,
        "head_bottleneck": args.bottleneck,
    }
    hp = common.load_hparams(args.yaml, overrides)
    make_augment_csv(aug["noise_dir"], hp["noise_csv"])
    make_augment_csv(aug["rir_dir"], hp["rir_csv"])
    brain = DINOBrain(
        modules=hp["modules"],
        opt_class=hp["opt_class"],
        hparams=hp,
        run_opts=common.run_opts(device, common.sb_precision(precision)),
        checkpointer=hp["checkpointer"],
    )
    brain.steps_per_epoch = 1000  # nominal (schedules only)
    hp["epoch_counter"].current = 2  # after freeze_last_layer_epochs: the prototype layer trains
    brain.on_fit_start()
    brain.modules.train()
    brain.on_stage_start(__import__("speechbrain").Stage.TRAIN, 2)
    return brain, hp


def synthetic_batches(hp, batch: int, n: int, device: str):
    from speechbrain.dataio.batch import PaddedBatch

    ng, nl = int(hp["n_global"]), int(hp["n_local"])
    tg = int(round(hp["global_seconds"] * hp["sample_rate"]))
    tl = int(round(hp["local_seconds"] * hp["sample_rate"]))
    g = torch.Generator(device=device).manual_seed(3)
    env_g = 1 + torch.sin(torch.arange(tg, device=device) / 800.0)
    env_l = 1 + torch.sin(torch.arange(tl, device=device) / 600.0)
    out = []
    for b in range(n):
        gv = 0.1 * torch.randn(batch, ng, tg, generator=g, device=device) * env_g
        lv = 0.1 * torch.randn(batch, nl, tl, generator=g, device=device) * env_l
        ex = [{"id": f"syn{b}_{i}", "index": i, "global_views": gv[i], "local_views": lv[i]} for i in range(batch)]
        out.append(PaddedBatch(ex).to(device))
        del gv, lv
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny CPU sanity run: C=64, batch 4, 3 steps")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--min-batch", type=int, default=16, help="OOM retries halve the batch down to this")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", nargs="+", default=["bf16", "fp32"], help="in order; fp32 keeps SpeechBrain's TF32 quirk")
    ap.add_argument("--cudnn-benchmark", action="store_true")
    ap.add_argument("--channels", type=int, default=1024)
    ap.add_argument("--emb-dim", type=int, default=512)
    ap.add_argument("--prototypes", type=int, default=65536)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--bottleneck", type=int, default=256)
    ap.add_argument("--noise-files", type=int, default=200)
    ap.add_argument("--rir-files", type=int, default=100)
    ap.add_argument("--yaml", default=os.path.join(ROOT, "recipes", "VoxCeleb", "SSRL", "hparams", "dino_ecapa.yaml"))
    ap.add_argument("--time-budget", type=float, default=1e9, help="seconds: later runs are skipped once spent")
    ap.add_argument("--out", default=None)
    ap.add_argument("--out-name", default="dino_step")
    args = ap.parse_args(argv)
    if args.quick:
        args.channels, args.batch, args.steps, args.warmup, args.min_batch = 64, 4, 3, 1, 4
        args.prototypes, args.hidden, args.bottleneck = 4096, 256, 64
        args.noise_files, args.rir_files = 4, 4
        args.device = args.device or "cpu"
    args.device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    if not args.device.startswith("cuda"):
        torch.set_num_threads(1)

    info = common.device_info(args.device)
    path = common.out_path(args.out_name, info["name"], args.out)
    say(f"device {info['name']}  torch {info['torch']}  speechbrain {info.get('speechbrain')}  -> {path}")
    work = tempfile.mkdtemp(prefix="dino_bench_")
    aug = common.make_corpus(os.path.join(work, "corpus"), 0, args.noise_files, args.rir_files, procs=min(16, os.cpu_count() or 1) if args.device.startswith("cuda") else 1)

    ch = args.channels
    ek = {"input_size": 80, "channels": [ch, ch, ch, ch, 3 * ch], "lin_neurons": args.emb_dim}
    ng, nl, gs, ls = 2, 4, 4.0, 2.0  # dino_ecapa.yaml (checked against the loaded yaml below)
    try:
        e_g_f = common.count_ecapa_gflops(ek, gs, False)
        e_g_fb = common.count_ecapa_gflops(ek, gs, True)
        e_l_fb = common.count_ecapa_gflops(ek, ls, True)
        h_f = count_head_gflops(args.emb_dim, args.prototypes, args.hidden, args.bottleneck, False)
        h_fb = count_head_gflops(args.emb_dim, args.prototypes, args.hidden, args.bottleneck, True)
        flops = {
            "teacher_fwd": round(ng * (e_g_f + h_f), 3),
            "student_global_fwd_bwd": round(ng * (e_g_fb + h_fb), 3),
            "student_local_fwd_bwd": round(nl * (e_l_fb + h_fb), 3),
        }
        flops["total"] = round(sum(flops.values()), 3)
    except Exception as e:  # noqa: BLE001
        flops = {"error": repr(e), "total": float("nan")}
    gflop = flops["total"]
    say(f"GFLOP/utt counted: {flops}")
    result = {"bench": "dino_step", "info": info, "config": vars(args), "corpus": aug, "flops_gflop_per_utt": flops,
              "peak_bf16_tflops": common.PEAK_BF16_TFLOPS, "runs": []}
    common.write_json(path, result)

    deadline = common.T_START + args.time_budget
    for prec in args.precision:
        batch = args.batch
        while True:
            if time.perf_counter() > deadline:
                say(f"skip {prec}: time budget spent")
                result["runs"].append({"precision": prec, "batch": batch, "skipped": "time budget"})
                break
            say(f"=== DINO {prec} batch {batch}")
            rec = {"precision": prec, "batch": batch, "cudnn_benchmark": args.cudnn_benchmark}
            brain = hp = batches = None
            common.free_memory(args.device)
            t_run = time.perf_counter()
            oom = False
            try:
                with common.PrecisionFlags(prec, args.cudnn_benchmark) as pf:
                    rec.update(pf.flags())
                    brain, hp = build_dino_brain(args, aug, work, prec, batch, args.device)
                    rec["views"] = {"n_global": hp["n_global"], "global_s": hp["global_seconds"], "n_local": hp["n_local"], "local_s": hp["local_seconds"],
                                    "n_prototypes": hp["n_prototypes"], "aug_prob": hp["aug_prob"]}
                    batches = synthetic_batches(hp, batch, 2, args.device)
                    it = (batches[i % 2] for i in range(10**9))
                    rec["setup_s"] = round(time.perf_counter() - t_run, 1)
                    t = common.time_ssrl_steps(brain, it, args.warmup, args.steps, args.device, lambda: deadline - time.perf_counter())
                    rec.update(common.summarise(t, batch, gflop))
                    rec.pop("data_wait_frac", None)
                    rec.pop("data_wait_ms_mean", None)
                    rec.update(common.memory_stats(args.device))
            except torch.OutOfMemoryError as e:
                oom = True
                rec["error"] = f"OutOfMemoryError: {str(e)[:300]}"
                rec.update(common.memory_stats(args.device))
                say(f"  OOM at batch {batch}")
            except Exception as e:  # noqa: BLE001
                rec["error"] = f"{type(e).__name__}: {e}"[:2000]
                traceback.print_exc()
                say(f"  FAILED: {rec['error'][:300]}")
            finally:
                it = None
                del brain, hp, batches
                common.free_memory(args.device)
            rec["run_s"] = round(time.perf_counter() - t_run, 1)
            if "utt_per_s" in rec:
                say(f"  DINO {prec} batch {batch}: {rec['steps_per_s']} steps/s, {rec['utt_per_s']} utt/s, {rec['achieved_tflops']} TFLOP/s "
                    f"({100 * rec['frac_bf16_peak']:.2f}% of bf16 peak), mem {rec.get('gpu_mem_peak_allocated_gib', '-')} GiB")
            result["runs"].append(rec)
            common.write_json(path, result)
            if oom and batch // 2 >= args.min_batch:
                batch //= 2
                continue
            break

    print(f"\nDINO step on {info['name']}: ECAPA C={args.channels}, {args.emb_dim}-d, head {args.hidden}/{args.bottleneck} -> {args.prototypes}, "
          f"2x4 s + 4x2 s crops, {gflop} GFLOP/utt", flush=True)
    print(f"{'precision':10s} {'batch':>5s} {'steps/s':>8s} {'utt/s':>8s} {'step ms':>8s} {'TFLOP/s':>8s} {'%peak':>6s} {'GiB':>6s}", flush=True)
    for rec in result["runs"]:
        if "utt_per_s" in rec:
            print(f"{rec['precision']:10s} {rec['batch']:5d} {rec['steps_per_s']:8.3f} {rec['utt_per_s']:8.1f} {rec['step_ms_median']:8.1f} "
                  f"{rec['achieved_tflops']:8.2f} {100 * rec['frac_bf16_peak']:6.2f} {rec.get('gpu_mem_peak_allocated_gib', float('nan')):6.1f}", flush=True)
        else:
            print(f"{rec['precision']:10s} {rec['batch']:5d} {rec.get('error') or rec.get('skipped')}"[:160], flush=True)
    common.write_json(path, result)
    print(f"wrote {path}", flush=True)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
