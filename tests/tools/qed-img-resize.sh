#!/bin/bash
# qed-img resize grows images (qemu-img info shows the new size, data and
# check survive), takes +SIZE, refuses to shrink, and refuses sizes past the
# geometry's maximum with the maximum named.
. "$top_srcdir/tests/tools/tools-common.sh"
need qemu-img qemu-io python3

vsize() { qemu-img info --output=json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'; }

expect_rc 0 "$QED_IMG" create a.qed 1M
qemu-io -c 'write -P 0x42 960k 64k' a.qed >/dev/null || fail "qemu-io"
expect_rc 0 "$QED_IMG" resize a.qed 10M
expect_grep "$tmp/out" "Image resized."
[ "$(vsize a.qed)" = 10485760 ] || fail "qemu-img sees $(vsize a.qed) after resize to 10M"
expect_rc 0 "$QED_IMG" resize a.qed +2M
[ "$(vsize a.qed)" = 12582912 ] || fail "qemu-img sees $(vsize a.qed) after +2M"
# Not a multiple of 512: rounded up.
expect_rc 0 "$QED_IMG" resize a.qed 12583000
[ "$(vsize a.qed)" = 12583424 ] || fail "resize to 12583000 gave $(vsize a.qed)"
out=$(qemu-io -c 'read -P 0x42 960k 64k' -c 'read -P 0 1M 11M' -c 'write -P 7 12M 512' \
              -c 'read -P 7 12M 512' a.qed) || fail "qemu-io after resize: $out"
grep -qi 'fail\|error' <<<"$out" && fail "data after resize: $out"
expect_rc 0 qemu-img check a.qed
expect_rc 0 "$QED_IMG" check a.qed
# Same size: fine, nothing changes.
expect_rc 0 "$QED_IMG" resize a.qed 12583424

# Shrinking is refused, clearly, and changes nothing.
cp a.qed before.qed
expect_rc 1 "$QED_IMG" resize a.qed 1M
expect_grep "$tmp/err" "shrink"
expect_rc 1 "$QED_IMG" resize a.qed -1M
expect_grep "$tmp/err" "shrink"
cmp -s a.qed before.qed || fail "refused shrink modified a.qed"

# Past the maximum for the geometry: 4K clusters, table size 1 -> 1 GiB.
expect_rc 0 "$QED_IMG" create -c 4K -t 1 small.qed 1M
expect_rc 0 "$QED_IMG" resize small.qed 1G
[ "$(python3 -c 'import struct; f=open("small.qed","rb"); f.seek(48); print(struct.unpack("<Q", f.read(8))[0])')" = 1073741824 ] \
    || fail "resize to the maximum failed"
expect_rc 1 "$QED_IMG" resize small.qed 1025M
expect_grep "$tmp/err" "1073741824"

# No image past 2^63 - 512 (INT64_MAX rounded down to 512), whatever the
# geometry: 4M clusters with table size 4 would allow 2^64 - 512.
cap=9223372036854775296
expect_rc 0 "$QED_IMG" create -c 4M big.qed 1G
cp big.qed big-before.qed
for s in 8E 18446744073709551104 $((cap + 1)); do
    expect_rc 1 "$QED_IMG" resize big.qed "$s"
    expect_grep "$tmp/err" "$cap"
done
cmp -s big.qed big-before.qed || fail "a refused resize modified big.qed"
expect_rc 0 "$QED_IMG" resize big.qed "$cap"
[ "$(qed_header big.qed size)" = "$cap" ] || fail "resize to the largest size failed"
rm -f big.qed big-before.qed

# Garbage sizes and missing files.
expect_rc 1 "$QED_IMG" resize a.qed 12Q
expect_rc 1 "$QED_IMG" resize a.qed
expect_rc 1 "$QED_IMG" resize nothere.qed 1G
expect_grep "$tmp/err" "nothere.qed"
echo "ok"
