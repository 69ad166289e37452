#!/bin/bash
# kernel-client-tls.sh - kernel-client.sh's scenario over TLS: qednbd
# requires TLS and a client certificate (--tls=require --tls-verify-peer);
# the guest's nbd-client verifies the server against the CA and presents
# its certificate (-A CA -H localhost -F CERT -K KEY -x), for every attach
# (4 connections, ioctl mode, one connection).  Every connection the server
# counted must have negotiated TLS.
. "$top_srcdir/tests/e2e/e2e-common.sh"

e2e_setup
e2e_tls_setup
run 30 "$QEDIMG" create -c 64K "$tmp/disk.qed" 256M
mkdir -p "$tmp/guest-files/tls"
cp "$tmp/certs/ca-cert.pem" "$tmp/certs/client-cert.pem" "$tmp/certs/client-key.pem" \
    "$tmp/guest-files/tls/" || fail "cannot copy the client's credentials"
# -certfile, not -F: nbd-client 3.24 rejects -F ("unrecognized option").
E2E_NBD_CLIENT_ARGS="-A /tls/ca-cert.pem -H localhost -certfile /tls/client-cert.pem -K /tls/client-key.pem -x"
e2e_kernel_client "$tmp/disk.qed" "${E2E_TLS_SERVER_ARGS[@]}"
e2e_tls_stats
echo "PASS: kernel client over TLS with client certificates"
