#!/usr/bin/env bash
# Add DeepSpeed (the pin of pyproject's `deepspeed` extra) and its small dependencies to the GPU kit in
# ./.whl (after ../shared/gpu/fetch_wheels.sh), so `tools/train.py --deepspeed ...` can run on the lent GPU
# box. DeepSpeed is source-only on PyPI: built here into a pure wheel with DS_BUILD_OPS=0 against the
# project's torch (.venv); its CUDA ops are JIT-compiled on the GPU box when used. About 7 MiB in all.
#   bash bench/gpu/add_deepspeed_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DEST=.whl
[ -d "$DEST" ] || { echo "add_deepspeed_wheels.sh: no $DEST/ (run bash ../shared/gpu/fetch_wheels.sh first)" >&2; exit 1; }
pin=$(grep -oE '"deepspeed==[^"]+"' pyproject.toml | tr -d '"')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps --no-binary :all: "$pin" -d "$tmp"
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation "$tmp"/deepspeed-*.tar.gz -w "$DEST"
# DeepSpeed's requirements that the box does not list (../shared/gpu/README.md), as Python 3.12 wheels.
"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --no-deps -d "$DEST" \
    hjson==3.1.0 py-cpuinfo==9.0.0 msgpack==1.2.4 ninja==1.13.2 nvidia-ml-py==13.615.71 psutil==7.2.2 \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
ls -1 "$DEST" | grep -iE "deepspeed|hjson|cpuinfo|msgpack|ninja|nvidia_ml|psutil|pydantic|annotated|typing_inspection" >>"$DEST/MANIFEST.txt"
du -sh "$DEST"
