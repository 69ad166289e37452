#!/bin/bash
# The connection limit (--max-connections=N, N = 4 here):
#   1. N clients connect and write their regions.
#   2. Client N+1 is refused cleanly: libnbd's handshake fails with
#      ESHUTDOWN (the server answers its options with NBD_REP_ERR_SHUTDOWN);
#      qemu-io, nbdinfo and nbdcopy fail at once with a message; a raw client
#      sees the greeting, gets ERR_SHUTDOWN for LIST, INFO and GO, an ACK for
#      ABORT and then EOF; a raw client sending EXPORT_NAME (which cannot
#      carry an error) gets EOF, not a reset and not export data.
#   3. Past a second allowance of N refused clients still negotiating, the
#      next one is closed at once (EOF before any greeting).
#   4. Meanwhile the N clients keep working: their data reads back, new
#      writes and flushes succeed.
#   5. When one of the N leaves, a new client gets its slot and sees its data.
#   6. SIGTERM: exit 0, the image is clean and holds what was written.
. "$top_srcdir/tests/server/server-common.sh"
need qemu-img qemu-io nbdinfo nbdcopy
need_nbd_python
[ "$SERVER_KIND" = qednbd ] || skip "the connection-limit test drives qednbd only"
need_server_kind qednbd

N=4
real_server=$QEDNBD
QEDNBD="$tmp/qednbd-max-conns"
cat >"$QEDNBD" <<EOF
#!/bin/sh
exec "$real_server" -v --max-connections=$N "\$@"
EOF
chmod +x "$QEDNBD"

qemu-img create -q -f qed limit.qed 64M || fail "qemu-img create"
start_server limit.qed
uri=$(nbd_uri)

cat >limit.py <<'PY'
import errno, os, socket, struct, subprocess, sys, time
import nbd

sock, N, uri = sys.argv[1], int(sys.argv[2]), sys.argv[3]
M = 1 << 20
OPTS_MAGIC = 0x49484156454F5054        # "IHAVEOPT"
REP_MAGIC = 0x3e889045565a9
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
REP_ACK, REP_ERR_SHUTDOWN = 1, 0x80000007


def fail(msg):
    print('FAIL: ' + msg, flush=True)
    sys.exit(1)


def note(msg):
    print('--- ' + msg, flush=True)


def recv_exact(s, n):
    buf = b''
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return buf
        buf += chunk
    return buf


def expect_eof(s, what):
    """The server must close: EOF (not a reset, not more data) within 10 s."""
    s.settimeout(10)
    try:
        data = s.recv(4096)
    except socket.timeout:
        fail('%s: the server did not close the connection' % what)
    except ConnectionResetError:
        fail('%s: connection reset instead of a clean close' % what)
    if data:
        fail('%s: unexpected data %r instead of EOF' % (what, data[:64]))


def raw_connect(greeting=True):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sock)
    if greeting:
        g = recv_exact(s, 18)
        if g[:16] != b'NBDMAGICIHAVEOPT':
            fail('refused client: bad or missing greeting %r' % g)
        s.sendall(struct.pack('>I', 3))   # FIXED_NEWSTYLE | NO_ZEROES
    return s


def option(s, opt, data=b''):
    s.sendall(struct.pack('>QII', OPTS_MAGIC, opt, len(data)) + data)


def opt_reply(s, what):
    h = recv_exact(s, 20)
    if len(h) < 20:
        fail('%s: connection closed instead of an option reply' % what)
    magic, opt, typ, ln = struct.unpack('>QIII', h)
    if magic != REP_MAGIC:
        fail('%s: bad reply magic %x' % (what, magic))
    payload = recv_exact(s, ln)
    return opt, typ, payload


def pattern(i, gen):
    return bytes([(i * 16 + gen) & 0xff or 1]) * 65536


def region_ok(h, i, gen):
    for k in range(16):
        got = h.pread(65536, i * M + k * 65536)
        if got != pattern(i, gen):
            fail('client %d: region %d chunk %d does not read back (generation %d)'
                 % (i, i, k, gen))


def region_write(h, i, gen):
    for k in range(16):
        h.pwrite(pattern(i, gen), i * M + k * 65536)
    h.flush()


# ---- 1: N clients, each writes its 1 MiB region.
clients = []
for i in range(N):
    h = nbd.NBD()
    h.connect_unix(sock)
    region_write(h, i, 1)
    clients.append(h)
note('%d clients connected and wrote their regions' % N)

# ---- 2: client N+1, through libnbd, then raw.
h = nbd.NBD()
t0 = time.monotonic()
try:
    h.connect_unix(sock)
    fail('client %d was accepted over --max-connections=%d' % (N + 1, N))
except nbd.Error as e:
    # The bindings give the errno by name ("ESHUTDOWN") or by number.
    if e.errno not in (errno.ESHUTDOWN, 'ESHUTDOWN'):
        fail('client %d: expected ESHUTDOWN, got %s (%s)' % (N + 1, e.errno, e.string))
    if time.monotonic() - t0 > 5:
        fail('the refusal took %.1f s' % (time.monotonic() - t0))
    note('libnbd client %d refused: %s' % (N + 1, e.string))
del h   # the bindings close a handle when it is collected

for cmd in (['qemu-io', '-f', 'raw', '-c', 'read 0 4k', uri],
            ['nbdinfo', uri],
            ['nbdcopy', uri, 'null:']):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if p.returncode == 0:
        fail('%s succeeded over the connection limit' % cmd[0])
    msg = (p.stdout + p.stderr).lower()
    if 'connection limit' not in msg and 'shut' not in msg:
        fail('%s: no refusal message: %s' % (cmd[0], p.stdout + p.stderr))
    note('%s refused: %s' % (cmd[0], p.stderr.strip().splitlines()[0]))

s = raw_connect()
for opt, data in ((OPT_LIST, b''),
                  (OPT_INFO, struct.pack('>IH', 0, 0)),
                  (OPT_GO, struct.pack('>IH', 0, 0))):
    option(s, opt, data)
    o, typ, payload = opt_reply(s, 'raw refused client, option %d' % opt)
    if o != opt or typ != REP_ERR_SHUTDOWN:
        fail('raw refused client: option %d answered with option %d type 0x%x, expected '
             'ERR_SHUTDOWN' % (opt, o, typ))
option(s, OPT_ABORT)
o, typ, payload = opt_reply(s, 'raw refused client, ABORT')
if o != OPT_ABORT or typ != REP_ACK:
    fail('ABORT answered with option %d type 0x%x, expected ACK' % (o, typ))
expect_eof(s, 'raw refused client after ABORT')
s.close()
note('raw refused client: ERR_SHUTDOWN for LIST, INFO and GO, ACK for ABORT, then EOF')

s = raw_connect()
option(s, OPT_EXPORT_NAME, b'')
expect_eof(s, 'raw refused client after EXPORT_NAME')
s.close()
note('raw refused client sending EXPORT_NAME: clean EOF')

# ---- 3: N refused clients negotiating at once; the next is closed at once.
held = [raw_connect() for _ in range(N)]
s = raw_connect(greeting=False)
g = recv_exact(s, 18)
if g:
    # A refused one may still have been counted while closing; one retry.
    s.close()
    time.sleep(0.5)
    s = raw_connect(greeting=False)
    g = recv_exact(s, 18)
if g:
    fail('with %d refused clients negotiating, another one got %r instead of EOF' % (N, g))
s.close()
note('past %d refused clients negotiating, the next is closed before the greeting' % N)

# ---- 4: the N clients are unaffected.
for i, c in enumerate(clients):
    region_ok(c, i, 1)
    region_write(c, i, 2)
    region_ok(c, i, 2)
for s in held:
    s.close()
note('the %d clients kept working while others were refused' % N)

# ---- 5: one leaves, a new one takes its slot.
clients[0].shutdown()
clients[0] = None
deadline = time.monotonic() + 10
while True:
    h = nbd.NBD()
    try:
        h.connect_unix(sock)
        break
    except nbd.Error as e:
        # The server notices the departure when its loop runs; until then the
        # newcomer may still be refused.
        del h
        if time.monotonic() > deadline:
            fail('no slot freed 10 s after a client left: %s' % e.string)
        time.sleep(0.1)
clients[0] = h
region_ok(h, 0, 2)
region_write(h, 0, 3)
for i, c in enumerate(clients):
    region_ok(c, i, 3 if i == 0 else 2)
for c in clients:
    c.shutdown()
note('a new client took the freed slot and sees the data')
print('done', flush=True)
PY

run 120 "$NBD_PYTHON" limit.py "$SERVER_SOCK" "$N" "$uri"
cat "$tmp/out"
grep -q '^done' "$tmp/out" || fail "limit.py did not finish"
server_alive || fail "the server died"
grep -q 'over the connection limit' "$SERVER_LOG" ||
    fail "the server log does not mention the refusals"

stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC after SIGTERM"
image_clean limit.qed
# Region 0 holds generation 3, regions 1..N-1 generation 2 (pattern i*16+gen).
qio -f qed -r limit.qed -- "read -P 3 0 1M"
for ((i = 1; i < N; i++)); do
    qio -f qed -r limit.qed -- "read -P $((i * 16 + 2)) ${i}M 1M"
done
echo "ok"
