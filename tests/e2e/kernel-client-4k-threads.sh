#!/bin/bash
# kernel-client-4k-threads.sh - kernel-client.sh's scenario on an image with
# 4 KiB clusters (every ext4 block its own cluster, TRIM punches single
# blocks) served with --aio=threads (the thread-pool I/O backend).
. "$top_srcdir/tests/e2e/e2e-common.sh"

e2e_setup
run 30 "$QEDIMG" create -c 4K "$tmp/disk.qed" 256M
e2e_kernel_client "$tmp/disk.qed" --aio=threads
grep -qE '(^| )cluster_size=4096( |$)' <<<"$E2E_STATS" ||
    fail "the server did not serve 4 KiB clusters: $E2E_STATS"
echo "PASS: kernel client, 4 KiB clusters, --aio=threads"
