#!/usr/bin/env bash
# Session 11, third GPU call, from a `git archive` checkout carrying .whl (with DeepSpeed), .official_overlay
# and bench/official/src:
#   1. issue 19, only when the card is an H200: the harness's Sa2VA-4B feature-cache rows, eager and both
#      compile options at batch 16 and 32 ($ROWS_H200, bench/gpu/speed_run.sh), at most $S_H200 s;
#   2. issue 19: Sa2VA-4B through tools/train.py, both compile options and eager, batch 16
#      (bench/gpu/compile_train_run.sh with LOOP_PARTS=1), after the fix of the per-iteration model.train()
#      (call 2: 70 ms of each compiled iteration, bench/records/speed_s11);
#   3. issue 20: the official step at Sa2VA-4B shapes, batch 16: its AMP step (which also prepares the
#      inputs, at most $S_AMP s), then through a DeepSpeed ZeRO-2 engine on the same inputs (at most $S_DS s).
# Each part is cut to what is left of DEADLINE_S (560) seconds. $OUT gets call.tar.gz and the tables.
set -uo pipefail
OUT=${OUT:-gpu_out}
DEADLINE_S=${DEADLINE_S:-560}
S_H200=${S_H200:-180}
S_AMP=${S_AMP:-150}
S_DS=${S_DS:-90}
ROWS_H200=${ROWS_H200:-4b:opt16,opt16-compiled-cdec,opt32-compiled-cdec}
T0=$(date +%s)
W=/tmp/call11c
mkdir -p "$OUT" "$W"
. bench/gpu/call_common.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$W/gpu.txt" || true

if grep -q H200 "$W/gpu.txt"; then
    t=$(cap "$S_H200")
    mkdir -p "$W/h200"
    OUT=$W/h200 PARTS=bench STEPS=10 KERNEL_PROFILE=1 BENCH_BUDGET_S=$((t - 40)) ROWS="$ROWS_H200" \
        timeout "$t" bash bench/gpu/speed_run.sh > "$W/h200/run.txt" 2>&1
    echo "part 1 (H200 rows) rc=$? after $(( $(date +%s) - T0 )) s" | tee -a "$W/gpu.txt"
    sed -n '/^Issue 19 rows/,$p' "$W/h200/speed_bench.log" 2>/dev/null || tail -30 "$W/h200/run.txt"
else
    echo "part 1 skipped: not an H200" | tee -a "$W/gpu.txt"
fi

t=$(cap 240)
LOOP_PARTS=1 MODELS=4b RUNS="compiled eager" ITERS=50 WARMUP=20 OUT=$W/parts BUDGET_S=$((t - 80)) \
    timeout "$t" bash bench/gpu/compile_train_run.sh > "$W/parts_run.txt" 2>&1
echo "part 2 (tools/train.py 4B) rc=$? after $(( $(date +%s) - T0 )) s" | tee -a "$W/gpu.txt"
for f in "$W"/parts/*_parts.md; do head -8 "$f"; done
cat "$W/parts/compile_train.md" 2>/dev/null || tail -30 "$W/parts_run.txt"

for step in amp ds; do
    if [ "$step" = amp ]; then t=$(cap "$S_AMP"); reuse=(); else t=$(cap "$S_DS"); reuse=(--reuse-inputs); fi
    if [ "$t" -lt 40 ]; then echo "part 3 ($step) skipped: $t s left" | tee -a "$W/gpu.txt"; continue; fi
    mkdir -p "$W/4b_$step"
    env OFFICIAL_STEP=$step OFFICIAL_ATTN=auto MODELS=4b FIRST_BATCH=16 MAX_BATCH=16 REFINE=0 OUT=$W/4b_$step \
        INSTALL_KIT=0 STEPS=8 WARMUP=3 BUDGET=$((t - 5)) timeout "$t" \
        bash bench/official/speed_side_by_side.sh --sides official "${reuse[@]}" > "$W/4b_$step/run.txt" 2>&1
    echo "part 3 ($step) rc=$? after $(( $(date +%s) - T0 )) s" | tee -a "$W/gpu.txt"
    tail -6 "$W/4b_$step/side_by_side.txt" 2>/dev/null || tail -30 "$W/4b_$step/run.txt"
done
tar -czf "$OUT/call.tar.gz" -C /tmp call11c
echo "[call11c] total $(( $(date +%s) - T0 )) s"
