#!/bin/bash
# Every qed-img command on an image marked clean with an invalid L2 entry
# (damage no crash explains, issue 11 item 7): nothing changes the file but
# `check -r`, and each command says something useful:
#   - info shows the header fields, says the allocation is unknown, and
#     points at `qed-img check` (it used to print nothing and exit 1);
#   - map fails at the damaged range and points at `qed-img check`;
#   - check reports the corruption (exit 2); resize is refused and names
#     `qed-img check -r`; after `check -r` everything works again.
. "$top_srcdir/tests/tools/tools-common.sh"

K=65536
"$QED_IMG" create -c 64K t.qed 8M >/dev/null || fail "create"
"$QED_IMG" info t.qed >/dev/null || fail "info of a good image"
# Write one cluster so that an L2 table exists, then damage guest cluster 1.
python3 - t.qed $K <<'PY' || fail "cannot build the damaged image"
import struct, sys
path, cs = sys.argv[1], int(sys.argv[2])
with open(path, 'r+b') as f:
    (magic, c, ts, hs, feat, compat, ac, l1, size, bo, bl) = \
        struct.unpack('<IIIIQQQQQII', f.read(64))
    assert feat & 2 == 0
    end = (f.seek(0, 2) + c - 1) // c * c
    f.truncate(end + ts * c + c)
    f.seek(l1); f.write(struct.pack('<Q', end))                  # L2 table
    f.seek(end); f.write(struct.pack('<Q', end + ts * c))        # cluster 0: data
    f.seek(end + 8); f.write(struct.pack('<Q', 1 << 30))         # cluster 1: past the end
PY
sum0=$(sha256sum <t.qed)
unchanged() { [ "$(sha256sum <t.qed)" = "$sum0" ] || fail "$1 changed the image"; }

expect_rc 1 "$QED_IMG" info t.qed
for want in "virtual size: 8 MiB" "cluster_size: 65536" "allocated: unknown" "dirty flag: no"; do
    expect_grep "$tmp/out" "$want"
done
expect_grep "$tmp/err" "qed-img check t.qed"
unchanged "info"

expect_rc 1 "$QED_IMG" info --json t.qed
python3 - "$tmp/out" <<'PY' || fail "info --json of a damaged image"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["virtual-size"] == 8 << 20 and j["cluster-size"] == 65536, j
assert "allocated-size" not in j, j
PY
unchanged "info --json"

expect_rc 1 "$QED_IMG" map t.qed
expect_grep "$tmp/err" "t.qed"
expect_grep "$tmp/err" "qed-img check t.qed"
unchanged "map"

expect_rc 2 "$QED_IMG" check t.qed
unchanged "check"

expect_rc 1 "$QED_IMG" resize t.qed 16M
expect_grep "$tmp/err" "qed-img check -r t.qed"
unchanged "resize"
[ "$(qed_header t.qed size)" = $((8 << 20)) ] || fail "resize changed the size"

expect_rc 0 "$QED_IMG" check -r t.qed
expect_rc 0 "$QED_IMG" info t.qed
expect_grep "$tmp/out" "allocated: 64 KiB"
expect_rc 0 "$QED_IMG" resize t.qed 16M
expect_rc 0 "$QED_IMG" map t.qed
echo "PASS"
