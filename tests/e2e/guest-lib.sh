# guest-lib.sh - helpers for the guest's scenarios (busybox sh, in the
# initramfs as /guest-lib.sh; sourced by /init).  Not run on the host.
#
#   say LINE            a marker: on the console and on the marker port ttyS2
#   step NAME           say "E2E-STEP NAME" (the host shows the last one on failure)
#   die MESSAGE         say "E2E-FAIL: MESSAGE" and fail
#   wait_host TAG       say "E2E-WAIT TAG", block until the host answers "go TAG"
#   net_up              eth0 at 10.0.2.15/24 (QEMU user networking)
#   attach DEV ARGS...  nbd-client ARGS... DEV, wait until DEV is usable
#   fs_churn            write, delete, fstrim, write more, on /mnt
#   fs_workload DEV     mkfs.ext4 DEV, mount, fs_churn, unmount, e2fsck
#   fs_verify DEV       mount DEV read-only, verify every recorded checksum

MARKS=/dev/ttyS2
# ttyS1 stays open from the start: a tty drops what arrives while no one has
# it open, and the host may answer before the guest's read begins.
exec 3</dev/ttyS1
stty -F /dev/ttyS1 -echo

say() {
    echo "$*"
    echo "$*" >"$MARKS"
}

step() {
    echo "$1" >/tmp/step
    say "E2E-STEP $1"
}

die() {
    say "E2E-FAIL: $*"
    exit 1
}

wait_host() {
    local line
    say "E2E-WAIT $1"
    read -r line <&3 || die "no answer from the host on ttyS1 at '$1'"
    [ "$line" = "go $1" ] || die "at '$1' the host answered '$line'"
}

net_up() {
    ip link set lo up &&
        ip link set eth0 up &&
        ip addr add 10.0.2.15/24 dev eth0 || die "cannot configure eth0"
}

# attach DEV NBD-CLIENT-ARGS... - nbd-client NBD-CLIENT-ARGS... DEV (the
# export "disk" at 10.0.2.100:10809, 4 KiB blocks), then wait (30 s at most)
# until DEV has its size and block size.  Why wait: in ioctl mode (-L)
# nbd-client returns while its child has yet to start the device
# (NBD_DO_IT), and a mount in that window reads a device of size 0 or with
# the old block size ("getblk(): invalid block size").
attach() {
    local dev=$1 name=${1#/dev/} i=0
    shift
    # /nbd-client.args: more options from the host (TLS).
    nbd-client 10.0.2.100 10809 "$dev" -N disk -b 4096 "$@" $(cat /nbd-client.args 2>/dev/null) ||
        die "nbd-client $* $dev failed"
    while [ "$(cat /sys/block/$name/size)" = 0 ] ||
        [ "$(cat /sys/block/$name/queue/logical_block_size)" != 4096 ]; do
        i=$((i + 1))
        [ "$i" -le 300 ] || die "$dev did not get its size within 30 s of nbd-client $*"
        usleep 100000
    done
}

# mkdata FILE MIB [EXTRA] - FILE with MIB MiB (plus EXTRA bytes) of random data.
mkdata() {
    dd if=/dev/urandom of="$1" bs=1M count="$2" iflag=fullblock 2>/dev/null ||
        die "cannot write $1"
    if [ -n "${3:-}" ]; then
        head -c "$3" /dev/urandom >>"$1" || die "cannot append to $1"
    fi
}

# record FILE... - remember each FILE's checksum (in /tmp/sums, by its path
# inside the file system) and report it as "E2E-FILE /PATH SHA256".
record() {
    local f sum
    for f in "$@"; do
        sum=$(sha256sum "$f" | cut -d' ' -f1) || die "sha256sum $f"
        echo "$sum  $f" >>/tmp/sums
        say "E2E-FILE ${f#/mnt} $sum"
    done
}

# fs_churn - on the file system mounted at /mnt: write files with known
# checksums, sync (the host measures the image: "written"), delete 16 MiB
# of them, fstrim (the host measures again: "trimmed"), write more.
fs_churn() {
    local i
    mkdir -p /mnt/keep /mnt/gone/sub
    step "write"
    mkdata /mnt/keep/a 3
    mkdata /mnt/keep/b 1 4321
    echo "qednbd end-to-end" >/mnt/keep/hello.txt
    mkdata /mnt/gone/big1 8
    mkdata /mnt/gone/sub/big2 8
    record /mnt/keep/a /mnt/keep/b /mnt/keep/hello.txt
    sync
    wait_host written
    step "delete and fstrim"
    rm -r /mnt/gone || die "rm failed"
    say "E2E-GONE /gone/big1"
    say "E2E-GONE /gone/sub/big2"
    sync
    fstrim -v /mnt || die "fstrim /mnt failed"
    sync
    wait_host trimmed
    step "write more"
    mkdata /mnt/keep/c 2 17
    mkdir -p /mnt/keep/many
    for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do
        head -c $((i * 1000)) /dev/urandom >/mnt/keep/many/f$i || die "write f$i"
    done
    record /mnt/keep/c /mnt/keep/many/f*
}

# fs_workload DEV - mkfs.ext4, mount, fs_churn, unmount, e2fsck -fn.
fs_workload() {
    local dev=$1
    step "mkfs $dev"
    # Inode tables and journal zeroed now (with WRITE_ZEROES), not by a
    # background thread that would write while the host measures the image.
    mkfs.ext4 -q -F -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 "$dev" ||
        die "mkfs.ext4 $dev failed"
    step "mount $dev"
    mount -t ext4 "$dev" /mnt || die "mount $dev failed"
    fs_churn
    step "umount $dev"
    umount /mnt || die "umount $dev failed"
    step "e2fsck $dev"
    e2fsck -fn "$dev" || die "e2fsck -fn $dev found problems"
}

# fs_verify DEV - mount DEV, check every checksum recorded by fs_workload,
# and that the deleted directory is gone; unmount; e2fsck -fn.
fs_verify() {
    local dev=$1
    step "verify $dev"
    mount -t ext4 -o ro "$dev" /mnt || die "mount -o ro $dev failed"
    [ ! -e /mnt/gone ] || die "/gone came back on $dev"
    sha256sum -c /tmp/sums >/tmp/check.out 2>&1 || {
        cat /tmp/check.out
        die "checksums differ on $dev"
    }
    say "E2E-VERIFIED $dev $(wc -l </tmp/sums) files"
    umount /mnt || die "umount $dev failed"
    e2fsck -fn "$dev" || die "e2fsck -fn $dev found problems"
}
