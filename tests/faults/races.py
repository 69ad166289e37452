"""races.py - a write that lands in a cluster while another request is still
mapping it (run by races.sh).

usage: races.py --shim failio.so --dir TMPDIR [--backing]

Request A allocates a cluster: it writes the data, then updates the L2
entry (or, for a new L2 table, the L1 entry).  The library publishes the new
mapping in its cache when it starts that metadata write.  The failio shim
holds A's metadata write for a while (FAILIO_DELAY_MS); meanwhile request B,
from a second client, writes another sector of the same cluster, and (in
the crash mode) flushes.  B sees the published mapping and writes in place.

  fail mode:  A's metadata write then fails with EIO.  A must fail; B was
              acknowledged, so B's data must read back -- now, and after a
              restart.
  crash mode: the server is killed (SIGKILL) while A's metadata write is
              still held.  B was acknowledged and flushed before the kill,
              so after the restart (with repair) B's data must read back.

Either way the image must pass `qemu-img check` and `qed-img check`.  A
failure here means acknowledged (even flushed) data is lost because it was
written through a mapping that was not yet on disk.
"""
import argparse
import os
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
M = 1024 * K
SIZE = 16 * M
CLUSTER = 4 * K
ASAN = ":".join(x for x in (os.environ.get("ASAN_OPTIONS", ""), "verify_asan_link_order=0") if x)

# name, A's offset, B's offset (same cluster), which of A's calls to hold
SCENARIOS = [
    ("L2 entry update", 1 * M, 1 * M + 2 * K, "l2"),
    ("L1 entry update (new L2 table)", 8 * M, 8 * M + 2 * K, "l1"),
]


class Races:
    def __init__(self, args):
        self.args = args
        self.dir = os.path.realpath(args.dir)
        self.shim = os.path.realpath(args.shim)
        self.template = os.path.join(self.dir, "template.qed")
        self.img = os.path.join(self.dir, "img.qed")
        self.backing = os.path.join(self.dir, "backing.raw") if args.backing else None
        self.ctl = os.path.join(self.dir, "failio.ctl")
        self.iolog = os.path.join(self.dir, "failio.log")
        self.sock = os.path.join(self.dir, "nbd.sock")
        self.srvlog = os.path.join(self.dir, "server.log")
        self.failures = []

    def make_template(self):
        if self.backing:
            with open(self.backing, "wb") as f:
                f.write(b"\x5b" * (12 * M))
            fl.qemu_img_create(self.template, SIZE, CLUSTER, 2, backing=self.backing)
        else:
            fl.qemu_img_create(self.template, SIZE, CLUSTER, 2)
        fl.run(["qemu-io", "-f", "qed", "-c", "write -P 0x11 0 64k", self.template],
               what="fill the template")

    def old(self, off, n):
        if off < 64 * K:
            return b"\x11" * n
        if self.backing and off < 12 * M:
            return b"\x5b" * n
        return bytes(n)

    def server(self, shim=True):
        env = None
        if shim:
            paths = self.img + ("," + self.backing if self.backing else "")
            env = {"LD_PRELOAD": self.shim, "FAILIO_PATH": paths, "FAILIO_CTL": self.ctl,
                   "FAILIO_LOG": self.iolog, "ASAN_OPTIONS": ASAN}
        return fl.Server(self.img, self.sock, self.srvlog, ["--aio=threads"], env=env)

    def arm(self, nth, err, delay):
        tmp = self.ctl + ".tmp"
        with open(tmp, "w") as f:
            f.write("ops=all\nnth=%d\ncount=1\nerrno=%s\ndelay=%d\n" % (nth, err, delay))
        if os.path.exists(self.iolog):
            os.unlink(self.iolog)
        os.rename(tmp, self.ctl)

    def disarm(self):
        if os.path.exists(self.ctl):
            os.unlink(self.ctl)
        try:
            with open(self.iolog) as f:
                return [ln.split() for ln in f.read().splitlines()]
        except FileNotFoundError:
            return []

    def find_target(self, a_off, which):
        """A dry run of A alone: the index of its L2 (or L1) entry write."""
        shutil.copyfile(self.template, self.img)
        srv = self.server()
        srv.start()
        h = srv.connect()
        try:
            self.arm(-1, "EIO", 0)
            h.pwrite(b"A" * K, a_off)
            calls = self.disarm()
        finally:
            fl.close_handle(h)
            srv.stop()
        l1_lo, l1_hi = 4 * K, 4 * K + 2 * CLUSTER     # header 1 cluster, L1 2 clusters
        for i, c in enumerate(calls):
            op, off, length = c[1], int(c[3]), int(c[4])
            if op != "pwritev" or off == 0 or length > 512:
                continue
            in_l1 = l1_lo <= off < l1_hi
            if (which == "l1") == in_l1:
                return int(c[0]), calls
        raise Fail("dry run: no %s entry write among A's calls: %s" % (which, calls))

    def run_one(self, name, a_off, b_off, which, mode):
        label = "%s, %s mode" % (name, mode)
        nth, dry = self.find_target(a_off, which)
        shutil.copyfile(self.template, self.img)
        srv = self.server()
        srv.start()
        a = srv.connect()
        b = srv.connect()
        a_data, b_data = b"A" * K, b"B" * K
        res = {}            # name -> (errno, time) once completed
        cmds = {}           # name -> (handle, cookie)
        bufs = []

        def send(who, h, data, off):
            buf = nbd.Buffer.from_bytearray(bytearray(data))
            bufs.append(buf)
            cmds[who] = (h, h.aio_pwrite(buf, off))

        def drive(wait, until):
            """Poll both handles until every name in until completed."""
            deadline = time.monotonic() + wait
            while True:
                for who, (h, cookie) in list(cmds.items()):
                    if who in res:
                        continue
                    try:
                        h.poll(0)
                        done = h.aio_command_completed(cookie)
                    except nbd.Error as e:
                        res[who] = (fl.nbd_errno(e) or -1, time.monotonic())
                        continue
                    if done:
                        res[who] = (0, time.monotonic())
                if all(w in res for w in until) or time.monotonic() > deadline:
                    return
                time.sleep(0.005)

        delay = 600 if mode == "fail" else 3000
        self.arm(nth, "EIO" if mode == "fail" else "none", delay)
        send("A", a, a_data, a_off)
        drive(0.2, ["A"])           # A is now held in its metadata write
        if "A" in res:
            raise Fail("%s: A finished before its metadata write was released" % label)
        send("B", b, b_data, b_off)
        if mode == "fail":
            drive(10, ["A", "B"])
            self.disarm()
            if res.get("A", (None,))[0] != 5:
                raise Fail("%s: A should fail with EIO, got %s" % (label, res.get("A")))
            if res.get("B", (None,))[0] != 0:
                raise Fail("%s: B should succeed, got %s" % (label, res.get("B")))
            b_acked = b_flushed = True
            got = bytes(b.pread(K, b_off))
            if got != b_data:
                raise Fail("%s: B's acknowledged write reads back as %r..., not B's data: "
                           "it went into A's new cluster through a mapping that A's failed "
                           "metadata write then withdrew" % (label, got[:8]))
            fl.close_handle(a)
            fl.close_handle(b)
            rc = srv.stop()
            if rc != 0:
                raise Fail("%s: server exit status %s" % (label, rc))
            fl.check_image(self.img, label)
        else:
            drive(1.0, ["B"])
            b_acked = res.get("B", (None,))[0] == 0
            b_flushed = False
            if b_acked:
                try:
                    b.flush()
                    b_flushed = True
                except nbd.Error as e:
                    raise Fail("%s: B's flush failed: %s" % (label, e))
            a_held = "A" not in res
            rc = srv.kill9()
            fl.close_handle(a)
            fl.close_handle(b)
            self.disarm()
            if rc != -signal.SIGKILL:
                raise Fail("%s: the server exited %s before the kill" % (label, rc))
            if not a_held:
                raise Fail("%s: A finished before the kill although its metadata write was "
                           "held" % label)
            fl.check_image(self.img, label + " after the kill")
        overtook = "B" in res and ("A" not in res or res["B"][1] < res["A"][1])
        srv2 = self.server(shim=False)
        srv2.start()
        h = srv2.connect()
        try:
            got_b = bytes(h.pread(K, b_off))
            got_a = bytes(h.pread(K, a_off))
        finally:
            fl.close_handle(h)
        rc2 = srv2.stop()
        fl.check_image(self.img, label + " after a restart")
        if got_a not in (a_data, self.old(a_off, K)):
            raise Fail("%s: A's range reads %r... after the restart: neither old nor new" %
                       (label, got_a[:8]))
        if b_acked and got_b != b_data:
            raise Fail("%s: after the restart B's %s write reads back as %r... (it went into "
                       "A's new cluster through a mapping that never reached the disk)" %
                       (label, "acknowledged and flushed" if b_flushed else "acknowledged",
                        got_b[:8]))
        if not b_acked and got_b not in (b_data, self.old(b_off, K)):
            raise Fail("%s: B's range reads %r... after the restart: neither old nor new" %
                       (label, got_b[:8]))
        if rc2 != 0:
            raise Fail("%s: the restarted server exited %s" % (label, rc2))
        return ("B %s A" % ("overtook" if overtook else "waited for")) + \
            ("" if mode == "fail" else "; B %s before the kill" %
             ("acknowledged and flushed" if b_flushed else "still in flight"))

    def main(self):
        self.make_template()
        for name, a_off, b_off, which in SCENARIOS:
            for mode in ("fail", "crash"):
                try:
                    r = self.run_one(name, a_off, b_off, which, mode)
                    fl.log("ok: %s, %s mode (%s)" % (name, mode, r))
                except Fail as e:
                    self.failures.append(str(e))
                    fl.log("FAIL: %s" % e)
        if self.failures:
            fl.log("%d of %d race scenarios failed" % (len(self.failures), 2 * len(SCENARIOS)))
            return 1
        return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shim", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--backing", action="store_true")
    args = ap.parse_args()
    fl.need("qemu-img", "qemu-io")
    try:
        return Races(args).main()
    except Fail as e:
        fl.log("FAIL: %s" % e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
