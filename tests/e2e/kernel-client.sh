#!/bin/bash
# kernel-client.sh - end to end, the Linux kernel as the NBD client: a
# Debian kernel under qemu-system-x86_64 (TCG) attaches a qednbd export as
# /dev/nbd0 with nbd-client (netlink mode with 4 connections, ioctl mode
# with -L, netlink with one connection), makes an ext4 file system, writes,
# deletes, fstrims, checks it, and verifies every checksum over fresh
# connections (tests/e2e/guest-kernel-client.sh).  The guest reaches the
# server's Unix socket through QEMU user networking with restrict=on and a
# single guestfwd: no packet leaves the host.
#
# On the host afterwards: fstrim gave space back to the image file, the
# server's statistics show no error, qednbd exits 0 on SIGTERM, qed-img and
# qemu-img check the image clean, and qemu-img convert + e2fsck + debugfs
# read back the guest's files with the guest's checksums.
. "$top_srcdir/tests/e2e/e2e-common.sh"

e2e_setup
E2E_IMAGE="$tmp/disk.qed"
run 30 "$QEDIMG" create -c "${E2E_CLUSTER:-64K}" "$E2E_IMAGE" 256M
start_server -e "disk=$E2E_IMAGE"
e2e_initramfs "$tmp/initrd" "$E2E_DIR/guest-kernel-client.sh" \
    crc32c_generic nbd ext4 virtio_pci virtio_net
e2e_boot "$tmp/initrd" 300 \
    -netdev "user,id=net0,restrict=on,guestfwd=tcp:10.0.2.100:10809-cmd:socat - UNIX-CONNECT:$SERVER_SOCK" \
    -device virtio-net-pci,netdev=net0,romfile=
e2e_wait_guest e2e_trim_check
[ "$(e2e_markers | grep -c '^E2E-VERIFIED ')" -eq 2 ] ||
    fail "the guest did not verify its files over both fresh attachments"
e2e_server_stats
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "qednbd exited $SERVER_RC on SIGTERM"
e2e_host_verify "$E2E_IMAGE"
echo "PASS: kernel client (nbd-client netlink -C 4, ioctl -L, netlink): ext4, fstrim, checksums"
