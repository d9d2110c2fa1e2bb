#!/usr/bin/env bash
# Issue 8: Sa2VA-4B shapes (random weights) with the reference recipe (batch 2 x accumulation 16 per GPU)
# on NGPUS GPUs of one host: STEPS optimiser steps, then resume from the last checkpoint for RESUME_STEPS
# more, then export with tools/convert_to_hf.py; prints one table row (also written to $REPORT).
#   NGPUS=8 bash bench/gpu/multi_gpu_run.sh                  # the 8-GPU machine: 50 + 10 steps
#   NGPUS=2 STEPS=20 RESUME_STEPS=4 bash bench/gpu/multi_gpu_run.sh
# On the lent GPU box, after installing the wheel kit: export PYTHONPATH=/tmp/site:$PWD first.
set -euo pipefail
cd "$(dirname "$0")/../.."
NGPUS=${NGPUS:-8}
STEPS=${STEPS:-50}
RESUME_STEPS=${RESUME_STEPS:-10}
ACC=16
BATCH=2
CFG=${CFG:-projects/sa2va/configs/sa2va_4b_random.py}
WD=${WD:-/tmp/sa2va_multi_gpu_$NGPUS}
REPORT=${REPORT:-$WD/report.md}
PY=${PYTHON:-python3}
export PYTHON=$PY
rm -rf "$WD"; mkdir -p "$WD"
first=$((STEPS * ACC)); total=$(((STEPS + RESUME_STEPS) * ACC))

echo "== train $STEPS optimiser steps ($first micro-batches) on $NGPUS GPU(s)"
t0=$(date +%s)
bash tools/dist.sh train "$CFG" "$NGPUS" --work-dir "$WD" --cfg-options train_cfg.max_epochs=None train_cfg.max_iters=$first \
    default_hooks.checkpoint.interval=$first > "$WD/train.log" 2>&1 || { tail -50 "$WD/train.log"; exit 1; }
t1=$(date +%s)
echo "== resume from iter_$first.pth for $RESUME_STEPS more steps"
bash tools/dist.sh train "$CFG" "$NGPUS" --work-dir "$WD" --resume auto --cfg-options train_cfg.max_epochs=None train_cfg.max_iters=$total \
    default_hooks.checkpoint.interval=$((RESUME_STEPS * ACC)) > "$WD/resume.log" 2>&1 || { tail -50 "$WD/resume.log"; exit 1; }
t2=$(date +%s)
grep -q "Loaded .* trainable tensors from .*iter_$first.pth" "$WD/resume.log" || { echo "resume did not load iter_$first.pth"; exit 1; }
echo "== export"
"$PY" tools/convert_to_hf.py "$CFG" "$WD/iter_$total.pth" --save-path "$WD/hf" > "$WD/export.log" 2>&1 \
    || { tail -30 "$WD/export.log"; exit 1; }
t3=$(date +%s)

"$PY" - "$WD" "$NGPUS" "$STEPS" "$ACC" "$BATCH" "$REPORT" $((t1 - t0)) $((t2 - t1)) $((t3 - t2)) <<'PYEOF'
import re, sys
from pathlib import Path
sys.path.insert(0, "bench/gpu")
from scaling_report import optimiser_steps, run_records
wd, ngpus, steps, acc, batch, report = Path(sys.argv[1]), *map(int, sys.argv[2:6]), sys.argv[6]
t_train, t_resume, t_export = map(int, sys.argv[7:10])
opt = optimiser_steps(run_records(wd), acc, str(wd))  # rank 0's micro-batch losses -> per optimiser step
# throughput over the steady part of the first run (after the first 2 optimiser steps), from timestamps
if steps < 2:
    raise SystemExit("STEPS must be >= 2")
lo = min(2, steps - 1)
sps = (steps - lo) * acc * batch * ngpus / (opt[steps]["time"] - opt[lo]["time"])
mem = max([int(m) for m in re.findall(r"memory: (\d+)", (wd / "train.log").read_text() + (wd / "resume.log").read_text())] or [0])
mem_gib = mem / 1024 if mem else float("nan")
hf = sorted(p.name for p in (wd / "hf").iterdir())
row = (f"| {ngpus} | {batch}x{acc}x{ngpus} = {batch*acc*ngpus} | {sps:.2f} | {mem_gib:.1f} | {opt[1]['loss']:.4f} | "
       f"{opt[steps]['loss']:.4f} | {opt[max(opt)]['loss']:.4f} | {t_train}/{t_resume}/{t_export} |")
head = ("| GPUs | global batch | samples/s | peak GiB/GPU (rank 0) | loss step 1 | loss step %d | loss last step | "
        "wall s train/resume/export |\n|---|---|---|---|---|---|---|---|" % steps)
text = head + "\n" + row + f"\n\nexported: {', '.join(hf)}\n"
print(text); Path(report).write_text(text)
PYEOF
