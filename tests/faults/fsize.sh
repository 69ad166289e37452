#!/bin/bash
# A full disk through RLIMIT_FSIZE: writes past the limit fail with EFBIG
# (and raise SIGXFSZ); the client must get ENOSPC and the server must live.
# Both I/O backends.
. "$top_srcdir/tests/faults/faults-common.sh"

for aio in uring threads; do
    "$PYNBD" "$FAULTS_SRC/fulldisk.py" --mode fsize --dir "$tmp" --aio "$aio" ||
        fail "RLIMIT_FSIZE with --aio=$aio (seed printed above)"
done
