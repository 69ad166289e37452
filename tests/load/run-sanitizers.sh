#!/bin/bash
# run-sanitizers.sh SRCDIR OUTDIR - the driver of `make check-sanitizers`:
# configure a separate build with --enable-sanitizers (ASan + UBSan) and
# --enable-werror, build it, and run the whole suite there (`make check`).
#
# Environment: CC (the compiler; default cc), MAKE (default make),
# MAKE_JOBS (parallel build jobs; default the number of CPUs).  The inner
# make check runs with QEDNBD_SKIP_SLOW=1 (the e2e tests skip).
#
# A source tree that was configured in place (./configure in SRCDIR, as CI
# does) cannot also host a separate build: automake refuses ("source
# directory already configured").  Then the sources are copied to
# OUTDIR/src, stripped of the in-place build's products, and built there in
# place; otherwise OUTDIR is a plain out-of-tree build of SRCDIR.
#
# Sanitizer settings: ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 (LSan
# suppressions for Criterion's own runner come from tests/lsan.supp through
# run-tests.sh), UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1, and a
# log_path for both (see below).  Values already in the environment are
# appended, so they can override these.
set -u
# The whole script is one brace group: bash reads it completely before running
# it, so editing (or updating) this file during a run cannot derail the run.
{
src=${1:?usage: run-sanitizers.sh SRCDIR OUTDIR}
out=${2:?usage: run-sanitizers.sh SRCDIR OUTDIR}
cc=${CC:-cc}
mk=${MAKE:-make}
jobs=${MAKE_JOBS:-$(nproc 2>/dev/null || echo 2)}

say() { echo "check-sanitizers: $*"; }
die() { echo "check-sanitizers: $*" >&2; exit 1; }

src=$(cd "$src" && pwd) || die "no source directory $1"
mkdir -p "$out" || die "cannot create $out"
out=$(cd "$out" && pwd)
[ -x "$src/configure" ] || die "$src/configure is missing: run autoreconf -fi there first"

if [ -f "$src/config.status" ]; then
    build="$out/src"
    say "$src is configured in place: building a copy in $build"
    rm -rf "$build"
    mkdir -p "$build"
    # Why OUTDIR and .git are left out: OUTDIR may lie inside SRCDIR (the
    # copy must not contain itself), and history is not needed to build.
    rel=
    case "$out/" in "$src"/*) rel=./${out#"$src"/} ;; esac
    (cd "$src" && tar ${rel:+--exclude="$rel"} --exclude=./.git -cf - .) |
        (cd "$build" && tar -xf -) || die "copying $src failed"
    # Remove what the in-place build generated.  Why not `make distclean`
    # there: the copied Makefiles still hold SRCDIR's absolute paths, so their
    # clean rules would act on SRCDIR (and on OUTDIR inside it).  Objects and
    # libraries go, so every program is relinked from fresh objects.
    (
        cd "$build" || exit 1
        rm -f config.status config.log config.h stamp-h1 libtool || exit 1
        rm -rf tests/logs tests/valgrind-logs || exit 1
        find . \( -name '*.o' -o -name '*.a' -o -name '*.lo' -o -name '*.la' \) \
            -type f -exec rm -f {} + || exit 1
        find . -type d \( -name .deps -o -name .libs \) -prune -exec rm -rf {} + || exit 1
        find . -name Makefile.in -type f | while read -r m; do
            rm -f "${m%.in}"
        done
    ) || die "cleaning the copy in $build failed"
    configure="$build/configure"
else
    build="$out/build"
    mkdir -p "$build"
    configure="$src/configure"
fi

cd "$build" || die "cd $build"
say "configuring in $build with CC=$cc"
"$configure" --enable-sanitizers --enable-werror CC="$cc" >"$out/configure.log" 2>&1 ||
    { tail -n 30 "$out/configure.log"; die "configure failed (see $out/configure.log)"; }
grep -q 'sanitizers: *yes' "$out/configure.log" ||
    die "configure did not enable the sanitizers (see $out/configure.log)"
say "building (make -j$jobs)"
"$mk" -j"$jobs" >"$out/build.log" 2>&1 ||
    { tail -n 40 "$out/build.log"; die "the build failed (see $out/build.log)"; }

# Why the reports go to files (log_path): a server that a test stops with a
# signal in its cleanup, or whose exit status the test does not look at, would
# otherwise report into a log nobody reads.  Every process of the suite
# writes its reports to OUTDIR/sanitizer-logs/{asan,ubsan}.PID, and any such
# file fails the run, whatever the test said.
sanlogs="$out/sanitizer-logs"
rm -rf "$sanlogs"
mkdir -p "$sanlogs"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:log_path=$sanlogs/asan${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$sanlogs/ubsan${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
# run-tests.sh puts the suppressions file in front of LSAN_OPTIONS.
export LSAN_OPTIONS="print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
say "running the suite with ASAN_OPTIONS=$ASAN_OPTIONS UBSAN_OPTIONS=$UBSAN_OPTIONS"
start=$(date +%s)
# QEDNBD_SKIP_SLOW=1: the end-to-end guests (tests/e2e) boot a kernel under
# TCG for minutes and run no sanitized code of their own beyond what the
# other tests run; they ran once in the plain `make check` already.
QEDNBD_SKIP_SLOW=1 "$mk" check
rc=$?
say "make check exited $rc after $(( $(date +%s) - start )) s (logs: $build/tests/logs)"
# LSan also writes a "Suppressions used" table (Criterion's own leaks,
# tests/lsan.supp) to these files: only files with a report count.
reports=$(grep -l -E 'ERROR: |runtime error|^SUMMARY: ' -r "$sanlogs" | sort)
if [ -n "$reports" ]; then
    say "FAIL: sanitizer reports ($(echo "$reports" | wc -l) files in $sanlogs):"
    for f in $reports; do
        echo "--- $f"
        head -n 40 "$f"
    done
    rc=1
else
    say "no sanitizer report from any process"
fi
exit "$rc"
}
