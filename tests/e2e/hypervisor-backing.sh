#!/bin/bash
# hypervisor-backing.sh - hypervisor.sh's scenario on an overlay: the host
# makes an ext4 file system with known files (mke2fs -d), converts it to a
# QED image with 4 KiB clusters, and creates a 64 KiB-cluster overlay on it
# (qed-img create -b); qednbd serves the overlay to QEMU's NBD client.  The
# guest verifies the backing file's files, rewrites part of one, deletes
# another, then writes, deletes and fstrims as usual
# (tests/e2e/guest-backing.sh).  Afterwards the backing file is unchanged,
# and the overlay checks clean and reads back (with its backing file) with
# the guest's checksums.
. "$top_srcdir/tests/e2e/e2e-common.sh"

e2e_setup
need mke2fs
base="$tmp/base-files"
mkdir -p "$base/os" "$base/data" "$tmp/guest-files"
head -c $((4 * 1024 * 1024)) /dev/urandom >"$base/os/kernel.bin"
echo "root=/dev/vda console=ttyS0" >"$base/os/config.txt"
head -c $((2 * 1024 * 1024 + 777)) /dev/urandom >"$base/data/blob"
head -c $((3 * 1024 * 1024)) /dev/urandom >"$base/data/old"
(cd "$base" && sha256sum os/kernel.bin os/config.txt data/blob data/old) |
    sed 's|  |  /mnt/|' >"$tmp/guest-files/base.sums"
run 60 mke2fs -q -F -t ext4 -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 \
    -d "$base" "$tmp/base.raw" 256M
run 60 qemu-img convert -f raw -O qed -o cluster_size=4096 "$tmp/base.raw" "$tmp/base.qed"
rm -f "$tmp/base.raw"
base_sum=$(sha256sum "$tmp/base.qed" | cut -d' ' -f1)
run 30 "$QEDIMG" create -c 64K -b base.qed -F qed "$tmp/overlay.qed"

E2E_GUEST_FILES="$tmp/guest-files"
e2e_hypervisor "$tmp/overlay.qed" "$E2E_DIR/guest-backing.sh"
e2e_finish 2
[ "$(sha256sum "$tmp/base.qed" | cut -d' ' -f1)" = "$base_sum" ] ||
    fail "the backing file changed while qednbd served the overlay"
echo "PASS: QEMU's NBD client on an overlay over a QED backing file"
