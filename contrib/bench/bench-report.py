#!/usr/bin/env python3
"""bench-report.py - the report of one bench.sh invocation.

Reads bench.sh's meta.tsv (key TAB value lines) and results.tsv (one line
per timed run: rep transport numjobs server workload status ios iops
bw_bytes cpu_ticks hwm_kib) and prints, for every configuration (transport
and number of fio jobs), the medians of throughput and of server CPU time
per I/O, the peak RSS, the ratios between qednbd and the other servers, and
then the summary of issue 14's targets.  With an output file, writes the
same as markdown, with every run listed.

usage: bench-report.py META RESULTS CLK_TCK SERVERS WORKLOADS TRANSPORTS
                       NUMJOBS [OUT]   (the lists comma-separated)
"""
import statistics
import sys

LABEL = {
    'seqwrite-fresh': ('seq write 1M QD8, fresh image', 'MiB/s'),
    'randwrite-fresh': ('rand write 4k QD32, fresh image (allocating)', 'IOPS'),
    'randwrite': ('rand write 4k QD32, allocated', 'IOPS'),
    'randread': ('rand read 4k QD32', 'IOPS'),
    'seqread': ('seq read 1M QD8', 'MiB/s'),
}
ORDER = ['seqwrite-fresh', 'randwrite-fresh', 'randwrite', 'randread', 'seqread']
WL_4K = ['randwrite-fresh', 'randwrite', 'randread']

# The ratios shown next to every table: (numerator, denominator).
RATIO_PAIRS = [('qednbd', 'qemu-nbd'), ('qednbd', 'nbdkit-file'),
               ('qednbd-direct', 'qemu-nbd-direct'),
               ('qednbd-direct', 'nbdkit-file-direct')]


def read_meta(path):
    """meta.tsv as a list of (key, value) and as a dict."""
    meta = []
    for line in open(path):
        k, _, v = line.rstrip('\n').partition('\t')
        meta.append((k, v))
    return meta, dict(meta)


def read_runs(path, clk_tck):
    """results.tsv as {(transport, numjobs, server, workload): [run|None]}."""
    runs = {}
    for line in open(path):
        f = line.rstrip('\n').split('\t')
        if len(f) != 11:
            continue
        _, tr, nj, srv, wl, status, ios, iops, bw, ticks, hwm = f
        r = None
        if status == 'ok':
            ios = int(ios)
            r = {
                'tput': float(bw) / 1048576 if LABEL[wl][1] == 'MiB/s' else float(iops),
                'ios': ios,
                'cpu_us': int(ticks) * 1e6 / clk_tck / ios,
                'hwm_mib': int(hwm) / 1024,
            }
        runs.setdefault((tr, int(nj), srv, wl), []).append(r)
    return runs


class Report:
    """Medians and ratios over the runs of one invocation."""

    def __init__(self, runs, servers, workloads, rss_note):
        self.runs = runs
        self.servers = servers
        self.workloads = workloads
        self.rss_note = rss_note

    def med(self, cfg, srv, wl, key):
        """Median of @key; None when not run, 'fail' when every run failed."""
        rs = self.runs.get(cfg + (srv, wl), [])
        vals = [r[key] for r in rs if r]
        if not rs:
            return None
        if not vals:
            return 'fail'
        return statistics.median(vals)

    def peak(self, cfg, srv, wl):
        rs = self.runs.get(cfg + (srv, wl), [])
        vals = [r['hwm_mib'] for r in rs if r]
        if not rs:
            return None
        return max(vals) if vals else 'fail'

    def pairs(self):
        return [(a, b) for a, b in RATIO_PAIRS if a in self.servers and b in self.servers]

    def tables(self, cfg, reps):
        """The three tables (title, head, rows) of one configuration."""
        tr, nj = cfg
        where = '%s, %d job(s)' % (tr, nj)
        pairs = self.pairs()
        rcols = ['%s/%s' % p for p in pairs]
        out = []
        head = ['workload', 'unit'] + self.servers + rcols
        rows = []
        for wl in self.workloads:
            row = [LABEL[wl][0], LABEL[wl][1]]
            row += [fmt(self.med(cfg, s, wl, 'tput'), 'tput') for s in self.servers]
            row += [fmt(ratio(self.med(cfg, a, wl, 'tput'), self.med(cfg, b, wl, 'tput')), 'ratio')
                    for a, b in pairs]
            rows.append(row)
        out.append(('Throughput, %s (median of %s)' % (where, reps), head, rows))
        head = ['workload'] + self.servers + rcols
        rows = []
        for wl in self.workloads:
            row = [LABEL[wl][0]] + [fmt(self.med(cfg, s, wl, 'cpu_us'), 'cpu') for s in self.servers]
            row += [fmt(ratio(self.med(cfg, a, wl, 'cpu_us'), self.med(cfg, b, wl, 'cpu_us')), 'ratio')
                    for a, b in pairs]
            rows.append(row)
        out.append(('Server CPU time per I/O, µs, %s (utime+stime / I/Os, median)' % where,
                    head, rows))
        head = ['workload'] + self.servers
        rows = [[LABEL[wl][0]] + [fmt(self.peak(cfg, s, wl), 'rss') for s in self.servers]
                for wl in self.workloads]
        out.append(('Server peak RSS, MiB, %s (max over runs; %s)' % (where, self.rss_note),
                    head, rows))
        return out


def fmt(v, kind):
    if v is None:
        return '-'
    if v == 'fail':
        return 'fail'
    if kind == 'tput':
        return '%.0f' % v if v >= 100 else '%.1f' % v
    if kind == 'cpu':
        return '%.1f' % v if v < 100 else '%.0f' % v
    if kind == 'rss':
        return '%.1f' % v
    if kind == 'ratio':
        return '%.2fx' % v
    return str(v)


def ratio(a, b):
    if isinstance(a, float) and isinstance(b, float) and b > 0:
        return a / b
    return None


def verdict(r, goal, op):
    """'met', 'missed' or 'n/a' for ratio @r against @goal."""
    if r is None:
        return 'n/a'
    ok = r >= goal if op == '>=' else r > goal if op == '>' else r <= goal
    return 'met' if ok else 'missed'


def target_rows(rep, transports, numjobs):
    """Issue 14's targets, one row each: target, configuration, workload,
    what is compared, ratio, goal, verdict."""
    rows = []

    def add(name, tr, nj, wl, what, r, goal, op):
        rows.append([name, '%s, %d job(s)' % (tr, nj), LABEL[wl][0], what,
                     fmt(r, 'ratio'), '%s %.2fx' % (op, goal), verdict(r, goal, op)])

    def tput_ratio(cfg, a, b, wl):
        return ratio(rep.med(cfg, a, wl, 'tput'), rep.med(cfg, b, wl, 'tput'))

    sv = rep.servers
    for tr in transports:
        if 1 in numjobs and 'qednbd' in sv and 'nbdkit-file' in sv:
            for wl in ('randwrite', 'randread'):
                if wl in rep.workloads:
                    add('1 connection', tr, 1, wl, 'qednbd / nbdkit-file, throughput',
                        tput_ratio((tr, 1), 'qednbd', 'nbdkit-file', wl), 1.2, '>=')
        for nj in numjobs:
            if nj > 1 and 'qednbd' in sv and 'nbdkit-file' in sv:
                for wl in rep.workloads:
                    add('several connections', tr, nj, wl, 'qednbd / nbdkit-file, throughput',
                        tput_ratio((tr, nj), 'qednbd', 'nbdkit-file', wl), 1.0, '>')
        for s in ('qednbd', 'qednbd-direct'):
            if s not in sv or 1 not in numjobs:
                continue
            for nj in numjobs:
                if nj == 1:
                    continue
                for wl in WL_4K:
                    if wl in rep.workloads:
                        add('CPU per 4k I/O growth', tr, nj, wl,
                            '%s CPU/I/O, %d jobs / 1 job' % (s, nj),
                            ratio(rep.med((tr, nj), s, wl, 'cpu_us'),
                                  rep.med((tr, 1), s, wl, 'cpu_us')), 1.1, '<=')
        if 'qednbd-direct' in sv and 'qemu-nbd-direct' in sv:
            for nj in numjobs:
                for wl in rep.workloads:
                    add('O_DIRECT', tr, nj, wl, 'qednbd-direct / qemu-nbd-direct, throughput',
                        tput_ratio((tr, nj), 'qednbd-direct', 'qemu-nbd-direct', wl), 1.0, '>')
    return rows


def text_table(title, head, rows, left=1):
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    out = [title + ':']

    def line(r):
        return '  ' + '  '.join(str(x).ljust(w[i]) if i < left else str(x).rjust(w[i])
                                for i, x in enumerate(r))
    out.append(line(head))
    out.extend(line(r) for r in rows)
    return '\n'.join(out)


def md_table(title, head, rows, left=1):
    out = ['**%s**' % title, '', '| ' + ' | '.join(head) + ' |',
           '|' + '|'.join('---' if i < left else '---:' for i in range(len(head))) + '|']
    out.extend('| ' + ' | '.join(str(x) for x in r) + ' |' for r in rows)
    return '\n'.join(out)


def info_lines(meta, md, servers):
    """(key, value) of the header: machine, versions, settings, flags."""
    keys = ['date', 'host', 'load', 'fio'] + servers + ['settings']
    out = [(k, md[k]) for k in keys if k in md]
    out += [(k, v) for k, v in meta if k.startswith('flags ') or k.startswith('skipped ')]
    out += [(k, md[k]) for k in ('elapsed', 'load after') if k in md]
    return out


def write_markdown(path, md, info, sections, summary, res_file, clk_tck):
    with open(path, 'w') as fh:
        fh.write('Command: `%s`\n\n' % md['command'])
        for k, v in info:
            fh.write('- %s: %s\n' % (k, v))
        for title, tables in sections:
            fh.write('\n### %s\n' % title)
            for t in tables:
                fh.write('\n' + md_table(*t) + '\n')
        fh.write('\n### Targets (issue 14)\n\n' + md_table(*summary, left=4) + '\n')
        fh.write('\n### All runs\n\n| rep | transport | jobs | server | workload | result | I/Os '
                 '| CPU µs/I/O | peak RSS MiB |\n|---:|---|---:|---|---|---:|---:|---:|---:|\n')
        for line in open(res_file):
            f = line.rstrip('\n').split('\t')
            if len(f) != 11:
                continue
            rep, tr, nj, srv, wl, status, ios, iops, bw, ticks, hwm = f
            if status != 'ok':
                fh.write('| %s | %s | %s | %s | %s | fail | | | |\n' % (rep, tr, nj, srv, wl))
                continue
            t = float(bw) / 1048576 if LABEL[wl][1] == 'MiB/s' else float(iops)
            fh.write('| %s | %s | %s | %s | %s | %s %s | %s | %.1f | %.1f |\n' % (
                rep, tr, nj, srv, wl, fmt(t, 'tput'), LABEL[wl][1], ios,
                int(ticks) * 1e6 / clk_tck / int(ios), int(hwm) / 1024))


def main(argv):
    meta_file, res_file, clk_tck, servers, workloads, transports, numjobs = argv[1:8]
    out = argv[8] if len(argv) > 8 else ''
    clk_tck = int(clk_tck)
    servers = servers.split(',')
    workloads = [w for w in ORDER if w in workloads.split(',')]
    transports = transports.split(',')
    numjobs = [int(n) for n in numjobs.split(',')]
    meta, md = read_meta(meta_file)
    note = ('VmHWM reset before each run' if md.get('rss_reset') == 'yes'
            else 'VmHWM since the server started; this kernel cannot reset it')
    rep = Report(read_runs(res_file, clk_tck), servers, workloads, note)
    reps = md['settings'].split('reps=')[1].split()[0]

    sections = [('%s, %d job(s)' % (tr, nj), rep.tables((tr, nj), reps))
                for tr in transports for nj in numjobs]
    summary = ('Targets of issue 14 (ratios from this run)',
               ['target', 'configuration', 'workload', 'compared', 'ratio', 'goal', 'verdict'],
               target_rows(rep, transports, numjobs))
    info = info_lines(meta, md, servers)
    print()
    print('%-22s %s' % ('command:', md['command']))
    for k, v in info:
        print('%-22s %s' % (k + ':', v))
    for _, tables in sections:
        for t in tables:
            print()
            print(text_table(*t))
    print()
    print(text_table(*summary, left=4) if summary[2] else 'Targets of issue 14: none apply to these servers.')
    verdicts = [r[-1] for r in summary[2]]
    if verdicts:
        print('  %d met, %d missed, %d n/a' % (verdicts.count('met'), verdicts.count('missed'),
                                              verdicts.count('n/a')))
    nfail = sum(1 for v in rep.runs.values() for r in v if r is None)
    if nfail:
        print('\n%d run(s) failed; see the messages above.' % nfail)
    if out:
        write_markdown(out, md, info, sections, summary, res_file, clk_tck)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
