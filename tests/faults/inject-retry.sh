#!/bin/bash
# Not errors: EINTR at every call of every request type, and short reads and
# writes (once, and from some call on, every time).  The library must retry
# or continue: every request succeeds with the right data (inject.py --retry).
. "$top_srcdir/tests/faults/faults-common.sh"
command -v qemu-io >/dev/null 2>&1 || skip "qemu-io is not installed"
build_shim
"$PYNBD" "$FAULTS_SRC/inject.py" --shim "$SHIM" --dir "$tmp" --retry ||
    fail "EINTR and short transfers"
