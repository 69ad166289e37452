# guest-fault.sh - the guest's part of kernel-fault.sh (busybox sh,
# /scenario in the initramfs).  Writes and syncs files, then keeps writing
# (dd conv=fsync in a loop, each file recorded once its fsync returned)
# while the host kills the server with SIGKILL: the writer must get an I/O
# error.  After the host restarted the server,
# a fresh attach must show every file synced before the kill, intact, and
# a clean file system after the journal replay.
net_up
step "attach and write"
# -t 10: without a timeout, the kernel waits forever for the requests that
# were in flight when the connection died (it logs "Possible stuck
# request" and re-arms the timer), and the writer would hang, not fail.
attach /dev/nbd0 -t 10
mkfs.ext4 -q -F -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 /dev/nbd0 ||
    die "mkfs.ext4 /dev/nbd0 failed"
mount -t ext4 /dev/nbd0 /mnt || die "mount /dev/nbd0 failed"
mkdir -p /mnt/keep /mnt/w
mkdata /mnt/keep/a 4
mkdata /mnt/keep/b 1 999
record /mnt/keep/a /mnt/keep/b
sync
step "write while the server is killed"
(
    i=0
    while dd if=/dev/urandom of=/mnt/w/$i bs=64K count=16 conv=fsync 2>/tmp/dd.err; do
        record /mnt/w/$i # synced: it must survive the kill
        echo "$i" >/tmp/writer.progress
        i=$((i + 1))
    done
    echo "$i: $(cat /tmp/dd.err)" >/tmp/writer.err
) &
writer=$!
i=0
until [ -s /tmp/writer.progress ]; do
    i=$((i + 1))
    [ "$i" -le 300 ] || die "the writer wrote nothing in 30 s"
    usleep 100000
done
wait_host kill
# The writer must stop by itself, with an error (60 s at most).
i=0
while kill -0 "$writer" 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -le 600 ] || die "the writer kept writing 60 s after the server was killed"
    usleep 100000
done
[ -s /tmp/writer.err ] || die "the writer stopped without an error"
say "E2E-IOERR $(cat /tmp/writer.err)"
step "detach the dead device"
umount /mnt 2>/dev/null || umount -l /mnt || die "cannot unmount /mnt"
nbd-client -d /dev/nbd0 2>/dev/null
wait_host restart
step "attach the restarted server"
attach /dev/nbd1
mount -t ext4 /dev/nbd1 /mnt || die "mount after the restart failed (journal replay)"
sha256sum -c /tmp/sums >/tmp/check.out 2>&1 || {
    cat /tmp/check.out
    die "files synced before the kill differ after the restart"
}
say "E2E-VERIFIED /dev/nbd1 $(wc -l </tmp/sums) files synced before the kill"
fstrim /mnt || die "fstrim failed after the restart"
umount /mnt || die "umount /dev/nbd1 failed"
e2fsck -fn /dev/nbd1 || die "e2fsck -fn /dev/nbd1 found problems after the restart"
nbd-client -d /dev/nbd1 || die "nbd-client -d /dev/nbd1 failed"
