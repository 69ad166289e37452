/*
 * test-fast-path.c - reads and overwrites of allocated clusters by threads
 * that do not own the image (qed_fast_enable, qed_read_on, qed_write_on,
 * qed_bitmap_mark_write; lib/engine/fast-path.c, issue 14).
 *
 * Most tests run on one loop with the test backend: the image's own engine
 * and a second, "foreign" engine on the same loop, which stands for another
 * thread's engine.  They check what the fast path takes (allocated data in
 * published tables, across clusters, host runs and tables), what it refuses
 * with -EAGAIN having done nothing (holes, zero clusters, backing ranges,
 * tables not cached, FUA, read-only images, images with bitmaps, ranges off
 * the disk, too many host runs, unaligned O_DIRECT writes), that a callback
 * runs once and never inside its call, that *remark reports a bitmap added
 * in flight, and that an entry is published only once its allocation is on
 * disk.  The last test is a real two-thread run: an owner allocating and
 * thrashing a two-table cache while another thread reads (and rewrites)
 * random ranges through the fast path and checks every byte it gets.
 *
 * Set QED_TEST_SEED to repeat the random runs.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <ev.h>

#include "fixture.h"
#include "qed-image.h"
#include "qed-io-test.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define CS (4 * KiB)   /* clusters of 4 KiB, table size 1: a table covers 2 MiB */
#define COVER (2 * MiB)
#define SIZE (16 * MiB) /* 8 tables */

static struct test_fixture tf;
static qed_aio *fa; /* the foreign engine, on tf.loop (the test backend, auto mode) */
static qed_image *img;
static bool owner_real; /* tf.aio is a real backend (the two-thread tests) */

static void setup(void)
{
    tf_setup(&tf, "fast", QED_AIO_TEST);
    cr_assert_eq(qed_aio_new(tf.loop, QED_AIO_TEST, &fa), 0);
    qed_aio_test_set_auto(fa, true);
    tf_watchdog(&tf, 100., true);
    qed_set_log(tf_quiet_log, NULL, QED_LOG_ERROR);
}

static void teardown(void)
{
    if (fa)
        qed_aio_test_set_auto(fa, true);
    if (owner_real && img)
        qed_close(img);
    else
        tf_close_left_open(&tf, &img);
    img = NULL;
    owner_real = false;
    if (fa)
        qed_aio_free(fa);
    fa = NULL;
    tf_teardown(&tf);
}

TestSuite(fast, .init = setup, .fini = teardown, .timeout = 120);

/* ---- helpers ---- */

/* The byte at guest offset @pos of generation @gen: a hash of both, so
 * that another offset or another generation differs in most bytes. */
static uint8_t pbyte(uint64_t pos, unsigned gen)
{
    uint32_t x = (uint32_t)(pos >> 2) * 0x9e3779b1u ^ (uint32_t)(pos >> 34) ^ gen * 0x85ebca77u;

    x ^= x >> 15;
    x *= 0x2c1b3c6du;
    x ^= x >> 12;
    x *= 0x297a2d39u;
    x ^= x >> 15;
    return (uint8_t)(x >> (8 * (pos & 3)));
}

static void pfill(uint8_t *b, uint64_t off, size_t len, unsigned gen)
{
    for (size_t i = 0; i < len; i++)
        b[i] = pbyte(off + i, gen);
}

/* Index of the first byte of @b that is not generation @gen at @off, or -1. */
static long pcheck(const uint8_t *b, uint64_t off, size_t len, unsigned gen)
{
    for (size_t i = 0; i < len; i++)
        if (b[i] != pbyte(off + i, gen))
            return (long)i;
    return -1;
}

static bool all_zero(const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (b[i])
            return false;
    return true;
}

/* Write generation @gen at [@off, @off+@len) through the owner. */
static void put(uint64_t off, size_t len, unsigned gen)
{
    uint8_t *b = malloc(len);

    cr_assert_not_null(b);
    pfill(b, off, len, gen);
    cr_assert_eq(qed_sync_write(img, off, b, len, 0), 0, "owner write at %" PRIu64, off);
    free(b);
}

/* Read [@off, @off+@len) through the owner; it must be generation @gen. */
static void owner_expect(uint64_t off, size_t len, unsigned gen)
{
    uint8_t *b = malloc(len);
    long at;

    cr_assert_not_null(b);
    cr_assert_eq(qed_sync_read(img, off, b, len), 0);
    at = pcheck(b, off, len, gen);
    cr_assert_eq(at, -1, "owner read at %" PRIu64 ": byte %ld is not generation %u", off, at,
                 gen);
    free(b);
}

/* qed_read_on on @aio: the submission's code, or (0 submitted) what the
 * callback got.  The callback must not run inside the call (tf_done_cb
 * checks it; calls is checked right after too) and must run exactly once. */
static int read_on(qed_aio *aio, uint64_t off, void *buf, size_t len)
{
    struct tf_done d = {0};
    int rc = TF_SUBMIT(qed_read_on(img, aio, off, buf, len, tf_done_cb, &d));

    cr_assert_eq(d.calls, 0, "callback ran inside qed_read_on (rc %d)", rc);
    if (rc < 0)
        return rc;
    cr_assert_eq(rc, 0);
    tf_wait(&tf, &d, 1);
    ev_run(tf.loop, EVRUN_NOWAIT);
    cr_assert_eq(d.calls, 1);
    return d.ret;
}

/* read_on, and on success the data must be generation @gen. */
static int read_on_expect(qed_aio *aio, uint64_t off, size_t len, unsigned gen)
{
    uint8_t *b = malloc(len);
    long at;
    int r;

    cr_assert_not_null(b);
    memset(b, 0, len);
    r = read_on(aio, off, b, len);
    if (r == 0) {
        at = pcheck(b, off, len, gen);
        cr_assert_eq(at, -1, "read_on at %" PRIu64 "+%zu: byte %ld is not generation %u", off,
                     len, at, gen);
    }
    free(b);
    return r;
}

/* What a write_on callback saw of *remark. */
struct wdone {
    struct tf_done d;
    bool remark;       /* the caller's flag, set by qed_write_on */
    bool remark_at_cb; /* its value when the callback ran */
};

static void wdone_cb(void *opaque, int ret)
{
    struct wdone *w = opaque;

    w->remark_at_cb = w->remark;
    tf_done_cb(&w->d, ret);
}

/* qed_write_on of generation @gen at [@off, @off+@len) with @flags, as read_on. */
static int write_on(qed_aio *aio, uint64_t off, size_t len, unsigned gen, unsigned flags)
{
    struct wdone w = {.remark = true};
    uint8_t *b = malloc(len);
    int rc;

    cr_assert_not_null(b);
    pfill(b, off, len, gen);
    rc = TF_SUBMIT(qed_write_on(img, aio, off, b, len, flags, &w.remark, wdone_cb, &w));
    cr_assert_eq(w.d.calls, 0, "callback ran inside qed_write_on (rc %d)", rc);
    if (rc == 0) {
        tf_wait(&tf, &w.d, 1);
        ev_run(tf.loop, EVRUN_NOWAIT);
        cr_assert_eq(w.d.calls, 1);
        cr_assert_not(w.remark_at_cb, "remark set with no bitmap");
        rc = w.d.ret;
    }
    free(b);
    return rc;
}

/* Create f.qed (@size, 4 KiB clusters, table size 1) and open it with @o. */
static void make_open(uint64_t size, const struct qed_open_opts *o)
{
    tf_create(&tf, "f.qed", size, CS, 1, NULL, QED_BACKING_PROBE);
    img = tf_open(&tf, "f.qed", o);
}

static void enable(void)
{
    cr_assert_eq(qed_fast_enable(img), 0);
}

/* The published L2 entry of guest offset @off (host order), or ~0 when its
 * table is not published. */
static uint64_t pub_entry(uint64_t off)
{
    struct qed_l2_slot *s = img->pub[qed_l1_index(&img->g, off)];

    if (!s || (s->seq & 1))
        return ~0ull;
    return le64toh(s->t[qed_l2_index(&img->g, off)]);
}

/* f.qed with one cluster of generation 1 at the start of tables 0 and 1,
 * reopened with @o (nothing cached) and enabled. */
static void two_tables_reopened(const struct qed_open_opts *o)
{
    make_open(SIZE, o);
    put(0, CS, 1);
    put(COVER, CS, 1);
    cr_assert_eq(qed_close(img), 0);
    img = tf_open(&tf, "f.qed", o);
    enable();
}

/* ---- 1. before qed_fast_enable, and what cannot enable it ---- */

Test(fast, refused_before_enable)
{
    uint8_t b[CS];
    bool remark = true;
    struct tf_done d = {0};

    make_open(SIZE, NULL);
    put(0, CS, 1);
    cr_assert_eq(qed_read_on(img, fa, 0, b, CS, tf_done_cb, &d), -EAGAIN);
    cr_assert_eq(qed_read_on(img, tf.aio, 0, b, CS, tf_done_cb, &d), -EAGAIN);
    cr_assert_eq(qed_write_on(img, fa, 0, b, CS, 0, &remark, tf_done_cb, &d), -EAGAIN);
    ev_run(tf.loop, EVRUN_NOWAIT);
    cr_assert_eq(d.calls, 0, "a refused request ran its callback");
    cr_assert_eq(qed_aio_test_pending(fa), 0, "a refused request submitted I/O");
    /* Enabled, the same calls work. */
    enable();
    cr_assert_eq(read_on_expect(fa, 0, CS, 1), 0);
    cr_assert_eq(write_on(fa, 0, CS, 2, 0), 0);
    owner_expect(0, CS, 2);
}

Test(fast, enable_twice_and_bad_arguments)
{
    uint8_t b[512];
    bool remark;
    struct tf_done d = {0};

    cr_assert_eq(qed_fast_enable(NULL), -EINVAL);
    make_open(SIZE, NULL);
    put(0, CS, 1);
    enable();
    enable(); /* again: no change */
    cr_assert_eq(read_on_expect(fa, 0, CS, 1), 0);
    cr_assert_eq(qed_read_on(NULL, fa, 0, b, 512, tf_done_cb, &d), -EAGAIN);
    cr_assert_eq(qed_read_on(img, NULL, 0, b, 512, tf_done_cb, &d), -EAGAIN);
    cr_assert_eq(qed_read_on(img, fa, 0, b, 512, NULL, &d), -EAGAIN);
    cr_assert_eq(qed_write_on(img, fa, 0, b, 512, 0, NULL, tf_done_cb, &d), -EAGAIN);
    cr_assert_eq(qed_write_on(NULL, fa, 0, b, 512, 0, &remark, tf_done_cb, &d), -EAGAIN);
    ev_run(tf.loop, EVRUN_NOWAIT);
    cr_assert_eq(d.calls, 0);
}

Test(fast, check_only_open_cannot_enable)
{
    struct qed_open_opts o = {.read_only = true, .no_lock = true};
    char err[256] = "";
    qed_image *chk = NULL;

    tf_create(&tf, "f.qed", SIZE, CS, 1, NULL, QED_BACKING_PROBE);
    cr_assert_eq(qed_open(NULL, tf_path(&tf, "f.qed"), &o, &chk, err, sizeof(err)), 0, "%s",
                 err);
    cr_assert_eq(qed_fast_enable(chk), -EINVAL);
    qed_close(chk);
}

/* ---- 2. reads of allocated data, on the foreign and the own engine ---- */

Test(fast, unallocated_ranges_are_refused)
{
    make_open(SIZE, NULL);
    enable();
    cr_assert_eq(read_on_expect(fa, 0, CS, 1), -EAGAIN, "no table at all");
    put(CS, CS, 1); /* table 0 exists now, cluster 0 does not */
    cr_assert_eq(read_on_expect(fa, 0, CS, 1), -EAGAIN, "hole in a published table");
    cr_assert_eq(read_on_expect(fa, 0, 2 * CS, 1), -EAGAIN, "hole, then data");
    cr_assert_eq(read_on_expect(fa, CS, 2 * CS, 1), -EAGAIN, "data, then hole");
    cr_assert_eq(read_on_expect(fa, CS + 512, 512, 1), 0, "inside the allocated cluster");
    cr_assert_eq(read_on_expect(fa, COVER, CS, 1), -EAGAIN, "table 1 does not exist");
    cr_assert_eq(write_on(fa, 0, CS, 2, 0), -EAGAIN, "write_on never allocates");
    cr_assert_eq(write_on(fa, CS - 512, 1024, 2, 0), -EAGAIN);
    owner_expect(CS, CS, 1);
}

static void read_after_write(qed_aio *aio)
{
    make_open(SIZE, NULL);
    enable();
    put(0, 3 * CS, 1);
    cr_assert_eq(read_on_expect(aio, 0, 3 * CS, 1), 0);
    cr_assert_eq(read_on_expect(aio, 100, 5000, 1), 0, "unaligned, across a cluster boundary");
    cr_assert_eq(read_on_expect(aio, 3 * CS - 1, 1, 1), 0, "the last byte");
    cr_assert_eq(read_on_expect(aio, 3 * CS - 1, 2, 1), -EAGAIN, "one byte past the data");
}

Test(fast, read_after_owner_write_foreign_engine)
{
    read_after_write(fa);
}

Test(fast, read_after_owner_write_own_engine)
{
    read_after_write(tf.aio);
}

/* With the foreign engine holding its I/O, the callback has certainly not
 * run when the call returns, runs when the I/O completes, and only once. */
Test(fast, callback_runs_later_and_once)
{
    uint8_t b[CS];
    struct tf_done d = {0};

    make_open(SIZE, NULL);
    enable();
    put(0, CS, 7);
    qed_aio_test_set_auto(fa, false);
    cr_assert_eq(TF_SUBMIT(qed_read_on(img, fa, 0, b, CS, tf_done_cb, &d)), 0);
    cr_assert_eq(qed_aio_test_pending(fa), 1, "one host run, one I/O");
    cr_assert_eq(qed_aio_test_pending(tf.aio), 0, "nothing through the owner's engine");
    for (int i = 0; i < 5; i++)
        ev_run(tf.loop, EVRUN_NOWAIT);
    cr_assert_eq(d.calls, 0, "completed before its I/O");
    cr_assert_eq(qed_aio_test_complete(fa, 0, 0), 0);
    cr_assert_eq(d.calls, 1);
    for (int i = 0; i < 5; i++)
        ev_run(tf.loop, EVRUN_NOWAIT);
    cr_assert_eq(d.calls, 1);
    cr_assert_eq(d.ret, 0);
    cr_assert_eq(pcheck(b, 0, CS, 7), -1);
}

/* An I/O error reaches the callback, once, after every run completed. */
Test(fast, io_error_reported_once)
{
    uint8_t *b = malloc(4 * CS);
    struct tf_done d = {0};

    make_open(SIZE, NULL);
    enable();
    for (int k = 3; k >= 0; k--) /* reverse: four separate host runs */
        put((uint64_t)k * CS, CS, 1);
    qed_aio_test_set_auto(fa, false);
    cr_assert_eq(TF_SUBMIT(qed_read_on(img, fa, 0, b, 4 * CS, tf_done_cb, &d)), 0);
    cr_assert_eq(qed_aio_test_pending(fa), 4);
    cr_assert_eq(qed_aio_test_complete(fa, 1, -EIO), 0);
    cr_assert_eq(qed_aio_test_complete(fa, 0, 0), 0);
    cr_assert_eq(qed_aio_test_complete(fa, 0, 0), 0);
    cr_assert_eq(d.calls, 0, "completed with a run still in flight");
    cr_assert_eq(qed_aio_test_complete(fa, 0, 0), 0);
    cr_assert_eq(d.calls, 1);
    cr_assert_eq(d.ret, -EIO);
    free(b);
}

/* Tables cached before qed_fast_enable are published by it. */
Test(fast, enable_publishes_cached_tables)
{
    make_open(SIZE, NULL);
    put(0, CS, 1);
    put(3 * COVER, CS, 1);
    enable();
    cr_assert_eq(read_on_expect(fa, 0, CS, 1), 0);
    cr_assert_eq(read_on_expect(fa, 3 * COVER, CS, 1), 0);
}

/* After a reopen nothing is cached: refused until the owner loads the table. */
Test(fast, table_published_when_loaded)
{
    two_tables_reopened(NULL);
    cr_assert_eq(read_on_expect(fa, 0, CS, 1), -EAGAIN);
    cr_assert_eq(read_on_expect(fa, COVER, CS, 1), -EAGAIN);
    owner_expect(0, 512, 1);
    cr_assert_eq(read_on_expect(fa, 0, CS, 1), 0);
    cr_assert_eq(read_on_expect(fa, COVER, CS, 1), -EAGAIN);
}

/* ---- 3. overwrites, host runs, tables ---- */

Test(fast, write_on_overwrites)
{
    make_open(SIZE, NULL);
    enable();
    put(0, 2 * CS, 1);
    cr_assert_eq(write_on(fa, 512, CS, 2, 0), 0);
    owner_expect(0, 512, 1);
    owner_expect(512, CS, 2);
    owner_expect(CS + 512, CS - 512, 1);
    cr_assert_eq(write_on(tf.aio, 0, 2 * CS, 3, 0), 0, "on the owner's own engine");
    owner_expect(0, 2 * CS, 3);
    cr_assert_eq(read_on_expect(fa, 0, 2 * CS, 3), 0);
    cr_assert_eq(qed_close(img), 0);
    img = tf_open(&tf, "f.qed", NULL);
    owner_expect(0, 2 * CS, 3); /* on disk */
    cr_assert_eq(tf_disk_check(&tf, "f.qed").corruptions, 0);
}

/*
 * Clusters allocated in reverse order: host offsets descend, so each
 * cluster of a forward range is its own host run.  Eight runs go, nine are
 * refused; clusters allocated in order merge into one run.
 */
Test(fast, host_runs_and_their_limit)
{
    const unsigned n = 12;

    make_open(SIZE, NULL);
    enable();
    for (int k = (int)n - 1; k >= 0; k--)
        put((uint64_t)k * CS, CS, 1);
    for (unsigned k = 1; k < n; k++)
        cr_assert_lt(pub_entry(k * CS), pub_entry((k - 1) * CS), "host offsets not descending");
    cr_assert_eq(read_on_expect(fa, 0, 8 * CS, 1), 0, "eight runs");
    cr_assert_eq(read_on_expect(fa, 512, 8 * CS - 1024, 1), 0, "eight runs, partial ends");
    cr_assert_eq(read_on_expect(fa, 0, 9 * CS, 1), -EAGAIN, "nine runs");
    cr_assert_eq(read_on_expect(fa, 512, 8 * CS, 1), -EAGAIN, "nine runs, partial ends");
    cr_assert_eq(write_on(fa, 0, 9 * CS, 2, 0), -EAGAIN);
    cr_assert_eq(write_on(fa, CS, 8 * CS, 2, 0), 0);
    owner_expect(0, CS, 1);
    owner_expect(CS, 8 * CS, 2);
    owner_expect(9 * CS, 3 * CS, 1);
    /* In order: 32 clusters, one run. */
    put(64 * CS, 32 * CS, 3);
    qed_aio_test_set_auto(fa, false);
    {
        uint8_t *b = malloc(32 * CS);
        struct tf_done d = {0};

        cr_assert_eq(qed_read_on(img, fa, 64 * CS, b, 32 * CS, tf_done_cb, &d), 0);
        cr_assert_eq(qed_aio_test_pending(fa), 1, "contiguous clusters: one I/O");
        cr_assert_eq(qed_aio_test_complete(fa, 0, 0), 0);
        cr_assert_eq(d.calls, 1);
        cr_assert_eq(pcheck(b, 64 * CS, 32 * CS, 3), -1);
        free(b);
    }
}

/* Out-of-order allocation mixed with contiguous pieces. */
Test(fast, non_contiguous_hosts)
{
    const unsigned order[] = {3, 1, 2, 0, 6, 5, 4, 7};

    make_open(SIZE, NULL);
    enable();
    for (unsigned i = 0; i < 8; i++)
        put(order[i] * CS, CS, order[i] + 1);
    for (unsigned i = 0; i < 8; i++)
        cr_assert_eq(read_on_expect(fa, order[i] * CS, CS, order[i] + 1), 0);
    put(0, 8 * CS, 20); /* overwrite, no new allocation */
    cr_assert_eq(read_on_expect(fa, 700, 8 * CS - 1400, 20), 0);
    cr_assert_eq(write_on(fa, 1000, 6 * CS, 21, 0), 0);
    owner_expect(0, 1000, 20);
    owner_expect(1000, 6 * CS, 21);
    owner_expect(1000 + 6 * CS, 2 * CS - 1000, 20);
}

Test(fast, across_two_tables)
{
    make_open(SIZE, NULL);
    enable();
    put(COVER, 2 * CS, 1); /* table 1 first: its clusters lie before table 0's */
    put(COVER - 2 * CS, 2 * CS, 1);
    cr_assert_eq(read_on_expect(fa, COVER - 2 * CS, 4 * CS, 1), 0);
    cr_assert_eq(read_on_expect(fa, COVER - 100, 200, 1), 0);
    cr_assert_eq(write_on(fa, COVER - CS - 512, 2 * CS + 1024, 2, 0), 0);
    owner_expect(COVER - 2 * CS, CS - 512, 1);
    owner_expect(COVER - CS - 512, 2 * CS + 1024, 2);
    owner_expect(COVER + CS + 512, CS - 512, 1);
    cr_assert_eq(read_on_expect(fa, COVER - 2 * CS, 5 * CS, 1), -EAGAIN, "hole in table 1");
    /* The rest of table 1 and the start of table 2, allocated in that
     * order after it: two host runs, most of two tables. */
    put(2 * COVER, CS, 3);
    put(COVER + 2 * CS, COVER - 2 * CS, 3);
    cr_assert_eq(read_on_expect(fa, COVER + 2 * CS, COVER - CS, 3), 0);
    cr_assert_eq(read_on_expect(fa, COVER + 2 * CS, COVER, 3), -EAGAIN, "hole in table 2");
}

/* ---- 4. what goes to the owner ---- */

Test(fast, flags_go_to_the_owner)
{
    make_open(SIZE, NULL);
    enable();
    put(0, CS, 1);
    cr_assert_eq(write_on(fa, 0, CS, 2, QED_REQ_FUA), -EAGAIN);
    cr_assert_eq(write_on(fa, 0, CS, 2, QED_REQ_NO_HOLE), -EAGAIN);
    owner_expect(0, CS, 1);
}

Test(fast, read_only_image)
{
    struct qed_open_opts ro = {.read_only = true};

    make_open(SIZE, NULL);
    put(0, CS, 1);
    cr_assert_eq(qed_close(img), 0);
    img = tf_open(&tf, "f.qed", &ro);
    enable();
    owner_expect(0, CS, 1);
    cr_assert_eq(read_on_expect(fa, 0, CS, 1), 0);
    cr_assert_eq(write_on(fa, 0, CS, 2, 0), -EAGAIN);
    owner_expect(0, CS, 1);
}

Test(fast, bitmap_sends_writes_to_the_owner)
{
    make_open(SIZE, NULL);
    enable();
    put(0, CS, 1);
    cr_assert_eq(qed_bitmap_add(img, "b", 0, true), 0, "a disabled bitmap");
    cr_assert_eq(write_on(fa, 0, CS, 2, 0), -EAGAIN);
    cr_assert_eq(read_on_expect(fa, 0, CS, 1), 0, "reads still go");
    cr_assert_eq(qed_bitmap_enable(img, "b", true), 0);
    cr_assert_eq(write_on(fa, 0, CS, 2, 0), -EAGAIN);
    cr_assert_eq(qed_bitmap_remove(img, "b"), 0);
    cr_assert_eq(write_on(fa, 0, CS, 2, 0), 0, "no bitmap left");
    owner_expect(0, CS, 2);
}

Test(fast, ranges_off_the_disk)
{
    const uint64_t size = COVER + CS + 512; /* the last cluster is partly outside */
    uint8_t b[2 * CS];
    struct tf_done d = {0};

    make_open(size, NULL);
    enable();
    put(0, CS, 1);
    put(COVER, CS + 512, 1);
    cr_assert_eq(read_on_expect(fa, COVER + CS, 512, 1), 0, "the last sector");
    cr_assert_eq(read_on_expect(fa, COVER, CS + 512, 1), 0);
    cr_assert_eq(read_on_expect(fa, COVER + CS, 1024, 1), -EAGAIN, "past the end");
    cr_assert_eq(read_on_expect(fa, size, 512, 1), -EAGAIN, "at the end");
    cr_assert_eq(read_on_expect(fa, size + CS, 512, 1), -EAGAIN, "beyond the end");
    cr_assert_eq(write_on(fa, COVER + CS, 1024, 2, 0), -EAGAIN);
    cr_assert_eq(qed_read_on(img, fa, 0, b, 0, tf_done_cb, &d), -EAGAIN, "len 0");
    cr_assert_eq(qed_read_on(img, fa, size, b, 0, tf_done_cb, &d), -EAGAIN);
    cr_assert_eq(qed_read_on(img, fa, 512, b, SIZE_MAX, tf_done_cb, &d), -EAGAIN, "wraps");
    cr_assert_eq(qed_read_on(img, fa, UINT64_MAX - 511, b, 512, tf_done_cb, &d), -EAGAIN);
    ev_run(tf.loop, EVRUN_NOWAIT);
    cr_assert_eq(d.calls, 0);
}

Test(fast, zero_cluster)
{
    make_open(SIZE, NULL);
    enable();
    put(0, CS, 1);
    cr_assert_eq(qed_sync_write_zeroes(img, CS, CS, 0), 0);
    cr_assert_eq(pub_entry(CS), QED_ENTRY_ZERO, "whole unallocated cluster: zero entry");
    cr_assert_eq(read_on_expect(fa, CS, CS, 1), -EAGAIN);
    cr_assert_eq(read_on_expect(fa, 0, 2 * CS, 1), -EAGAIN);
    cr_assert_eq(write_on(fa, CS, CS, 2, 0), -EAGAIN);
    cr_assert_eq(read_on_expect(fa, 0, CS, 1), 0);
}

/* After write-zeroes or a discard of allocated clusters the fast path
 * either refuses or reads zeros, never the old data. */
Test(fast, zeroed_and_discarded_allocated_clusters)
{
    uint8_t b[4 * CS];

    make_open(SIZE, NULL);
    enable();
    put(0, 4 * CS, 1);
    cr_assert_eq(qed_sync_write_zeroes(img, 0, CS, 0), 0);
    cr_assert_eq(qed_sync_write_zeroes(img, CS, CS, QED_REQ_NO_HOLE), 0);
    cr_assert_eq(qed_sync_discard(img, 2 * CS, CS), 0);
    for (unsigned k = 0; k < 3; k++) {
        int r = read_on(fa, k * CS, b, CS);

        cr_assert(r == 0 || r == -EAGAIN, "cluster %u: %d", k, r);
        if (r == 0)
            cr_assert(all_zero(b, CS), "cluster %u: old data through the fast path", k);
    }
    cr_assert_eq(read_on_expect(fa, 3 * CS, CS, 1), 0);
}

/* A backing file's range is the owner's; a cluster the overlay allocated
 * with a partial write holds the backing bytes around the written ones. */
Test(fast, backing_file_range)
{
    uint8_t b[CS];

    tf_raw_pattern(tf_path(&tf, "base.raw"), SIZE);
    tf_create(&tf, "f.qed", SIZE, CS, 1, "base.raw", QED_BACKING_RAW);
    img = tf_open(&tf, "f.qed", NULL);
    enable();
    put(5 * CS + 1024, 512, 1);
    cr_assert_eq(read_on(fa, 4 * CS, b, CS), -EAGAIN, "backing range in a published table");
    cr_assert_eq(read_on(fa, 5 * CS, b, CS), 0);
    for (unsigned i = 0; i < CS; i++) {
        uint64_t pos = 5 * CS + i;
        uint8_t want = i >= 1024 && i < 1536 ? pbyte(pos, 1) : tf_raw_byte(pos);

        cr_assert_eq(b[i], want, "byte %u of the copied-up cluster", i);
    }
    cr_assert_eq(read_on(fa, 5 * CS + CS - 512, b, 1024), -EAGAIN, "into the backing range");
    cr_assert_eq(write_on(fa, 6 * CS, 512, 2, 0), -EAGAIN);
}

/* A cache of one table: the table evicted is refused, until it comes back. */
Test(fast, evicted_table)
{
    struct qed_open_opts o = {.l2_cache_tables = 1};

    make_open(SIZE, &o);
    enable();
    put(0, CS, 1);
    put(COVER, CS, 2); /* loads table 1 (new): table 0 evicted */
    cr_assert_eq(read_on_expect(fa, 0, CS, 1), -EAGAIN, "table 0 evicted");
    cr_assert_eq(read_on_expect(fa, COVER, CS, 2), 0);
    cr_assert_null(img->pub[0], "evicted table still published");
    owner_expect(0, CS, 1); /* table 0 back, table 1 out */
    cr_assert_eq(read_on_expect(fa, 0, CS, 1), 0);
    cr_assert_eq(read_on_expect(fa, COVER, CS, 2), -EAGAIN);
    cr_assert_eq(write_on(fa, COVER, CS, 3, 0), -EAGAIN);
    /* Many rounds: the slots are reused from the pool. */
    for (unsigned i = 0; i < 20; i++) {
        uint64_t t = (i % 2) * COVER;

        owner_expect(t, CS, i % 2 ? 2 : 1);
        cr_assert_eq(read_on_expect(fa, t, CS, i % 2 ? 2 : 1), 0);
        cr_assert_eq(read_on_expect(fa, COVER - t, CS, i % 2 ? 1 : 2), -EAGAIN);
    }
    {
        struct qed_info in;

        qed_get_info(img, &in);
        cr_assert_leq(in.l2_cache_peak_bytes, CS, "the bound holds with the pool");
    }
}

/* cache=none: unaligned writes go to the owner, aligned ones do not; reads
 * of any alignment go (the engine bounces them). */
Test(fast, cache_none)
{
    struct qed_open_opts o = {.cache = QED_CACHE_NONE};
    char err[512] = "";
    uint8_t *al = NULL;
    int r;

    tf_rm_tree(tf.dir);
    snprintf(tf.dir, sizeof(tf.dir), "/var/tmp/qed-test-fast-XXXXXX");
    cr_assert_not_null(mkdtemp(tf.dir));
    tf_create(&tf, "f.qed", SIZE, CS, 1, NULL, QED_BACKING_PROBE);
    r = qed_open(tf.aio, tf_path(&tf, "f.qed"), &o, &img, err, sizeof(err));
    if (r == -EINVAL && strstr(err, "O_DIRECT"))
        cr_skip_test("O_DIRECT is refused in %s: %s", tf.dir, err);
    cr_assert_eq(r, 0, "%s", err);
    enable();
    put(0, 4 * CS, 1);
    cr_assert_eq(write_on(fa, 512, 512, 2, 0), -EAGAIN, "unaligned offset and length");
    cr_assert_eq(write_on(fa, 0, 512, 2, 0), -EAGAIN, "unaligned length");
    cr_assert_eq(posix_memalign((void **)&al, 4096, 2 * CS + 512), 0);
    {
        bool remark;
        struct tf_done d = {0};

        pfill(al + 8, CS, CS, 2);
        cr_assert_eq(qed_write_on(img, fa, CS, al + 8, CS, 0, &remark, tf_done_cb, &d),
                     -EAGAIN, "buffer not aligned for O_DIRECT");
        pfill(al, CS, 2 * CS, 2);
        cr_assert_eq(TF_SUBMIT(qed_write_on(img, fa, CS, al, 2 * CS, 0, &remark, tf_done_cb,
                                            &d)),
                     0, "aligned");
        tf_wait(&tf, &d, 1);
        cr_assert_eq(d.ret, 0);
    }
    owner_expect(0, CS, 1);
    owner_expect(CS, 2 * CS, 2);
    owner_expect(3 * CS, CS, 1);
    memset(al, 0, 2 * CS + 512);
    cr_assert_eq(read_on(fa, 3 * CS - 300, al + 7, 600), 0, "unaligned read");
    cr_assert_eq(pcheck(al + 7, 3 * CS - 300, 300, 2), -1);
    cr_assert_eq(pcheck(al + 307, 3 * CS, 300, 1), -1);
    free(al);
}

/*
 * qed_check with repair on the open image (no request in flight) drops
 * every cached table (check.c repair_finish).  A table dropped that way
 * must be unpublished: its slot is freed with the cache, and a fast read
 * through img->pub would read freed memory, and the pre-repair entries.
 */
Test(fast, repair_on_open_image_unpublishes)
{
    struct qed_check_result res;

    /* Reopened: a repair on the open image judges tables against the file
     * as it was at open, and would refuse tables this open created
     * (metadata.c qed_meta_init, open_end), which is not what this tests. */
    two_tables_reopened(NULL);
    owner_expect(0, CS, 1);
    owner_expect(COVER, CS, 1);
    cr_assert_eq(read_on_expect(fa, 0, CS, 1), 0);
    cr_assert_eq(read_on_expect(fa, COVER, CS, 1), 0);
    cr_assert_eq(qed_check(img, true, &res), 0);
    cr_assert_eq(res.corruptions, 0);
    cr_assert_null(img->pub[0], "table 0 left published after the repair dropped the cache");
    cr_assert_null(img->pub[1], "table 1 left published after the repair dropped the cache");
    cr_assert_eq(read_on_expect(fa, 0, CS, 1), -EAGAIN);
    owner_expect(0, CS, 1);
    cr_assert_eq(read_on_expect(fa, 0, CS, 1), 0, "published again when reloaded");
    cr_assert_eq(write_on(fa, 0, CS, 2, 0), 0);
    owner_expect(0, CS, 2);
}

/* A grown image: the new range is refused until written, then read. */
Test(fast, resize_grows_the_range)
{
    make_open(SIZE, NULL);
    enable();
    put(SIZE - CS, CS, 1);
    cr_assert_eq(read_on_expect(fa, SIZE - CS, 2 * CS, 1), -EAGAIN, "past the old end");
    cr_assert_eq(qed_sync_resize(img, 2 * SIZE), 0);
    cr_assert_eq(read_on_expect(fa, SIZE, CS, 1), -EAGAIN, "grown, not written");
    put(SIZE, CS, 1);
    cr_assert_eq(read_on_expect(fa, SIZE - CS, 2 * CS, 1), 0, "across the old end");
    cr_assert_eq(write_on(fa, SIZE - 512, 1024, 2, 0), 0);
    owner_expect(SIZE - 512, 1024, 2);
}

/*
 * L2 entries the open found invalid (past the end of the file, or at
 * metadata: here the L1 table) are kept disabled in the cached table; the
 * fast path must refuse them rather than read what they point at.  The
 * image is marked clean, so a read-only open keeps the entries as they are.
 */
Test(fast, invalid_entries_are_refused)
{
    struct qed_open_opts ro = {.read_only = true};
    uint64_t l2off, l1off, bad[2];
    uint8_t b[CS];
    int fd;

    make_open(SIZE, NULL);
    put(0, 4 * CS, 1);
    l2off = le64toh(img->l1[0]);
    l1off = img->h.l1_table_offset;
    cr_assert_eq(qed_close(img), 0);
    img = NULL;
    bad[0] = htole64(1ull << 30);    /* cluster 0: past the end of the file */
    bad[1] = htole64(l1off);         /* cluster 1: the L1 table */
    fd = open(tf_path(&tf, "f.qed"), O_RDWR);
    cr_assert_geq(fd, 0);
    cr_assert_eq(pwrite(fd, bad, sizeof(bad), (off_t)l2off), (ssize_t)sizeof(bad));
    close(fd);
    img = tf_open(&tf, "f.qed", &ro);
    enable();
    cr_assert_neq(qed_sync_read(img, 0, b, CS), 0, "the owner refuses the entry too");
    owner_expect(2 * CS, 2 * CS, 1); /* the table is loaded (and published) */
    cr_assert_not_null(img->pub[0]);
    cr_assert_eq(read_on(fa, 0, b, CS), -EAGAIN, "entry past the end of the file");
    cr_assert_eq(read_on(fa, CS, b, CS), -EAGAIN, "entry at the L1 table");
    cr_assert_eq(read_on_expect(fa, 2 * CS, 2 * CS, 1), 0);
}

/* Requests in flight when the owner evicts their table: the host clusters
 * stay theirs, so a read returns the data and a write lands. */
Test(fast, table_evicted_while_in_flight)
{
    struct qed_open_opts o = {.l2_cache_tables = 1};
    uint8_t rb[2 * CS], wb[CS];
    struct tf_done rd = {0};
    struct wdone w = {.remark = true};

    make_open(SIZE, &o);
    enable();
    put(COVER, CS, 3);
    put(0, 2 * CS, 1);
    qed_aio_test_set_auto(fa, false);
    pfill(wb, CS, CS, 2);
    cr_assert_eq(TF_SUBMIT(qed_read_on(img, fa, 0, rb, 2 * CS, tf_done_cb, &rd)), 0);
    cr_assert_eq(TF_SUBMIT(qed_write_on(img, fa, CS, wb, CS, 0, &w.remark, wdone_cb, &w)), 0);
    owner_expect(COVER, CS, 3); /* table 0 evicted, its slot reused for table 1 */
    cr_assert_null(img->pub[0]);
    cr_assert_eq(read_on_expect(tf.aio, 0, CS, 1), -EAGAIN);
    cr_assert_eq(qed_aio_test_pending(fa), 2);
    cr_assert_eq(qed_aio_test_complete(fa, 0, 0), 0); /* the read first */
    cr_assert_eq(qed_aio_test_complete(fa, 0, 0), 0);
    cr_assert_eq(rd.calls, 1);
    cr_assert_eq(rd.ret, 0);
    cr_assert_eq(w.d.calls, 1);
    cr_assert_eq(w.d.ret, 0);
    cr_assert_not(w.remark_at_cb);
    cr_assert_eq(pcheck(rb, 0, 2 * CS, 1), -1, "read of the evicted table's clusters");
    owner_expect(0, CS, 1);
    owner_expect(CS, CS, 2);
    owner_expect(COVER, CS, 3);
}

/* Files on tmpfs (I/O flagged QED_IO_F_MEMORY, copied on the loop thread):
 * the fast path on a foreign engine of the thread pool. */
Test(fast, memory_file_system)
{
    qed_aio *pool = NULL;

    tf_rm_tree(tf.dir);
    snprintf(tf.dir, sizeof(tf.dir), "/dev/shm/qed-test-fast-XXXXXX");
    if (!mkdtemp(tf.dir)) {
        tf.dir[0] = 0;
        cr_skip_test("no /dev/shm here");
    }
    make_open(SIZE, NULL);
    if (!(img->fd_io_flags & QED_IO_F_MEMORY))
        cr_skip_test("/dev/shm is not a memory file system here");
    enable();
    cr_assert_eq(qed_aio_new(tf.loop, QED_AIO_THREADS, &pool), 0);
    for (int k = 3; k >= 0; k--)
        put((uint64_t)k * CS, CS, 1);
    cr_assert_eq(read_on_expect(pool, 100, 4 * CS - 200, 1), 0);
    cr_assert_eq(write_on(pool, CS, 2 * CS, 2, 0), 0);
    owner_expect(0, CS, 1);
    owner_expect(CS, 2 * CS, 2);
    owner_expect(3 * CS, CS, 1);
    qed_aio_free(pool);
}

/* ---- the seqlock, deterministically ---- */

/*
 * The test binary wraps qed_check_cluster_offset (engine.am), which
 * map_table calls once per entry it reads: with hook_at set, the hook_at-th
 * call (1-based) runs hook_fn first.  That stops a fast request in the
 * middle of reading a published table, while the owner (the same thread
 * here) changes the table under it.
 */
bool __real_qed_check_cluster_offset(const struct qed_geom *g, uint64_t off, uint64_t file_size);
static unsigned hook_at;
static void (*hook_fn)(void);

bool __wrap_qed_check_cluster_offset(const struct qed_geom *g, uint64_t off, uint64_t file_size);
bool __wrap_qed_check_cluster_offset(const struct qed_geom *g, uint64_t off, uint64_t file_size)
{
    if (hook_at && --hook_at == 0)
        hook_fn();
    return __real_qed_check_cluster_offset(g, off, file_size);
}

/* With a one-table cache: evict table 0 and load table 1, which takes the
 * slot table 0 had (from the pool). */
static void hook_load_table1(void)
{
    struct qed_l2_slot *s0 = img->pub[0];

    owner_expect(COVER, CS, 2);
    cr_assert_null(img->pub[0]);
    cr_assert_eq(img->pub[1], s0, "the pool did not hand table 0's slot to table 1");
}

/*
 * A fast read that began on table 0 while the owner evicted it and loaded
 * table 1 into the same memory must notice (the sequence changed) and
 * refuse; reading on would map table 0's guest offsets through table 1's
 * entries.  Both tables map every cluster, so nothing else refuses.
 */
Test(fast, slot_reused_during_a_read_is_noticed)
{
    struct qed_open_opts o = {.l2_cache_tables = 1};
    uint8_t *b = malloc(4 * CS);
    int r;

    make_open(SIZE, &o);
    put(COVER, 4 * CS, 2); /* table 1 first, then table 0: different hosts */
    put(0, 4 * CS, 1);
    enable();
    cr_assert_not_null(img->pub[0]);
    for (unsigned at = 1; at <= 4; at++) {
        owner_expect(0, CS, 1); /* table 0 back in the one slot */
        cr_assert_eq(read_on_expect(fa, 0, 4 * CS, 1), 0, "undisturbed");
        hook_fn = hook_load_table1;
        hook_at = at;
        memset(b, 0, 4 * CS);
        r = read_on(fa, 0, b, 4 * CS);
        cr_assert_eq(hook_at, 0, "the hook did not run (entry %u)", at);
        cr_assert_eq(r, -EAGAIN, "the slot changed at entry %u and the read went on", at);
    }
    free(b);
}

/* Both tables loaded after a reopen (two-table cache): one read spans
 * them. */
Test(fast, two_tables_loaded_after_reopen)
{
    struct qed_open_opts o = {.l2_cache_tables = 2};
    uint8_t *b = malloc(4 * CS);
    int r;

    make_open(SIZE, &o);
    put(COVER, 2 * CS, 2);
    put(COVER - 2 * CS, 2 * CS, 1);
    cr_assert_eq(qed_close(img), 0);
    img = tf_open(&tf, "f.qed", &o);
    enable();
    owner_expect(COVER - 2 * CS, 2 * CS, 1);
    owner_expect(COVER, 2 * CS, 2);
    memset(b, 0, 4 * CS);
    r = read_on(fa, COVER - 2 * CS, b, 4 * CS);
    cr_assert_eq(r, 0);
    cr_assert_eq(pcheck(b, COVER - 2 * CS, 2 * CS, 1), -1);
    cr_assert_eq(pcheck(b + 2 * CS, COVER, 2 * CS, 2), -1);
    free(b);
}

/* ---- 5. remark ---- */

static void remark_case(bool add_bitmap)
{
    uint8_t b[CS];
    struct wdone w = {.remark = true};
    size_t n = 0;
    struct qed_dirty_extent ext[4];

    make_open(SIZE, NULL);
    enable();
    put(0, 2 * CS, 1);
    qed_aio_test_set_auto(fa, false);
    pfill(b, CS, CS, 2);
    cr_assert_eq(TF_SUBMIT(qed_write_on(img, fa, CS, b, CS, 0, &w.remark, wdone_cb, &w)), 0);
    cr_assert_not(w.remark, "remark not cleared at submission");
    cr_assert_eq(qed_aio_test_pending(fa), 1);
    if (add_bitmap)
        cr_assert_eq(qed_bitmap_add(img, "b", 512, false), 0);
    cr_assert_eq(qed_aio_test_complete(fa, 0, 0), 0);
    cr_assert_eq(w.d.calls, 1);
    cr_assert_eq(w.d.ret, 0);
    cr_assert_eq(w.remark_at_cb, add_bitmap, "remark when the callback ran");
    owner_expect(CS, CS, 2);
    if (!add_bitmap)
        return;
    cr_assert_eq(qed_bitmap_status(img, "b", 0, 2 * CS, ext, 4, &n), 0);
    cr_assert(n == 1 && !ext[0].dirty, "the fast write marked nothing itself");
    qed_bitmap_mark_write(img, CS, CS);
    cr_assert_eq(qed_bitmap_status(img, "b", 0, 2 * CS, ext, 4, &n), 0);
    cr_assert_eq(n, 2);
    cr_assert(!ext[0].dirty && ext[0].start == 0 && ext[0].length == CS);
    cr_assert(ext[1].dirty && ext[1].start == CS && ext[1].length == CS);
}

Test(fast, remark_when_bitmap_added_in_flight)
{
    remark_case(true);
}

Test(fast, no_remark_without_bitmap)
{
    remark_case(false);
}

/* ---- 6. publish after write ---- */

/*
 * An allocating write held by the test backend: until its callback ran, the
 * cluster is not readable through the fast path (its entry is not stored
 * before the data and the table are on disk); after, it is.  @off is in a
 * table that exists (@new_table false) or in a new one.
 */
static void publish_after_write(bool new_table)
{
    const uint64_t off = new_table ? 3 * COVER + 4 * CS : 4 * CS;
    uint8_t b[CS];
    struct tf_done d = {0};
    unsigned steps = 0, turns = 0;

    make_open(SIZE, NULL);
    enable();
    put(0, CS, 1);
    qed_aio_test_set_auto(tf.aio, false);
    pfill(b, off, CS, 5);
    cr_assert_eq(TF_SUBMIT(qed_write(img, off, b, CS, 0, tf_done_cb, &d)), 0);
    for (;;) {
        ev_run(tf.loop, EVRUN_NOWAIT);
        if (d.calls)
            break;
        cr_assert_eq(read_on_expect(fa, off, CS, 5), -EAGAIN,
                     "published before the allocating write completed (step %u)", steps);
        cr_assert_eq(write_on(fa, off, CS, 6, 0), -EAGAIN, "step %u", steps);
        if (qed_aio_test_pending(tf.aio)) {
            cr_assert_eq(qed_aio_test_complete(tf.aio, 0, 0), 0);
            steps++;
        }
        cr_assert_lt(steps, 100);
        cr_assert_lt(++turns, 100000, "the allocating write makes no progress");
    }
    cr_assert_eq(d.ret, 0);
    cr_assert_geq(steps, 2, "data and table writes at least");
    cr_assert_eq(read_on_expect(fa, off, CS, 5), 0, "published once complete");
    cr_assert_eq(write_on(fa, off, CS, 6, 0), 0);
    qed_aio_test_set_auto(tf.aio, true);
    owner_expect(off, CS, 6);
}

Test(fast, publish_after_write_existing_table)
{
    publish_after_write(false);
}

Test(fast, publish_after_write_new_table)
{
    publish_after_write(true);
}

/* The last cluster of the file written in part: the rest reads as zeros. */
Test(fast, partial_last_cluster)
{
    uint8_t b[CS];

    make_open(SIZE, NULL);
    enable();
    put(8 * CS, 512, 1);
    memset(b, 0xee, sizeof(b));
    cr_assert_eq(read_on(fa, 8 * CS, b, CS), 0);
    cr_assert_eq(pcheck(b, 8 * CS, 512, 1), -1);
    cr_assert(all_zero(b + 512, CS - 512), "the unwritten rest of the cluster");
}

/* ---- 7. two threads ---- */

/*
 * Thread A, the owner (this thread), allocates the clusters left in random
 * order, rewrites clusters with new generations, and reads random ranges
 * of other tables, so that with a two-table cache tables are evicted and
 * reloaded all the time.  Thread B, with its own loop and engine, keeps
 * ST_DEPTH fast requests going over random ranges until it has had
 * ST_MIN_OK successes and ST_MIN_AGAIN refusals, and the owner has done
 * ST_MIN_OWNER operations meanwhile.
 *
 * gen[c] is the generation cluster c last got from a completed owner write
 * (0: not allocated), stored after the write completed.  What B reads with
 * success must be, byte by byte, a generation between the one gen[] said
 * before B submitted (at least 1: a hole is never read) and the one after
 * it completed plus one (a rewrite in flight): never a hole, never data
 * older than a write that completed before the read was sent.  B rewrites
 * only clusters c % 4 == 3, which the owner never rewrites, with the bytes
 * they hold (generation 1).
 */
#define ST_CLUSTERS (SIZE / CS)
#define ST_MIN_OK 20000
#define ST_MIN_AGAIN 200
#define ST_MIN_OWNER 2000 /* owner operations while the reader runs */
#define ST_DEPTH 4

struct st_req {
    struct stress *st;
    uint64_t off;
    size_t len;
    bool write, busy, remark;
    uint32_t gmin[4];    /* gen[] of each cluster touched, before submission */
    _Alignas(4096) uint8_t buf[3 * CS]; /* aligned for O_DIRECT */
};

struct stress {
    qed_image *img;
    enum qed_aio_backend kind;
    bool direct;        /* cache=none: B writes whole clusters */
    unsigned seed;
    uint32_t *gen;      /* atomic, per cluster (see above) */
    bool done;          /* atomic: the reader reached its counts (or failed) */
    uint64_t owner_ops; /* atomic: operations of the owner so far */
    uint64_t ok, again, writes, iters;
    int err;            /* first failure: negative errno, or 1 for bad data */
    char msg[256];
    struct ev_loop *loop;
};

static void st_fail(struct stress *st, int err, const char *fmt, uint64_t a, uint64_t b)
{
    if (!st->err) {
        st->err = err;
        snprintf(st->msg, sizeof(st->msg), fmt, a, b);
    }
}

/* Is every byte of @q's read one of the generations allowed for its cluster? */
static void st_check_read(struct stress *st, struct st_req *q)
{
    uint64_t c0 = q->off / CS;

    for (size_t i = 0; i < q->len; i++) {
        uint64_t pos = q->off + i, c = pos / CS;
        uint32_t lo = q->gmin[c - c0] ? q->gmin[c - c0] : 1;
        uint32_t hi = __atomic_load_n(&st->gen[c], __ATOMIC_ACQUIRE) + 1;
        bool good = false;

        for (uint32_t g = lo; g <= hi && !good; g++)
            good = q->buf[i] == pbyte(pos, g);
        if (!good) {
            st_fail(st, 1, "read at %" PRIu64 ": no allowed generation at byte +%" PRIu64,
                    q->off, (uint64_t)i);
            return;
        }
    }
}

static void st_done(void *opaque, int ret)
{
    struct st_req *q = opaque;
    struct stress *st = q->st;

    q->busy = false;
    if (ret < 0) {
        st_fail(st, ret, "fast request at %" PRIu64 "+%" PRIu64 " failed", q->off, q->len);
        return;
    }
    if (q->write) {
        if (q->remark)
            st_fail(st, 1, "remark at %" PRIu64 "+%" PRIu64 " with no bitmap", q->off, q->len);
        st->writes++;
    } else {
        st_check_read(st, q);
    }
    st->ok++;
}

/* Start one request on @q: a read of up to two clusters' worth anywhere,
 * or a rewrite inside one cluster c % 4 == 3. */
static void st_start(struct stress *st, qed_aio *aio, struct st_req *q, unsigned *rs)
{
    uint64_t c = (uint64_t)rand_r(rs) % ST_CLUSTERS;
    int rc;

    q->write = rand_r(rs) % 8 == 0;
    if (q->write && st->direct) {
        c |= 3;
        q->off = c * CS;
        q->len = CS;
    } else if (q->write) {
        c |= 3;
        q->off = c * CS + (uint64_t)(rand_r(rs) % 8) * 512;
        q->len = 512 * (1 + (size_t)rand_r(rs) % ((c + 1) * CS - q->off) / 512);
    } else {
        q->off = c * CS + (uint64_t)(rand_r(rs) % 8) * 512;
        q->len = 512 * (1 + (size_t)rand_r(rs) % (2 * CS / 512));
    }
    if (q->off + q->len > SIZE)
        q->len = SIZE - q->off;
    for (uint64_t k = 0; k <= (q->off + q->len - 1) / CS - c; k++)
        q->gmin[k] = __atomic_load_n(&st->gen[c + k], __ATOMIC_ACQUIRE);
    st->iters++;
    if (q->write) {
        pfill(q->buf, q->off, q->len, 1);
        rc = qed_write_on(st->img, aio, q->off, q->buf, q->len, 0, &q->remark, st_done, q);
    } else {
        memset(q->buf, 0, q->len);
        rc = qed_read_on(st->img, aio, q->off, q->buf, q->len, st_done, q);
    }
    if (rc == -EAGAIN)
        st->again++;
    else if (rc < 0)
        st_fail(st, rc, "submission at %" PRIu64 ": %" PRIu64, q->off, (uint64_t)-rc);
    else
        q->busy = true;
}

static bool st_any_busy(const struct st_req *q)
{
    for (unsigned i = 0; i < ST_DEPTH; i++)
        if (q[i].busy)
            return true;
    return false;
}

/* Thread B: its own loop and engine; fast requests until both counts are reached. */
static void *st_reader(void *arg)
{
    struct stress *st = arg;
    struct st_req *q = NULL;
    qed_aio *aio = NULL;
    unsigned rs = st->seed;
    int r;

    if (posix_memalign((void **)&q, 4096, ST_DEPTH * sizeof(*q)) == 0)
        memset(q, 0, ST_DEPTH * sizeof(*q));

    st->loop = ev_loop_new(EVFLAG_AUTO);
    r = st->loop && q ? qed_aio_new(st->loop, st->kind, &aio) : -ENOMEM;
    if (r < 0) {
        st_fail(st, r, "reader engine: %" PRIu64 "%" PRIu64, 0, (uint64_t)-r);
        goto out;
    }
    while (!st->err && (st->ok < ST_MIN_OK || st->again < ST_MIN_AGAIN ||
                        __atomic_load_n(&st->owner_ops, __ATOMIC_RELAXED) < ST_MIN_OWNER)) {
        for (unsigned i = 0; i < ST_DEPTH; i++) {
            q[i].st = st;
            if (!q[i].busy)
                st_start(st, aio, &q[i], &rs);
        }
        if (st_any_busy(q))
            ev_run(st->loop, EVRUN_ONCE);
        else
            sched_yield(); /* all refused: let the owner run (two cores, other jobs) */
    }
    /* Let what is in flight finish before the owner may close. */
    while (st_any_busy(q))
        ev_run(st->loop, EVRUN_ONCE);
out:
    if (aio)
        qed_aio_free(aio);
    if (st->loop)
        ev_loop_destroy(st->loop);
    free(q);
    __atomic_store_n(&st->done, true, __ATOMIC_RELEASE);
    return NULL;
}

/* Owner: (re)write cluster @c with generation @g, then publish it in gen[]. */
static void st_put(struct stress *st, uint32_t c, uint32_t g)
{
    put((uint64_t)c * CS, CS, g);
    __atomic_store_n(&st->gen[c], g, __ATOMIC_RELEASE);
}

/* Owner: read two clusters from @c; each must be its generation, or zeros. */
static void st_owner_read(struct stress *st, uint32_t c, uint8_t *b)
{
    cr_assert_eq(qed_sync_read(img, (uint64_t)c * CS, b, 2 * CS), 0);
    for (unsigned k = 0; k < 2; k++) {
        uint32_t g = st->gen[c + k];

        if (g)
            cr_assert_eq(pcheck(b + k * CS, (uint64_t)(c + k) * CS, CS, g), -1,
                         "owner read of cluster %u (generation %u)", c + k, g);
        else
            cr_assert(all_zero(b + k * CS, CS), "owner read of hole %u", c + k);
    }
}

/* Thread A, the owner, until B is done. */
static void st_owner(struct stress *st, uint32_t *todo, size_t ntodo, unsigned *rs)
{
    uint8_t *b = malloc(2 * CS);

    cr_assert_not_null(b);
    while (!__atomic_load_n(&st->done, __ATOMIC_ACQUIRE)) {
        unsigned pick = (unsigned)rand_r(rs) % 8;
        uint32_t c = (uint32_t)rand_r(rs) % (ST_CLUSTERS - 1);

        if (ntodo && pick < 3) {
            c = todo[--ntodo];
            st_put(st, c, 1);
        } else if (pick < 5 && c % 4 != 3 && st->gen[c]) {
            st_put(st, c, st->gen[c] + 1);
        } else {
            st_owner_read(st, c, b);
        }
        if (rand_r(rs) % 64 == 0)
            cr_assert_eq(qed_sync_flush(img), 0);
        __atomic_add_fetch(&st->owner_ops, 1, __ATOMIC_RELAXED);
    }
    free(b);
}

static void stress(enum qed_aio_backend kind, enum qed_cache_mode cache)
{
    struct qed_open_opts o = {.l2_cache_tables = 2, .cache = cache};
    struct stress st = {.kind = kind, .direct = cache == QED_CACHE_NONE};
    char err[512] = "";
    uint32_t *todo = malloc(ST_CLUSTERS * sizeof(*todo));
    unsigned rs = tf_seed("fast-path stress");
    size_t ntodo = 0;
    pthread_t th;
    int r;

    st.gen = calloc(ST_CLUSTERS, sizeof(*st.gen));
    cr_assert(st.gen && todo);
    owner_real = true;
    qed_aio_free(tf.aio);
    tf.aio = NULL;
    r = tf_new_aio(&tf, kind);
    if (r < 0 && kind == QED_AIO_URING)
        cr_skip_test("io_uring cannot be set up here: %s", strerror(-r));
    cr_assert_eq(r, 0);
    if (cache == QED_CACHE_NONE) {
        tf_rm_tree(tf.dir);
        snprintf(tf.dir, sizeof(tf.dir), "/var/tmp/qed-test-fast-XXXXXX");
        cr_assert_not_null(mkdtemp(tf.dir));
    }
    tf_create(&tf, "f.qed", SIZE, CS, 1, NULL, QED_BACKING_PROBE);
    r = qed_open(tf.aio, tf_path(&tf, "f.qed"), &o, &img, err, sizeof(err));
    if (r == -EINVAL && strstr(err, "O_DIRECT"))
        cr_skip_test("O_DIRECT is refused in %s: %s", tf.dir, err);
    cr_assert_eq(r, 0, "%s", err);
    enable();
    /* Half the clusters first, in random order (one write each); the rest
     * while the reader runs. */
    for (uint32_t c = 0; c < ST_CLUSTERS; c++) {
        uint32_t j = (uint32_t)rand_r(&rs) % (c + 1);

        todo[c] = todo[j];
        todo[j] = c;
    }
    ntodo = ST_CLUSTERS;
    while (ntodo > ST_CLUSTERS / 2)
        st_put(&st, todo[--ntodo], 1);
    st.img = img;
    st.seed = rs ^ 0x5bd1e995u;
    cr_assert_eq(pthread_create(&th, NULL, st_reader, &st), 0);
    st_owner(&st, todo, ntodo, &rs);
    pthread_join(th, NULL);
    cr_log_info("stress %s%s: %" PRIu64 " fast ok (%" PRIu64 " writes), %" PRIu64
                " refused, %" PRIu64 " owner ops", qed_aio_backend_name(tf.aio),
                st.direct ? " cache=none" : "", st.ok, st.writes, st.again, st.owner_ops);
    cr_assert_eq(st.err, 0, "reader thread: %s (%d)", st.msg, st.err);
    cr_assert_geq(st.ok, ST_MIN_OK);
    cr_assert_geq(st.again, ST_MIN_AGAIN);
    cr_assert_geq(st.owner_ops, ST_MIN_OWNER);
    cr_assert_eq(qed_close(img), 0);
    img = NULL;
    {
        struct qed_check_result cr = tf_disk_check(&tf, "f.qed");

        cr_assert_eq(cr.corruptions, 0);
        cr_assert_eq(cr.leaks, 0);
    }
    free(st.gen);
    free(todo);
}

Test(fast, two_threads_threads_backend, .timeout = 300)
{
    stress(QED_AIO_THREADS, QED_CACHE_WRITEBACK);
}

Test(fast, two_threads_io_uring, .timeout = 300)
{
    stress(QED_AIO_URING, QED_CACHE_WRITEBACK);
}

/* cache=none: B's reads of any alignment are bounced by its own engine,
 * its whole-cluster writes go straight. */
Test(fast, two_threads_cache_none, .timeout = 300)
{
    stress(QED_AIO_THREADS, QED_CACHE_NONE);
}
