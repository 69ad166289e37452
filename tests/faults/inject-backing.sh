#!/bin/bash
# Injected errors at every step of every request type, on a QED image over a
# raw backing file: adds the copy-on-write reads and the data flush before
# the L2 update.
. "$top_srcdir/tests/faults/faults-common.sh"
command -v qemu-io >/dev/null 2>&1 || skip "qemu-io is not installed"
build_shim
"$PYNBD" "$FAULTS_SRC/inject.py" --shim "$SHIM" --dir "$tmp" --backing ||
    fail "injected errors with a backing file"
