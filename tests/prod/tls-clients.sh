#!/bin/bash
# TLS with real clients (libnbd's nbdinfo / nbdcopy / Python bindings, and
# QEMU's NBD client), certificates made here with certtool and keys with
# psktool:
#   X.509, --tls-certificates (TLS required by default):
#     nbdinfo with an nbds+unix URI (tls=require) works, and says TLS;
#     8 MiB of random data round-trip through nbdcopy (4 connections);
#     qemu-io with a tls-creds-x509 object writes, nbdinfo reads it back;
#     over TCP, nbds://localhost with host name verification works;
#     a plaintext client is refused (nbdinfo fails) and the log says why;
#     a client that does not trust our CA fails the handshake (over TCP,
#     where libnbd has a host name and so checks the server's certificate);
#   --tls-verify-peer: a client with a certificate from the CA works, one
#     without is refused;
#   PSK, --tls-psk: the right key works (data round trip), a wrong key and an
#     unknown identity are refused; SIGUSR1 counts the handshakes;
#   --tls=on: plaintext and TLS clients both served;
#   --tls=off (no TLS): a client that requires TLS fails;
#   --stdio with TLS (libnbd connect_command);
#   set-up errors are clear (missing files, bad PSK file, contradictions);
#   the exposure warning: none with --tls=require on 0.0.0.0, one with --tls=on.
. "$top_srcdir/tests/prod/prod-common.sh"
need nbdinfo nbdcopy certtool psktool
need_nbd_python

make_certs certs
mkdir cli nocli
cp certs/ca-cert.pem certs/client-cert.pem certs/client-key.pem cli/
cp certs/ca-cert.pem nocli/
mkdir otherca
( cd otherca && certtool --generate-privkey --outfile k.pem &&
  printf 'cn = another CA\nca\ncert_signing_key\nexpiration_days = 7\n' >t.info &&
  certtool --generate-self-signed --load-privkey k.pem --template t.info --outfile ca-cert.pem &&
  rm k.pem t.info ) >/dev/null 2>&1 || fail "certtool (other CA) failed"

run 30 "$QEDIMG" create disk.qed 64M
head -c 8M /dev/urandom >rand.bin

uri_x509() { echo "nbds+unix:///?socket=$1&tls-certificates=$tmp/$2"; }

note "X.509, TLS required"
prod_start "$tmp/x.sock" -v --tls-certificates="$tmp/certs" disk.qed
log_has "$SERVER_LOG" "listening on unix:$tmp/x.sock \(TLS required\)"
run 30 nbdinfo "$(uri_x509 "$tmp/x.sock" cli)"
grep -q "with TLS" "$tmp/out" || fail "nbdinfo does not report TLS: $(cat "$tmp/out")"
run 60 nbdcopy -C 4 rand.bin "$(uri_x509 "$tmp/x.sock" cli)"
run 60 nbdcopy "$(uri_x509 "$tmp/x.sock" cli)" back.bin
cmp <(head -c 8M back.bin) rand.bin || fail "data read back over TLS differs"
log_has "$SERVER_LOG" "TLS established: \(TLS1\.[23]\)"
if command -v qemu-io >/dev/null 2>&1; then
    qemu_tls=(--object "tls-creds-x509,id=tls0,dir=$tmp/cli,endpoint=client" --image-opts
              "driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=$tmp/x.sock,file.tls-creds=tls0,file.tls-hostname=localhost")
    run 60 qemu-io "${qemu_tls[@]}" -c "write -P 0xa5 16M 1M" -c "read -P 0xa5 16M 1M"
    grep -q "verification failed" "$tmp/out" && fail "qemu-io over TLS: $(cat "$tmp/out")"
    run 60 "$NBD_PYTHON" -c '
import sys, nbd
h = nbd.NBD(); h.set_tls(nbd.TLS_REQUIRE); h.set_tls_certificates(sys.argv[2])
h.connect_uri(sys.argv[1])
assert h.get_tls_negotiated()
assert h.pread(1 << 20, 16 << 20) == b"\xa5" * (1 << 20), "qemu-io data not read back"
h.shutdown()' "nbd+unix:///?socket=$tmp/x.sock" "$tmp/cli"
else
    note "qemu-io is not installed: QEMU's TLS client is not tried"
fi
rc=0
timeout 30 nbdinfo "nbd+unix:///?socket=$tmp/x.sock" >out.txt 2>err.txt || rc=$?
[ "$rc" -ne 0 ] || fail "a plaintext nbdinfo worked against --tls=require: $(cat out.txt)"
log_has "$SERVER_LOG" "error 0x80000005: TLS is required: send STARTTLS first"
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC"
image_clean disk.qed

note "X.509 over TCP, host name checked"
port=$(free_port)
"$QEDNBD" -b 127.0.0.1 -p "$port" --tls-certificates="$tmp/certs" disk.qed </dev/null >tcp.log 2>&1 &
SERVER_PID=$!
SERVER_PIDS+=("$SERVER_PID")
SERVER_LOGS+=("$tmp/tcp.log")
wait_listen "$SERVER_PID" tcp "$port" || fail "qednbd on TCP: $(cat tcp.log)"
run 30 nbdinfo --size "nbds://localhost:$port/?tls-certificates=$tmp/cli"
[ "$(cat "$tmp/out")" = 67108864 ] || fail "size over TLS/TCP: $(cat "$tmp/out")"
# (libnbd checks the server's certificate when there is a host name to check.)
rc=0
timeout 30 nbdinfo --size "nbds://localhost:$port/?tls-certificates=$tmp/otherca" >out.txt 2>err.txt || rc=$?
[ "$rc" -ne 0 ] || fail "a client trusting another CA connected"
grep -qi "certificate" err.txt || fail "unexpected client error: $(cat err.txt)"
wait_log tcp.log "warning: .*TLS handshake with 127\.0\.0\.1:[0-9]+ failed"
stop_server TERM

note "--tls-verify-peer"
prod_start "$tmp/v.sock" --tls=require --tls-certificates="$tmp/certs" --tls-verify-peer disk.qed
run 30 nbdinfo --size "$(uri_x509 "$tmp/v.sock" cli)"
rc=0
timeout 30 nbdinfo --size "$(uri_x509 "$tmp/v.sock" nocli)" >out.txt 2>err.txt || rc=$?
[ "$rc" -ne 0 ] || fail "a client without a certificate was served with --tls-verify-peer"
wait_log "$SERVER_LOG" "TLS handshake with .* failed"
kill -USR1 "$SERVER_PID"
wait_log "$SERVER_LOG" "stats: server .*tls_failures=1"
log_has "$SERVER_LOG" "stats: server .* tls_handshakes=1 tls_failures=1"
stop_server TERM

note "PSK"
make_psk keys.psk alice
make_psk wrong.psk alice
make_psk bob.psk bob
prod_start "$tmp/p.sock" -v --tls-psk="$tmp/keys.psk" disk.qed
uri_psk() { echo "nbds+unix://$2@/?socket=$tmp/p.sock&tls-psk-file=$tmp/$1"; }
run 30 nbdinfo --size "$(uri_psk keys.psk alice)"
run 60 nbdcopy "$(uri_psk keys.psk alice)" psk.bin
cmp <(head -c 8M psk.bin) rand.bin || fail "data read over PSK differs"
log_has "$SERVER_LOG" 'PSK identity "alice"'
rc=0
timeout 30 nbdinfo --size "$(uri_psk wrong.psk alice)" >out.txt 2>err.txt || rc=$?
[ "$rc" -ne 0 ] || fail "a wrong PSK was accepted"
rc=0
timeout 30 nbdinfo --size "$(uri_psk bob.psk bob)" >out.txt 2>err.txt || rc=$?
[ "$rc" -ne 0 ] || fail "an unknown PSK identity was accepted"
rc=0
timeout 30 nbdinfo --size "nbd+unix:///?socket=$tmp/p.sock" >out.txt 2>err.txt || rc=$?
[ "$rc" -ne 0 ] || fail "a plaintext client was served with --tls-psk"
kill -USR1 "$SERVER_PID"
wait_log "$SERVER_LOG" "stats: server .*tls_failures=2"
line=$(grep 'stats: server' "$SERVER_LOG" | tail -n 1)
ok=$(grep -c "TLS established" "$SERVER_LOG")
[ "$ok" -ge 2 ] || fail "only $ok TLS sessions logged"
[ "$(stat_field "$line" tls_handshakes)" = "$ok" ] || fail "tls_handshakes: $line ($ok in the log)"
[ "$(grep -c "TLS handshake with .* failed" "$SERVER_LOG")" = 2 ] || fail "expected 2 failures logged"
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC"

note "--tls-priority: TLS 1.3 off gives a TLS 1.2 session; a bad string is refused"
prod_start "$tmp/pr.sock" -v --tls-certificates="$tmp/certs" --tls-priority="NORMAL:-VERS-TLS1.3" disk.qed
run 30 nbdinfo --size "$(uri_x509 "$tmp/pr.sock" cli)"
wait_log "$SERVER_LOG" "TLS established: \(TLS1\.2\)"
stop_server TERM
prod_start_fails --tls-certificates="$tmp/certs" --tls-priority="NORMAL:+NO-SUCH-THING" disk.qed
grep -q "TLS priority string" "$tmp/err" || fail "$(cat "$tmp/err")"

note "--tls=on: plaintext and TLS both served"
prod_start "$tmp/o.sock" --tls=on --tls-certificates="$tmp/certs" disk.qed
log_has "$SERVER_LOG" "\(TLS optional\)"
run 30 nbdinfo "nbd+unix:///?socket=$tmp/o.sock"
grep -q "without TLS" "$tmp/out" || fail "plaintext nbdinfo: $(cat "$tmp/out")"
run 30 nbdinfo "$(uri_x509 "$tmp/o.sock" cli)"
grep -q "with TLS" "$tmp/out" || fail "TLS nbdinfo: $(cat "$tmp/out")"
stop_server TERM

note "no TLS: a client requiring TLS fails"
prod_start "$tmp/n.sock" disk.qed
rc=0
timeout 30 nbdinfo "$(uri_x509 "$tmp/n.sock" cli)" >out.txt 2>err.txt || rc=$?
[ "$rc" -ne 0 ] || fail "nbds:// worked against a server without TLS"
stop_server TERM

note "--stdio with TLS"
run 60 "$NBD_PYTHON" -c '
import sys, nbd
h = nbd.NBD(); h.set_tls(nbd.TLS_REQUIRE); h.set_tls_psk_file(sys.argv[3]); h.set_tls_username("alice")
h.connect_command([sys.argv[1], "--stdio", "--tls-psk=" + sys.argv[3], sys.argv[2]])
assert h.get_tls_negotiated()
assert h.pread(4096, 0) == open(sys.argv[4], "rb").read(4096)
h.shutdown()' "$QEDNBD" disk.qed "$tmp/keys.psk" rand.bin

note "set-up errors"
mkdir empty
prod_start_fails --tls=require disk.qed
grep -q -- "--tls=require needs --tls-certificates=DIR or --tls-psk=FILE" "$tmp/err" || fail "$(cat "$tmp/err")"
prod_start_fails --tls-certificates="$tmp/empty" disk.qed
grep -q "server-cert.pem and server-key.pem are both needed" "$tmp/err" || fail "$(cat "$tmp/err")"
mkdir noca
cp certs/server-cert.pem certs/server-key.pem noca/
prod_start_fails --tls-certificates="$tmp/noca" --tls-verify-peer disk.qed
grep -q "tls-verify-peer needs .*ca-cert.pem" "$tmp/err" || fail "$(cat "$tmp/err")"
printf 'this is not a key file\n' >bad.psk
prod_start_fails --tls-psk=bad.psk disk.qed
grep -q "IDENTITY:HEXKEY" "$tmp/err" || fail "$(cat "$tmp/err")"
prod_start_fails --tls=off --tls-psk=keys.psk disk.qed
grep -q -- "--tls=off contradicts" "$tmp/err" || fail "$(cat "$tmp/err")"
prod_start_fails --tls-psk=keys.psk --tls-certificates="$tmp/certs" disk.qed
grep -q "not both" "$tmp/err" || fail "$(cat "$tmp/err")"
prod_start_fails --tls-psk=keys.psk --tls-verify-peer disk.qed
grep -q "tls-verify-peer needs --tls-certificates" "$tmp/err" || fail "$(cat "$tmp/err")"
prod_start_fails --tls=maybe disk.qed
grep -q "invalid --tls" "$tmp/err" || fail "$(cat "$tmp/err")"

note "the exposure warning follows the TLS mode"
port=$(free_port)
"$QEDNBD" -b 0.0.0.0 -p "$port" --tls-psk=keys.psk disk.qed </dev/null >req.log 2>&1 &
SERVER_PID=$!
SERVER_PIDS+=("$SERVER_PID")
wait_listen "$SERVER_PID" tcp "$port" || fail "qednbd: $(cat req.log)"
grep -q warning req.log && fail "a warning with --tls=require: $(cat req.log)"
stop_server TERM
port=$(free_port)
"$QEDNBD" -b 0.0.0.0 -p "$port" --tls=on --tls-psk=keys.psk disk.qed </dev/null >on.log 2>&1 &
SERVER_PID=$!
SERVER_PIDS+=("$SERVER_PID")
wait_listen "$SERVER_PID" tcp "$port" || fail "qednbd: $(cat on.log)"
log_has on.log "warning: listening on 0\.0\.0\.0:$port, a non-loopback address, with --tls=on"
stop_server TERM
echo PASS
