#!/bin/bash
# qemu-io -f raw over nbd+unix:// writes and reads patterns (whole and
# partial clusters, vectored, async and FUA writes, zero writes, discards);
# the same commands run on a raw shadow file; qemu-img compare finds the
# export and the shadow identical, and after SIGTERM the QED file itself
# equals the shadow, qemu-img check finds it clean and NEED_CHECK is clear.
. "$top_srcdir/tests/server/server-common.sh"
need qemu-img qemu-io

M=1048576

# Writes: every command runs on both the export and the shadow.
writes=(
    "write -P 0x11 0 64k"                     # one whole cluster
    "write -P 0x22 66048 1000"                # inside a cluster, unaligned
    "write -P 0x33 130000 200000"             # across clusters, unaligned ends
    "write -P 0x44 1M 3M"                     # many clusters
    "write -z 1536k 256k"                     # zeroes over data
    "write -z 5M 64k"                         # zeroes over a hole
    "write -z 140000 5000"                    # partial zeroes inside data
    "writev -P 0x45 6M 4k 8k 512"             # vectored
    "aio_write -P 0x46 8M 64k"                # several in flight at once
    "aio_write -P 0x47 $((8 * M + 65536)) 64k"
    "aio_write -P 0x48 $((8 * M + 132072)) 7000"
    "aio_flush"
    "write -f -P 0x49 12M 4k"                 # FUA
    "write -P 0x55 63M 1M"                    # the end of the image
    "write -P 0x66 $((64 * M - 512)) 512"     # the last sector
    "flush"
)
# Reads that must match on the export (and hold on the shadow too).
reads=(
    "read -P 0x11 0 64k"
    "read -P 0 65536 512"
    "read -P 0x22 66048 1000"
    "read -P 0 67048 62952"                   # rest of that cluster
    "read -P 0x33 130000 10000"
    "read -P 0 140000 5000"
    "read -P 0x33 145000 185000"
    "read -P 0 330000 3000"                   # hole after a partial write
    "read -P 0x44 1M 512k"
    "read -P 0 1536k 256k"
    "read -P 0x44 1792k 2304k"
    "read -P 0 5M 64k"
    "read -P 0x45 6M 4k"
    "read -P 0x45 $((6 * M + 4096)) 8k"
    "read -P 0x45 $((6 * M + 12288)) 512"
    "read -P 0x46 8M 64k"
    "read -P 0x47 $((8 * M + 65536)) 64k"
    "read -P 0 $((8 * M + 131072)) 1000"
    "read -P 0x48 $((8 * M + 132072)) 7000"
    "read -P 0x49 12M 4k"
    "read -P 0 $((12 * M + 4096)) 60k"
    "read -P 0x55 63M $((M - 512))"
    "read -P 0x66 $((64 * M - 512)) 512"
    "read -P 0 40M 1M"                        # never written
)
# Discards: the discarded ranges read as zeros or their old contents, so
# only their neighbours are checked; then both sides overwrite the ranges.
discards=(
    "write -P 0x77 $((20 * M - 4096)) $((256 * 1024 + 8192))"
    "discard 20M 256k"
    "read -P 0x77 $((20 * M - 4096)) 4k"
    "read -P 0x77 $((20 * M + 256 * 1024)) 4k"
    "write -P 0x78 24M 128k"
    "discard $((24 * M + 1000)) 3000"         # part of a cluster
    "read -P 0x78 24M 1000"
    "read -P 0x78 $((24 * M + 4000)) $((128 * 1024 - 4000))"
    "discard 30M 1M"                          # a hole
    "read -P 0x55 63M 64k"
    "flush"
    "write -z 20M 256k"
    "write -P 0x79 $((24 * M + 1000)) 3000"
    "read -P 0 20M 256k"
    "read -P 0x79 $((24 * M + 1000)) 3000"
)

qemu-img create -q -f raw shadow.raw 64M || fail "qemu-img create shadow.raw"
qemu-img create -q -f qed disk.qed 64M || fail "qemu-img create disk.qed"

qio -f raw shadow.raw -- "${writes[@]}"
qio -f raw shadow.raw -- "${reads[@]}"
qio -f raw shadow.raw -- "${discards[@]}"

start_server disk.qed
uri=$(nbd_uri)
qio -f raw "$uri" -- "${writes[@]}"
qio -f raw "$uri" -- "${reads[@]}"
qio -f raw "$uri" -- "${discards[@]}"
# A second connection sees everything the first one wrote.
qio -f raw "$uri" -- "${reads[@]}"

run 60 qemu-img compare -f raw -F raw "$uri" shadow.raw
run 60 qemu-img compare -f raw -F raw shadow.raw "$uri"

stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC after SIGTERM, expected 0"
image_clean disk.qed
run 60 qemu-img compare -f qed -F raw disk.qed shadow.raw

# Read back through a fresh server, read-only this time.
start_server -r disk.qed
qio -f raw -r "$(nbd_uri)" -- "${reads[@]}"
run 60 qemu-img compare -f raw -F raw "$(nbd_uri)" shadow.raw
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "read-only server exited $SERVER_RC after SIGTERM"
image_clean disk.qed
echo "ok: $SERVER_KIND"
