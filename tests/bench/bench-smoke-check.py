#!/usr/bin/env python3
"""bench-smoke-check.py - check the report of bench-smoke.sh's bench.sh run.

usage: bench-smoke-check.py OUT ERR RAW_TSV MARKDOWN
(REF_FAILED=1 in the environment: nbdkit-file failed twice, its cells may
say "fail").

The run: servers qednbd, qednbd-direct (may be skipped), nbdkit-file;
--transport unix,tcp; --numjobs 1,2; a 16 MiB fresh image.  Checks:
  - the "host: nproc=N, kernel K" line;
  - for each configuration, the throughput table has a row per workload
    with a positive number for every server that ran and a ratio
    qednbd/nbdkit-file; the CPU-per-I/O and peak-RSS tables a number in
    every cell, every peak RSS positive;
  - every run in the raw TSV succeeded with I/Os counted; the fresh-image
    runs made one pass (16 writes of 1 MiB, 256 of 4 KiB) for any job count;
  - qednbd-direct either ran everything or was skipped with its reason;
  - the targets table: the 1-connection rows for unix and tcp, the
    several-connection and CPU-growth rows, a verdict in each;
  - the markdown file has the same tables.
Exits 1 with the list of what is missing.
"""
import os
import re
import sys

LABELS = ['seq write 1M QD8, fresh image',
          'rand write 4k QD32, fresh image (allocating)',
          'rand write 4k QD32, allocated',
          'rand read 4k QD32',
          'seq read 1M QD8']
WLS = ['seqwrite-fresh', 'randwrite-fresh', 'randwrite', 'randread', 'seqread']
CONFIGS = [('unix', 1), ('unix', 2), ('tcp', 1), ('tcp', 2)]
NUM = r'(\d+(?:\.\d+)?)'


class Checker:
    def __init__(self, out, ref_failed):
        self.out = out
        self.ref_failed = ref_failed
        self.errors = []

    def section(self, title):
        """(header cells, row lines) of the text table titled @title..."""
        m = re.search(r'^' + re.escape(title) + r'.*:\n((?:  .*\n?)+)', self.out, re.M)
        if not m:
            self.errors.append('no table "%s"' % title)
            return [], []
        lines = m.group(1).splitlines()
        return lines[0].split(), lines[1:]

    def cells(self, lines, label):
        for line in lines:
            if line.strip().startswith(label):
                return line.strip()[len(label):].split()
        self.errors.append('no row "%s"' % label)
        return None

    def may_fail(self, name, v):
        return name == 'nbdkit-file' and self.ref_failed and v == 'fail'

    def throughput(self, cfg, servers):
        where = '%s, %d job(s)' % cfg
        head, lines = self.section('Throughput, ' + where)
        want = ['workload', 'unit'] + servers + ['qednbd/nbdkit-file']
        if head and head != want:
            self.errors.append('throughput %s: header %s, expected %s' % (where, head, want))
            return
        for lab in LABELS:
            c = self.cells(lines, lab)
            if c is None:
                continue
            if len(c) != len(want) - 1:
                self.errors.append('throughput %s "%s": cells %s' % (where, lab, c))
                continue
            if c[0] not in ('MiB/s', 'IOPS'):
                self.errors.append('throughput %s "%s": unit %s' % (where, lab, c[0]))
            for name, v in zip(servers, c[1:]):
                if self.may_fail(name, v):
                    continue
                if not re.fullmatch(NUM, v) or float(v) <= 0:
                    self.errors.append('throughput %s "%s" %s: %r' % (where, lab, name, v))
            r = c[-1]
            if self.ref_failed and r == '-':
                continue
            if not re.fullmatch(NUM + 'x', r) or float(r[:-1]) <= 0:
                self.errors.append('throughput %s "%s": ratio %r' % (where, lab, r))

    def cpu_rss(self, cfg, servers):
        where = '%s, %d job(s)' % cfg
        for title, positive in (('Server CPU time per I/O, µs, ', False),
                                ('Server peak RSS, MiB, ', True)):
            _, lines = self.section(title + where)
            for lab in LABELS:
                c = self.cells(lines, lab)
                if c is None:
                    continue
                for name, v in zip(servers, c):
                    if self.may_fail(name, v):
                        continue
                    if not re.fullmatch(NUM, v) or (positive and float(v) <= 0):
                        self.errors.append('%s%s "%s": %r' % (title, where, lab, c))

    def raw(self, rows, servers):
        want = {'seqwrite-fresh': 16, 'randwrite-fresh': 256}
        seen = set()
        for f in rows:
            if len(f) != 11:
                self.errors.append('raw line with %d fields: %s' % (len(f), f))
                continue
            _, tr, nj, srv, wl, status, ios = f[:7]
            seen.add((tr, int(nj), srv, wl))
            if status != 'ok' and self.ref_failed and srv == 'nbdkit-file':
                continue
            if status != 'ok':
                self.errors.append('run %s %s %s %s: %s' % (tr, nj, srv, wl, status))
            elif int(ios) <= 0:
                self.errors.append('run %s %s %s %s: %s I/Os' % (tr, nj, srv, wl, ios))
            elif wl in want and int(ios) != want[wl]:
                self.errors.append('run %s %s %s %s: %s I/Os, one pass is %d'
                                   % (tr, nj, srv, wl, ios, want[wl]))
            elif int(f[10]) <= 0:
                self.errors.append('run %s %s %s %s: peak RSS %s KiB' % (tr, nj, srv, wl, f[10]))
        for cfg in CONFIGS:
            for s in servers:
                for w in WLS:
                    if cfg + (s, w) not in seen:
                        self.errors.append('no run of %s %s %s' % (cfg, s, w))

    def targets(self):
        head, lines = self.section('Targets of issue 14')
        if not head:
            return
        text = '\n'.join(lines)
        for name in ('1 connection', 'several connections', 'CPU per 4k I/O growth'):
            for tr in ('unix', 'tcp'):
                cfg = '%s, %d job(s)' % (tr, 1 if name == '1 connection' else 2)
                if not re.search(r'^\s*' + re.escape(name) + r'\s+' + re.escape(cfg), text, re.M):
                    self.errors.append('targets table lacks "%s" for %s' % (name, cfg))
        for line in lines:
            if line.split()[-1] not in ('met', 'missed', 'n/a'):
                self.errors.append('targets row without a verdict: %s' % line)


def main(argv):
    out = open(argv[1]).read()
    err = open(argv[2]).read()
    rows = [line.split('\t') for line in open(argv[3]).read().splitlines() if line]
    md = open(argv[4]).read()
    ck = Checker(out, os.environ.get('REF_FAILED') == '1')
    if not re.search(r'^host:\s+nproc=\d+, kernel \S+', out, re.M):
        ck.errors.append('no "host: nproc=N, kernel K" line')
    servers = ['qednbd', 'qednbd-direct', 'nbdkit-file']
    if re.search(r'^bench\.sh: skipping qednbd-direct: \S.*', err, re.M):
        if not re.search(r'^skipped qednbd-direct: +\S', out, re.M):
            ck.errors.append('qednbd-direct skipped, but the report does not say why')
        servers.remove('qednbd-direct')
        print('qednbd-direct was skipped: %s' % re.search(r'skipping qednbd-direct: (.*)', err).group(1))
    for cfg in CONFIGS:
        ck.throughput(cfg, servers)
        ck.cpu_rss(cfg, servers)
    ck.raw(rows, servers)
    ck.targets()
    for lab in LABELS:
        if '| %s |' % lab not in md:
            ck.errors.append('markdown file lacks the row "%s"' % lab)
    hdr = '| workload | unit | %s | qednbd/nbdkit-file |' % ' | '.join(servers)
    for title in ['### %s, %d job(s)' % c for c in CONFIGS] + [hdr, '### Targets (issue 14)']:
        if title not in md:
            ck.errors.append('markdown file lacks "%s"' % title)
    if ck.errors:
        print('\n'.join(ck.errors))
        return 1
    print('report complete: %d runs' % len(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
