#!/bin/bash
# nbdinfo against the server: --json (size, block sizes, flags, contexts,
# description), --list with several exports, --map (base:allocation) equal
# to `qemu-img map` of the same image, --map=qemu:allocation-depth equal to
# qemu-img map's depth, `nbdinfo --can X` for every advertised flag, and
# `--is read-only` with -r.
. "$top_srcdir/tests/server/server-common.sh"
need qemu-img qemu-io nbdinfo

M=1048576

# json_get FILE EXPR - evaluate a python expression over the first export
# of nbdinfo --json output (variable e) and print it.
json_get() {
    "$PY" -c 'import json, sys
d = json.load(open(sys.argv[1]))
e = d["exports"][0]
v = eval(sys.argv[2])
print(str(v).lower() if isinstance(v, bool) else v)' "$1" "$2" ||
        fail "cannot evaluate $2 in $1"
}

# expect_eq WHAT GOT WANT
expect_eq() {
    [ "$2" = "$3" ] || fail "$1: got '$2', expected '$3'"
}

# ---- --json: size, block sizes, flags, contexts, description -----------------
# Odd size (not a multiple of the cluster size), 4 KiB clusters.
qemu-img create -q -f qed -o cluster_size=4096 small.qed $((10 * M + 1536)) || fail "create small.qed"
# 256 KiB clusters: the preferred block size is capped at 64 KiB.
qemu-img create -q -f qed -o cluster_size=262144 big.qed 20M || fail "create big.qed"

for spec in "small.qed 4096 $((10 * M + 1536))" "big.qed 65536 $((20 * M))"; do
    set -- $spec
    img=$1 pref=$2 size=$3
    start_server -D "test export $img" "$img"
    uri=$(nbd_uri)
    run 30 nbdinfo --json "$uri"
    cp "$tmp/out" info.json
    expect_eq "$img export-size" "$(json_get info.json 'e["export-size"]')" "$size"
    expect_eq "$img description" "$(json_get info.json 'e.get("description")')" "test export $img"
    expect_eq "$img structured replies" "$(json_get info.json 'd["structured"]')" true
    expect_eq "$img protocol" "$(json_get info.json 'd["protocol"]')" newstyle-fixed
    for ctx in base:allocation qemu:allocation-depth; do
        expect_eq "$img context $ctx" "$(json_get info.json "'$ctx' in e['contexts']")" true
    done
    min=$(json_get info.json 'e["block_size_minimum"]')
    prf=$(json_get info.json 'e["block_size_preferred"]')
    max=$(json_get info.json 'e["block_size_maximum"]')
    if [ "$SERVER_CUR_KIND" = qednbd ]; then
        # Issue 3: minimum 1, preferred the cluster size capped at 64 KiB,
        # maximum 32 MiB.
        expect_eq "$img block_size_minimum" "$min" 1
        expect_eq "$img block_size_preferred" "$prf" "$pref"
        expect_eq "$img block_size_maximum" "$max" $((32 * M))
    else
        # qemu-nbd has its own choices; they must at least be consistent.
        [ "$min" -ge 1 ] && [ "$min" -le "$prf" ] && [ "$prf" -le "$max" ] ||
            fail "$img: inconsistent block sizes $min/$prf/$max"
    fi
    expect_eq "$img is_read_only" "$(json_get info.json 'e["is_read_only"]')" false
    # Every flag issue 3 advertises: in the JSON, and through --can.
    for flag in flush fua trim zero fast-zero df cache multi-conn; do
        key="can_${flag//-/_}"
        expect_eq "$img $key" "$(json_get info.json "e['$key']")" true
        rc=0
        timeout 30 nbdinfo --can "$flag" "$uri" || rc=$?
        expect_eq "$img nbdinfo --can $flag exit status" "$rc" 0
    done
    rc=0
    timeout 30 nbdinfo --is read-only "$uri" || rc=$?
    expect_eq "$img nbdinfo --is read-only exit status (read-write export)" "$rc" 2
    run 30 nbdinfo --size "$uri"
    expect_eq "$img nbdinfo --size" "$(cat "$tmp/out")" "$size"
    stop_server TERM
    [ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC after SIGTERM"
done

# ---- read-only: --is read-only, writes refused ------------------------------
start_server -r small.qed
uri=$(nbd_uri)
rc=0
timeout 30 nbdinfo --is read-only "$uri" || rc=$?
expect_eq "nbdinfo --is read-only exit status with -r" "$rc" 0
run 30 nbdinfo --json "$uri"
cp "$tmp/out" info.json
expect_eq "is_read_only with -r" "$(json_get info.json 'e["is_read_only"]')" true
for flag in flush df cache; do
    rc=0
    timeout 30 nbdinfo --can "$flag" "$uri" || rc=$?
    expect_eq "nbdinfo --can $flag exit status with -r" "$rc" 0
done
rc=0
timeout 30 qemu-io -f raw -c 'write -P 1 0 4k' "$uri" >qio.out 2>&1 || rc=$?
[ "$rc" -ne 0 ] || grep -q 'write failed' qio.out ||
    { cat qio.out; fail "a write to a read-only export succeeded"; }
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "read-only server exited $SERVER_RC after SIGTERM"

# ---- --list with several exports ---------------------------------------------
qemu-img create -q -f qed one.qed 1M || fail "create one.qed"
qemu-img create -q -f qed two.qed 3M || fail "create two.qed"
if server_multi_export; then
    start_server -D "listed" -e alpha=one.qed -e beta=two.qed
    want='alpha 1048576 listed;beta 3145728 listed'
else
    note "$SERVER_KIND serves one export: --list checks a single named export"
    start_server -D "listed" -x alpha one.qed
    want='alpha 1048576 listed'
fi
run 30 nbdinfo --list --json "$(nbd_uri)"
cp "$tmp/out" list.json
got=$("$PY" -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(";".join(sorted("%s %d %s" % (e["export-name"], e["export-size"], e.get("description"))
                      for e in d["exports"])))' list.json) || fail "bad nbdinfo --list --json output"
expect_eq "nbdinfo --list" "$got" "$want"
# The human-readable form names every export too.
run 30 nbdinfo --list "$(nbd_uri)"
grep -q 'export="alpha"' "$tmp/out" || fail "nbdinfo --list does not show alpha"
if server_multi_export; then
    grep -q 'export="beta"' "$tmp/out" || fail "nbdinfo --list does not show beta"
    # Each export is reachable by its name and has its own size.
    run 30 nbdinfo --size "$(nbd_uri beta)"
    expect_eq "size of export beta" "$(cat "$tmp/out")" 3145728
    run 30 nbdinfo --size "$(nbd_uri alpha)"
    expect_eq "size of export alpha" "$(cat "$tmp/out")" 1048576
    # An unknown name is refused.
    if timeout 30 nbdinfo --size "$(nbd_uri gamma)" >/dev/null 2>&1; then
        fail "nbdinfo reached an export that does not exist"
    fi
fi
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC after SIGTERM"

# ---- --map: base:allocation and qemu:allocation-depth against qemu-img map ---
# check_maps IMAGE SIZE - serve IMAGE read-only and compare both maps.
check_maps() {
    local img=$1 size=$2
    qemu-img map --output=json "$img" >qmap.json 2>qmap.err || { cat qmap.err; fail "qemu-img map $img"; }
    start_server -r "$img"
    run 60 nbdinfo --map --json "$(nbd_uri)"
    cp "$tmp/out" nmap.json
    same_map base nmap.json qmap.json "$size" || fail "$img: nbdinfo --map differs from qemu-img map"
    run 60 nbdinfo --map=qemu:allocation-depth --json "$(nbd_uri)"
    cp "$tmp/out" dmap.json
    same_map depth dmap.json qmap.json "$size" ||
        fail "$img: nbdinfo --map=qemu:allocation-depth differs from qemu-img map"
    # The human-readable form agrees with the JSON one on the totals.
    run 60 nbdinfo --map --totals "$(nbd_uri)"
    "$PY" - nmap.json "$tmp/out" <<'PY' || fail "$img: nbdinfo --map --totals disagrees with --map"
import json, sys
tot = {}
for e in json.load(open(sys.argv[1])):
    tot[e['type']] = tot.get(e['type'], 0) + e['length']
got = {}
for line in open(sys.argv[2]):
    f = line.split()
    if f:
        got[int(f[2])] = int(f[0])
sys.exit(0 if got == tot else 'totals %s, map %s' % (got, tot))
PY
    stop_server TERM
    [ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC after SIGTERM"
}

# Data, partial clusters, zero clusters over holes and over data, holes, the
# last cluster, a fresh image.
qemu-img create -q -f qed plain.qed 16M || fail "create plain.qed"
run 60 qemu-io -c 'write -P 1 512k 64k' -c 'write -z 2M 64k' -c 'write -P 3 6M 4k' \
    -c 'write -P 4 3M 1k' -c 'write -P 5 7M 192k' -c 'write -z 7232k 64k' \
    -c 'write -P 6 16320k 64k' -c 'write -P 7 9M 1M' -c 'write -z 9M 512k' plain.qed
check_maps plain.qed $((16 * M))

qemu-img create -q -f qed fresh.qed 5M || fail "create fresh.qed"
check_maps fresh.qed $((5 * M))

# 4 KiB clusters, 2-cluster tables (4 MiB per L2 table): several L2 tables, odd size.
qemu-img create -q -f qed -o cluster_size=4096,table_size=2 tables.qed $((10 * M + 1536)) ||
    fail "create tables.qed"
run 60 qemu-io -c 'write -P 1 0 8k' -c 'write -P 2 700k 4k' -c 'write -z 2M 1M' \
    -c 'write -P 3 5M 3k' -c 'write -P 4 10M 1536' tables.qed
check_maps tables.qed $((10 * M + 1536))

# A QED backing file of the same size: depths 0 (nowhere), 1 (top), 2 (base).
qemu-img create -q -f qed base.qed 8M || fail "create base.qed"
run 60 qemu-io -c 'write -P 0x0b 0 1M' -c 'write -P 0x0c 4M 128k' -c 'write -z 6M 64k' base.qed
qemu-img create -q -f qed -b base.qed -F qed top.qed 8M || fail "create top.qed"
run 60 qemu-io -c 'write -P 1 512k 64k' -c 'write -z 4M 64k' -c 'write -P 3 7M 4k' top.qed
check_maps top.qed $((8 * M))
echo "ok: $SERVER_KIND"
