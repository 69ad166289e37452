/*
 * test-groupcommit.c - group commit of allocating writes (lib/engine/group-commit.c).
 *
 * Images with 4 KiB clusters and table size 1: one L2 table (4 KiB, 512
 * entries) maps 2 MiB.  A warm-up write creates the tables the test needs,
 * so that the allocating writes that follow run side by side and reach their
 * L2 update together.  The test engine's observer counts the writes that
 * land in an L2 table and the flushes.
 *
 *   - N concurrent allocating writes into one table make one batch and one
 *     L2 write, and read back (live, and after close and reopen);
 *   - a batch spread over two tables writes each table once; a write
 *     needing a new table, submitted among them, still works;
 *   - with a backing file, a batch flushes once (rule 3) before its L2 write;
 *   - while a batch's L2 write is in flight, runs that finish their data
 *     queue, are not acknowledged, and go together in the next batch, which
 *     starts only when the first completes;
 *   - a failing L2 write fails every write of its stretch of the table (a
 *     failing batch flush or file extension: of the batch), the image checks
 *     clean (leaks allowed), the old contents stay, and the writes succeed
 *     when retried (after a failed flush: on a new open);
 *   - when one table's L2 write fails in a batch spanning two tables, the
 *     writers of the other table succeed, and both ranges read the same
 *     from the cache and after a reopen (new data, old data).
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <ev.h>

#include "fixture.h"
#include "qed-io-test.h"
#include "qed-image.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define IMG_PATH tf_path(&F.tf, "a.qed")     /* the image */
#define BACKING_PATH tf_path(&F.tf, "b.raw") /* its raw backing file, when it has one */
#define CS (4 * KiB)
#define REGION (2 * MiB) /* guest bytes one L2 table maps */
#define IMG_SIZE (8 * MiB)
#define NW 16

struct fixture {
    struct test_fixture tf;
    qed_image *img;
    /* observer counts */
    unsigned l2_writes, flushes, data_writes;
    uint64_t data_bytes;
    int l2_write_err;
};

static struct fixture F;

static void setup(void)
{
    memset(&F, 0, sizeof(F));
    tf_setup(&F.tf, "gc", QED_AIO_TEST);
    qed_set_log(tf_quiet_log, NULL, QED_LOG_ERROR);
}

static void teardown(void)
{
    tf_close_left_open(&F.tf, &F.img);
    tf_teardown(&F.tf);
}

TestSuite(groupcommit, .init = setup, .fini = teardown, .timeout = 60);

/* ---- helpers ---- */

/* Is @off inside one of the image's L2 tables? */
static bool in_l2_table(uint64_t off, uint64_t len)
{
    const struct qed_image *img = F.img;

    for (uint64_t i = 0; i < img->g.table_entries; i++) {
        uint64_t t = le64toh(img->l1[i]);
        if (t && off >= t && off + len <= t + img->g.table_bytes)
            return true;
    }
    return false;
}

static bool is_l2_write(const struct qed_io *io)
{
    /* A whole new table is written with its full size; entry updates are
     * smaller.  Only entry updates are counted. */
    return io->op == QED_IO_WRITE && io->length < F.img->g.table_bytes &&
           in_l2_table(io->offset, io->length);
}

static void observer(struct qed_io *io, int err, void *opaque)
{
    (void)opaque;
    if (io->op == QED_IO_FSYNC)
        F.flushes++;
    else if (is_l2_write(io)) {
        F.l2_writes++;
        if (err < 0)
            F.l2_write_err = err;
    } else if (io->op == QED_IO_WRITE) {
        F.data_writes++;
        F.data_bytes += io->length;
    }
}

static void reset_counts(void)
{
    F.l2_writes = F.flushes = F.data_writes = 0;
    F.data_bytes = 0;
    F.l2_write_err = 0;
}

static void make_image(bool backing)
{
    /* A long clean delay: NEED_CHECK stays set, so writes into existing
     * tables run side by side instead of waiting for an exclusive header
     * update. */
    struct qed_open_opts oo = {.clean_delay_ms = 600000};
    char err[256];

    if (backing)
        tf_raw_pattern(BACKING_PATH, IMG_SIZE);
    tf_create(&F.tf, "a.qed", IMG_SIZE, CS, 1, backing ? "b.raw" : NULL, QED_BACKING_RAW);
    cr_assert_eq(qed_open(F.tf.aio, IMG_PATH, &oo, &F.img, err, sizeof(err)), 0, "open: %s", err);
    qed_aio_test_set_observer(F.tf.aio, observer, NULL);
}

static void reopen(void)
{
    struct qed_open_opts oo = {.clean_delay_ms = 600000};
    char err[256];

    qed_aio_test_set_observer(F.tf.aio, NULL, NULL);
    qed_aio_test_set_auto(F.tf.aio, true);
    /* A failed flush is latched until the image is closed: close says so. */
    int want = qed_flush_error(F.img) ? -EIO : 0;
    int r = qed_close(F.img);
    F.img = NULL;
    cr_assert_eq(r, want, "close: %d, expected %d", r, want);
    cr_assert_eq(qed_open(F.tf.aio, IMG_PATH, &oo, &F.img, err, sizeof(err)), 0, "reopen: %s", err);
    qed_aio_test_set_observer(F.tf.aio, observer, NULL);
}

/* Fill @buf with the pattern of write @id. */
static void pattern(uint8_t *buf, size_t len, unsigned id)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(id * 37 + 1 + (i >> 9) * 3);
}

/* What the guest reads where nothing was written. */
static uint8_t initial_byte(bool backing, uint64_t pos)
{
    return backing ? tf_raw_byte(pos) : 0;
}

/* Create the L2 tables of regions @mask (bit i: region i) with one write at
 * each region's last cluster; sets NEED_CHECK on the way. */
static void warm_up(unsigned mask)
{
    uint8_t buf[512];

    memset(buf, 0x77, sizeof(buf));
    for (unsigned i = 0; i < IMG_SIZE / REGION; i++)
        if (mask & (1u << i))
            cr_assert_eq(qed_sync_write(F.img, (i + 1) * REGION - CS, buf, sizeof(buf), 0), 0);
}

struct wr {
    uint64_t off;
    size_t len;
    uint8_t *buf;
    struct tf_done d;
};

static void submit_all(struct wr *w, int n)
{
    for (int i = 0; i < n; i++) {
        w[i].buf = malloc(w[i].len);
        cr_assert_not_null(w[i].buf);
        pattern(w[i].buf, w[i].len, (unsigned)i);
        memset(&w[i].d, 0, sizeof(w[i].d));
        cr_assert_eq(qed_write(F.img, w[i].off, w[i].buf, w[i].len, 0, tf_done_cb, &w[i].d), 0);
    }
}

/* Each write reads back as written (@new) or as before (!@new), and the rest
 * of its clusters as before. */
static void verify(struct wr *w, int n, bool backing, bool new)
{
    uint8_t *buf = malloc(2 * CS);

    cr_assert_not_null(buf);
    qed_aio_test_set_auto(F.tf.aio, true);
    for (int i = 0; i < n; i++) {
        uint64_t c0 = w[i].off & ~(CS - 1);
        uint64_t clen = ((w[i].off + w[i].len + CS - 1) & ~(CS - 1)) - c0;
        cr_assert_leq(clen, 2 * CS);
        cr_assert_eq(qed_sync_read(F.img, c0, buf, clen), 0);
        for (uint64_t j = 0; j < clen; j++) {
            uint64_t pos = c0 + j;
            uint8_t want = initial_byte(backing, pos);
            if (new && pos >= w[i].off && pos < w[i].off + w[i].len)
                want = w[i].buf[pos - w[i].off];
            cr_assert_eq(buf[j], want, "write %d (%" PRIu64 "+%zu): byte at %" PRIu64
                         " is 0x%02x, expected 0x%02x", i, w[i].off, w[i].len, pos, buf[j], want);
        }
    }
    free(buf);
}

static void check_clean(bool leaks_ok)
{
    struct qed_check_result res;

    cr_assert_eq(qed_check(F.img, false, &res), 0);
    cr_assert_eq(res.corruptions, 0, "qed_check: %" PRIu64 " corruptions", res.corruptions);
    cr_assert_eq(res.check_errors, 0);
    if (!leaks_ok)
        cr_assert_eq(res.leaks, 0, "qed_check: %" PRIu64 " leaks", res.leaks);
}

static void free_all(struct wr *w, int n)
{
    for (int i = 0; i < n; i++)
        free(w[i].buf);
}

/* NW partial-cluster writes into region @reg, every other cluster. */
static void plan_region(struct wr *w, int n, unsigned reg, uint64_t first_cluster)
{
    for (int i = 0; i < n; i++) {
        w[i].off = reg * REGION + (first_cluster + 2 * (uint64_t)i) * CS + 512 * (uint64_t)(i % 7);
        w[i].len = 512 * (1 + (size_t)(i % 5));
    }
}

/* ---- tests ---- */

Test(groupcommit, one_table_one_l2_write)
{
    struct wr w[NW];

    make_image(false);
    warm_up(1);
    reset_counts();
    uint64_t b0 = F.img->gc_batches;
    plan_region(w, NW, 0, 3);
    submit_all(w, NW);
    for (int i = 0; i < NW; i++) {
        tf_wait(&F.tf, &w[i].d, 1);
        cr_assert_eq(w[i].d.ret, 0, "write %d: %s", i, strerror(-w[i].d.ret));
    }
    /* Sparse allocation: each write writes only its data, and the batch
     * writes one sector of zeros to extend the file over its clusters. */
    cr_assert_eq(F.data_writes, NW + 1, "one data write per allocating write, one extension");
    cr_assert_lt(F.data_bytes, NW * CS, "%" PRIu64 " bytes written: the zero parts were written",
                 F.data_bytes);
    cr_assert_lt(F.l2_writes, NW, "%u L2 writes for %d allocating writes", F.l2_writes, NW);
    cr_assert_eq(F.l2_writes, 1, "one batch, one table: %u L2 writes", F.l2_writes);
    cr_assert_eq(F.img->gc_batches - b0, 1);
    cr_assert_geq(F.img->gc_max_batch, NW);
    cr_assert_eq(F.flushes, 0, "no backing file: no flush is needed");
    verify(w, NW, false, true);
    check_clean(false);
    reopen();
    verify(w, NW, false, true);
    check_clean(false);
    free_all(w, NW);
}

Test(groupcommit, two_tables_and_a_new_table)
{
    struct wr w[2 * NW + 1];
    int n = 0;

    make_image(false);
    warm_up(1 | 2); /* regions 0 and 1 have tables, 2 and 3 do not */
    reset_counts();
    for (int i = 0; i < NW; i++) {
        /* Interleaved: table 0, table 1, table 0, ... and, in the middle, a
         * write into region 2, which needs a new table. */
        w[n].off = (uint64_t)(i % 2) * REGION + (5 + 3 * (uint64_t)i) * CS + 1024;
        w[n++].len = 1536;
        if (i == NW / 2) {
            w[n].off = 2 * REGION + 40 * CS + 512;
            w[n++].len = CS; /* across two clusters */
        }
    }
    for (int i = 0; i < NW; i++) { /* whole clusters, and two clusters at once */
        w[n].off = (uint64_t)(i % 2) * REGION + (200 + 3 * (uint64_t)i) * CS;
        w[n++].len = (1 + (size_t)(i % 2)) * CS;
    }
    submit_all(w, n);
    for (int i = 0; i < n; i++) {
        tf_wait(&F.tf, &w[i].d, 1);
        cr_assert_eq(w[i].d.ret, 0, "write %d: %s", i, strerror(-w[i].d.ret));
    }
    /* 2*NW runs into existing tables; the new table is written whole (not
     * counted) and its entry update is its own. */
    cr_assert_lt(F.l2_writes, 2 * NW / 2, "%u L2 entry writes for %d runs into two tables",
                 F.l2_writes, 2 * NW);
    cr_assert_geq(F.img->gc_max_batch, 2);
    cr_assert_neq(le64toh(F.img->l1[2]), 0, "region 2 got its table");
    verify(w, n, false, true);
    check_clean(false);
    reopen();
    verify(w, n, false, true);
    check_clean(false);
    free_all(w, n);
}

Test(groupcommit, backing_one_flush_per_batch)
{
    struct wr w[NW];

    make_image(true);
    warm_up(1);
    reset_counts();
    plan_region(w, NW, 0, 7);
    submit_all(w, NW);
    for (int i = 0; i < NW; i++) {
        tf_wait(&F.tf, &w[i].d, 1);
        cr_assert_eq(w[i].d.ret, 0, "write %d: %s", i, strerror(-w[i].d.ret));
    }
    cr_assert_eq(F.l2_writes, 1, "%u L2 writes", F.l2_writes);
    cr_assert_eq(F.flushes, 1, "rule 3: one flush for the batch, got %u", F.flushes);
    verify(w, NW, true, true);
    check_clean(false);
    reopen();
    verify(w, NW, true, true);
    free_all(w, NW);
}

/* Index of the held I/O that is an L2 entry write, or -1. */
static long held_l2_write(void)
{
    for (size_t i = 0; i < qed_aio_test_pending(F.tf.aio); i++)
        if (is_l2_write(qed_aio_test_peek(F.tf.aio, i)))
            return (long)i;
    return -1;
}

/* Complete every held I/O except L2 entry writes; run the deferred calls. */
static void complete_non_l2(void)
{
    for (int round = 0; round < 100; round++) {
        bool any = false;
        ev_run(F.tf.loop, EVRUN_NOWAIT);
        for (size_t i = 0; i < qed_aio_test_pending(F.tf.aio);) {
            if (is_l2_write(qed_aio_test_peek(F.tf.aio, i))) {
                i++;
                continue;
            }
            qed_aio_test_complete(F.tf.aio, i, 0);
            any = true;
        }
        ev_run(F.tf.loop, EVRUN_NOWAIT);
        if (!any)
            return;
    }
}

Test(groupcommit, writes_queue_behind_batch_in_flight)
{
    struct wr w[NW];
    long k;

    make_image(true);
    warm_up(1);
    reset_counts();
    qed_aio_test_set_auto(F.tf.aio, false);
    plan_region(w, NW, 0, 11);

    /* The first write alone: its batch's L2 write is held. */
    submit_all(w, 1);
    complete_non_l2();
    k = held_l2_write();
    cr_assert_geq(k, 0, "the first batch's L2 write is in flight");
    cr_assert_eq(w[0].d.calls, 0, "not acknowledged before its L2 write");

    /* The others write their data meanwhile, and wait. */
    submit_all(w + 1, NW - 1);
    complete_non_l2();
    cr_assert_eq(qed_aio_test_pending(F.tf.aio), 1, "only the first L2 write is held");
    for (int i = 0; i < NW; i++)
        cr_assert_eq(w[i].d.calls, 0, "write %d acknowledged before its batch", i);
    cr_assert_eq(F.l2_writes, 0);

    /* First batch done: the first write is acknowledged, the others start
     * their batch (one flush, then one L2 write), still unacknowledged. */
    qed_aio_test_complete(F.tf.aio, (size_t)k, 0);
    ev_run(F.tf.loop, EVRUN_NOWAIT);
    cr_assert_eq(w[0].d.calls, 1);
    cr_assert_eq(w[0].d.ret, 0);
    unsigned flushes = F.flushes;
    complete_non_l2();
    cr_assert_eq(F.flushes, flushes + 1, "one flush for the second batch");
    k = held_l2_write();
    cr_assert_geq(k, 0);
    cr_assert_eq(qed_aio_test_pending(F.tf.aio), 1, "one L2 write for %d writes", NW - 1);
    for (int i = 1; i < NW; i++)
        cr_assert_eq(w[i].d.calls, 0, "write %d acknowledged before its L2 write", i);
    qed_aio_test_complete(F.tf.aio, (size_t)k, 0);
    ev_run(F.tf.loop, EVRUN_NOWAIT);
    for (int i = 0; i < NW; i++) {
        cr_assert_eq(w[i].d.calls, 1, "write %d", i);
        cr_assert_eq(w[i].d.ret, 0);
    }
    cr_assert_eq(F.img->gc_max_batch, NW - 1);
    verify(w, NW, true, true);
    check_clean(false);
    free_all(w, NW);
}

/* Run NW allocating writes as one batch with the (@nth)-th @op I/O failing. */
static void batch_failure(bool backing, unsigned op_mask, unsigned nth)
{
    struct wr w[NW];
    uint8_t one[512];

    make_image(backing);
    warm_up(1);
    reset_counts();
    plan_region(w, NW, 0, 21);
    qed_aio_test_fail_nth(F.tf.aio, op_mask, nth, -EIO);
    submit_all(w, NW);
    for (int i = 0; i < NW; i++) {
        tf_wait(&F.tf, &w[i].d, 1);
        cr_assert_eq(w[i].d.ret, -EIO, "write %d of the failed batch: %d", i, w[i].d.ret);
    }
    if (op_mask == (1u << QED_IO_WRITE) && nth == NW + (backing ? 0 : 1))
        cr_assert_eq(F.l2_write_err, -EIO, "the failed I/O is the batch's L2 write");
    /* A failed flush is latched (image.c): later flushes fail too. */
    cr_assert_eq(qed_flush_error(F.img) != 0, op_mask == (1u << QED_IO_FSYNC));
    if (op_mask == (1u << QED_IO_FSYNC))
        cr_assert_eq(qed_sync_flush(F.img), -EIO, "a flush after the batch's failed flush");
    /* The old contents, live and on disk; only leaks. */
    verify(w, NW, backing, false);
    check_clean(true);
    reopen();
    verify(w, NW, backing, false);
    check_clean(true);

    /* The image works: the same writes succeed now, and one more elsewhere. */
    free_all(w, NW);
    submit_all(w, NW);
    for (int i = 0; i < NW; i++) {
        tf_wait(&F.tf, &w[i].d, 1);
        cr_assert_eq(w[i].d.ret, 0, "retried write %d: %s", i, strerror(-w[i].d.ret));
    }
    memset(one, 0x5a, sizeof(one));
    cr_assert_eq(qed_sync_write(F.img, REGION + 9 * CS, one, sizeof(one), 0), 0);
    verify(w, NW, backing, true);
    reopen();
    verify(w, NW, backing, true);
    check_clean(true);
    free_all(w, NW);
}

Test(groupcommit, l2_write_error_fails_whole_batch)
{
    /* NW sparse data writes, then the batch's extension, then its L2 write. */
    batch_failure(false, 1u << QED_IO_WRITE, NW + 1);
}

Test(groupcommit, extension_error_fails_whole_batch)
{
    batch_failure(false, 1u << QED_IO_WRITE, NW);
}

Test(groupcommit, l2_write_error_fails_whole_batch_backing)
{
    /* Copy-on-write from the backing file: whole clusters, no extension. */
    batch_failure(true, 1u << QED_IO_WRITE, NW);
}

Test(groupcommit, batch_flush_error_fails_whole_batch)
{
    /* With a backing file the batch's first flush is its rule 3 flush. */
    batch_failure(true, 1u << QED_IO_FSYNC, 0);
}

/*
 * One batch, two tables: X's L2 write succeeds, Y's fails.  Only Y's writer
 * fails; X's entries are published, so what X's range reads from the cache
 * is what the disk says (after a reopen), and Y's range stays old in both.
 */
Test(groupcommit, failed_table_fails_only_its_writers)
{
    struct wr w[2] = {{.off = 6 * CS + 512, .len = 1024}, {.off = REGION + 6 * CS + 1024,
                                                             .len = 2048}};
    uint64_t y_table;
    bool failed_y = false, wrote_x = false;

    make_image(false);
    warm_up(1 | 2);
    y_table = le64toh(F.img->l1[1]);
    cr_assert_neq(y_table, 0);
    reset_counts();
    qed_aio_test_set_auto(F.tf.aio, false);
    submit_all(w, 2);
    complete_non_l2();
    cr_assert_eq(qed_aio_test_pending(F.tf.aio), 2, "one batch: one L2 write per table in flight");
    while (qed_aio_test_pending(F.tf.aio)) {
        struct qed_io *io = qed_aio_test_peek(F.tf.aio, 0);
        bool is_y = io->offset >= y_table && io->offset < y_table + F.img->g.table_bytes;
        cr_assert(is_l2_write(io));
        failed_y |= is_y;
        wrote_x |= !is_y;
        qed_aio_test_complete(F.tf.aio, 0, is_y ? -EIO : 0);
    }
    cr_assert(failed_y && wrote_x);
    tf_wait(&F.tf, &w[0].d, 1);
    tf_wait(&F.tf, &w[1].d, 1);
    cr_assert_eq(w[0].d.ret, 0, "X's write, whose table was written: %s",
                 strerror(-w[0].d.ret));
    cr_assert_eq(w[1].d.ret, -EIO, "Y's write, whose table write failed");
    /* From the cache, then from disk. */
    verify(w, 1, false, true);
    verify(w + 1, 1, false, false);
    check_clean(true);
    reopen();
    verify(w, 1, false, true);
    verify(w + 1, 1, false, false);
    check_clean(true);
    /* Y's write succeeds when retried. */
    w[1].d = (struct tf_done){0};
    cr_assert_eq(qed_write(F.img, w[1].off, w[1].buf, w[1].len, 0, tf_done_cb, &w[1].d), 0);
    tf_wait(&F.tf, &w[1].d, 1);
    cr_assert_eq(w[1].d.ret, 0);
    verify(w, 2, false, true);
    reopen();
    verify(w, 2, false, true);
    free_all(w, 2);
}

/*
 * Stale bytes past the last whole cluster at open (a torn extension left by
 * a crash, say) are not fresh: the allocation that reuses them writes its
 * whole cluster; later ones are sparse.  The file ends on a cluster boundary
 * after close, and everything unwritten reads as zeros.
 */
Test(groupcommit, stale_tail_is_not_fresh)
{
    struct wr w[NW];
    uint8_t junk[CS + 3000];
    struct stat st;
    FILE *f;

    make_image(false);
    warm_up(1);
    qed_aio_test_set_observer(F.tf.aio, NULL, NULL);
    cr_assert_eq(qed_close(F.img), 0);
    F.img = NULL;
    memset(junk, 0xee, sizeof(junk));
    f = fopen(IMG_PATH, "ab");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(junk, 1, sizeof(junk), f), sizeof(junk));
    fclose(f);
    {
        struct qed_open_opts oo = {.clean_delay_ms = 600000};
        char err[256];
        cr_assert_eq(qed_open(F.tf.aio, IMG_PATH, &oo, &F.img, err, sizeof(err)), 0, "%s", err);
        qed_aio_test_set_observer(F.tf.aio, observer, NULL);
    }
    reset_counts();
    plan_region(w, NW, 0, 31);
    submit_all(w, NW);
    for (int i = 0; i < NW; i++) {
        tf_wait(&F.tf, &w[i].d, 1);
        cr_assert_eq(w[i].d.ret, 0, "write %d: %s", i, strerror(-w[i].d.ret));
    }
    cr_assert_geq(F.data_bytes, CS, "the stale cluster was written whole");
    cr_assert_lt(F.data_bytes, NW * CS, "the fresh clusters were not");
    verify(w, NW, false, true);
    check_clean(true); /* the whole stale cluster before it leaks */
    reopen();
    verify(w, NW, false, true);
    qed_aio_test_set_observer(F.tf.aio, NULL, NULL);
    cr_assert_eq(qed_close(F.img), 0);
    F.img = NULL;
    cr_assert_eq(stat(IMG_PATH, &st), 0);
    cr_assert_eq(st.st_size % CS, 0, "file size %lld is not whole clusters", (long long)st.st_size);
    free_all(w, NW);
}
