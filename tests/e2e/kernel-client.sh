#!/bin/bash
# kernel-client.sh - end to end, the Linux kernel as the NBD client: a
# Debian kernel under qemu-system-x86_64 (TCG) attaches a qednbd export as
# /dev/nbd0 with nbd-client (netlink mode with 4 connections, ioctl mode
# with -L, netlink with one connection), makes an ext4 file system, writes,
# deletes, fstrims, checks it, and verifies every checksum over fresh
# connections (tests/e2e/guest-kernel-client.sh).  The guest reaches the
# server's Unix socket through QEMU user networking with restrict=on and a
# single guestfwd: no packet leaves the host.  64 KiB clusters, io_uring
# (the defaults).
#
# On the host afterwards: fstrim gave space back to the image file, the
# server's statistics show no error, qednbd exits 0 on SIGTERM, qed-img and
# qemu-img check the image clean, and qemu-img convert + e2fsck + debugfs
# read back the guest's files with the guest's checksums.
. "$top_srcdir/tests/e2e/e2e-common.sh"

e2e_setup
run 30 "$QEDIMG" create -c 64K "$tmp/disk.qed" 256M
e2e_kernel_client "$tmp/disk.qed"
echo "PASS: kernel client (nbd-client netlink -C 4, ioctl -L, netlink), 64 KiB clusters"
