#!/bin/bash
# Injected errors outside requests: at every step of an open that checks and
# repairs a dirty image, of the shutdown, and of the timer that clears
# NEED_CHECK; a write held in the shim while its client disconnects or while
# the server gets SIGTERM (inject.py --lifecycle).
. "$top_srcdir/tests/faults/faults-common.sh"
command -v qemu-io >/dev/null 2>&1 || skip "qemu-io is not installed"
build_shim
"$PYNBD" "$FAULTS_SRC/inject.py" --shim "$SHIM" --dir "$tmp" --lifecycle ||
    fail "injected errors in open, shutdown and the clean timer"
