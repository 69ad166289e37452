#!/bin/bash
# Locking beside QEMU: qednbd takes the byte-range OFD locks QEMU's file
# driver uses for its permissions, and honours QEMU's.  Both directions,
# with QEMU's own tools:
#   qednbd serves read-write ->
#     qemu-io write and qemu-img resize: refused with QEMU's lock error;
#     qemu-io -r (read-only, but wanting nobody to write): refused too;
#     qemu-img info -U and qemu-io -r -U: work;
#     another qednbd on the same image: refused;
#     after qednbd exits, qemu-io can write again (locks released);
#   qemu-io holds the image open for writing (commands from a fifo) ->
#     qednbd refuses it, read-write or -r, with a message naming the lock;
#     qednbd -r --force-share serves it, and sees what qemu-io wrote;
#   qednbd serves read-only (-r) ->
#     QEMU can still read (qemu-io -r, qemu-img info without -U, another
#     qednbd -r), but cannot write (qemu-io write refused);
#   qednbd serves an overlay read-write ->
#     its backing file cannot be written by qemu-io, only read;
#   backing names resolve relative to the image's directory, from any cwd,
#     as QEMU resolves them (same data through NBD as through qemu-io).
. "$top_srcdir/tests/prod/prod-common.sh"
need qemu-io qemu-img nbdinfo

run 30 "$QEDIMG" create disk.qed 16M
qio -f qed disk.qed -- "write -P 0x11 0 64k"

# must_lock_fail DESC CMD... - CMD must fail with QEMU's lock message.
must_lock_fail() {
    local desc=$1 rc=0
    shift
    timeout -k 5 60 "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    cat "$tmp/out" "$tmp/err" >"$tmp/both"
    [ "$rc" -ne 0 ] || fail "$desc succeeded while the image is locked: $(cat "$tmp/both")"
    grep -qE 'Failed to get (shared )?"(write|resize|consistent read)" lock' "$tmp/both" ||
        fail "$desc failed without QEMU's lock error: $(cat "$tmp/both")"
    echo "  $desc: $(head -n 1 "$tmp/both")"
}

note "qednbd serves read-write"
prod_start "$tmp/rw.sock" disk.qed
must_lock_fail "qemu-io write" qemu-io -f qed -c 'write -P 0x22 0 4k' disk.qed
must_lock_fail "qemu-img resize" qemu-img resize -f qed disk.qed +1M
must_lock_fail "qemu-io -r read (no -U)" qemu-io -r -f qed -c 'read 0 4k' disk.qed
run 30 qemu-img info -U -f qed disk.qed
grep -q 'virtual size: 16 MiB' "$tmp/out" || fail "qemu-img info -U: $(cat "$tmp/out")"
qio -r -U -f qed disk.qed -- "read -P 0x11 0 64k"
prod_start_fails -u "$tmp/rw2.sock" disk.qed
grep -q 'in use' "$tmp/err" && grep -q '"write" lock' "$tmp/err" ||
    fail "a second qednbd: $(cat "$tmp/err")"
# The server itself still works and still has the original data.
qio -f raw "nbd+unix:///?socket=$tmp/rw.sock" -- "read -P 0x11 0 64k" "write -P 0x33 64k 64k"
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC"
note "after qednbd exits, QEMU can write"
qio -f qed disk.qed -- "read -P 0x33 64k 64k" "write -P 0x44 128k 4k"
run 60 qemu-img resize -f qed disk.qed 32M

note "qemu-io holds the image for writing"
mkfifo qio.fifo
qemu-io -f qed disk.qed <qio.fifo >qio.out 2>&1 &
qio_pid=$!
track_client "$qio_pid"
exec 9>qio.fifo
echo "write -P 0x55 0 64k" >&9
for ((i = 0; i < 100; i++)); do grep -q "wrote 65536" qio.out && break; sleep 0.1; done
grep -q "wrote 65536" qio.out || fail "qemu-io did not write: $(cat qio.out)"
prod_start_fails -u "$tmp/q.sock" disk.qed
grep -q "cannot serve 'disk.qed': it is in use" "$tmp/err" && grep -q 'lock' "$tmp/err" ||
    fail "qednbd on an image qemu-io writes: $(cat "$tmp/err")"
echo "  qednbd: $(cat "$tmp/err")"
prod_start_fails -r -u "$tmp/q.sock" disk.qed
grep -q "it is in use" "$tmp/err" && grep -q -- "--force-share" "$tmp/err" ||
    fail "qednbd -r on an image qemu-io writes: $(cat "$tmp/err")"
[ ! -e "$tmp/q.sock" ] || fail "a refused qednbd left its socket behind"
note "qednbd -r --force-share serves it anyway"
prod_start "$tmp/fs.sock" -r --force-share disk.qed
qio -r -f raw "nbd+unix:///?socket=$tmp/fs.sock" -- "read -P 0x55 0 64k"
stop_server TERM
echo "quit" >&9
exec 9>&-
wait "$qio_pid" || fail "qemu-io exited $?: $(cat qio.out)"

note "qednbd serves read-only: QEMU reads, cannot write"
prod_start "$tmp/ro.sock" -r disk.qed
qio -r -f qed disk.qed -- "read -P 0x55 0 64k"
run 30 qemu-img info -f qed disk.qed
must_lock_fail "qemu-io write" qemu-io -f qed -c 'write 0 4k' disk.qed
must_lock_fail "qemu-img resize" qemu-img resize -f qed disk.qed +1M
ro1=$SERVER_PID
prod_start "$tmp/ro2.sock" -r disk.qed
run 30 nbdinfo --size "nbd+unix:///?socket=$tmp/ro2.sock"
stop_server TERM
stop_server TERM "$ro1"

note "an overlay served read-write: its backing file stays read-only for QEMU"
mkdir -p imgs/base sub
run 30 "$QEDIMG" create imgs/base/base.qed 8M
qio -f qed imgs/base/base.qed -- "write -P 0x66 0 1M"
# Relative backing names, resolved from the overlay's directory.
run 30 "$QEDIMG" create -b base/base.qed imgs/ov.qed
run 30 "$QEDIMG" create -b ../imgs/ov.qed sub/top.qed
run 30 qemu-img info -f qed --backing-chain sub/top.qed
grep -q "backing file: ../imgs/ov.qed" "$tmp/out" || fail "qemu-img info: $(cat "$tmp/out")"
# Serve from another directory: a cwd-relative lookup would fail.
(cd / && exec "$PY" -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execvp(sys.argv[1], sys.argv[1:])' "$QEDNBD" -u "$tmp/ov.sock" "$tmp/sub/top.qed") </dev/null >ov.log 2>&1 &
SERVER_PID=$!
SERVER_PIDS+=("$SERVER_PID")
SERVER_LOGS+=("$tmp/ov.log")
wait_listen "$SERVER_PID" unix "$tmp/ov.sock" || fail "qednbd on the overlay: $(cat ov.log)"
qio -f raw "nbd+unix:///?socket=$tmp/ov.sock" -- "read -P 0x66 0 1M" "read -P 0 1M 7M" \
    "write -P 0x77 512k 4k"
must_lock_fail "qemu-io write to the backing file" qemu-io -f qed -c 'write 0 4k' imgs/base/base.qed
must_lock_fail "qemu-io write to the middle image" qemu-io -f qed -c 'write 0 4k' imgs/ov.qed
qio -r -f qed imgs/base/base.qed -- "read -P 0x66 0 1M"
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC"
# QEMU resolves the chain the same way and sees the same data.
qio -r -f qed sub/top.qed -- "read -P 0x66 0 512k" "read -P 0x77 512k 4k" "read -P 0x66 516k 508k"
image_clean sub/top.qed
echo PASS
