/*
 * test-aio.c - unit tests of the I/O engine backends (io_uring, thread pool,
 * test backend) through the qed-io.h interface.
 *
 * Every test builds its own libev loop and engine, works on a temp file under
 * /tmp, and drives the loop with ev_run(loop, EVRUN_ONCE) until the expected
 * number of completions arrived.  A watchdog timer and an iteration bound make
 * a lost completion fail the test instead of hanging it.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <linux/magic.h>

#include <criterion/criterion.h>
#include <ev.h>

#include "fixture.h"
#include "qed-io.h"
#include "qed-io-test.h"

#define MAX_LOOP_TURNS 200000
#define WATCHDOG_SECONDS 30.0

/* ---- fixture ---- */

struct fixture {
    struct test_fixture tf;  /* loop, engine, watchdog (no directory: a temp file) */
    int fd;
    bool in_submit;          /* true while qed_aio_submit runs */
    unsigned completed;      /* done callbacks run so far */
};

static struct fixture F;

/* Memory mode: temp files on /dev/shm (tmpfs) and every I/O carries
 * QED_IO_F_MEMORY, so the io_uring and thread-pool backends run it on the
 * loop thread (qed_aio_run_memory).  Set by the *_mem suites. */
static bool mem_mode;

static int make_temp_file(void)
{
    char tpath[] = "/tmp/qed-test-aio-XXXXXX", mpath[] = "/dev/shm/qed-test-aio-XXXXXX";
    char *path = mem_mode ? mpath : tpath;
    struct statfs sfs;
    int fd;

    if (mem_mode && (statfs("/dev/shm", &sfs) < 0 || sfs.f_type != TMPFS_MAGIC))
        cr_skip_test("/dev/shm is not a tmpfs here");
    fd = mkstemp(path);

    cr_assert(fd >= 0, "mkstemp: %s", strerror(errno));
    /* Unlinked at once: nothing is left behind even if the test crashes. */
    unlink(path);
    return fd;
}

static void setup(enum qed_aio_backend kind, bool auto_mode)
{
    memset(&F, 0, sizeof(F));
    tf_setup(&F.tf, NULL, kind);
    if ((int)kind == QED_AIO_TEST && !auto_mode)
        qed_aio_test_set_auto(F.tf.aio, false);
    F.fd = make_temp_file();
    tf_watchdog(&F.tf, WATCHDOG_SECONDS, false);
}

static void teardown(void)
{
    if (F.tf.aio)
        cr_assert_eq(F.tf.aio->inflight, 0, "I/O still in flight at teardown");
    tf_teardown(&F.tf);
    close(F.fd);
    memset(&F, 0, sizeof(F));
}

/* ---- I/O helpers ---- */

struct tio {
    struct qed_io io;
    struct iovec iov[8];
    unsigned ndone;          /* times done ran for this I/O */
    unsigned order;          /* value of F.completed when done ran */
    void (*then)(struct tio *t);  /* optional, run from done */
};

static void tio_done(struct qed_io *io)
{
    struct tio *t = io->opaque;

    cr_assert(!F.in_submit, "done called from inside qed_aio_submit");
    cr_assert_eq(&t->io, io);
    t->ndone++;
    t->order = F.completed++;
    if (t->then)
        t->then(t);
}

static void tio_init(struct tio *t, enum qed_io_op op, int fd, uint64_t offset)
{
    memset(t, 0, sizeof(*t));
    t->io.op = op;
    t->io.fd = fd;
    t->io.offset = offset;
    t->io.iov = t->iov;
    t->io.done = tio_done;
    t->io.opaque = t;
    if (mem_mode)
        t->io.flags = QED_IO_F_MEMORY;
}

static void tio_add(struct tio *t, void *buf, size_t len)
{
    cr_assert(t->io.iovcnt < 8);
    t->iov[t->io.iovcnt].iov_base = buf;
    t->iov[t->io.iovcnt].iov_len = len;
    t->io.iovcnt++;
}

static void submit(struct qed_io *io)
{
    F.in_submit = true;
    qed_aio_submit(F.tf.aio, io);
    F.in_submit = false;
}

static void run_until(unsigned target)
{
    for (int i = 0; i < MAX_LOOP_TURNS && F.completed < target && !F.tf.timed_out; i++)
        ev_run(F.tf.loop, EVRUN_ONCE);
    cr_assert(!F.tf.timed_out, "timed out: %u of %u I/Os completed", F.completed, target);
    cr_assert_eq(F.completed, target, "%u of %u I/Os completed", F.completed, target);
}

/* Submit @t alone and wait for it; returns io.res. */
static int64_t run_one(struct tio *t)
{
    unsigned target = F.completed + 1;

    submit(&t->io);
    run_until(target);
    cr_assert_eq(t->ndone, 1);
    return t->io.res;
}

/* The byte the tests store at absolute file offset @x for pattern @seed. */
static uint8_t pat(uint64_t x, unsigned seed)
{
    return (uint8_t)(x * 31 + (x >> 9) + seed * 7 + 1);
}

static void fill_pat(uint8_t *buf, size_t len, uint64_t off, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = pat(off + i, seed);
}

static void check_pat(const uint8_t *buf, size_t len, uint64_t off, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        cr_assert_eq(buf[i], pat(off + i, seed), "byte at file offset %llu: %#x, expected %#x",
                     (unsigned long long)(off + i), buf[i], pat(off + i, seed));
}

static void check_zero(const uint8_t *buf, size_t len, uint64_t off)
{
    for (size_t i = 0; i < len; i++)
        cr_assert_eq(buf[i], 0, "byte at file offset %llu: %#x, expected 0",
                     (unsigned long long)(off + i), buf[i]);
}

/* Read the file directly, bypassing the engine. */
static void pread_all(int fd, void *buf, size_t len, uint64_t off)
{
    ssize_t n = pread(fd, buf, len, (off_t)off);

    cr_assert_eq(n, (ssize_t)len, "pread at %llu: %zd", (unsigned long long)off, n);
}

static void pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
    ssize_t n = pwrite(fd, buf, len, (off_t)off);

    cr_assert_eq(n, (ssize_t)len, "pwrite at %llu: %zd", (unsigned long long)off, n);
}

/* ---- tests common to every backend ---- */

static const char *expected_name(enum qed_aio_backend kind)
{
    switch ((int)kind) { /* QED_AIO_TEST is outside the public enum */
    case QED_AIO_URING:
        return "io_uring";
    case QED_AIO_THREADS:
        return "threads";
    case QED_AIO_TEST:
        return "test";
    default:
        return "?";
    }
}

static void t_name(enum qed_aio_backend kind)
{
    setup(kind, true);
    cr_assert_str_eq(qed_aio_backend_name(F.tf.aio), expected_name(kind));
    cr_assert_eq(qed_aio_loop(F.tf.aio), F.tf.loop);
    teardown();
}

/* Write with one split of iovecs, read back with another. */
static void t_write_read(enum qed_aio_backend kind)
{
    static const uint64_t offsets[] = { 0, 512, 4096 + 7, (1 << 20) + 3, 10u << 20 };
    static const size_t wsplit[] = { 100, 4000, 1, 1234, 3000 };
    static const size_t rsplit[] = { 1, 2345, 7, 5000, 982 };
    size_t total = 0;

    setup(kind, true);
    for (size_t i = 0; i < sizeof(wsplit) / sizeof(wsplit[0]); i++)
        total += wsplit[i];
    for (size_t k = 0; k < sizeof(offsets) / sizeof(offsets[0]); k++) {
        uint64_t off = offsets[k];
        uint8_t *wbuf = malloc(total), *rbuf = malloc(total), *disk = malloc(total);
        struct tio w, r;
        size_t pos;

        cr_assert(wbuf && rbuf && disk);
        fill_pat(wbuf, total, off, (unsigned)k);
        tio_init(&w, QED_IO_WRITE, F.fd, off);
        pos = 0;
        for (size_t i = 0; i < sizeof(wsplit) / sizeof(wsplit[0]); i++) {
            tio_add(&w, wbuf + pos, wsplit[i]);
            pos += wsplit[i];
        }
        cr_assert_eq(run_one(&w), (int64_t)total, "write res %lld", (long long)w.io.res);
        cr_assert_eq(w.io.length, total);

        pread_all(F.fd, disk, total, off);
        check_pat(disk, total, off, (unsigned)k);

        memset(rbuf, 0xAA, total);
        tio_init(&r, QED_IO_READ, F.fd, off);
        pos = 0;
        for (size_t i = 0; i < sizeof(rsplit) / sizeof(rsplit[0]); i++) {
            tio_add(&r, rbuf + pos, rsplit[i]);
            pos += rsplit[i];
        }
        cr_assert_eq(pos, total);
        cr_assert_eq(run_one(&r), (int64_t)total, "read res %lld", (long long)r.io.res);
        check_pat(rbuf, total, off, (unsigned)k);
        free(wbuf);
        free(rbuf);
        free(disk);
    }
    teardown();
}

/* A read that crosses EOF returns the data then zeros, with res = full length. */
static void t_read_past_eof(enum qed_aio_backend kind)
{
    const size_t fsize = 10000, len = 16384;
    const uint64_t off = 8192;
    uint8_t *data = malloc(fsize), *buf = malloc(len);
    struct tio r;

    cr_assert(data && buf);
    setup(kind, true);
    fill_pat(data, fsize, 0, 3);
    pwrite_all(F.fd, data, fsize, 0);

    memset(buf, 0xAA, len);
    tio_init(&r, QED_IO_READ, F.fd, off);
    tio_add(&r, buf, 1000);
    tio_add(&r, buf + 1000, len - 1000);
    cr_assert_eq(run_one(&r), (int64_t)len, "res %lld", (long long)r.io.res);
    check_pat(buf, fsize - off, off, 3);
    check_zero(buf + (fsize - off), len - (fsize - off), fsize);

    /* Entirely past EOF. */
    memset(buf, 0xAA, len);
    tio_init(&r, QED_IO_READ, F.fd, 1 << 20);
    tio_add(&r, buf, 333);
    tio_add(&r, buf + 333, len - 333);
    cr_assert_eq(run_one(&r), (int64_t)len);
    check_zero(buf, len, 1 << 20);

    free(data);
    free(buf);
    teardown();
}

static void t_fsync(enum qed_aio_backend kind)
{
    uint8_t buf[4096];
    struct tio w, s;

    setup(kind, true);
    fill_pat(buf, sizeof(buf), 0, 1);
    tio_init(&w, QED_IO_WRITE, F.fd, 0);
    tio_add(&w, buf, sizeof(buf));
    cr_assert_eq(run_one(&w), (int64_t)sizeof(buf));
    tio_init(&s, QED_IO_FSYNC, F.fd, 0);
    cr_assert_eq(run_one(&s), 0, "fsync res %lld", (long long)s.io.res);
    teardown();
}

/* Punch makes the range read as zeros, keeps the size, and leaves a real hole. */
static void t_punch(enum qed_aio_backend kind)
{
    const size_t fsize = 65536;
    uint8_t *data = malloc(fsize), *buf = malloc(fsize);
    struct tio p, r, z;
    struct stat st;
    off_t hole;

    cr_assert(data && buf);
    setup(kind, true);
    fill_pat(data, fsize, 0, 5);
    pwrite_all(F.fd, data, fsize, 0);
    cr_assert_eq(fsync(F.fd), 0);

    tio_init(&p, QED_IO_PUNCH, F.fd, 4096);
    p.io.length = 8192;
    cr_assert_eq(run_one(&p), 8192, "punch res %lld", (long long)p.io.res);

    memset(buf, 0xAA, fsize);
    tio_init(&r, QED_IO_READ, F.fd, 0);
    tio_add(&r, buf, fsize);
    cr_assert_eq(run_one(&r), (int64_t)fsize);
    check_pat(buf, 4096, 0, 5);
    check_zero(buf + 4096, 8192, 4096);
    check_pat(buf + 12288, fsize - 12288, 12288, 5);

    cr_assert_eq(fstat(F.fd, &st), 0);
    cr_assert_eq(st.st_size, (off_t)fsize, "KEEP_SIZE: size changed to %lld",
                 (long long)st.st_size);
    hole = lseek(F.fd, 0, SEEK_HOLE);
    cr_assert_eq(hole, 4096, "first hole at %lld, expected 4096", (long long)hole);

    /* An empty range succeeds and changes nothing. */
    tio_init(&z, QED_IO_PUNCH, F.fd, 0);
    z.io.length = 0;
    cr_assert_eq(run_one(&z), 0, "empty punch res %lld", (long long)z.io.res);
    pread_all(F.fd, buf, 4096, 0);
    check_pat(buf, 4096, 0, 5);

    free(data);
    free(buf);
    teardown();
}

/* Many I/Os in flight at once (more than the io_uring queue depth) all
 * complete exactly once, and the data is right. */
#define MANY 1000
#define MANY_LEN 4096

static void t_many(enum qed_aio_backend kind)
{
    struct tio *t = calloc(MANY, sizeof(*t));
    uint8_t *buf = malloc((size_t)MANY * MANY_LEN);
    uint8_t *seen = calloc(MANY, 1);

    cr_assert(t && buf && seen);
    setup(kind, true);
    for (unsigned i = 0; i < MANY; i++) {
        uint64_t off = (uint64_t)i * MANY_LEN;

        fill_pat(buf + off, MANY_LEN, off, i);
        tio_init(&t[i], QED_IO_WRITE, F.fd, off);
        tio_add(&t[i], buf + off, MANY_LEN);
        submit(&t[i].io);
    }
    cr_assert_eq(F.tf.aio->inflight, MANY);
    run_until(MANY);
    for (unsigned i = 0; i < MANY; i++) {
        cr_assert_eq(t[i].ndone, 1, "I/O %u completed %u times", i, t[i].ndone);
        cr_assert_eq(t[i].io.res, MANY_LEN, "I/O %u res %lld", i, (long long)t[i].io.res);
        cr_assert(!seen[t[i].order], "completion slot %u used twice", t[i].order);
        seen[t[i].order] = 1;
    }

    /* Read everything back concurrently. */
    memset(buf, 0xAA, (size_t)MANY * MANY_LEN);
    F.completed = 0;
    for (unsigned i = 0; i < MANY; i++) {
        uint64_t off = (uint64_t)i * MANY_LEN;

        tio_init(&t[i], QED_IO_READ, F.fd, off);
        tio_add(&t[i], buf + off, MANY_LEN / 2);
        tio_add(&t[i], buf + off + MANY_LEN / 2, MANY_LEN / 2);
        submit(&t[i].io);
    }
    run_until(MANY);
    for (unsigned i = 0; i < MANY; i++) {
        uint64_t off = (uint64_t)i * MANY_LEN;

        cr_assert_eq(t[i].ndone, 1);
        cr_assert_eq(t[i].io.res, MANY_LEN);
        check_pat(buf + off, MANY_LEN, off, i);
    }
    free(t);
    free(buf);
    free(seen);
    teardown();
}

/* Each completion submits the next I/O from its done callback: nothing may
 * sit unsubmitted while ev_run(EVRUN_ONCE) blocks. */
#define CHAIN 60

static struct tio chain_t[CHAIN];
static uint8_t chain_buf[CHAIN][512];
static unsigned chain_next;

static void chain_then(struct tio *t)
{
    (void)t;
    cr_assert_eq(t->io.res, 512);
    if (chain_next < CHAIN) {
        unsigned i = chain_next++;

        submit(&chain_t[i].io);
    }
}

static void t_chain(enum qed_aio_backend kind)
{
    setup(kind, true);
    chain_next = 0;
    for (unsigned i = 0; i < CHAIN; i++) {
        fill_pat(chain_buf[i], 512, (uint64_t)i * 512, 9);
        tio_init(&chain_t[i], QED_IO_WRITE, F.fd, (uint64_t)i * 512);
        tio_add(&chain_t[i], chain_buf[i], 512);
        chain_t[i].then = chain_then;
    }
    chain_next = 1;
    submit(&chain_t[0].io);
    run_until(CHAIN);
    for (unsigned i = 0; i < CHAIN; i++) {
        uint8_t disk[512];

        cr_assert_eq(chain_t[i].ndone, 1);
        cr_assert_eq(chain_t[i].order, i);
        pread_all(F.fd, disk, 512, (uint64_t)i * 512);
        check_pat(disk, 512, (uint64_t)i * 512, 9);
    }
    teardown();
}

/* Errors come back in res: every op on a bad descriptor gives -EBADF. */
static void t_bad_fd(enum qed_aio_backend kind)
{
    uint8_t buf[4096];
    struct tio t[4];

    setup(kind, true);
    tio_init(&t[0], QED_IO_READ, -1, 0);
    tio_add(&t[0], buf, sizeof(buf));
    tio_init(&t[1], QED_IO_WRITE, -1, 0);
    tio_add(&t[1], buf, sizeof(buf));
    tio_init(&t[2], QED_IO_FSYNC, -1, 0);
    tio_init(&t[3], QED_IO_PUNCH, -1, 0);
    t[3].io.length = 4096;
    memset(buf, 0, sizeof(buf));
    for (int i = 0; i < 4; i++)
        submit(&t[i].io);
    run_until(4);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(t[i].ndone, 1);
        cr_assert_eq(t[i].io.res, -EBADF, "op %d: res %lld", (int)t[i].io.op,
                     (long long)t[i].io.res);
    }
    teardown();
}

/* A write cut short by RLIMIT_FSIZE is continued, and the continuation's
 * error (EFBIG) is what gets reported, not a short success. */
static void t_short_write(enum qed_aio_backend kind)
{
    const size_t len = 8192, limit = 6000;
    uint8_t *data = malloc(len), *disk = malloc(len);
    struct rlimit rl = { .rlim_cur = limit, .rlim_max = RLIM_INFINITY };
    struct tio w;
    struct stat st;

    cr_assert(data && disk);
    setup(kind, true);
    /* Each test runs in its own process, so these do not leak into others. */
    signal(SIGXFSZ, SIG_IGN);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);

    fill_pat(data, len, 0, 11);
    tio_init(&w, QED_IO_WRITE, F.fd, 0);
    tio_add(&w, data, 1000);
    tio_add(&w, data + 1000, len - 1000);
    cr_assert_eq(run_one(&w), -EFBIG, "res %lld", (long long)w.io.res);
    cr_assert_eq(fstat(F.fd, &st), 0);
    cr_assert_eq(st.st_size, (off_t)limit, "size %lld", (long long)st.st_size);
    pread_all(F.fd, disk, limit, 0);
    check_pat(disk, limit, 0, 11);

    free(data);
    free(disk);
    teardown();
}

/* More iovecs than IOV_MAX in one request. */
static void t_many_iovecs(enum qed_aio_backend kind)
{
    const int cnt = 2 * IOV_MAX + 5;
    const size_t piece = 16, len = (size_t)cnt * piece;
    struct iovec *iov = calloc((size_t)cnt, sizeof(*iov));
    uint8_t *data = malloc(len), *buf = malloc(len);
    struct tio w, r;

    cr_assert(iov && data && buf);
    setup(kind, true);
    fill_pat(data, len, 100, 13);
    tio_init(&w, QED_IO_WRITE, F.fd, 100);
    for (int i = 0; i < cnt; i++) {
        iov[i].iov_base = data + (size_t)i * piece;
        iov[i].iov_len = piece;
    }
    w.io.iov = iov;
    w.io.iovcnt = cnt;
    cr_assert_eq(run_one(&w), (int64_t)len, "write res %lld", (long long)w.io.res);

    memset(buf, 0xAA, len);
    tio_init(&r, QED_IO_READ, F.fd, 100);
    for (int i = 0; i < cnt; i++) {
        iov[i].iov_base = buf + (size_t)i * piece;
        iov[i].iov_len = piece;
    }
    r.io.iov = iov;
    r.io.iovcnt = cnt;
    cr_assert_eq(run_one(&r), (int64_t)len, "read res %lld", (long long)r.io.res);
    check_pat(buf, len, 100, 13);
    free(iov);
    free(data);
    free(buf);
    teardown();
}

/* Empty reads and writes succeed with res 0. */
static void t_zero_length(enum qed_aio_backend kind)
{
    struct tio r, w;

    setup(kind, true);
    tio_init(&r, QED_IO_READ, F.fd, 0);
    cr_assert_eq(run_one(&r), 0, "read res %lld", (long long)r.io.res);
    tio_init(&w, QED_IO_WRITE, F.fd, 4096);
    cr_assert_eq(run_one(&w), 0, "write res %lld", (long long)w.io.res);
    teardown();
}

/* The done callback of the last I/O may free the engine (nothing is in
 * flight any more); the backend must not touch it afterwards. */
static void free_then(struct tio *t)
{
    (void)t;
    if (F.completed == 3) {
        cr_assert_eq(F.tf.aio->inflight, 0);
        qed_aio_free(F.tf.aio);
        F.tf.aio = NULL;
    }
}

static void t_free_from_done(enum qed_aio_backend kind)
{
    struct tio t[3];

    setup(kind, true);
    for (int i = 0; i < 3; i++) {
        tio_init(&t[i], QED_IO_FSYNC, F.fd, 0);
        t[i].then = free_then;
        submit(&t[i].io);
    }
    run_until(3);
    cr_assert_null(F.tf.aio);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(t[i].ndone, 1);
    /* The loop keeps running without the engine's watchers. */
    ev_run(F.tf.loop, EVRUN_NOWAIT);
    teardown();
}

/* An I/O submitted by another prepare watcher that runs after the engine's
 * own (same lowest priority, started earlier, so invoked later) must still
 * reach the kernel before the loop blocks. */
static struct tio late_t;
static bool late_armed;

static void late_prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    if (late_armed) {
        late_armed = false;
        submit(&late_t.io);
    }
}

static void t_submit_from_prepare(enum qed_aio_backend kind)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    ev_prepare prep;
    uint8_t buf[512];

    cr_assert_not_null(loop);
    ev_prepare_init(&prep, late_prepare_cb);
    ev_set_priority(&prep, EV_MINPRI);
    ev_prepare_start(loop, &prep);
    ev_unref(loop);

    /* setup() with this loop */
    memset(&F, 0, sizeof(F));
    F.tf.loop = loop;
    cr_assert_eq(tf_new_aio(&F.tf, kind), 0);
    F.fd = make_temp_file();
    tf_watchdog(&F.tf, WATCHDOG_SECONDS, false);

    fill_pat(buf, sizeof(buf), 0, 1);
    tio_init(&late_t, QED_IO_WRITE, F.fd, 0);
    tio_add(&late_t, buf, sizeof(buf));
    late_armed = true;
    run_until(1);
    cr_assert_eq(late_t.io.res, 512);

    ev_ref(loop);
    ev_prepare_stop(loop, &prep);
    teardown();
}

/*
 * A memory-file write has reached the file when qed_aio_submit returns (it
 * ran on the loop thread), but its done runs only on a later loop turn; and
 * with QED_AIO_MEMORY=0 the flag is ignored (the data may not be there yet,
 * which cannot be asserted, but the result must be the same).
 */
static void t_mem_inline(enum qed_aio_backend kind)
{
    uint8_t buf[4096], back[4096];
    struct tio t;

    mem_mode = true;
    unsetenv("QED_AIO_MEMORY"); /* on, whatever the caller's environment says */
    setup(kind, true);
    fill_pat(buf, sizeof(buf), 0, 7);
    tio_init(&t, QED_IO_WRITE, F.fd, 8192);
    tio_add(&t, buf, sizeof(buf));
    F.in_submit = true;
    qed_aio_submit(F.tf.aio, &t.io);
    F.in_submit = false;
    cr_assert_eq(t.ndone, 0, "done ran before the loop turned");
    cr_assert_eq(pread(F.fd, back, sizeof(back), 8192), (ssize_t)sizeof(back),
                 "the memory write was not done inline");
    cr_assert_eq(memcmp(back, buf, sizeof(buf)), 0);
    run_until(1);
    cr_assert_eq(t.ndone, 1);
    cr_assert_eq(t.io.res, (int64_t)sizeof(buf));
    teardown();
}

/*
 * io_uring only: an I/O that goes to the ring is not in the file when
 * qed_aio_submit returns (submission waits for the loop's prepare watcher),
 * which tells, deterministically, that a memory-file I/O was NOT run
 * inline.  RWF_NOWAIT is off so that it cannot run inline either way.
 */
static void uring_mem_setup(const char *memory_env)
{
    mem_mode = true;
    setenv("QED_AIO_NOWAIT", "0", 1);
    if (memory_env)
        setenv("QED_AIO_MEMORY", memory_env, 1);
    else
        unsetenv("QED_AIO_MEMORY");
    setup(QED_AIO_URING, false);
}

/* Submit a write of @len pattern bytes at @off; true when it is in the file
 * before the loop turned.  Completes it before returning. */
static bool write_was_inline(size_t len, uint64_t off)
{
    uint8_t *buf = malloc(len), *back = calloc(1, len);
    struct tio t;
    ssize_t n;
    bool in;

    cr_assert(buf && back);
    fill_pat(buf, len, off, 3);
    tio_init(&t, QED_IO_WRITE, F.fd, off);
    tio_add(&t, buf, len);
    submit(&t.io);
    n = pread(F.fd, back, len, (off_t)off);
    in = n == (ssize_t)len && memcmp(back, buf, len) == 0;
    run_until(F.completed + 1);
    cr_assert_eq(t.io.res, (int64_t)len);
    cr_assert_eq(pread(F.fd, back, len, (off_t)off), (ssize_t)len);
    check_pat(back, len, off, 3);
    free(buf);
    free(back);
    return in;
}

Test(uring_mem, small_write_inline_large_not, .timeout = 60)
{
    uring_mem_setup(NULL);
    cr_assert(write_was_inline(128 * 1024, 0), "a 128 KiB memory write did not run inline");
    cr_assert(!write_was_inline(128 * 1024 + 512, 1 << 20),
              "a write over 128 KiB ran on the loop thread");
    teardown();
}

Test(uring_mem, memory_env_0_turns_it_off, .timeout = 60)
{
    uring_mem_setup("0");
    cr_assert(!write_was_inline(4096, 0), "QED_AIO_MEMORY=0 still ran the write inline");
    teardown();
}

Test(uring_mem, large_punch_not_inline, .timeout = 60)
{
    const size_t len = 256 * 1024;
    uint8_t *buf = malloc(len), *back = malloc(len);
    struct tio t;

    cr_assert(buf && back);
    uring_mem_setup(NULL);
    fill_pat(buf, len, 0, 5);
    cr_assert_eq(pwrite(F.fd, buf, len, 0), (ssize_t)len);
    tio_init(&t, QED_IO_PUNCH, F.fd, 0);
    t.io.length = len;
    submit(&t.io);
    cr_assert_eq(pread(F.fd, back, len, 0), (ssize_t)len);
    check_pat(back, len, 0, 5); /* still there: the punch went to the ring */
    run_until(1);
    cr_assert_eq(t.io.res, (int64_t)len);
    cr_assert_eq(pread(F.fd, back, len, 0), (ssize_t)len);
    check_zero(back, len, 0);
    free(buf);
    free(back);
    teardown();
}

/*
 * The engine must not keep ev_run(loop, 0) from returning once idle, also
 * when the last I/O to complete was a memory one, submitted from the done
 * callback of a backend I/O (the backend's watcher must let go of the loop).
 * Without that this test hangs and Criterion's timeout fails it.
 */
static struct tio memlast_second;
static uint8_t memlast_buf[4096];

static void memlast_submit_memory(struct tio *t)
{
    (void)t;
    tio_init(&memlast_second, QED_IO_WRITE, F.fd, 0);
    tio_add(&memlast_second, memlast_buf, sizeof(memlast_buf));
    qed_aio_submit(F.tf.aio, &memlast_second.io);
}

static void t_idle_after_memory_last(enum qed_aio_backend kind)
{
    static uint8_t big[256 * 1024];
    struct tio first;

    mem_mode = true;
    unsetenv("QED_AIO_MEMORY");
    setup(kind, false);
    ev_timer_stop(F.tf.loop, &F.tf.watchdog); /* it would keep the loop alive */
    fill_pat(big, sizeof(big), 0, 2);
    fill_pat(memlast_buf, sizeof(memlast_buf), 0, 9);
    tio_init(&first, QED_IO_WRITE, F.fd, 0);
    tio_add(&first, big, sizeof(big)); /* over 128 KiB: to the backend */
    first.then = memlast_submit_memory;
    submit(&first.io);
    ev_run(F.tf.loop, 0);
    cr_assert_eq(first.ndone, 1);
    cr_assert_eq(memlast_second.ndone, 1);
    cr_assert_eq(memlast_second.io.res, (int64_t)sizeof(memlast_buf));
    cr_assert_eq(F.tf.aio->inflight, 0);
    teardown();
}

Test(uring_mem, loop_returns_when_memory_io_is_last, .timeout = 30)
{
    t_idle_after_memory_last(QED_AIO_URING);
}

Test(threads_mem, loop_returns_when_memory_io_is_last, .timeout = 30)
{
    t_idle_after_memory_last(QED_AIO_THREADS);
}

/* The backend contract, for @kind; @mem: on /dev/shm with QED_IO_F_MEMORY. */
#define BACKEND_TESTS(suite, kind, mem)                                                   \
    Test(suite, name, .timeout = 60) { mem_mode = mem; t_name(kind); }                   \
    Test(suite, write_read, .timeout = 60) { mem_mode = mem; t_write_read(kind); }       \
    Test(suite, read_past_eof, .timeout = 60) { mem_mode = mem; t_read_past_eof(kind); } \
    Test(suite, fsync, .timeout = 60) { mem_mode = mem; t_fsync(kind); }                 \
    Test(suite, punch, .timeout = 60) { mem_mode = mem; t_punch(kind); }                 \
    Test(suite, many_concurrent, .timeout = 120) { mem_mode = mem; t_many(kind); }       \
    Test(suite, chain_from_done, .timeout = 60) { mem_mode = mem; t_chain(kind); }       \
    Test(suite, bad_fd, .timeout = 60) { mem_mode = mem; t_bad_fd(kind); }               \
    Test(suite, short_write, .timeout = 60) { mem_mode = mem; t_short_write(kind); }     \
    Test(suite, many_iovecs, .timeout = 60) { mem_mode = mem; t_many_iovecs(kind); }     \
    Test(suite, zero_length, .timeout = 60) { mem_mode = mem; t_zero_length(kind); }     \
    Test(suite, free_from_done, .timeout = 60) { mem_mode = mem; t_free_from_done(kind); } \
    Test(suite, submit_from_prepare, .timeout = 60) { mem_mode = mem; t_submit_from_prepare(kind); }

BACKEND_TESTS(uring, QED_AIO_URING, false)
BACKEND_TESTS(threads, QED_AIO_THREADS, false)
BACKEND_TESTS(testbe, QED_AIO_TEST, false)
BACKEND_TESTS(uring_mem, QED_AIO_URING, true)
BACKEND_TESTS(threads_mem, QED_AIO_THREADS, true)
Test(uring_mem, done_on_loop_not_in_submit, .timeout = 60) { t_mem_inline(QED_AIO_URING); }
Test(threads_mem, done_on_loop_not_in_submit, .timeout = 60) { t_mem_inline(QED_AIO_THREADS); }

/* ---- memory files ---- */

Test(memfs, dev_shm_is_memory)
{
    int fd;

    mem_mode = true;
    fd = make_temp_file();
    cr_assert(qed_fd_in_memory(fd), "a file in /dev/shm is not seen as in memory");
    close(fd);
}

Test(memfs, proc_is_not_memory)
{
    int fd = open("/proc/self/stat", O_RDONLY);

    cr_assert(fd >= 0);
    cr_assert(!qed_fd_in_memory(fd), "a /proc file is seen as in memory");
    close(fd);
    cr_assert(!qed_fd_in_memory(-1), "a bad fd is seen as in memory");
}

/* ---- backend selection ---- */

Test(select, auto_is_io_uring_here)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    qed_aio *aio = NULL;

    cr_assert_not_null(loop);
    cr_assert_eq(qed_aio_new(loop, QED_AIO_AUTO, &aio), 0);
    cr_assert_str_eq(qed_aio_backend_name(aio), "io_uring");
    qed_aio_free(aio);
    ev_loop_destroy(loop);
}

Test(select, bad_kind)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    qed_aio *aio = NULL;

    cr_assert_not_null(loop);
    cr_assert_eq(qed_aio_new(loop, (enum qed_aio_backend)99, &aio), -EINVAL);
    cr_assert_null(aio);
    ev_loop_destroy(loop);
}

#if defined(__x86_64__)
#define TEST_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define TEST_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

/* With io_uring_setup refused by a seccomp filter (as in many containers),
 * QED_AIO_URING fails cleanly and QED_AIO_AUTO falls back to threads. */
Test(select, fallback_when_io_uring_blocked, .timeout = 60)
{
#ifdef TEST_AUDIT_ARCH
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TEST_AUDIT_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { .len = sizeof(filter) / sizeof(filter[0]), .filter = filter };
    qed_aio *aio = NULL;
    uint8_t wbuf[4096], rbuf[4096];
    struct tio w, r;
    struct ev_loop *loop;

    /* The filter binds this test's process only (Criterion forks per test). */
    cr_assert_eq(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0, "%s", strerror(errno));
    cr_assert_eq(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog), 0, "%s", strerror(errno));

    loop = ev_loop_new(EVFLAG_AUTO);
    cr_assert_not_null(loop);
    cr_assert_eq(qed_aio_new(loop, QED_AIO_URING, &aio), -EPERM);
    cr_assert_null(aio);
    ev_loop_destroy(loop);

    setup(QED_AIO_AUTO, false);
    cr_assert_str_eq(qed_aio_backend_name(F.tf.aio), "threads");
    fill_pat(wbuf, sizeof(wbuf), 0, 2);
    tio_init(&w, QED_IO_WRITE, F.fd, 0);
    tio_add(&w, wbuf, sizeof(wbuf));
    cr_assert_eq(run_one(&w), (int64_t)sizeof(wbuf));
    memset(rbuf, 0xAA, sizeof(rbuf));
    tio_init(&r, QED_IO_READ, F.fd, 0);
    tio_add(&r, rbuf, sizeof(rbuf));
    cr_assert_eq(run_one(&r), (int64_t)sizeof(rbuf));
    check_pat(rbuf, sizeof(rbuf), 0, 2);
    teardown();
#else
    cr_skip_test("no seccomp architecture constant for this CPU");
#endif
}

/* ---- test backend specifics ---- */

/* Turn the loop a few times without blocking; held I/Os must stay held. */
static void spin_nowait(int turns)
{
    for (int i = 0; i < turns; i++)
        ev_run(F.tf.loop, EVRUN_NOWAIT);
}

#define NREV 8

Test(testbe_ctl, reverse_order_peek_pending)
{
    struct tio t[NREV];
    uint8_t buf[NREV][1024];

    setup(QED_AIO_TEST, false);
    for (int i = 0; i < NREV; i++) {
        fill_pat(buf[i], sizeof(buf[i]), (uint64_t)i * 1024, 4);
        tio_init(&t[i], QED_IO_WRITE, F.fd, (uint64_t)i * 1024);
        tio_add(&t[i], buf[i], sizeof(buf[i]));
        submit(&t[i].io);
    }
    spin_nowait(5);
    cr_assert_eq(F.completed, 0, "manual mode completed I/O on its own");
    cr_assert_eq(qed_aio_test_pending(F.tf.aio), NREV);
    for (int i = 0; i < NREV; i++)
        cr_assert_eq(qed_aio_test_peek(F.tf.aio, (size_t)i), &t[i].io, "peek(%d)", i);
    cr_assert_null(qed_aio_test_peek(F.tf.aio, NREV));

    for (int k = NREV - 1; k >= 0; k--) {
        struct stat st;

        cr_assert_eq(qed_aio_test_complete(F.tf.aio, (size_t)k, 0), 0);
        /* done ran before qed_aio_test_complete returned */
        cr_assert_eq(t[k].ndone, 1);
        cr_assert_eq(t[k].io.res, 1024);
        cr_assert_eq(qed_aio_test_pending(F.tf.aio), (size_t)k);
        /* The newest I/O was written first, so the file already has its end. */
        cr_assert_eq(fstat(F.fd, &st), 0);
        cr_assert_eq(st.st_size, NREV * 1024);
    }
    for (int i = 0; i < NREV; i++) {
        uint8_t disk[1024];

        cr_assert_eq(t[i].order, (unsigned)(NREV - 1 - i), "I/O %d completed as %u", i,
                     t[i].order);
        pread_all(F.fd, disk, sizeof(disk), (uint64_t)i * 1024);
        check_pat(disk, sizeof(disk), (uint64_t)i * 1024, 4);
    }
    cr_assert_eq(qed_aio_test_complete(F.tf.aio, 0, 0), -ENOENT);
    cr_assert_eq(qed_aio_test_count(F.tf.aio, QED_IO_WRITE), NREV);
    teardown();
}

Test(testbe_ctl, complete_middle_keeps_order)
{
    struct tio t[3];
    uint8_t buf[3][16];

    setup(QED_AIO_TEST, false);
    for (int i = 0; i < 3; i++) {
        tio_init(&t[i], QED_IO_READ, F.fd, 0);
        tio_add(&t[i], buf[i], sizeof(buf[i]));
        submit(&t[i].io);
    }
    cr_assert_eq(qed_aio_test_complete(F.tf.aio, 1, 0), 0);
    cr_assert_eq(t[1].ndone, 1);
    cr_assert_eq(qed_aio_test_pending(F.tf.aio), 2);
    cr_assert_eq(qed_aio_test_peek(F.tf.aio, 0), &t[0].io);
    cr_assert_eq(qed_aio_test_peek(F.tf.aio, 1), &t[2].io);
    cr_assert_eq(qed_aio_test_complete(F.tf.aio, 2, 0), -ENOENT);
    cr_assert_eq(qed_aio_test_complete(F.tf.aio, 1, 0), 0);
    cr_assert_eq(qed_aio_test_complete(F.tf.aio, 0, 0), 0);
    cr_assert_eq(t[0].order, 2);
    cr_assert_eq(t[2].order, 1);
    teardown();
}

Test(testbe_ctl, manual_error_writes_nothing)
{
    uint8_t buf[4096];
    struct tio w;
    struct stat st;

    setup(QED_AIO_TEST, false);
    fill_pat(buf, sizeof(buf), 0, 6);
    tio_init(&w, QED_IO_WRITE, F.fd, 0);
    tio_add(&w, buf, sizeof(buf));
    submit(&w.io);
    cr_assert_eq(qed_aio_test_complete(F.tf.aio, 0, -ENOSPC), 0);
    cr_assert_eq(w.ndone, 1);
    cr_assert_eq(w.io.res, -ENOSPC);
    cr_assert_eq(fstat(F.fd, &st), 0);
    cr_assert_eq(st.st_size, 0, "a failed write changed the file");
    cr_assert_eq(qed_aio_test_count(F.tf.aio, QED_IO_WRITE), 1);
    teardown();
}

Test(testbe_ctl, set_auto_completes_held_oldest_first)
{
    struct tio t[4];

    setup(QED_AIO_TEST, false);
    for (int i = 0; i < 4; i++) {
        tio_init(&t[i], QED_IO_FSYNC, F.fd, 0);
        submit(&t[i].io);
    }
    spin_nowait(3);
    cr_assert_eq(F.completed, 0);
    qed_aio_test_set_auto(F.tf.aio, true);
    run_until(4);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(t[i].order, (unsigned)i);
        cr_assert_eq(t[i].io.res, 0);
    }
    /* Back to manual: new I/Os are held again. */
    qed_aio_test_set_auto(F.tf.aio, false);
    tio_init(&t[0], QED_IO_FSYNC, F.fd, 0);
    submit(&t[0].io);
    spin_nowait(3);
    cr_assert_eq(t[0].ndone, 0);
    cr_assert_eq(qed_aio_test_complete(F.tf.aio, 0, 0), 0);
    cr_assert_eq(t[0].ndone, 1);
    teardown();
}

/* In auto mode an I/O submitted by a done callback completes on a later
 * loop turn, not within the same one. */
static struct tio next_turn_t[2];

static void next_turn_then(struct tio *t)
{
    (void)t;
    submit(&next_turn_t[1].io);
}

Test(testbe_ctl, auto_new_io_waits_for_next_turn)
{
    setup(QED_AIO_TEST, true);
    tio_init(&next_turn_t[0], QED_IO_FSYNC, F.fd, 0);
    next_turn_t[0].then = next_turn_then;
    tio_init(&next_turn_t[1], QED_IO_FSYNC, F.fd, 0);
    submit(&next_turn_t[0].io);
    for (int i = 0; i < 100 && F.completed == 0; i++)
        ev_run(F.tf.loop, EVRUN_ONCE);
    cr_assert_eq(F.completed, 1);
    cr_assert_eq(qed_aio_test_pending(F.tf.aio), 1);
    cr_assert_eq(next_turn_t[1].ndone, 0);
    run_until(2);
    cr_assert_eq(next_turn_t[1].ndone, 1);
    teardown();
}

Test(testbe_ctl, fail_nth_hits_exactly_one)
{
    enum { N = 9 };
    static const enum qed_io_op ops[N] = {
        QED_IO_WRITE, QED_IO_WRITE,                    /* before the rule */
        QED_IO_READ, QED_IO_WRITE, QED_IO_FSYNC, QED_IO_WRITE,
        QED_IO_WRITE,                                  /* 3rd write after the rule: fails */
        QED_IO_WRITE, QED_IO_PUNCH,
    };
    struct tio t[N];
    uint8_t buf[N][512];
    struct stat st;

    setup(QED_AIO_TEST, true);
    for (int i = 0; i < N; i++) {
        uint64_t off = (uint64_t)i * 512;

        fill_pat(buf[i], sizeof(buf[i]), off, 8);
        tio_init(&t[i], ops[i], F.fd, off);
        if (ops[i] == QED_IO_READ || ops[i] == QED_IO_WRITE)
            tio_add(&t[i], buf[i], sizeof(buf[i]));
        if (ops[i] == QED_IO_PUNCH) {
            t[i].io.offset = 64 * 1024;
            t[i].io.length = 4096;
        }
        if (i == 2) {
            /* Writes already submitted do not count. */
            qed_aio_test_fail_nth(F.tf.aio, 1u << QED_IO_WRITE, 2, -EIO);
        }
        submit(&t[i].io);
    }
    run_until(N);
    for (int i = 0; i < N; i++) {
        int64_t want = i == 6 ? -EIO
                     : ops[i] == QED_IO_FSYNC ? 0
                     : ops[i] == QED_IO_PUNCH ? 4096 : 512;

        cr_assert_eq(t[i].ndone, 1);
        cr_assert_eq(t[i].io.res, want, "I/O %d: res %lld, expected %lld", i,
                     (long long)t[i].io.res, (long long)want);
    }
    /* The failed write wrote nothing; the one after it did. */
    {
        uint8_t disk[512];

        cr_assert_eq(fstat(F.fd, &st), 0);
        cr_assert_eq(st.st_size, 8 * 512);
        pread_all(F.fd, disk, 512, 6 * 512);
        check_zero(disk, 512, 6 * 512);
        pread_all(F.fd, disk, 512, 7 * 512);
        check_pat(disk, 512, 7 * 512, 8);
    }
    cr_assert_eq(qed_aio_test_count(F.tf.aio, QED_IO_WRITE), 6);
    cr_assert_eq(qed_aio_test_count(F.tf.aio, QED_IO_READ), 1);
    cr_assert_eq(qed_aio_test_count(F.tf.aio, QED_IO_FSYNC), 1);
    cr_assert_eq(qed_aio_test_count(F.tf.aio, QED_IO_PUNCH), 1);
    teardown();
}

Test(testbe_ctl, fail_nth_mask_and_clear)
{
    struct tio t[6];
    uint8_t buf[16];

    setup(QED_AIO_TEST, true);
    /* Rule on READ|FSYNC, index 1: the fsync (second matching op) fails. */
    qed_aio_test_fail_nth(F.tf.aio, (1u << QED_IO_READ) | (1u << QED_IO_FSYNC), 1, -ENOSPC);
    tio_init(&t[0], QED_IO_READ, F.fd, 0);
    tio_add(&t[0], buf, sizeof(buf));
    tio_init(&t[1], QED_IO_WRITE, F.fd, 0);
    tio_add(&t[1], buf, sizeof(buf));
    tio_init(&t[2], QED_IO_FSYNC, F.fd, 0);
    tio_init(&t[3], QED_IO_READ, F.fd, 0);
    tio_add(&t[3], buf, sizeof(buf));
    for (int i = 0; i < 4; i++)
        submit(&t[i].io);
    run_until(4);
    cr_assert_eq(t[0].io.res, 16);
    cr_assert_eq(t[1].io.res, 16);
    cr_assert_eq(t[2].io.res, -ENOSPC);
    cr_assert_eq(t[3].io.res, 16, "the rule fires only once");

    /* A cleared rule fails nothing. */
    qed_aio_test_fail_nth(F.tf.aio, 1u << QED_IO_FSYNC, 0, -EIO);
    qed_aio_test_fail_nth(F.tf.aio, 1u << QED_IO_FSYNC, 0, 0);
    tio_init(&t[4], QED_IO_FSYNC, F.fd, 0);
    submit(&t[4].io);
    run_until(5);
    cr_assert_eq(t[4].io.res, 0);

    /* Manual mode: the marked I/O fails even when completed with err 0. */
    qed_aio_test_set_auto(F.tf.aio, false);
    qed_aio_test_fail_nth(F.tf.aio, 1u << QED_IO_FSYNC, 0, -EROFS);
    tio_init(&t[5], QED_IO_FSYNC, F.fd, 0);
    submit(&t[5].io);
    cr_assert_eq(qed_aio_test_complete(F.tf.aio, 0, 0), 0);
    cr_assert_eq(t[5].io.res, -EROFS);
    teardown();
}

struct obs_rec {
    struct qed_io *io;
    int err;
    unsigned completed_before;   /* done callbacks already run */
    bool data_on_disk;           /* for writes: were the bytes already there? */
};

static struct obs_rec obs[16];
static unsigned nobs;

static void observer(struct qed_io *io, int err, void *opaque)
{
    cr_assert_eq(opaque, &nobs);
    cr_assert(nobs < 16);
    obs[nobs].io = io;
    obs[nobs].err = err;
    obs[nobs].completed_before = F.completed;
    if (io->op == QED_IO_WRITE) {
        uint8_t b = 0;

        obs[nobs].data_on_disk = pread(io->fd, &b, 1, (off_t)io->offset) == 1 && b != 0;
    }
    nobs++;
}

Test(testbe_ctl, observer_sees_every_io)
{
    struct tio t[5];
    uint8_t buf[5][256];

    setup(QED_AIO_TEST, true);
    nobs = 0;
    qed_aio_test_set_observer(F.tf.aio, observer, &nobs);
    qed_aio_test_fail_nth(F.tf.aio, 1u << QED_IO_WRITE, 1, -EIO);
    for (int i = 0; i < 5; i++) {
        uint64_t off = (uint64_t)i * 256;

        fill_pat(buf[i], sizeof(buf[i]), off, 0);
        buf[i][0] = 0x5A;   /* nonzero first byte: observer checks it */
        tio_init(&t[i], i == 2 ? QED_IO_FSYNC : QED_IO_WRITE, F.fd, off);
        if (i != 2)
            tio_add(&t[i], buf[i], sizeof(buf[i]));
        submit(&t[i].io);
    }
    run_until(5);
    cr_assert_eq(nobs, 5);
    for (unsigned k = 0; k < 5; k++) {
        cr_assert_eq(obs[k].io, &t[k].io, "observer call %u for the wrong I/O", k);
        cr_assert_eq(obs[k].completed_before, k, "observer must run before done");
        cr_assert_eq(obs[k].err, k == 1 ? -EIO : 0, "observer %u err %d", k, obs[k].err);
        if (t[k].io.op == QED_IO_WRITE)
            cr_assert(!obs[k].data_on_disk, "observer ran after the write %u", k);
    }
    cr_assert_eq(t[1].io.res, -EIO);

    /* Removing the observer stops the calls. */
    qed_aio_test_set_observer(F.tf.aio, NULL, NULL);
    tio_init(&t[0], QED_IO_FSYNC, F.fd, 0);
    submit(&t[0].io);
    run_until(6);
    cr_assert_eq(nobs, 5);
    teardown();
}

Test(testbe_ctl, counts_by_op)
{
    struct tio t[7];
    uint8_t buf[64];

    setup(QED_AIO_TEST, false);
    for (int op = QED_IO_READ; op <= QED_IO_PUNCH; op++)
        cr_assert_eq(qed_aio_test_count(F.tf.aio, (enum qed_io_op)op), 0);
    memset(buf, 1, sizeof(buf));
    tio_init(&t[0], QED_IO_WRITE, F.fd, 0);
    tio_add(&t[0], buf, sizeof(buf));
    tio_init(&t[1], QED_IO_WRITE, F.fd, 64);
    tio_add(&t[1], buf, sizeof(buf));
    for (int i = 2; i < 5; i++) {
        tio_init(&t[i], QED_IO_READ, F.fd, 0);
        tio_add(&t[i], buf, sizeof(buf));
    }
    tio_init(&t[5], QED_IO_FSYNC, F.fd, 0);
    tio_init(&t[6], QED_IO_PUNCH, F.fd, 0);
    t[6].io.length = 4096;
    for (int i = 0; i < 7; i++)
        submit(&t[i].io);
    /* Held I/Os are not counted yet. */
    cr_assert_eq(qed_aio_test_count(F.tf.aio, QED_IO_WRITE), 0);
    cr_assert_eq(qed_aio_test_complete(F.tf.aio, 1, -EIO), 0);   /* failed ones count */
    qed_aio_test_set_auto(F.tf.aio, true);
    run_until(7);
    cr_assert_eq(qed_aio_test_count(F.tf.aio, QED_IO_WRITE), 2);
    cr_assert_eq(qed_aio_test_count(F.tf.aio, QED_IO_READ), 3);
    cr_assert_eq(qed_aio_test_count(F.tf.aio, QED_IO_FSYNC), 1);
    cr_assert_eq(qed_aio_test_count(F.tf.aio, QED_IO_PUNCH), 1);
    teardown();
}
