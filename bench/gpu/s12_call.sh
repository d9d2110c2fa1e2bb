#!/usr/bin/env bash
# The planned GPU calls after session 11 (what issues 19 and 20 still lack), from a `git archive` checkout
# carrying .whl (with DeepSpeed), .official_overlay and bench/official/src. PART=1 (default) or PART=2:
#   PART=1, issue 19:
#     a. only when the card is an H200: the harness's Sa2VA-4B feature-cache rows, eager and both compile
#        options at batch 16 and 32 ($ROWS_H200), at most $S_H200 s;
#     b. Sa2VA-1B through tools/train.py, both compile options and eager, batch 32, the config's 4 loader
#        workers (bench/gpu/compile_train_run.sh with LOOP_PARTS=1), with the loop's one iterator over all
#        epochs (session 11 measured 59.13 samples/s with one iterator per epoch: bench/records/speed_s11);
#     c. the compiled run again with $WORKERS_2 (8) loader workers, on the inductor cache of b;
#   PART=2, issue 20: the largest Sa2VA-4B batch of the official step and of the toolkit's ref, opt and ckpt
#     sides in one call (sweep from 16, doubling to 128, then steps of 8; session 9 found the official
#     step's largest at 32 and ran ckpt to the cap of 64, in two calls). ckpt, whose sweep goes furthest,
#     runs last, so that a call that runs out of time loses only its row.
# Each part is cut to what is left of DEADLINE_S (560) seconds. $OUT gets call.tar.gz and the tables.
set -uo pipefail
OUT=${OUT:-gpu_out}
PART=${PART:-1}
DEADLINE_S=${DEADLINE_S:-560}
S_H200=${S_H200:-180}
WORKERS_2=${WORKERS_2:-8}
ROWS_H200=${ROWS_H200:-4b:opt16,opt16-compiled-cdec,opt32-compiled-cdec}
T0=$(date +%s)
W=/tmp/call12_$PART
mkdir -p "$OUT" "$W"
. bench/gpu/call_common.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$W/gpu.txt" || true

if [ "$PART" = 1 ]; then
    h200_rows "$W/h200" "$S_H200" "$ROWS_H200"
    # one inductor cache for the call: the first compiled run compiles cold, the later one reuses its graphs
    export TORCHINDUCTOR_CACHE_DIR=$W/cache/inductor TRITON_CACHE_DIR=$W/cache/triton
    for spec in "compiled eager:4" "compiled:$WORKERS_2"; do
        runs=${spec%%:*} n=${spec##*:} t=$(left)
        if [ "$t" -lt 100 ]; then echo "1B $runs with $n workers skipped: $t s left" | tee -a "$W/gpu.txt"; continue; fi
        COLD_CACHE=0 LOOP_PARTS=1 MODELS=1b RUNS="$runs" ITERS=60 WARMUP=25 OUT=$W/parts1b_w$n \
            BUDGET_S=$((t - 90)) EXTRA_OPTS="train_dataloader.num_workers=$n" \
            timeout "$t" bash bench/gpu/compile_train_run.sh > "$W/parts1b_w$n.txt" 2>&1
        echo "1B ($runs, $n workers) rc=$? after $(( $(date +%s) - T0 )) s" | tee -a "$W/gpu.txt"
        for f in "$W"/parts1b_w$n/*_parts.md; do head -9 "$f"; done
        cat "$W/parts1b_w$n/compile_train.md" 2>/dev/null || tail -30 "$W/parts1b_w$n.txt"
    done
else
    t=$(left)
    mkdir -p "$W/4b"
    OUT=$W/4b INSTALL_KIT=0 STEPS=8 WARMUP=3 MODELS=4b FIRST_BATCH=16 MAX_BATCH=128 BUDGET=$((t - 10)) \
        timeout "$t" bash bench/official/speed_side_by_side.sh --sides official,ref,opt,ckpt > "$W/4b/run.txt" 2>&1
    echo "4B largest batches rc=$? after $(( $(date +%s) - T0 )) s" | tee -a "$W/gpu.txt"
    tail -30 "$W/4b/side_by_side.txt" 2>/dev/null || tail -30 "$W/4b/run.txt"
fi
tar -czf "$OUT/call.tar.gz" -C /tmp "call12_$PART"
echo "[call12 part $PART] total $(( $(date +%s) - T0 )) s"
