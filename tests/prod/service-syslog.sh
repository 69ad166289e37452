#!/bin/bash
# --log=syslog, and syslog as the default of --fork.  glibc's syslog()
# always writes to /dev/log, so the test runs qednbd in a private mount
# namespace (unshare -m) whose /dev is a copy holding a Unix datagram socket
# that this test reads: nothing on the host's logging is touched.  Skipped
# when mount namespaces are not available (not root, or a container that
# forbids them).
#
# Checked: the ident is qednbd with the pid, the facility is daemon, and the
# priorities are notice for the listening line, the statistics and the
# shutdown, warning for warnings; nothing goes to stderr; with --fork and no
# --log the messages go to syslog too.
. "$top_srcdir/tests/prod/prod-common.sh"
need unshare mount
unshare -m true 2>/dev/null || skip "no mount namespaces here (unshare -m fails)"
# The namespace mounts newdev over /dev, which would hide a $tmp in /dev/shm.
case "$tmp" in /dev/*) skip "the test directory $tmp is under /dev, which the test replaces (set TMPDIR elsewhere)" ;; esac

run 30 "$QEDIMG" create disk.qed 16M
mkdir newdev
for n in null zero full random urandom; do
    touch "newdev/$n"
done

# The receiver: every datagram on newdev/log, one per line, in syslog.out.
"$PY" - "$tmp/newdev/log" "$tmp/syslog.out" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a", buffering=1) as f:
    while True:
        f.write(s.recv(65536).decode(errors="replace").rstrip("\n") + "\n")
PY
track_client $!
disown
for ((i = 0; i < 100; i++)); do [ -S newdev/log ] && break; sleep 0.05; done
[ -S newdev/log ] || fail "the syslog receiver did not start"

export tmp QEDNBD

# in_ns SCRIPT - run SCRIPT (bash) with newdev as /dev.
in_ns() {
    unshare -m bash -c '
        set -e
        mount --make-rprivate /
        for n in null zero full random urandom; do mount --bind "/dev/$n" "$0/newdev/$n"; done
        mount --rbind "$0/newdev" /dev
        eval "$1"' "$tmp" "$1"
}

note "--log=syslog"
export port
port=$(free_port)
in_ns '
    "$QEDNBD" --log=syslog -b 0.0.0.0 -p "$port" disk.qed 2>"$tmp/stderr.log" &
    pid=$!
    echo $pid >"$tmp/s.pid"
    for i in $(seq 100); do grep -q "listening on" "$tmp/syslog.out" && break; sleep 0.05; done
    kill -USR1 $pid
    for i in $(seq 200); do grep -q "stats: export" "$tmp/syslog.out" && break; sleep 0.05; done
    kill -TERM $pid
    wait $pid
' 2>&1 || true
pid=$(cat s.pid)
wait_log syslog.out "qednbd\[$pid\]: signal 15: shutting down"
cat syslog.out
# <29> = daemon (3) * 8 + notice (5); <28> = warning; <27> = err.
log_has syslog.out "^<29>.*qednbd\[$pid\]: listening on 0\.0\.0\.0:$port"
log_has syslog.out "^<28>.*qednbd\[$pid\]: warning: listening on 0\.0\.0\.0:$port, a non-loopback address"
log_has syslog.out "^<29>.*qednbd\[$pid\]: stats: server uptime="
log_has syslog.out "^<29>.*qednbd\[$pid\]: stats: export name=\"\" connections="
log_has syslog.out "^<29>.*qednbd\[$pid\]: signal 15: shutting down"
[ ! -s stderr.log ] || fail "--log=syslog still wrote to stderr: $(cat stderr.log)"

note "--fork without --log: syslog"
: >syslog.out
in_ns '
    "$QEDNBD" --fork --pidfile="$tmp/f.pid" -u "$tmp/f.sock" disk.qed
    pid=$(cat "$tmp/f.pid")
    kill -USR1 $pid
    for i in $(seq 200); do grep -q "stats: export" "$tmp/syslog.out" && break; sleep 0.05; done
    kill -TERM $pid
    for i in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
    echo $pid >"$tmp/f.pid.saved"
' >fork.log 2>&1 || { cat fork.log; fail "the --fork run failed"; }
pid=$(cat f.pid.saved)
wait_log syslog.out "qednbd\[$pid\]: signal 15: shutting down"
log_has syslog.out "^<29>.*qednbd\[$pid\]: listening on unix:$tmp/f.sock"
log_has syslog.out "^<29>.*qednbd\[$pid\]: stats: export name=\"\""
echo PASS
