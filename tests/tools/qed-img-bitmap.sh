#!/bin/bash
# qed-img bitmap and the bitmaps in qed-img info (issue 15): every action
# (--add with -g and --disabled, --remove, --clear, --enable, --disable,
# --merge from the same image and from an overlay with -b), several actions
# in one call applied in order, the errors (naming the file and the bitmap,
# changing nothing, or stopping at the first failure as qemu-img does), the
# info text and JSON, persistence across calls and across a server that
# wrote the image, QEMU writing the image making every bitmap inconsistent
# ("in-use"), and qemu-img check staying clean throughout.
. "$top_srcdir/tests/tools/tools-common.sh"
need qemu-img qemu-io python3
QEDNBD="$top_builddir/server/qednbd"
[ -x "$QEDNBD" ] || fail "$QEDNBD is not built"
NBD_PY=/usr/bin/python3
"$NBD_PY" -c 'import nbd' 2>/dev/null || skip "no python3 with the libnbd bindings (python3-libnbd)"

# bitmaps IMG - one line per bitmap from info -U --json (-U: also while a
# server holds the image), sorted by name:
# NAME GRANULARITY FLAGS DIRTY (FLAGS joined with "+", "-" when none; DIRTY
# "-" when not shown).
bitmaps() {
    expect_rc 0 "$QED_IMG" info -U --json "$1"
    python3 - "$tmp/out" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
fs = j.get("format-specific")
if fs is None:
    sys.exit(0)
assert fs["type"] == "qed", fs
for b in sorted(fs["data"]["bitmaps"], key=lambda b: b["name"]):
    print(b["name"], b["granularity"], "+".join(b["flags"]) or "-", b.get("dirty-bytes", "-"))
PY
}

# expect_bitmaps IMG EXPECTED - the bitmaps listed as `bitmaps` prints them.
expect_bitmaps() {
    local got
    got=$(bitmaps "$1") || fail "info --json $1"
    [ "$got" = "$2" ] || fail "$1: bitmaps are
$got
expected
$2"
}

# nbd_write IMG OFFSET LENGTH... - write 0x5a over each OFFSET LENGTH pair
# through qednbd (which records the writes in the enabled bitmaps); the
# server exits, closing the image, before this returns.
nbd_write() {
    local img=$1
    shift
    "$NBD_PY" - "$QEDNBD" "$img" "$@" <<'PY' || fail "writing $img through qednbd"
import nbd, sys
h = nbd.NBD()
h.connect_command([sys.argv[1], "-s", sys.argv[2]])
args = [int(a, 0) for a in sys.argv[3:]]
for off, length in zip(args[0::2], args[1::2]):
    h.pwrite(b"\x5a" * length, off)
h.flush()
h.shutdown()
del h  # closes the handle: waits for the server to exit
PY
}

check_clean() {
    expect_rc 0 qemu-img check -f qed "$1"
    expect_rc 0 "$QED_IMG" check "$1"
}

K=1024
M=$((1024 * 1024))

# ---- No bitmaps: no format-specific part, as qemu-img for qed ----------------
expect_rc 0 "$QED_IMG" create a.qed 64M
expect_rc 0 "$QED_IMG" info a.qed
grep -q "Format specific" "$tmp/out" && fail "info shows bitmaps of an image without any"
expect_bitmaps a.qed ""

# The library must store bitmaps (issue 15's persistence); skip, saying so,
# only when it genuinely does not.
expect_rc 0 "$QED_IMG" create probe.qed 1M
expect_rc 0 "$QED_IMG" bitmap --add probe.qed p
[ -n "$(bitmaps probe.qed)" ] || skip "libqed does not store dirty bitmaps yet (qed-img bitmap --add left none)"

# ---- --add, -g with suffixes, --disabled; each call persists -------------------
expect_rc 0 "$QED_IMG" bitmap --add a.qed b0
expect_rc 0 "$QED_IMG" bitmap --add -g 128K --disabled a.qed b1
expect_rc 0 "$QED_IMG" bitmap --add --granularity=4096 a.qed b2
expect_bitmaps a.qed "b0 65536 auto 0
b1 131072 - 0
b2 4096 auto 0"
expect_rc 0 "$QED_IMG" info a.qed
expect_grep "$tmp/out" "Format specific information:
    bitmaps:
        [0]:
            flags:
                [0]: auto
            name: b0
            granularity: 65536
            dirty bytes: 0
        [1]:
            flags:
            name: b1
            granularity: 131072
            dirty bytes: 0"
check_clean a.qed
# QEMU opens the image read-only and does not touch the bitmaps.
expect_rc 0 qemu-img info -f qed a.qed
expect_rc 0 qemu-io -r -f qed -c 'read 0 64k' a.qed
expect_bitmaps a.qed "b0 65536 auto 0
b1 131072 - 0
b2 4096 auto 0"

# ---- Writes through qednbd mark the enabled bitmaps, at their granularity -----
nbd_write a.qed $((1 * M)) 4096 $((3 * M + 60 * K)) 8192
# b0: [1M, 1M+64K) and [3M, 3M+128K) (the 8K straddles 3M+64K); b2: 4K + 8K.
expect_bitmaps a.qed "b0 65536 auto $((3 * 64 * K))
b1 131072 - 0
b2 4096 auto $((12 * K))"
check_clean a.qed

# ---- Several actions in one call, in order ------------------------------------
# --clear then --disable: b2 ends clean and disabled; --enable on b1.
expect_rc 0 "$QED_IMG" bitmap --clear --disable a.qed b2
expect_rc 0 "$QED_IMG" bitmap --enable a.qed b1
# --merge, --remove, then --add again with another granularity: a fresh,
# empty b3 (in another order the --add would fail or b3 would be dirty).
expect_rc 0 "$QED_IMG" bitmap --add a.qed b3
expect_rc 0 "$QED_IMG" bitmap --merge b0 --remove --add -g 1M a.qed b3
expect_bitmaps a.qed "b0 65536 auto $((3 * 64 * K))
b1 131072 auto 0
b2 4096 - 0
b3 1048576 auto 0"
# --add then --merge SOURCE: b4 (1M) takes b0's dirty ranges, widened to 1M bits.
expect_rc 0 "$QED_IMG" bitmap --add -g 1M --merge b0 a.qed b4
# --add then --remove: nothing left.  --disable then --enable: enabled.
expect_rc 0 "$QED_IMG" bitmap --add --remove a.qed gone
expect_rc 0 "$QED_IMG" bitmap --disable --enable a.qed b3
expect_bitmaps a.qed "b0 65536 auto $((3 * 64 * K))
b1 131072 auto 0
b2 4096 - 0
b3 1048576 auto 0
b4 1048576 auto $((2 * M))"
# A disabled bitmap records nothing; the others do.
nbd_write a.qed $((10 * M)) 512
expect_bitmaps a.qed "b0 65536 auto $((4 * 64 * K))
b1 131072 auto 131072
b2 4096 - 0
b3 1048576 auto 1048576
b4 1048576 auto $((3 * M))"
check_clean a.qed

# ---- --merge from another file: an overlay whose backing file is FILE ---------
expect_rc 0 "$QED_IMG" create -b a.qed -F qed top.qed
expect_rc 0 "$QED_IMG" bitmap --add -g 64K top.qed t
nbd_write top.qed $((20 * M)) $((128 * K))
# The overlay's backing file is a.qed itself: it must be closed before a.qed
# is opened read-write, and the merge still works.
expect_rc 0 "$QED_IMG" bitmap --add --merge t -b top.qed -F qed a.qed fromtop
expect_bitmaps a.qed "b0 65536 auto $((4 * 64 * K))
b1 131072 auto 131072
b2 4096 - 0
b3 1048576 auto 1048576
b4 1048576 auto $((3 * M))
fromtop 65536 auto $((128 * K))"
expect_bitmaps top.qed "t 65536 auto $((128 * K))"
# Merging into an existing bitmap ORs (b2 is 4K: the 128K is exact).
expect_rc 0 "$QED_IMG" bitmap --merge t -b top.qed a.qed b2
expect_bitmaps a.qed "b0 65536 auto $((4 * 64 * K))
b1 131072 auto 131072
b2 4096 - $((128 * K))
b3 1048576 auto 1048576
b4 1048576 auto $((3 * M))
fromtop 65536 auto $((128 * K))"
check_clean a.qed
check_clean top.qed

# ---- Errors: the file and the bitmap named, exit 1 -----------------------------
# "Unchanged" is the bitmaps as info lists them (a read-write open and close
# may rewrite the header area without changing what it says).
keep=$(bitmaps a.qed)
unchanged() { [ "$(bitmaps a.qed)" = "$keep" ] || fail "a refused '$*' changed a.qed's bitmaps"; }
bad() {
    local what=$1
    shift
    expect_rc 1 "$QED_IMG" bitmap "$@"
    expect_grep "$tmp/err" "$what"
    unchanged "$@"
}
bad "a.qed: cannot add bitmap 'b0': a bitmap of that name exists" --add a.qed b0
bad "a.qed: cannot remove bitmap 'nope': no such bitmap" --remove a.qed nope
bad "a.qed: cannot clear bitmap 'nope': no such bitmap" --clear a.qed nope
bad "a.qed: cannot enable bitmap 'nope'" --enable a.qed nope
bad "a.qed: cannot disable bitmap 'nope'" --disable a.qed nope
bad "a.qed: cannot merge into bitmap 'nope': no such bitmap" --merge b0 a.qed nope
bad "bitmap 'nope' of a.qed into 'b0': no such bitmap" --merge nope a.qed b0
bad "top.qed: cannot read bitmap 'nope'" --merge nope -b top.qed a.qed b0
bad "at least one of --add" a.qed b0
bad "-g (granularity) is only used with --add" --clear -g 64K a.qed b0
bad "--disabled is only used with --add" --clear --disabled a.qed b0
bad "-F is only used with -b" --merge b0 -F qed a.qed b1
bad "-b (merge source file) is only used with --merge" --clear -b top.qed a.qed b0
bad "-F raw: only qed images have bitmaps" --merge t -b top.qed -F raw a.qed b0
bad "usage: bitmap" --add a.qed
bad "usage: bitmap" --add a.qed x y
bad "invalid bitmap name 'with space'" --add a.qed "with space"
bad "invalid bitmap name 'q\"'" --add a.qed 'q"'
bad "invalid bitmap name ''" --add a.qed ""
long=$(printf 'n%.0s' $(seq 256))
bad "invalid bitmap name" --add a.qed "$long"
for g in 100 3K 256 4G 12Q; do
    bad "granularity '$g'" --add -g "$g" a.qed x
done
expect_rc 1 "$QED_IMG" bitmap --add missing.qed b
expect_grep "$tmp/err" "missing.qed"
# A name of 255 characters is fine.
expect_rc 0 "$QED_IMG" bitmap --add --remove a.qed "${long:1}"
unchanged "--add --remove"
expect_rc 0 "$QED_IMG" bitmap --add a.qed "${long:1}"
bitmaps a.qed | grep -q "^${long:1} 65536 auto 0\$" || fail "no bitmap with a 255-character name"
expect_rc 0 "$QED_IMG" bitmap --remove a.qed "${long:1}"
unchanged "--add; --remove"
# Different virtual sizes.
expect_rc 0 "$QED_IMG" create small.qed 32M
expect_rc 0 "$QED_IMG" bitmap --add small.qed s
bad "different virtual sizes" --merge s -b small.qed a.qed b0
# The first failing action stops the command; those before it stay done.
expect_rc 1 "$QED_IMG" bitmap --add --add a.qed c
expect_grep "$tmp/err" "cannot add bitmap 'c'"
bitmaps a.qed | grep -q '^c 65536 auto 0$' || fail "the --add before the failure was lost"
expect_rc 1 "$QED_IMG" bitmap --remove --clear a.qed c
expect_grep "$tmp/err" "cannot clear bitmap 'c': no such bitmap"
bitmaps a.qed | grep -q '^c ' && fail "the --remove before the failure was lost"
# A missing merge source in another file changes nothing at all.
keep=$(bitmaps a.qed)
bad "top.qed: cannot read bitmap 'nope'" --add --merge nope -b top.qed a.qed d
# The image in use: refused (the lock), unchanged.
"$QEDNBD" -u "$tmp/s.sock" a.qed 2>"$tmp/server.err" &
srv=$!
trap 'kill -9 $srv 2>/dev/null; rm -rf "$tmp"' EXIT
for i in $(seq 300); do
    [ -S "$tmp/s.sock" ] && break
    kill -0 $srv 2>/dev/null || fail "qednbd died: $(cat "$tmp/server.err")"
    sleep 0.05
done
[ -S "$tmp/s.sock" ] || fail "qednbd did not listen"
expect_rc 1 "$QED_IMG" bitmap --add a.qed busy
expect_grep "$tmp/err" "lock"
# While a writer has it, its bitmaps are in use on disk: info -U says so.
bitmaps a.qed | grep -q '^b0 65536 in-use+auto -$' || fail "served: b0 not shown in use"
kill -TERM $srv
wait $srv
unchanged "--add a.qed busy (locked)"
trap 'rm -rf "$tmp"' EXIT
check_clean a.qed

# ---- The limit: QED_BITMAP_MAX (64) bitmaps ------------------------------------
expect_rc 0 "$QED_IMG" create many.qed 1M
expect_rc 0 "$QED_IMG" bitmap --add --remove many.qed x
for i in $(seq 64); do
    "$QED_IMG" bitmap --add many.qed "m$i" || fail "adding bitmap m$i"
done
expect_rc 1 "$QED_IMG" bitmap --add many.qed m65
expect_grep "$tmp/err" "many.qed: cannot add bitmap 'm65': the image already has the most"
[ "$(bitmaps many.qed | wc -l)" = 64 ] || fail "many.qed should have 64 bitmaps"
check_clean many.qed

# ---- QEMU writing the image makes every bitmap inconsistent ("in-use") ---------
expect_rc 0 qemu-io -f qed -c 'write -P 1 30M 4k' a.qed
expect_bitmaps a.qed "b0 65536 in-use+auto -
b1 131072 in-use+auto -
b2 4096 in-use -
b3 1048576 in-use+auto -
b4 1048576 in-use+auto -
fromtop 65536 in-use+auto -"
expect_rc 0 "$QED_IMG" info a.qed
expect_grep "$tmp/out" "        [0]:
            flags:
                [0]: in-use
                [1]: auto
            name: b0
            granularity: 65536
        [1]:"
check_clean a.qed
# Only --remove is allowed on an inconsistent bitmap; merging from one is refused.
for act in --clear --enable --disable "--merge b1"; do
    # shellcheck disable=SC2086
    expect_rc 1 "$QED_IMG" bitmap $act a.qed b0
    expect_grep "$tmp/err" "'b0'"
    expect_grep "$tmp/err" "inconsistent"
done
expect_rc 1 "$QED_IMG" bitmap --merge b0 a.qed b1
expect_grep "$tmp/err" "inconsistent"
expect_rc 1 "$QED_IMG" bitmap --add --merge fromtop -b a.qed top.qed x
expect_grep "$tmp/err" "a.qed: cannot read bitmap 'fromtop' to merge it: the bitmap is inconsistent"
# --remove, then --add again: consistent and recording.
expect_rc 0 "$QED_IMG" bitmap --remove --add a.qed b0
expect_bitmaps a.qed "b0 65536 auto 0
b1 131072 in-use+auto -
b2 4096 in-use -
b3 1048576 in-use+auto -
b4 1048576 in-use+auto -
fromtop 65536 in-use+auto -"
nbd_write a.qed 0 512
bitmaps a.qed | grep -q '^b0 65536 auto 65536$' || fail "the new b0 does not record writes"
check_clean a.qed
exit 0
