# guest-kernel-client.sh - the guest's part of kernel-client.sh (busybox sh,
# /scenario in the initramfs).  The export "disk" is at 10.0.2.100:10809, a
# guestfwd of QEMU's user networking to qednbd's Unix socket on the host.
# Netlink mode with 4 connections for the workload, then a fresh attach in
# ioctl mode (-L) and one in netlink mode with a single connection, each
# verifying every checksum.
net_up
step "nbd-client netlink -C 4"
nbd-client 10.0.2.100 10809 /dev/nbd0 -N disk -b 4096 -C 4 || die "nbd-client -C 4 failed"
fs_workload /dev/nbd0
step "nbd-client -d /dev/nbd0"
nbd-client -d /dev/nbd0 || die "nbd-client -d /dev/nbd0 failed"

step "nbd-client ioctl mode -L"
nbd-client 10.0.2.100 10809 /dev/nbd1 -N disk -b 4096 -L || die "nbd-client -L failed"
fs_verify /dev/nbd1
nbd-client -d /dev/nbd1 || die "nbd-client -d /dev/nbd1 failed"

step "nbd-client netlink, one connection"
nbd-client 10.0.2.100 10809 /dev/nbd2 -N disk -b 4096 || die "nbd-client failed"
fs_verify /dev/nbd2
nbd-client -d /dev/nbd2 || die "nbd-client -d /dev/nbd2 failed"
