#!/usr/bin/env bash
# Foundation GPU run (issue 2): the tiny config, then Sa2VA-1B shapes (random weights) for 20 iterations in
# bf16 on one GPU, through the same launcher users run. Prints a table; logs go to $OUT (default ./gpu_out).
#   bash bench/gpu/foundation_run.sh
# On the lent GPU box, after installing the wheel kit (see ../shared/gpu/README.md):
#   export PYTHONPATH=/tmp/site:$PWD; bash bench/gpu/foundation_run.sh
set -euo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
WD=${WD:-/tmp/sa2va_foundation}
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

run() {  # name config extra-args...
    local name=$1 cfg=$2; shift 2
    local t0=$(date +%s)
    "$PY" tools/train.py "$cfg" --work-dir "$WD/$name" "$@" > "$OUT/$name.log" 2>&1 || {
        tail -40 "$OUT/$name.log"; echo "FAILED: $name"; exit 1; }
    echo "$name: $(( $(date +%s) - t0 )) s wall"
}
run tiny projects/sa2va/configs/sa2va_tiny_demo.py --cfg-options train_dataloader.num_workers=2
run sa2va_1b_random projects/sa2va/configs/sa2va_1b_random.py

"$PY" - "$WD" "$OUT" <<'PYEOF'
import json, sys, glob, os
wd, out = sys.argv[1], sys.argv[2]
rows = []
for name, bs in (("tiny", 2), ("sa2va_1b_random", 2)):
    f = sorted(glob.glob(f"{wd}/{name}/*/vis_data/scalars.json"))[-1]
    recs = [json.loads(l) for l in open(f) if '"loss"' in l]
    steady = recs[1:] if len(recs) > 1 else recs  # the first logged window includes warm-up
    t = sum(r["time"] for r in steady) / len(steady)
    mem = max(r.get("memory", 0) for r in recs)
    rows.append((name, len(recs), recs[0]["loss"], recs[-1]["loss"], t, bs / t, mem))
lines = ["| run | logged steps | first loss | last loss | s/iter | samples/s | peak memory (MiB) |", "|---|---|---|---|---|---|---|"]
lines += [f"| {n} | {k} | {a:.3f} | {b:.3f} | {t:.3f} | {s:.2f} | {m} |" for n, k, a, b, t, s, m in rows]
print("\n".join(lines))
open(os.path.join(out, "foundation.md"), "w").write("\n".join(lines) + "\n")
PYEOF
