#!/bin/bash
# readme-commands.sh - the README's commands, run as a user would run them.
#
# Every fenced block right after a line "<!-- docs-test -->" in README.md
# is run, in README order, in one bash (set -e, so each command must
# succeed; the working folder carries over from block to block, as in a
# terminal), in a scratch folder, with the built qednbd and qed-img first
# in PATH.  Absolute paths under /etc, /srv, /run and /var/lib/qednbd are
# moved under $tmp/root, and systemctl only says it was not run (there is
# no systemd here).  A failing command fails the test with its README line.
# Blocks after "<!-- docs-test: libvirt -->" are libvirt <disk> elements:
# each must validate against libvirt's schema (virt-xml-validate) inside a
# minimal domain.
#
# Then what the blocks made is used: the installed units (with the drop-in)
# pass systemd-analyze verify and the sandbox check of
# prod/systemd-common.sh; the X.509 files serve a TLS export that
# nbd-client lists with the README's options (-A -H -certfile -K -x); the
# PSK files serve one that nbdinfo lists as alice.  Last, the test command
# in README.md is the one in .ci/run.
#
# README=FILE runs another copy of the README (the test's self-check: a
# broken command must fail it, with the line).  Missing systemd-analyze or
# virt-xml-validate: those parts are left out and the test ends as a skip.
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
. "$top_srcdir/tests/tools/tools-common.sh"
need python3 certtool psktool nbd-client nbdinfo
PY=/usr/bin/python3
QEDNBD="$top_builddir/server/qednbd"
[ -x "$QEDNBD" ] || fail "$QEDNBD is not built"
note() { echo "--- $*"; }
. "$top_srcdir/tests/prod/systemd-common.sh"
readme=${README:-$top_srcdir/README.md}
root="$tmp/root"
work="$tmp/work"
# The folders a Debian system has; the README's commands run from the top
# of the source tree (cp contrib/systemd/...).
mkdir -p "$root/etc/systemd/system" "$root/srv" "$root/run" "$root/var/lib" "$work"
ln -s "$top_srcdir/contrib" "$work/contrib"
missing=()
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$tmp"' EXIT

# --- Extract the marked blocks: script.sh (shell) and libvirt-N.xml --------
"$PY" - "$readme" "$root" "$tmp" <<'PY' || fail "cannot extract the README's blocks"
import re, sys
readme, root, tmp = sys.argv[1:]
lines = open(readme).read().split("\n")
mark = re.compile(r"^(\s*)<!-- docs-test(?:: (\w+))? -->\s*$")
move = re.compile(r"(?<![\w.\-/$])/(etc|srv|run|var/lib/qednbd)(?=[/\s'\"]|$)")
script = ["set -eE -o pipefail",
          "trap 'rc=$?; echo \"FAIL: $__docs_readme:$((LINENO + __docs_off)) (block at line "
          "$__docs_block) exited $rc: $BASH_COMMAND\" >&2; exit 1' ERR"]
kinds = {"sh": 0, "libvirt": 0}
i = 0
while i < len(lines):
    m = mark.match(lines[i])
    i += 1
    if not m:
        continue
    indent, kind = m.group(1), m.group(2) or "sh"
    if kind not in kinds:
        sys.exit("README line %d: unknown docs-test kind %r" % (i, kind))
    fence = re.match(r"^" + indent + r"```(\w*)\s*$", lines[i] if i < len(lines) else "")
    if not fence:
        sys.exit("README line %d: <!-- docs-test --> is not followed by a fenced block" % i)
    start = i + 2                       # README line number of the first line in the block
    i += 1
    body = []
    while i < len(lines) and lines[i].strip() != "```":
        body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
        i += 1
    if i == len(lines):
        sys.exit("README line %d: the block never ends" % (start - 1))
    i += 1
    kinds[kind] += 1
    if kind == "libvirt":
        with open("%s/libvirt-%d.xml" % (tmp, start - 1), "w") as f:
            f.write("\n".join(body) + "\n")
        continue
    script.append("__docs_block=%d" % (start - 1))
    # LINENO of the block's first line is len(script) + 2 (the next line is __docs_off).
    script.append("__docs_off=%d" % (start - (len(script) + 2)))
    script += [move.sub(lambda m: root + "/" + m.group(1), l) for l in body]
open(tmp + "/script.sh", "w").write("\n".join(script) + "\n")
print("%d shell blocks, %d libvirt blocks" % (kinds["sh"], kinds["libvirt"]))
if kinds["sh"] < 9 or kinds["libvirt"] < 1:
    sys.exit("too few marked blocks: were the <!-- docs-test --> marks lost?")
PY

# --- Run the shell blocks ------------------------------------------------
note "running the README's blocks (script: $tmp/script.sh)"
rc=0
(
    cd "$work" &&
    export PATH="$top_builddir/server:$top_builddir/contrib/qed-img:$PATH" __docs_readme="$readme" &&
    systemctl() { echo "(docs-test: not run here: systemctl $*)"; } &&
    export -f systemctl &&
    timeout -k 5 120 bash "$tmp/script.sh"
) >"$tmp/blocks.log" 2>&1 || rc=$?
if [ "$rc" -ne 0 ]; then
    tail -n 30 "$tmp/blocks.log" >&2
    msg=$(grep '^FAIL: ' "$tmp/blocks.log" | tail -n 1)
    [ -n "$msg" ] || msg="FAIL: the README's commands exited $rc"
    fail "${msg#FAIL: }"
fi
note "every marked shell block ran"

# --- libvirt's schema ----------------------------------------------------
if command -v virt-xml-validate >/dev/null 2>&1; then
    for x in "$tmp"/libvirt-*.xml; do
        line=${x##*/libvirt-}; line=${line%.xml}
        {
            echo "<domain type='qemu'><name>docs</name><memory unit='MiB'>512</memory>"
            echo "<os><type arch='x86_64'>hvm</type></os><devices>"
            cat "$x"
            echo "</devices></domain>"
        } >"$tmp/domain.xml"
        virt-xml-validate "$tmp/domain.xml" domain >"$tmp/virt.out" 2>&1 ||
            fail "$readme:$line: the libvirt XML does not validate: $(cat "$tmp/virt.out")"
    done
    note "the libvirt XML validates"
else
    missing+=("virt-xml-validate (libvirt-clients)")
fi

# --- The units the README installed --------------------------------------
sd="$root/etc/systemd/system"
[ -f "$sd/qednbd.service" ] && [ -f "$sd/qednbd.service.d/images.conf" ] ||
    fail "the README's blocks did not install qednbd.service and its drop-in"
unit_sandbox_check "$sd/qednbd.service"
grep -q -- "-e data=$root/srv/data.qed" <<<"$(unit_exec_start "$sd/qednbd.service")" ||
    fail "the drop-in's ExecStart= is not in effect: $(unit_exec_start "$sd/qednbd.service")"
if unit_verify "$sd/qednbd.socket" "$sd/qednbd.service"; then
    note "systemd-analyze verify: the installed units and the drop-in are fine"
else
    missing+=("systemd-analyze (systemd)")
fi

# --- What the TLS steps made works -----------------------------------------
# start_server ARGS... - qednbd -p PORT ARGS... in the background; sets PORT.
start_server() {
    local i
    PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$QEDNBD" -p "$PORT" "$@" </dev/null >"$tmp/server.log" 2>&1 &
    SPID=$!
    PIDS+=("$SPID")
    for ((i = 0; i < 150; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        kill -0 "$SPID" 2>/dev/null || fail "qednbd $* did not start: $(cat "$tmp/server.log")"
        sleep 0.1
    done
    fail "qednbd $* does not listen after 15 s"
}
stop_server() {
    kill -TERM "$SPID"
    wait "$SPID" || fail "qednbd exited $? on SIGTERM: $(cat "$tmp/server.log")"
}

pki="$root/etc/qednbd/pki" cli="$root/etc/pki/nbd"
certtool -i --infile "$cli/client-cert.pem" >"$tmp/client-cert.txt" 2>&1 || fail "certtool -i"
grep -q "server.example.com" "$tmp/client-cert.txt" && fail "the client's certificate carries the server's name"
start_server --tls-certificates="$pki" --tls-verify-peer -e data="$root/srv/data.qed"
timeout -k 5 30 nbd-client -l 127.0.0.1 "$PORT" -A "$cli/ca-cert.pem" -H server.example.com \
    -certfile "$cli/client-cert.pem" -K "$cli/client-key.pem" -x >"$tmp/list.out" 2>&1 ||
    fail "nbd-client -l over TLS failed: $(cat "$tmp/list.out")"
grep -qx data "$tmp/list.out" || fail "nbd-client -l over TLS did not list 'data': $(cat "$tmp/list.out")"
stop_server
note "nbd-client lists the export over TLS with the README's certificates"

start_server --tls-psk="$root/etc/qednbd/keys.psk" -e data="$root/srv/data.qed"
timeout -k 5 30 nbdinfo --list "nbds://alice@127.0.0.1:$PORT/?tls-psk-file=$work/alice.psk" \
    >"$tmp/psk.out" 2>&1 || fail "nbdinfo with the README's PSK failed: $(cat "$tmp/psk.out")"
grep -q 'export="data"' "$tmp/psk.out" || fail "nbdinfo over PSK did not list 'data': $(cat "$tmp/psk.out")"
stop_server
note "nbdinfo lists the export as alice with the README's key"

# --- The test command: README.md and .ci/run -------------------------------
if [ -z "${README:-}" ]; then
    line=$(grep -x 'apt-get update && .* && make check && make check-sanitizers' "$readme")
    [ "$(printf '%s\n' "$line" | wc -l)" -eq 1 ] || fail "not one test command in README.md"
    grep -qxF -- "$line" "$top_srcdir/.ci/run" || fail "the test command differs in README.md and .ci/run"
fi

# --- The test can fail: a broken command in a copy of the README ----------
if [ -z "${README:-}" ]; then
    bad=$(grep -n '^psktool -u alice -p ' "$readme" | cut -d: -f1)
    [ -n "$bad" ] || fail "no psktool line in $readme for the self-check"
    sed "${bad}s/^psktool -u alice /psktool --no-such-option -u alice /" "$readme" >"$tmp/broken.md"
    rc=0
    README="$tmp/broken.md" bash "$self" >"$tmp/self.out" 2>&1 || rc=$?
    [ "$rc" -eq 1 ] || { cat "$tmp/self.out" >&2; fail "a broken README command did not fail the test (exit $rc)"; }
    grep -q "broken.md:$bad (block at line" "$tmp/self.out" ||
        { cat "$tmp/self.out" >&2; fail "the failure does not name line $bad of the README"; }
    note "self-check: a broken command on line $bad fails the test and is named"
fi

[ "${#missing[@]}" -eq 0 ] || skip "not installed: ${missing[*]}; everything else passed"
echo PASS
