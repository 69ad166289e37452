#!/bin/bash
# kernel-client-mcore.sh - kernel-client.sh's scenario (nbd-client netlink
# with -C 4, ioctl -L, netlink with one connection) against qednbd
# --threads=4 (issue 14): the kernel's four connections are spread over the
# loop threads and every request of the image goes through its owner
# thread.  The server log must show the connections on several threads
# (SIGUSR1's thread lines) and only the owner calling the engine.
. "$top_srcdir/tests/e2e/e2e-common.sh"

e2e_setup
run 30 "$QEDIMG" create -c 64K "$tmp/disk.qed" 256M
e2e_kernel_client "$tmp/disk.qed" --threads=4
grep -qE '(^| )owner_thread=0( |$)' <<<"$E2E_STATS" ||
    fail "no owner_thread=0 in the export line: $E2E_STATS"
busy=0
for t in 0 1 2 3; do
    line=$(grep "stats: thread index=$t " "$SERVER_LOG" | tail -n 1)
    [ -n "$line" ] || fail "no statistics line for thread $t"
    conns=$(grep -oE ' connections=[0-9]+' <<<"$line" | cut -d= -f2)
    calls=$(grep -oE ' engine_calls=[0-9]+' <<<"$line" | cut -d= -f2)
    [ "$conns" -gt 0 ] && busy=$((busy + 1))
    [ "$t" = 0 ] || [ "$calls" = 0 ] || fail "thread $t is no owner but called the engine: $line"
done
[ "$busy" -ge 3 ] || fail "the connections used only $busy of the 4 threads"
echo "PASS: kernel client (nbd-client -C 4) against --threads=4"
