#!/bin/bash
# Many clients at once, against one server started with --max-connections=1300:
#   - 1,000 idle clients finish the handshake and then sit idle;
#   - 200 active clients do verified random I/O (writes of random data,
#     write-zeroes, flushes, reads compared with a shadow copy) for 30 s, each
#     in its own 256 KiB region of a 64 MiB image with 4 KiB clusters (so that
#     the 200 clients allocate clusters and L2 tables concurrently);
#   - at the end every region is read back and compared, every idle client
#     must still be connected and served (one read each), the server exits 0
#     on SIGTERM, the image checks clean, and it holds exactly the data the
#     clients were acknowledged (qemu-img compare with the expected contents).
# Peak memory: the server's VmHWM, read from /proc at the end of the run,
# must stay under LOAD_RSS_BOUND_KIB (see below).
#
# LOAD_SECONDS (default 30), LOAD_ACTIVE (200), LOAD_IDLE (1000) and
# LOAD_SEED override the defaults (e.g. for a longer soak run);
# LOAD_SERVER_ARGS adds server options (e.g. --aio=threads).
. "$top_srcdir/tests/server/server-common.sh"
need qemu-img

# The bound on the server's peak RSS (VmHWM) in KiB.  Measured on Debian 12
# x86-64 (gcc -O2, 2 cores, default L2 cache), io_uring and thread-pool
# backends alike: 35-37 MiB at the peak of this run, of which 2.5 MiB with
# the 1,200 clients connected and idle; the rest is mostly the request
# buffers of 200 clients x 2 requests of up to 64 KiB in flight (25 MiB).
# The bound is twice the highest measurement, rounded up: 80 MiB.  A
# sanitizer build (ASan's shadow memory and quarantine) needs far more, so
# the bound is only enforced on a plain build.
LOAD_RSS_BOUND_KIB=${LOAD_RSS_BOUND_KIB:-81920}

seconds=${LOAD_SECONDS:-30}
active=${LOAD_ACTIVE:-200}
idle=${LOAD_IDLE:-1000}
[ "$SERVER_KIND" = qednbd ] || skip "the load test drives qednbd only (it needs --max-connections)"
need_server_kind qednbd
LOAD="$top_builddir/tests/load/nbd-load"
[ -x "$LOAD" ] || fail "$LOAD is not built"

# Both processes need a descriptor per client (1,200) plus a few.
want_fds=4096
ulimit -n "$want_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
nofile=$(ulimit -n)
if [ "$nofile" != unlimited ] && [ "$nofile" -lt $((active + idle + 64)) ]; then
    skip "RLIMIT_NOFILE is $nofile (hard limit $(ulimit -Hn)); $((active + idle + 64)) are needed"
fi

# start_server has no option for --max-connections: a wrapper adds it.  exec
# keeps the PID, so SERVER_PID is the server itself (its /proc status is read).
real_server=$QEDNBD
QEDNBD="$tmp/qednbd-max-conns"
cat >"$QEDNBD" <<EOF
#!/bin/sh
exec "$real_server" --max-connections=$((active + idle + 100)) ${LOAD_SERVER_ARGS:-} "\$@"
EOF
chmod +x "$QEDNBD"

qemu-img create -q -f qed -o cluster_size=4096 load.qed 64M || fail "qemu-img create"
start_server load.qed
# Under `make check-valgrind` server/qednbd is a wrapper that runs the real
# server under valgrind (QEDNBD_VG_LOGDIR is set): then memory is valgrind's.
under_valgrind=0
[ -n "${QEDNBD_VG_LOGDIR:-}" ] && under_valgrind=1
if [ "$under_valgrind" -eq 0 ]; then
    [ "$(readlink "/proc/$SERVER_PID/exe")" = "$(readlink -f "$real_server")" ] ||
        fail "PID $SERVER_PID is not the server ($(readlink "/proc/$SERVER_PID/exe"))"
fi

args=(-u "$SERVER_SOCK" --active "$active" --idle "$idle" --seconds "$seconds"
      --server-pid "$SERVER_PID" --expect "$tmp/expect.raw")
[ -n "${LOAD_SEED:-}" ] && args+=(--seed "$LOAD_SEED")
start=$(date +%s)
timeout -k 5 $((seconds + 300)) "$LOAD" "${args[@]}" >load.out 2>&1
rc=$?
cat load.out
[ "$rc" -eq 0 ] || fail "nbd-load exited $rc (seed on its first line)"
server_alive || fail "the server died"
note "nbd-load took $(( $(date +%s) - start )) s"

hwm=$(sed -n 's/^server-hwm-kib //p' load.out)
[ -n "$hwm" ] || fail "no server-hwm-kib line from nbd-load"
# The same value, read here as well: the server is still running.
hwm2=$(awk '/^VmHWM:/ { print $2 }' "/proc/$SERVER_PID/status")
note "server peak RSS (VmHWM): ${hwm2} KiB; bound ${LOAD_RSS_BOUND_KIB} KiB"
sanitized=0
if nm -a "$real_server" 2>/dev/null | grep -q '__asan_init'; then
    sanitized=1
fi
if [ "$under_valgrind" -eq 1 ]; then
    note "server under valgrind: the RSS bound is not enforced"
elif [ "$sanitized" -eq 1 ]; then
    note "sanitizer build: the RSS bound is not enforced"
elif [ "$hwm2" -gt "$LOAD_RSS_BOUND_KIB" ]; then
    fail "server peak RSS ${hwm2} KiB is over the bound of ${LOAD_RSS_BOUND_KIB} KiB"
fi

stop_server TERM
[ "$SERVER_RC" -eq 0 ] || fail "server exited $SERVER_RC after SIGTERM (99: valgrind errors)"

# Our own check must find the image clean.  qemu-img check must find no
# corruption; it may report leaked clusters: qemu-img 7.2 reports one
# "leaked" cluster per 16 MiB of a 4 KiB-cluster QED image, even on an image
# written by qemu-io alone, so its leak count is not ours to judge.
run 60 "$top_builddir/contrib/qed-img/qed-img" check load.qed
rc=0
qemu-img check -f qed --output=json load.qed >check.json 2>check.err || rc=$?
[ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || { cat check.json check.err; fail "qemu-img check exited $rc"; }
"$PY" - check.json <<'PY' || { cat check.json; fail "qemu-img check reports errors"; }
import json, sys
c = json.load(open(sys.argv[1]))
sys.exit(1 if c.get('corruptions', 0) or c.get('check-errors', 0) else 0)
PY
f=$(header_features load.qed) || fail "cannot read the header"
[ $((f & 2)) -eq 0 ] || fail "NEED_CHECK is still set after a clean shutdown (features=$f)"
run 120 qemu-img compare -f qed -F raw load.qed "$tmp/expect.raw"
note "the image holds exactly the acknowledged data of $active clients"
echo "ok"
