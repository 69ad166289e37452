#!/bin/bash
# Out of file descriptors (issue 11, item 4): with a low RLIMIT_NOFILE,
# accept4 fails with EMFILE while clients wait in the backlog.  The listener
# stays readable, so a server that just logs and returns spins on it, burning
# a core and writing hundreds of thousands of log lines a second.
#
#   1. qednbd runs with RLIMIT_NOFILE=40; raw clients connect (each waits
#      for its greeting) until the server holds 40 descriptors, then a few
#      more connect and wait in the backlog: accept4 fails with EMFILE.
#   2. Once the log shows the failure, a 1 s measurement window: the
#      server's CPU time (utime + stime from /proc/PID/stat) must stay under
#      0.1 s, and the log must say it once, not once per attempt.
#   3. The clients close: the ones in the backlog are greeted, and a new
#      client negotiates, writes and reads (check_alive); the log says the
#      server accepts again.
#   4. SIGTERM: exit 0.
. "$top_srcdir/tests/attacks/attack-common.sh"
exec "$PY" - <<'PY'
import os, sys, time
from attacklib import *

NOFILE = 40
BACKLOGGED = 4
WINDOW = 1.0            # the measurement window (a measurement, not a wait)
MAX_CPU = 0.1           # seconds of CPU allowed in the window
MAX_LINES = 3           # log lines about the failure, in all


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields 14 and 15 (utime, stime) of proc(5); fields[0] is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nfds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def log_lines(srv):
    with open(srv.logpath, "rb") as f:
        return f.read().decode(errors="replace").splitlines()


def emfile_lines(srv):
    return [l for l in log_lines(srv) if "Too many open files" in l]


def wait_for(cond, what, timeout=20):
    deadline = time.monotonic() + timeout
    while not cond():
        check(time.monotonic() < deadline, "%s: not within %d s" % (what, timeout))
        time.sleep(0.02)


def test(srv):
    img = srv.make_image("disk.qed", 64 * MiB)
    srv.start([img], nofile=NOFILE)

    # 1. Fill the descriptor table with greeted clients, then queue more.
    held = []
    while nfds(srv.pid) < NOFILE:
        check(len(held) < NOFILE, "%d clients and the server still has free descriptors"
              % len(held))
        c = Client(srv)
        c.recv_exact(18)            # greeted: the server accepted it
        held.append(c)
    log("  the server holds %d descriptors with %d clients" % (nfds(srv.pid), len(held)))
    waiting = [Client(srv) for _ in range(BACKLOGGED)]
    wait_for(lambda: emfile_lines(srv), "the server's log does not show EMFILE")

    # 2. The measurement window.
    cpu0, lines0 = cpu_seconds(srv.pid), len(log_lines(srv))
    time.sleep(WINDOW)
    cpu = cpu_seconds(srv.pid) - cpu0
    lines = len(log_lines(srv)) - lines0
    log("  out of descriptors for %.1f s: %.3f s of CPU, %d new log lines, %d about EMFILE"
        % (WINDOW, cpu, lines, len(emfile_lines(srv))))
    check(cpu < MAX_CPU, "the server used %.2f s of CPU in %.1f s while out of descriptors "
          "(the accept loop spins)" % (cpu, WINDOW))
    check(len(emfile_lines(srv)) <= MAX_LINES,
          "%d log lines about EMFILE (once per pause episode expected)" % len(emfile_lines(srv)))
    check(srv.alive(), "qednbd died while out of descriptors")

    # 3. Free the descriptors: the waiting clients are greeted, a new one is served.
    for c in held:
        c.close()
    for c in waiting:
        c.recv_exact(18)
        c.close()
    check_alive(srv)
    check(any("accepting connections again" in l for l in log_lines(srv)),
          "the log does not say that the server accepts again")
    srv.stop()


sys.exit(run(test, "accept with no descriptor left (EMFILE)"))
PY
