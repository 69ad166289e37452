#!/bin/bash
# kill -9 of the real server under load, 20 times, on a QED image without a
# backing file (kill9.py has the details).  First two short runs damage one
# acknowledged block behind the server's back and must be caught: they
# prove that the verification can fail.
. "$top_srcdir/tests/faults/faults-common.sh"

for mode in garbage zero; do
    mkdir "$tmp/self-$mode"
    "$PYNBD" "$FAULTS_SRC/kill9.py" --dir "$tmp/self-$mode" --rounds 2 --no-fio \
        --budget 2 --self-check "$mode" || fail "self-check '$mode' of the verification"
done
mkdir "$tmp/run"
"$PYNBD" "$FAULTS_SRC/kill9.py" --dir "$tmp/run" --rounds 20 --budget 30 ${KILL9_SEED:+--seed "$KILL9_SEED"} ||
    fail "kill -9 rounds (seed printed above; KILL9_SEED=N replays it)"
