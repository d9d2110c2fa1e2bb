#!/usr/bin/env bash
# Speed side by side on one GPU box (the `run` tool): the official Sa2VA training step vs the toolkit's.
# Needs, carried with the call (`carry`):
#   - bench/official/src: bash bench/official/setup_official.sh (the official source at its pinned commit);
#   - the package overlay that script writes to /tmp/official_overlay (xtuner 0.1.23 and timm 1.0.17, the
#     official pins), copied into the checkout as .official_overlay (git-ignored):
#         cp -r /tmp/official_overlay .official_overlay
#   - the wheel kit .whl with the transformers 4.57 stack (the official sa2va.py imports
#     transformers.AutoVideoProcessor, which 4.48 lacks) and DeepSpeed (xtuner 0.1.23's xtuner.utils imports
#     deepspeed at import time, so the official side needs it even for its AMP step):
#         KIT_TRANSFORMERS=4.57.1 KIT_TOKENIZERS=0.22.1 KIT_HUB=0.36.0 KIT_PEFT=1 bash ../shared/gpu/fetch_wheels.sh
#         bash bench/gpu/add_deepspeed_wheels.sh
# Usage:
#     bash bench/official/speed_side_by_side.sh                 # 1b,4b; official AMP step, its own attention
#     MODELS=1b OFFICIAL_ATTN=sdpa bash bench/official/speed_side_by_side.sh
# Knobs: MODELS (1b,4b), OFFICIAL_STEP (amp|ds), OFFICIAL_ATTN (auto|sdpa), STEPS (10), WARMUP (3),
# FIRST_BATCH (2: the sweep's first batch, then doubling), MAX_BATCH (64), REFINE (8: after an out-of-memory
# batch, bisect over multiples of 8; 0: doubling only), SIDE_TIMEOUT (seconds per side and model, 3600),
# BUDGET (seconds for the whole run: later sides are skipped, none by default), OVERLAY (.official_overlay
# when present, else /tmp/official_overlay),
# INSTALL_KIT (1: install .whl into /tmp/site when present), PY (python3), WORK (/tmp/sa2va_side_by_side).
# Everything lands in $OUT: side_by_side.json, side_by_side.txt (the table), side_logs.tar.gz (each side's log).
# CPU smoke run (tiny shapes): INSTALL_KIT=0 PY=.venv/bin/python STEPS=1 WARMUP=1 MAX_BATCH=2 \
#     bash bench/official/speed_side_by_side.sh --tiny
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f bench/official/src/projects/sa2va/models/sa2va.py ] || { echo "no bench/official/src (carry it)" >&2; exit 1; }
if [ -d .whl ] && [ "${INSTALL_KIT:-1}" = 1 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
OUT=${OUT:-/tmp}
OVERLAY=${OVERLAY:-}
if [ -z "$OVERLAY" ]; then
    if [ -d .official_overlay ]; then OVERLAY=$PWD/.official_overlay; else OVERLAY=/tmp/official_overlay; fi
fi
WORK=${WORK:-/tmp/sa2va_side_by_side}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
rc=0
"${PY:-python3}" bench/official/speed_side_by_side.py --models "${MODELS:-1b,4b}" --official-step "${OFFICIAL_STEP:-amp}" \
    --official-attn "${OFFICIAL_ATTN:-auto}" --steps "${STEPS:-10}" --warmup "${WARMUP:-3}" \
    --first-batch "${FIRST_BATCH:-2}" --max-batch "${MAX_BATCH:-64}" --refine "${REFINE:-8}" --timeout "${SIDE_TIMEOUT:-3600}" ${BUDGET:+--budget "$BUDGET"} --overlay "$OVERLAY" --work "$WORK" \
    --json "$OUT/side_by_side.json" "$@" 2>&1 | tee "$OUT/side_by_side.txt" || rc=$?
# Each side's own log (the official model's build messages, OOM traces) beside the table.
(cd "$WORK" && tar -czf "$OUT/side_logs.tar.gz" --exclude='*.pt' --exclude='*.safetensors' --exclude=pg \
    --exclude=internvl_folder --exclude=pretrained . ) || true
exit $rc
