#!/bin/bash
# profile.sh - where does qednbd spend its CPU, per workload?
#
# Runs qednbd on a fresh QED image under valgrind's callgrind (default: counts
# user-space instructions, independent of the machine's load) or under
# `perf record` (samples user and kernel time, io_uring workers included),
# drives it with fio's nbd engine through the bench.sh workloads, each as a
# fixed number of I/Os, and writes one profile per workload:
#   alloc      4k writes, one per cluster, random order (every write allocates)
#   randwrite  4k random writes QD32 on the allocated image
#   randread   4k random reads QD32
#   seqread    1M sequential reads QD8
# (the image is filled by an unprofiled sequential write after "alloc").
# It prints, per workload, the cost per I/O and the top functions.
#
# Needs fio, python3, and valgrind (callgrind) or perf.  The profiles stay in
# --outdir for callgrind_annotate / perf report.
set -u -o pipefail

PROG=${0##*/}
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
TOOL=callgrind
SIZE=256M
IOS=20000
OUTDIR=
DIR=
QEDNBD=${QEDNBD:-}
QED_IMG=${QED_IMG:-}
TOP=25
WORKLOADS=alloc,randwrite,randread,seqread
EXTRA=

usage() {
    cat <<EOF
Usage: $PROG [OPTIONS]

  --tool callgrind|perf  profiler (default $TOOL)
  --size SIZE            image size (default $SIZE); "alloc" writes one 4k
                         block per 64 KiB cluster of it
  --ios N                I/Os per 4k workload (default $IOS); seqread reads
                         the image once
  --workloads LIST       subset of alloc,randwrite,randread,seqread
  --outdir DIR           where profiles go (default: a new directory in /tmp)
  --dir DIR              where the image and socket go (default /dev/shm
                         when it exists, as for bench.sh)
  --builddir DIR         take DIR/server/qednbd and DIR/contrib/qed-img/qed-img
  --qednbd PATH          qednbd binary
  --qednbd-args ARGS     extra qednbd arguments (e.g. --aio=threads)
  --top N                functions shown per workload (default $TOP)
  -h, --help             this help
EOF
}
die() { echo "$PROG: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --tool) TOOL=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --ios) IOS=$2; shift 2 ;;
        --workloads) WORKLOADS=$2; shift 2 ;;
        --outdir) OUTDIR=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        --builddir) QEDNBD=$2/server/qednbd; QED_IMG=$2/contrib/qed-img/qed-img; shift 2 ;;
        --qednbd) QEDNBD=$2; shift 2 ;;
        --qednbd-args) EXTRA=$2; shift 2 ;;
        --top) TOP=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
done

case "$TOOL" in
    callgrind) command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
                   die "valgrind is not installed (apt-get install valgrind)" ;;
    perf) command -v perf >/dev/null || die "perf is not installed (apt-get install linux-perf)" ;;
    *) die "--tool must be callgrind or perf" ;;
esac
command -v fio >/dev/null || die "fio is not installed"
[ -n "$QEDNBD" ] || QEDNBD=$SCRIPT_DIR/../../server/qednbd
[ -x "$QEDNBD" ] || die "qednbd not found ($QEDNBD): pass --builddir or --qednbd"
[ -n "$QED_IMG" ] || QED_IMG=$(dirname "$QEDNBD")/../contrib/qed-img/qed-img
SIZE_B=$(numfmt --from=iec "$SIZE") || die "bad --size"
[[ "$IOS" =~ ^[0-9]+$ ]] && [ "$IOS" -gt 0 ] || die "bad --ios"
[ -n "$OUTDIR" ] || OUTDIR=$(mktemp -d /tmp/qednbd-profile.XXXXXX)
mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
case "$OUTDIR" in *[[:space:]]*) die "--outdir must not contain white space" ;; esac
want() { case ",$WORKLOADS," in *",$1,"*) return 0 ;; esac; return 1; }

if [ -z "$DIR" ]; then
    if [ -d /dev/shm ] && [ -w /dev/shm ]; then DIR=/dev/shm; else DIR=${TMPDIR:-/tmp}; fi
fi
WORK=$(mktemp -d "$DIR/qednbd-profile.XXXXXX") || die "mktemp -d in $DIR failed"
SPID=
cleanup() {
    [ -n "$SPID" ] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
IMG=$WORK/image.qed
SOCK=$WORK/nbd.sock
rm -f "$OUTDIR"/callgrind.out* "$OUTDIR"/perf-*.data
if [ -x "$QED_IMG" ]; then
    "$QED_IMG" create "$IMG" "$SIZE_B" >/dev/null || die "qed-img create failed"
else
    qemu-img create -q -f qed "$IMG" "$SIZE_B" || die "qemu-img create failed"
fi

# The allocating workload: one 4k write per cluster, random order.
python3 - "$OUTDIR/alloc.iolog" "$SIZE_B" "$IOS" <<'PY'
import random, sys
path, size, ios = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
idx = list(range(size // 65536))
random.Random(1).shuffle(idx)
with open(path, 'w') as f:
    f.write('fio version 2 iolog\nnbd add\nnbd open\n')
    f.writelines('nbd write %d 4096\n' % (i * 65536) for i in idx[:ios])
PY


# shellcheck disable=SC2206
cmd=("$QEDNBD" -u "$SOCK" $EXTRA "$IMG")
if [ "$TOOL" = callgrind ]; then
    # Counts are zeroed before each workload and dumped after it.
    valgrind --tool=callgrind \
        --callgrind-out-file="$OUTDIR/callgrind.out" "${cmd[@]}" >"$OUTDIR/server.log" 2>&1 &
else
    "${cmd[@]}" >"$OUTDIR/server.log" 2>&1 &
fi
SPID=$!
for ((i = 0; i < 300; i++)); do
    [ -S "$SOCK" ] && break
    kill -0 "$SPID" 2>/dev/null || { cat "$OUTDIR/server.log" >&2; die "qednbd exited"; }
    sleep 0.1
done
[ -S "$SOCK" ] || die "qednbd did not listen within 30 s"
URI="nbd+unix:///?socket=$SOCK"

fio_run() {
    local json=$1
    shift
    fio --ioengine=nbd --uri="$URI" --output-format=json --output="$json" "$@" >/dev/null 2>"$json.err" ||
        { cat "$json.err" >&2; die "fio failed: $*"; }
}

# profile NAME FIO-ARGS... - profile one workload.
profile() {
    local name=$1 pp ios
    shift
    if [ "$TOOL" = callgrind ]; then
        callgrind_control -z "$SPID" >/dev/null 2>&1
        fio_run "$OUTDIR/$name.json" --name="$name" "$@"
        callgrind_control -d "$name" "$SPID" >/dev/null 2>&1
    else
        perf record -e cpu-clock -g -o "$OUTDIR/perf-$name.data" -p "$SPID" \
            >"$OUTDIR/perf-$name.log" 2>&1 &
        pp=$!
        sleep 0.5   # perf attaches
        fio_run "$OUTDIR/$name.json" --name="$name" "$@"
        kill -INT "$pp"
        wait "$pp"
    fi
    ios=$(python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(sum(j[x]["total_ios"] for j in d["jobs"] for x in ("read", "write")))' "$OUTDIR/$name.json")
    echo "$name $ios" >>"$OUTDIR/ios"
}

: >"$OUTDIR/ios"
want alloc && profile alloc --iodepth=32 --read_iolog="$OUTDIR/alloc.iolog"
fio_run "$OUTDIR/prefill.json" --name=prefill --rw=write --bs=1M --iodepth=8
want randwrite && profile randwrite --rw=randwrite --bs=4k --iodepth=32 --number_ios="$IOS"
want randread && profile randread --rw=randread --bs=4k --iodepth=32 --number_ios="$IOS"
want seqread && profile seqread --rw=read --bs=1M --iodepth=8
kill "$SPID"
wait "$SPID" 2>/dev/null
SPID=

while read -r name ios; do
    echo "==== $name: $ios I/Os"
    if [ "$TOOL" = callgrind ]; then
        f=$(grep -l "^desc: Trigger: dump $name\$" "$OUTDIR"/callgrind.out.* | head -n 1)
        total=$(awk '/^summary:/ { print $2; exit }' "$f")
        echo "instructions per I/O (user space only): $((total / ios))"
        echo "profile: $f"
        # Frames that stay active across the dump (main, ev_run) show the
        # whole total even as self cost: leave out the 100% lines.
        echo "inclusive cost:"
        callgrind_annotate --inclusive=yes --threshold=100 --auto=no "$f" 2>/dev/null |
            awk '/^-+$/ { d++ } d >= 5 && /^ *[0-9,]+ +\(/ && !/\(100\.0%\)/' | head -n "$TOP"
        echo "self cost:"
        callgrind_annotate --threshold=100 --auto=no "$f" 2>/dev/null |
            awk '/^-+$/ { d++ } d >= 5 && /^ *[0-9,]+ +\(/ && !/\(100\.0%\)/' | head -n "$TOP"
    else
        echo "profile: $OUTDIR/perf-$name.data"
        perf report -i "$OUTDIR/perf-$name.data" --stdio --no-children --sort comm,dso,sym \
            2>/dev/null | grep -E '^ +[0-9.]+%' | head -n "$TOP"
    fi
done <"$OUTDIR/ios"
echo "profiles in $OUTDIR"
