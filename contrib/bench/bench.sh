#!/bin/bash
# bench.sh - measure qednbd against qemu-nbd, nbdkit file and nbdkit null,
# side by side, with fio's nbd engine (built on libnbd); buffered and
# O_DIRECT variants of each, over Unix sockets and TCP, with 1 to N
# connections.
#
# Needs only Debian packages: qemu-utils, nbdkit, fio (and python3 to read
# fio's JSON reports).  Run `bench.sh --help` for the options; contrib/bench/
# README.md explains what is measured and how.
#
# Layout of one invocation: for every repetition, for every configuration
# (transport x number of fio jobs), for every workload group, every server
# runs the group in turn; the server order alternates from one repetition to
# the next (forward, reversed, forward, ...) so that a drift of the machine
# (other load, thermal, page cache) does not favour one server.
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

ALL_SERVERS=(qednbd qednbd-direct qemu-nbd qemu-nbd-direct nbdkit-file nbdkit-file-direct nbdkit-null)
DEFAULT_SERVERS=qednbd,qemu-nbd,nbdkit-file,nbdkit-null
ALL_WORKLOADS=(seqwrite-fresh randwrite-fresh randwrite randread seqread)

# ---- options -----------------------------------------------------------------
SIZE=1G
FRESH_SIZE=4G
RUNTIME=10
REPS=3
NUMJOBS_ARG=1
TRANSPORTS=unix
CLUSTER=64K
DIR=
SERVERS=$DEFAULT_SERVERS
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
QEDNBD_THREADS=
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
(raw image) and nbdkit null (protocol ceiling), and their O_DIRECT
variants; print medians, ratios, server CPU time per I/O, server peak RSS
and the ratios issue 14 targets.

  --runtime SEC        seconds per timed fio run (default $RUNTIME); the two
                       fresh-image runs stop earlier when their single pass
                       over the fresh image ends
  --reps N             repetitions, server order alternating (default $REPS)
  --size SIZE          image size for the allocated-image runs (default $SIZE)
  --fresh-size SIZE    image size for the two fresh-image runs (default
                       $FRESH_SIZE); each makes one pass over it, so a larger
                       size means longer runs and more memory in --dir
  --cluster-size SIZE  QED cluster size of the images (default $CLUSTER)
  --numjobs LIST       fio jobs, each on its own connection (default
                       $NUMJOBS_ARG); the image is split into N regions, one per
                       job.  A list (1,2,4) runs every count in turn
  --transport LIST     unix, tcp or both (unix,tcp; default $TRANSPORTS); TCP
                       listens on 127.0.0.1, on a free port
  --servers LIST       comma-separated subset of (default $DEFAULT_SERVERS):
                       ${ALL_SERVERS[*]}
                       (the -direct variants: qednbd --cache=none, qemu-nbd
                       --cache=none --aio=io_uring, nbdkit file cache=none;
                       a variant this machine cannot run is skipped, with
                       the reason printed)
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
  --qednbd-threads N   pass --threads=N to qednbd (default: qednbd's own,
                       the usable CPUs up to 8)
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
        --numjobs) need_arg "$@"; NUMJOBS_ARG=$2; shift 2 ;;
        --numjobs=*) NUMJOBS_ARG=${1#*=}; shift ;;
        --transport) need_arg "$@"; TRANSPORTS=$2; shift 2 ;;
        --transport=*) TRANSPORTS=${1#*=}; shift ;;
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
        --qednbd-threads) need_arg "$@"; QEDNBD_THREADS=$2; shift 2 ;;
        --qednbd-threads=*) QEDNBD_THREADS=${1#*=}; shift ;;
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
IFS=, read -r -a NUMJOBS_LIST <<<"$NUMJOBS_ARG"
[ "${#NUMJOBS_LIST[@]}" -gt 0 ] || die "--numjobs is empty"
MAX_JOBS=0
for n in "${NUMJOBS_LIST[@]}"; do
    is_uint "$n" || die "--numjobs must be positive integers, not '$n'"
    [ "$n" -le "$MAX_JOBS" ] || MAX_JOBS=$n
done
IFS=, read -r -a TRANSPORT_LIST <<<"$TRANSPORTS"
[ "${#TRANSPORT_LIST[@]}" -gt 0 ] || die "--transport is empty"
for t in "${TRANSPORT_LIST[@]}"; do
    case "$t" in unix|tcp) ;; *) die "unknown transport '$t' (known: unix tcp)" ;; esac
done
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
    per=$(( ${!v} / MAX_JOBS / ALIGN * ALIGN ))
    [ "$per" -gt 0 ] || die "image size too small for $MAX_JOBS job(s) (${!v} bytes)"
done
# set_numjobs N - the per-configuration job count and region sizes.
set_numjobs() {
    NUMJOBS=$1
    PER_JOB=$((SIZE_B / NUMJOBS / ALIGN * ALIGN))
    FRESH_PER_JOB=$((FRESH_B / NUMJOBS / ALIGN * ALIGN))
}
set_numjobs "${NUMJOBS_LIST[0]}"

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
# want_server NAME - NAME or its -direct variant is among the servers.
want_server() { case ",$SERVERS," in *",$1,"*|*",$1-direct,"*) return 0 ;; esac; return 1; }

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

# Variants this machine cannot run are dropped here, with the reason printed
# and kept for the report ("skipped" lines of meta.tsv).
SKIPPED=()
skip_server() {
    local s=$1 keep=() x
    shift
    warn "skipping $s: $*"
    SKIPPED+=("$s	$*")
    for x in "${SERVER_LIST[@]}"; do [ "$x" = "$s" ] || keep+=("$x"); done
    SERVER_LIST=("${keep[@]}")
}
# o_direct_ok - an O_DIRECT write of 4 KiB works in $DIR.
o_direct_ok() {
    local f=$DIR/.qednbd-bench-odirect.$$ rc=0
    dd if=/dev/zero of="$f" bs=4096 count=1 oflag=direct status=none 2>/dev/null || rc=1
    rm -f "$f"
    return "$rc"
}
for s in "${SERVER_LIST[@]}"; do
    case "$s" in
        qednbd-direct)
            "$QEDNBD" --help 2>&1 | grep -q -- --cache= ||
                { skip_server "$s" "$QEDNBD has no --cache option"; continue; }
            o_direct_ok || skip_server "$s" "$DIR does not take O_DIRECT" ;;
        qemu-nbd-direct)
            o_direct_ok || skip_server "$s" "$DIR does not take O_DIRECT" ;;
        nbdkit-file-direct)
            nbdkit file --help 2>&1 | grep -q '^cache=' ||
                skip_server "$s" "this nbdkit's file plugin has no cache= parameter" ;;
    esac
done
[ "${#SERVER_LIST[@]}" -gt 0 ] || die "no server left to run"
SERVERS=$(IFS=,; echo "${SERVER_LIST[*]}")

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
PORT=
TRANSPORT=${TRANSPORT_LIST[0]}
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
    local server=${1%-direct} file=$2 bytes=$3
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

# wait_listen PID ADDRESS - wait (15 s at most) until ADDRESS (a Unix
# socket path, or a TCP port on 127.0.0.1) accepts a connection; fail early
# when PID has exited.
wait_listen() {
    python3 - "$1" "$2" <<'PY'
import os, socket, sys, time
pid, addr = int(sys.argv[1]), sys.argv[2]
tcp = addr.isdigit()
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("server %d exited before listening" % pid)
    try:
        s = socket.socket(socket.AF_INET if tcp else socket.AF_UNIX)
        s.connect(('127.0.0.1', int(addr)) if tcp else addr)
        s.close()
        sys.exit(0)
    except OSError:
        time.sleep(0.02)
sys.exit("server %d did not listen on %s within 15 s" % (pid, addr))
PY
}

# free_port - a TCP port on 127.0.0.1 that nobody listens on right now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# server_cmd SERVER IMAGE BYTES - the command line of SERVER in CMD, for the
# current transport ($SOCK or $PORT) and job count.
server_cmd() {
    local server=$1 image=$2 bytes=$3 listen=()
    case "$server" in
        qednbd*)
            if [ "$TRANSPORT" = tcp ]; then listen=(-b 127.0.0.1 -p "$PORT"); else listen=(-u "$SOCK"); fi
            CMD=("$QEDNBD" "${listen[@]}")
            [ "$server" = qednbd-direct ] && CMD+=(--cache=none)
            [ -n "$QEDNBD_AIO" ] && CMD+=(--aio="$QEDNBD_AIO")
            [ -n "$QEDNBD_THREADS" ] && CMD+=(--threads="$QEDNBD_THREADS")
            # shellcheck disable=SC2206
            [ -n "$QEDNBD_EXTRA" ] && CMD+=($QEDNBD_EXTRA)
            CMD+=("$image")
            ;;
        qemu-nbd*)
            # -t: stay up across fio's connections; -e: one connection per
            # fio job plus fio's size probe.  --cache=writeback honours
            # flushes like qednbd does (unsafe would drop them).  The
            # -direct variant is what VM disks usually get: O_DIRECT through
            # io_uring.  --aio=threads is as fast as io_uring on tmpfs (see
            # README.md).
            if [ "$TRANSPORT" = tcp ]; then listen=(-b 127.0.0.1 -p "$PORT"); else listen=(-k "$SOCK"); fi
            CMD=(qemu-nbd -f qed -t -e $((NUMJOBS + 1)))
            if [ "$server" = qemu-nbd-direct ]; then
                CMD+=(--cache=none --aio=io_uring)
            else
                CMD+=(--cache="$QEMU_NBD_CACHE" --aio="$QEMU_NBD_AIO")
            fi
            CMD+=("${listen[@]}" "$image")
            ;;
        nbdkit-*)
            if [ "$TRANSPORT" = tcp ]; then listen=(-i 127.0.0.1 -p "$PORT"); else listen=(-U "$SOCK"); fi
            case "$server" in
                nbdkit-file) CMD=(nbdkit -f "${listen[@]}" file "$image") ;;
                # nbdkit 1.32's cache=none is not O_DIRECT: it evicts the
                # pages it has read or written (posix_fadvise DONTNEED, and
                # sync_file_range after writes); see README.md.
                nbdkit-file-direct) CMD=(nbdkit -f "${listen[@]}" file "$image" cache=none) ;;
                nbdkit-null) CMD=(nbdkit -f "${listen[@]}" null size="$bytes") ;;
            esac
            ;;
    esac
}

SERVER_SEQ=0
# start_server SERVER IMAGE BYTES - start SERVER on the current transport;
# sets SPID, SOCK or PORT, SLOG.  Returns 1 (with the log shown) when it
# does not come up.
start_server() {
    local server=$1 image=$2 bytes=$3 cmd=() addr
    SERVER_SEQ=$((SERVER_SEQ + 1))
    SOCK=$WORK/s$SERVER_SEQ.sock
    SLOG=$WORK/server$SERVER_SEQ-$server.log
    rm -f "$SOCK"
    addr=$SOCK
    if [ "$TRANSPORT" = tcp ]; then
        PORT=$(free_port) || { warn "no free TCP port"; return 1; }
        addr=$PORT
    fi
    server_cmd "$server" "$image" "$bytes"
    cmd=("${CMD[@]}")
    echo "+ ${cmd[*]}" >"$SLOG"
    # A simple command in the background: $! is the server itself.
    "${cmd[@]}" </dev/null >>"$SLOG" 2>&1 &
    SPID=$!
    if ! wait_listen "$SPID" "$addr" 2>>"$SLOG"; then
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

uri() {
    if [ "$TRANSPORT" = tcp ]; then echo "nbd://127.0.0.1:$PORT/"; else echo "nbd+unix:///?socket=$SOCK"; fi
}

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
    python3 - "$WORK/alloc-j$NUMJOBS" "$NUMJOBS" "$FRESH_PER_JOB" "$CLUSTER_B" <<'PY'
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
                echo --name="$1.$j" --iodepth=32 --read_iolog="$WORK/alloc-j$NUMJOBS.$j.iolog" \
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
#   rep transport numjobs server workload status ios iops bw_bytes
#   cpu_ticks hwm_kib
timed_run() {
    local rep=$1 server=$2 wl=$3 json t0 t1 h sum msg
    json=$WORK/r$rep-$TRANSPORT-j$NUMJOBS-$server-$wl.json
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
            printf '%s\t%s\t%s\t%s\t%s\tok\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$TRANSPORT" \
                "$NUMJOBS" "$server" "$wl" $sum "$((t1 - t0))" "${h:-0}" >>"$RESULTS"
            [ "$VERBOSE" -eq 1 ] && log "  rep $rep $TRANSPORT j$NUMJOBS $server $wl: ios iops bw = $sum, cpu $((t1 - t0)) ticks, hwm ${h:-?} KiB"
            return 0
        fi
    else
        msg=$(cat "$json.err" 2>/dev/null; tail -n 3 "$json.stderr" 2>/dev/null)
        kill -0 "$SPID" 2>/dev/null || msg="server died: $(tail -n 3 "$SLOG") ${msg}"
    fi
    NFAIL=$((NFAIL + 1))
    warn "rep $rep: $TRANSPORT j$NUMJOBS: $server $wl failed: $(echo "$msg" | tr '\n' ' ')"
    fail_line "$rep" "$server" "$wl"
    return 1
}

# fail_line REP SERVER WORKLOAD - a failed run's line in $RESULTS.
fail_line() {
    printf '%s\t%s\t%s\t%s\t%s\tfail\t0\t0\t0\t0\t0\n' "$1" "$TRANSPORT" "$NUMJOBS" "$2" "$3" >>"$RESULTS"
}

# record_fail REP SERVER WORKLOAD... - the server did not start.
record_fail() {
    local rep=$1 server=$2 wl
    shift 2
    for wl in "$@"; do
        NFAIL=$((NFAIL + 1))
        fail_line "$rep" "$server" "$wl"
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
            warn "rep $rep: $TRANSPORT j$NUMJOBS: $server: the prefill write failed: $(tail -n 3 "$WORK/prefill.json.stderr")"
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
        qednbd*) "$QEDNBD" --version 2>&1 | head -n 1 ;;
        qemu-nbd*) qemu-nbd --version 2>&1 | head -n 1 ;;
        nbdkit-*) nbdkit --version 2>&1 | head -n 1 ;;
    esac
}

# write_meta - the machine, the versions, the settings and every server's
# command line (as for the first configuration) for the report.
write_meta() {
    local s
    echo "date	$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "host	nproc=$(nproc), kernel $(uname -r), $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "load	$(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min) at the start"
    echo "fio	$(fio --version)"
    for s in "${SERVER_LIST[@]}"; do echo "$s	$(server_version "$s")"; done
    echo "settings	size=$SIZE_B fresh_size=$FRESH_B cluster=$CLUSTER_B runtime=${RUNTIME}s reps=$REPS numjobs=$NUMJOBS_ARG transport=$TRANSPORTS dir=$DIR ($(stat -f -c %T "$DIR")) warm=$WARM"
    for s in "${SERVER_LIST[@]}"; do
        SOCK=SOCKET PORT=PORT
        server_cmd "$s" IMAGE SIZE
        echo "flags $s	${CMD[*]}"
    done
    for s in "${SKIPPED[@]}"; do echo "skipped ${s%%	*}	${s#*	}"; done
}

TRANSPORT=unix
write_meta >"$WORK/meta.tsv"
for nj in "${NUMJOBS_LIST[@]}"; do
    set_numjobs "$nj"
    if want_workload randwrite-fresh; then
        make_alloc_logs || die "cannot write the replay logs in $WORK"
    fi
done
log "qednbd benchmark: servers ${SERVER_LIST[*]}; transport ${TRANSPORT_LIST[*]}; jobs ${NUMJOBS_LIST[*]}; $REPS rep(s), ${RUNTIME} s per run, images in $DIR"
start_s=$(date +%s)
for ((rep = 1; rep <= REPS; rep++)); do
    order=("${SERVER_LIST[@]}")
    if [ $((rep % 2)) -eq 0 ]; then
        order=()
        for ((i = ${#SERVER_LIST[@]} - 1; i >= 0; i--)); do order+=("${SERVER_LIST[i]}"); done
    fi
    for TRANSPORT in "${TRANSPORT_LIST[@]}"; do
        for nj in "${NUMJOBS_LIST[@]}"; do
            set_numjobs "$nj"
            log "rep $rep/$REPS, $TRANSPORT, $NUMJOBS job(s): order ${order[*]}"
            for wl in seqwrite-fresh randwrite-fresh; do
                want_workload "$wl" || continue
                for s in "${order[@]}"; do run_fresh "$rep" "$s" "$wl"; done
            done
            for s in "${order[@]}"; do run_allocated "$rep" "$s"; done
        done
    done
done
{
    echo "elapsed	$(( $(date +%s) - start_s )) s"
    echo "load after	$(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min) at the end"
    echo "rss_reset	$HWM_RESET"
    echo "command	$CMDLINE"
} >>"$WORK/meta.tsv"

[ -z "$RAW" ] || cp "$RESULTS" "$RAW" || warn "cannot write $RAW"

# ---- report ------------------------------------------------------------------
python3 "$SCRIPT_DIR/bench-report.py" "$WORK/meta.tsv" "$RESULTS" "$CLK_TCK" "$SERVERS" \
    "$WORKLOADS" "$TRANSPORTS" "$NUMJOBS_ARG" "${OUT:-}"
py_rc=$?
[ "$py_rc" -eq 0 ] || { warn "the report could not be made"; exit 1; }
[ -z "$OUT" ] || log "markdown written to $OUT"
[ "$NFAIL" -eq 0 ] || exit 1
exit 0
