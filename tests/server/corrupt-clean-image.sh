#!/bin/bash
# An image marked clean whose L2 table has an entry pointing past the end of
# the file (damage that no crash explains):
#   1. qednbd refuses to serve it read-write: exit 1 before listening, a
#      message on stderr that names the file, the count of bad entries and
#      `qed-img check -r FILE`, and not a byte of the file changed;
#   2. served with -r, the other clusters read normally and a read of the
#      damaged cluster gets an I/O error (qemu-io, and EIO through libnbd
#      when its python bindings are installed); block status over it fails
#      too; the file is still unchanged afterwards;
#   3. --repair with -r is refused as a contradiction;
#   4. served with --repair, the entry is zeroed at start-up: the cluster
#      reads as zeros (and takes writes), the rest reads as before, and the
#      image checks without corruption (the lost data cluster is a leak);
#   5. after `qed-img check -r`, plain read-write serving works.
# qednbd only: qemu-nbd opens such an image without looking at its tables.
. "$top_srcdir/tests/server/server-common.sh"
need qemu-img qemu-io
[ "$SERVER_KIND" = qednbd ] || skip "the refusal is qednbd's behaviour (QEDNBD_TEST_SERVER=$SERVER_KIND)"
need_server_kind qednbd
QED_IMG="$top_builddir/contrib/qed-img/qed-img"
[ -x "$QED_IMG" ] || fail "$QED_IMG is not built"

K=65536
qemu-img create -q -f qed -o cluster_size=$K base.qed 8M || fail "qemu-img create"
qemu-io -c "write -P 1 0 $K" -c "write -P 2 $K $K" -c "write -P 3 $((2 * K)) $K" base.qed \
    >/dev/null || fail "qemu-io write"
# Guest cluster 1 now points 1 GiB past the end of the file.
"$PY" - base.qed $K $((1 << 30)) <<'PY' || fail "cannot damage the image"
import struct, sys
path, pos, value = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, 'r+b') as f:
    (magic, cs, ts, hs, feat, compat, ac, l1, size, bo, bl) = \
        struct.unpack('<IIIIQQQQQII', f.read(64))
    assert feat & 2 == 0, 'the image must be marked clean'
    n = ts * cs // 8
    f.seek(l1)
    (l2,) = struct.unpack('<Q', f.read(8))
    f.seek(l2 + 8 * (pos // cs % n))
    f.write(struct.pack('<Q', value))
PY
cp base.qed img.qed
img=$tmp/img.qed
sum0=$(sha256sum <"$img")
unchanged() { [ "$(sha256sum <"$img")" = "$sum0" ] || fail "$1 changed $img"; }

# ---- 1. read-write: refused, untouched ----
rc=0
timeout -k 5 30 "$QEDNBD" -u "$tmp/rw.sock" "$img" >"$tmp/rw.out" 2>"$tmp/rw.err" || rc=$?
cat "$tmp/rw.err"
[ "$rc" -eq 1 ] || fail "read-write serving of a clean damaged image exited $rc, expected 1"
for want in "cannot serve '$img' read-write" "$img: 1 invalid table entry" \
    "qed-img check -r $img" "--read-only" "--repair"; do
    grep -qF -- "$want" "$tmp/rw.err" || fail "the refusal lacks '$want'"
done
[ -e "$tmp/rw.sock" ] && fail "the refused server created its socket"
unchanged "a refused start"

# ---- 2. read-only: the rest reads, the damaged cluster is an I/O error ----
start_server -r "$img"
uri=$(nbd_uri)
qio -r -f raw "$uri" -- "read -P 1 0 $K" "read -P 3 $((2 * K)) $K"
rc=0
timeout -k 5 60 qemu-io -r -f raw -c "read $K $K" "$uri" >"$tmp/bad.out" 2>&1 || rc=$?
cat "$tmp/bad.out"
grep -q "read failed: Input/output error" "$tmp/bad.out" ||
    fail "reading the damaged cluster did not fail with an I/O error (exit $rc)"
if "$PY" -c 'import nbd' 2>/dev/null || /usr/bin/python3 -c 'import nbd' 2>/dev/null; then
    need_nbd_python
    "$NBD_PYTHON" - "$uri" $K <<'PY' || fail "libnbd: the damaged cluster did not fail with EIO"
import errno, sys
import nbd
uri, k = sys.argv[1], int(sys.argv[2])
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
assert h.pread(k, 0) == b'\x01' * k, 'cluster 0'
try:
    h.pread(k, k)
    sys.exit('read of the damaged cluster succeeded')
except nbd.Error as e:
    assert e.errnum == errno.EIO, 'read: errno %r (%s)' % (e.errnum, e)
try:
    h.block_status(k, k, lambda *a: 0)
    sys.exit('block status of the damaged cluster succeeded')
except nbd.Error as e:
    assert e.errnum == errno.EIO, 'block status: errno %r (%s)' % (e.errnum, e)
assert h.pread(k, 2 * k) == b'\x03' * k, 'cluster 2, after the errors'
h.shutdown()
print('libnbd: EIO for read and block status of the damaged cluster')
PY
fi
stop_server
[ "$SERVER_RC" -eq 0 ] || fail "the read-only server exited $SERVER_RC"
unchanged "read-only serving"

# ---- 3. --repair contradicts --read-only ----
rc=0
timeout -k 5 30 "$QEDNBD" -r --repair -u "$tmp/x.sock" "$img" 2>"$tmp/x.err" || rc=$?
[ "$rc" -eq 1 ] && grep -qF -- "--repair contradicts --read-only" "$tmp/x.err" ||
    fail "-r --repair: exit $rc, $(cat "$tmp/x.err")"
unchanged "-r --repair"

# ---- 4. --repair: zeroed at start-up ----
sock=$tmp/repair.sock
"$QEDNBD" --repair -u "$sock" "$img" >"$tmp/repair.log" 2>&1 &
SERVER_PID=$!
SERVER_PIDS+=("$SERVER_PID")
SERVER_LOGS+=("$tmp/repair.log")
wait_listen "$SERVER_PID" unix "$sock" || fail "qednbd --repair did not start"
grep -q "repairing as asked" "$tmp/repair.log" || fail "--repair did not say it repairs"
ruri="nbd+unix:///?socket=$sock"
qio -f raw "$ruri" -- "read -P 1 0 $K" "read -P 0 $K $K" "read -P 3 $((2 * K)) $K" \
    "write -P 4 $K $K" "read -P 4 $K $K"
stop_server
[ "$SERVER_RC" -eq 0 ] || fail "the repairing server exited $SERVER_RC"
# The cluster the entry lost is a leak now (exit 3), not a corruption.
rc=0
"$QED_IMG" check "$img" >"$tmp/out" 2>&1 || rc=$?
[ "$rc" -eq 3 ] && grep -q "^1 leaked clusters" "$tmp/out" ||
    { cat "$tmp/out"; fail "qed-img check after --repair exited $rc, expected 3 (one leak)"; }
[ $(($(header_features "$img") & 2)) -eq 0 ] || fail "NEED_CHECK left set after --repair"
qio -r -f qed "$img" -- "read -P 1 0 $K" "read -P 4 $K $K" "read -P 3 $((2 * K)) $K"

# ---- 5. after qed-img check -r, read-write serving works ----
cp base.qed fixed.qed
rc=0
"$QED_IMG" check -r "$tmp/fixed.qed" >"$tmp/out" 2>&1 || rc=$?
# 3: the data cluster the entry lost is left as a leak, as qemu-img does.
[ "$rc" -eq 3 ] || { cat "$tmp/out"; fail "qed-img check -r exited $rc, expected 3"; }
start_server "$tmp/fixed.qed"
qio -f raw "$(nbd_uri)" -- "read -P 1 0 $K" "read -P 0 $K $K" "write -P 5 $K $K"
stop_server
[ "$SERVER_RC" -eq 0 ] || fail "serving the repaired image exited $SERVER_RC"
echo "ok"
