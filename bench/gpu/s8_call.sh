#!/usr/bin/env bash
# One GPU call of session 8 (device time was short: one call for both open speed issues). Run from a
# `git archive` checkout carrying .whl (with bench/gpu/add_deepspeed_wheels.sh), .official_overlay and
# bench/official/src (see bench/official/speed_side_by_side.sh):
#   1. issue 19: the rows of $ROWS19 (default: Sa2VA-4B feature-cache rows, eager vs compiled decoder layers,
#      and batch 24 with 12 of the 36 decoder layers checkpointed; session 9 also named -cdec rows, the SAM2
#      mask decoder compiled, and Sa2VA-1B rows) through bench/gpu/speed_run.sh (speed_bench.py --rows
#      --kernel-profile: device kernels of one step by kind), at most $S19 seconds;
#   2. issue 20: the largest batch of the official step and of the toolkit's like-for-like `ckpt` side at
#      Sa2VA-4B shapes (sweep 32, 64), then the official step at Sa2VA-1B shapes (32, 64, 128)
#      (bench/official/speed_side_by_side.sh --first-batch), at most $S20_4B and $S20_1B seconds (0: not run;
#    session 10 ran only the rows on an H200: S20_4B=0 S20_1B=0).
# Writes $OUT/s19 (speed_bench.log, speed_rows.jsonl), $OUT/s20_4b and $OUT/s20_1b (side_by_side.{txt,json},
# side_logs.tar.gz) and $OUT/gpu.txt.
set -uo pipefail
OUT=${OUT:-gpu_out}
S19=${S19:-200}
S20_4B=${S20_4B:-200}
S20_1B=${S20_1B:-130}
ROWS19=${ROWS19:-"4b:opt16,opt16-compiled,opt24-ckpt12-compiled"}
mkdir -p "$OUT/s19" "$OUT/s20_4b" "$OUT/s20_1b"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" || true
OUT=$OUT/s19 PARTS=bench STEPS=10 KERNEL_PROFILE=1 BENCH_BUDGET_S=$((S19 - 60)) \
    ROWS="$ROWS19" timeout "$S19" bash bench/gpu/speed_run.sh
echo "s19 rc=$?"
rm -f "$OUT/s19/gpu.txt"
if [ "$S20_4B" -gt 0 ]; then
    OUT=$OUT/s20_4b INSTALL_KIT=0 STEPS=8 WARMUP=3 MODELS=4b FIRST_BATCH=32 MAX_BATCH=64 BUDGET=$((S20_4B - 10)) \
        bash bench/official/speed_side_by_side.sh --sides official,ckpt
    echo "s20 4b rc=$?"
fi
if [ "$S20_1B" -gt 0 ]; then
    OUT=$OUT/s20_1b INSTALL_KIT=0 STEPS=8 WARMUP=3 MODELS=1b FIRST_BATCH=32 MAX_BATCH=128 BUDGET=$((S20_1B - 10)) \
        bash bench/official/speed_side_by_side.sh --sides official
    echo "s20 1b rc=$?"
fi
rm -f "$OUT/s20_1b/side_logs.tar.gz"
