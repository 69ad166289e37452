#!/bin/bash
# fuzz-run.sh - the bounded protocol fuzzing run of `make check` (issue 4).
#
# 1. Replays every seed of tests/fuzz/corpus/ once through the fuzz target
#    and checks that the seeds really drive the server: most of them must
#    reach the transmission phase and get answers (a harness that silently
#    fed nothing to the server would fail here, not pass).
# 2. Fuzzes for FUZZ_SECONDS (default 60) from the seed corpus, with a
#    per-input timeout, a 64 MiB cap on any single allocation (the server
#    never needs more than a 32 MiB payload) and LeakSanitizer on.  Any
#    crash, sanitizer report, leak, timeout, harness invariant failure or
#    oversized allocation fails the test; the input that caused it is kept
#    in tests/logs/fuzz-artifacts/ and shown in hex.
#
# Skips (77) when the fuzz target was not built: no clang, or a clang whose
# libFuzzer does not link (see tests/fuzz/fuzz.am).
#
# A longer run, by hand, from the build directory (see tests/fuzz/README.md):
#   FUZZ_SECONDS=3600 top_builddir=$PWD top_srcdir=/path/to/src \
#       bash /path/to/src/tests/fuzz/fuzz-run.sh
# or directly, keeping what it finds in a corpus directory of your own:
#   mkdir -p ~/qednbd-corpus && TMPDIR=/dev/shm tests/fuzz/fuzz-nbd \
#       -dict=SRC/tests/fuzz/nbd.dict -timeout=10 -malloc_limit_mb=64 \
#       -jobs=2 -workers=2 -max_total_time=3600 ~/qednbd-corpus SRC/tests/fuzz/corpus
set -u
: "${top_builddir:?top_builddir must be set (run through make check)}"
: "${top_srcdir:?top_srcdir must be set (run through make check)}"

bin=$top_builddir/tests/fuzz/fuzz-nbd
seeds=$top_srcdir/tests/fuzz/corpus
dict=$top_srcdir/tests/fuzz/nbd.dict
seconds=${FUZZ_SECONDS:-60}
logdir=$top_builddir/tests/logs

if [ ! -x "$bin" ]; then
    why=$(cat "$bin.why" 2>/dev/null)
    echo "SKIP: the fuzz target is not built: ${why:-run make check in tests/ first}"
    exit 77
fi
[ -d "$seeds" ] || { echo "FAIL: no seed corpus at $seeds"; exit 1; }

# The target rewrites its two small images before every input: on tmpfs
# that costs nothing, on a disk it costs the fdatasync of each close.
base=${TMPDIR:-/tmp}
[ -d /dev/shm ] && [ -w /dev/shm ] && base=/dev/shm
tmp=$(mktemp -d "$base/qednbd-fuzz-run.XXXXXX") || { echo "FAIL: mktemp"; exit 1; }
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/work" "$tmp/artifacts"
export TMPDIR=$tmp
# Report UB with a stack; abort on the first error either way.
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}
# A 64 MiB quarantine (not 256) keeps the run near 400 MB of RSS.
export ASAN_OPTIONS=detect_leaks=1:quarantine_size_mb=64${ASAN_OPTIONS:+:$ASAN_OPTIONS}

# ---- 1. The seeds drive the server ------------------------------------------
mapfile -t files < <(find "$seeds" -type f | sort)
nseeds=${#files[@]}
[ "$nseeds" -ge 20 ] || { echo "FAIL: only $nseeds seeds in $seeds (expected at least 20)"; exit 1; }
QEDNBD_FUZZ_STATS=$tmp/stats "$bin" "${files[@]}" >"$tmp/replay.log" 2>&1
rc=$?
if [ "$rc" -ne 0 ]; then
    echo "FAIL: replaying the seed corpus failed (exit $rc):"
    tail -n 60 "$tmp/replay.log"
    exit 1
fi
read -r inputs tx replied < <(sed -E 's/inputs=([0-9]+) transmission=([0-9]+) replied=([0-9]+)/\1 \2 \3/' "$tmp/stats")
echo "seed replay: $inputs inputs, $tx reached transmission, $replied got answers"
[ "$inputs" -eq "$nseeds" ] || { echo "FAIL: $nseeds seeds but $inputs inputs ran"; exit 1; }
# About four in five seeds negotiate an export; a handful test handshake
# failures only.  Fewer than two thirds means the harness lost its way.
[ $((tx * 3)) -ge $((nseeds * 2)) ] ||
    { echo "FAIL: only $tx of $nseeds seeds reached the transmission phase"; exit 1; }
[ $((replied * 10)) -ge $((nseeds * 9)) ] ||
    { echo "FAIL: only $replied of $nseeds seeds got an answer past the greeting"; exit 1; }

# ---- 2. Fuzz ---------------------------------------------------------------
echo "fuzzing for ${seconds}s from $nseeds seeds"
start=$(date +%s)
"$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2560 -malloc_limit_mb=64 \
    -error_exitcode=1 -timeout_exitcode=1 -print_final_stats=1 -dict="$dict" \
    -artifact_prefix="$tmp/artifacts/" "$tmp/work" "$seeds" >"$tmp/fuzz.log" 2>&1
rc=$?
secs=$(( $(date +%s) - start ))
grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::' "$tmp/fuzz.log"
if [ "$rc" -ne 0 ] || grep -qE '^==[0-9]+==ERROR|runtime error:|^SUMMARY: ' "$tmp/fuzz.log"; then
    echo "FAIL: libFuzzer reported a problem after ${secs}s (exit $rc):"
    grep -nE 'ERROR|runtime error|SUMMARY|fuzz-nbd: |Test unit written' "$tmp/fuzz.log" | head -20
    tail -n 80 "$tmp/fuzz.log"
    mkdir -p "$logdir/fuzz-artifacts"
    for a in "$tmp"/artifacts/*; do
        [ -f "$a" ] || continue
        cp "$a" "$logdir/fuzz-artifacts/"
        echo "--- input kept as $logdir/fuzz-artifacts/$(basename "$a") ($(stat -c %s "$a") bytes):"
        od -A d -t x1 "$a" | head -n 40
        echo "--- replay: TMPDIR=/dev/shm QEDNBD_FUZZ_VERBOSE=2 $bin $logdir/fuzz-artifacts/$(basename "$a")"
    done
    cp "$tmp/fuzz.log" "$logdir/fuzz-nbd.libfuzzer.log" 2>/dev/null
    exit 1
fi
grep -qE '^Done [0-9]+ runs' "$tmp/fuzz.log" || { echo "FAIL: libFuzzer did not finish its run"; tail -n 40 "$tmp/fuzz.log"; exit 1; }
echo "PASS: $(grep -E '^Done [0-9]+ runs' "$tmp/fuzz.log"); $(ls "$tmp/work" | wc -l) new inputs found"
exit 0
