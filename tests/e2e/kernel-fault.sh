#!/bin/bash
# kernel-fault.sh - the fault round: the guest's kernel writes to a qednbd
# export (nbd-client, one connection, no -persist) and the host kills the
# server with SIGKILL in the middle (tests/e2e/guest-fault.sh).  The guest
# must see I/O errors, not silent success; the host restarts qednbd on the
# same image (it repairs the NEED_CHECK image at open); a fresh attach finds
# every file synced before the kill intact and the file system clean after
# its journal replay; afterwards the image checks clean and reads back with
# the guest's checksums on the host.
. "$top_srcdir/tests/e2e/e2e-common.sh"

# fault_step TAG - the host side of the guest's waits.
fault_step() {
    local i
    case "$1" in
        kill)
            kill -KILL "$SERVER_PID" || fail "cannot kill qednbd $SERVER_PID"
            wait "$SERVER_PID" 2>/dev/null
            note "qednbd $SERVER_PID killed with SIGKILL while the guest wrote (header features now $(header_features "$E2E_IMAGE"); 2 = NEED_CHECK)"
            ;;
        restart)
            prod_start "$tmp/nbd.sock" -e "disk=$E2E_IMAGE"
            note "qednbd restarted as $SERVER_PID: $(grep -v '^+' "$SERVER_LOG" | tr '\n' ' ')"
            ;;
        *) fail "unexpected guest wait '$1'" ;;
    esac
}

e2e_setup
# A cluster the killed server had appended to the file but not yet entered
# in a table is leaked (harmless, as with QEMU): the checks accept leaks,
# never a bad or double reference.
E2E_LEAKS_OK=1
E2E_IMAGE="$tmp/disk.qed"
run 30 "$QEDIMG" create -c 64K "$E2E_IMAGE" 256M
prod_start "$tmp/nbd.sock" -e "disk=$E2E_IMAGE"
e2e_initramfs "$tmp/initrd" "$E2E_DIR/guest-fault.sh" crc32c_generic nbd ext4 virtio_pci virtio_net
e2e_boot "$tmp/initrd" 300 \
    -netdev "user,id=net0,restrict=on,guestfwd=tcp:10.0.2.100:10809-cmd:socat -lf $tmp/socat.log - UNIX-CONNECT:$tmp/nbd.sock" \
    -device virtio-net-pci,netdev=net0,romfile=
e2e_wait_guest fault_step
e2e_markers | grep -q '^E2E-IOERR ' || fail "the guest saw no I/O error after the kill"
note "$(e2e_markers | grep '^E2E-IOERR ')"
e2e_finish 1
echo "PASS: SIGKILL under a writing kernel client: I/O errors, then intact after a restart"
