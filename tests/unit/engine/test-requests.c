/*
 * test-requests.c - unit tests of the request state machines (lib/engine/request*.c):
 * read, write, write zeroes, discard, flush, FUA, block status, resize,
 * argument checks, callback delivery rules, completion order, overlapping
 * allocating writes, reads racing allocations, and NEED_CHECK handling.
 *
 * Every test gets its own libev loop, a test I/O engine (qed-io-test.h) and
 * a scratch directory.  Tests where the order of I/O completions matters put
 * the engine in manual mode and complete the held I/Os themselves (oldest
 * first, newest first, or in a seeded random order); the others use auto
 * mode.  Every completion callback checks that it does not run inside the
 * submitting call, and that it runs only once.
 *
 * Seeds of randomised tests are printed with cr_log_info, and every failure
 * message names the seed.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <ev.h>

#include "fixture.h"
#include "qed-io-test.h"
#include "qed-image.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define MAX_TURNS 2000000
#define WATCHDOG_SECONDS 50.0
#define MAX_EXT 256

/* ---- fixture ---- */

struct fixture {
    struct test_fixture tf;  /* loop, test engine, directory, watchdog */
    bool manual;             /* manual completion mode */
    unsigned rng;            /* seed state for ORD_RANDOM */
};

static struct fixture F;

static void setup(void)
{
    memset(&F, 0, sizeof(F));
    tf_setup(&F.tf, "req", QED_AIO_TEST);
    /* Unref'd: the watchdog must not hold the loop alive in EVRUN_ONCE waits. */
    tf_watchdog(&F.tf, WATCHDOG_SECONDS, true);
}

static void teardown(void)
{
    tf_teardown(&F.tf);
}

TestSuite(read, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(write, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(wzero, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(discard, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(flush, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(bstatus, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(resize, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(args, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(submit, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(order, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(needcheck, .init = setup, .fini = teardown, .timeout = 60);

/* ---- driving the loop ---- */

enum order { ORD_FIFO, ORD_REVERSE, ORD_RANDOM };

static const char *order_name(enum order o)
{
    return o == ORD_FIFO ? "fifo" : o == ORD_REVERSE ? "reverse" : "random";
}

static void set_manual(bool on)
{
    F.manual = on;
    qed_aio_test_set_auto(F.tf.aio, !on);
}

/* Complete one batch of held I/Os in the order @o. */
static void complete_some(enum order o)
{
    size_t n = qed_aio_test_pending(F.tf.aio);

    if (n == 0)
        return;
    switch (o) {
    case ORD_FIFO:
        cr_assert_eq(qed_aio_test_complete(F.tf.aio, 0, 0), 0);
        break;
    case ORD_REVERSE:
        /* Descending indexes stay valid: new I/Os are appended at the end. */
        for (size_t i = n; i-- > 0;)
            cr_assert_eq(qed_aio_test_complete(F.tf.aio, i, 0), 0);
        break;
    case ORD_RANDOM:
        cr_assert_eq(qed_aio_test_complete(F.tf.aio, (size_t)rand_r(&F.rng) % n, 0), 0);
        break;
    }
}

/*
 * Run until every request in @d has completed.  In manual mode the held I/Os
 * are completed in the order @o; otherwise the loop runs.  Afterwards no I/O
 * may be left in flight: every I/O belongs to some request.
 */
static void drive(enum order o, struct tf_done *d, size_t n)
{
    unsigned idle = 0;

    for (unsigned turns = 0; !tf_all_done(d, n); turns++) {
        cr_assert(turns < MAX_TURNS && !F.tf.timed_out, "requests never completed");
        if (F.manual) {
            ev_run(F.tf.loop, EVRUN_NOWAIT);
            if (tf_all_done(d, n))
                break;
            if (qed_aio_test_pending(F.tf.aio) == 0) {
                /* Only deferred deliveries can be left: give them a few turns. */
                cr_assert(++idle < 1000, "no I/O held, yet requests are not complete");
                continue;
            }
            idle = 0;
            complete_some(o);
        } else {
            ev_run(F.tf.loop, EVRUN_ONCE);
        }
    }
    ev_run(F.tf.loop, EVRUN_NOWAIT);
    cr_assert_eq(qed_aio_test_pending(F.tf.aio), 0,
                 "I/O left in flight after all requests completed");
}

static void wait1(struct tf_done *d)
{
    drive(ORD_FIFO, d, 1);
}

/* ---- synchronous helpers built on the async API (checking the callback rules) ---- */

static int do_read(qed_image *img, uint64_t off, void *buf, size_t len)
{
    struct tf_done d = {0};
    int rc = TF_SUBMIT(qed_read(img, off, buf, len, tf_done_cb, &d));
    if (rc < 0)
        return rc;
    wait1(&d);
    return d.ret;
}

static int do_write(qed_image *img, uint64_t off, const void *buf, size_t len, unsigned flags)
{
    struct tf_done d = {0};
    int rc = TF_SUBMIT(qed_write(img, off, buf, len, flags, tf_done_cb, &d));
    if (rc < 0)
        return rc;
    wait1(&d);
    return d.ret;
}

static int do_wzero(qed_image *img, uint64_t off, uint64_t len, unsigned flags)
{
    struct tf_done d = {0};
    int rc = TF_SUBMIT(qed_write_zeroes(img, off, len, flags, tf_done_cb, &d));
    if (rc < 0)
        return rc;
    wait1(&d);
    return d.ret;
}

static int do_discard(qed_image *img, uint64_t off, uint64_t len, unsigned flags)
{
    struct tf_done d = {0};
    int rc = TF_SUBMIT(qed_discard(img, off, len, flags, tf_done_cb, &d));
    if (rc < 0)
        return rc;
    wait1(&d);
    return d.ret;
}

static int do_flush(qed_image *img)
{
    struct tf_done d = {0};
    int rc = TF_SUBMIT(qed_flush(img, tf_done_cb, &d));
    if (rc < 0)
        return rc;
    wait1(&d);
    return d.ret;
}

static int do_resize(qed_image *img, uint64_t size)
{
    struct tf_done d = {0};
    int rc = TF_SUBMIT(qed_resize(img, size, tf_done_cb, &d));
    if (rc < 0)
        return rc;
    wait1(&d);
    return d.ret;
}

static int do_bstatus(qed_image *img, uint64_t off, uint64_t len, struct qed_extent *ext,
                      size_t *n)
{
    struct tf_done d = {0};
    int rc = TF_SUBMIT(qed_block_status(img, off, len, ext, MAX_EXT, n, tf_done_cb, &d));
    if (rc < 0)
        return rc;
    wait1(&d);
    return d.ret;
}

/* ---- files and images ---- */

static qed_image *open_img_opts(const char *name, bool ro, unsigned clean_ms)
{
    struct qed_open_opts o = {.read_only = ro, .clean_delay_ms = clean_ms};
    return tf_open(&F.tf, name, &o);
}

static qed_image *open_img(const char *name)
{
    return open_img_opts(name, false, 0);
}

static void close_img(qed_image *img)
{
    int r = qed_close(img);
    cr_assert_eq(r, 0, "qed_close: %s", strerror(-r));
}

/* A raw file of @size bytes filled from @seed; its content goes to @out when non-NULL. */
static void make_raw(const char *name, uint64_t size, uint32_t seed, uint8_t *out)
{
    uint8_t *buf = malloc(size ? size : 1);
    int fd = open(tf_path(&F.tf, name), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert(fd >= 0 && buf);
    tf_fill(buf, size, seed);
    cr_assert_eq(pwrite(fd, buf, size, 0), (ssize_t)size);
    close(fd);
    if (out)
        memcpy(out, buf, size);
    free(buf);
}

static uint64_t file_size_of(const char *name)
{
    struct stat st;
    cr_assert_eq(stat(tf_path(&F.tf, name), &st), 0);
    return (uint64_t)st.st_size;
}

static uint64_t blocks_of(const char *name)
{
    struct stat st;
    cr_assert_eq(stat(tf_path(&F.tf, name), &st), 0);
    return (uint64_t)st.st_blocks;
}

/* Header features as they are on disk now. */
static uint64_t disk_features(const char *name)
{
    uint8_t h[QED_HEADER_BYTES];
    uint64_t v;
    int fd = open(tf_path(&F.tf, name), O_RDONLY);
    cr_assert(fd >= 0);
    cr_assert_eq(pread(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
    close(fd);
    memcpy(&v, h + 16, 8);
    return le64toh(v);
}

/* Read the on-disk L1 table (entries in CPU order) into @l1 (@n entries). */
static void disk_l1(const char *name, uint64_t *l1, size_t n)
{
    uint8_t h[QED_HEADER_BYTES];
    uint64_t off;
    int fd = open(tf_path(&F.tf, name), O_RDONLY);
    cr_assert(fd >= 0);
    cr_assert_eq(pread(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
    memcpy(&off, h + 40, 8);
    cr_assert_eq(pread(fd, l1, n * 8, (off_t)le64toh(off)), (ssize_t)(n * 8));
    close(fd);
    for (size_t i = 0; i < n; i++)
        l1[i] = le64toh(l1[i]);
}

static void assert_clean(const struct qed_check_result *res, bool leaks_ok, const char *what)
{
    cr_assert_eq(res->corruptions, 0, "%s: %" PRIu64 " corruptions", what, res->corruptions);
    cr_assert_eq(res->check_errors, 0, "%s: %" PRIu64 " check errors", what, res->check_errors);
    if (!leaks_ok)
        cr_assert_eq(res->leaks, 0, "%s: %" PRIu64 " leaked clusters", what, res->leaks);
}

/* Live check of an open image (no requests in flight). */
static struct qed_check_result live_check(qed_image *img)
{
    struct qed_check_result res;
    int r = qed_check(img, false, &res);
    cr_assert_eq(r, 0, "qed_check: %s", strerror(-r));
    return res;
}

/* Compare [off, off+len) of @img with @want; report the first difference. */
static void expect_range(qed_image *img, uint64_t off, const uint8_t *want, size_t len,
                         const char *what)
{
    uint8_t *got = malloc(len ? len : 1);
    int r;

    cr_assert_not_null(got);
    memset(got, 0xA5, len);
    r = do_read(img, off, got, len);
    cr_assert_eq(r, 0, "%s: read %" PRIu64 "+%zu: %s", what, off, len, strerror(-r));
    for (size_t i = 0; i < len; i++)
        if (got[i] != want[i]) {
            unsigned g = got[i], w = want[i];
            free(got);
            cr_assert_fail("%s: byte %" PRIu64 " is 0x%02x, expected 0x%02x", what, off + i, g,
                           w);
        }
    free(got);
}

/* Can the file system under the scratch directory punch holes? */
static bool fs_can_punch(void)
{
    const char *p = tf_path(&F.tf, "punch-probe");
    uint8_t buf[65536];
    struct stat a, b;
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
    bool ok;

    cr_assert(fd >= 0);
    memset(buf, 1, sizeof(buf));
    cr_assert_eq(pwrite(fd, buf, sizeof(buf), 0), (ssize_t)sizeof(buf));
    fsync(fd);
    fstat(fd, &a);
    ok = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, sizeof(buf)) == 0;
    fstat(fd, &b);
    close(fd);
    unlink(p);
    return ok && b.st_blocks < a.st_blocks;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

/* Records every I/O performed (op, offset, length) through the observer. */
struct oplog {
    enum qed_io_op op[4096];
    uint64_t off[4096];
    uint64_t len[4096];
    size_t n;
};

static void oplog_observer(struct qed_io *io, int err, void *opaque)
{
    struct oplog *l = opaque;
    (void)err;
    if (l->n < 4096) {
        l->op[l->n] = io->op;
        l->off[l->n] = io->offset;
        l->len[l->n] = io->length;
        l->n++;
    }
}

/* ====================================================================== */
/* Read                                                                   */
/* ====================================================================== */

Test(read, unallocated_reads_zeros)
{
    uint8_t *buf = malloc(MiB), *zero = calloc(1, MiB);
    qed_image *img;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    expect_range(img, 0, zero, MiB, "whole unallocated image");
    expect_range(img, 1000, zero, 5000, "unaligned range");
    /* Nothing is allocated: no table and no data is read. */
    cr_assert_eq(qed_aio_test_count(F.tf.aio, QED_IO_READ), 0);
    /* Same after a table exists for the neighbourhood. */
    tf_fill(buf, 4096, 1);
    cr_assert_eq(do_write(img, 0, buf, 4096, 0), 0);
    expect_range(img, 4096, zero, 64 * KiB, "unallocated next to data");
    close_img(img);
    free(buf);
    free(zero);
}

/*
 * A read of a long hole zeroes the buffer in steps of at most
 * QED_IO_LOOP_COPY_MAX, one per loop turn (issue 14): the loop's largest
 * copy stays within the bound, and a small read submitted after the long one
 * completes first, which it could not if the long fill ran in one turn.
 */
Test(read, long_hole_is_zeroed_in_bounded_steps)
{
    const size_t len = 32 * MiB;
    uint8_t *buf = malloc(len), small[4096];
    struct tf_done d[2] = {{0}};
    qed_image *img;

    cr_assert_not_null(buf);
    tf_create(&F.tf, "a.qed", 64 * MiB, 64 * KiB, 4, NULL, 0);
    img = open_img("a.qed");
    memset(buf, 0xa5, len);
    memset(small, 0xa5, sizeof(small));
    (void)qed_aio_test_loop_copy_max(F.tf.aio, true);
    cr_assert_eq(TF_SUBMIT(qed_read(img, 4096, buf, len, tf_done_cb, &d[0])), 0);
    cr_assert_eq(TF_SUBMIT(qed_read(img, 40 * MiB, small, sizeof(small), tf_done_cb, &d[1])), 0);
    for (unsigned long t = 0; d[1].calls == 0; t++) {
        cr_assert(t < TF_MAX_TURNS && !F.tf.timed_out, "the small read never completed");
        ev_run(F.tf.loop, EVRUN_ONCE);
    }
    cr_assert_eq(d[0].calls, 0, "the 32 MiB hole was zeroed in one loop turn");
    tf_wait(&F.tf, d, 2);
    cr_assert_eq(d[0].ret, 0);
    cr_assert_eq(d[1].ret, 0);
    for (size_t i = 0; i < len; i++)
        cr_assert_eq(buf[i], 0, "byte %zu of the hole is %#x", i, buf[i]);
    for (size_t i = 0; i < sizeof(small); i++)
        cr_assert_eq(small[i], 0);
    cr_assert_leq(qed_aio_test_loop_copy_max(F.tf.aio, false), QED_IO_LOOP_COPY_MAX);
    cr_assert_geq(qed_aio_test_loop_copy_max(F.tf.aio, false), 64 * KiB,
                  "the zero fill was not recorded");
    close_img(img);
    free(buf);
}

Test(read, zero_cluster_reads_zeros_and_hides_backing)
{
    uint8_t *back = malloc(MiB), *want = malloc(MiB);
    struct qed_extent ext[MAX_EXT];
    size_t n;
    qed_image *img;

    make_raw("b.raw", MiB, 7, back);
    tf_create(&F.tf, "a.qed", MiB, 4096, 1, "b.raw", QED_BACKING_RAW);
    img = open_img("a.qed");
    cr_assert_eq(do_wzero(img, 8192, 8192, 0), 0);
    memcpy(want, back, MiB);
    memset(want + 8192, 0, 8192);
    expect_range(img, 0, want, 6 * 4096, "zero clusters over backing");
    cr_assert_eq(do_bstatus(img, 8192, 8192, ext, &n), 0);
    cr_assert_eq(n, 1);
    cr_assert(ext[0].zero && !ext[0].data && ext[0].present && ext[0].depth == 0,
              "zero cluster reported as zero=%d data=%d present=%d depth=%u", ext[0].zero,
              ext[0].data, ext[0].present, ext[0].depth);
    close_img(img);

    /* The zero entries are on disk. */
    img = open_img("a.qed");
    expect_range(img, 0, want, MiB, "zero clusters after reopen");
    close_img(img);
    free(back);
    free(want);
}

Test(read, zero_cluster_without_backing)
{
    uint8_t buf[3 * 4096], zero[3 * 4096] = {0};
    qed_image *img;

    tf_create(&F.tf, "a.qed", MiB, 4096, 2, NULL, 0);
    img = open_img("a.qed");
    tf_fill(buf, sizeof(buf), 3);
    /* Turn data into zeros in place, and make fresh zero clusters. */
    cr_assert_eq(do_write(img, 0, buf, sizeof(buf), 0), 0);
    cr_assert_eq(do_wzero(img, 0, sizeof(buf), 0), 0);
    cr_assert_eq(do_wzero(img, 64 * KiB, 3 * 4096, 0), 0);
    expect_range(img, 0, zero, sizeof(zero), "zeroed data");
    expect_range(img, 64 * KiB, zero, sizeof(zero), "zero clusters");
    close_img(img);
}

Test(read, raw_backing)
{
    uint8_t *back = malloc(2 * MiB);
    qed_image *img;

    make_raw("b.raw", 2 * MiB, 11, back);
    tf_create(&F.tf, "a.qed", 2 * MiB, 4096, 1, "b.raw", QED_BACKING_RAW);
    img = open_img("a.qed");
    expect_range(img, 0, back, 2 * MiB, "whole image from backing");
    expect_range(img, 4095, back + 4095, 3, "across a cluster boundary");
    expect_range(img, 2 * MiB - 1000, back + 2 * MiB - 1000, 1000, "tail");
    close_img(img);
    free(back);
}

Test(read, qed_backing_chain)
{
    uint8_t *want = calloc(1, MiB), buf[3 * 4096];
    qed_image *img;

    /* base: data in clusters 2..4 */
    tf_create(&F.tf, "base.qed", MiB, 4096, 1, NULL, 0);
    img = open_img("base.qed");
    tf_fill(buf, sizeof(buf), 21);
    cr_assert_eq(do_write(img, 2 * 4096, buf, sizeof(buf), 0), 0);
    memcpy(want + 2 * 4096, buf, sizeof(buf));
    close_img(img);

    /* mid: overrides part of cluster 3 and writes cluster 8 */
    tf_create(&F.tf, "mid.qed", MiB, 4096, 1, "base.qed", QED_BACKING_QED);
    img = open_img("mid.qed");
    tf_fill(buf, 1000, 22);
    cr_assert_eq(do_write(img, 3 * 4096 + 100, buf, 1000, 0), 0);
    memcpy(want + 3 * 4096 + 100, buf, 1000);
    tf_fill(buf, 4096, 23);
    cr_assert_eq(do_write(img, 8 * 4096, buf, 4096, 0), 0);
    memcpy(want + 8 * 4096, buf, 4096);
    close_img(img);

    tf_create(&F.tf, "top.qed", MiB, 4096, 1, "mid.qed", QED_BACKING_QED);
    img = open_img("top.qed");
    expect_range(img, 0, want, MiB, "three-level chain");
    expect_range(img, 3 * 4096 + 50, want + 3 * 4096 + 50, 2000, "partial through chain");
    close_img(img);
    free(want);
}

Test(read, backing_shorter_than_image)
{
    const uint64_t blen = 3 * 4096 + 1000; /* ends inside cluster 3 */
    uint8_t *back = calloc(1, 64 * KiB), *want = calloc(1, 64 * KiB), patch[100];
    qed_image *img;

    make_raw("b.raw", blen, 31, back);
    tf_create(&F.tf, "a.qed", 64 * KiB, 4096, 1, "b.raw", QED_BACKING_RAW);
    img = open_img("a.qed");
    memcpy(want, back, blen);
    expect_range(img, 0, want, 64 * KiB, "raw backing shorter than image");
    expect_range(img, blen - 10, want + blen - 10, 20, "across the backing end");

    /* A partial write into the cluster that straddles the backing end copies
     * the backing bytes that exist and zeros for the rest. */
    tf_fill(patch, sizeof(patch), 32);
    cr_assert_eq(do_write(img, 3 * 4096 + 2000, patch, sizeof(patch), 0), 0);
    memcpy(want + 3 * 4096 + 2000, patch, sizeof(patch));
    expect_range(img, 0, want, 64 * KiB, "after a write past the backing end");
    close_img(img);
    img = open_img("a.qed");
    expect_range(img, 0, want, 64 * KiB, "after reopen");
    close_img(img);
    free(back);
    free(want);
}

Test(read, qed_backing_smaller_than_image)
{
    uint8_t *want = calloc(1, 64 * KiB), buf[8192];
    qed_image *img;

    tf_create(&F.tf, "base.qed", 8192, 4096, 1, NULL, 0);
    img = open_img("base.qed");
    tf_fill(buf, sizeof(buf), 41);
    cr_assert_eq(do_write(img, 0, buf, sizeof(buf), 0), 0);
    close_img(img);
    memcpy(want, buf, sizeof(buf));

    tf_create(&F.tf, "top.qed", 64 * KiB, 4096, 1, "base.qed", QED_BACKING_QED);
    img = open_img("top.qed");
    expect_range(img, 0, want, 64 * KiB, "qed backing shorter than image");
    /* A partial write past the backing's end fills with zeros. */
    tf_fill(buf, 10, 42);
    cr_assert_eq(do_write(img, 5 * 4096 + 7, buf, 10, 0), 0);
    memcpy(want + 5 * 4096 + 7, buf, 10);
    expect_range(img, 0, want, 64 * KiB, "after writing past the backing");
    close_img(img);
    free(want);
}

/* ====================================================================== */
/* Write                                                                  */
/* ====================================================================== */

Test(write, partial_cluster_over_backing_keeps_the_rest)
{
    const uint64_t size = 256 * KiB;
    uint8_t *model = malloc(size), buf[5 * 4096];
    qed_image *img;
    struct qed_check_result res;

    make_raw("b.raw", size, 51, model);
    tf_create(&F.tf, "a.qed", size, 4096, 1, "b.raw", QED_BACKING_RAW);
    img = open_img("a.qed");

    /* inside one cluster */
    tf_fill(buf, 100, 52);
    cr_assert_eq(do_write(img, 4096 + 1000, buf, 100, 0), 0);
    memcpy(model + 4096 + 1000, buf, 100);
    /* across a cluster boundary: head of one cluster, tail of the next */
    tf_fill(buf, 1600, 53);
    cr_assert_eq(do_write(img, 3 * 4096 - 700, buf, 1600, 0), 0);
    memcpy(model + 3 * 4096 - 700, buf, 1600);
    /* several clusters, partial at both ends */
    tf_fill(buf, 4 * 4096 + 300, 54);
    cr_assert_eq(do_write(img, 8 * 4096 + 2000, buf, 4 * 4096 + 300, 0), 0);
    memcpy(model + 8 * 4096 + 2000, buf, 4 * 4096 + 300);

    expect_range(img, 0, model, size, "partial writes over backing");
    res = live_check(img);
    assert_clean(&res, false, "live");
    close_img(img);
    res = tf_disk_check(&F.tf, "a.qed");
    assert_clean(&res, false, "on disk");
    img = open_img("a.qed");
    expect_range(img, 0, model, size, "after reopen");
    close_img(img);
    free(model);
}

Test(write, partial_cluster_without_backing_fills_zeros)
{
    uint8_t *model = calloc(1, 64 * KiB), buf[3000];
    qed_image *img;

    tf_create(&F.tf, "a.qed", 64 * KiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    tf_fill(buf, sizeof(buf), 55);
    cr_assert_eq(do_write(img, 4096 + 3000, buf, sizeof(buf), 0), 0);
    memcpy(model + 4096 + 3000, buf, sizeof(buf));
    close_img(img);
    img = open_img("a.qed");
    expect_range(img, 0, model, 64 * KiB, "partial write, no backing");
    close_img(img);
    free(model);
}

Test(write, partial_write_into_zero_cluster_fills_zeros_not_backing)
{
    const uint64_t size = 64 * KiB;
    uint8_t *model = malloc(size), buf[4096 + 600];
    qed_image *img;

    make_raw("b.raw", size, 61, model);
    tf_create(&F.tf, "a.qed", size, 4096, 1, "b.raw", QED_BACKING_RAW);
    img = open_img("a.qed");
    /* clusters 2..3 become zero clusters */
    cr_assert_eq(do_wzero(img, 2 * 4096, 2 * 4096, 0), 0);
    memset(model + 2 * 4096, 0, 2 * 4096);
    /* a partial write in the middle of cluster 2 */
    tf_fill(buf, 512, 62);
    cr_assert_eq(do_write(img, 2 * 4096 + 1024, buf, 512, 0), 0);
    memcpy(model + 2 * 4096 + 1024, buf, 512);
    /* a write whose head is in zero cluster 3 and tail in unallocated cluster 4:
     * the head fill is zeros, the tail fill is backing data */
    tf_fill(buf, sizeof(buf), 63);
    cr_assert_eq(do_write(img, 3 * 4096 + 3000, buf, sizeof(buf), 0), 0);
    memcpy(model + 3 * 4096 + 3000, buf, sizeof(buf));
    expect_range(img, 0, model, size, "writes into zero clusters");
    close_img(img);
    img = open_img("a.qed");
    expect_range(img, 0, model, size, "after reopen");
    close_img(img);
    free(model);
}

Test(write, new_l2_tables_and_l1_updates)
{
    /* 4 KiB clusters, table size 1: 512 entries, one L2 table per 2 MiB */
    const uint64_t size = 8 * MiB;
    uint8_t *model = calloc(1, size), buf[4096];
    uint64_t l1[512];
    uint64_t fsize;
    qed_image *img;
    struct qed_check_result res;

    tf_create(&F.tf, "a.qed", size, 4096, 1, NULL, 0);
    disk_l1("a.qed", l1, 512);
    for (int i = 0; i < 512; i++)
        cr_assert_eq(l1[i], 0, "fresh image has L1[%d] = %" PRIx64, i, l1[i]);
    fsize = file_size_of("a.qed");

    img = open_img("a.qed");
    tf_fill(buf, 4096, 71);
    cr_assert_eq(do_write(img, 0, buf, 4096, 0), 0);
    memcpy(model, buf, 4096);
    tf_fill(buf, 100, 72);
    cr_assert_eq(do_write(img, 2 * MiB + 5, buf, 100, 0), 0);
    memcpy(model + 2 * MiB + 5, buf, 100);
    tf_fill(buf, 4096, 73);
    cr_assert_eq(do_write(img, 6 * MiB + 4096, buf, 4096, 0), 0);
    memcpy(model + 6 * MiB + 4096, buf, 4096);
    close_img(img);

    /* three tables + three data clusters */
    cr_assert_eq(file_size_of("a.qed"), fsize + 6 * 4096, "file size %" PRIu64 ", expected %" PRIu64,
                 file_size_of("a.qed"), fsize + 6 * 4096);
    disk_l1("a.qed", l1, 512);
    for (int i = 0; i < 512; i++) {
        bool want = i == 0 || i == 1 || i == 3;
        cr_assert_eq(l1[i] != 0, want, "L1[%d] = 0x%" PRIx64, i, l1[i]);
        if (want)
            cr_assert(l1[i] % 4096 == 0 && l1[i] >= fsize && l1[i] < file_size_of("a.qed"),
                      "L1[%d] = 0x%" PRIx64 " is not a valid table offset", i, l1[i]);
    }
    res = tf_disk_check(&F.tf, "a.qed");
    assert_clean(&res, false, "on disk");
    cr_assert_eq(res.allocated_clusters, 3);

    img = open_img("a.qed");
    expect_range(img, 0, model, size, "after reopen");
    close_img(img);
    free(model);
}

/* Rule 4: a new L2 table is written and flushed before the L1 entry points at it. */
Test(write, new_table_flushed_before_l1_update)
{
    uint8_t buf[4096];
    struct oplog *log = calloc(1, sizeof(*log));
    uint64_t l1[512], l1_off;
    qed_image *img;

    for (int backing = 0; backing < 2; backing++) {
        unlink(tf_path(&F.tf, "a.qed"));
        if (backing) {
            make_raw("b.raw", 8 * MiB, 75, NULL);
            tf_create(&F.tf, "a.qed", 8 * MiB, 4096, 1, "b.raw", QED_BACKING_RAW);
        } else {
            tf_create(&F.tf, "a.qed", 8 * MiB, 4096, 1, NULL, 0);
        }
        img = open_img("a.qed");
        l1_off = img->h.l1_table_offset;
        log->n = 0;
        qed_aio_test_set_observer(F.tf.aio, oplog_observer, log);
        tf_fill(buf, sizeof(buf), 76);
        cr_assert_eq(do_write(img, 2 * MiB + 4096, buf, sizeof(buf), 0), 0);
        cr_assert_eq(do_wzero(img, 4 * MiB, 8192, 0), 0); /* a table for zero entries */
        qed_aio_test_set_observer(F.tf.aio, NULL, NULL);
        close_img(img);
        disk_l1("a.qed", l1, 512);
        for (int i = 1; i <= 2; i++) {
            size_t tw = SIZE_MAX, l1w = SIZE_MAX;
            cr_assert(l1[i] != 0, "L1[%d] not set", i);
            for (size_t j = 0; j < log->n; j++) {
                if (log->op[j] != QED_IO_WRITE)
                    continue;
                if (log->off[j] == l1[i] && tw == SIZE_MAX)
                    tw = j;
                if (log->off[j] == l1_off + (uint64_t)i * 8)
                    l1w = j;
            }
            cr_assert(tw < l1w && l1w < log->n, "backing %d: table %d written at %zu, L1 at %zu",
                      backing, i, tw, l1w);
            bool synced = false;
            for (size_t j = tw + 1; j < l1w; j++)
                synced |= log->op[j] == QED_IO_FSYNC;
            cr_assert(synced, "backing %d: no flush between the new table %d and its L1 entry",
                      backing, i);
        }
    }
    free(log);
}

Test(write, single_64m_write_spanning_l2_tables)
{
    /* 4 KiB clusters, table size 16: 8192 entries, 32 MiB per L2 table.  The
     * write starts unaligned, so it touches three tables and 16385 clusters. */
    const uint64_t size = 128 * MiB, off = 5 * 4096 + 512, len = 64 * MiB;
    const uint64_t nclusters = (off + len - 1) / 4096 - off / 4096 + 1;
    uint8_t *buf = malloc(len), *got = malloc(len + 8192);
    uint64_t fsize;
    qed_image *img;
    struct qed_check_result res;

    cr_assert(buf && got);
    tf_create(&F.tf, "a.qed", size, 4096, 16, NULL, 0);
    fsize = file_size_of("a.qed");
    img = open_img("a.qed");
    tf_fill(buf, len, 81);
    cr_assert_eq(do_write(img, off, buf, len, 0), 0);
    cr_assert_eq(do_read(img, off - 512, got, len + 1024), 0);
    cr_assert(all_zero(got, 512), "bytes before the write are not zero");
    cr_assert(memcmp(got + 512, buf, len) == 0, "64 MiB write does not read back");
    cr_assert(all_zero(got + 512 + len, 512), "bytes after the write are not zero");
    res = live_check(img);
    assert_clean(&res, false, "live");
    cr_assert_eq(res.allocated_clusters, nclusters, "allocated %" PRIu64 ", expected %" PRIu64,
                 res.allocated_clusters, nclusters);
    close_img(img);

    /* exactly three tables and the data clusters, nothing over-allocated */
    cr_assert_eq(file_size_of("a.qed"), fsize + 3 * 16 * 4096 + nclusters * 4096,
                 "file size %" PRIu64, file_size_of("a.qed"));
    res = tf_disk_check(&F.tf, "a.qed");
    assert_clean(&res, false, "on disk");
    img = open_img("a.qed");
    cr_assert_eq(do_read(img, off, got, len), 0);
    cr_assert(memcmp(got, buf, len) == 0, "64 MiB write does not read back after reopen");
    close_img(img);
    free(buf);
    free(got);
}

/* The last cluster of an image whose size is not a whole number of clusters. */
Test(write, image_size_not_a_whole_number_of_clusters)
{
    const uint64_t size = 3 * 4096 + 1536, blen = 3 * 4096 + 100;
    uint8_t model[3 * 4096 + 1536] = {0}, buf[2048];
    struct qed_extent ext[MAX_EXT];
    size_t n;
    qed_image *img;
    struct qed_check_result res;

    for (int backing = 0; backing < 2; backing++) {
        memset(model, 0, sizeof(model));
        unlink(tf_path(&F.tf, "a.qed"));
        if (backing) {
            make_raw("b.raw", blen, 261, model);
            tf_create(&F.tf, "a.qed", size, 4096, 1, "b.raw", QED_BACKING_RAW);
        } else {
            tf_create(&F.tf, "a.qed", size, 4096, 1, NULL, 0);
        }
        img = open_img("a.qed");
        cr_assert_eq(qed_size(img), size);
        expect_range(img, 0, model, size, "before writing");
        tf_fill(buf, sizeof(buf), 262);
        cr_assert_eq(do_write(img, size - 300, buf, 300, 0), 0);
        memcpy(model + size - 300, buf, 300);
        cr_assert_eq(do_write(img, size - 512, buf, 513, 0), -ENOSPC);
        cr_assert_eq(do_wzero(img, 3 * 4096, size - 3 * 4096, 0), 0);
        memset(model + 3 * 4096, 0, size - 3 * 4096);
        cr_assert_eq(do_write(img, size - 1000, buf, 10, 0), 0);
        memcpy(model + size - 1000, buf, 10);
        cr_assert_eq(do_wzero(img, 2 * 4096 + 7, 100, 0), 0);
        memset(model + 2 * 4096 + 7, 0, 100);
        expect_range(img, 0, model, size, "odd-sized image");
        cr_assert_eq(do_bstatus(img, 0, size, ext, &n), 0);
        uint64_t total = 0;
        for (size_t i = 0; i < n; i++)
            total += ext[i].length;
        cr_assert_eq(total, size, "block status covers %" PRIu64 " of %" PRIu64, total, size);
        close_img(img);
        res = tf_disk_check(&F.tf, "a.qed");
        assert_clean(&res, false, "odd-sized image");
        img = open_img("a.qed");
        expect_range(img, 0, model, size, "odd-sized image after reopen");
        close_img(img);
    }
}

Test(write, in_place_write_does_not_allocate)
{
    uint8_t buf[8192];
    uint64_t fsize;
    qed_image *img;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    tf_fill(buf, sizeof(buf), 91);
    cr_assert_eq(do_write(img, 4096, buf, sizeof(buf), 0), 0);
    close_img(img);
    fsize = file_size_of("a.qed");
    img = open_img("a.qed");
    tf_fill(buf, sizeof(buf), 92);
    cr_assert_eq(do_write(img, 4096 + 100, buf, 5000, 0), 0);
    expect_range(img, 4096 + 100, buf, 5000, "in-place write");
    close_img(img);
    cr_assert_eq(file_size_of("a.qed"), fsize);
}

/* ====================================================================== */
/* Write zeroes                                                           */
/* ====================================================================== */

Test(wzero, whole_unallocated_clusters_allocate_no_data)
{
    uint8_t buf[4096], *zero = calloc(1, 64 * KiB);
    struct qed_extent ext[MAX_EXT];
    size_t n;
    uint64_t fsize;
    qed_image *img;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    /* no L2 table yet: at most the table is added */
    fsize = file_size_of("a.qed");
    cr_assert_eq(do_wzero(img, 8192, 32 * KiB, 0), 0);
    cr_assert_leq(file_size_of("a.qed"), fsize + 4096, "write zeroes allocated data");
    expect_range(img, 0, zero, 64 * KiB, "zeroed range");
    cr_assert_eq(do_bstatus(img, 8192, 32 * KiB, ext, &n), 0);
    cr_assert_eq(n, 1, "%zu extents", n);
    cr_assert(ext[0].zero && !ext[0].data && ext[0].present && !ext[0].has_offset);
    cr_assert_eq(ext[0].length, 32 * KiB);
    /* NEED_CHECK is not needed: no data clusters were allocated */
    close_img(img);

    /* with the table present the file does not grow at all */
    img = open_img("a.qed");
    tf_fill(buf, sizeof(buf), 101);
    cr_assert_eq(do_write(img, 0, buf, sizeof(buf), 0), 0);
    fsize = file_size_of("a.qed");
    cr_assert_eq(do_wzero(img, 128 * KiB, 64 * KiB, 0), 0);
    cr_assert_eq(file_size_of("a.qed"), fsize, "write zeroes over unallocated clusters grew the file");
    cr_assert_eq(do_bstatus(img, 128 * KiB, 64 * KiB, ext, &n), 0);
    cr_assert(n == 1 && ext[0].zero && !ext[0].data && ext[0].present);
    close_img(img);
    free(zero);
}

Test(wzero, whole_clusters_over_backing)
{
    uint8_t *back = malloc(MiB), *model = malloc(MiB);
    struct qed_extent ext[MAX_EXT];
    size_t n;
    uint64_t fsize;
    qed_image *img;

    make_raw("b.raw", MiB, 111, back);
    tf_create(&F.tf, "a.qed", MiB, 4096, 1, "b.raw", QED_BACKING_RAW);
    fsize = file_size_of("a.qed");
    img = open_img("a.qed");
    cr_assert_eq(do_wzero(img, 16 * KiB, 16 * KiB, 0), 0);
    memcpy(model, back, MiB);
    memset(model + 16 * KiB, 0, 16 * KiB);
    expect_range(img, 0, model, MiB, "zeroed over backing");
    cr_assert_leq(file_size_of("a.qed"), fsize + 4096);
    cr_assert_eq(do_bstatus(img, 16 * KiB, 16 * KiB, ext, &n), 0);
    cr_assert(n == 1 && ext[0].zero && !ext[0].data && ext[0].depth == 0);
    close_img(img);
    img = open_img("a.qed");
    expect_range(img, 0, model, MiB, "after reopen");
    close_img(img);
    free(back);
    free(model);
}

Test(wzero, allocated_clusters_get_zeros_written)
{
    uint8_t buf[4 * 4096], zero[4 * 4096] = {0};
    struct qed_extent ext[MAX_EXT];
    size_t n;
    uint64_t fsize;
    qed_image *img;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    tf_fill(buf, sizeof(buf), 121);
    cr_assert_eq(do_write(img, 0, buf, sizeof(buf), 0), 0);
    fsize = file_size_of("a.qed");
    uint64_t writes = qed_aio_test_count(F.tf.aio, QED_IO_WRITE);
    cr_assert_eq(do_wzero(img, 0, sizeof(buf), 0), 0);
    cr_assert_gt(qed_aio_test_count(F.tf.aio, QED_IO_WRITE), writes, "no zeros were written");
    cr_assert_eq(file_size_of("a.qed"), fsize);
    expect_range(img, 0, zero, sizeof(zero), "zeroed data clusters");
    cr_assert_eq(do_bstatus(img, 0, sizeof(buf), ext, &n), 0);
    cr_assert(n == 1 && ext[0].data && ext[0].has_offset, "mapping of zeroed data changed");
    close_img(img);
    img = open_img("a.qed");
    expect_range(img, 0, zero, sizeof(zero), "after reopen");
    close_img(img);
}

Test(wzero, partial_ranges_without_backing)
{
    const uint64_t size = 64 * KiB;
    uint8_t *model = calloc(1, size), buf[4 * 4096];
    uint64_t fsize;
    qed_image *img;

    tf_create(&F.tf, "a.qed", size, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    tf_fill(buf, sizeof(buf), 131);
    cr_assert_eq(do_write(img, 0, buf, sizeof(buf), 0), 0);
    memcpy(model, buf, sizeof(buf));
    cr_assert_eq(do_wzero(img, 1000, 3 * 4096 + 50 - 1000, 0), 0);
    memset(model + 1000, 0, 3 * 4096 + 50 - 1000);
    expect_range(img, 0, model, size, "partial zeroing of data");

    /* partial ranges over unallocated clusters already read as zeros */
    fsize = file_size_of("a.qed");
    cr_assert_eq(do_wzero(img, 8 * 4096 + 100, 200, 0), 0);
    cr_assert_eq(do_wzero(img, 10 * 4096 + 4000, 4096, 0), 0);
    cr_assert_eq(file_size_of("a.qed"), fsize, "partial zeroing without backing allocated");
    expect_range(img, 0, model, size, "after partial zeroing of holes");
    close_img(img);
    img = open_img("a.qed");
    expect_range(img, 0, model, size, "after reopen");
    close_img(img);
    free(model);
}

Test(wzero, partial_ranges_with_backing)
{
    const uint64_t size = 64 * KiB, off = 1000, len = 3 * 4096 + 50 - 1000;
    uint8_t *model = malloc(size);
    struct qed_extent ext[MAX_EXT];
    size_t n;
    qed_image *img;
    struct qed_check_result res;

    make_raw("b.raw", size, 141, model);
    tf_create(&F.tf, "a.qed", size, 4096, 1, "b.raw", QED_BACKING_RAW);
    img = open_img("a.qed");
    cr_assert_eq(do_wzero(img, off, len, 0), 0);
    memset(model + off, 0, len);
    expect_range(img, 0, model, size, "partial zeroing over backing");
    /* whole clusters 1..2 are zero clusters; 0 and 3 hold data */
    cr_assert_eq(do_bstatus(img, 0, 4 * 4096, ext, &n), 0);
    cr_assert_eq(n, 3, "%zu extents", n);
    cr_assert(ext[0].data && ext[0].length == 4096 && ext[0].depth == 0);
    cr_assert(ext[1].zero && !ext[1].data && ext[1].length == 8192 && ext[1].depth == 0);
    cr_assert(ext[2].data && ext[2].length == 4096 && ext[2].depth == 0);
    res = live_check(img);
    assert_clean(&res, false, "live");
    close_img(img);
    img = open_img("a.qed");
    expect_range(img, 0, model, size, "after reopen");
    close_img(img);
    free(model);
}

Test(wzero, fast_zero_refuses_and_changes_nothing)
{
    const uint64_t size = 64 * KiB;
    uint8_t *model = malloc(size), buf[4096];
    struct qed_extent ext[MAX_EXT];
    size_t n;
    uint64_t fsize, writes;
    qed_image *img;

    make_raw("b.raw", size, 151, model);
    tf_create(&F.tf, "a.qed", size, 4096, 1, "b.raw", QED_BACKING_RAW);
    img = open_img("a.qed");
    tf_fill(buf, sizeof(buf), 152);
    cr_assert_eq(do_write(img, 4 * 4096, buf, sizeof(buf), 0), 0);
    memcpy(model + 4 * 4096, buf, sizeof(buf));

    fsize = file_size_of("a.qed");
    writes = qed_aio_test_count(F.tf.aio, QED_IO_WRITE);
    /* allocated data: zeros would have to be written */
    cr_assert_eq(do_wzero(img, 4 * 4096, 4096, QED_REQ_FAST_ZERO), -ENOTSUP);
    /* whole unallocated clusters first, then the data cluster: still nothing */
    cr_assert_eq(do_wzero(img, 0, 5 * 4096, QED_REQ_FAST_ZERO), -ENOTSUP);
    /* partial cluster over backing: would need a copy */
    cr_assert_eq(do_wzero(img, 8 * 4096 + 10, 100, QED_REQ_FAST_ZERO), -ENOTSUP);
    /* provisioning always writes */
    cr_assert_eq(do_wzero(img, 8 * 4096, 4096, QED_REQ_FAST_ZERO | QED_REQ_NO_HOLE),
                 -ENOTSUP);
    cr_assert_eq(qed_aio_test_count(F.tf.aio, QED_IO_WRITE), writes, "a refused FAST_ZERO wrote");
    cr_assert_eq(file_size_of("a.qed"), fsize);
    expect_range(img, 0, model, size, "after refused FAST_ZERO");
    cr_assert_eq(do_bstatus(img, 0, 4 * 4096, ext, &n), 0);
    cr_assert(n >= 1 && ext[0].data && ext[0].depth == 1 && ext[0].length == 4 * 4096,
              "clusters before the data changed (data=%d depth=%u length %" PRIu64 ")",
              ext[0].data, ext[0].depth, ext[0].length);

    /* whole unallocated clusters: fast, and done */
    cr_assert_eq(do_wzero(img, 0, 4 * 4096, QED_REQ_FAST_ZERO), 0);
    memset(model, 0, 4 * 4096);
    expect_range(img, 0, model, size, "after FAST_ZERO");
    cr_assert_eq(do_bstatus(img, 0, 4 * 4096, ext, &n), 0);
    cr_assert(n == 1 && ext[0].zero && !ext[0].data && ext[0].present);
    /* and zero clusters again are fast */
    cr_assert_eq(do_wzero(img, 0, 4 * 4096, QED_REQ_FAST_ZERO), 0);
    close_img(img);
    free(model);
}

Test(wzero, no_hole_allocates)
{
    uint8_t zero[8 * 4096] = {0};
    struct qed_extent ext[MAX_EXT];
    size_t n;
    uint64_t fsize;
    qed_image *img;

    make_raw("b.raw", MiB, 161, NULL);
    tf_create(&F.tf, "a.qed", MiB, 4096, 1, "b.raw", QED_BACKING_RAW);
    img = open_img("a.qed");
    fsize = file_size_of("a.qed");
    cr_assert_eq(do_wzero(img, 4096, 8 * 4096, QED_REQ_NO_HOLE), 0);
    cr_assert_geq(file_size_of("a.qed"), fsize + 8 * 4096, "NO_HOLE did not allocate");
    expect_range(img, 4096, zero, sizeof(zero), "NO_HOLE zeros");
    cr_assert_eq(do_bstatus(img, 4096, 8 * 4096, ext, &n), 0);
    cr_assert(n == 1 && ext[0].data && ext[0].has_offset && ext[0].depth == 0,
              "NO_HOLE range is not allocated data");
    close_img(img);
}

/* ====================================================================== */
/* Discard                                                                */
/* ====================================================================== */

Test(discard, punches_whole_clusters_and_keeps_mapping)
{
    const uint64_t len = 1 * MiB;
    uint8_t *buf = malloc(len), *got = malloc(len);
    struct qed_extent ext[MAX_EXT];
    size_t n;
    uint64_t b1, b2;
    qed_image *img;
    struct qed_check_result res;

    tf_create(&F.tf, "a.qed", 2 * MiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    tf_fill(buf, len, 171);
    cr_assert_eq(do_write(img, 0, buf, len, 0), 0);
    cr_assert_eq(do_flush(img), 0);
    b1 = blocks_of("a.qed");
    cr_assert_eq(do_discard(img, 0, len, 0), 0);
    b2 = blocks_of("a.qed");
    cr_assert_gt(qed_aio_test_count(F.tf.aio, QED_IO_PUNCH), 0, "discard issued no punch");
    if (fs_can_punch())
        cr_assert(b2 + (len / 512) * 3 / 4 <= b1,
                  "st_blocks went from %" PRIu64 " to %" PRIu64 " only", b1, b2);
    else
        cr_log_warn("the scratch file system cannot punch holes: st_blocks not checked");
    /* each cluster reads as zeros or as its old contents */
    cr_assert_eq(do_read(img, 0, got, len), 0);
    for (uint64_t c = 0; c < len; c += 4096)
        cr_assert(all_zero(got + c, 4096) || memcmp(got + c, buf + c, 4096) == 0,
                  "cluster at %" PRIu64 " is neither zeros nor its old contents", c);
    /* the mapping is kept */
    cr_assert_eq(do_bstatus(img, 0, len, ext, &n), 0);
    cr_assert(n == 1 && ext[0].data && ext[0].has_offset, "discard changed the mapping");
    res = live_check(img);
    assert_clean(&res, false, "live");
    /* the clusters are usable again, in place */
    uint64_t fsize = file_size_of("a.qed");
    cr_assert_eq(do_write(img, 0, buf, len, 0), 0);
    expect_range(img, 0, buf, len, "rewritten after discard");
    cr_assert_eq(file_size_of("a.qed"), fsize);
    close_img(img);
    res = tf_disk_check(&F.tf, "a.qed");
    assert_clean(&res, false, "on disk");
    free(buf);
    free(got);
}

Test(discard, partial_clusters_are_kept)
{
    uint8_t buf[6 * 4096];
    qed_image *img;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    tf_fill(buf, sizeof(buf), 181);
    cr_assert_eq(do_write(img, 0, buf, sizeof(buf), 0), 0);
    /* no whole cluster in range: nothing happens */
    cr_assert_eq(do_discard(img, 1000, 4096 + 2000, 0), 0);
    cr_assert_eq(qed_aio_test_count(F.tf.aio, QED_IO_PUNCH), 0);
    expect_range(img, 0, buf, sizeof(buf), "after partial discard");
    /* an unaligned range punches only the clusters it covers whole */
    cr_assert_eq(do_discard(img, 2 * 4096 - 10, 3 * 4096 + 20, 0), 0);
    expect_range(img, 0, buf, 2 * 4096, "clusters before the punched ones");
    expect_range(img, 5 * 4096, buf + 5 * 4096, 4096, "cluster after the punched ones");
    close_img(img);
}

Test(discard, unallocated_and_backing_untouched)
{
    uint8_t *back = malloc(MiB);
    qed_image *img;

    make_raw("b.raw", MiB, 191, back);
    tf_create(&F.tf, "a.qed", MiB, 4096, 1, "b.raw", QED_BACKING_RAW);
    img = open_img("a.qed");
    cr_assert_eq(do_discard(img, 0, MiB, 0), 0);
    cr_assert_eq(qed_aio_test_count(F.tf.aio, QED_IO_PUNCH), 0);
    expect_range(img, 0, back, MiB, "backing after discard");
    close_img(img);
    free(back);
}

/* ====================================================================== */
/* Flush and FUA                                                          */
/* ====================================================================== */

Test(flush, flush_issues_fsync)
{
    uint8_t buf[4096];
    qed_image *img;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    tf_fill(buf, sizeof(buf), 201);
    cr_assert_eq(do_write(img, 0, buf, sizeof(buf), 0), 0);
    uint64_t f0 = qed_aio_test_count(F.tf.aio, QED_IO_FSYNC);
    cr_assert_eq(do_flush(img), 0);
    cr_assert_eq(qed_aio_test_count(F.tf.aio, QED_IO_FSYNC), f0 + 1);
    close_img(img);
}

Test(flush, fua_issues_fsync_after_the_data)
{
    uint8_t buf[4096];
    struct oplog *log = calloc(1, sizeof(*log));
    qed_image *img;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    tf_fill(buf, sizeof(buf), 211);
    cr_assert_eq(do_write(img, 0, buf, sizeof(buf), 0), 0);

    /* an in-place write without FUA does no fsync */
    uint64_t f0 = qed_aio_test_count(F.tf.aio, QED_IO_FSYNC);
    cr_assert_eq(do_write(img, 0, buf, sizeof(buf), 0), 0);
    cr_assert_eq(qed_aio_test_count(F.tf.aio, QED_IO_FSYNC), f0);

    /* with FUA it does, after the data write */
    qed_aio_test_set_observer(F.tf.aio, oplog_observer, log);
    cr_assert_eq(do_write(img, 0, buf, sizeof(buf), QED_REQ_FUA), 0);
    cr_assert_eq(log->n, 2);
    cr_assert(log->op[0] == QED_IO_WRITE && log->op[1] == QED_IO_FSYNC,
              "FUA write: ops %d, %d", log->op[0], log->op[1]);

    /* an allocating FUA write ends with an fsync too */
    log->n = 0;
    cr_assert_eq(do_write(img, 64 * KiB, buf, sizeof(buf), QED_REQ_FUA), 0);
    cr_assert(log->n >= 2 && log->op[log->n - 1] == QED_IO_FSYNC, "allocating FUA write");

    log->n = 0;
    cr_assert_eq(do_wzero(img, 0, 4096, QED_REQ_FUA), 0);
    cr_assert(log->n >= 2 && log->op[log->n - 1] == QED_IO_FSYNC, "FUA write zeroes");
    log->n = 0;
    cr_assert_eq(do_discard(img, 64 * KiB, 4096, QED_REQ_FUA), 0);
    cr_assert(log->n >= 1 && log->op[log->n - 1] == QED_IO_FSYNC, "FUA discard");
    qed_aio_test_set_observer(F.tf.aio, NULL, NULL);
    close_img(img);
    free(log);
}

Test(flush, flush_waits_for_its_fsync)
{
    qed_image *img;
    struct tf_done d = {0};

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    set_manual(true);
    cr_assert_eq(TF_SUBMIT(qed_flush(img, tf_done_cb, &d)), 0);
    for (int i = 0; i < 10; i++)
        ev_run(F.tf.loop, EVRUN_NOWAIT);
    cr_assert_eq(d.calls, 0, "flush completed before its fsync");
    cr_assert_eq(qed_aio_test_pending(F.tf.aio), 1);
    cr_assert_eq(qed_aio_test_peek(F.tf.aio, 0)->op, QED_IO_FSYNC);
    drive(ORD_FIFO, &d, 1);
    cr_assert_eq(d.ret, 0);
    set_manual(false);
    close_img(img);
}

/* ====================================================================== */
/* Block status                                                           */
/* ====================================================================== */

static void expect_ext(const struct qed_extent *x, uint64_t start, uint64_t len, uint32_t depth,
                       bool present, bool zero, bool data, const char *what)
{
    cr_assert(x->start == start && x->length == len && x->depth == depth &&
                  x->present == present && x->zero == zero && x->data == data,
              "%s: got start %" PRIu64 " len %" PRIu64 " depth %u present %d zero %d data %d; "
              "want start %" PRIu64 " len %" PRIu64 " depth %u present %d zero %d data %d",
              what, x->start, x->length, x->depth, x->present, x->zero, x->data, start, len, depth,
              present, zero, data);
}

/* The host offset of a data extent really holds the data. */
static void expect_host(const char *name, const struct qed_extent *x, const uint8_t *want)
{
    uint8_t *got = malloc(x->length);
    int fd = open(tf_path(&F.tf, name), O_RDONLY);
    cr_assert(x->has_offset, "data extent without an offset");
    cr_assert(fd >= 0 && got);
    cr_assert_eq(pread(fd, got, x->length, (off_t)x->offset), (ssize_t)x->length);
    close(fd);
    cr_assert(memcmp(got, want, x->length) == 0, "extent at %" PRIu64 ": host offset %" PRIu64
              " does not hold its data", x->start, x->offset);
    free(got);
}

Test(bstatus, mixed_layout_without_backing)
{
    uint8_t buf[3 * 4096];
    struct qed_extent ext[MAX_EXT];
    size_t n;
    qed_image *img;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    tf_fill(buf, sizeof(buf), 221);
    cr_assert_eq(do_write(img, 0, buf, 2 * 4096, 0), 0);      /* 0-1 data */
    cr_assert_eq(do_wzero(img, 2 * 4096, 4096, 0), 0);        /* 2 zero */
    cr_assert_eq(do_write(img, 5 * 4096, buf + 8192, 4096, 0), 0); /* 5 data */
    cr_assert_eq(do_bstatus(img, 0, MiB, ext, &n), 0);
    cr_assert_eq(n, 5, "%zu extents", n);
    expect_ext(&ext[0], 0, 8192, 0, true, false, true, "data 0-1");
    expect_ext(&ext[1], 8192, 4096, 0, true, true, false, "zero 2");
    expect_ext(&ext[2], 12288, 8192, 0, false, true, false, "hole 3-4");
    expect_ext(&ext[3], 20480, 4096, 0, true, false, true, "data 5");
    expect_ext(&ext[4], 24576, MiB - 24576, 0, false, true, false, "hole to the end");
    expect_host("a.qed", &ext[0], buf);
    expect_host("a.qed", &ext[3], buf + 8192);

    /* an unaligned sub-range starts and ends where asked */
    cr_assert_eq(do_bstatus(img, 1000, 4 * 4096, ext, &n), 0);
    cr_assert_eq(n, 3);
    expect_ext(&ext[0], 1000, 8192 - 1000, 0, true, false, true, "sub data");
    expect_ext(&ext[2], 12288, 1000 + 4 * 4096 - 12288, 0, false, true, false, "sub hole");
    /* a limit on the extent count stops early, contiguously */
    {
        struct tf_done d = {0};
        cr_assert_eq(TF_SUBMIT(qed_block_status(img, 0, MiB, ext, 2, &n, tf_done_cb, &d)), 0);
        wait1(&d);
        cr_assert_eq(d.ret, 0);
        cr_assert_eq(n, 2);
        cr_assert_eq(ext[1].start, 8192);
    }
    close_img(img);
}

Test(bstatus, raw_backing)
{
    uint8_t buf[4096];
    struct qed_extent ext[MAX_EXT];
    size_t n;
    qed_image *img;

    make_raw("b.raw", 512 * KiB, 231, NULL);
    tf_create(&F.tf, "a.qed", MiB, 4096, 1, "b.raw", QED_BACKING_RAW);
    img = open_img("a.qed");
    tf_fill(buf, sizeof(buf), 232);
    cr_assert_eq(do_write(img, 0, buf, 4096, 0), 0);
    cr_assert_eq(do_wzero(img, 4096, 4096, 0), 0);
    cr_assert_eq(do_bstatus(img, 0, MiB, ext, &n), 0);
    cr_assert_eq(n, 4, "%zu extents", n);
    expect_ext(&ext[0], 0, 4096, 0, true, false, true, "data");
    expect_ext(&ext[1], 4096, 4096, 0, true, true, false, "zero");
    expect_ext(&ext[2], 8192, 512 * KiB - 8192, 1, true, false, true, "backing data");
    cr_assert(ext[2].has_offset && ext[2].offset == 8192, "raw backing offset");
    /* past the backing file's end nothing holds the range */
    cr_assert_eq(ext[3].start, 512 * KiB);
    cr_assert(ext[3].zero && !ext[3].data && !ext[3].present, "past the backing end");
    close_img(img);
}

Test(bstatus, qed_backing_chain_depths)
{
    uint8_t buf[4096];
    struct qed_extent ext[MAX_EXT];
    size_t n;
    qed_image *img;

    tf_create(&F.tf, "base.qed", 64 * KiB, 4096, 1, NULL, 0);
    img = open_img("base.qed");
    tf_fill(buf, sizeof(buf), 241);
    cr_assert_eq(do_write(img, 2 * 4096, buf, 4096, 0), 0); /* 2 data */
    cr_assert_eq(do_wzero(img, 3 * 4096, 4096, 0), 0);      /* 3 zero */
    close_img(img);
    tf_create(&F.tf, "mid.qed", 64 * KiB, 4096, 1, "base.qed", QED_BACKING_QED);
    img = open_img("mid.qed");
    cr_assert_eq(do_write(img, 4 * 4096, buf, 4096, 0), 0); /* 4 data */
    close_img(img);
    tf_create(&F.tf, "top.qed", 64 * KiB, 4096, 1, "mid.qed", QED_BACKING_QED);
    img = open_img("top.qed");
    cr_assert_eq(do_write(img, 0, buf, 4096, 0), 0); /* 0 data */

    cr_assert_eq(do_bstatus(img, 0, 64 * KiB, ext, &n), 0);
    cr_assert_eq(n, 6, "%zu extents", n);
    expect_ext(&ext[0], 0, 4096, 0, true, false, true, "top data");
    expect_ext(&ext[1], 4096, 4096, 2, false, true, false, "hole everywhere");
    expect_ext(&ext[2], 8192, 4096, 2, true, false, true, "base data");
    expect_ext(&ext[3], 12288, 4096, 2, true, true, false, "base zero");
    expect_ext(&ext[4], 16384, 4096, 1, true, false, true, "mid data");
    expect_ext(&ext[5], 20480, 64 * KiB - 20480, 2, false, true, false, "hole to the end");
    expect_host("base.qed", &ext[2], buf);
    expect_host("mid.qed", &ext[4], buf);
    close_img(img);
}

/* More backing extents than one call returns: every call stays contiguous. */
Test(bstatus, many_extents_through_backing)
{
    enum { NCL = 300 };
    uint8_t buf[4096];
    struct qed_extent *ext = calloc(MAX_EXT, sizeof(*ext));
    qed_image *img;
    uint64_t pos = 0, size = NCL * 4096ull;
    unsigned calls = 0;

    tf_create(&F.tf, "base.qed", size, 4096, 1, NULL, 0);
    img = open_img("base.qed");
    tf_fill(buf, sizeof(buf), 245);
    for (int c = 0; c < NCL; c += 2)
        cr_assert_eq(do_write(img, (uint64_t)c * 4096, buf, 4096, 0), 0);
    close_img(img);
    tf_create(&F.tf, "top.qed", size, 4096, 1, "base.qed", QED_BACKING_QED);
    img = open_img("top.qed");
    while (pos < size) {
        size_t n = 0;
        cr_assert_eq(do_bstatus(img, pos, size - pos, ext, &n), 0);
        cr_assert_gt(n, 0, "no extent at %" PRIu64, pos);
        calls++;
        for (size_t i = 0; i < n; i++) {
            uint64_t c = pos / 4096;
            cr_assert_eq(ext[i].start, pos, "extents not contiguous at %" PRIu64, pos);
            cr_assert_eq(ext[i].length, 4096, "extent at %" PRIu64 " is %" PRIu64 " bytes", pos,
                         ext[i].length);
            cr_assert_eq(ext[i].depth, 1, "depth at %" PRIu64, pos);
            cr_assert_eq(ext[i].data, c % 2 == 0, "data flag at cluster %" PRIu64, c);
            cr_assert_eq(ext[i].present, c % 2 == 0, "present flag at cluster %" PRIu64, c);
            pos += ext[i].length;
        }
    }
    cr_assert_eq(pos, size);
    cr_assert_geq(calls, 2, "expected the extent limit to split the answer");
    close_img(img);
    free(ext);
}

/* A corrupt L2 entry fails requests on that cluster with -EIO, and only those. */
Test(read, corrupt_l2_entry_fails_the_request)
{
    uint8_t buf[3 * 4096], got[3 * 4096], zero[4096] = {0};
    uint64_t l1[512], bad = htole64(0x7fffff000ull), fsize;
    struct qed_extent ext[MAX_EXT];
    size_t n;
    qed_image *img;
    int fd;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    tf_fill(buf, sizeof(buf), 255);
    cr_assert_eq(do_write(img, 0, buf, sizeof(buf), 0), 0);
    close_img(img);
    fsize = file_size_of("a.qed");
    cr_assert_lt(0x7fffff000ull, UINT64_MAX);
    cr_assert_gt(0x7fffff000ull, fsize);
    /* point cluster 1 past the end of the file */
    disk_l1("a.qed", l1, 512);
    fd = open(tf_path(&F.tf, "a.qed"), O_WRONLY);
    cr_assert(fd >= 0);
    cr_assert_eq(pwrite(fd, &bad, 8, (off_t)(l1[0] + 8)), 8);
    close(fd);

    img = open_img_opts("a.qed", true, 0);
    memset(got, 0xCC, sizeof(got));
    cr_assert_eq(do_read(img, 0, got, sizeof(got)), -EIO);
    cr_assert_eq(do_read(img, 4096 + 100, got, 10), -EIO);
    cr_assert_eq(do_bstatus(img, 0, sizeof(buf), ext, &n), -EIO);
    /* its neighbours still read */
    expect_range(img, 0, buf, 4096, "cluster before the corrupt one");
    expect_range(img, 2 * 4096, buf + 2 * 4096, 4096, "cluster after the corrupt one");
    expect_range(img, 3 * 4096, zero, 4096, "unallocated cluster");
    close_img(img);
}

/* ====================================================================== */
/* Resize                                                                 */
/* ====================================================================== */

Test(resize, grows_and_refuses_shrink_and_over_max)
{
    uint8_t buf[512], zero[4096] = {0};
    struct tf_done d = {0};
    qed_image *img;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    cr_assert_eq(do_resize(img, 2 * MiB), 0);
    cr_assert_eq(qed_size(img), 2 * MiB);
    expect_range(img, 2 * MiB - 4096, zero, 4096, "grown area");
    tf_fill(buf, sizeof(buf), 251);
    cr_assert_eq(do_write(img, 2 * MiB - 512, buf, 512, 0), 0);
    /* rounded up to 512 */
    cr_assert_eq(do_resize(img, 2 * MiB + 1), 0);
    cr_assert_eq(qed_size(img), 2 * MiB + 512);

    /* shrinking and going past the maximum are refused at submit */
    cr_assert_eq(TF_SUBMIT(qed_resize(img, MiB, tf_done_cb, &d)), -EINVAL);
    uint64_t max = 512ull * 512 * 4096;
    int rc = TF_SUBMIT(qed_resize(img, max + 512, tf_done_cb, &d));
    cr_assert(rc == -EFBIG || rc == -EINVAL || rc == -ENOSPC, "over-max resize: %d", rc);
    for (int i = 0; i < 10; i++)
        ev_run(F.tf.loop, EVRUN_NOWAIT);
    cr_assert_eq(d.calls, 0, "a refused resize ran its callback");
    cr_assert_eq(qed_size(img), 2 * MiB + 512);
    /* exactly the maximum is fine */
    cr_assert_eq(do_resize(img, max), 0);
    close_img(img);

    img = open_img("a.qed");
    cr_assert_eq(qed_size(img), max);
    expect_range(img, 2 * MiB - 512, buf, 512, "data written before the resize");
    close_img(img);
}

/* ====================================================================== */
/* Argument checks                                                        */
/* ====================================================================== */

Test(args, out_of_range_rejected_at_submit)
{
    uint8_t buf[2048];
    struct tf_done d = {0};
    struct qed_extent ext[4];
    size_t n;
    qed_image *img;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    cr_assert_eq(TF_SUBMIT(qed_read(img, MiB - 512, buf, 1024, tf_done_cb, &d)), -EINVAL);
    cr_assert_eq(TF_SUBMIT(qed_read(img, MiB + 512, buf, 0, tf_done_cb, &d)), -EINVAL);
    cr_assert_eq(TF_SUBMIT(qed_read(img, UINT64_MAX - 100, buf, 1024, tf_done_cb, &d)), -EINVAL);
    cr_assert_eq(TF_SUBMIT(qed_write(img, MiB - 512, buf, 1024, 0, tf_done_cb, &d)), -ENOSPC);
    cr_assert_eq(TF_SUBMIT(qed_write(img, UINT64_MAX - 100, buf, 1024, 0, tf_done_cb, &d)),
                 -ENOSPC);
    cr_assert_eq(TF_SUBMIT(qed_write_zeroes(img, MiB, 512, 0, tf_done_cb, &d)), -ENOSPC);
    cr_assert_eq(TF_SUBMIT(qed_write_zeroes(img, 0, UINT64_MAX, 0, tf_done_cb, &d)), -ENOSPC);
    cr_assert_eq(TF_SUBMIT(qed_discard(img, MiB - 512, 1024, 0, tf_done_cb, &d)), -EINVAL);
    cr_assert_eq(TF_SUBMIT(qed_block_status(img, MiB, 512, ext, 4, &n, tf_done_cb, &d)), -EINVAL);
    /* unknown flags */
    cr_assert_eq(TF_SUBMIT(qed_write(img, 0, buf, 512, 0x80, tf_done_cb, &d)), -EINVAL);
    cr_assert_eq(TF_SUBMIT(qed_read(img, 0, buf, 512, tf_done_cb, &d)), 0);
    wait1(&d);
    for (int i = 0; i < 10; i++)
        ev_run(F.tf.loop, EVRUN_NOWAIT);
    cr_assert_eq(d.calls, 1, "a rejected request ran its callback");
    close_img(img);
}

Test(args, writes_on_read_only_image)
{
    uint8_t buf[512] = {1};
    struct tf_done d = {0};
    qed_image *img;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img_opts("a.qed", true, 0);
    cr_assert_eq(TF_SUBMIT(qed_write(img, 0, buf, 512, 0, tf_done_cb, &d)), -EROFS);
    cr_assert_eq(TF_SUBMIT(qed_write_zeroes(img, 0, 512, 0, tf_done_cb, &d)), -EROFS);
    cr_assert_eq(TF_SUBMIT(qed_discard(img, 0, 4096, 0, tf_done_cb, &d)), -EROFS);
    cr_assert_eq(TF_SUBMIT(qed_resize(img, 2 * MiB, tf_done_cb, &d)), -EROFS);
    for (int i = 0; i < 10; i++)
        ev_run(F.tf.loop, EVRUN_NOWAIT);
    cr_assert_eq(d.calls, 0);
    cr_assert_eq(do_read(img, 0, buf, 512), 0);
    cr_assert(all_zero(buf, 512));
    cr_assert_eq(do_flush(img), 0);
    cr_assert_eq(qed_aio_test_count(F.tf.aio, QED_IO_WRITE), 0, "a read-only image was written");
    close_img(img);
}

/* ====================================================================== */
/* Callback delivery                                                      */
/* ====================================================================== */

Test(submit, callbacks_never_run_inside_submit)
{
    uint8_t buf[8192];
    struct qed_extent ext[MAX_EXT];
    size_t n;
    struct tf_done d[16] = {{0}};
    qed_image *img;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    tf_fill(buf, sizeof(buf), 261);
    cr_assert_eq(do_write(img, 0, buf, sizeof(buf), 0), 0);
    /* The table is cached now: these need no I/O, or none at all. */
    int i = 0;
    cr_assert_eq(TF_SUBMIT(qed_read(img, 0, buf, 0, tf_done_cb, &d[i++])), 0);           /* empty */
    /* a hole */
    cr_assert_eq(TF_SUBMIT(qed_read(img, 100 * 4096, buf, 4096, tf_done_cb, &d[i++])), 0);
    cr_assert_eq(TF_SUBMIT(qed_write(img, 0, buf, 0, 0, tf_done_cb, &d[i++])), 0);
    cr_assert_eq(TF_SUBMIT(qed_write_zeroes(img, 0, 0, 0, tf_done_cb, &d[i++])), 0);
    cr_assert_eq(TF_SUBMIT(qed_write_zeroes(img, 100 * 4096 + 1, 10, 0, tf_done_cb, &d[i++])), 0);
    cr_assert_eq(TF_SUBMIT(qed_discard(img, 0, 0, 0, tf_done_cb, &d[i++])), 0);
    cr_assert_eq(TF_SUBMIT(qed_discard(img, 100 * 4096, 4096, 0, tf_done_cb, &d[i++])), 0);
    cr_assert_eq(TF_SUBMIT(qed_block_status(img, 0, 0, ext, MAX_EXT, &n, tf_done_cb, &d[i++])), 0);
    cr_assert_eq(TF_SUBMIT(qed_block_status(img, 0, MiB, ext, MAX_EXT, &n, tf_done_cb, &d[i++])),
                 0);
    /* a resize to the same size changes nothing but the header */
    cr_assert_eq(TF_SUBMIT(qed_resize(img, MiB, tf_done_cb, &d[i++])), 0);
    /* cache hit with data I/O */
    cr_assert_eq(TF_SUBMIT(qed_read(img, 0, buf, 4096, tf_done_cb, &d[i++])), 0);
    cr_assert_eq(TF_SUBMIT(qed_flush(img, tf_done_cb, &d[i++])), 0);
    for (int j = 0; j < i; j++)
        cr_assert_eq(d[j].calls, 0, "request %d completed inside submit", j);
    drive(ORD_FIFO, d, (size_t)i);
    for (int j = 0; j < i; j++)
        cr_assert_eq(d[j].ret, 0, "request %d: %s", j, strerror(-d[j].ret));
    close_img(img);
}

/* A callback that submits the next request, which must not complete inside. */
struct chain {
    qed_image *img;
    uint8_t buf[4096];
    int left;
    int calls;
    int ret;
};

static void chain_cb(void *opaque, int ret)
{
    struct chain *c = opaque;
    cr_assert(!tf_in_submit, "chained callback ran inside submit");
    c->calls++;
    if (ret < 0)
        c->ret = ret;
    if (c->left-- > 0) {
        int rc;
        switch (c->left % 3) {
        case 0:
            rc = TF_SUBMIT(qed_read(c->img, 0, c->buf, 0, chain_cb, c));
            break;
        case 1:
            rc = TF_SUBMIT(qed_read(c->img, 4096, c->buf, 4096, chain_cb, c));
            break;
        default:
            rc = TF_SUBMIT(qed_write(c->img, 0, c->buf, 512, 0, chain_cb, c));
            break;
        }
        cr_assert_eq(rc, 0);
    }
}

Test(submit, submit_from_callback_defers_too)
{
    struct chain c = {.left = 30};
    qed_image *img;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    c.img = img;
    cr_assert_eq(TF_SUBMIT(qed_read(img, 0, c.buf, 0, chain_cb, &c)), 0);
    for (unsigned t = 0; c.calls < 31; t++) {
        cr_assert(t < 100000 && !F.tf.timed_out);
        ev_run(F.tf.loop, EVRUN_ONCE);
    }
    cr_assert_eq(c.ret, 0);
    close_img(img);
}

Test(submit, each_callback_runs_exactly_once)
{
    enum { N = 40 };
    uint8_t *bufs = malloc(N * 4096);
    struct tf_done d[N] = {{0}};
    qed_image *img;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    set_manual(true);
    F.rng = 5;
    for (int i = 0; i < N; i++) {
        uint8_t *b = bufs + i * 4096;
        int rc;
        tf_fill(b, 4096, 270 + i);
        switch (i % 4) {
        case 0:
            rc = TF_SUBMIT(qed_write(img, (uint64_t)(i % 8) * 4096, b, 4096, 0, tf_done_cb, &d[i]));
            break;
        case 1:
            rc = TF_SUBMIT(qed_read(img, (uint64_t)(i % 8) * 4096, b, 4096, tf_done_cb, &d[i]));
            break;
        case 2:
            rc = TF_SUBMIT(
                qed_write_zeroes(img, (uint64_t)(i % 8) * 4096, 4096, 0, tf_done_cb, &d[i]));
            break;
        default: rc = TF_SUBMIT(qed_flush(img, tf_done_cb, &d[i])); break;
        }
        cr_assert_eq(rc, 0);
    }
    drive(ORD_RANDOM, d, N);
    for (int t = 0; t < 100; t++)
        ev_run(F.tf.loop, EVRUN_NOWAIT);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(d[i].calls, 1, "request %d: %d calls", i, d[i].calls);
        cr_assert_eq(d[i].ret, 0, "request %d: %s", i, strerror(-d[i].ret));
    }
    cr_assert_eq(qed_inflight(img), 0);
    set_manual(false);
    close_img(img);
    free(bufs);
}

/* ====================================================================== */
/* Completion order                                                       */
/* ====================================================================== */

/* A batch of requests on disjoint ranges, with a model of the result. */
struct batch {
    uint64_t size;
    uint8_t *model;          /* expected image content afterwards */
    uint8_t *bufs[32];
    uint64_t roff[32];       /* reads: offset and expected content */
    uint64_t rlen[32];
    uint8_t *rwant[32];
    int is_read[32];
    struct tf_done d[32];
    int n;
};

static void batch_free(struct batch *b)
{
    for (int i = 0; i < b->n; i++) {
        free(b->bufs[i]);
        free(b->rwant[i]);
    }
    free(b->model);
}

static void batch_write(struct batch *b, qed_image *img, uint64_t off, uint64_t len, uint32_t seed)
{
    int i = b->n++;
    b->bufs[i] = malloc(len);
    tf_fill(b->bufs[i], len, seed);
    memcpy(b->model + off, b->bufs[i], len);
    cr_assert_eq(TF_SUBMIT(qed_write(img, off, b->bufs[i], len, 0, tf_done_cb, &b->d[i])), 0);
}

static void batch_wzero(struct batch *b, qed_image *img, uint64_t off, uint64_t len)
{
    int i = b->n++;
    memset(b->model + off, 0, len);
    cr_assert_eq(TF_SUBMIT(qed_write_zeroes(img, off, len, 0, tf_done_cb, &b->d[i])), 0);
}

/* A read of a range no request in the batch changes. */
static void batch_read(struct batch *b, qed_image *img, uint64_t off, uint64_t len)
{
    int i = b->n++;
    b->bufs[i] = malloc(len);
    b->rwant[i] = malloc(len);
    memcpy(b->rwant[i], b->model + off, len);
    b->is_read[i] = 1;
    b->roff[i] = off;
    b->rlen[i] = len;
    cr_assert_eq(TF_SUBMIT(qed_read(img, off, b->bufs[i], len, tf_done_cb, &b->d[i])), 0);
}

static void batch_verify(struct batch *b, const char *what)
{
    for (int i = 0; i < b->n; i++) {
        cr_assert_eq(b->d[i].ret, 0, "%s: request %d failed: %s", what, i, strerror(-b->d[i].ret));
        if (b->is_read[i])
            cr_assert(memcmp(b->bufs[i], b->rwant[i], b->rlen[i]) == 0,
                      "%s: read %d at %" PRIu64 " returned wrong data", what, i, b->roff[i]);
    }
}

static void run_reverse_batch(bool backing)
{
    /* 4 KiB clusters, table size 1: 2 MiB per L2 table */
    const uint64_t size = 6 * MiB;
    struct batch b = {.size = size};
    qed_image *img;
    struct qed_check_result res;

    b.model = calloc(1, size);
    if (backing) {
        make_raw("b.raw", size - MiB, 281, b.model);
        tf_create(&F.tf, "a.qed", size, 4096, 1, "b.raw", QED_BACKING_RAW);
    } else {
        tf_create(&F.tf, "a.qed", size, 4096, 1, NULL, 0);
    }
    img = open_img("a.qed");
    /* one L2 table exists and is cached before the batch */
    {
        uint8_t pre[4096];
        tf_fill(pre, sizeof(pre), 282);
        cr_assert_eq(do_write(img, 100 * 4096, pre, sizeof(pre), 0), 0);
        memcpy(b.model + 100 * 4096, pre, sizeof(pre));
    }
    set_manual(true);
    batch_write(&b, img, 0, 4096, 283);                       /* whole cluster */
    batch_write(&b, img, 3 * 4096 + 100, 700, 284);           /* partial, COW */
    batch_write(&b, img, 2 * MiB - 2000, 5000, 285);          /* across two L2 tables */
    batch_wzero(&b, img, 10 * 4096, 3 * 4096);                /* zero entries */
    batch_wzero(&b, img, 20 * 4096 + 10, 50);                 /* partial zeroing */
    batch_write(&b, img, 100 * 4096 + 512, 1024, 286);        /* in place */
    batch_read(&b, img, 50 * 4096, 8192);                     /* untouched */
    batch_read(&b, img, 100 * 4096 - 512, 512);               /* untouched neighbour */
    batch_write(&b, img, 4 * MiB + 4096, 3 * 4096, 287);      /* another new table */
    batch_wzero(&b, img, 4 * MiB + 64 * 4096, 64 * 4096);
    drive(ORD_REVERSE, b.d, (size_t)b.n);
    batch_verify(&b, backing ? "reverse, backing" : "reverse");
    set_manual(false);
    expect_range(img, 0, b.model, size, "image after reverse completions");
    res = live_check(img);
    assert_clean(&res, false, "live");
    close_img(img);
    res = tf_disk_check(&F.tf, "a.qed");
    assert_clean(&res, false, "on disk");
    img = open_img("a.qed");
    expect_range(img, 0, b.model, size, "after reopen");
    close_img(img);
    batch_free(&b);
}

Test(order, reverse_completions_give_correct_results)
{
    run_reverse_batch(false);
}

Test(order, reverse_completions_with_backing)
{
    run_reverse_batch(true);
}

/*
 * Several allocating writes into one L2 table submitted at once, on disjoint
 * byte ranges that share clusters, completed in scrambled orders.
 */
static void overlap_round(unsigned seed, bool backing, bool table_exists)
{
    const uint64_t size = MiB;
    struct batch b = {.size = size};
    qed_image *img;
    struct qed_check_result res;
    unsigned rs = seed;

    b.model = calloc(1, size);
    if (backing) {
        make_raw("b.raw", size, seed, b.model);
        tf_create(&F.tf, "a.qed", size, 4096, 1, "b.raw", QED_BACKING_RAW);
    } else {
        tf_create(&F.tf, "a.qed", size, 4096, 1, NULL, 0);
    }
    img = open_img("a.qed");
    if (table_exists) {
        uint8_t pre[512];
        tf_fill(pre, sizeof(pre), seed + 1);
        cr_assert_eq(do_write(img, 200 * 4096, pre, sizeof(pre), 0), 0);
        memcpy(b.model + 200 * 4096, pre, sizeof(pre));
    }
    set_manual(true);
    F.rng = seed;
    /* Cut [0, 6 clusters) into random disjoint pieces, each its own write. */
    uint64_t pos = (uint64_t)(rand_r(&rs) % 4) * 512;
    while (pos < 6 * 4096 && b.n < 20) {
        uint64_t len = 512 * (1 + (uint64_t)(rand_r(&rs) % 12));
        if (pos + len > 6 * 4096)
            len = 6 * 4096 - pos;
        batch_write(&b, img, pos, len, seed * 100 + (unsigned)b.n);
        pos += len + (uint64_t)(rand_r(&rs) % 3) * 512; /* sometimes leave a gap */
    }
    /* and zero a whole cluster next to them */
    batch_wzero(&b, img, 7 * 4096, 4096);
    drive(ORD_RANDOM, b.d, (size_t)b.n);
    batch_verify(&b, "overlapping allocations");
    set_manual(false);
    for (uint64_t c = 0; c < 8 * 4096; c += 512) {
        uint8_t got[512];
        cr_assert_eq(do_read(img, c, got, 512), 0);
        cr_assert(memcmp(got, b.model + c, 512) == 0,
                  "seed %u backing %d table %d: sector at %" PRIu64 " is wrong", seed, backing,
                  table_exists, c);
    }
    res = live_check(img);
    assert_clean(&res, false, "live");
    close_img(img);
    res = tf_disk_check(&F.tf, "a.qed");
    assert_clean(&res, false, "on disk");
    img = open_img("a.qed");
    expect_range(img, 0, b.model, size, "after reopen");
    close_img(img);
    batch_free(&b);
    unlink(tf_path(&F.tf, "a.qed"));
    unlink(tf_path(&F.tf, "b.raw"));
}

Test(order, overlapping_allocating_writes_same_l2)
{
    unsigned base = tf_seed("overlapping_allocating_writes_same_l2");
    for (unsigned i = 0; i < 24; i++) {
        unsigned seed = base + i;
        overlap_round(seed, i % 2, (i / 2) % 2);
    }
}

/* Two writes to the very same range at once: each sector ends up all one or all the other. */
Test(order, identical_range_writes_pick_one_per_sector)
{
    unsigned base = tf_seed("identical_range_writes");
    for (unsigned round = 0; round < 10; round++) {
        uint8_t a[3 * 4096], c[3 * 4096], got[3 * 4096];
        struct tf_done d[2] = {{0}};
        qed_image *img;

        tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
        img = open_img("a.qed");
        tf_fill(a, sizeof(a), 301 + round);
        tf_fill(c, sizeof(c), 401 + round);
        set_manual(true);
        F.rng = base + round;
        cr_assert_eq(TF_SUBMIT(qed_write(img, 4096 + 1024, a, sizeof(a), 0, tf_done_cb, &d[0])), 0);
        cr_assert_eq(TF_SUBMIT(qed_write(img, 4096 + 1024, c, sizeof(c), 0, tf_done_cb, &d[1])), 0);
        drive(ORD_RANDOM, d, 2);
        set_manual(false);
        cr_assert(d[0].ret == 0 && d[1].ret == 0);
        cr_assert_eq(do_read(img, 4096 + 1024, got, sizeof(got)), 0);
        for (size_t s = 0; s < sizeof(got); s += 512)
            cr_assert(memcmp(got + s, a + s, 512) == 0 || memcmp(got + s, c + s, 512) == 0,
                      "seed %u: sector %zu is neither write", base + round, s / 512);
        close_img(img);
        struct qed_check_result res = tf_disk_check(&F.tf, "a.qed");
        assert_clean(&res, false, "on disk");
        unlink(tf_path(&F.tf, "a.qed"));
    }
}

/* Concurrent misses on one L2 table read it from disk once, in any completion order. */
Test(order, concurrent_misses_read_the_table_once)
{
    uint8_t buf[8 * 4096], got[8][4096];
    struct tf_done d[8] = {{0}};
    struct oplog *log = calloc(1, sizeof(*log));
    uint64_t l1[512];
    qed_image *img;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    tf_fill(buf, sizeof(buf), 291);
    cr_assert_eq(do_write(img, 0, buf, sizeof(buf), 0), 0);
    close_img(img);
    disk_l1("a.qed", l1, 512);

    for (int o = 0; o < 3; o++) {
        img = open_img("a.qed"); /* cold cache */
        memset(d, 0, sizeof(d));
        log->n = 0;
        set_manual(true);
        F.rng = 17 + (unsigned)o;
        qed_aio_test_set_observer(F.tf.aio, oplog_observer, log);
        for (int i = 0; i < 8; i++)
            cr_assert_eq(
                TF_SUBMIT(qed_read(img, (uint64_t)i * 4096, got[i], 4096, tf_done_cb, &d[i])), 0);
        drive((enum order)o, d, 8);
        qed_aio_test_set_observer(F.tf.aio, NULL, NULL);
        set_manual(false);
        unsigned table_reads = 0;
        for (size_t j = 0; j < log->n; j++)
            table_reads += log->op[j] == QED_IO_READ && log->off[j] == l1[0];
        cr_assert_eq(table_reads, 1, "%s: the table was read %u times", order_name((enum order)o),
                     table_reads);
        for (int i = 0; i < 8; i++) {
            cr_assert_eq(d[i].ret, 0);
            cr_assert(memcmp(got[i], buf + i * 4096, 4096) == 0, "read %d wrong", i);
        }
        close_img(img);
    }
    free(log);
}

/*
 * A read of a cluster an allocating write is filling returns the old or the
 * new contents entirely.  The write is held after @k of its I/Os, the read is
 * submitted, then everything completes in the order @o.
 */
static void read_during_alloc(bool backing, bool table_exists, unsigned k, enum order o,
                              unsigned seed, unsigned *nios)
{
    const uint64_t size = 256 * KiB, woff = 4096 + 1000, wlen = 2000;
    const uint64_t roff = 0, rlen = 3 * 4096;
    uint8_t *oldc = calloc(1, size), *newc, wbuf[2000], rbuf[3 * 4096];
    struct tf_done d[2] = {{0}};
    qed_image *img;

    if (backing) {
        make_raw("b.raw", size, 311, oldc);
        tf_create(&F.tf, "a.qed", size, 4096, 1, "b.raw", QED_BACKING_RAW);
    } else {
        tf_create(&F.tf, "a.qed", size, 4096, 1, NULL, 0);
    }
    img = open_img("a.qed");
    if (table_exists) {
        uint8_t pre[4096];
        tf_fill(pre, sizeof(pre), 312);
        cr_assert_eq(do_write(img, 40 * 4096, pre, sizeof(pre), 0), 0);
        memcpy(oldc + 40 * 4096, pre, sizeof(pre));
    }
    newc = malloc(size);
    memcpy(newc, oldc, size);
    tf_fill(wbuf, sizeof(wbuf), 313);
    memcpy(newc + woff, wbuf, wlen);

    set_manual(true);
    F.rng = seed;
    uint64_t before = 0;
    for (int op = 0; op <= QED_IO_PUNCH; op++)
        before += qed_aio_test_count(F.tf.aio, (enum qed_io_op)op);
    cr_assert_eq(TF_SUBMIT(qed_write(img, woff, wbuf, wlen, 0, tf_done_cb, &d[0])), 0);
    for (unsigned i = 0; i < k && qed_aio_test_pending(F.tf.aio) > 0; i++)
        cr_assert_eq(qed_aio_test_complete(F.tf.aio, 0, 0), 0);
    ev_run(F.tf.loop, EVRUN_NOWAIT);
    memset(rbuf, 0xEE, sizeof(rbuf));
    cr_assert_eq(TF_SUBMIT(qed_read(img, roff, rbuf, rlen, tf_done_cb, &d[1])), 0);
    drive(o, d, 2);
    set_manual(false);
    cr_assert(d[0].ret == 0 && d[1].ret == 0);
    if (nios) {
        uint64_t after = 0;
        for (int op = 0; op <= QED_IO_PUNCH; op++)
            after += qed_aio_test_count(F.tf.aio, (enum qed_io_op)op);
        *nios = (unsigned)(after - before);
    }
    bool is_old = memcmp(rbuf, oldc + roff, rlen) == 0;
    bool is_new = memcmp(rbuf, newc + roff, rlen) == 0;
    cr_assert(is_old || is_new,
              "backing %d table %d: read after %u write I/Os (%s order, seed %u) saw a mix of "
              "old and new contents",
              backing, table_exists, k, order_name(o), seed);
    expect_range(img, 0, newc, size, "after the write");
    close_img(img);
    struct qed_check_result res = tf_disk_check(&F.tf, "a.qed");
    assert_clean(&res, false, "on disk");
    unlink(tf_path(&F.tf, "a.qed"));
    unlink(tf_path(&F.tf, "b.raw"));
    free(oldc);
    free(newc);
}

Test(order, read_while_allocating_write_fills_cluster)
{
    unsigned seed = tf_seed("read_while_allocating_write");
    for (int backing = 0; backing < 2; backing++) {
        for (int table = 0; table < 2; table++) {
            unsigned total = 0;
            /* how many I/Os the write and the read make */
            read_during_alloc(backing, table, 0, ORD_FIFO, seed, &total);
            cr_assert_geq(total, 2, "backing %d table %d: only %u I/Os", backing, table, total);
            for (unsigned k = 0; k < total; k++) {
                read_during_alloc(backing, table, k, ORD_FIFO, seed, NULL);
                read_during_alloc(backing, table, k, ORD_REVERSE, seed, NULL);
                for (unsigned s = 0; s < 3; s++)
                    read_during_alloc(backing, table, k, ORD_RANDOM, seed + s * 7919 + k, NULL);
            }
        }
    }
}

/* ====================================================================== */
/* NEED_CHECK                                                             */
/* ====================================================================== */

Test(needcheck, set_on_disk_before_first_allocation_without_backing)
{
    uint8_t buf[4096];
    struct tf_done d = {0};
    qed_image *img;
    bool saw_data_write = false;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    cr_assert_eq(disk_features("a.qed") & QED_F_NEED_CHECK, 0);
    set_manual(true);
    tf_fill(buf, sizeof(buf), 321);
    cr_assert_eq(TF_SUBMIT(qed_write(img, 8192, buf, sizeof(buf), 0, tf_done_cb, &d)), 0);
    /* Walk the I/Os one by one: until the flag is durable (header write,
     * then an fsync), no other write may happen. */
    bool hdr_written = false, hdr_synced = false;
    while (d.calls == 0) {
        ev_run(F.tf.loop, EVRUN_NOWAIT);
        if (d.calls)
            break;
        struct qed_io *io = qed_aio_test_peek(F.tf.aio, 0);
        cr_assert_not_null(io, "write stalled");
        cr_assert_eq(qed_aio_test_pending(F.tf.aio), 1, "more than one I/O at once");
        if (io->op == QED_IO_WRITE && io->offset == 0) {
            hdr_written = true;
        } else if (io->op == QED_IO_FSYNC && hdr_written) {
            hdr_synced = true;
        } else if (io->op == QED_IO_WRITE) {
            cr_assert(hdr_synced, "write at %" PRIu64 " before NEED_CHECK was durable",
                      io->offset);
            cr_assert(disk_features("a.qed") & QED_F_NEED_CHECK,
                      "NEED_CHECK not on disk before a write at %" PRIu64, io->offset);
            saw_data_write = true;
        }
        cr_assert_eq(qed_aio_test_complete(F.tf.aio, 0, 0), 0);
    }
    cr_assert_eq(d.ret, 0);
    cr_assert(saw_data_write && hdr_synced);
    cr_assert(disk_features("a.qed") & QED_F_NEED_CHECK);
    set_manual(false);
    /* a second allocation does not write the header again */
    struct oplog *log = calloc(1, sizeof(*log));
    qed_aio_test_set_observer(F.tf.aio, oplog_observer, log);
    cr_assert_eq(do_write(img, 64 * KiB, buf, sizeof(buf), 0), 0);
    for (size_t i = 0; i < log->n; i++)
        cr_assert(!(log->op[i] == QED_IO_WRITE && log->off[i] == 0), "header rewritten");
    qed_aio_test_set_observer(F.tf.aio, NULL, NULL);
    free(log);
    close_img(img);
    cr_assert_eq(disk_features("a.qed") & QED_F_NEED_CHECK, 0, "NEED_CHECK left set on close");
}

Test(needcheck, not_set_with_backing_file)
{
    uint8_t buf[4096];
    struct oplog *log = calloc(1, sizeof(*log));
    qed_image *img;

    make_raw("b.raw", MiB, 331, NULL);
    tf_create(&F.tf, "a.qed", MiB, 4096, 1, "b.raw", QED_BACKING_RAW);
    img = open_img("a.qed");
    qed_aio_test_set_observer(F.tf.aio, oplog_observer, log);
    tf_fill(buf, sizeof(buf), 332);
    cr_assert_eq(do_write(img, 100, buf, sizeof(buf), 0), 0);
    cr_assert_eq(disk_features("a.qed") & QED_F_NEED_CHECK, 0);
    /* data flushed before the L2 update (rule 3) */
    size_t first_data = SIZE_MAX, l2w = SIZE_MAX;
    for (size_t i = 0; i < log->n; i++) {
        cr_assert(!(log->op[i] == QED_IO_WRITE && log->off[i] == 0), "header written");
        if (log->op[i] == QED_IO_WRITE && first_data == SIZE_MAX)
            first_data = i;
        else if (log->op[i] == QED_IO_WRITE && l2w == SIZE_MAX)
            l2w = i;
    }
    cr_assert(first_data < l2w && l2w < log->n);
    bool synced = false;
    for (size_t i = first_data; i < l2w; i++)
        synced |= log->op[i] == QED_IO_FSYNC;
    cr_assert(synced, "no flush between the data write and the L2 update");
    qed_aio_test_set_observer(F.tf.aio, NULL, NULL);
    close_img(img);
    cr_assert_eq(disk_features("a.qed") & QED_F_NEED_CHECK, 0);
    free(log);
}

static void stop_loop_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

Test(needcheck, cleared_after_idle_timeout)
{
    uint8_t buf[4096];
    qed_image *img;
    ev_timer t;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img_opts("a.qed", false, 50);
    tf_fill(buf, sizeof(buf), 341);
    cr_assert_eq(do_write(img, 0, buf, sizeof(buf), 0), 0);
    cr_assert(disk_features("a.qed") & QED_F_NEED_CHECK, "NEED_CHECK not set");
    /* allocating again within the delay keeps it set */
    cr_assert_eq(do_write(img, 64 * KiB, buf, sizeof(buf), 0), 0);
    cr_assert(disk_features("a.qed") & QED_F_NEED_CHECK);

    uint64_t fsyncs = qed_aio_test_count(F.tf.aio, QED_IO_FSYNC);
    ev_timer_init(&t, stop_loop_cb, 0.4, 0.);
    ev_timer_start(F.tf.loop, &t);
    ev_run(F.tf.loop, 0);
    ev_timer_stop(F.tf.loop, &t);
    cr_assert_eq(disk_features("a.qed") & QED_F_NEED_CHECK, 0,
                 "NEED_CHECK still set after the idle delay");
    cr_assert_gt(qed_aio_test_count(F.tf.aio, QED_IO_FSYNC), fsyncs, "cleared without a flush");
    /* and set again by the next allocation */
    cr_assert_eq(do_write(img, 128 * KiB, buf, sizeof(buf), 0), 0);
    cr_assert(disk_features("a.qed") & QED_F_NEED_CHECK);
    close_img(img);
    cr_assert_eq(disk_features("a.qed") & QED_F_NEED_CHECK, 0);
    img = open_img("a.qed");
    expect_range(img, 128 * KiB, buf, sizeof(buf), "after the clean");
    close_img(img);
}

Test(needcheck, cleared_on_close)
{
    uint8_t buf[4096];
    qed_image *img;

    tf_create(&F.tf, "a.qed", MiB, 4096, 1, NULL, 0);
    img = open_img("a.qed");
    tf_fill(buf, sizeof(buf), 351);
    cr_assert_eq(do_write(img, 0, buf, sizeof(buf), 0), 0);
    cr_assert(disk_features("a.qed") & QED_F_NEED_CHECK);
    close_img(img);
    cr_assert_eq(disk_features("a.qed") & QED_F_NEED_CHECK, 0, "NEED_CHECK left set on close");
    struct qed_check_result res = tf_disk_check(&F.tf, "a.qed");
    assert_clean(&res, false, "after close");
}
