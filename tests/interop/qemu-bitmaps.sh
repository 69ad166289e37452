#!/bin/bash
# qemu-bitmaps.sh - QEMU and images with dirty bitmaps (issue 15).
#
# qemu-img creates the image (header_size 1) and qemu-io writes data right
# after the L1 table, so that adding bitmaps grows the header area over the
# L1 table, an L2 table and data clusters.  Then: qemu-img check is clean
# and reports no leak; qemu-img info and a read-only qemu-io open it and
# read every byte as before; our bitmaps recorded our writes; and a
# read-write qemu-io open (a write) clears QED_AF_BITMAPS, so our next open
# finds every bitmap inconsistent, while QEMU's check stays clean.
. "$(dirname "$0")/interop-common.sh"
need qemu-img qemu-io
BM="$top_builddir/tests/interop/qed-bitmaps"
[ -x "$BM" ] || fail "$BM is not built"

for cs in 65536 4096; do
    what="cluster $cs"
    rm -f img.qed want.raw got.raw
    run_ok "$what: create" qemu-img create -f qed -o cluster_size=$cs,table_size=4 img.qed 1G
    run_ok "$what: qemu-io writes" qemu-io -f qed \
        -c "write -P 0x41 0 $((3 * cs))" -c "write -P 0x42 $((512 * 1024 * 1024)) $cs" \
        -c "write -z $((8 * cs)) $cs" img.qed
    qemu_clean img.qed "$what: before"
    l1_0=$(od -An -t u8 -j 40 -N 8 img.qed | tr -d ' ')

    # 512-byte granules over 1 GiB: 256 KiB of bits, so the area grows.
    run_ok "$what: add b512" "$BM" add img.qed b512 512
    run_ok "$what: add b64k" "$BM" add img.qed b64k 65536
    run_ok "$what: our write" "$BM" write img.qed $((100 * 1024 * 1024)) 4096 0x43
    run_ok "$what: show" "$BM" show img.qed
    grep -q "^bitmap b512 512 enabled consistent 4096$" "$tmp/out" ||
        { cat "$tmp/out"; fail "$what: b512 did not record the write"; }
    grep -q "^dirty b64k $((100 * 1024 * 1024)) 65536$" "$tmp/out" ||
        { cat "$tmp/out"; fail "$what: b64k did not record the write"; }

    hs=$(od -An -t u4 -j 12 -N 4 img.qed | tr -d ' ')
    l1=$(od -An -t u8 -j 40 -N 8 img.qed | tr -d ' ')
    [ "$hs" -gt 1 ] && [ "$l1" -ne "$l1_0" ] ||
        fail "$what: the header area did not grow over the L1 table (header_size $hs, L1 $l1_0 -> $l1)"
    qemu_clean img.qed "$what: with bitmaps (after growing the header area)"
    run_ok "$what: qemu-img info" qemu-img info -f qed img.qed
    run_ok "$what: qemu-io read" qemu-io -r -f qed -c "read -P 0x41 0 $((3 * cs))" \
        -c "read -P 0x42 $((512 * 1024 * 1024)) $cs" -c "read -P 0 $((8 * cs)) $cs" \
        -c "read -P 0x43 $((100 * 1024 * 1024)) 4096" img.qed
    grep -qi "fail\|error\|mismatch" "$tmp/out" && { cat "$tmp/out"; fail "$what: qemu-io read"; }
    run_ok "$what: our check" "$PATTERN" check img.qed

    # QEMU writes: the bitmaps must not be trusted any more.
    run_ok "$what: qemu-io write" qemu-io -f qed -c "write -P 0x44 $((200 * 1024 * 1024)) 4096" img.qed
    run_ok "$what: show after QEMU" "$BM" show img.qed
    [ "$(grep -c '^bitmap .* inconsistent ' "$tmp/out")" -eq 2 ] ||
        { cat "$tmp/out"; fail "$what: QEMU's write left a bitmap consistent"; }
    qemu_clean img.qed "$what: after QEMU's write"
    # Our read-write open keeps them inconsistent, and QEMU still reads it.
    run_ok "$what: our write after QEMU" "$BM" write img.qed 0 512 0x45
    run_ok "$what: show again" "$BM" show img.qed
    [ "$(grep -c '^bitmap .* inconsistent ' "$tmp/out")" -eq 2 ] ||
        { cat "$tmp/out"; fail "$what: an inconsistent bitmap came back"; }
    qemu_clean img.qed "$what: at the end"
    run_ok "$what: qemu-io read at the end" qemu-io -r -f qed -c "read -P 0x44 $((200 * 1024 * 1024)) 4096" \
        -c "read -P 0x45 0 512" img.qed
    grep -qi "fail\|error\|mismatch" "$tmp/out" && { cat "$tmp/out"; fail "$what: final read"; }
    echo "$what: ok (header_size $hs, L1 table moved from $l1_0 to $l1)"
done
echo "qemu-bitmaps: all cases passed"
