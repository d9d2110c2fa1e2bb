# Shared by the bench/gpu/s*_call*.sh call scripts (sourced; they set T0, DEADLINE_S and W): the time left of
# DEADLINE_S since T0, a part's budget capped by it, the wheel kit installed to /tmp/site when the checkout
# carries .whl, and the parts that more than one call runs (h200_rows, official_4b_steps).
left() { echo $(( DEADLINE_S - ($(date +%s) - T0) )); }
cap() { local a=$1 b; b=$(left); if [ "$a" -lt "$b" ]; then echo "$a"; else echo "$b"; fi; }
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
fi

# h200_rows DIR SECONDS ROWS: issue 19's harness rows (bench/gpu/speed_run.sh, kernel profile on) into DIR,
# only when $W/gpu.txt names an H200; at most SECONDS (capped by what is left).
h200_rows() {
    local dir=$1 t
    if ! grep -q H200 "$W/gpu.txt"; then echo "H200 rows skipped: not an H200" | tee -a "$W/gpu.txt"; return; fi
    t=$(cap "$2")
    mkdir -p "$dir"
    OUT=$dir PARTS=bench STEPS=10 KERNEL_PROFILE=1 BENCH_BUDGET_S=$((t - 40)) ROWS="$3" \
        timeout "$t" bash bench/gpu/speed_run.sh > "$dir/run.txt" 2>&1
    echo "H200 rows rc=$? after $(( $(date +%s) - T0 )) s" | tee -a "$W/gpu.txt"
    sed -n '/^Issue 19 rows/,$p' "$dir/speed_bench.log" 2>/dev/null || tail -30 "$dir/run.txt"
}

# official_4b_steps STEP:SECONDS ...: issue 20's official step at Sa2VA-4B shapes, batch 16, once per STEP
# (amp: its config's AMP step; ds: through a DeepSpeed ZeRO-2 engine) into $W/4b_STEP, in this order; the
# first prepares the inputs, the later ones reuse them. A step with under 40 s left is skipped.
official_4b_steps() {
    local spec step t reuse=()
    for spec in "$@"; do
        step=${spec%%:*}
        t=$(cap "${spec##*:}")
        if [ "$t" -lt 40 ]; then echo "official $step skipped: $t s left" | tee -a "$W/gpu.txt"; continue; fi
        mkdir -p "$W/4b_$step"
        env OFFICIAL_STEP="$step" OFFICIAL_ATTN=auto MODELS=4b FIRST_BATCH=16 MAX_BATCH=16 REFINE=0 \
            OUT="$W/4b_$step" INSTALL_KIT=0 STEPS=8 WARMUP=3 BUDGET=$((t - 5)) timeout "$t" \
            bash bench/official/speed_side_by_side.sh --sides official "${reuse[@]}" > "$W/4b_$step/run.txt" 2>&1
        echo "official $step rc=$? after $(( $(date +%s) - T0 )) s" | tee -a "$W/gpu.txt"
        tail -6 "$W/4b_$step/side_by_side.txt" 2>/dev/null || tail -30 "$W/4b_$step/run.txt"
        reuse=(--reuse-inputs)
    done
}
