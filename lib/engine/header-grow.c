/*
 * header-grow.c - growing an image's header area so that its dirty
 * bitmaps fit (doc/qed-bitmaps.md): the clusters that follow the area
 * (the L1 table, L2 tables, data clusters, found by walking the tables)
 * are copied to the end of the file and every reference is repointed.
 * Blocking; only at close, with nothing in flight.
 *
 * The order leaves a consistent image at every power cut (at worst leaked
 * clusters): copies first, flushed; then the L2 tables (their entries
 * point at copies of the same bytes, so an old or a new entry both read
 * right), flushed; then the L1 table, flushed; then the header with the
 * larger area and the new L1 offset, which makes the old clusters part of
 * the header area at once.  Nothing is written into the vacated range
 * before that header is on stable storage (the caller's bits go there).
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qed-image.h"

struct grow {
    struct qed_image *img;
    uint64_t lo, hi;           /* the range vacated: [old area end, new area end) */
    uint64_t *map;             /* per cluster of the range: its new offset, 0 = not moved */
    uint64_t alloc;            /* next free offset at the end of the file */
    uint64_t *l1;              /* the L1 table as on disk */
    uint64_t *t;               /* one L2 table */
    uint8_t *buf;              /* one cluster */
};

static bool in_range(const struct grow *g, uint64_t off)
{
    return off >= g->lo && off < g->hi;
}

static uint64_t *slot(struct grow *g, uint64_t off)
{
    return &g->map[(off - g->lo) >> g->img->g.cluster_bits];
}

static int sync_fd(struct qed_image *img)
{
    return fdatasync(img->fd) < 0 ? -errno : 0;
}

/* Is L1 entry @i a table we can read (the bounds of the file at open)? */
static bool table_ok(const struct grow *g, uint64_t i)
{
    uint64_t e = le64toh(g->l1[i]);

    return qed_check_table_offset(&g->img->g, e, g->img->file_size);
}

/* Pass 1: copy every data cluster in the range to the end, once. */
static int copy_data(struct grow *g)
{
    struct qed_image *img = g->img;

    for (uint64_t i = 0; i < img->g.table_entries; i++) {
        int r;

        if (!table_ok(g, i))
            continue;
        r = qed_pread_full(img->fd, g->t, img->g.table_bytes, le64toh(g->l1[i]));
        if (r < 0)
            return r;
        for (uint64_t j = 0; j < img->g.table_entries; j++) {
            uint64_t e = le64toh(g->t[j]);

            if (!qed_check_cluster_offset(&img->g, e, img->file_size) || !in_range(g, e) ||
                *slot(g, e))
                continue;
            r = qed_pread_full(img->fd, g->buf, img->g.cluster_size, e);
            if (r == 0)
                r = qed_pwrite_full(img->fd, g->buf, img->g.cluster_size, g->alloc);
            if (r < 0)
                return r;
            *slot(g, e) = g->alloc;
            g->alloc += img->g.cluster_size;
        }
    }
    return sync_fd(img);
}

/* Pass 2: repoint the L2 entries; move the tables in the range. */
static int move_tables(struct grow *g)
{
    struct qed_image *img = g->img;

    for (uint64_t i = 0; i < img->g.table_entries; i++) {
        uint64_t off = le64toh(g->l1[i]);
        bool changed = false;
        int r;

        if (!table_ok(g, i))
            continue;
        r = qed_pread_full(img->fd, g->t, img->g.table_bytes, off);
        if (r < 0)
            return r;
        for (uint64_t j = 0; j < img->g.table_entries; j++) {
            uint64_t e = le64toh(g->t[j]);

            if (qed_check_cluster_offset(&img->g, e, img->file_size) && in_range(g, e)) {
                g->t[j] = htole64(*slot(g, e));
                changed = true;
            }
        }
        if (in_range(g, off)) {
            g->l1[i] = htole64(g->alloc);
            off = g->alloc;
            g->alloc += img->g.table_bytes;
            changed = true;
        }
        if (changed && (r = qed_pwrite_full(img->fd, g->t, img->g.table_bytes, off)) < 0)
            return r;
    }
    return sync_fd(img);
}

/* Pass 3: the L1 table, moved when in the range.  Returns its offset via @l1_off. */
static int move_l1(struct grow *g, uint64_t *l1_off)
{
    struct qed_image *img = g->img;
    int r;

    *l1_off = img->h.l1_table_offset;
    if (in_range(g, *l1_off)) {
        *l1_off = g->alloc;
        g->alloc += img->g.table_bytes;
    }
    r = qed_pwrite_full(img->fd, g->l1, img->g.table_bytes, *l1_off);
    return r < 0 ? r : sync_fd(img);
}

/* The header with the larger area and @l1_off; the bitmaps' autoclear bit
 * cleared until their new directory is written (the caller sets it). */
static int switch_header(struct grow *g, uint32_t header_size, uint64_t l1_off)
{
    struct qed_image *img = g->img;
    struct qed_header old = img->h;
    char err[256];
    int r;

    img->h.header_size = header_size;
    img->h.l1_table_offset = l1_off;
    /* Why clear the bit: the range may hold old clusters that happen to
     * look like a directory until the caller zeroes the slots; without the
     * bit, an open ignores a damaged one instead of refusing the image. */
    img->h.autoclear_features &= ~QED_AF_BITMAPS;
    r = qed_geom_init(&img->g, img->h.cluster_size, img->h.table_size, header_size, img->path,
                      err, sizeof(err));
    if (r == 0)
        r = qed_image_write_header_sync(img);
    if (r == 0)
        r = sync_fd(img);
    if (r < 0) {
        img->h = old;
        qed_geom_init(&img->g, old.cluster_size, old.table_size, old.header_size, img->path,
                      err, sizeof(err));
        return r;
    }
    img->file_size = g->alloc;
    return 0;
}

static int grow(struct grow *g, uint32_t header_size)
{
    struct qed_image *img = g->img;
    uint64_t l1_off;
    int r;

    r = qed_pread_full(img->fd, g->l1, img->g.table_bytes, img->h.l1_table_offset);
    if (r == 0)
        r = copy_data(g);
    if (r == 0)
        r = move_tables(g);
    if (r == 0)
        r = move_l1(g, &l1_off);
    if (r == 0)
        r = switch_header(g, header_size, l1_off);
    return r;
}

int qed_header_grow(struct qed_image *img, uint32_t header_size)
{
    struct grow g = {.img = img, .lo = img->g.header_bytes};
    uint64_t n;
    int r = -ENOMEM;

    g.hi = (uint64_t)header_size * img->g.cluster_size;
    n = (g.hi - g.lo) >> img->g.cluster_bits;
    /* New clusters go after everything in use, and after the new area. */
    g.alloc = img->file_size > g.hi ? img->file_size : g.hi;
    g.map = calloc(n ? n : 1, sizeof(uint64_t));
    g.l1 = malloc(img->g.table_bytes);
    g.t = malloc(img->g.table_bytes);
    g.buf = malloc(img->g.cluster_size);
    if (g.map && g.l1 && g.t && g.buf)
        r = grow(&g, header_size);
    if (r < 0)
        qed_log(QED_LOG_ERROR, "%s: growing the header area to %" PRIu32 " clusters failed: %s",
                img->path, header_size, strerror(-r));
    else
        qed_log(QED_LOG_INFO, "%s: header area grown to %" PRIu32 " clusters for the bitmaps",
                img->path, header_size);
    free(g.map);
    free(g.l1);
    free(g.t);
    free(g.buf);
    return r;
}
