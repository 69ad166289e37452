# interop-common.sh - sourced by the QEMU interop tests (not a test itself).
#
# Provides: $PATTERN (the qed-pattern helper), $tmp (a scratch directory
# removed on exit, also the working directory), $seed (from $QED_TEST_SEED
# or the time, printed), and the helpers fail, skip, need, run_ok.
set -u

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*"; exit 77; }

: "${top_builddir:?top_builddir must be set (run through make check)}"
PATTERN="$top_builddir/tests/interop/qed-pattern"
[ -x "$PATTERN" ] || fail "$PATTERN is not built"

# need PROG... - skip the test when a program is missing.
need() {
    local p
    for p in "$@"; do
        command -v "$p" >/dev/null 2>&1 || skip "$p is not installed"
    done
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qed-interop.XXXXXX") || fail "mktemp failed"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || fail "cd $tmp"

seed=${QED_TEST_SEED:-$(date +%s)}
echo "seed $seed (set QED_TEST_SEED to repeat)"

# run_ok WHAT CMD... - run CMD; on failure show its output and fail.
run_ok() {
    local what=$1 rc=0
    shift
    "$@" >"$tmp/out" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        cat "$tmp/out" >&2
        fail "$what: '$*' exited $rc"
    fi
}

# qemu_clean IMG WHAT - qemu-img check must exit 0, report no leak, and
# say the image is clean.
qemu_clean() {
    local rc=0
    qemu-img check -f qed "$1" >"$tmp/check" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ] || grep -qi 'leaked' "$tmp/check" ||
        ! grep -q '^No errors were found on the image.$' "$tmp/check"; then
        cat "$tmp/check" >&2
        fail "$2: qemu-img check exited $rc or found problems"
    fi
}

# qemu_write IMG FMT CS COVERAGE SIZE SALT - a fixed set of qemu-io writes.
qemu_write() {
    local img=$1 fmt=$2 cs=$3 cov=$4 size=$5 salt=$6
    local -a c=(
        -c "write -P $((0x11 + salt)) 0 4k"
        -c "write -P $((0x22 + salt)) $((cs + 100)) 3000"
        -c "write -P $((0x33 + salt)) $((3 * cs - 512)) $((cs + 1024))"
        -c "write -z $((5 * cs)) $((2 * cs))"
        -c "write -P $((0x44 + salt)) $((8 * cs)) $((2 * cs))"
        -c "write -z $((8 * cs + 512)) 1024"
        -c "write -z $((9 * cs)) $cs"
        -c "write -z $((12 * cs + 700)) $((cs + 300))"
        -c "write -P $((0x55 + salt)) $((5 * cs + 1536)) 512"
        -c "write -P $((0x66 + salt)) $((size - 700)) 700"
    )
    if [ "$cov" -lt "$size" ]; then
        c+=(-c "write -P $((0x77 + salt)) $((cov - 1024)) 4096")
        c+=(-c "write -z $((cov + cs)) $((2 * cs))")
    fi
    run_ok "qemu-io on $img" qemu-io -f "$fmt" "${c[@]}" "$img"
}
