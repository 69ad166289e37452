#!/bin/bash
# memcap-tables.sh - the images' tables count in --max-memory (issue 11,
# items 2 and 9).
#
# An image with 4 MiB clusters and table size 4 has 16 MiB tables: its L1
# table is 16 MiB and its L2 cache holds at most 32 MiB (two tables), so
# qednbd reserves 48 MiB of --max-memory for it at start-up:
#   - --max-memory=112M leaves the clients less than their 65 MiB: refused,
#     with the size the image needs in the message;
#   - --max-memory=113M starts, and SIGUSR1 shows mem_tables=48 MiB;
#   - reading through all four L2 tables (twice, in turn) leaves the cache
#     at exactly its 32 MiB bound (SIGUSR1's l2_cache and l2_cache_peak),
#     and the server grows by at most that plus slack.  Before the byte
#     bound the cache kept at least four tables: 64 MiB.
. "$top_srcdir/tests/prod/prod-common.sh"
need qemu-io

img="$tmp/big.qed"
run 60 "$QEDIMG" create -c 4M -t 4 "$img" 32T
tables=$(( (16 + 32) * 1024 * 1024 ))
uri="nbd+unix:///?socket=$tmp/nbd.sock"

prod_start_fails -u "$tmp/refused.sock" --max-memory=112M "$img"
log_has "$tmp/err" "max-memory=112M is too small for these images: their tables .* need 48M"
log_has "$tmp/err" "at least 113M"

# One cluster under each of the four L2 tables (each maps 8 TiB), written
# through qednbd (QEMU 7.2 cannot open this geometry), then a fresh server
# with an empty cache.
prod_start "$tmp/nbd.sock" --max-memory=113M "$img"
run 60 qemu-io -f raw "$uri" -c "write -P 1 0 4k" -c "write -P 2 8T 4k" -c "write -P 3 16T 4k" \
    -c "write -P 4 24T 4k"
stop_server TERM "$SERVER_PID"
[ "$SERVER_RC" -eq 0 ] || fail "qednbd exited $SERVER_RC on SIGTERM"
prod_start "$tmp/nbd.sock" --max-memory=113M "$img"
kill -USR1 "$SERVER_PID"
wait_log "$SERVER_LOG" "stats: server .* mem_tables=$tables( |$)"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status"; }
before=$(rss_kib)
for round in 1 2; do
    run 60 qemu-io -f raw "$uri" -c "read -P 1 0 4k" -c "read -P 2 8T 4k" -c "read -P 3 16T 4k" \
        -c "read -P 4 24T 4k"
done
after=$(rss_kib)
# The first SIGUSR1 already wrote an export line: wait for a second one,
# not for any (reading the old line raced the new dump).
kill -USR1 "$SERVER_PID"
for ((i = 0; i < 100; i++)); do
    [ "$(grep -cE 'stats: export .* l2_cache_peak=' "$SERVER_LOG")" -ge 2 ] && break
    sleep 0.1
done
[ "$(grep -cE 'stats: export .* l2_cache_peak=' "$SERVER_LOG")" -ge 2 ] ||
    fail "no second statistics dump in $SERVER_LOG after 10 s"
line=$(grep -E 'stats: export .* l2_cache_peak=' "$SERVER_LOG" | tail -n 1)
peak=$(stat_field "$line" l2_cache_peak) || fail "no l2_cache_peak"
held=$(stat_field "$line" l2_cache) || fail "no l2_cache"
note "L2 cache: $held bytes held, $peak at the peak"
# Four tables read in turn through a two-table cache: exactly two at the
# peak (never the four tables the old floor kept), and two held now.
[ "$peak" -eq $(( 32 * 1024 * 1024 )) ] || fail "L2 cache peak $peak bytes, expected 32 MiB"
[ "$held" -eq $(( 32 * 1024 * 1024 )) ] || fail "L2 cache holds $held bytes, expected 32 MiB"
grow=$(( after - before ))
note "RSS before the reads ${before} KiB, after ${after} KiB: +${grow} KiB"
# The cache bound (32 MiB) plus 8 MiB for request buffers and malloc.
bound=$(( 40 * 1024 ))
[ "$grow" -le "$bound" ] ||
    fail "the server grew by ${grow} KiB reading four 16 MiB tables; the bound is ${bound} KiB"

stop_server TERM "$SERVER_PID"
[ "$SERVER_RC" -eq 0 ] || fail "qednbd exited $SERVER_RC on SIGTERM"
run 60 "$QEDIMG" check "$img"
echo PASS
