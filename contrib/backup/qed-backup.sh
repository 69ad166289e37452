#!/bin/bash
# qed-backup.sh - full and incremental backups of a QED disk that qednbd
# serves, with the disk's persistent dirty bitmap, and their restore.
#
#   qed-backup.sh start DISK                 serve DISK's current image (the writer)
#   qed-backup.sh stop DISK                  stop the writer (cleanly: bitmaps stored)
#   qed-backup.sh full DISK BACKUP_DIR       a full backup
#   qed-backup.sh incremental DISK BACKUP_DIR
#                                            only what changed since the last backup
#                                            (a full one when that cannot be known)
#   qed-backup.sh restore BACKUP_DIR OUT [N] the disk as of backup N (default: the
#                                            last), into OUT (.qed: a QED image;
#                                            anything else: a raw file)
#
# DISK is a QED image, say vm.qed.  The writer (qednbd --fork) serves
# vm.qed, or between backups the overlay vm-top.qed whose backing file is
# vm.qed, on $QED_BACKUP_LISTEN (default: -u vm.sock), with its pid in
# vm.pid.  A backup:
#   1. stops the writer (SIGTERM: it closes the image, storing its bitmaps);
#   2. if there is an overlay: carries its bitmap over into vm.qed
#      (qed-img bitmap --merge ... -b vm-top.qed) and commits it into vm.qed
#      (qemu-img commit), so that the chain never grows past two images;
#   3. freezes vm.qed: a new overlay vm-top.qed with a fresh bitmap (which
#      records every write from now on), and restarts the writer on it;
#   4. serves the frozen vm.qed read-only on a private socket, and copies it
#      whole (nbdcopy) or only the extents its bitmap marks dirty (nbdinfo
#      --map=qemu:dirty-bitmap:NAME, then those ranges) into a new image of
#      BACKUP_DIR, whose backing file is the previous backup.
# The writer is down only for steps 1-3, which take no time proportional to
# the disk but the commit of what changed since the last backup.
# See contrib/backup/README.md.
#
# Environment: QED_BACKUP_BITMAP (bitmap name, default "backup"),
# QED_BACKUP_GRANULARITY (default 64K), QED_BACKUP_LISTEN (the writer's
# listening options, default "-u DISK-without-.qed.sock"), QED_BACKUP_ARGS
# (more qednbd options for the writer), QEDNBD, QED_IMG, QEMU_IMG (programs,
# default from PATH), PYTHON (a python3 with libnbd's bindings).
set -euo pipefail

PROG=qed-backup
BITMAP=${QED_BACKUP_BITMAP:-backup}
GRANULARITY=${QED_BACKUP_GRANULARITY:-64K}
QEDNBD=${QEDNBD:-qednbd}
QED_IMG=${QED_IMG:-qed-img}
QEMU_IMG=${QEMU_IMG:-qemu-img}
STOP_TIMEOUT=${QED_BACKUP_STOP_TIMEOUT:-60}   # seconds a server may take to stop

say() { echo "$PROG: $*" >&2; }
die() { say "$*"; exit 1; }

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
}

# ---- Paths and helpers ------------------------------------------------------

# disk_paths DISK - set BASE (the disk), TOP (its overlay), PIDFILE, LAST
# (the file naming the last backup taken of it) and LISTEN.
disk_paths() {
    case "$1" in
        *.qed) ;;
        *) die "$1: the disk must be a QED image whose name ends in .qed" ;;
    esac
    BASE=$1
    local stem=${1%.qed}
    TOP=$stem-top.qed
    PIDFILE=$stem.pid
    LAST=$stem.last-backup
    # shellcheck disable=SC2206
    LISTEN=(${QED_BACKUP_LISTEN:--u $stem.sock})
}

# find_python - a python3 that has libnbd's bindings (python3-libnbd).
find_python() {
    local p
    for p in ${PYTHON:-} /usr/bin/python3 python3; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import nbd' 2>/dev/null; then
            PYTHON=$p
            return 0
        fi
    done
    die "no python3 with libnbd's bindings (install python3-libnbd, or set PYTHON)"
}

# bitmap_state IMAGE NAME - print "consistent", "inconsistent" or "missing".
bitmap_state() {
    "$QED_IMG" info --json "$1" | "${PYTHON:-python3}" -c '
import json, sys
j = json.load(sys.stdin)
for b in j.get("format-specific", {}).get("data", {}).get("bitmaps", []):
    if b["name"] == sys.argv[1]:
        print("inconsistent" if "in-use" in b["flags"] else "consistent")
        break
else:
    print("missing")' "$2"
}

# virtual_size IMAGE
virtual_size() {
    "$QED_IMG" info --json "$1" | "${PYTHON:-python3}" -c \
        'import json, sys; print(json.load(sys.stdin)["virtual-size"])'
}

# running PID - is process PID alive?  A zombie is not: it has exited (and
# closed its image), only not been reaped yet, which an init that is slow
# to reap the orphaned --fork servers may take a while to do.
running() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state=$(sed -E 's/^[0-9]+ \(.*\) (.).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 0
    [ "$state" != Z ]
}

# wait_gone PID WHAT - wait until process PID has exited (at most STOP_TIMEOUT s).
wait_gone() {
    local i
    for ((i = 0; i < STOP_TIMEOUT * 20; i++)); do
        running "$1" || return 0
        sleep 0.05
    done
    die "$2 (pid $1) did not stop within ${STOP_TIMEOUT}s"
}

# serve PIDFILE ARGS... - start qednbd --fork (it returns once it listens).
serve() {
    local pidfile=$1
    shift
    "$QEDNBD" --fork --pidfile="$pidfile" "$@" ||
        die "qednbd $* did not start"
}

# unserve PIDFILE WHAT - stop the qednbd whose pid PIDFILE holds, and wait:
# its close stores the image's bitmaps.  Nothing to do when it is not running.
unserve() {
    local pid
    [ -s "$1" ] || return 0
    pid=$(cat "$1")
    if kill -TERM "$pid" 2>/dev/null; then
        wait_gone "$pid" "$2"
    fi
    rm -f "$1"
}

# ---- The writer ------------------------------------------------------------

# writer_image - the image the writer serves: the overlay when there is one.
writer_image() {
    if [ -e "$TOP" ]; then echo "$TOP"; else echo "$BASE"; fi
}

# remove_stale_socket - a writer that was killed leaves its Unix socket
# behind, and a new one could not bind it: remove it (the writer is known not
# to run here).
remove_stale_socket() {
    local i path=
    for ((i = 0; i < ${#LISTEN[@]}; i++)); do
        case "${LISTEN[i]}" in
            -u|--unix) path=${LISTEN[i + 1]:-} ;;
            --unix=*) path=${LISTEN[i]#--unix=} ;;
        esac
    done
    if [ -n "$path" ] && [ -S "$path" ]; then
        rm -f "$path"
    fi
}

cmd_start() {
    [ -e "$BASE" ] || die "$BASE does not exist"
    if [ -s "$PIDFILE" ] && running "$(cat "$PIDFILE")"; then
        die "the writer of $BASE runs already (pid $(cat "$PIDFILE"))"
    fi
    remove_stale_socket
    # shellcheck disable=SC2086
    serve "$PIDFILE" "${LISTEN[@]}" ${QED_BACKUP_ARGS:-} "$(writer_image)"
}

cmd_stop() {
    unserve "$PIDFILE" "the writer of $BASE"
}

# ---- Freezing ---------------------------------------------------------------

# commit_overlay - fold the overlay back into the base (the writer is
# stopped), carrying the overlay's bitmap, which holds what changed since the
# last backup, over into the base.  An inconsistent overlay bitmap (the
# writer crashed) is not carried: the base is then left without one, and the
# backup will be a full one.
commit_overlay() {
    local state base_state
    [ -e "$TOP" ] || return 0
    state=$(bitmap_state "$TOP" "$BITMAP")
    base_state=$(bitmap_state "$BASE" "$BITMAP")
    # The base's own bitmap covers the backup before last: already copied.
    if [ "$base_state" != missing ]; then
        "$QED_IMG" bitmap --remove "$BASE" "$BITMAP"
    fi
    if [ "$state" = consistent ]; then
        "$QED_IMG" bitmap --add -g "$GRANULARITY" --merge "$BITMAP" -b "$TOP" "$BASE" "$BITMAP"
    elif [ "$state" = inconsistent ]; then
        say "bitmap '$BITMAP' of $TOP is inconsistent (the writer did not stop cleanly:" \
            "killed, or a crash): not carried over"
    else
        say "$TOP has no bitmap '$BITMAP': nothing carried over"
    fi
    # QEMU writes the base as a backing file reopened read-write, which does
    # not clear its autoclear bits: the carried bitmap stays valid, and it is
    # right, since the commit writes only clusters the overlay holds, all
    # marked dirty.  (Were a QEMU to clear the bits, the bitmap would turn
    # inconsistent, and the backup would fall back to a full one.)
    "$QEMU_IMG" commit -q -f qed -d "$TOP" || die "qemu-img commit $TOP failed"
    rm -f "$TOP"
}

# freeze - stop the writer, commit the overlay, start a new overlay with a
# fresh bitmap, restart the writer on it.  BASE is then frozen.
freeze() {
    cmd_stop
    commit_overlay
    # From here on the base's bitmap is the only record of what changed
    # since the last backup: until this backup is complete, no later one may
    # build on that one (a failed copy must not leave an incremental backup
    # possible that would miss those changes).
    : >"$LAST"
    "$QED_IMG" create -b "$(basename "$BASE")" -F qed "$TOP" >/dev/null
    "$QED_IMG" bitmap --add -g "$GRANULARITY" "$TOP" "$BITMAP"
    cmd_start
}

# ---- Copying ---------------------------------------------------------------

# backup_files DIR - the backups of DIR in order, one a line.
backup_files() {
    find "$1" -maxdepth 1 -name '[0-9][0-9][0-9][0-9]-*.qed' -printf '%f\n' | sort
}

# copy_full SRC_URI DST_URI - the whole disk (holes and zeros skipped).
copy_full() {
    nbdcopy --destination-is-zero "$1" "$2"
}

# copy_dirty SRC_URI DST_URI - the extents SRC's bitmap marks dirty.  Prints
# the bytes copied.
copy_dirty() {
    nbdinfo --json --map="qemu:dirty-bitmap:$BITMAP" "$1" >"$WORK/map.json" ||
        die "reading bitmap '$BITMAP' of the frozen $BASE over NBD failed"
    "$PYTHON" - "$WORK/map.json" "$1" "$2" <<'PY'
import json, sys
import nbd

CHUNK = 4 << 20
extents = json.load(open(sys.argv[1]))
src, dst = nbd.NBD(), nbd.NBD()
src.connect_uri(sys.argv[2])
dst.connect_uri(sys.argv[3])
total = 0
for e in extents:
    if not e["type"] & 1:          # qemu:dirty-bitmap: flag 1 = dirty
        continue
    off, end = e["offset"], e["offset"] + e["length"]
    while off < end:
        n = min(CHUNK, end - off)
        buf = src.pread(n, off)
        # Zeros are written as zeros (the backup's backing file may hold data there).
        if buf.count(0) == n:
            dst.zero(n, off)
        else:
            dst.pwrite(buf, off)
        off += n
        total += n
dst.flush()
src.shutdown()
dst.shutdown()
print(total)
PY
}

# ---- Backups ----------------------------------------------------------------

# pick_kind KIND DIR LAST_TAKEN - "full" or "incremental": an incremental
# backup needs the frozen base's bitmap, consistent, and proof that the last
# backup taken of the disk (LAST_TAKEN, read before the freeze) is the last
# one in DIR.  Says why it falls back to a full one.
pick_kind() {
    local want=$1 dir=$2 taken=$3 state last
    [ "$want" = full ] && { echo full; return; }
    last=$(backup_files "$dir" | tail -n 1)
    state=$(bitmap_state "$BASE" "$BITMAP")
    if [ -z "$last" ]; then
        say "no backup in $dir yet: falling back to a full backup"
    elif [ "$state" != consistent ]; then
        say "bitmap '$BITMAP' of $BASE is $state: falling back to a full backup"
    elif [ "$taken" != "$(realpath "$dir/$last")" ]; then
        say "the last backup of $BASE is not $dir/$last: falling back to a full backup"
    elif [ "$(virtual_size "$dir/$last")" != "$(virtual_size "$BASE")" ]; then
        say "$BASE changed size since $dir/$last: falling back to a full backup"
    else
        echo incremental
        return
    fi
    echo full
}

# backup_cleanup - at exit: stop the servers; a backup that did not
# complete is removed, so that no later one builds on it.
backup_cleanup() {
    unserve "$WORK/dst.pid" "the backup image server"
    unserve "$WORK/src.pid" "the frozen image server"
    if [ -n "${PARTIAL:-}" ]; then
        rm -f "$PARTIAL"
        say "the backup failed: $PARTIAL removed"
    fi
    rm -rf "$WORK"
}

cmd_backup() {
    local want=$1 dir=$2 kind last last_taken n=0000 name size what
    mkdir -p "$dir"
    [ -e "$BASE" ] || die "$BASE does not exist"
    find_python
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/qed-backup.XXXXXX")
    PARTIAL=
    trap backup_cleanup EXIT

    last_taken=$(cat "$LAST" 2>/dev/null || true)
    freeze
    kind=$(pick_kind "$want" "$dir" "$last_taken")
    last=$(backup_files "$dir" | tail -n 1)
    [ -n "$last" ] && n=$(printf '%04d' $((10#${last%%-*} + 1)))
    size=$(virtual_size "$BASE")
    if [ "$kind" = full ]; then
        name=$n-full.qed
    else
        name=$n-inc.qed
    fi
    PARTIAL=$dir/$name
    if [ "$kind" = full ]; then
        "$QED_IMG" create "$dir/$name" "$size" >/dev/null
    else
        "$QED_IMG" create -b "$last" -F qed "$dir/$name" "$size" >/dev/null
    fi

    serve "$WORK/src.pid" -r -u "$WORK/src.sock" "$BASE"
    serve "$WORK/dst.pid" -u "$WORK/dst.sock" "$dir/$name"
    if [ "$kind" = full ]; then
        copy_full "nbd+unix:///?socket=$WORK/src.sock" "nbd+unix:///?socket=$WORK/dst.sock"
        what="the whole $size-byte disk, zeros skipped"
    else
        what="$(copy_dirty "nbd+unix:///?socket=$WORK/src.sock" \
            "nbd+unix:///?socket=$WORK/dst.sock") bytes copied"
    fi
    unserve "$WORK/dst.pid" "the backup image server"
    unserve "$WORK/src.pid" "the frozen image server"
    PARTIAL=
    realpath "$dir/$name" >"$LAST"
    say "$kind backup of $BASE: $dir/$name ($what)"
}

# ---- Restore ----------------------------------------------------------------

cmd_restore() {
    local dir=$1 out=$2 which=${3:-} file size
    if [ -n "$which" ]; then
        file=$(backup_files "$dir" | grep -E "^0*${which}-" | head -n 1) || true
    else
        file=$(backup_files "$dir" | tail -n 1)
    fi
    [ -n "$file" ] || die "no backup ${which:+number $which }in $dir"
    [ -e "$out" ] && die "$out exists: restore into a new file"
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/qed-backup.XXXXXX")
    trap 'unserve "$WORK/src.pid" "the backup server"; unserve "$WORK/dst.pid" "the restore target server"; rm -rf "$WORK"' EXIT
    size=$(virtual_size "$dir/$file")
    serve "$WORK/src.pid" -r -u "$WORK/src.sock" "$dir/$file"
    case "$out" in
        *.qed)
            "$QED_IMG" create "$out" "$size" >/dev/null
            serve "$WORK/dst.pid" -u "$WORK/dst.sock" "$out"
            nbdcopy --destination-is-zero "nbd+unix:///?socket=$WORK/src.sock" \
                "nbd+unix:///?socket=$WORK/dst.sock"
            unserve "$WORK/dst.pid" "the restore target server"
            ;;
        *)
            nbdcopy "nbd+unix:///?socket=$WORK/src.sock" "$out"
            ;;
    esac
    unserve "$WORK/src.pid" "the backup server"
    say "restored $dir/$file (and the backups it builds on) into $out"
}

# ---- Main -------------------------------------------------------------------

[ $# -ge 1 ] || { usage >&2; exit 1; }
cmd=$1
shift
case "$cmd" in
    -h|--help|help) usage; exit 0 ;;
    start|stop)
        [ $# -eq 1 ] || die "usage: $PROG $cmd DISK"
        disk_paths "$1"
        "cmd_$cmd"
        ;;
    full|incremental)
        [ $# -eq 2 ] || die "usage: $PROG $cmd DISK BACKUP_DIR"
        disk_paths "$1"
        cmd_backup "$cmd" "$2"
        ;;
    restore)
        case $# in 2|3) ;; *) die "usage: $PROG restore BACKUP_DIR OUT [N]" ;; esac
        cmd_restore "$@"
        ;;
    *) die "unknown command '$cmd' (try $PROG --help)" ;;
esac
