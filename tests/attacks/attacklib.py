"""attacklib.py - raw-socket NBD client and server control for the attack
tests of tests/attacks/ (issue 4, "Known attack classes").

Nothing here trusts the server: every read has a timeout and an exact
length, every reply field is checked, and an unexpected byte is a failure.

Provides:
  Server      - start qednbd on a Unix socket in a temporary directory, read
                its peak/current RSS, stop it with SIGTERM and check that it
                exits 0 (in a --enable-sanitizers build that also means
                LeakSanitizer found no leak);
  Client      - greeting, options and their replies, requests and simple or
                structured replies, and "the server closed the connection";
  check_alive - a fresh client negotiates, writes, reads back and
                disconnects cleanly: the server still serves;
  run         - the test driver: PASS exits 0, AssertionError FAIL (with
                the server's log), Skip exits 77.
"""
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback

# ---- Protocol constants (nbd-proto.md) ----------------------------------------

NBD_MAGIC = 0x4E42444D41474943
OPTS_MAGIC = 0x49484156454F5054
REP_MAGIC = 0x0003E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCT_MAGIC = 0x668E33EF

FLAG_C_FIXED, FLAG_C_NO_ZEROES = 1, 2

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_PEEK, OPT_STARTTLS = 1, 2, 3, 4, 5
OPT_INFO, OPT_GO, OPT_SR, OPT_LIST_META, OPT_SET_META = 6, 7, 8, 9, 10

REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
REP_ERR = 1 << 31
ERR_UNSUP, ERR_POLICY, ERR_INVALID, ERR_PLATFORM = REP_ERR | 1, REP_ERR | 2, REP_ERR | 3, REP_ERR | 4
ERR_TLS_REQD, ERR_UNKNOWN, ERR_SHUTDOWN = REP_ERR | 5, REP_ERR | 6, REP_ERR | 7
ERR_BLOCK_SIZE_REQD, ERR_TOO_BIG = REP_ERR | 8, REP_ERR | 9

INFO_EXPORT = 0

TX_HAS_FLAGS, TX_READ_ONLY, TX_SEND_DF = 1, 2, 1 << 7

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM = 0, 1, 2, 3, 4
CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 6, 7
F_FUA, F_DF, F_REQ_ONE = 1, 4, 8

REPLY_FLAG_DONE = 1
RT_NONE, RT_OFFSET_DATA, RT_OFFSET_HOLE, RT_BLOCK_STATUS = 0, 1, 2, 5
RT_ERROR, RT_ERROR_OFFSET = (1 << 15) | 1, (1 << 15) | 2

EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN = 1, 5, 12, 22, 28, 75, 95, 108
STATE_HOLE, STATE_ZERO = 1, 2

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MAX_PAYLOAD = 32 * MiB
IO_TIMEOUT = 15.0

REP_NAMES = {
    REP_ACK: "ACK", REP_SERVER: "SERVER", REP_INFO: "INFO", REP_META: "META_CONTEXT",
    ERR_UNSUP: "ERR_UNSUP", ERR_POLICY: "ERR_POLICY", ERR_INVALID: "ERR_INVALID",
    ERR_PLATFORM: "ERR_PLATFORM", ERR_TLS_REQD: "ERR_TLS_REQD", ERR_UNKNOWN: "ERR_UNKNOWN",
    ERR_SHUTDOWN: "ERR_SHUTDOWN", ERR_BLOCK_SIZE_REQD: "ERR_BLOCK_SIZE_REQD",
    ERR_TOO_BIG: "ERR_TOO_BIG",
}


def rep_name(t):
    return REP_NAMES.get(t, "0x%x" % t)


class Skip(Exception):
    """The test cannot run here (exit 77)."""


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def log(msg):
    print(msg, flush=True)


# ---- Wire helpers -----------------------------------------------------------------

def opt_bytes(option, data=b"", length=None):
    """An option header (+ data); @length overrides the header's length field."""
    return struct.pack(">QII", OPTS_MAGIC, option, len(data) if length is None else length) + data


def name_info(name, reqs=()):
    n = name.encode() if isinstance(name, str) else name
    return struct.pack(">I", len(n)) + n + struct.pack(">H", len(reqs)) + \
        b"".join(struct.pack(">H", r) for r in reqs)


def meta_query(name, queries):
    n = name.encode()
    out = struct.pack(">I", len(n)) + n + struct.pack(">I", len(queries))
    for q in queries:
        q = q.encode()
        out += struct.pack(">I", len(q)) + q
    return out


def req_bytes(cmd, offset=0, length=0, flags=0, cookie=0, payload=b""):
    return struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, cookie, offset, length) + payload


# ---- Server ---------------------------------------------------------------------

def is_sanitized(path):
    with open(path, "rb") as f:
        return b"__asan_init" in f.read()


def read_status_kb(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


class Server:
    """qednbd on a Unix socket, with its own scratch directory."""

    def __init__(self, tmp):
        top = os.environ.get("top_builddir")
        if not top:
            raise Skip("top_builddir is not set (run through make check)")
        self.binary = os.path.join(top, "server", "qednbd")
        check(os.access(self.binary, os.X_OK), "%s is not built" % self.binary)
        self.tmp = tmp
        self.sock = os.path.join(tmp, "nbd.sock")
        self.proc = None
        self.logpath = os.path.join(tmp, "server.log")
        self.sanitized = is_sanitized(self.binary)

    def make_image(self, name, size):
        if not shutil.which("qemu-img"):
            raise Skip("qemu-img is not installed")
        path = os.path.join(self.tmp, name)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qed", path, str(size)], check=True)
        return path

    def start(self, args, nofile=None):
        """Start qednbd with @args; @nofile, if given, is its RLIMIT_NOFILE."""
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        env = dict(os.environ)
        if self.sanitized:
            # A small quarantine, so that RSS bounds mean the same with ASan.
            env["ASAN_OPTIONS"] = "quarantine_size_mb=8:detect_leaks=1" + \
                (":" + env["ASAN_OPTIONS"] if env.get("ASAN_OPTIONS") else "")
        self.logf = open(self.logpath, "ab")
        cmd = [self.binary, "-u", self.sock] + list(args)
        self.logf.write(("+ %s\n" % " ".join(cmd)).encode())
        self.logf.flush()
        limit = None
        if nofile is not None:
            def limit():
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=self.logf, env=env, preexec_fn=limit)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            check(self.proc.poll() is None, "qednbd exited at start-up (status %s)" % self.proc.returncode)
            if os.path.exists(self.sock):
                try:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(self.sock)
                    s.close()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError("qednbd did not listen on %s within 20 s" % self.sock)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def vmhwm_kb(self):
        """Peak resident set size so far (kB)."""
        check(self.alive(), "qednbd died (status %s)" % (self.proc.returncode if self.proc else None))
        return read_status_kb(self.pid, "VmHWM")

    def vmrss_kb(self):
        check(self.alive(), "qednbd died (status %s)" % (self.proc.returncode if self.proc else None))
        return read_status_kb(self.pid, "VmRSS")

    def stop(self):
        """SIGTERM; the server must exit 0 within 20 s."""
        check(self.alive(), "qednbd died before the end of the test (status %s)" %
              (self.proc.returncode if self.proc else None))
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("qednbd did not exit within 20 s of SIGTERM")
        self.proc = None
        self.logf.close()
        check(rc == 0, "qednbd exited with status %d after SIGTERM (see its log)" % rc)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, n=40):
        try:
            with open(self.logpath, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return "(no log)"


# ---- Client ---------------------------------------------------------------------

class Closed(Exception):
    """The server closed the connection."""


class Client:
    def __init__(self, server, timeout=IO_TIMEOUT):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(server.sock)
        self.t_connect = time.monotonic()
        self.cookie = 0
        self.structured = False

    def close(self):
        self.s.close()

    def send(self, data):
        self.s.sendall(data)

    def try_send(self, data):
        """Send, tolerating a server that has already closed. True if all went."""
        try:
            self.s.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.s.recv(min(n - len(buf), 4 * MiB))
            except ConnectionResetError:
                chunk = b""
            except socket.timeout:
                raise AssertionError("timed out waiting for %d bytes from the server (got %d)" %
                                     (n, len(buf)))
            if not chunk:
                raise Closed("server closed the connection after %d of %d bytes" % (len(buf), n))
            buf += chunk
        return bytes(buf)

    def wait_closed(self, timeout):
        """Read until the server closes; returns the bytes that came first.
        Fails if the connection is still open after @timeout seconds."""
        self.s.settimeout(0.2)
        got = bytearray()
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    chunk = self.s.recv(1 * MiB)
                except socket.timeout:
                    if time.monotonic() > deadline:
                        raise AssertionError("the server did not close the connection within %g s"
                                             % timeout)
                    continue
                except ConnectionResetError:
                    return bytes(got)
                if not chunk:
                    return bytes(got)
                got += chunk
        finally:
            self.s.settimeout(IO_TIMEOUT)

    # -- handshake --
    def greet(self, flags=FLAG_C_FIXED | FLAG_C_NO_ZEROES):
        g = self.recv_exact(18)
        magic, opts, hs = struct.unpack(">QQH", g)
        check(magic == NBD_MAGIC and opts == OPTS_MAGIC, "bad greeting %r" % g)
        check(hs & 1, "server does not offer fixed newstyle")
        self.send(struct.pack(">I", flags))
        self.no_zeroes = bool(flags & FLAG_C_NO_ZEROES)

    def opt(self, option, data=b"", length=None):
        self.send(opt_bytes(option, data, length))

    def opt_reply(self, expect_opt=None):
        h = self.recv_exact(20)
        magic, option, rtype, length = struct.unpack(">QIII", h)
        check(magic == REP_MAGIC, "bad option reply magic 0x%x" % magic)
        if expect_opt is not None:
            check(option == expect_opt, "reply for option %d, expected option %d" % (option, expect_opt))
        check(length <= 64 * KiB, "option reply of %d bytes" % length)
        data = self.recv_exact(length) if length else b""
        return option, rtype, data

    def opt_final(self, expect_opt):
        """Collect replies to @expect_opt up to the final ACK or error.
        Returns (final_type, [(type, data) of the non-final replies])."""
        items = []
        while True:
            _, rtype, data = self.opt_reply(expect_opt)
            if rtype == REP_ACK or rtype & REP_ERR:
                return rtype, items
            items.append((rtype, data))
            check(len(items) < 1000, "more than 1000 replies to one option")

    def negotiate(self, name="", structured=False, contexts=()):
        """[STRUCTURED_REPLY] [SET_META_CONTEXT] GO; returns (size, tx_flags, {ctx: id})."""
        ids = {}
        if structured:
            self.opt(OPT_SR)
            t, _ = self.opt_final(OPT_SR)
            check(t == REP_ACK, "STRUCTURED_REPLY answered %s" % rep_name(t))
            self.structured = True
        if contexts:
            self.opt(OPT_SET_META, meta_query(name, list(contexts)))
            t, items = self.opt_final(OPT_SET_META)
            check(t == REP_ACK, "SET_META_CONTEXT answered %s" % rep_name(t))
            for rtype, data in items:
                check(rtype == REP_META, "unexpected reply %s to SET_META_CONTEXT" % rep_name(rtype))
                ids[data[4:].decode()] = struct.unpack(">I", data[:4])[0]
        self.opt(OPT_GO, name_info(name))
        t, items = self.opt_final(OPT_GO)
        check(t == REP_ACK, "GO '%s' answered %s" % (name, rep_name(t)))
        size = flags = None
        for rtype, data in items:
            check(rtype == REP_INFO, "unexpected reply %s to GO" % rep_name(rtype))
            if struct.unpack(">H", data[:2])[0] == INFO_EXPORT:
                check(len(data) == 12, "NBD_INFO_EXPORT of %d bytes" % len(data))
                _, size, flags = struct.unpack(">HQH", data)
        check(size is not None, "GO without NBD_INFO_EXPORT")
        self.size, self.tx_flags = size, flags
        return size, flags, ids

    # -- transmission --
    def request(self, cmd, offset=0, length=0, flags=0, payload=b"", cookie=None):
        if cookie is None:
            self.cookie += 1
            cookie = self.cookie
        self.send(req_bytes(cmd, offset, length, flags, cookie, payload))
        return cookie

    def reply_header(self):
        """Next reply: ('simple', error, cookie) or ('chunk', flags, type, cookie, length)."""
        m = self.recv_exact(4)
        magic = struct.unpack(">I", m)[0]
        if magic == SIMPLE_MAGIC:
            err, cookie = struct.unpack(">IQ", self.recv_exact(12))
            return ("simple", err, cookie)
        check(magic == STRUCT_MAGIC, "bad reply magic 0x%x" % magic)
        fl, typ, cookie, length = struct.unpack(">HHQI", self.recv_exact(16))
        return ("chunk", fl, typ, cookie, length)

    def simple_reply(self, cookie, data_len=0):
        """A simple reply for @cookie: (error, data); data only on success."""
        h = self.reply_header()
        check(h[0] == "simple", "expected a simple reply, got %r" % (h,))
        _, err, c = h
        check(c == cookie, "reply for cookie %d, expected %d" % (c, cookie))
        data = self.recv_exact(data_len) if (err == 0 and data_len) else b""
        return err, data

    def structured_reply(self, cookie):
        """Every chunk of the reply to @cookie: [(flags, type, payload)], the
        last one with DONE.  Chunks of other cookies are a failure."""
        chunks = []
        while True:
            h = self.reply_header()
            check(h[0] == "chunk", "expected a structured reply chunk, got %r" % (h,))
            _, fl, typ, c, length = h
            check(c == cookie, "chunk for cookie %d, expected %d" % (c, cookie))
            check(length <= MAX_PAYLOAD + 64 * KiB, "chunk of %d bytes" % length)
            chunks.append((fl, typ, self.recv_exact(length) if length else b""))
            if fl & REPLY_FLAG_DONE:
                return chunks
            check(len(chunks) < 100000, "reply never ends")

    def reply_error(self, cookie):
        """The error of the reply to @cookie (0 = success) of a request whose
        successful reply carries no data (WRITE, FLUSH, TRIM...).  With
        structured replies the server may still answer those with a simple
        reply, or with chunks."""
        h = self.reply_header()
        if h[0] == "simple":
            check(h[2] == cookie, "reply for cookie %d, expected %d" % (h[2], cookie))
            return h[1]
        check(self.structured, "structured reply without STRUCTURED_REPLY")
        _, fl, typ, c, length = h
        check(c == cookie, "chunk for cookie %d, expected %d" % (c, cookie))
        chunks = [(fl, typ, self.recv_exact(length) if length else b"")]
        if not fl & REPLY_FLAG_DONE:
            chunks += self.structured_reply(cookie)
        err = 0
        for fl, typ, payload in chunks:
            if typ & (1 << 15):
                err = struct.unpack(">I", payload[:4])[0]
            else:
                check(typ == RT_NONE, "chunk type %d in a reply without data" % typ)
        return err

    def read(self, offset, length, flags=0):
        """READ and wait for its reply (simple or structured): (error, data).
        A structured reply is checked to cover the range exactly once."""
        cookie = self.request(CMD_READ, offset, length, flags)
        if not self.structured:
            return self.simple_reply(cookie, length)
        buf = bytearray(length)
        seen = 0
        err = 0
        for fl, typ, payload in self.structured_reply(cookie):
            if typ == RT_OFFSET_DATA:
                o = struct.unpack(">Q", payload[:8])[0] - offset
                n = len(payload) - 8
                check(0 <= o and o + n <= length, "data chunk outside the request")
                buf[o:o + n] = payload[8:]
                seen += n
            elif typ == RT_OFFSET_HOLE:
                o, n = struct.unpack(">QI", payload)
                o -= offset
                check(0 <= o and o + n <= length, "hole chunk outside the request")
                buf[o:o + n] = bytes(n)
                seen += n
            elif typ & (1 << 15):
                err = struct.unpack(">I", payload[:4])[0]
            else:
                check(typ == RT_NONE, "unexpected chunk type %d in a READ reply" % typ)
        if err:
            return err, b""
        check(seen == length, "READ reply covered %d of %d bytes" % (seen, length))
        return 0, bytes(buf)

    def disc(self):
        self.request(CMD_DISC)


def check_alive(server, name=""):
    """A new client negotiates, writes 4 KiB near the end of the export,
    reads it back, and soft-disconnects: the server still serves."""
    check(server.alive(), "qednbd died (status %s)" % server.proc.returncode)
    c = Client(server)
    c.greet()
    size, flags, _ = c.negotiate(name)
    off = size - 64 * KiB
    pattern = os.urandom(4096)
    cw = c.request(CMD_WRITE, off, len(pattern), payload=pattern)
    err, _ = c.simple_reply(cw)
    check(err == 0, "liveness WRITE failed with error %d" % err)
    cr = c.request(CMD_READ, off, 4096)
    err, data = c.simple_reply(cr, 4096)
    check(err == 0 and data == pattern, "liveness READ returned other data (error %d)" % err)
    c.disc()
    c.wait_closed(10)
    c.close()


def kb_growth_ok(before_kb, after_kb, limit_mib, what):
    growth = (after_kb - before_kb) / 1024.0
    log("  %s: peak RSS %d kB -> %d kB (+%.1f MiB, limit %d MiB)" %
        (what, before_kb, after_kb, growth, limit_mib))
    check(growth < limit_mib, "%s: server RSS grew by %.1f MiB (limit %d MiB)" %
          (what, growth, limit_mib))


def run(test, title):
    """Run @test(server, tmp) with a scratch directory and a Server."""
    log("%s" % title)
    tmp = tempfile.mkdtemp(prefix="qednbd-attack.")
    server = None
    start = time.monotonic()
    try:
        server = Server(tmp)
        test(server)
        log("PASS (%.1f s)" % (time.monotonic() - start))
        return 0
    except Skip as e:
        print("SKIP: %s" % e)
        return 77
    except (AssertionError, Closed, OSError, struct.error) as e:
        traceback.print_exc()
        print("FAIL: %s" % e)
        if server:
            print("--- server log (last lines):")
            print(server.log_tail())
        return 1
    finally:
        if server:
            server.kill()
        shutil.rmtree(tmp, ignore_errors=True)
