#!/bin/bash
# loop-busy.sh - how busy is qednbd's loop thread, with 1 and 2 connections?
#
# Starts qednbd on a filled QED image (default 1 GiB in /dev/shm), runs fio
# (nbd engine) for 4k random reads, 4k random writes and 1 MiB sequential
# reads, each with 1 and then 2 jobs (one connection per job), and prints
# the throughput and the share of one CPU that the main (loop) thread and
# the whole server used, from /proc/PID/task/PID/stat.  See README.md,
# "Multi-core".
#
# usage: loop-busy.sh [--builddir DIR] [--dir DIR] [--size SIZE] [--runtime SEC]
set -u -o pipefail

BUILDDIR=$(cd "$(dirname "$0")/../.." && pwd)
DIR=/dev/shm
SIZE=1G
RUNTIME=5
while [ $# -gt 0 ]; do
    case "$1" in
        --builddir) BUILDDIR=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --runtime) RUNTIME=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "loop-busy.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
QEDNBD=$BUILDDIR/server/qednbd
QEDIMG=$BUILDDIR/contrib/qed-img/qed-img
[ -x "$QEDNBD" ] && [ -x "$QEDIMG" ] || { echo "loop-busy.sh: no qednbd/qed-img in $BUILDDIR (use --builddir)" >&2; exit 2; }
command -v fio >/dev/null || { echo "loop-busy.sh: fio is not installed" >&2; exit 2; }

WORK=$(mktemp -d "$DIR/qednbd-loop-busy.XXXXXX") || exit 2
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
"$QEDIMG" create "$WORK/img.qed" "$SIZE" >/dev/null || exit 1
"$QEDNBD" -u "$WORK/sock" "$WORK/img.qed" 2>"$WORK/server.log" &
PID=$!
for _ in $(seq 100); do [ -S "$WORK/sock" ] && break; sleep 0.05; done
[ -S "$WORK/sock" ] || { echo "loop-busy.sh: qednbd did not start" >&2; cat "$WORK/server.log" >&2; exit 1; }
URI="nbd+unix:///?socket=$WORK/sock"
fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 >/dev/null 2>&1 ||
    { echo "loop-busy.sh: the fill write failed" >&2; exit 1; }
TCK=$(getconf CLK_TCK)
ticks() { awk '{ print $14 + $15 }' "$1"; }

for wl in "randread 4k 32" "randwrite 4k 32" "read 1M 8"; do
    set -- $wl
    for nj in 1 2; do
        m0=$(ticks /proc/$PID/task/$PID/stat) s0=$(ticks /proc/$PID/stat) t0=$(date +%s.%N)
        fio --name=w --ioengine=nbd --uri="$URI" --rw="$1" --bs="$2" --iodepth="$3" \
            --numjobs="$nj" --offset_increment=$((100 / nj))% --size=$((100 / nj))% \
            --time_based --runtime="$RUNTIME" --group_reporting --output-format=json \
            --output="$WORK/fio.json" >/dev/null 2>&1 || { echo "loop-busy.sh: fio failed" >&2; exit 1; }
        m1=$(ticks /proc/$PID/task/$PID/stat) s1=$(ticks /proc/$PID/stat) t1=$(date +%s.%N)
        python3 - "$WORK/fio.json" "$1" "$2" "$nj" "$m0" "$m1" "$s0" "$s1" "$t0" "$t1" "$TCK" <<'PY'
import json, sys
f, rw, bs, nj = sys.argv[1:5]
m0, m1, s0, s1, t0, t1, tck = map(float, sys.argv[5:12])
j = json.load(open(f))['jobs'][0]
iops = j['read']['iops'] + j['write']['iops']
mib = (j['read']['bw_bytes'] + j['write']['bw_bytes']) / 1048576
el = t1 - t0
print('%-9s %-3s %s connection(s): %8.0f IOPS %6.0f MiB/s  main thread %3.0f %% busy, whole server %3.0f %%'
      % (rw, bs, nj, iops, mib, 100 * (m1 - m0) / tck / el, 100 * (s1 - s0) / tck / el))
PY
    done
done
