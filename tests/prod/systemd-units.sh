#!/bin/bash
# The example units in contrib/systemd:
#   - systemd-analyze verify finds no problem in them (with qednbd at its
#     build path instead of /usr/local/bin; skipped, saying so, when
#     systemd-analyze is missing -- the test then ends as a skip);
#   - under their sandbox (ProtectSystem=strict) every file ExecStart=
#     writes is writable: the images, the pidfile (the checker is shown to
#     catch an image outside them first);
#   - qednbd.service's ExecStart line, run the way systemd runs it -- with a
#     listening socket passed as fd 3 (LISTEN_FDS) and a NOTIFY_SOCKET --
#     reports READY=1 and serves the export it names on the passed socket;
#   - qednbd-fork.service's ExecStart line, with /var/lib/qednbd and
#     /run/qednbd (which StateDirectory= and RuntimeDirectory= create) moved
#     under $tmp and a free port, forks, writes its pidfile, serves, and
#     stops on SIGTERM, removing the pidfile.
. "$top_srcdir/tests/prod/prod-common.sh"
. "$top_srcdir/tests/prod/systemd-common.sh"
need nbdinfo
units="$top_srcdir/contrib/systemd"
for u in qednbd.socket qednbd.service qednbd-fork.service; do
    [ -f "$units/$u" ] || fail "$units/$u is missing"
done

verified=yes
unit_verify "$units/qednbd.socket" "$units/qednbd.service" || verified=no
if [ "$verified" = yes ]; then
    unit_verify "$units/qednbd-fork.service" || fail "unit_verify"
    note "systemd-analyze verify: no complaint"
    # The check must be able to fail: a misspelt key is reported.
    mkdir -p bad
    sed 's/^ProtectHome=/ProtectHom=/' "$units/qednbd.service" >bad/qednbd.service
    cp "$units/qednbd.socket" bad/
    if (unit_verify bad/qednbd.socket bad/qednbd.service) >bad.out 2>&1; then
        fail "unit_verify did not notice a misspelt key"
    fi
fi

# The sandbox check must be able to fail: an image in /srv with only
# StateDirectory= writable, as the README's example once was.
mkdir -p srv
sed 's|^ExecStart=.*|ExecStart=/usr/local/bin/qednbd --log=syslog -e data=/srv/data.qed|' \
    "$units/qednbd.service" >srv/qednbd.service
if (unit_sandbox_check srv/qednbd.service) >srv.out 2>&1; then
    fail "the sandbox check let /srv/data.qed through"
fi
grep -q "/srv/data.qed is read-only" srv.out || fail "sandbox check: $(cat srv.out)"
# ... and the fix the README gives (a drop-in naming the folder) passes it.
mkdir -p srv/qednbd.service.d
printf '[Service]\nReadWritePaths=/srv\n' >srv/qednbd.service.d/images.conf
unit_sandbox_check srv/qednbd.service
unit_sandbox_check "$units/qednbd.service"
unit_sandbox_check "$units/qednbd-fork.service"

# --- qednbd.service: socket activation and sd_notify ---------------------
grep -qx "Type=notify" "$units/qednbd.service" || fail "the example service is not Type=notify"
exec_line=$(unit_exec_start "$units/qednbd.service") || fail "no ExecStart= in qednbd.service"
read -r -a cmd <<<"$exec_line"
[ "${cmd[0]}" = /usr/local/bin/qednbd ] || fail "ExecStart runs ${cmd[0]}"
cmd[0]=$QEDNBD
for i in "${!cmd[@]}"; do
    cmd[$i]=${cmd[$i]//\/var\/lib\/qednbd\//$tmp/}
    # Keep the messages where this test can read them.
    [ "${cmd[$i]}" = --log=syslog ] && cmd[$i]=--log-file=$tmp/unit.log
done
run 30 "$QEDIMG" create disk.qed 8M

run 60 "$PY" - "$tmp" "${cmd[@]}" <<'PY'
import os, signal, socket, subprocess, sys
tmp, cmd = sys.argv[1], sys.argv[2:]
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.bind(os.path.join(tmp, "notify"))
n.settimeout(20)
l = socket.socket(socket.AF_UNIX)
l.bind(os.path.join(tmp, "unit.sock"))
l.listen(16)
pid = os.fork()
if pid == 0:
    os.dup2(l.fileno(), 3)
    os.set_inheritable(3, True)
    os.execve(cmd[0], cmd, dict(os.environ, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()),
                                NOTIFY_SOCKET=os.path.join(tmp, "notify")))
msg = n.recv(4096).decode()
if "READY=1" not in msg:
    sys.exit("no READY=1: %r" % msg)
out = subprocess.run(["nbdinfo", "--list", "--json",
                      "nbd+unix:///?socket=" + os.path.join(tmp, "unit.sock")],
                     capture_output=True, text=True, timeout=30)
print(out.stdout, out.stderr)
os.kill(pid, signal.SIGTERM)
rc = os.waitpid(pid, 0)[1]
if out.returncode != 0 or '"export-name": "disk"' not in out.stdout:
    sys.exit("the export of the example unit was not listed")
if rc != 0:
    sys.exit("qednbd exited %d" % rc)
PY
log_has unit.log "passed by socket activation"

# --- qednbd-fork.service: the classic daemon ------------------------------
grep -qx "Type=forking" "$units/qednbd-fork.service" || fail "qednbd-fork.service is not Type=forking"
pidfile=$(sed -n 's/^PIDFile=//p' "$units/qednbd-fork.service")
[ "$pidfile" = /run/qednbd/qednbd.pid ] || fail "PIDFile=$pidfile"
exec_line=$(unit_exec_start "$units/qednbd-fork.service") || fail "no ExecStart= in qednbd-fork.service"
grep -q -- "--pidfile=$pidfile " <<<"$exec_line" || fail "ExecStart does not write PIDFile=: $exec_line"
read -r -a cmd <<<"$exec_line"
[ "${cmd[0]}" = /usr/local/bin/qednbd ] || fail "ExecStart runs ${cmd[0]}"
cmd[0]=$QEDNBD
# What StateDirectory=qednbd and RuntimeDirectory=qednbd make.
mkdir -p "$tmp/var/lib/qednbd" "$tmp/run/qednbd"
mv disk.qed "$tmp/var/lib/qednbd/"
for i in "${!cmd[@]}"; do
    cmd[$i]=${cmd[$i]//\/var\/lib\/qednbd\//$tmp/var/lib/qednbd/}
    cmd[$i]=${cmd[$i]//\/run\/qednbd\//$tmp/run/qednbd/}
done
port=$(free_port)
rc=0
timeout -k 5 30 "${cmd[@]}" --port="$port" --log-file="$tmp/fork.log" </dev/null >fork.out 2>&1 || rc=$?
[ "$rc" -eq 0 ] || fail "qednbd-fork.service's ExecStart exited $rc: $(cat fork.out)"
pid=$(cat "$tmp/run/qednbd/qednbd.pid") || fail "no pidfile"
track_daemon "$pid"
kill -0 "$pid" || fail "the pid in the pidfile ($pid) is not running"
run 30 nbdinfo --list --json "nbd://127.0.0.1:$port"
grep -q '"export-name": "disk"' "$tmp/out" || fail "qednbd-fork.service's export not listed: $(cat "$tmp/out")"
kill -TERM "$pid"
for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
kill -0 "$pid" 2>/dev/null && fail "the daemon did not stop within 10 s of SIGTERM"
[ -e "$tmp/run/qednbd/qednbd.pid" ] && fail "the daemon left its pidfile behind"
run 30 "$QEDIMG" check "$tmp/var/lib/qednbd/disk.qed"

[ "$verified" = yes ] || skip "systemd-analyze is not installed (apt-get install systemd): the units' syntax was not verified; the other checks passed"
echo PASS
