#!/bin/bash
# stale-socket.sh - qednbd -u PATH takes over a stale socket left by a
# server that died (kill -9 leaves its socket file behind), and refuses a
# live one or a path that is not a socket, changing nothing there.
# It used to unlink() a NULL path, so a stale socket was never removed and
# the server exited with "Address already in use".
. "$top_srcdir/tests/server/server-common.sh"
[ "$SERVER_KIND" = qednbd ] || skip "checks qednbd's own start-up"
need qemu-img
need nbdinfo
qemu-img create -q -f qed disk.qed 1M || fail "create disk.qed"
qemu-img create -q -f qed other.qed 1M || fail "create other.qed"
sock="$tmp/s.sock"

# A stale socket: bound, never listened on, its owner gone.
"$PY" -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.close()' \
    "$sock" || fail "make a stale socket"
[ -S "$sock" ] || fail "the stale socket is missing"

start_qednbd() { # start_qednbd LOG ARGS... - sets PID
    "$QEDNBD" "${@:2}" </dev/null >"$1" 2>&1 &
    PID=$!
    SERVER_PIDS+=("$PID")
    SERVER_LOGS+=("$1")
}
start_qednbd "$tmp/a.log" -u "$sock" disk.qed
wait_listen "$PID" unix "$sock" || fail "qednbd did not take over the stale socket: $(cat "$tmp/a.log")"
run 30 nbdinfo --size "nbd+unix:///?socket=$sock"
[ "$(cat "$tmp/out")" = 1048576 ] || fail "size $(cat "$tmp/out") over the taken-over socket"
first=$PID

# A live socket is never pulled from under its server.
"$QEDNBD" -u "$sock" other.qed </dev/null >"$tmp/b.log" 2>&1 && fail "a second server started on a live socket"
grep -q "another server is listening on '$sock'" "$tmp/b.log" || fail "no clear message: $(cat "$tmp/b.log")"
run 30 nbdinfo --size "nbd+unix:///?socket=$sock"
stop_server TERM "$first"
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC"
[ -e "$sock" ] && fail "the socket was left behind after a clean exit"

# A regular file is refused and kept.
echo keep >"$sock"
"$QEDNBD" -u "$sock" disk.qed </dev/null >"$tmp/c.log" 2>&1 && fail "qednbd started over a regular file"
grep -q "exists and is not a socket" "$tmp/c.log" || fail "no clear message: $(cat "$tmp/c.log")"
[ "$(cat "$sock")" = keep ] || fail "the regular file was changed"
echo "PASS: stale socket"
