#!/bin/bash
# qed-img check -r: invalid table entries are repaired (qemu-img's wording),
# the image then checks clean with qemu-img too, the good data survives, the
# repaired cluster reads as zeros, and NEED_CHECK is cleared.  Before the
# repair, an image marked clean with such entries is refused by other
# read-write commands, untouched.
. "$top_srcdir/tests/tools/tools-common.sh"
need qemu-img qemu-io python3

qemu-img create -q -f qed base.qed 8M || fail "qemu-img create"
qemu-io -c 'write -P 1 0 64k' -c 'write -P 2 1M 64k' base.qed >/dev/null || fail "qemu-io"

# verify_good IMG - the undamaged data is intact and [192K, 256K) reads as zeros.
verify_good() {
    local out
    out=$(qemu-io -r -c 'read -P 1 0 64k' -c 'read -P 2 1M 64k' -c 'read -P 0 192k 64k' "$1") \
        || fail "qemu-io read of $1 failed: $out"
    grep -qi 'fail\|error' <<<"$out" && fail "data of $1 after repair: $out"
    return 0
}

for kind in pastend misaligned; do
    img=$kind.qed
    cp base.qed "$img"
    case $kind in
        pastend) set_l2_entry "$img" 0x30000 0x7770000 ;;
        misaligned) set_l2_entry "$img" 0x30000 0x50200 ;;
    esac
    expect_rc 2 "$QED_IMG" check "$img"
    # Without -r nothing is written.
    cmp -s "$img" base.qed && fail "damage not applied to $img"
    cp "$img" before.qed
    expect_rc 2 "$QED_IMG" check "$img"
    cmp -s "$img" before.qed || fail "check without -r modified $img"
    # Marked clean, yet damaged: another read-write command is refused, names
    # the file, the count and the repair, and writes nothing.
    expect_rc 1 "$QED_IMG" resize "$img" +1M
    expect_grep "$tmp/err" "$img: 1 invalid table entry"
    expect_grep "$tmp/err" "qed-img check -r $img"
    cmp -s "$img" before.qed || fail "a refused resize modified $img"

    expect_rc 0 "$QED_IMG" check -r "$img"
    expect_grep "$tmp/out" "The following inconsistencies were found and repaired:"
    expect_grep "$tmp/out" "    0 leaked clusters"
    expect_grep "$tmp/out" "    1 corruptions"
    expect_grep "$tmp/out" "Double checking the fixed image now..."
    expect_grep "$tmp/out" "No errors were found on the image."
    expect_rc 0 "$QED_IMG" check "$img"
    expect_rc 0 qemu-img check "$img"
    verify_good "$img"
done

# qemu-img's spelling "-r all" works too.
cp base.qed all.qed
set_l2_entry all.qed 0x30000 0x7770000
expect_rc 0 "$QED_IMG" check -r all all.qed
expect_grep "$tmp/out" "1 corruptions"
expect_rc 0 qemu-img check all.qed

# A NEED_CHECK image with a corrupt entry: check without -r reports it
# (and leaves the flag), check -r repairs it and clears the flag.
cp base.qed dirty.qed
set_l2_entry dirty.qed 0x30000 0x7770000
set_features dirty.qed 0x2
expect_rc 2 "$QED_IMG" check dirty.qed
[ "$(qed_header dirty.qed features)" = 2 ] || fail "check without -r changed the features"
expect_rc 0 "$QED_IMG" check -r dirty.qed
expect_grep "$tmp/out" "1 corruptions"
expect_grep "$tmp/out" "No errors were found on the image."
[ $(( $(qed_header dirty.qed features) & 2 )) -eq 0 ] || fail "check -r left NEED_CHECK set"
expect_rc 0 qemu-img check dirty.qed
verify_good dirty.qed

# A clean image marked NEED_CHECK: -r just clears the flag.
cp base.qed flag.qed
set_features flag.qed 0x2
expect_rc 0 "$QED_IMG" check -r flag.qed
expect_grep "$tmp/out" "No errors were found on the image."
[ "$(qed_header flag.qed features)" = 0 ] || fail "check -r left NEED_CHECK on a clean image"

# Leaks: QED has no free list, so a repair may either leave them (exit 3,
# like qemu-img) or reclaim them (exit 0, and then qemu-img agrees).
cp base.qed leak.qed
truncate -s +131072 leak.qed
rc=0
"$QED_IMG" check -r leak.qed > out.txt 2>&1 || rc=$?
case $rc in
    3) expect_grep out.txt "2 leaked clusters were found on the image." ;;
    0) expect_grep out.txt "2 leaked clusters"
       expect_grep out.txt "No errors were found on the image."
       expect_rc 0 qemu-img check leak.qed ;;
    *) cat out.txt >&2; fail "check -r on leaks exited $rc" ;;
esac
verify_good leak.qed

# -r needs write access: a read-only file fails the check (1).
cp base.qed ro.qed
set_l2_entry ro.qed 0x30000 0x7770000
chmod 0444 ro.qed
if [ "$(id -u)" != 0 ]; then
    expect_rc 1 "$QED_IMG" check -r ro.qed
fi
expect_rc 1 "$QED_IMG" check -r -U ro.qed
echo "ok"
