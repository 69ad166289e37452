#!/bin/bash
# qed-img check exit codes and messages on hand-damaged images: 0 clean,
# 3 leaked clusters only, 2 corruption (also with leaks), 1 when the check
# cannot run.  qemu-img check on the same files is the oracle for the codes
# and the wording.
. "$top_srcdir/tests/tools/tools-common.sh"
need qemu-img qemu-io python3

# both_check IMG RC - qed-img check and qemu-img check both exit RC; keeps
# qed-img's stdout in $tmp/out.
both_check() {
    local qrc=0
    qemu-img check "$1" > q.txt 2>&1 || qrc=$?
    [ "$qrc" = "$2" ] || { cat q.txt >&2; fail "oracle: qemu-img check $1 exited $qrc, not $2"; }
    expect_rc "$2" "$QED_IMG" check "$1"
}

qemu-img create -q -f qed base.qed 8M || fail "qemu-img create"
qemu-io -c 'write -P 1 0 64k' -c 'write -P 2 1M 64k' base.qed >/dev/null || fail "qemu-io"

cp base.qed clean.qed
both_check clean.qed 0
expect_grep "$tmp/out" "No errors were found on the image."
expect_grep "$tmp/out" "2/128 = 1.56% allocated"
expect_grep "$tmp/out" "0.00% compressed clusters"

# Two whole clusters nothing references: leaks only.
cp base.qed leak.qed
truncate -s +131072 leak.qed
both_check leak.qed 3
expect_grep "$tmp/out" "2 leaked clusters were found on the image."
expect_grep "$tmp/out" "This means waste of disk space, but no harm to data."
if grep -q "errors were found" "$tmp/out"; then fail "leaks reported as corruption"; fi

# An L2 entry pointing past the end of the file: corruption.
cp base.qed corrupt.qed
set_l2_entry corrupt.qed 0x30000 0x7770000
both_check corrupt.qed 2
expect_grep "$tmp/out" "1 errors were found on the image."
expect_grep "$tmp/out" "Data may be corrupted, or further writes to the image may corrupt it."

# A misaligned L2 entry: corruption too.
cp base.qed misaligned.qed
set_l2_entry misaligned.qed 0x40000 0x50200
both_check misaligned.qed 2
expect_grep "$tmp/out" "1 errors were found on the image."

# A cluster referenced twice, and a data entry pointing at the L1 table:
# corruption.
cp base.qed double.qed
set_l2_entry double.qed 0x30000 0x50000
both_check double.qed 2
expect_grep "$tmp/out" "1 errors were found on the image."
cp base.qed ontable.qed
set_l2_entry ontable.qed 0x30000 0x10000
both_check ontable.qed 2
expect_grep "$tmp/out" "1 errors were found on the image."

# An L1 entry pointing past the end of the file: corruption, not a failed check.
cp base.qed badl1.qed
python3 - badl1.qed <<'PY' || fail "python"
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(40)
    (l1,) = struct.unpack('<Q', f.read(8))
    f.seek(l1 + 8)
    f.write(struct.pack('<Q', 0x990000))
PY
both_check badl1.qed 2
expect_grep "$tmp/out" "1 errors were found on the image."

# Corruption and leaks together: corruption wins.
cp corrupt.qed both.qed
truncate -s +65536 both.qed
both_check both.qed 2
expect_grep "$tmp/out" "errors were found on the image."
expect_grep "$tmp/out" "leaked clusters were found on the image."

# Files that are not QED images, or missing: the check fails (1).
printf 'no\n' > notqed.qed
expect_rc 1 "$QED_IMG" check notqed.qed
expect_grep "$tmp/err" "notqed.qed"
expect_rc 1 "$QED_IMG" check nosuchfile.qed
expect_grep "$tmp/err" "nosuchfile.qed"
expect_rc 1 "$QED_IMG" check
echo "ok"
