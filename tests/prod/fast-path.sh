#!/bin/bash
# The fast path of --threads (issue 14): a connection on a thread that does
# not own the export's image reads, and overwrites without FUA, clusters
# that are already allocated itself (req-owner.c tx_submit_fast,
# lib/engine/fast-path.c); everything else still goes to the owner.  With
# libnbd clients, one connection per loop thread (which connection landed
# on which thread is found out through the control socket's counters):
#
#   1. cross-thread visibility, against a model kept in python: connection
#      X writes random data to fresh clusters (allocations, the owner's
#      path), and as soon as the reply is in, connection Y on another
#      thread reads it back, overwrites part of it (the fast path when Y is
#      not the owner), and X reads that back; hundreds of rounds with
#      random offsets and lengths (unaligned, spanning clusters and L2
#      tables, 1 MiB reads); never-written ranges read as zeros; again with
#      one cached L2 table (--l2-cache=1: tables evicted and their memory
#      reused under the readers), and over a raw backing file with the
#      thread-pool I/O backend (--aio=threads; unwritten ranges read the
#      backing's data from the other threads); each run ends with all
#      connections at once, several requests in flight on each;
#   2. the fast path is really taken: SIGUSR1 shows fast_calls > 0 and
#      engine_calls == 0 on the threads that do not own the image, and no
#      fast call on the owner; with --threads=1 there are no thread lines;
#   3. FUA writes and FLUSH from a thread that does not own the image: the
#      data is there after a restart, and after kill -9 right after a
#      FLUSH reply both qemu-img check and qed-img check are clean and
#      every acknowledged byte is there;
#   4. dirty bitmaps: with a bitmap added through the control socket,
#      writes from the other threads are recorded (BLOCK_STATUS of
#      qemu:dirty-bitmap:NAME), also when the bitmap is added while
#      overwrites from that thread are in flight; writes that completed
#      before the bitmap existed are not;
#   5. --cache=none (an image in /var/tmp; skipped when O_DIRECT is refused
#      there): aligned and unaligned overwrites from the other threads read
#      back right on every thread;
#   6. after each part the server exits 0 on SIGTERM and qemu-img check
#      finds the image clean.
. "$top_srcdir/tests/prod/prod-common.sh"
need_nbd_python
need qemu-img
CTL="$top_builddir/server/qednbd-ctl"
[ -x "$CTL" ] || fail "$CTL is not built"

M=1048576

# ---- The clients: one python file, a subcommand per part ---------------------
cat >fp.py <<'PY'
import json, os, random, signal, subprocess, sys, time
import nbd

CTL = os.environ["CTL"]
cmd, sock, csock = sys.argv[1:4]
args = sys.argv[4:]


def die(msg):
    sys.exit("%s: %s" % (cmd, msg))


def ctl(*a):
    p = subprocess.run([CTL, "-s", csock] + list(a), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    if p.returncode != 0:
        die("qednbd-ctl %s: %r %r" % (" ".join(a), p.stdout, p.stderr))
    return json.loads(p.stdout)


def connect(n, contexts=()):
    hs = []
    for _ in range(n):
        h = nbd.NBD()
        for c in contexts:
            h.add_meta_context(c)
        h.connect_uri("nbd+unix:///?socket=" + sock)
        hs.append(h)
    return hs


def threads_of(hs, off):
    """The loop thread of each handle: a read of the allocated, cached
    cluster at @off is a fast call on a thread that does not own the image,
    an engine call on the owner."""
    st = ctl("stats")
    owner = st["exports"][0]["owner_thread"]
    hs[0].pread(512, off)       # the owner loads the table, if not cached yet
    where = []
    for h in hs:
        before = ctl("stats")["threads"]
        h.pread(512, off)
        after = ctl("stats")["threads"]
        fast = [a["index"] for a, b in zip(after, before) if a["fast_calls"] > b["fast_calls"]]
        eng = [a["index"] for a, b in zip(after, before) if a["engine_calls"] > b["engine_calls"]]
        if fast == [] and eng == [owner]:
            where.append(owner)
        elif len(fast) == 1 and fast[0] != owner and eng == []:
            where.append(fast[0])
        else:
            die("cannot tell the thread of a connection: fast calls on %r, engine calls on %r "
                "(owner %d)" % (fast, eng, owner))
    return owner, where


def one_per_thread(hs, nthreads, off):
    owner, where = threads_of(hs, off)
    if sorted(where) != list(range(nthreads)):
        die("connections on threads %r, expected one on each of %d" % (where, nthreads))
    print("owner thread %d; connections on threads %r" % (owner, where))
    return owner, where


def check(what, got, model, off):
    want = bytes(model[off:off + len(got)])
    if got != want:
        i = next(k for k in range(len(got)) if got[k] != want[k])
        die("%s: %d bytes at %d differ first at %d (+%d): got %02x, expected %02x" %
            (what, len(got), off, off + i, i, got[i], want[i]))


def rounds(hs, where, owner, model, rnd, nrounds, size, cluster, table_span, spare, aligned=0):
    """The visibility rounds of part 1 (and 5).  [size - spare, size) is
    never written."""
    usable = size - spare

    def pick():
        k = rnd.random()
        if aligned and rnd.random() < aligned:
            # Whole 4 KiB blocks (cache=none: the fast path takes only these).
            n = rnd.choice([4096, 8192, cluster, 3 * cluster, 16 * 4096])
            off = rnd.randrange(0, (usable - n) // 4096) * 4096
            return off, n
        if k < 0.3:
            n = rnd.randrange(1, 4097)                          # small, unaligned
        elif k < 0.7:
            n = rnd.randrange(cluster - 300, 3 * cluster + 300)  # spanning clusters
        else:
            n = rnd.randrange(64 << 10, 320 << 10)              # many clusters
        if k > 0.85 and usable > table_span:
            # Across an L2 table's edge.
            edge = rnd.randrange(1, usable // table_span + 1) * table_span
            off = max(0, min(usable - n, edge - rnd.randrange(1, n)))
        else:
            off = rnd.randrange(0, usable - n)
        return off, n

    for r in range(nrounds):
        xi, yi = rnd.sample(range(len(hs)), 2)
        X, Y = hs[xi], hs[yi]
        tag = "round %d (X on thread %d, Y on thread %d)" % (r, where[xi], where[yi])
        off, n = pick()
        data = rnd.randbytes(n)
        X.pwrite(data, off)
        model[off:off + n] = data
        check(tag + ": Y reads X's write", Y.pread(n, off), model, off)
        so = off + rnd.randrange(0, n)
        sn = rnd.randrange(1, off + n - so + 1)
        if aligned and rnd.random() < aligned:
            so, sn = off, n
        d2 = rnd.randbytes(sn)
        Y.pwrite(d2, so)
        model[so:so + sn] = d2
        check(tag + ": X reads Y's overwrite", X.pread(sn, so), model, so)
        check(tag + ": X reads the whole range", X.pread(n, off), model, off)
        if r % 8 == 0:
            h = rnd.choice(hs)
            lo = rnd.randrange(0, size - M)
            if rnd.random() < 0.5:
                lo &= ~4095
            check(tag + ": 1 MiB read", h.pread(M, lo), model, lo)
        if r % 50 == 0:
            for i, h in enumerate(hs):
                lo = size - spare + rnd.randrange(0, spare - 65536)
                check(tag + ": never written, thread %d" % where[i], h.pread(65536, lo), model, lo)
    storm(hs, where, model, rnd, size - spare)
    # Everything, from every thread.
    for i, h in enumerate(hs):
        for lo in range(0, size, M):
            check("final read, thread %d" % where[i], h.pread(M, lo), model, lo)


def storm(hs, where, model, rnd, usable, nops=300, depth=8):
    """All connections at once, each with up to @depth requests in flight:
    1 MiB chunk c belongs to connection c % n, and a connection's requests
    in flight are in different chunks, so the model stays exact.  Reads
    are checked when they complete."""
    import threading
    errors = []
    nchunks = usable // M

    def worker(i, h, seed):
        try:
            work(i, h, seed)
        except Exception as e:
            errors.append("thread %d: %r" % (where[i], e))

    def work(i, h, seed):
        r = random.Random(seed)
        mine = [c for c in range(nchunks) if c % len(hs) == i]
        busy = {}
        done = [0]

        def finish(chunk, kind, off, buf, err):
            busy.pop(chunk)
            if err.value:
                errors.append("thread %d: %s at %d failed: %d" % (where[i], kind, off, err.value))
            elif kind == "read":
                got = buf.to_bytearray()
                want = model[off:off + len(got)]
                if got != want:
                    errors.append("thread %d: concurrent read of %d at %d differs" %
                                  (where[i], len(got), off))
            done[0] += 1
            return 1

        issued = 0
        while (issued < nops or busy) and not errors:
            while issued < nops and len(busy) < depth:
                free = [c for c in mine if c not in busy]
                if not free:
                    break
                c = r.choice(free)
                n = r.randrange(1, 256 << 10)
                off = c * M + r.randrange(0, M - n)
                busy[c] = True
                if r.random() < 0.5:
                    d = r.randbytes(n)
                    model[off:off + n] = d
                    buf = nbd.Buffer.from_bytearray(bytearray(d))
                    h.aio_pwrite(buf, off, lambda err, c=c, off=off, buf=buf:
                                 finish(c, "write", off, buf, err))
                else:
                    buf = nbd.Buffer(n)
                    h.aio_pread(buf, off, lambda err, c=c, off=off, buf=buf:
                                finish(c, "read", off, buf, err))
                issued += 1
            h.poll(-1)

    ts = [threading.Thread(target=worker, args=(i, h, rnd.randrange(1 << 30)))
          for i, h in enumerate(hs)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        die("concurrent requests: %s" % "; ".join(errors[:5]))


M = 1 << 20

if cmd == "rounds":
    # rounds SEED NROUNDS NTHREADS SIZE CLUSTER TABLE_SPAN [BACKING] [ALIGNED]
    seed, nrounds, nthreads, size, cluster, span = (int(a) for a in args[:6])
    backing = args[6] if len(args) > 6 and args[6] != "-" else None
    aligned = float(args[7]) if len(args) > 7 else 0
    rnd = random.Random(seed)
    print("seed %d" % seed)
    model = bytearray(open(backing, "rb").read()) if backing else bytearray(size)
    hs = connect(nthreads)
    first = rnd.randbytes(4096)
    hs[0].pwrite(first, 0)
    model[0:4096] = first
    owner, where = one_per_thread(hs, nthreads, 0)
    rounds(hs, where, owner, model, rnd, nrounds, size, cluster, span, 2 << 20, aligned)
    st = ctl("stats")["threads"]
    for t in st:
        if t["index"] != owner and (t["fast_calls"] == 0 or t["engine_calls"] != 0):
            die("thread %r: the fast path was not taken" % t)
    for h in hs:
        h.shutdown()
    print("ok")

elif cmd == "fua":
    # fua MODEL SEED: FUA writes from the thread that does not own the image.
    mfile, seed = args[0], int(args[1])
    rnd = random.Random(seed)
    size = 16 << 20
    model = bytearray(size)
    hs = connect(2)
    hs[0].pwrite(b"\x01" * 4096, 0)
    model[0:4096] = b"\x01" * 4096
    owner, where = one_per_thread(hs, 2, 0)
    B = hs[where.index(1 - owner)]
    for i in range(40):
        off = rnd.randrange(0, size - (256 << 10))
        n = rnd.randrange(1, 256 << 10)
        d = rnd.randbytes(n)
        B.pwrite(d, off, nbd.CMD_FLAG_FUA)      # allocations and overwrites
        model[off:off + n] = d
        # An overwrite inside, with FUA again (the owner's path).
        so = off + rnd.randrange(0, n)
        d = rnd.randbytes(min(4096, off + n - so))
        B.pwrite(d, so, nbd.CMD_FLAG_FUA)
        model[so:so + len(d)] = d
        check("FUA write %d read back" % i, B.pread(n, off), model, off)
    open(mfile, "wb").write(model)
    for h in hs:
        h.shutdown()
    print("ok")

elif cmd == "flush-kill":
    # flush-kill MODEL SEED PID: overwrites (the fast path) and allocations
    # from the other thread, FLUSH from there, then kill -9 at once.
    mfile, seed, pid = args[0], int(args[1]), int(args[2])
    rnd = random.Random(seed)
    model = bytearray(open(mfile, "rb").read())
    size = len(model)
    hs = connect(2)
    owner, where = one_per_thread(hs, 2, 0)
    B = hs[where.index(1 - owner)]
    fast0 = ctl("stats")["threads"][1 - owner]["fast_calls"]
    for i in range(200):
        off = rnd.randrange(0, size - (128 << 10))
        n = rnd.randrange(1, 128 << 10)
        d = rnd.randbytes(n)
        B.pwrite(d, off)
        model[off:off + n] = d
    fast1 = ctl("stats")["threads"][1 - owner]["fast_calls"]
    if fast1 <= fast0:
        die("no fast-path write before the FLUSH (%d, %d)" % (fast0, fast1))
    B.flush()
    os.kill(pid, signal.SIGKILL)
    open(mfile, "wb").write(model)
    print("ok")

elif cmd == "verify":
    # verify MODEL NTHREADS: every thread reads the whole disk.
    model = bytearray(open(args[0], "rb").read())
    n = int(args[1])
    hs = connect(n)
    owner, where = one_per_thread(hs, n, 0)
    for i, h in enumerate(hs):
        for lo in range(0, len(model), M):
            check("after the restart, thread %d" % where[i], h.pread(M, lo), model, lo)
    for h in hs:
        h.shutdown()
    print("ok")

elif cmd == "bitmap":
    # bitmap SEED: see part 4 in fast-path.sh.
    seed = int(args[0])
    rnd = random.Random(seed)
    size, G = 16 << 20, 65536
    CTX = "qemu:dirty-bitmap:bm"
    hs = connect(2)
    # Allocate the first 12 MiB (the owner), so that what follows are overwrites.
    for lo in range(0, 12 << 20, M):
        hs[0].pwrite(b"\x11" * M, lo)
    owner, where = one_per_thread(hs, 2, 0)
    B = hs[where.index(1 - owner)]
    # [0, 4M): overwritten before the bitmap exists (completed): clean.
    for i in range(64):
        B.pwrite(b"\x22" * 4096, rnd.randrange(0, (4 << 20) - 4096))
    fast = ctl("stats")["threads"][1 - owner]["fast_calls"]
    if fast == 0:
        die("no fast call before the bitmap")
    # [4M, 8M): overwrites in flight while the bitmap is added: either.
    cookies = [B.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(b"\x33" * 65536)),
                            (4 << 20) + k * 65536) for k in range(64)]
    r = ctl("bitmap-add", "", "bm")
    while B.aio_in_flight() > 0:
        B.poll(-1)
    for c in cookies:
        B.aio_command_completed(c)
    # [8M, 12M): overwrites after the bitmap was added; [12M, 14M):
    # allocations after it; [14M, 16M): never written.  All from B.
    after = []
    for i in range(48):
        off = rnd.randrange(8 << 20, (12 << 20) - 70000)
        n = rnd.randrange(1, 70000)
        B.pwrite(b"\x44" * n, off)
        after.append((off, n))
    for i in range(8):
        off = rnd.randrange(12 << 20, (14 << 20) - 70000)
        n = rnd.randrange(1, 70000)
        B.pwrite(b"\x55" * n, off)
        after.append((off, n))
    B.flush()
    # A new connection selects the bitmap (the handshake picks contexts).
    q = connect(1, [CTX])[0]
    if not q.can_meta_context(CTX):
        die("%s not selected" % CTX)
    dirty = []
    pos = 0
    while pos < size:
        got = []
        def cb(meta, off, entries, err):
            if meta == CTX:
                got.append((off, list(entries)))
            return 0
        q.block_status(size - pos, pos, cb)
        if len(got) != 1 or got[0][0] != pos:
            die("BLOCK_STATUS at %d: %r" % (pos, got))
        e = got[0][1]
        for i in range(0, len(e), 2):
            if e[i + 1] & 1:
                dirty.append((pos, e[i]))
            pos += e[i]
    bits = set()
    for o, n in dirty:
        bits.update(range(o // G, (o + n) // G))
    want = set()
    for o, n in after:
        want.update(range(o // G, (o + n - 1) // G + 1))
    missing = sorted(want - bits)
    if missing:
        die("writes after bitmap-add not dirty: blocks %r (dirty: %r)" % (missing[:10], dirty))
    extra = [b for b in bits - want if not (4 << 20) // G <= b < (8 << 20) // G]
    if extra:
        die("blocks dirty that were written before the bitmap or never: %r" % sorted(extra)[:10])
    # Reads still take the fast path with a bitmap; writes go to the owner.
    t0 = ctl("stats")["threads"][1 - owner]
    B.pread(65536, 8 << 20)
    B.pwrite(b"\x66" * 4096, 9 << 20)
    t1 = ctl("stats")["threads"][1 - owner]
    if t1["fast_calls"] != t0["fast_calls"] + 1 or t1["engine_calls"] != 0:
        die("with a bitmap: %r then %r" % (t0, t1))
    for h in hs + [q]:
        h.shutdown()
    print("ok: %d dirty extents" % len(dirty))

else:
    die("unknown command")
PY
export CTL

# stats_check LOG NTHREADS OWNER - SIGUSR1 once more: every thread but
# OWNER made fast calls and no engine call; OWNER made engine calls and no
# fast call.
stats_check() {
    local log=$1 n=$2 owner=$3 before t line
    before=$(grep -c "stats: thread index=$((n - 1)) " "$log")
    kill -USR1 "$SERVER_PID"
    for ((t = 0; t < 200; t++)); do
        [ "$(grep -c "stats: thread index=$((n - 1)) " "$log")" -gt "$before" ] && break
        sleep 0.05
    done
    [ "$(grep -c "stats: thread index=$((n - 1)) " "$log")" -gt "$before" ] ||
        fail "no new SIGUSR1 thread lines within 10 s"
    for ((t = 0; t < n; t++)); do
        line=$(grep "stats: thread index=$t " "$log" | tail -n 1)
        [ -n "$line" ] || fail "no SIGUSR1 line for thread $t"
        echo "$line"
        if [ "$t" = "$owner" ]; then
            [ "$(stat_field "$line" engine_calls)" -gt 0 ] || fail "the owner made no engine call: $line"
            [ "$(stat_field "$line" fast_calls)" = 0 ] || fail "the owner made fast calls: $line"
        else
            [ "$(stat_field "$line" fast_calls)" -gt 0 ] || fail "thread $t made no fast call: $line"
            [ "$(stat_field "$line" engine_calls)" = 0 ] || fail "thread $t called the engine: $line"
        fi
    done
}

# fp CMD ARGS... - run a client subcommand on the last server; fail on error.
fp() {
    local c=$1
    shift
    "$NBD_PYTHON" fp.py "$c" "$SERVER_SOCK" "$CSOCK" "$@" >"fp-$c.out" 2>&1 &
    local p=$!
    track_client "$p"
    wait "$p" || fail "client $c failed: $(tail -n 20 "fp-$c.out")"
    cat "fp-$c.out"
}

stop_clean() {
    stop_server TERM "$SERVER_PID"
    [ "$SERVER_RC" = 0 ] || fail "exit $SERVER_RC after SIGTERM"
    image_clean "$1"
}

SEED=${FAST_PATH_SEED:-$RANDOM}
echo "seed $SEED (FAST_PATH_SEED=N replays it)"
CSOCK=$tmp/c.sock

# ---- 1 and 2: visibility, 3 threads, 4 KiB clusters (8 MiB per L2 table) -----
# 14 MiB: with 4 KiB clusters, qemu-img check (QEMU 7.2) reports one leaked
# cluster in any QED file of more than 4096 clusters, even one QEMU wrote
# itself (qemu-io -c "write 0 16M" on a fresh image), so the files stay
# under 16 MiB.
run 30 "$QEDIMG" create -c 4K disk.qed 14M
prod_start "$tmp/s.sock" --threads=3 --control="$CSOCK" disk.qed
fp rounds "$SEED" 500 3 $((14 * M)) 4096 $((8 * M))
stats_check "$SERVER_LOG" 3 0
stop_clean disk.qed

# One cached table: evictions, and the table memory reused under readers.
run 30 "$QEDIMG" create -c 4K one.qed 14M
prod_start "$tmp/s.sock" --threads=2 --l2-cache=1 --control="$CSOCK" one.qed
fp rounds "$((SEED + 1))" 250 2 $((14 * M)) 4096 $((8 * M))
stats_check "$SERVER_LOG" 2 0
stop_clean one.qed

# Over a raw backing file of random data; 64 KiB clusters.
"$PY" -c 'import os, random, sys
r = random.Random(int(sys.argv[1]))
open("back.raw", "wb").write(r.randbytes(16 << 20))' "$SEED"
run 30 "$QEDIMG" create -b back.raw -F raw over.qed
prod_start "$tmp/s.sock" --threads=2 --aio=threads --control="$CSOCK" over.qed
fp rounds "$((SEED + 2))" 250 2 $((16 * M)) 65536 $((2048 * M)) back.raw
stats_check "$SERVER_LOG" 2 0
stop_clean over.qed

# --threads=1: no thread lines.
prod_start "$tmp/s.sock" --threads=1 disk.qed
"$NBD_PYTHON" -c 'import sys, nbd
h = nbd.NBD()
h.connect_uri("nbd+unix:///?socket=" + sys.argv[1])
h.pwrite(b"x" * 4096, 0)
h.pread(4096, 0)
h.shutdown()' "$SERVER_SOCK" || fail "client with --threads=1"
kill -USR1 "$SERVER_PID"
wait_log "$SERVER_LOG" 'stats: export name=""'
# The export line is the last one printed with a single thread: give a
# thread line no chance to hide behind it by stopping the server first.
stop_clean disk.qed
grep -q 'stats: thread' "$SERVER_LOG" && fail "thread lines with --threads=1: $(grep 'stats: thread' "$SERVER_LOG")"

# ---- 3: FUA and FLUSH from the other thread -----------------------------------
run 30 "$QEDIMG" create fua.qed 16M
prod_start "$tmp/s.sock" --threads=2 --control="$CSOCK" fua.qed
fp fua model.bin "$SEED"
stop_clean fua.qed
prod_start "$tmp/s.sock" --threads=2 --control="$CSOCK" fua.qed
fp verify model.bin 2
# kill -9 right after the FLUSH reply (the client kills the server itself).
fp flush-kill model.bin "$SEED" "$SERVER_PID"
for ((i = 0; i < 200; i++)); do
    server_alive || break
    sleep 0.05
done
server_alive && fail "the server survived kill -9"
rc=0
{ wait "$SERVER_PID"; } 2>/dev/null || rc=$?
[ "$rc" = 137 ] || fail "server exit status $rc after kill -9, expected 137"
rc=0
qemu-img check -f qed fua.qed >"$tmp/out" 2>&1 || rc=$?
[ "$rc" = 0 ] || fail "qemu-img check after kill -9: exit $rc: $(cat "$tmp/out")"
rc=0
"$QEDIMG" check fua.qed >"$tmp/out" 2>&1 || rc=$?
[ "$rc" = 0 ] || fail "qed-img check after kill -9: exit $rc: $(cat "$tmp/out")"
prod_start "$tmp/s.sock" --threads=2 --control="$CSOCK" fua.qed
fp verify model.bin 2
stop_clean fua.qed

# ---- 4: dirty bitmaps ------------------------------------------------------------
run 30 "$QEDIMG" create bm.qed 16M
prod_start "$tmp/s.sock" --threads=2 --control="$CSOCK" bm.qed
fp bitmap "$SEED"
stop_clean bm.qed

# ---- 5: cache=none ----------------------------------------------------------------
vtmp=$(mktemp -d /var/tmp/qednbd-fast.XXXXXX) || fail "mktemp in /var/tmp"
trap 'rm -rf "$vtmp"; cleanup' EXIT
if "$PY" -c 'import os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o600)
os.close(fd)' "$vtmp/probe" 2>/dev/null; then
    run 30 "$QEDIMG" create -c 64K "$vtmp/direct.qed" 16M
    prod_start "$tmp/s.sock" --threads=2 --cache=none --control="$CSOCK" "$vtmp/direct.qed"
    fp rounds "$((SEED + 3))" 250 2 $((16 * M)) 65536 $((2048 * M)) - 0.5
    stats_check "$SERVER_LOG" 2 0
    stop_clean "$vtmp/direct.qed"
else
    echo "O_DIRECT refused in /var/tmp: part 5 (cache=none) skipped"
fi
echo "fast path: OK"
