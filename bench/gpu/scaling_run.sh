#!/usr/bin/env bash
# Data-parallel scaling on the 2-GPU box: Sa2VA-1B shapes (random weights), the same global batch on 1 GPU
# and on 2 GPUs (DDP through tools/dist.sh), STEPS optimiser steps each, then a table of samples/s, the
# scaling factor and the loss-curve difference (bench/gpu/scaling_report.py).
#
# From the repo root on the GPU box (kit built by ../shared/gpu/fetch_wheels.sh, carried as .whl):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && bash bench/gpu/scaling_run.sh
#
# MODE=accum (default; how a recipe scales): every GPU runs micro-batches of BATCH samples; the 2-GPU run
#   accumulates ACCUM (default 1) of them per GPU per optimiser step, the 1-GPU run 2*ACCUM: global batch
#   2*BATCH*ACCUM in both. DDP synchronises gradients once per optimiser step (no_sync in between), so
#   ACCUM > 1 (the reference recipe accumulates 16) spreads that cost over several micro-batches.
# MODE=split: the global batch GLOBAL_BATCH is one micro-batch on 1 GPU and two halves on 2 GPUs (per-GPU
#   work halves, so fixed per-step costs weigh twice as much on 2 GPUs).
# EXTRA_OPTS: more --cfg-options for both runs, e.g. EXTRA_OPTS="train_dataloader.num_workers=6".
# Same samples per optimiser step in both runs: DefaultSampler gives rank r the indices r, r+2, ... of one
# seeded permutation. The losses still differ a little: the LM loss is a token mean per micro-batch, whose
# composition differs, and bf16 reductions run in another order.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHON=${PYTHON:-python3}
MODE=${MODE:-accum}
STEPS=${STEPS:-50}
BATCH=${BATCH:-16}
ACCUM=${ACCUM:-1}
GLOBAL_BATCH=${GLOBAL_BATCH:-32}
RUNS=${RUNS:-/tmp/sa2va_scaling_$MODE}  # work dirs; emptied first
CFG=${CFG:-bench/gpu/scaling_1b_cfg.py}
WARMUP=${WARMUP:-10}
case "$MODE" in
accum) B1=$BATCH A1=$((2 * ACCUM)) BN=$BATCH AN=$ACCUM GLOBAL_BATCH=$((2 * BATCH * ACCUM)) ;;
split)
    [ $((GLOBAL_BATCH % 2)) = 0 ] || { echo "scaling_run.sh: GLOBAL_BATCH must be even, got $GLOBAL_BATCH" >&2; exit 2; }
    B1=$GLOBAL_BATCH A1=1 BN=$((GLOBAL_BATCH / 2)) AN=1 ;;
*) echo "scaling_run.sh: MODE must be accum or split, got $MODE" >&2; exit 2 ;;
esac
rm -rf "$RUNS"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

show() { grep -E "global batch|Iter\(train\)|Error|error|dist.sh" | cut -c1-220 || true; }
echo "== 1 GPU, batch $B1 x accumulation $A1"
CUDA_VISIBLE_DEVICES=0 bash tools/dist.sh train "$CFG" 1 --work-dir "$RUNS/gpu1" \
    --cfg-options train_dataloader.batch_size="$B1" optim_wrapper.accumulative_counts="$A1" \
    train_cfg.max_iters="$((STEPS * A1))" ${EXTRA_OPTS:-} 2>&1 | show
echo "== 2 GPUs, batch $BN per GPU x accumulation $AN"
CUDA_VISIBLE_DEVICES=0,1 PORT=${PORT:-29611} bash tools/dist.sh train "$CFG" 2 --work-dir "$RUNS/gpu2" \
    --cfg-options train_dataloader.batch_size="$BN" optim_wrapper.accumulative_counts="$AN" \
    train_cfg.max_iters="$((STEPS * AN))" ${EXTRA_OPTS:-} 2>&1 | show

"$PYTHON" bench/gpu/scaling_report.py "$RUNS/gpu1" "$RUNS/gpu2" --gpus 2 --global-batch "$GLOBAL_BATCH" \
    --accum-1 "$A1" --accum-n "$AN" --warmup "$WARMUP"
