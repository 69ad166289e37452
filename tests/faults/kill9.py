"""kill9.py - kill -9 the real server under load, again and again (run by
kill9.sh and kill9-backing.sh).

usage: kill9.py --dir TMPDIR [--backing] [--rounds 20] [--seed N]
                [--budget SECONDS] [--no-fio]

A python3-libnbd writer keeps up to 16 requests in flight: writes of 4 KiB
to 64 KiB (some FUA), write-zeroes (some NO_HOLE) and flushes, mostly in a
window of the image that moves every round (so every round allocates
clusters, and new L2 tables appear), partly over older windows (in-place
overwrites).  In parallel, fio writes its own region with --verify=crc32c
--verify_backlog (fio reports any block that reads back wrong while the
server runs).  At a random moment the server gets SIGKILL, with requests in
flight.  Then, with the server down, `qemu-img check` and `qed-img check`
must find no corruption (leaks are allowed); the server restarts on the same
image (the library checks and repairs it) and every block the writer ever
touched is read back and judged against a shadow of what was sent:

  - a block must hold one of the versions that may be there: the last one
    whose write was acknowledged, or one sent later (in flight at the kill);
    never older data, never data that was never written there;
  - in particular every write completed before a completed flush, and every
    completed FUA write, reads back (the durability promise).  Because a
    kill -9 leaves the page cache intact, even an acknowledged write without
    a flush must survive: losing one means the server acknowledged before
    the data (or its mapping) was written.

Every block holds a header (magic, block number, version) and bytes derived
from the seed, so a wrong block is identified precisely.  The seed is
printed; --seed replays the same sequence of operations (the kill moments
depend on timing as well).
"""
import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

# No __pycache__ in the source tree (make distcheck builds from a read-only one).
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib as fl  # noqa: E402
from faultlib import Fail, nbd  # noqa: E402

K = 1024
M = 1024 * K
BLOCK = 4 * K
CLUSTER = 16 * K          # 4 KiB writes are partial clusters: copy-on-write
TABLE = 2                 # 2 clusters per table: one L2 table maps 64 MiB
WINDOW = 4 * M            # where a round's new writes go
STRIDE = 44 * M           # windows move by this much: a new L2 table every ~1.5 rounds
FIO_SIZE = 64 * M
MAGIC = b"QEDKILL9"
BMAGIC = b"BACKING!"
ZERO = bytes(BLOCK)
DEPTH = 16


class Shadow:
    """What each touched block may hold.  Versions are numbered in the order
    the writes were sent; writes in flight never overlap, so for one block
    that is also the order in which they took effect."""

    def __init__(self, seed, backing_blocks):
        self.seed = seed
        self.backing_blocks = backing_blocks   # blocks with backing data
        self.hist = {}       # block -> versions sent, oldest first
        self.acked = {}      # block -> newest acknowledged version
        self.durable = {}    # block -> newest flushed (or FUA) version
        self.zero_versions = set()
        self.next_version = 1

    def content(self, b, v):
        if v == 0:
            if b in self.backing_blocks:
                return self.backing_block(b)
            return ZERO
        if v in self.zero_versions:
            return ZERO
        body = random.Random((self.seed << 64) ^ (v << 32) ^ b).randbytes(BLOCK - 24)
        return MAGIC + b.to_bytes(8, "little") + v.to_bytes(8, "little") + body

    def backing_block(self, b):
        body = random.Random((self.seed << 64) ^ (0xBAC << 40) ^ b).randbytes(BLOCK - 24)
        return BMAGIC + b.to_bytes(8, "little") + bytes(8) + body

    def send(self, blocks, zero):
        v = self.next_version
        self.next_version += 1
        if zero:
            self.zero_versions.add(v)
        for b in blocks:
            self.hist.setdefault(b, [0]).append(v)
        return v

    def ack(self, blocks, v):
        for b in blocks:
            if v > self.acked.get(b, 0):
                self.acked[b] = v

    def make_durable(self, pairs):
        for b, v in pairs:
            if v > self.durable.get(b, 0):
                self.durable[b] = v
                # Older versions may no longer be there: forget them.
                self.hist[b] = [x for x in self.hist[b] if x >= v]

    def allowed(self, b, floor):
        return [v for v in self.hist.get(b, [0]) if v >= floor]

    def collapse(self, b, v):
        """After a restart the block holds v for good (page cache survived)."""
        self.hist[b] = [v]
        self.acked[b] = v
        self.durable[b] = v

    def describe(self, data):
        if data == ZERO:
            return "zeros"
        if data[:8] == MAGIC:
            return "block %d version %d%s" % (
                int.from_bytes(data[8:16], "little"), int.from_bytes(data[16:24], "little"),
                "" if data == self.content(int.from_bytes(data[8:16], "little"),
                                           int.from_bytes(data[16:24], "little"))
                else " (with damaged contents)")
        if data[:8] == BMAGIC:
            return "backing data of block %d" % int.from_bytes(data[8:16], "little")
        return "unknown bytes %r..." % data[:16]

    def judge(self, b, data):
        """Return the version data is, or raise Fail."""
        cands = self.allowed(b, self.acked.get(b, 0))
        for v in reversed(cands):
            if self.content(b, v) == data:
                return v
        durable_ok = [v for v in self.allowed(b, self.durable.get(b, 0))
                      if self.content(b, v) == data]
        what = self.describe(data)
        if durable_ok:
            raise Fail("block %d (offset %d) holds %s: an acknowledged write (version %d) is "
                       "lost although it was only a kill -9 (the page cache survives); "
                       "versions sent: %s" % (b, b * BLOCK, what, self.acked.get(b, 0),
                                              self.hist.get(b, [0])[-8:]))
        raise Fail("block %d (offset %d) holds %s; it may hold only versions %s (acknowledged "
                   "%d, flushed %d; last sent %s)" % (b, b * BLOCK, what, cands,
                                                 self.acked.get(b, 0),
                                                 self.durable.get(b, 0),
                                                 self.hist.get(b, [0])[-8:]))


class Killer:
    def __init__(self, args):
        self.args = args
        self.dir = os.path.realpath(args.dir)
        self.seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
        self.rng = random.Random(self.seed)
        self.img = os.path.join(self.dir, "disk.qed")
        self.sock = os.path.join(self.dir, "nbd.sock")
        self.srvlog = os.path.join(self.dir, "server.log")
        self.windows = [i * STRIDE + self.rng.randrange(0, STRIDE - WINDOW, BLOCK)
                        for i in range(args.rounds)]
        self.python_end = args.rounds * STRIDE
        self.fio_off = self.python_end
        self.size = self.python_end + FIO_SIZE
        self.stats = {"writes": 0, "fua": 0, "zeros": 0, "flushes": 0, "inflight_at_kill": 0,
                      "bytes": 0, "verified_blocks": 0, "leaky_checks": 0, "fio_runs": 0,
                      "fio_writes": 0, "fio_verify_reads": 0}
        self.fio = None if args.no_fio else shutil.which("fio")
        if self.fio:
            r = subprocess.run([self.fio, "--enghelp=nbd"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            if r.returncode != 0:
                self.fio = None

    # ---- set-up ----

    def make_image(self):
        backing_blocks = set()
        if self.args.backing:
            # Backing data in every other MiB of each window; the backing file
            # ends before the last windows, which therefore read as zeros.
            bpath = os.path.join(self.dir, "backing.raw")
            bend = self.windows[-1] - 2 * M if len(self.windows) > 1 else self.size
            shadow = Shadow(self.seed, set())
            with open(bpath, "wb") as f:
                f.truncate(bend)
                for w in self.windows:
                    for off in range(w, min(w + WINDOW, bend), BLOCK):
                        if (off // M) % 2 == 0:
                            b = off // BLOCK
                            backing_blocks.add(b)
                            f.seek(off)
                            f.write(shadow.backing_block(b))
            fl.qemu_img_create(self.img, self.size, CLUSTER, TABLE, backing=bpath)
        else:
            fl.qemu_img_create(self.img, self.size, CLUSTER, TABLE)
        self.shadow = Shadow(self.seed, backing_blocks)

    # ---- load ----

    def pick_range(self, rnd, busy, window):
        for _ in range(8):
            if rnd.random() < 0.8 or window == 0:
                base = self.windows[window]
            else:
                base = self.windows[rnd.randrange(window)]
            nblk = rnd.randint(1, 16)
            first = base // BLOCK + rnd.randrange(WINDOW // BLOCK - nblk + 1)
            blocks = range(first, first + nblk)
            if not any(b in busy for b in blocks):
                return blocks
        return None

    def load(self, h, window, duration):
        """Send requests until duration has passed; return what is in flight
        (the caller kills the server right then)."""
        sh = self.shadow
        rnd = self.rng
        inflight = {}            # cookie -> (kind, blocks, version, snapshot)
        busy = set()
        completed = []           # (block, version) acknowledged since the last flush was sent
        deadline = time.monotonic() + duration

        def reap():
            for cookie in list(inflight):
                try:
                    done = h.aio_command_completed(cookie)
                except nbd.Error as e:
                    kind, blocks, v, _ = inflight.pop(cookie)
                    raise Fail("%s of blocks %d..%d failed before any kill: %s" %
                               (kind, blocks[0] if blocks else -1,
                                blocks[-1] if blocks else -1, e))
                if not done:
                    continue
                kind, blocks, v, snap = inflight.pop(cookie)
                if kind == "flush":
                    sh.make_durable(snap)
                    continue
                sh.ack(blocks, v)
                for b in blocks:
                    busy.discard(b)
                if kind.endswith("+fua"):
                    sh.make_durable((b, v) for b in blocks)
                else:
                    completed.extend((b, v) for b in blocks)

        while time.monotonic() < deadline:
            while len(inflight) < DEPTH:
                r = rnd.random()
                if r < 0.05:
                    snap = completed[:]
                    completed.clear()
                    cookie = h.aio_flush()
                    inflight[cookie] = ("flush", (), 0, snap)
                    self.stats["flushes"] += 1
                    continue
                blocks = self.pick_range(rnd, busy, window)
                if blocks is None:
                    break
                off = blocks[0] * BLOCK
                length = len(blocks) * BLOCK
                if r < 0.13:
                    flags = nbd.CMD_FLAG_NO_HOLE if rnd.random() < 0.3 else 0
                    fua = rnd.random() < 0.2
                    if fua:
                        flags |= nbd.CMD_FLAG_FUA
                    v = sh.send(blocks, zero=True)
                    cookie = h.aio_zero(length, off, flags=flags)
                    kind = "zero" + ("+fua" if fua else "")
                    self.stats["zeros"] += 1
                else:
                    fua = rnd.random() < 0.1
                    v = sh.send(blocks, zero=False)
                    buf = nbd.Buffer.from_bytearray(
                        bytearray(b"".join(sh.content(b, v) for b in blocks)))
                    cookie = h.aio_pwrite(buf, off, flags=nbd.CMD_FLAG_FUA if fua else 0)
                    kind = "write" + ("+fua" if fua else "")
                    self.stats["writes"] += 1
                    self.stats["fua"] += fua
                    self.stats["bytes"] += length
                    # The last field keeps the buffer alive until completion.
                    inflight[cookie] = (kind, list(blocks), v, buf)
                    busy.update(blocks)
                    continue
                inflight[cookie] = (kind, list(blocks), v, None)
                busy.update(blocks)
            h.poll(10)
            reap()
        return len(inflight)

    # ---- fio ----

    def start_fio(self, srv, round_no):
        if not self.fio:
            return None
        out = os.path.join(self.dir, "fio.%d.out" % round_no)
        cmd = [self.fio, "--name=kill9", "--ioengine=nbd", "--uri=" + srv.uri(),
               "--rw=randwrite", "--bsrange=4k-64k", "--offset=%d" % self.fio_off,
               "--size=%d" % FIO_SIZE, "--iodepth=8", "--verify=crc32c",
               "--verify_backlog=16", "--verify_fatal=1", "--verify_state_save=0",
               "--time_based", "--runtime=60", "--randseed=%d" % (self.seed + round_no),
               "--output=" + out]
        f = open(out + ".err", "wb")
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        f.close()
        self.stats["fio_runs"] += 1
        return (p, out)

    def finish_fio(self, fio, round_no):
        if not fio:
            return
        p, out = fio
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise Fail("round %d: fio did not exit within 15 s of the server's death" % round_no)
        text = ""
        for path in (out, out + ".err"):
            try:
                with open(path, errors="replace") as f:
                    text += f.read()
            except OSError:
                pass
        low = text.lower()
        m = re.search(r"issued rwts: total=(\d+),(\d+)", text)
        if m:
            self.stats["fio_verify_reads"] += int(m.group(1))
            self.stats["fio_writes"] += int(m.group(2))
        # A dropped connection makes fio fail with an I/O error; a block that
        # reads back wrong shows as a verify failure.
        for bad in ("verify failed", "bad magic", "bad header", "verify: bad", "crc32c: verify"):
            if bad in low:
                raise Fail("round %d: fio found a block that read back wrong while the server "
                           "ran:\n%s" % (round_no, text[-3000:]))

    # ---- verification ----

    def verify(self, h, round_no):
        sh = self.shadow
        blocks = sorted(sh.hist)
        # A sample of blocks nobody wrote: they must read as the initial state.
        total = self.python_end // BLOCK
        for _ in range(64):
            b = self.rng.randrange(total)
            if b not in sh.hist:
                blocks.append(b)
        # And every block of the windows' backing data.
        blocks = sorted(set(blocks) | {b for b in sh.backing_blocks if b < total})
        runs = []
        for b in blocks:
            if runs and runs[-1][1] == b and runs[-1][1] - runs[-1][0] < 256:
                runs[-1][1] = b + 1
            else:
                runs.append([b, b + 1])
        for first, end in runs:
            data = h.pread((end - first) * BLOCK, first * BLOCK)
            for i, b in enumerate(range(first, end)):
                blk = bytes(data[i * BLOCK:(i + 1) * BLOCK])
                try:
                    v = sh.judge(b, blk)
                except Fail as e:
                    raise Fail("round %d (seed %d): after the restart, %s" % (round_no, self.seed,
                                                                              e))
                if b in sh.hist:
                    sh.collapse(b, v)
            self.stats["verified_blocks"] += end - first

    # ---- the rounds ----

    def main(self):
        fl.log("seed %d (replay: --seed %d), %d rounds, backing: %s, fio: %s" %
               (self.seed, self.seed, self.args.rounds, "raw" if self.args.backing else "none",
                "yes" if self.fio else "no"))
        self.make_image()
        self.uring = fl.uring_available(self.dir)
        t0 = time.monotonic()
        per_round = min(1.5, max(0.3, self.args.budget / self.args.rounds - 0.6))
        for rnd_no in range(self.args.rounds):
            # Alternate the I/O backends: io_uring (the default) and threads.
            aio = "--aio=threads" if rnd_no % 2 or not self.uring else "--aio=uring"
            srv = fl.Server(self.img, self.sock, self.srvlog, [aio])
            srv.start()
            h = srv.connect()
            if rnd_no > 0:
                self.verify(h, rnd_no)
            fio = self.start_fio(srv, rnd_no)
            # A random moment: sometimes at once, mostly after a while.
            duration = self.rng.choice([0.05, 0.2]) if self.rng.random() < 0.15 else \
                self.rng.uniform(0.3, 2 * per_round)
            if self.args.self_check:
                # The self-check damages an acknowledged block: give the load
                # time to have one, even on a slow machine.
                duration = max(duration, 1.0)
            try:
                n = self.load(h, rnd_no, duration)
            except Fail:
                srv.stop(signal.SIGKILL)
                raise
            self.stats["inflight_at_kill"] += n
            rc = srv.kill9()
            if rc != -signal.SIGKILL:
                raise Fail("round %d: the server exited %s before the kill:\n%s" %
                           (rnd_no, rc, srv.log_tail()))
            fl.close_handle(h)
            self.finish_fio(fio, rnd_no)
            rc1, rc2 = fl.check_image(self.img, "round %d after kill -9" % rnd_no)
            if rc1 == 3 or rc2 == 3:
                self.stats["leaky_checks"] += 1
            fl.log("round %2d: %-13s killed after %.2f s with %2d requests in flight; "
                   "qemu-img check %d, qed-img check %d" % (rnd_no, aio, duration, n, rc1, rc2))
            if self.args.self_check:
                return self.self_check()
        # Last restart: verify, shut down cleanly, and the image must be clean.
        srv = fl.Server(self.img, self.sock, self.srvlog, [])
        srv.start()
        h = srv.connect()
        self.verify(h, self.args.rounds)
        fl.close_handle(h)
        rc = srv.stop(signal.SIGTERM)
        if rc != 0:
            raise Fail("final SIGTERM: server exited %s:\n%s" % (rc, srv.log_tail()))
        rc1, rc2 = fl.check_image(self.img, "after the final clean shutdown")
        if fl.header_features(self.img) & 2:
            raise Fail("NEED_CHECK still set after the final clean shutdown")
        # fio verifies every 16 writes (--verify_backlog=16): after many
        # writes and no read at all, its verification did not run.
        if self.fio and self.stats["fio_writes"] >= 64 and self.stats["fio_verify_reads"] == 0:
            raise Fail("fio wrote %d blocks and never read one back: its verification did "
                       "not run" % self.stats["fio_writes"])
        fl.log("final: qemu-img check %d, qed-img check %d (3 = leaked clusters only)" %
               (rc1, rc2))
        fl.log("ok: seed %d, %d kills in %.1f s; %s" % (
            self.seed, self.args.rounds, time.monotonic() - t0,
            ", ".join("%s %d" % kv for kv in self.stats.items())))
        return 0


    def self_check(self):
        """Prove that the verification can fail: change one acknowledged
        block behind the server's back (with qemu-io, while it is down) and
        expect the next verification to name that block."""
        sh = self.shadow
        # Only a block none of whose possible versions reads as zeros: a
        # block acknowledged but not yet flushed may still hold version 0
        # (never written) or a write-zeroes, and then zeros are a right
        # answer, not damage the verification should name.
        cands = [b for b, v in sh.acked.items() if v > 0 and v not in sh.zero_versions and
                 all(x > 0 and x not in sh.zero_versions for x in sh.allowed(b, 0))]
        if not cands:
            raise Fail("self-check: no acknowledged data block to damage")
        b = self.rng.choice(cands)
        if self.args.self_check == "garbage":
            cmd = "write -P 0x55 %d %d" % (b * BLOCK, BLOCK)
        else:
            cmd = "write -z %d %d" % (b * BLOCK, BLOCK)
        fl.run_unlocked(["qemu-io", "-f", "qed", "-c", cmd, self.img], what="self-check damage")
        srv = fl.Server(self.img, self.sock, self.srvlog, [])
        srv.start()
        h = srv.connect()
        try:
            self.verify(h, 1)
        except Fail as e:
            if "block %d " % b not in str(e):
                raise Fail("self-check: the verification failed, but not on block %d: %s" % (b, e))
            fl.log("self-check (%s): detected as expected: %s" % (self.args.self_check, e))
            return 0
        finally:
            fl.close_handle(h)
            srv.stop(signal.SIGTERM)
        raise Fail("self-check: block %d was damaged (%s) and the verification did not notice" %
                   (b, cmd))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--backing", action="store_true")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--budget", type=float, default=30.0,
                    help="seconds of load over all rounds (about)")
    ap.add_argument("--no-fio", action="store_true")
    ap.add_argument("--self-check", choices=("garbage", "zero"),
                    help="damage one acknowledged block after the first kill and expect "
                    "the verification to catch it")
    args = ap.parse_args()
    fl.need("qemu-img")
    k = Killer(args)
    try:
        return k.main()
    except Fail as e:
        fl.log("FAIL: %s" % e)
        fl.log("replay with --seed %d" % k.seed)
        return 1


if __name__ == "__main__":
    sys.exit(main())
