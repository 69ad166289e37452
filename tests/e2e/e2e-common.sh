# e2e-common.sh - sourced by the end-to-end tests (not a test): a real Linux
# guest, Debian's packaged kernel booted by qemu-system-x86_64 under TCG (no
# KVM needed), uses a qednbd export as a block device.
#
# Builds on tests/prod/prod-common.sh and tests/server/server-common.sh ($tmp,
# fail, skip, need, run, prod_start, stop_server, make_certs, cleanup of the
# servers) and adds:
#   e2e_setup                  skip unless everything needed is here; fetch
#                              the kernel (cached) and set E2E_KERNEL
#   e2e_initramfs OUT SCRIPT MODULE...
#                              build the guest's initramfs: busybox-static,
#                              nbd-client, e2fsprogs, their libraries, MODULE
#                              and its dependencies, and SCRIPT as /scenario
#   e2e_boot INITRD SECONDS QEMU-ARGS...
#                              boot the guest in the background (bounded)
#   e2e_wait_guest HANDLER     wait for the guest to power off; each time it
#                              asks the host "E2E-WAIT TAG", run HANDLER TAG
#                              then let the guest go on; fail unless the
#                              guest printed E2E-PASS
#   e2e_alloc FILE             bytes FILE occupies on the host's disk
#   e2e_trim_check TAG         the host's side of the guest's "written" and
#                              "trimmed" waits: fstrim must give space back
#   e2e_host_verify IMAGE      qed-img check, qemu-img check (with
#                              e2e_qed_walk, an own table walk), convert to
#                              raw, e2fsck -fn, every file's checksum with
#                              debugfs
#   e2e_server_stats           SIGUSR1; check the export's stats line
#   e2e_kernel_client IMAGE SERVER-ARGS...
#   e2e_hypervisor IMAGE GUEST-SCRIPT SERVER-ARGS...
#                              the two scenarios (kernel's NBD client over a
#                              guestfwd; QEMU's NBD client as a virtio disk)
#   e2e_finish N               after the guest: N verifications, stats,
#                              exit 0 on SIGTERM, e2e_host_verify
#   e2e_tls_setup, e2e_tls_stats
#                              certificates; every connection used TLS
#
# The guest prints its markers (lines starting with "E2E-") on the serial
# console (ttyS0, kept in $tmp/console.log with the kernel's messages) and on
# a second port that only carries them (ttyS2, $tmp/markers.log), which the
# host parses.  ttyS1 is a pipe from the host: the guest reads "go TAG" on it
# after "E2E-WAIT TAG" (used to measure the image between two steps).
#
# Environment: QEDNBD_SKIP_SLOW=1 skips these tests (make check-sanitizers
# sets it: they ran in make check already); QEDNBD_E2E_CACHE (default
# $top_builddir/tests/e2e-cache) keeps the unpacked kernel between runs.

. "$top_srcdir/tests/prod/prod-common.sh"

E2E_DIR="$top_srcdir/tests/e2e"
E2E_QEMU_PID=
E2E_TIMEOUT_PID=
# Every module a test may ask e2e_initramfs for: the cache keeps these and
# their dependencies.  crc32c_generic provides "crc32c", which ext4 looks up
# at mount time and cannot load by itself (there is no modprobe setup in
# the guest): it is loaded before ext4.
E2E_ALL_MODULES="crc32c_generic nbd ext4 virtio_pci virtio_net virtio_blk"

# Stop the guest (by the pid QEMU wrote, and the timeout wrapping it) before
# server-common's cleanup stops the servers and removes $tmp.
e2e_cleanup() {
    local pid i
    for pid in $E2E_QEMU_PID $E2E_TIMEOUT_PID; do
        kill -TERM "$pid" 2>/dev/null || continue
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
    done
    cleanup
}
trap e2e_cleanup EXIT

# e2e_setup - skip (exit 77, saying why) when the e2e tests cannot run here;
# otherwise make sure the kernel is unpacked in the cache and set E2E_KERNEL
# (vmlinuz), E2E_KMODS (the directory of its modules) and E2E_KVER.
e2e_setup() {
    [ "${QEDNBD_SKIP_SLOW:-0}" = 1 ] &&
        skip "QEDNBD_SKIP_SLOW=1: the end-to-end guests run once, in make check, not again here"
    [ -x "$QEDNBD" ] || fail "$QEDNBD is not built"
    [ -x "$QEDIMG" ] || fail "$QEDIMG is not built"
    need qemu-system-x86_64 qemu-img socat cpio nbd-client mke2fs e2fsck debugfs \
        modinfo ldd apt-get apt-cache dpkg-deb flock
    [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 ||
        skip "no static /bin/busybox (install busybox-static)"
    local cache=${QEDNBD_E2E_CACHE:-$top_builddir/tests/e2e-cache} pkg
    mkdir -p "$cache" || fail "cannot create the kernel cache $cache"
    cache=$(cd "$cache" && pwd)
    # The kernel package linux-image-amd64 points to today (apt's lists).
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n 1)
    [ -n "$pkg" ] ||
        skip "apt-cache knows no linux-image-amd64 kernel package (no package lists: run apt-get update)"
    # One test at a time fills the cache (other builds may share it).
    exec 8>"$cache/lock" || fail "cannot open $cache/lock"
    flock -w 300 8 || fail "the kernel cache $cache stayed locked for 300 s"
    if [ ! -f "$cache/$pkg/complete" ]; then
        e2e_fetch_kernel "$cache" "$pkg"
    fi
    flock -u 8
    exec 8>&-
    E2E_KVER=$(cat "$cache/$pkg/kver")
    E2E_KERNEL="$cache/$pkg/vmlinuz"
    E2E_KMODS="$cache/$pkg/modules"
    note "kernel: $pkg ($E2E_KVER) from $cache"
}

# e2e_fetch_kernel CACHE PKG - apt-get download PKG, unpack it with
# dpkg-deb -x, and keep only vmlinuz and the modules (with their directory
# layout) in CACHE/PKG; skip when the package cannot be downloaded.
e2e_fetch_kernel() {
    local cache=$1 pkg=$2 work deb kver
    work="$cache/$pkg.tmp"
    rm -rf "$work" "$cache/$pkg"
    mkdir -p "$work" || fail "mkdir $work"
    note "downloading $pkg (apt-get download)"
    if ! (cd "$work" && timeout -k 5 600 apt-get download "$pkg") >"$tmp/apt.log" 2>&1; then
        tail -n 5 "$tmp/apt.log"
        rm -rf "$work"
        skip "cannot download the kernel package $pkg with apt-get download (no network?): $(grep -E '^(E|Err):' "$tmp/apt.log" | head -n 1)"
    fi
    deb=$(ls "$work"/*.deb 2>/dev/null | head -n 1)
    [ -n "$deb" ] || fail "apt-get download $pkg left no .deb in $work"
    dpkg-deb -x "$deb" "$work/root" || fail "dpkg-deb -x $deb failed"
    kver=$(ls "$work/root/lib/modules" | head -n 1)
    [ -n "$kver" ] && [ -f "$work/root/boot/vmlinuz-$kver" ] ||
        fail "$deb has no /boot/vmlinuz-VERSION with its /lib/modules/VERSION"
    mkdir -p "$cache/$pkg.new/modules" &&
        cp "$work/root/boot/vmlinuz-$kver" "$cache/$pkg.new/vmlinuz" &&
        cp "$work/root/lib/modules/$kver/modules.builtin" "$cache/$pkg.new/modules/" ||
        fail "cannot fill $cache/$pkg.new"
    # Only the modules the tests may load, with their dependencies, are kept
    # (a few MB of the 400 MB unpacked): the cache is small enough to sit in
    # a build tree that make check-sanitizers copies.
    E2E_KMODS="$work/root/lib/modules/$kver"
    for f in $(e2e_module_order $E2E_ALL_MODULES); do
        mkdir -p "$cache/$pkg.new/modules/$(dirname "$f")" &&
            cp "$E2E_KMODS/$f" "$cache/$pkg.new/modules/$f" || fail "cannot copy $f"
    done
    echo "$kver" >"$cache/$pkg.new/kver" &&
        touch "$cache/$pkg.new/complete" || fail "cannot fill $cache/$pkg.new"
    rm -rf "$work"
    mv "$cache/$pkg.new" "$cache/$pkg" || fail "mv $cache/$pkg.new $cache/$pkg"
}

# e2e_module_order NAME... - print the module files (relative to $E2E_KMODS)
# that load NAME..., dependencies first, each once.  The package has no
# modules.dep: the dependencies come from each module's own "depends" field.
# A NAME built into the kernel (modules.builtin) needs no file.
e2e_module_order() {
    local index="$tmp/modindex" name
    (cd "$E2E_KMODS" && find kernel -name '*.ko*') |
        awk '{ n = $0; sub(/.*\//, "", n); sub(/\.ko.*$/, "", n); gsub(/-/, "_", n); print n, $0 }' \
        >"$index"
    E2E_SEEN=" "
    E2E_ORDER=()
    for name in "$@"; do
        e2e_module_visit "${name//-/_}" "$index" ""
    done
    printf '%s\n' "${E2E_ORDER[@]}"
}

# e2e_module_visit NAME INDEX PATH - depth-first: NAME's dependencies, then NAME.
e2e_module_visit() {
    local name=$1 index=$2 path=$3 file dep
    case "$E2E_SEEN" in *" $name "*) return 0 ;; esac
    case " $path " in *" $name "*) fail "module dependency cycle: $path $name" ;; esac
    file=$(awk -v n="$name" '$1 == n { print $2; exit }' "$index")
    if [ -z "$file" ]; then
        grep -qE "/${name//_/[_-]}\.ko" "$E2E_KMODS/modules.builtin" 2>/dev/null ||
            fail "module $name: neither a .ko file in the kernel package nor built in"
        E2E_SEEN+="$name "
        return 0
    fi
    for dep in $(modinfo -F depends "$E2E_KMODS/$file" | tr ',' ' '); do
        e2e_module_visit "${dep//-/_}" "$index" "$path $name"
    done
    E2E_SEEN+="$name "
    E2E_ORDER+=("$file")
}

# e2e_copy_with_libs ROOT PROG... - copy PROG and the shared libraries ldd
# lists for it into ROOT, at the same paths.
e2e_copy_with_libs() {
    local root=$1 p lib
    shift
    for p in "$@"; do
        mkdir -p "$root$(dirname "$p")" && cp -L "$p" "$root$p" || fail "cannot copy $p"
        for lib in $(ldd "$p" | grep -oE '/[^ ]+\.so[^ ]*'); do
            [ -e "$root$lib" ] && continue
            mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib" ||
                fail "cannot copy $lib (needed by $p)"
        done
    done
}

# e2e_initramfs OUT SCRIPT MODULE... - write the guest's initramfs (an
# uncompressed newc cpio archive) to OUT.  /init (tests/e2e/guest-init.sh)
# loads the modules in dependency order and runs SCRIPT with the helpers of
# tests/e2e/guest-lib.sh.  The files of directory $E2E_GUEST_FILES, when
# set, are added at the root.
e2e_initramfs() {
    local out=$1 script=$2 root="$tmp/initramfs" f
    shift 2
    rm -rf "$root"
    mkdir -p "$root"/{bin,sbin,usr/sbin,etc,proc,sys,dev,tmp,mnt,lib/e2e-modules} ||
        fail "mkdir $root"
    cp /bin/busybox "$root/bin/busybox" || fail "cp /bin/busybox"
    e2e_copy_with_libs "$root" "$(command -v nbd-client)" "$(command -v mke2fs)" \
        "$(command -v e2fsck)"
    # mke2fs picks the file system type from its name.
    ln -s mke2fs "$root$(dirname "$(command -v mke2fs)")/mkfs.ext4"
    [ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$root/etc/"
    : >"$root/modules.list"
    for f in $(e2e_module_order "$@"); do
        cp "$E2E_KMODS/$f" "$root/lib/e2e-modules/" || fail "cp $f"
        basename "$f" >>"$root/modules.list"
    done
    if [ -n "${E2E_GUEST_FILES:-}" ]; then
        cp -a "$E2E_GUEST_FILES/." "$root/" || fail "cannot copy $E2E_GUEST_FILES"
    fi
    cp "$E2E_DIR/guest-init.sh" "$root/init" && chmod 755 "$root/init" &&
        cp "$E2E_DIR/guest-lib.sh" "$root/guest-lib.sh" &&
        cp "$script" "$root/scenario" || fail "cannot copy the guest scripts"
    (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >"$out" ||
        fail "cpio failed for $root"
    note "initramfs: $(($(stat -c %s "$out") / 1024)) KiB, modules: $(tr '\n' ' ' <"$root/modules.list")"
}

# e2e_boot INITRD SECONDS QEMU-ARGS... - start the guest in the background
# under `timeout SECONDS`: serial console to $tmp/console.log, host-to-guest
# pipe $tmp/ctl.{in,out} on ttyS1, markers to $tmp/markers.log on ttyS2.
e2e_boot() {
    local initrd=$1 secs=$2 i
    shift 2
    rm -f "$tmp/console.log" "$tmp/markers.log" "$tmp/ctl.in" "$tmp/ctl.out" "$tmp/qemu.pid"
    mkfifo "$tmp/ctl.in" "$tmp/ctl.out" || fail "mkfifo"
    E2E_DEADLINE=$(($(date +%s) + secs))
    E2E_BOOT_START=$(date +%s)
    timeout -k 5 "$secs" qemu-system-x86_64 -machine pc,accel=tcg -cpu max -smp 1 -m 512 \
        -nographic -nodefaults -no-reboot -no-user-config \
        -kernel "$E2E_KERNEL" -initrd "$initrd" \
        -append "console=ttyS0 panic=-1 quiet loglevel=4 8250.nr_uarts=3" \
        -serial "file:$tmp/console.log" -serial "pipe:$tmp/ctl" -serial "file:$tmp/markers.log" \
        -pidfile "$tmp/qemu.pid" "$@" </dev/null >"$tmp/qemu.out" 2>&1 &
    E2E_TIMEOUT_PID=$!
    for ((i = 0; i < 300; i++)); do
        [ -s "$tmp/qemu.pid" ] && break
        kill -0 "$E2E_TIMEOUT_PID" 2>/dev/null || break
        sleep 0.1
    done
    E2E_QEMU_PID=$(cat "$tmp/qemu.pid" 2>/dev/null)
    [ -n "$E2E_QEMU_PID" ] || fail "qemu-system-x86_64 did not start: $(tail -n 5 "$tmp/qemu.out")"
}

# e2e_markers - the guest's marker lines so far (without the CRs the tty adds).
e2e_markers() {
    tr -d '\r' <"$tmp/markers.log" 2>/dev/null | grep -a '^E2E-'
}

# e2e_wait_guest HANDLER - wait until the guest powers off (or the deadline
# of e2e_boot passes: fail).  For each "E2E-WAIT TAG" the guest prints, run
# HANDLER TAG, then send "go TAG" on ttyS1.  Fails unless QEMU exited 0 and
# the guest printed E2E-PASS (and no E2E-FAIL).
e2e_wait_guest() {
    local handler=$1 done_waits=0 waits tag rc=0
    while kill -0 "$E2E_TIMEOUT_PID" 2>/dev/null; do
        waits=$(e2e_markers | grep -c '^E2E-WAIT ')
        while [ "$waits" -gt "$done_waits" ]; do
            done_waits=$((done_waits + 1))
            tag=$(e2e_markers | grep '^E2E-WAIT ' | sed -n "${done_waits}p" | cut -d' ' -f2)
            note "guest waits at '$tag' ($(($(date +%s) - E2E_BOOT_START)) s after boot)"
            "$handler" "$tag"
            echo "go $tag" >"$tmp/ctl.in" || fail "cannot write to the guest's ttyS1"
        done
        [ "$(date +%s)" -le "$E2E_DEADLINE" ] || break
        sleep 0.2
    done
    wait "$E2E_TIMEOUT_PID" || rc=$?
    E2E_TIMEOUT_PID=
    E2E_QEMU_PID=
    note "guest ran $(($(date +%s) - E2E_BOOT_START)) s"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        e2e_dump
        fail "the guest did not finish in time (qemu killed by timeout)"
    fi
    if e2e_markers | grep -q '^E2E-FAIL'; then
        e2e_dump
        fail "the guest failed: $(e2e_markers | grep '^E2E-FAIL' | head -n 1)"
    fi
    e2e_markers | grep -qx 'E2E-PASS' || { e2e_dump; fail "the guest printed no E2E-PASS (qemu exit $rc)"; }
    echo "--- guest console:"
    tr -d '\r' <"$tmp/console.log"
    [ "$rc" -eq 0 ] || { e2e_dump; fail "qemu-system-x86_64 exited $rc"; }
}

# e2e_dump - show the end of the console and QEMU's own output.
e2e_dump() {
    echo "--- guest console (last 60 lines):" >&2
    tr -d '\r' <"$tmp/console.log" 2>/dev/null | tail -n 60 >&2
    echo "--- qemu output:" >&2
    tail -n 20 "$tmp/qemu.out" >&2
}

# e2e_alloc FILE - print the bytes FILE occupies on disk (st_blocks * 512
# units as stat reports them): holes punched by TRIM do not count.
e2e_alloc() {
    stat -c '%b %B' "$1" | awk '{ print $1 * $2 }'
}

# e2e_server_stats - ask the server (SERVER_PID) for its statistics and
# check the export's line: no errors, and at least one trim.  Sets E2E_STATS.
e2e_server_stats() {
    local before i
    before=$(grep -c 'stats: export' "$SERVER_LOG")
    kill -USR1 "$SERVER_PID" || fail "cannot signal the server"
    for ((i = 0; i < 100; i++)); do
        [ "$(grep -c 'stats: export' "$SERVER_LOG")" -gt "$before" ] && break
        sleep 0.1
    done
    E2E_STATS=$(grep 'stats: export' "$SERVER_LOG" | tail -n 1)
    [ -n "$E2E_STATS" ] || fail "no statistics in the server log after SIGUSR1"
    note "$E2E_STATS"
    grep -qE '(^| )errors=0( |$)' <<<"$E2E_STATS" || fail "the server counted errors: $E2E_STATS"
    grep -qE '(^| )trims=[1-9]' <<<"$E2E_STATS" || fail "the server received no TRIM: $E2E_STATS"
}

# e2e_host_verify IMAGE - after the server stopped: the image checks clean
# (qed-img and qemu-img), and an independent read-back (qemu-img convert to
# raw, e2fsck -fn, debugfs) finds every file the guest reported with
# "E2E-FILE PATH SHA256", and none of those it reported "E2E-GONE PATH".
e2e_host_verify() {
    local img=$1 raw="$tmp/readback.raw" path sum got n=0
    e2e_qed_img_check "$img"
    e2e_qemu_img_check "$img"
    run 120 qemu-img convert -f qed -O raw "$img" "$raw"
    run 120 e2fsck -fn "$raw"
    while read -r _ path sum; do
        got=$(timeout 60 debugfs -R "cat $path" "$raw" 2>/dev/null | sha256sum | cut -d' ' -f1)
        [ "$got" = "$sum" ] || fail "host read-back of $path: sha256 $got, the guest wrote $sum"
        n=$((n + 1))
    done < <(e2e_reported_files)
    [ "$n" -gt 0 ] || fail "the guest reported no file (no E2E-FILE marker)"
    while read -r _ path; do
        timeout 60 debugfs -R "stat $path" "$raw" 2>&1 | grep -q 'File not found' ||
            fail "$path was deleted in the guest but debugfs still finds it"
    done < <(e2e_markers | grep '^E2E-GONE ')
    rm -f "$raw"
    note "host read-back: $n files match the guest's checksums"
}

# e2e_qed_img_check IMAGE - qed-img check finds IMAGE clean.  With
# E2E_LEAKS_OK=1 (after a crash: a cluster appended to the file whose table
# entry was never written is leaked, as with QEMU) exit 3, leaked clusters
# only, is accepted too.
e2e_qed_img_check() {
    local img=$1 rc=0
    timeout -k 5 60 "$QEDIMG" check "$img" >"$tmp/out" 2>"$tmp/err" || rc=$?
    if [ "$rc" -eq 3 ] && [ "${E2E_LEAKS_OK:-0}" = 1 ]; then
        note "qed-img check after the crash: $(grep leaked "$tmp/out")"
    elif [ "$rc" -ne 0 ]; then
        cat "$tmp/out" "$tmp/err" >&2
        fail "qed-img check $img exited $rc"
    fi
}

# e2e_qemu_img_check IMAGE - qemu-img check finds IMAGE clean, NEED_CHECK
# (0x2) is clear.  Exit 3 (leaked clusters only) is taken as clean when an
# independent walk of the tables (e2e_qed_walk) finds every cluster of the
# file referenced exactly once: qemu-img 7.2 over-counts leaks on images
# with 4 KiB clusters (about one per 4096 clusters, on images that qemu-io
# wrote itself too).  With E2E_LEAKS_OK=1 the walk may find leaks.
e2e_qemu_img_check() {
    local img=$1 rc=0 f
    timeout -k 5 60 qemu-img check -f qed "$img" >"$tmp/out" 2>"$tmp/err" || rc=$?
    case "$rc" in
        0) ;;
        3)
            e2e_qed_walk "$img" >"$tmp/walk" 2>&1 ||
                fail "qemu-img check: $(grep leaked "$tmp/out"); the table walk agrees: $(cat "$tmp/walk")"
            note "qemu-img check says '$(grep leaked "$tmp/out")'; the table walk: $(cat "$tmp/walk")"
            ;;
        *)
            cat "$tmp/out" "$tmp/err" >&2
            fail "qemu-img check -f qed $img exited $rc"
            ;;
    esac
    f=$(header_features "$img") || fail "cannot read the header of $img"
    [ $((f & 2)) -eq 0 ] || fail "NEED_CHECK is still set in $img (features=$f)"
}

# e2e_qed_walk IMAGE - walk the header, L1 and L2 tables of a QED image and
# check that every cluster of the file after the header is referenced
# exactly once (L1, L2 tables, data clusters), all in the file and aligned.
# Prints a summary; exits 1 on any bad or double reference, and on a leak
# unless E2E_LEAKS_OK=1.
e2e_qed_walk() {
    "$PY" - "$1" "${E2E_LEAKS_OK:-0}" <<'PY'
import os, struct, sys
path, leaks_ok = sys.argv[1], sys.argv[2] == '1'
with open(path, 'rb') as f:
    magic, cs, ts, hs, feat, compat, autoclear, l1off, size = struct.unpack('<IIIIQQQQQ', f.read(56))
    nclusters = os.path.getsize(path) // cs
    tbytes = ts * cs
    refs = [0] * nclusters
    bad = []

    def use(off, n, what):
        if off % cs or off // cs < hs or off // cs + n > nclusters:
            bad.append('%s at %d' % (what, off))
            return False
        for c in range(off // cs, off // cs + n):
            refs[c] += 1
        return True

    def table(off):
        f.seek(off)
        return struct.unpack('<%dQ' % (tbytes // 8), f.read(tbytes))

    use(l1off, ts, 'L1 table')
    data = 0
    for i, l2 in enumerate(table(l1off)):
        if l2 and use(l2, ts, 'L2 table %d' % i):
            for j, d in enumerate(table(l2)):
                if d > 1:  # 0: unallocated, 1: zero cluster
                    data += 1
                    use(d, 1, 'data cluster %d/%d' % (i, j))
leaks = [c for c in range(hs, nclusters) if refs[c] == 0]
twice = [c for c in range(nclusters) if refs[c] > 1]
print('%d clusters, %d data, %d leaked, %d referenced twice, %d bad references'
      % (nclusters, data, len(leaks), len(twice), len(bad)))
sys.exit(1 if (leaks and not leaks_ok) or twice or bad else 0)
PY
}

# The last checksum the guest reported for each file.
e2e_reported_files() {
    e2e_markers | grep '^E2E-FILE ' | awk '{ last[$2] = $0 } END { for (p in last) print last[p] }'
}

# e2e_trim_check TAG - the host side of the guest's "written" and "trimmed"
# waits: record the image's allocated bytes at "written", and at "trimmed"
# require that at least E2E_TRIM_MIN bytes came back.
E2E_TRIM_MIN=$((12 * 1024 * 1024))
e2e_trim_check() {
    case "$1" in
        written)
            E2E_ALLOC_WRITTEN=$(e2e_alloc "$E2E_IMAGE")
            note "allocated after writing: $E2E_ALLOC_WRITTEN bytes"
            ;;
        trimmed)
            E2E_ALLOC_TRIMMED=$(e2e_alloc "$E2E_IMAGE")
            note "allocated after fstrim: $E2E_ALLOC_TRIMMED bytes"
            [ -n "${E2E_ALLOC_WRITTEN:-}" ] || fail "the guest trimmed before it reported 'written'"
            [ $((E2E_ALLOC_WRITTEN - E2E_ALLOC_TRIMMED)) -ge "$E2E_TRIM_MIN" ] ||
                fail "fstrim gave back $((E2E_ALLOC_WRITTEN - E2E_ALLOC_TRIMMED)) bytes, expected at least $E2E_TRIM_MIN"
            ;;
        *) note "no host action for '$1'" ;;
    esac
}

# e2e_finish VERIFIED - the host's checks after the guest powered off: the
# guest reported VERIFIED "E2E-VERIFIED" lines, the server's statistics
# have no error, qednbd exits 0 on SIGTERM, and e2e_host_verify $E2E_IMAGE.
e2e_finish() {
    [ "$(e2e_markers | grep -c '^E2E-VERIFIED ')" -eq "$1" ] ||
        fail "the guest verified its files $(e2e_markers | grep -c '^E2E-VERIFIED ') times, expected $1"
    e2e_server_stats
    stop_server TERM
    [ "$SERVER_RC" -eq 0 ] || fail "qednbd exited $SERVER_RC on SIGTERM"
    e2e_host_verify "$E2E_IMAGE"
}

# e2e_kernel_client IMAGE SERVER-ARGS... - scenario 1 on IMAGE (a QED image
# the caller created): serve it, boot the guest of guest-kernel-client.sh
# with a restrict=on user network whose only way out is a guestfwd of
# 10.0.2.100:10809 to the server's Unix socket (one socat per connection;
# its messages go to $tmp/socat.log: QEMU gives the command the connection
# as stderr too, where they would reach the guest's NBD client as data),
# and check everything afterwards.  $E2E_NBD_CLIENT_ARGS, when set, is
# added to every nbd-client command in the guest; the initramfs gets the
# files of $tmp/guest-files (E2E_GUEST_FILES), where the caller may put more.
e2e_kernel_client() {
    E2E_IMAGE=$1
    shift
    prod_start "$tmp/nbd.sock" -e "disk=$E2E_IMAGE" "$@"
    mkdir -p "$tmp/guest-files"
    echo "${E2E_NBD_CLIENT_ARGS:-}" >"$tmp/guest-files/nbd-client.args"
    E2E_GUEST_FILES="$tmp/guest-files"
    e2e_initramfs "$tmp/initrd" "$E2E_DIR/guest-kernel-client.sh" \
        crc32c_generic nbd ext4 virtio_pci virtio_net
    e2e_boot "$tmp/initrd" 300 \
        -netdev "user,id=net0,restrict=on,guestfwd=tcp:10.0.2.100:10809-cmd:socat -lf $tmp/socat.log - UNIX-CONNECT:$SERVER_SOCK" \
        -device virtio-net-pci,netdev=net0,romfile=
    e2e_wait_guest e2e_trim_check
    e2e_finish 2
    # 4 connections for -C 4, then one for -L and one for the last attach.
    [ "$(stat_field "$E2E_STATS" connections)" -eq 6 ] ||
        fail "the export saw $(stat_field "$E2E_STATS" connections) connections, expected 6 (-C 4, -L, one more)"
}

# e2e_hypervisor IMAGE GUEST-SCRIPT SERVER-ARGS... - scenario 2 on IMAGE:
# serve it, and boot a guest whose virtio disk QEMU's own NBD client opens
# on the server's Unix socket with discard=unmap; run GUEST-SCRIPT there.
# E2E_QEMU_ARGS (an array) goes to QEMU's command line, E2E_BLOCK_OPTS
# (",key=value...") to the -blockdev options.
E2E_QEMU_ARGS=()
e2e_hypervisor() {
    E2E_IMAGE=$1
    local script=$2
    shift 2
    prod_start "$tmp/nbd.sock" -e "disk=$E2E_IMAGE" "$@"
    e2e_initramfs "$tmp/initrd" "$script" crc32c_generic ext4 virtio_pci virtio_blk
    e2e_boot "$tmp/initrd" 300 "${E2E_QEMU_ARGS[@]}" \
        -blockdev "driver=nbd,server.type=unix,server.path=$SERVER_SOCK,export=disk,node-name=n0,discard=unmap${E2E_BLOCK_OPTS:-}" \
        -device virtio-blk-pci,drive=n0
    e2e_wait_guest e2e_trim_check
}

# e2e_tls_setup - X.509 credentials in $tmp/certs (make_certs: a CA, a
# server certificate for "localhost", a client certificate); sets
# E2E_TLS_SERVER_ARGS to qednbd's options that require TLS and a client
# certificate.
e2e_tls_setup() {
    make_certs "$tmp/certs"
    E2E_TLS_SERVER_ARGS=(--tls-certificates="$tmp/certs" --tls=require --tls-verify-peer)
}

# e2e_tls_stats - every connection to the export negotiated TLS, and no
# handshake failed (the statistics e2e_finish asked for; the server's own
# connection count also has the probe that waited for it to listen).
e2e_tls_stats() {
    local line conns hs fails
    line=$(grep 'stats: server' "$SERVER_LOG" | tail -n 1)
    conns=$(stat_field "$E2E_STATS" connections) && hs=$(stat_field "$line" tls_handshakes) &&
        fails=$(stat_field "$line" tls_failures) || fail "no TLS counters in: $line"
    [ "$conns" -gt 0 ] && [ "$hs" -eq "$conns" ] && [ "$fails" -eq 0 ] ||
        fail "not every connection to the export used TLS: $line; $E2E_STATS"
    note "TLS: $hs handshakes for $conns connections to the export"
}
