/*
 * check.c - consistency check and repair (blocking; no requests in flight).
 *
 * Classification follows QEMU: an L1 or L2 entry that is unaligned, inside
 * the header, or past the end of the file is a corruption, and so is a
 * cluster referenced twice.  A cluster that nothing references is a leak:
 * wasted space, not harm.  Repair zeroes invalid entries (the cluster then
 * reads as unallocated) and clears NEED_CHECK once no corruption remains.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qed-image.h"

struct check {
    struct qed_image *img;
    struct qed_check_result *res;
    bool repair;
    uint64_t nclusters;
    uint8_t *used;      /* bitmap of referenced host clusters */
    uint8_t *judged;    /* bitmap of host clusters whose entries were judged */
    uint8_t *tocheck;   /* bitmap of L1 indexes whose table pass 2 checks */
    uint64_t *zeroed;   /* host offsets of the entries the repair zeroed */
    size_t nzeroed, zcap;
    bool zsorted;       /* zeroed[] is sorted (for bsearch) */
    bool l1_dirty;      /* a repair changed the L1 table */
    uint64_t last_data; /* previous data cluster, for fragmentation */
};

/* Mark @n clusters from host offset @off as used; false if any already was. */
static bool mark_used(struct check *c, uint64_t off, uint64_t n)
{
    uint64_t first = off >> c->img->g.cluster_bits;
    bool fresh = true;

    for (uint64_t i = first; i < first + n && i < c->nclusters; i++) {
        if (c->used[i / 8] & (1u << (i % 8)))
            fresh = false;
        c->used[i / 8] |= (uint8_t)(1u << (i % 8));
    }
    return fresh;
}

/* Claim host cluster @i for judging: false if its entries were judged already
 * (as part of the L1 table or of another L2 table overlapping this one). */
static bool claim(struct check *c, uint64_t i)
{
    if (i >= c->nclusters || (c->judged[i / 8] & (1u << (i % 8))))
        return false;
    c->judged[i / 8] |= (uint8_t)(1u << (i % 8));
    return true;
}

/* Read (or, after a repair, write) the L2 table at @table_off into @t; an
 * error is logged and counted. */
static int l2_io(struct check *c, uint64_t *t, uint64_t table_off, bool write)
{
    struct qed_image *img = c->img;
    int r = write ? qed_pwrite_full(img->fd, t, img->g.table_bytes, table_off)
                  : qed_pread_full(img->fd, t, img->g.table_bytes, table_off);

    if (r < 0) {
        qed_log(QED_LOG_ERROR, "%s: cannot %s L2 table at %" PRIu64 ": %s", img->path,
                write ? "repair" : "read", table_off, strerror(-r));
        c->res->check_errors++;
    }
    return r;
}

/*
 * A repair zeroed the entry for [L1 index @l1i, L2 index @j] covering @len
 * bytes: what read as an error now reads through, so the content changed
 * and the dirty bitmaps must say so.  An index past the virtual size covers
 * nothing (and its offset could wrap past 2^64).
 */
static void mark_repaired(struct qed_image *img, uint64_t l1i, uint64_t j, uint64_t len)
{
    const struct qed_geom *g = &img->g;

    if (img->h.image_size && l1i <= (img->h.image_size - 1) >> g->l1_shift)
        qed_bitmap_mark(img, (l1i << g->l1_shift) + (j << g->l2_shift), len);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Remember that the repair zeroed the entry at host offset @at. */
static int note_zeroed(struct check *c, uint64_t at)
{
    if (c->nzeroed == c->zcap) {
        size_t cap = c->zcap ? 2 * c->zcap : 64;
        uint64_t *z = realloc(c->zeroed, cap * sizeof(*z));
        if (!z)
            return -ENOMEM;
        c->zeroed = z;
        c->zcap = cap;
    }
    c->zeroed[c->nzeroed++] = at;
    c->zsorted = false;
    return 0;
}

/* Did the repair zero the entry at host offset @at (through another table)? */
static bool was_zeroed(struct check *c, uint64_t at)
{
    if (!c->nzeroed)
        return false;
    if (!c->zsorted) {
        qsort(c->zeroed, c->nzeroed, sizeof(uint64_t), cmp_u64);
        c->zsorted = true;
    }
    return bsearch(&at, c->zeroed, c->nzeroed, sizeof(uint64_t), cmp_u64) != NULL;
}

/* Judge the entries of one L2 table in the clusters of it that no other
 * table (nor the L1 table) has had judged; returns 0 or -errno for an I/O
 * error. */
static int check_l2(struct check *c, uint64_t l1i, uint64_t table_off, uint64_t *t)
{
    struct qed_image *img = c->img;
    const struct qed_geom *g = &img->g;
    const uint64_t per_cluster = g->cluster_size / 8;
    bool dirty = false, mine = false;
    int r;

    /* Fragmentation is judged within one table, as QEMU does: the first data
     * cluster of each table starts afresh. */
    c->last_data = 0;
    r = l2_io(c, t, table_off, false);
    if (r < 0)
        return r;
    for (uint64_t j = 0; j < g->table_entries; j++) {
        uint64_t e = le64toh(t[j]);
        if (j % per_cluster == 0)
            mine = claim(c, (table_off >> g->cluster_bits) + j / per_cluster);
        if (!mine) {
            /* The same bytes were judged as another table's entries.  One
             * the repair zeroed changed this table's guest range too. */
            if (e == QED_ENTRY_UNALLOCATED && was_zeroed(c, table_off + 8 * j))
                mark_repaired(img, l1i, j, g->cluster_size);
            continue;
        }
        if (e == QED_ENTRY_UNALLOCATED || e == QED_ENTRY_ZERO)
            continue;
        if (!qed_check_cluster_offset(g, e, img->file_size)) {
            qed_log(QED_LOG_WARN,
                    "%s: ERROR invalid L2 entry 0x%" PRIx64 " (L1 index %" PRIu64
                    ", L2 index %" PRIu64 ")",
                    img->path, e, l1i, j);
            c->res->corruptions++;
            c->res->repairable++;
            if (c->repair) {
                t[j] = htole64(QED_ENTRY_UNALLOCATED);
                dirty = true;
                c->res->corruptions_fixed++;
                mark_repaired(img, l1i, j, g->cluster_size);
                if (note_zeroed(c, table_off + 8 * j) < 0) {
                    c->res->check_errors++;
                    return -ENOMEM;
                }
            }
            continue;
        }
        c->res->allocated_clusters++;
        if (c->last_data && e != c->last_data + g->cluster_size)
            c->res->fragmented_clusters++;
        c->last_data = e;
        if (!mark_used(c, e, 1)) {
            qed_log(QED_LOG_WARN, "%s: ERROR cluster at 0x%" PRIx64 " is referenced twice",
                    img->path, e);
            c->res->corruptions++;
        }
    }
    if (dirty)
        return l2_io(c, t, table_off, true);
    return 0;
}

/* Pass 1 over the L1 table @l1 (as on disk): judge each entry, mark each
 * valid table used, and set its bit in c->tocheck for pass 2. */
static void check_l1(struct check *c, uint64_t *l1)
{
    struct qed_image *img = c->img;
    const struct qed_geom *g = &img->g;

    for (uint64_t i = 0; i < g->table_entries; i++) {
        uint64_t off = le64toh(l1[i]);
        if (off == QED_ENTRY_UNALLOCATED)
            continue;
        if (!qed_check_table_offset(g, off, img->file_size)) {
            qed_log(QED_LOG_WARN, "%s: ERROR invalid L1 entry %" PRIu64 ": 0x%" PRIx64,
                    img->path, i, off);
            c->res->corruptions++;
            c->res->repairable++;
            if (c->repair) {
                l1[i] = htole64(QED_ENTRY_UNALLOCATED);
                img->l1[i] = htole64(QED_ENTRY_UNALLOCATED);
                c->l1_dirty = true;
                c->res->corruptions_fixed++;
                mark_repaired(img, i, 0, qed_l2_coverage(g));
            }
            continue;
        }
        if (!mark_used(c, off, g->table_size)) {
            qed_log(QED_LOG_WARN, "%s: ERROR L2 table at 0x%" PRIx64 " is referenced twice",
                    img->path, off);
            c->res->corruptions++;
        }
        /* Checked in pass 2 even when it overlaps another table or the L1
         * table: the engine reads its entries all the same.  Skipping it
         * left an entry past the end of the file that the repair never
         * zeroed; once the file grew, it named a new cluster, a new alias
         * (found by tests/fuzz/fuzz-image).  Clusters shared with a table
         * checked before are judged once (check_l2). */
        c->tocheck[i / 8] |= (uint8_t)(1u << (i % 8));
    }
}

/* Count the clusters nothing references, and find the end of the last used one. */
static void count_leaks(struct check *c)
{
    c->res->image_end_offset = 0;
    for (uint64_t i = 0; i < c->nclusters; i++) {
        if (!(c->used[i / 8] & (1u << (i % 8))))
            c->res->leaks++;
        else
            c->res->image_end_offset = (i + 1) << c->img->g.cluster_bits;
    }
}

/* After a repair: write the repaired L1 table, flush, write the header
 * (NEED_CHECK cleared when no corruption remains) and forget what the
 * image cached of the tables before the repair. */
static int repair_finish(struct check *c, const uint64_t *l1)
{
    struct qed_image *img = c->img;
    struct qed_check_result *res = c->res;
    int r;

    if (c->l1_dirty) {
        r = qed_pwrite_full(img->fd, l1, img->g.table_bytes, img->h.l1_table_offset);
        if (r < 0) {
            res->check_errors++;
            qed_log(QED_LOG_ERROR, "%s: cannot repair the L1 table: %s", img->path,
                    strerror(-r));
            return r;
        }
    }
    /* Why flush before clearing NEED_CHECK: the flag may only say
     * "consistent" once the repaired tables are on stable storage. */
    /* Through the image's latch (flush-latch.c): on an open image this
     * fdatasync may take a write-back error of earlier writes, which the
     * kernel reports once; later flushes must not succeed. */
    if (fdatasync(img->fd) < 0) {
        res->check_errors++;
        return qed_image_flush_result(img, -errno);
    }
    if (res->corruptions == res->corruptions_fixed)
        img->h.features &= ~QED_F_NEED_CHECK;
    r = qed_image_write_header_sync(img);
    if (r == 0 && fdatasync(img->fd) < 0)
        r = qed_image_flush_result(img, -errno);
    if (r < 0) {
        res->check_errors++;
        return r;
    }
    /* Cached tables may predate the repair, and so may the record of
     * invalid entries (qed_meta_* runs again on the repaired tables). */
    qed_l2_cache_drop(&img->cache);
    if (img->meta_tables) {
        qed_meta_free(img);
        return qed_meta_init(img);
    }
    return 0;
}

int qed_check_image(struct qed_image *img, bool repair, struct qed_check_result *res)
{
    const struct qed_geom *g = &img->g;
    struct check c = {.img = img, .res = res, .repair = repair};
    uint64_t *t = NULL, *l1 = NULL;
    int r = 0;

    memset(res, 0, sizeof(*res));
    res->total_clusters = qed_bytes_to_clusters(g, img->h.image_size);
    c.nclusters = img->file_size >> g->cluster_bits;
    c.used = calloc(1, c.nclusters / 8 + 1);
    t = malloc(g->table_bytes);
    l1 = malloc(g->table_bytes);
    if (!c.used || !t || !l1) {
        res->check_errors++;
        r = -ENOMEM;
        goto out;
    }
    /* The L1 table as on disk: the in-memory copy has invalid entries
     * disabled (metadata.c), and the check must judge the real values. */
    r = qed_pread_full(img->fd, l1, g->table_bytes, img->h.l1_table_offset);
    if (r < 0) {
        res->check_errors++;
        qed_log(QED_LOG_ERROR, "%s: cannot read the L1 table: %s", img->path, strerror(-r));
        goto out;
    }
    mark_used(&c, 0, img->h.header_size);
    mark_used(&c, img->h.l1_table_offset, g->table_size);
    /* Why two passes: every L2 table is marked used before any data entry
     * is.  In one pass, a data entry of an earlier table that names a later
     * table's cluster marked it first; the table was then taken for the
     * duplicate and its own entries went unchecked, so an entry of it past
     * the end of the file survived a repair and, once the file grew, named
     * another cluster's data (found by tests/fuzz/fuzz-image). */
    c.tocheck = calloc(1, g->table_entries / 8 + 1);
    c.judged = calloc(1, c.nclusters / 8 + 1);
    if (!c.tocheck || !c.judged) {
        res->check_errors++;
        r = -ENOMEM;
        goto out;
    }
    /* The L1 table's own bytes are judged as L1 entries: an L2 table over
     * them needs no second look (an offset invalid for a data cluster is
     * invalid for a table too, so check_l1 catches it). */
    for (uint64_t k = 0; k < g->table_size; k++)
        claim(&c, (img->h.l1_table_offset >> g->cluster_bits) + k);
    check_l1(&c, l1);
    for (uint64_t i = 0; i < g->table_entries; i++) {
        if (!(c.tocheck[i / 8] & (1u << (i % 8))))
            continue;
        r = check_l2(&c, i, le64toh(l1[i]), t);
        if (r < 0)
            goto out;
    }
    count_leaks(&c);
    if (repair)
        r = repair_finish(&c, l1);

out:
    free(c.tocheck);
    free(c.judged);
    free(c.zeroed);
    free(c.used);
    free(t);
    free(l1);
    return r;
}

int qed_check(qed_image *img, bool repair, struct qed_check_result *res)
{
    if (repair && img->read_only)
        return -EROFS;
    if (repair && img->flush_err) {
        /* The page cache may hold what the disk lost: a repair would judge
         * the wrong tables, and must not clear NEED_CHECK.  Reopen first. */
        qed_log(QED_LOG_ERROR, "%s: not repairing: a flush failed while the image was open "
                "(close and reopen it to check it)", img->path);
        return -EIO;
    }
    if (img->inflight)
        return -EBUSY;
    return qed_check_image(img, repair, res);
}
