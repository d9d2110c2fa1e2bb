#!/usr/bin/env bash
# Speed side by side on one GPU box (the `run` tool): the official Sa2VA training step vs the toolkit's.
# Needs, carried with the call (`carry`): bench/official/src (bash bench/official/setup_official.sh, OVERLAY=0
# is enough there) and the wheel kit .whl built for the transformers 4.57 stack (the official sa2va.py imports
# transformers.AutoVideoProcessor, which 4.48 lacks):
#     KIT_TRANSFORMERS=4.57.1 KIT_TOKENIZERS=0.22.1 KIT_HUB=0.36.0 bash ../shared/gpu/fetch_wheels.sh
#     bash bench/gpu/add_deepspeed_wheels.sh      # only for OFFICIAL_STEP=ds
# The official InternViT code imports timm.models.layers.DropPath: the box's timm (1.0.29) is expected to serve
# (not yet run there); if it does not, append timm==1.0.17 (the official pin) to the fetch_wheels.sh call.
# The kit's xtuner 0.2.0 serves the official InternVLMLLM (xtuner/model/internvl.py is AST-identical in
# 0.1.23 and 0.2.0). Neither side has run on a GPU yet; OFFICIAL_STEP=ds (DeepSpeed ZeRO-2) is untested.
#     bash bench/official/speed_side_by_side.sh                 # 1b,4b; official AMP step, its own attention
#     MODELS=1b OFFICIAL_ATTN=sdpa bash bench/official/speed_side_by_side.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f bench/official/src/projects/sa2va/models/sa2va.py ] || { echo "no bench/official/src (carry it)" >&2; exit 1; }
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
OUT=${OUT:-/tmp}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 bench/official/speed_side_by_side.py --models "${MODELS:-1b,4b}" --official-step "${OFFICIAL_STEP:-amp}" \
    --official-attn "${OFFICIAL_ATTN:-auto}" --steps "${STEPS:-10}" --warmup "${WARMUP:-3}" \
    --max-batch "${MAX_BATCH:-64}" --work /tmp/sa2va_side_by_side --json "$OUT/side_by_side.json" "$@"
