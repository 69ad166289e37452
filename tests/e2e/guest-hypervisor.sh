# guest-hypervisor.sh - the guest's part of hypervisor.sh (busybox sh,
# /scenario in the initramfs).  /dev/vda is a virtio disk that QEMU itself
# serves from the qednbd export (QEMU's NBD client, discard=unmap): the
# same workload as the kernel client's, then a remount that verifies every
# checksum.
[ -b /dev/vda ] || die "no /dev/vda: the virtio disk is missing"
step "discard on /dev/vda"
[ "$(cat /sys/block/vda/queue/discard_max_bytes)" -gt 0 ] ||
    die "/dev/vda does not accept discards (discard_max_bytes is 0)"
fs_workload /dev/vda
fs_verify /dev/vda
