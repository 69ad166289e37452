#!/bin/bash
# --threads=4 (issue 14): connections really land on different loop
# threads, the image's engine calls stay on its one owner thread, several
# connections on different threads writing, reading and flushing the same
# image see each other's data, and SIGTERM with busy clients on several
# threads exits 0 with a clean image.
#
#   1. /proc/PID/task holds at least the 4 loop threads;
#   2. four libnbd connections held open at once: SIGUSR1's thread lines
#      show one active connection on each of the 4 threads, and
#      engine_calls only on the export's owner thread (owner_thread=); with
#      a second export (owned by thread 1) both owners call, nobody else;
#   3. the four connections write interleaved 4 KiB blocks of one region
#      (each its own pattern, allocating and overwriting), each FLUSHes, and
#      every connection reads back every other's blocks; qemu-img check is
#      clean after the server stops;
#   4. four clients writing without pause, SIGTERM: exit 0 within 20 s,
#      image clean (qemu-img check, NEED_CHECK clear).
. "$top_srcdir/tests/prod/prod-common.sh"
need_nbd_python
need qemu-img

run 30 "$QEDIMG" create -c 64K disk.qed 64M
run 30 "$QEDIMG" create -c 64K two.qed 16M
prod_start "$tmp/s.sock" --threads=4 -e =disk.qed -e two=two.qed
# (-e NAME=IMAGE: "" is the default export, "two" the second)
pid=$SERVER_PID

# 1. The loop threads exist.
ntask=$(ls "/proc/$pid/task" | wc -l)
[ "$ntask" -ge 4 ] || fail "only $ntask tasks in /proc/$pid/task with --threads=4"

# 2 and 3: four connections on the default export, one on "two".
cat >clients.py <<'PY'
import os, sys, time, nbd
sock, ready, go = sys.argv[1], sys.argv[2], sys.argv[3]
hs = []
for i in range(4):
    h = nbd.NBD()
    h.connect_uri("nbd+unix:///?socket=" + sock)
    hs.append(h)
    # One at a time: thread 0 gives each to the least loaded thread.
    time.sleep(0)
t = nbd.NBD()
t.connect_uri("nbd+unix:///two?socket=" + sock)
t.pwrite(b"\x77" * 4096, 0)
K = 4096
# Interleaved blocks: block j belongs to connection j % 4.
for rnd in range(3):
    for j in range(256):
        h = hs[j % 4]
        h.pwrite(bytes([(j % 4) * 16 + rnd + 1]) * K, j * K)
    for h in hs:
        h.flush()
    for r, h in enumerate(hs):
        for j in range(256):
            want = bytes([(j % 4) * 16 + rnd + 1]) * K
            got = h.pread(K, j * K)
            if got != want:
                sys.exit("round %d: connection %d reads block %d as %r, expected %r" %
                         (rnd, r, j, got[:1], want[:1]))
# Hold them open while the test reads the statistics.
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.02)
assert t.pread(4096, 0) == b"\x77" * 4096
for h in hs + [t]:
    h.shutdown()
print("ok")
PY
"$NBD_PYTHON" clients.py "$tmp/s.sock" "$tmp/ready" "$tmp/go" >clients.out 2>&1 &
cpid=$!
track_client "$cpid"
for ((i = 0; i < 600; i++)); do
    [ -e "$tmp/ready" ] && break
    kill -0 "$cpid" 2>/dev/null || break
    sleep 0.05
done
[ -e "$tmp/ready" ] || fail "the clients did not get through: $(cat clients.out)"

kill -USR1 "$pid"
wait_log "$SERVER_LOG" 'stats: thread index=3 '
grep 'stats: ' "$SERVER_LOG" | tail -n 8
owner=$(stat_field "$(grep 'stats: export name=""' "$SERVER_LOG" | tail -n 1)" owner_thread)
owner2=$(stat_field "$(grep 'stats: export name="two"' "$SERVER_LOG" | tail -n 1)" owner_thread)
[ "$owner" = 0 ] && [ "$owner2" = 1 ] || fail "owners $owner and $owner2, expected 0 and 1"
total_active=0
for t in 0 1 2 3; do
    line=$(grep "stats: thread index=$t " "$SERVER_LOG" | tail -n 1)
    active=$(stat_field "$line" active)
    calls=$(stat_field "$line" engine_calls)
    total_active=$((total_active + active))
    # Five connections on four threads: each thread has one or two.
    [ "$active" -ge 1 ] || fail "thread $t serves no connection: $line"
    if [ "$t" = "$owner" ] || [ "$t" = "$owner2" ]; then
        [ "$calls" -gt 0 ] || fail "owner thread $t made no engine call: $line"
    else
        [ "$calls" = 0 ] || fail "thread $t owns no image but called the engine: $line"
    fi
done
[ "$total_active" = 5 ] || fail "$total_active active connections, expected 5"
touch "$tmp/go"
wait "$cpid" || fail "clients failed: $(cat clients.out)"
grep -q '^ok$' clients.out || fail "clients: $(cat clients.out)"

stop_server TERM "$pid"
[ "$SERVER_RC" = 0 ] || fail "exit $SERVER_RC after SIGTERM"
image_clean disk.qed
image_clean two.qed

# 4. SIGTERM while four clients write without pause.
prod_start "$tmp/s2.sock" --threads=4 disk.qed
pid=$SERVER_PID
cat >busy.py <<'PY'
import sys, nbd
h = nbd.NBD()
h.connect_uri("nbd+unix:///?socket=" + sys.argv[1])
me = int(sys.argv[2])
n = 0
try:
    while True:
        # Fresh clusters and overwrites: 64 KiB steps through 32 MiB.
        h.pwrite(bytes([me + 1]) * 65536, (me * 8 * 1048576 + n * 65536) % (32 << 20))
        n += 1
        if n % 16 == 0:
            h.flush()
except nbd.Error:
    pass
print(n)
PY
for me in 0 1 2 3; do
    "$NBD_PYTHON" busy.py "$tmp/s2.sock" "$me" >"busy$me.out" 2>&1 &
    track_client $!
done
# Busy: wait until the server has served requests on the connections.
for ((i = 0; i < 400; i++)); do
    kill -USR1 "$pid"
    sleep 0.05
    line=$(grep 'stats: export name=""' "$SERVER_LOG" | tail -n 1)
    [ -n "$line" ] && [ "$(stat_field "$line" requests)" -ge 200 ] && break
done
[ "$(stat_field "$line" requests)" -ge 200 ] || fail "the busy clients did not get going: $line"
stop_server TERM "$pid"
[ "$SERVER_RC" = 0 ] || fail "exit $SERVER_RC after SIGTERM with busy clients"
image_clean disk.qed
echo "threads: OK"
