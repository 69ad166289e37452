#!/usr/bin/env python3
"""gen-engine-corpus.py OUTDIR - write the seed corpus of fuzz-engine.

Each seed is a geometry followed by operations, in the byte format that
fuzz-engine.c reads (see setup() and one_op() there).  The seeds cover every
operation, each geometry kind (small and large clusters, every table size,
the largest size, sizes just below it and not cluster multiples, raw and
QED backing files) and the scenarios that matter most: writes at the end of
a maximum-size image, crashes after unflushed, flushed and FUA writes,
resize then crash, trims and write-zeroes over written data.  A fixed
random generator makes the output the same on every run.
"""
import os
import random
import struct
import sys

# Operation codes (op % 16 in fuzz-engine.c); bit 4 and up are flags.
READ, WRITE, ZERO, TRIM, FLUSH, BS, RESIZE, BATCH, REOPEN, CRASH = 0, 3, 6, 8, 9, 10, 12, 13, 14, 15
FUA_BIT = 0x10             # WRITE: FUA
Z_FUA, Z_NOHOLE, Z_FAST = 0x10, 0x20, 0x40   # ZERO: flags << 4

# pick_len kinds (b % 8)
L_SMALL, L_SECTORS, L_CLUSTER, L_ZERO, L_CLUSTER_PM, L_ANY, L_CLUSTERS, L_TABLES = range(8)
# pick_off anchors (b % 8) and shifts ((b >> 3) % 8)
A_ZERO, A_CLUSTER, A_TABLE, A_END, A_END_LEN, A_RANDOM, A_LAST, A_ANY = range(8)
S_NONE, S_P512, S_M512, S_P1, S_M1, S_PV, S_MV, S_HALF = range(8)


def geom(g, s, b, c, v, backing_len=None):
    out = bytes([g, s, b, c]) + struct.pack('<Q', v)
    if b % 3:
        out += struct.pack('<I', backing_len if backing_len is not None else 300000)
    return out


def ln(kind, v=0):
    return bytes([kind]) + struct.pack('<I', v)


def off(anchor, shift=S_NONE, v=0, from_end=False, extra=b''):
    b = anchor | (shift << 3) | (0x80 if from_end else 0)
    return bytes([b]) + struct.pack('<I', v) + extra


def op(code, *parts):
    return bytes([code]) + b''.join(parts)


def crash(mode, rng=0):
    return bytes([CRASH, mode]) + struct.pack('<Q', rng)


def rnd_op(r):
    k = r.choice([READ, WRITE, WRITE, WRITE | FUA_BIT, ZERO, ZERO | Z_NOHOLE, ZERO | Z_FAST,
                  TRIM, FLUSH, BS, BS | 0x10, RESIZE, BATCH, REOPEN, CRASH])
    def rl():
        return ln(r.randrange(8), r.getrandbits(32))
    def ro():
        a = r.randrange(8)
        extra = b''
        if a == A_RANDOM:
            extra = struct.pack('<I', r.getrandbits(32))
        elif a == A_ANY:
            extra = struct.pack('<Q', r.getrandbits(64))
        return bytes([a | (r.randrange(8) << 3) | (r.randrange(2) << 7)]) + \
            struct.pack('<I', r.getrandbits(32)) + extra
    if k in (READ, WRITE, WRITE | FUA_BIT) or k & 0xf in (ZERO, TRIM):
        return bytes([k]) + rl() + ro()
    if k == FLUSH or k == REOPEN:
        return bytes([k])
    if k & 0xf == BS:
        return bytes([k, r.randrange(64)]) + rl() + \
            (struct.pack('<I', r.getrandbits(32)) if k & 0x10 else b'') + ro()
    if k == RESIZE:
        b = r.randrange(4)
        return bytes([k, b]) + struct.pack('<I', r.getrandbits(16))
    if k == BATCH:
        n = r.randrange(3)
        return bytes([k, n]) + b''.join(rl() + ro() for _ in range(n + 2))
    return crash(r.randrange(3), r.getrandbits(64))


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    seeds = {}
    w = lambda anchor, shift=S_NONE, v=0, fe=False, lk=L_SECTORS, lv=7: \
        op(WRITE, ln(lk, lv), off(anchor, shift, v, fe))
    rd = lambda anchor, shift=S_NONE, v=0, fe=False, lk=L_SECTORS, lv=15: \
        op(READ, ln(lk, lv), off(anchor, shift, v, fe))
    # Small geometry (4 KiB clusters, table size 1), every op once.
    g0 = geom(0x00, 3, 0, 0, 40)
    seeds['basic-rw'] = g0 + w(A_CLUSTER, v=3) + rd(A_CLUSTER, v=3) + rd(A_ZERO)
    seeds['unflushed-crash'] = g0 + w(A_CLUSTER, v=1) + w(A_CLUSTER, v=9, lk=L_CLUSTER) + \
        crash(0) + rd(A_CLUSTER, v=1)
    seeds['flushed-crash'] = g0 + w(A_CLUSTER, v=1) + op(FLUSH) + w(A_CLUSTER, v=1) + \
        crash(2, 12345) + rd(A_CLUSTER, v=1)
    seeds['fua-crash'] = g0 + op(WRITE | FUA_BIT, ln(L_CLUSTER), off(A_CLUSTER, v=5)) + \
        crash(0) + rd(A_CLUSTER, v=5)
    seeds['keep-all-crash'] = g0 + w(A_CLUSTER, v=2) + w(A_TABLE, v=0) + crash(1) + \
        rd(A_CLUSTER, v=2)
    seeds['reopen'] = g0 + w(A_CLUSTER, S_P512, v=2) + op(REOPEN) + rd(A_CLUSTER, v=2)
    seeds['zero-variants'] = g0 + w(A_CLUSTER, v=4, lk=L_CLUSTERS, lv=3) + \
        op(ZERO, ln(L_CLUSTER), off(A_CLUSTER, v=4)) + \
        op(ZERO | Z_NOHOLE, ln(L_SMALL, 700), off(A_CLUSTER, S_P512, v=5)) + \
        op(ZERO | Z_FAST, ln(L_CLUSTERS, 2), off(A_CLUSTER, v=5)) + \
        op(ZERO | Z_FUA, ln(L_TABLES, 0), off(A_ZERO)) + rd(A_CLUSTER, v=4, lk=L_ANY, lv=20000)
    seeds['trim'] = g0 + w(A_CLUSTER, v=6, lk=L_CLUSTERS, lv=4) + \
        op(TRIM, ln(L_CLUSTERS, 2), off(A_CLUSTER, S_P1, v=6)) + \
        rd(A_CLUSTER, v=6, lk=L_ANY, lv=20000) + op(FLUSH) + crash(2, 7)
    seeds['block-status'] = g0 + w(A_CLUSTER, v=8) + op(ZERO, ln(L_CLUSTER), off(A_CLUSTER, v=10)) + \
        op(BS, bytes([63]), ln(L_TABLES, 1), off(A_ZERO)) + op(BS | 0x10, bytes([5]), ln(L_ZERO), struct.pack('<I', 0xffffffff), off(A_ZERO))
    seeds['resize-crash'] = g0 + op(RESIZE, bytes([1]), struct.pack('<I', 2)) + w(A_END, S_NONE, lk=L_SECTORS, lv=0) + \
        op(WRITE, ln(L_SECTORS, 1), off(A_END_LEN)) + crash(2, 99) + rd(A_END_LEN, lk=L_SECTORS, lv=3)
    seeds['resize-max'] = g0 + op(RESIZE, bytes([2]), struct.pack('<I', 0)) + op(WRITE, ln(L_SECTORS, 3), off(A_END_LEN)) + \
        op(RESIZE, bytes([3]), struct.pack('<I', 0)) + op(REOPEN) + op(READ, ln(L_SECTORS, 3), off(A_END_LEN))
    seeds['batch'] = g0 + op(BATCH, bytes([2]), ln(L_CLUSTER), off(A_CLUSTER, v=1), ln(L_SECTORS, 3), off(A_CLUSTER, S_P512, v=1),
                             ln(L_CLUSTER), off(A_TABLE, v=1), ln(L_SMALL, 100), off(A_CLUSTER, v=1)) + \
        rd(A_CLUSTER, v=1, lk=L_CLUSTERS, lv=1) + crash(2, 3)
    seeds['out-of-range'] = g0 + w(A_END, S_P512) + rd(A_END, S_P1) + \
        op(WRITE, ln(L_SECTORS, 0), off(A_ANY, extra=struct.pack('<Q', 0xfffffffffffffe00))) + \
        op(ZERO, ln(L_TABLES, 7), off(A_ANY, extra=struct.pack('<Q', 0xffffffffffffffff))) + \
        op(TRIM, ln(L_CLUSTERS, 63), off(A_END, S_M512))
    # Every table size; maximum sizes; sizes that are not cluster multiples.
    for ts in range(5):
        g = ts << 4
        seeds[f'ts{1 << ts}-max-end'] = geom(g, 0, 0, 1, 0) + w(A_END_LEN) + rd(A_END_LEN) + \
            w(A_TABLE, S_M512, v=1, fe=True) + op(REOPEN) + rd(A_END_LEN) + crash(2, ts)
        seeds[f'ts{1 << ts}-below-max'] = geom(g | 1, 1, 0, 2, 0) + w(A_END_LEN, lk=L_SMALL, lv=511) + \
            rd(A_END_LEN, lk=L_SECTORS, lv=3) + op(FLUSH) + w(A_END_LEN) + crash(0)
        seeds[f'ts{1 << ts}-partial-cluster'] = geom(g | 2, 2, 0, 3, 5) + \
            op(WRITE, ln(L_CLUSTER), off(A_CLUSTER, v=0, from_end=True)) + \
            op(TRIM, ln(L_CLUSTERS, 1), off(A_CLUSTER, v=0, from_end=True)) + \
            op(ZERO, ln(L_CLUSTERS, 1), off(A_CLUSTER, v=1, from_end=True)) + rd(A_END_LEN)
    # Large clusters (1 in 8 inputs in fuzzing: g & 0xe0 == 0xe0).
    for g, c in ((0xe0 + 9, 0x00), (0xe0 + 10, 0x00), (0xe0 + 14, 0x60)):
        seeds[f'bigcluster-{g:02x}'] = geom(g, 0, 0, c, 0) + w(A_END_LEN, lk=L_SMALL, lv=100) + \
            w(A_CLUSTER, S_HALF, v=1) + crash(2, 5) + rd(A_END_LEN, lk=L_SMALL, lv=100)
    # Backing files: raw (probe and explicit) and QED, shorter than the image.
    for name, b, blen in (('raw', 1, 200001), ('raw-probe', 0x81, 4097), ('qed', 2, 1 << 20), ('qed-probe', 0x82, 70000)):
        seeds[f'backing-{name}'] = geom(0x10, 3, b, 0, 100, blen) + \
            w(A_CLUSTER, S_P512, v=3) + rd(A_ZERO, lk=L_ANY, lv=200000) + \
            op(ZERO, ln(L_CLUSTER), off(A_CLUSTER, v=1)) + op(TRIM, ln(L_CLUSTERS, 3), off(A_CLUSTER, v=3)) + \
            op(BS, bytes([20]), ln(L_CLUSTERS, 40), off(A_ZERO)) + crash(2, 11) + rd(A_CLUSTER, v=3)
    # Random sequences over random geometries.
    r = random.Random(20261207)
    for i in range(12):
        g = r.randrange(256) & ~0x80 if i % 6 else 0xe0 | r.randrange(16)
        data = geom(g, r.randrange(256), r.randrange(256), r.randrange(256) & ~0x20,
                    r.getrandbits(64), r.randrange(1 << 21))
        data += b''.join(rnd_op(r) for _ in range(r.randrange(10, 40)))
        seeds[f'random-{i:02d}'] = data
    for name, data in sorted(seeds.items()):
        with open(os.path.join(out, 'gen-' + name), 'wb') as f:
            f.write(data)
    print(f'{len(seeds)} seeds written to {out}')


if __name__ == '__main__':
    main()
