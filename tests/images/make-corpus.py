#!/usr/bin/env python3
"""make-corpus.py OUTDIR - write a corpus of hand-made broken QED images.

Every image is built byte by byte (no QEMU, no libqed), so that each one
breaks exactly the rule it names (l2e-many-bad breaks several at once).  The output is deterministic: the same script
writes the same bytes.

OUTDIR receives NAME.qed for each image, any side files an image needs
(its backing file), and OUTDIR/manifest: one line per image, TAB-separated
key=value fields:

  name=        the image is OUTDIR/NAME.qed
  desc=        what is broken, in words
  expect=      "refuse": every open (read-only and read-write) must fail
               with a message that names the file and contains msg=;
               "serve": the image opens, and reads behave as reads= says
  msg=         (refuse) a substring the error message must contain
               (alternatives separated by |)
  files=       side files (backing files) to copy next to the image
  qemu=        what QEMU 7.2 does with the image: "open", "refuse", or
               "skip" (nothing to compare: QEMU does not finish opening
               it); informational for refuse images
  cs=          (serve) cluster size; clusters= guest clusters in the image
  reads=       (serve) expected result of reading each guest cluster before
               any repair: comma-separated A[-B]:K items, K = Z (zeros),
               E (fails with EIO) or D<hex> (the bytes of the file at that
               host offset, the next cluster for each next guest cluster),
               or A<hex> (the entry points at the image's own metadata:
               reading may fail with EIO or return those bytes, but a
               write must fail and never land on the metadata);
               clusters not listed are unallocated: they read as zeros, or
               as the backing file's bytes at the same offset
  backing=     (serve) the raw backing file in OUTDIR, "" for none
  repaired=    (serve) the same after repair: every E of this image's own
               tables becomes unallocated; an E that comes from a corrupt
               backing image stays
  need_check=  (serve) 1 when NEED_CHECK is set: a read-write open repairs
  rw_open=     (serve) "refuse" when the image is marked clean but has
               invalid entries (those repair zeroes): a read-write open
               must fail, changing nothing, with a message that names the
               file, counts the entries (corrupt - remaining) and names
               `qed-img check -r FILE`; with the repair option
               (qed_open_opts.repair_corrupt) it opens and repairs them as
               for NEED_CHECK.  "open" otherwise
  corrupt=     (serve) corruptions check must report before repair
  remaining=   (serve) corruptions left after repair (QEMU does not fix
               clusters referenced twice, and neither do we)
  qemu_corrupt= (serve) QEMU's count before repair, when it counts
               differently (per cluster instead of per table)
  qemu_extra_leaks= (serve) leaks QEMU reports beyond ours (0 unless a
               table QEMU skips as a duplicate has data clusters: QEMU
               checks tables and data entries in one pass, qed_check marks
               every table first and so still counts that table's clusters)
  qemu_left=   (serve) invalid entries QEMU's check neither counts nor
               repairs: those of a table that overlaps another, which QEMU
               skips whole and qed_check judges in the table's own clusters
               (0 elsewhere; when not 0 the two repairs differ there)
  repair_may_change= (serve) byte ranges OFF+LEN (hex) that repair may
               change; the header is always allowed
  scratch=     (serve) first guest cluster of an empty L2 range where the
               test may do allocating writes ("" when there is none)
  scratch_l1=  (serve) file offset (hex) of the L1 entry those writes fill
  reopen=      (serve) items in the reads= syntax that change once the
               scratch writes are done and the image is opened again (an L1
               entry aliasing the L1 table shows the new L1 entry as an L2
               entry pointing at metadata); usually empty
  file_end=    (serve) the file size rounded down to a cluster (hex)

The expectations are written by hand for each image (the "eio" list of
each case) and also derived from the tables by a small model of the
format rules below; the script refuses to write a corpus where the two
disagree, so a typo in either is caught here and not in the test.
"""
import os
import struct
import sys

QED_MAGIC = 0x00444551
F_BACKING = 0x1
F_NEED_CHECK = 0x2
F_NO_PROBE = 0x4
PATH_MAX = 4096
U64 = (1 << 64) - 1

# Default geometry: 4 KiB clusters, tables of 2 clusters (QEMU refuses a
# table size of 1), 1024 entries per table, so one L2 table covers 4 MiB.
CS = 4096
TS = 2
MIB = 1 << 20


class Image:
    """A QED file under construction: header fields plus raw bytes."""

    def __init__(self, cs=CS, ts=TS, hs=1, size=12 * MIB, features=0):
        self.cs, self.ts, self.hs = cs, ts, hs
        self.magic = QED_MAGIC
        self.features = features
        self.compat = 0
        self.autoclear = 0
        self.size = size
        self.l1 = hs * cs
        self.bf_off = 0
        self.bf_len = 0
        self.buf = bytearray(hs * cs + ts * cs)  # header + empty L1 table
        self.side_files = {}                      # extra files: name -> bytes
        self.backing = ''                         # side file that unallocated reads come from

    # -- geometry --
    @property
    def tb(self):
        return self.ts * self.cs

    @property
    def n(self):
        return self.ts * self.cs // 8

    # -- raw access --
    def grow(self, end):
        if len(self.buf) < end:
            self.buf.extend(bytes(end - len(self.buf)))

    def put64(self, off, v):
        self.grow(off + 8)
        self.buf[off:off + 8] = struct.pack('<Q', v & U64)

    def get64(self, off):
        if off + 8 > len(self.buf):
            return 0
        return struct.unpack_from('<Q', self.buf, off)[0]

    # -- building --
    def alloc(self, nclusters):
        """Append nclusters zeroed clusters; return their offset."""
        off = (len(self.buf) + self.cs - 1) // self.cs * self.cs
        self.grow(off + nclusters * self.cs)
        return off

    def new_l2(self, l1_index):
        off = self.alloc(self.ts)
        self.set_l1(l1_index, off)
        return off

    def set_l1(self, i, v):
        self.put64(self.l1 + 8 * i, v)

    def l1_entry_off(self, i):
        return self.l1 + 8 * i

    def l2_entry_off(self, guest_cluster):
        l2 = self.get64(self.l1 + 8 * (guest_cluster // self.n))
        return l2 + 8 * (guest_cluster % self.n)

    def set_l2(self, guest_cluster, v):
        """Set the L2 entry of guest_cluster (its L2 table must exist)."""
        l2 = self.get64(self.l1 + 8 * (guest_cluster // self.n))
        assert l2, 'no L2 table for guest cluster %d' % guest_cluster
        self.put64(l2 + 8 * (guest_cluster % self.n), v)

    def new_data(self, guest_cluster):
        """Allocate a data cluster for guest_cluster and fill it with its pattern."""
        off = self.alloc(1)
        self.fill_pattern(off)
        self.set_l2(guest_cluster, off)
        return off

    def fill_pattern(self, off):
        # Each 8-byte word holds its own host offset, tagged: data read from
        # any wrong place is recognisable.
        self.buf[off:off + self.cs] = b''.join(
            struct.pack('<Q', 0xDA7A000000000000 | (off + i)) for i in range(0, self.cs, 8))

    def set_backing(self, name, off=None):
        nb = name.encode()
        self.features |= F_BACKING
        self.bf_off = 64 if off is None else off
        self.bf_len = len(nb)
        self.buf[self.bf_off:self.bf_off + len(nb)] = nb

    def header_bytes(self):
        return struct.pack('<IIIIQQQQQII', self.magic, self.cs, self.ts, self.hs,
                           self.features, self.compat, self.autoclear, self.l1, self.size,
                           self.bf_off, self.bf_len)

    def content(self):
        b = bytearray(self.buf)
        b[0:64] = self.header_bytes()
        return bytes(b)


def base(**kw):
    """The valid image every serve case starts from.

    Layout (4 KiB clusters, tables of 2 clusters, 12 MiB = 3 L2 ranges):
      0x0000 header          0x1000 L1 (2 clusters)
      0x3000 L2 #0 (L1[0])   0x5000 data g0   0x6000 data g1   0x7000 data g5
      0x8000 L2 #1 (L1[1])   0xa000 data g1027
      g7 is a zero cluster (entry 1); L1[2] is empty: guest clusters
      2048..3071 are the scratch range for allocating writes.
    """
    img = Image(**kw)
    img.new_l2(0)
    img.new_data(0)
    img.new_data(1)
    img.new_data(5)
    img.new_l2(1)
    img.new_data(img.n + 3)
    img.set_l2(7, 1)
    return img


# ---- the model of the format rules (the spec, not the library) ----

def model(img, content):
    """Return (reads, bad) for the file content: reads maps guest clusters
    to 'Z', 'E', ('D', host) or ('A', host), as in the manifest; bad lists
    the (offset, length) of every invalid table entry, which repair zeroes."""
    cs, hs, tb = img.cs, img.hs, img.tb
    file_end = len(content) // cs * cs

    def get(off):
        if off + 8 > len(content):
            return 0
        return struct.unpack_from('<Q', content, off)[0]

    def cluster_ok(o):
        return o % cs == 0 and o >= hs * cs and o < file_end

    def table_ok(o):
        return cluster_ok(o) and o + tb - cs <= U64 and cluster_ok(o + tb - cs)

    reads = {}  # clusters not in it are unallocated: zeros or backing data
    bad = []
    nclusters = (img.size + cs - 1) // cs
    # Host clusters whose entries were judged: the L1 table's as L1 entries,
    # then each L2 table's that no table before it (in L1 order) holds; a
    # table that overlaps another is judged in its own clusters only.
    judged = set(range(img.l1 // cs, img.l1 // cs + img.ts))
    # Metadata clusters: the header, the L1 table, every valid L2 table.
    meta = set(range(hs)) | set(range(img.l1 // cs, img.l1 // cs + img.ts))
    for i in range(img.n):
        e1 = get(img.l1 + 8 * i)
        if e1 and table_ok(e1):
            meta |= set(range(e1 // cs, e1 // cs + img.ts))
    for i in range(img.n):
        e1 = get(img.l1 + 8 * i)
        first = i * img.n
        if e1 == 0:
            continue
        if not table_ok(e1):
            bad.append((img.l1 + 8 * i, 8))
            for g in range(first, min(first + img.n, nclusters)):
                reads[g] = 'E'
            continue
        mine = {c for c in range(e1 // cs, e1 // cs + img.ts) if c not in judged}
        judged |= mine
        for j in range(img.n):
            e2 = get(e1 + 8 * j)
            g = first + j
            if e2 == 0:
                continue
            if e2 == 1:
                if g < nclusters:
                    reads[g] = 'Z'
                continue
            if not cluster_ok(e2):
                if (e1 + 8 * j) // cs in mine:
                    bad.append((e1 + 8 * j, 8))
                if g < nclusters:
                    reads[g] = 'E'
            elif g < nclusters:
                reads[g] = ('A' if e2 // cs in meta else 'D', e2)
    return reads, bad


def spec(reads, cs):
    """Encode a reads map as A[-B]:K items, merging runs."""
    items = []
    run = None  # [first, last, kind, host_of_first]
    for g in sorted(reads):
        k = reads[g]
        kind = k if isinstance(k, str) else k[0]
        host = k[1] if kind in 'DA' else 0
        if run and g == run[1] + 1 and kind == run[2] and \
                (kind not in 'DA' or host == run[3] + (g - run[0]) * cs):
            run[1] = g
            continue
        if run:
            items.append(run)
        run = [g, g, kind, host]
    if run:
        items.append(run)
    out = []
    for a, b, kind, host in items:
        rng = '%d' % a if a == b else '%d-%d' % (a, b)
        out.append('%s:%s' % (rng, '%s%x' % (kind, host) if kind in 'DA' else kind))
    return ','.join(out)


# ---- the cases ----

CASES = []


def refuse(name, desc, msg, qemu='refuse'):
    def deco(fn):
        CASES.append(dict(name=name, desc=desc, expect='refuse', msg=msg, qemu=qemu, build=fn))
        return fn
    return deco


def serve(name, desc, eio=(), corrupt=0, remaining=0, qemu='open', qemu_corrupt=None,
          scratch=True, backing_eio=(), qemu_extra_leaks=0, qemu_left=0):
    """backing_eio: clusters whose reads fail in the backing image, which
    the model of this image cannot see and repair of this image cannot fix.
    qemu_left: invalid entries QEMU neither counts nor repairs (in a table it
    skips because it overlaps another)."""
    def deco(fn):
        CASES.append(dict(name=name, desc=desc, expect='serve', eio=list(eio), corrupt=corrupt,
                          remaining=remaining, qemu=qemu, qemu_corrupt=qemu_corrupt,
                          qemu_extra_leaks=qemu_extra_leaks, qemu_left=qemu_left,
                          scratch=scratch, backing_eio=list(backing_eio), build=fn))
        return fn
    return deco


def small(**kw):
    """A header cluster and an empty L1 table: the header rules fire first."""
    return Image(**kw)


# -- header rules --

@refuse('hdr-bad-magic', 'magic is "QEF\\0"', 'bad magic')
def _():
    i = small()
    i.magic = 0x00464551
    return i


@refuse('hdr-unknown-feature', 'unknown features bit 0x10', 'unknown feature bits 0x10')
def _():
    i = small()
    i.features = 0x10
    return i


@refuse('hdr-unknown-feature-high', 'unknown features bit 2^63', 'unknown feature bits 0x8000000000000000')
def _():
    i = small()
    i.features = 1 << 63
    return i


@refuse('hdr-cluster-not-pow2', 'cluster_size 12288 (3 x 4 KiB)', 'cluster size 12288 is not a power of two')
def _():
    i = small()
    i.cs = 12288
    i.l1 = 12288
    i.buf = bytearray(12288 * 3)
    return i


@refuse('hdr-cluster-too-small', 'cluster_size 2048', 'cluster size 2048 is not a power of two in')
def _():
    i = small()
    i.cs = 2048
    i.l1 = 2048
    i.buf = bytearray(2048 * 3)
    return i


@refuse('hdr-cluster-too-big', 'cluster_size 128 MiB', 'cluster size 134217728 is not a power of two in')
def _():
    i = small()
    i.cs = 128 * MIB
    return i


@refuse('hdr-cluster-zero', 'cluster_size 0', 'cluster size 0 is not a power of two')
def _():
    i = small()
    i.cs = 0
    return i


@refuse('hdr-table-size-0', 'table_size 0', 'table size 0 is not a power of two')
def _():
    i = small()
    i.ts = 0
    return i


@refuse('hdr-table-size-3', 'table_size 3', 'table size 3 is not a power of two')
def _():
    i = small()
    i.ts = 3
    i.grow(4 * CS)
    return i


@refuse('hdr-table-size-32', 'table_size 32', 'table size 32 is not a power of two')
def _():
    i = small()
    i.ts = 32
    i.grow(33 * CS)
    return i


@refuse('hdr-header-size-0', 'header_size 0', 'header size is 0', qemu='open')
def _():
    i = small()
    i.hs = 0
    return i


@refuse('hdr-header-size-overflow', 'header_size 2^20 clusters of 4 KiB = 2^32 bytes',
        'overflows 32 bits')
def _():
    i = small()
    i.hs = 1 << 20
    return i


@refuse('hdr-header-size-overflow-big', 'header_size 0xffffffff with 64 MiB clusters',
        'overflows 32 bits')
def _():
    i = small()
    i.cs = 64 * MIB
    i.hs = 0xFFFFFFFF
    return i


@refuse('hdr-size-not-512', 'image_size 1 MiB + 100', 'is not a multiple of 512')
def _():
    i = small()
    i.size = MIB + 100
    return i


@refuse('hdr-size-over-max', 'image_size one sector over N*N*cs (4 GiB for 4 KiB/2)',
        'exceeds the maximum 4294967296')
def _():
    i = small()
    i.size = 4 * 1024 * MIB + 512
    return i


@refuse('hdr-size-huge', 'image_size 2^64-512', 'exceeds the maximum')
def _():
    i = small()
    i.size = U64 - 511
    return i


@refuse('l1-unaligned', 'l1_table_offset 0x1200', 'not cluster-aligned')
def _():
    i = small()
    i.l1 = 0x1200
    i.grow(4 * CS)
    return i


@refuse('l1-inside-header', 'l1_table_offset 0 (the header)', 'lies inside the header')
def _():
    i = small()
    i.l1 = 0
    return i


@refuse('l1-inside-header-2', 'header_size 4, l1_table_offset 2 clusters', 'lies inside the header')
def _():
    i = small(hs=4)
    i.l1 = 2 * CS
    return i


@refuse('l1-past-eof', 'l1_table_offset one cluster past the end of the file', 'runs past the end of the file')
def _():
    i = small()
    i.l1 = len(i.buf) + CS
    return i


@refuse('l1-overflow', 'l1_table_offset 2^64 - 4096: offset + table size wraps', 'runs past the end of the file')
def _():
    i = small()
    i.l1 = (1 << 64) - CS
    return i


@refuse('l1-overflow-2', 'l1_table_offset 2^64 - 8192: the table ends exactly at 2^64', 'runs past the end of the file')
def _():
    i = small()
    i.l1 = (1 << 64) - 2 * CS
    return i


# -- backing file name --

@refuse('backing-past-header', 'backing name at 4000, 200 bytes: runs past the 4 KiB header',
        'runs past the header')
def _():
    i = small()
    i.set_backing('b' * 96, off=4000)
    i.bf_len = 200
    return i


@refuse('backing-offset-overflow', 'backing name offset 0xffffffff, size 2 (wraps in 32 bits)',
        'runs past the header')
def _():
    i = small()
    i.features |= F_BACKING
    i.bf_off, i.bf_len = 0xFFFFFFFF, 2
    return i


@refuse('backing-size-overflow', 'backing name offset 2, size 0xffffffff (wraps in 32 bits)',
        'runs past the header')
def _():
    i = small()
    i.features |= F_BACKING
    i.bf_off, i.bf_len = 2, 0xFFFFFFFF
    return i


@refuse('backing-name-path-max', 'backing name of PATH_MAX (4096) bytes inside a 2-cluster header',
        'at least PATH_MAX')
def _():
    i = small(hs=2)
    i.set_backing('d/' * (PATH_MAX // 2))
    return i


@refuse('backing-missing', 'BACKING_FILE set (raw, no probe), the backing file does not exist',
        'cannot open backing file')
def _():
    i = small()
    i.set_backing('missing-backing.raw')
    i.features |= F_NO_PROBE
    return i


@refuse('backing-missing-probe', 'BACKING_FILE set (format probed), the backing file does not exist',
        'No such file or directory')
def _():
    i = small()
    i.set_backing('missing-backing-probe.raw')
    return i


@refuse('backing-name-empty', 'BACKING_FILE set with an empty name', 'backing file name is empty',
        qemu='open')
def _():
    i = small()
    i.features |= F_BACKING
    i.bf_off, i.bf_len = 64, 0
    return i


@refuse('backing-name-nul', 'the backing file name contains a NUL byte', 'contains a NUL byte')
def _():
    i = small()
    i.set_backing('back\0ing.raw')
    i.features |= F_NO_PROBE
    return i


# A read-write open meets its own write lock first: either message will do.
# QEMU (qemu-io 7.2) does not finish opening these: nothing to compare.
@refuse('backing-self-loop', 'the backing file is the image itself (format probed: QED)',
        'backing chain deeper than|lock', qemu='skip')
def _():
    i = small()
    i.set_backing('backing-self-loop.qed')
    return i


@refuse('backing-loop-2', 'a.qed has backing b.qed, whose backing is a.qed',
        'backing chain deeper than|lock', qemu='skip')
def _():
    b = small()
    b.set_backing('backing-loop-2.qed')
    i = small()
    i.set_backing('backing-loop-2-b.qed')
    i.side_files['backing-loop-2-b.qed'] = b.content()
    return i


# -- truncated files --

@refuse('trunc-short-header', 'file of 40 bytes: shorter than the header', 'too small to hold a QED header')
def _():
    i = small()
    i.truncate = 40
    return i


@refuse('trunc-header-only', 'file of one cluster: the header and no L1 table', 'runs past the end of the file')
def _():
    i = small()
    i.truncate = CS
    return i


@refuse('trunc-l1-short', 'file ends one cluster into the 2-cluster L1 table', 'runs past the end of the file')
def _():
    i = small()
    i.truncate = 2 * CS
    return i


@refuse('trunc-l1-partial', 'file ends 100 bytes before the end of the L1 table',
        'runs past the end of the file', qemu='open')
def _():
    i = small()
    i.truncate = 3 * CS - 100
    return i


@serve('trunc-trailing-partial', 'a valid image with a 1000-byte partial cluster at the end')
def _():
    i = base()
    i.grow(len(i.buf) + 1000)
    i.buf[-1000:] = b'\xee' * 1000
    return i


@serve('trunc-data-in-partial', 'an L2 entry points at the trailing partial cluster (past the rounded-down end)',
       eio=[9], corrupt=1)
def _():
    i = base()
    end = len(i.buf)
    i.set_l2(9, end)
    i.grow(end + 2048)
    i.buf[end:end + 2048] = b'\xee' * 2048
    return i


@serve('trunc-l2-cut', 'the second L2 table loses its last cluster: the file ends inside it',
       eio=range(1024, 2048), corrupt=1)
def _():
    i = base()
    l2 = i.get64(i.l1_entry_off(1))
    # Drop everything from the second cluster of L2 #1 on, data included.
    i.buf = i.buf[:l2 + CS]
    return i


# -- L1 entries --

@serve('l1e-unaligned', 'L1[1] = L2 #1 + 0x200', eio=range(1024, 2048), corrupt=1)
def _():
    i = base()
    i.set_l1(1, i.get64(i.l1_entry_off(1)) + 0x200)
    return i


@serve('l1e-past-eof', 'L1[1] points one table past the end of the file', eio=range(1024, 2048), corrupt=1)
def _():
    i = base()
    i.set_l1(1, len(i.buf) + i.tb)
    return i


@serve('l1e-straddles-eof', 'L1[1] points at the last cluster: the table runs past the end',
       eio=range(1024, 2048), corrupt=1)
def _():
    i = base()
    i.set_l1(1, len(i.buf) - CS)
    return i


@serve('l1e-huge', 'L1[1] = 2^64 - 4096 (table end wraps around)', eio=range(1024, 2048), corrupt=1)
def _():
    i = base()
    i.set_l1(1, (1 << 64) - CS)
    return i


@serve('l1e-inside-header', '2-cluster header, L1[1] = 0x1000 (inside the header)',
       eio=range(1024, 2048), corrupt=1)
def _():
    i = base(hs=2)
    i.set_l1(1, CS)
    return i


@serve('l1e-duplicate', 'L1[0] and L1[1] both point at L2 #0', corrupt=1, remaining=1,
       qemu_corrupt=2)
def _():
    i = base()
    i.set_l1(1, i.get64(i.l1_entry_off(0)))
    return i


@serve('l1e-self', 'L1[1] points at the L1 table itself', corrupt=1, remaining=1, qemu_corrupt=2)
def _():
    i = base()
    i.set_l1(1, i.l1)
    return i


@serve('l1e-overlap-past-eof', 'L1[2] names a table that shares its first cluster with L2 #1 '
       'and whose own second cluster holds an entry past the end of the file',
       eio=[2560], corrupt=2, remaining=1, qemu_corrupt=1, qemu_left=1, scratch=False)
def _():
    # Not base(): L2 #1 must be followed by a cluster of zeros, not data.
    i = Image()
    i.new_l2(0)
    i.new_data(0)
    i.new_data(1)
    i.new_data(5)
    i.set_l2(7, 1)
    t = i.new_l2(1)
    i.alloc(1)
    i.set_l1(2, t + CS)
    i.set_l2(2 * i.n + i.n // 2, len(i.buf) + 3 * CS)
    return i


@serve('l1e-beyond-size', 'L1[5] (past the 12 MiB image size) is invalid: check repairs it, reads cannot reach it',
       corrupt=1)
def _():
    i = base()
    i.set_l1(5, 0x1234)
    return i


# -- L2 entries --

@serve('l2e-unaligned', 'L2 entry of g1 = data + 0x200', eio=[1], corrupt=1)
def _():
    i = base()
    i.set_l2(1, i.get64(i.l2_entry_off(1)) + 0x200)
    return i


@serve('l2e-past-eof', 'L2 entry of g1 points 3 clusters past the end of the file', eio=[1], corrupt=1)
def _():
    i = base()
    i.set_l2(1, len(i.buf) + 3 * CS)
    return i


@serve('l2e-at-eof', 'L2 entry of g1 points exactly at the end of the file', eio=[1], corrupt=1)
def _():
    i = base()
    i.set_l2(1, len(i.buf))
    return i


@serve('l2e-huge', 'L2 entry of g1 = 2^64 - 4096', eio=[1], corrupt=1)
def _():
    i = base()
    i.set_l2(1, (1 << 64) - CS)
    return i


@serve('l2e-inside-header', '2-cluster header, L2 entry of g1 = 0x1000 (inside the header)',
       eio=[1], corrupt=1)
def _():
    i = base(hs=2)
    i.set_l2(1, CS)
    return i


@serve('l2e-value-2', 'L2 entry of g2 = 2 (neither 0, 1 nor aligned)', eio=[2], corrupt=1)
def _():
    i = base()
    i.set_l2(2, 2)
    return i


@serve('l2e-into-l1', 'L2 entry of g2 points into the L1 table (its 2nd cluster)', corrupt=1, remaining=1)
def _():
    i = base()
    i.set_l2(2, i.l1 + CS)
    return i


@serve('l2e-into-l2', 'L2 entry of g2 points at L2 #1', corrupt=1, remaining=1,
       qemu_extra_leaks=1)
def _():
    i = base()
    i.set_l2(2, i.get64(i.l1_entry_off(1)))
    return i


@serve('l2e-duplicate', 'L2 entries of g1 and g3 point at the same data cluster', corrupt=1, remaining=1)
def _():
    i = base()
    i.set_l2(3, i.get64(i.l2_entry_off(1)))
    return i


@serve('l2e-duplicate-across-tables', 'g5 and g1024 (in the other L2 table) share a data cluster',
       corrupt=1, remaining=1)
def _():
    i = base()
    i.set_l2(i.n, i.get64(i.l2_entry_off(5)))
    return i


@serve('l2e-many-bad', 'every kind of bad L2 entry in one table, plus a bad L1 entry',
       eio=[2, 3, 4, 6] + list(range(1024, 2048)), corrupt=5)
def _():
    i = base()
    end = len(i.buf)
    i.set_l2(2, 0x1001)
    i.set_l2(3, end)
    i.set_l2(4, 0x100)
    i.set_l2(6, U64 & ~(CS - 1))
    i.set_l1(1, end + CS)
    return i


# -- NEED_CHECK, autoclear, compat --

@serve('needcheck-bad-l2', 'NEED_CHECK set, L2 entry of g1 past the end: a read-write open repairs it',
       eio=[1], corrupt=1)
def _():
    i = base(features=F_NEED_CHECK)
    i.set_l2(1, len(i.buf) + CS)
    return i


@serve('needcheck-bad-l1', 'NEED_CHECK set, L1[1] unaligned: a read-write open repairs it',
       eio=range(1024, 2048), corrupt=1)
def _():
    i = base(features=F_NEED_CHECK)
    i.set_l1(1, i.get64(i.l1_entry_off(1)) + 8)
    return i


@serve('needcheck-duplicate', 'NEED_CHECK set, two L2 entries share a cluster: repair cannot fix it',
       corrupt=1, remaining=1)
def _():
    i = base(features=F_NEED_CHECK)
    i.set_l2(3, i.get64(i.l2_entry_off(1)))
    return i


@serve('needcheck-clean', 'NEED_CHECK set on a consistent image')
def _():
    return base(features=F_NEED_CHECK)


@serve('autoclear-bits', 'autoclear_features = 0xff00: cleared by a read-write open')
def _():
    i = base()
    i.autoclear = 0xFF00
    return i


@serve('compat-unknown', 'compat_features = 0x8000000000000001: ignored')
def _():
    i = base()
    i.compat = 0x8000000000000001
    return i


@serve('backing-raw-bad-l2', 'raw backing file; L2 entry of g1 past the end, L1[1] unaligned: '
       'their reads fail, they never fall through to the backing file',
       eio=[1] + list(range(1024, 2048)), corrupt=2)
def _():
    i = base(features=F_NO_PROBE)
    i.set_backing('bad-l2-backing.raw')
    i.backing = 'bad-l2-backing.raw'
    size = 6 * MIB
    i.side_files[i.backing] = b''.join(
        struct.pack('<Q', 0xBAC4000000000000 | o) for o in range(0, size, 8))
    i.set_l2(1, len(i.buf) + CS)
    i.set_l1(1, i.get64(i.l1_entry_off(1)) + CS // 2)
    return i


@serve('backing-qed-corrupt', 'a clean image over a QED backing image whose L2 entry of g2 is '
       'unaligned: reads of g2 fail (through the backing), nothing else does',
       backing_eio=[2], scratch=False)
def _():
    b = Image()
    b.new_l2(0)
    b.set_l2(2, 0x1008)
    i = base()
    i.set_backing('backing-qed-corrupt-b.qed')
    i.side_files['backing-qed-corrupt-b.qed'] = b.content()
    return i


@serve('table-size-1', 'table_size 1 (valid by the spec; QEMU refuses it), L2 entry of g3 unaligned',
       eio=[3], corrupt=1, qemu='refuse', scratch=False)
def _():
    i = Image(ts=1, size=2 * MIB)
    i.new_l2(0)
    i.new_data(0)
    i.new_data(1)
    i.new_data(2)
    i.set_l2(3, i.get64(i.l2_entry_off(2)) + 16)
    return i


def write_corpus(outdir):
    os.makedirs(outdir, exist_ok=True)
    lines = []
    names = set()
    for c in CASES:
        name = c['name']
        assert name not in names, 'duplicate case ' + name
        names.add(name)
        img = c['build']()
        content = img.content()
        if hasattr(img, 'truncate'):
            content = content[:img.truncate]
        path = os.path.join(outdir, name + '.qed')
        with open(path, 'wb') as f:
            f.write(content)
        for side, data in img.side_files.items():
            with open(os.path.join(outdir, side), 'wb') as f:
                f.write(data)
        fields = [('name', name), ('desc', c['desc']), ('expect', c['expect']), ('qemu', c['qemu']),
                  ('files', ','.join(sorted(img.side_files)))]
        if c['expect'] == 'refuse':
            fields.append(('msg', c['msg']))
        else:
            reads, bad = model(img, content)
            # After repair an invalid entry is zeroed: the cluster reads as
            # unallocated.
            got_eio = sorted(g for g, k in reads.items() if k == 'E')
            if got_eio != sorted(c['eio']):
                sys.exit('%s: the hand-written EIO list %s disagrees with the model %s'
                         % (name, c['eio'][:8], got_eio[:8]))
            # Invalid entries are what repair zeroes; remaining corruption is
            # only double references, which it leaves alone.
            if len(bad) != c['corrupt'] - c['remaining']:
                sys.exit('%s: %d invalid entries by the model, the case says %d corruptions '
                         'of which %d remain' % (name, len(bad), c['corrupt'], c['remaining']))
            nclusters = (img.size + img.cs - 1) // img.cs
            scratch = scratch_l1 = ''
            if c['scratch']:
                # The scratch range: an empty L1 entry inside the image size.
                s = 2 * img.n
                assert s + img.n <= nclusters and img.get64(img.l1_entry_off(2)) == 0, name
                scratch = str(s)
                scratch_l1 = '%x' % img.l1_entry_off(2)
            repaired = {g: k for g, k in reads.items() if k != 'E'}
            for g in c['backing_eio']:
                assert g not in reads, (name, g)
                reads[g] = repaired[g] = 'E'
            # An L1 entry that points at the L1 table makes L1 read as an L2
            # table: once the scratch writes fill L1[2] with a new table, guest
            # cluster i*n+2 maps to that table, i.e. to metadata, at the next
            # open (the reopen after the writes).
            reopen = []
            if scratch:
                for li in range(img.n):
                    if img.get64(img.l1_entry_off(li)) == img.l1:
                        reopen.append('%d:A%x' % (li * img.n + 2, len(content) // img.cs * img.cs))
            fields += [('cs', img.cs), ('clusters', nclusters),
                       ('reads', spec(reads, img.cs)), ('repaired', spec(repaired, img.cs)),
                       ('need_check', int(bool(img.features & F_NEED_CHECK))),
                       ('rw_open', 'refuse' if bad and not img.features & F_NEED_CHECK
                        else 'open'),
                       ('corrupt', c['corrupt']), ('remaining', c['remaining']),
                       ('qemu_corrupt', c['qemu_corrupt'] if c['qemu_corrupt'] is not None
                        else c['corrupt']),
                       ('qemu_extra_leaks', c['qemu_extra_leaks']),
                       ('qemu_left', c['qemu_left']),
                       ('repair_may_change', ','.join('%x+%x' % r for r in bad)),
                       ('scratch', scratch), ('scratch_l1', scratch_l1),
                       ('reopen', ','.join(reopen)),
                       ('backing', img.backing),
                       ('file_end', '%x' % (len(content) // img.cs * img.cs))]
        for k, v in fields:
            assert '\t' not in str(v) and '\n' not in str(v), (name, k)
        lines.append('\t'.join('%s=%s' % (k, v) for k, v in fields))
    with open(os.path.join(outdir, 'manifest'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return len(lines)


def main():
    if len(sys.argv) != 2:
        sys.exit('usage: make-corpus.py OUTDIR')
    n = write_corpus(sys.argv[1])
    print('%d images written to %s' % (n, sys.argv[1]))


if __name__ == '__main__':
    main()
