#!/bin/bash
# Images made by qed-img are accepted by qemu-img info/check, before and
# after qemu-io writes to them, across geometries.  (QEMU refuses table
# size 1, so that geometry is left out here.)
. "$top_srcdir/tests/tools/tools-common.sh"
need qemu-img qemu-io python3

for geom in "4K 2" "4K 16" "64K 4" "2M 4" "64K 16"; do
    set -- $geom
    img="img-$1-$2.qed"
    expect_rc 0 "$QED_IMG" create -c "$1" -t "$2" "$img" 12M
    expect_rc 0 qemu-img info --output=json "$img"
    python3 - "$tmp/out" "$1" <<'PY' || fail "qemu-img info of $img disagrees"
import json, sys
j = json.load(open(sys.argv[1]))
cs = {"4K": 4096, "64K": 65536, "2M": 2 << 20}[sys.argv[2]]
assert j["format"] == "qed", j
assert j["virtual-size"] == 12 << 20, j
assert j["cluster-size"] == cs, j
assert j["dirty-flag"] is False, j
PY
    expect_rc 0 qemu-img check "$img"
    expect_grep "$tmp/out" "No errors were found on the image."

    out=$(qemu-io -c 'write -P 0x11 0 5k' -c 'write -P 0x22 3M 1M' -c 'write -z 8M 2M' \
                  -c 'read -P 0x11 0 5k' -c 'read -P 0x22 3M 1M' -c 'read -P 0 8M 2M' "$img") \
        || fail "qemu-io on $img failed: $out"
    grep -qi 'fail\|error' <<<"$out" && fail "qemu-io on $img: $out"
    expect_rc 0 qemu-img check "$img"
    expect_grep "$tmp/out" "No errors were found on the image."
    # And qed-img still agrees with qemu-img after QEMU wrote to it.
    expect_rc 0 "$QED_IMG" check "$img"
    expect_grep "$tmp/out" "No errors were found on the image."
done
echo "ok"
