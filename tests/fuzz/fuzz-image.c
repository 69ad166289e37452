/*
 * fuzz-image.c - libFuzzer target that opens, reads, writes, checks and
 * repairs mutated QED images (issue 11).
 *
 * Templates: at start-up the target builds a few valid images with the
 * library itself (4 KiB clusters and table size 1 or 2, 64 KiB clusters;
 * no backing file, a raw one, a QED one; data, zero and trimmed clusters,
 * several L2 tables, one at the end of a maximum-size image; one with dirty
 * bitmaps, whose header area grew over its first tables) and keeps their
 * bytes.  An input picks a template, then lists mutations: a header field,
 * an L1 or L2 entry set to an interesting value (0, 1, misaligned, the
 * header, the L1 table, another table or data cluster, the end of the file
 * and past it, 2^63, 2^64 - 1 ...), the backing file name, feature bits, a
 * raw byte, a truncation.  Then the mutated image is written to the private
 * directory and opened read-write or read-only; a sequence of reads, writes,
 * write-zeroes, trims, block status, flushes, resizes, checks (with and
 * without repair) and reopens runs on it.  Errors are expected; crashes,
 * sanitizer reports, leaks and hangs (libFuzzer's -timeout) are not.
 *
 * Confinement of the backing file: the backing name is fuzzed, and the
 * library resolves it relative to the image's directory.  Before the image
 * is written, the target looks at the bytes the header designates as the
 * name (clipped to the file) and replaces a name that holds a '/' or starts
 * with ".." by a harmless one, so the library can only ever open files of
 * the private directory (the image itself, the two backing templates, or
 * nothing).  No symlink is ever made there.
 *
 * Write confinement, checked after every input.  The image's bytes before
 * the open (B0) are compared with its bytes after the final close (B1).
 * From B0 the target computes, with its own parser, where the library may
 * write: the 64-byte header; the L1 table (when the header's geometry and
 * L1 offset are sane); each L2 table an L1 entry points to that is aligned,
 * past the header and inside the file (also one that overlaps the L1
 * table or another table: a repair zeroes the invalid entries of its own
 * clusters); each data cluster the entries of a table that overlaps
 * neither point to, under the same conditions; anything at or past the
 * start of B0's last, partial cluster (new allocations extend the file
 * from there); and, when
 * B0 holds a dirty-bitmap directory, the bitmap area of its header
 * (doc/qed-bitmaps.md; up to B1's header end when a store grew it).  Every
 * byte of [0, len(B0)) outside those regions must be the same in B1, and
 * B1 may grow past B0 by at most what the input's operations could
 * allocate.  The backing templates must be unchanged.  This catches a
 * write through a corrupt entry that points at metadata or at a cluster
 * nothing owns, whichever code path wrote it (requests, repair, header
 * updates), because it compares file contents, not I/O calls.  And B1 may
 * not have more aliases (a table or data cluster that another table or
 * cluster overlaps) than B0: no allocation may land on a cluster an entry
 * already named, even one past the old end.
 */
#include "config.h"

#include <fcntl.h>
#include <inttypes.h>
#include <sys/stat.h>

#include <ev.h>

#include "fuzz-util.h"
#include "qed-format.h"
#include "qed-io-test.h"
#include "qed.h"
#include "qed-format.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define KiB UINT64_C(1024)
#define MiB (KiB * 1024)
#define IMG "t.qed"
#define MAX_OPS 24
#define MAX_MUT 32
#define OP_DATA (64 * KiB)     /* data bytes of one read or write, at most */

#define TRACE(...) do { if (fz_verbose) fprintf(stderr, __VA_ARGS__); } while (0)

/* Counters (QEDNBD_FUZZ_STATS) */
enum { ST_INPUTS, ST_OPENS, ST_OPS_OK, ST_CORRUPT, ST_CHANGED };

struct blob {
    uint8_t *p;
    size_t n;
};

struct tmpl {
    struct blob b;
    uint32_t cs;
    uint64_t tbytes;      /* table bytes */
    uint64_t l1;
    uint64_t tables[8];   /* L2 table offsets */
    unsigned ntables;
    uint64_t data[16];    /* data cluster offsets */
    unsigned ndata;
};

static struct ev_loop *loop;
static qed_aio *aio;
static struct tmpl T[5];
static unsigned ntmpl;
static struct blob bk_raw, bk_qed;    /* the backing templates, to check they never change */

/* ---- Little helpers ------------------------------------------------------- */

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

static struct blob slurp(const char *name)
{
    struct blob b = {0};
    int fd = open(fz_path(name), O_RDONLY | O_CLOEXEC);
    struct stat st;

    if (fd < 0 || fstat(fd, &st) < 0)
        fz_fail("%s: %s", name, strerror(errno));
    b.n = (size_t)st.st_size;
    b.p = malloc(b.n ? b.n : 1);
    if (!b.p || (b.n && pread(fd, b.p, b.n, 0) != (ssize_t)b.n))
        fz_fail("reading %s failed", name);
    close(fd);
    return b;
}

static void spill(const char *name, const uint8_t *p, size_t n)
{
    int fd = open(fz_path(name), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

    if (fd < 0 || (n && pwrite(fd, p, n, 0) != (ssize_t)n) || close(fd) < 0)
        fz_fail("writing %s failed: %s", name, strerror(errno));
}

/* ---- Templates ------------------------------------------------------------- */

static void must(int r, const char *what)
{
    if (r < 0)
        fz_fail("building the templates: %s: %s", what, strerror(-r));
}

/* Write @len bytes of a nonzero pattern at @off. */
static void t_write(qed_image *img, uint64_t off, size_t len)
{
    uint8_t *buf = malloc(len);

    if (!buf)
        fz_fail("out of memory");
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)((off + i) * 7 + 1) | 1;
    must(qed_sync_write(img, off, buf, len, 0), "write");
    free(buf);
}

/* Record the template's tables and data clusters from its bytes. */
static void t_scan(struct tmpl *t)
{
    const uint8_t *p = t->b.p;
    uint32_t ts = get32(p + 8);

    t->cs = get32(p + 4);
    t->tbytes = (uint64_t)t->cs * ts;
    t->l1 = get64(p + 40);
    for (uint64_t i = 0; i < t->tbytes / 8; i++) {
        uint64_t e = get64(p + t->l1 + 8 * i);
        if (!e || t->ntables == 8)
            continue;
        t->tables[t->ntables++] = e;
        for (uint64_t j = 0; j < t->tbytes / 8 && e + 8 * j + 8 <= t->b.n; j++) {
            uint64_t d = get64(p + e + 8 * j);
            if (d > 1 && t->ndata < 16)
                t->data[t->ndata++] = d;
        }
    }
}

static void make_template(uint32_t cs, uint32_t ts, uint64_t size, const char *backing,
                          enum qed_backing_fmt fmt, int layout)
{
    struct qed_create_opts co = {.size = size, .cluster_size = cs, .table_size = ts,
                                 .backing_file = backing, .backing_fmt = fmt};
    struct qed_open_opts oo = {0};
    char err[512];
    qed_image *img;
    struct tmpl *t = &T[ntmpl++];
    uint64_t cover = (uint64_t)cs * ts / 8 * cs;

    unlink(fz_path("tmpl.qed"));
    if (qed_create(fz_path("tmpl.qed"), &co, err, sizeof(err)) < 0 ||
        qed_open(aio, fz_path("tmpl.qed"), &oo, &img, err, sizeof(err)) < 0)
        fz_fail("building the templates: %s", err);
    t_write(img, 0, 4096);
    t_write(img, cs + 512, cs);                       /* two clusters, partially */
    t_write(img, cover < size / 2 ? cover + 3 * (uint64_t)cs : size / 2, 1024); /* a second table */
    must(qed_sync_write_zeroes(img, 4 * (uint64_t)cs, 2 * (uint64_t)cs, 0), "zero");
    t_write(img, 6 * (uint64_t)cs, cs);
    must(qed_sync_discard(img, 6 * (uint64_t)cs, cs), "discard");
    if (layout == 1)
        t_write(img, size - 4096, 4096);              /* the end of the image */
    if (layout == 2)
        must(qed_sync_write_zeroes(img, 8 * (uint64_t)cs, cs, QED_REQ_NO_HOLE), "zero");
    if (layout == 3) {
        /* Dirty bitmaps: the close grows the header area over the L1
         * table, the tables and the data, and stores a directory there. */
        must(qed_bitmap_add(img, "fz", 64 * 1024, false), "bitmap");
        must(qed_bitmap_add(img, "fz2", 4096, true), "bitmap");
        t_write(img, 9 * (uint64_t)cs, 512);
    }
    must(qed_close(img), "close");
    t->b = slurp("tmpl.qed");
    unlink(fz_path("tmpl.qed"));
    t_scan(t);
}

static void make_templates(void)
{
    uint8_t raw[300 * 1024];
    struct qed_create_opts co = {.size = 256 * KiB, .cluster_size = 4096, .table_size = 1};
    struct qed_open_opts oo = {0};
    char err[512];
    qed_image *b;

    for (size_t i = 0; i < sizeof(raw); i++)
        raw[i] = (uint8_t)(i * 13 + 5) | 0x80;
    spill("b.raw", raw, sizeof(raw));
    if (qed_create(fz_path("b.qed"), &co, err, sizeof(err)) < 0 ||
        qed_open(aio, fz_path("b.qed"), &oo, &b, err, sizeof(err)) < 0)
        fz_fail("building the templates: %s", err);
    t_write(b, 8192, 8192);
    must(qed_close(b), "close");
    bk_raw = slurp("b.raw");
    bk_qed = slurp("b.qed");

    make_template(4096, 1, 8 * MiB, NULL, QED_BACKING_PROBE, 0);
    make_template(4096, 2, 1024 * MiB * 4, "b.raw", QED_BACKING_RAW, 1);
    make_template(64 * 1024, 1, 1024 * MiB, "b.qed", QED_BACKING_QED, 2);
    make_template(4096, 1, 1024 * MiB, "b.raw", QED_BACKING_PROBE, 1);
    make_template(4096, 2, 64 * MiB, NULL, QED_BACKING_PROBE, 3);
}

/* ---- Mutations ------------------------------------------------------------- */

/* An interesting value for an offset or size field of @t (file length @n). */
static uint64_t pick_value(struct fz_in *in, const struct tmpl *t, uint64_t n)
{
    uint8_t s = fz_u8(in);
    uint64_t cs = t->cs, up = (n + cs - 1) / cs * cs;

    switch (s % 24) {
    case 0: return 0;
    case 1: return 1;
    case 2: return cs;
    case 3: return cs - 1;
    case 4: return cs + 512;
    case 5: return t->l1;
    case 6: return t->ntables ? t->tables[fz_u8(in) % t->ntables] : 0;
    case 7: return t->ndata ? t->data[fz_u8(in) % t->ndata] : 0;
    case 8: return n;
    case 9: return up;
    case 10: return up - cs;
    case 11: return up + cs;
    case 12: return up + 64 * cs;
    case 13: return UINT64_C(1) << 63;
    case 14: return (UINT64_C(1) << 63) - cs;
    case 15: return UINT64_MAX;
    case 16: return UINT64_MAX - cs + 1;
    case 17: return UINT64_C(1) << 32;
    case 18: return (UINT64_C(1) << 63) - 512;
    case 19: return UINT64_MAX & ~(uint64_t)511;
    case 20: return t->data[0] + t->tbytes;
    default: return fz_u64(in);
    }
}

static const unsigned hdr_field_off[] = {0, 4, 8, 12, 16, 24, 32, 40, 48, 56, 60};
static const unsigned hdr_field_len[] = {4, 4, 4, 4, 8, 8, 8, 8, 8, 4, 4};

static const char *const names[] = {
    "b.raw", "b.qed", IMG, "", "nonexistent", "..", ".", "../b.raw", "/etc/hostname",
    "b.raw\0/etc/passwd", "./b.qed", "b.qedx",
};

/* Apply one mutation; false at the end of the list. */
static bool mutate(struct fz_in *in, const struct tmpl *t, struct blob *b)
{
    uint8_t k = fz_u8(in);
    uint64_t v;

    if (!in->n)
        return false;
    switch (k % 9) {
    case 0: {     /* a header field */
        unsigned f = fz_u8(in) % 11;
        v = pick_value(in, t, b->n);
        if (f == 1 || f == 2 || f == 3)   /* cluster, table, header size: small powers of two too */
            v = (k & 0x80) ? v : (UINT64_C(1) << (fz_u8(in) % 32)) + (k & 0x40 ? 1 : 0);
        if (hdr_field_len[f] == 4)
            put32(b->p + hdr_field_off[f], (uint32_t)v);
        else
            put64(b->p + hdr_field_off[f], v);
        return true;
    }
    case 1: {     /* an L1 entry */
        uint64_t i = (k & 0x80 ? fz_u16(in) : fz_u8(in) % 8) % (t->tbytes / 8);
        v = pick_value(in, t, b->n);
        if (t->l1 + 8 * i + 8 <= b->n)
            put64(b->p + t->l1 + 8 * i, v);
        return true;
    }
    case 2: case 3: {   /* an L2 entry */
        uint64_t tab = t->ntables ? t->tables[fz_u8(in) % t->ntables] : t->l1;
        uint64_t i = (k & 0x80 ? fz_u16(in) : fz_u8(in) % 16) % (t->tbytes / 8);
        v = pick_value(in, t, b->n);
        if (tab + 8 * i + 8 <= b->n)
            put64(b->p + tab + 8 * i, v);
        return true;
    }
    case 4: {     /* the backing file name (and the feature) */
        unsigned c = fz_u8(in);
        const char *nm = names[c % (sizeof(names) / sizeof(names[0]))];
        size_t len = strlen(nm) + (c % 12 == 9 ? 12 : 0);   /* with the hidden tail */
        uint32_t off = get32(b->p + 56);
        if (!off || (uint64_t)off + len > b->n)
            off = 64;
        if ((uint64_t)off + len <= b->n) {
            memcpy(b->p + off, nm, len);
            put32(b->p + 56, off);
            put32(b->p + 60, (uint32_t)len + (k & 0x80 ? (uint32_t)fz_u8(in) : 0));
            put64(b->p + 16, get64(b->p + 16) | QED_F_BACKING_FILE);
        }
        return true;
    }
    case 5: {     /* feature bits */
        unsigned f = fz_u8(in) % 3;
        put64(b->p + 16 + 8 * f, get64(b->p + 16 + 8 * f) ^ (UINT64_C(1) << (fz_u8(in) % 64)));
        return true;
    }
    case 6: {     /* a raw byte */
        uint32_t off = fz_u32(in);
        if (b->n)
            b->p[off % b->n] = fz_u8(in);
        return true;
    }
    case 7: {     /* truncate */
        uint64_t cs = t->cs;
        uint8_t s = fz_u8(in);
        uint64_t n = s % 4 == 0 ? b->n - 1 : s % 4 == 1 ? b->n - cs : s % 4 == 2 ? cs : 64;
        if (n < b->n)
            b->n = (size_t)n;
        return true;
    }
    default:
        return false;
    }
}

/*
 * Keep the backing file inside the private directory: if the bytes the
 * header designates as the name (clipped to the file) hold a '/' or start
 * with "..", overwrite them.  The library resolves a name without '/'
 * relative to the image's directory.
 */
static void confine_backing_name(struct blob *b)
{
    uint64_t off, len;

    if (b->n < 64)
        return;
    off = get32(b->p + 56);
    len = get32(b->p + 60);
    if (off >= b->n)
        return;
    if (len > b->n - off)
        len = b->n - off;
    for (uint64_t i = 0; i < len; i++) {
        bool dotdot = i == 0 && len >= 2 && b->p[off] == '.' && b->p[off + 1] == '.';
        if (b->p[off + i] == '/' || dotdot) {
            memset(b->p + off, 'x', len);
            return;
        }
    }
}

/* ---- Where the library may write ---------------------------------------------- */

struct region {
    uint64_t s, e;
};

static struct {
    struct region *v;
    size_t n, cap;
} R;

static void r_add(uint64_t s, uint64_t e)
{
    if (R.n == R.cap) {
        R.cap = R.cap ? 2 * R.cap : 256;
        R.v = realloc(R.v, R.cap * sizeof(*R.v));
        if (!R.v)
            fz_fail("out of memory");
    }
    R.v[R.n++] = (struct region){s, e};
}

static bool r_overlaps(uint64_t s, uint64_t e, size_t upto)
{
    for (size_t i = 0; i < upto; i++)
        if (s < R.v[i].e && R.v[i].s < e)
            return true;
    return false;
}

/* True when a region of R starts at @at (a table already listed). */
static bool r_is_table(uint64_t at)
{
    for (size_t i = 2; i < R.n; i++)
        if (R.v[i].s == at)
            return true;
    return false;
}

static bool pow2(uint64_t x)
{
    return x && !(x & (x - 1));
}

/* A table or cluster at @off of @len bytes that the library may own. */
static bool sane_cluster(uint64_t off, uint64_t len, uint64_t cs, uint64_t hdr, uint64_t n)
{
    return off > 1 && !(off & (cs - 1)) && off >= hdr && off <= n && len <= n - off;
}

/*
 * Fill R with the regions of @b (the image before the open) the library may
 * write.  Returns the number of aliases: tables and data clusters (aligned,
 * past the header, inside the file) that another table or cluster of the
 * image overlaps.
 */
static uint64_t allowed_regions(const struct blob *b)
{
    uint64_t cs, ts, hs, tb, l1, hdr, n = b->n, aliases = 0;
    size_t meta;

    R.n = 0;
    r_add(0, 64);
    if (n < 64)
        return 0;
    cs = get32(b->p + 4);
    ts = get32(b->p + 8);
    hs = get32(b->p + 12);
    l1 = get64(b->p + 40);
    if (!pow2(cs) || cs < 4096 || cs > 64 * MiB || !pow2(ts) || ts > 16 || !hs || hs > 65536)
        return 0;
    tb = cs * ts;
    hdr = hs * cs;
    if (!sane_cluster(l1, tb, cs, hdr, n))
        return 0;
    r_add(l1, l1 + tb);
    /* L2 tables first (each must not overlap the header, L1 or another) ... */
    for (uint64_t i = 0; i < tb / 8; i++) {
        uint64_t e = get64(b->p + l1 + 8 * i);
        if (!sane_cluster(e, tb, cs, hdr, n))
            continue;
        if (!r_overlaps(e, e + tb, R.n))
            r_add(e, e + tb);
        else if (!r_is_table(e))
            aliases++;   /* (two L1 entries naming one table are no alias) */
    }
    meta = R.n;
    /* ... then the data clusters their entries point to. */
    for (size_t t = 2; t < meta; t++) {
        for (uint64_t j = 0; j < tb / 8; j++) {
            uint64_t d = get64(b->p + R.v[t].s + 8 * j);
            if (!sane_cluster(d, cs, cs, hdr, n))
                continue;
            if (r_overlaps(d, d + cs, R.n))
                aliases++;
            else
                r_add(d, d + cs);
        }
    }
    /* A table that overlaps the L1 table or another table is an alias, but
     * the library reads its entries like any table's, and a repair zeroes
     * the invalid ones in its clusters that no table before it holds: its
     * bytes are the library's to write too (added after the counting). */
    for (uint64_t i = 0; i < tb / 8; i++) {
        uint64_t e = get64(b->p + l1 + 8 * i);
        if (sane_cluster(e, tb, cs, hdr, n) && r_overlaps(e, e + tb, meta))
            r_add(e, e + tb);
    }
    /* The partial cluster at the end of the file is nobody's (a valid table
     * or cluster lies wholly inside the file): allocation may start there. */
    if (n % cs)
        r_add(n / cs * cs, n);
    return aliases;
}

/* The header area end of image bytes @b (0 when its geometry is not sane). */
static uint64_t header_end(const struct blob *b)
{
    uint64_t cs, hs;

    if (b->n < 64)
        return 0;
    cs = get32(b->p + 4);
    hs = get32(b->p + 12);
    return pow2(cs) && cs >= 4096 && cs <= 64 * MiB && hs && hs <= 65536 ? cs * hs : 0;
}

/*
 * The dirty-bitmap area (doc/qed-bitmaps.md) of @b0, which the library
 * writes (in-use marking at open, store at close) when @b0 holds a bitmap
 * directory, up to the header end of @b0 or of @b1 when a store grew it;
 * [0, 0) otherwise.  Its start: the first cluster after the header and the
 * backing file name.
 */
static void bitmap_area(const struct blob *b0, const struct blob *b1, uint64_t *s, uint64_t *e)
{
    uint64_t h0 = header_end(b0), h1 = header_end(b1), cs, a;

    *s = *e = 0;
    if (!h0)
        return;
    cs = get32(b0->p + 4);
    a = 64;
    if (get64(b0->p + 16) & 1)
        a = (uint64_t)get32(b0->p + 56) + get32(b0->p + 60);
    a = (a < 64 ? 64 : a + cs - 1) / cs * cs;
    a = a < cs ? cs : a;
    for (uint64_t slot = a; slot <= a + 32 * KiB; slot += 32 * KiB)
        if (slot + 8 <= b0->n && memcmp(b0->p + slot, "QEDBITMP", 8) == 0) {
            *s = a;
            *e = h1 > h0 ? h1 : h0;
        }
}

static bool r_contains(uint64_t at)
{
    for (size_t i = 0; i < R.n; i++)
        if (R.v[i].s <= at && at < R.v[i].e)
            return true;
    return false;
}

static void check_confined(const struct blob *b0, uint64_t grow_bound)
{
    struct blob b1 = slurp(IMG);
    struct blob r = slurp("b.raw"), q = slurp("b.qed");
    uint64_t a0, a1, bm_s, bm_e;

    if (r.n != bk_raw.n || memcmp(r.p, bk_raw.p, r.n) || q.n != bk_qed.n ||
        memcmp(q.p, bk_qed.p, q.n))
        fz_fail("a backing template file was changed");
    bitmap_area(b0, &b1, &bm_s, &bm_e);
    /* A store that grew the header area relocated what lay in the way. */
    if (bm_e > header_end(b0))
        grow_bound += 2 * (bm_e - header_end(b0));
    if (b1.n > b0->n + grow_bound)
        fz_fail("the image grew from %zu to %zu bytes, more than the operations could "
                "allocate (%" PRIu64 ")", b0->n, b1.n, grow_bound);
    /* No allocation may alias a table or cluster the image already had
     * (an entry that pointed past the end of the file, say): the closed
     * image has no more aliases than the one opened. */
    a1 = allowed_regions(&b1);
    a0 = allowed_regions(b0);
    if (a1 > a0)
        fz_fail("the image had %" PRIu64 " aliased tables or clusters before and %" PRIu64
                " after", a0, a1);
    if (bm_e)
        r_add(bm_s, bm_e);
    if (b1.n != b0->n || memcmp(b1.p, b0->p, b0->n))
        fz_stats[ST_CHANGED]++;
    for (size_t i = 0; i < b0->n; i++) {
        uint8_t now = i < b1.n ? b1.p[i] : 0;
        if (now != b0->p[i] && !r_contains(i))
            fz_fail("byte %zu of the image changed from 0x%02x to 0x%02x, outside the "
                    "header, the tables and the data clusters of valid entries",
                    i, b0->p[i], now);
    }
    free(b1.p);
    free(r.p);
    free(q.p);
}

/* ---- Operations -------------------------------------------------------------- */

static uint64_t pick_off(struct fz_in *in, qed_image *img, const struct tmpl *t)
{
    uint8_t b = fz_u8(in);
    uint64_t size = qed_size(img), cs = t->cs, v = fz_u16(in);

    switch (b % 6) {
    case 0: return v * 512 % (size + 1);
    case 1: return (v % 16) * cs + (b & 0x80 ? 512 : 0);
    case 2: return size - (v % 4) * cs - (b & 0x80 ? 512 : 0);
    case 3: return (uint64_t)cs * cs / 8 * (v % 4);   /* table boundaries */
    case 4: return fz_u64(in);
    default: return (v % 16) * cs + cs - 512;
    }
}

struct run {
    qed_image *img;
    struct qed_open_opts oo;
    uint64_t grow;        /* how much the operations could make the file grow */
};

/* Open read-only or read-write; @repair: read-write, zero the invalid
 * entries of an image marked clean (what `qed-img check -r` asks), which a
 * plain read-write open refuses with -EUCLEAN (issue 11, item 7). */
static void op_open(struct run *u, bool ro, bool repair)
{
    char err[512];
    int r;

    u->oo.read_only = ro;
    u->oo.repair_corrupt = !ro && repair;
    r = qed_open(aio, fz_path(IMG), &u->oo, &u->img, err, sizeof(err));
    TRACE("open %s = %d %s\n", ro ? "ro" : repair ? "rw repair" : "rw", r, r < 0 ? err : "");
    if (r == -EUCLEAN && (ro || repair))
        fz_fail("open %s refused the image as corrupt: %s", ro ? "read-only" : "with repair", err);
    if (r < 0)
        u->img = NULL;
    else
        fz_stats[ST_OPENS]++;
}

static void op_check(struct run *u, bool repair)
{
    struct qed_check_result res;
    int r;

    memset(&res, 0, sizeof(res));
    r = qed_check(u->img, repair, &res);
    TRACE("check%s = %d: %" PRIu64 " corruptions, %" PRIu64 " fixed, %" PRIu64 " leaks\n",
          repair ? " -r" : "", r, res.corruptions, res.corruptions_fixed, res.leaks);
    if (res.corruptions)
        fz_stats[ST_CORRUPT]++;
    if (repair && r == 0 && !qed_is_read_only(u->img)) {
        /* After a repair, a second check must find nothing left to repair. */
        struct qed_check_result again;
        memset(&again, 0, sizeof(again));
        r = qed_check(u->img, false, &again);
        if (r == 0 && again.repairable && !again.check_errors)
            fz_fail("qed_check found %" PRIu64 " repairable corruptions right after a repair "
                    "that fixed %" PRIu64, again.repairable, res.corruptions_fixed);
    }
}

static void one_op(struct fz_in *in, struct run *u, const struct tmpl *t)
{
    uint8_t op = fz_u8(in);
    uint64_t off, len;
    uint8_t *buf;
    int r = 0;

    if (!u->img) {
        op_open(u, op & 1, op & 2);
        return;
    }
    off = pick_off(in, u->img, t);
    len = fz_u16(in) % OP_DATA + 1;
    switch (op % 10) {
    case 0: case 1:
        buf = malloc(len);
        if (!buf)
            fz_fail("out of memory");
        r = qed_sync_read(u->img, off, buf, len);
        free(buf);
        break;
    case 2: case 3:
        buf = malloc(len);
        if (!buf)
            fz_fail("out of memory");
        memset(buf, 0x5a, len);
        r = qed_sync_write(u->img, off, buf, len, op & 0x10 ? QED_REQ_FUA : 0);
        free(buf);
        break;
    case 4:
        if (op & 0x20)
            len = (uint64_t)t->cs * (fz_u8(in) % 32 + 1);
        r = qed_sync_write_zeroes(u->img, off, len, (op >> 4) & 3);
        break;
    case 5:
        r = qed_sync_discard(u->img, off, len * (op & 0x10 ? 64 : 1));
        break;
    case 6: {
        struct qed_extent ext[16];
        size_t n = 0;
        r = qed_sync_block_status(u->img, off, len * (op & 0x10 ? 1024 : 1), ext, 16, &n);
        break;
    }
    case 7:
        r = op & 0x10 ? qed_sync_resize(u->img, qed_size(u->img) + len * 512) : qed_sync_flush(u->img);
        break;
    case 8:
        op_check(u, op & 0x10);
        break;
    default:
        TRACE("close\n");
        qed_close(u->img);
        u->img = NULL;
        return;
    }
    TRACE("op %u at %" PRIu64 " +%" PRIu64 " = %d\n", op % 10, off, len, r);
    if (r == 0)
        fz_stats[ST_OPS_OK]++;
}

/* ---- Entry points ------------------------------------------------------------- */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *v = getenv("QEDNBD_FUZZ_VERBOSE");

    (void)argc;
    (void)argv;
    fz_verbose = v ? atoi(v) : 0;
    qed_set_log(fz_log_cb, NULL, fz_verbose >= 2 ? QED_LOG_DEBUG : QED_LOG_INFO);
    fz_make_dir("fuzz-image");
    fz_stat_names[ST_INPUTS] = "inputs";
    fz_stat_names[ST_OPENS] = "opens";
    fz_stat_names[ST_OPS_OK] = "ops_ok";
    fz_stat_names[ST_CORRUPT] = "corrupt_checks";
    fz_stat_names[ST_CHANGED] = "images_changed";
    loop = ev_loop_new(EVFLAG_AUTO);
    if (!loop || qed_aio_new(loop, QED_AIO_TEST, &aio) < 0) {
        fprintf(stderr, "fuzz-image: cannot set up the loop and the test I/O engine\n");
        exit(1);
    }
    qed_aio_test_set_auto(aio, true);
    make_templates();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz_in in = {data, size};
    const struct tmpl *t = &T[fz_u8(&in) % ntmpl];
    struct blob b = {malloc(t->b.n), t->b.n};
    struct run u = {0};
    unsigned nops = 0;

    if (!b.p)
        fz_fail("out of memory");
    fz_log_pos = 0;
    fz_stats[ST_INPUTS]++;
    memcpy(b.p, t->b.p, b.n);
    for (unsigned i = 0; i < MAX_MUT && mutate(&in, t, &b); i++)
        ;
    confine_backing_name(&b);
    spill(IMG, b.p, b.n);

    u.oo.l2_cache_tables = 2;
    u.oo.clean_delay_ms = 1;
    uint8_t how = fz_u8(&in);
    op_open(&u, how & 1, how & 2);
    if (u.img)
        op_check(&u, false);
    for (; nops < MAX_OPS && in.n; nops++)
        one_op(&in, &u, t);
    if (u.img)
        qed_close(u.img);

    /* Each operation allocates at most its data clusters (two more for an
     * unaligned range), one L2 table, and a resize nothing; a repair
     * nothing. */
    {
        uint64_t cs = get32(b.p + 4) <= 64 * MiB ? get32(b.p + 4) : 64 * MiB;
        uint64_t ts = get32(b.p + 8) <= 16 ? get32(b.p + 8) : 16;
        uint64_t per_op = 32 * cs + 2 * cs + cs * (ts ? ts : 1) + cs;
        check_confined(&b, (uint64_t)(nops + 1) * per_op);
    }
    free(b.p);
    return 0;
}
