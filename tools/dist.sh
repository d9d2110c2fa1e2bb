#!/usr/bin/env bash
# Launch a Sa2VA tool on NGPUS processes per node with torchrun (1 to 8 GPUs; CPU processes use gloo).
#
#   bash tools/dist.sh train CONFIG NGPUS [train.py args...]
#   bash tools/dist.sh test  CONFIG NGPUS [test.py args...]
#
# Several nodes: set on every node NNODES (default 1), NODE_RANK (0..NNODES-1), MASTER_ADDR (the address
# of node 0, default 127.0.0.1) and PORT (default 29500); the work dir must be on a shared file system
# for --resume auto. The exit status is non-zero when any rank fails; torchrun's report is followed by a
# short summary naming the rank that failed first and its error (from the per-rank error files that
# train.py's @record writes under DIST_LOG_DIR, default a temporary directory removed on success).
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
[ -f "$SCRIPT" ] || { echo "dist.sh: $SCRIPT not found" >&2; exit 2; }
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PORT=${PORT:-29500}
[[ "$NNODES" =~ ^[1-9][0-9]*$ ]] || { echo "dist.sh: NNODES must be a positive integer, got '$NNODES'" >&2; exit 2; }
[[ "$NODE_RANK" =~ ^[0-9]+$ ]] && [ "$NODE_RANK" -lt "$NNODES" ] || {
    echo "dist.sh: NODE_RANK must be in 0..$((NNODES - 1)), got '$NODE_RANK'" >&2; exit 2; }
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}

if [ "$NNODES" = 1 ] && [ "$NGPUS" = 1 ]; then
    exec "$PY" "$SCRIPT" "$CONFIG" --launcher none "$@"
fi

KEEP_LOG_DIR=${DIST_LOG_DIR:+1}
LOG_DIR=${DIST_LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/sa2va_dist.XXXXXX")}
"$PY" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NGPUS" \
    --master_addr="$MASTER_ADDR" --master_port="$PORT" --log-dir="$LOG_DIR" \
    "$SCRIPT" "$CONFIG" --launcher pytorch "$@" &
CHILD=$!
# Forward termination to torchrun (it stops its workers); `wait` returns early on a trapped signal.
trap 'kill -TERM "$CHILD" 2>/dev/null || true' TERM INT HUP
RC=0
while true; do
    wait "$CHILD" && RC=0 || RC=$?
    kill -0 "$CHILD" 2>/dev/null || break
done
trap - TERM INT HUP
if [ "$RC" -ne 0 ]; then
    "$PY" -m projects.sa2va.engine.dist_report "$LOG_DIR" --node-rank "$NODE_RANK" --nproc-per-node "$NGPUS" || true
    echo "dist.sh: exit status $RC (node $NODE_RANK of $NNODES; per-rank error files in $LOG_DIR)" >&2
elif [ -z "$KEEP_LOG_DIR" ]; then
    rm -rf "$LOG_DIR"
fi
exit "$RC"
