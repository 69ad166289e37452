#!/bin/bash
# qednbd --cache=none|writeback|unsafe, with the images on /var/tmp (a real
# file system: O_DIRECT is the point of cache=none):
#   - the interop tests nbd-qemu-io.sh, nbd-nbdcopy.sh, nbd-nbdinfo.sh,
#     nbd-differential.sh (against qemu-nbd) and nbd-fio.sh pass in every
#     mode (run with QEDNBD_TEST_ARGS=--cache=MODE; they end with qemu-img
#     check and NEED_CHECK clear after SIGTERM).  The kill -9 tests take the
#     same variable: QEDNBD_TEST_ARGS=--cache=none TMPDIR=/var/tmp
#     tests/faults/kill9.sh (too long to repeat here);
#   - cache=none opens the image with O_DIRECT (the flags of its descriptor
#     in /proc/PID/fdinfo), writeback and unsafe do not;
#   - in every mode, concurrent unaligned aio writes from qemu-io that share
#     4 KiB blocks (not bytes) all survive, checked against a raw shadow;
#   - cache=unsafe acknowledges FLUSH and FUA without one fdatasync (strace
#     counts them, with --aio=threads; the same workload with writeback makes
#     some, which shows the count works), and its clean shutdown still flushes and leaves the
#     image clean with the data in it.
export TMPDIR=/var/tmp
. "$top_srcdir/tests/server/server-common.sh"
need qemu-img qemu-io
[ "$SERVER_KIND" = qednbd ] || skip "qednbd's --cache modes only"

"$PY" - "$tmp/probe" <<'PY' || skip "$TMPDIR refuses O_DIRECT"
import os, sys
os.close(os.open(sys.argv[1], os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o600))
PY

# 1. The interop tests, each mode.
for mode in none writeback unsafe; do
    for t in nbd-qemu-io.sh nbd-nbdcopy.sh nbd-nbdinfo.sh nbd-differential.sh nbd-fio.sh; do
        rc=0
        QEDNBD_TEST_ARGS=--cache=$mode timeout -k 5 600 \
            bash "$top_srcdir/tests/server/$t" >"$tmp/$t.$mode.log" 2>&1 || rc=$?
        if [ "$rc" -eq 77 ]; then
            note "$t --cache=$mode skipped: $(tail -n 1 "$tmp/$t.$mode.log")"
        elif [ "$rc" -ne 0 ]; then
            tail -n 30 "$tmp/$t.$mode.log" >&2
            fail "$t with --cache=$mode exited $rc"
        fi
    done
done

# fd_flags PID FILE - the open flags (octal, from fdinfo) of PID's descriptor of FILE.
fd_flags() {
    local fd
    for fd in /proc/"$1"/fd/*; do
        if [ "$(readlink "$fd")" = "$2" ]; then
            awk '/^flags:/ { print $2 }' /proc/"$1"/fdinfo/"${fd##*/}"
            return 0
        fi
    done
    fail "process $1 has no descriptor of $2"
}

# Writes that share blocks but no bytes, all in flight at once.
aio_writes=()
off=$((1024 * 1024 - 3000))
for i in $(seq 1 24); do
    len=$(((i * 677) % 1500 + 1))
    aio_writes+=("aio_write -P $((i + 16)) $off $len")
    off=$((off + len))
done
aio_writes+=("aio_flush")

# 2. O_DIRECT or not, and the aio writes, in each mode.
for mode in none writeback unsafe; do
    rm -f disk.qed shadow.raw
    qemu-img create -q -f qed disk.qed 64M || fail "qemu-img create disk.qed"
    qemu-img create -q -f raw shadow.raw 64M || fail "qemu-img create shadow.raw"
    QEDNBD_TEST_ARGS=--cache=$mode start_server disk.qed
    flags=$(fd_flags "$SERVER_PID" "$tmp/disk.qed")
    if [ "$mode" = none ]; then
        [ $((8#$flags & 8#40000)) -ne 0 ] || fail "cache=none: disk.qed is open without O_DIRECT (flags $flags)"
    else
        [ $((8#$flags & 8#40000)) -eq 0 ] || fail "cache=$mode: disk.qed is open with O_DIRECT (flags $flags)"
    fi
    qio -f raw "$(nbd_uri)" -- "${aio_writes[@]}"
    qio -f raw shadow.raw -- "${aio_writes[@]}"
    run 60 qemu-img compare -f raw -F raw "$(nbd_uri)" shadow.raw
    stop_server TERM
    [ "$SERVER_RC" -eq 0 ] || fail "cache=$mode: server exited $SERVER_RC after SIGTERM"
    image_clean disk.qed
    run 60 qemu-img compare -f qed -F raw disk.qed shadow.raw
done

# 3. fdatasync calls under strace: none for unsafe's FLUSH and FUA.  With
# the thread pool: io_uring's fsyncs are ring operations, not system calls
# strace sees; the NOSYNC decision is made above the backends (lib/io/aio.c).
if ! command -v strace >/dev/null 2>&1; then
    note "strace is not installed: the fdatasync count of cache=unsafe is not checked"
    echo "ok (without the strace part)"
    exit 0
fi
flushes=("write -P 0x5a 0 64k" "flush" "write -f -P 0x5b 1M 4k" "write -P 0x5c 3000 5000"
         "flush" "aio_write -f -P 0x5d 2M 512" "aio_flush" "flush")
# count_syncs MODE - serve a new image under strace with --cache=MODE, run
# the flushes; SYNCS = the fdatasync calls made before the shutdown.
count_syncs() {
    local sock="$tmp/st-$1.sock" log="$tmp/strace-$1.log" spid pid n
    rm -f st.qed "$log"
    qemu-img create -q -f qed st.qed 16M || fail "qemu-img create st.qed"
    # detect_leaks=0: under ptrace LeakSanitizer cannot run and aborts the
    # process at exit (make check-sanitizers); the other runs keep it.
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
        strace -f -qq -e trace=fdatasync,fsync -o "$log" \
        "$QEDNBD" --aio=threads --cache="$1" -u "$sock" st.qed >"$tmp/st-$1.out" 2>&1 &
    spid=$!
    track_client "$spid"
    wait_listen "$spid" unix "$sock" || fail "qednbd under strace did not start"
    qio -f raw "nbd+unix:///?socket=$sock" -- "${flushes[@]}"
    # strace writes each call as it returns; the server's own calls are done
    # when its replies came back, which qemu-io waited for.
    n=$(grep -cE 'f(data)?sync\(' "$log")
    pid=$(awk '{ print $1; exit }' "$log")
    [ -n "$pid" ] || pid=$(pgrep -P "$spid" -x qednbd)
    [ -n "$pid" ] || fail "cannot find the qednbd process under strace $spid"
    kill -TERM "$pid"
    wait "$spid" || fail "cache=$1 under strace: the server did not exit cleanly"
    # The clean close still flushes, even with cache=unsafe.
    grep -qE 'f(data)?sync\(' "$log" || fail "cache=$1: the clean close made no fdatasync"
    image_clean st.qed
    SYNCS=$n
}
count_syncs writeback
wb=$SYNCS
[ "$wb" -gt 0 ] || fail "cache=writeback: no fdatasync for FLUSH and FUA (the count does not work)"
count_syncs unsafe
us=$SYNCS
[ "$us" -eq 0 ] || fail "cache=unsafe made $us fdatasync calls before the shutdown, expected none"
qio -f qed -r st.qed -- "read -P 0x5a 0 3000" "read -P 0x5c 3000 5000" "read -P 0x5b 1M 4k" \
    "read -P 0x5d 2M 512"
echo "ok: writeback made $wb fdatasync calls, unsafe none"
