#!/bin/bash
# bench-smoke.sh - a short run of contrib/bench/bench.sh against qednbd and
# nbdkit file, so that the benchmark harness cannot rot.
#
# The run uses --quick (64 MiB allocated image, 1 repetition), 2 s per timed
# run and a 16 MiB fresh image (256 clusters of 64 KiB).  It checks:
#   - bench.sh exits 0 and prints the machine (nproc, kernel);
#   - the throughput table has one row per workload with a positive number
#     for both servers and the qednbd/nbdkit-file ratio;
#   - the CPU-per-I/O and peak-RSS tables have a number in every cell, and
#     every peak RSS is positive;
#   - every run in the --raw TSV succeeded with I/Os counted, and the two
#     fresh-image runs made exactly one pass: 16 writes of 1 MiB, and 256
#     writes of 4 KiB (one per cluster, so each one allocated);
#   - the --out markdown file holds the same tables.
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
    timeout -k 10 120 bash "$bench" --quick --runtime 2 --fresh-size 16M \
        --servers qednbd,nbdkit-file --builddir "$top_builddir" --dir "$tmp" \
        --out "$tmp/bench.md" --raw "$tmp/raw.tsv" >"$tmp/out" 2>"$tmp/err" || rc=$?
    echo "--- bench.sh output (attempt $attempt):"
    cat "$tmp/out"
    echo "--- bench.sh messages:"
    cat "$tmp/err"
    if [ "$rc" -ne 0 ] && [ "$attempt" -eq 1 ] && ! grep -q 'qednbd [a-z-]* failed' "$tmp/err" &&
       grep -q 'nbdkit-file [a-z-]* failed: server exited' "$tmp/err"; then
        echo "--- the reference server (nbdkit) failed, not qednbd: running again"
        continue
    fi
    if [ "$rc" -eq 1 ] && ! grep -q 'qednbd [a-z-]* failed' "$tmp/err" &&
       grep -q 'nbdkit-file [a-z-]* failed: server exited' "$tmp/err"; then
        echo "--- the reference server (nbdkit) failed again; checking qednbd's results only there"
        ref_failed=1
        rc=0
    fi
    break
done
[ "$rc" -ne 124 ] || fail "bench.sh did not finish within 120 s"
[ "$rc" -eq 0 ] || fail "bench.sh exited $rc"

REF_FAILED=$ref_failed python3 - "$tmp/out" "$tmp/raw.tsv" "$tmp/bench.md" <<'PY' || fail "the benchmark report is incomplete"
import os, re, sys

out = open(sys.argv[1]).read()
raw = [l.split('\t') for l in open(sys.argv[2]).read().splitlines() if l]
md = open(sys.argv[3]).read()
errors = []
# The reference server failed twice (see above): its cells may say "fail".
ref_failed = os.environ.get('REF_FAILED') == '1'

if not re.search(r'^host:\s+nproc=\d+, kernel \S+', out, re.M):
    errors.append('no "host: nproc=N, kernel K" line')

labels = ['seq write 1M QD8, fresh image',
          'rand write 4k QD32, fresh image (allocating)',
          'rand write 4k QD32, allocated',
          'rand read 4k QD32',
          'seq read 1M QD8']
num = r'(\d+(?:\.\d+)?)'

def section(title):
    """The rows of the text table whose title starts with @title."""
    m = re.search(r'^' + re.escape(title) + r'.*:\n((?:  .*\n?)+)', out, re.M)
    if not m:
        errors.append('no table "%s"' % title)
        return []
    return m.group(1).splitlines()

def row(lines, label):
    for l in lines:
        if l.strip().startswith(label):
            return l.strip()[len(label):].split()
    errors.append('no row "%s"' % label)
    return None

tput = section('Throughput')
for lab in labels:
    cells = row(tput, lab)
    if cells is None:
        continue
    # unit, qednbd, nbdkit-file, qednbd/nbdkit-file
    if len(cells) != 4:
        errors.append('throughput row "%s" has %d cells: %s' % (lab, len(cells), cells))
        continue
    unit, a, b, ratio = cells
    if unit not in ('MiB/s', 'IOPS'):
        errors.append('throughput row "%s": unit %s' % (lab, unit))
    for name, v in (('qednbd', a), ('nbdkit-file', b)):
        if name == 'nbdkit-file' and ref_failed and v == 'fail':
            continue
        if not re.fullmatch(num, v) or float(v) <= 0:
            errors.append('throughput "%s" %s: %r is not a positive number' % (lab, name, v))
    if ref_failed and b == 'fail' and ratio == '-':
        continue
    if not re.fullmatch(num + 'x', ratio) or float(ratio[:-1]) <= 0:
        errors.append('throughput "%s": ratio %r' % (lab, ratio))

for title, positive in (('Server CPU time per I/O', False), ('Server peak RSS', True)):
    lines = section(title)
    for lab in labels:
        cells = row(lines, lab)
        if cells is None:
            continue
        for k, v in enumerate(cells[:2]):
            if k == 1 and ref_failed and v == 'fail':
                continue
            v = v.rstrip('x')
            if not re.fullmatch(num, v) or (positive and float(v) <= 0):
                errors.append('%s "%s": %r' % (title, lab, cells))

# Every run: status ok, I/Os counted; the fresh-image runs made one pass.
want = {'seqwrite-fresh': 16, 'randwrite-fresh': 256}
seen = set()
for f in raw:
    if len(f) != 9:
        errors.append('raw line with %d fields: %s' % (len(f), f))
        continue
    rep, srv, wl, status, ios = f[:5]
    seen.add((srv, wl))
    if status != 'ok' and ref_failed and srv == 'nbdkit-file':
        continue
    if status != 'ok':
        errors.append('run %s %s: %s' % (srv, wl, status))
    elif int(ios) <= 0:
        errors.append('run %s %s: %s I/Os' % (srv, wl, ios))
    elif wl in want and int(ios) != want[wl]:
        errors.append('run %s %s: %s I/Os, one pass is %d' % (srv, wl, ios, want[wl]))
    elif int(f[8]) <= 0:
        errors.append('run %s %s: peak RSS %s KiB' % (srv, wl, f[8]))
wls = ['seqwrite-fresh', 'randwrite-fresh', 'randwrite', 'randread', 'seqread']
for s in ('qednbd', 'nbdkit-file'):
    for w in wls:
        if (s, w) not in seen:
            errors.append('no run of %s %s' % (s, w))

for lab in labels:
    if '| %s |' % lab not in md:
        errors.append('markdown file lacks the row "%s"' % lab)
if '| workload | unit | qednbd | nbdkit-file | qednbd/nbdkit-file |' not in md:
    errors.append('markdown file lacks the throughput header')

if errors:
    print('\n'.join(errors))
    sys.exit(1)
print('report complete: %d runs' % len(raw))
PY

# loop-busy.sh: six lines, each with a positive rate and two percentages.
"$top_srcdir/contrib/bench/loop-busy.sh" --builddir "$top_builddir" --dir "$tmp" \
    --size 64M --runtime 1 >"$tmp/loop-busy.out" 2>&1 ||
    { cat "$tmp/loop-busy.out"; fail "loop-busy.sh failed"; }
cat "$tmp/loop-busy.out"
n=$(grep -cE '^(randread|randwrite|read) +[0-9a-zA-Z]+ +[12] connection\(s\): +[1-9][0-9]* IOPS +[0-9]+ MiB/s +main thread +[0-9]+ % busy, whole server +[0-9]+ %$' "$tmp/loop-busy.out")
[ "$n" -eq 6 ] || fail "loop-busy.sh printed $n complete result lines, expected 6"
echo "ok"
