#!/bin/bash
# Reserved clusters on a full ext4 file system (issue 14: space reservation).
#
# A small ext4 file system in a file, mounted with `mount -o loop` (root
# only; otherwise the test says why and is skipped).  For each I/O backend:
# the image lives there, served with the default --reserve=auto (ext4: on);
# a client writes 4 KiB into several new 64 KiB clusters (sparse writes, so
# each cluster is reserved), another file fills the file system until
# ENOSPC, and then
#   - overwriting the whole of those clusters through NBD succeeds, and a
#     flush too (the clusters were reserved when they were allocated);
#   - writes into new clusters succeed while the reservation made ahead
#     (4 MiB, before the file system filled) covers them, and overwrites of
#     the rest of those clusters too; the next one fails with ENOSPC at the
#     client: not a dropped connection, not EIO; the connection still
#     serves, and the data reads back;
#   - after a clean shutdown, qemu-img check and qed-img check are clean (no
#     corruption, no leak: the cluster that could not be reserved was handed
#     back), and a restarted server reads the same data.
# A last run with --reserve=off shows what the reservation prevents: there
# the same overwrites fail with ENOSPC (at least one must, or the test
# would prove nothing).
. "$top_srcdir/tests/faults/faults-common.sh"

[ "$(id -u)" -eq 0 ] || skip "mounting an ext4 file system in a file needs root"
command -v mkfs.ext4 >/dev/null 2>&1 || skip "mkfs.ext4 is not installed"
mnt="$tmp/mnt"
mkdir "$mnt"
# -m 0: no blocks reserved for root (qednbd runs as root here), so that the
# filler really fills the file system.
mkfs.ext4 -q -F -m 0 -b 4096 "$tmp/fs.img" 24M >"$tmp/mkfs.out" 2>&1 ||
    { cat "$tmp/mkfs.out"; fail "mkfs.ext4"; }
mount -o loop "$tmp/fs.img" "$mnt" 2>"$tmp/mount.err" ||
    skip "cannot mount -o loop: $(cat "$tmp/mount.err")"
MOUNTED=$mnt

cat >"$tmp/driver.py" <<'EOF'
import errno
import os
import sys

sys.path.insert(0, os.environ["FAULTS_SRC"])
import faultlib as fl  # noqa: E402
from faultlib import Fail, nbd  # noqa: E402

K = 1024
CLUSTER = 64 * K
SIZE = 16 * 1024 * K
SPARSE = [2, 4, 6, 8, 10]       # clusters written in part, then overwritten whole
NEW = 20                        # new clusters from here, once the file system is full
AHEAD = 4 * 1024 * K            # RESERVE_AHEAD (lib/engine/request-alloc.c)


def fill(path):
    """Write zeros into @path until ENOSPC (1 MiB, then 4 KiB pieces)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for piece in (1024 * K, 4 * K):
            buf = bytes(piece)
            while True:
                try:
                    os.write(fd, buf)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
        try:
            os.fsync(fd)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    finally:
        os.close(fd)


def pattern(c, gen):
    return bytes([(c * 7 + gen * 31 + i // 512) & 0xff for i in range(CLUSTER)])


def run(mnt, tmp, aio, reserve):
    img = os.path.join(mnt, "disk.qed")
    filler = os.path.join(mnt, "filler")
    for p in (img, filler):
        if os.path.exists(p):
            os.unlink(p)
    fl.qemu_img_create(img, SIZE, cluster=CLUSTER)
    srv = fl.Server(img, os.path.join(tmp, "nbd.sock"), os.path.join(tmp, "server.log"),
                    ["--aio=" + aio, "--reserve=" + reserve])
    srv.start()
    h = srv.connect()
    what = "--aio=%s --reserve=%s" % (aio, reserve)
    h.pwrite(pattern(0, 0), 0)                    # cluster 0 whole: the L2 table
    for c in SPARSE:
        h.pwrite(pattern(c, 0)[8 * K:12 * K], c * CLUSTER + 8 * K)
    h.flush()
    fill(filler)
    st = os.statvfs(mnt)
    fl.log("%s: file system full, %d blocks free" % (what, st.f_bfree))

    failed = []
    for c in SPARSE:
        try:
            h.pwrite(pattern(c, 1), c * CLUSTER)
        except nbd.Error as e:
            failed.append((c, fl.errname(fl.nbd_errno(e))))
    try:
        h.flush()
    except nbd.Error as e:
        failed.append(("flush", fl.errname(fl.nbd_errno(e))))
    if reserve == "off":
        fl.log("%s (control): overwrites that failed on the full file system: %s" %
               (what, failed))
        fl.close_handle(h)
        srv.stop()
        if not failed:
            raise Fail("%s: the control proves nothing: no overwrite failed" % what)
        return
    if failed:
        raise Fail("%s: overwrites of allocated clusters failed: %s" % (what, failed))

    # New clusters: those the reservation ahead covers (taken before the file
    # system filled) succeed, and so do overwrites of the rest of them; past
    # it, a new cluster fails with ENOSPC.
    ok = []
    for c in range(NEW, NEW + AHEAD // CLUSTER + 2):
        try:
            h.pwrite(pattern(c, 0)[8 * K:12 * K], c * CLUSTER + 8 * K)
        except nbd.Error as e:
            if fl.nbd_errno(e) != errno.ENOSPC:
                raise Fail("%s: a new cluster on a full file system: %s, expected ENOSPC (%s)" %
                           (what, fl.errname(fl.nbd_errno(e)), e))
            failed_c = c
            break
        ok.append(c)
    else:
        raise Fail("%s: %d writes into new clusters succeeded on a full file system" %
                   (what, len(ok)))
    if not srv.alive():
        raise Fail("%s: the server died on ENOSPC:\n%s" % (what, srv.log_tail()))
    for c in ok:
        try:
            h.pwrite(pattern(c, 1), c * CLUSTER)
        except nbd.Error as e:
            raise Fail("%s: overwrite of new cluster %d: %s" % (what, c, fl.errname(fl.nbd_errno(e))))
    h.flush()
    fl.log("%s: %d new clusters fitted in the reservation ahead, cluster %d got ENOSPC" %
           (what, len(ok), failed_c))

    def verify(h, when):
        for c in SPARSE + ok:
            if h.pread(CLUSTER, c * CLUSTER) != pattern(c, 1):
                raise Fail("%s: cluster %d reads wrong %s" % (what, c, when))
        if h.pread(CLUSTER, failed_c * CLUSTER) != bytes(CLUSTER):
            raise Fail("%s: the failed cluster does not read as zeros %s" % (what, when))
    verify(h, "after the ENOSPC")
    fl.close_handle(h)
    srv.stop()
    fl.check_image(img, what, allow_leaks=False)
    srv.start()
    h = srv.connect()
    verify(h, "after a restart")
    fl.close_handle(h)
    srv.stop()
    fl.log("%s: overwrites on the full file system succeeded, checks clean" % what)


def main():
    mnt, tmp = sys.argv[1], sys.argv[2]
    aios = ["threads"]
    if fl.uring_available(tmp):
        aios.insert(0, "uring")
    for aio in aios:
        run(mnt, tmp, aio, "auto")
    run(mnt, tmp, aios[0], "off")


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        print("FAIL: %s" % e, file=sys.stderr)
        sys.exit(1)
EOF
FAULTS_SRC="$FAULTS_SRC" "$PYNBD" "$tmp/driver.py" "$mnt" "$tmp" || fail "reserve on a full ext4 (see above)"
