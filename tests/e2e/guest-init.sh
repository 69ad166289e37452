#!/bin/busybox sh
# guest-init.sh - /init of the end-to-end tests' guest (busybox sh, PID 1).
# Mounts the kernel's file systems, loads the modules listed in
# /modules.list (dependencies first, as the host resolved them), runs
# /scenario with the helpers of /guest-lib.sh, prints E2E-PASS or
# E2E-FAIL on the console and the marker port, and powers off.  Not run on
# the host.
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
ln -sf /proc/mounts /etc/mtab
. /guest-lib.sh

guest_main() {
    local m
    for m in $(cat /modules.list); do
        insmod "/lib/e2e-modules/$m" || die "insmod $m failed"
    done
    ( set -e; . /scenario ) || die "the scenario failed in step '$(cat /tmp/step 2>/dev/null)'"
}

# A subshell: die's exit must not end PID 1 (the kernel would panic).
if ( guest_main ); then
    say "E2E-PASS"
else
    say "E2E-FAIL"
fi
# No sync first: the scenario unmounted what it used, and after a failure
# a sync could block forever on a dead device.  The markers are out: each
# write to ttyS2 closes the tty, which waits until the output drained.
poweroff -f
