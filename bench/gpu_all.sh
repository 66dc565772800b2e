#!/usr/bin/env bash
# One GPU benchmark pass for issues 8 (SSRL step, k-means) and 3 (DINO step); run from the repo root
# on the device machine, with `.whl` carried (speechbrain, hyperpyyaml, ruamel.yaml(+clib), soundfile,
# cffi, pycparser: see bench/ssrl_step.py's notes; the image has torch, numpy, scipy, sklearn):
#
#     bash bench/gpu_all.sh            # whole pass <= BUDGET seconds (default 450: 7.5 min)
#
# Steps, in order, each under `timeout` and capped by what is left of BUDGET; a failed step does not
# stop the next one:
#   (a) bench/kmeans.py --gpu                  -> $OUT/kmeans_<gpu>.json
#   (b) bench/ssrl_step.py (fp32 + bf16, real loader + synthetic, variants)
#                                              -> $OUT/ssrl_step_<gpu>.json
#   (c) bench/dino_step.py (bf16, then fp32)   -> $OUT/dino_step_<gpu>.json
#   (d) bench/ssrl_step.py bf16 with torch.compile'd encoders, in whatever time is left
#                                              -> $OUT/ssrl_step_compile_<gpu>.json
# plus $OUT/gpu_all.log (everything printed) and a summary table at the end.
#
# Local dry run of the plumbing on the CPU (tiny sizes, no wheels, no compile):
#     QUICK=1 SKIP_WHEELS=1 PY=.venv/bin/python OMP_NUM_THREADS=1 bash bench/gpu_all.sh

set -x
T0=$(date +%s)
BUDGET=${BUDGET:-450}
OUT=${OUT:-bench/out}
PY=${PY:-python3}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_all.log") 2>&1
export PYTHONUNBUFFERED=1

left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# cap WANT RESERVE: WANT seconds, or less so that RESERVE seconds stay for the later steps (min 5)
cap() { local l=$(( $(left) - $2 )); (( l > $1 )) && l=$1; (( l < 5 )) && l=5; echo $l; }

if [ -z "$SKIP_WHEELS" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "!!! wheel install failed"
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.sm,temperature.gpu,power.draw --format=csv || true
$PY -c "import torch, speechbrain, hyperpyyaml, soundfile; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'speechbrain', speechbrain.__version__, 'soundfile', soundfile.__version__, 'libsndfile', soundfile.__libsndfile_version__)" \
  || echo "!!! imports failed"
echo "setup done after $(( $(date +%s) - T0 )) s"

if [ -n "$QUICK" ]; then
  KM="--quick"; Q="--quick"
else
  KM="--gpu"; Q=""
fi

# (a) k-means (another developer's script; its failure is tolerated). Keep 215 s for (b)+(c).
t=$(cap 140 215)
timeout -k 10 "$t" $PY bench/kmeans.py $KM --time-limit $(( t - 30 )) --out "$OUT/kmeans_{device}.json"
rc=$?
if [ "$rc" = 2 ]; then  # usage error (flags changed): plain call
  timeout -k 10 "$(cap 140 215)" $PY bench/kmeans.py $KM --out "$OUT/kmeans_{device}.json" || echo "!!! kmeans failed rc=$?"
elif [ "$rc" != 0 ]; then
  echo "!!! kmeans failed rc=$rc"
fi

# (b) SSRL step, full size: the headline runs first (real loader), then synthetic (compute only, with
# the per-phase breakdown), then variants. Keep 75 s for (c).
t=$(cap 160 75)
timeout -k 10 "$t" $PY bench/ssrl_step.py $Q --steps 20 --warmup 3 --time-budget $(( t - 25 )) \
  --runs bf16:loader,fp32:loader,bf16:synthetic,fp32:synthetic,bf16:synthetic:cudnnbench,bf16:loader:b256 \
  || echo "!!! ssrl_step failed rc=$?"

# (c) DINO step, full size, batch 128 (halved on OOM), bf16 then fp32. Expandable segments: less
# fragmentation between the OOM retries (recorded in the JSON's info.env).
t=$(cap 90 0)
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout -k 10 "$t" $PY bench/dino_step.py $Q --steps 8 --warmup 2 --time-budget $(( t - 20 )) \
  || echo "!!! dino_step failed rc=$?"

# (d) SSRL step with torch.compile'd encoders (compilation takes a minute or more), if time is left.
t=$(cap 200 10)
if [ -z "$QUICK" ] && (( t >= 60 )); then
  timeout -k 10 "$t" $PY bench/ssrl_step.py --runs bf16:synthetic:compile --steps 10 --warmup 2 --phase-reps 0 \
    --time-budget $(( t - 15 )) --out-name ssrl_step_compile || echo "!!! ssrl_step compile failed rc=$?"
else
  echo "skip (d) compile: ${t}s left"
fi

set +x
echo "=== summary ($(( $(date +%s) - T0 )) s)"
$PY - "$OUT" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
for p in sorted(glob.glob(os.path.join(out, "*.json"))):
    try:
        d = json.load(open(p))
    except Exception as e:
        print(os.path.basename(p), "unreadable:", e); continue
    name = d.get("info", {}).get("name") or d.get("device")
    print(f"-- {os.path.basename(p)} ({name})")
    for r in d.get("runs", []) if isinstance(d.get("runs"), list) else []:
        if "utt_per_s" in r:
            label = r.get("name") or f"dino {r.get('precision')} b{r.get('batch')}"
            wait = f"wait {100 * r['data_wait_frac']:.1f}%" if "data_wait_frac" in r else ""
            print(f"   {label:34s} {r['utt_per_s']:8.1f} utt/s  {r['steps_per_s']:7.3f} steps/s  {r['achieved_tflops']:7.2f} TFLOP/s "
                  f"({100 * r['frac_bf16_peak']:.2f}% bf16 peak)  {wait}  {r.get('gpu_mem_peak_allocated_gib', '-')} GiB")
        else:
            print(f"   {r.get('name') or r.get('precision')} b{r.get('batch')}: {(r.get('error') or r.get('skipped') or '')[:150]}")
        if r.get("phases_ms"):
            print("      phases ms:", json.dumps(r["phases_ms"]))
EOF
ls -la "$OUT"
