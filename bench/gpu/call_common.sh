# Shared by the bench/gpu/s*_call*.sh call scripts (sourced): the time left of DEADLINE_S since T0, a part's
# budget capped by it, and the wheel kit installed to /tmp/site when the checkout carries .whl.
left() { echo $(( DEADLINE_S - ($(date +%s) - T0) )); }
cap() { local a=$1 b; b=$(left); if [ "$a" -lt "$b" ]; then echo "$a"; else echo "$b"; fi; }
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
fi
