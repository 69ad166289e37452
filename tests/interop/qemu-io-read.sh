#!/bin/bash
# qemu-io-read.sh - QEMU writes, the library reads.
#
# qemu-img creates QED images (several cluster and table sizes; no backing,
# a raw backing file, a qed backing file made by qemu-img too); qemu-io
# writes patterns into them: whole and partial clusters, writes across
# cluster and L2-table boundaries, write -z (aligned: zero clusters;
# unaligned, over data, over backing), writes into former zero clusters, the
# last bytes of the image.  The library must read back exactly what
# `qemu-img convert -O raw` produces, and its check must find the image clean.
. "$(dirname "$0")/interop-common.sh"
need qemu-img qemu-io

MiB=$((1024 * 1024))
n=0

# read_case CS TS BACKING(none|raw|qed) SIZE
read_case() {
    local cs=$1 ts=$2 backing=$3 size=$4
    local cov=$((ts * cs / 8 * cs)) what
    n=$((n + 1))
    what="qemu-made image, cluster $cs table $ts backing $backing"
    rm -f img.qed base.raw base.qed want.raw got.raw
    case $backing in
    none)
        run_ok "$what: create" qemu-img create -f qed -o cluster_size=$cs,table_size=$ts img.qed "$size"
        ;;
    raw)
        run_ok "$what: mkraw" "$PATTERN" mkraw base.raw $((size - size / 8 - 1234)) $((seed + n))
        run_ok "$what: create" qemu-img create -f qed -o cluster_size=$cs,table_size=$ts \
            -b "$tmp/base.raw" -F raw img.qed "$size"
        ;;
    qed)
        run_ok "$what: create base" qemu-img create -f qed -o cluster_size=$cs,table_size=$ts base.qed "$size"
        qemu_write base.qed qed "$cs" "$cov" "$size" 0x80
        run_ok "$what: create" qemu-img create -f qed -o cluster_size=$cs,table_size=$ts \
            -b "$tmp/base.qed" -F qed img.qed "$size"
        ;;
    esac
    qemu_write img.qed qed "$cs" "$cov" "$size" 0
    # partial writes into clusters the first pass made zero clusters
    run_ok "$what: qemu-io" qemu-io -f qed -c "write -P 0x99 $((5 * cs + 3000)) 100" \
        -c "write -P 0x9a $((9 * cs + 10)) 10" img.qed
    run_ok "$what: convert" qemu-img convert -f qed -O raw img.qed want.raw
    run_ok "$what: library read" "$PATTERN" read img.qed got.raw
    if ! cmp want.raw got.raw >"$tmp/cmp" 2>&1; then
        cat "$tmp/cmp" >&2
        fail "$what: the library reads different bytes than qemu-img convert"
    fi
    run_ok "$what: library compare" "$PATTERN" compare img.qed want.raw
    run_ok "$what: library check" "$PATTERN" check img.qed
    echo "ok: $what"
}

for backing in none raw qed; do
    read_case 4096 2 "$backing" $((12 * MiB))
    read_case 4096 16 "$backing" $((40 * MiB))
    read_case 65536 4 "$backing" $((64 * MiB))
    read_case 65536 16 "$backing" $((64 * MiB))
    read_case 2097152 2 "$backing" $((128 * MiB))
done
# sizes that are not a whole number of clusters
read_case 4096 2 raw $((9 * MiB + 1536))
read_case 65536 4 qed $((64 * MiB - 512))
echo "all $n cases read back exactly"
