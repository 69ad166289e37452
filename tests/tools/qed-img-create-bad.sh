#!/bin/bash
# qed-img create refuses bad geometry and sizes too large for the geometry,
# with a message that names the field (and the maximum size), and leaves no
# file behind.
. "$top_srcdir/tests/tools/tools-common.sh"

# refuse EXPECTED_TEXT ARGS... - create must fail, say EXPECTED_TEXT, make no file.
refuse() {
    local text=$1
    shift
    rm -f t.qed
    expect_rc 1 "$QED_IMG" create "$@"
    expect_grep "$tmp/err" "$text"
    [ -e t.qed ] && fail "'create $*' failed but left t.qed"
    return 0
}

for c in 0 2K 12K 4097 100000 128M 4G 8G; do
    refuse "cluster size" -c "$c" t.qed 1M
done
for t in 0 3 5 32 17 64; do
    refuse "table size" -t "$t" t.qed 1M
done
refuse "table size" -t 2K t.qed 1M
refuse "cluster size" -c junk t.qed 1M
refuse "backing" -F vmdk -b x t.qed 1M
refuse "-F" -F raw t.qed 1M

# The extremes are accepted.
for geom in "4K 1" "4K 16" "64M 1" "64M 16" "64K 4"; do
    set -- $geom
    rm -f t.qed
    expect_rc 0 "$QED_IMG" create -c "$1" -t "$2" t.qed 1M
    expect_rc 0 "$QED_IMG" info --json t.qed
    python3 - "$tmp/out" "$1" "$2" <<'PY' || fail "geometry $geom not stored"
import json, sys
j = json.load(open(sys.argv[1]))
cs = {"4K": 4096, "64K": 65536, "64M": 64 << 20}[sys.argv[2]]
assert j["cluster-size"] == cs and j["table-size"] == int(sys.argv[3]), j
PY
done

# Maximum size: N = table_size * cluster_size / 8 entries, max = N * N * cluster_size.
# 4K clusters, table size 1: N = 512, max = 1 GiB exactly.
max=$((512 * 512 * 4096))
rm -f t.qed
expect_rc 0 "$QED_IMG" create -c 4K -t 1 t.qed "$max"
[ "$(qed_header t.qed size)" = "$max" ] || fail "maximum size not stored"
refuse "$max" -c 4K -t 1 t.qed $((max + 512))
refuse "$max" -c 4K -t 1 t.qed 2G
# 64K clusters, table size 4: N = 32768, max = 2^46 = 64 TiB.
max=$((32768 * 32768 * 65536))
rm -f t.qed
expect_rc 0 "$QED_IMG" create t.qed 64T
[ "$(qed_header t.qed size)" = "$max" ] || fail "64T not stored"
refuse "$max" t.qed 65T
# No image larger than INT64_MAX rounded down to 512, whatever the geometry
# allows: with 4M clusters and table size 4, N*N*cs = 2^64, and a size of
# 2^64 - 512 made the end of the last cluster wrap to 0 (a heap overflow).
cap=9223372036854775296
for geom in "4M 4" "2M 8"; do
    set -- $geom
    refuse "$cap" -c "$1" -t "$2" t.qed 18446744073709551104
    refuse "$cap" -c "$1" -t "$2" t.qed 9223372036854775808
    refuse "$cap" -c "$1" -t "$2" t.qed $((cap + 1))
    refuse "$cap" -c "$1" -t "$2" t.qed 8E
    rm -f t.qed
    expect_rc 0 "$QED_IMG" create -c "$1" -t "$2" t.qed "$cap"
    [ "$(qed_header t.qed size)" = "$cap" ] || fail "the largest size not stored ($geom)"
    expect_rc 0 "$QED_IMG" info --json t.qed
    expect_grep "$tmp/out" "\"max-virtual-size\": $cap"
done
# An image whose header claims more is refused at open, naming size and maximum.
python3 - t.qed <<'PY'
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(48)
    f.write(struct.pack('<Q', 18446744073709551104))
PY
expect_rc 1 "$QED_IMG" info t.qed
expect_grep "$tmp/err" "t.qed"
expect_grep "$tmp/err" "18446744073709551104"
expect_grep "$tmp/err" "$cap"
rm -f t.qed
# Sizes that overflow 64 bits.
refuse "too large" t.qed 17E
refuse "too large" t.qed 18446744073709551616
echo "ok"
