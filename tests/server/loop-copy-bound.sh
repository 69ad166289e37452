#!/bin/bash
# loop-copy-bound.sh - no system call of qednbd's loop threads copies more
# than 128 KiB between a socket and its buffers (issue 14: no single copy on
# a loop thread longer than the memory path's 128 KiB bound; the file side
# is unit/io/test-loop-copy and unit/engine/test-requests).
# Serve over TCP (loopback socket buffers reach megabytes) under strace,
# write and read 1 MiB and 8 MiB requests, several in flight, verify the
# data, and check every read/readv/write/writev/recv*/send* result.
# Before the bound, one readv took a whole 1 MiB payload and one writev
# sent most of a READ reply.
. "$top_srcdir/tests/server/server-common.sh"
[ "$SERVER_KIND" = qednbd ] || skip "checks qednbd's own system calls"
need qemu-img strace
need_nbd_python

qemu-img create -q -f qed disk.qed 64M || fail "create disk.qed"
port=$(free_port) || fail "no free TCP port"
log="$tmp/strace.log"
# detect_leaks=0: LeakSanitizer cannot run under ptrace (make check-sanitizers).
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
    strace -f -qq -s 0 -e signal=none \
    -e trace=read,readv,write,writev,recvfrom,sendto,recvmsg,sendmsg -o "$log" \
    "$QEDNBD" ${QEDNBD_TEST_ARGS:-} -b 127.0.0.1 -p "$port" disk.qed >"$tmp/server.out" 2>&1 &
spid=$!
track_client "$spid"
wait_listen "$spid" tcp "$port" || fail "qednbd under strace did not start: $(cat "$tmp/server.out")"

"$NBD_PYTHON" - "$port" <<'PY' || fail "the NBD client failed"
import os, sys, nbd
h = nbd.NBD()
h.connect_uri("nbd://127.0.0.1:%s/" % sys.argv[1])
MiB = 1 << 20
def wait_all(cookies):
    # A completed command is retired by the call that reports it: ask once.
    pending = set(cookies)
    while pending:
        pending = {c for c in pending if not h.aio_command_completed(c)}
        if pending:
            h.poll(-1)
for size, count in ((MiB, 16), (8 * MiB, 6)):
    data = [os.urandom(size) for _ in range(count)]
    cookies = [h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(d)), i * size)
               for i, d in enumerate(data)]
    wait_all(cookies)
    h.flush()
    bufs = [nbd.Buffer(size) for _ in range(count)]
    cookies = [h.aio_pread(b, i * size) for i, b in enumerate(bufs)]
    wait_all(cookies)
    for i, b in enumerate(bufs):
        if b.to_bytearray() != data[i]:
            sys.exit("read back of %d bytes at %d differs" % (size, i * size))
h.shutdown()
PY

# SIGTERM to qednbd itself (strace does not pass it on): the first traced
# call is the main thread's, whose id is the process id.
pid=$(awk '{ print $1; exit }' "$log")
[ -n "$pid" ] || fail "no traced call in $log"
kill -TERM "$pid" 2>/dev/null
wait "$spid" || fail "the server under strace did not exit cleanly"
# Every completed call's result: "name(...) = N", or "<... name resumed>...) = N".
"$PY" - "$log" <<'PY' || fail "a socket system call copied more than 128 KiB"
import re, sys
pat = re.compile(r"(?:^\d+\s+|<\.\.\. )(read|readv|write|writev|recvfrom|sendto|recvmsg|sendmsg)\b.* = (\d+)$")
big, n, total = 0, 0, 0
for line in open(sys.argv[1]):
    m = pat.search(line.rstrip())
    if m:
        v = int(m.group(2)); n += 1; total += v
        big = max(big, v)
print("--- %d socket calls, %d bytes, largest %d" % (n, total, big))
if total < 2 * (16 + 48) * (1 << 20):
    sys.exit("strace saw only %d bytes: the trace does not show the transfers" % total)
if big > 128 * 1024:
    sys.exit("largest copy %d bytes" % big)
PY
image_clean disk.qed
echo "PASS: loop copy bound on sockets"
