#!/usr/bin/env bash
# CHASE_DB1 learning run on one GPU: train the REFERENCE mask resolution (loss on 256x256 logits vs nearest-resized
# GT) and the FULL-RESOLUTION mode (loss at the 512 px GT size + learned upsampler) for the same wall-clock budget,
# evaluate both on the 8 test images (11L-14R) with the threshold chosen on a held-out part of train (patients 09
# and 10 = 4 images; the models train on the other 16), and print a side-by-side table. Configs:
# projects/sa2va/configs/sa2va_chase_learning_{low,full}.py (random SAM2 Hiera-T trained from scratch).
#
# GPU box (run tool, one H200, carry [".whl"], ~8-9 minutes with the defaults):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && bash bench/gpu/chase_learning_run.sh
# CPU smoke test (SAM2 at 256 px, 4 iterations, 2 validations, same code path; ~2-4 min on 2 cores):
#   SMOKE=1 bash bench/gpu/chase_learning_run.sh
#
# Env: TRAIN_SECONDS  training-loop budget per mode, validation included (default 170; start-up ~30 s more)
#      MODES          default "low full"
#      OUT            the 8 result files (default $WD/out): summary.txt, results.json, curves.png,
#                     pr_<mode>.png, grid_<mode>.png, logs.txt
#      WD             work dirs (default /tmp/chase_learning)     PYTHON  interpreter (default python3 / .venv)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$ROOT"
export TOKENIZERS_PARALLELISM=false
SMOKE=${SMOKE:-0}
MODES=${MODES:-"low full"}
WD=${WD:-/tmp/chase_learning}
OUT=${OUT:-$WD/out}
TRAIN_SECONDS=${TRAIN_SECONDS:-170}
DATA=data/chase_db1
mkdir -p "$WD/split" "$OUT"

# Patient-grouped hold-out: Image_09*/Image_10* of the training annotations choose the threshold (and the best
# checkpoint); the remaining 16 images train.
"$PY" - "$DATA/annotations_train.json" "$WD/split" <<'PYEOF'
import json, sys
from pathlib import Path
records = json.loads(Path(sys.argv[1]).read_text())
held = ("Image_09", "Image_10")
val = [r for r in records if r["image"].startswith(held)]
train = [r for r in records if not r["image"].startswith(held)]
if len(val) != 4 or len(train) != 16:
    raise SystemExit(f"unexpected split {len(train)}/{len(val)} of {sys.argv[1]}")
for name, recs in (("train", train), ("val", val)):
    Path(sys.argv[2], f"{name}.json").write_text(json.dumps(recs))
PYEOF

COMMON=(train_dataloader.dataset.ann_file="$WD/split/train.json" val_dataloader.dataset.ann_file="$WD/split/val.json"
        custom_hooks.0.seconds="$TRAIN_SECONDS")
EVAL_OPTS=()
if [ "$SMOKE" = 1 ]; then
    S=256
    SIZE_OPTS=(model.grounding_encoder.overrides.image_size=$S train_dataloader.dataset.processor.sam2_size=$S
               val_dataloader.dataset.processor.sam2_size=$S)
    COMMON+=("${SIZE_OPTS[@]}" train_cfg.max_iters=4 train_cfg.val_interval=2 train_dataloader.batch_size=2
             train_dataloader.num_workers=0 train_dataloader.persistent_workers=False train_dataloader.pin_memory=False
             custom_hooks.0.calibrate_at=3 custom_hooks.0.skip=1 default_hooks.logger.interval=1)
    EVAL_OPTS=(--cfg-options "${SIZE_OPTS[@]}")
fi

declare -A SCALARS ITERS
for MODE in $MODES; do
    CFG=projects/sa2va/configs/sa2va_chase_learning_$MODE.py
    RUN=$WD/$MODE
    rm -rf "$RUN"; mkdir -p "$RUN"
    echo "=== train $MODE ($CFG, budget ${TRAIN_SECONDS}s)"
    start=$(date +%s)
    timeout $((TRAIN_SECONDS + 240)) "$PY" tools/train.py "$CFG" --work-dir "$RUN" --cfg-options "${COMMON[@]}" \
        > "$RUN/train.log" 2>&1 || { tail -n 60 "$RUN/train.log"; echo "training $MODE failed" >&2; exit 1; }
    echo "    trained in $(( $(date +%s) - start )) s"
    grep -E "TimeBudgetHook:|SegMetric over|best checkpoint" "$RUN/train.log" | sed 's/^/    /' || true
    CKPT=$(ls -t "$RUN"/best_*.pth 2>/dev/null | head -n 1 || true)
    [ -n "$CKPT" ] || CKPT=$(ls -t "$RUN"/iter_*.pth | head -n 1)
    SCALARS[$MODE]=$(ls -t "$RUN"/*/vis_data/scalars.json | head -n 1)
    ITERS[$MODE]=$("$PY" -c "import json,sys; print(max(json.loads(l).get('iter', 0) for l in open(sys.argv[1]) if l.strip()))" "${SCALARS[$MODE]}")
    echo "=== evaluate $MODE: $(basename "$CKPT") after ${ITERS[$MODE]} iterations"
    "$PY" tools/test.py "$CFG" "$CKPT" --out-dir "$RUN/eval" --ann-file "$DATA/annotations_test.json" \
        --image-root "$DATA/images" --val-ann-file "$WD/split/val.json" --max-overlays 4 "${EVAL_OPTS[@]}" \
        > "$RUN/test.log" 2>&1 || { tail -n 60 "$RUN/test.log"; echo "evaluation $MODE failed" >&2; exit 1; }
    cp "$RUN/eval/pr_curve.png" "$OUT/pr_$MODE.png"
    cp "$RUN/eval/overlay_grid.png" "$OUT/grid_$MODE.png"
done

RUNS=()
for MODE in $MODES; do RUNS+=(--run "$MODE=$WD/$MODE/eval/report.json:${SCALARS[$MODE]}"); done
{
    echo "CHASE_DB1 test set (8 images, 512x512), threshold chosen on held-out train patients 09+10 (4 images)"
    echo "training budget ${TRAIN_SECONDS}s per mode (SMOKE=$SMOKE); iterations: $(for M in $MODES; do printf '%s=%s ' "$M" "${ITERS[$M]}"; done)"
    "$PY" tools/compare_runs.py "${RUNS[@]}" --curves "$OUT/curves.png"
    echo
    echo "Resolution ceiling (Dice of a perfect mask through each mode's grid; 256 = SAM2 logits at 1024 px input):"
    "$PY" tools/resolution_ceiling.py "$DATA/annotations_test.json" --images "$DATA/images" --low-res 256
} | tee "$OUT/summary.txt"

"$PY" - "$OUT/results.json" "$TRAIN_SECONDS" "$SMOKE" $(for M in $MODES; do echo "$M=$WD/$M/eval/report.json=${ITERS[$M]}"; done) <<'PYEOF'
import json, sys
out, budget, smoke, *runs = sys.argv[1:]
res = {"train_seconds": float(budget), "smoke": smoke == "1", "runs": {}}
for spec in runs:
    name, report, iters = spec.split("=")
    res["runs"][name] = {"iterations": int(iters), "report": json.loads(open(report).read())}
open(out, "w").write(json.dumps(res, indent=2) + "\n")
PYEOF
for MODE in $MODES; do
    echo "===== $MODE train.log (progress lines)"
    grep -E "Iter\(train\)|Iter\(val\)|TimeBudgetHook:|SegMetric|best checkpoint|Error" "$WD/$MODE/train.log" | tail -n 80
    echo "===== $MODE test.log (tail)"
    tail -n 15 "$WD/$MODE/test.log"
done > "$OUT/logs.txt"
echo "results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
