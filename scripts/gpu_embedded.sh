#!/usr/bin/env bash
# The lent-GPU run that trained the embedded default pdiff-toyworld (issue 10), as run on an H200:
# train (scripts/train_embedded.py), export fp16, choose the guidance on a validation world, then
# eval-toyworld on the held-out world with the trained prompts and with empty ones.
#   OUT=results_dir bash scripts/gpu_embedded.sh
# Knobs (environment): VAE_MIN, TOTAL_MIN (time budgets of the VAE and of the whole training), TRAIN_OVERRIDES (extra key=value for both
# stages), VAL_GROUPS, EVAL_GROUPS, EVAL_BATCH, GUIDANCES. Results: $OUT/model.tar.* (the exported
# model, split in 15 MB parts) and $OUT/results.tar (reports, eval tables, logs).
set -uo pipefail
: "${OUT:?set OUT to a results folder}"
VAE_MIN=${VAE_MIN:-1.25}
TOTAL_MIN=${TOTAL_MIN:-6.0}
TRAIN_OVERRIDES=${TRAIN_OVERRIDES:-}
TRAIN_ARGS=${TRAIN_ARGS:-}
VAL_GROUPS=${VAL_GROUPS:-30}
EVAL_GROUPS=${EVAL_GROUPS:-100}
EVAL_BATCH=${EVAL_BATCH:-128}
GUIDANCES=${GUIDANCES:-"1.0 1.5 2.5"}
WORK=${WORK:-/tmp/pdiff-embedded}
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
mkdir -p "$WORK" "$OUT"
RESULTS=$WORK/results
mkdir -p "$RESULTS"
pack() { tar -cf "$OUT/results.tar" -C "$WORK" results; }
# Packed after every step: a run cut off at the call's limit still returns what it finished.
log() { echo "[gpu_embedded $(date +%T)] $*" | tee -a "$RESULTS/steps.log"; pack; }

(nvidia-smi -L || echo "no GPU") > "$RESULTS/device.txt" 2>&1
python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)" >> "$RESULTS/device.txt"

log "train"
timeout 450 python3 scripts/train_embedded.py --out "$WORK/run" --vae-minutes "$VAE_MIN" --total-minutes "$TOTAL_MIN" \
    $TRAIN_ARGS ${TRAIN_OVERRIDES:+--override $TRAIN_OVERRIDES} > "$RESULTS/train.log" 2>&1
log "train exit $?"
cp "$WORK/run/vae_report.json" "$WORK/run/vae/train_report.json" "$RESULTS/" 2>/dev/null
cp "$WORK/run/diffusion/train_report.json" "$RESULTS/diffusion_report.json" 2>/dev/null
[ -f "$WORK/run/diffusion/pipeline/model_index.json" ] || { log "no pipeline"; exit 1; }

log "export"
timeout 60 python3 scripts/export_embedded.py "$WORK/run/diffusion/pipeline" --out "$WORK/export" --overwrite >> "$RESULTS/steps.log" 2>&1
pack_model() { rm -f "$OUT"/model.tar.*; tar -cf - -C "$WORK" export | split -b 15M - "$OUT/model.tar."; }
pack_model

log "guidance sweep on the validation world (seed 200000)"
timeout 60 python3 -m training.toyworld --out "$WORK/val" --groups "$VAL_GROUPS" --seed 200000 --no-progress > /dev/null 2>&1
TRAINED=$(python3 -c "import json,sys; print(','.join(json.load(open(sys.argv[1]))['trained_tasks']))" "$WORK/export/prompt_diffusion.json")
for g in $GUIDANCES; do
    timeout 45 python3 -m pdiff_core.cli eval-toyworld --model "$WORK/export" --data "$WORK/val" --tasks "$TRAINED" \
        --guidance "$g" --batch-size "$EVAL_BATCH" --out "$RESULTS/val-g$g" > "$RESULTS/val-g$g.log" 2>&1
    log "guidance $g exit $?"
done
BEST=$(python3 scripts/pick_guidance.py "$RESULTS"/val-g*/results.json)
log "best guidance ${BEST:-none, the trained guidance is kept}"
[ -n "$BEST" ] && python3 -c "
import json, sys
p = sys.argv[1]; info = json.load(open(p)); info['guidance_scale'] = float(sys.argv[2])
open(p, 'w').write(json.dumps(info, indent=2) + '\n')" "$WORK/export/prompt_diffusion.json" "$BEST"
pack_model
log "model packed with its guidance"

log "held-out eval, trained prompts then empty prompts"
timeout 75 python3 -m pdiff_core.cli eval-toyworld --model "$WORK/export" --cache-dir "$WORK/cache" --groups-limit "$EVAL_GROUPS" \
    --batch-size "$EVAL_BATCH" --out "$RESULTS/heldout" > "$RESULTS/heldout.log" 2>&1
log "held-out exit $?"
timeout 60 python3 -m pdiff_core.cli eval-toyworld --model "$WORK/export" --cache-dir "$WORK/cache" --groups-limit "$EVAL_GROUPS" \
    --batch-size "$EVAL_BATCH" --prompt empty --tasks "$TRAINED" --out "$RESULTS/heldout-empty" > "$RESULTS/heldout-empty.log" 2>&1
log "held-out empty exit $?"
