#!/bin/bash
# A second SIGTERM while the shutdown flushes the image (the shim holds that
# flush): the server must still close the image (flush, clear NEED_CHECK)
# and exit 0, not die of the signal half-way (inject.py --second-signal).
. "$top_srcdir/tests/faults/faults-common.sh"
command -v qemu-io >/dev/null 2>&1 || skip "qemu-io is not installed"
build_shim
"$PYNBD" "$FAULTS_SRC/inject.py" --shim "$SHIM" --dir "$tmp" --second-signal ||
    fail "a second SIGTERM during the shutdown"
