#!/bin/bash
# qed-img create with a backing file: raw and qed, given with -F or probed,
# size taken from the backing file when left out, the header's backing
# fields and BACKING_FORMAT_NO_PROBE, and reads through the backing file
# (checked with qemu-img/qemu-io as the oracle).
. "$top_srcdir/tests/tools/tools-common.sh"
need qemu-img qemu-io python3

# json_field FILE KEY - print a key of a JSON object ("" when absent).
json_field() {
    python3 -c 'import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2]); print("" if v is None else v)' "$1" "$2"
}

qemu-img create -q -f raw base.raw 4M || fail "qemu-img create raw"
qemu-io -f raw -c 'write -P 0x5a 0 1M' base.raw >/dev/null || fail "qemu-io raw"
qemu-img create -q -f qed base.qed 6M || fail "qemu-img create qed"
qemu-io -c 'write -P 0x33 64k 64k' base.qed >/dev/null || fail "qemu-io qed"

# checkimg IMAGE BACKING FMT SIZE - qed-img and qemu-img agree on the result.
checkimg() {
    local img=$1 backing=$2 fmt=$3 size=$4 features
    expect_rc 0 "$QED_IMG" info --json "$img"
    [ "$(json_field "$tmp/out" backing-filename)" = "$backing" ] || fail "$img: backing-filename"
    [ "$(json_field "$tmp/out" backing-filename-format)" = "$fmt" ] || fail "$img: backing format"
    [ "$(json_field "$tmp/out" virtual-size)" = "$size" ] || fail "$img: virtual-size"
    expect_rc 0 "$QED_IMG" info "$img"
    expect_grep "$tmp/out" "backing file: $backing"
    expect_grep "$tmp/out" "backing file format: $fmt"

    [ $(( $(qed_header "$img" features) & 1 )) -eq 1 ] || fail "$img: BACKING_FILE not set"
    features=$(qed_header "$img" features)
    if [ "$fmt" = raw ]; then
        [ $((features & 4)) -eq 4 ] || fail "$img: raw backing without BACKING_FORMAT_NO_PROBE"
    else
        [ $((features & 4)) -eq 0 ] || fail "$img: qed backing with BACKING_FORMAT_NO_PROBE"
    fi
    python3 - "$img" "$backing" <<'PY' || fail "$img: backing name in the header is wrong"
import struct, sys
with open(sys.argv[1], 'rb') as f:
    h = struct.unpack('<IIIIQQQQQII', f.read(64))
    f.seek(h[9])
    name = f.read(h[10]).decode()
assert name == sys.argv[2], (name, sys.argv[2])
assert h[9] + h[10] <= h[3] * h[1]
PY

    expect_rc 0 qemu-img info --output=json "$img"
    [ "$(json_field "$tmp/out" backing-filename)" = "$backing" ] || fail "qemu-img: $img backing"
    if [ "$fmt" = raw ]; then
        [ "$(json_field "$tmp/out" backing-filename-format)" = raw ] || fail "qemu-img: $img format"
    fi
    expect_rc 0 qemu-img check "$img"
}

expect_rc 0 "$QED_IMG" create -b base.raw -F raw r1.qed 8M
checkimg r1.qed base.raw raw 8388608
expect_rc 0 "$QED_IMG" create -b base.raw r2.qed
checkimg r2.qed base.raw raw 4194304
expect_rc 0 "$QED_IMG" create -b base.qed -F qed q1.qed 8M
checkimg q1.qed base.qed qed 8388608
expect_rc 0 "$QED_IMG" create -b base.qed q2.qed
checkimg q2.qed base.qed qed 6291456

# Data comes through from the backing file; past its end, zeros.
qemu-io -r -c 'read -P 0x5a 0 1M' -c 'read -P 0 1M 3M' -c 'read -P 0 4M 4M' r1.qed \
    | grep -q -i 'fail\|error' && fail "r1.qed does not read through base.raw"
out=$(qemu-io -r -c 'read -P 0x33 64k 64k' -c 'read -P 0 0 64k' q2.qed)
grep -qi 'fail\|error' <<<"$out" && fail "q2.qed does not read through base.qed: $out"

# The backing file name is stored as given and resolved relative to the image.
mkdir sub
expect_rc 0 "$QED_IMG" create -b ../base.raw sub/rel.qed
checkimg sub/rel.qed ../base.raw raw 4194304
expect_rc 0 "$QED_IMG" create -b "$tmp/base.qed" abs.qed
checkimg abs.qed "$tmp/base.qed" qed 6291456

# A missing backing file is an error that names it.
expect_rc 1 "$QED_IMG" create -b nothere.raw x.qed 1M
expect_grep "$tmp/err" "nothere.raw"
[ -e x.qed ] && fail "failed create left x.qed"
echo "ok"
