# systemd-common.sh - sourced by the tests of the example systemd units
# (prod/systemd-units.sh) and of the README's service steps
# (tools/readme-commands.sh).  Not a test.  Needs $QEDNBD, $tmp, $PY
# (/usr/bin/python3 when unset), fail and note.
#
#   unit_verify UNIT...       systemd-analyze verify of copies of UNIT...
#                             (with their drop-in folders UNIT.d/) in which
#                             /usr/local/bin/qednbd is $QEDNBD: any complaint
#                             fails.  Returns 1 when systemd-analyze is missing.
#   unit_sandbox_check UNIT   every file the effective ExecStart= of UNIT
#                             (with UNIT.d/*.conf) writes -- images without
#                             -r, --pidfile, --log-file, -u -- is writable
#                             under the unit's ProtectSystem=strict, and no
#                             file it reads is under ProtectHome=.
#   unit_exec_start UNIT      print the effective ExecStart= command line

: "${PY:=/usr/bin/python3}"

unit_verify() {
    local u d base vdir
    command -v systemd-analyze >/dev/null 2>&1 || return 1
    vdir=$(mktemp -d "$tmp/verify.XXXXXX") || fail "mktemp"
    for u in "$@"; do
        base=$(basename "$u")
        sed "s|/usr/local/bin/qednbd|$QEDNBD|g" "$u" >"$vdir/$base" || fail "cannot copy $u"
        if [ -d "$u.d" ]; then
            mkdir -p "$vdir/$base.d"
            for d in "$u.d"/*.conf; do
                [ -e "$d" ] || continue
                sed "s|/usr/local/bin/qednbd|$QEDNBD|g" "$d" >"$vdir/$base.d/$(basename "$d")" ||
                    fail "cannot copy $d"
            done
        fi
    done
    # Each unit by its path: systemd adds the folder to the unit search path.
    (cd "$vdir" && systemd-analyze --man=no verify "${@##*/}") >"$vdir/verify.out" 2>&1 ||
        { cat "$vdir/verify.out" >&2; fail "systemd-analyze verify ${*##*/} failed"; }
    if grep -q . "$vdir/verify.out"; then
        cat "$vdir/verify.out" >&2
        fail "systemd-analyze verify complains about ${*##*/}"
    fi
    return 0
}

# unit_py UNIT MODE - the unit parser below; MODE exec or check.
unit_py() {
    "$PY" - "$@" <<'PY'
import glob, os, shlex, sys

unit, mode = sys.argv[1], sys.argv[2]
files = [unit] + sorted(glob.glob(unit + ".d/*.conf"))
svc = {}
for path in files:
    section = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line
                continue
            if section != "[Service]" or "=" not in line:
                continue
            key, val = (s.strip() for s in line.split("=", 1))
            if val == "":
                svc[key] = []          # an empty assignment resets a list
            else:
                svc.setdefault(key, []).append(val)

execs = svc.get("ExecStart", [])
if len(execs) != 1:
    sys.exit("%s: %d ExecStart= lines in effect, expected 1" % (unit, len(execs)))
argv = shlex.split(execs[0])
if mode == "exec":
    print(execs[0])
    sys.exit(0)

def words(key):
    return [w for v in svc.get(key, []) for w in v.split()]

def under(path, dirs):
    path = os.path.normpath(path)
    return any(path == d or path.startswith(d.rstrip("/") + "/")
               for d in map(os.path.normpath, dirs))

writes, reads, read_only = [], [], False
args = argv[1:]
i = 0
while i < len(args):
    a = args[i]
    val = None
    if a in ("-e", "-u", "-b", "-p", "-x", "-D"):
        i += 1
        val = args[i] if i < len(args) else ""
        opt = a
    elif a.startswith("--") and "=" in a:
        opt, val = a.split("=", 1)
    elif a.startswith("-") and len(a) > 2 and a[1] in "eubpxD":
        opt, val = a[:2], a[2:]
    else:
        opt = a
    if opt in ("-r", "--read-only"):
        read_only = True
    elif opt in ("-e", "--export"):
        reads.append(val.split("=", 1)[1])
    elif opt in ("-u", "--unix", "--pidfile", "--log-file"):
        writes.append(val)
    elif opt in ("--tls-certificates", "--tls-psk", "--backing-dir"):
        reads.append(val)
    elif not opt.startswith("-"):
        reads.append(opt)          # the single-IMAGE form
    i += 1
if not read_only:
    writes += [p for p in reads if p.endswith(".qed")]

errors = []
if svc.get("ProtectSystem", [""])[-1] == "strict":
    writable = (["/var/lib/" + d for d in words("StateDirectory")] +
                ["/run/" + d for d in words("RuntimeDirectory")] +
                [d.lstrip("-+") for d in words("ReadWritePaths")] +
                (["/tmp", "/var/tmp"] if svc.get("PrivateTmp", ["no"])[-1] == "yes" else []))
    for p in writes:
        if not under(p, writable):
            errors.append("%s is read-only under ProtectSystem=strict (writable: %s)"
                          % (p, " ".join(writable) or "nothing"))
if svc.get("ProtectHome", ["no"])[-1] in ("yes", "true"):
    for p in reads + writes:
        if under(p, ["/home", "/root", "/run/user"]):
            errors.append("%s is hidden by ProtectHome=yes" % p)
if errors:
    sys.exit("%s: %s" % (unit, "; ".join(errors)))
PY
}

unit_exec_start() {
    unit_py "$1" exec
}

unit_sandbox_check() {
    unit_py "$1" check >"$tmp/sandbox.out" 2>&1 || fail "$(cat "$tmp/sandbox.out")"
}
