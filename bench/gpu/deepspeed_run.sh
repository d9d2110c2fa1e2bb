#!/usr/bin/env bash
# DDP and DeepSpeed ZeRO stages on the 2-GPU box, same config and global batch: Sa2VA-1B shapes (random weights),
# BATCH samples per GPU x ACCUM micro-batches per optimiser step, STEPS steps, a checkpoint at the end.
# Then: a table of samples/s, loss difference to DDP and peak memory (bench/gpu/deepspeed_report.py), and the
# trainable weights of every run loaded strictly into the config's model (bench/gpu/check_trainable.py).
#
# From the repo root on the GPU box (kit from ../shared/gpu/fetch_wheels.sh + bench/gpu/add_deepspeed_wheels.sh,
# carried as .whl):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && bash bench/gpu/deepspeed_run.sh
#
# STAGES: the --deepspeed names to run after DDP (default "zero2 zero3"; projects/sa2va/configs/deepspeed/).
# DDP=0 skips the DDP run and compares against BASELINE (a work dir or records file of an earlier DDP run).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-40}
BATCH=${BATCH:-16}
ACCUM=${ACCUM:-2}
STAGES=${STAGES:-zero2 zero3}
DDP=${DDP:-1}
RUNS=${RUNS:-/tmp/sa2va_deepspeed}  # work dirs; emptied first
CFG=${CFG:-bench/gpu/scaling_1b_cfg.py}
WARMUP=${WARMUP:-10}
ITERS=$((STEPS * ACCUM))
rm -rf "$RUNS"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PYTHON" -c "import deepspeed, torch; print('deepspeed', deepspeed.__version__, 'torch', torch.__version__)"

show() { grep -E "train.py:|DeepSpeed config|switched off|global batch|Iter\(train\)|Error|error|dist.sh|written to|Saving checkpoint" | cut -c1-240 || true; }
OPTS=(train_dataloader.batch_size="$BATCH" optim_wrapper.accumulative_counts="$ACCUM" train_cfg.max_iters="$ITERS"
    default_hooks.checkpoint.interval="$ITERS")
port=${PORT:-29621}
runs=()
files=()
if [ "$DDP" = 1 ]; then
    echo "== DDP, 2 GPUs, batch $BATCH x accumulation $ACCUM, $STEPS steps"
    CUDA_VISIBLE_DEVICES=0,1 PORT=$port bash tools/dist.sh train "$CFG" 2 --work-dir "$RUNS/ddp" \
        --cfg-options "${OPTS[@]}" 2>&1 | show
    BASELINE=ddp=$RUNS/ddp
    files+=("ddp=$RUNS/ddp/iter_$ITERS.pth")
fi
for stage in $STAGES; do
    port=$((port + 1))
    name=$(basename "$stage" .json)
    echo "== DeepSpeed $stage, 2 GPUs, batch $BATCH x accumulation $ACCUM, $STEPS steps"
    # `|| true`: a failed stage is reported by the table (missing records) and the others still run.
    CUDA_VISIBLE_DEVICES=0,1 PORT=$port bash tools/dist.sh train "$CFG" 2 --work-dir "$RUNS/$name" \
        --deepspeed "$stage" --cfg-options "${OPTS[@]}" 2>&1 | show || true
    runs+=("$name=$RUNS/$name")
    files+=("$name=$RUNS/$name/iter_${ITERS}_trainable.pth")
done
du -sh "$RUNS"/*/iter_"$ITERS"* 2>/dev/null || true

status=0
"$PYTHON" bench/gpu/deepspeed_report.py "${BASELINE:?set BASELINE when DDP=0}" "${runs[@]}" \
    --global-batch "$((2 * BATCH * ACCUM))" --accum "$ACCUM" --warmup "$WARMUP" || status=1
"$PYTHON" bench/gpu/check_trainable.py "$CFG" "${files[@]}" || status=1
exit $status
