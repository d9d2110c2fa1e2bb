#!/usr/bin/env bash
# Create .venv and install the toolkit with its exact pins (idempotent; ~3 min on a fresh machine).
#   bash tools/setup.sh            # or: make setup
# Order matters: torch first, then sam2 built against it without CUDA extensions (the PyPI
# release is source-only), then the project itself in editable mode with the dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
STAMP="$VENV/.installed-$(sha256sum pyproject.toml tools/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ]; then
    exit 0
fi
command -v "$PY" >/dev/null || { echo "setup.sh: $PY not found (Python 3.11 or 3.12 is needed; set PYTHON=...)" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -U pip setuptools wheel
torch_pin=$(grep -oE '"torch==[^"]+"' pyproject.toml | tr -d '"')
tv_pin=$(grep -oE '"torchvision==[^"]+"' pyproject.toml | tr -d '"')
sam2_pin=$(grep -oE '"sam2==[^"]+"' pyproject.toml | tr -d '"')
"${PIP[@]}" install "$torch_pin" "$tv_pin"
SAM2_BUILD_CUDA=0 SAM2_BUILD_ALLOW_ERRORS=1 "${PIP[@]}" install --no-build-isolation "$sam2_pin"
"${PIP[@]}" install -e ".[dev]"
# The optional DeepSpeed extra, for tests/engine/test_deepspeed.py (xtuner's --deepspeed path on CPU, ZeRO
# stage 0): a pure-Python build against the installed torch (no CUDA ops; they are JIT-compiled on GPUs).
ds_pin=$(grep -oE '"deepspeed==[^"]+"' pyproject.toml | tr -d '"')
DS_BUILD_OPS=0 "${PIP[@]}" install --no-build-isolation "$ds_pin"
# xtuner 0.2.0 pins bitsandbytes==0.45.0, which cannot be imported beside the triton that torch 2.14
# needs (`triton.ops` is gone), and peft imports bitsandbytes whenever it is installed. Nothing here
# uses it (no 8-bit/QLoRA), so it is removed; the GPU kit leaves it out for the same reason.
"$VENV/bin/python" -m pip --disable-pip-version-check -q uninstall -y bitsandbytes
rm -f "$VENV"/.installed-*
touch "$STAMP"
echo "setup.sh: environment ready in $VENV"
