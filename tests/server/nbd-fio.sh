#!/bin/bash
# fio's nbd engine with --verify=crc32c, bounded by a fixed amount of I/O:
#   1. two jobs (two connections), 4 KiB random writes, 16 in flight each,
#      then fio reads everything back and checks the checksums;
#   2. random writes of random sizes (512 B .. 256 KiB, 512-aligned), 32 in
#      flight; the server is stopped (SIGTERM, image clean), started again,
#      and a --verify_only run of the same job finds every block intact.
# fio must exit 0, report no error, and have read back as many bytes as it
# wrote (so the verification really ran).
. "$top_srcdir/tests/server/server-common.sh"
need qemu-img fio
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"

M=1048576

# qemu-nbd 7.2 aborts in its QED driver under concurrent allocating writes
# (qed_aio_write_alloc: assertion `s->allocating_acb == NULL'), so the
# reference runs use one job and one request in flight.
if [ "$SERVER_KIND" = qemu-nbd ]; then
    jobs=1 depth1=1 depth2=1
else
    jobs=2 depth1=16 depth2=32
fi

# run_fio JSON WRITE READS ARGS... - run fio (bounded), then check its JSON
# report: no job error; at least WRITE bytes written, and less than one
# maximum block (256 KiB) more; READS "same": as many bytes read back as
# written (the verification ran over everything), "none": nothing read.
run_fio() {
    local json=$1 want_w=$2 reads=$3
    shift 3
    run 300 fio --ioengine=nbd --uri="$(nbd_uri)" --verify_state_save=0 \
        --output-format=json --output="$json" "$@"
    "$PY" - "$json" "$want_w" "$reads" <<'PY' || { cat "$json"; fail "fio report: $*"; }
import json, sys
d = json.load(open(sys.argv[1]))
want_w, reads = int(sys.argv[2]), sys.argv[3]
w = sum(j['write']['io_bytes'] for j in d['jobs'])
r = sum(j['read']['io_bytes'] for j in d['jobs'])
errs = [(j['jobname'], j['error']) for j in d['jobs'] if j['error']]
if errs:
    sys.exit('fio jobs failed: %s' % errs)
if not want_w <= w < want_w + 262144:
    sys.exit('fio wrote %d bytes, expected %d' % (w, want_w))
if r != (w if reads == 'same' else 0):
    sys.exit('fio wrote %d and read back %d bytes (reads: %s)' % (w, r, reads))
print('fio wrote %d bytes, read back %d' % (w, r))
PY
}

# ---- 1: two connections, write then verify -----------------------------------
qemu-img create -q -f qed disk.qed 64M || fail "create disk.qed"
start_server disk.qed
per_job=$((64 * M / jobs))
run_fio fio1.json $((64 * M)) same --name=fixed --rw=randwrite --bs=4k \
    --iodepth=$depth1 --numjobs=$jobs --size=$per_job --offset_increment=$per_job \
    --verify=crc32c --verify_fatal=1 --do_verify=1
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC after SIGTERM"
image_clean disk.qed

# ---- 2: random sizes, verified after a restart -------------------------------
qemu-img create -q -f qed disk2.qed 64M || fail "create disk2.qed"
job2=(--name=mixed --rw=randwrite --bsrange=512-256k --blockalign=512 "--iodepth=$depth2"
      --size=64M --io_size=48M --randseed=12345 --verify=crc32c --verify_fatal=1)
start_server disk2.qed
run_fio fio2.json $((48 * M)) none "${job2[@]}" --do_verify=0
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC after SIGTERM"
image_clean disk2.qed
start_server -r disk2.qed
# fio's random map gives every block one write, so the verify-only run of
# the same job (same seed) reads back exactly what the write run wrote.
run 300 fio --ioengine=nbd --uri="$(nbd_uri)" --verify_state_save=0 \
    --output-format=json --output=fio3.json "${job2[@]}" --verify_only
"$PY" - fio2.json fio3.json <<'PY' || { cat fio3.json; fail "fio --verify_only after restart"; }
import json, sys
w = json.load(open(sys.argv[1]))['jobs'][0]['write']['io_bytes']
j = json.load(open(sys.argv[2]))['jobs'][0]
if j['error']:
    sys.exit('fio verify_only error %d' % j['error'])
r = j['read']['io_bytes']
if r != w:
    sys.exit('fio verify_only read back %d bytes, the write run wrote %d' % (r, w))
print('verify_only read back %d bytes' % r)
PY
stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC after SIGTERM"
echo "ok: $SERVER_KIND"
