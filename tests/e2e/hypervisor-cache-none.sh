#!/bin/bash
# hypervisor-cache-none.sh - hypervisor.sh's scenario with the image served
# with --cache=none (O_DIRECT, as VM disks usually are): QEMU's NBD client
# gives the export to the guest as a virtio disk, the guest makes, fills,
# trims and checks an ext4 file system, and the host verifies it.  Also
# checks that the server really holds the image with O_DIRECT.
. "$top_srcdir/tests/e2e/e2e-common.sh"

e2e_setup
# O_DIRECT needs a file system that supports it (not tmpfs before Linux 6.6).
dd if=/dev/zero of="$tmp/direct-probe" bs=4096 count=1 oflag=direct status=none 2>/dev/null ||
    skip "the test folder $tmp does not support O_DIRECT"
rm -f "$tmp/direct-probe"
run 30 "$QEDIMG" create -c 64K "$tmp/disk.qed" 256M
e2e_hypervisor "$tmp/disk.qed" "$E2E_DIR/guest-hypervisor.sh" --cache=none
direct=0
for fd in /proc/"$SERVER_PID"/fd/*; do
    [ "$(readlink "$fd")" = "$tmp/disk.qed" ] || continue
    flags=$(awk '/^flags:/ {print $2}' "/proc/$SERVER_PID/fdinfo/${fd##*/}")
    (( 8#$flags & 8#40000 )) && direct=1
done
[ "$direct" = 1 ] || fail "the server does not hold $tmp/disk.qed with O_DIRECT"
note "the image is open with O_DIRECT"
e2e_finish 1
echo "PASS: QEMU's NBD client on a --cache=none export: ext4, fstrim, checksums"
