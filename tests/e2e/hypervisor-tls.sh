#!/bin/bash
# hypervisor-tls.sh - hypervisor.sh's scenario over TLS: qednbd requires TLS
# and a client certificate (--tls=require --tls-verify-peer); QEMU's NBD
# client connects with -object tls-creds-x509,endpoint=client (CA and client
# certificate from the same directory) and tls-hostname=localhost, the name
# in the server's certificate (a Unix socket has no host name to check).
. "$top_srcdir/tests/e2e/e2e-common.sh"

e2e_setup
e2e_tls_setup
run 30 "$QEDIMG" create -c 64K "$tmp/disk.qed" 256M
E2E_QEMU_ARGS=(-object "tls-creds-x509,id=tls0,dir=$tmp/certs,endpoint=client")
E2E_BLOCK_OPTS=",tls-creds=tls0,tls-hostname=localhost"
e2e_hypervisor "$tmp/disk.qed" "$E2E_DIR/guest-hypervisor.sh" "${E2E_TLS_SERVER_ARGS[@]}"
e2e_finish 1
e2e_tls_stats
echo "PASS: QEMU's NBD client over TLS with a client certificate"
