#!/usr/bin/env bash
# Second GPU call of session 9 (after bench/gpu/s8_call.sh), from the same `git archive` checkout carrying
# .whl (with DeepSpeed, bench/gpu/add_deepspeed_wheels.sh), .official_overlay and bench/official/src:
#   1. issue 19: Sa2VA-Qwen3-VL-4B shapes through the speed harness, the columns of the InternVL rows
#      (ROWS_Q, default qwen3vl4b:ref,opt8,opt8-compiled; bench/gpu/speed_run.sh with --kernel-profile),
#      at most $S_Q seconds;
#   2. issue 20: the official step at Sa2VA-4B shapes, batch 16 (the earlier table's batch), with SDPA
#      attention in its LLM (OFFICIAL_ATTN=sdpa), then through a DeepSpeed ZeRO-2 engine, its launcher's
#      optimiser path (OFFICIAL_STEP=ds; bench/official/speed_side_by_side.sh --sides official), then the
#      official step's largest batch at Sa2VA-1B shapes (sweep 32, 64, 128), at most $S_OFF seconds each;
#   3. issue 19: model.compile_llm and model.compile_decoder through tools/train.py against eager at Sa2VA-4B shapes
#      (bench/gpu/compile_train_run.sh MODELS=4b), with what is left of $DEADLINE_S (at least $S_C_MIN).
# Each part is cut to what is left of DEADLINE_S seconds (default 560) from the start. $OUT gets call2.tar.gz
# (every part's outputs) and the tables on stdout.
set -uo pipefail
OUT=${OUT:-gpu_out}
DEADLINE_S=${DEADLINE_S:-560}
S_Q=${S_Q:-170}
S_OFF=${S_OFF:-110}
S_C_MIN=${S_C_MIN:-150}
ROWS_Q=${ROWS_Q:-qwen3vl4b:ref,opt8,opt8-compiled}
T0=$(date +%s)
W=/tmp/call2
mkdir -p "$OUT" "$W/q" "$W/sdpa" "$W/ds" "$W/compile"
. bench/gpu/call_common.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$W/gpu.txt" || true

t=$(cap "$S_Q")
OUT=$W/q PARTS=bench STEPS=10 KERNEL_PROFILE=1 BENCH_BUDGET_S=$((t - 50)) ROWS="$ROWS_Q" \
    timeout "$t" bash bench/gpu/speed_run.sh > "$W/q/run.txt" 2>&1
echo "part 1 (qwen3vl4b rows) rc=$? after $(( $(date +%s) - T0 )) s" | tee -a "$W/gpu.txt"
sed -n '/^Issue 19 rows/,$p' "$W/q/speed_bench.log" 2>/dev/null || tail -30 "$W/q/run.txt"

for kind in sdpa ds official1b; do
    t=$(cap "$S_OFF")
    if [ "$t" -lt 40 ]; then echo "part 2 ($kind) skipped: $t s left" | tee -a "$W/gpu.txt"; continue; fi
    # sdpa / ds: the official step at 4B batch 16 with SDPA / through ZeRO-2; official1b: its largest 1B batch
    case $kind in
        sdpa) knobs=(OFFICIAL_ATTN=sdpa OFFICIAL_STEP=amp MODELS=4b FIRST_BATCH=16 MAX_BATCH=16 REFINE=0) ;;
        ds) knobs=(OFFICIAL_ATTN=auto OFFICIAL_STEP=ds MODELS=4b FIRST_BATCH=16 MAX_BATCH=16 REFINE=0) ;;
        official1b) knobs=(OFFICIAL_ATTN=auto OFFICIAL_STEP=amp MODELS=1b FIRST_BATCH=32 MAX_BATCH=128) ;;
    esac
    reuse=()
    if [ "$kind" = ds ] && [ -f /tmp/sa2va_side_by_side/4b/official_inputs.pt ]; then reuse=(--reuse-inputs); fi
    mkdir -p "$W/$kind"
    env "${knobs[@]}" OUT=$W/$kind INSTALL_KIT=0 STEPS=8 WARMUP=3 BUDGET=$((t - 5)) timeout "$t" \
        bash bench/official/speed_side_by_side.sh --sides official "${reuse[@]}" > "$W/$kind/run.txt" 2>&1
    echo "part 2 ($kind) rc=$? after $(( $(date +%s) - T0 )) s" | tee -a "$W/gpu.txt"
    tail -12 "$W/$kind/side_by_side.txt" 2>/dev/null || tail -30 "$W/$kind/run.txt"
done

t=$(left)
if [ "$t" -ge "$S_C_MIN" ]; then
    OUT=$W/compile MODELS=4b ITERS=30 WARMUP=8 BUDGET_S=$((t - 100)) timeout "$t" \
        bash bench/gpu/compile_train_run.sh > "$W/compile/run.txt" 2>&1
    echo "part 3 (compile_llm + compile_decoder through tools/train.py) rc=$? after $(( $(date +%s) - T0 )) s" | tee -a "$W/gpu.txt"
    cat "$W/compile/compile_train.md" 2>/dev/null || tail -30 "$W/compile/run.txt"
else
    echo "part 3 skipped: $t s left (< S_C_MIN=$S_C_MIN)" | tee -a "$W/gpu.txt"
fi
tar -czf "$OUT/call2.tar.gz" -C /tmp call2
echo "[call2] total $(( $(date +%s) - T0 )) s"
