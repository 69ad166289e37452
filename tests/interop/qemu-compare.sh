#!/bin/bash
# qemu-compare.sh - the library writes, QEMU judges.
#
# For cluster sizes 4K/64K/2M, table sizes 2/4/16, with no backing file, a
# raw backing file of random content (shorter than the image) and, for one
# geometry, a qed backing file: qed-pattern writes random requests through
# the library and the same bytes to a raw shadow file (which starts as a copy
# of the backing contents).  Then `qemu-img compare` must find the image and
# the shadow identical, and `qemu-img check` must find no error and no leak.
# 4K-cluster images stay under 16 MiB, where qemu-img check counts leaks right.
#
# QEMU computes the maximum image size as N*N*cluster_size in 64 bits, which
# overflows for 2M clusters with table size 16, and then refuses every image
# of that geometry ("QED image size is invalid").  Such images are checked
# against the shadow with the library alone.
. "$(dirname "$0")/interop-common.sh"
need qemu-img

MiB=$((1024 * 1024))
n=0

# qemu_geometry_ok CS TS - can QEMU open this geometry (no overflow)?
qemu_geometry_ok() {
    python3 -c 'import sys; cs, ts = int(sys.argv[1]), int(sys.argv[2]); n = ts * cs // 8
sys.exit(0 if n * n * cs < 2**64 else 1)' "$1" "$2"
}

# compare_case CS TS BACKING(none|raw|qed) SIZE OPS
compare_case() {
    local cs=$1 ts=$2 backing=$3 size=$4 ops=$5 s what
    n=$((n + 1))
    s=$((seed + n))
    what="cluster $cs table $ts backing $backing (seed $s)"
    rm -f img.qed shadow.raw base.raw base.qed base-shadow.raw
    case $backing in
    none)
        truncate -s "$size" shadow.raw
        run_ok "$what: create" "$PATTERN" create img.qed "$size" "$cs" "$ts"
        ;;
    raw)
        # shorter than the image, and not a whole number of clusters
        run_ok "$what: mkraw" "$PATTERN" mkraw base.raw $((size - size / 8 - 1234)) "$s"
        cp base.raw shadow.raw
        truncate -s "$size" shadow.raw
        run_ok "$what: create" "$PATTERN" create img.qed "$size" "$cs" "$ts" "$tmp/base.raw" raw
        ;;
    qed)
        truncate -s "$size" base-shadow.raw
        run_ok "$what: create base" "$PATTERN" create base.qed "$size" "$cs" "$ts"
        run_ok "$what: write base" "$PATTERN" write base.qed base-shadow.raw $((s + 1000)) "$ops"
        cp base-shadow.raw shadow.raw
        run_ok "$what: create" "$PATTERN" create img.qed "$size" "$cs" "$ts" "$tmp/base.qed" qed
        ;;
    esac
    run_ok "$what: write" "$PATTERN" write img.qed shadow.raw "$s" "$ops"
    grep -h 'writes' "$tmp/out"
    if ! qemu_geometry_ok "$cs" "$ts"; then
        run_ok "$what: library compare" "$PATTERN" compare img.qed shadow.raw
        run_ok "$what: library check" "$PATTERN" check img.qed
        echo "ok (library only: QEMU cannot open this geometry): $what"
        return
    fi
    local rc=0
    qemu-img compare -f qed -F raw img.qed shadow.raw >"$tmp/cmp" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ] || ! grep -q 'Images are identical' "$tmp/cmp"; then
        cat "$tmp/cmp" >&2
        fail "$what: qemu-img compare exited $rc"
    fi
    qemu_clean img.qed "$what"
    [ "$backing" = qed ] && qemu_clean base.qed "$what (base)"
    # our own check agrees
    run_ok "$what: library check" "$PATTERN" check img.qed
    echo "ok: $what"
}

for ts in 2 4 16; do
    for backing in none raw; do
        compare_case 4096 "$ts" "$backing" $((12 * MiB)) 60
        compare_case 65536 "$ts" "$backing" $((64 * MiB)) 40
        compare_case 2097152 "$ts" "$backing" $((128 * MiB)) 16
    done
done
compare_case 65536 4 qed $((64 * MiB)) 40
# sizes that are not a whole number of clusters
compare_case 65536 4 raw $((40 * MiB + 1536)) 60
compare_case 4096 2 none $((9 * MiB + 512)) 60
compare_case 4096 2 qed $((8 * MiB)) 60
echo "all $n cases identical and clean"
