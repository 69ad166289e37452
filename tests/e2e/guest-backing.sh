# guest-backing.sh - the guest's part of hypervisor-backing.sh (busybox sh,
# /scenario in the initramfs).  /dev/vda is an overlay served by qednbd whose
# QED backing file holds an ext4 file system the host made; /base.sums has
# the checksums of its files.  The guest reads them through the overlay,
# rewrites part of one file (copy-on-write of partial clusters), deletes
# another, runs the usual write/delete/fstrim churn, checks the file system
# and verifies everything after a remount.
step "mount the backing file's file system"
mount -t ext4 /dev/vda /mnt || die "mount /dev/vda failed"
step "verify the backing file's files"
sha256sum -c /base.sums >/tmp/check.out 2>&1 || {
    cat /tmp/check.out
    die "the backing file's files read back wrong through the overlay"
}
say "E2E-VERIFIED backing $(wc -l </base.sums) files"
step "rewrite part of a file, delete another"
head -c 10000 /dev/urandom >/tmp/patch
dd if=/tmp/patch of=/mnt/os/kernel.bin bs=1 seek=1048699 conv=notrunc 2>/dev/null ||
    die "cannot rewrite /os/kernel.bin"
rm /mnt/data/old || die "cannot delete /data/old"
say "E2E-GONE /data/old"
record /mnt/os/kernel.bin /mnt/os/config.txt /mnt/data/blob
fs_churn
step "umount /dev/vda"
umount /mnt || die "umount /dev/vda failed"
step "e2fsck /dev/vda"
e2fsck -fn /dev/vda || die "e2fsck -fn /dev/vda found problems"
fs_verify /dev/vda
