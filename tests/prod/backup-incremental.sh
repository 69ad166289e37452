#!/bin/bash
# The incremental backup example (contrib/backup/qed-backup.sh, issue 15)
# end to end, against a live qednbd writer: random writes, a full backup,
# more writes, two incremental backups that copy exactly the 64K granules
# the writes touched (read from the bitmap over NBD), restores of each
# backup (raw and QED) equal byte for byte (cmp) to the disk as it was
# frozen; then a kill -9 of the writer leaves the bitmap inconsistent
# ("in-use"), the next incremental backup falls back to a full one and says
# so, and is again equal byte for byte; the one after is incremental again.
# qemu-img check stays clean on the disk and every backup.
. "$top_srcdir/tests/prod/prod-common.sh"
need nbdcopy nbdinfo qemu-img
need_nbd_python

BACKUP="$top_srcdir/contrib/backup/qed-backup.sh"
export QEDNBD QED_IMG="$QEDIMG" PYTHON="$NBD_PYTHON" QED_BACKUP_STOP_TIMEOUT=30
G=$((64 * 1024))
SIZE=$((64 * 1024 * 1024))

# ---- Skip only when the features the example needs are missing ----------------
run 30 "$QEDIMG" create probe.qed 1M
run 30 "$QEDIMG" bitmap --add probe.qed p
run 30 "$QEDIMG" info --json probe.qed
grep -q '"p"' "$tmp/out" || skip "libqed does not store dirty bitmaps yet"
prod_start "$tmp/probe.sock" -r probe.qed
nbdinfo --map=qemu:dirty-bitmap:p "nbd+unix:///?socket=$tmp/probe.sock" >/dev/null 2>&1 ||
    skip "qednbd does not offer the qemu:dirty-bitmap: meta context yet"
stop_server TERM

# ---- Helpers ---------------------------------------------------------------

# backup ARGS... - run the example; its messages go to $tmp/err.
backup() {
    timeout -k 5 300 bash "$BACKUP" "$@" >"$tmp/out" 2>"$tmp/err" ||
        { cat "$tmp/out" "$tmp/err" >&2; fail "qed-backup.sh $* failed"; }
    cat "$tmp/err"
    if [ "$1" = start ] || [ "$1" = full ] || [ "$1" = incremental ]; then
        track_daemon "$(cat vm.pid)"
    fi
}

# writes SEED N - N random writes, write-zeroes and trims through the
# writer's socket; prints the number of 64K granules they touched.
writes() {
    "$NBD_PYTHON" - "$tmp/vm.sock" "$1" "$2" "$SIZE" "$G" <<'PY' || fail "random writes failed"
import random, sys
import nbd
sock, seed, n, size, g = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rnd = random.Random(seed)
h = nbd.NBD()
h.connect_uri("nbd+unix:///?socket=" + sock)
granules = set()
for _ in range(n):
    length = rnd.choice([512, 4096, 65536, 200704, rnd.randrange(1, 512) * 512])
    off = rnd.randrange(0, (size - length) // 512 + 1) * 512
    op = rnd.random()
    if op < 0.8:
        h.pwrite(rnd.randbytes(length), off)
    elif op < 0.9:
        h.zero(length, off)
    else:
        h.trim(length, off)
    granules.update(range(off // g, (off + length - 1) // g + 1))
h.flush()
h.shutdown()
print(len(granules))
PY
}

# frozen NAME - the frozen disk (vm.qed, the writer's backing file) as raw.
frozen() {
    run 120 qemu-img convert -f qed -O raw vm.qed "$1"
}

# restored_equals EXPECTED.raw [N] - restore backup N (default: the last)
# as raw and as QED, and compare both with EXPECTED byte for byte.
restored_equals() {
    rm -f r.raw r.qed r-qed.raw
    backup restore backups r.raw ${2:+"$2"} >/dev/null
    cmp "$1" r.raw || fail "restore ${2:-latest} (raw) differs from $1"
    backup restore backups r.qed ${2:+"$2"} >/dev/null
    run 60 qemu-img check -f qed r.qed
    run 120 qemu-img convert -f qed -O raw r.qed r-qed.raw
    cmp "$1" r-qed.raw || fail "restore ${2:-latest} (qed) differs from $1"
}

# said TEXT - fail unless the last backup said TEXT.
said() {
    grep -qF -- "$1" "$tmp/err" || fail "qed-backup.sh did not say '$1'; it said: $(cat "$tmp/err")"
}

# copied - the bytes the last backup says it copied.
copied() {
    sed -nE 's/.*\(([0-9]+) bytes copied\).*/\1/p' "$tmp/err" | tail -n 1
}

all_clean() {
    local f
    for f in vm.qed backups/*.qed; do
        run 60 qemu-img check -f qed -U "$f"
    done
}

# ---- The disk, its writer, a full backup ------------------------------------
run 30 "$QEDIMG" create vm.qed "$SIZE"
backup start vm.qed >/dev/null
writes 1 200 >/dev/null
backup full vm.qed backups >/dev/null
said "full backup of vm.qed: backups/0000-full.qed"
[ -e vm-top.qed ] || fail "the writer is not on the overlay vm-top.qed"
frozen exp0.raw
restored_equals exp0.raw

# ---- Incremental backups: exactly the granules written ------------------------
for round in 1 2; do
    touched=$(writes $((round + 10)) 60)
    [ -n "$touched" ] || fail "round $round: the writes failed"
    backup incremental vm.qed backups >/dev/null
    said "incremental backup of vm.qed: backups/000$round-inc.qed"
    [ "$(copied)" = $((touched * G)) ] ||
        fail "round $round: copied $(copied) bytes, the writes touched $touched granules of $G"
    frozen "exp$round.raw"
    restored_equals "exp$round.raw"
done
# Each backup of the chain restores to its own point in time.
restored_equals exp1.raw 1
restored_equals exp0.raw 0
cmp -s exp1.raw exp2.raw && fail "the rounds wrote nothing (the test proves nothing)"
all_clean

# ---- A crash: the bitmap is inconsistent, the next backup is a full one ---------
writes 20 80 >/dev/null
pid=$(cat vm.pid)
kill -KILL "$pid"
# Gone once it is dead or a zombie (the orphaned --fork server waits for
# init to reap it; it has released its files and locks already).
for ((i = 0; i < 400; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    [ "$(sed -E 's/^[0-9]+ \(.*\) (.).*/\1/' "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
    sleep 0.05
done
[ "$i" -lt 400 ] || fail "the writer $pid survived kill -9 for 20 s"
run 30 "$QEDIMG" info --json vm-top.qed
"$PY" - "$tmp/out" <<'PY' || fail "after kill -9 the overlay's bitmap is not marked in-use: $(cat "$tmp/out")"
import json, sys
bitmaps = json.load(open(sys.argv[1]))["format-specific"]["data"]["bitmaps"]
assert [b["name"] for b in bitmaps] == ["backup"] and "in-use" in bitmaps[0]["flags"], bitmaps
PY
backup incremental vm.qed backups >/dev/null
said "bitmap 'backup' of vm-top.qed is inconsistent"
said "falling back to a full backup"
said "full backup of vm.qed: backups/0003-full.qed"
frozen exp3.raw
restored_equals exp3.raw
cmp -s exp2.raw exp3.raw && fail "the writes before the crash are missing from the disk"

# ---- ... and the one after is incremental again ---------------------------------
touched=$(writes 30 40)
[ -n "$touched" ] || fail "the writes after the crash failed"
backup incremental vm.qed backups >/dev/null
said "incremental backup of vm.qed: backups/0004-inc.qed"
[ "$(copied)" = $((touched * G)) ] || fail "after the crash: copied $(copied), touched $touched granules"
frozen exp4.raw
restored_equals exp4.raw
restored_equals exp3.raw 3
backup stop vm.qed >/dev/null
all_clean
exit 0
