#!/bin/bash
# --threads: SIGTERM right after clients reset their connections with
# fast-path writes still in flight (issue 14; a review found the image
# freed under such a completion).  A stopping thread must wait until
# every request its connections submitted is back, closed connections'
# too, before the owners close their images and the threads free their
# I/O engines.
#
#   1. the set-up really takes the fast path: a connection on the thread
#      that does not own export "two" overwrites it, and SIGUSR1 shows
#      fast_calls on that thread;
#   2. 20 times: two raw clients queue 8 overwrites of 8 MiB each on
#      "two" (owned by thread 1), reset their sockets (SO_LINGER 0) without
#      reading a reply, and SIGTERM follows at once: the server exits 0,
#      never logs an engine freed with I/O in flight (nor a sanitizer
#      report, in the sanitizer build), and the image is clean.
. "$top_srcdir/tests/prod/prod-common.sh"
need_nbd_python
need qemu-img

# O_DIRECT keeps the writes in flight longest; tmpfs refuses it.
dir=$(mktemp -d /var/tmp/qednbd-fps.XXXXXX) || fail "mktemp in /var/tmp"
trap 'rm -rf "$dir"' EXIT
cache=--cache=none
dd if=/dev/zero of="$dir/probe" bs=4096 count=1 oflag=direct 2>/dev/null || cache=
run 30 "$QEDIMG" create -c 64K "$dir/a.qed" 16M
run 30 "$QEDIMG" create -c 64K "$dir/b.qed" 64M
# Allocate all of b.qed, so that every later write is an overwrite.
prod_start "$tmp/fill.sock" $cache -e ="$dir/a.qed" -e two="$dir/b.qed"
"$NBD_PYTHON" - "$tmp/fill.sock" <<'PY' || fail "filling b.qed failed"
import sys, nbd
h = nbd.NBD()
h.connect_uri("nbd+unix:///two?socket=" + sys.argv[1])
for off in range(0, 64 << 20, 4 << 20):
    h.pwrite(b"\x11" * (4 << 20), off)
h.flush()
h.shutdown()
PY
stop_server TERM "$SERVER_PID"
[ "$SERVER_RC" = 0 ] || fail "exit $SERVER_RC after filling"

cat >raw.py <<'PY'
# Two connections to "two", 8 queued 8 MiB writes each, then a reset.
import socket, struct, sys
sock, n = sys.argv[1], int(sys.argv[2])
def recv(s, k):
    b = b""
    while len(b) < k:
        got = s.recv(k - len(b))
        if not got:
            sys.exit("server closed during the handshake")
        b += got
    return b
def conn(name):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    recv(s, 18)                                   # NBDMAGIC IHAVEOPT flags
    s.sendall(struct.pack(">I", 3))               # fixed newstyle, no zeroes
    s.sendall(b"IHAVEOPT" + struct.pack(">II", 1, len(name)) + name)  # EXPORT_NAME
    recv(s, 10)                                   # size, flags
    return s
ss = [conn(b"two"), conn(b"two")]
ln = 8 << 20
payload = b"\x77" * ln
try:
    for k in range(n):
        for s in ss:
            s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, k, (k * ln) % (64 << 20), ln)
                      + payload)
except (BrokenPipeError, ConnectionResetError):
    pass                                          # a disconnect is a disconnect
for s in ss:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
PY

# 1. The fast path is what runs here: a connection on thread 0 (it owns
#    the default export, not "two") overwrites "two".
prod_start "$tmp/s.sock" --threads=2 $cache -e ="$dir/a.qed" -e two="$dir/b.qed"
"$NBD_PYTHON" - "$tmp/s.sock" <<'PY' || fail "the overwrites failed"
import sys, nbd
hs = []
for i in range(2):
    h = nbd.NBD()
    h.connect_uri("nbd+unix:///two?socket=" + sys.argv[1])
    hs.append(h)
for h in hs:
    for k in range(16):
        h.pwrite(b"\x22" * 65536, k * 65536)
for h in hs:
    h.shutdown()
PY
kill -USR1 "$SERVER_PID"
wait_log "$SERVER_LOG" 'stats: thread index=1 '
line=$(grep 'stats: thread index=0 ' "$SERVER_LOG" | tail -n 1)
[ "$(stat_field "$line" fast_calls)" -gt 0 ] ||
    fail "thread 0 served no fast-path request for export two: $line"
stop_server TERM "$SERVER_PID"
[ "$SERVER_RC" = 0 ] || fail "exit $SERVER_RC"

# 2. Reset, then SIGTERM at once, 20 times.
for it in $(seq 1 20); do
    prod_start "$tmp/s.sock" --threads=2 $cache -e ="$dir/a.qed" -e two="$dir/b.qed"
    "$NBD_PYTHON" raw.py "$tmp/s.sock" 8 >raw.out 2>&1 || fail "round $it: client: $(cat raw.out)"
    stop_server TERM "$SERVER_PID"
    [ "$SERVER_RC" = 0 ] || fail "round $it: exit $SERVER_RC; log: $(tail -n 20 "$SERVER_LOG")"
    if grep -E 'freed with|AddressSanitizer|runtime error' "$SERVER_LOG"; then
        fail "round $it: the server freed or used memory with I/O in flight"
    fi
done
image_clean "$dir/b.qed"
image_clean "$dir/a.qed"
echo "fast-path-shutdown: OK"
