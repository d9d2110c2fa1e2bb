#!/usr/bin/env bash
# Launch a Sa2VA tool on NGPUS processes per node with torchrun (1 to 8 GPUs; CPU processes use gloo).
#
#   bash tools/dist.sh train CONFIG NGPUS [train.py args...]
#   bash tools/dist.sh test  CONFIG NGPUS [test.py args...]
#
# Several nodes: set on every node NNODES (default 1), NODE_RANK (0..NNODES-1), MASTER_ADDR (the address
# of node 0, default 127.0.0.1) and PORT (default 29500). The exit status is non-zero when any rank fails;
# the failing rank's traceback is printed by torchrun (train.py records it).
set -euo pipefail

usage() { echo "usage: bash tools/dist.sh {train|test} CONFIG NGPUS [args...]" >&2; exit 2; }
[ $# -ge 3 ] || usage
CMD=$1; CONFIG=$2; NGPUS=$3; shift 3
case "$CMD" in train|test) ;; *) echo "dist.sh: unknown command '$CMD'" >&2; usage ;; esac
[[ "$NGPUS" =~ ^[1-9][0-9]*$ ]] || { echo "dist.sh: NGPUS must be a positive integer, got '$NGPUS'" >&2; exit 2; }
[ -f "$CONFIG" ] || { echo "dist.sh: config file '$CONFIG' not found" >&2; exit 2; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
if [ -x "$ROOT/.venv/bin/python" ] && [ -z "${PYTHON:-}" ]; then PY="$ROOT/.venv/bin/python"; fi
SCRIPT="$ROOT/tools/$CMD.py"
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PORT=${PORT:-29500}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if [ "$NNODES" = 1 ] && [ "$NGPUS" = 1 ]; then
    exec "$PY" "$SCRIPT" "$CONFIG" --launcher none "$@"
fi
exec "$PY" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NGPUS" \
    --master_addr="$MASTER_ADDR" --master_port="$PORT" \
    "$SCRIPT" "$CONFIG" --launcher pytorch "$@"
