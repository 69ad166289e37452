#!/bin/bash
# Images on tmpfs.  There qednbd runs file I/O of up to 128 KiB on its loop
# thread instead of handing it to io_uring (lib/io/aio.c, "I/O on memory
# files"), a path the other tests, with images in /tmp, do not take.  This
# runs the server tests that check data end to end again with TMPDIR on
# /dev/shm: qemu-io patterns, fio with verification over two connections and
# across a restart, the differential test against qemu-nbd, kill -9 under
# load (every acknowledged write is in the image and it checks clean), and a
# full tmpfs (ENOSPC from writes done on the loop thread).
: "${top_srcdir:?top_srcdir must be set (run through make check)}"
[ -d /dev/shm ] && [ -w /dev/shm ] || { echo "SKIP: no writable /dev/shm"; exit 77; }
[ "$(stat -f -c %T /dev/shm)" = tmpfs ] || { echo "SKIP: /dev/shm is not tmpfs"; exit 77; }
export TMPDIR=/dev/shm QED_AIO_MEMORY=1 QEDNBD_MEMFS_TEST=1
skipped=0
for t in server/nbd-qemu-io.sh server/nbd-fio.sh server/nbd-differential.sh faults/kill9.sh faults/fulldisk.sh; do
    echo "=== $t with TMPDIR=$TMPDIR"
    bash "$top_srcdir/tests/$t"
    rc=$?
    case $rc in
        0) ;;
        77) skipped=$((skipped + 1)) ;;
        *) echo "FAIL: $t failed (exit $rc) with the images on tmpfs"; exit 1 ;;
    esac
done
[ "$skipped" -lt 5 ] || { echo "SKIP: every sub-test skipped"; exit 77; }
echo "all sub-tests passed ($skipped skipped)"
