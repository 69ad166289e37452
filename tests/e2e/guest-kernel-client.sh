# guest-kernel-client.sh - the guest's part of kernel-client.sh (busybox sh,
# /scenario in the initramfs).  The export "disk" is at 10.0.2.100:10809, a
# guestfwd of QEMU's user networking to qednbd's Unix socket on the host.
# Netlink mode with 4 connections for the workload, then a fresh attach in
# ioctl mode (-L) and one in netlink mode with a single connection, each
# verifying every checksum.
net_up
step "nbd-client netlink -C 4"
attach /dev/nbd0 -C 4
fs_workload /dev/nbd0
step "nbd-client -d /dev/nbd0"
nbd-client -d /dev/nbd0 || die "nbd-client -d /dev/nbd0 failed"

step "nbd-client ioctl mode -L"
attach /dev/nbd1 -L
fs_verify /dev/nbd1
nbd-client -d /dev/nbd1 || die "nbd-client -d /dev/nbd1 failed"

step "nbd-client netlink, one connection"
attach /dev/nbd2
fs_verify /dev/nbd2
nbd-client -d /dev/nbd2 || die "nbd-client -d /dev/nbd2 failed"
