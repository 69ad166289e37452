#!/bin/bash
# kill -9 of the real server while one call of a request is pending, for
# every call of every writing request type (the shim holds the call), with
# and without a backing file: the image must check clean (leaks allowed),
# reopen with repair, and read back the old or the new data in the
# request's range and exactly the old data everywhere else.
. "$top_srcdir/tests/faults/faults-common.sh"
command -v qemu-io >/dev/null 2>&1 || skip "qemu-io is not installed"
build_shim
mkdir "$tmp/plain" "$tmp/backing"
"$PYNBD" "$FAULTS_SRC/inject.py" --shim "$SHIM" --dir "$tmp/plain" --crash ||
    fail "kill -9 at every step"
"$PYNBD" "$FAULTS_SRC/inject.py" --shim "$SHIM" --dir "$tmp/backing" --crash --backing ||
    fail "kill -9 at every step, with a backing file"
