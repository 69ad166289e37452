# prod-common.sh - sourced by the tests of qednbd's production features
# (daemon mode, logging, statistics, socket activation, locking beside QEMU,
# TLS, man pages).  Not a test.
#
# Builds on tests/server/server-common.sh (fail, skip, need, run, $tmp,
# free_port, wait_listen, stop_server, cleanup of SERVER_PIDS ...) and adds:
#   prod_start SOCK ARGS...   start qednbd -u SOCK ARGS... in the background
#   prod_start_fails ARGS...  run qednbd ARGS..., expect exit 1; stderr in $tmp/err
#   log_has FILE REGEX        fail unless FILE has a line matching REGEX
#   wait_log FILE REGEX       wait (10 s at most) for such a line
#   make_certs DIR            CA, server and client certificates (certtool)
#   make_psk FILE USER        a psktool key file
#   track_daemon PID          kill PID at exit (for --fork daemons)
#   stat_field LINE NAME      the value of NAME=... in a stats line

. "$top_srcdir/tests/server/server-common.sh"

QEDIMG="$top_builddir/contrib/qed-img/qed-img"
[ -x "$QEDNBD" ] || fail "$QEDNBD is not built"
[ -x "$QEDIMG" ] || fail "$QEDIMG is not built"

# prod_start SOCK ARGS... - start "qednbd -u SOCK ARGS..." with SIGINT at
# its default disposition; wait until it accepts connections.  Sets
# SERVER_PID, SERVER_LOG (its stdout and stderr) and SERVER_SOCK.
prod_start() {
    local sock=$1 n=${#SERVER_PIDS[@]}
    shift
    SERVER_SOCK=$sock
    SERVER_LOG="$tmp/qednbd$n.log"
    rm -f "$sock"
    echo "+ qednbd -u $sock $*" >"$SERVER_LOG"
    "$PY" -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execvp(sys.argv[1], sys.argv[1:])' "$QEDNBD" -u "$sock" "$@" </dev/null >>"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    SERVER_PIDS+=("$SERVER_PID")
    SERVER_LOGS+=("$SERVER_LOG")
    wait_listen "$SERVER_PID" unix "$sock" 2>"$tmp/wait.err" ||
        fail "qednbd did not start: $(cat "$tmp/wait.err"); log: $(tail -n 5 "$SERVER_LOG")"
}

# prod_start_fails ARGS... - qednbd ARGS... must exit 1 within 30 s.
# Its stderr is left in $tmp/err.
prod_start_fails() {
    local rc=0
    timeout -k 5 30 "$QEDNBD" "$@" </dev/null >"$tmp/out" 2>"$tmp/err" || rc=$?
    [ "$rc" -eq 1 ] || fail "qednbd $* exited $rc, expected 1; stderr: $(cat "$tmp/err")"
}

# log_has FILE REGEX - fail unless FILE has a line matching the extended REGEX.
log_has() {
    grep -qE -- "$2" "$1" || { echo "--- $1:" >&2; tail -n 30 "$1" >&2; fail "no line matching /$2/ in $1"; }
}

# wait_log FILE REGEX - wait up to 10 s for a line matching REGEX in FILE.
wait_log() {
    local i
    for ((i = 0; i < 100; i++)); do
        grep -qE -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "--- $1:" >&2
    tail -n 30 "$1" >&2
    fail "no line matching /$2/ in $1 after 10 s"
}

# track_daemon PID - a daemonized server: kill it on exit like the others.
track_daemon() {
    SERVER_PIDS+=("$1")
}

# stat_field LINE NAME - print the value of NAME=VALUE in LINE.
stat_field() {
    local v
    v=$(grep -oE "(^| )$2=[^ ]+" <<<"$1" | head -n 1) || { echo "no field $2 in: $1" >&2; return 1; }
    echo "${v#*=}"
}

# make_certs DIR - a CA, a server certificate for localhost / 127.0.0.1 and a
# client certificate, all signed by the CA, in the layout qemu-nbd, nbdkit
# and libnbd use: DIR/{ca-cert,server-cert,server-key,client-cert,client-key}.pem.
make_certs() {
    local d=$1
    need certtool
    mkdir -p "$d"
    cat >"$d/ca.info" <<'EOF'
cn = qednbd test CA
ca
cert_signing_key
expiration_days = 7
EOF
    cat >"$d/server.info" <<'EOF'
organization = qednbd test
cn = localhost
dns_name = localhost
ip_address = 127.0.0.1
tls_www_server
encryption_key
signing_key
expiration_days = 7
EOF
    cat >"$d/client.info" <<'EOF'
organization = qednbd test
cn = qednbd-test-client
tls_www_client
encryption_key
signing_key
expiration_days = 7
EOF
    (
        cd "$d" &&
        certtool --generate-privkey --outfile ca-key.pem &&
        certtool --generate-self-signed --load-privkey ca-key.pem --template ca.info \
            --outfile ca-cert.pem &&
        certtool --generate-privkey --outfile server-key.pem &&
        certtool --generate-certificate --load-ca-certificate ca-cert.pem \
            --load-ca-privkey ca-key.pem --load-privkey server-key.pem \
            --template server.info --outfile server-cert.pem &&
        certtool --generate-privkey --outfile client-key.pem &&
        certtool --generate-certificate --load-ca-certificate ca-cert.pem \
            --load-ca-privkey ca-key.pem --load-privkey client-key.pem \
            --template client.info --outfile client-cert.pem
    ) >"$tmp/certtool.log" 2>&1 || { cat "$tmp/certtool.log" >&2; fail "certtool failed"; }
}

# make_psk FILE USER - add a fresh random key for USER to FILE (psktool).
make_psk() {
    need psktool
    psktool -u "$2" -p "$1" >"$tmp/psktool.log" 2>&1 ||
        { cat "$tmp/psktool.log" >&2; fail "psktool failed"; }
    grep -q "^$2:" "$1" || fail "psktool wrote no key for $2 in $1"
}
