#!/bin/bash
# The control socket (--control=PATH) and qednbd-ctl: mode 0600 whatever
# the umask, every command and its errors, the same counters as SIGUSR1,
# malformed JSON answered and survived, an overlong line, one client over
# the limit, a client that never reads (it stops being read, others are
# served, the idle timeout frees it), and the socket path at start-up (a
# stale socket is replaced; a file or a live socket is refused); on a
# read-only export bitmaps are listed and every change is EROFS.
. "$top_srcdir/tests/server/server-common.sh"
need qemu-img
[ "$SERVER_KIND" = qednbd ] || skip "the control socket is qednbd's"
CTL="$top_builddir/server/qednbd-ctl"
[ -x "$CTL" ] || fail "$CTL is not built"

qemu-img create -q -f qed a.qed 16M || fail "create a.qed"
qemu-img create -q -f qed b.qed 8M || fail "create b.qed"

# ctl EXPECTED-RC ARGS... - run qednbd-ctl on $SOCK, check its exit status,
# leave the reply in $tmp/out.
ctl() {
    local want=$1 rc=0
    shift
    timeout -k 5 30 "$CTL" -s "$SOCK" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    [ "$rc" -eq "$want" ] || fail "qednbd-ctl $*: exit $rc, expected $want: $(cat "$tmp/out" "$tmp/err")"
}

# reply_is PYTHON-EXPR - the last reply (variable r) satisfies the expression.
reply_is() {
    "$PY" -c 'import json, sys
r = json.loads(open(sys.argv[1]).read())
sys.exit(0 if eval(sys.argv[2]) else 1)' "$tmp/out" "$1" ||
        fail "reply $(cat "$tmp/out") does not satisfy: $1"
}

# ---- Permissions, whatever the umask ----------------------------------------
SOCK=$tmp/ctl.sock
old_umask=$(umask)
umask 000
QEDNBD_TEST_ARGS="${QEDNBD_TEST_ARGS:+$QEDNBD_TEST_ARGS }--control=$SOCK" start_server -e a=a.qed -e b=b.qed
umask "$old_umask"
mode=$(stat -c %a "$SOCK")
[ "$mode" = 600 ] || fail "control socket mode $mode, expected 600 (umask 000)"
[ -S "$SOCK" ] || fail "$SOCK is not a socket"

# ---- Every command ------------------------------------------------------------
ctl 0 bitmap-list a
reply_is 'r == {"ok": True, "bitmaps": []}'
ctl 0 bitmap-add a b1
ctl 0 bitmap-add a b2 -g 4K --disabled
ctl 0 bitmap-add b b1 -g 1M
ctl 0 bitmap-list a
reply_is '[(b["name"], b["granularity"], b["enabled"], b["inconsistent"], b["dirty_bytes"], b["nbd_clients"]) for b in r["bitmaps"]] == [("b1", 65536, True, False, 0, 0), ("b2", 4096, False, False, 0, 0)]'
ctl 0 bitmap-list b
reply_is '[(b["name"], b["granularity"]) for b in r["bitmaps"]] == [("b1", 1048576)]'
ctl 0 bitmap-enable a b2
ctl 0 bitmap-disable a b1
ctl 0 bitmap-list a
reply_is '[b["enabled"] for b in r["bitmaps"]] == [False, True]'
ctl 0 bitmap-clear a b2
ctl 0 bitmap-remove a b1
ctl 0 bitmap-list a
reply_is '[b["name"] for b in r["bitmaps"]] == ["b2"]'

# Errors, each with its errno name.
ctl 1 bitmap-add a b2;              reply_is 'r["ok"] is False and r["errno"] == "EEXIST"'
ctl 1 bitmap-remove a nosuch;       reply_is 'r["errno"] == "ENOENT"'
ctl 1 bitmap-clear a nosuch;        reply_is 'r["errno"] == "ENOENT"'
ctl 1 bitmap-list nosuch;           reply_is 'r["errno"] == "ENOENT" and "export" in r["error"]'
ctl 1 bitmap-add a 'bad name';      reply_is 'r["errno"] == "EINVAL"'
ctl 1 bitmap-add a b3 -g 1000;      reply_is 'r["errno"] == "EINVAL" and "granularity" in r["error"]'
ctl 1 bitmap-add a b3 -g 256;       reply_is 'r["errno"] == "EINVAL"'
ctl 1 raw '{"cmd":"frobnicate"}';   reply_is 'r["errno"] == "EOPNOTSUPP"'
ctl 1 raw '{"cmd":"stats","x":1}';  reply_is 'r["errno"] == "EINVAL" and "unknown member" in r["error"]'
ctl 1 raw '{"cmd":"bitmap-add","export":"a"}'; reply_is '"name" in r["error"]'
ctl 1 raw '{"cmd":"bitmap-add","export":"a","name":"x","granularity":-1}'
reply_is '"granularity" in r["error"]'
ctl 1 raw '{"cmd":"bitmap-add","export":"a","name":"x","disabled":1}'
ctl 1 raw '{"cmd":"bitmap-list","export":7}'
ctl 2 bitmap-add a                  # usage: no request sent
ctl 2 nosuch-command

# ---- stats: the counters SIGUSR1 logs, by the same names ---------------------
ctl 0 stats
reply_is 'sorted(e["name"] for e in r["exports"]) == ["a", "b"] and r["server"]["uptime"] >= 0'
cp "$tmp/out" stats.json
kill -USR1 "$SERVER_PID"
for ((i = 0; i < 200; i++)); do
    [ "$(grep -c 'stats: export' "$SERVER_LOG")" -ge 2 ] && break
    sleep 0.05
done
"$PY" - stats.json "$SERVER_LOG" <<'PY' || fail "stats JSON and the SIGUSR1 lines differ"
import json, re, sys
r = json.load(open(sys.argv[1]))
log = open(sys.argv[2]).read()
server = re.findall(r"stats: server (.*)", log)[-1]
keys = [kv.split("=")[0] for kv in server.split()]
if keys != list(r["server"]):
    sys.exit("server keys: log %s, JSON %s" % (keys, list(r["server"])))
for e in r["exports"]:
    line = re.findall(r'stats: export name="%s" (.*)' % e["name"], log)[-1]
    kv = dict(x.split("=") for x in line.split())
    if list(kv) != [k for k in e if k != "name"]:
        sys.exit("export keys differ: %s vs %s" % (list(kv), list(e)))
    # Counters that do not move while nobody uses the export must agree.
    for k in ("connections", "requests", "writes", "cluster_size", "file_clusters"):
        if int(kv[k]) != e[k]:
            sys.exit("%s: log %s, JSON %s" % (k, kv[k], e[k]))
PY

# ---- Malformed input, an overlong line, too many clients ----------------------
"$PY" - "$SOCK" <<'PY' || fail "malformed input"
import json, socket, sys, time
path = sys.argv[1]

def conn():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    s.connect(path)
    return s, s.makefile("rb")

def ask(s, f, line):
    s.sendall(line + b"\n")
    rep = f.readline()
    if not rep.endswith(b"\n"):
        sys.exit("no reply line to %r (got %r)" % (line[:60], rep))
    return json.loads(rep)

s, f = conn()
bad = [b"", b"x", b"{", b"[]", b'"cmd"', b'{"cmd":"stats"', b'{"cmd":"stats",}',
       b"{'cmd':'stats'}", b'{"cmd":"stats"} x', b'{"cmd":"stats","cmd":"stats"}',
       b'{"cmd":"st\\u0000ats"}', b'{"cmd":"\\ud800"}', b'{"cmd":"\xff"}',
       b'{"cmd":"stats","n":01}', b'{"cmd":"stats","n":1.}', b'{"cmd":tru}',
       b'{"cmd":"a\tb"}', b"[" * 3000, b'{"a":' * 100 + b"1" + b"}" * 100,
       b'{' + b",".join(b'"k%d":1' % i for i in range(20)) + b'}', b'{"cmd":null}']
for line in bad:
    r = ask(s, f, line)
    if r.get("ok") is not False or r.get("errno") not in ("EINVAL",):
        sys.exit("%r: %r" % (line[:60], r))
# Still usable, and a request padded to exactly the limit (4096 with the newline) passes.
r = ask(s, f, b'{"cmd":"stats"}')
assert r["ok"] is True, r
line = b'{"cmd":"stats"}'.ljust(4095)
r = ask(s, f, line)
assert r["ok"] is True, r
# Escapes are decoded: \u0062 is "b", \/ is "/"; white space anywhere.
r = ask(s, f, b' { "cmd" : "bitmap-add" ,\t"export":"a", "name":"\\u0062x\\/1" } ')
assert r["ok"] is True, r
r = ask(s, f, b'{"cmd":"bitmap-list","export":"a"}')
assert "bx/1" in [b["name"] for b in r["bitmaps"]], r
r = ask(s, f, b'{"cmd":"bitmap-remove","export":"a","name":"bx/1"}')
assert r["ok"] is True, r
# A valid surrogate pair decodes (to a name that is not ASCII: refused as a name).
r = ask(s, f, b'{"cmd":"bitmap-add","export":"a","name":"\\ud83d\\ude00"}')
assert r["errno"] == "EINVAL" and "name" in r["error"], r
# Several requests in one write: answered in order.
s.sendall(b'{"cmd":"bitmap-list","export":"a"}\n{"cmd":"frob"}\n{"cmd":"stats"}\n')
got = [json.loads(f.readline()) for _ in range(3)]
assert [g["ok"] for g in got] == [True, False, True], got
s.close()

# One byte over: E2BIG, then the server closes.
s, f = conn()
s.sendall(b'{"cmd":"stats"}'.ljust(4096) + b"\n")
r = json.loads(f.readline())
assert r["ok"] is False and r["errno"] == "E2BIG", r
assert f.readline() == b"", "connection still open after an overlong line"
s.close()

# CTL_MAX_CLIENTS (8) at once; the 9th is told EBUSY and closed.
# (The clients above may not be reaped yet: retry a refused one.)
held = []
deadline = time.monotonic() + 20
while len(held) < 8:
    s, f = conn()
    try:
        s.sendall(b'{"cmd":"stats"}\n')
        r = json.loads(f.readline())
    except (OSError, ValueError):
        r = {"ok": False, "errno": "EBUSY"}     # refused before we wrote
    if r["ok"]:
        held.append((s, f))
        continue
    assert r["errno"] == "EBUSY", r
    f.close()
    s.close()
    if time.monotonic() > deadline:
        sys.exit("only %d control clients accepted" % len(held))
    time.sleep(0.05)
s9, f9 = conn()
r = json.loads(f9.readline())
assert r["ok"] is False and r["errno"] == "EBUSY", r
assert f9.readline() == b""
f9.close()
s9.close()
for x in held.pop():
    x.close()               # the file object too: it keeps the socket open
# A slot is free again once the server saw the close.
deadline = time.monotonic() + 20
while True:
    s, f = conn()
    try:
        s.sendall(b'{"cmd":"stats"}\n')
        r = json.loads(f.readline())
    except (OSError, ValueError):
        r = {}
    if r.get("ok"):
        break
    if time.monotonic() > deadline:
        sys.exit("no slot after a client left")
    f.close()
    s.close()
    time.sleep(0.05)
PY
server_alive || fail "the server died on malformed input"

# ---- Start-up: stale socket, a file, a live socket ----------------------------
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC"
[ ! -e "$SOCK" ] || fail "the control socket was not removed at exit"

"$PY" -c 'import socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.close()' "$tmp/stale.sock"
[ -S "$tmp/stale.sock" ] || fail "no stale socket made"
SOCK=$tmp/stale.sock
QEDNBD_TEST_ARGS="${QEDNBD_TEST_ARGS:+$QEDNBD_TEST_ARGS }-v --control=$SOCK --control-timeout=2" start_server -e a=a.qed
ctl 0 stats

# A live control socket is never taken over; a regular file is refused.
rc=0
timeout 30 "$QEDNBD" -u "$tmp/other.sock" --control="$SOCK" b.qed >other.log 2>&1 || rc=$?
[ "$rc" -eq 1 ] && grep -q "another server answers" other.log ||
    fail "a second server on a live control socket: exit $rc, $(cat other.log)"
: >"$tmp/file"
rc=0
timeout 30 "$QEDNBD" -u "$tmp/other.sock" --control="$tmp/file" b.qed >other.log 2>&1 || rc=$?
[ "$rc" -eq 1 ] && grep -q "not a socket" other.log || fail "--control on a file: exit $rc"
[ -f "$tmp/file" ] || fail "the file was removed"

# ---- A client that never reads; the idle timeout ------------------------------
"$PY" - "$SOCK" "$SERVER_LOG" <<'PY' || fail "never-reading client"
import json, socket, sys, time
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
s.setblocking(False)
req = b'{"cmd":"stats"}\n'
sent = 0
deadline = time.monotonic() + 20
# Write until the server stops reading us (its replies fill our receive
# buffer and its own 64 KiB, then it reads no more).
stalled_since = None
while time.monotonic() < deadline:
    try:
        sent += s.send(req * 256)
        stalled_since = None
    except BlockingIOError:
        if stalled_since is None:
            stalled_since = time.monotonic()
        elif time.monotonic() - stalled_since > 0.5:
            break
        time.sleep(0.01)
else:
    sys.exit("the server kept reading a client that never reads (%d bytes)" % sent)
# Meanwhile another client is served at once.
t = socket.socket(socket.AF_UNIX)
t.settimeout(10)
t.connect(path)
t.sendall(req)
assert json.loads(t.makefile("rb").readline())["ok"] is True
t.close()
# The idle timeout (2 s) closes the stuck client: wait for it without
# reading (reading would let the server go on), then read what was
# queued: fewer replies than requests, then the end.
log = sys.argv[2]
deadline = time.monotonic() + 30
while "idle timeout" not in open(log).read():
    if time.monotonic() > deadline:
        sys.exit("the stuck client was not dropped within 30 s")
    time.sleep(0.05)
s.setblocking(True)
s.settimeout(30)
got = b""
while True:
    try:
        b = s.recv(1 << 16)
    except ConnectionResetError:
        break
    if not b:
        break
    got += b
replies = got.count(b"\n")
if replies * len(req) >= sent:
    sys.exit("all %d requests answered: nothing was held back" % replies)
print("sent %d requests, %d answered before the idle timeout" % (sent // len(req), replies))
PY
grep -q "idle timeout" "$SERVER_LOG" || fail "no idle timeout in the log"
server_alive || fail "the server died"
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC"

# ---- A read-only export: its bitmaps are listed, never changed ----------------
SOCK=$tmp/ro.sock
QEDNBD_TEST_ARGS="${QEDNBD_TEST_ARGS:+$QEDNBD_TEST_ARGS }--control=$SOCK" start_server -r -e b=b.qed
ctl 0 bitmap-list b
reply_is '[b["name"] for b in r["bitmaps"]] == ["b1"]'
ctl 1 bitmap-add b b9;      reply_is 'r["errno"] == "EROFS"'
ctl 1 bitmap-clear b b1;    reply_is 'r["errno"] == "EROFS"'
ctl 1 bitmap-remove b b1;   reply_is 'r["errno"] == "EROFS"'
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC"
echo "control socket: ok"
