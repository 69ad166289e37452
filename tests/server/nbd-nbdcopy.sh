#!/bin/bash
# nbdcopy in both directions, with its default several connections and many
# requests in flight: a sparse raw file -> an export (then the export, and
# after shutdown the QED file, equal the source, and the holes stayed holes),
# an export -> a raw file (equal, and sparse where the image is), and one
# export -> another.
. "$top_srcdir/tests/server/server-common.sh"
need qemu-img qemu-io nbdcopy

M=1048576
SIZE=$((64 * M))

# data_bytes IMAGE [FMT] - bytes that qemu-img map reports as data.
data_bytes() {
    local fmt=${2:-}
    qemu-img map --output=json ${fmt:+-f "$fmt"} "$1" >map.json 2>map.err ||
        { cat map.err; fail "qemu-img map $1"; }
    "$PY" -c 'import json, sys
print(sum(e["length"] for e in json.load(open(sys.argv[1])) if e["data"]))' map.json
}

# A sparse raw source: a few data extents (some unaligned), long holes, a
# run of written zeros, data at the very end.
truncate -s $SIZE src.raw || fail "truncate src.raw"
run 60 qemu-io -f raw -c 'write -P 0x21 0 100k' -c 'write -P 0x22 3M 1M' \
    -c 'write -P 0x23 10000000 77777' -c 'write -z 20M 1M' -c 'write -P 0x24 40M 64k' \
    -c "write -P 0x25 $((SIZE - 4096)) 4k" src.raw
src_data=$(data_bytes src.raw raw)

# qemu-nbd 7.2 aborts in its QED driver (qed_aio_write_alloc: assertion
# `s->allocating_acb == NULL') under concurrent allocating writes (even with
# --connections=1 --requests=1), so the reference runs use --synchronous;
# qednbd gets nbdcopy's defaults (several connections, many requests in
# flight).
copy_opts=()
[ "$SERVER_KIND" = qemu-nbd ] && copy_opts=(--synchronous)

# ---- raw file -> NBD ---------------------------------------------------------
qemu-img create -q -f qed dst.qed $SIZE || fail "create dst.qed"
start_server dst.qed
run 120 nbdcopy "${copy_opts[@]}" --flush src.raw "$(nbd_uri)"
run 60 qemu-img compare -f raw -F raw src.raw "$(nbd_uri)"
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC after SIGTERM"
image_clean dst.qed
run 60 qemu-img compare -f raw -F qed src.raw dst.qed
# Holes of the source must not have become data: allow one 64 KiB cluster
# of rounding at each end of each of the 5 data extents.
dst_data=$(data_bytes dst.qed qed)
[ "$dst_data" -le $((src_data + 10 * 65536)) ] ||
    fail "copy to NBD is not sparse: $dst_data data bytes in dst.qed, source has $src_data"

# ---- NBD -> raw file ---------------------------------------------------------
# A QED source made by qemu-io: data, zero clusters, partial clusters, holes.
qemu-img create -q -f qed src.qed $SIZE || fail "create src.qed"
run 60 qemu-io -c 'write -P 0x31 0 1M' -c 'write -z 512k 128k' -c 'write -P 0x32 5M 4000' \
    -c 'write -P 0x33 33M 2M' -c 'write -z 50M 4M' -c "write -P 0x34 $((SIZE - 512)) 512" src.qed
qed_data=$(data_bytes src.qed qed)
start_server -r src.qed
run 120 nbdcopy "${copy_opts[@]}" "$(nbd_uri)" out.raw
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC after SIGTERM"
[ "$(stat -c %s out.raw)" -eq $SIZE ] || fail "out.raw has size $(stat -c %s out.raw), expected $SIZE"
run 60 qemu-img compare -f qed -F raw src.qed out.raw
# The holes and zero clusters travelled as holes or zeros, not as data.
out_data=$(data_bytes out.raw raw)
[ "$out_data" -le $((qed_data + 8 * 65536)) ] ||
    fail "copy from NBD is not sparse: $out_data data bytes in out.raw, source has $qed_data"

# Copy into an existing, non-empty raw file: everything is overwritten.
run 60 qemu-io -f raw -c 'write -P 0xee 0 64M' out.raw
start_server -r src.qed
run 120 nbdcopy "${copy_opts[@]}" "$(nbd_uri)" out.raw
stop_server TERM
run 60 qemu-img compare -f qed -F raw src.qed out.raw

# ---- NBD -> NBD --------------------------------------------------------------
qemu-img create -q -f qed copy.qed $SIZE || fail "create copy.qed"
if server_multi_export; then
    start_server -e src=src.qed -e copy=copy.qed
    src_uri=$(nbd_uri src) dst_uri=$(nbd_uri copy)
    pids=("$SERVER_PID")
else
    start_server -r src.qed
    src_uri=$(nbd_uri) pids=("$SERVER_PID")
    start_server copy.qed
    dst_uri=$(nbd_uri) pids+=("$SERVER_PID")
fi
run 120 nbdcopy "${copy_opts[@]}" --flush "$src_uri" "$dst_uri"
run 60 qemu-img compare -f raw -F raw "$src_uri" "$dst_uri"
for p in "${pids[@]}"; do
    stop_server TERM "$p"
    [ "$SERVER_RC" -eq 0 ] || fail "server $p exited $SERVER_RC after SIGTERM"
done
image_clean copy.qed
image_clean src.qed
run 60 qemu-img compare -f qed -F qed src.qed copy.qed
echo "ok: $SERVER_KIND"
