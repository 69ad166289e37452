#!/bin/bash
# hypervisor.sh - end to end, QEMU as the hypervisor: qemu-system-x86_64's
# own NBD client opens a qednbd export on a Unix socket
# (-blockdev driver=nbd,server.type=unix,...,discard=unmap) and gives it to
# a Debian guest (TCG) as a virtio disk.  The guest makes an ext4 file system
# on /dev/vda, writes, deletes, fstrims, checks it and verifies every
# checksum after a remount (tests/e2e/guest-hypervisor.sh).
#
# On the host afterwards, as in kernel-client.sh: fstrim gave space back to
# the image file, the server's statistics show no error, qednbd exits 0 on
# SIGTERM, the image checks clean, and the host reads the guest's files
# back with the guest's checksums.
. "$top_srcdir/tests/e2e/e2e-common.sh"

e2e_setup
run 30 "$QEDIMG" create -c 64K "$tmp/disk.qed" 256M
e2e_hypervisor "$tmp/disk.qed" "$E2E_DIR/guest-hypervisor.sh"
e2e_finish 1
echo "PASS: QEMU's NBD client as a virtio disk: ext4, fstrim, checksums"
