#!/bin/bash
# The example units in contrib/systemd: systemd-analyze verify finds no
# problem in them (other than qednbd not being installed in /usr/local and
# its man page not being installed), and the service's ExecStart line, run
# the way systemd runs it -- with a listening socket passed as fd 3
# (LISTEN_FDS) and a NOTIFY_SOCKET -- reports READY=1 and serves the export
# it names on the passed socket.
. "$top_srcdir/tests/prod/prod-common.sh"
need nbdinfo
units="$top_srcdir/contrib/systemd"
[ -f "$units/qednbd.socket" ] && [ -f "$units/qednbd.service" ] || fail "units missing in $units"

if command -v systemd-analyze >/dev/null 2>&1; then
    cp "$units/qednbd.socket" "$units/qednbd.service" .
    systemd-analyze verify ./qednbd.socket ./qednbd.service >verify.out 2>&1 || true
    if grep -vE "/usr/local/bin/qednbd is not executable|man qednbd\(8\)' failed|^$" verify.out |
        grep -q .; then
        cat verify.out >&2
        fail "systemd-analyze verify complains about the units"
    fi
else
    note "systemd-analyze is not installed: the unit syntax is not verified"
fi

grep -qx "Type=notify" "$units/qednbd.service" || fail "the example service is not Type=notify"
exec_line=$(sed -n 's/^ExecStart=//p' "$units/qednbd.service")
[ -n "$exec_line" ] || fail "no ExecStart= in qednbd.service"
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
echo PASS
