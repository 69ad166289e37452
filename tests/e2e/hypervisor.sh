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
E2E_IMAGE="$tmp/disk.qed"
run 30 "$QEDIMG" create -c "${E2E_CLUSTER:-64K}" "$E2E_IMAGE" 256M
start_server -e "disk=$E2E_IMAGE"
e2e_initramfs "$tmp/initrd" "$E2E_DIR/guest-hypervisor.sh" \
    crc32c_generic ext4 virtio_pci virtio_blk
e2e_boot "$tmp/initrd" 300 \
    -blockdev "driver=nbd,server.type=unix,server.path=$SERVER_SOCK,export=disk,node-name=n0,discard=unmap" \
    -device virtio-blk-pci,drive=n0
e2e_wait_guest e2e_trim_check
[ "$(e2e_markers | grep -c '^E2E-VERIFIED ')" -eq 1 ] ||
    fail "the guest did not verify its files after the remount"
e2e_server_stats
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "qednbd exited $SERVER_RC on SIGTERM"
e2e_host_verify "$E2E_IMAGE"
echo "PASS: QEMU's NBD client as a virtio disk: ext4, fstrim, checksums"
