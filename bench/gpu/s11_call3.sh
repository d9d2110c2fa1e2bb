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

h200_rows "$W/h200" "$S_H200" "$ROWS_H200"

t=$(cap 240)
LOOP_PARTS=1 MODELS=4b RUNS="compiled eager" ITERS=50 WARMUP=20 OUT=$W/parts BUDGET_S=$((t - 80)) \
    timeout "$t" bash bench/gpu/compile_train_run.sh > "$W/parts_run.txt" 2>&1
echo "part 2 (tools/train.py 4B) rc=$? after $(( $(date +%s) - T0 )) s" | tee -a "$W/gpu.txt"
for f in "$W"/parts/*_parts.md; do head -8 "$f"; done
cat "$W/parts/compile_train.md" 2>/dev/null || tail -30 "$W/parts_run.txt"

official_4b_steps "amp:$S_AMP" "ds:$S_DS"
tar -czf "$OUT/call.tar.gz" -C /tmp call11c
echo "[call11c] total $(( $(date +%s) - T0 )) s"
