# faults-common.sh - sourced by the fault tests (not a test itself).
#
# Provides: $tmp (scratch directory; on exit every server the python driver
# started is killed, a tmpfs mounted by the test is unmounted, and $tmp is
# removed), $PYNBD (a python3 with the libnbd bindings), skip, fail,
# build_shim (sets $SHIM to the LD_PRELOAD fault shim).
set -u

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*" >&2; exit 1; }

: "${top_builddir:?top_builddir must be set (run through make check)}"
: "${top_srcdir:?top_srcdir must be set (run through make check)}"
FAULTS_SRC="$top_srcdir/tests/faults"

[ -x "$top_builddir/server/qednbd" ] || fail "$top_builddir/server/qednbd is not built"

# The system python3 first: that is where python3-libnbd installs.
PYNBD=
for p in /usr/bin/python3 python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import nbd' 2>/dev/null; then
        PYNBD=$p
        break
    fi
done
[ -n "$PYNBD" ] || skip "no python3 with the libnbd bindings (python3-libnbd)"
command -v qemu-img >/dev/null 2>&1 || skip "qemu-img is not installed"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qednbd-faults.XXXXXX") || fail "mktemp"
MOUNTED=
export FAULTS_PIDFILE="$tmp/server.pids"
export PYTHONDONTWRITEBYTECODE=1
# The shim holds and delays file I/O calls; with TMPDIR on tmpfs qednbd would
# run them on its loop thread (lib/io/aio.c, memory files), and a held call would
# stop the whole server.  These tests are about the I/O path through the
# backend, so keep every call there -- except when memfs-images.sh runs one
# of the tests that hold nothing (kill9.sh, fulldisk.sh) to cover that path.
if [ "${QEDNBD_MEMFS_TEST-}" = 1 ]; then
    export QED_AIO_MEMORY=1
else
    export QED_AIO_MEMORY=0
fi

# Kill the servers the driver started (it records their pids), unmount.
cleanup() {
    local pid
    if [ -f "$FAULTS_PIDFILE" ]; then
        while read -r pid; do
            kill -KILL "$pid" 2>/dev/null
        done <"$FAULTS_PIDFILE"
    fi
    if [ -n "$MOUNTED" ]; then
        # A killed server may hold the mount for a moment.
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            umount "$MOUNTED" 2>/dev/null && break
            sleep 0.3
        done
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# build_shim - set $SHIM: the failio.so that `make check` built next to the
# tests, or one compiled now with $CC into $tmp.
build_shim() {
    SHIM="$top_builddir/tests/faults/failio.so"
    if [ -f "$SHIM" ] && [ "$SHIM" -nt "$FAULTS_SRC/failio.c" ]; then
        return 0
    fi
    SHIM="$tmp/failio.so"
    ${CC:-cc} -O2 -Wall -shared -fPIC -o "$SHIM" "$FAULTS_SRC/failio.c" -ldl -lpthread ||
        fail "cannot build the fault shim $SHIM"
}
