#!/bin/bash
# run-valgrind.sh TEST... - the driver of `make check-valgrind`.
#
# TEST... are the suite's tests, as given to run-tests.sh (paths relative to
# tests/ for programs, paths of scripts).  Environment: top_builddir and
# top_srcdir (absolute); VALGRIND_UNIT, VALGRIND_SKIP and
# VALGRIND_CRITERION_FILTER as described below.
#
# 1. Integration tests with the server under valgrind.  The tests start
#    $top_builddir/server/qednbd, so they run with top_builddir pointing at a
#    shadow build tree: every entry is a link to the real one, except
#    server/qednbd, which runs the real server through valgrind-server.sh
#    (memcheck, --error-exitcode=99, --leak-check=full).  Selected:
#    - every script that starts the server (it, a helper it sources, or a
#      Python helper beside it names server-common.sh or server/qednbd),
#      except those whose name matches the regex $VALGRIND_SKIP (default:
#      benchmarks, a test that judges the server by its RSS, and one that
#      counts its descriptors and CPU time);
#    - the server's Criterion programs (server/*), without the tests that
#      measure the server's RSS ($VALGRIND_CRITERION_FILTER);
#    - load/vg-sessions.sh.
#    load-many-clients.sh runs with 20 active and 200 idle clients for 10 s.
#    A test fails if its server exits 99; afterwards every server's valgrind
#    log must say "ERROR SUMMARY: 0 errors".  A log without a summary (a
#    server killed with SIGKILL by its test) fails only if it reports an
#    error before the kill.
# 2. With VALGRIND_UNIT=yes (or =only, which skips step 1), the Criterion
#    unit tests (unit/*) under valgrind with --trace-children=yes (Criterion
#    runs each test in a child process) and --jobs=1.  Off by default: each
#    test is a valgrind process of its own, ~400 of them.
#
# Logs: tests/valgrind-logs/{server,unit}/ (valgrind reports) and
# tests/valgrind-logs/tests/ (test output).  Ends with "check-valgrind: PASS"
# or "check-valgrind: FAIL" and exits 0 only when everything passed.
set -u
# The whole script is one brace group: bash reads it completely before running
# it, so editing (or updating) this file during a run cannot derail the run.
{
: "${top_builddir:?top_builddir must be set}"
: "${top_srcdir:?top_srcdir must be set}"

command -v valgrind >/dev/null 2>&1 || {
    echo "check-valgrind: valgrind is not installed (apt-get install valgrind)" >&2
    exit 1
}

cd "$top_builddir/tests" || exit 1
logs="$top_builddir/tests/valgrind-logs"
rm -rf "$logs"
mkdir -p "$logs/tests" "$logs/server" "$logs/unit"

shadow=$(mktemp -d "${TMPDIR:-/tmp}/qednbd-vgtree.XXXXXX") || exit 1
trap 'rm -rf "$shadow"' EXIT
for e in "$top_builddir"/* "$top_builddir"/.[!.]*; do
    [ -e "$e" ] || continue
    case "$(basename "$e")" in server) continue ;; esac
    ln -s "$e" "$shadow/"
done
mkdir -p "$shadow/server"
for e in "$top_builddir"/server/*; do
    [ "$(basename "$e")" = qednbd ] || ln -s "$e" "$shadow/server/"
done
export QEDNBD_REAL="$top_builddir/server/qednbd"
export QEDNBD_VG_LOGDIR="$logs/server"
VALGRIND=$(command -v valgrind)
export VALGRIND
# Why the settings are written into the wrapper as well: some tests start the
# server through a launcher that clears the environment
# (systemd-socket-activate passes none of it).
cat >"$shadow/server/qednbd" <<EOF
#!/bin/sh
QEDNBD_REAL='$QEDNBD_REAL' QEDNBD_VG_LOGDIR='$QEDNBD_VG_LOGDIR' VALGRIND='$VALGRIND'
export QEDNBD_REAL QEDNBD_VG_LOGDIR VALGRIND
exec /bin/sh "$top_srcdir/tests/load/valgrind-server.sh" "\$@"
EOF
chmod +x "$shadow/server/qednbd"
[ -x "$QEDNBD_REAL" ] || { echo "check-valgrind: $QEDNBD_REAL is not built" >&2; exit 1; }

# uses_server SCRIPT - true when SCRIPT starts the server: it, a helper it
# sources from the source tree, or a Python helper next to it names
# server-common.sh or the server binary.
server_re='server-common\.sh|server/qednbd|"server", *"qednbd"'
uses_server() {
    local s=$1 inc py
    grep -Eq "$server_re" "$s" && return 0
    for inc in $(sed -n 's|^[[:space:]]*\. "\$top_srcdir/\([^"]*\)".*|\1|p' "$s"); do
        [ -f "$top_srcdir/$inc" ] && grep -Eq "$server_re" "$top_srcdir/$inc" && return 0
    done
    for py in "$(dirname "$s")"/*.py; do
        [ -f "$py" ] && grep -Eq "$server_re" "$py" && return 0
    done
    return 1
}

# Left out: benchmarks (timing under valgrind means nothing), tests that
# judge the server by its RSS (under valgrind, that is valgrind's memory:
# its free-block quarantine alone grows by tens of MiB), and the one that
# counts the server's descriptors and CPU time (valgrind holds descriptors of
# its own under the limit, and its CPU time is not the server's).
skip_re=${VALGRIND_SKIP:-'^bench-|^cve-2017-10664-|^accept-emfile'}

# Criterion filter for server/* programs: the server's backpressure test
# checks its VmRSS, which under valgrind is valgrind's.
vg_filter=${VALGRIND_CRITERION_FILTER:-'!(tx/backpressure_bounds_memory_and_resumes)'}

integ=()
unit=()
for t in "$@"; do
    case "$t" in
        *.sh)
            case "$(basename "$t")" in
                vg-sessions.sh) ;;
                *)
                    if [[ "$(basename "$t")" =~ $skip_re ]]; then
                        continue
                    fi
                    uses_server "$t" && integ+=("$t")
                    ;;
            esac
            ;;
        server/*)
            # Criterion programs that start the server: through a wrapper
            # that leaves out the tests measuring the server's RSS (under
            # valgrind that is valgrind's memory, not the server's).
            w="$shadow/tests-wrap/$(basename "$t").sh"
            mkdir -p "$shadow/tests-wrap"
            printf '#!/bin/sh\nexec "%s" --filter=%s\n' "$PWD/$t" "'$vg_filter'" >"$w"
            integ+=("$w")
            ;;
        unit/*) unit+=("$t") ;;
    esac
done
integ+=("$top_srcdir/tests/load/vg-sessions.sh")

rc=0
if [ "${VALGRIND_UNIT:-no}" != only ]; then
    echo "check-valgrind: ${#integ[@]} integration tests with the server under valgrind"
    # Why a long per-test timeout: everything the server does is ~20x slower.
    TEST_TIMEOUT=${TEST_TIMEOUT:-1800} TEST_LOGDIR="$logs/tests" top_builddir="$shadow" \
        LOAD_ACTIVE=${LOAD_ACTIVE:-20} LOAD_IDLE=${LOAD_IDLE:-200} LOAD_SECONDS=${LOAD_SECONDS:-10} \
        bash "$top_srcdir/tests/run-tests.sh" "${integ[@]}" || rc=1
fi

if [ "${VALGRIND_UNIT:-no}" = yes ] || [ "${VALGRIND_UNIT:-no}" = only ]; then
    echo "check-valgrind: ${#unit[@]} unit test programs under valgrind"
    for t in "${unit[@]}"; do
        name=$(basename "$t")
        start=$(date +%s)
        # Why the skip list: the tests run qemu-img, qemu-io and shells;
        # valgrind follows only our own programs (Criterion's test children).
        timeout -k 10 3600 valgrind --tool=memcheck --trace-children=yes \
            --trace-children-skip='*/sh,*/bash,*/dash,*/qemu-*,*/python*,*/nbd*,*/fio' --error-exitcode=99 \
            --leak-check=full --show-leak-kinds=definite,possible \
            --errors-for-leak-kinds=definite,possible --num-callers=30 \
            --suppressions="$top_srcdir/tests/valgrind.supp" \
            --log-file="$logs/unit/$name.%p.log" "./$t" --jobs=1 >"$logs/tests/$name.log" 2>&1
            trc=$?
        secs=$(( $(date +%s) - start ))
        synth=$(grep -a 'Synthesis: Tested:' "$logs/tests/$name.log" | tail -n 1)
        if [ "$trc" -eq 0 ]; then
            echo "PASS: $name under valgrind (${secs}s) ${synth#*Synthesis: }"
        else
            echo "FAIL: $name under valgrind (exit $trc, ${secs}s) ${synth#*Synthesis: }"
            tail -n 30 "$logs/tests/$name.log" | sed 's/^/    /'
            rc=1
        fi
    done
fi

# Judge every valgrind log.
ok=0 bad=0 killed=0
err_re='^==[0-9]+== (Invalid |Conditional jump|Use of uninitialised|Syscall param|Mismatched free|Source and destination overlap|Argument .* of function|Invalid free|.* are definitely lost|.* are possibly lost)'
for log in "$logs"/server/*.log "$logs"/unit/*.log; do
    [ -f "$log" ] || continue
    if grep -q 'ERROR SUMMARY: 0 errors' "$log"; then
        ok=$((ok + 1))
    elif grep -q 'ERROR SUMMARY:' "$log" || grep -Eq "$err_re" "$log"; then
        bad=$((bad + 1))
        echo "FAIL: valgrind errors in $log:"
        grep -E "$err_re|ERROR SUMMARY" "$log" | head -n 20 | sed 's/^/    /'
    else
        killed=$((killed + 1))   # killed before its summary, and no error before
    fi
done
echo "check-valgrind: $ok valgrind logs clean, $bad with errors, $killed without a summary (process killed)"
[ "$ok" -gt 0 ] || { echo "check-valgrind: no valgrind log at all: nothing ran under valgrind" >&2; rc=1; }
[ "$bad" -eq 0 ] || rc=1
if [ "$rc" -eq 0 ]; then
    echo "check-valgrind: PASS (logs in $logs)"
else
    echo "check-valgrind: FAIL (logs in $logs)"
fi
exit "$rc"
}
