/*
 * test-iowq.c - qed_aio_set_max_workers: an io_uring engine's cap on its
 * kernel worker threads (io-wq) is in effect, for the thread that set it
 * up and for a thread that only submits to it later (as qednbd's loop
 * threads do with engines their main thread made; issue 14).
 *
 * The kernel is asked directly: IORING_REGISTER_IOWQ_MAX_WORKERS with
 * zeros changes nothing and returns the calling thread's current limits
 * ({0, 0} for a thread that never submitted to the ring).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/io_uring.h>
#include <sys/syscall.h>

#include <criterion/criterion.h>
#include <ev.h>

#include "fixture.h"
#include "qed-io.h"
#include "qed-io-test.h"

static struct test_fixture tf;
static int fd = -1;

static void fini(void)
{
    if (fd >= 0)
        close(fd);
    fd = -1;
    tf_teardown(&tf);
}

/* An io_uring engine on tf.loop, or skip. */
static void setup_uring(void)
{
    int r;

    tf_init(&tf, NULL);
    r = tf_new_aio(&tf, QED_AIO_URING);
    if (r < 0)
        cr_skip_test("io_uring not available: %s", strerror(-r));
    tf_watchdog(&tf, 30, true);
}

/* The calling thread's limits for the ring, {bounded, unbounded}, into
 * @vals; returns 0 or -errno.  No assertions: any thread may call it. */
static int query_raw(unsigned vals[2])
{
    int rfd = qed_aio_test_uring_fd(tf.aio);

    if (rfd < 0)
        return rfd;
    vals[0] = vals[1] = 0;
    if (syscall(__NR_io_uring_register, rfd, IORING_REGISTER_IOWQ_MAX_WORKERS, vals, 2) < 0)
        return -errno;
    return 0;
}

/* query_raw on the test's thread. */
static void query(unsigned vals[2])
{
    int r = query_raw(vals);

    if (r == -EINVAL)
        cr_skip_test("this kernel cannot report io-wq limits (before 5.15)");
    cr_assert_eq(r, 0, "IORING_REGISTER_IOWQ_MAX_WORKERS: %s", strerror(-r));
}

/* Set the cap to @n, or skip where the kernel cannot. */
static void set_cap(unsigned n)
{
    int r = qed_aio_set_max_workers(tf.aio, n);

    if (r == -ENOTSUP)
        cr_skip_test("this kernel cannot cap io-wq workers");
    cr_assert_eq(r, 0, "qed_aio_set_max_workers: %s", strerror(-r));
}

Test(iowq, default_is_the_kernels, .init = setup_uring, .fini = fini)
{
    unsigned vals[2], again[2];
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);

    /* Nothing set: the kernel's own bounded limit, min(SQ entries, 4 * CPUs)
     * (the rule qednbd's --threads shares out). */
    query(vals);
    cr_assert_gt(vals[0], 0);
    cr_assert_leq(vals[0], (unsigned)(4 * cpus), "bounded %u, %ld CPUs", vals[0], cpus);
    query(again);
    cr_assert_eq(again[0], vals[0], "asking changed the limit");
    cr_assert_eq(again[1], vals[1]);
}

Test(iowq, cap_in_effect, .init = setup_uring, .fini = fini)
{
    unsigned vals[2];

    set_cap(3);
    query(vals);
    cr_assert_eq(vals[0], 3, "bounded %u", vals[0]);
    cr_assert_eq(vals[1], 3, "unbounded %u", vals[1]);
    /* 0 changes nothing. */
    cr_assert_eq(qed_aio_set_max_workers(tf.aio, 0), 0);
    query(vals);
    cr_assert_eq(vals[0], 3);
    set_cap(QED_URING_IOWQ_BOUNDED);
    query(vals);
    cr_assert_eq(vals[0], QED_URING_IOWQ_BOUNDED);
}

Test(iowq, cap_clamped_to_ring, .init = setup_uring, .fini = fini)
{
    unsigned vals[2], dflt[2];

    /* More workers than the ring holds entries is never asked of the
     * kernel (it would take up to RLIMIT_NPROC); as many as the kernel's
     * default, which never exceeds the ring's size, is. */
    query(dflt);
    set_cap(3);
    set_cap(1000000);
    query(vals);
    cr_assert_leq(vals[0], 32768, "bounded %u: more than the largest ring", vals[0]);
    cr_assert_geq(vals[0], dflt[0], "bounded %u, the kernel's default %u", vals[0], dflt[0]);
}

/* ---- a thread that only submits (qednbd's loop threads) ---- */

/* Filled by the submitting thread, checked by the test's own (Criterion's
 * assertions must not run on another thread). */
static unsigned before[2], after[2];
static int before_r, after_r;
static struct qed_io fsync_io;
static bool fsync_done;

static void fsync_cb(struct qed_io *io)
{
    (void)io;
    fsync_done = true;
}

static void *submitter(void *arg)
{
    (void)arg;
    before_r = query_raw(before);
    fsync_io = (struct qed_io){ .op = QED_IO_FSYNC, .fd = fd, .done = fsync_cb };
    qed_aio_submit(tf.aio, &fsync_io);
    /* The engine keeps the loop alive while the fsync is in flight; the
     * watchdog (unref'd) ends it if the completion is lost. */
    ev_run(tf.loop, 0);
    after_r = query_raw(after);
    return NULL;
}

Test(iowq, cap_reaches_submitting_thread, .init = setup_uring, .fini = fini)
{
    char path[] = "/tmp/qed-test-iowq-XXXXXX";
    pthread_t th;

    fd = mkstemp(path);
    cr_assert(fd >= 0, "mkstemp: %s", strerror(errno));
    unlink(path);
    set_cap(3);
    cr_assert_eq(pthread_create(&th, NULL, submitter, NULL), 0);
    cr_assert_eq(pthread_join(th, NULL), 0);
    cr_assert(!tf.timed_out, "the fsync never completed");
    cr_assert(fsync_done);
    cr_assert_eq(fsync_io.res, 0, "fsync: %s", strerror((int)-fsync_io.res));
    cr_assert_eq(before_r, 0, "asking before submitting: %s", strerror(-before_r));
    cr_assert_eq(after_r, 0, "asking after submitting: %s", strerror(-after_r));
    cr_assert_eq(before[0], 0, "the thread had workers before submitting: %u", before[0]);
    cr_assert_eq(after[0], 3, "bounded %u on the submitting thread", after[0]);
    cr_assert_eq(after[1], 3, "unbounded %u on the submitting thread", after[1]);
}

Test(iowq, thread_pool_has_none)
{
    tf_setup(&tf, NULL, QED_AIO_THREADS);
    cr_assert_eq(qed_aio_set_max_workers(tf.aio, 4), -ENOTSUP);
    cr_assert_eq(qed_aio_test_uring_fd(tf.aio), -ENOTSUP);
    tf_teardown(&tf);
}
