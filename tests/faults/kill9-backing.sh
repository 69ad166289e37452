#!/bin/bash
# kill -9 of the real server under load, 20 times, on a QED image over a raw
# backing file (copy-on-write from the backing file on every partial cluster).
. "$top_srcdir/tests/faults/faults-common.sh"

"$PYNBD" "$FAULTS_SRC/kill9.py" --dir "$tmp" --backing --rounds 20 --budget 30 \
    ${KILL9_SEED:+--seed "$KILL9_SEED"} ||
    fail "kill -9 rounds with a backing file (seed printed above; KILL9_SEED=N replays it)"
