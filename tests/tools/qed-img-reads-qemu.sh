#!/bin/bash
# qed-img info and check on images made and written by qemu-img/qemu-io:
# the values match `qemu-img info --output=json`, and check's report matches
# `qemu-img check` line for line on clean images.
. "$top_srcdir/tests/tools/tools-common.sh"
need qemu-img qemu-io python3

qemu-img create -q -f raw base.raw 2M || fail "qemu-img create raw"
qemu-img create -q -f qed plain.qed 20M || fail "create plain.qed"
qemu-img create -q -f qed -o cluster_size=4096,table_size=2 small.qed 8M || fail "create small.qed"
qemu-img create -q -f qed -b base.raw -F raw over.qed 4M || fail "create over.qed"
qemu-img create -q -f qed big.qed 3T || fail "create big.qed"
qemu-io -c 'write -P 1 0 64k' -c 'write -P 2 10M 200k' -c 'write -z 15M 1M' plain.qed >/dev/null
qemu-io -c 'write -P 3 4k 8k' -c 'write -P 4 7M 12k' small.qed >/dev/null
qemu-io -c 'write -P 5 1M 64k' over.qed >/dev/null

for img in plain.qed small.qed over.qed big.qed; do
    qemu-img info --output=json "$img" > q.json || fail "qemu-img info $img"
    expect_rc 0 "$QED_IMG" info --json "$img"
    cp "$tmp/out" m.json
    python3 - q.json m.json <<'PY' || fail "qed-img info $img disagrees with qemu-img"
import json, sys
q = json.load(open(sys.argv[1]))
m = json.load(open(sys.argv[2]))
for k in ("virtual-size", "cluster-size", "format", "dirty-flag", "backing-filename",
          "backing-filename-format"):
    assert q.get(k) == m.get(k), (k, q.get(k), m.get(k))
PY
    # Compare the check report with qemu-img's, apart from lines qemu-img
    # does not print for QED.
    qemu-img check "$img" > q.txt 2>&1
    qrc=$?
    "$QED_IMG" check "$img" > m.txt 2>&1
    mrc=$?
    [ "$qrc" = "$mrc" ] || fail "check $img: qemu-img exits $qrc, qed-img $mrc"
    grep -v '^Image end offset:' m.txt > m2.txt
    diff -u q.txt m2.txt || fail "check report of $img differs from qemu-img's"
done

# Allocated bytes for plain.qed: 1 cluster at 0, 200k at 10M spans 4 clusters.
expect_rc 0 "$QED_IMG" info --json plain.qed
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["allocated-size"] == 5*65536, j' \
    "$tmp/out" || fail "allocated-size of plain.qed"
echo "ok"
