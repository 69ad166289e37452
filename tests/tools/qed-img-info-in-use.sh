#!/bin/bash
# qed-img info on an image whose dirty flag (NEED_CHECK) is set (issue 13):
#   1. while qednbd serves it and a client writes, `info -U` (what the README
#      recommends for a look at an image in use) exits 0, shows "dirty flag:
#      yes", says the image may be open read-write elsewhere, and does not
#      print the library's "image needs a check" (which alarmed users);
#      `map -U` prints no such notice either;
#   2. after the server stops cleanly the flag is clear and info says nothing;
#   3. an image left dirty and not in use: info (with its lock) says it was
#      not closed cleanly and names `qed-img check -r`;
#   4. a dirty backing file keeps the library's notice (no view shows its flag).
# Every wait polls for its condition; the server and the client are stopped
# by PID on any exit.
. "$top_srcdir/tests/tools/tools-common.sh"
need qemu-io
QEDNBD="$top_builddir/server/qednbd"
[ -x "$QEDNBD" ] || fail "$QEDNBD is not built"

srv='' qio='' writer=''
stop_all() {
    local p
    for p in $writer $qio $srv; do
        kill -TERM "$p" 2>/dev/null
    done
    for p in $writer $qio $srv; do
        wait "$p" 2>/dev/null
    done
    writer='' qio='' srv=''
}
trap 'stop_all; rm -rf "$tmp"' EXIT

# wait_for SECONDS DESCRIPTION CMD... - poll CMD every 0.05 s until it succeeds.
wait_for() {
    local limit=$1 what=$2 i
    shift 2
    for ((i = 0; i < limit * 20; i++)); do
        "$@" && return 0
        sleep 0.05
    done
    fail "timed out after ${limit}s waiting for $what"
}
dirty() { [ $(( $(qed_header "$1" features) & 2 )) -ne 0 ]; }
clean() { ! dirty "$1"; }

"$QED_IMG" create img.qed 16M >/dev/null || fail "create"

# ---- 1. served and written to ----
"$QEDNBD" -u "$tmp/nbd.sock" img.qed >"$tmp/server.log" 2>&1 &
srv=$!
wait_for 30 "the server's socket" test -S "$tmp/nbd.sock"
mkfifo w.fifo
qemu-io -f raw "nbd+unix:///?socket=$tmp/nbd.sock" <w.fifo >"$tmp/qemu-io.out" 2>&1 &
qio=$!
exec 7>w.fifo
# Keep writing (NEED_CHECK is cleared after 5 s without writes).
( while echo "write -P 0x5a 0 64k" >&7; do sleep 0.2; done ) 2>/dev/null &
writer=$!
wait_for 30 "NEED_CHECK to be set by the server" dirty img.qed

expect_rc 0 "$QED_IMG" info -U img.qed
expect_grep "$tmp/out" "dirty flag: yes"
expect_grep "$tmp/err" "open read-write elsewhere"
expect_grep "$tmp/err" "qed-img check img.qed"
grep -q "needs a check" "$tmp/err" && { cat "$tmp/err" >&2; fail "info -U printed 'needs a check'"; }

expect_rc 0 "$QED_IMG" info -U --json img.qed
python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["dirty-flag"] is True' \
    "$tmp/out" || fail "--json does not show dirty-flag true"
grep -q "needs a check" "$tmp/err" && { cat "$tmp/err" >&2; fail "info -U --json printed 'needs a check'"; }

expect_rc 0 "$QED_IMG" map -U img.qed
expect_grep "$tmp/out" "img.qed"
[ -s "$tmp/err" ] && { cat "$tmp/err" >&2; fail "map -U printed something on stderr"; }

# Without -U the server's lock refuses the look, as before.
expect_rc 1 "$QED_IMG" info img.qed
expect_grep "$tmp/err" "lock"

# ---- 2. after a clean stop ----
stop_all
clean img.qed || fail "the server left NEED_CHECK set after SIGTERM"
expect_rc 0 "$QED_IMG" info img.qed
expect_grep "$tmp/out" "dirty flag: no"
[ -s "$tmp/err" ] && { cat "$tmp/err" >&2; fail "info of a clean image printed on stderr"; }

# ---- 3. dirty and not in use ----
set_features img.qed 0x2
expect_rc 0 "$QED_IMG" info img.qed
expect_grep "$tmp/out" "dirty flag: yes"
expect_grep "$tmp/err" "not closed cleanly"
expect_grep "$tmp/err" "qed-img check -r img.qed"
grep -q "needs a check" "$tmp/err" && { cat "$tmp/err" >&2; fail "info printed 'needs a check'"; }
dirty img.qed || fail "info changed the dirty flag"

# ---- 4. a dirty backing file ----
"$QED_IMG" create -b img.qed -F qed top.qed >/dev/null || fail "create top.qed"
expect_rc 0 "$QED_IMG" info top.qed
expect_grep "$tmp/out" "dirty flag: no"
expect_grep "$tmp/err" "img.qed: image needs a check"
echo "PASS"
