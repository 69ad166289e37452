/*
 * test-flush-latch.c - a failed flush is not forgotten (lib/engine/flush-latch.c,
 * qed_image_flush_result).
 *
 * Linux reports a lost write-back once, to whichever fdatasync comes next.
 * The test engine plays that part: the chosen fdatasync fails, the next ones
 * succeed.  Whichever flush takes the error -- a client flush, a FUA write,
 * a group commit batch, the flush that makes NEED_CHECK durable, the clean
 * timer's flush -- the image must remember it:
 *   - every later flush and FUA write fails with -EIO, and
 *     qed_flush_error() / qed_info.flush_error say so;
 *   - NEED_CHECK is never cleared: not by the clean timer, not by close,
 *     which fails and leaves NEED_CHECK on disk;
 *   - nothing is allocated without a durable NEED_CHECK;
 *   - a repair of the open image is refused;
 *   - a new open starts afresh (after checking the image).
 * And flushes run one fdatasync at a time: two at once must not let one
 * succeed beside the one that failed; those that wait share the next one.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
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

/* fdatasync() as the library calls it outside the I/O engine (qed_check's
 * repair, close): linked with -Wl,--wrap=fdatasync (engine.am).  While
 * fail_direct_fsync is set, the next call fails once with EIO. */
int __real_fdatasync(int fd);
int __wrap_fdatasync(int fd);
static bool fail_direct_fsync;

int __wrap_fdatasync(int fd)
{
    if (fail_direct_fsync) {
        fail_direct_fsync = false;
        errno = EIO;
        return -1;
    }
    return __real_fdatasync(fd);
}

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define IMG_PATH tf_path(&F.tf, "a.qed")     /* the image */
#define BACKING_PATH tf_path(&F.tf, "b.raw") /* its raw backing file, when it has one */
#define CS (4 * KiB)
#define IMG_SIZE (8 * MiB)
#define MAX_TURNS 1000000
#define FSYNC_MASK (1u << QED_IO_FSYNC)

struct fixture {
    struct test_fixture tf;
    qed_image *img;
    unsigned fsyncs, failed_fsyncs;
};

static struct fixture F;

static void observer(struct qed_io *io, int err, void *opaque)
{
    (void)opaque;
    if (io->op == QED_IO_FSYNC) {
        F.fsyncs++;
        F.failed_fsyncs += err < 0;
    }
}

static void setup(void)
{
    memset(&F, 0, sizeof(F));
    tf_setup(&F.tf, "latch", QED_AIO_TEST);
    qed_aio_test_set_observer(F.tf.aio, observer, NULL);
    qed_set_log(tf_quiet_log, NULL, QED_LOG_ERROR);
}

static void teardown(void)
{
    tf_close_left_open(&F.tf, &F.img);
    tf_teardown(&F.tf);
}

TestSuite(latch, .init = setup, .fini = teardown, .timeout = 60);

/* ---- helpers ---- */

static void open_image(unsigned clean_delay_ms)
{
    struct qed_open_opts oo = {.clean_delay_ms = clean_delay_ms};
    char err[256];

    cr_assert_eq(qed_open(F.tf.aio, IMG_PATH, &oo, &F.img, err, sizeof(err)), 0, "open: %s", err);
}

/* A new image (with a raw backing file of pattern bytes when @backing). */
static void make_image(bool backing, unsigned clean_delay_ms)
{
    if (backing)
        tf_raw_pattern(BACKING_PATH, IMG_SIZE);
    tf_create(&F.tf, "a.qed", IMG_SIZE, CS, 1, backing ? "b.raw" : NULL, QED_BACKING_RAW);
    open_image(clean_delay_ms);
}

static uint64_t disk_features(void)
{
    uint8_t h[64];
    uint64_t f;
    int fd = open(IMG_PATH, O_RDONLY);

    cr_assert(fd >= 0);
    cr_assert_eq(pread(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
    close(fd);
    memcpy(&f, h + 16, sizeof(f));
    return le64toh(f);
}

static int do_write(uint64_t off, const void *buf, size_t len, unsigned flags)
{
    struct tf_done d = {0};
    int r = qed_write(F.img, off, buf, len, flags, tf_done_cb, &d);

    if (r < 0)
        return r;
    tf_wait(&F.tf, &d, 1);
    return d.ret;
}

static void fill(uint8_t *b, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(seed * 31 + i / 7);
}

/* Everything a latched image must do: flushes and FUA writes fail, the
 * state is visible, close fails and leaves NEED_CHECK on disk, and the image
 * opens again (checked), without the latch. */
static void expect_latched(const char *what)
{
    uint8_t b[512];
    struct qed_info info;
    struct qed_check_result res;

    cr_assert_neq(qed_flush_error(F.img), 0, "%s: qed_flush_error() is 0", what);
    qed_get_info(F.img, &info);
    cr_assert_neq(info.flush_error, 0, "%s: qed_info.flush_error is 0", what);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(qed_sync_flush(F.img), -EIO, "%s: flush %d after the failure", what, i);
    fill(b, sizeof(b), 7);
    cr_assert_eq(do_write(0, b, sizeof(b), QED_REQ_FUA), -EIO, "%s: a FUA write", what);
    cr_assert_eq(qed_sync_read(F.img, 0, b, sizeof(b)), 0, "%s: a read", what);
    cr_assert_eq(qed_check(F.img, true, &res), -EIO, "%s: repair of a failed image", what);
    cr_assert_eq(qed_close(F.img), -EIO, "%s: close of a failed image", what);
    F.img = NULL;
    cr_assert(disk_features() & QED_F_NEED_CHECK, "%s: NEED_CHECK not on disk after close", what);
    /* A new open checks the image and starts without the latch. */
    open_image(600000);
    cr_assert_eq(qed_flush_error(F.img), 0);
    cr_assert_eq(qed_sync_flush(F.img), 0, "%s: a flush after reopening", what);
    cr_assert_eq(qed_close(F.img), 0);
    F.img = NULL;
    cr_assert_eq(disk_features() & QED_F_NEED_CHECK, 0, "%s: a clean close after reopening",
                 what);
}

/* ---- tests ---- */

Test(latch, failed_client_flush_fails_later_flushes)
{
    uint8_t b[CS];

    make_image(false, 600000);
    fill(b, sizeof(b), 1);
    cr_assert_eq(do_write(3 * CS, b, sizeof(b), 0), 0);
    cr_assert_eq(qed_flush_error(F.img), 0);
    qed_aio_test_fail_nth(F.tf.aio, FSYNC_MASK, 0, -EIO);
    cr_assert_eq(qed_sync_flush(F.img), -EIO);
    cr_assert_eq(F.failed_fsyncs, 1);
    /* The engine's next fdatasync would succeed, as Linux's does. */
    cr_assert_eq(qed_sync_flush(F.img), -EIO, "the flush after the failed one");
    /* Writes that need no flush go on: in place, and an allocation into an
     * existing table under a durable NEED_CHECK. */
    cr_assert_eq(do_write(3 * CS, b, 512, 0), 0, "an in-place write");
    cr_assert_eq(do_write(7 * CS + 512, b, 512, 0), 0, "an allocating write");
    expect_latched("client flush");
}

Test(latch, first_failure_keeps_its_errno)
{
    make_image(false, 600000);
    qed_aio_test_fail_nth(F.tf.aio, FSYNC_MASK, 0, -ENOSPC);
    cr_assert_eq(qed_sync_flush(F.img), -ENOSPC);
    cr_assert_eq(qed_flush_error(F.img), -ENOSPC);
    cr_assert_eq(qed_sync_flush(F.img), -EIO, "later flushes fail with EIO");
    expect_latched("ENOSPC flush");
}

/* Another request's FUA write takes the error: this one's flush fails too. */
Test(latch, failed_fua_write_fails_a_later_flush)
{
    uint8_t a[CS], b[CS];
    struct tf_done d[2] = {{0}};

    make_image(false, 600000);
    fill(a, sizeof(a), 2);
    fill(b, sizeof(b), 3);
    cr_assert_eq(do_write(0, a, sizeof(a), 0), 0);
    cr_assert_eq(do_write(CS, b, sizeof(b), 0), 0);
    /* "Connection A" writes in place; "connection B"'s FUA write takes the
     * write-back error; A's flush must not report A's write durable. */
    cr_assert_eq(qed_write(F.img, 0, b, sizeof(b), 0, tf_done_cb, &d[0]), 0);
    tf_wait(&F.tf, &d[0], 1);
    cr_assert_eq(d[0].ret, 0);
    qed_aio_test_fail_nth(F.tf.aio, FSYNC_MASK, 0, -EIO);
    cr_assert_eq(qed_write(F.img, CS, a, sizeof(a), QED_REQ_FUA, tf_done_cb, &d[1]), 0);
    tf_wait(&F.tf, &d[1], 1);
    cr_assert_eq(d[1].ret, -EIO, "the FUA write whose flush failed");
    cr_assert_eq(qed_sync_flush(F.img), -EIO, "A's flush after B's failed FUA write");
    expect_latched("FUA write");
}

/* With a backing file a batch flushes the members' data before their L2
 * update (rule 3); that flush fails. */
Test(latch, failed_group_commit_flush_fails_later_flushes)
{
    uint8_t b[512];
    struct tf_done d[4] = {{0}};

    make_image(true, 600000);
    memset(b, 0x77, sizeof(b));
    cr_assert_eq(do_write(2 * MiB - CS, b, sizeof(b), 0), 0); /* the table exists */
    unsigned before = F.fsyncs;
    qed_aio_test_fail_nth(F.tf.aio, FSYNC_MASK, 0, -EIO);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(qed_write(F.img, (10 + 2 * (uint64_t)i) * CS, b, sizeof(b), 0, tf_done_cb,
                               &d[i]), 0);
    tf_wait(&F.tf, d, 4);
    cr_assert_eq(F.fsyncs - before, 1, "one flush for the batch");
    for (int i = 0; i < 4; i++)
        cr_assert_eq(d[i].ret, -EIO, "member %d of the failed batch", i);
    /* An allocation needs that flush: it fails now, and the next batch too. */
    d[0] = (struct tf_done){0};
    cr_assert_eq(qed_write(F.img, 40 * CS, b, sizeof(b), 0, tf_done_cb, &d[0]), 0);
    tf_wait(&F.tf, d, 1);
    cr_assert_eq(d[0].ret, -EIO, "an overlay allocation after the failed flush");
    expect_latched("group commit flush");
}

/* The timer that clears NEED_CHECK takes the error: the flag stays, on disk
 * too, through the close. */
Test(latch, failed_clean_timer_flush_keeps_need_check)
{
    uint8_t b[CS];

    make_image(false, 1);
    fill(b, sizeof(b), 4);
    cr_assert_eq(do_write(5 * CS, b, sizeof(b), 0), 0);
    cr_assert(disk_features() & QED_F_NEED_CHECK);
    /* The timer cannot fire before the loop runs again: the next flush is
     * the clean's. */
    qed_aio_test_fail_nth(F.tf.aio, FSYNC_MASK, 0, -EIO);
    /* The clean runs 1 ms after the last allocation: wait for its flush. */
    for (unsigned long t = 0; F.failed_fsyncs == 0 || F.img->clean_queued; t++) {
        cr_assert(t < MAX_TURNS, "the clean timer never flushed");
        ev_run(F.tf.loop, EVRUN_ONCE);
    }
    cr_assert_neq(qed_flush_error(F.img), 0, "the clean's failed flush is latched");
    cr_assert(disk_features() & QED_F_NEED_CHECK, "NEED_CHECK cleared after a failed flush");
    /* No further clean is even tried after more allocations. */
    cr_assert_eq(do_write(9 * CS, b, sizeof(b), 0), 0);
    cr_assert(!ev_is_active(&F.img->clean_timer), "the clean timer is armed on a failed image");
    expect_latched("clean timer flush");
}

/* The flush that makes NEED_CHECK durable before the first allocation
 * fails: no allocation may then happen without NEED_CHECK on disk. */
Test(latch, failed_need_check_flush_allows_no_allocation)
{
    uint8_t b[CS];
    unsigned before;

    make_image(false, 600000);
    fill(b, sizeof(b), 5);
    qed_aio_test_fail_nth(F.tf.aio, FSYNC_MASK, 0, -EIO);
    cr_assert_eq(do_write(5 * CS, b, sizeof(b), 0), -EIO);
    before = F.fsyncs;
    cr_assert_eq(do_write(5 * CS, b, sizeof(b), 0), -EIO,
                 "an allocation after the NEED_CHECK flush failed");
    cr_assert_eq(F.fsyncs - before, 1, "the allocation tried to make NEED_CHECK durable again");
    expect_latched("NEED_CHECK flush");
}

/* The final flush of close fails: close reports it, NEED_CHECK stays. */
Test(latch, failed_close_flush_keeps_need_check)
{
    uint8_t b[CS];

    make_image(false, 600000);
    fill(b, sizeof(b), 6);
    cr_assert_eq(do_write(5 * CS, b, sizeof(b), 0), 0);
    qed_aio_test_fail_nth(F.tf.aio, FSYNC_MASK, 0, -EIO);
    cr_assert_eq(qed_close(F.img), -EIO);
    F.img = NULL;
    cr_assert(disk_features() & QED_F_NEED_CHECK);
    open_image(600000);
    cr_assert_eq(qed_flush_error(F.img), 0);
    {
        uint8_t got[CS];
        cr_assert_eq(qed_sync_read(F.img, 5 * CS, got, sizeof(got)), 0);
        cr_assert(memcmp(got, b, sizeof(b)) == 0);
    }
}

/* An image that had a backing file never carries NEED_CHECK; after a failed
 * flush its close writes it, so the next open checks the image. */
Test(latch, overlay_gets_need_check_at_close)
{
    make_image(true, 600000);
    cr_assert_eq(disk_features() & QED_F_NEED_CHECK, 0);
    qed_aio_test_fail_nth(F.tf.aio, FSYNC_MASK, 0, -EIO);
    cr_assert_eq(qed_sync_flush(F.img), -EIO);
    expect_latched("overlay flush");
}

/* Complete the held I/Os newest first, as a thread pool or io_uring may. */
static void complete_newest_first(void)
{
    for (unsigned long t = 0; qed_aio_test_pending(F.tf.aio) > 0 || t == 0; t++) {
        cr_assert(t < MAX_TURNS, "I/O never drained");
        ev_run(F.tf.loop, EVRUN_NOWAIT);
        if (qed_aio_test_pending(F.tf.aio) > 0) {
            cr_assert_leq(qed_aio_test_pending(F.tf.aio), 1, "two fdatasyncs in flight at once");
            qed_aio_test_complete(F.tf.aio, qed_aio_test_pending(F.tf.aio) - 1, 0);
        }
    }
    ev_run(F.tf.loop, EVRUN_NOWAIT);
}

/*
 * Two flushes at once, and the first fdatasync fails.  With both in flight
 * the kernel reports the error to one only, and the other may finish first,
 * successfully: the second flush must not succeed.  Flushes run one at a
 * time, so the second one's fdatasync starts after the latch is set.
 */
Test(latch, concurrent_flushes_never_miss_the_failure)
{
    struct tf_done d[2] = {{0}};

    make_image(false, 600000);
    qed_aio_test_set_auto(F.tf.aio, false);
    qed_aio_test_fail_nth(F.tf.aio, FSYNC_MASK, 0, -EIO);
    cr_assert_eq(qed_flush(F.img, tf_done_cb, &d[0]), 0);
    cr_assert_eq(qed_flush(F.img, tf_done_cb, &d[1]), 0);
    complete_newest_first();
    cr_assert_eq(d[0].calls + d[1].calls, 2);
    cr_assert_eq(d[0].ret, -EIO, "the flush whose fdatasync failed");
    cr_assert_eq(d[1].ret, -EIO, "the flush that ran beside it");
    qed_aio_test_set_auto(F.tf.aio, true);
    expect_latched("concurrent flushes");
}

/* Flushes that come while one is in flight share the next fdatasync. */
Test(latch, waiting_flushes_share_one_fdatasync)
{
    struct tf_done d[5] = {{0}};
    unsigned before;

    make_image(false, 600000);
    qed_aio_test_set_auto(F.tf.aio, false);
    before = F.fsyncs;
    cr_assert_eq(qed_flush(F.img, tf_done_cb, &d[0]), 0);
    ev_run(F.tf.loop, EVRUN_NOWAIT);
    for (int i = 1; i < 5; i++)
        cr_assert_eq(qed_flush(F.img, tf_done_cb, &d[i]), 0);
    complete_newest_first();
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(d[i].calls, 1);
        cr_assert_eq(d[i].ret, 0);
    }
    cr_assert_eq(F.fsyncs - before, 2, "5 flushes, %u fdatasyncs", F.fsyncs - before);
    cr_assert_eq(F.img->fsyncs, 2);
    cr_assert_eq(F.img->fsync_riders_total, 3);
    qed_aio_test_set_auto(F.tf.aio, true);
}

/*
 * The NEED_CHECK header reached the file but its fdatasync failed: the flag
 * must stay on disk.  A resize rewrites the header; it must not write one
 * without NEED_CHECK (its own fdatasync would then make "consistent" durable
 * although the failed flush may have lost data), and it fails as every
 * flushing request does after the latch.  Checked before close, which would
 * write NEED_CHECK back and hide a crash-time window.
 */
Test(latch, resize_after_failed_need_check_flush_keeps_need_check)
{
    uint8_t b[CS];

    make_image(false, 600000);
    fill(b, sizeof(b), 8);
    qed_aio_test_fail_nth(F.tf.aio, FSYNC_MASK, 0, -EIO);
    cr_assert_eq(do_write(5 * CS, b, sizeof(b), 0), -EIO);
    cr_assert(disk_features() & QED_F_NEED_CHECK, "the header write itself succeeded");
    cr_assert_eq(qed_sync_resize(F.img, 2 * IMG_SIZE), -EIO, "a resize after the latch");
    cr_assert(disk_features() & QED_F_NEED_CHECK,
              "a resize after a failed flush cleared NEED_CHECK on disk");
    cr_assert_eq(qed_size(F.img), IMG_SIZE, "the failed resize changed the size");
    expect_latched("resize after a failed NEED_CHECK flush");
}

/*
 * A repair of the open image (qed_check with repair, as `qed-img check -r`
 * runs it) calls fdatasync itself; when that one takes the write-back error,
 * the image must remember it like any other flush: the repair fails, later
 * flushes fail, and NEED_CHECK stays.
 */
Test(latch, failed_repair_flush_is_latched)
{
    uint8_t b[CS];
    struct qed_check_result res;

    make_image(false, 600000);
    fill(b, sizeof(b), 9);
    cr_assert_eq(do_write(5 * CS, b, sizeof(b), 0), 0);
    cr_assert(disk_features() & QED_F_NEED_CHECK);
    fail_direct_fsync = true;
    cr_assert_lt(qed_check(F.img, true, &res), 0, "a repair whose flush failed");
    cr_assert_not(fail_direct_fsync, "the repair did not flush");
    cr_assert_neq(qed_flush_error(F.img), 0, "the repair's failed flush is not latched");
    cr_assert(disk_features() & QED_F_NEED_CHECK);
    expect_latched("repair flush");
}
