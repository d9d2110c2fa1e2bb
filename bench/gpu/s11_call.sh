#!/usr/bin/env bash
# The planned GPU call after session 10 (what issues 19 and 20 still lack), from a `git archive` checkout
# carrying .whl (with DeepSpeed, bench/gpu/add_deepspeed_wheels.sh), .official_overlay and bench/official/src:
#   1. issue 19, only when the card is an H200: Sa2VA-4B feature-cache rows, eager (the baseline of this call)
#      and with both compile options at batch 16 and 32 (ROWS_H200; bench/gpu/speed_run.sh), at most $S_H200 s;
#   2. issue 20: the official step at Sa2VA-4B shapes, batch 16, with its AMP step and then through a
#      DeepSpeed ZeRO-2 engine (OFFICIAL_STEP=ds), in this call, at most $S_DS seconds each;
#   3. issue 20: the largest Sa2VA-1B batch of the official step and of the toolkit's `ckpt` (like for like)
#      and `opt` sides in one call (sweep from 32; the official step fitted 48 on an H100 in session 10),
#      with what is left of DEADLINE_S.
# Each part is cut to what is left of DEADLINE_S seconds (default 560) from the start. $OUT gets call.tar.gz
# (every part's outputs) and the tables on stdout.
set -uo pipefail
OUT=${OUT:-gpu_out}
DEADLINE_S=${DEADLINE_S:-560}
S_H200=${S_H200:-180}
S_DS=${S_DS:-70}
ROWS_H200=${ROWS_H200:-4b:opt16,opt16-compiled-cdec,opt32-compiled-cdec}
T0=$(date +%s)
W=/tmp/call11
mkdir -p "$OUT" "$W"
. bench/gpu/call_common.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$W/gpu.txt" || true

h200_rows "$W/h200" "$S_H200" "$ROWS_H200"
official_4b_steps "amp:$S_DS" "ds:$S_DS"

t=$(left)
if [ "$t" -ge 120 ]; then
    mkdir -p "$W/1b"
    OUT=$W/1b INSTALL_KIT=0 STEPS=8 WARMUP=3 MODELS=1b FIRST_BATCH=32 MAX_BATCH=128 BUDGET=$((t - 10)) \
        timeout "$t" bash bench/official/speed_side_by_side.sh --sides official,ckpt,opt > "$W/1b/run.txt" 2>&1
    echo "part 3 (1B largest batches) rc=$? after $(( $(date +%s) - T0 )) s" | tee -a "$W/gpu.txt"
    tail -20 "$W/1b/side_by_side.txt" 2>/dev/null || tail -30 "$W/1b/run.txt"
else
    echo "part 3 skipped: $t s left" | tee -a "$W/gpu.txt"
fi
tar -czf "$OUT/call.tar.gz" -C /tmp call11
echo "[call11] total $(( $(date +%s) - T0 )) s"
