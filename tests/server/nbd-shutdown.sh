#!/bin/bash
# Shutdown and misbehaving clients, with a raw-socket NBD client (python3,
# no libnbd) so that requests can be cut in the middle:
#   1. SIGTERM, then SIGINT, with three idle clients connected: the server
#      closes them, exits 0 within the bound, and qemu-img check finds the
#      image clean with NEED_CHECK clear; data written before is there.
#   2. SIGTERM while a client has 64 writes in flight: the server exits 0;
#      every write it acknowledged is in the image afterwards.
#   3. Clients that die in the middle: one killed (SIGKILL) after half a
#      WRITE payload, one that sends writes and a 32 MiB read and exits
#      without reading the replies, one killed in the middle of the
#      handshake.  The server stays up, another client still reads and writes
#      correctly, and SIGTERM still ends it cleanly.
. "$top_srcdir/tests/server/server-common.sh"
need qemu-img qemu-io


cat >rawnbd.py <<'PY'
"""Minimal NBD client on a raw socket: fixed newstyle, NBD_OPT_EXPORT_NAME
of the default export, simple replies.  rawnbd.py SOCKET MODE"""
import json, os, socket, struct, sys, time

REQ_MAGIC, REPLY_MAGIC = 0x25609513, 0x67446698
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3


def out(*a):
    print(*a, flush=True)


def recv_exact(s, n):
    buf = b''
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError('EOF after %d of %d bytes' % (len(buf), n))
        buf += chunk
    return buf


def connect(path, finish=True):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    s.connect(path)
    hello = recv_exact(s, 18)
    if hello[:16] != b'NBDMAGICIHAVEOPT':
        sys.exit('bad greeting %r' % hello)
    if not finish:
        return s
    s.sendall(struct.pack('>I', 3))                 # FIXED_NEWSTYLE | NO_ZEROES
    s.sendall(b'IHAVEOPT' + struct.pack('>II', 1, 0))   # EXPORT_NAME ""
    size, flags = struct.unpack('>QH', recv_exact(s, 10))
    return s


def request(s, typ, handle, off, length, payload=b''):
    s.sendall(struct.pack('>IHHQQI', REQ_MAGIC, 0, typ, handle, off, length) + payload)


def reply(s):
    magic, err, handle = struct.unpack('>IIQ', recv_exact(s, 16))
    if magic != REPLY_MAGIC:
        sys.exit('bad reply magic %x' % magic)
    return err, handle


path, mode = sys.argv[1], sys.argv[2]

if mode == 'idle':
    # Three clients: one writes 0x5a over 1 MiB at 1 MiB and flushes, then
    # all sit idle until the server closes them.
    socks = [connect(path) for _ in range(3)]
    # Why the flush waits for the write's reply: a flush covers only writes
    # that have completed, and replies may come in any order.
    request(socks[0], CMD_WRITE, 1, 1 << 20, 1 << 20, b'\x5a' * (1 << 20))
    err, handle = reply(socks[0])
    if err or handle != 1:
        sys.exit('write: error %d handle %d' % (err, handle))
    request(socks[0], CMD_FLUSH, 2, 0, 0)
    err, handle = reply(socks[0])
    if err or handle != 2:
        sys.exit('flush: error %d handle %d' % (err, handle))
    out('ready')
    deadline = time.monotonic() + 40
    for i, s in enumerate(socks):
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            data = s.recv(1)
        except socket.timeout:
            sys.exit('connection %d: the server did not close it' % i)
        except ConnectionResetError:
            data = b''
        if data:
            sys.exit('connection %d: unexpected data %r' % (i, data))
    out('closed')

elif mode == 'burst':
    # 64 writes of 64 KiB, byte i+1 at i * 64 KiB, all sent before any
    # reply is read; then collect replies until EOF.
    s = connect(path)
    for i in range(64):
        request(s, CMD_WRITE, 100 + i, i * 65536, 65536, bytes([i + 1]) * 65536)
    out('sent')
    acked = []
    try:
        while len(acked) < 64:
            err, handle = reply(s)
            if err:
                sys.exit('write %d failed with error %d during shutdown' % (handle - 100, err))
            acked.append(handle - 100)
    except (EOFError, ConnectionResetError):
        pass
    out('acked ' + json.dumps(sorted(acked)))

elif mode == 'partial':
    # A WRITE of 1 MiB of which only 1000 bytes arrive; then wait to be killed.
    s = connect(path)
    request(s, CMD_WRITE, 7, 8 << 20, 1 << 20, b'\xee' * 1000)
    out('ready')
    time.sleep(60)

elif mode == 'vanish':
    # Writes and a 32 MiB read, then gone without reading a single reply.
    s = connect(path)
    for i in range(16):
        request(s, CMD_WRITE, 200 + i, (16 << 20) + i * 4096, 4096, b'\x33' * 4096)
    request(s, CMD_READ, 300, 0, 32 << 20)
    out('ready')
    os._exit(0)

elif mode == 'hello':
    # The greeting only: killed before sending the client flags.
    s = connect(path, finish=False)
    out('ready')
    time.sleep(60)

else:
    sys.exit('unknown mode ' + mode)
PY

# wait_line FILE TEXT - wait (at most 20 s) until FILE has a line starting
# with TEXT; give up early when the client ($RAW_PID) has exited.
wait_line() {
    local i
    for ((i = 0; i < 200; i++)); do
        grep -q "^$2" "$1" 2>/dev/null && return 0
        kill -0 "$RAW_PID" 2>/dev/null || break
        sleep 0.1
    done
    grep -q "^$2" "$1" 2>/dev/null && return 0
    cat "$1" >&2
    fail "no '$2' from the client"
}

# raw_bg OUTFILE MODE - start rawnbd.py in the background; sets RAW_PID.
raw_bg() {
    "$PY" rawnbd.py "$SERVER_SOCK" "$2" >"$1" 2>&1 &
    RAW_PID=$!
    track_client "$RAW_PID"
}

# wait_raw PID - wait at most 30 s for a raw client to exit; set RAW_RC.
wait_raw() {
    local i
    for ((i = 0; i < 300; i++)); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$1" 2>/dev/null && { kill -KILL "$1"; fail "raw client $1 did not finish"; }
    RAW_RC=0
    wait "$1" || RAW_RC=$?
}

# ---- 1: SIGTERM / SIGINT with idle clients ------------------------------------
for sig in TERM INT; do
    rm -f idle.qed
    qemu-img create -q -f qed idle.qed 64M || fail "create idle.qed"
    start_server idle.qed
    rm -f idle.out  # the previous pass left "ready" in it
    raw_bg idle.out idle
    client=$RAW_PID
    wait_line idle.out ready
    stop_server "$sig"
    [ "$SERVER_RC" -eq 0 ] || fail "SIG$sig with clients connected: server exited $SERVER_RC, expected 0"
    wait_raw "$client"
    [ "$RAW_RC" -eq 0 ] || { cat idle.out; fail "SIG$sig: the idle clients were not closed cleanly"; }
    grep -q '^closed' idle.out || { cat idle.out; fail "SIG$sig: clients not closed"; }
    image_clean idle.qed
    run 60 qemu-io -f qed -r -c 'read -P 0x5a 1M 1M' -c 'read -P 0 0 1M' -c 'read -P 0 2M 1M' idle.qed
    note "SIG$sig with 3 clients connected: exit 0, image clean"
done

# ---- 2: SIGTERM with writes in flight ------------------------------------------
qemu-img create -q -f qed burst.qed 64M || fail "create burst.qed"
start_server burst.qed
raw_bg burst.out burst
client=$RAW_PID
wait_line burst.out sent
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "SIGTERM with writes in flight: server exited $SERVER_RC"
wait_raw "$client"
[ "$RAW_RC" -eq 0 ] || { cat burst.out; fail "the burst client failed"; }
image_clean burst.qed
acked=$(sed -n 's/^acked //p' burst.out)
[ -n "$acked" ] || { cat burst.out; fail "no result from the burst client"; }
cmds=()
for i in $("$PY" -c 'import json, sys; print(" ".join(map(str, json.loads(sys.argv[1]))))' "$acked"); do
    cmds+=("read -P $((i + 1)) $((i * 65536)) 64k")
done
if [ "${#cmds[@]}" -gt 0 ]; then
    qio -f qed -r burst.qed -- "${cmds[@]}"
fi
note "SIGTERM during a burst: ${#cmds[@]} of 64 writes acknowledged, all of them in the image"

# ---- 3: clients dying in the middle --------------------------------------------
qemu-img create -q -f qed mid.qed 64M || fail "create mid.qed"
start_server mid.qed
uri=$(nbd_uri)

raw_bg partial.out partial
wait_line partial.out ready
kill -KILL "$RAW_PID"
wait "$RAW_PID" 2>/dev/null

raw_bg vanish.out vanish
wait_raw "$RAW_PID"
[ "$RAW_RC" -eq 0 ] || { cat vanish.out; fail "the vanishing client failed before vanishing"; }

raw_bg hello.out hello
wait_line hello.out ready
kill -KILL "$RAW_PID"
wait "$RAW_PID" 2>/dev/null

# Several times over, so that leaks or stuck state would add up.
for _ in 1 2 3 4 5; do
    raw_bg partial.out partial
    wait_line partial.out ready
    kill -KILL "$RAW_PID"
    wait "$RAW_PID" 2>/dev/null
    raw_bg vanish.out vanish
    wait_raw "$RAW_PID"
done
server_alive || fail "the server died after clients vanished in the middle of requests"

# Another client still works, and sees nothing of the cut write.
qio -f raw "$uri" -- 'write -P 0x42 0 1M' 'read -P 0x42 0 1M' 'read -P 0 8M 1M' \
    'write -P 0x43 20M 64k' 'flush' 'read -P 0x43 20M 64k'
server_alive || fail "the server died"
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC after SIGTERM"
image_clean mid.qed
run 60 qemu-io -f qed -r -c 'read -P 0x42 0 1M' -c 'read -P 0 8M 1M' -c 'read -P 0x43 20M 64k' mid.qed
echo "ok: $SERVER_KIND"
