#!/bin/bash
# A full disk, for real: the image on an 8 MiB tmpfs next to a 1 MiB filler
# file (fulldisk.py has the details), with both I/O backends, twice each (the
# disk fills at a different point of the allocation each time).  Where no
# tmpfs can be mounted (not root, no mount namespace), RLIMIT_FSIZE stands
# in (fsize.sh always runs that variant).
. "$top_srcdir/tests/faults/faults-common.sh"

mnt="$tmp/mnt"
mkdir "$mnt"
if [ "$(id -u)" -eq 0 ] && mount -t tmpfs -o size=8m qednbd-faults "$mnt" 2>"$tmp/mount.err"; then
    MOUNTED=$mnt
    for aio in uring threads uring threads; do
        rm -f "$mnt"/*
        "$PYNBD" "$FAULTS_SRC/fulldisk.py" --mode tmpfs --mnt "$mnt" --dir "$tmp" --aio "$aio" ||
            fail "full tmpfs with --aio=$aio (seed printed above)"
    done
else
    echo "cannot mount a tmpfs ($(cat "$tmp/mount.err" 2>/dev/null)): using RLIMIT_FSIZE"
    for aio in uring threads; do
        "$PYNBD" "$FAULTS_SRC/fulldisk.py" --mode fsize --dir "$tmp" --aio "$aio" ||
            fail "RLIMIT_FSIZE with --aio=$aio (seed printed above)"
    done
fi
