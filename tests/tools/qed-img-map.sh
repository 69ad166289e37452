#!/bin/bash
# qed-img map --json prints exactly what `qemu-img map --output=json`
# prints, and the human form exactly what `qemu-img map` prints, for images
# written with qemu-io: data, zero clusters, holes, partial clusters, several
# L2 tables, raw and qed backing files (with holes, and shorter than the
# image), a three-level chain, an empty image.
. "$top_srcdir/tests/tools/tools-common.sh"
need qemu-img qemu-io

# same_map IMG - both map forms of qed-img are identical to qemu-img's.
same_map() {
    qemu-img map --output=json "$1" > q.json 2>q.err || { cat q.err >&2; fail "qemu-img map $1"; }
    expect_rc 0 "$QED_IMG" map --json "$1"
    diff -u q.json "$tmp/out" || fail "map --json of $1 differs from qemu-img (- qemu-img, + qed-img)"
    qemu-img map "$1" > q.txt 2>q.err || { cat q.err >&2; fail "qemu-img map $1"; }
    expect_rc 0 "$QED_IMG" map "$1"
    diff -u q.txt "$tmp/out" || fail "map of $1 differs from qemu-img (- qemu-img, + qed-img)"
    return 0
}

# qio IMG CMD... - run qemu-io write commands on IMG.
qio() {
    local img=$1 args=() c
    shift
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io "${args[@]}" "$img" >/dev/null || fail "qemu-io $img $*"
}

qemu-img create -q -f qed plain.qed 10M
qio plain.qed 'write -P 0xaa 0 100k' 'write -z 1M 128k' 'write -P 1 5M 64k' \
    'write -P 2 5184k 64k' 'write -P 3 9M 4k'
same_map plain.qed

# Untouched image: one hole.
qemu-img create -q -f qed fresh.qed 3M
same_map fresh.qed

# Empty image.
qemu-img create -q -f qed empty.qed 0
same_map empty.qed

# Size not a multiple of the cluster size, data in the last partial cluster.
qemu-img create -q -f qed odd.qed $((10 * 1048576 + 1536))
qio odd.qed 'write -P 7 10M 1536' 'write -z 0 64k'
same_map odd.qed

# 4K clusters, table size 2: 1024 entries per L2 table, 4 MiB per table, so
# these writes use several L2 tables; out-of-order allocation breaks offset
# contiguity, and zero writes over a whole table.
qemu-img create -q -f qed -o cluster_size=4096,table_size=2 small.qed 14M
qio small.qed 'write -P 1 13M 8k' 'write -P 2 0 64k' 'write -P 3 4094k 8k' \
    'write -z 8M 4M' 'write -P 4 64k 4k' 'write -P 5 12k 4k'
same_map small.qed

# Raw backing file with a hole, shorter than the image.
qemu-img create -q -f raw base.raw 4M
qemu-io -f raw -c 'write -P 5 0 1M' -c 'write -P 6 2M 512k' base.raw >/dev/null
qemu-img create -q -f qed -b base.raw -F raw top.qed 8M
qio top.qed 'write -P 1 512k 64k' 'write -z 2M 64k' 'write -P 3 6M 4k' 'write -P 4 3M 1k'
same_map top.qed

# qed backing file (probed format), and a three-level chain ending in raw.
qemu-img create -q -f qed -b base.raw -F raw mid.qed 6M
qio mid.qed 'write -P 8 1M 128k' 'write -z 2M 64k'
qemu-img create -q -f qed -b mid.qed -F qed chain.qed 8M
qio chain.qed 'write -P 9 1088k 64k' 'write -P 10 7M 64k'
same_map mid.qed
same_map chain.qed

# Backing file in another directory, named relative to the image.
mkdir sub
qemu-img create -q -f qed -b ../base.raw -F raw sub/rel.qed 4M
qio sub/rel.qed 'write -P 1 64k 64k'
same_map sub/rel.qed

# An image made by qed-img, written by qemu-io.
expect_rc 0 "$QED_IMG" create -c 16K -t 8 mine.qed 5M
qio mine.qed 'write -P 1 0 20k' 'write -z 1M 32k' 'write -P 2 3M 16k'
same_map mine.qed
echo "ok"
