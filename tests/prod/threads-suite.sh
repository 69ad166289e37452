#!/bin/bash
# The existing shell tests again with --threads=3 (issue 14): a
# representative set of those whose servers take QEDNBD_TEST_ARGS (server
# tests, interoperability through qemu-io / nbdinfo / nbdcopy / fio, the
# connection limit, many clients at once, the memory caps with clients
# that never read, fault injection and crash
# recovery), each passing with three loop threads, so connections and
# exports land on threads other than the owner's.  Every test must pass
# (a skip is a skip); the counts are printed by run-tests.sh.  The control
# socket and dirty-bitmap tests run with it too: bitmap commands, handshake
# selection and BLOCK_STATUS of bitmaps on images owned by other threads.
. "$top_srcdir/tests/server/server-common.sh"

tests=(
    server/nbd-qemu-io.sh server/nbd-nbdinfo.sh server/nbd-shutdown.sh
    server/nbd-differential.sh server/nbd-fio.sh server/nbd-nbdcopy.sh
    server/nbd-client-handshake.sh server/corrupt-clean-image.sh
    load/conn-limit.sh load/load-many-clients.sh load/memcap-never-read.sh
    faults/second-signal.sh faults/races.sh faults/inject-lifecycle.sh
    server/control-socket.sh server/nbd-dirty-bitmap.sh
)
args=()
for t in "${tests[@]}"; do
    args+=("$top_srcdir/tests/$t")
done
cd "$top_builddir/tests" || fail "cd $top_builddir/tests"
QEDNBD_TEST_ARGS="${QEDNBD_TEST_ARGS:+$QEDNBD_TEST_ARGS }--threads=3" TEST_LOGDIR="$tmp/logs" \
    bash "$top_srcdir/tests/run-tests.sh" "${args[@]}" || fail "a test failed with --threads=3"
