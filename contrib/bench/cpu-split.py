#!/usr/bin/env python3
"""cpu-split.py - sort a server's perf samples into where the time goes.

Reads `perf script -F comm,pid,tid,ip,sym,dso` output (recorded with
`perf record -a -g -e cpu-clock -F FREQ`) on stdin, keeps the samples of one
process (--pid), and puts each in one category: the system call it is in
(from the kernel call chain), or, in user space, the part of the program
(engine, io backend, server, libev, libc copies...).  Kernel copy routines
are counted apart inside their system call ("copy" column).

usage: cpu-split.py --pid PID --freq HZ --ios N --syms-dir BUILD/lib [--top N]
Prints TSV: 'cat' lines (category, samples, us per I/O, copy us per I/O),
'thr' lines (thread kind, samples, us per I/O) and 'sym' lines (leaf symbol,
samples, share).  See README.md, "Multi-core design (issue 14)".
"""
import argparse
import collections
import glob
import subprocess
import sys

KCOPY = {'_copy_to_iter', '_copy_from_iter', 'rep_movs_alternative',
         'copy_user_generic', 'copy_user_enhanced_fast_string', 'memcpy',
         '__memcpy', 'memcpy_orig', 'copy_page_to_iter', 'copy_page_from_iter',
         'clear_page_erms', 'clear_page_rep', 'memset_orig', '__memset'}

# (marker in the kernel chain, category); the first match wins, leaf first.
SYSCALLS = [
    ('io_uring_enter', 'io_uring_enter'),
    ('do_preadv', 'file pread/pwrite on loop'),
    ('do_pwritev', 'file pread/pwrite on loop'),
    ('ksys_pread64', 'file pread/pwrite on loop'),
    ('ksys_pwrite64', 'file pread/pwrite on loop'),
    ('unix_stream_recvmsg', 'socket recv'),
    ('tcp_recvmsg', 'socket recv'),
    ('sock_read_iter', 'socket recv'),
    ('unix_stream_sendmsg', 'socket send'),
    ('tcp_sendmsg', 'socket send'),
    ('sock_write_iter', 'socket send'),
    ('eventfd_read', 'eventfd'),
    ('eventfd_write', 'eventfd'),
    ('do_epoll_wait', 'epoll_wait'),
    ('do_fsync', 'fdatasync'),
]


# The frame under do_syscall_64 when the chain stops before a marker above.
SYSCALL_FRAMES = [
    ('preadv', 'file pread/pwrite on loop'),
    ('pwritev', 'file pread/pwrite on loop'),
    ('pread64', 'file pread/pwrite on loop'),
    ('pwrite64', 'file pread/pwrite on loop'),
    ('writev', 'socket send'),
    ('sendmsg', 'socket send'),
    ('readv', 'socket recv'),
    ('recvmsg', 'socket recv'),
    ('epoll_wait', 'epoll_wait'),
    ('io_uring_enter', 'io_uring_enter'),
    ('do_syscall_64', 'syscall entry/exit'),
    ('exit_to_user_mode', 'syscall entry/exit'),
    ('x64_sys_call', 'syscall entry/exit'),
]


def lib_symbols(libdir):
    """Function names defined in libqed's parts: {name: part}."""
    parts = {}
    for part in ('format', 'io', 'engine'):
        for a in glob.glob('%s/libqed-%s.a' % (libdir, part)):
            out = subprocess.run(['nm', '--defined-only', a], capture_output=True,
                                 text=True, check=False).stdout
            for line in out.splitlines():
                f = line.split()
                if len(f) == 3 and f[1] in 'tT':
                    parts[f[2]] = part
    return parts


def samples(stream, pid):
    """Yield (comm, tid, [(sym, dso), ...] leaf first) for PID's samples."""
    head, chain = None, []
    for line in stream:
        line = line.rstrip('\n')
        if not line:
            if head:
                yield head[0], head[1], chain
            head, chain = None, []
            continue
        if not line[0].isspace():
            f = line.split()
            # "comm pid/tid" (comm may hold spaces: pid/tid is the last field)
            p, _, t = f[-1].partition('/')
            head = (' '.join(f[:-1]), t) if p == str(pid) else None
            chain = []
        elif head:
            f = line.split(None, 1)
            rest = f[1] if len(f) > 1 else ''
            sym, _, dso = rest.rpartition(' (')
            chain.append((sym.split('+')[0], dso.rstrip(')')))
    if head:
        yield head[0], head[1], chain


def user_category(sym, dso, parts):
    """The category of a user-space leaf frame."""
    if 'libc' in dso:
        if 'memmove' in sym or 'memcpy' in sym:
            return 'user memcpy (libc)'
        if 'memset' in sym:
            return 'user memset (libc)'
        return 'libc other'
    if 'libev' in dso:
        return 'libev'
    if 'liburing' in dso:
        return 'liburing'
    if sym in parts:
        return 'lib/' + parts[sym]
    if 'qednbd' in dso:
        return 'server (net, protocol)'
    return 'user other (%s)' % dso.rsplit('/', 1)[-1]


def categorize(comm, chain, parts):
    """(category, is_copy) of one sample."""
    kern = [s for s, d in chain if d.startswith('[kernel')]
    if comm.startswith('iou-wrk'):
        return 'file I/O in iou-wrk', bool(kern) and kern[0] in KCOPY
    if chain and chain[0][1].startswith('[kernel'):
        copy = kern[0] in KCOPY
        for marker, cat in SYSCALLS:
            if any(marker in s for s in kern):
                return cat, copy
        if 'do_syscall_64' in kern:
            i = kern.index('do_syscall_64')
            name = kern[i - 1] if i > 0 else 'do_syscall_64'
            for marker, cat in SYSCALL_FRAMES:
                if marker in name:
                    return cat, copy
            return 'other syscall (%s)' % name, copy
        return 'kernel, no syscall (irq, faults)', copy
    if not chain:
        return 'unknown', False
    return user_category(chain[0][0], chain[0][1], parts), False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--pid', required=True)
    ap.add_argument('--freq', type=float, required=True)
    ap.add_argument('--ios', type=float, required=True)
    ap.add_argument('--syms-dir', default='lib')
    ap.add_argument('--top', type=int, default=20)
    a = ap.parse_args()
    parts = lib_symbols(a.syms_dir)
    cats, copies = collections.Counter(), collections.Counter()
    thr, syms = collections.Counter(), collections.Counter()
    n = 0
    for comm, tid, chain in samples(sys.stdin, a.pid):
        n += 1
        cat, copy = categorize(comm, chain, parts)
        cats[cat] += 1
        copies[cat] += copy
        kind = ('loop thread' if tid == a.pid else
                'iou-wrk' if comm.startswith('iou-wrk') else 'other thread')
        thr[kind] += 1
        leaf = chain[0][0] if chain else '?'
        syms[leaf] += 1
    us = 1e6 / a.freq / max(a.ios, 1)   # CPU us per sample, per I/O
    print('total\t%d\t%.3f' % (n, n * us))
    for cat, c in cats.most_common():
        print('cat\t%s\t%d\t%.3f\t%.3f' % (cat, c, c * us, copies[cat] * us))
    for kind, c in thr.most_common():
        print('thr\t%s\t%d\t%.3f' % (kind, c, c * us))
    for sym, c in syms.most_common(a.top):
        print('sym\t%s\t%d\t%.4f' % (sym, c, c / max(n, 1)))


if __name__ == '__main__':
    main()
