#!/bin/bash
# bench.sh - measure qednbd against qemu-nbd, nbdkit file and nbdkit null,
# side by side, with fio's nbd engine (built on libnbd).
#
# Needs only Debian packages: qemu-utils, nbdkit, fio (and python3 to read
# fio's JSON reports).  Run `bench.sh --help` for the options; contrib/bench/
# README.md explains what is measured and how.
#
# Layout of one invocation: for every repetition, for every workload group,
# every server runs the group in turn; the server order alternates from one
# repetition to the next (forward, reversed, forward, ...) so that a drift of
# the machine (other load, thermal, page cache) does not favour one server.
# Workload groups:
#   seqwrite-fresh   fresh image, sequential 1 MiB writes, QD8
#   randwrite-fresh  fresh image, random 4 KiB writes, QD32, one per cluster
#                    (every write allocates)
#   allocated        fresh image, filled by an untimed sequential write, then
#                    randwrite (4k QD32), randread (4k QD32), seqread (1M QD8)
# Each fio run is bracketed by reads of the server's /proc/PID/stat
# (utime+stime, all threads) and its VmHWM (reset before the run through
# /proc/PID/clear_refs), giving CPU time per I/O and peak RSS per run.
set -u -o pipefail

PROG=${0##*/}
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)

ALL_SERVERS=(qednbd qemu-nbd nbdkit-file nbdkit-null)
ALL_WORKLOADS=(seqwrite-fresh randwrite-fresh randwrite randread seqread)

# ---- options -----------------------------------------------------------------
SIZE=1G
FRESH_SIZE=4G
RUNTIME=10
REPS=3
NUMJOBS=1
CLUSTER=64K
DIR=
SERVERS=$(IFS=,; echo "${ALL_SERVERS[*]}")
WORKLOADS=$(IFS=,; echo "${ALL_WORKLOADS[*]}")
OUT=
RAW=
QUICK=0
WARM=auto
KEEP=0
VERBOSE=0
QEDNBD=${QEDNBD:-}
QED_IMG=${QED_IMG:-}
BUILDDIR=
QEDNBD_AIO=
QEDNBD_EXTRA=
QEMU_NBD_AIO=threads
QEMU_NBD_CACHE=writeback
SIZE_SET=0 FRESH_SET=0 RUNTIME_SET=0 REPS_SET=0

# The command line as given, shell-quoted, for the record in the output.
CMDLINE=
for a in "$0" "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then CMDLINE+=" $a"; else CMDLINE+=" $(printf '%q' "$a")"; fi
done
CMDLINE=${CMDLINE# }

usage() {
    cat <<EOF
Usage: $PROG [OPTIONS]

Run five fio workloads against qednbd, qemu-nbd (QED image), nbdkit file
(raw image) and nbdkit null (protocol ceiling); print medians, ratios,
server CPU time per I/O and server peak RSS.

  --runtime SEC        seconds per timed fio run (default $RUNTIME); the two
                       fresh-image runs stop earlier when their single pass
                       over the fresh image ends
  --reps N             repetitions, server order alternating (default $REPS)
  --size SIZE          image size for the allocated-image runs (default $SIZE)
  --fresh-size SIZE    image size for the two fresh-image runs (default
                       $FRESH_SIZE); each makes one pass over it, so a larger
                       size means longer runs and more memory in --dir
  --cluster-size SIZE  QED cluster size of the images (default $CLUSTER)
  --numjobs N          fio jobs, each on its own connection (default $NUMJOBS);
                       the image is split into N regions, one per job
  --servers LIST       comma-separated subset of: ${ALL_SERVERS[*]}
  --workloads LIST     comma-separated subset of: ${ALL_WORKLOADS[*]}
  --dir DIR            where images and sockets go (default /dev/shm when it
                       exists, else \$TMPDIR or /tmp)
  --out FILE           also write the results as markdown to FILE
  --raw FILE           also write every single run as TSV to FILE
  --quick              smoke run: 64 MiB images, 1 s per run, 1 repetition
                       (explicit --size/--runtime/--reps still win)
  --builddir DIR       take DIR/server/qednbd and DIR/contrib/qed-img/qed-img
  --qednbd PATH        the qednbd binary (default: \$QEDNBD, the build tree
                       around this script, or qednbd on PATH)
  --qed-img PATH       qed-img used to create QED images (default: next to
                       qednbd's build tree, else qemu-img create -f qed)
  --qednbd-aio MODE    pass --aio=MODE to qednbd (uring|threads)
  --qednbd-args ARGS   extra arguments for qednbd (word-split)
  --qemu-nbd-aio MODE  qemu-nbd --aio (default $QEMU_NBD_AIO)
  --qemu-nbd-cache M   qemu-nbd --cache (default $QEMU_NBD_CACHE)
  --warm yes|no|auto   before each fresh-image run, write and delete a file
                       of --fresh-size in --dir, so that every server's
                       fresh image lands in memory the machine has touched
                       recently (default auto: yes when --dir is tmpfs)
  --keep               keep the work directory (images, logs, fio JSON)
  -v, --verbose        print every run as it finishes
  -h, --help           this help

Exit status: 0 when every run succeeded, 1 when some run failed (the table
is printed anyway, with "fail" in its cells), 2 on a usage error.
EOF
}

die() { echo "$PROG: $*" >&2; exit 2; }
warn() { echo "$PROG: $*" >&2; }
log() { echo "$*" >&2; }

need_arg() { [ $# -ge 2 ] || die "option $1 needs an argument"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --runtime) need_arg "$@"; RUNTIME=$2; RUNTIME_SET=1; shift 2 ;;
        --runtime=*) RUNTIME=${1#*=}; RUNTIME_SET=1; shift ;;
        --reps) need_arg "$@"; REPS=$2; REPS_SET=1; shift 2 ;;
        --reps=*) REPS=${1#*=}; REPS_SET=1; shift ;;
        --size) need_arg "$@"; SIZE=$2; SIZE_SET=1; shift 2 ;;
        --size=*) SIZE=${1#*=}; SIZE_SET=1; shift ;;
        --fresh-size) need_arg "$@"; FRESH_SIZE=$2; FRESH_SET=1; shift 2 ;;
        --fresh-size=*) FRESH_SIZE=${1#*=}; FRESH_SET=1; shift ;;
        --cluster-size) need_arg "$@"; CLUSTER=$2; shift 2 ;;
        --cluster-size=*) CLUSTER=${1#*=}; shift ;;
        --numjobs) need_arg "$@"; NUMJOBS=$2; shift 2 ;;
        --numjobs=*) NUMJOBS=${1#*=}; shift ;;
        --servers) need_arg "$@"; SERVERS=$2; shift 2 ;;
        --servers=*) SERVERS=${1#*=}; shift ;;
        --workloads) need_arg "$@"; WORKLOADS=$2; shift 2 ;;
        --workloads=*) WORKLOADS=${1#*=}; shift ;;
        --dir) need_arg "$@"; DIR=$2; shift 2 ;;
        --dir=*) DIR=${1#*=}; shift ;;
        --out) need_arg "$@"; OUT=$2; shift 2 ;;
        --out=*) OUT=${1#*=}; shift ;;
        --raw) need_arg "$@"; RAW=$2; shift 2 ;;
        --raw=*) RAW=${1#*=}; shift ;;
        --quick) QUICK=1; shift ;;
        --warm) need_arg "$@"; WARM=$2; shift 2 ;;
        --warm=*) WARM=${1#*=}; shift ;;
        --builddir) need_arg "$@"; BUILDDIR=$2; shift 2 ;;
        --builddir=*) BUILDDIR=${1#*=}; shift ;;
        --qednbd) need_arg "$@"; QEDNBD=$2; shift 2 ;;
        --qednbd=*) QEDNBD=${1#*=}; shift ;;
        --qed-img) need_arg "$@"; QED_IMG=$2; shift 2 ;;
        --qed-img=*) QED_IMG=${1#*=}; shift ;;
        --qednbd-aio) need_arg "$@"; QEDNBD_AIO=$2; shift 2 ;;
        --qednbd-aio=*) QEDNBD_AIO=${1#*=}; shift ;;
        --qednbd-args) need_arg "$@"; QEDNBD_EXTRA=$2; shift 2 ;;
        --qednbd-args=*) QEDNBD_EXTRA=${1#*=}; shift ;;
        --qemu-nbd-aio) need_arg "$@"; QEMU_NBD_AIO=$2; shift 2 ;;
        --qemu-nbd-aio=*) QEMU_NBD_AIO=${1#*=}; shift ;;
        --qemu-nbd-cache) need_arg "$@"; QEMU_NBD_CACHE=$2; shift 2 ;;
        --qemu-nbd-cache=*) QEMU_NBD_CACHE=${1#*=}; shift ;;
        --keep) KEEP=1; shift ;;
        -v|--verbose) VERBOSE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
done

if [ "$QUICK" -eq 1 ]; then
    [ "$SIZE_SET" -eq 1 ] || SIZE=64M
    [ "$FRESH_SET" -eq 1 ] || FRESH_SIZE=64M
    [ "$RUNTIME_SET" -eq 1 ] || RUNTIME=1
    [ "$REPS_SET" -eq 1 ] || REPS=1
fi

# ---- validation --------------------------------------------------------------
to_bytes() {
    local v
    v=$(numfmt --from=iec "$1" 2>/dev/null) || return 1
    [[ "$v" =~ ^[0-9]+$ ]] || return 1
    echo "$v"
}
is_uint() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ]; }

is_uint "$RUNTIME" || die "--runtime must be a positive integer (seconds), not '$RUNTIME'"
is_uint "$REPS" || die "--reps must be a positive integer, not '$REPS'"
is_uint "$NUMJOBS" || die "--numjobs must be a positive integer, not '$NUMJOBS'"
SIZE_B=$(to_bytes "$SIZE") || die "bad --size '$SIZE'"
FRESH_B=$(to_bytes "$FRESH_SIZE") || die "bad --fresh-size '$FRESH_SIZE'"
CLUSTER_B=$(to_bytes "$CLUSTER") || die "bad --cluster-size '$CLUSTER'"
MIB=1048576
[ $((CLUSTER_B & (CLUSTER_B - 1))) -eq 0 ] && [ "$CLUSTER_B" -ge 4096 ] ||
    die "--cluster-size must be a power of two of at least 4K"
# Every job gets a region of whole MiB (the 1M workloads need it) and whole
# clusters (the allocating workload writes one 4k block per cluster).
ALIGN=$((CLUSTER_B > MIB ? CLUSTER_B : MIB))
for v in SIZE_B FRESH_B; do
    per=$(( ${!v} / NUMJOBS / ALIGN * ALIGN ))
    [ "$per" -gt 0 ] || die "image size too small for $NUMJOBS job(s) (${!v} bytes)"
done
PER_JOB=$((SIZE_B / NUMJOBS / ALIGN * ALIGN))
FRESH_PER_JOB=$((FRESH_B / NUMJOBS / ALIGN * ALIGN))

IFS=, read -r -a SERVER_LIST <<<"$SERVERS"
for s in "${SERVER_LIST[@]}"; do
    case " ${ALL_SERVERS[*]} " in *" $s "*) ;; *) die "unknown server '$s' (known: ${ALL_SERVERS[*]})" ;; esac
done
[ "${#SERVER_LIST[@]}" -gt 0 ] || die "--servers is empty"
IFS=, read -r -a WORKLOAD_LIST <<<"$WORKLOADS"
for w in "${WORKLOAD_LIST[@]}"; do
    case " ${ALL_WORKLOADS[*]} " in *" $w "*) ;; *) die "unknown workload '$w' (known: ${ALL_WORKLOADS[*]})" ;; esac
done
[ "${#WORKLOAD_LIST[@]}" -gt 0 ] || die "--workloads is empty"
want_workload() { case ",$WORKLOADS," in *",$1,"*) return 0 ;; esac; return 1; }
want_server() { case ",$SERVERS," in *",$1,"*) return 0 ;; esac; return 1; }

# ---- tools -------------------------------------------------------------------
need_prog() { command -v "$1" >/dev/null 2>&1 || die "$1 is not installed ($2)"; }
need_prog fio "apt-get install fio"
need_prog python3 "apt-get install python3"
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine"
want_server qemu-nbd && need_prog qemu-nbd "apt-get install qemu-utils"
{ want_server nbdkit-file || want_server nbdkit-null; } && need_prog nbdkit "apt-get install nbdkit"

if [ -n "$BUILDDIR" ]; then
    [ -n "$QEDNBD" ] || QEDNBD=$BUILDDIR/server/qednbd
    [ -n "$QED_IMG" ] || QED_IMG=$BUILDDIR/contrib/qed-img/qed-img
fi
if want_server qednbd && [ -z "$QEDNBD" ]; then
    # An in-tree build keeps the binary two levels up from contrib/bench/.
    if [ -x "$SCRIPT_DIR/../../server/qednbd" ]; then
        QEDNBD=$SCRIPT_DIR/../../server/qednbd
    elif command -v qednbd >/dev/null 2>&1; then
        QEDNBD=$(command -v qednbd)
    else
        die "qednbd not found: pass --qednbd PATH or --builddir DIR"
    fi
fi
want_server qednbd && { [ -x "$QEDNBD" ] || die "$QEDNBD is not an executable"; }
if [ -z "$QED_IMG" ]; then
    if [ -n "$QEDNBD" ] && [ -x "$(dirname "$QEDNBD")/../contrib/qed-img/qed-img" ]; then
        QED_IMG=$(dirname "$QEDNBD")/../contrib/qed-img/qed-img
    elif command -v qed-img >/dev/null 2>&1; then
        QED_IMG=$(command -v qed-img)
    fi
fi
[ -z "$QED_IMG" ] || [ -x "$QED_IMG" ] || die "$QED_IMG is not an executable"
if [ -z "$QED_IMG" ] && { want_server qednbd || want_server qemu-nbd; }; then
    need_prog qemu-img "apt-get install qemu-utils"
fi

if [ -z "$DIR" ]; then
    if [ -d /dev/shm ] && [ -w /dev/shm ]; then DIR=/dev/shm; else DIR=${TMPDIR:-/tmp}; fi
fi
[ -d "$DIR" ] && [ -w "$DIR" ] || die "--dir $DIR is not a writable directory"

# Space: a fresh QED image grows by a whole cluster per allocating write, so a
# pass over it can fill FRESH_SIZE; the allocated image is SIZE.  Only one
# image exists at a time.
need_b=$(( (FRESH_B > SIZE_B ? FRESH_B : SIZE_B) + 64 * MIB ))
avail_b=$(df -P -B1 "$DIR" 2>/dev/null | awk 'NR == 2 { print $4 }')
if [ -n "$avail_b" ] && [ "$avail_b" -lt "$need_b" ]; then
    die "$DIR has $((avail_b / MIB)) MiB free, the runs need about $((need_b / MIB)) MiB (use --dir, --size or --fresh-size)"
fi

case "$WARM" in
    auto) if [ "$(stat -f -c %T "$DIR" 2>/dev/null)" = tmpfs ]; then WARM=yes; else WARM=no; fi ;;
    yes|no) ;;
    *) die "--warm must be yes, no or auto" ;;
esac

CLK_TCK=$(getconf CLK_TCK)
case "$DIR" in *[[:space:]]*) die "--dir must not contain white space (fio arguments are word-split)" ;; esac
WORK=$(mktemp -d "$DIR/qednbd-bench.XXXXXX") || die "mktemp -d in $DIR failed"
RESULTS=$WORK/results.tsv
: >"$RESULTS"
SPID=
SOCK=
NFAIL=0

cleanup() {
    stop_server quiet
    if [ "$KEEP" -eq 1 ]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- servers -----------------------------------------------------------------

# make_image SERVER FILE BYTES - a fresh image of the kind SERVER serves.
make_image() {
    local server=$1 file=$2 bytes=$3
    rm -f "$file"
    case "$server" in
        qednbd|qemu-nbd)
            # Same creator for both QED servers, so both start from the same
            # layout (qed-img and qemu-img default to the same table size).
            if [ -n "$QED_IMG" ]; then
                "$QED_IMG" create -c "$CLUSTER_B" "$file" "$bytes" >/dev/null
            else
                qemu-img create -q -f qed -o cluster_size="$CLUSTER_B" "$file" "$bytes"
            fi
            ;;
        nbdkit-file) truncate -s "$bytes" "$file" ;;   # sparse raw image
        nbdkit-null) : ;;
    esac
}

# wait_listen PID SOCKET - wait (15 s at most) until SOCKET accepts a
# connection; fail early when PID has exited.
wait_listen() {
    python3 - "$1" "$2" <<'PY'
import os, socket, sys, time
pid, path = int(sys.argv[1]), sys.argv[2]
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("server %d exited before listening" % pid)
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.close()
        sys.exit(0)
    except OSError:
        time.sleep(0.02)
sys.exit("server %d did not listen on %s within 15 s" % (pid, path))
PY
}

SERVER_SEQ=0
# start_server SERVER IMAGE BYTES - start SERVER on a Unix socket; sets SPID,
# SOCK, SLOG.  Returns 1 (with the log shown) when it does not come up.
start_server() {
    local server=$1 image=$2 bytes=$3 cmd=()
    SERVER_SEQ=$((SERVER_SEQ + 1))
    SOCK=$WORK/s$SERVER_SEQ.sock
    SLOG=$WORK/server$SERVER_SEQ-$server.log
    rm -f "$SOCK"
    case "$server" in
        qednbd)
            cmd=("$QEDNBD" -u "$SOCK")
            [ -n "$QEDNBD_AIO" ] && cmd+=(--aio="$QEDNBD_AIO")
            # shellcheck disable=SC2206
            [ -n "$QEDNBD_EXTRA" ] && cmd+=($QEDNBD_EXTRA)
            cmd+=("$image")
            ;;
        qemu-nbd)
            # -t: stay up across fio's connections; -e: one connection per
            # fio job plus fio's size probe.  --cache=writeback honours
            # flushes like qednbd does (unsafe would drop them); O_DIRECT
            # modes do not apply to a tmpfs image.  --aio=threads is as fast
            # as io_uring here (see README.md).
            cmd=(qemu-nbd -f qed -t -e $((NUMJOBS + 1)) --cache="$QEMU_NBD_CACHE"
                 --aio="$QEMU_NBD_AIO" -k "$SOCK" "$image")
            ;;
        nbdkit-file) cmd=(nbdkit -f -U "$SOCK" file "$image") ;;
        nbdkit-null) cmd=(nbdkit -f -U "$SOCK" null size="$bytes") ;;
    esac
    echo "+ ${cmd[*]}" >"$SLOG"
    # A simple command in the background: $! is the server itself.
    "${cmd[@]}" </dev/null >>"$SLOG" 2>&1 &
    SPID=$!
    if ! wait_listen "$SPID" "$SOCK" 2>>"$SLOG"; then
        warn "$server did not start; its log:"
        tail -n 20 "$SLOG" >&2
        stop_server quiet
        return 1
    fi
    [ "$VERBOSE" -eq 1 ] && log "  started $server (pid $SPID): ${cmd[*]}"
    return 0
}

# stop_server [quiet] - TERM the current server, KILL after 20 s.
stop_server() {
    local i rc=0
    [ -n "$SPID" ] || return 0
    kill -TERM "$SPID" 2>/dev/null
    for ((i = 0; i < 200; i++)); do
        kill -0 "$SPID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$SPID" 2>/dev/null; then
        [ "${1:-}" = quiet ] || warn "server $SPID ignored SIGTERM for 20 s; killing it"
        kill -KILL "$SPID" 2>/dev/null
    fi
    wait "$SPID" 2>/dev/null || rc=$?
    if [ "$rc" -ne 0 ] && [ "${1:-}" != quiet ] && [ "$rc" -ne 143 ]; then
        warn "server $SPID exited with status $rc (log: $SLOG)"
    fi
    SPID=
}

# cpu_ticks PID - utime + stime of every thread of PID, in clock ticks.
cpu_ticks() {
    local s f
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }            # the command name may hold spaces; skip past it
    read -r -a f <<<"$s"
    echo $(( f[11] + f[12] ))   # fields 14 and 15 of proc(5)
}

# hwm_kb PID - VmHWM (peak resident set) in KiB.
hwm_kb() {
    awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null
}

# reset_hwm PID - restart VmHWM from the current RSS (proc(5), clear_refs 5),
# so each run reports its own peak.  Older kernels lack it: the peak then
# covers the server's life so far, which the note in the output says.
HWM_RESET=yes
reset_hwm() {
    echo 5 2>/dev/null >"/proc/$1/clear_refs" || HWM_RESET=no
}

# ---- fio ---------------------------------------------------------------------

uri() { echo "nbd+unix:///?socket=$SOCK"; }

# fio_job JSON ARGS... - run fio on the current server (bounded); ARGS hold
# the job sections (--name=... and their options).
fio_job() {
    local json=$1
    shift
    timeout -k 10 $((RUNTIME * 3 + 600)) \
        fio --ioengine=nbd --uri="$(uri)" --group_reporting \
        --output-format=json --output="$json" "$@" \
        >"$json.stdout" 2>"$json.stderr"
}

# make_alloc_logs - write one fio replay log (iolog version 2) per job for
# the allocating workload: one 4k write at the start of every cluster of the
# job's region, clusters in a random order (fixed seed, so every server gets
# the same sequence).  fio's own random mode cannot do this: --blockalign
# turns its random map off, so writes would hit some clusters twice.
make_alloc_logs() {
    python3 - "$WORK/alloc" "$NUMJOBS" "$FRESH_PER_JOB" "$CLUSTER_B" <<'PY'
import random, sys
prefix, jobs, per_job, cluster = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(20240501)
for j in range(jobs):
    idx = list(range(per_job // cluster))
    rnd.shuffle(idx)
    base = j * per_job
    with open('%s.%d.iolog' % (prefix, j), 'w') as f:
        # "nbd" is the name of the one file fio's nbd engine works on.  No
        # "close" action: fio would close the connection with writes in flight.
        f.write('fio version 2 iolog\nnbd add\nnbd open\n')
        f.writelines('nbd write %d 4096\n' % (base + i * cluster) for i in idx)
PY
}

# fio_summary JSON - print "IOS IOPS BW_BYTES" from a fio JSON report, or
# fail (message on stderr) when a job reported an error or did no I/O.
fio_summary() {
    python3 - "$1" <<'PY'
import json, sys
try:
    text = open(sys.argv[1]).read()
    # fio may print warnings before the JSON document.
    d = json.loads(text[text.index('{'):])
except (OSError, ValueError) as e:
    sys.exit("no fio JSON report in %s: %s" % (sys.argv[1], e))
ios = iops = bw = 0
for j in d.get('jobs', []):
    if j.get('error'):
        sys.exit("fio job %s failed with error %d" % (j.get('jobname'), j['error']))
    for dd in ('read', 'write'):
        ios += j[dd]['total_ios']
        iops += j[dd]['iops']
        bw += j[dd]['bw_bytes']
if ios == 0:
    sys.exit("fio did no I/O")
print(ios, iops, bw)
PY
}

# workload_args WORKLOAD - the fio job section(s) of each timed run.
workload_args() {
    local j
    case "$1" in
        seqwrite-fresh)
            # One pass over the fresh image (every cluster allocated once),
            # capped at --runtime: a time-based run would wrap around and
            # measure overwrites.
            echo --name="$1" --numjobs=$NUMJOBS --rw=write --bs=1M --iodepth=8 \
                --size=$FRESH_PER_JOB --offset_increment=$FRESH_PER_JOB --runtime=$RUNTIME ;;
        randwrite-fresh)
            # One 4k write per cluster in random order (see make_alloc_logs):
            # every write allocates, until the pass ends or --runtime.
            for ((j = 0; j < NUMJOBS; j++)); do
                echo --name="$1.$j" --iodepth=32 --read_iolog="$WORK/alloc.$j.iolog" \
                    --runtime=$RUNTIME
            done ;;
        randwrite)
            echo --name="$1" --numjobs=$NUMJOBS --rw=randwrite --bs=4k --iodepth=32 \
                --size=$PER_JOB --offset_increment=$PER_JOB --time_based --runtime=$RUNTIME ;;
        randread)
            echo --name="$1" --numjobs=$NUMJOBS --rw=randread --bs=4k --iodepth=32 \
                --size=$PER_JOB --offset_increment=$PER_JOB --time_based --runtime=$RUNTIME ;;
        seqread)
            echo --name="$1" --numjobs=$NUMJOBS --rw=read --bs=1M --iodepth=8 \
                --size=$PER_JOB --offset_increment=$PER_JOB --time_based --runtime=$RUNTIME ;;
    esac
}

# timed_run REP SERVER WORKLOAD - one measured fio run on the running
# server; appends a line to $RESULTS:
#   rep server workload status ios iops bw_bytes cpu_ticks hwm_kib
timed_run() {
    local rep=$1 server=$2 wl=$3 json t0 t1 h sum msg
    json=$WORK/r$rep-$server-$wl.json
    reset_hwm "$SPID"
    t0=$(cpu_ticks "$SPID") || t0=
    # shellcheck disable=SC2046
    if fio_job "$json" $(workload_args "$wl") && sum=$(fio_summary "$json" 2>"$json.err"); then
        t1=$(cpu_ticks "$SPID") || t1=
        h=$(hwm_kb "$SPID")
        if [ -z "$t0" ] || [ -z "$t1" ] || ! kill -0 "$SPID" 2>/dev/null; then
            msg="server exited during the run"
        else
            # shellcheck disable=SC2086
            printf '%s\t%s\t%s\tok\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$server" "$wl" \
                $sum "$((t1 - t0))" "${h:-0}" >>"$RESULTS"
            [ "$VERBOSE" -eq 1 ] && log "  rep $rep $server $wl: ios iops bw = $sum, cpu $((t1 - t0)) ticks, hwm ${h:-?} KiB"
            return 0
        fi
    else
        msg=$(cat "$json.err" 2>/dev/null; tail -n 3 "$json.stderr" 2>/dev/null)
        kill -0 "$SPID" 2>/dev/null || msg="server died: $(tail -n 3 "$SLOG") ${msg}"
    fi
    NFAIL=$((NFAIL + 1))
    warn "rep $rep: $server $wl failed: $(echo "$msg" | tr '\n' ' ')"
    printf '%s\t%s\t%s\tfail\t0\t0\t0\t0\t0\n' "$rep" "$server" "$wl" >>"$RESULTS"
    return 1
}

# record_fail REP SERVER WORKLOAD... - the server did not start.
record_fail() {
    local rep=$1 server=$2 wl
    shift 2
    for wl in "$@"; do
        NFAIL=$((NFAIL + 1))
        printf '%s\t%s\t%s\tfail\t0\t0\t0\t0\t0\n' "$rep" "$server" "$wl" >>"$RESULTS"
    done
}

# run_fresh REP SERVER WORKLOAD - fresh image, server, one timed run.
run_fresh() {
    local rep=$1 server=$2 wl=$3 img
    img=$WORK/fresh-$server.img
    if [ "$WARM" = yes ]; then
        # Why: on a VM, a tmpfs page the guest has not touched for a while
        # can cost several times more to fill than one freed just now (the
        # host reclaims free guest memory); without this, whichever server
        # runs first after a pause paid for it (2-4x slower fresh writes).
        dd if=/dev/zero of="$WORK/warm" bs=1M count=$((FRESH_B / MIB)) status=none ||
            warn "the warm-up write in $DIR failed"
        rm -f "$WORK/warm"
    fi
    make_image "$server" "$img" "$FRESH_B" || { record_fail "$rep" "$server" "$wl"; return; }
    if start_server "$server" "$img" "$FRESH_B"; then
        timed_run "$rep" "$server" "$wl"
        stop_server
    else
        record_fail "$rep" "$server" "$wl"
    fi
    rm -f "$img"
}

# run_allocated REP SERVER - fresh image filled by an untimed sequential
# write through the server, then the timed runs on it.
run_allocated() {
    local rep=$1 server=$2 img wls=() wl
    for wl in randwrite randread seqread; do
        want_workload "$wl" && wls+=("$wl")
    done
    [ "${#wls[@]}" -gt 0 ] || return 0
    img=$WORK/alloc-$server.img
    make_image "$server" "$img" "$SIZE_B" || { record_fail "$rep" "$server" "${wls[@]}"; return; }
    if ! start_server "$server" "$img" "$SIZE_B"; then
        record_fail "$rep" "$server" "${wls[@]}"
        rm -f "$img"
        return
    fi
    # nbdkit null discards writes: nothing to fill.
    if [ "$server" != nbdkit-null ]; then
        if ! fio_job "$WORK/prefill.json" --name=prefill --numjobs=$NUMJOBS --rw=write --bs=1M --iodepth=8 \
                --size=$PER_JOB --offset_increment=$PER_JOB ||
            ! fio_summary "$WORK/prefill.json" >/dev/null; then
            warn "rep $rep: $server: the prefill write failed: $(tail -n 3 "$WORK/prefill.json.stderr")"
            stop_server
            record_fail "$rep" "$server" "${wls[@]}"
            rm -f "$img"
            return
        fi
    fi
    for wl in "${wls[@]}"; do
        if ! kill -0 "$SPID" 2>/dev/null; then
            record_fail "$rep" "$server" "$wl"
            continue
        fi
        timed_run "$rep" "$server" "$wl"
    done
    stop_server
    rm -f "$img"
}

# ---- the runs ----------------------------------------------------------------
server_version() {
    case "$1" in
        qednbd) "$QEDNBD" --version 2>&1 | head -n 1 ;;
        qemu-nbd) qemu-nbd --version 2>&1 | head -n 1 ;;
        nbdkit-*) nbdkit --version 2>&1 | head -n 1 ;;
    esac
}

{
    echo "date	$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "host	nproc=$(nproc), kernel $(uname -r), $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "fio	$(fio --version)"
    for s in "${SERVER_LIST[@]}"; do echo "$s	$(server_version "$s")"; done
    echo "settings	size=$SIZE_B fresh_size=$FRESH_B cluster=$CLUSTER_B runtime=${RUNTIME}s reps=$REPS numjobs=$NUMJOBS dir=$DIR warm=$WARM"
} >"$WORK/meta.tsv"

if want_workload randwrite-fresh; then
    make_alloc_logs || die "cannot write the replay logs in $WORK"
fi
log "qednbd benchmark: servers ${SERVER_LIST[*]}; $REPS rep(s), ${RUNTIME} s per run, images in $DIR"
start_s=$(date +%s)
for ((rep = 1; rep <= REPS; rep++)); do
    order=("${SERVER_LIST[@]}")
    if [ $((rep % 2)) -eq 0 ]; then
        order=()
        for ((i = ${#SERVER_LIST[@]} - 1; i >= 0; i--)); do order+=("${SERVER_LIST[i]}"); done
    fi
    log "rep $rep/$REPS: order ${order[*]}"
    for wl in seqwrite-fresh randwrite-fresh; do
        want_workload "$wl" || continue
        for s in "${order[@]}"; do run_fresh "$rep" "$s" "$wl"; done
    done
    for s in "${order[@]}"; do run_allocated "$rep" "$s"; done
done
echo "elapsed	$(( $(date +%s) - start_s )) s" >>"$WORK/meta.tsv"
echo "rss_reset	$HWM_RESET" >>"$WORK/meta.tsv"
echo "command	$CMDLINE" >>"$WORK/meta.tsv"
echo "qemu_nbd_flags	-f qed -t -e $((NUMJOBS + 1)) --cache=$QEMU_NBD_CACHE --aio=$QEMU_NBD_AIO" >>"$WORK/meta.tsv"

[ -z "$RAW" ] || cp "$RESULTS" "$RAW" || warn "cannot write $RAW"

# ---- report ------------------------------------------------------------------
python3 - "$WORK/meta.tsv" "$RESULTS" "$CLK_TCK" "$SERVERS" "$WORKLOADS" "${OUT:-}" <<'PY'
import statistics, sys

meta_file, res_file, clk_tck, servers, workloads, out = sys.argv[1:7]
clk_tck = int(clk_tck)
servers = servers.split(',')
workloads = workloads.split(',')
meta = []
for line in open(meta_file):
    k, _, v = line.rstrip('\n').partition('\t')
    meta.append((k, v))
md = dict(meta)

LABEL = {
    'seqwrite-fresh': ('seq write 1M QD8, fresh image', 'MiB/s'),
    'randwrite-fresh': ('rand write 4k QD32, fresh image (allocating)', 'IOPS'),
    'randwrite': ('rand write 4k QD32, allocated', 'IOPS'),
    'randread': ('rand read 4k QD32', 'IOPS'),
    'seqread': ('seq read 1M QD8', 'MiB/s'),
}
ORDER = ['seqwrite-fresh', 'randwrite-fresh', 'randwrite', 'randread', 'seqread']
workloads = [w for w in ORDER if w in workloads]

runs = {}    # (server, workload) -> list of dicts; None for a failed run
for line in open(res_file):
    f = line.rstrip('\n').split('\t')
    if len(f) != 9:
        continue
    rep, srv, wl, status, ios, iops, bw, ticks, hwm = f
    r = None
    if status == 'ok':
        ios = int(ios)
        r = {
            'tput': float(bw) / 1048576 if LABEL[wl][1] == 'MiB/s' else float(iops),
            'ios': ios,
            'cpu_us': int(ticks) * 1e6 / clk_tck / ios,
            'hwm_mib': int(hwm) / 1024,
        }
    runs.setdefault((srv, wl), []).append(r)

def med(srv, wl, key):
    rs = runs.get((srv, wl), [])
    vals = [r[key] for r in rs if r]
    if not rs:
        return None          # not run
    if not vals:
        return 'fail'
    return statistics.median(vals)

def peak(srv, wl):
    rs = runs.get((srv, wl), [])
    vals = [r['hwm_mib'] for r in rs if r]
    if not rs:
        return None
    return max(vals) if vals else 'fail'

def fmt(v, kind):
    if v is None:
        return '-'
    if v == 'fail':
        return 'fail'
    if kind == 'tput':
        return '%.0f' % v if v >= 100 else '%.1f' % v
    if kind == 'cpu':
        return '%.1f' % v if v < 100 else '%.0f' % v
    if kind == 'rss':
        return '%.1f' % v
    if kind == 'ratio':
        return '%.2fx' % v
    return str(v)

def ratio(a, b):
    if isinstance(a, float) and isinstance(b, float) and b > 0:
        return a / b
    return None

def tput_unit(wl):
    return LABEL[wl][1]

tables = []
# Throughput, with ratios.
ratio_cols = [(d, 'qednbd/' + d) for d in ('qemu-nbd', 'nbdkit-file')
              if 'qednbd' in servers and d in servers]
head = ['workload', 'unit'] + servers + [c for _, c in ratio_cols]
rows = []
for wl in workloads:
    row = [LABEL[wl][0], tput_unit(wl)]
    row += [fmt(med(s, wl, 'tput'), 'tput') for s in servers]
    for d, _ in ratio_cols:
        row.append(fmt(ratio(med('qednbd', wl, 'tput'), med(d, wl, 'tput')), 'ratio'))
    rows.append(row)
tables.append(('Throughput (median of %s)' % md['settings'].split('reps=')[1].split()[0], head, rows))

# CPU per I/O.
head = ['workload'] + servers + [c for _, c in ratio_cols]
rows = []
for wl in workloads:
    row = [LABEL[wl][0]] + [fmt(med(s, wl, 'cpu_us'), 'cpu') for s in servers]
    for d, _ in ratio_cols:
        row.append(fmt(ratio(med('qednbd', wl, 'cpu_us'), med(d, wl, 'cpu_us')), 'ratio'))
    rows.append(row)
tables.append(('Server CPU time per I/O, µs (utime+stime / I/Os, median)', head, rows))

# Peak RSS.
head = ['workload'] + servers
rows = [[LABEL[wl][0]] + [fmt(peak(s, wl), 'rss') for s in servers] for wl in workloads]
note = ('VmHWM reset before each run' if md.get('rss_reset') == 'yes'
        else 'VmHWM since the server started; this kernel cannot reset it')
tables.append(('Server peak RSS, MiB (max over runs; %s)' % note, head, rows))

def text_table(title, head, rows):
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    out = [title + ':']
    line = lambda r: '  ' + '  '.join(
        str(x).ljust(w[i]) if i == 0 else str(x).rjust(w[i]) for i, x in enumerate(r))
    out.append(line(head))
    for r in rows:
        out.append(line(r))
    return '\n'.join(out)

def md_table(title, head, rows):
    out = ['**%s**' % title, '', '| ' + ' | '.join(head) + ' |',
           '|' + '|'.join('---' if i == 0 else '---:' for i in range(len(head))) + '|']
    for r in rows:
        out.append('| ' + ' | '.join(str(x) for x in r) + ' |')
    return '\n'.join(out)

info_keys = ['date', 'host', 'fio'] + servers + ['settings', 'qemu_nbd_flags', 'elapsed']
print()
print('%-15s %s' % ('command:', md['command']))
for k in info_keys:
    if k in md and (k != 'qemu_nbd_flags' or 'qemu-nbd' in servers):
        print('%-15s %s' % (k + ':', md[k]))
for t in tables:
    print()
    print(text_table(*t))
nfail = sum(1 for v in runs.values() for r in v if r is None)
if nfail:
    print('\n%d run(s) failed; see the messages above.' % nfail)

if out:
    with open(out, 'w') as fh:
        fh.write('Command: `%s`\n\n' % md['command'])
        for k in info_keys:
            if k in md and (k != 'qemu_nbd_flags' or 'qemu-nbd' in servers):
                fh.write('- %s: %s\n' % (k, md[k]))
        for t in tables:
            fh.write('\n' + md_table(*t) + '\n')
        # Every run, for the record.
        fh.write('\n**All runs**\n\n| rep | server | workload | result | I/Os | CPU µs/I/O | peak RSS MiB |\n'
                 '|---:|---|---|---:|---:|---:|---:|\n')
        for line in open(res_file):
            f = line.rstrip('\n').split('\t')
            if len(f) != 9:
                continue
            rep, srv, wl, status, ios, iops, bw, ticks, hwm = f
            if status != 'ok':
                fh.write('| %s | %s | %s | fail | | | |\n' % (rep, srv, wl))
                continue
            t = float(bw) / 1048576 if LABEL[wl][1] == 'MiB/s' else float(iops)
            fh.write('| %s | %s | %s | %s %s | %s | %.1f | %.1f |\n' % (
                rep, srv, wl, fmt(t, 'tput'), LABEL[wl][1], ios,
                int(ticks) * 1e6 / clk_tck / int(ios), int(hwm) / 1024))
PY
py_rc=$?
[ "$py_rc" -eq 0 ] || { warn "the report could not be made"; exit 1; }
[ -z "$OUT" ] || log "markdown written to $OUT"
[ "$NFAIL" -eq 0 ] || exit 1
exit 0
