#!/usr/bin/env bash
# Issue 13's GPU measurements in one run of about 150 s + 200 s: each step under its own time limit,
# results (bench_gpu.json and .headline.txt, bench_control_cost.json, one log per step, steps.txt) in
# $OUT; --compile writes bench_gpu_compile.* beside them. Expects diffusers and the other wheels the
# GPU image lacks on PYTHONPATH (../shared/REFERENCE.md, "On a GPU machine").
#
#   OUT=results/ bash benchmarks/gpu_session.sh             # sd15 size, 512 px, fp16, 20 DDIM steps, CUDA
#   OUT=results/ bash benchmarks/gpu_session.sh --compile   # the compiled diffusers peer alone, if time allows
#   OUT=/tmp/dry bash benchmarks/gpu_session.sh --dry-run   # the same plumbing on a CPU, tiny preset
#
# Steps: bench_gpu.py (ours eager and fast vs diffusers), then, but for --compile, bench_control_cost.py
# (what the pack's control adds over a plain ComfyUI KSampler vs what diffusers' ControlNet adds over
# its plain SD pipeline). The second needs ComfyUI 0.3.64 at COMFYUI_PATH (default ../shared/comfyui)
# and its wheels the GPU image lacks (torchsde, trampoline, av: a stand-in `av` will do); without them
# it is skipped with the reason in steps.txt.
# GPU_SESSION_SECONDS (default 150) is bench_gpu's budget, CONTROL_COST_SECONDS (default 200) the
# ComfyUI step's limit; PYTHON picks the interpreter.
set -u
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python || command -v python3)}
TOTAL=${GPU_SESSION_SECONDS:-150}
COST_LIMIT=${CONTROL_COST_SECONDS:-200}
START=$SECONDS

case "${1:-}" in
  "")  # everything but what does not fit: the compiled peer gets the time that is left
    NAME=bench_gpu
    BENCH=(--preset sd15 --resolution 512 --device cuda --dtype fp16 --steps 20 --batches 1,4 --repeats 3)
    COST=(--preset sd15 --resolution 512 --device cuda --dtype fp16 --steps 20 --guidance 7.5 --batch 1 --repeats 5 --breakdown) ;;
  --compile)  # the compiled peer alone (its first call is ~100 s cold) against ours fast, batch 1
    NAME=bench_gpu_compile
    BENCH=(--preset sd15 --resolution 512 --device cuda --dtype fp16 --steps 20 --batches 1 --repeats 3
           --stages compile --compile-budget-s 0)
    COST=() ;;
  --dry-run)  # the plumbing, on a CPU
    NAME=bench_gpu
    BENCH=(--preset tiny --device cpu --dtype fp32 --steps 1 --batches 1,2 --repeats 1 --threads 1
           --stages batches,graph_only,channels_last)
    COST=(--preset tiny --device cpu --dtype fp32 --steps 1 --batch 1 --repeats 1 --warmup 0 --threads 1 --breakdown) ;;
  *)
    echo "usage: OUT=DIR bash benchmarks/gpu_session.sh [--compile | --dry-run]" >&2
    exit 2 ;;
esac

step() {  # NAME LIMIT_S COMMAND...: run under timeout, output to $OUT/NAME.log, one line to steps.txt
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  timeout --kill-after=5 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "step $name: exit $rc after $((SECONDS - t0)) s (limit $limit s)$([ $rc = 124 ] && echo ', timed out')" \
    | tee -a "$OUT/steps.txt"
}

# bench_gpu.py names torch, CUDA and diffusers itself; this says which code and which card.
step "env_$NAME" 20 bash -c 'git rev-parse HEAD 2>/dev/null || echo "no git: a copy of the working tree"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  echo "PYTHONPATH=${PYTHONPATH:-}"'
cat "$OUT/env_$NAME.log"

# What is left of the budget, less a margin for the kill; the script skips its own later stages
# (the compiled peer, the variants) with a reason rather than run into the limit.
LEFT=$((TOTAL - (SECONDS - START) - 8))
step "$NAME" "$LEFT" "$PY" benchmarks/bench_gpu.py "${BENCH[@]}" --deadline-at $(($(date +%s) + LEFT - 10)) \
  --json "$OUT/$NAME.json"
tail -n 5 "$OUT/$NAME.log"
echo "--- headline (as of the last finished stage)"
cat "$OUT/$NAME.headline.txt" 2>/dev/null

# The ComfyUI path, after bench_gpu so that a failure here costs the main numbers nothing.
if [ ${#COST[@]} -gt 0 ]; then
  COMFY_DIR=${COMFYUI_PATH:-$(cd .. && pwd)/shared/comfyui}
  MISSING=$("$PY" -c 'import importlib.util as u
print(" ".join(m for m in ("diffusers", "torchsde", "trampoline", "av") if u.find_spec(m) is None))' 2>&1)
  if [ ! -f "$COMFY_DIR/main.py" ]; then
    REASON="no ComfyUI at $COMFY_DIR: set COMFYUI_PATH to a ComfyUI 0.3.64 copy"
  elif [ -n "$MISSING" ]; then
    REASON="ComfyUI in-process needs Python packages this interpreter lacks: $MISSING (wheels on PYTHONPATH, ../shared/REFERENCE.md)"
  else
    REASON=
  fi
  if [ -n "$REASON" ]; then
    echo "step bench_control_cost: skipped: $REASON" | tee -a "$OUT/steps.txt"
  else
    export COMFYUI_PATH=$COMFY_DIR
    step bench_control_cost "$COST_LIMIT" "$PY" benchmarks/bench_control_cost.py "${COST[@]}" \
      --json "$OUT/bench_control_cost.json"
    grep -E '^(comfyui|diffusers)_|^control cost|^verdict|^max pixel|^breakdown' "$OUT/bench_control_cost.log"
  fi
fi
echo "total $((SECONDS - START)) s; results in $OUT"
