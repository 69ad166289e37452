#!/bin/bash
# table1.sh - images with table size 1, which QEMU cannot open: the library
# writes random requests and the same bytes to a raw shadow, then the library
# alone reads the image back (after reopening) and checks it.
. "$(dirname "$0")/interop-common.sh"

MiB=$((1024 * 1024))
n=0
for cs in 4096 65536 2097152; do
    case $cs in
    4096) size=$((6 * MiB)); ops=80 ;;   # 2 MiB per L2 table: three tables
    65536) size=$((96 * MiB)); ops=60 ;;
    *) size=$((256 * MiB)); ops=24 ;;
    esac
    for backing in none raw; do
        n=$((n + 1))
        s=$((seed + n))
        what="cluster $cs table 1 backing $backing (seed $s)"
        rm -f img.qed shadow.raw base.raw
        if [ "$backing" = raw ]; then
            run_ok "$what: mkraw" "$PATTERN" mkraw base.raw $((size - size / 4 - 777)) "$s"
            cp base.raw shadow.raw
            truncate -s "$size" shadow.raw
            run_ok "$what: create" "$PATTERN" create img.qed "$size" "$cs" 1 "$tmp/base.raw" raw
        else
            truncate -s "$size" shadow.raw
            run_ok "$what: create" "$PATTERN" create img.qed "$size" "$cs" 1
        fi
        run_ok "$what: write" "$PATTERN" write img.qed shadow.raw "$s" "$ops"
        run_ok "$what: compare" "$PATTERN" compare img.qed shadow.raw
        grep -q 'Images are identical' "$tmp/out" || fail "$what: compare said: $(cat "$tmp/out")"
        run_ok "$what: check" "$PATTERN" check img.qed
        echo "ok: $what"
    done
done
