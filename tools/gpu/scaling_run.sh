#!/usr/bin/env bash
# Data-parallel scaling on the 2-GPU box: Sa2VA-1B shapes (random weights), the same global batch on 1 GPU
# and on 2 GPUs (DDP through tools/dist.sh), ITERS iterations each, then a table of samples/s, the scaling
# factor and the loss-curve difference (tools/gpu/scaling_report.py). About 4-6 minutes on H200s.
#
# From the repo root on the GPU box (kit built by ../shared/gpu/fetch_wheels.sh, carried as .whl):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && bash tools/gpu/scaling_run.sh
#
# Same samples per optimiser step in both runs: DefaultSampler gives rank r the indices r, r+2, ... of one
# seeded permutation, so 2 ranks x batch B/2 see exactly the samples that 1 rank x batch B sees. The losses
# still differ a little: the LM loss is a token mean per rank (averaged over ranks) versus one token mean,
# and bf16 reductions run in another order.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHON=${PYTHON:-python3}
ITERS=${ITERS:-50}
GLOBAL_BATCH=${GLOBAL_BATCH:-8}
OUT=${OUT:-/tmp/sa2va_scaling}
CFG=tools/gpu/scaling_1b_cfg.py
[ $((GLOBAL_BATCH % 2)) = 0 ] || { echo "scaling_run.sh: GLOBAL_BATCH must be even, got $GLOBAL_BATCH" >&2; exit 2; }
rm -rf "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

echo "== 1 GPU, batch $GLOBAL_BATCH"
CUDA_VISIBLE_DEVICES=0 bash tools/dist.sh train "$CFG" 1 --work-dir "$OUT/gpu1" \
    --cfg-options train_dataloader.batch_size="$GLOBAL_BATCH" train_cfg.max_iters="$ITERS" 2>&1 \
    | grep -E "global batch|Iter\(train\)|Error|error" || true
echo "== 2 GPUs, batch $((GLOBAL_BATCH / 2)) per GPU"
CUDA_VISIBLE_DEVICES=0,1 PORT=${PORT:-29611} bash tools/dist.sh train "$CFG" 2 --work-dir "$OUT/gpu2" \
    --cfg-options train_dataloader.batch_size="$((GLOBAL_BATCH / 2))" train_cfg.max_iters="$ITERS" 2>&1 \
    | grep -E "global batch|Iter\(train\)|Error|error|dist.sh" || true

"$PYTHON" tools/gpu/scaling_report.py "$OUT/gpu1" "$OUT/gpu2" --gpus 2 --global-batch "$GLOBAL_BATCH" --warmup 10
