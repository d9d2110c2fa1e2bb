#!/usr/bin/env bash
# Session 11, second GPU call (issue 19): where the 0.071 s of mmengine `data_time` of each compiled Sa2VA-4B
# iteration goes (bench/records/speed_s10: 42.22 samples/s through tools/train.py against the harness's 51.92).
# bench/gpu/compile_train_run.sh with LOOP_PARTS=1 (bench/gpu/loop_parts.py): Sa2VA-4B shapes, batch 16,
# feature cache, fused AdamW, both compile options and then eager, ITERS (50) iterations each, the first
# WARMUP (20) left out. From a `git archive` checkout carrying .whl. $OUT gets call.tar.gz and the tables.
set -uo pipefail
OUT=${OUT:-gpu_out}
DEADLINE_S=${DEADLINE_S:-560}
T0=$(date +%s)
W=/tmp/call11b
mkdir -p "$OUT" "$W"
. bench/gpu/call_common.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$W/gpu.txt" || true
LOOP_PARTS=1 MODELS=4b RUNS="${RUNS:-compiled eager}" ITERS=${ITERS:-50} WARMUP=${WARMUP:-20} OUT=$W/parts \
    BUDGET_S=$(( DEADLINE_S - 150 )) timeout "$(left)" bash bench/gpu/compile_train_run.sh > "$W/run.txt" 2>&1
echo "loop parts rc=$? after $(( $(date +%s) - T0 )) s" | tee -a "$W/gpu.txt"
tail -60 "$W/run.txt"
tar -czf "$OUT/call.tar.gz" -C /tmp call11b
echo "[call11b] total $(( $(date +%s) - T0 )) s"
