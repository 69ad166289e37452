/*
 * test-confine.c - unit tests of how images and backing files are opened:
 * never blocking (a FIFO is refused, not waited on), refusing what is not a
 * regular file or a block device, confining backing files to a directory
 * (qed_open_opts.backing_dir, along the whole chain, symlinks and ".."
 * resolved), refusing backing files altogether (no_backing), the default
 * that follows backing names as QEMU does, and waiting a bounded time for an
 * image lock that another open holds (lock_wait_ms).
 *
 * Layout of every test's temp directory:
 *   DIR/outside/secret        raw data the confined images must not reach
 *   DIR/base/                 the directory backing files are confined to
 *   DIR/base/imgs/            the overlays
 * A test that would block on a FIFO is bounded by the suite's timeout, so
 * on code that blocks it fails instead of hanging.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <ev.h>

#include "fixture.h"
#include "qed-image.h"

#define MiB (1024ull * 1024)

static struct test_fixture T; /* loop, QED_AIO_AUTO engine, directory */
static char err[1024];

/* Path of @name inside the test directory (a few rotating buffers). */
static const char *tp(const char *name)
{
    return tf_path(&T, name);
}

/* A raw file of @len bytes of @byte. */
static void make_raw(const char *name, size_t len, int byte)
{
    char *buf = malloc(len);
    int fd = open(tp(name), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert(buf && fd >= 0, "create %s: %s", name, strerror(errno));
    memset(buf, byte, len);
    cr_assert_eq(write(fd, buf, len), (ssize_t)len);
    close(fd);
    free(buf);
}

/* A test that blocks (the bug) is ended by Criterion's timeout: the
 * fixture removes the temp directory then (tf_cleanup_on_timeout). */
static void setup(void)
{
    tf_setup(&T, "confine", QED_AIO_AUTO);
    tf_cleanup_on_timeout(T.dir, 0);
    cr_assert_eq(mkdir(tp("outside"), 0755), 0);
    cr_assert_eq(mkdir(tp("base"), 0755), 0);
    cr_assert_eq(mkdir(tp("base/imgs"), 0755), 0);
    make_raw("outside/secret", 1 * MiB, 0x5e);
    make_raw("base/data.raw", 1 * MiB, 0xda);
    memset(err, 0, sizeof(err));
}

static void teardown(void)
{
    tf_teardown(&T);
}

/* 20 s: every open here returns at once unless it blocks, which is the bug. */
TestSuite(confine, .init = setup, .fini = teardown, .timeout = 20);

/* Create overlay @name (1 MiB) whose backing file is stored as @backing. */
static void overlay(const char *name, const char *backing, enum qed_backing_fmt fmt)
{
    struct qed_create_opts o = {.size = 1 * MiB, .backing_file = backing, .backing_fmt = fmt};
    int r = qed_create(tp(name), &o, err, sizeof(err));
    cr_assert_eq(r, 0, "qed_create %s -> %s: %d %s", name, backing, r, err);
}

/* qed_open @name read-only with @confine_dir (relative to DIR, or NULL). */
static int open_with(const char *name, const char *confine_dir, bool no_backing, qed_image **img)
{
    struct qed_open_opts o = {.read_only = true,
                              .backing_dir = confine_dir ? tp(confine_dir) : NULL,
                              .no_backing = no_backing};
    memset(err, 0, sizeof(err));
    *img = NULL;
    return qed_open(T.aio, tp(name), &o, img, err, sizeof(err));
}

/* The open must fail with @want, and @err must contain every one of @words. */
static void expect_refused(int r, int want, const char *w1, const char *w2)
{
    cr_assert_eq(r, want, "expected %d (%s), got %d: %s", want, strerror(-want), r, err);
    cr_assert_not_null(strstr(err, w1), "message lacks '%s': %s", w1, err);
    if (w2)
        cr_assert_not_null(strstr(err, w2), "message lacks '%s': %s", w2, err);
}

/* Read the first 4 KiB through @img: every byte must be @byte. */
static void expect_reads(qed_image *img, int byte)
{
    static uint8_t buf[4096];
    cr_assert_eq(qed_sync_read(img, 0, buf, sizeof(buf)), 0);
    for (size_t i = 0; i < sizeof(buf); i++)
        cr_assert_eq(buf[i], byte, "byte %zu is 0x%02x, expected 0x%02x", i, buf[i], byte);
}

/* ---- confinement to a directory ---- */

Test(confine, relative_dotdot_escape_refused)
{
    qed_image *img;
    overlay("base/imgs/evil.qed", "../../outside/secret", QED_BACKING_RAW);
    expect_refused(open_with("base/imgs/evil.qed", "base", false, &img), -EPERM,
                   "evil.qed: backing file", "outside/secret");
    cr_assert_not_null(strstr(err, "confined"), "%s", err);
    cr_assert_null(img);
}

Test(confine, relative_dotdot_escape_followed_by_default)
{
    /* Default: QEMU-compatible, the name is followed (the operator chose). */
    qed_image *img;
    overlay("base/imgs/evil.qed", "../../outside/secret", QED_BACKING_RAW);
    cr_assert_eq(open_with("base/imgs/evil.qed", NULL, false, &img), 0, "%s", err);
    expect_reads(img, 0x5e);
    qed_close(img);
}

Test(confine, symlink_escape_refused)
{
    qed_image *img;
    cr_assert_eq(symlink(tp("outside/secret"), tp("base/imgs/link.raw")), 0);
    overlay("base/imgs/sym.qed", "link.raw", QED_BACKING_RAW);
    expect_refused(open_with("base/imgs/sym.qed", "base", false, &img), -EPERM, "link.raw",
                   "outside/secret");
}

Test(confine, symlinked_directory_escape_refused)
{
    /* A symlink in the middle of the path, not only at its end. */
    qed_image *img;
    cr_assert_eq(symlink(tp("outside"), tp("base/imgs/out")), 0);
    overlay("base/imgs/symdir.qed", "out/secret", QED_BACKING_RAW);
    expect_refused(open_with("base/imgs/symdir.qed", "base", false, &img), -EPERM,
                   "out/secret", "confined");
}

Test(confine, symlink_inside_allowed)
{
    qed_image *img;
    cr_assert_eq(symlink("../data.raw", tp("base/imgs/in.raw")), 0);
    overlay("base/imgs/symin.qed", "in.raw", QED_BACKING_RAW);
    cr_assert_eq(open_with("base/imgs/symin.qed", "base", false, &img), 0, "%s", err);
    expect_reads(img, 0xda);
    qed_close(img);
}

Test(confine, absolute_outside_refused)
{
    qed_image *img;
    overlay("base/imgs/abs.qed", tp("outside/secret"), QED_BACKING_RAW);
    expect_refused(open_with("base/imgs/abs.qed", "base", false, &img), -EPERM,
                   "abs.qed: backing file", "confined");
}

Test(confine, absolute_inside_and_relative_inside_allowed)
{
    qed_image *img;
    overlay("base/imgs/absin.qed", tp("base/data.raw"), QED_BACKING_RAW);
    cr_assert_eq(open_with("base/imgs/absin.qed", "base", false, &img), 0, "%s", err);
    expect_reads(img, 0xda);
    qed_close(img);
    overlay("base/imgs/relin.qed", "../data.raw", QED_BACKING_RAW);
    cr_assert_eq(open_with("base/imgs/relin.qed", "base", false, &img), 0, "%s", err);
    expect_reads(img, 0xda);
    qed_close(img);
}

Test(confine, directory_name_prefix_is_not_inside)
{
    /* DIR/base-evil is not under DIR/base although its name starts so. */
    qed_image *img;
    cr_assert_eq(mkdir(tp("base-evil"), 0755), 0);
    make_raw("base-evil/x.raw", 4096, 0x11);
    overlay("base/imgs/prefix.qed", "../../base-evil/x.raw", QED_BACKING_RAW);
    expect_refused(open_with("base/imgs/prefix.qed", "base", false, &img), -EPERM,
                   "base-evil/x.raw", "confined");
}

Test(confine, whole_chain_is_confined)
{
    /* top -> mid.qed (inside) -> ../../outside/secret: the second link is refused. */
    qed_image *img;
    overlay("base/mid.qed", "../outside/secret", QED_BACKING_RAW);
    overlay("base/imgs/top.qed", "../mid.qed", QED_BACKING_PROBE);
    expect_refused(open_with("base/imgs/top.qed", "base", false, &img), -EPERM, "mid.qed",
                   "outside/secret");
    /* Without confinement the chain opens and reads the data through two layers. */
    cr_assert_eq(open_with("base/imgs/top.qed", NULL, false, &img), 0, "%s", err);
    expect_reads(img, 0x5e);
    qed_close(img);
}

Test(confine, probed_backing_outside_refused_before_reading)
{
    /* No NO_PROBE flag: the probe is the first open, and it is confined too. */
    qed_image *img;
    overlay("base/imgs/probe.qed", "../../outside/secret", QED_BACKING_QED);
    expect_refused(open_with("base/imgs/probe.qed", "base", false, &img), -EPERM,
                   "outside/secret", "confined");
}

Test(confine, missing_backing_dir_refused)
{
    qed_image *img;
    overlay("base/imgs/ok.qed", "../data.raw", QED_BACKING_RAW);
    expect_refused(open_with("base/imgs/ok.qed", "nowhere", false, &img), -ENOENT, "nowhere",
                   NULL);
}

/* ---- no backing files at all ---- */

Test(confine, no_backing_refuses_an_overlay)
{
    qed_image *img;
    overlay("base/imgs/ov.qed", "../data.raw", QED_BACKING_RAW);
    expect_refused(open_with("base/imgs/ov.qed", NULL, true, &img), -EPERM, "ov.qed",
                   "../data.raw");
}

Test(confine, no_backing_opens_a_standalone_image)
{
    struct qed_create_opts o = {.size = 1 * MiB};
    qed_image *img;
    cr_assert_eq(qed_create(tp("base/imgs/plain.qed"), &o, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(open_with("base/imgs/plain.qed", "base", true, &img), 0, "%s", err);
    expect_reads(img, 0);
    qed_close(img);
}

/* ---- files that cannot hold an image ---- */

Test(confine, fifo_backing_refused_without_blocking)
{
    qed_image *img;
    cr_assert_eq(mkfifo(tp("base/imgs/fifo"), 0644), 0);
    overlay("base/imgs/f.qed", "fifo", QED_BACKING_RAW);
    expect_refused(open_with("base/imgs/f.qed", NULL, false, &img), -EINVAL, "f.qed",
                   "fifo is a FIFO");
}

Test(confine, fifo_backing_refused_when_probed)
{
    qed_image *img;
    cr_assert_eq(mkfifo(tp("base/imgs/fifo"), 0644), 0);
    overlay("base/imgs/fp.qed", "fifo", QED_BACKING_QED);
    expect_refused(open_with("base/imgs/fp.qed", NULL, false, &img), -EINVAL, "fp.qed",
                   "a FIFO");
}

Test(confine, fifo_backing_refused_at_create)
{
    struct qed_create_opts o = {.size = 1 * MiB, .backing_file = "fifo"};
    cr_assert_eq(mkfifo(tp("base/imgs/fifo"), 0644), 0);
    cr_assert_eq(qed_create(tp("base/imgs/c.qed"), &o, err, sizeof(err)), -EINVAL, "%s", err);
    cr_assert_not_null(strstr(err, "a FIFO"), "%s", err);
}

Test(confine, fifo_as_image_refused)
{
    qed_image *img;
    cr_assert_eq(mkfifo(tp("base/imgs/img.fifo"), 0644), 0);
    expect_refused(open_with("base/imgs/img.fifo", NULL, false, &img), -EINVAL, "img.fifo",
                   "a FIFO");
}

Test(confine, char_device_backing_refused)
{
    qed_image *img;
    overlay("base/imgs/z.qed", "/dev/zero", QED_BACKING_RAW);
    expect_refused(open_with("base/imgs/z.qed", NULL, false, &img), -EINVAL, "/dev/zero",
                   "a character device");
}

Test(confine, directory_backing_refused)
{
    qed_image *img;
    overlay("base/imgs/d.qed", "..", QED_BACKING_RAW);
    expect_refused(open_with("base/imgs/d.qed", NULL, false, &img), -EINVAL, "d.qed",
                   "a directory");
}

Test(confine, socket_backing_refused)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    qed_image *img;
    int s = socket(AF_UNIX, SOCK_STREAM, 0);

    cr_assert_geq(s, 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", tp("base/imgs/sock"));
    cr_assert_eq(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0, "%s", strerror(errno));
    cr_assert_eq(listen(s, 1), 0);
    overlay("base/imgs/s.qed", "sock", QED_BACKING_RAW);
    expect_refused(open_with("base/imgs/s.qed", NULL, false, &img), -EINVAL, "s.qed",
                   "a socket");
    close(s);
}

Test(confine, image_fd_is_blocking_after_open)
{
    /* O_NONBLOCK is only for the open: io_uring would answer EAGAIN on it. */
    qed_image *img;
    struct qed_open_opts o = {0};
    overlay("base/imgs/rw.qed", "../data.raw", QED_BACKING_RAW);
    cr_assert_eq(qed_open(T.aio, tp("base/imgs/rw.qed"), &o, &img, err, sizeof(err)), 0, "%s",
                 err);
    cr_assert_eq(fcntl(img->fd, F_GETFL) & O_NONBLOCK, 0);
    cr_assert_eq(fcntl(img->backing_fd, F_GETFL) & O_NONBLOCK, 0);
    cr_assert_eq(fcntl(img->fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
    cr_assert_eq(fcntl(img->fd, F_GETFL) & O_ACCMODE, O_RDWR);
    {
        static uint8_t buf[65536];
        memset(buf, 0x77, sizeof(buf));
        cr_assert_eq(qed_sync_write(img, 0, buf, sizeof(buf), 0), 0);
    }
    expect_reads(img, 0x77);
    cr_assert_eq(qed_close(img), 0);
}

/* ---- waiting for a held lock ---- */

static qed_image *holder;      /* the open that holds the lock */
static int waits_logged;
static bool release_on_wait;   /* close the holder when the wait is logged */

static void lock_log(enum qed_log_level level, const char *msg, void *opaque)
{
    (void)level;
    (void)opaque;
    if (!strstr(msg, "waiting up to"))
        return;
    waits_logged++;
    if (release_on_wait && holder) {
        qed_close(holder); /* opened without an engine: nothing to run */
        holder = NULL;
    }
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Hold a read-only lock on a fresh image (it refuses a writer), then open
 * it read-write with @wait_ms.  Returns qed_open's result; *@secs its time. */
static int open_while_held(unsigned wait_ms, bool release, double *secs, qed_image **img)
{
    struct qed_create_opts c = {.size = 1 * MiB};
    struct qed_open_opts ho = {.read_only = true};
    struct qed_open_opts o = {.lock_wait_ms = wait_ms};
    double t0;
    int r;

    cr_assert_eq(qed_create(tp("base/locked.qed"), &c, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(qed_open(NULL, tp("base/locked.qed"), &ho, &holder, err, sizeof(err)), 0,
                 "%s", err);
    waits_logged = 0;
    release_on_wait = release;
    qed_set_log(lock_log, NULL, QED_LOG_WARN);
    t0 = mono();
    r = qed_open(T.aio, tp("base/locked.qed"), &o, img, err, sizeof(err));
    *secs = mono() - t0;
    qed_set_log(NULL, NULL, QED_LOG_WARN);
    if (holder)
        qed_close(holder), holder = NULL;
    return r;
}

Test(confine, lock_wait_zero_fails_at_once)
{
    qed_image *img = NULL;
    double secs;
    int r = open_while_held(0, false, &secs, &img);
    cr_assert_eq(r, -EBUSY, "%d %s", r, err);
    cr_assert_not_null(strstr(err, "lock"), "%s", err);
    cr_assert_eq(waits_logged, 0);
    cr_assert_lt(secs, 1.0, "took %.2f s", secs);
}

Test(confine, lock_wait_gets_the_lock_once_released)
{
    qed_image *img = NULL;
    double secs;
    int r = open_while_held(10000, true, &secs, &img);
    cr_assert_eq(r, 0, "%d %s", r, err);
    cr_assert_eq(waits_logged, 1, "the wait must be logged once");
    cr_assert_lt(secs, 5.0, "took %.2f s after the holder let go", secs);
    cr_assert_eq(qed_close(img), 0);
}

Test(confine, lock_wait_fails_after_the_bound)
{
    qed_image *img = NULL;
    double secs;
    int r = open_while_held(700, false, &secs, &img);
    cr_assert_eq(r, -EBUSY, "%d %s", r, err);
    cr_assert_not_null(strstr(err, "locked.qed"), "%s", err);
    cr_assert_eq(waits_logged, 1, "the wait must be logged once, not per poll");
    cr_assert_geq(secs, 0.7, "gave up after %.2f s, before the bound", secs);
    cr_assert_lt(secs, 5.0, "took %.2f s", secs);
}
