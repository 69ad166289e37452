#!/bin/bash
# The NBD TLS rules, checked byte by byte with a raw client (Python's socket
# and ssl modules; the TLS handshake checks our certificate against the test
# CA and the name localhost):
#   --tls=require (FORCEDTLS):
#     before STARTTLS, LIST, INFO, GO, STRUCTURED_REPLY, LIST/SET_META_CONTEXT,
#     PEEK_EXPORT and an unknown option all get NBD_REP_ERR_TLS_REQD; ABORT
#     is acknowledged; EXPORT_NAME ends the session with no reply;
#     STARTTLS with data gets ERR_INVALID; STARTTLS gets ACK, then TLS;
#     over TLS no option gets ERR_TLS_REQD, a second STARTTLS gets
#     ERR_INVALID, EXPORT_NAME enters transmission, and a 1 MiB READ (more
#     than one TLS record) returns the image's data;
#     garbage instead of a ClientHello: the session ends, the server goes on;
#   --tls=on (SELECTIVETLS, every export TLS-optional):
#     plaintext sessions are served as usual;
#     STRUCTURED_REPLY and SET_META_CONTEXT before STARTTLS do not survive
#     it: after the upgrade GO advertises no SEND_DF, READ answers with a
#     simple reply, BLOCK_STATUS is refused (no context);
#     STARTTLS and then silence: the handshake timeout closes the session.
. "$top_srcdir/tests/prod/prod-common.sh"
need qemu-io
make_certs certs

run 30 "$QEDIMG" create disk.qed 16M
qio -f qed disk.qed -- "write -P 0x5a 0 1M" "write -P 0xa5 1M 64k"

prod_start "$tmp/req.sock" -v -r --tls=require --tls-certificates="$tmp/certs" disk.qed
req_log=$SERVER_LOG
req_pid=$SERVER_PID
prod_start "$tmp/on.sock" -v -r --tls=on --tls-certificates="$tmp/certs" --handshake-timeout=3 disk.qed
on_log=$SERVER_LOG

run 120 "$PY" - "$tmp/req.sock" "$tmp/on.sock" "$tmp/certs/ca-cert.pem" <<'PY'
import socket, ssl, struct, sys, time

REQ, ON, CA = sys.argv[1:4]
IHAVEOPT, REPMAGIC = 0x49484156454F5054, 0x0003e889045565a9
EXPORT_NAME, ABORT, LIST, PEEK, STARTTLS, INFO, GO, SR, LIST_META, SET_META = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
ACK, SERVER, REP_INFO, META = 1, 2, 3, 4
ERR_POLICY, ERR_INVALID, ERR_TLS_REQD = 0x80000002, 0x80000003, 0x80000005
CMD_READ, CMD_DISC, CMD_BLOCK_STATUS = 0, 2, 7
SIMPLE, STRUCTURED = 0x67446698, 0x668e33ef
FLAG_SEND_DF = 1 << 7
NAMES = {ACK: "ACK", SERVER: "SERVER", REP_INFO: "INFO", META: "META_CONTEXT",
         ERR_POLICY: "ERR_POLICY", ERR_INVALID: "ERR_INVALID", ERR_TLS_REQD: "ERR_TLS_REQD"}

def name(t):
    return NAMES.get(t, "0x%x" % t)

def check(cond, msg):
    if not cond:
        sys.exit("FAIL: " + msg)

class Client:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.s.settimeout(15)

    def send(self, b):
        self.s.sendall(b)

    def send_may_close(self, b):
        """Send what the server may hang up on before reading it all: EPIPE
        or ECONNRESET here is that hang-up, which the caller then checks."""
        try:
            self.s.sendall(b)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def recvn(self, n):
        buf = b""
        while len(buf) < n:
            d = self.s.recv(n - len(buf))
            if not d:
                raise EOFError("connection closed after %d of %d bytes" % (len(buf), n))
            buf += d
        return buf

    def greet(self):
        magic, opts, flags = struct.unpack(">QQH", self.recvn(18))
        check(magic == 0x4e42444d41474943 and opts == IHAVEOPT, "bad greeting")
        self.send(struct.pack(">I", 3))         # FIXED_NEWSTYLE | NO_ZEROES
        return self

    def opt(self, o, data=b""):
        self.send(struct.pack(">QII", IHAVEOPT, o, len(data)) + data)

    def final(self, o):
        items = []
        while True:
            magic, ro, t, n = struct.unpack(">QIII", self.recvn(20))
            data = self.recvn(n)
            check(magic == REPMAGIC and ro == o, "bad reply to option %d: magic %x option %d"
                  % (o, magic, ro))
            if t in (SERVER, REP_INFO, META):
                items.append((t, data))
                continue
            return t, items

    def ask(self, o, data=b""):
        self.opt(o, data)
        return self.final(o)

    def closed(self, timeout=10):
        self.s.settimeout(timeout)
        try:
            return self.s.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError, OSError):
            return True

    def starttls(self):
        t, _ = self.ask(STARTTLS)
        check(t == ACK, "STARTTLS: %s" % name(t))
        ctx = ssl.create_default_context(cafile=CA)
        self.s = ctx.wrap_socket(self.s, server_hostname="localhost")
        return self.s.version()

    def go(self, export=b""):
        t, items = self.ask(GO, struct.pack(">I", len(export)) + export + struct.pack(">H", 0))
        check(t == ACK, "GO: %s" % name(t))
        for kind, data in items:
            if kind == REP_INFO and struct.unpack(">H", data[:2])[0] == 0:
                return struct.unpack(">QH", data[2:12])
        sys.exit("FAIL: GO without NBD_INFO_EXPORT")

    def request(self, cmd, off, length, cookie=1, flags=0):
        self.send(struct.pack(">IHHQQI", 0x25609513, flags, cmd, cookie, off, length))

    def simple_reply(self, cookie, datalen):
        magic, err, ck = struct.unpack(">IIQ", self.recvn(16))
        check(magic == SIMPLE, "expected a simple reply, got magic 0x%x" % magic)
        check(ck == cookie, "cookie %d, expected %d" % (ck, cookie))
        return err, (self.recvn(datalen) if err == 0 else b"")

    def disc(self):
        self.request(CMD_DISC, 0, 0, cookie=99)

meta_query = lambda exp, q: (struct.pack(">I", len(exp)) + exp + struct.pack(">I", 1)
                             + struct.pack(">I", len(q)) + q)

print("FORCEDTLS: every option but STARTTLS and ABORT before the upgrade")
c = Client(REQ).greet()
for o, data in [(LIST, b""), (INFO, struct.pack(">IH", 0, 0)), (GO, struct.pack(">IH", 0, 0)),
                (SR, b""), (LIST_META, meta_query(b"", b"base:allocation")),
                (SET_META, meta_query(b"", b"base:allocation")), (PEEK, b""), (99, b"x")]:
    t, items = c.ask(o, data)
    check(t == ERR_TLS_REQD and not items, "option %d before TLS: %s" % (o, name(t)))
t, _ = c.ask(STARTTLS, b"junk")
check(t == ERR_INVALID, "STARTTLS with data: %s" % name(t))
t, _ = c.ask(ABORT)
check(t == ACK, "ABORT: %s" % name(t))
check(c.closed(), "still open after ABORT")

print("FORCEDTLS: EXPORT_NAME before the upgrade ends the session")
c = Client(REQ).greet()
c.send_may_close(struct.pack(">QII", IHAVEOPT, EXPORT_NAME, 0))
check(c.closed(), "EXPORT_NAME before TLS did not end the session")

print("FORCEDTLS: STARTTLS, then everything works over TLS")
c = Client(REQ).greet()
version = c.starttls()
print("  negotiated", version)
t, items = c.ask(LIST)
check(t == ACK and len(items) == 1 and items[0][0] == SERVER, "LIST over TLS: %s" % name(t))
t, _ = c.ask(STARTTLS)
check(t == ERR_INVALID, "second STARTTLS: %s" % name(t))
t, _ = c.ask(99)
check(t != ERR_TLS_REQD, "ERR_TLS_REQD sent over TLS")
c.opt(EXPORT_NAME, b"")
size, flags = struct.unpack(">QH", c.recvn(10))      # NO_ZEROES: no padding
check(size == 16 << 20, "EXPORT_NAME over TLS: size %d" % size)
c.request(CMD_READ, 0, 1 << 20, cookie=7)
err, data = c.simple_reply(7, 1 << 20)
check(err == 0 and data == b"\x5a" * (1 << 20), "1 MiB READ over TLS: error %d or wrong data" % err)
c.request(CMD_READ, 1 << 20, 65536, cookie=8)
err, data = c.simple_reply(8, 65536)
check(err == 0 and data == b"\xa5" * 65536, "second READ over TLS")
c.disc()
check(c.closed(), "not closed after DISC")

print("FORCEDTLS: garbage instead of a ClientHello")
c = Client(REQ).greet()
t, _ = c.ask(STARTTLS)
check(t == ACK, "STARTTLS: %s" % name(t))
c.send_may_close(b"\x16\x03\x01\x00\x05hello, not TLS at all" + bytes(200))
check(c.closed(), "the server kept a session whose TLS handshake failed")
c = Client(REQ).greet()
c.starttls()
size, _ = c.go()
check(size == 16 << 20, "server unusable after a failed handshake")
c.disc()

print("SELECTIVETLS: plaintext is served")
c = Client(ON).greet()
t, _ = c.ask(INFO, struct.pack(">IH", 0, 0))
check(t == ACK, "INFO in plaintext with --tls=on: %s" % name(t))
size, flags = c.go()
c.request(CMD_READ, 0, 4096, cookie=3)
err, data = c.simple_reply(3, 4096)
check(err == 0 and data == b"\x5a" * 4096, "plaintext READ")
c.disc()

print("SELECTIVETLS: nothing negotiated before STARTTLS survives it")
c = Client(ON).greet()
t, _ = c.ask(SR)
check(t == ACK, "STRUCTURED_REPLY: %s" % name(t))
t, items = c.ask(SET_META, meta_query(b"", b"base:allocation"))
check(t == ACK and len(items) == 1 and items[0][0] == META, "SET_META_CONTEXT: %s" % name(t))
c.starttls()
size, flags = c.go()
check(not flags & FLAG_SEND_DF, "SEND_DF advertised after STARTTLS: structured replies survived "
      "(flags 0x%x)" % flags)
c.request(CMD_READ, 0, 4096, cookie=4)
err, data = c.simple_reply(4, 4096)       # a structured reply would fail here
check(err == 0 and data == b"\x5a" * 4096, "READ after STARTTLS")
c.request(CMD_BLOCK_STATUS, 0, 65536, cookie=5)
err, _ = c.simple_reply(5, 0)
check(err == 22, "BLOCK_STATUS after STARTTLS: error %d, expected EINVAL (no context)" % err)
c.disc()
check(c.closed(), "not closed after DISC")

print("SELECTIVETLS: STARTTLS, then silence: the handshake timeout")
c = Client(ON).greet()
t, _ = c.ask(STARTTLS)
check(t == ACK, "STARTTLS: %s" % name(t))
start = time.monotonic()
check(c.closed(timeout=20), "the silent TLS client was not dropped")
waited = time.monotonic() - start
check(2 <= waited <= 12, "dropped after %.1f s, expected about 3" % waited)
print("  dropped after %.1f s" % waited)
print("ok")
PY
cat "$tmp/out"
log_has "$req_log" "TLS handshake with .* failed"
log_has "$on_log" "handshake timeout"
server_alive "$req_pid" || fail "the --tls=require server died"
stop_server TERM "$req_pid"
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC"
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC"
image_clean disk.qed
echo PASS
