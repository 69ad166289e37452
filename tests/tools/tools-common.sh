# tools-common.sh - sourced by the qed-img shell tests (not a test itself).
#
# Provides: $QED_IMG, $tmp (a scratch directory removed on exit), and
# helpers fail, skip, need, expect_rc, qed_header, set_l2_entry.
set -u

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*"; exit 77; }

: "${top_builddir:?top_builddir must be set (run through make check)}"
QED_IMG="$top_builddir/contrib/qed-img/qed-img"
[ -x "$QED_IMG" ] || fail "$QED_IMG is not built"

# need PROG... - skip the test when a program is missing.
need() {
    local p
    for p in "$@"; do
        command -v "$p" >/dev/null 2>&1 || skip "$p is not installed"
    done
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qed-img-test.XXXXXX") || fail "mktemp failed"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || fail "cd $tmp"

# expect_rc RC CMD... - run CMD, keep its stdout in $tmp/out and stderr in
# $tmp/err, and fail unless it exits with RC.
expect_rc() {
    local want=$1 rc=0
    shift
    "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    if [ "$rc" -ne "$want" ]; then
        echo "--- stdout of: $*" >&2; cat "$tmp/out" >&2
        echo "--- stderr:" >&2; cat "$tmp/err" >&2
        fail "'$*' exited $rc, expected $want"
    fi
}

# expect_grep FILE PATTERN - fail unless FILE contains the fixed string PATTERN.
expect_grep() {
    grep -qF -- "$2" "$1" || { echo "--- $1:" >&2; cat "$1" >&2; fail "'$2' not found in $1"; }
}

# qed_header FILE FIELD - print a header field (cluster_size, table_size,
# header_size, features, l1, size, backing_off, backing_len).
qed_header() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
with open(sys.argv[1], 'rb') as f:
    h = f.read(64)
names = ['magic', 'cluster_size', 'table_size', 'header_size', 'features', 'compat',
         'autoclear', 'l1', 'size', 'backing_off', 'backing_len']
print(dict(zip(names, struct.unpack('<IIIIQQQQQII', h)))[sys.argv[2]])
PY
}

# set_l2_entry FILE GUEST_OFFSET VALUE - overwrite the L2 entry that maps
# GUEST_OFFSET (its L2 table must exist) with VALUE, behind the library's back.
set_l2_entry() {
    python3 - "$@" <<'PY'
import struct, sys
path, pos, value = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3], 0)
with open(path, 'r+b') as f:
    (magic, cs, ts, hs, feat, compat, ac, l1, size, bo, bl) = \
        struct.unpack('<IIIIQQQQQII', f.read(64))
    n = ts * cs // 8
    l2_shift = cs.bit_length() - 1
    l1_shift = l2_shift + n.bit_length() - 1
    f.seek(l1 + 8 * (pos >> l1_shift))
    (l2,) = struct.unpack('<Q', f.read(8))
    if l2 == 0:
        sys.exit('no L2 table maps offset %d' % pos)
    f.seek(l2 + 8 * ((pos >> l2_shift) & (n - 1)))
    f.write(struct.pack('<Q', value))
PY
}

# set_features FILE VALUE - overwrite the header's features field.
set_features() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(16)
    f.write(struct.pack('<Q', int(sys.argv[2], 0)))
PY
}
