/*
 * test-loop-copy.c - the loop thread never copies more than
 * QED_IO_LOOP_COPY_MAX (128 KiB) of file data at once (issue 14).
 *
 * Each case writes and reads back 1 MiB or 32 MiB, aligned or not (an
 * unaligned offset and buffers, over three iovecs), on a buffered file on
 * /var/tmp (ext4 here: io_uring's inline attempts), on tmpfs (the memory
 * path) and with O_DIRECT on /var/tmp (bounce buffers and read-modify-
 * write), through the io_uring and thread-pool engines.  It checks the data
 * (and that the bytes around an unaligned write survive) and that the
 * engine's record of its largest loop copy (qed_aio_test_loop_copy_max)
 * stays within the bound.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/vfs.h>
#include <linux/magic.h>

#include <criterion/criterion.h>
#include <ev.h>

#include "fixture.h"
#include "qed-io.h"
#include "qed-io-test.h"

enum fsmode { FS_BUFFERED, FS_MEMORY, FS_DIRECT };

static struct test_fixture tf;
static int fd = -1, vfd = -1;     /* the engine's fd; a buffered one to verify with */
static char path[64];
static bool in_submit;

static void fini(void)
{
    if (fd >= 0)
        close(fd);
    if (vfd >= 0)
        close(vfd);
    fd = vfd = -1;
    if (path[0])
        unlink(path);
    path[0] = 0;
    tf_teardown(&tf);
}

/* Engine @kind and a file for @m; skip where the machine cannot do it. */
static unsigned setup(enum qed_aio_backend kind, enum fsmode m)
{
    struct statfs sfs;
    int r;

    tf_init(&tf, NULL);
    r = tf_new_aio(&tf, kind);
    if (r < 0)
        cr_skip_test("engine not available: %s", strerror(-r));
    tf_watchdog(&tf, 120, true);
    snprintf(path, sizeof(path), "%s/qed-test-loop-copy-XXXXXX",
             m == FS_MEMORY ? "/dev/shm" : "/var/tmp");
    fd = mkstemp(path);
    cr_assert(fd >= 0, "mkstemp %s: %s", path, strerror(errno));
    vfd = open(path, O_RDWR);
    cr_assert(vfd >= 0);
    cr_assert_eq(fstatfs(fd, &sfs), 0);
    if (m == FS_MEMORY) {
        if (sfs.f_type != TMPFS_MAGIC)
            cr_skip_test("/dev/shm is not a tmpfs here");
        return QED_IO_F_MEMORY;
    }
    if (m == FS_DIRECT) {
        char why[256];
        int dfd = open(path, O_RDWR | O_DIRECT);
        if (dfd < 0)
            cr_skip_test("O_DIRECT refused in /var/tmp: %s", strerror(errno));
        close(fd);
        fd = dfd;
        if (qed_dio_check(fd, why, sizeof(why)) < 0)
            cr_skip_test("%s", why);
        return QED_IO_F_DIRECT;
    }
    return 0;
}

static void done_cb(struct qed_io *io)
{
    cr_assert(!in_submit, "done ran inside qed_aio_submit");
    *(bool *)io->opaque = true;
}

/* Run one read or write through the engine and wait for it. */
static void run_io(enum qed_io_op op, unsigned flags, struct iovec *iov, int cnt, uint64_t off,
                   uint64_t len)
{
    struct qed_io io;
    bool done = false;
    long turns = 0;

    qed_io_set(&io, op, fd, flags, iov, cnt, off, 0, done_cb, &done);
    in_submit = true;
    qed_aio_submit(tf.aio, &io);
    in_submit = false;
    while (!done && turns++ < TF_MAX_TURNS && !tf.timed_out)
        ev_run(tf.loop, EVRUN_ONCE);
    cr_assert(done, "I/O did not complete");
    cr_assert_eq(io.res, (int64_t)len, "res %lld, want %llu", (long long)io.res,
                 (unsigned long long)len);
}

/* Split [p, p + len) into three iovecs of uneven sizes (unaligned case), or one. */
static int make_iov(struct iovec *iov, uint8_t *p, uint64_t len, bool aligned)
{
    if (aligned) {
        iov[0] = (struct iovec){p, len};
        return 1;
    }
    iov[0] = (struct iovec){p, 1000};
    iov[1] = (struct iovec){p + 1000, len / 2};
    iov[2] = (struct iovec){p + 1000 + len / 2, len - 1000 - len / 2};
    return 3;
}

/* Write @len bytes (aligned or not) and read them back; check data and bound. */
static void t_case(enum qed_aio_backend kind, enum fsmode m, uint64_t len, bool aligned)
{
    unsigned flags = setup(kind, m);
    uint64_t off = aligned ? 3 * 4096 : 3 * 4096 + 517;
    uint64_t span = off + len + 2 * 4096;
    uint8_t *bg, *wbuf = NULL, *rbuf = NULL, *back;
    struct iovec iov[3];
    int cnt;

    /* The file first holds a background pattern, so that a read-modify-write
     * that lost the bytes around the request shows. */
    bg = malloc(span);
    cr_assert_not_null(bg);
    tf_fill(bg, span, 1);
    cr_assert_eq(qed_pwrite_full(vfd, bg, span, 0), 0);
    cr_assert(posix_memalign((void **)&wbuf, 4096, len + 4096) == 0);
    cr_assert(posix_memalign((void **)&rbuf, 4096, len + 4096) == 0);
    tf_fill(wbuf, len + 4096, 2);
    qed_aio_test_loop_copy_max(tf.aio, true);

    cnt = make_iov(iov, wbuf + (aligned ? 0 : 3), len, aligned);
    run_io(QED_IO_WRITE, flags, iov, cnt, off, len);
    cnt = make_iov(iov, rbuf + (aligned ? 0 : 5), len, aligned);
    run_io(QED_IO_READ, flags, iov, cnt, off, len);
    cr_assert(memcmp(rbuf + (aligned ? 0 : 5), wbuf + (aligned ? 0 : 3), len) == 0,
              "read back differs");

    /* What is on the file: the write, and the background around it. */
    back = malloc(span);
    cr_assert_not_null(back);
    cr_assert_eq(qed_pread_full(vfd, back, span, 0), 0);
    cr_assert(memcmp(back, bg, off) == 0, "bytes before the write changed");
    cr_assert(memcmp(back + off, wbuf + (aligned ? 0 : 3), len) == 0, "the write is not there");
    cr_assert(memcmp(back + off + len, bg + off + len, span - off - len) == 0,
              "bytes after the write changed");

    uint64_t most = qed_aio_test_loop_copy_max(tf.aio, false);
    cr_assert(most <= QED_IO_LOOP_COPY_MAX, "the loop copied %llu bytes at once (bound %u)",
              (unsigned long long)most, QED_IO_LOOP_COPY_MAX);
    /* The bounce copies did happen, on the loop, and were seen. */
    if (m == FS_DIRECT && !aligned)
        cr_assert_eq(most, QED_IO_LOOP_COPY_MAX);
    free(bg);
    free(back);
    free(wbuf);
    free(rbuf);
}

#define MIB (1024u * 1024)

#define CASES(suite, kind)                                                                     \
    Test(suite, buffered_1m, .fini = fini, .timeout = 120)                                     \
    { t_case(kind, FS_BUFFERED, MIB, true); }                                                  \
    Test(suite, buffered_1m_unaligned, .fini = fini, .timeout = 120)                           \
    { t_case(kind, FS_BUFFERED, MIB, false); }                                                 \
    Test(suite, buffered_32m, .fini = fini, .timeout = 120)                                    \
    { t_case(kind, FS_BUFFERED, 32 * MIB, true); }                                             \
    Test(suite, buffered_32m_unaligned, .fini = fini, .timeout = 120)                          \
    { t_case(kind, FS_BUFFERED, 32 * MIB, false); }                                            \
    Test(suite, memory_1m, .fini = fini, .timeout = 120)                                       \
    { t_case(kind, FS_MEMORY, MIB, true); }                                                    \
    Test(suite, memory_32m_unaligned, .fini = fini, .timeout = 120)                            \
    { t_case(kind, FS_MEMORY, 32 * MIB, false); }                                              \
    Test(suite, direct_1m, .fini = fini, .timeout = 120)                                       \
    { t_case(kind, FS_DIRECT, MIB, true); }                                                    \
    Test(suite, direct_1m_unaligned, .fini = fini, .timeout = 120)                             \
    { t_case(kind, FS_DIRECT, MIB, false); }                                                   \
    Test(suite, direct_32m, .fini = fini, .timeout = 120)                                      \
    { t_case(kind, FS_DIRECT, 32 * MIB, true); }                                               \
    Test(suite, direct_32m_unaligned, .fini = fini, .timeout = 120)                            \
    { t_case(kind, FS_DIRECT, 32 * MIB, false); }

CASES(uring, QED_AIO_URING)
CASES(threads, QED_AIO_THREADS)

/* The other way for io_uring (QED_AIO_BIG=split): bounded steps on the loop. */
Test(uring_split, buffered_32m_unaligned, .fini = fini, .timeout = 120)
{
    setenv("QED_AIO_BIG", "split", 1);
    t_case(QED_AIO_URING, FS_BUFFERED, 32 * MIB, false);
}

Test(uring_split, buffered_1m, .fini = fini, .timeout = 120)
{
    setenv("QED_AIO_BIG", "split", 1);
    t_case(QED_AIO_URING, FS_BUFFERED, MIB, true);
}

/* The record is live: a small read of cached data is copied inline, and
 * counted at its size. */
Test(uring, small_read_is_counted, .fini = fini, .timeout = 60)
{
    unsigned flags = setup(QED_AIO_URING, FS_BUFFERED);
    static uint8_t buf[64 * 1024];
    struct iovec iov = {buf, sizeof(buf)};

    cr_assert_eq(qed_pwrite_full(vfd, buf, sizeof(buf), 0), 0);
    qed_aio_test_loop_copy_max(tf.aio, true);
    run_io(QED_IO_READ, flags, &iov, 1, 0, sizeof(buf));
    cr_assert_eq(qed_aio_test_loop_copy_max(tf.aio, true), sizeof(buf));
    cr_assert_eq(qed_aio_test_loop_copy_max(tf.aio, false), 0, "the reset did not reset");
}
