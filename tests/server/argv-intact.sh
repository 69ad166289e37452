#!/bin/bash
# argv-intact.sh - qednbd parses its command line without writing into argv.
# Issue 13: `ps` showed "-e data disk.qed" because the '=' of
# "-e data=disk.qed" was overwritten with a NUL.  Start qednbd with two
# "-e NAME=IMAGE" exports, wait until it listens (parsing is over by then),
# and check that /proc/PID/cmdline still holds both arguments exactly as
# given; then that both exports are served and the server stops cleanly.
. "$top_srcdir/tests/server/server-common.sh"
need qemu-img
[ "$SERVER_KIND" = qednbd ] || skip "checks qednbd's own command line"
[ -r "/proc/$$/cmdline" ] || skip "no /proc/PID/cmdline here"

qemu-img create -q -f qed disk.qed 1M || fail "create disk.qed"
qemu-img create -q -f qed other.qed 2M || fail "create other.qed"

start_server -e data=disk.qed -e other=other.qed

# The arguments as the kernel shows them, one per line (NUL-separated).
tr '\0' '\n' <"/proc/$SERVER_PID/cmdline" >cmdline || fail "read /proc/$SERVER_PID/cmdline"
note "cmdline: $(tr '\n' ' ' <cmdline)"
grep -qx 'data=disk.qed' cmdline || fail "argument 'data=disk.qed' was modified: $(tr '\n' ' ' <cmdline)"
grep -qx 'other=other.qed' cmdline || fail "argument 'other=other.qed' was modified: $(tr '\n' ' ' <cmdline)"
grep -qx 'data' cmdline && fail "argv was split at '=': $(tr '\n' ' ' <cmdline)"

# Both exports are still served under their names.
if command -v nbdinfo >/dev/null 2>&1; then
    run 30 nbdinfo --size "nbd+unix:///data?socket=$SERVER_SOCK"
    [ "$(cat "$tmp/out")" = 1048576 ] || fail "export data: size $(cat "$tmp/out"), expected 1048576"
    run 30 nbdinfo --size "nbd+unix:///other?socket=$SERVER_SOCK"
    [ "$(cat "$tmp/out")" = 2097152 ] || fail "export other: size $(cat "$tmp/out"), expected 2097152"
fi

stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC after SIGTERM"
echo "PASS: argv intact"
