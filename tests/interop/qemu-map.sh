#!/bin/bash
# qemu-map.sh - the library's block status agrees with `qemu-img map`.
#
# For images made by qemu-img/qemu-io and images written by the library
# (no backing, raw backing, qed backing chains), `qed-pattern map` (the
# library's qed_block_status, printed in qemu-img's JSON shape) must
# describe the same extents as `qemu-img map --output=json`: start, length,
# depth, present, zero, data and offset, after merging adjacent extents that
# only differ in where they were cut.
. "$(dirname "$0")/interop-common.sh"
need qemu-img qemu-io python3

MiB=$((1024 * 1024))
n=0

# map_compare IMG WHAT
map_compare() {
    local img=$1 what=$2
    run_ok "$what: qemu-img map" qemu-img map -f qed --output=json "$img"
    cp "$tmp/out" qemu.json
    run_ok "$what: library map" "$PATTERN" map "$img"
    cp "$tmp/out" lib.json
    python3 - qemu.json lib.json "$what" <<'PY' || fail "$what: maps differ"
import json, sys

KEYS = ("depth", "present", "zero", "data")

def norm(path):
    out = []
    for e in json.load(open(path)):
        e = {k: e.get(k) for k in ("start", "length") + KEYS + ("offset",)}
        if out:
            p = out[-1]
            same = all(p[k] == e[k] for k in KEYS)
            cont = p["start"] + p["length"] == e["start"]
            offs = (p["offset"] is None and e["offset"] is None) or (
                p["offset"] is not None and e["offset"] is not None
                and p["offset"] + p["length"] == e["offset"])
            if same and cont and offs:
                p["length"] += e["length"]
                continue
        out.append(e)
    return out

q, l = norm(sys.argv[1]), norm(sys.argv[2])
if q != l:
    print("%s: qemu-img map and the library disagree" % sys.argv[3])
    for i in range(max(len(q), len(l))):
        a = q[i] if i < len(q) else None
        b = l[i] if i < len(l) else None
        mark = "  " if a == b else "!="
        print("%s qemu %s\n   lib  %s" % (mark, a, b))
    sys.exit(1)
print("%s: %d extents agree" % (sys.argv[3], len(q)))
PY
}

# images made by QEMU
for backing in none raw qed; do
    for geo in "4096 2 $((12 * MiB))" "65536 4 $((64 * MiB))"; do
        set -- $geo
        cs=$1 ts=$2 size=$3 cov=$(($2 * $1 / 8 * $1))
        n=$((n + 1))
        what="qemu-made, cluster $cs table $ts backing $backing"
        rm -f img.qed base.raw base.qed
        case $backing in
        none)
            run_ok "$what: create" qemu-img create -f qed -o cluster_size=$cs,table_size=$ts img.qed "$size" ;;
        raw)
            run_ok "$what: mkraw" "$PATTERN" mkraw base.raw $((size / 2 + 4096 * 3)) $((seed + n))
            # a hole in the middle of the backing file
            run_ok "$what: punch" qemu-io -f raw -c "write -z $((size / 8)) $((size / 8))" base.raw
            run_ok "$what: create" qemu-img create -f qed -o cluster_size=$cs,table_size=$ts \
                -b "$tmp/base.raw" -F raw img.qed "$size" ;;
        qed)
            run_ok "$what: create base" qemu-img create -f qed -o cluster_size=$cs,table_size=$ts base.qed "$size"
            qemu_write base.qed qed "$cs" "$cov" "$size" 0x80
            run_ok "$what: create" qemu-img create -f qed -o cluster_size=$cs,table_size=$ts \
                -b "$tmp/base.qed" -F qed img.qed "$size" ;;
        esac
        qemu_write img.qed qed "$cs" "$cov" "$size" 0
        map_compare img.qed "$what"
    done
done

# a qed backing file smaller than the image, and an odd image size
n=$((n + 1))
what="qemu-made chain, backing smaller than the image"
rm -f img.qed base.qed
run_ok "$what: create base" qemu-img create -f qed -o cluster_size=4096,table_size=2 base.qed $((5 * MiB))
qemu_write base.qed qed 4096 $((4 * MiB)) $((5 * MiB)) 0x80
run_ok "$what: create" qemu-img create -f qed -o cluster_size=4096,table_size=2 \
    -b "$tmp/base.qed" -F qed img.qed $((11 * MiB + 1536))
qemu_write img.qed qed 4096 $((4 * MiB)) $((11 * MiB + 1536)) 0
map_compare img.qed "$what"

# images written by the library
for backing in none raw qed; do
    for geo in "4096 4 $((12 * MiB))" "65536 2 $((64 * MiB))"; do
        set -- $geo
        cs=$1 ts=$2 size=$3
        n=$((n + 1))
        what="library-made, cluster $cs table $ts backing $backing (seed $((seed + n)))"
        rm -f img.qed base.raw base.qed shadow.raw
        truncate -s "$size" shadow.raw
        case $backing in
        none)
            run_ok "$what: create" "$PATTERN" create img.qed "$size" "$cs" "$ts" ;;
        raw)
            run_ok "$what: mkraw" "$PATTERN" mkraw base.raw $((size * 3 / 4 + 1000)) $((seed + n))
            run_ok "$what: create" "$PATTERN" create img.qed "$size" "$cs" "$ts" "$tmp/base.raw" raw ;;
        qed)
            run_ok "$what: create base" "$PATTERN" create base.qed "$size" "$cs" "$ts"
            run_ok "$what: write base" "$PATTERN" write base.qed shadow.raw $((seed + n + 500)) 40
            run_ok "$what: create" "$PATTERN" create img.qed "$size" "$cs" "$ts" "$tmp/base.qed" qed ;;
        esac
        # shadow contents do not matter here: only the layout is compared
        [ "$backing" = raw ] && { cp base.raw shadow.raw; truncate -s "$size" shadow.raw; }
        run_ok "$what: write" "$PATTERN" write img.qed shadow.raw $((seed + n)) 40
        map_compare img.qed "$what"
    done
done
echo "all $n maps agree"
