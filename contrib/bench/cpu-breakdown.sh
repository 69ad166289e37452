#!/bin/bash
# cpu-breakdown.sh - where does the server's CPU go, per workload and per
# number of connections?  The measurement behind README.md, "Multi-core
# design (issue 14)".
#
# For each --dirs entry (a file system: tmpfs, ext4...), each repetition and
# each server (order alternating), it serves a filled image and runs fio's
# nbd engine: 4k random reads QD32, 4k random writes QD32 (allocated image)
# and 1 MiB sequential reads QD8, each with 1, 2 and 4 jobs (one connection
# per job, each on its own region of the image).  Per run it records
# throughput, the server's CPU per I/O (all threads) and its loop thread's
# busy share (/proc/PID/task/PID/stat).  Then, for qednbd only and as a
# separate pass (perf costs CPU), it records `perf record -a -g -e
# cpu-clock` during the same runs and sorts the server's samples with
# cpu-split.py into system calls, copies, engine, server, libev...
#
# usage: cpu-breakdown.sh [--builddir DIR] [--dirs D1,D2] [--size SIZE]
#          [--runtime SEC] [--reps N] [--numjobs 1,2,4] [--workloads LIST] [--no-perf]
#          [--no-nbdkit] [--freq HZ] [--outdir DIR]
# Prints a markdown report (medians over the repetitions) on stdout; every
# run's numbers stay in --outdir (runs.tsv, split-*.tsv).
set -u -o pipefail

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
BUILDDIR=$(cd "$SCRIPT_DIR/../.." && pwd)
DIRS=/dev/shm,/var/tmp
SIZE=1G
RUNTIME=4
REPS=3
NUMJOBS=1,2,4
WANT=randread-4k,randwrite-4k,read-1M,alloc-4k
PERF=yes
NBDKIT=yes
FREQ=2000
OUTDIR=
while [ $# -gt 0 ]; do
    case "$1" in
        --builddir) BUILDDIR=$2; shift 2 ;;
        --dirs) DIRS=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --runtime) RUNTIME=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --numjobs) NUMJOBS=$2; shift 2 ;;
        --workloads) WANT=$2; shift 2 ;;
        --no-perf) PERF=no; shift ;;
        --no-nbdkit) NBDKIT=no; shift ;;
        --freq) FREQ=$2; shift 2 ;;
        --outdir) OUTDIR=$2; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "cpu-breakdown.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
die() { echo "cpu-breakdown.sh: $*" >&2; exit 2; }
QEDNBD=$BUILDDIR/server/qednbd
QEDIMG=$BUILDDIR/contrib/qed-img/qed-img
if [ ! -x "$QEDNBD" ] || [ ! -x "$QEDIMG" ]; then die "no qednbd/qed-img in $BUILDDIR (use --builddir)"; fi
command -v fio >/dev/null || die "fio is not installed"
[ "$NBDKIT" = no ] || command -v nbdkit >/dev/null || die "nbdkit is not installed (or --no-nbdkit)"
[ "$PERF" = no ] || perf record -e cpu-clock -o /dev/null true >/dev/null 2>&1 ||
    die "perf record does not work here (apt-get install linux-perf, or --no-perf)"
[ -n "$OUTDIR" ] || OUTDIR=$(mktemp -d /tmp/qednbd-cpu-breakdown.XXXXXX)
mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd) || die "cannot enter $OUTDIR"
TCK=$(getconf CLK_TCK)
SERVERS=(qednbd)
[ "$NBDKIT" = yes ] && SERVERS+=(nbdkit-file)
IFS=, read -r -a DIR_LIST <<<"$DIRS"
IFS=, read -r -a NJ_LIST <<<"$NUMJOBS"
WORKLOADS=("randread 4k 32" "randwrite 4k 32" "read 1M 8")
want() { case ",$WANT," in *",$1,"*) return 0 ;; esac; return 1; }
TIMED=no   # any workload on the filled image?
for wl in "${WORKLOADS[@]}"; do read -r rw bs _ <<<"$wl"; want "$rw-$bs" && TIMED=yes; done

WORK='' SPID=''
cleanup() {
    [ -n "$SPID" ] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null
    [ -n "$WORK" ] && rm -rf "$WORK"
}
trap cleanup EXIT

# start SERVER IMAGE - start it on $WORK/sock; sets SPID.
start() {
    local i
    rm -f "$WORK/sock"
    case "$1" in
        qednbd) "$QEDNBD" -u "$WORK/sock" "$2" </dev/null >>"$WORK/server.log" 2>&1 & ;;
        nbdkit-file) nbdkit -f -U "$WORK/sock" file "$2" </dev/null >>"$WORK/server.log" 2>&1 & ;;
    esac
    SPID=$!
    for ((i = 0; i < 200; i++)); do
        [ -S "$WORK/sock" ] && return 0
        kill -0 "$SPID" 2>/dev/null || break
        sleep 0.05
    done
    cat "$WORK/server.log" >&2
    die "$1 did not start"
}
stop() { kill "$SPID" 2>/dev/null; wait "$SPID" 2>/dev/null; SPID=; }
# ticks STATFILE - utime + stime (fields 14 and 15 of proc(5)), in clock ticks.
ticks() {
    local s f
    s=$(cat "$1") || return 1
    s=${s##*) }            # the command name may hold spaces; skip past it
    read -r -a f <<<"$s"
    echo $(( f[11] + f[12] ))
}

# run FS SERVER REP MODE NAME NJ FIO-ARGS... - one fio run with NJ jobs,
# each on its own region; appends a line to runs.tsv.
run() {
    local fs=$1 srv=$2 rep=$3 mode=$4 name=$5 nj=$6 m0 m1 s0 s1 t0 t1 pp='' tag
    shift 6
    tag=$fs-$srv-$name-nj$nj-r$rep
    if [ "$mode" = perf ]; then
        perf record -a -g -e cpu-clock -F "$FREQ" -o "$WORK/perf.data" >/dev/null 2>&1 &
        pp=$!
        sleep 0.5   # perf attaches
    fi
    m0=$(ticks "/proc/$SPID/task/$SPID/stat") s0=$(ticks "/proc/$SPID/stat") t0=$(date +%s.%N)
    fio --name=w --ioengine=nbd --uri="nbd+unix:///?socket=$WORK/sock" --numjobs="$nj" \
        --group_reporting --output-format=json --output="$WORK/fio.json" "$@" \
        >/dev/null 2>"$WORK/fio.err" || { cat "$WORK/fio.err" >&2; die "fio failed ($tag)"; }
    m1=$(ticks "/proc/$SPID/task/$SPID/stat") s1=$(ticks "/proc/$SPID/stat") t1=$(date +%s.%N)
    local line
    line=$(python3 - "$WORK/fio.json" "$m0" "$m1" "$s0" "$s1" "$t0" "$t1" "$TCK" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))['jobs'][0]
m0, m1, s0, s1, t0, t1, tck = map(float, sys.argv[2:9])
ios = j['read']['total_ios'] + j['write']['total_ios']
el = t1 - t0
print('%d\t%.0f\t%.1f\t%.2f\t%.1f\t%.1f' % (
    ios, (j['read']['iops'] + j['write']['iops']),
    (j['read']['bw_bytes'] + j['write']['bw_bytes']) / 1048576,
    (s1 - s0) / tck * 1e6 / max(ios, 1), 100 * (m1 - m0) / tck / el, 100 * (s1 - s0) / tck / el))
PY
)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$fs" "$srv" "$rep" "$mode" "$name" "$nj" "$line" \
        >>"$OUTDIR/runs.tsv"
    if [ -n "$pp" ]; then
        kill -INT "$pp"
        wait "$pp"
        perf script -i "$WORK/perf.data" -F comm,pid,tid,ip,sym,dso 2>/dev/null |
            python3 "$SCRIPT_DIR/cpu-split.py" --pid "$SPID" --freq "$FREQ" \
                --ios "$(cut -f1 <<<"$line")" --syms-dir "$BUILDDIR/lib" >"$OUTDIR/split-$tag.tsv"
        rm -f "$WORK/perf.data"
    fi
}

# pass FS SERVER REP MODE - every workload and connection count on one server.
pass() {
    local fs=$1 srv=$2 rep=$3 mode=$4 wl rw bs qd nj
    start "$srv" "$WORK/img-$srv"
    for wl in "${WORKLOADS[@]}"; do
        read -r rw bs qd <<<"$wl"
        want "$rw-$bs" || continue
        for nj in "${NJ_LIST[@]}"; do
            run "$fs" "$srv" "$rep" "$mode" "$rw-$bs" "$nj" --rw="$rw" --bs="$bs" \
                --iodepth="$qd" --offset_increment=$((100 / nj))% --size=$((100 / nj))% \
                --time_based --runtime="$RUNTIME"
        done
    done
    stop
}

# alloc FS REP MODE - qednbd on a fresh image, one connection: one 4k write
# per cluster in a random order (every write allocates), as profile.sh does.
alloc() {
    "$QEDIMG" create "$WORK/img-alloc" "$SIZE" >/dev/null || die "qed-img create failed"
    start qednbd "$WORK/img-alloc"
    run "$1" qednbd "$2" "$3" alloc-4k 1 --iodepth=32 --read_iolog="$WORK/alloc.iolog"
    stop
    rm -f "$WORK/img-alloc"
}

: >"$OUTDIR/runs.tsv"
for dir in "${DIR_LIST[@]}"; do
    fs=$(stat -f -c %T "$dir" | tr -c 'a-z0-9\n' -)
    WORK=$(mktemp -d "$dir/qednbd-cpu-breakdown.XXXXXX") || die "mktemp in $dir failed"
    "$QEDIMG" create "$WORK/img-qednbd" "$SIZE" >/dev/null || die "qed-img create failed"
    truncate -s "$SIZE" "$WORK/img-nbdkit-file"
    python3 - "$WORK/alloc.iolog" "$(numfmt --from=iec "$SIZE")" <<'PY'
import random, sys
path, size = sys.argv[1], int(sys.argv[2])
idx = list(range(size // 65536))
random.Random(1).shuffle(idx)
with open(path, 'w') as f:
    f.write('fio version 2 iolog\nnbd add\nnbd open\n')
    f.writelines('nbd write %d 4096\n' % (i * 65536) for i in idx)
PY
    [ "$TIMED" = yes ] || SERVERS=()
    for srv in "${SERVERS[@]}"; do
        start "$srv" "$WORK/img-$srv"
        fio --name=fill --ioengine=nbd --uri="nbd+unix:///?socket=$WORK/sock" --rw=write \
            --bs=1M --iodepth=8 >/dev/null 2>&1 || die "the fill write failed ($srv)"
        stop
    done
    for ((rep = 1; rep <= REPS; rep++)); do
        order=("${SERVERS[@]}")
        [ $((rep % 2)) -eq 0 ] && [ ${#order[@]} -eq 2 ] && order=("${order[1]}" "${order[0]}")
        for srv in "${order[@]}"; do pass "$fs" "$srv" "$rep" cpu; done
        [ "$PERF" = yes ] && [ "$TIMED" = yes ] && pass "$fs" qednbd "$rep" perf
        want alloc-4k && alloc "$fs" "$rep" cpu
        want alloc-4k && [ "$PERF" = yes ] && alloc "$fs" "$rep" perf
        echo "cpu-breakdown.sh: $dir repetition $rep done" >&2
    done
    rm -rf "$WORK"
    WORK=
done
python3 "$SCRIPT_DIR/cpu-report.py" "$OUTDIR"
