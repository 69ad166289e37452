#!/bin/bash
# bench-smoke.sh - a short run of contrib/bench/bench.sh against qednbd and
# nbdkit file, so that the benchmark harness cannot rot.
#
# The run uses --quick (64 MiB allocated image, 1 repetition), 1 s per timed
# run and a 16 MiB fresh image (256 clusters of 64 KiB), over Unix sockets
# and TCP (--transport unix,tcp) with 1 and 2 connections (--numjobs 1,2),
# with qednbd's O_DIRECT variant (qednbd-direct) where qednbd has --cache
# and the directory takes O_DIRECT.  bench-smoke-check.py then checks the
# report (see there).  A second, tiny run with a qednbd whose --help has no
# --cache checks that qednbd-direct is skipped cleanly: exit 0, the reason
# printed and reported, no run recorded, the other server run.  Last,
# loop-busy.sh prints its six lines.
# No timing is asserted.  Skips when fio (with its nbd engine), nbdkit or
# python3 is missing.
set -u

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*" >&2; exit 1; }

: "${top_builddir:?top_builddir must be set (run through make check)}"
: "${top_srcdir:?top_srcdir must be set (run through make check)}"

command -v fio >/dev/null 2>&1 || skip "fio is not installed"
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"
command -v nbdkit >/dev/null 2>&1 || skip "nbdkit is not installed"
command -v python3 >/dev/null 2>&1 || skip "python3 is not installed"
[ -x "$top_builddir/server/qednbd" ] || fail "$top_builddir/server/qednbd is not built"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench-smoke.XXXXXX") || fail "mktemp"
trap 'rm -rf "$tmp"' EXIT

bench=$top_srcdir/contrib/bench/bench.sh
[ -f "$bench" ] || fail "$bench is missing"

# The reference server is not under test: nbdkit 1.32's file plugin aborts
# (status 134, "connections.c: raw_send_socket: Assertion `sock >= 0'
# failed") when fio's short fresh-image pass ends and closes the connection,
# on some machines every time.  When only the reference server failed, run
# once more; if it fails again, its runs are reported as failed and only
# qednbd's results must be complete.  A qednbd failure is never retried.
ref_failed=0
for attempt in 1 2; do
    rc=0
    timeout -k 10 240 bash "$bench" --quick --runtime 1 --fresh-size 16M \
        --servers qednbd,qednbd-direct,nbdkit-file --numjobs 1,2 --transport unix,tcp \
        --qednbd-threads 2 --builddir "$top_builddir" --dir "$tmp" \
        --out "$tmp/bench.md" --raw "$tmp/raw.tsv" >"$tmp/out" 2>"$tmp/err" || rc=$?
    echo "--- bench.sh output (attempt $attempt):"
    cat "$tmp/out"
    echo "--- bench.sh messages:"
    cat "$tmp/err"
    if [ "$rc" -ne 0 ] && [ "$attempt" -eq 1 ] && ! grep -q 'qednbd[a-z-]* [a-z-]* failed' "$tmp/err" &&
       grep -qE 'nbdkit-file [a-z-]* failed: server (exited|died)' "$tmp/err"; then
        echo "--- the reference server (nbdkit) failed, not qednbd: running again"
        continue
    fi
    if [ "$rc" -eq 1 ] && ! grep -q 'qednbd[a-z-]* [a-z-]* failed' "$tmp/err" &&
       grep -qE 'nbdkit-file [a-z-]* failed: server (exited|died)' "$tmp/err"; then
        echo "--- the reference server (nbdkit) failed again; checking qednbd's results only there"
        ref_failed=1
        rc=0
    fi
    break
done
[ "$rc" -ne 124 ] || fail "bench.sh did not finish within 240 s"
[ "$rc" -eq 0 ] || fail "bench.sh exited $rc"

REF_FAILED=$ref_failed python3 "$top_srcdir/tests/bench/bench-smoke-check.py" \
    "$tmp/out" "$tmp/err" "$tmp/raw.tsv" "$tmp/bench.md" || fail "the benchmark report is incomplete"

# A qednbd without --cache: qednbd-direct is skipped with its reason, and
# the other server still runs.
printf '#!/bin/sh\necho "Usage: qednbd [OPTIONS] IMAGE"\necho "  --aio=uring|threads"\n' >"$tmp/old-qednbd"
chmod +x "$tmp/old-qednbd"
rc=0
timeout -k 10 60 bash "$bench" --quick --runtime 1 --workloads randread \
    --servers qednbd-direct,nbdkit-null --qednbd "$tmp/old-qednbd" \
    --qed-img "$top_builddir/contrib/qed-img/qed-img" --dir "$tmp" \
    --raw "$tmp/raw2.tsv" >"$tmp/out2" 2>"$tmp/err2" || rc=$?
echo "--- bench.sh with a qednbd lacking --cache:"
cat "$tmp/out2" "$tmp/err2"
[ "$rc" -eq 0 ] || fail "bench.sh with a qednbd lacking --cache exited $rc"
grep -qF "bench.sh: skipping qednbd-direct: $tmp/old-qednbd has no --cache option" "$tmp/err2" ||
    fail "no reason printed for skipping qednbd-direct"
grep -q '^skipped qednbd-direct: ' "$tmp/out2" || fail "the report does not list the skipped variant"
! grep -q 'qednbd-direct' "$tmp/raw2.tsv" || fail "a skipped variant has runs"
grep -qP '^1\tunix\t1\tnbdkit-null\trandread\tok\t' "$tmp/raw2.tsv" || fail "nbdkit-null did not run"

# loop-busy.sh: six lines, each with a positive rate and two percentages.
"$top_srcdir/contrib/bench/loop-busy.sh" --builddir "$top_builddir" --dir "$tmp" \
    --size 64M --runtime 1 >"$tmp/loop-busy.out" 2>&1 ||
    { cat "$tmp/loop-busy.out"; fail "loop-busy.sh failed"; }
cat "$tmp/loop-busy.out"
n=$(grep -cE '^(randread|randwrite|read) +[0-9a-zA-Z]+ +[12] connection\(s\): +[1-9][0-9]* IOPS +[0-9]+ MiB/s +main thread +[0-9]+ % busy, whole server +[0-9]+ %$' "$tmp/loop-busy.out")
[ "$n" -eq 6 ] || fail "loop-busy.sh printed $n complete result lines, expected 6"
echo "ok"
