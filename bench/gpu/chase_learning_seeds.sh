#!/usr/bin/env bash
# CHASE_DB1 learning run, several seeds side by side on ONE GPU (issue 18, deliverable 8): train
# projects/sa2va/configs/sa2va_chase_learning_vessel.py (random SAM2 Hiera-T from scratch, full-resolution loss,
# soft clDice) once per seed for the same wall-clock budget, all seeds at once on the same card; then score each
# on the 8 test images (Image_11L..14R) inside the field of view (tools/test.py --fov-masks auto) and on the whole
# image, with the threshold chosen on held-out training patients 09 and 10 (4 images; the models train on the
# other 16), flip test-time augmentation when tools/test.py offers it, and print per-seed rows with mean and
# spread (bench/gpu/seeds_report.py).
#
# GPU box (run tool, one GPU, carry [".whl"] and the data folder when it is not the bundled one):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && bash bench/gpu/chase_learning_seeds.sh
# CPU smoke test (SAM2 at 256 px, 4 iterations, one seed; same code path, a few minutes on 2 cores):
#   SMOKE=1 SEEDS=0 bash bench/gpu/chase_learning_seeds.sh
#
# Env: DATA           folder with images/, annotations_train.json, annotations_test.json (default data/chase_db1,
#                     512x512). Originals (999x960): build with tools/masks_to_annotations.py + split_dataset.py.
#      SCALE          upsampler scale (256 * SCALE >= image size; default 2 for 512 px, use 4 for originals)
#      SEEDS          default "0 1 2"      TRAIN_SECONDS  training budget per seed, validation included (360)
#      WORKERS        data-loader workers per seed (default 4)
#      TTA            "--flip-tta" when tools/test.py has it, else empty; set TTA= to score without it
#      OUT            summary.txt, seeds.json, per-seed report_<seed>.json, curves, grids (default $WD/out)
#      WD             work dirs (default /tmp/chase_seeds)   PYTHON  interpreter (default python3 / .venv)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$ROOT"
export TOKENIZERS_PARALLELISM=false
SMOKE=${SMOKE:-0}
DATA=${DATA:-data/chase_db1}
SCALE=${SCALE:-2}
SEEDS=${SEEDS:-"0 1 2"}
TRAIN_SECONDS=${TRAIN_SECONDS:-360}
WORKERS=${WORKERS:-4}
WD=${WD:-/tmp/chase_seeds}
OUT=${OUT:-$WD/out}
CFG=projects/sa2va/configs/sa2va_chase_learning_vessel.py
if [ -z "${TTA+x}" ]; then
    TTA=""
    if grep -q -- "--flip-tta" tools/test.py; then TTA="--flip-tta"; fi
fi
mkdir -p "$WD/split" "$OUT"

# Patient-grouped hold-out: patients 09 and 10 choose the threshold (and the best checkpoint); 16 images train.
printf '%s\n' Image_09L Image_09R Image_10L Image_10R > "$WD/split/held_out.txt"
"$PY" tools/split_dataset.py "$DATA/annotations_train.json" --val-list "$WD/split/held_out.txt" \
    --out-dir "$WD/split" --images "$DATA/images" > "$WD/split/split.log" 2>&1 \
    || { cat "$WD/split/split.log"; exit 1; }
tail -n 2 "$WD/split/split.log"

COMMON=(train_dataloader.dataset.ann_file="$WD/split/train.json" val_dataloader.dataset.ann_file="$WD/split/val.json"
        train_dataloader.dataset.image_root="$DATA/images" val_dataloader.dataset.image_root="$DATA/images"
        custom_hooks.0.seconds="$TRAIN_SECONDS" model.grounding_encoder.upsampler.scale="$SCALE"
        train_dataloader.num_workers="$WORKERS")
EVAL_OPTS=(--cfg-options model.grounding_encoder.upsampler.scale="$SCALE")
if [ "$SMOKE" = 1 ]; then
    S=256
    SIZE_OPTS=(model.grounding_encoder.overrides.image_size=$S train_dataloader.dataset.processor.sam2_size=$S
               val_dataloader.dataset.processor.sam2_size=$S)
    COMMON+=("${SIZE_OPTS[@]}" train_cfg.max_iters=4 train_cfg.val_interval=2 train_dataloader.batch_size=2
             train_dataloader.num_workers=0 train_dataloader.persistent_workers=False train_dataloader.pin_memory=False
             custom_hooks.0.calibrate_at=3 custom_hooks.0.skip=1 default_hooks.logger.interval=1)
    EVAL_OPTS+=("${SIZE_OPTS[@]}")
fi

echo "=== train seeds [$SEEDS] side by side ($CFG, budget ${TRAIN_SECONDS}s each, data $DATA, scale $SCALE)"
start=$(date +%s)
declare -A PIDS
for SEED in $SEEDS; do
    RUN=$WD/seed$SEED
    rm -rf "$RUN"; mkdir -p "$RUN"
    timeout $((TRAIN_SECONDS + 240)) "$PY" tools/train.py "$CFG" --work-dir "$RUN" \
        --cfg-options "${COMMON[@]}" randomness.seed="$SEED" > "$RUN/train.log" 2>&1 &
    PIDS[$SEED]=$!
done
for SEED in $SEEDS; do
    wait "${PIDS[$SEED]}" || { tail -n 60 "$WD/seed$SEED/train.log"; echo "training seed $SEED failed" >&2; exit 1; }
done
echo "    trained in $(( $(date +%s) - start )) s (all seeds)"

RUNS=()
for SEED in $SEEDS; do
    RUN=$WD/seed$SEED
    grep -E "TimeBudgetHook:|best checkpoint" "$RUN/train.log" | sed "s/^/    seed $SEED: /" || true
    CKPT=$(ls -t "$RUN"/best_*.pth 2>/dev/null | head -n 1 || true)
    [ -n "$CKPT" ] || CKPT=$(ls -t "$RUN"/iter_*.pth | head -n 1)
    SCALARS=$(ls -t "$RUN"/*/vis_data/scalars.json | head -n 1)
    ITERS=$("$PY" -c "import json,sys; print(max(json.loads(l).get('iter', 0) for l in open(sys.argv[1]) if l.strip()))" "$SCALARS")
    echo "=== evaluate seed $SEED: $(basename "$CKPT") after $ITERS iterations ${TTA:+(flip TTA)}"
    "$PY" tools/test.py "$CFG" "$CKPT" --out-dir "$RUN/eval" --ann-file "$DATA/annotations_test.json" \
        --image-root "$DATA/images" --val-ann-file "$WD/split/val.json" --fov-masks auto --max-overlays 4 \
        $TTA "${EVAL_OPTS[@]}" > "$RUN/test.log" 2>&1 \
        || { tail -n 60 "$RUN/test.log"; echo "evaluation of seed $SEED failed" >&2; exit 1; }
    cp "$RUN/eval/report.json" "$OUT/report_seed$SEED.json"
    cp "$RUN/eval/overlay_grid.png" "$OUT/grid_seed$SEED.png" 2>/dev/null || true
    RUNS+=(--run "$SEED=$RUN/eval/report.json:$ITERS")
    grep -E "Iter\(train\)|Iter\(val\)|TimeBudgetHook:|SegMetric|best checkpoint|Error" "$RUN/train.log" \
        | tail -n 60 > "$OUT/train_seed$SEED.txt"
done

{
    echo "CHASE_DB1 test set (8 images, $DATA), threshold chosen on held-out train patients 09+10 (4 images)"
    echo "config $CFG, upsampler scale $SCALE, ${TRAIN_SECONDS}s training budget per seed, seeds trained side by side on one GPU (SMOKE=$SMOKE), ${TTA:-no TTA}"
    echo "fov = inside the field of view (tools/test.py --fov-masks auto), whole = every pixel"
    "$PY" bench/gpu/seeds_report.py "${RUNS[@]}" --json "$OUT/seeds.json"
} | tee "$OUT/summary.txt"
CURVE_LOGS=()
for SEED in $SEEDS; do CURVE_LOGS+=(--log "$SEED=$WD/seed$SEED/train.log"); done
"$PY" bench/gpu/seeds_curves.py "${CURVE_LOGS[@]}" --out "$OUT/curves.png"
echo "results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
