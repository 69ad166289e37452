#!/usr/bin/env python3
"""gen-image-corpus.py OUTDIR [KNOWNDIR] - write the seed corpus of fuzz-image.

Each seed picks one of fuzz-image.c's templates, lists mutations and then
operations, in the byte format that fuzz-image.c reads (mutate() and
one_op() there).  The seeds cover each kind of corruption on each template:
L1 and L2 entries pointing at nothing, at the header, at the L1 table, at
another table, past the end of the file, at 2^63 and 2^64 - 1; every header
field; NEED_CHECK set with corrupt entries (so the open repairs); backing
names naming the image itself, a missing file, a directory; truncated
files.  After the mutations each seed opens the image and reads, writes,
zeroes, trims, checks and repairs it.

Seeds that reproduce a bug not fixed yet (KNOWN below) go to KNOWNDIR
(default: known-image/ beside OUTDIR) instead; fuzz-lib-run.sh reports them
without failing.  Once the bug is fixed, take the name out of KNOWN.
"""
import os
import struct
import sys

# mutate(): kind % 9
M_HDR, M_L1, M_L2, M_NAME, M_FEAT, M_POKE, M_TRUNC, M_END = 0, 1, 2, 4, 5, 6, 7, 8
# pick_value(): selector % 24
V = dict(zero=0, one=1, cs=2, cs_m1=3, cs_p512=4, l1=5, table=6, data=7, n=8, up=9,
         up_m_cs=10, up_p_cs=11, far=12, p63=13, p63_m_cs=14, max=15, max_m_cs=16, p32=17,
         cap=18, max512=19, data_tb=20)
# header fields (index into hdr_field_off)
F = dict(magic=0, cs=1, ts=2, hs=3, features=4, compat=5, autoclear=6, l1=7, size=8,
         name_off=9, name_size=10)
NAMES = dict(raw=0, qed=1, self=2, empty=3, missing=4, dotdot=5, dot=6, up_raw=7, abs=8,
             nul_tail=9, dot_qed=10, qedx=11)
NEED_CHECK_BIT = 1


def val(name, idx=0):
    v = V[name]
    return bytes([v]) + (bytes([idx]) if name in ('table', 'data') else b'')


def hdr(field, name, idx=0):
    return bytes([M_HDR | 0x80, F[field]]) + val(name, idx)


def hdr_pow2(field, shift, plus_one=False):
    return bytes([M_HDR | (0x40 if plus_one else 0), F[field]]) + val('zero') + bytes([shift])


def l1(i, name, idx=0):
    return bytes([M_L1, i]) + val(name, idx)


def l2(table, i, name, idx=0):
    return bytes([M_L2, table, i]) + val(name, idx)


def bname(n):
    return bytes([M_NAME, NAMES[n]])


def feat(bit, which=0):
    return bytes([M_FEAT, which, bit])


def poke(off, b):
    return bytes([M_POKE]) + struct.pack('<IB', off, b)


def trunc(s):
    return bytes([M_TRUNC, s])


# one_op(): op % 10; then pick_off (b, u16) and a u16 length
READ, WRITE, ZERO, TRIM, BS, FLUSH, CHECK, CLOSE = 0, 2, 4, 5, 6, 7, 8, 9


def op(code, anchor=0, v=0, ln=4095, extra=b''):
    return bytes([code, anchor]) + struct.pack('<HH', v, ln) + extra


STD_OPS = (op(READ, 1, 0, 8191) + op(READ, 1, 5, 300) + op(WRITE, 1, 1, 5000) +
           op(WRITE | 0x10, 5, 3, 600) + op(ZERO | 0x20, 1, 4, 0, bytes([2])) +
           op(TRIM | 0x10, 1, 6, 4095) + op(BS | 0x10, 0, 0, 2000) + op(FLUSH) +
           op(CHECK) + op(CHECK | 0x10) + op(READ, 3, 1, 4095) + op(WRITE, 3, 1, 100) +
           op(WRITE, 2, 0, 4095) + op(CLOSE) + bytes([0]) + op(READ, 1, 0, 8191) +
           op(CHECK | 0x10))


def seed(tmpl, muts, rw=True, ops=STD_OPS, repair=False):
    """repair: the first open is read-write with qed_open_opts.repair_corrupt
    (a clean image with invalid entries is refused read-write without it)."""
    how = (0 if rw else 1) | (2 if repair else 0)
    return bytes([tmpl]) + b''.join(muts) + bytes([M_END, how]) + ops


# Reproducers of bugs not fixed yet: none.  (The l1-to-l1 and l2-aliases
# seeds found the first bug, fixed with them: qed_meta_free() left the count
# of invalid entries behind, so a repair on an open image, then a request
# meeting an invalid L2 entry, wrote through NULL.)
KNOWN = set()


def main():
    out = sys.argv[1]
    known = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(os.path.abspath(out)), 'known-image')
    os.makedirs(out, exist_ok=True)
    s = {}
    for t in range(4):
        s[f't{t}-valid'] = seed(t, [])
        s[f't{t}-valid-ro'] = seed(t, [], rw=False)
        s[f't{t}-l1-past-eof'] = seed(t, [l1(0, 'up_p_cs')])
        s[f't{t}-l1-to-header'] = seed(t, [l1(0, 'zero'), l1(1, 'one'), l1(2, 'cs_m1')])
        s[f't{t}-l1-to-l1'] = seed(t, [l1(0, 'l1')])
        s[f't{t}-l2-aliases'] = seed(t, [l2(0, 0, 'l1'), l2(0, 1, 'table', 1), l2(0, 2, 'data', 2),
                                         l2(0, 3, 'up'), l2(0, 4, 'cs_p512')])
        s[f't{t}-l2-huge'] = seed(t, [l2(0, 0, 'p63'), l2(0, 1, 'max_m_cs'), l2(0, 2, 'max'),
                                      l2(0, 5, 'far')])
        s[f't{t}-l1-past-eof-repair'] = seed(t, [l1(0, 'up_p_cs')], repair=True)
        s[f't{t}-dirty-bad-entries'] = seed(t, [feat(NEED_CHECK_BIT), l2(0, 1, 'up_p_cs'), l1(3, 'far')])
    s['hdr-size-huge'] = seed(0, [hdr('size', 'max512')])
    s['hdr-size-cap'] = seed(1, [hdr('size', 'cap')])
    s['hdr-size-p63'] = seed(3, [hdr('size', 'p63')])
    s['hdr-l1-past-eof'] = seed(0, [hdr('l1', 'up_p_cs')])
    s['hdr-l1-max'] = seed(0, [hdr('l1', 'max_m_cs')])
    s['hdr-cs-64m'] = seed(0, [hdr_pow2('cs', 26)])
    s['hdr-cs-odd'] = seed(0, [hdr_pow2('cs', 12, True)])
    s['hdr-ts-16'] = seed(0, [hdr_pow2('ts', 4)])
    s['hdr-hs-big'] = seed(1, [hdr_pow2('hs', 20)])
    s['hdr-magic'] = seed(0, [hdr('magic', 'one')])
    s['hdr-unknown-feature'] = seed(0, [feat(17)])
    s['hdr-autoclear'] = seed(1, [feat(3, 2)])
    s['name-self'] = seed(1, [bname('self')])
    s['name-self-qed'] = seed(0, [bname('self'), feat(2)])
    s['name-missing'] = seed(2, [bname('missing')])
    s['name-dot'] = seed(1, [bname('dot')])
    s['name-dotdot'] = seed(1, [bname('dotdot')])
    s['name-abs'] = seed(2, [bname('abs')])
    s['name-nul-tail'] = seed(1, [bname('nul_tail')])
    s['name-qed-into-raw'] = seed(1, [bname('qed')])
    s['name-off-huge'] = seed(2, [hdr('name_off', 'max'), hdr('name_size', 'p32')])
    s['name-size-huge'] = seed(2, [hdr('name_size', 'max')])
    s['trunc-table'] = seed(0, [trunc(1)])
    s['trunc-byte'] = seed(2, [trunc(0)])
    s['trunc-header'] = seed(1, [trunc(3)])
    s['poke-l2'] = seed(0, [poke(12288 + 7, 0x80), poke(12288 + 8, 0x01)])
    for name, data in sorted(s.items()):
        d = known if name in KNOWN else out
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, 'gen-' + name), 'wb') as f:
            f.write(data)
    print(f'{len(s) - len(KNOWN)} seeds written to {out}, {len(KNOWN)} to {known}')


if __name__ == '__main__':
    main()
