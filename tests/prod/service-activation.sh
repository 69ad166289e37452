#!/bin/bash
# Socket activation, readiness notification and the exposure warning:
#   - systemd's protocol (LISTEN_PID / LISTEN_FDS), played by a small Python
#     launcher that opens a Unix and a TCP socket on fds 3 and 4 and execs
#     qednbd: both sockets serve, and the log says they came from activation;
#   - the same with --fork: LISTEN_PID names the parent, which checks it
#     before forking; the daemon serves the inherited sockets;
#   - NOTIFY_SOCKET (Type=notify): READY=1 with MAINPID once serving, and
#     STOPPING=1 on SIGTERM;
#   - libnbd's own socket activation (nbdinfo [ CMD ]) and, when installed,
#     systemd-socket-activate;
#   - LISTEN_FDS naming a descriptor that is no listening socket is refused;
#   - a TCP socket on a non-loopback address without TLS gets a warning
#     (both when qednbd binds it and when it is passed by activation); a
#     loopback one does not.
. "$top_srcdir/tests/prod/prod-common.sh"
need nbdinfo

run 30 "$QEDIMG" create disk.qed 32M

# launch.py [--notify] [--tcp-host HOST] -- CMD... : listen on $tmp/act.sock
# (fd 3) and HOST:free port (fd 4), print the port, exec CMD with
# LISTEN_FDS=2 and LISTEN_PID = our pid (exec keeps it).
cat >launch.py <<'PY'
import os, socket, sys
args = sys.argv[1:]
host = "127.0.0.1"
if args[0] == "--tcp-host":
    host = args[1]
    args = args[2:]
assert args[0] == "--"
cmd = args[1:]
u = socket.socket(socket.AF_UNIX)
u.bind(os.environ["ACT_SOCK"])
u.listen(16)
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((host, 0))
t.listen(16)
with open(os.environ["ACT_PORTFILE"], "w") as f:
    f.write("%d\n" % t.getsockname()[1])
os.dup2(u.fileno(), 3)
os.dup2(t.fileno(), 4)
os.set_inheritable(3, True)
os.set_inheritable(4, True)
env = dict(os.environ, LISTEN_FDS="2", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="unix:tcp")
os.execve(cmd[0], cmd, env)
PY

# activate LOG ARGS... - run qednbd under launch.py in the background.
activate() {
    local log=$1
    shift
    rm -f "$tmp/act.sock" "$tmp/act.port"
    ACT_SOCK=$tmp/act.sock ACT_PORTFILE=$tmp/act.port "$PY" launch.py "$@" </dev/null >"$log" 2>&1 &
    SERVER_PID=$!
    SERVER_PIDS+=("$SERVER_PID")
    SERVER_LOGS+=("$log")
    for ((i = 0; i < 100; i++)); do [ -s "$tmp/act.port" ] && break; sleep 0.05; done
    [ -s "$tmp/act.port" ] || fail "the launcher did not start: $(cat "$log")"
    ACT_PORT=$(cat "$tmp/act.port")
}

note "activation: fds 3 and 4 serve"
activate act.log -- "$QEDNBD" disk.qed
# The sockets listen before qednbd has even opened the image: no waiting.
run 30 nbdinfo --size "nbd+unix:///?socket=$tmp/act.sock"
[ "$(cat "$tmp/out")" = 33554432 ] || fail "size over the Unix socket: $(cat "$tmp/out")"
run 30 nbdinfo --size "nbd://127.0.0.1:$ACT_PORT"
[ "$(cat "$tmp/out")" = 33554432 ] || fail "size over TCP: $(cat "$tmp/out")"
log_has act.log "listening on 2 socket\(s\) passed by socket activation"
grep -q "warning" act.log && fail "a warning for loopback sockets: $(grep warning act.log)"
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC"

note "activation with --fork: the parent checks LISTEN_PID, the daemon serves"
activate actfork.log -- "$QEDNBD" --fork --pidfile="$tmp/act.pid" --log-file="$tmp/actfork.srv.log" disk.qed
launcher=$SERVER_PID
for ((i = 0; i < 100; i++)); do kill -0 "$launcher" 2>/dev/null || break; sleep 0.1; done
kill -0 "$launcher" 2>/dev/null && fail "the --fork parent did not exit"
wait "$launcher" || fail "the --fork parent exited $?: $(cat actfork.log)"
dpid=$(cat "$tmp/act.pid") || fail "no pidfile"
track_daemon "$dpid"
[ "$dpid" != "$launcher" ] || fail "the pidfile names the parent"
run 30 nbdinfo --size "nbd+unix:///?socket=$tmp/act.sock"
run 30 nbdinfo --size "nbd://127.0.0.1:$ACT_PORT"
log_has "$tmp/actfork.srv.log" "passed by socket activation"
kill -TERM "$dpid"
for ((i = 0; i < 100; i++)); do kill -0 "$dpid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$dpid" 2>/dev/null && fail "the daemon did not exit"

note "NOTIFY_SOCKET: READY=1 with MAINPID, then STOPPING=1"
run 60 "$PY" - "$QEDNBD" "$tmp" <<'PY'
import os, signal, socket, sys, time
qednbd, tmp = sys.argv[1], sys.argv[2]
path = os.path.join(tmp, "notify.sock")
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.bind(path)
n.settimeout(20)
env = dict(os.environ, NOTIFY_SOCKET=path)
pid = os.spawnve(os.P_NOWAIT, qednbd, [qednbd, "-u", os.path.join(tmp, "n.sock"), "disk.qed"], env)
msg = n.recv(4096).decode()
print("got %r" % msg)
fields = dict(l.split("=", 1) for l in msg.split("\n") if l)
if fields.get("READY") != "1" or fields.get("MAINPID") != str(pid):
    sys.exit("expected READY=1 and MAINPID=%d, got %r" % (pid, msg))
s = socket.socket(socket.AF_UNIX)
s.connect(os.path.join(tmp, "n.sock"))     # READY means serving: no retry
s.settimeout(10)
if s.recv(8) != b"NBDMAGIC":
    sys.exit("no greeting after READY=1")
s.close()
os.kill(pid, signal.SIGTERM)
msg = n.recv(4096).decode()
print("got %r" % msg)
if "STOPPING=1" not in msg:
    sys.exit("expected STOPPING=1, got %r" % msg)
_, st = os.waitpid(pid, 0)
if st != 0:
    sys.exit("qednbd exited with status %d" % st)
PY
cat "$tmp/out"

note "libnbd's socket activation: nbdinfo [ qednbd IMAGE ]"
run 60 nbdinfo --size -- [ "$QEDNBD" disk.qed ]
[ "$(cat "$tmp/out")" = 33554432 ] || fail "nbdinfo [ qednbd ] gave $(cat "$tmp/out")"

if command -v systemd-socket-activate >/dev/null 2>&1; then
    note "systemd-socket-activate"
    systemd-socket-activate -l "$tmp/sa.sock" "$QEDNBD" disk.qed </dev/null >sa.log 2>&1 &
    SERVER_PID=$!
    SERVER_PIDS+=("$SERVER_PID")
    SERVER_LOGS+=("$tmp/sa.log")
    for ((i = 0; i < 100; i++)); do [ -S "$tmp/sa.sock" ] && break; sleep 0.05; done
    run 30 nbdinfo --size "nbd+unix:///?socket=$tmp/sa.sock"
    [ "$(cat "$tmp/out")" = 33554432 ] || fail "systemd-socket-activate: $(cat "$tmp/out")"
    log_has sa.log "passed by socket activation"
    stop_server TERM
else
    note "systemd-socket-activate is not installed: that part is skipped"
fi

note "non-loopback without TLS: a warning"
port=$(free_port)
"$QEDNBD" -b 0.0.0.0 -p "$port" disk.qed </dev/null >bind.log 2>&1 &
SERVER_PID=$!
SERVER_PIDS+=("$SERVER_PID")
SERVER_LOGS+=("$tmp/bind.log")
wait_listen "$SERVER_PID" tcp "$port" || fail "qednbd -b 0.0.0.0 did not start: $(cat bind.log)"
log_has bind.log "warning: listening on 0\.0\.0\.0:$port, a non-loopback address, without TLS"
stop_server TERM

port=$(free_port)
"$QEDNBD" -b 127.0.0.1 -p "$port" disk.qed </dev/null >lo.log 2>&1 &
SERVER_PID=$!
SERVER_PIDS+=("$SERVER_PID")
wait_listen "$SERVER_PID" tcp "$port" || fail "qednbd -b 127.0.0.1 did not start: $(cat lo.log)"
grep -q warning lo.log && fail "a warning on loopback: $(cat lo.log)"
stop_server TERM

note "LISTEN_FDS naming something that is not a listening socket: refused"
rc=0
bash -c 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" disk.qed 3<"$1"' "$QEDNBD" disk.qed \
    </dev/null >notsock.out 2>notsock.err || rc=$?
[ "$rc" -eq 1 ] || fail "qednbd with fd 3 = a file exited $rc: $(cat notsock.err)"
grep -q "fd 3 passed by socket activation (LISTEN_FDS=1) is not a listening stream socket" \
    notsock.err || fail "unexpected message: $(cat notsock.err)"

activate actany.log --tcp-host 0.0.0.0 -- "$QEDNBD" disk.qed
run 30 nbdinfo --size "nbd+unix:///?socket=$tmp/act.sock"
log_has actany.log "warning: listening on 0\.0\.0\.0:$ACT_PORT, a non-loopback address, without TLS"
stop_server TERM
echo PASS
