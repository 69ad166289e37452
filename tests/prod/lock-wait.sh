#!/bin/bash
# Waiting for a held image lock (issue 11, item 6): right after a kill -9 the
# dead server's in-flight io_uring I/O still holds the image (and its OFD
# locks) for a moment, and a supervisor's restart must not fail for that.
# With qemu-io holding the image for writing (the same locks):
#   - --lock-wait=0 fails at once with the "in use" message, no waiting;
#   - --lock-wait=5 logs "waiting up to 5 s for the lock on disk.qed"; once
#     that line is there qemu-io lets go, and the server starts serving;
#   - --lock-wait=2, never released: fails with the "in use" message after
#     the bound (not before), having logged the wait once;
#   - the default waits too (5 s), so a restart beside a dying server works.
. "$top_srcdir/tests/prod/prod-common.sh"
need qemu-io qemu-img

run 30 "$QEDIMG" create disk.qed 16M

# hold: qemu-io opens disk.qed for writing, commands from a fifo (fd 9).
hold() {
    rm -f qio.fifo qio.out
    mkfifo qio.fifo
    qemu-io -f qed disk.qed <qio.fifo >qio.out 2>&1 &
    QIO_PID=$!
    track_client "$QIO_PID"
    exec 9>qio.fifo
    echo "write -P 0x5a 0 64k" >&9
    wait_log qio.out "wrote 65536"
}
# release: qemu-io quits; its locks are gone once it has exited.
release() {
    echo quit >&9
    exec 9>&-
    wait "$QIO_PID" || fail "qemu-io exited $?: $(cat qio.out)"
}
now() { "$PY" -c 'import time; print(time.monotonic())'; }
elapsed() { "$PY" -c 'import sys; print("%.2f" % (float(sys.argv[2]) - float(sys.argv[1])))' "$1" "$2"; }
lt() { "$PY" -c 'import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)' "$1" "$2"; }

hold

note "--lock-wait=0 fails at once"
t0=$(now)
prod_start_fails -u "$tmp/a.sock" --lock-wait=0 disk.qed
t=$(elapsed "$t0" "$(now)")
grep -q "cannot serve 'disk.qed': it is in use" "$tmp/err" || fail "--lock-wait=0: $(cat "$tmp/err")"
! grep -q "waiting up to" "$tmp/err" || fail "--lock-wait=0 waited: $(cat "$tmp/err")"
lt "$t" 2 || fail "--lock-wait=0 took $t s"
echo "  failed after $t s: $(tail -n 1 "$tmp/err")"

note "--lock-wait=2, never released: fails after the bound"
t0=$(now)
prod_start_fails -u "$tmp/b.sock" --lock-wait=2 disk.qed
t=$(elapsed "$t0" "$(now)")
grep -q "waiting up to 2 s for the lock on disk.qed" "$tmp/err" || fail "no wait logged: $(cat "$tmp/err")"
[ "$(grep -c "waiting up to" "$tmp/err")" -eq 1 ] || fail "the wait was logged more than once"
grep -q "cannot serve 'disk.qed': it is in use" "$tmp/err" || fail "--lock-wait=2: $(cat "$tmp/err")"
lt 1.95 "$t" || fail "gave up after $t s, before the 2 s bound"
lt "$t" 10 || fail "took $t s for a 2 s bound"
echo "  failed after $t s"

note "--lock-wait=5: serves once the holder lets go"
log="$tmp/wait.log"
"$QEDNBD" -u "$tmp/c.sock" --lock-wait=5 disk.qed </dev/null >"$log" 2>&1 &
pid=$!
SERVER_PIDS+=("$pid")
SERVER_LOGS+=("$log")
wait_log "$log" "waiting up to 5 s for the lock on disk.qed"
kill -0 "$pid" 2>/dev/null || fail "the server exited while waiting: $(cat "$log")"
[ ! -e "$tmp/c.sock" ] || fail "the server listens before it has the image lock"
release
wait_listen "$pid" unix "$tmp/c.sock" || fail "the server did not start: $(cat "$log")"
qio -f raw "nbd+unix:///?socket=$tmp/c.sock" -- "read -P 0x5a 0 64k" "write -P 0x6b 64k 4k"
stop_server TERM "$pid"
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC: $(cat "$log")"

note "the default waits as well"
hold
log="$tmp/default.log"
"$QEDNBD" -u "$tmp/d.sock" disk.qed </dev/null >"$log" 2>&1 &
pid=$!
SERVER_PIDS+=("$pid")
SERVER_LOGS+=("$log")
wait_log "$log" "waiting up to 5 s for the lock on disk.qed"
release
wait_listen "$pid" unix "$tmp/d.sock" || fail "the server did not start: $(cat "$log")"
qio -r -f raw "nbd+unix:///?socket=$tmp/d.sock" -- "read -P 0x6b 64k 4k"
stop_server TERM "$pid"
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC: $(cat "$log")"
cat "$tmp/wait.log"; echo PASS
