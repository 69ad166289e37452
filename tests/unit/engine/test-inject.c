/*
 * test-inject.c - an I/O error injected at each step of each request type.
 *
 * For every workload (one request, or several allocating writes at once, on
 * a prepared image) the test first runs it once without failure and records
 * every I/O it makes with the test engine's observer.  Each recorded I/O is
 * classified (L2 read, data read, backing read, NEED_CHECK header write, data
 * write, L2 update, L1 update, flush, punch), and the workload must exercise
 * the steps it is meant to.  Then, for k = 0 .. count-1, the workload runs on
 * a fresh copy of the image with the k-th I/O failing with -EIO, twice:
 *   - the request gets -EIO, and the real cause is logged;
 *   - every cluster reads as entirely old or entirely new (requests that
 *     succeeded: new), and a live qed_check finds no corruption (leaks are
 *     allowed: a failed allocation may leak);
 *   - first run: the image is closed at once, checks with 0 corruptions on
 *     disk, and reopens with the same old-or-new contents; second run: the
 *     image stays open, so the follow-up requests use whatever in-memory
 *     state the failure left (cached tables, L1, the allocation point);
 *   - when the failed I/O is a flush, the failure is latched: a later flush
 *     and a FUA write fail with -EIO, close fails and leaves NEED_CHECK on
 *     disk, and the follow-up requests run on a new open (which repairs);
 *   - subsequent requests work: the request succeeds when retried, new
 *     allocations elsewhere work, a flush works, and the image checks clean
 *     (leaks allowed) and reads back exactly after close and reopen.
 * Further tests cover a failed L2 load with several waiters, and a write
 * racing another write's failing metadata update.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <ev.h>

#include "fixture.h"
#include "qed-io-test.h"
#include "qed-image.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define MAX_REQ 4
#define MAX_IOS 256
#define ALL_OPS                                                                              \
    ((1u << QED_IO_READ) | (1u << QED_IO_WRITE) | (1u << QED_IO_FSYNC) | (1u << QED_IO_PUNCH) | \
     (1u << QED_IO_ALLOCATE))

/* ---- fixture ---- */

struct fixture {
    struct test_fixture tf;
    unsigned errors_logged;
    char last_error[512];
};

static struct fixture F;

static void log_sink(enum qed_log_level level, const char *msg, void *opaque)
{
    (void)opaque;
    if (level == QED_LOG_ERROR) {
        F.errors_logged++;
        snprintf(F.last_error, sizeof(F.last_error), "%s", msg);
    }
}

static void setup(void)
{
    memset(&F, 0, sizeof(F));
    tf_setup(&F.tf, "inject", QED_AIO_TEST);
    qed_set_log(log_sink, NULL, QED_LOG_WARN);
}

static void teardown(void)
{
    tf_teardown(&F.tf);
}

TestSuite(inject, .init = setup, .fini = teardown, .timeout = 120);

/* ---- helpers ---- */

static int do_read(qed_image *img, uint64_t off, void *buf, size_t len)
{
    struct tf_done d = {0};
    return tf_result(&F.tf, TF_SUBMIT(qed_read(img, off, buf, len, tf_done_cb, &d)), &d);
}

static int do_write(qed_image *img, uint64_t off, const void *buf, size_t len, unsigned flags)
{
    struct tf_done d = {0};
    return tf_result(&F.tf, TF_SUBMIT(qed_write(img, off, buf, len, flags, tf_done_cb, &d)), &d);
}

static int do_wzero(qed_image *img, uint64_t off, uint64_t len, unsigned flags)
{
    struct tf_done d = {0};
    return tf_result(&F.tf, TF_SUBMIT(qed_write_zeroes(img, off, len, flags, tf_done_cb, &d)), &d);
}

static int do_flush(qed_image *img)
{
    struct tf_done d = {0};
    return tf_result(&F.tf, TF_SUBMIT(qed_flush(img, tf_done_cb, &d)), &d);
}

/* ---- I/O recording and classification ---- */

enum step {
    ST_L2_READ,
    ST_DATA_READ,
    ST_BACKING_READ,
    ST_HDR_WRITE,
    ST_DATA_WRITE,
    ST_L2_WRITE,
    ST_L1_WRITE,
    ST_FSYNC,
    ST_PUNCH,
    ST_RESERVE, /* fallocate of sparse new clusters (only where the file system reserves) */
    ST_COUNT
};

static const char *step_names[ST_COUNT] = {
    [ST_L2_READ] = "L2 read",         [ST_DATA_READ] = "data read",
    [ST_BACKING_READ] = "backing read", [ST_HDR_WRITE] = "header write",
    [ST_DATA_WRITE] = "data write",   [ST_L2_WRITE] = "L2 update",
    [ST_L1_WRITE] = "L1 update",      [ST_FSYNC] = "flush",
    [ST_PUNCH] = "punch",             [ST_RESERVE] = "reservation",
};

#define S(x) (1u << (x))

struct rec {
    int fd;
    enum qed_io_op op;
    uint64_t off, len;
};

struct recorder {
    struct rec r[MAX_IOS];
    unsigned n;
    bool failed_seen;
    struct rec failed;
};

static void rec_observer(struct qed_io *io, int err, void *opaque)
{
    struct recorder *R = opaque;
    struct rec x = {io->fd, io->op, io->offset, io->length};

    if (R->n < MAX_IOS)
        R->r[R->n++] = x;
    if (err < 0) {
        R->failed_seen = true;
        R->failed = x;
    }
}

/* Classify an I/O of the top image @img, whose L1 table is final. */
static enum step classify(const qed_image *img, const struct rec *x)
{
    const struct qed_geom *g = &img->g;

    if (x->op == QED_IO_FSYNC)
        return ST_FSYNC;
    if (x->op == QED_IO_PUNCH)
        return ST_PUNCH;
    if (x->op == QED_IO_ALLOCATE)
        return ST_RESERVE;
    if (x->fd != img->fd)
        return ST_BACKING_READ;
    if (x->op == QED_IO_WRITE && x->off == 0)
        return ST_HDR_WRITE;
    if (x->off >= img->h.l1_table_offset && x->off < img->h.l1_table_offset + g->table_bytes)
        return ST_L1_WRITE;
    for (uint64_t i = 0; i < g->table_entries; i++) {
        uint64_t t = le64toh(img->l1[i]);
        if (t && x->off >= t && x->off < t + g->table_bytes)
            return x->op == QED_IO_READ ? ST_L2_READ : ST_L2_WRITE;
    }
    return x->op == QED_IO_READ ? ST_DATA_READ : ST_DATA_WRITE;
}

static const char *op_name(enum qed_io_op op)
{
    return op == QED_IO_READ    ? "read"
           : op == QED_IO_WRITE ? "write"
           : op == QED_IO_FSYNC ? "fsync"
           : op == QED_IO_PUNCH ? "punch"
                                : "allocate";
}

/* ---- workloads ---- */

struct ctx {
    qed_image *img;
    const struct workload *w;
    uint64_t size, new_size;
    uint8_t *oldc, *newc;
    uint8_t *wbuf[MAX_REQ];
    uint64_t roff[MAX_REQ], rlen[MAX_REQ]; /* ranges the requests change */
    uint64_t rdlen[MAX_REQ];                /* reads: their length */
    struct tf_done d[MAX_REQ];
    int nreq;
    struct qed_extent ext[64];
    size_t next;
};

struct workload {
    const char *name;
    uint32_t cs, ts;
    uint64_t size;
    int backing;              /* 0 none, 1 raw, 2 qed */
    bool cold;                /* reopen after prepare: the L2 cache starts empty */
    void (*prepare)(struct ctx *c);
    void (*submit)(struct ctx *c);
    unsigned steps;           /* steps the workload must exercise */
};

/* Prepared writes (update the old contents). */
static void pre_write(struct ctx *c, uint64_t off, uint64_t len, uint32_t seed)
{
    uint8_t *b = malloc(len);
    tf_fill(b, len, seed);
    cr_assert_eq(do_write(c->img, off, b, len, 0), 0);
    memcpy(c->oldc + off, b, len);
    free(b);
}

static void pre_wzero(struct ctx *c, uint64_t off, uint64_t len)
{
    cr_assert_eq(do_wzero(c->img, off, len, 0), 0);
    memset(c->oldc + off, 0, len);
}

/* Request submitters (update the new contents). */
static void sub_write(struct ctx *c, uint64_t off, uint64_t len, unsigned flags, uint32_t seed)
{
    int i = c->nreq++;
    c->wbuf[i] = malloc(len);
    tf_fill(c->wbuf[i], len, seed);
    memcpy(c->newc + off, c->wbuf[i], len);
    c->roff[i] = off;
    c->rlen[i] = len;
    cr_assert_eq(TF_SUBMIT(qed_write(c->img, off, c->wbuf[i], len, flags, tf_done_cb, &c->d[i])),
                 0);
}

static void sub_wzero(struct ctx *c, uint64_t off, uint64_t len, unsigned flags)
{
    int i = c->nreq++;
    memset(c->newc + off, 0, len);
    c->roff[i] = off;
    c->rlen[i] = len;
    cr_assert_eq(TF_SUBMIT(qed_write_zeroes(c->img, off, len, flags, tf_done_cb, &c->d[i])), 0);
}

static void sub_read(struct ctx *c, uint64_t off, uint64_t len)
{
    int i = c->nreq++;
    c->wbuf[i] = malloc(len);
    cr_assert_eq(TF_SUBMIT(qed_read(c->img, off, c->wbuf[i], len, tf_done_cb, &c->d[i])), 0);
    /* checked after completion in check_reads */
    c->roff[i] = off;
    c->rlen[i] = 0;
    c->rdlen[i] = len;
}

/* --- the workloads' prepare and submit steps --- */

static void prep_none(struct ctx *c)
{
    (void)c;
}

static void prep_data(struct ctx *c)
{
    pre_write(c, 0, 8 * c->w->cs, 601);
}

static void prep_far_table(struct ctx *c)
{
    /* a table exists for the range, with data far from it */
    pre_write(c, 40 * c->w->cs, 512, 602);
}

static void prep_zero_cluster(struct ctx *c)
{
    pre_wzero(c, c->w->cs, 2 * c->w->cs);
}

static void sub_read_range(struct ctx *c)
{
    sub_read(c, 0, 16 * c->w->cs);
}

static void sub_partial_write(struct ctx *c)
{
    sub_write(c, c->w->cs + 100, c->w->cs + 700, 0, 611);
}

static void sub_two_table_write(struct ctx *c)
{
    /* 4 KiB / 1: a table covers 2 MiB */
    sub_write(c, 2 * MiB - 3000, 6000, 0, 612);
}

static void sub_inplace_write(struct ctx *c)
{
    sub_write(c, 2 * c->w->cs + 10, c->w->cs, 0, 613);
}

static void sub_fua_write(struct ctx *c)
{
    sub_write(c, 2 * c->w->cs + 10, 1000, QED_REQ_FUA, 614);
}

static void sub_fua_alloc_write(struct ctx *c)
{
    sub_write(c, 20 * c->w->cs, c->w->cs, QED_REQ_FUA, 615);
}

static void sub_two_queued_writes(struct ctx *c)
{
    sub_write(c, c->w->cs + 100, 1000, 0, 616);
    sub_write(c, 3 * c->w->cs + 2000, 3000, 0, 617);
    sub_write(c, 3 * MiB, c->w->cs, 0, 618);
}

static void sub_side_by_side_writes(struct ctx *c)
{
    /* disjoint clusters of one existing table: admitted together */
    sub_write(c, c->w->cs + 100, 1000, 0, 619);
    sub_write(c, 3 * c->w->cs + 2000, 3000, 0, 620);
    sub_write(c, 6 * c->w->cs, 2 * c->w->cs, 0, 621);
}

static void sub_wzero_whole(struct ctx *c)
{
    sub_wzero(c, 2 * c->w->cs, 4 * c->w->cs, 0);
}

static void sub_wzero_partial(struct ctx *c)
{
    sub_wzero(c, c->w->cs + 1000, 2 * c->w->cs, 0);
}

static void sub_wzero_nohole(struct ctx *c)
{
    sub_wzero(c, 4 * c->w->cs, 2 * c->w->cs, QED_REQ_NO_HOLE);
}

static void sub_discard(struct ctx *c)
{
    int i = c->nreq++;
    /* whole clusters 2..5 of the prepared data: zeros or old afterwards */
    memset(c->newc + 2 * c->w->cs, 0, 4 * c->w->cs);
    c->roff[i] = 2 * c->w->cs;
    c->rlen[i] = 4 * c->w->cs;
    cr_assert_eq(TF_SUBMIT(qed_discard(c->img, c->roff[i], c->rlen[i], 0, tf_done_cb, &c->d[i])),
                 0);
}

static void sub_flush(struct ctx *c)
{
    int i = c->nreq++;
    cr_assert_eq(TF_SUBMIT(qed_flush(c->img, tf_done_cb, &c->d[i])), 0);
}

static void sub_resize(struct ctx *c)
{
    int i = c->nreq++;
    c->new_size = c->w->size + MiB;
    cr_assert_eq(TF_SUBMIT(qed_resize(c->img, c->new_size, tf_done_cb, &c->d[i])), 0);
}

static void sub_bstatus(struct ctx *c)
{
    int i = c->nreq++;
    cr_assert_eq(TF_SUBMIT(qed_block_status(c->img, 0, c->size, c->ext, 64, &c->next, tf_done_cb,
                                         &c->d[i])),
                 0);
}

static const struct workload workloads[] = {
    {"read, cold cache", 4096, 1, 4 * MiB, 0, true, prep_data, sub_read_range,
     S(ST_L2_READ) | S(ST_DATA_READ)},
    {"read through raw backing", 4096, 1, 4 * MiB, 1, true, prep_data, sub_read_range,
     S(ST_L2_READ) | S(ST_DATA_READ) | S(ST_BACKING_READ)},
    {"read through qed backing", 4096, 1, 4 * MiB, 2, true, prep_data, sub_read_range,
     S(ST_L2_READ) | S(ST_DATA_READ) | S(ST_BACKING_READ)},
    {"allocating write, new table, no backing", 4096, 1, 4 * MiB, 0, false, prep_none,
     sub_partial_write,
     S(ST_HDR_WRITE) | S(ST_FSYNC) | S(ST_DATA_WRITE) | S(ST_L2_WRITE) | S(ST_L1_WRITE)},
    {"allocating write, cached table, no backing", 4096, 1, 4 * MiB, 0, true, prep_far_table,
     sub_partial_write, S(ST_L2_READ) | S(ST_HDR_WRITE) | S(ST_FSYNC) | S(ST_DATA_WRITE) |
     S(ST_L2_WRITE)},
    {"allocating write, COW from raw backing", 4096, 1, 4 * MiB, 1, false, prep_none,
     sub_partial_write,
     S(ST_BACKING_READ) | S(ST_DATA_WRITE) | S(ST_FSYNC) | S(ST_L2_WRITE) | S(ST_L1_WRITE)},
    {"allocating write, COW from qed backing", 4096, 1, 4 * MiB, 2, true, prep_far_table,
     sub_partial_write,
     S(ST_L2_READ) | S(ST_BACKING_READ) | S(ST_DATA_WRITE) | S(ST_FSYNC) | S(ST_L2_WRITE)},
    {"allocating write over two tables", 4096, 1, 4 * MiB, 1, false, prep_none,
     sub_two_table_write,
     S(ST_BACKING_READ) | S(ST_DATA_WRITE) | S(ST_FSYNC) | S(ST_L2_WRITE) | S(ST_L1_WRITE)},
    {"partial write into a zero cluster", 4096, 1, 4 * MiB, 1, true, prep_zero_cluster,
     sub_partial_write, S(ST_L2_READ) | S(ST_DATA_WRITE) | S(ST_FSYNC) | S(ST_L2_WRITE)},
    {"in-place write, cold cache", 4096, 1, 4 * MiB, 0, true, prep_data, sub_inplace_write,
     S(ST_L2_READ) | S(ST_DATA_WRITE)},
    {"in-place FUA write", 4096, 1, 4 * MiB, 0, false, prep_data, sub_fua_write,
     S(ST_DATA_WRITE) | S(ST_FSYNC)},
    {"allocating FUA write, 64K clusters", 65536, 2, 16 * MiB, 0, true, prep_data,
     sub_fua_alloc_write, S(ST_L2_READ) | S(ST_HDR_WRITE) | S(ST_DATA_WRITE) | S(ST_L2_WRITE) |
     S(ST_FSYNC)},
    {"three queued allocating writes", 4096, 1, 4 * MiB, 1, false, prep_none,
     sub_two_queued_writes,
     S(ST_BACKING_READ) | S(ST_DATA_WRITE) | S(ST_FSYNC) | S(ST_L2_WRITE) | S(ST_L1_WRITE)},
    {"write zeroes, zero entries in a new table", 4096, 1, 4 * MiB, 0, false, prep_none,
     sub_wzero_whole, S(ST_L2_WRITE) | S(ST_FSYNC) | S(ST_L1_WRITE)},
    {"write zeroes over data, cold cache", 4096, 1, 4 * MiB, 0, true, prep_data, sub_wzero_whole,
     S(ST_L2_READ) | S(ST_DATA_WRITE)},
    {"write zeroes, partial over backing", 4096, 1, 4 * MiB, 1, true, prep_far_table,
     sub_wzero_partial, S(ST_L2_READ) | S(ST_BACKING_READ) | S(ST_DATA_WRITE) | S(ST_FSYNC) |
     S(ST_L2_WRITE)},
    {"write zeroes, NO_HOLE", 4096, 1, 4 * MiB, 0, true, prep_far_table, sub_wzero_nohole,
     S(ST_L2_READ) | S(ST_HDR_WRITE) | S(ST_DATA_WRITE) | S(ST_L2_WRITE)},
    {"discard, cold cache", 4096, 1, 4 * MiB, 0, true, prep_data, sub_discard,
     S(ST_L2_READ) | S(ST_PUNCH)},
    {"flush", 4096, 1, 4 * MiB, 0, false, prep_data, sub_flush, S(ST_FSYNC)},
    {"resize", 4096, 1, 4 * MiB, 0, false, prep_data, sub_resize, S(ST_HDR_WRITE) | S(ST_FSYNC)},
    {"block status through qed backing", 4096, 1, 4 * MiB, 2, true, prep_data, sub_bstatus,
     S(ST_L2_READ) | S(ST_BACKING_READ)},
    {"side-by-side allocating writes, no backing", 4096, 1, 4 * MiB, 0, false, prep_far_table,
     sub_side_by_side_writes, S(ST_DATA_WRITE) | S(ST_L2_WRITE)},
    {"side-by-side allocating writes, raw backing", 4096, 1, 4 * MiB, 1, true, prep_far_table,
     sub_side_by_side_writes,
     S(ST_L2_READ) | S(ST_BACKING_READ) | S(ST_DATA_WRITE) | S(ST_FSYNC) | S(ST_L2_WRITE)},
};

/* ---- one run ---- */

static void ctx_free(struct ctx *c)
{
    for (int i = 0; i < MAX_REQ; i++)
        free(c->wbuf[i]);
    free(c->oldc);
    free(c->newc);
    memset(c, 0, sizeof(*c));
}

/* Fresh files, the prepared state, and the old/new models. */
static void ctx_setup(struct ctx *c, const struct workload *w)
{
    memset(c, 0, sizeof(*c));
    c->w = w;
    c->size = w->size;
    c->oldc = calloc(1, w->size);
    cr_assert_not_null(c->oldc);
    unlink(tf_path(&F.tf, "a.qed"));
    unlink(tf_path(&F.tf, "b.raw"));
    unlink(tf_path(&F.tf, "b.qed"));
    if (w->backing == 1) {
        int fd = open(tf_path(&F.tf, "b.raw"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        cr_assert(fd >= 0);
        tf_fill(c->oldc, w->size, 621);
        cr_assert_eq(pwrite(fd, c->oldc, w->size, 0), (ssize_t)w->size);
        close(fd);
        tf_create(&F.tf, "a.qed", w->size, w->cs, w->ts, "b.raw", QED_BACKING_RAW);
    } else if (w->backing == 2) {
        tf_create(&F.tf, "b.qed", w->size, w->cs, w->ts, NULL, 0);
        c->img = tf_open(&F.tf, "b.qed", NULL);
        pre_write(c, 0, 12 * w->cs, 622);
        pre_wzero(c, 5 * w->cs, w->cs);
        cr_assert_eq(qed_close(c->img), 0);
        tf_create(&F.tf, "a.qed", w->size, w->cs, w->ts, "b.qed", QED_BACKING_QED);
    } else {
        tf_create(&F.tf, "a.qed", w->size, w->cs, w->ts, NULL, 0);
    }
    c->img = tf_open(&F.tf, "a.qed", NULL);
    w->prepare(c);
    if (w->cold) {
        cr_assert_eq(qed_close(c->img), 0);
        c->img = tf_open(&F.tf, "a.qed", NULL);
    }
    c->newc = malloc(w->size);
    memcpy(c->newc, c->oldc, w->size);
}

/* Reads in the batch must have returned the old contents. */
static void check_reads(struct ctx *c, const char *what)
{
    for (int i = 0; i < c->nreq; i++)
        if (c->rdlen[i] && c->d[i].ret == 0)
            cr_assert(memcmp(c->wbuf[i], c->oldc + c->roff[i], c->rdlen[i]) == 0,
                      "%s: a successful read returned wrong data", what);
}

/*
 * The image (open, or reopened) reads as the old contents outside the
 * changed ranges, and as old or new, cluster by cluster, inside them.
 * Requests that succeeded must have their new contents.
 */
static void check_old_or_new(struct ctx *c, qed_image *img, const char *what)
{
    const uint64_t cs = c->w->cs, size = c->size;
    uint8_t *got = malloc(size);

    cr_assert_eq(do_read(img, 0, got, size), 0, "%s: reading the image failed", what);
    for (uint64_t pos = 0; pos < size; pos += cs) {
        const uint8_t *g = got + pos, *o = c->oldc + pos, *n = c->newc + pos;
        cr_assert(memcmp(g, o, cs) == 0 || memcmp(g, n, cs) == 0,
                  "%s: cluster at %" PRIu64 " is neither its old nor its new contents", what, pos);
    }
    for (int i = 0; i < c->nreq; i++)
        if (c->rlen[i] && c->d[i].ret == 0)
            cr_assert(memcmp(got + c->roff[i], c->newc + c->roff[i], c->rlen[i]) == 0,
                      "%s: request %d succeeded but its range does not read as new", what, i);
    free(got);
}

static void check_exact(struct ctx *c, qed_image *img, const char *what)
{
    uint8_t *got = malloc(c->size);
    cr_assert_eq(do_read(img, 0, got, c->size), 0);
    for (uint64_t i = 0; i < c->size; i++)
        if (got[i] != c->newc[i]) {
            free(got);
            cr_assert_fail("%s: byte %" PRIu64 " differs from the expected contents", what, i);
        }
    free(got);
}

static void submit_and_wait(struct ctx *c)
{
    memset(c->d, 0, sizeof(c->d));
    memset(c->rdlen, 0, sizeof(c->rdlen));
    c->nreq = 0;
    for (int i = 0; i < MAX_REQ; i++) {
        free(c->wbuf[i]);
        c->wbuf[i] = NULL;
    }
    memcpy(c->newc, c->oldc, c->size);
    c->w->submit(c);
    tf_wait_idle(&F.tf, c->d, c->nreq);
}

/*
 * Dry run: count the I/Os, name each one in @names, and check that the
 * workload does every step it is meant to.  Returns the count.
 */
static unsigned dry_run(const struct workload *w, char names[][80])
{
    struct recorder *R = calloc(1, sizeof(*R));
    struct ctx c;
    unsigned seen = 0, n;

    ctx_setup(&c, w);
    qed_aio_test_set_observer(F.tf.aio, rec_observer, R);
    submit_and_wait(&c);
    qed_aio_test_set_observer(F.tf.aio, NULL, NULL);
    for (int i = 0; i < c.nreq; i++)
        cr_assert_eq(c.d[i].ret, 0, "%s: request %d fails without injection: %s", w->name, i,
                     strerror(-c.d[i].ret));
    check_reads(&c, w->name);
    check_old_or_new(&c, c.img, w->name);
    n = R->n;
    cr_assert(n > 0 && n < MAX_IOS, "%s: %u I/Os", w->name, n);
    /* Classification needs the final L1 table, which the open image has. */
    for (unsigned i = 0; i < n; i++) {
        enum step st = classify(c.img, &R->r[i]);
        seen |= S(st);
        snprintf(names[i], 80, "%s (%s at %" PRIu64 ")", step_names[st], op_name(R->r[i].op),
                 R->r[i].off);
        cr_log_info("%s: I/O %u: %s", w->name, i, names[i]);
    }
    for (int s = 0; s < ST_COUNT; s++)
        cr_assert(!(w->steps & S(s)) || (seen & S(s)), "%s: the workload never does a %s",
                  w->name, step_names[s]);
    cr_assert_eq(qed_close(c.img), 0);
    ctx_free(&c);
    free(R);
    return n;
}

/* Features of image @name as they are on disk. */
static uint64_t disk_features(const char *name)
{
    uint8_t h[64];
    int fd = open(tf_path(&F.tf, name), O_RDONLY);
    uint64_t f;

    cr_assert(fd >= 0);
    cr_assert_eq(pread(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
    close(fd);
    memcpy(&f, h + 16, sizeof(f));
    return le64toh(f);
}

/*
 * After a failed flush on the open image: a flush and a FUA write (of the
 * bytes already there, so the models stay right) fail with -EIO, the live
 * image reads as before, close fails and leaves NEED_CHECK on disk, and the
 * image checks and reopens (c->img is the new open).
 */
static void check_latched(struct ctx *c, const char *what)
{
    uint8_t b[4096];
    struct qed_check_result res;

    cr_assert_eq(do_flush(c->img), -EIO, "%s: a flush after the failed one did not fail", what);
    cr_assert_eq(do_read(c->img, 0, b, sizeof(b)), 0, "%s: read after the failed flush", what);
    cr_assert_eq(do_write(c->img, 0, b, sizeof(b), QED_REQ_FUA), -EIO,
                 "%s: a FUA write after the failed flush did not fail", what);
    cr_assert_eq(do_flush(c->img), -EIO, "%s: the second flush after the failed one", what);
    check_old_or_new(c, c->img, what);
    cr_assert_eq(qed_close(c->img), -EIO, "%s: close of a failed image did not fail", what);
    cr_assert(disk_features("a.qed") & QED_F_NEED_CHECK,
              "%s: NEED_CHECK is not set on disk after closing a failed image", what);
    res = tf_disk_check(&F.tf, "a.qed");
    cr_assert(res.corruptions == 0 && res.check_errors == 0,
              "%s: on-disk check after close: %" PRIu64 " corruptions", what, res.corruptions);
    c->img = tf_open(&F.tf, "a.qed", NULL);
    cr_assert_eq(qed_flush_error(c->img), 0, "%s: a new open starts without the latch", what);
    check_old_or_new(c, c->img, what);
}

/*
 * Run @w with its @k-th I/O failing.  With @reopen the image is closed right
 * after the failure, checked on disk and reopened before the follow-up
 * requests; without, the follow-up requests run on the same open image, so
 * that in-memory state the failure left behind (cached tables, L1 entries,
 * the allocation point) is what they use.
 */
static void fail_run(const struct workload *w, unsigned k, const char *stepname, bool reopen)
{
    struct ctx c;
    struct recorder *R = calloc(1, sizeof(*R));
    char what[256];
    struct qed_check_result res;
    int nfail = 0;

    snprintf(what, sizeof(what), "%s, I/O %u (%s) fails, %s", w->name, k, stepname,
             reopen ? "reopened" : "same open image");
    ctx_setup(&c, w);
    F.errors_logged = 0;
    qed_aio_test_set_observer(F.tf.aio, rec_observer, R);
    qed_aio_test_fail_nth(F.tf.aio, ALL_OPS, k, -EIO);
    submit_and_wait(&c);
    qed_aio_test_fail_nth(F.tf.aio, 0, 0, 0);
    qed_aio_test_set_observer(F.tf.aio, NULL, NULL);
    cr_assert(R->failed_seen, "%s: the injected failure never fired", what);

    /* The request gets the error, and the cause is logged. */
    for (int i = 0; i < c.nreq; i++) {
        cr_assert(c.d[i].ret == 0 || c.d[i].ret == -EIO, "%s: request %d returned %d", what, i,
                  c.d[i].ret);
        nfail += c.d[i].ret == -EIO;
    }
    cr_assert_geq(nfail, 1, "%s: no request reported the error", what);
    cr_assert_geq(F.errors_logged, 1, "%s: the failed I/O was not logged", what);
    check_reads(&c, what);

    /* Metadata stays consistent in memory and on disk. */
    check_old_or_new(&c, c.img, what);
    res = (struct qed_check_result){0};
    cr_assert_eq(qed_check(c.img, false, &res), 0);
    cr_assert(res.corruptions == 0 && res.check_errors == 0, "%s: live check: %" PRIu64
              " corruptions", what, res.corruptions);
    cr_assert_eq(qed_flush_error(c.img) != 0, R->failed.op == QED_IO_FSYNC,
                 "%s: flush latch %d after a failed %s", what, qed_flush_error(c.img),
                 op_name(R->failed.op));
    if (R->failed.op == QED_IO_FSYNC) {
        /* A failed flush is not forgotten (whichever request's flush it
         * was): later flushes and FUA writes fail, the close reports it and
         * leaves NEED_CHECK on disk.  The follow-up runs on a new open. */
        check_latched(&c, what);
    } else if (reopen) {
        cr_assert_eq(qed_close(c.img), 0, "%s: close failed", what);
        res = tf_disk_check(&F.tf, "a.qed");
        cr_assert(res.corruptions == 0 && res.check_errors == 0,
                  "%s: on-disk check after close: %" PRIu64 " corruptions", what,
                  res.corruptions);
        c.img = tf_open(&F.tf, "a.qed", NULL);
        check_old_or_new(&c, c.img, what);
    }

    /* Subsequent requests work: the same request again, and more. */
    if (w->submit == sub_resize)
        cr_assert(qed_size(c.img) == w->size || qed_size(c.img) == w->size + MiB,
                  "%s: size %" PRIu64 " after a failed resize", what, qed_size(c.img));
    submit_and_wait(&c);
    for (int i = 0; i < c.nreq; i++)
        cr_assert_eq(c.d[i].ret, 0, "%s: retry of request %d: %s", what, i, strerror(-c.d[i].ret));
    check_reads(&c, what);
    if (w->submit == sub_resize)
        cr_assert_eq(qed_size(c.img), c.new_size);
    check_exact(&c, c.img, what);
    {
        uint8_t b[4096];
        uint64_t off = c.size - 2 * c.w->cs + 100;
        tf_fill(b, sizeof(b), 631);
        cr_assert_eq(do_write(c.img, off, b, sizeof(b), 0), 0, "%s: a later write failed", what);
        memcpy(c.newc + off, b, sizeof(b));
        /* and an allocation next to the failed request's range */
        off = 12 * c.w->cs + 300;
        tf_fill(b, sizeof(b), 632);
        cr_assert_eq(do_write(c.img, off, b, sizeof(b), 0), 0, "%s: a later write failed", what);
        memcpy(c.newc + off, b, sizeof(b));
        cr_assert_eq(do_flush(c.img), 0, "%s: a later flush failed", what);
    }
    check_exact(&c, c.img, what);
    res = (struct qed_check_result){0};
    cr_assert_eq(qed_check(c.img, false, &res), 0);
    cr_assert(res.corruptions == 0 && res.check_errors == 0, "%s: live check after the retry: %"
              PRIu64 " corruptions", what, res.corruptions);
    cr_assert_eq(qed_close(c.img), 0);
    res = tf_disk_check(&F.tf, "a.qed");
    cr_assert(res.corruptions == 0 && res.check_errors == 0, "%s: final check: %" PRIu64
              " corruptions", what, res.corruptions);
    /* What the image says on disk is what was read while it was open. */
    c.img = tf_open(&F.tf, "a.qed", NULL);
    check_exact(&c, c.img, what);
    cr_assert_eq(qed_close(c.img), 0);
    ctx_free(&c);
    free(R);
}

static void run_workload(const struct workload *w)
{
    static char names[MAX_IOS][80];
    unsigned n = dry_run(w, names);

    for (unsigned k = 0; k < n; k++) {
        fail_run(w, k, names[k], true);
        fail_run(w, k, names[k], false);
    }
}

#define WORKLOAD_TEST(idx, tname)                                                                  \
    Test(inject, tname)                                                                            \
    {                                                                                              \
        run_workload(&workloads[idx]);                                                             \
    }

WORKLOAD_TEST(0, read_cold_cache)
WORKLOAD_TEST(1, read_through_raw_backing)
WORKLOAD_TEST(2, read_through_qed_backing)
WORKLOAD_TEST(3, alloc_write_new_table_no_backing)
WORKLOAD_TEST(4, alloc_write_cached_table_no_backing)
WORKLOAD_TEST(5, alloc_write_cow_raw_backing)
WORKLOAD_TEST(6, alloc_write_cow_qed_backing)
WORKLOAD_TEST(7, alloc_write_two_tables)
WORKLOAD_TEST(8, partial_write_into_zero_cluster)
WORKLOAD_TEST(9, inplace_write_cold_cache)
WORKLOAD_TEST(10, inplace_fua_write)
WORKLOAD_TEST(11, alloc_fua_write_64k)
WORKLOAD_TEST(12, three_queued_alloc_writes)
WORKLOAD_TEST(13, wzero_zero_entries_new_table)
WORKLOAD_TEST(14, wzero_over_data)
WORKLOAD_TEST(15, wzero_partial_over_backing)
WORKLOAD_TEST(16, wzero_no_hole)
WORKLOAD_TEST(17, discard_punch)
WORKLOAD_TEST(18, flush)
WORKLOAD_TEST(19, resize)
WORKLOAD_TEST(20, block_status_qed_backing)
WORKLOAD_TEST(21, side_by_side_alloc_writes_no_backing)
WORKLOAD_TEST(22, side_by_side_alloc_writes_raw_backing)

/* A failed L2 load fails every request waiting for it; the next one reads it again. */
Test(inject, failed_table_load_fails_all_waiters)
{
    uint8_t buf[4 * 4096], got[4][4096];
    struct tf_done d[4] = {{0}};
    qed_image *img;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = tf_open(&F.tf, "a.qed", NULL);
    tf_fill(buf, sizeof(buf), 641);
    cr_assert_eq(do_write(img, 0, buf, sizeof(buf), 0), 0);
    cr_assert_eq(qed_close(img), 0);
    img = tf_open(&F.tf, "a.qed", NULL);
    F.errors_logged = 0;
    qed_aio_test_fail_nth(F.tf.aio, 1u << QED_IO_READ, 0, -EIO);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(TF_SUBMIT(qed_read(img, (uint64_t)i * 4096, got[i], 4096, tf_done_cb, &d[i])),
                     0);
    tf_wait_idle(&F.tf, d, 4);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(d[i].ret, -EIO, "waiter %d got %d", i, d[i].ret);
    cr_assert_geq(F.errors_logged, 1);
    /* forgotten, not cached as garbage: the next read loads it again */
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(do_read(img, (uint64_t)i * 4096, got[i], 4096), 0);
        cr_assert(memcmp(got[i], buf + i * 4096, 4096) == 0, "read %d after the failure", i);
    }
    /* and a write into the table works */
    cr_assert_eq(do_write(img, 4 * 4096, buf, 4096, 0), 0);
    cr_assert_eq(qed_close(img), 0);
    struct qed_check_result res = tf_disk_check(&F.tf, "a.qed");
    cr_assert(res.corruptions == 0 && res.leaks == 0);
}

/*
 * An allocating write W1 has written its data; its last metadata write (the
 * L2 entries of an existing table, or the L1 entry of a new table) is held.
 * A second write W2 to the same cluster is submitted: if the library already
 * shows W1's mapping, W2 writes in place and may complete; otherwise it
 * waits for W1.  Then W1's metadata write fails.  If W2 reported success,
 * its data must still read back, before and after reopening: a completed
 * write may not vanish because another request failed.  (libqed before
 * commit a9eba92 published the entries before writing them, and lost W2.)
 */
static void racing_inplace_write(bool new_table)
{
    uint8_t a[4096], b[512], got[4096];
    struct tf_done d1 = {0}, d2 = {0};
    qed_image *img;
    const char *step = new_table ? "L1 update" : "L2 update";

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = tf_open(&F.tf, "a.qed", NULL);
    if (!new_table) {
        /* the table exists and is cached; NEED_CHECK is already set */
        tf_fill(a, sizeof(a), 651);
        cr_assert_eq(do_write(img, 40 * 4096, a, sizeof(a), 0), 0);
    }
    qed_aio_test_set_auto(F.tf.aio, false);
    tf_fill(a, sizeof(a), 652);
    tf_fill(b, sizeof(b), 653);
    cr_assert_eq(TF_SUBMIT(qed_write(img, 4096, a, sizeof(a), 0, tf_done_cb, &d1)), 0);
    /* run W1 up to its last metadata write: complete I/Os until the one
     * pending is the L2 update (existing table) or the L1 update (new table) */
    for (unsigned t = 0;; t++) {
        cr_assert(t < 100 && !d1.calls, "W1 never reached its %s", step);
        ev_run(F.tf.loop, EVRUN_NOWAIT);
        cr_assert_eq(qed_aio_test_pending(F.tf.aio), 1);
        struct qed_io *io = qed_aio_test_peek(F.tf.aio, 0);
        if (io->op == QED_IO_WRITE &&
            (new_table ? io->offset == img->h.l1_table_offset + 0
                       : io->offset >= le64toh(img->l1[0]) &&
                             io->offset < le64toh(img->l1[0]) + img->g.table_bytes))
            break;
        cr_assert_eq(qed_aio_test_complete(F.tf.aio, 0, 0), 0);
    }
    /* W2 over the cluster W1 is mapping.  If it sees the mapping, it writes
     * in place and may complete now; otherwise it waits for W1.  Complete
     * every I/O except W1's held metadata write. */
    struct qed_io *held = qed_aio_test_peek(F.tf.aio, 0);
    cr_assert_eq(TF_SUBMIT(qed_write(img, 4096, b, sizeof(b), 0, tf_done_cb, &d2)), 0);
    for (unsigned t = 0; t < 1000 && !d2.calls; t++) {
        ev_run(F.tf.loop, EVRUN_NOWAIT);
        size_t n = qed_aio_test_pending(F.tf.aio);
        for (size_t i = n; i-- > 0;)
            if (qed_aio_test_peek(F.tf.aio, i) != held) {
                cr_assert_eq(qed_aio_test_complete(F.tf.aio, i, 0), 0);
                break;
            }
    }
    /* now W1's metadata write fails; then everything runs to the end */
    bool found = false;
    for (size_t i = 0; i < qed_aio_test_pending(F.tf.aio); i++)
        if (qed_aio_test_peek(F.tf.aio, i) == held) {
            cr_assert_eq(qed_aio_test_complete(F.tf.aio, i, -EIO), 0);
            found = true;
            break;
        }
    cr_assert(found, "W1's %s is no longer held", step);
    qed_aio_test_set_auto(F.tf.aio, true);
    for (unsigned t = 0; t < 100000 && !(d1.calls && d2.calls); t++)
        ev_run(F.tf.loop, EVRUN_ONCE);
    cr_assert(d1.calls && d2.calls, "the writes never completed");
    cr_assert_eq(d1.ret, -EIO);
    cr_assert(d2.ret == 0 || d2.ret == -EIO, "W2: %d", d2.ret);

    if (d2.ret == 0) {
        cr_assert_eq(do_read(img, 4096, got, sizeof(got)), 0);
        cr_assert(memcmp(got, b, sizeof(b)) == 0,
                  "a write that completed successfully (in place, while another write's %s "
                  "was in flight) no longer reads back after that %s failed",
                  step, step);
        cr_assert_eq(qed_close(img), 0);
        img = tf_open(&F.tf, "a.qed", NULL);
        cr_assert_eq(do_read(img, 4096, got, sizeof(got)), 0);
        cr_assert(memcmp(got, b, sizeof(b)) == 0, "W2's data is lost after reopening");
    }
    cr_assert_eq(qed_close(img), 0);
    struct qed_check_result res = tf_disk_check(&F.tf, "a.qed");
    cr_assert_eq(res.corruptions, 0);
}

Test(inject, inplace_write_racing_failed_l2_update_is_not_lost)
{
    racing_inplace_write(false);
}

Test(inject, inplace_write_racing_failed_l1_update_is_not_lost)
{
    racing_inplace_write(true);
}

Test(inject, every_workload_has_a_test)
{
    cr_assert_eq(sizeof(workloads) / sizeof(workloads[0]), 23);
}
