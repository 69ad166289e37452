#!/bin/bash
# nbd-client (the kernel client's user-space half) against the server over
# TCP: `nbd-client -l` lists the exports, and `nbd-client -N NAME host port
# /dev/nbd0` gets through the whole negotiation (it prints the export size)
# and only then fails, because there is no nbd kernel module here.  An
# unknown name fails during the negotiation, without a size.
. "$top_srcdir/tests/server/server-common.sh"
need qemu-img nbd-client


# The attach step would really attach /dev/nbd0 where the module is loaded:
# this test only wants the negotiation, so it refuses to run there.
if [ -e /sys/module/nbd ] || [ -e /dev/nbd0 ]; then
    skip "the nbd kernel module is loaded: not attaching a real /dev/nbd0"
fi

# client OUTFILE ARGS... - run nbd-client bounded, output (both streams) in
# OUTFILE, and set CLIENT_RC.
client() {
    local out=$1
    shift
    CLIENT_RC=0
    timeout -k 5 30 nbd-client "$@" >"$out" 2>&1 </dev/null || CLIENT_RC=$?
    [ "$CLIENT_RC" -ne 124 ] && [ "$CLIENT_RC" -ne 137 ] ||
        { cat "$out"; fail "nbd-client $* timed out"; }
}

# attach_negotiates NAME SIZE_MB [NAME-ARGS...] - the attach of export NAME
# gets through the negotiation, prints the size, and then fails locally.
attach_negotiates() {
    local name=$1 mb=$2
    shift 2
    client attach.out "$@" 127.0.0.1 "$SERVER_PORT" /dev/nbd0
    cat attach.out
    [ "$CLIENT_RC" -ne 0 ] || fail "nbd-client attach of '$name' succeeded without a kernel module?"
    grep -q "size = ${mb}MB" attach.out ||
        fail "nbd-client did not get through the negotiation of '$name' (no 'size = ${mb}MB')"
    # The failure comes after the negotiation, from the missing kernel
    # side, not from the server.
    if grep -qi 'server said\|unknown error returned by server' attach.out; then
        fail "nbd-client attach of '$name': the server refused it"
    fi
    server_alive || fail "server died during the nbd-client negotiation of '$name'"
}

qemu-img create -q -f qed alpha.qed 8M || fail "create alpha.qed"
qemu-img create -q -f qed beta.qed 3M || fail "create beta.qed"

# ---- several named exports ---------------------------------------------------
if server_multi_export; then
    start_server --tcp -e alpha=alpha.qed -e beta=beta.qed
    want=$'alpha\nbeta'
else
    note "$SERVER_KIND serves one export: listing a single named export"
    start_server --tcp -x alpha alpha.qed
    want=alpha
fi

client list.out -l 127.0.0.1 "$SERVER_PORT"
cat list.out
[ "$CLIENT_RC" -eq 0 ] || fail "nbd-client -l exited $CLIENT_RC"
# nbd-client prints "Negotiation: .." and then one name per line.
got=$(sed -e 's/^Negotiation: \.*//' list.out | grep -v '^$' | sort)
[ "$got" = "$want" ] || fail "nbd-client -l listed '$got', expected '$want'"

attach_negotiates alpha 8 -N alpha
if server_multi_export; then
    attach_negotiates beta 3 -N beta
fi

# An export that does not exist: refused during the negotiation.
client bad.out -N nosuch 127.0.0.1 "$SERVER_PORT" /dev/nbd0
cat bad.out
[ "$CLIENT_RC" -ne 0 ] || fail "nbd-client attached an export that does not exist"
if grep -q 'size = ' bad.out; then
    fail "nbd-client got a size for an export that does not exist"
fi
server_alive || fail "server died after a request for an unknown export"

# The server still lists after all that.
client list.out -l 127.0.0.1 "$SERVER_PORT"
[ "$CLIENT_RC" -eq 0 ] || { cat list.out; fail "nbd-client -l exited $CLIENT_RC the second time"; }
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC after SIGTERM"

# ---- the default export "" ----------------------------------------------------
start_server --tcp alpha.qed
client list.out -l 127.0.0.1 "$SERVER_PORT"
cat list.out
[ "$CLIENT_RC" -eq 0 ] || fail "nbd-client -l of the default export exited $CLIENT_RC"
attach_negotiates '""' 8 -N ""
# Without -N, nbd-client asks for the default export too.
attach_negotiates 'default (no -N)' 8
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC after SIGTERM"
image_clean alpha.qed
echo "ok: $SERVER_KIND"
