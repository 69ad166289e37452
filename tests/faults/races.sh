#!/bin/bash
# A write into a cluster whose allocation is still updating its L2 (or L1)
# entry: the shim holds that metadata write, then fails it or the server is
# killed.  An acknowledged (and flushed) write must never be lost (races.py
# has the details).  With and without a backing file.
. "$top_srcdir/tests/faults/faults-common.sh"
command -v qemu-io >/dev/null 2>&1 || skip "qemu-io is not installed"
build_shim
mkdir "$tmp/plain" "$tmp/backing"
"$PYNBD" "$FAULTS_SRC/races.py" --shim "$SHIM" --dir "$tmp/plain" || fail "races"
"$PYNBD" "$FAULTS_SRC/races.py" --shim "$SHIM" --dir "$tmp/backing" --backing ||
    fail "races with a backing file"
