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
# Packages installed without their own pins ([tool.sa2va.setup] no-deps in pyproject.toml: xtuner 0.2.0,
# whose transformers==4.48.0 pin would downgrade the one transformers stack every family uses).
mapfile -t nodeps < <("$VENV/bin/python" -c 'import tomllib; [print(p) for p in tomllib.load(open("pyproject.toml", "rb"))["tool"]["sa2va"]["setup"]["no-deps"]]')
"${PIP[@]}" install --no-deps "${nodeps[@]}"
# The optional DeepSpeed extra, for tests/engine/test_deepspeed.py (xtuner's --deepspeed path on CPU, ZeRO
# stage 0): a pure-Python build against the installed torch (no CUDA ops; they are JIT-compiled on GPUs).
ds_pin=$(grep -oE '"deepspeed==[^"]+"' pyproject.toml | tr -d '"')
DS_BUILD_OPS=0 "${PIP[@]}" install --no-build-isolation "$ds_pin"
# bitsandbytes 0.45.0 (which an older .venv got through xtuner's pins) cannot be imported beside the
# triton that torch 2.14 needs (`triton.ops` is gone), and peft imports bitsandbytes whenever it is
# installed. Nothing here uses it (no 8-bit/QLoRA): make sure it is absent.
"$VENV/bin/python" -m pip --disable-pip-version-check -q uninstall -y bitsandbytes 2>/dev/null || true
"$VENV/bin/python" -m pip --disable-pip-version-check check 2>&1 | grep -v -i "xtuner" || true
rm -f "$VENV"/.installed-*
touch "$STAMP"
echo "setup.sh: environment ready in $VENV"
