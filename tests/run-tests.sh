#!/bin/bash
# run-tests.sh PROG|SCRIPT... - run every test, print each result, and end
# with "N passed, N failed" (N skipped when any were skipped).
#
# A Criterion binary counts each of its tests (from its "Synthesis" line).
# A script counts as one test: exit 0 passes, 77 skips, anything else fails.
# Output of each test goes to tests/logs/NAME.log; failures print the log tail.
# TEST_TIMEOUT (seconds, default 600) bounds each test.
set -u
logdir=${TEST_LOGDIR:-logs}
mkdir -p "$logdir"
timeout_s=${TEST_TIMEOUT:-600}
passed=0 failed=0 skipped=0
# Sanitizer builds: ignore leaks inside Criterion's runner, nothing else.
export LSAN_OPTIONS="suppressions=$(cd "$(dirname "$0")" && pwd)/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
failed_names=()

for t in "$@"; do
    name=$(basename "$t")
    log="$logdir/$name.log"
    case "$t" in
        *.sh) cmd=(bash "$t") ;;
        *) cmd=("./$t") ;;
    esac
    start=$(date +%s)
    timeout -k 10 "$timeout_s" "${cmd[@]}" >"$log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    synth=$(grep -a 'Synthesis: Tested:' "$log" | tail -n 1)
    if [ -n "$synth" ]; then
        # [====] Synthesis: Tested: 12 | Passing: 11 | Failing: 1 | Crashing: 0
        p=$(sed -E 's/.*Passing: ([0-9]+).*/\1/' <<<"$synth")
        f=$(sed -E 's/.*Failing: ([0-9]+).*/\1/' <<<"$synth")
        c=$(sed -E 's/.*Crashing: ([0-9]+).*/\1/' <<<"$synth")
        f=$((f + c))
        if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
        passed=$((passed + p)); failed=$((failed + f))
        if [ "$f" -eq 0 ]; then
            echo "PASS: $name ($p tests, ${secs}s)"
        else
            echo "FAIL: $name ($f of $((p + f)) failed, ${secs}s)"; failed_names+=("$name")
            tail -n 40 "$log" | sed 's/^/    /'
        fi
    elif [ "$rc" -eq 0 ]; then
        passed=$((passed + 1)); echo "PASS: $name (${secs}s)"
    elif [ "$rc" -eq 77 ]; then
        skipped=$((skipped + 1)); echo "SKIP: $name: $(tail -n 1 "$log")"
    else
        failed=$((failed + 1)); failed_names+=("$name")
        [ "$rc" -eq 124 ] && echo "FAIL: $name (timed out after ${timeout_s}s)" || echo "FAIL: $name (exit $rc, ${secs}s)"
        tail -n 40 "$log" | sed 's/^/    /'
    fi
done

[ "${#failed_names[@]}" -gt 0 ] && echo "Failed: ${failed_names[*]}"
if [ "$skipped" -gt 0 ]; then
    summary="$passed passed, $failed failed, $skipped skipped"
else
    summary="$passed passed, $failed failed"
fi
echo "$summary" | tee "$logdir/summary"
[ "$failed" -eq 0 ]
