#!/bin/bash
# A representative set of client sessions against qednbd running under
# valgrind's memcheck (tests/load/valgrind-server.sh); run by
# `make check-valgrind`, not by `make check` (valgrind makes it slow).
#
# Sessions, on one server serving two exports (a fresh image, and an image
# with a raw backing file so that reads and writes go through copy-on-write):
#   qemu-io (writes, reads with patterns, write-zeroes, discard, flush),
#   nbdinfo (--list, --map for base:allocation and qemu:allocation-depth),
#   nbdcopy in and out (compared), libnbd random I/O on 4 connections
#   (verified), clients vanishing in the middle of a write payload and of the
#   handshake, a client refused over --max-connections, and SIGTERM while a
#   client has writes in flight.
# Each server must exit 0 (valgrind's --error-exitcode=99 reports memcheck
# errors, leaks included) and its log must say "ERROR SUMMARY: 0 errors".
. "$top_srcdir/tests/server/server-common.sh"
need valgrind qemu-img qemu-io nbdinfo nbdcopy
need_nbd_python
[ "$SERVER_KIND" = qednbd ] || skip "valgrind runs drive qednbd only"

export QEDNBD_REAL=${QEDNBD_REAL:-$top_builddir/server/qednbd}
[ -x "$QEDNBD_REAL" ] || fail "$QEDNBD_REAL is not built"
# Under make check-valgrind the driver collects the logs; alone, $tmp does.
export QEDNBD_VG_LOGDIR=${QEDNBD_VG_LOGDIR:-$tmp/vg}
mkdir -p "$QEDNBD_VG_LOGDIR"
QEDNBD="$tmp/qednbd-vg"
cat >"$QEDNBD" <<EOF
#!/bin/sh
exec sh "$top_srcdir/tests/load/valgrind-server.sh" --max-connections=8 "\$@"
EOF
chmod +x "$QEDNBD"

# vg_check PID - fail unless the valgrind log of server PID is complete and
# reports no error.
vg_check() {
    local log="$QEDNBD_VG_LOGDIR/qednbd.$1.log"
    [ -f "$log" ] || fail "no valgrind log for server $1"
    if ! grep -q 'ERROR SUMMARY: 0 errors' "$log"; then
        cat "$log" >&2
        fail "valgrind found errors in server $1 (log above)"
    fi
    if grep -q 'definitely lost: [1-9]' "$log"; then
        cat "$log" >&2
        fail "valgrind: memory definitely lost in server $1"
    fi
    note "valgrind: server $1 clean ($(grep -o 'total heap usage: .*' "$log"))"
}

# stop_vg - SIGTERM the server; it must exit 0 and valgrind must be content.
stop_vg() {
    local pid=$SERVER_PID
    stop_server TERM
    [ "$SERVER_RC" -ne 99 ] || { cat "$QEDNBD_VG_LOGDIR/qednbd.$pid.log" >&2; fail "valgrind reported errors (exit 99)"; }
    [ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC after SIGTERM"
    vg_check "$pid"
}

M=1048576
"$PY" -c 'import os, sys; sys.stdout.buffer.write(os.urandom(8 << 20))' >random.raw ||
    fail "cannot make random.raw"
"$PY" -c 'import sys; sys.stdout.buffer.write(bytes([0x6b]) * (16 << 20))' >backing.raw ||
    fail "cannot make backing.raw"
qemu-img create -q -f qed a.qed 64M || fail "create a.qed"
qemu-img create -q -f qed -o cluster_size=65536 -b backing.raw -F raw b.qed 16M ||
    fail "create b.qed"

start_server -e a=a.qed -e b=b.qed
ua=$(nbd_uri a)
ub=$(nbd_uri b)

# ---- qemu-io: plain and copy-on-write paths
qio -f raw "$ua" -- 'write -P 0x11 0 1M' 'write -P 0x12 1M 4k' 'write -P 0x13 3M 100k' \
    'read -P 0x11 0 1M' 'read -P 0x12 1M 4k' 'read -P 0 1052672 1044480' \
    'write -z 5M 1M' 'read -P 0 5M 1M' 'discard 0 64k' 'flush' 'write -P 0x14 0 64k' \
    'read -P 0x14 0 64k' 'read -P 0x13 3M 100k'
qio -f raw "$ub" -- 'read -P 0x6b 0 1M' 'write -P 0x21 4096 512' 'read -P 0x6b 0 4096' \
    'read -P 0x21 4096 512' 'read -P 0x6b 4608 61952' 'write -z 2M 64k' 'read -P 0 2M 64k' \
    'write -P 0x22 10M 3M' 'flush' 'read -P 0x22 10M 3M' 'read -P 0x6b 13M 3M'
note "qemu-io sessions done"

# ---- nbdinfo: list, maps, both contexts
run 120 nbdinfo --list "nbd+unix:///?socket=$SERVER_SOCK"
grep -q 'export="b"' "$tmp/out" || fail "nbdinfo --list does not show export b"
run 120 nbdinfo --map "$ua"
run 120 nbdinfo --map=qemu:allocation-depth "$ub"
run 120 nbdinfo --json "$ub"
note "nbdinfo sessions done"

# ---- nbdcopy in and out
run 300 nbdcopy random.raw "$ua"
run 300 nbdcopy "$ua" copy.raw
cmp <(head -c $((8 * M)) copy.raw) random.raw || fail "nbdcopy round trip differs"
note "nbdcopy round trip of 8 MiB matches"

# ---- libnbd: 4 connections of random verified I/O (aio), 8 MiB..16 MiB
cat >rand.py <<'PY'
import os, random, sys, time
import nbd

uri, seconds = sys.argv[1], float(sys.argv[2])
seed = int.from_bytes(os.urandom(4), 'little')
print('seed', seed, flush=True)
rng = random.Random(seed)
base, span = 8 << 20, 8 << 20
hs = []
for i in range(4):
    h = nbd.NBD()
    h.connect_uri(uri)
    hs.append(h)
shadow = bytearray(span)
# Each connection owns a quarter of the span, so requests in flight never
# overlap; each keeps up to 4 requests in flight.
quarter = span // 4
end = time.monotonic() + seconds
nops = 0
while time.monotonic() < end:
    pending = []
    for i, h in enumerate(hs):
        used = []
        for _ in range(4):
            ln = rng.randrange(1, 129) * 512
            off = i * quarter + rng.randrange(0, (quarter - ln) // 512 + 1) * 512
            if any(off < o + l and o < off + ln for o, l in used):
                continue
            used.append((off, ln))
            kind = rng.choice(('w', 'w', 'r', 'z'))
            if kind == 'w':
                data = rng.randbytes(ln)
                buf = nbd.Buffer.from_bytearray(bytearray(data))
                c = h.aio_pwrite(buf, base + off)
                pending.append((h, c, kind, off, data, buf))
            elif kind == 'z':
                c = h.aio_zero(ln, base + off)
                pending.append((h, c, kind, off, ln, None))
            else:
                buf = nbd.Buffer(ln)
                c = h.aio_pread(buf, base + off)
                pending.append((h, c, kind, off, ln, buf))
    for h, c, kind, off, x, buf in pending:
        while not h.aio_command_completed(c):
            h.poll(-1)
        if kind == 'w':
            shadow[off:off + len(x)] = x
        elif kind == 'z':
            shadow[off:off + x] = bytes(x)
        else:
            got = buf.to_bytearray()
            if got != shadow[off:off + x]:
                sys.exit('read of %d bytes at %d does not match' % (x, base + off))
        nops += 1
for i, h in enumerate(hs):
    h.flush()
for k in range(0, span, 1 << 20):
    if hs[0].pread(1 << 20, base + k) != shadow[k:k + (1 << 20)]:
        sys.exit('final read-back at %d does not match' % (base + k))
for h in hs:
    h.shutdown()
print('ops', nops, flush=True)
PY
run 300 "$NBD_PYTHON" rand.py "$ua" 10
note "libnbd random I/O: $(tail -n 1 "$tmp/out")"

# ---- misbehaving clients: vanish mid-payload, mid-handshake; one refused
cat >bad.py <<'PY'
import socket, struct, sys, time
path, mode = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(path)
g = s.recv(18)
if mode == 'hello':
    sys.exit(0)                      # gone right after the greeting
s.sendall(struct.pack('>I', 3))
name = b'a'
s.sendall(b'IHAVEOPT' + struct.pack('>II', 1, len(name)) + name)
hdr = b''
while len(hdr) < 10:
    hdr += s.recv(10 - len(hdr))
# A 1 MiB WRITE of which 1000 bytes arrive, then the socket closes.
s.sendall(struct.pack('>IHHQQI', 0x25609513, 0, 1, 1, 32 << 20, 1 << 20) + b'x' * 1000)
PY
for i in 1 2 3; do
    run 60 "$PY" bad.py "$SERVER_SOCK" hello
    run 60 "$PY" bad.py "$SERVER_SOCK" partial
done
cat >refuse.py <<'PY'
import sys, time
import nbd
uri = sys.argv[1]
hs = []
deadline = time.monotonic() + 20
while len(hs) < 8:
    # The clients before may still be counted until the server sees them go.
    h = nbd.NBD()
    try:
        h.connect_uri(uri)
        hs.append(h)
    except nbd.Error:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
h = nbd.NBD()
try:
    h.connect_uri(uri)
    sys.exit('client 9 accepted over --max-connections=8')
except nbd.Error as e:
    print('refused:', e.string)
for h in hs:
    h.pread(4096, 0)
    h.shutdown()
PY
run 120 "$NBD_PYTHON" refuse.py "$ua"
server_alive || fail "the server died"
# Nothing of the cut WRITE at 32 MiB reached the image.
qio -f raw "$ua" -- 'read -P 0 32M 1M'
note "misbehaving and refused clients handled"
stop_vg

# ---- SIGTERM with writes in flight (a second server)
start_server a.qed
cat >burst.py <<'PY'
import sys
import nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
bufs = [nbd.Buffer.from_bytearray(bytearray([i + 1]) * 65536) for i in range(64)]
for i, b in enumerate(bufs):
    h.aio_pwrite(b, (40 << 20) + i * 65536)
print('sent', flush=True)
try:
    while h.aio_in_flight() > 0:
        h.poll(-1)
except nbd.Error:
    pass
PY
"$NBD_PYTHON" burst.py "$(nbd_uri)" >burst.out 2>&1 &
burst=$!
for ((i = 0; i < 300; i++)); do
    grep -q '^sent' burst.out 2>/dev/null && break
    sleep 0.1
done
grep -q '^sent' burst.out || { cat burst.out; fail "the burst client did not send"; }
stop_vg
wait "$burst" || { cat burst.out; fail "the burst client failed"; }
image_clean a.qed
image_clean b.qed
echo "ok"
