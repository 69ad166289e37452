#!/bin/bash
# qemu:dirty-bitmap:NAME over NBD, with bitmaps managed through the control
# socket: LIST_META_CONTEXT with no query, "qemu:", "qemu:dirty-bitmap:",
# a name and an unknown name; SET of several bitmaps beside base:allocation;
# BLOCK_STATUS after writes, zeroes and trims equal to what was written
# (per granularity; a disabled bitmap stays clean), with REQ_ONE too; the
# removal of a selected bitmap refused (EBUSY); a bitmap added while a
# client writes records from then on; `nbdinfo --map` and QEMU's NBD client
# (`qemu-img map` with x-dirty-bitmap) read the same dirty ranges; the map
# survives a restart; after kill -9 the bitmaps are inconsistent, not
# offered (logged), cannot be cleared, and can be removed.
. "$top_srcdir/tests/server/server-common.sh"
need qemu-img nbdinfo
need_nbd_python
[ "$SERVER_KIND" = qednbd ] || skip "bitmaps are managed through qednbd's control socket"
CTL="$top_builddir/server/qednbd-ctl"
[ -x "$CTL" ] || fail "$CTL is not built"

M=1048576
SIZE=$((16 * M))
qemu-img create -q -f qed -o cluster_size=65536 disk.qed $SIZE || fail "create disk.qed"
CSOCK=$tmp/ctl.sock
QEDNBD_TEST_ARGS="${QEDNBD_TEST_ARGS:+$QEDNBD_TEST_ARGS }--control=$CSOCK" start_server -x disk disk.qed

ctl() {
    timeout -k 5 30 "$CTL" -s "$CSOCK" "$@" >"$tmp/out" 2>"$tmp/err" ||
        fail "qednbd-ctl $*: $(cat "$tmp/out" "$tmp/err")"
}
ctl bitmap-add disk b64k
ctl bitmap-add disk b4k -g 4K
ctl bitmap-add disk off -g 4K --disabled

# The writes of the test, as (kind, offset, length): the python below
# makes them through NBD and keeps the list in writes.json.
"$NBD_PYTHON" - "$SERVER_SOCK" "$CSOCK" "$CTL" <<'PY' || fail "dirty bitmaps over NBD"
import json, subprocess, sys, time
import nbd

sock, csock, ctl = sys.argv[1:4]
SIZE = 16 << 20
ALL = ["b64k", "b4k", "off"]
CTX = "qemu:dirty-bitmap:"

def handle(contexts=(), opt_mode=False):
    h = nbd.NBD()
    h.set_export_name("disk")
    for c in contexts:
        h.add_meta_context(c)
    if opt_mode:
        h.set_opt_mode(True)
    h.connect_unix(sock)
    return h

def listed(*queries):
    h = handle(opt_mode=True)
    h.clear_meta_contexts()
    for q in queries:
        h.add_meta_context(q)
    got = []
    h.opt_list_meta_context(lambda name: got.append(name))
    h.opt_abort()
    return sorted(got)

def expect(what, got, want):
    if got != want:
        sys.exit("%s: got %r, expected %r" % (what, got, want))

# ---- LIST, each query form ------------------------------------------------
every = sorted(["base:allocation", "qemu:allocation-depth"] + [CTX + b for b in ALL])
expect("LIST with no query", listed(), every)
expect("LIST qemu:", listed("qemu:"), sorted(["qemu:allocation-depth"] + [CTX + b for b in ALL]))
expect("LIST qemu:dirty-bitmap:", listed(CTX), sorted(CTX + b for b in ALL))
expect("LIST one name", listed(CTX + "b4k"), [CTX + "b4k"])
expect("LIST an unknown name", listed(CTX + "nosuch"), [])
expect("LIST a prefix of a name", listed(CTX + "b4"), [])
expect("LIST base:", listed("base:"), ["base:allocation"])
expect("LIST two names", listed(CTX + "off", CTX + "b64k"), [CTX + "b64k", CTX + "off"])

# ---- SET: several bitmaps beside base:allocation; the wildcard selects nothing
h = handle(["base:allocation"] + [CTX + b for b in ALL] + [CTX])
for c in ["base:allocation"] + [CTX + b for b in ALL]:
    if not h.can_meta_context(c):
        sys.exit("context %s not selected" % c)
if h.can_meta_context("qemu:allocation-depth"):
    sys.exit("qemu:allocation-depth selected without being asked for")

# ---- Writes, zeroes and trims; then the map of each bitmap -----------------
ops = [("write", 100 * 1024, 8192), ("write", 5 * 1048576 + 1, 1),
       ("zero", 1 << 20, 65536), ("zero", 3 << 20, 4096 * 3 + 512),
       ("trim", 8 << 20, 1 << 20), ("write", SIZE - 4096, 4096),
       ("write", 12 << 20, 200000)]
for kind, off, n in ops:
    if kind == "write":
        h.pwrite(b"\xa5" * n, off)
    elif kind == "zero":
        h.zero(n, off)
    else:
        h.trim(n, off)
h.flush()

def expected(gran, enabled=True, ops=ops):
    """Merged [start, length, dirty] covering the disk."""
    bits = set()
    if enabled:
        for _, off, n in ops:
            bits.update(range(off // gran, (off + n - 1) // gran + 1))
    out = []
    for i in range((SIZE + gran - 1) // gran):
        d = i in bits
        length = min(gran, SIZE - i * gran)
        if out and out[-1][2] == d:
            out[-1][1] += length
        else:
            out.append([i * gran, length, d])
    return out

def merge(ext):
    out = []
    for start, length, d in ext:
        if out and out[-1][2] == d and out[-1][0] + out[-1][1] == start:
            out[-1][1] += length
        else:
            out.append([start, length, d])
    return out

def status_map(h, ctx, flags=0, step=SIZE):
    """The whole disk's extents of @ctx, asking again where a reply stops short."""
    pos, ext = 0, []
    while pos < SIZE:
        got = {}
        def cb(meta, off, entries, err):
            got.setdefault(meta, []).append((off, list(entries)))
            return 0
        n = min(step, SIZE - pos)
        h.block_status(n, pos, cb, flags)
        chunks = got.get(ctx)
        if not chunks or len(chunks) != 1:
            sys.exit("%s at %d: %d chunks" % (ctx, pos, len(chunks or [])))
        off, e = chunks[0]
        if off != pos or not e:
            sys.exit("%s: chunk for %d at %d" % (ctx, pos, off))
        if flags & nbd.CMD_FLAG_REQ_ONE and len(e) != 2:
            sys.exit("REQ_ONE: %d descriptors" % (len(e) // 2))
        for i in range(0, len(e), 2):
            length, fl = e[i], e[i + 1]
            if length == 0 or (ctx.startswith(CTX) and fl not in (0, 1)):
                sys.exit("%s: descriptor (%d, %d)" % (ctx, length, fl))
            if length > SIZE - pos or (flags & nbd.CMD_FLAG_REQ_ONE and length > n):
                sys.exit("%s: descriptor of %d past the request" % (ctx, length))
            ext.append((pos, length, fl & 1 == 1))     # dirty, or base's HOLE
            pos += length
    return merge(ext)

want = {"b64k": expected(65536), "b4k": expected(4096), "off": expected(4096, False)}
for b in ALL:
    expect("map of %s" % b, status_map(h, CTX + b), want[b])
    # Small steps: unaligned requests, many replies.
    expect("map of %s in 1 MiB + 3 steps" % b, status_map(h, CTX + b, step=(1 << 20) + 3), want[b])
    expect("map of %s with REQ_ONE" % b,
           status_map(h, CTX + b, nbd.CMD_FLAG_REQ_ONE, step=(1 << 20) + 512), want[b])
# base:allocation answered in the same requests, and sane: written data is data.
base = status_map(h, "base:allocation")
for start, length, hole in base:
    if not hole and start <= 100 * 1024 < start + length:
        break
else:
    sys.exit("base:allocation does not show the write at 100 KiB as data: %r" % base)

# ---- A selected bitmap cannot be removed ------------------------------------
def ctl_cmd(*args):
    p = subprocess.run([ctl, "-s", csock] + list(args), capture_output=True, text=True,
                       timeout=30)
    return p.returncode, json.loads(p.stdout)

rc, r = ctl_cmd("bitmap-remove", "disk", "off")
if rc != 1 or r.get("errno") != "EBUSY":
    sys.exit("removing a selected bitmap: %d %r" % (rc, r))
rc, r = ctl_cmd("bitmap-list", "disk")
if [b["nbd_clients"] for b in r["bitmaps"]] != [1, 1, 1]:
    sys.exit("nbd_clients: %r" % r)
# Clearing and disabling it are allowed (it stays a valid record).
rc, r = ctl_cmd("bitmap-clear", "disk", "b4k")
if rc != 0:
    sys.exit("clear a selected bitmap: %r" % r)
expect("b4k after clear", status_map(h, CTX + "b4k"), [[0, SIZE, False]])

# ---- A bitmap added while a client writes records from then on --------------
h.pwrite(b"\x11" * 4096, 6 << 20)          # before: not in "late"
rc, r = ctl_cmd("bitmap-add", "disk", "late", "-g", "4K")
if rc != 0:
    sys.exit("bitmap-add late: %r" % r)
h.pwrite(b"\x22" * 4096, 7 << 20)          # after: in "late"
h.zero(8192, 9 << 20)
later = [("write", 6 << 20, 4096), ("write", 7 << 20, 4096), ("zero", 9 << 20, 8192)]
json.dump({"want_b4k": expected(4096, ops=later), "want_b64k": expected(65536, ops=ops + later)},
          open("want.json", "w"))
h2 = handle([CTX + "late"])
expect("late bitmap", status_map(h2, CTX + "late"),
       [[0, 7 << 20, False], [7 << 20, 4096, True], [(7 << 20) + 4096, (2 << 20) - 4096, False],
        [9 << 20, 8192, True], [(9 << 20) + 8192, SIZE - (9 << 20) - 8192, False]])
h2.shutdown()
h.shutdown()

# Once the clients are gone, the removal goes through.
deadline = time.monotonic() + 20
while True:
    rc, r = ctl_cmd("bitmap-remove", "disk", "late")
    if rc == 0:
        break
    if r.get("errno") != "EBUSY" or time.monotonic() > deadline:
        sys.exit("remove after the clients left: %r" % r)
    time.sleep(0.05)

# Clients that vanish with BLOCK_STATUS of a bitmap still in flight: with
# --threads those requests are at the image's owner, which reads the
# connection's selection (it once read it after the close had freed it).
# The server's assertion in hs_forget_meta and ASan (make
# check-sanitizers) catch the old order; the server must stay up.
for i in range(40):
    hv = handle([CTX + "b64k", "base:allocation"])
    for k in range(16):
        hv.aio_block_status(SIZE - (k << 16), k << 16, lambda *a: 0)
    del hv  # closes the socket without waiting for the replies
rc, r = ctl_cmd("bitmap-list", "disk")
if rc != 0:
    sys.exit("the server after vanishing clients: %r" % r)
PY

# ---- nbdinfo --map, and QEMU's NBD client, read the same dirty ranges ---------
uri="nbd+unix:///disk?socket=$SERVER_SOCK"
for bm in b4k b64k; do
    run 30 nbdinfo --json --map="qemu:dirty-bitmap:$bm" "$uri"
    cp "$tmp/out" "nbdinfo-$bm.json"
    # QEMU's client takes the bitmap's flags as base:allocation's: dirty
    # (1) reads as NBD_STATE_HOLE, so qemu-img map reports a dirty range as
    # "data": false and a clean one as "data": true.
    run 60 qemu-img map --output=json --image-opts \
        "driver=nbd,server.type=unix,server.path=$SERVER_SOCK,export=disk,x-dirty-bitmap=qemu:dirty-bitmap:$bm"
    cp "$tmp/out" "qemu-$bm.json"
done
"$PY" - <<'PY' || fail "nbdinfo / qemu-img map of the bitmaps"
import json, sys
want = json.load(open("want.json"))
def merge(ext):
    out = []
    for s, l, d in sorted(ext):
        if out and out[-1][2] == d and out[-1][0] + out[-1][1] == s:
            out[-1][1] += l
        else:
            out.append([s, l, d])
    return out
# b4k was cleared in the python part, then written; b64k has every write.
for bm, w in (("b4k", want["want_b4k"]), ("b64k", want["want_b64k"])):
    n = merge([(e["offset"], e["length"], e["type"] == 1)
               for e in json.load(open("nbdinfo-%s.json" % bm))])
    q = merge([(e["start"], e["length"], not e["data"])
               for e in json.load(open("qemu-%s.json" % bm))])
    if n != w:
        sys.exit("nbdinfo --map %s: %r, expected %r" % (bm, n, w))
    if q != w:
        sys.exit("qemu-img map x-dirty-bitmap %s: %r, expected %r" % (bm, q, w))
PY
# nbdinfo names the flag too.
run 30 nbdinfo --map=qemu:dirty-bitmap:b64k "$uri"
grep -q 'dirty$' "$tmp/out" && grep -q 'clean$' "$tmp/out" || fail "nbdinfo --map text: $(cat "$tmp/out")"

stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC"

# ---- Stored with the image: the same map after a restart -----------------------
QEDNBD_TEST_ARGS="${QEDNBD_TEST_ARGS:+$QEDNBD_TEST_ARGS }-v --control=$CSOCK" start_server -x disk disk.qed
uri="nbd+unix:///disk?socket=$SERVER_SOCK"
run 30 nbdinfo --json --map=qemu:dirty-bitmap:b64k "$uri"
cp "$tmp/out" nbdinfo-b64k.json
"$PY" - <<'PY' || fail "b64k after a restart"
import json, sys
want = json.load(open("want.json"))["want_b64k"]
got = []
for e in json.load(open("nbdinfo-b64k.json")):
    d = e["type"] == 1
    if got and got[-1][2] == d:
        got[-1][1] += e["length"]
    else:
        got.append([e["offset"], e["length"], d])
if got != want:
    sys.exit("after a restart: %r, expected %r" % (got, want))
PY

# ---- Killed while in use: inconsistent, never offered, only removable ---------
qemu-io -f raw -c "write -P 0x33 0 4k" "$uri" >/dev/null 2>&1 || fail "write before kill"
kill -KILL "$SERVER_PID"    # leaves a stale control socket: replaced at start
wait "$SERVER_PID" 2>/dev/null
QEDNBD_TEST_ARGS="${QEDNBD_TEST_ARGS:+$QEDNBD_TEST_ARGS }-v --control=$CSOCK" start_server -x disk disk.qed
uri="nbd+unix:///disk?socket=$SERVER_SOCK"
ctl bitmap-list disk
"$PY" -c 'import json, sys
r = json.load(open(sys.argv[1]))
bad = [b["name"] for b in r["bitmaps"] if not b["inconsistent"]]
sys.exit("consistent after kill -9: %s" % bad if bad else 0)' "$tmp/out" ||
    fail "bitmaps after kill -9: $(cat "$tmp/out")"
run 30 nbdinfo --json "$uri"
grep -q 'dirty-bitmap' "$tmp/out" && fail "an inconsistent bitmap is offered: $(cat "$tmp/out")"
grep -q 'not offering qemu:dirty-bitmap:b64k: the bitmap is inconsistent' "$SERVER_LOG" ||
    fail "no INFO line about the inconsistent bitmap"
rc=0
"$CTL" -s "$CSOCK" bitmap-clear disk b64k >"$tmp/out" 2>&1 || rc=$?
[ "$rc" -eq 1 ] && grep -q EUCLEAN "$tmp/out" || fail "clear of an inconsistent bitmap: $(cat "$tmp/out")"
ctl bitmap-remove disk b64k
ctl bitmap-add disk fresh
run 30 nbdinfo --json "$uri"
grep -q 'qemu:dirty-bitmap:fresh' "$tmp/out" || fail "a new bitmap is not offered"
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC"
echo "dirty bitmaps over NBD: ok"
