#!/bin/bash
# Backing files named by a hostile image, served by qednbd (issue 11, item 3):
#   - by default a backing name is followed as QEMU follows it, so a raw
#     backing "../../outside/secret" serves that file (the documented default);
#   - --backing-dir=DIR refuses it, and a symlink out of DIR, a symlinked
#     directory, an absolute path outside DIR and a chain whose second link
#     leaves DIR; it serves backing files inside DIR (absolute or relative);
#   - --no-backing refuses any image with a backing file, serves one without;
#   - a FIFO as backing file is refused at once (it used to hang the server
#     at start-up: the bounded run then times out and the test fails), and so
#     are /dev/zero (a character device) and a FIFO given as the image;
#   - qed-img takes --backing-dir and --no-backing too.
# Every refusal must exit 1 with a message naming the image, the backing
# name and the problem, and never open a listening socket.
. "$top_srcdir/tests/prod/prod-common.sh"
need qemu-img qemu-io

mkdir -p base/imgs outside
"$PY" -c 'import sys; open(sys.argv[1], "wb").write(b"\x5e" * 1048576)' outside/secret
"$PY" -c 'import sys; open(sys.argv[1], "wb").write(b"\xda" * 1048576)' base/data.raw
# mk IMAGE BACKING-NAME FMT: an overlay stored with that backing name (-u: as given).
mk() { run 30 qemu-img create -q -f qed -u -b "$2" -F "$3" "$1" 1M; }

# refused DESC PATTERN... -- ARGS: qednbd ARGS must exit 1 (bounded) with
# every PATTERN in its message, and leave no socket behind.
refused() {
    local desc=$1 pat
    shift
    local pats=()
    while [ "$1" != -- ]; do pats+=("$1"); shift; done
    shift
    prod_start_fails -u "$tmp/r.sock" "$@"
    for pat in "${pats[@]}"; do
        grep -qF -- "$pat" "$tmp/err" || fail "$desc: no '$pat' in: $(cat "$tmp/err")"
    done
    [ ! -e "$tmp/r.sock" ] || fail "$desc: a refused server left its socket"
    echo "  $desc: $(cat "$tmp/err")"
}

# serves SOCK PATTERN ARGS...: qednbd ARGS serves, and reads PATTERN at 0.
serves() {
    local sock=$1 byte=$2
    shift 2
    prod_start "$sock" -r "$@"
    qio -r -f raw "nbd+unix:///?socket=$sock" -- "read -P $byte 0 64k"
    stop_server TERM
}

note "the default follows backing names as QEMU does"
mk base/imgs/evil.qed ../../outside/secret raw
serves "$tmp/d.sock" 0x5e base/imgs/evil.qed

note "--backing-dir refuses escapes"
refused "relative ../ escape" "base/imgs/evil.qed" "../../outside/secret" "confined" \
    -- --backing-dir=base base/imgs/evil.qed
ln -s "$tmp/outside/secret" base/imgs/link.raw
mk base/imgs/sym.qed link.raw raw
refused "symlink escape" "sym.qed" "link.raw" "$tmp/outside/secret" \
    -- --backing-dir=base base/imgs/sym.qed
ln -s ../../outside base/imgs/out
mk base/imgs/symdir.qed out/secret raw
refused "symlinked directory" "symdir.qed" "out/secret" "confined" \
    -- --backing-dir="$tmp/base" base/imgs/symdir.qed
mk base/imgs/abs.qed "$tmp/outside/secret" raw
refused "absolute path outside" "abs.qed" "$tmp/outside/secret" "confined" \
    -- --backing-dir=base base/imgs/abs.qed
mk base/mid.qed ../outside/secret raw
mk base/imgs/top.qed ../mid.qed qed
refused "second link of a chain" "mid.qed" "outside/secret" "confined" \
    -- --backing-dir=base base/imgs/top.qed
# The whole chain, also when the top image asks for read-write.
prod_start_fails -u "$tmp/r.sock" --backing-dir=base base/imgs/top.qed
grep -qF confined "$tmp/err" || fail "read-write chain: $(cat "$tmp/err")"

note "--backing-dir serves backing files inside"
mk base/imgs/absin.qed "$tmp/base/data.raw" raw
serves "$tmp/a.sock" 0xda --backing-dir=base base/imgs/absin.qed
mk base/imgs/relin.qed ../data.raw raw
serves "$tmp/b.sock" 0xda --backing-dir=base base/imgs/relin.qed
mk base/imgs/chain.qed ../mid2.qed qed
mk base/mid2.qed data.raw raw
serves "$tmp/c.sock" 0xda --backing-dir=base base/imgs/chain.qed
prod_start_fails -u "$tmp/r.sock" --backing-dir=nowhere base/imgs/relin.qed
grep -qF -- "--backing-dir nowhere" "$tmp/err" || fail "missing dir: $(cat "$tmp/err")"

note "--no-backing"
refused "--no-backing" "relin.qed" "../data.raw" "refused" -- --no-backing base/imgs/relin.qed
run 30 qemu-img create -q -f qed base/imgs/plain.qed 1M
serves "$tmp/p.sock" 0 --no-backing base/imgs/plain.qed

note "files that cannot hold an image are refused without blocking"
mkfifo base/imgs/fifo
mk base/imgs/f.qed fifo raw
refused "FIFO backing (raw)" "f.qed" "fifo" "a FIFO" -- base/imgs/f.qed
mk base/imgs/fq.qed fifo qed
refused "FIFO backing (probed)" "fq.qed" "fifo" "a FIFO" -- -r base/imgs/fq.qed
mk base/imgs/z.qed /dev/zero raw
refused "character device backing" "z.qed" "/dev/zero" "a character device" -- base/imgs/z.qed
refused "FIFO as the image" "base/imgs/fifo" "a FIFO" -- base/imgs/fifo

note "qed-img"
rc=0
timeout -k 5 30 "$QEDIMG" info --backing-dir=base base/imgs/evil.qed >"$tmp/out" 2>"$tmp/err" ||
    rc=$?
[ "$rc" -eq 1 ] && grep -qF confined "$tmp/err" ||
    fail "qed-img info --backing-dir: exit $rc: $(cat "$tmp/err")"
rc=0
timeout -k 5 30 "$QEDIMG" check --no-backing base/imgs/relin.qed >"$tmp/out" 2>"$tmp/err" ||
    rc=$?
[ "$rc" -eq 1 ] && grep -qF refused "$tmp/err" ||
    fail "qed-img check --no-backing: exit $rc: $(cat "$tmp/err")"
rc=0
timeout -k 5 30 "$QEDIMG" info base/imgs/f.qed >"$tmp/out" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 1 ] && grep -qF "a FIFO" "$tmp/err" || fail "qed-img info (FIFO): exit $rc"
rc=0
timeout -k 5 30 "$QEDIMG" create -b fifo base/imgs/new.qed >"$tmp/out" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 1 ] && grep -qF "a FIFO" "$tmp/err" || fail "qed-img create -b FIFO: exit $rc"
run 30 "$QEDIMG" info --backing-dir=base base/imgs/relin.qed
grep -qF "backing file: ../data.raw" "$tmp/out" || fail "qed-img info inside: $(cat "$tmp/out")"
echo "PASS"
