"""inject.py - injected I/O errors at every step of every request type,
through the real server (run by inject*.sh).

usage: inject.py --shim failio.so --dir TMPDIR [--backing] [--cases REGEX]
                 [--retry | --crash | --lifecycle]

qednbd runs with --aio=threads under the failio.so LD_PRELOAD shim, which
fails (or delays, or shortens) the Nth file I/O call (preadv/pwritev/pread/
pwrite/fdatasync/fsync/fallocate) on the image and the backing file while a
control file exists.  The request types: reads (allocated, unallocated,
through the backing file), writes (in place, allocating, allocating a new L2
table, both in one request, FUA), write-zeroes (in place, whole unallocated
clusters, a partial cluster, a new table, NO_HOLE, FUA), trim and flush.

Default mode: for every request type and every N from 0 up, until the
request makes fewer than N+1 calls, one round:

  1. a fresh copy of the template image; the server starts (disarmed);
     clients A and B connect;
  2. the shim is armed to fail call N with EIO (any kind of call), with
     ENOSPC (write, sync and punch calls), EFBIG (one case), or every call
     from N on with EIO (a disk that dies); A sends the request;
  3. the client must get the mapped NBD error: EIO for EIO, ENOSPC for
     ENOSPC and EFBIG -- and success when no call failed (a READ may
     recover: its block-status step falls back to plain data);
  4. disarmed: the server still serves A and B and a third client (reads of
     known data, a new allocating write, in-place writes); B reads the range
     of the failed request and finds, in every 512-byte sector, the old or
     the new data, nothing else;
  5. the request is retried and must succeed with the right result;
  6. SIGTERM: the server exits 0 and clears NEED_CHECK; `qemu-img check` and
     `qed-img check` report no corruption (leaks allowed); QEMU's reading of
     the image (qemu-img convert) equals the expected content exactly.

--retry: EINTR, or short reads and writes, instead of errors: every request
  must succeed with the right data.
--crash: call N is held (not failed) and the server is killed (SIGKILL)
  while it is pending; the image must check clean, reopen with repair and
  hold the old or the new data in the request's range, the old data
  elsewhere.
--lifecycle: failures outside requests: every call of an open that checks
  and repairs a dirty image, of the shutdown, of the timer that clears
  NEED_CHECK; a held write whose client disconnects or whose server gets
  SIGTERM.
--second-signal: a second SIGTERM while the shutdown flushes the image.
"""
import argparse
import errno
import gc
import os
import random
import re
import shutil
import signal
import sys
import time

# No __pycache__ in the source tree (make distcheck builds from a read-only one).
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib as fl  # noqa: E402
from faultlib import Fail, nbd  # noqa: E402

K = 1024
M = 1024 * 1024
SIZE = 16 * M
CLUSTER = 4 * K
SECTOR = 512
BACKING_SIZE = 12 * M      # shorter than the image: the tail reads as zeros
FOLLOW_OFF = 14 * M + 4 * K  # follow-up allocating write: an empty L1 entry


# A sanitizer build of qednbd refuses a preloaded library before its runtime
# unless told that this is fine.
ASAN = ":".join(x for x in (os.environ.get("ASAN_OPTIONS", ""), "verify_asan_link_order=0") if x)


def pattern(name, n):
    return random.Random(name).randbytes(n)


class Case:
    """One request type.  kind: read, write, zero, trim, flush."""

    def __init__(self, name, kind, off=0, length=0, flags=0, backing_only=False,
                 nobacking_only=False):
        self.name = name
        self.kind = kind
        self.off = off
        self.length = length
        self.flags = flags
        self.backing_only = backing_only
        self.nobacking_only = nobacking_only
        self.data = pattern("data:" + name, length) if kind == "write" else None

    def write_like(self):
        return self.kind in ("write", "zero", "trim", "flush")


FUA = 1  # nbd.CMD_FLAG_FUA; set after the import check below
NO_HOLE = 2

CASES = [
    # Layout of the template (4 KiB clusters, table_size 2: 4 MiB per L2
    # table; QEMU refuses table_size 1 with 4 KiB clusters):
    #   [0, 64K) data 0x11 (table 0), [4M, 4M+16K) data 0x22 (table 1),
    #   table 0 otherwise unallocated, L1 entries from 8M on empty; the
    #   backing file (if any) ends at 12M.
    Case("read-data", "read", 0, 16 * K),
    Case("read-unallocated", "read", 1 * M, 8 * K),
    Case("read-no-table", "read", 10 * M, 8 * K, backing_only=True),
    Case("read-past-backing", "read", 13 * M, 8 * K, backing_only=True),
    Case("write-in-place", "write", 4 * K, 8 * K),
    Case("write-alloc", "write", 1 * M + 1 * K, 6 * K),
    Case("write-alloc-new-table", "write", 8 * M + 1 * K, 6 * K),
    Case("write-in-place-and-alloc", "write", 60 * K, 12 * K),
    Case("write-fua-in-place", "write", 4 * K, 8 * K, FUA),
    Case("write-fua-alloc-new-table", "write", 8 * M + 1 * K, 6 * K, FUA),
    Case("zero-in-place", "zero", 8 * K, 8 * K),
    Case("zero-unallocated-clusters", "zero", 1 * M + 64 * K, 8 * K),
    Case("zero-partial-cluster", "zero", 1 * M + 128 * K + 1 * K, 2 * K),
    Case("zero-new-table", "zero", 12 * M, 8 * K),
    Case("zero-no-hole", "zero", 1 * M + 192 * K, 8 * K, NO_HOLE),
    Case("zero-fua-in-place", "zero", 8 * K, 8 * K, FUA),
    Case("trim", "trim", 16 * K, 8 * K),
    Case("flush", "flush"),
]


class Runner:
    def __init__(self, args):
        self.args = args
        self.dir = os.path.realpath(args.dir)
        self.shim = os.path.realpath(args.shim)
        self.backing = os.path.join(self.dir, "backing.raw") if args.backing else None
        self.template = os.path.join(self.dir, "template.qed")
        self.img = os.path.join(self.dir, "img.qed")
        self.ctl = os.path.join(self.dir, "failio.ctl")
        self.iolog = os.path.join(self.dir, "failio.log")
        self.srvlog = os.path.join(self.dir, "server.log")
        self.sock = os.path.join(self.dir, "nbd.sock")
        self.rounds = 0
        self.failures = []
        self.seen_steps = {}
        self.recovered = []
        self.notes = []

    # ---- the template and the expected content ----

    def make_template(self):
        base = bytearray(SIZE)
        if self.backing:
            bdata = pattern("backing", BACKING_SIZE)
            with open(self.backing, "wb") as f:
                f.write(bdata)
            base[0:BACKING_SIZE] = bdata
            fl.qemu_img_create(self.template, SIZE, CLUSTER, 2, backing=self.backing)
        else:
            fl.qemu_img_create(self.template, SIZE, CLUSTER, 2)
        fl.run(["qemu-io", "-f", "qed", "-c", "write -P 0x11 0 64k",
                "-c", "write -P 0x22 4M 16k", self.template], what="fill the template")
        base[0:64 * K] = b"\x11" * (64 * K)
        base[4 * M:4 * M + 16 * K] = b"\x22" * (16 * K)
        fl.check_image(self.template, "template", allow_leaks=False)
        self.base = bytes(base)

    def new_content(self, case, old):
        """The expected bytes of the case's range after it succeeded."""
        if case.kind == "write":
            return case.data
        if case.kind == "zero":
            return bytes(case.length)
        if case.kind == "trim":
            return bytes(case.length)  # qednbd punches whole clusters: zeros
        return old

    # ---- shim control ----

    def arm(self, ops, nth, err, count, delay=0):
        tmp = self.ctl + ".tmp"
        with open(tmp, "w") as f:
            f.write("ops=%s\nnth=%d\ncount=%d\nerrno=%s\ndelay=%d\n" %
                    (ops, nth, count or 0, err, delay))
        if os.path.exists(self.iolog):
            os.unlink(self.iolog)
        # rename: the shim sees a new inode and restarts its count at 0.
        os.rename(tmp, self.ctl)

    def disarm(self):
        if os.path.exists(self.ctl):
            os.unlink(self.ctl)
        try:
            with open(self.iolog) as f:
                lines = [ln.split() for ln in f.read().splitlines()]
        except FileNotFoundError:
            lines = []
        return lines

    # ---- requests ----

    @staticmethod
    def do(h, case):
        """Run case on handle h; return (errno, data-or-None)."""
        try:
            if case.kind == "read":
                return 0, bytes(h.pread(case.length, case.off))
            if case.kind == "write":
                h.pwrite(case.data, case.off, case.flags)
            elif case.kind == "zero":
                h.zero(case.length, case.off, case.flags)
            elif case.kind == "trim":
                h.trim(case.length, case.off, case.flags)
            elif case.kind == "flush":
                h.flush()
            return 0, None
        except nbd.Error as e:
            return fl.nbd_errno(e) or -1, str(e)

    def expect_bytes(self, got, want, what):
        if got != want:
            i = next(i for i in range(min(len(got), len(want))) if got[i] != want[i]) \
                if len(got) == len(want) else 0
            raise Fail("%s: data differs (first at +%d: got %r, expected %r)" %
                       (what, i, got[i:i + 8], want[i:i + 8]))

    def old_or_new(self, got, old, new, what):
        for s in range(0, len(got), SECTOR):
            g = got[s:s + SECTOR]
            if g != old[s:s + SECTOR] and g != new[s:s + SECTOR]:
                raise Fail("%s: sector at +%d is neither the old nor the new data (%r...)" %
                           (what, s, g[:16]))

    # ---- one round ----

    def round(self, case, ops, err, nth, count):
        """Return True when call nth failed (the enumeration goes on)."""
        self.rounds += 1
        self.last_hit = False
        label = "%s %s%s nth=%d" % (case.name, err, " from-then-on" if count == 0 else "", nth)
        shutil.copyfile(self.template, self.img)
        content = bytearray(self.base)
        srv = self.server()
        if os.path.exists(self.ctl):
            os.unlink(self.ctl)
        srv.start()
        a = b = None
        try:
            a = srv.connect()
            b = srv.connect()
            self.arm(ops, nth, err, count)
            got_err, res = self.do(a, case)
            calls = self.disarm()
            injected = [c for c in calls if c[5] in ("FAIL", "SHORT")]
            self.last_hit = bool(injected)
            # EINTR and short transfers are not errors: the library must
            # retry or continue, and the request must succeed.
            benign = err in ("EINTR", "short")
            want_err = {"EIO": errno.EIO, "ENOSPC": errno.ENOSPC, "EFBIG": errno.ENOSPC,
                        "EINTR": 0, "short": 0}[err]
            rng = slice(case.off, case.off + case.length)
            old = bytes(content[rng])
            new = self.new_content(case, old)
            if injected:
                step = "%s %s @%s+%s" % (injected[0][1], os.path.basename(injected[0][2]),
                                         injected[0][3], injected[0][4])
                self.seen_steps.setdefault((case.name, err, count), []).append(step)
                if benign:
                    if got_err:
                        raise Fail("%s: %s in call %s made the request fail with %s (%s)" %
                                   (label, err, step, fl.errname(got_err), res))
                    if case.kind == "read":
                        self.expect_bytes(res, old, label + ": read result")
                elif got_err == 0 and case.kind == "read":
                    # A structured READ runs a block-status step first and
                    # falls back to sending data when it fails; the L2 table
                    # is then loaded again.  Success is right if the data is.
                    self.expect_bytes(res, old, label + ": read result after a recovered failure")
                    self.recovered.append(label + " (" + step + ")")
                elif (got_err == 0 and err == "ENOSPC" and len(injected) == 1 and
                      injected[0][1] == "fallocate" and int(injected[0][4]) > CLUSTER):
                    # A reservation ahead (4 MiB, lib/engine/request-alloc.c)
                    # that did not fit: the run reserves just its own
                    # clusters and succeeds.  B's read below checks the data.
                    self.recovered.append(label + " (" + step + ")")
                elif got_err != want_err:
                    raise Fail("%s: failed call %s: the client got %s, expected %s%s" %
                               (label, step, fl.errname(got_err), fl.errname(want_err),
                                " (%s)" % res if got_err else ""))
            else:
                if got_err:
                    raise Fail("%s: no call failed (%d calls) but the client got %s: %s" %
                               (label, len(calls), fl.errname(got_err), res))
                if case.kind == "read":
                    self.expect_bytes(res, old, label + ": read result")
            if not srv.alive():
                raise Fail("%s: the server died:\n%s" % (label, srv.log_tail()))

            # What the range holds now: B must see, sector by sector, the old
            # or the new data after a failure, the new data after a success.
            if case.length:
                cur = bytes(b.pread(case.length, case.off))
                if (injected and not benign) or case.kind == "trim":
                    self.old_or_new(cur, old, new, label + ": B reads the request's range")
                else:
                    self.expect_bytes(cur, new, label + ": B reads the request's range")
                content[rng] = cur

            # A failed flush is latched: the rest of this round is different.
            latched = not benign and any(c[1] in ("fdatasync", "fsync") for c in injected)
            if latched:
                self.expect_latched(srv, a, b, content, label)
            else:
                # The server goes on serving both clients.
                self.expect_bytes(bytes(a.pread(16 * K, 4 * M)),
                                  bytes(content[4 * M:4 * M + 16 * K]),
                                  label + ": A reads table 1 afterwards")
                fdata = pattern("follow", 8 * K)
                a.pwrite(fdata, FOLLOW_OFF)
                content[FOLLOW_OFF:FOLLOW_OFF + 8 * K] = fdata
                self.expect_bytes(bytes(b.pread(8 * K, FOLLOW_OFF)), fdata,
                                  label + ": B reads A's new allocating write")
                idata = pattern("inplace-b", 4 * K)
                b.pwrite(idata, 32 * K)
                content[32 * K:36 * K] = idata
                self.expect_bytes(bytes(a.pread(64 * K, 0)), bytes(content[0:64 * K]),
                                  label + ": A reads table 0 data")
                c = srv.connect()  # a third client, connected after the failure
                self.expect_bytes(bytes(c.pread(16 * K, 4 * M)),
                                  bytes(content[4 * M:4 * M + 16 * K]), label + ": C reads")
                fl.close_handle(c)

                # The same request again, nothing failing: it must succeed.
                got_err, res = self.do(a, case)
                if got_err:
                    raise Fail("%s: the retry without failure got %s: %s" %
                               (label, fl.errname(got_err), res))
                if case.kind == "read":
                    self.expect_bytes(res, old, label + ": retried read")
                if case.length:
                    content[rng] = new
                    self.expect_bytes(bytes(b.pread(case.length, case.off)), new,
                                      label + ": B reads the retried range")
        finally:
            if os.path.exists(self.ctl):
                os.unlink(self.ctl)
            fl.close_handle(a)
            fl.close_handle(b)
            if srv.alive():
                rc = srv.stop(signal.SIGTERM)
            else:
                rc = "dead"
        if latched:
            self.expect_latched_exit(srv, rc, content, label)
            return bool(injected)
        if rc != 0:
            raise Fail("%s: server exit status %s after SIGTERM:\n%s" % (label, rc,
                                                                         srv.log_tail()))
        fl.check_image(self.img, label)
        if fl.header_features(self.img) & 2:
            raise Fail("%s: NEED_CHECK still set after a clean shutdown" % label)
        self.expect_qemu_view(content, label)
        return bool(injected)

    # ---- after a failed flush (the latch, qednbd(8) CRASH SAFETY) ----

    def expect_latched(self, srv, a, b, content, label):
        """A failed fdatasync is not forgotten: FLUSH and FUA fail with EIO on
        every connection (the kernel would report the lost write-back only
        once, so the next fdatasync succeeds); reads go on."""
        flush = Case("flush", "flush")
        for name, h in (("A", a), ("B", b), ("A again", a)):
            got_err, res = self.do(h, flush)
            if got_err != errno.EIO:
                raise Fail("%s: after the failed flush, %s's FLUSH got %s, expected EIO" %
                           (label, name, fl.errname(got_err)))
        # A FUA write of the bytes already there (the model stays right).
        here = bytes(b.pread(4 * K, 0))
        self.expect_bytes(here, bytes(content[0:4 * K]), label + ": B reads table 0 data")
        try:
            b.pwrite(here, 0, FUA)
            raise Fail("%s: a FUA write after the failed flush succeeded" % label)
        except nbd.Error as e:
            if fl.nbd_errno(e) != errno.EIO:
                raise Fail("%s: a FUA write after the failed flush: %s" % (label, e))
        c = srv.connect()  # a third client, connected after the failure
        try:
            self.expect_bytes(bytes(c.pread(16 * K, 4 * M)),
                              bytes(content[4 * M:4 * M + 16 * K]), label + ": C reads")
            got_err, res = self.do(c, flush)
            if got_err != errno.EIO:
                raise Fail("%s: a new client's FLUSH got %s, expected EIO" %
                           (label, fl.errname(got_err)))
        finally:
            fl.close_handle(c)
        # The statistics show it (SIGUSR1).
        srv.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while "flush_failed=1" not in self.run_log():
            if time.monotonic() > deadline:
                raise Fail("%s: no flush_failed=1 in the statistics:\n%s" %
                           (label, srv.log_tail()))
            time.sleep(0.02)

    def run_log(self):
        """The server log of the latest server start."""
        with open(self.srvlog, "rb") as f:
            return f.read().decode(errors="replace").split("\n+ ")[-1]

    def expect_latched_exit(self, srv, rc, content, label, learn=None):
        """The shutdown of a failed image exits 1, leaves NEED_CHECK on disk
        and said once in the log why; a restart checks the image and serves
        the content, and its clean shutdown clears NEED_CHECK."""
        if rc != 1:
            raise Fail("%s: exit status %s after a failed flush, expected 1:\n%s" %
                       (label, rc, srv.log_tail()))
        if not fl.header_features(self.img) & 2:
            raise Fail("%s: NEED_CHECK is not set after a failed flush and SIGTERM" % label)
        n = self.run_log().count("from now on every flush")
        if n != 1:
            raise Fail("%s: the latched flush failure is logged %d times, expected once" %
                       (label, n))
        fl.check_image(self.img, label)
        srv2 = fl.Server(self.img, self.sock, self.srvlog, ["--aio=threads"])
        srv2.start()
        h = srv2.connect()
        try:
            got = bytes(h.pread(SIZE, 0))
            if learn:
                # A request that failed under the latch: old or new data.
                rng = slice(learn[0], learn[0] + len(learn[1]))
                self.old_or_new(got[rng], bytes(content[rng]), learn[1],
                                label + ": the failed request's range after a restart")
                content[rng] = got[rng]
            self.expect_bytes(got, bytes(content), label + ": the image after a restart")
            h.flush()
        finally:
            fl.close_handle(h)
        rc2 = srv2.stop(signal.SIGTERM)
        if rc2 != 0:
            raise Fail("%s: the restarted server exited %s" % (label, rc2))
        if fl.header_features(self.img) & 2:
            raise Fail("%s: NEED_CHECK still set after the restarted server's shutdown" % label)
        self.expect_qemu_view(content, label)

    def expect_qemu_view(self, content, label):
        """QEMU's reading of the image (qemu-img convert) equals content."""
        raw = os.path.join(self.dir, "img.raw")
        fl.run(["qemu-img", "convert", "-f", "qed", "-O", "raw", self.img, raw],
               what=label + ": qemu-img convert")
        with open(raw, "rb") as f:
            qemu_view = f.read()
        os.unlink(raw)
        self.expect_bytes(qemu_view, bytes(content), label + ": QEMU's view of the image")

    def server(self, extra_env=None):
        """A server on a fresh copy of the template, under the shim."""
        paths = self.img + ("," + self.backing if self.backing else "")
        env = {"LD_PRELOAD": self.shim, "FAILIO_PATH": paths, "FAILIO_CTL": self.ctl,
               "FAILIO_LOG": self.iolog, "ASAN_OPTIONS": ASAN}
        if extra_env:
            env.update(extra_env)
        return fl.Server(self.img, self.sock, self.srvlog, ["--aio=threads"], env=env)

    # ---- crash (kill -9) while one call of a request is pending ----

    def send_async(self, h, case):
        """Send case on h without waiting; return (cookie, buffer)."""
        if case.kind == "write":
            buf = nbd.Buffer.from_bytearray(bytearray(case.data))
            return h.aio_pwrite(buf, case.off, flags=case.flags), buf
        if case.kind == "zero":
            return h.aio_zero(case.length, case.off, flags=case.flags), None
        if case.kind == "trim":
            return h.aio_trim(case.length, case.off, flags=case.flags), None
        if case.kind == "flush":
            return h.aio_flush(), None
        raise Fail("send_async: %s" % case.kind)

    def crash_round(self, case, nth):
        """Hold call nth of the request and kill -9 the server while it is
        pending.  Return True when call nth was reached."""
        self.rounds += 1
        label = "%s crash at nth=%d" % (case.name, nth)
        shutil.copyfile(self.template, self.img)
        content = bytearray(self.base)
        srv = self.server()
        if os.path.exists(self.ctl):
            os.unlink(self.ctl)
        srv.start()
        a = srv.connect()
        held = None
        try:
            self.arm("all", nth, "none", 1, delay=60000)
            cookie, buf = self.send_async(a, case)
            deadline = time.monotonic() + 10
            done = False
            while time.monotonic() < deadline and held is None and not done:
                a.poll(20)
                try:
                    done = a.aio_command_completed(cookie)
                except nbd.Error as e:
                    raise Fail("%s: the request failed without any failure injected: %s" %
                               (label, e))
                if os.path.exists(self.iolog):
                    with open(self.iolog) as f:
                        for ln in f.read().splitlines():
                            c = ln.split()
                            if c[5] == "HOLD":
                                held = c
            if held is None and not done:
                raise Fail("%s: the request neither finished nor reached call %d in 10 s" %
                           (label, nth))
            if held is None:
                # Call nth never came: the request is done; the enumeration ends.
                self.disarm()
                fl.close_handle(a)
                rc = srv.stop(signal.SIGTERM)
                if rc != 0:
                    raise Fail("%s: server exit status %s" % (label, rc))
                return False
            rc = srv.kill9()
        finally:
            if srv.alive():
                srv.kill9()
            fl.close_handle(a)
            self.disarm()
        step = "%s %s @%s+%s" % (held[1], os.path.basename(held[2]), held[3], held[4])
        self.seen_steps.setdefault((case.name, "crash", 0), []).append(step)
        label += " (%s)" % step
        fl.check_image(self.img, label + ": after the kill")
        # Restart: NEED_CHECK makes the library check and repair.
        srv2 = fl.Server(self.img, self.sock, self.srvlog, ["--aio=threads"])
        srv2.start()
        h = srv2.connect()
        try:
            got = bytes(h.pread(SIZE, 0))
        finally:
            fl.close_handle(h)
        rc = srv2.stop(signal.SIGTERM)
        if rc != 0:
            raise Fail("%s: the restarted server exited %s" % (label, rc))
        if case.length:
            rng = slice(case.off, case.off + case.length)
            old = bytes(content[rng])
            self.old_or_new(got[rng], old, self.new_content(case, old),
                            label + ": the request's range after the restart")
            content[rng] = got[rng]
        self.expect_bytes(got, bytes(content), label + ": the image after the restart")
        fl.check_image(self.img, label + ": after the restart")
        if fl.header_features(self.img) & 2:
            raise Fail("%s: NEED_CHECK still set after the restarted server's clean shutdown" %
                       label)
        self.expect_qemu_view(content, label)
        return True

    def crash_all(self):
        self.make_template()
        t0 = time.monotonic()
        for case in CASES:
            if case.backing_only and not self.backing:
                continue
            if not case.write_like():
                continue
            if self.args.cases and not re.search(self.args.cases, case.name):
                continue
            n = 0
            for nth in range(0, 40):
                try:
                    if not self.crash_round(case, nth):
                        break
                except Fail as e:
                    self.failures.append(str(e))
                    fl.log("FAIL: %s" % e)
                n += 1
            fl.log("%-26s crash at %2d steps: %s" % (case.name, n, "; ".join(
                self.seen_steps.get((case.name, "crash", 0), []))))
            if n == 0:
                self.failures.append("%s: no call was held at nth=0 (is the shim loaded?)" %
                                     case.name)
        return self.finish(t0)

    # ---- lifecycle: the NEED_CHECK clean timer, close, open with repair ----

    def alloc_write(self, h, content, off, name):
        data = pattern(name, 8 * K)
        h.pwrite(data, off)
        content[off:off + len(data)] = data

    def lifecycle_clean(self):
        """The timer that clears NEED_CHECK ~5 s after the last allocation:
        fail its flush, then its header write.  The server must carry on.
        After a failed header write a clean shutdown must still leave the
        image clean.  A failed flush is latched: FLUSH fails from then on
        (so does an allocation that needs a flush), NEED_CHECK is never
        cleared, the shutdown exits 1, and a restart checks the image and
        serves every write."""
        for nth in range(0, 8):
            label = "clean-timer EIO nth=%d" % nth
            self.rounds += 1
            shutil.copyfile(self.template, self.img)
            content = bytearray(self.base)
            srv = self.server()
            if os.path.exists(self.ctl):
                os.unlink(self.ctl)
            srv.start()
            a = srv.connect()
            try:
                self.alloc_write(a, content, 1 * M, "clean-1")
                if self.backing is None and not fl.header_features(self.img) & 2:
                    raise Fail("%s: NEED_CHECK not set on disk after an allocating write" % label)
                self.arm("all", nth, "EIO", 1)
                # The clean runs after 5 s of allocation quiet; give it 9 s.
                deadline = time.monotonic() + 9
                calls = []
                while time.monotonic() < deadline:
                    time.sleep(0.25)
                    if not fl.header_features(self.img) & 2 and self.backing is None:
                        break
                    if os.path.exists(self.iolog):
                        with open(self.iolog) as f:
                            if "FAIL" in f.read():
                                break
                time.sleep(0.3)
                calls = self.disarm()
                injected = [c for c in calls if c[5] == "FAIL"]
                fl.log("%s: calls while armed: %s" % (label, "; ".join(
                    "%s %s@%s+%s %s" % (c[1], os.path.basename(c[2]), c[3], c[4], c[5])
                    for c in calls) or "none"))
                if not srv.alive():
                    raise Fail("%s: the server died:\n%s" % (label, srv.log_tail()))
                if not injected and self.backing is None and fl.header_features(self.img) & 2:
                    raise Fail("%s: the clean timer did not clear NEED_CHECK within 9 s" % label)
                latched = any(c[1] in ("fdatasync", "fsync") for c in injected)
                # Second write: into a new table, which needs a flush (rule 4),
                # or, after a failed flush, into table 0 under the durable
                # NEED_CHECK, which needs none.
                off2 = 1 * M + 64 * K if latched else 9 * M
                self.alloc_write(a, content, off2, "clean-2")
                b = srv.connect()
                self.expect_bytes(bytes(b.pread(8 * K, 1 * M)), bytes(content[1 * M:1 * M + 8 * K]),
                                  label + ": B reads the first write")
                self.expect_bytes(bytes(b.pread(8 * K, off2)), bytes(content[off2:off2 + 8 * K]),
                                  label + ": B reads the second write")
                if latched:
                    for name, h, what in (("A", a, "flush"), ("B", b, "flush"),
                                          ("A", a, "new-table write")):
                        try:
                            if what == "flush":
                                h.flush()
                            else:
                                h.pwrite(pattern("clean-3", 8 * K), 9 * M)
                            raise Fail("%s: %s's %s succeeded after the clean's flush failed" %
                                       (label, name, what))
                        except nbd.Error as e:
                            if fl.nbd_errno(e) != errno.EIO:
                                raise Fail("%s: %s's %s: %s" % (label, name, what, e))
                fl.close_handle(b)
            finally:
                fl.close_handle(a)
                rc = srv.stop(signal.SIGTERM) if srv.alive() else "dead"
            if latched:
                # The failed new-table write left 9M old or new: learn which.
                self.expect_latched_exit(srv, rc, content, label,
                                         learn=(9 * M, pattern("clean-3", 8 * K)))
                continue
            if rc != 0:
                raise Fail("%s: server exit status %s after SIGTERM:\n%s" %
                           (label, rc, srv.log_tail()))
            fl.check_image(self.img, label)
            if fl.header_features(self.img) & 2:
                raise Fail("%s: NEED_CHECK still set after a clean shutdown" % label)
            self.expect_qemu_view(content, label)
            if not injected:
                return nth
        raise Fail("clean-timer: still failing calls at nth=7")

    def lifecycle_close(self):
        """Fail each call of the shutdown (flush, header write, flush), once
        and for good.  The server must exit (without a crash); the image
        must keep NEED_CHECK when the shutdown could not finish, pass the
        checks, and open again (with repair) with every write intact."""
        results = []
        for count in (1, 0):
            for nth in range(0, 8):
                label = "close EIO%s nth=%d" % (" sticky" if count == 0 else "", nth)
                self.rounds += 1
                shutil.copyfile(self.template, self.img)
                content = bytearray(self.base)
                srv = self.server()
                if os.path.exists(self.ctl):
                    os.unlink(self.ctl)
                srv.start()
                a = srv.connect()
                try:
                    self.alloc_write(a, content, 1 * M, "close-1")
                    self.alloc_write(a, content, 9 * M, "close-2")
                finally:
                    fl.close_handle(a)
                self.arm("all", nth, "EIO", count)
                rc = srv.stop(signal.SIGTERM)
                calls = self.disarm()
                injected = [c for c in calls if c[5] == "FAIL"]
                feats = fl.header_features(self.img)
                results.append("%s: exit %s, NEED_CHECK %s, calls: %s" % (
                    label, rc, "set" if feats & 2 else "clear", "; ".join(
                        "%s %s@%s+%s %s" % (c[1], os.path.basename(c[2]), c[3], c[4], c[5])
                        for c in calls)))
                fl.log(results[-1])
                if rc is None or rc < 0:
                    raise Fail("%s: the server died of signal %s at shutdown:\n%s" %
                               (label, -rc if rc else "?", srv.log_tail()))
                if injected and rc == 0:
                    self.notes.append("%s: the shutdown failed (%s) but the server exited 0" %
                                      (label, injected[0][1]))
                if (self.backing is None and calls and calls[0][5] == "FAIL" and
                        calls[0][1] == "fdatasync" and not feats & 2):
                    # NEED_CHECK may be cleared only after a successful flush.
                    raise Fail("%s: NEED_CHECK cleared although the flush before it failed" %
                               label)
                fl.check_image(self.img, label)
                # Open again: NEED_CHECK makes the library check and repair.
                srv2 = fl.Server(self.img, self.sock, self.srvlog, ["--aio=threads"])
                srv2.start()
                h = srv2.connect()
                try:
                    self.expect_bytes(bytes(h.pread(SIZE, 0)), bytes(content),
                                      label + ": the image after a restart")
                finally:
                    fl.close_handle(h)
                rc2 = srv2.stop(signal.SIGTERM)
                if rc2 != 0:
                    raise Fail("%s: the restarted server exited %s:\n%s" %
                               (label, rc2, srv2.log_tail()))
                fl.check_image(self.img, label + " after restart")
                if fl.header_features(self.img) & 2:
                    raise Fail("%s: NEED_CHECK still set after the restarted server's clean "
                               "shutdown" % label)
                self.expect_qemu_view(content, label)
                if not injected:
                    break
        return results

    def lifecycle_open(self):
        """A dirty image (NEED_CHECK set, one L2 entry past the end of the
        file): opening it checks and repairs it.  Fail each call of the
        open, from the first header read on.  The server must refuse to
        start with a message (or start when the failure missed the open);
        either way a later open must repair the image and serve the right
        data, and the image must end clean."""
        dirty = os.path.join(self.dir, "dirty.qed")
        shutil.copyfile(self.template, dirty)
        content = bytearray(self.base)
        with open(dirty, "r+b") as f:
            hdr = bytearray(f.read(64))
            cluster = int.from_bytes(hdr[4:8], "little")
            l1_off = int.from_bytes(hdr[40:48], "little")
            features = int.from_bytes(hdr[16:24], "little")
            hdr[16:24] = (features | 2).to_bytes(8, "little")
            f.seek(0)
            f.write(hdr)
            f.seek(l1_off)
            l2_off = int.from_bytes(f.read(8), "little")
            size = os.fstat(f.fileno()).st_size
            # Guest cluster 300 of table 0 (unallocated) -> far past EOF.
            f.seek(l2_off + 300 * 8)
            f.write((size + 1000 * cluster).to_bytes(8, "little"))
        rc, _ = fl.run(["qemu-img", "check", "-f", "qed", dirty], ok=None)
        if rc != 2:
            raise Fail("open-repair: the dirty image should have a corruption (qemu-img check "
                       "exited %d)" % rc)
        started_at = None
        for nth in range(0, 40):
            label = "open-repair EIO nth=%d" % nth
            self.rounds += 1
            shutil.copyfile(dirty, self.img)
            if os.path.exists(self.iolog):
                os.unlink(self.iolog)
            srv = fl.Server(self.img, self.sock, self.srvlog, ["--aio=threads"], env={
                "LD_PRELOAD": self.shim, "FAILIO_PATH": self.img, "FAILIO_OPS": "all",
                "ASAN_OPTIONS": ASAN,
                "FAILIO_NTH": str(nth), "FAILIO_ERRNO": "EIO", "FAILIO_LOG": self.iolog})
            try:
                srv.start()
                started = True
            except Fail as e:
                started = False
                msg = str(e)
                if "exited" not in msg or "exited -" in msg:
                    raise Fail("%s: the server did not refuse cleanly: %s" % (label, msg))
            with open(self.iolog) as f:
                calls = [ln.split() for ln in f.read().splitlines()]
            failed = [c for c in calls if c[5] == "FAIL"]
            if started:
                h = srv.connect()
                try:
                    try:
                        data = h.pread(SIZE, 0)
                    except nbd.Error as e:
                        # The open did not use the shim's nth call: this read
                        # met it, and EIO is the right answer.  The shim fails
                        # that one call only, so the next read must succeed.
                        with open(self.iolog) as f:
                            hit = [ln for ln in f.read().splitlines()
                                   if ln.split()[5] == "FAIL"]
                        if not hit or e.errnum != errno.EIO:
                            raise
                        data = h.pread(SIZE, 0)
                    self.expect_bytes(bytes(data), bytes(content),
                                      label + ": data served after the open")
                finally:
                    fl.close_handle(h)
                rc = srv.stop(signal.SIGTERM)
                if failed:
                    self.notes.append("%s: the open went on after a failed %s (exit %s)" %
                                      (label, failed[0][1], rc))
            else:
                if not failed:
                    raise Fail("%s: the server refused to start without a failed call:\n%s" %
                               (label, srv.log_tail()))
                fl.log("%s: refused after a failed %s @%s: %s" % (
                    label, failed[0][1], failed[0][3], srv.log_tail(3).splitlines()[-1]))
            # A clean open afterwards repairs and serves the right data.
            srv2 = fl.Server(self.img, self.sock, self.srvlog, ["--aio=threads"])
            srv2.start()
            h = srv2.connect()
            try:
                self.expect_bytes(bytes(h.pread(SIZE, 0)), bytes(content),
                                  label + ": data after a clean reopen")
            finally:
                fl.close_handle(h)
            rc2 = srv2.stop(signal.SIGTERM)
            if rc2 != 0:
                raise Fail("%s: the reopened server exited %s" % (label, rc2))
            fl.check_image(self.img, label + " after reopen")
            if fl.header_features(self.img) & 2:
                raise Fail("%s: NEED_CHECK still set after the reopen and a clean shutdown" %
                           label)
            if started and not failed:
                started_at = nth
                break
        if started_at is None:
            raise Fail("open-repair: the open still hit a failure at nth=39")
        return started_at

    def lifecycle_held(self):
        """A request whose data write is held in the shim (then performed or
        failed) while its client disconnects, or while the server is told to
        shut down.  The server must not crash, must keep serving the other
        client, and must finish (drain) the held request before it exits;
        the image must end clean."""
        case = next(c for c in CASES if c.name == "write-alloc-new-table")
        out = []
        for event in ("disconnect", "sigterm"):
            for err in ("none", "EIO"):
                label = "held write, %s, %s" % (event, "then fails" if err == "EIO" else
                                                "then done")
                self.rounds += 1
                shutil.copyfile(self.template, self.img)
                content = bytearray(self.base)
                srv = self.server()
                if os.path.exists(self.ctl):
                    os.unlink(self.ctl)
                srv.start()
                a = srv.connect()
                b = srv.connect()
                # Which call is the data write?  The first pwritev of the
                # request's size (a dry run is not needed: 6 KiB -> 2 clusters).
                self.arm("write", 2, err, 1, delay=1000)
                cookie, buf = self.send_async(a, case)
                deadline = time.monotonic() + 5
                held = None
                while time.monotonic() < deadline and held is None:
                    a.poll(20)
                    if os.path.exists(self.iolog):
                        with open(self.iolog) as f:
                            held = next((ln.split() for ln in f.read().splitlines()
                                         if ln.split()[5] == "HOLD"), None)
                if held is None:
                    raise Fail("%s: the data write was not held" % label)
                result = None
                if event == "disconnect":
                    # Drop the handle: libnbd closes the socket at once, with
                    # the request in flight and no NBD_CMD_DISC.
                    a = None
                    gc.collect()
                    self.expect_bytes(bytes(b.pread(16 * K, 4 * M)),
                                      bytes(content[4 * M:4 * M + 16 * K]),
                                      label + ": B reads while A's request is held")
                    time.sleep(1.2)     # the held call returns to a dead connection
                    if not srv.alive():
                        raise Fail("%s: the server died:\n%s" % (label, srv.log_tail()))
                    fdata = pattern("held-follow", 8 * K)
                    b.pwrite(fdata, FOLLOW_OFF)
                    content[FOLLOW_OFF:FOLLOW_OFF + 8 * K] = fdata
                    self.expect_bytes(bytes(b.pread(8 * K, FOLLOW_OFF)), fdata,
                                      label + ": B's write after A left")
                    fl.close_handle(b)
                    rc = srv.stop(signal.SIGTERM)
                else:
                    fl.close_handle(b)
                    srv.proc.send_signal(signal.SIGTERM)
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline:
                        try:
                            a.poll(20)
                            if a.aio_command_completed(cookie):
                                result = 0
                                break
                        except nbd.Error as e:
                            result = fl.nbd_errno(e) or -1
                            break
                    fl.close_handle(a)
                    a = None
                    # One SIGTERM only: a second one means "close now".
                    rc = srv.wait_exit(20)
                    want = 0 if err == "none" else errno.EIO
                    if result != want:
                        raise Fail("%s: the held request got %s during the shutdown, expected "
                                   "%s" % (label, fl.errname(result) if result is not None
                                           else "no reply", fl.errname(want)))
                self.disarm()
                if rc != 0:
                    raise Fail("%s: server exit status %s:\n%s" % (label, rc, srv.log_tail()))
                fl.check_image(self.img, label)
                if fl.header_features(self.img) & 2:
                    raise Fail("%s: NEED_CHECK still set after a clean shutdown" % label)
                srv2 = fl.Server(self.img, self.sock, self.srvlog, ["--aio=threads"])
                srv2.start()
                h = srv2.connect()
                try:
                    got = bytes(h.pread(SIZE, 0))
                finally:
                    fl.close_handle(h)
                srv2.stop(signal.SIGTERM)
                rng = slice(case.off, case.off + case.length)
                old = bytes(content[rng])
                if result == 0:
                    self.expect_bytes(got[rng], case.data, label + ": the acknowledged write")
                else:
                    self.old_or_new(got[rng], old, case.data, label + ": the request's range")
                content[rng] = got[rng]
                self.expect_bytes(got, bytes(content), label + ": the image after a restart")
                out.append(label)
                fl.log("%s: ok" % label)
        return out

    def lifecycle_second_signal(self):
        """A second SIGTERM while the shutdown flushes the image (the flush
        is held in the shim).  The server logs "second signal: closing the
        connections now" for a second signal while connections drain; once
        it closes the image the signal must not kill it half-way either: it
        must still finish the close (flush, NEED_CHECK cleared) and exit 0."""
        label = "second SIGTERM during the final flush"
        self.rounds += 1
        shutil.copyfile(self.template, self.img)
        srv = self.server()
        if os.path.exists(self.ctl):
            os.unlink(self.ctl)
        srv.start()
        h = srv.connect()
        try:
            h.pwrite(pattern("sig2", 8 * K), 9 * M)     # allocating: sets NEED_CHECK
        finally:
            fl.close_handle(h)
        if self.backing is None and not fl.header_features(self.img) & 2:
            raise Fail("%s: NEED_CHECK not set after an allocating write" % label)
        self.arm("sync", 0, "none", 1, delay=1500)
        srv.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        held = False
        while time.monotonic() < deadline and not held:
            time.sleep(0.05)
            if os.path.exists(self.iolog):
                with open(self.iolog) as f:
                    held = "HOLD" in f.read()
        if not held:
            raise Fail("%s: the shutdown's flush was not held" % label)
        srv.proc.send_signal(signal.SIGTERM)
        rc = srv.wait_exit(20)
        self.disarm()
        feats = fl.header_features(self.img)
        fl.check_image(self.img, label)
        if rc != 0:
            raise Fail("%s: the server exited %s%s; NEED_CHECK is %s (the image was not "
                       "closed; it stays consistent and is repaired on the next open)" %
                       (label, rc, " (killed by the signal)" if rc == -signal.SIGTERM else "",
                        "set" if feats & 2 else "clear"))
        if feats & 2:
            raise Fail("%s: NEED_CHECK still set after the shutdown" % label)
        return "exit 0, image clean"

    def lifecycle(self):
        self.make_template()
        t0 = time.monotonic()
        for name, fn in (("open-repair", self.lifecycle_open), ("close", self.lifecycle_close),
                         ("held", self.lifecycle_held),
                         ("clean-timer", self.lifecycle_clean)):
            try:
                r = fn()
                fl.log("%s: ok (%s)" % (name, r if not isinstance(r, list) else
                                        "%d rounds" % len(r)))
            except Fail as e:
                self.failures.append(str(e))
                fl.log("FAIL: %s" % e)
        return self.finish(t0)

    def finish(self, t0):
        for r in self.recovered:
            fl.log("recovered (success, right data): %s" % r)
        for n in self.notes:
            fl.log("NOTE: %s" % n)
        fl.log("%d rounds in %.1f s, %d failures" % (self.rounds, time.monotonic() - t0,
                                                      len(self.failures)))
        if self.failures:
            fl.log("FAILURES:")
            for f in self.failures:
                fl.log("  " + f.splitlines()[0])
            return 1
        return 0

    def enumerate(self, case, ops, err, count):
        steps = 0
        for nth in range(0, 64):
            try:
                hit = self.round(case, ops, err, nth, count)
            except Fail as e:
                self.failures.append(str(e))
                fl.log("FAIL: %s" % e)
                # Keep enumerating while calls still fail: later steps may
                # show more.
                hit = self.last_hit
            if not hit:
                break
            steps += 1
        else:
            self.failures.append("%s %s: still failing at nth=63" % (case.name, err))
        return steps

    def main(self):
        self.make_template()
        t0 = time.monotonic()
        for case in CASES:
            if case.backing_only and not self.backing:
                continue
            if case.nobacking_only and self.backing:
                continue
            if self.args.cases and not re.search(self.args.cases, case.name):
                continue
            # (ops, errno, count): one failing call of any kind with EIO; one
            # failing write/sync/punch with ENOSPC; every call from N on
            # failing with EIO (a disk that dies in the middle); EFBIG
            # (RLIMIT_FSIZE) for one allocating write.
            if self.args.retry:
                # Not failures: EINTR at any call, one short read or write,
                # and every read and write from N on short.
                plans = [("all", "EINTR", 1), ("read,write", "short", 1),
                         ("read,write", "short", 0)]
            else:
                plans = [("all", "EIO", 1)]
                if case.write_like():
                    plans.append(("write,sync,punch", "ENOSPC", 1))
                plans.append(("all", "EIO", 0))
                if case.name == "write-alloc-new-table":
                    plans.append(("write", "EFBIG", 1))
            for ops, err, count in plans:
                n = self.enumerate(case, ops, err, count)
                if n == 0 and (ops, count) == ("all", 1) and \
                        case.name != "read-past-backing":
                    # Every other request does file I/O: no failed call means
                    # the shim is not working, and the test would prove nothing.
                    self.failures.append("%s: no call failed at nth=0 (is the shim loaded?)" %
                                         case.name)
                fl.log("%-26s %-6s %-6s %2d steps: %s" %
                       (case.name, err, "always" if count == 0 else "once", n,
                        "; ".join(self.seen_steps.get((case.name, err, count), []))))
        return self.finish(t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shim", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--backing", action="store_true")
    ap.add_argument("--cases", help="regular expression: only the matching cases")
    ap.add_argument("--lifecycle", action="store_true",
                    help="fail the open (with repair), the shutdown and the clean timer")
    ap.add_argument("--retry", action="store_true",
                    help="EINTR and short transfers instead of errors: requests must succeed")
    ap.add_argument("--second-signal", action="store_true",
                    help="a second SIGTERM while the shutdown flushes the image")
    ap.add_argument("--crash", action="store_true",
                    help="kill -9 the server while each call of each request is pending")
    args = ap.parse_args()
    fl.need("qemu-img", "qemu-io")
    global FUA, NO_HOLE
    FUA, NO_HOLE = nbd.CMD_FLAG_FUA, nbd.CMD_FLAG_NO_HOLE
    for c in CASES:
        if c.flags == 1:
            c.flags = FUA
        elif c.flags == 2:
            c.flags = NO_HOLE
    try:
        r = Runner(args)
        if args.crash:
            return r.crash_all()
        if args.second_signal:
            r.make_template()
            t0 = time.monotonic()
            try:
                fl.log("second-signal: ok (%s)" % r.lifecycle_second_signal())
            except Fail as e:
                r.failures.append(str(e))
                fl.log("FAIL: %s" % e)
            return r.finish(t0)
        return r.lifecycle() if args.lifecycle else r.main()
    except Fail as e:
        fl.log("FAIL: %s" % e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
