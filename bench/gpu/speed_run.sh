#!/usr/bin/env bash
# Issue 19 speed/memory run on ONE GPU, random weights:
#   1. Sa2VA-4B and Sa2VA-1B shapes (bench/gpu/speed_bench.py over bench/harness/speed.py), the rows of
#      $ROWS (speed_bench.py's --rows; the default below is estimated at 3-4 minutes on an H100, not yet measured):
#      - 1B feature-cache batch 32, eager, then with the decoder layers compiled (RunConfig.compile_llm);
#      - 4B reference batch 2, batch 2 + gradient checkpointing + fused AdamW and feature-cache batch 16 with
#        PEFT's frozen embedding / head originals kept (keep_originals=True: the recipe of the last run);
#      - the same and feature-cache batches 24, 32 with only the added tokens' embedding / head rows trained
#        (train_embeddings=new_tokens);
#      - reference, checkpointed and feature-cache batch 24 with the model's default LoRA settings;
#      rows that would start later than BENCH_BUDGET_S seconds after part 1 started are listed as not run;
#      ROWS may also name the Sa2VA-Qwen3-VL-4B shapes (model qwen3vl4b: the Qwen3-VL-4B vision tower and text
#      decoder of _base_/model_sa2va_qwen3vl_4b_random.py with SAM2 Hiera-L, Qwen-VL samples with image_grid_thw),
#      e.g. ROWS="qwen3vl4b:ref,opt16,opt16-compiled": the same columns (samples/s, step ms, peak, LLM ms, LLM MFU)
#      as the InternVL rows; not in the default ROWS;
#   2. Sa2VA-Qwen3-VL-4B shapes through tools/train.py (20 iterations, batch 2, as bench/gpu/qwen3vl_run.sh),
#      default path, then lm_logits='all' as the baseline (skipped when past the time budget).
# Prints the card, then one table per part; everything also lands in $OUT (default ./gpu_out).
#
# On the lent GPU box (kit with the transformers 4.57 stack, see ../shared/gpu/README.md; carry .whl):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD && OUT=$OUT PARTS=bench bash bench/gpu/speed_run.sh
# CPU smoke run of the same script (tiny models, 2 steps, the tiny Qwen3-VL shape's ref and opt rows included;
# the tiny Qwen3-VL demo for one epoch, 10 iterations):
#   SMOKE=1 PY=.venv/bin/python bash bench/gpu/speed_run.sh
# Knobs: PARTS ("bench qwen"), ROWS (speed_bench.py --rows; models 1b, 4b, qwen3vl4b, and on the CPU tiny,
# tinyqwen3vl), STEPS (10), BENCH_BUDGET_S (200 on a GPU), KERNEL_PROFILE (0; 1: speed_bench.py --kernel-profile),
# MODELS / OPT_BATCHES without ROWS: the previous runs' plan (speed_bench.py --models / --opt-batches),
# QWEN_BASELINE (1), BUDGET_S (430 on a GPU, none in SMOKE mode: part-2 runs that would start later than this
# many seconds after the start are skipped, so that one call stays under ~8 minutes).
set -euo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
PY=${PY:-python3}
SMOKE=${SMOKE:-0}
PARTS=${PARTS:-bench qwen}
QWEN_BASELINE=${QWEN_BASELINE:-1}
if [ "$SMOKE" = 1 ]; then BUDGET_S=${BUDGET_S:-1000000}; else BUDGET_S=${BUDGET_S:-430}; fi
WD=${WD:-/tmp/sa2va_speed}
T0=$(date +%s)
C=projects/sa2va/configs

CARD=cpu
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
    CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
fi
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$OUT/gpu.txt"

# --- part 1: InternVL (and, through ROWS, Qwen3-VL) shapes through the benchmark harness -------------------
if [ "$SMOKE" = 1 ]; then
    # the default GPU plan's groups at tiny batches, one with the embedding / head frozen, and the tiny
    # Qwen3-VL shape's reference and feature-cache rows
    ROWS=${ROWS:-"tiny:opt4,opt4-compiled;tiny[keep_originals=True]:ref,ckpt-fused,opt2;tiny[train_embeddings=new_tokens]:ref,ckpt-fused,opt2,opt4;tiny:ref,ckpt-fused,opt4;tiny[train_embeddings=False]:ref,opt4;tinyqwen3vl:ref,opt2"}
    bench_args=(--device cpu --steps 2 --warmup 1 --profile-steps 1 --num-images 4 --workers 0
                --budget-s "${BENCH_BUDGET_S:-1000000}" --rows "$ROWS")
else
    bench_args=(--steps "${STEPS:-10}" --warmup 2 --profile-steps 2 --budget-s "${BENCH_BUDGET_S:-200}")
    if [ "${KERNEL_PROFILE:-0}" = 1 ]; then bench_args+=(--kernel-profile); fi
    if [ -z "${ROWS:-}" ] && [ -n "${MODELS:-}${OPT_BATCHES:-}" ]; then
        # the plan of the previous runs (records/speed_s6): per model ref (+ all), ckpt, ckpt-fused, opt search
        bench_args+=(--models "${MODELS:-4b,1b}" --opt-batches "${OPT_BATCHES:-4b:16,24,32,48;1b:16,32,64,96}")
    else
        ROWS=${ROWS:-"1b:opt32,opt32-compiled;4b[keep_originals=True]:ref,ckpt-fused,opt16;4b[train_embeddings=new_tokens]:ref,ckpt-fused,opt16,opt24,opt32;4b:ref,ckpt-fused,opt24"}
        bench_args+=(--rows "$ROWS")
    fi
fi
status=0
if [[ " $PARTS " == *" bench "* ]]; then
    "$PY" bench/gpu/speed_bench.py "${bench_args[@]}" --out "$OUT/speed_rows.jsonl" 2>&1 \
        | tee "$OUT/speed_bench.log" || status=1
fi

# --- part 2: Sa2VA-Qwen3-VL-4B shapes through the launcher ----------------------------------------------------
if [ "$SMOKE" = 1 ]; then
    qcfg=$C/sa2va_tiny_qwen3vl_demo.py
    qopts=(train_cfg.max_epochs=1)
    qname=qwen3vl_tiny
else
    qcfg=$C/sa2va_qwen3vl_4b_random.py
    qopts=()
    qname=qwen3vl_4b
fi
qruns=()
qwen_run() {  # name lm_logits
    local name=$1 mode=$2 t
    if [ $(( $(date +%s) - T0 )) -gt "$BUDGET_S" ]; then
        echo "[speed] skipped $name: past BUDGET_S=$BUDGET_S s" | tee -a "$OUT/gpu.txt"
        return 0
    fi
    t=$(date +%s)
    if "$PY" tools/train.py "$qcfg" --work-dir "$WD/$name" \
        --cfg-options model.lm_logits="$mode" "${qopts[@]}" > "$OUT/$name.log" 2>&1; then
        echo "[speed] $name: $(( $(date +%s) - t )) s wall" | tee -a "$OUT/gpu.txt"
        qruns+=("$name")
    else
        tail -40 "$OUT/$name.log"; echo "FAILED: $name (log: $OUT/$name.log)"; status=1
    fi
}
if [[ " $PARTS " == *" qwen "* ]]; then
    qwen_run "${qname}_supervised" supervised
    if [ "$QWEN_BASELINE" = 1 ]; then qwen_run "${qname}_all" all; fi
fi

if [ "${#qruns[@]}" -gt 0 ]; then
"$PY" - "$WD" "$OUT" "$CARD" "${qruns[@]}" <<'PYEOF'
import glob
import json
import os
import sys

wd, out, card, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
batch = 2  # _base_/dataset_refseg.py
lines = [
    "| card | run | LM head | records | first loss | last loss | s/iter (last logged window) | samples/s "
    "| peak memory (MiB) |",
    "|---|---|---|---|---|---|---|---|---|",
]
for name in names:
    found = sorted(glob.glob(f"{wd}/{name}/*/vis_data/scalars.json"))
    recs = [json.loads(line) for line in open(found[-1]) if '"loss"' in line] if found else []
    if not recs:
        lines.append(f"| {card} | {name} | | 0 | | | | | |  (no loss records: see {name}.log)")
        continue
    # mmengine logs time and losses as means over its last 10 iterations: the last record of a 20-iteration
    # run covers iterations 11-20, past the warm-up.
    t = recs[-1]["time"]
    mem = max(r.get("memory", 0) for r in recs)
    mode = name.rsplit("_", 1)[-1]
    lines.append(
        f"| {card} | {name} | {mode} | {len(recs)} | {recs[0]['loss']:.3f} | {recs[-1]['loss']:.3f} | {t:.3f} "
        f"| {batch / t:.2f} | {mem} |"
    )
print("\n".join(lines))
with open(os.path.join(out, "qwen3vl_speed.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
PYEOF
fi
echo "[speed] total $(( $(date +%s) - T0 )) s"
exit $status
