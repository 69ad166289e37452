#!/bin/bash
# Statistics on SIGUSR1: a known sequence of requests through libnbd's
# Python bindings, then every counter of the export line checked against
# what was sent -- requests by command, bytes read / written / zeroed /
# trimmed, errors (a read past the end, sent with libnbd's client-side
# checks off), clusters_appended (3 data clusters written into an empty
# image with 64 KiB clusters and 4-cluster tables: 3 + one L2 table of 4 =
# 7; write-zeroes and trim of whole clusters allocate nothing) -- and the
# server line (connections, active).  A second server checks that every
# export gets its own line, and that a name with a quote and a newline is
# escaped.
. "$top_srcdir/tests/prod/prod-common.sh"
need_nbd_python

run 30 "$QEDIMG" create -c 64K -t 4 disk.qed 16M
prod_start "$tmp/s.sock" -v disk.qed

kill -USR1 "$SERVER_PID"
wait_log "$SERVER_LOG" 'stats: export name=""'
line=$(grep 'stats: export name=""' "$SERVER_LOG" | tail -n 1)
[ "$(stat_field "$line" requests)" = 0 ] || fail "requests before any client: $line"
[ "$(stat_field "$line" clusters_appended)" = 0 ] || fail "clusters_appended at start: $line"
# wait_listen's probe connected once already: count from here.
conns0=$(stat_field "$(grep 'stats: server' "$SERVER_LOG" | tail -n 1)" connections)

run 60 "$NBD_PYTHON" - "nbd+unix:///?socket=$tmp/s.sock" <<'PY'
import sys, nbd
h = nbd.NBD()
h.set_strict_mode(0)            # let the bad read reach the server
h.add_meta_context("base:allocation")
h.connect_uri(sys.argv[1])
K = 65536
for i in range(3):
    h.pwrite(bytes([i + 1]) * K, i * K)
assert h.pread(4096, 0) == b"\x01" * 4096
assert h.pread(8192, K) == b"\x02" * 8192
h.flush()
h.zero(K, 3 * K)                # whole unallocated cluster: becomes a zero cluster
h.trim(K, 2 * K)
try:
    h.pread(4096, h.get_size())
    sys.exit("a read past the end succeeded")
except nbd.Error as e:
    print("bad read refused:", e)
h.block_status(4 * K, 0, lambda *a: 0)
h.shutdown()
PY

wait_log "$SERVER_LOG" 'closing: drained'
kill -USR1 "$SERVER_PID"
wait_log "$SERVER_LOG" 'requests=10 '
line=$(grep 'stats: export name=""' "$SERVER_LOG" | tail -n 1)
srvline=$(grep 'stats: server' "$SERVER_LOG" | tail -n 1)
echo "$srvline"
echo "$line"
check() {
    local got
    got=$(stat_field "$line" "$1") || fail "no field $1"
    [ "$got" = "$2" ] || fail "$1=$got, expected $2 (line: $line)"
}
check connections 1
check requests 10
check reads 3
check writes 3
check flushes 1
check trims 1
check zeroes 1
check cache 0
check block_status 1
check bytes_read 12288
check bytes_written 196608
check bytes_zeroed 65536
check bytes_trimmed 65536
check errors 1
check cluster_size 65536
check clusters_appended 7
check flush_failed 0
fc=$(stat_field "$line" file_clusters)
[ "$fc" -ge 7 ] || fail "file_clusters=$fc is below what was appended"
[ "$(stat_field "$srvline" connections)" = $((conns0 + 1)) ] ||
    fail "server connections: $srvline (was $conns0 before the client)"
[ "$(stat_field "$srvline" active)" = 0 ] || fail "server active: $srvline"
[ "$(stat_field "$srvline" refused)" = 0 ] || fail "server refused: $srvline"
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC"

note "one line per export; names escaped"
run 30 "$QEDIMG" create a.qed 1M
run 30 "$QEDIMG" create b.qed 1M
prod_start "$tmp/m.sock" -e "first=a.qed" -e "$(printf 'we"ird\nname')=b.qed"
kill -USR1 "$SERVER_PID"
wait_log "$SERVER_LOG" 'stats: export name="we\\"ird\\x0aname"'
log_has "$SERVER_LOG" 'stats: export name="first" connections=0 requests=0 '
[ "$(grep -c 'stats: export' "$SERVER_LOG")" = 2 ] || fail "expected 2 export lines"
stop_server TERM
echo PASS
