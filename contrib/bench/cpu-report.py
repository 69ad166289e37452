#!/usr/bin/env python3
"""cpu-report.py - the markdown report of cpu-breakdown.sh.

usage: cpu-report.py OUTDIR
Reads OUTDIR/runs.tsv (fs server rep mode workload jobs ios iops MiB/s
cpu-us-per-io loop-busy-% server-busy-%) and OUTDIR/split-*.tsv (from
cpu-split.py) and prints medians over the repetitions: throughput and CPU
per I/O for every server, then qednbd's CPU per I/O split by where it goes,
then the top leaf functions (samples summed over the repetitions).
"""
import collections
import glob
import os
import statistics
import sys

# Columns of the split table: (heading, categories summed).
GROUPS = [
    ('sock recv', ['socket recv']),
    ('sock send', ['socket send']),
    ('file on loop', ['file pread/pwrite on loop']),
    ('uring_enter', ['io_uring_enter']),
    ('iou-wrk', ['file I/O in iou-wrk']),
    ('epoll', ['epoll_wait']),
    ('eventfd', ['eventfd']),
    ('sys entry', ['syscall entry/exit']),
    ('kern other', None),   # every other kernel category
    ('engine', ['lib/engine', 'lib/format']),
    ('lib/io', ['lib/io', 'liburing']),
    ('server', ['server (net, protocol)']),
    ('libev', ['libev']),
    ('memcpy', ['user memcpy (libc)', 'user memset (libc)']),
    ('libc etc', None),     # every other user-space category
]
USER_PREFIXES = ('lib/', 'libc', 'libev', 'liburing', 'server', 'user')


def med(v):
    return statistics.median(v) if v else float('nan')


def load_runs(outdir):
    runs = collections.defaultdict(list)
    for line in open(os.path.join(outdir, 'runs.tsv')):
        f = line.rstrip('\n').split('\t')
        if len(f) < 12:
            continue
        fs, srv, rep, mode, wl, nj = f[:6]
        ios, iops, mibs, cpu, loop, busy = map(float, f[6:12])
        runs[(fs, srv, mode, wl, int(nj))].append((iops, mibs, cpu, loop, busy))
    return runs


def load_split(path):
    cats, syms, total = {}, {}, 0.0
    for line in open(path):
        f = line.rstrip('\n').split('\t')
        if f[0] == 'total':
            total = float(f[2])
        elif f[0] == 'cat':
            cats[f[1]] = (float(f[3]), float(f[4]))
        elif f[0] == 'sym':
            syms[f[1]] = int(f[2])
    return total, cats, syms


def group_values(cats):
    known = {c for _, cs in GROUPS if cs for c in cs}
    out = []
    for _, cs in GROUPS:
        if cs:
            out.append(sum(cats.get(c, (0, 0))[0] for c in cs))
        else:
            user = _ == 'libc etc'
            out.append(sum(v[0] for c, v in cats.items() if c not in known and
                           c.startswith(USER_PREFIXES) == user))
    out.append(sum(v[1] for v in cats.values()))   # kernel copies, all syscalls
    return out


def throughput(wl, r):
    return '%.0f MiB/s' % r[1] if wl.endswith('1M') else '%.0fk IOPS' % (r[0] / 1000)


def table_runs(runs, fs, keys):
    print('\n### %s: throughput and server CPU per I/O (medians)\n' % fs)
    print('| workload | conns | qednbd | CPU us/IO | loop busy | server busy '
          '| nbdkit file | CPU us/IO | server busy |')
    print('|---|---:|---:|---:|---:|---:|---:|---:|---:|')
    for wl, nj in keys:
        cells = []
        for srv in ('qednbd', 'nbdkit-file'):
            rs = runs.get((fs, srv, 'cpu', wl, nj))
            if not rs:
                cells.append('- | -' + (' | - | -' if srv == 'qednbd' else ' | -'))
                continue
            m = [med([r[i] for r in rs]) for i in range(5)]
            s = '%s | %.2f' % (throughput(wl, m), m[2])
            s += (' | %.0f %% | %.0f %%' % (m[3], m[4]) if srv == 'qednbd'
                  else ' | %.0f %%' % m[4])
            cells.append(s)
        print('| %s | %d | %s |' % (wl, nj, ' | '.join(cells)))


def table_split(outdir, fs, keys):
    print('\n### %s: qednbd CPU per I/O by where it goes, us (perf, medians)\n' % fs)
    print('| workload | conns | total | ' + ' | '.join(g for g, _ in GROUPS) +
          ' | of which kernel copies |')
    print('|---|---:|' + '---:|' * (len(GROUPS) + 2))
    for wl, nj in keys:
        files = glob.glob(os.path.join(outdir, 'split-%s-qednbd-%s-nj%d-r*.tsv' % (fs, wl, nj)))
        if not files:
            continue
        loaded = [load_split(f) for f in files]
        tot = med([t for t, _, _ in loaded])
        cols = list(zip(*[group_values(c) for _, c, _ in loaded]))
        print('| %s | %d | %.2f | %s |' % (wl, nj, tot, ' | '.join('%.2f' % med(c) for c in cols)))


def table_syms(outdir, fs, keys, top=12):
    print('\n### %s: top leaf functions of qednbd (share of its samples, summed over the repetitions)\n' % fs)
    for wl, nj in keys:
        files = glob.glob(os.path.join(outdir, 'split-%s-qednbd-%s-nj%d-r*.tsv' % (fs, wl, nj)))
        if not files:
            continue
        syms, n = collections.Counter(), 0
        for f in files:
            for line in open(f):
                g = line.rstrip('\n').split('\t')
                if g[0] == 'sym':
                    syms[g[1]] += int(g[2])
                elif g[0] == 'total':
                    n += int(g[1])
        print('- **%s, %d conn**: ' % (wl, nj) + ', '.join(
            '`%s` %.1f %%' % (s, 100 * c / max(n, 1)) for s, c in syms.most_common(top)))


def main():
    outdir = sys.argv[1]
    runs = load_runs(outdir)
    for fs in sorted({k[0] for k in runs}, key=lambda s: s != 'tmpfs'):
        keys = sorted({(k[3], k[4]) for k in runs if k[0] == fs})
        table_runs(runs, fs, keys)
        table_split(outdir, fs, keys)
        table_syms(outdir, fs, keys)


if __name__ == '__main__':
    main()
