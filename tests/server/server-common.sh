# server-common.sh - sourced by the qednbd interop shell tests (not a test).
#
# Which server is tested: $QEDNBD_TEST_SERVER, "qednbd" (the default:
# $top_builddir/server/qednbd) or "qemu-nbd" (qemu-nbd -f qed, the reference
# the tests were written against; the multi-export parts are skipped there
# because qemu-nbd serves a single export).
#
# Provides: $tmp (scratch directory, removed on exit, servers and tracked
# clients killed), fail, skip, need, need_nbd_python, run (bounded command,
# output kept), start_server, stop_server, server_alive, server_multi_export,
# nbd_uri, track_client, header_features, image_clean (qemu-img check and
# NEED_CHECK), qio (qemu-io commands on one target), same_map (nbdinfo map
# against qemu-img map).
set -u

fail() { echo "FAIL: $*" >&2; dump_server_logs; exit 1; }
skip() { echo "SKIP: $*"; exit 77; }
note() { echo "--- $*"; }

: "${top_builddir:?top_builddir must be set (run through make check)}"
: "${top_srcdir:?top_srcdir must be set (run through make check)}"

SERVER_KIND=${QEDNBD_TEST_SERVER:-qednbd}
QEDNBD="$top_builddir/server/qednbd"

# need PROG... - skip the test when a program is missing.
need() {
    local p
    for p in "$@"; do
        command -v "$p" >/dev/null 2>&1 || skip "$p is not installed"
    done
}

# need_server_kind KIND - check that server KIND can run here (fail when
# qednbd is not built: it is what is under test; skip when qemu-nbd is missing).
need_server_kind() {
    case "$1" in
        qednbd) [ -x "$QEDNBD" ] || fail "$QEDNBD is not built" ;;
        qemu-nbd) need qemu-nbd ;;
        *) fail "unknown server kind '$1' (QEDNBD_TEST_SERVER must be qednbd or qemu-nbd)" ;;
    esac
}

# need_nbd_python - set $NBD_PYTHON to a python3 that has libnbd's bindings.
need_nbd_python() {
    local p
    NBD_PYTHON=
    for p in /usr/bin/python3 python3; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import nbd' 2>/dev/null; then
            NBD_PYTHON=$p
            return 0
        fi
    done
    skip "no python3 with the libnbd bindings (python3-libnbd)"
}

# Any python3 will do for the small helpers below (no extra module).  The
# system one first: a version-manager shim in PATH can take half a second to
# start, and the helpers run often.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
command -v "$PY" >/dev/null 2>&1 || { echo "SKIP: python3 is not installed"; exit 77; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qednbd-test.XXXXXX") || { echo "FAIL: mktemp" >&2; exit 1; }
SERVER_PIDS=()
SERVER_LOGS=()
CLIENT_PIDS=()

# track_client PID - kill this background client on exit if still running.
track_client() {
    CLIENT_PIDS+=("$1")
}

# Kill what is still running (clients at once; servers with TERM, then KILL
# after 5 s) and remove $tmp.
cleanup() {
    local pid i
    for pid in "${CLIENT_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null
    done
    for pid in "${SERVER_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || continue
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE
cd "$tmp" || fail "cd $tmp"

dump_server_logs() {
    local l
    for l in "${SERVER_LOGS[@]}"; do
        [ -s "$l" ] || continue
        echo "--- server log $l (last 30 lines):" >&2
        tail -n 30 "$l" >&2
    done
}

# run TIMEOUT CMD... - run CMD bounded by TIMEOUT seconds; stdout goes to
# $tmp/out, stderr to $tmp/err; fail (showing both) unless it exits 0.
run() {
    local t=$1 rc=0
    shift
    timeout -k 5 "$t" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "--- stdout of: $*" >&2; tail -n 40 "$tmp/out" >&2
        echo "--- stderr:" >&2; tail -n 40 "$tmp/err" >&2
        [ "$rc" -eq 124 ] && fail "'$*' timed out after ${t}s"
        fail "'$*' exited $rc"
    fi
}

# free_port - print a TCP port on 127.0.0.1 that is free right now (chosen
# by the kernel from the ephemeral range, so two tests rarely collide).
free_port() {
    "$PY" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# wait_listen PID unix PATH | wait_listen PID tcp PORT - wait (at most 15 s)
# until a connect() succeeds; give up early when PID has died.
wait_listen() {
    "$PY" - "$@" <<'PY'
import os, socket, sys, time
pid, kind, where = int(sys.argv[1]), sys.argv[2], sys.argv[3]
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("server process %d exited before listening" % pid)
    try:
        if kind == "unix":
            if not os.path.exists(where):
                raise OSError("no socket yet")
            s = socket.socket(socket.AF_UNIX)
            s.connect(where)
        else:
            s = socket.create_connection(("127.0.0.1", int(where)), timeout=1)
        s.close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit("server did not listen on %s %s within 15 s" % (kind, where))
PY
}

# start_server [--kind K] [--tcp] [-r] [-D TEXT] [-x NAME] [--] IMAGE
# start_server [--kind K] [--tcp] [-r] [-D TEXT] -e NAME=IMAGE [-e NAME=IMAGE]...
#
# Start a server in the background on a Unix socket in $tmp (or, with --tcp,
# on a free port of 127.0.0.1) and wait until it accepts connections.  Sets
# SERVER_PID, SERVER_SOCK or SERVER_PORT, SERVER_TRANSPORT (unix|tcp),
# SERVER_LOG and SERVER_CUR_KIND.  Several servers may run at once: the
# variables describe the last one started.
#
# The server starts with SIGINT at its default disposition (a background job
# of a non-interactive shell would otherwise inherit SIGINT ignored).
start_server() {
    local kind=$SERVER_KIND tcp=0 ro=0 xname='' desc='' exports=() image='' args attempt n
    while [ $# -gt 0 ]; do
        case "$1" in
            --kind) kind=$2; shift 2 ;;
            --tcp) tcp=1; shift ;;
            -r) ro=1; shift ;;
            -x) xname=$2; shift 2 ;;
            -D) desc=$2; shift 2 ;;
            -e) exports+=("$2"); shift 2 ;;
            --) shift; image=$1; shift ;;
            -*) fail "start_server: unknown option $1" ;;
            *) image=$1; shift ;;
        esac
    done
    need_server_kind "$kind"
    n=${#SERVER_PIDS[@]}
    for attempt in 1 2 3; do
        args=()
        SERVER_LOG="$tmp/server$n.$attempt.log"
        if [ "$tcp" -eq 1 ]; then
            SERVER_TRANSPORT=tcp
            SERVER_PORT=$(free_port) || fail "no free TCP port"
            SERVER_SOCK=
            args+=(-b 127.0.0.1 -p "$SERVER_PORT")
        else
            SERVER_TRANSPORT=unix
            SERVER_SOCK="$tmp/nbd$n.sock"
            SERVER_PORT=
            rm -f "$SERVER_SOCK"
            case "$kind" in
                qednbd) args+=(-u "$SERVER_SOCK") ;;
                qemu-nbd) args+=(-k "$SERVER_SOCK") ;;
            esac
        fi
        [ "$ro" -eq 1 ] && args+=(-r)
        [ -n "$desc" ] && args+=(-D "$desc")
        case "$kind" in
            qednbd)
                if [ "${#exports[@]}" -gt 0 ]; then
                    local e
                    for e in "${exports[@]}"; do args+=(-e "$e"); done
                else
                    [ -n "$xname" ] && args+=(-x "$xname")
                    args+=("$image")
                fi
                # QEDNBD_TEST_ARGS: extra options, e.g. --cache=none (cache-modes.sh).
                # shellcheck disable=SC2206
                set -- "$QEDNBD" ${QEDNBD_TEST_ARGS:-} "${args[@]}"
                ;;
            qemu-nbd)
                [ "${#exports[@]}" -le 1 ] ||
                    fail "start_server: qemu-nbd serves one export (check server_multi_export first)"
                if [ "${#exports[@]}" -eq 1 ]; then
                    xname=${exports[0]%%=*}
                    image=${exports[0]#*=}
                fi
                # -t -e 64: stay up and take several clients, like qednbd;
                # -A: offer qemu:allocation-depth; --discard=unmap: pass
                # trims down like qednbd does.
                args+=(-f qed -t -e 64 -A --discard=unmap)
                [ -n "$xname" ] && args+=(-x "$xname")
                args+=("$image")
                set -- qemu-nbd "${args[@]}"
                ;;
        esac
        echo "+ $*" >"$SERVER_LOG"
        "$PY" -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execvp(sys.argv[1], sys.argv[1:])' "$@" </dev/null >>"$SERVER_LOG" 2>&1 &
        SERVER_PID=$!
        SERVER_PIDS+=("$SERVER_PID")
        SERVER_LOGS+=("$SERVER_LOG")
        SERVER_CUR_KIND=$kind
        if [ "$tcp" -eq 1 ]; then
            wait_listen "$SERVER_PID" tcp "$SERVER_PORT" 2>>"$tmp/wait.err" && return 0
            # The port may have been taken between free_port and bind: retry.
            if ! kill -0 "$SERVER_PID" 2>/dev/null &&
                grep -qi 'in use' "$SERVER_LOG"; then
                continue
            fi
        else
            wait_listen "$SERVER_PID" unix "$SERVER_SOCK" 2>>"$tmp/wait.err" && return 0
        fi
        cat "$tmp/wait.err" >&2
        fail "server did not start: $*"
    done
    fail "no free TCP port after 3 attempts"
}

# server_multi_export [KIND] - true when KIND can serve several exports.
server_multi_export() {
    [ "${1:-$SERVER_KIND}" = qednbd ]
}

# nbd_uri [NAME] - the NBD URI of export NAME (default "") of the last server.
nbd_uri() {
    local name=${1:-}
    if [ "$SERVER_TRANSPORT" = unix ]; then
        echo "nbd+unix:///$name?socket=$SERVER_SOCK"
    else
        echo "nbd://127.0.0.1:$SERVER_PORT/$name"
    fi
}

# stop_server [SIGNAL] [PID] - send SIGNAL (default TERM) to the server
# (default: the last one started), wait at most 20 s for it to exit, and set
# SERVER_RC to its exit status.  Fails when it does not exit in time.
stop_server() {
    local sig=${1:-TERM} pid=${2:-$SERVER_PID} i
    kill -"$sig" "$pid" 2>/dev/null || fail "server $pid is not running (it died earlier?)"
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        fail "server $pid did not exit within 20 s of SIG$sig"
    fi
    SERVER_RC=0
    wait "$pid" || SERVER_RC=$?
}

# server_alive [PID] - true while the server runs.
server_alive() {
    kill -0 "${1:-$SERVER_PID}" 2>/dev/null
}

# header_features IMAGE - print the QED header's features field (byte 16).
header_features() {
    "$PY" - "$1" <<'PY'
import struct, sys
with open(sys.argv[1], 'rb') as f:
    h = f.read(24)
if len(h) < 24 or h[:4] != b'QED\0':
    sys.exit('%s is not a QED image' % sys.argv[1])
print(struct.unpack('<Q', h[16:24])[0])
PY
}

# image_clean IMAGE - fail unless `qemu-img check` finds IMAGE clean and its
# NEED_CHECK feature bit (0x2) is clear.
image_clean() {
    local img=$1 f
    run 60 qemu-img check -f qed "$img"
    f=$(header_features "$img") || fail "cannot read the header of $img"
    [ $((f & 2)) -eq 0 ] || fail "NEED_CHECK is still set in $img (features=$f)"
    qemu-img info -f qed --output=json "$img" >"$tmp/info.json" 2>"$tmp/err" ||
        fail "qemu-img info $img: $(cat "$tmp/err")"
    "$PY" - "$tmp/info.json" <<'PY' || fail "qemu-img info reports $img dirty"
import json, sys
info = json.load(open(sys.argv[1]))
sys.exit(1 if info.get('dirty-flag') else 0)
PY
}

# qio TARGET-ARGS... -- CMD... - run qemu-io with every CMD as a -c on the
# target given before "--" (e.g. "-f raw nbd+unix:///?socket=..."), bounded
# to 120 s; fails when qemu-io fails or reports a pattern mismatch.
qio() {
    local target=() cmds=() c
    while [ $# -gt 0 ] && [ "$1" != -- ]; do target+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    for c in "$@"; do cmds+=(-c "$c"); done
    run 120 qemu-io "${cmds[@]}" "${target[@]}"
    # qemu-io exits 0 even when a "read -P" finds other data; it prints
    # "Pattern verification failed" instead.
    if grep -qiE 'verification failed|error|failed' "$tmp/out" "$tmp/err"; then
        cat "$tmp/out" "$tmp/err" >&2
        fail "qemu-io ${target[*]}: $*"
    fi
}

# same_map MODE NBDINFO_JSON QEMU_IMG_JSON SIZE - compare `nbdinfo --map
# --json` output with `qemu-img map --output=json` output of the same image,
# both turned into merged lists of (start, length, value):
#   MODE base:  value = NBD base:allocation flags; qemu-img's data:false is
#               NBD_STATE_HOLE (1), zero:true is NBD_STATE_ZERO (2);
#   MODE depth: value = qemu:allocation-depth; qemu-img's present:false is
#               0 (unallocated), otherwise its depth + 1 (1 = this image).
# Both lists must cover [0, SIZE) exactly, and be equal after merging
# adjacent extents that have the same value.
same_map() {
    "$PY" - "$@" <<'PY'
import json, sys
mode, nbd_file, qemu_file, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def merged(ext, who):
    out = []
    pos = 0
    for start, length, val in sorted(ext):
        if start != pos:
            sys.exit('%s map: extent at %d, expected %d (gap or overlap)' % (who, start, pos))
        if length <= 0:
            sys.exit('%s map: empty extent at %d' % (who, start))
        pos = start + length
        if out and out[-1][2] == val:
            out[-1][1] += length
        else:
            out.append([start, length, val])
    if pos != size:
        sys.exit('%s map ends at %d, the image size is %d' % (who, pos, size))
    return out

nbd = [(e['offset'], e['length'], e['type']) for e in json.load(open(nbd_file))]
qemu = []
for e in json.load(open(qemu_file)):
    if mode == 'base':
        val = (0 if e['data'] else 1) | (2 if e['zero'] else 0)
    else:
        val = e['depth'] + 1 if e['present'] else 0
    qemu.append((e['start'], e['length'], val))
a = merged(nbd, 'nbdinfo')
b = merged(qemu, 'qemu-img')
if a != b:
    print('%s maps differ:' % mode)
    print('  %-12s %-12s %s' % ('start', 'length', 'nbdinfo'))
    for x in a: print('  %-12d %-12d %d' % tuple(x))
    print('  %-12s %-12s %s' % ('start', 'length', 'qemu-img'))
    for x in b: print('  %-12d %-12d %d' % tuple(x))
    sys.exit(1)
PY
}
