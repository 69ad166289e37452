#!/bin/bash
# make-corpus.sh BUILDDIR [OUTDIR] - regenerate the fuzz seed corpus.
#
# Maintainer tool, not run by `make check`: its output is committed under
# tests/fuzz/corpus/.  Two sources:
#   gen-*  hand-made sessions from gen-corpus.py;
#   rec-*  real client sessions, recorded by nbd-record.py, a proxy between
#          the clients (nbdinfo, nbdcopy, qemu-io, qemu-img, libnbd's python
#          bindings) and BUILDDIR/server/qednbd serving the same two exports
#          as the fuzz target ("fuzz" and "ro", 4 MiB QED images with 4 KiB
#          clusters, the default table size).  Only the client -> server bytes are kept.
# OUTDIR defaults to the corpus directory next to this script.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: make-corpus.sh BUILDDIR [OUTDIR]}
out=${2:-$here/corpus}
qednbd=$build/server/qednbd
PY=/usr/bin/python3     # the one with libnbd's bindings (python3-libnbd)
[ -x "$qednbd" ] || { echo "no $qednbd: build first" >&2; exit 1; }
for p in nbdinfo nbdcopy qemu-io qemu-img; do
    command -v "$p" >/dev/null || { echo "$p is needed" >&2; exit 1; }
done
"$PY" -c 'import nbd' || { echo "python3-libnbd is needed" >&2; exit 1; }

tmp=$(mktemp -d /tmp/qednbd-corpus.XXXXXX)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

mkdir -p "$out" "$tmp/rec"
qemu-img create -q -f qed -o cluster_size=4096 "$tmp/fuzz.qed" 4M
qemu-img create -q -f qed -o cluster_size=4096 "$tmp/ro.qed" 4M
qemu-io -f qed -c 'write -P 0x5a 0 12k' -c 'write -P 0x33 2M 8k' "$tmp/fuzz.qed" >/dev/null
"$qednbd" -u "$tmp/srv.sock" -D "qednbd fuzz target" -e fuzz="$tmp/fuzz.qed" \
    -e ro="$tmp/ro.qed" 2>"$tmp/srv.log" &
pids+=($!)
"$PY" "$here/nbd-record.py" "$tmp/proxy.sock" "$tmp/srv.sock" "$tmp/rec" >"$tmp/proxy.log" &
pids+=($!)
for _ in $(seq 100); do
    [ -S "$tmp/proxy.sock" ] && [ -S "$tmp/srv.sock" ] && break
    sleep 0.1
done

uri() { echo "nbd+unix:///${1:-}?socket=$tmp/proxy.sock"; }
n=0
# rec NAME CMD... - run one client through the proxy, save its stream as rec-NAME.
rec() {
    local name=$1
    shift
    echo "rec-$name" >"$tmp/rec/.next-name"
    "$@" >"$tmp/client.out" 2>&1 || { echo "client failed: $*" >&2; cat "$tmp/client.out" >&2; exit 1; }
    # Wait until the proxy has written the file.
    for _ in $(seq 100); do
        [ -f "$tmp/rec/rec-$name" ] && break
        sleep 0.05
    done
    [ -f "$tmp/rec/rec-$name" ] || { echo "no recording for $name" >&2; exit 1; }
    n=$((n + 1))
}
# nbdpy NAME SCRIPT - a libnbd session written in python (h = nbd.NBD()).
nbdpy() {
    local name=$1 script=$2
    rec "$name" "$PY" -c "import nbd, sys
sock = sys.argv[1]
h = nbd.NBD()
$script" "$tmp/proxy.sock"
}

truncate -s 4M "$tmp/src.raw"
printf 'hello fuzz corpus' | dd of="$tmp/src.raw" bs=1 seek=65536 conv=notrunc status=none
head -c 5000 /dev/urandom | dd of="$tmp/src.raw" bs=1 seek=3000000 conv=notrunc status=none

rec nbdinfo nbdinfo "$(uri fuzz)"
rec nbdinfo-ro nbdinfo "$(uri ro)"
rec nbdinfo-list nbdinfo --list "$(uri)"
rec nbdinfo-map nbdinfo --map "$(uri fuzz)"
rec nbdinfo-map-depth nbdinfo --map=qemu:allocation-depth "$(uri fuzz)"
rec nbdinfo-size nbdinfo --size "$(uri)"
rec nbdcopy-to-null nbdcopy "$(uri fuzz)" null:
rec nbdcopy-from-file nbdcopy "$tmp/src.raw" "$(uri fuzz)"
rec nbdcopy-to-file nbdcopy --request-size=65536 "$(uri ro)" "$tmp/dst.raw"
rec qemu-io-rw qemu-io -f raw -c 'write -P 0x11 0 4k' -c 'read -P 0x11 0 4k' \
    -c 'write -f -P 0x22 6k 1k' -c 'aio_write -P 0x44 1M 8k' -c 'aio_flush' \
    -c 'write -z 64k 64k' -c 'write -z -u 128k 8k' -c 'discard 1M 4k' -c 'flush' \
    -c 'read 2M 64k' -c 'map' "$(uri fuzz)"
rec qemu-io-readv qemu-io -f raw -c 'readv 0 4k 4k 8k' -c 'writev -P 7 8k 512 512' \
    -c 'read -v 4190208 4096' "$(uri fuzz)"
rec qemu-io-ro qemu-io -r -f raw -c 'read 0 64k' -c 'map' "$(uri ro)"
rec qemu-img-map qemu-img map --output=json -f raw "$(uri fuzz)"
rec qemu-img-info qemu-img info -f raw "$(uri fuzz)"
rec qemu-img-convert qemu-img convert -f raw -O raw "$(uri fuzz)" "$tmp/conv.raw"
nbdpy libnbd-opt-mode "h.set_opt_mode(True)
h.connect_unix(sock)
h.opt_list(lambda name, desc: 0)
h.set_export_name('ro')
h.opt_info()
h.set_export_name('nosuch')
try:
    h.opt_info()
except nbd.Error:
    pass
h.add_meta_context('base:allocation')
h.set_export_name('fuzz')
h.opt_list_meta_context(lambda name: 0)
h.opt_go()
h.pread(4096, 0)
h.shutdown()"
nbdpy libnbd-simple-replies "h.set_request_structured_replies(False)
h.set_export_name('fuzz')
h.connect_unix(sock)
h.pwrite(b'x' * 1000, 4000, nbd.CMD_FLAG_FUA)
h.pread(3000, 3500)
h.trim(4096, 8192)
h.zero(8192, 65536, nbd.CMD_FLAG_NO_HOLE)
h.cache(4096, 0)
h.flush()
h.shutdown()"
nbdpy libnbd-block-status "h.add_meta_context('base:allocation')
h.add_meta_context('qemu:allocation-depth')
h.set_export_name('fuzz')
h.connect_unix(sock)
h.block_status(4 * 1024 * 1024, 0, lambda ctx, off, ent, err: 0)
h.block_status(65536, 2 * 1024 * 1024, lambda ctx, off, ent, err: 0, nbd.CMD_FLAG_REQ_ONE)
h.pread_structured(65536, 0, lambda buf, off, st, err: 0, nbd.CMD_FLAG_DF)
try:
    h.zero(4096, 1024 * 1024, nbd.CMD_FLAG_FAST_ZERO)   # data there: ENOTSUP
except nbd.Error:
    pass
h.shutdown()"
nbdpy libnbd-no-zeroes "h.set_handshake_flags(nbd.HANDSHAKE_FLAG_FIXED_NEWSTYLE)
h.set_export_name('')
h.set_full_info(True)
h.connect_unix(sock)
h.pread(512, 0)
h.shutdown()"
nbdpy libnbd-starttls-allow "h.set_tls(nbd.TLS_ALLOW)
h.set_export_name('fuzz')
h.add_meta_context('base:allocation')
h.connect_unix(sock)
h.pread(512, 0)
h.shutdown()"
nbdpy libnbd-aio-pipeline "h.set_export_name('fuzz')
h.connect_unix(sock)
bufs = [nbd.Buffer(4096) for _ in range(16)]
for i, b in enumerate(bufs):
    h.aio_pread(b, i * 8192)
while h.aio_in_flight() > 0:
    h.poll(-1)
h.shutdown()"

"$PY" "$here/gen-corpus.py" "$tmp/rec" >/dev/null
# Replace the old corpus by the new one (seeds other than rec-*/gen-* stay).
rm -f "$out"/rec-* "$out"/gen-*
cp "$tmp"/rec/rec-* "$tmp"/rec/gen-* "$out"/
echo "recorded $n client sessions; corpus in $out:"
ls -l "$out"
