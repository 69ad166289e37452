#!/bin/bash
# Daemon mode, pidfile, log file and SIGHUP:
#   - --fork returns 0 only once the server serves: a client connects right
#     after the parent returned, with no waiting; the daemon is in its own
#     session, in /, with stdin/stdout on /dev/null and stderr on the log file;
#   - --pidfile holds the daemon's pid (not the parent's), is locked (a second
#     server with the same pidfile refuses to start, and touches nothing), and
#     is removed when the server exits;
#   - --fork with a bad image, or an image in use: the parent exits 1 and the
#     reason is on its stderr;
#   - --log-file: SIGHUP reopens the file after it was moved away (logrotate);
#     later messages (a SIGUSR1 statistics dump) go to the new file only;
#   - SIGHUP with the default stderr log: the server logs that exports are
#     fixed and keeps serving (no runtime export change);
#   - option errors: --force-share without -r, --fork with --stdio, --log and
#     --log-file together.
. "$top_srcdir/tests/prod/prod-common.sh"
need nbdinfo

run 30 "$QEDIMG" create disk.qed 64M
run 30 "$QEDIMG" create other.qed 64M

note "--fork: the parent returns once the server serves"
rc=0
timeout 30 "$QEDNBD" --fork --pidfile=qednbd.pid --log-file=server.log -u "$tmp/d.sock" \
    disk.qed >fork.out 2>fork.err || rc=$?
[ "$rc" -eq 0 ] || fail "qednbd --fork exited $rc: $(cat fork.err)"
[ -s qednbd.pid ] || fail "--fork returned but the pidfile is empty or missing"
dpid=$(cat qednbd.pid)
track_daemon "$dpid"
kill -0 "$dpid" 2>/dev/null || fail "pid $dpid from the pidfile is not running"
# No wait_listen on purpose: the parent's exit must mean "serving".
run 20 nbdinfo --size "nbd+unix:///?socket=$tmp/d.sock"
[ "$(cat "$tmp/out")" = 67108864 ] || fail "nbdinfo --size gave $(cat "$tmp/out")"
[ ! -s fork.out ] || fail "--fork printed on stdout: $(cat fork.out)"
[ ! -s fork.err ] || fail "--fork printed on stderr: $(cat fork.err)"

sid=$(ps -o sid= -p "$dpid" | tr -d ' ')
[ "$sid" = "$dpid" ] || fail "the daemon is not a session leader (sid $sid, pid $dpid)"
[ "$(readlink "/proc/$dpid/cwd")" = / ] || fail "the daemon's cwd is $(readlink "/proc/$dpid/cwd")"
[ "$(readlink "/proc/$dpid/fd/0")" = /dev/null ] || fail "daemon stdin is $(readlink "/proc/$dpid/fd/0")"
[ "$(readlink "/proc/$dpid/fd/1")" = /dev/null ] || fail "daemon stdout is $(readlink "/proc/$dpid/fd/1")"
[ "$(readlink "/proc/$dpid/fd/2")" = "$tmp/server.log" ] ||
    fail "daemon stderr is $(readlink "/proc/$dpid/fd/2"), expected the log file"
log_has server.log "qednbd\[$dpid\]: listening on unix:$tmp/d.sock"

note "a second server with the same pidfile refuses, and leaves the first alone"
prod_start_fails --pidfile=qednbd.pid -u "$tmp/d.sock" other.qed
grep -q "pidfile.*held by another running server (pid $dpid)" "$tmp/err" ||
    fail "unexpected message: $(cat "$tmp/err")"
[ "$(cat qednbd.pid)" = "$dpid" ] || fail "the pidfile was overwritten"
run 20 nbdinfo --size "nbd+unix:///?socket=$tmp/d.sock"   # its socket is still there

note "a second server on the same socket path refuses (the socket is live)"
prod_start_fails -u "$tmp/d.sock" other.qed
grep -q "another server is listening" "$tmp/err" || fail "unexpected message: $(cat "$tmp/err")"
run 20 nbdinfo --size "nbd+unix:///?socket=$tmp/d.sock"

note "SIGHUP reopens the log file"
mv server.log server.log.1
kill -HUP "$dpid"
wait_log server.log "log file reopened"
kill -USR1 "$dpid"
wait_log server.log "stats: export name=\"\""
grep -q "stats:" server.log.1 && fail "statistics went to the old log file after SIGHUP"
log_has server.log.1 "SIGHUP: reopening the log"

note "SIGTERM: the daemon exits and removes its pidfile"
kill -TERM "$dpid"
for ((i = 0; i < 100; i++)); do kill -0 "$dpid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$dpid" 2>/dev/null && fail "the daemon did not exit after SIGTERM"
[ ! -e qednbd.pid ] || fail "the pidfile is still there after exit"
[ ! -e "$tmp/d.sock" ] || fail "the Unix socket is still there after exit"
log_has server.log "exit 0|shutting down"
image_clean disk.qed

note "--fork with a bad image: the parent exits 1 and says why"
printf 'not a QED image' >bad.qed
prod_start_fails --fork --pidfile=bad.pid -u "$tmp/bad.sock" bad.qed
grep -q "bad.qed" "$tmp/err" || fail "no word about bad.qed: $(cat "$tmp/err")"
grep -q "did not start" "$tmp/err" || fail "the parent did not report the failure: $(cat "$tmp/err")"
[ ! -e bad.pid ] || fail "a failed start left its pidfile behind"
[ ! -e "$tmp/bad.sock" ] || fail "a failed start left its socket behind"

note "--fork on an image another server holds: refused, with the lock named"
prod_start "$tmp/x.sock" disk.qed
first=$SERVER_PID
prod_start_fails --fork -u "$tmp/y.sock" disk.qed
grep -q 'in use' "$tmp/err" && grep -q 'lock' "$tmp/err" ||
    fail "unexpected message: $(cat "$tmp/err")"
stop_server TERM "$first"

note "SIGHUP with the stderr log: the server keeps serving, exports unchanged"
prod_start "$tmp/h.sock" disk.qed
kill -HUP "$SERVER_PID"
wait_log "$SERVER_LOG" "exports are fixed at start-up"
server_alive || fail "the server died on SIGHUP"
run 20 nbdinfo --size "nbd+unix:///?socket=$tmp/h.sock"
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC"

note "option errors"
prod_start_fails --force-share disk.qed
grep -q -- "--force-share needs --read-only" "$tmp/err" || fail "$(cat "$tmp/err")"
prod_start_fails --fork --stdio disk.qed
grep -q -- "--fork cannot be combined with --stdio" "$tmp/err" || fail "$(cat "$tmp/err")"
prod_start_fails --log=syslog --log-file=x.log disk.qed
grep -q -- "either --log or --log-file" "$tmp/err" || fail "$(cat "$tmp/err")"
prod_start_fails --log=journal disk.qed
grep -q -- "invalid --log" "$tmp/err" || fail "$(cat "$tmp/err")"
echo PASS
