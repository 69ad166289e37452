#!/bin/bash
# Injected EIO/ENOSPC/EFBIG at every step of every request type, through the
# real server under an LD_PRELOAD shim (inject.py has the details); a QED
# image without a backing file.
. "$top_srcdir/tests/faults/faults-common.sh"
command -v qemu-io >/dev/null 2>&1 || skip "qemu-io is not installed"
build_shim
"$PYNBD" "$FAULTS_SRC/inject.py" --shim "$SHIM" --dir "$tmp" || fail "injected errors"
