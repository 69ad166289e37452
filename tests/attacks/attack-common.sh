# attack-common.sh - sourced by the attack tests of tests/attacks/ (not a
# test).  Each test is a bash file, named for the CVE class it covers, that
# runs its python3 body (on stdin) with attacklib.py importable.
set -u
: "${top_builddir:?top_builddir must be set (run through make check)}"
: "${top_srcdir:?top_srcdir must be set (run through make check)}"
# The system python3 first: a version-manager shim in PATH can be slow to
# start.  Only the standard library is needed.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3) || { echo "SKIP: python3 is not installed"; exit 77; }
export PYTHONPATH="$top_srcdir/tests/attacks${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
export top_builddir top_srcdir
