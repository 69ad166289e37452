#!/bin/bash
# qed-img create + info: geometry, size suffixes and rounding, human and
# --json output (parsed with python3), allocated bytes after writes, and
# --help / -V.  Bad size arguments are refused.
. "$top_srcdir/tests/tools/tools-common.sh"
need python3 qemu-io

expect_rc 0 "$QED_IMG" --help
expect_grep "$tmp/out" "create"
expect_grep "$tmp/out" "resize"
expect_rc 0 "$QED_IMG" -V
expect_grep "$tmp/out" "qed-img"
expect_rc 1 "$QED_IMG" frobnicate x.qed
expect_grep "$tmp/err" "unknown command"
expect_rc 1 "$QED_IMG"

# Default geometry, size with a suffix.
expect_rc 0 "$QED_IMG" create a.qed 10M
[ -f a.qed ] || fail "create made no file"
expect_rc 0 "$QED_IMG" info a.qed
expect_grep "$tmp/out" "image: a.qed"
expect_grep "$tmp/out" "file format: qed"
expect_grep "$tmp/out" "virtual size: 10 MiB (10485760 bytes)"
expect_grep "$tmp/out" "cluster_size: 65536"
expect_grep "$tmp/out" "table_size: 4"
expect_grep "$tmp/out" "dirty flag: no"
expect_grep "$tmp/out" "allocated: 0 B (0 bytes)"
if grep -q "backing file" "$tmp/out"; then fail "info shows a backing file for a.qed"; fi

# Explicit geometry, lowercase suffixes, size rounded up to 512.
expect_rc 0 "$QED_IMG" create -c 4k -t 16 b.qed 1000
expect_rc 0 "$QED_IMG" info --json b.qed
python3 - "$tmp/out" <<'PY' || fail "info --json of b.qed is wrong"
import json, sys
j = json.load(open(sys.argv[1]))
want = {"filename": "b.qed", "format": "qed", "virtual-size": 1024, "cluster-size": 4096,
        "table-size": 16, "dirty-flag": False, "allocated-size": 0}
for k, v in want.items():
    assert j.get(k) == v, (k, j.get(k), v)
assert "backing-filename" not in j, j
# max size for 4K clusters, table size 16: N = 16*4096/8 = 8192 entries
assert j["max-virtual-size"] == 8192 * 8192 * 4096, j["max-virtual-size"]
PY

# Every suffix is a power of 1024.
for s in 512:512 1K:1024 3k:3072 2M:2097152 1G:1073741824 1T:1099511627776; do
    rm -f s.qed
    expect_rc 0 "$QED_IMG" create s.qed "${s%%:*}"
    [ "$(qed_header s.qed size)" = "${s##*:}" ] || fail "size ${s%%:*} gave $(qed_header s.qed size)"
done

# Garbage and overflow are refused, and leave no file behind.
for bad in 10X abc "" -1 1.5G 10MB " 10" 18446744073709551616 16E 99999999999999999999K; do
    rm -f bad.qed
    expect_rc 1 "$QED_IMG" create bad.qed "$bad"
    [ -s "$tmp/err" ] || fail "no message for size '$bad'"
    [ -e bad.qed ] && fail "create with size '$bad' left a file"
done
expect_rc 1 "$QED_IMG" create bad.qed
expect_grep "$tmp/err" "size"

# A file that exists is not overwritten.
expect_rc 1 "$QED_IMG" create a.qed 20M
[ "$(qed_header a.qed size)" = 10485760 ] || fail "create overwrote a.qed"

# Allocated bytes count the clusters written by qemu-io (depth 0, data):
# 100K at 0 -> 2 clusters; zero clusters and holes do not count.
qemu-io -c 'write -P 0xaa 0 100k' -c 'write -z 1M 128k' -c 'write -P 1 5M 64k' a.qed >/dev/null \
    || fail "qemu-io write failed"
expect_rc 0 "$QED_IMG" info --json a.qed
python3 - "$tmp/out" <<'PY' || fail "allocated-size after writes is wrong"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["allocated-size"] == 3 * 65536, j["allocated-size"]
assert j["dirty-flag"] is False
assert j["actual-size"] > 0
PY
expect_rc 0 "$QED_IMG" info a.qed
expect_grep "$tmp/out" "allocated: 192 KiB (196608 bytes)"

# The dirty flag is reported from the header.
set_features a.qed 0x2
expect_rc 0 "$QED_IMG" info a.qed
expect_grep "$tmp/out" "dirty flag: yes"
expect_rc 0 "$QED_IMG" info --json a.qed
python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["dirty-flag"] is True' "$tmp/out" \
    || fail "--json does not show dirty-flag true"

# While QEMU has the image open read-write, info refuses (the lock), and
# info -U / map -U / check -U look anyway; resize is refused.
set_features a.qed 0x0
mkfifo hold.fifo
qemu-io a.qed < hold.fifo > "$tmp/qemu-io.out" 2>&1 &
holder=$!
exec 7>hold.fifo
# Wait until qemu-io has the image open by asking it for a read and waiting
# for the answer.  Why not poll with `qed-img info` as before: a poll that
# holds its lock at the moment qemu-io opens makes qemu-io fail to get its
# own lock and exit, and the test then waited for a lock nobody held (seen
# in CI on a loaded machine).
echo "read 0 512" >&7
for i in $(seq 300); do
    grep -q "read 512/512 bytes" "$tmp/qemu-io.out" 2>/dev/null && break
    kill -0 "$holder" 2>/dev/null || break
    sleep 0.1
done
grep -q "read 512/512 bytes" "$tmp/qemu-io.out" ||
    { cat "$tmp/qemu-io.out"; fail "qemu-io did not open the image"; }
expect_rc 1 "$QED_IMG" info a.qed
expect_grep "$tmp/err" "lock"
expect_rc 0 "$QED_IMG" info -U a.qed
expect_grep "$tmp/out" "virtual size: 10 MiB (10485760 bytes)"
expect_rc 0 "$QED_IMG" map -U a.qed
expect_rc 0 "$QED_IMG" check -U a.qed
expect_rc 1 "$QED_IMG" resize a.qed 20M
exec 7>&-
wait "$holder" || fail "qemu-io holding the image failed"

# Errors name the file.
expect_rc 1 "$QED_IMG" info missing.qed
expect_grep "$tmp/err" "missing.qed"
head -c 4096 /dev/urandom > junk.qed
expect_rc 1 "$QED_IMG" info junk.qed
expect_grep "$tmp/err" "junk.qed"
echo "ok"
