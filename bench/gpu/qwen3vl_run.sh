#!/usr/bin/env bash
# Sa2VA-Qwen3-VL-4B GPU run (issue 15): the tiny Qwen3-VL demo for one epoch (10 iterations) as a smoke test,
# then Qwen3-VL-4B shapes (random weights) for 20 iterations in bf16 on one GPU, then the Sa2VA-1B
# (InternVL) shapes on the same card for comparison, all through the launcher users run. Prints a table
# (qwen3vl.md); logs go to $OUT (default ./gpu_out).
#   bash bench/gpu/qwen3vl_run.sh                 # RUNS="tiny_qwen3vl sa2va_qwen3vl_4b_random" skips the 1B row
# On the lent GPU box, after installing the wheel kit with the transformers 4.57 stack (../shared/gpu/README.md):
#   export PYTHONPATH=/tmp/site:$PWD; bash bench/gpu/qwen3vl_run.sh
set -euo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
WD=${WD:-/tmp/sa2va_qwen3vl}
PY=${PY:-python3}
RUNS=${RUNS:-tiny_qwen3vl sa2va_qwen3vl_4b_random sa2va_1b_random}
C=projects/sa2va/configs
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$OUT/gpu.txt"

run() {  # name config extra-args...
    local name=$1 cfg=$2; shift 2
    local t0
    t0=$(date +%s)
    "$PY" tools/train.py "$cfg" --work-dir "$WD/$name" "$@" > "$OUT/$name.log" 2>&1 || {
        tail -40 "$OUT/$name.log"; echo "FAILED: $name"; return 1; }
    echo "$name: $(( $(date +%s) - t0 )) s wall" | tee -a "$OUT/gpu.txt"
}
failed=
for name in $RUNS; do
    case $name in
        tiny_qwen3vl) run tiny_qwen3vl $C/sa2va_tiny_qwen3vl_demo.py --cfg-options train_cfg.max_epochs=1 ;;
        sa2va_qwen3vl_4b_random) run sa2va_qwen3vl_4b_random $C/sa2va_qwen3vl_4b_random.py ;;
        sa2va_1b_random) run sa2va_1b_random $C/sa2va_1b_random.py ;;
        *) echo "unknown run: $name" >&2; exit 2 ;;
    esac || { failed=$name; break; }  # still print the table of the runs that finished
done

"$PY" - "$WD" "$OUT" $RUNS <<'PYEOF'
import glob
import json
import os
import sys

wd, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
batch = 2  # _base_/dataset_refseg.py, used by all three configs
lines = [
    "| run | logged records | first loss | last loss | s/iter (last 10 iterations) | samples/s | peak memory (MiB) |",
    "|---|---|---|---|---|---|---|",
]
for name in names:
    found = sorted(glob.glob(f"{wd}/{name}/*/vis_data/scalars.json"))
    recs = [json.loads(line) for line in open(found[-1]) if '"loss"' in line] if found else []
    if not recs:
        lines.append(f"| {name} | 0 | - | - | - | - | - |  (no loss records: see {name}.log)")
        continue
    # mmengine logs time and losses as means over its last 10 iterations (log_processor window_size=10):
    # the last record of a 20-iteration run covers iterations 11-20, past the warm-up.
    t = recs[-1]["time"]
    mem = max(r.get("memory", 0) for r in recs)
    lines.append(
        f"| {name} | {len(recs)} | {recs[0]['loss']:.3f} | {recs[-1]['loss']:.3f} | {t:.3f} "
        f"| {batch / t:.2f} | {mem} |"
    )
print("\n".join(lines))
with open(os.path.join(out, "qwen3vl.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
PYEOF
[ -z "$failed" ] || { echo "FAILED: $failed (log: $OUT/$failed.log)"; exit 1; }
