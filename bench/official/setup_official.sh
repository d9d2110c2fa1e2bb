#!/usr/bin/env bash
# setup_official.sh - put the official Sa2VA training code (bytedance/Sa2VA) into the git-ignored folder
# bench/official/src/ and, unless OVERLAY=0, a package overlay /tmp/official_overlay with the two packages
# the official code needs that the project's .venv lacks (timm 1.0.17, the official pin; xtuner 0.1.23,
# the official pin, installed --no-deps so that it shadows the .venv's xtuner 0.2.0 only for the
# official side). Nothing is installed into .venv; nothing official is copied into tracked files.
#
# Usage (from the checkout root):
#     bash bench/official/setup_official.sh                     # git clone, pinned commit (needs GitHub)
#     bash bench/official/setup_official.sh /path/to/Sa2VA.git  # from a local (bare) mirror at its HEAD
#     OVERLAY=0 bash bench/official/setup_official.sh ...       # source only (e.g. on the GPU box)
# Then: .venv/bin/python bench/official/parity.py
set -euo pipefail

PIN=9832e1a80e74ed513e8072bf882a09bdd80566c4   # bytedance/Sa2VA main, 2025-10-24
DEST=bench/official/src
OVERLAY_DIR=${OVERLAY_DIR:-/tmp/official_overlay}
PY=${PY:-.venv/bin/python}
# Only the code the training model needs: the repository's media files are not read.
PATHS=(projects third_parts vlm LICENSE pyproject.toml)

die() { echo "setup_official.sh: ERROR: $*" >&2; exit 1; }
[ -f projects/sa2va/__init__.py ] && [ -d bench/official ] || die "run from the checkout root"

rm -rf "$DEST"
mkdir -p "$DEST"
if [ $# -ge 1 ]; then
    mirror=$1
    git --git-dir="$mirror" rev-parse --verify -q HEAD >/dev/null || die "$mirror is not a git directory"
    commit=$(git --git-dir="$mirror" rev-parse HEAD)
    git --git-dir="$mirror" archive HEAD "${PATHS[@]}" | tar -x -C "$DEST"
else
    tmp=$(mktemp -d)
    git clone -q --filter=blob:none --no-checkout https://github.com/bytedance/Sa2VA "$tmp/Sa2VA"
    git -C "$tmp/Sa2VA" checkout -q "$PIN" -- "${PATHS[@]}"
    commit=$PIN
    (cd "$tmp/Sa2VA" && tar -c "${PATHS[@]}") | tar -x -C "$DEST"
    rm -rf "$tmp"
fi
[ "$commit" = "$PIN" ] || echo "note: source is at $commit, not the pinned $PIN"
echo "$commit" >"$DEST/COMMIT"
[ -f "$DEST/projects/sa2va/models/sa2va.py" ] || die "no projects/sa2va/models/sa2va.py in the official source"
echo "official source at $DEST (commit $commit)"

if [ "${OVERLAY:-1}" = 1 ]; then
    rm -rf "$OVERLAY_DIR"
    # xtuner 0.1.23 declares Requires-Python <3.11 although the official pyproject pairs it with 3.11.
    "$PY" -m pip install -q --no-deps --no-compile --ignore-requires-python --target "$OVERLAY_DIR" \
        timm==1.0.17 xtuner==0.1.23
    echo "overlay at $OVERLAY_DIR: $(ls "$OVERLAY_DIR" | grep -E '^(timm|xtuner)-' | tr '\n' ' ')"
fi
