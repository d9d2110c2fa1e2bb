#!/usr/bin/env bash
# Issue 19: model.compile_llm through the real launcher, on ONE GPU, random weights. For each model of $MODELS
# (1b: projects/sa2va/configs/sa2va_1b_random.py, 4b: sa2va_4b_random.py; tiny: sa2va_tiny_demo.py) runs
# tools/train.py for $ITERS iterations eager, then with $COMPILE_OPTS (model.compile_llm=True
# model.compile_decoder=True: each LLM decoder layer and the SAM2 mask decoder torch.compile'd, automatic dynamic
# shapes; the padded length and the object count vary from batch to batch), each in its
# own process, with what the harness's feature-cache rows used: the frozen-feature cache in memory, batch
# $BATCH_1B / $BATCH_4B, one optimiser step per iteration (accumulative_counts=1), fused AdamW (FUSED=1).
# Also set for the measurement: every iteration logged unsmoothed (logger.interval=1, window_size=1), full
# batches only (drop_last=True: samples/s = batch / s/iter), no checkpoint, no validation.
# Then prints the table of bench/gpu/compile_train_table.py: s/iter over the iterations after the first
# $WARMUP, less those that compiled a graph (read from the log), samples/s, peak memory (MiB of
# max_memory_allocated), first and last loss, the first iteration's time and the compile iterations' times.
#
# Wall time on one H100 80GB (model builds and cold compiles included; bench/records/speed_s11): MODELS=1b
# ITERS=60 260 s (compiled 153 s, eager 99 s); MODELS=4b ITERS=50 under 238 s (s11_call3.sh's part that ran
# it ended 238 s into the call, the kit install included).
# On the lent GPU box (kit with the transformers 4.57 stack, see ../shared/gpu/README.md; carry .whl):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD && OUT=$OUT bash bench/gpu/compile_train_run.sh
# CPU smoke run (the tiny demo, batch 2, 8 iterations, warm-up 2; the compiled run with inductor, or with the
# aot_eager backend where inductor has no C++ compiler):
#   SMOKE=1 PY=.venv/bin/python bash bench/gpu/compile_train_run.sh
# Knobs: MODELS (1b,4b; SMOKE: tiny), ITERS (40; SMOKE: 8), WARMUP (10; SMOKE: 2), WINDOW (time only the
# last WINDOW iterations; default all after the warm-up), BATCH_1B (32), BATCH_4B (16), BATCH_TINY (2),
# RUNS ("eager compiled"), COMPILE_OPTS ("model.compile_llm=True model.compile_decoder=True"),
# FUSED (1; SMOKE: 0), EXTRA_OPTS (more --cfg-options for every run, e.g. "train_dataloader.num_workers=8"),
# LOOP_PARTS (1: each run goes through bench/gpu/loop_parts.py, which times the parts of
# every iteration and samples the main thread's stack in mmengine's data_time window: $OUT/<run>_parts.md and
# <run>_parts.json; 0: tools/train.py alone), COLD_CACHE (1: each run
# gets empty inductor and Triton caches under $WD, so the compile iterations' times are those of a cold start;
# 0: torch's default cache directories, where an earlier run's graphs are reused), OUT (compile_train_out),
# WD (/tmp/sa2va_compile_train: work dirs), PY (python3), BUDGET_S (360; SMOKE: none): a run that would start
# later than BUDGET_S seconds after the start is listed as skipped.
# $OUT gets 3 files and one per run (7 for MODELS=1b,4b): gpu.txt (card, versions, wall time per run),
# compile_train.md (the table), compile_train_rows.json and one <model>_<run>.log per run (its compile, error
# and warning lines, then its last 30 lines).
# With LOOP_PARTS=1 also <run>_parts.md and <run>_parts.json per run.
set -euo pipefail
OUT=${OUT:-compile_train_out}
PY=${PY:-python3}
SMOKE=${SMOKE:-0}
RUNS=${RUNS:-eager compiled}
WD=${WD:-/tmp/sa2va_compile_train}
COMPILE_OPTS=${COMPILE_OPTS:-model.compile_llm=True model.compile_decoder=True}
COLD_CACHE=${COLD_CACHE:-1}
if [ "$SMOKE" = 1 ]; then
    MODELS=${MODELS:-tiny}; ITERS=${ITERS:-8}; WARMUP=${WARMUP:-2}; FUSED=${FUSED:-0}
    BUDGET_S=${BUDGET_S:-1000000}
else
    MODELS=${MODELS:-1b,4b}; ITERS=${ITERS:-40}; WARMUP=${WARMUP:-10}; FUSED=${FUSED:-1}; BUDGET_S=${BUDGET_S:-360}
fi
WINDOW=${WINDOW:-}
LOOP_PARTS=${LOOP_PARTS:-0}
EXTRA_OPTS=${EXTRA_OPTS:-}
mkdir -p "$OUT" "$WD"
T0=$(date +%s)
C=projects/sa2va/configs

: > "$OUT/gpu.txt"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/gpu.txt"
fi
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$OUT/gpu.txt"
if [ "$SMOKE" = 1 ] && [ "$COMPILE_OPTS" = "model.compile_llm=True model.compile_decoder=True" ]; then
    why=$("$PY" -c "
from torch._inductor import cpp_builder
try:
    cpp_builder.get_cpp_compiler()
except Exception as e:
    print(e)" 2>&1 | tail -1)
    if [ -n "$why" ]; then
        COMPILE_OPTS="model.compile_llm.backend=aot_eager model.compile_decoder.backend=aot_eager"
        echo "[compile-train] inductor cannot compile here ($why): the compiled smoke run uses $COMPILE_OPTS" \
            | tee -a "$OUT/gpu.txt"
    fi
fi

status=0
table_args=(--warmup "$WARMUP")
if [ -n "$WINDOW" ]; then table_args+=(--window "$WINDOW"); fi
for model in ${MODELS//,/ }; do
    case $model in
        1b) cfg=$C/sa2va_1b_random.py; batch=${BATCH_1B:-32} ;;
        4b) cfg=$C/sa2va_4b_random.py; batch=${BATCH_4B:-16} ;;
        tiny) cfg=$C/sa2va_tiny_demo.py; batch=${BATCH_TINY:-2} ;;
        *) echo "unknown model '$model' in MODELS=$MODELS (known: 1b, 4b, tiny)"; exit 2 ;;
    esac
    opts=(train_cfg.max_epochs=None "train_cfg.max_iters=$ITERS" "train_dataloader.batch_size=$batch"
          train_dataloader.drop_last=True optim_wrapper.accumulative_counts=1 model.feature_cache.mode=memory
          default_hooks.logger.interval=1 log_processor.window_size=1 default_hooks.checkpoint=None
          val_cfg=None val_dataloader=None val_evaluator=None)
    if [ "$FUSED" = 1 ]; then opts+=(optim_wrapper.optimizer.fused=True); fi
    if [ -n "$EXTRA_OPTS" ]; then read -r -a more <<< "$EXTRA_OPTS"; opts+=("${more[@]}"); fi
    for run in $RUNS; do
        case $run in
            eager) extra=(); compiled=no ;;
            compiled) read -r -a extra <<< "$COMPILE_OPTS"; compiled=yes ;;
            *) echo "unknown run '$run' in RUNS=$RUNS (known: eager, compiled)"; exit 2 ;;
        esac
        name=${model}_$run
        elapsed=$(( $(date +%s) - T0 ))
        if [ "$elapsed" -gt "$BUDGET_S" ]; then
            echo "[compile-train] skipped $name: ${elapsed} s past BUDGET_S=$BUDGET_S s" | tee -a "$OUT/gpu.txt"
            table_args+=(--skipped "$model" "$compiled" "$batch" "would start at ${elapsed} s, past BUDGET_S=$BUDGET_S s")
            continue
        fi
        rm -rf "${WD:?}/$name" "${WD:?}/${name}_cache"
        if [ "$COLD_CACHE" = 1 ]; then  # compile from scratch, as on a fresh machine
            export TORCHINDUCTOR_CACHE_DIR=$WD/${name}_cache/inductor TRITON_CACHE_DIR=$WD/${name}_cache/triton
        fi
        t=$(date +%s)
        echo "[compile-train] $name: $PY tools/train.py $cfg --cfg-options ${opts[*]} ${extra[*]}" | tee -a "$OUT/gpu.txt"
        train=(tools/train.py)
        if [ "$LOOP_PARTS" = 1 ]; then  # the same run, timed part by part (bench/gpu/loop_parts.py)
            train=(bench/gpu/loop_parts.py --warmup "$WARMUP" --out-json "$OUT/${name}_parts.json" --)
        fi
        if "$PY" "${train[@]}" "$cfg" --work-dir "$WD/$name" --cfg-options "${opts[@]}" "${extra[@]}" \
            > "$WD/$name.log" 2>&1; then
            echo "[compile-train] $name: $(( $(date +%s) - t )) s wall" | tee -a "$OUT/gpu.txt"
        else
            tail -40 "$WD/$name.log"
            echo "[compile-train] FAILED: $name after $(( $(date +%s) - t )) s (log tail: $OUT/$name.log)" \
                | tee -a "$OUT/gpu.txt"
            status=1
        fi
        if [ "$LOOP_PARTS" = 1 ]; then
            sed -n '/^Host time per tools/,$p' "$WD/$name.log" > "$OUT/${name}_parts.md"
            cat "$OUT/${name}_parts.md"
        fi
        { grep -E "compile_llm|recompile|Error|out of memory|WARNING" "$WD/$name.log" | head -20 || true
          echo "..."; tail -30 "$WD/$name.log"; } > "$OUT/$name.log"
        table_args+=(--run "$model" "$compiled" "$batch" "$WD/$name")
    done
done

"$PY" bench/gpu/compile_train_table.py "${table_args[@]}" \
    --out-md "$OUT/compile_train.md" --out-json "$OUT/compile_train_rows.json" || status=1
echo "[compile-train] total $(( $(date +%s) - T0 )) s" | tee -a "$OUT/gpu.txt"
exit $status
