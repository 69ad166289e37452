"""fulldisk.py - a full disk, for real (run by fulldisk.sh and fsize.sh).

usage: fulldisk.py --mode tmpfs --mnt DIR --dir TMPDIR [--aio uring|threads]
       fulldisk.py --mode fsize --dir TMPDIR [--aio uring|threads]

tmpfs: the image lives on a small tmpfs (mounted by fulldisk.sh) next to a
1 MiB filler file.  fsize: the server runs under RLIMIT_FSIZE, so writes past
the limit fail with EFBIG (and raise SIGXFSZ).

  1. allocating writes of assorted sizes (partial clusters, new L2 tables)
     until one fails: it must fail with ENOSPC at the client (EFBIG too must
     arrive as ENOSPC), not EIO and not a dropped connection;
  2. a few more allocating writes: each succeeds or fails with ENOSPC;
  3. the server still serves: in-place overwrites and a flush succeed, and
     everything written so far reads back intact, from a second client too;
  4. space comes back (tmpfs: the filler file is deleted; fsize: the server
     is restarted without the limit): new allocating writes succeed, and so
     does the write that failed first;
  5. after a clean shutdown `qemu-img check` and `qed-img check` find no
     corruption, NEED_CHECK is clear, QEMU reads exactly the expected data,
     and a restarted server serves it too.
"""
import argparse
import errno
import os
import random
import resource
import signal
import sys
import time

# No __pycache__ in the source tree (make distcheck builds from a read-only one).
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib as fl  # noqa: E402
from faultlib import Fail, nbd  # noqa: E402

K = 1024
M = 1024 * K
SIZE = 32 * M
CLUSTER = 4 * K
TABLE = 2              # 4 MiB per L2 table: the fill crosses several
FSIZE_LIMIT = 3 * M    # RLIMIT_FSIZE for --mode fsize


class FullDisk:
    def __init__(self, args):
        self.args = args
        self.dir = os.path.realpath(args.dir)
        self.where = os.path.realpath(args.mnt) if args.mode == "tmpfs" else self.dir
        self.img = os.path.join(self.where, "disk.qed")
        self.filler = os.path.join(self.where, "filler")
        self.sock = os.path.join(self.dir, "nbd.sock")
        self.srvlog = os.path.join(self.dir, "server-%s.log" % args.aio)
        self.content = bytearray(SIZE)
        self.uncertain = []        # (off, old, new): a failed write, either may be there
        self.done = []             # (off, length) of the successful allocating writes
        self.rnd = random.Random(args.seed)
        self.pos = 0

    def limit_fsize(self):
        resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))

    def server(self, limited):
        preexec = self.limit_fsize if limited and self.args.mode == "fsize" else None
        return fl.Server(self.img, self.sock, self.srvlog, ["--aio=" + self.args.aio],
                         preexec=preexec)

    def next_write(self):
        """The next allocating write: 512-aligned, 1 KiB to 64 KiB, mostly
        not cluster-aligned (copy-on-write of zeros), at fresh offsets."""
        length = self.rnd.randrange(2, 129) * 512
        off = self.pos + self.rnd.choice([0, 0, 512, 1536])
        self.pos = off + length + self.rnd.choice([0, 0, 4 * K, 64 * K])
        if off + length > SIZE:
            raise Fail("the image (%d MiB) filled up before the disk did" % (SIZE // M))
        return off, self.rnd.randbytes(length)

    def write(self, h, off, data, what):
        """Write; return 0 or the errno.  Anything but success or ENOSPC fails."""
        try:
            h.pwrite(data, off)
        except nbd.Error as e:
            err = fl.nbd_errno(e)
            if err != errno.ENOSPC:
                raise Fail("%s at %d+%d failed with %s, expected ENOSPC: %s" %
                           (what, off, len(data), fl.errname(err), e))
            self.uncertain.append((off, bytes(self.content[off:off + len(data)]), data))
            return err
        self.content[off:off + len(data)] = data
        self.done.append((off, len(data)))
        return 0

    def check_reads(self, h, what):
        """Everything reads back: exact outside failed writes; inside them,
        every 512-byte sector is the old or the new data."""
        got = bytearray()
        for off in range(0, SIZE, 4 * M):
            got += h.pread(4 * M, off)
        self.compare(bytes(got), what)

    def compare(self, got, what):
        want = bytearray(self.content)
        for off, old, new in self.uncertain:
            for s in range(0, len(new), 512):
                g = got[off + s:off + s + 512]
                if g != old[s:s + 512] and g != new[s:s + 512]:
                    raise Fail("%s: sector at %d (in a failed write at %d) is neither the old "
                               "nor the new data" % (what, off + s, off))
                want[off + s:off + s + 512] = g
        if got != bytes(want):
            i = next(i for i in range(SIZE) if got[i] != want[i])
            raise Fail("%s: data differs at offset %d (got %r, expected %r)" %
                       (what, i, got[i:i + 8], bytes(want[i:i + 8])))

    def settle_uncertain(self, h):
        """Turn failed writes into known content (what the server reads)."""
        for off, old, new in self.uncertain:
            self.content[off:off + len(new)] = h.pread(len(new), off)
        self.uncertain = []

    def run(self):
        mode, aio = self.args.mode, self.args.aio
        for p in (self.img, self.filler):
            if os.path.exists(p):
                os.unlink(p)
        fl.qemu_img_create(self.img, SIZE, CLUSTER, TABLE)
        if mode == "tmpfs":
            with open(self.filler, "wb") as f:
                f.write(b"\xff" * M)
        srv = self.server(limited=True)
        srv.start()
        a = srv.connect()
        t0 = time.monotonic()

        # 1. Fill.
        nwrites = 0
        first_fail = None
        while first_fail is None:
            if time.monotonic() - t0 > 60:
                raise Fail("no ENOSPC after %d writes and 60 s" % nwrites)
            off, data = self.next_write()
            if self.write(a, off, data, "allocating write"):
                first_fail = (off, data)
            else:
                nwrites += 1
            if not srv.alive():
                raise Fail("the server died during the fill (exit %s):\n%s" %
                           (srv.proc.returncode, srv.log_tail()))
        written = first_fail[0]
        fl.log("%s/%s: %d allocating writes succeeded (up to offset %d), then ENOSPC at %d+%d" %
               (mode, aio, nwrites, first_fail[0], first_fail[0], len(first_fail[1])))

        # 2. More allocating writes on the full disk: success or ENOSPC only.
        results = []
        for _ in range(6):
            off, data = self.next_write()
            results.append(self.write(a, off, data, "allocating write on a full disk"))
            if not srv.alive():
                raise Fail("the server died on a full disk (exit %s):\n%s" %
                           (srv.proc.returncode, srv.log_tail()))
        fl.log("%s/%s: then %s" % (mode, aio, ", ".join(fl.errname(e) for e in results)))

        # 3. It still serves: in-place writes, a flush, reads, a second client.
        for _ in range(4):
            # Inside an earlier successful write: its clusters are allocated.
            o, n = self.rnd.choice(self.done)
            off = o + self.rnd.randrange(0, n, 512)
            data = self.rnd.randbytes(min(8 * K, o + n - off))
            try:
                a.pwrite(data, off)
            except nbd.Error as e:
                raise Fail("%s/%s: an in-place write at %d on the full disk failed: %s" %
                           (mode, aio, off, e))
            self.content[off:off + len(data)] = data
        try:
            a.flush()
        except nbd.Error as e:
            raise Fail("%s/%s: a flush on the full disk failed: %s" % (mode, aio, e))
        self.check_reads(a, "%s/%s: reads on the full disk" % (mode, aio))
        b = srv.connect()
        self.check_reads(b, "%s/%s: a second client's reads on the full disk" % (mode, aio))

        # 4. Free space; the server carries on.
        if mode == "tmpfs":
            # First the client frees space itself: a trim punches holes in
            # the image file, and the tmpfs gets those pages back.
            self.settle_uncertain(b)
            t_off, t_len = 1 * M, 1 * M
            old = bytes(self.content[t_off:t_off + t_len])
            try:
                a.trim(t_len, t_off)
            except nbd.Error as e:
                raise Fail("tmpfs/%s: a trim on the full disk failed: %s" % (aio, e))
            got = bytes(a.pread(t_len, t_off))
            for s in range(0, t_len, 512):
                g = got[s:s + 512]
                if g != old[s:s + 512] and g != bytes(512):
                    raise Fail("tmpfs/%s: after a trim, sector %d is neither the old data "
                               "nor zeros" % (aio, t_off + s))
            self.content[t_off:t_off + t_len] = got
            freed = 0
            while freed < 256 * K:
                off, data = self.next_write()
                if self.write(a, off, data, "allocating write after a trim"):
                    raise Fail("tmpfs/%s: an allocating write failed with ENOSPC after a trim "
                               "of 1 MiB (%d bytes written since): the trim freed no space" %
                               (aio, freed))
                freed += len(data)
            fl.log("tmpfs/%s: a 1 MiB trim freed space: %d bytes allocated after it" %
                   (aio, freed))
            os.unlink(self.filler)
        else:
            # RLIMIT_FSIZE cannot be raised for a running process: restart.
            fl.close_handle(a)
            fl.close_handle(b)
            rc = srv.stop(signal.SIGTERM)
            if rc != 0:
                raise Fail("fsize/%s: the server exited %s after SIGTERM:\n%s" %
                           (aio, rc, srv.log_tail()))
            fl.check_image(self.img, "fsize/%s: after the full-disk phase" % aio)
            srv = self.server(limited=False)
            srv.start()
            a = srv.connect()
            b = srv.connect()
        self.settle_uncertain(b)
        off, data = first_fail
        if self.write(a, off, data, "the first failed write, retried"):
            raise Fail("%s/%s: the first failed write still fails with ENOSPC after space "
                       "was freed" % (mode, aio))
        after = 0
        while after < 512 * K:
            off, data = self.next_write()
            if self.write(b, off, data, "allocating write after space was freed"):
                raise Fail("%s/%s: an allocating write at %d failed with ENOSPC after space "
                           "was freed (%d bytes written since)" % (mode, aio, off, after))
            after += len(data)
        self.check_reads(a, "%s/%s: reads after space was freed" % (mode, aio))
        a.flush()
        fl.close_handle(a)
        fl.close_handle(b)
        rc = srv.stop(signal.SIGTERM)
        if rc != 0:
            raise Fail("%s/%s: the server exited %s after SIGTERM:\n%s" %
                       (mode, aio, rc, srv.log_tail()))

        # 5. Clean image, QEMU agrees, a restart serves the same.
        rc1, rc2 = fl.check_image(self.img, "%s/%s: after shutdown" % (mode, aio))
        if fl.header_features(self.img) & 2:
            raise Fail("%s/%s: NEED_CHECK still set after a clean shutdown" % (mode, aio))
        raw = os.path.join(self.dir, "view.raw")
        fl.run(["qemu-img", "convert", "-f", "qed", "-O", "raw", self.img, raw],
               what="qemu-img convert")
        with open(raw, "rb") as f:
            view = f.read()
        os.unlink(raw)
        self.compare(view, "%s/%s: QEMU's view of the image" % (mode, aio))
        srv = self.server(limited=False)
        srv.start()
        h = srv.connect()
        self.check_reads(h, "%s/%s: reads after a restart" % (mode, aio))
        fl.close_handle(h)
        srv.stop(signal.SIGTERM)
        fl.log("ok: %s/%s: %d bytes before ENOSPC, %d after freeing space; qemu-img check %d, "
               "qed-img check %d (%.1f s)" % (mode, aio, written, after, rc1, rc2,
                                               time.monotonic() - t0))
        return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("tmpfs", "fsize"), required=True)
    ap.add_argument("--mnt")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--aio", choices=("uring", "threads"), default="uring")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**31)
    if args.mode == "tmpfs" and not args.mnt:
        ap.error("--mode tmpfs needs --mnt")
    fl.need("qemu-img")
    fl.log("seed %d (replay: --seed %d)" % (args.seed, args.seed))
    if args.aio == "uring" and not fl.uring_available(os.path.realpath(args.dir)):
        fl.log("io_uring unavailable: this run uses the thread pool")
        args.aio = "threads"
    try:
        return FullDisk(args).run()
    except Fail as e:
        fl.log("FAIL: %s" % e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
