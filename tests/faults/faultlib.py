"""faultlib.py - shared helpers of the fault tests (kill -9, injected errors,
full disk).  Not a test itself.

Everything here runs the real server binary, $top_builddir/server/qednbd,
and judges the image with `qemu-img check` (the reference) and
`qed-img check` (ours).  Exit codes follow the test convention: 0 pass,
77 skip, anything else fail.
"""
import atexit
import errno
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

try:
    import nbd
except ImportError:  # the .sh wrapper picks a python3 that has it
    nbd = None

SKIP = 77


class Fail(Exception):
    """A test assertion failed."""


def log(msg):
    print(msg, flush=True)


def skip(msg):
    print("SKIP: %s" % msg, flush=True)
    sys.exit(SKIP)


def builddir():
    d = os.environ.get("top_builddir")
    if not d:
        raise Fail("top_builddir is not set (run through make check)")
    return d


def qednbd_path():
    p = os.path.join(builddir(), "server", "qednbd")
    if not os.access(p, os.X_OK):
        raise Fail("%s is not built" % p)
    return p


def qedimg_path():
    p = os.path.join(builddir(), "contrib", "qed-img", "qed-img")
    if not os.access(p, os.X_OK):
        raise Fail("%s is not built" % p)
    return p


def need(*progs):
    for p in progs:
        if shutil.which(p) is None:
            skip("%s is not installed" % p)
    if nbd is None:
        skip("python3 has no libnbd bindings (python3-libnbd)")


def run(cmd, timeout=60, ok=(0,), what=None):
    """Run cmd (a list), bounded; return (rc, output).  Raise Fail when the
    exit status is not in ok."""
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Fail("%s timed out after %d s" % (" ".join(cmd), timeout))
    out = p.stdout.decode(errors="replace")
    if ok is not None and p.returncode not in ok:
        raise Fail("%s: '%s' exited %d:\n%s" % (what or "command", " ".join(cmd),
                                                 p.returncode, out))
    return p.returncode, out


def run_unlocked(cmd, timeout=60, ok=(0,), what=None):
    """run() a QEMU tool on an image that a killed server may still lock for
    a moment: the kernel may close the image a little after the process is
    reaped (io_uring requests still in flight hold the file, and with it the
    server's OFD locks).  Retries for up to 10 s while the tool says so."""
    deadline = time.monotonic() + 10
    while True:
        rc, out = run(cmd, timeout, None, what)
        if "lock" not in out or rc == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if ok is not None and rc not in ok:
        raise Fail("%s: '%s' exited %d:\n%s" % (what or "command", " ".join(cmd), rc, out))
    return rc, out


def qemu_img_create(path, size, cluster=None, table=None, backing=None, backing_fmt="raw"):
    opts = []
    if cluster:
        opts.append("cluster_size=%d" % cluster)
    if table:
        opts.append("table_size=%d" % table)
    cmd = ["qemu-img", "create", "-q", "-f", "qed"]
    if opts:
        cmd += ["-o", ",".join(opts)]
    if backing:
        cmd += ["-b", backing, "-F", backing_fmt]
    cmd += [path, str(size)]
    run(cmd, what="create image")


def header_features(path):
    with open(path, "rb") as f:
        h = f.read(24)
    if len(h) < 24 or h[:4] != b"QED\0":
        raise Fail("%s is not a QED image" % path)
    return int.from_bytes(h[16:24], "little")


def check_image(path, what, allow_leaks=True):
    """`qemu-img check` and `qed-img check` must find no corruption: exit 0
    (clean) or, when allow_leaks, 3 (leaked clusters only).  The server must
    be down (qemu-img refuses a locked image).  Returns the two exit codes."""
    ok = (0, 3) if allow_leaks else (0,)
    rc1, out1 = run_unlocked(["qemu-img", "check", "-f", "qed", path], ok=None)
    if rc1 not in ok:
        raise Fail("%s: qemu-img check %s exited %d:\n%s" % (what, path, rc1, out1))
    rc2, out2 = run([qedimg_path(), "check", path], ok=None)
    if rc2 not in ok:
        raise Fail("%s: qed-img check %s exited %d:\n%s" % (what, path, rc2, out2))
    return rc1, rc2


_live = []


def _kill_live():
    """At exit (a failed assertion included): no server outlives the test."""
    for s in list(_live):
        if s.proc is not None and s.proc.poll() is None:
            s.proc.kill()
            try:
                s.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass


atexit.register(_kill_live)


def holders(path):
    """Processes that have path open (for a diagnosis of "in use")."""
    found = []
    real = os.path.realpath(path)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir("/proc/%s/fd" % pid):
                if os.path.realpath("/proc/%s/fd/%s" % (pid, fd)) == real:
                    with open("/proc/%s/cmdline" % pid, "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                    with open("/proc/%s/stat" % pid) as f:
                        state = f.read().split(") ")[-1].split()[0]
                    found.append("%s [%s] %s" % (pid, state, cmd.strip()))
                    break
        except OSError:
            continue
    return "; ".join(found)


class Server:
    """One qednbd process on a Unix socket.  Its pid is appended to
    $FAULTS_PIDFILE (when set), so that the shell wrapper can kill it even
    when this python process is killed first."""

    def __init__(self, image, sock, logpath, args=(), env=None, preexec=None):
        self.image = image
        self.sock = sock
        self.logpath = logpath
        self.args = list(args)
        self.env = env
        self.preexec = preexec
        self.proc = None

    def start(self, timeout=20):
        """Start and wait until it accepts connections.  No retry here: right
        after a kill -9 the image may still be locked for a moment (see
        check_image), and the server itself waits for the lock (--lock-wait,
        5 s by default), as it must when a supervisor restarts it."""
        try:
            return self.start_once(timeout)
        except Fail as e:
            if "in use" not in str(e):
                raise
            raise Fail("%s\nprocesses that have %s open: %s" %
                       (e, self.image, holders(self.image) or "none"))

    def start_once(self, timeout):
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        # QEDNBD_TEST_ARGS: extra options for every server, e.g. --cache=none
        # (tests/server/cache-modes.sh runs the kill -9 tests with it).
        cmd = ([qednbd_path()] + shlex.split(os.environ.get("QEDNBD_TEST_ARGS", "")) +
               self.args + ["-u", self.sock, self.image])
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        with open(self.logpath, "ab") as lf:
            lf.write(("+ %s\n" % " ".join(cmd)).encode())
            lf.flush()
            # restore_signals (the default) gives the server SIGPIPE and
            # SIGXFSZ at their default disposition, as a shell would.
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf,
                                         env=env, preexec_fn=self.preexec)
        _live.append(self)
        pidfile = os.environ.get("FAULTS_PIDFILE")
        if pidfile:
            with open(pidfile, "a") as f:
                f.write("%d\n" % self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Fail("server exited %d before listening:\n%s" %
                           (self.proc.returncode, self.log_tail()))
            if os.path.exists(self.sock):
                s = socket.socket(socket.AF_UNIX)
                try:
                    s.connect(self.sock)
                    s.close()
                    return
                except OSError:
                    pass
                finally:
                    s.close()
            time.sleep(0.02)
        raise Fail("server did not listen within %d s:\n%s" % (timeout, self.log_tail()))

    def uri(self):
        return "nbd+unix:///?socket=%s" % self.sock

    def connect(self):
        h = nbd.NBD()
        h.connect_uri(self.uri())
        return h

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def pid(self):
        return self.proc.pid

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Send sig and wait; return the exit status (negative: killed by
        that signal)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Fail("server did not exit within %d s of signal %d" % (timeout, sig))
        self.proc = None
        if self in _live:
            _live.remove(self)
        return rc

    def wait_exit(self, timeout=30):
        """Wait for an exit already under way (no signal sent)."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Fail("server did not exit within %d s" % timeout)
        self.proc = None
        if self in _live:
            _live.remove(self)
        return rc

    def kill9(self):
        return self.stop(signal.SIGKILL)

    def log_tail(self, n=30):
        try:
            with open(self.logpath, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])


_uring = None


def uring_available(tmpdir):
    """True when qednbd can use its io_uring backend here (a kernel or a
    container may refuse io_uring: then the tests use the thread pool only)."""
    global _uring
    if _uring is None:
        img = os.path.join(tmpdir, "uring-probe.qed")
        qemu_img_create(img, 1024 * 1024)
        srv = Server(img, os.path.join(tmpdir, "uring-probe.sock"),
                     os.path.join(tmpdir, "uring-probe.log"), ["--aio=uring"])
        try:
            srv.start()
            srv.stop()
            _uring = True
        except Fail as e:
            log("io_uring is not available, using the thread pool only: %s" %
                str(e).splitlines()[-1])
            _uring = False
        os.unlink(img)
    return _uring


def nbd_errno(exc):
    """The errno carried by an nbd.Error (0 when none)."""
    return exc.errnum or 0


def errname(e):
    return errno.errorcode.get(e, str(e)) if e else "success"


def close_handle(h):
    """Disconnect politely, ignoring a dead connection."""
    if h is None:
        return
    try:
        h.shutdown()
    except nbd.Error:
        pass
    if hasattr(h, "close"):
        try:
            h.close()
        except Exception:
            pass
