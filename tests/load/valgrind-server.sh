#!/bin/sh
# valgrind-server.sh ARGS... - run the real server under valgrind's memcheck.
#
# Stands in for server/qednbd in the valgrind runs (see run-valgrind.sh and
# vg-sessions.sh).  $QEDNBD_REAL is the real binary; each server process
# writes its report to $QEDNBD_VG_LOGDIR/qednbd.PID.log.  exec keeps the PID,
# so a test's SERVER_PID is valgrind running the server, and its exit status
# is the server's, or 99 when memcheck found an error (a leak of definite or
# possible kind counts as one).  $VALGRIND may name the valgrind binary.
#
# Why --aio=threads: memcheck does not see what the kernel writes into
# buffers through io_uring, so every READ reply served by the io_uring
# backend would be reported as "writev points to uninitialised bytes".  With
# the thread pool the data arrives through pread(), which memcheck follows,
# and a report of uninitialised bytes sent to a client is then a real one
# (an information leak).  So --aio=threads goes first, and a test's own
# --aio=uring becomes --aio=threads too (other values, e.g. a bad one that a
# test wants refused, pass unchanged).  The io_uring backend is covered by
# the sanitizer run instead.
: "${QEDNBD_REAL:?QEDNBD_REAL must name the real server binary}"
: "${QEDNBD_VG_LOGDIR:?QEDNBD_VG_LOGDIR must name the log directory}"
here=$(cd "$(dirname "$0")" && pwd)
n=$#
while [ "$n" -gt 0 ]; do
    a=$1
    shift
    case "$a" in --aio=uring) a=--aio=threads ;; esac
    if [ "$a" = uring ] && [ "${prev:-}" = --aio ]; then a=threads; fi
    prev=$a
    set -- "$@" "$a"
    n=$((n - 1))
done
exec "${VALGRIND:-valgrind}" --tool=memcheck --error-exitcode=99 \
    --leak-check=full --show-leak-kinds=definite,possible \
    --errors-for-leak-kinds=definite,possible \
    --track-origins=yes --num-callers=30 \
    --suppressions="$here/../valgrind.supp" \
    --log-file="$QEDNBD_VG_LOGDIR/qednbd.%p.log" \
    "$QEDNBD_REAL" --aio=threads "$@"
