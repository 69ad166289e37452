/*
 * test-cache-modes.c - the cache modes of qed_open_opts.cache.
 *
 * cache=none opens the image with O_DIRECT in a directory on /var/tmp (ext4
 * here; the test skips when the file system refuses O_DIRECT) and drives it
 * with the io_uring engine, the thread pool, and the test engine
 * completing the held I/O in a random order:
 *   - rounds of concurrent writes that cut a 20 KiB window into pieces at
 *     random byte offsets: pieces share 4 KiB blocks but no bytes, so every
 *     read-modify-write must keep its neighbours' bytes, and the content is
 *     known exactly (a model of the whole image);
 *   - rounds of overlapping unaligned writes one after another;
 *   - reads at unaligned offsets, lengths and buffer addresses, concurrent
 *     ones too, compared with the model;
 * then a buffered reopen reads everything back and qed_check is clean.
 * cache=unsafe: a FLUSH and a FUA write succeed, and a clean close leaves
 * the image clean with the data on disk.
 *
 * The seed is printed; set QED_TEST_SEED to repeat a run.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <ev.h>

#include "fixture.h"
#include "qed-image.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define IMG_SIZE (4 * MiB)
#define CS (64 * KiB)
#define WIN (20 * KiB)
#define PIECES 12
#define ROUNDS 24

static struct test_fixture tf;
static enum qed_aio_backend kind;
static uint8_t *model;
static unsigned seed;

/*
 * Hold the test engine's I/O (no-op with the real engines): requests
 * submitted from now on wait for wait_all, which completes their I/O in a
 * random order (a read-modify-write's read may then run before a
 * neighbour's write, the order the range lock must make harmless).
 */
static void hold(void)
{
    if (kind == QED_AIO_TEST)
        qed_aio_test_set_auto(tf.aio, false);
}

/* Run until @d[0..n) are done: the held I/O in a random order; auto mode again. */
static void wait_all(struct tf_done *d, size_t n)
{
    unsigned idle = 0;

    if (kind != QED_AIO_TEST) {
        tf_wait(&tf, d, n);
        return;
    }
    for (unsigned long t = 0; !tf_all_done(d, n); t++) {
        size_t held;

        cr_assert(t < TF_MAX_TURNS && !tf.timed_out, "seed %u: requests never completed", seed);
        ev_run(tf.loop, EVRUN_NOWAIT);
        held = qed_aio_test_pending(tf.aio);
        if (held == 0) {
            cr_assert(++idle < 1000, "seed %u: nothing held, requests incomplete", seed);
            continue;
        }
        idle = 0;
        cr_assert_eq(qed_aio_test_complete(tf.aio, (size_t)rand() % held, 0), 0);
    }
    qed_aio_test_set_auto(tf.aio, true);
}

/* The fixture with its directory on /var/tmp (O_DIRECT needs a real file system). */
static void setup_dir(enum qed_aio_backend k)
{
    int r;

    kind = k;
    tf_init(&tf, NULL);
    snprintf(tf.dir, sizeof(tf.dir), "/var/tmp/qed-test-cache-XXXXXX");
    cr_assert_not_null(mkdtemp(tf.dir), "mkdtemp: %s", strerror(errno));
    tf_cleanup_on_timeout(tf.dir, 0);
    r = tf_new_aio(&tf, kind);
    if (r < 0) {
        tf_teardown(&tf);
        cr_skip_test("the %s engine is not available here: %s",
                     k == QED_AIO_URING ? "io_uring" : "threads", strerror(-r));
    }
    tf_watchdog(&tf, 120, true);
    model = calloc(1, IMG_SIZE);
    cr_assert_not_null(model);
    seed = tf_seed("cache-modes");
    srand(seed);
}

static void fini(void)
{
    tf_teardown(&tf);
    free(model);
    model = NULL;
}

/* Open d.qed with cache=none; skip when O_DIRECT is refused. */
static qed_image *open_direct_existing(void)
{
    struct qed_open_opts o = {.cache = QED_CACHE_NONE};
    char err[512] = "";
    qed_image *img = NULL;
    int r = qed_open(tf.aio, tf_path(&tf, "d.qed"), &o, &img, err, sizeof(err));

    if (r == -EINVAL && strstr(err, "O_DIRECT"))
        cr_skip_test("O_DIRECT is refused in %s: %s", tf.dir, err);
    cr_assert_eq(r, 0, "qed_open cache=none: %s", err);
    return img;
}

/* A new image, opened with cache=none. */
static qed_image *open_direct(void)
{
    qed_image *img;

    tf_create(&tf, "d.qed", IMG_SIZE, CS, 4, NULL, QED_BACKING_PROBE);
    img = open_direct_existing();
    cr_assert(fcntl(img->fd, F_GETFL) & O_DIRECT, "the image is not open with O_DIRECT");
    cr_assert(img->fd_io_flags & QED_IO_F_DIRECT);
    cr_assert(!(img->fd_io_flags & QED_IO_F_MEMORY));
    return img;
}

/* Fill @p with bytes that name @tag (never all zeros). */
static void pattern(uint8_t *p, size_t n, unsigned tag)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(tag * 37 + i * 13 + 1) | 1;
}

/* Cut [base, base + WIN) at PIECES - 1 random byte offsets and write every
 * piece at once; the model takes them all (they share blocks, not bytes). */
static void round_disjoint(qed_image *img, uint64_t base, unsigned round)
{
    uint64_t cut[PIECES + 1];
    struct tf_done d[PIECES];
    uint8_t *buf[PIECES];

    cut[0] = 0;
    cut[PIECES] = WIN;
    for (int i = 1; i < PIECES; i++)
        cut[i] = (uint64_t)rand() % WIN;
    for (int i = 1; i < PIECES; i++) /* sort */
        for (int j = i; j > 1 && cut[j] < cut[j - 1]; j--) {
            uint64_t t = cut[j];
            cut[j] = cut[j - 1];
            cut[j - 1] = t;
        }
    memset(d, 0, sizeof(d));
    hold();
    for (int i = 0; i < PIECES; i++) {
        size_t n = cut[i + 1] - cut[i];
        /* +1: an unaligned buffer address as well */
        buf[i] = malloc(n + 1);
        pattern(buf[i] + 1, n, round * PIECES + (unsigned)i);
        memcpy(model + base + cut[i], buf[i] + 1, n);
        if (n == 0) {
            d[i].calls = 1;
            continue;
        }
        cr_assert_eq(TF_SUBMIT(qed_write(img, base + cut[i], buf[i] + 1, n, 0, tf_done_cb,
                                         &d[i])), 0);
    }
    wait_all(d, PIECES);
    for (int i = 0; i < PIECES; i++) {
        cr_assert_eq(d[i].ret, 0, "write %d of round %u: %s", i, round, strerror(-d[i].ret));
        free(buf[i]);
    }
}

/* Overlapping unaligned writes, one after another (the last one wins). */
static void round_overlap(qed_image *img, uint64_t base, unsigned round)
{
    for (int i = 0; i < 6; i++) {
        uint64_t off = base + (uint64_t)rand() % (WIN - 1);
        size_t n = 1 + (size_t)rand() % (size_t)(base + WIN - off);
        uint8_t *b = malloc(n + 3);

        pattern(b + 3, n, 1000 + round * 8 + (unsigned)i);
        memcpy(model + off, b + 3, n);
        cr_assert_eq(qed_sync_write(img, off, b + 3, n, (i & 1) ? QED_REQ_FUA : 0), 0);
        free(b);
    }
}

/* Concurrent reads at unaligned places, checked against the model. */
static void check_reads(qed_image *img, uint64_t base, unsigned count)
{
    struct tf_done d[8];
    uint8_t *buf[8];
    uint64_t off[8];
    size_t len[8];

    cr_assert(count <= 8);
    memset(d, 0, sizeof(d));
    hold();
    for (unsigned i = 0; i < count; i++) {
        off[i] = base + (uint64_t)rand() % (2 * WIN);
        len[i] = 1 + (size_t)rand() % (size_t)(3 * WIN);
        if (off[i] + len[i] > IMG_SIZE)
            len[i] = IMG_SIZE - off[i];
        buf[i] = malloc(len[i] + 7);
        cr_assert_eq(TF_SUBMIT(qed_read(img, off[i], buf[i] + 7, len[i], tf_done_cb, &d[i])), 0);
    }
    wait_all(d, count);
    for (unsigned i = 0; i < count; i++) {
        cr_assert_eq(d[i].ret, 0);
        cr_assert(memcmp(buf[i] + 7, model + off[i], len[i]) == 0,
                      "read of %zu bytes at %llu differs from the model (seed %u)", len[i],
                      (unsigned long long)off[i], seed);
        free(buf[i]);
    }
}

/* The whole image, read back through a buffered open, equals the model. */
static void check_on_disk(void)
{
    struct qed_check_result res = tf_disk_check(&tf, "d.qed");
    qed_image *img = tf_open(&tf, "d.qed", NULL);
    uint8_t *all = malloc(IMG_SIZE);

    cr_assert_eq(res.corruptions, 0);
    cr_assert_eq(res.leaks, 0);
    cr_assert_eq(qed_sync_read(img, 0, all, IMG_SIZE), 0);
    cr_assert(memcmp(all, model, IMG_SIZE) == 0, "the image on disk differs (seed %u)", seed);
    free(all);
    qed_close(img);
}

static void run_direct(void)
{
    qed_image *img = open_direct();
    /* Windows: the start of a cluster, across a cluster boundary, the end. */
    const uint64_t bases[] = {0, CS - 7 * KiB - 3, 2 * MiB + 4095, IMG_SIZE - WIN};

    for (unsigned r = 0; r < ROUNDS; r++) {
        uint64_t base = bases[r % 4];
        if (r % 3 == 2)
            round_overlap(img, base, r);
        else
            round_disjoint(img, base, r);
        check_reads(img, base > WIN ? base - WIN : 0, 8);
    }
    cr_assert_eq(qed_sync_flush(img), 0);
    cr_assert_eq(qed_close(img), 0);
    check_on_disk();
}

TestSuite(cache_none, .fini = fini, .timeout = 180);

Test(cache_none, uring_unaligned_and_overlapping)
{
    setup_dir(QED_AIO_URING);
    run_direct();
}

Test(cache_none, threads_unaligned_and_overlapping)
{
    setup_dir(QED_AIO_THREADS);
    run_direct();
}

Test(cache_none, test_engine_random_order)
{
    setup_dir(QED_AIO_TEST);
    run_direct();
}

/*
 * An overlay on a raw backing file whose size is not a multiple of 4 KiB,
 * all opened with O_DIRECT: reads across the backing file's end (an
 * O_DIRECT read is short there, and must not be retried at the unaligned
 * offset), and unaligned writes whose copy-on-write reads the backing file.
 */
static void run_backing(void)
{
    const uint64_t bsize = 3 * CS + 10001; /* the backing file's end, mid-block */
    uint8_t *all = malloc(IMG_SIZE + 1);
    qed_image *img;

    tf_raw_pattern(tf_path(&tf, "base.raw"), bsize);
    for (uint64_t i = 0; i < bsize; i++)
        model[i] = tf_raw_byte(i);
    tf_create(&tf, "d.qed", IMG_SIZE, CS, 4, "base.raw", QED_BACKING_RAW);
    img = open_direct_existing();
    cr_assert(fcntl(img->backing_fd, F_GETFL) & O_DIRECT, "the backing file is not O_DIRECT");
    cr_assert(img->backing_io_flags & QED_IO_F_DIRECT);
    /* Unaligned writes into clusters that copy the rest from the backing file. */
    for (unsigned i = 0; i < 8; i++) {
        uint64_t off = (uint64_t)rand() % (bsize + 2 * CS);
        size_t n = 1 + (size_t)rand() % 9000;
        uint8_t *b = malloc(n + 1);

        pattern(b + 1, n, 500 + i);
        memcpy(model + off, b + 1, n);
        cr_assert_eq(qed_sync_write(img, off, b + 1, n, 0), 0);
        free(b);
    }
    /* The whole image, into an unaligned buffer, and pieces across the end. */
    cr_assert_eq(qed_sync_read(img, 0, all + 1, IMG_SIZE), 0);
    cr_assert(memcmp(all + 1, model, IMG_SIZE) == 0, "read through O_DIRECT differs (seed %u)",
              seed);
    check_reads(img, bsize - WIN, 8);
    cr_assert_eq(qed_close(img), 0);
    free(all);
}

Test(cache_none, uring_raw_backing_unaligned_end)
{
    setup_dir(QED_AIO_URING);
    run_backing();
}

Test(cache_none, threads_raw_backing_unaligned_end)
{
    setup_dir(QED_AIO_THREADS);
    run_backing();
}

/* An image left NEED_CHECK is checked at a cache=none open: the check's
 * blocking table reads and writes and the header write go through O_DIRECT
 * (io-sync.c bounces the 64-byte header through a 4 KiB read-modify-write). */
Test(cache_none, need_check_open)
{
    uint8_t b[7000], feat[8];
    qed_image *img;
    int fd;

    setup_dir(QED_AIO_URING);
    tf_create(&tf, "d.qed", IMG_SIZE, CS, 4, NULL, QED_BACKING_PROBE);
    img = tf_open(&tf, "d.qed", NULL);
    pattern(b, sizeof(b), 77);
    memcpy(model + 3 * CS - 100, b, sizeof(b));
    cr_assert_eq(qed_sync_write(img, 3 * CS - 100, b, sizeof(b), 0), 0);
    cr_assert_eq(qed_close(img), 0);
    /* Set NEED_CHECK (features, byte 16) behind the library's back. */
    fd = open(tf_path(&tf, "d.qed"), O_RDWR);
    cr_assert(fd >= 0);
    cr_assert_eq(pread(fd, feat, 8, 16), 8);
    feat[0] |= 2;
    cr_assert_eq(pwrite(fd, feat, 8, 16), 8);
    close(fd);
    img = open_direct_existing();
    cr_assert(fcntl(img->fd, F_GETFL) & O_DIRECT);
    cr_assert_eq(qed_close(img), 0);
    fd = open(tf_path(&tf, "d.qed"), O_RDONLY);
    cr_assert_eq(pread(fd, feat, 8, 16), 8);
    close(fd);
    cr_assert_eq(feat[0] & 2, 0, "NEED_CHECK is still set after a clean close");
    check_on_disk();
}

/* An L2 table load under cache=none needs no bounce: the tables are
 * allocated aligned (l2-cache.c), so the loop copies nothing for it
 * (qed_aio_test_loop_copy_max; a bounced 256 KiB table would show 128 KiB;
 * only the zero fill of the read itself is allowed). */
Test(cache_none, table_load_does_not_bounce)
{
    uint8_t b[4096], *r = NULL;
    qed_image *img;

    setup_dir(QED_AIO_URING);
    tf_create(&tf, "d.qed", IMG_SIZE, CS, 4, NULL, QED_BACKING_PROBE);
    img = tf_open(&tf, "d.qed", NULL);
    pattern(b, sizeof(b), 5);
    cr_assert_eq(qed_sync_write(img, 0, b, sizeof(b), 0), 0); /* allocates the table */
    cr_assert_eq(qed_close(img), 0);
    img = open_direct_existing();
    cr_assert(posix_memalign((void **)&r, 4096, sizeof(b)) == 0);
    qed_aio_test_loop_copy_max(tf.aio, true);
    /* An unallocated cluster under that table: the table is loaded, no data read. */
    cr_assert_eq(qed_sync_read(img, CS, r, sizeof(b)), 0);
    /* The one loop copy allowed is the zero fill of the 4 KiB read itself;
     * a bounced table would show the whole table, or 128 KiB of it. */
    cr_assert_leq(qed_aio_test_loop_copy_max(tf.aio, false), sizeof(b),
                 "the table load was bounced (%llu bytes copied on the loop)",
                 (unsigned long long)qed_aio_test_loop_copy_max(tf.aio, false));
    qed_aio_test_loop_copy_max(tf.aio, true);
    cr_assert_eq(qed_sync_read(img, 0, r, sizeof(b)), 0);
    cr_assert(memcmp(r, b, sizeof(b)) == 0);
    cr_assert_eq(qed_aio_test_loop_copy_max(tf.aio, false), 0);
    free(r);
    cr_assert_eq(qed_close(img), 0);
}

TestSuite(cache_unsafe, .fini = fini, .timeout = 60);

Test(cache_unsafe, flush_acknowledged_and_clean_close)
{
    struct qed_open_opts o = {.cache = QED_CACHE_UNSAFE};
    uint8_t b[5000];
    qed_image *img;

    setup_dir(QED_AIO_THREADS);
    tf_create(&tf, "d.qed", IMG_SIZE, CS, 4, NULL, QED_BACKING_PROBE);
    img = tf_open(&tf, "d.qed", &o);
    cr_assert(img->fd_io_flags & QED_IO_F_NOSYNC);
    pattern(b, sizeof(b), 7);
    memcpy(model + 12345, b, sizeof(b));
    cr_assert_eq(qed_sync_write(img, 12345, b, sizeof(b), QED_REQ_FUA), 0);
    cr_assert_eq(qed_sync_flush(img), 0);
    cr_assert_eq(qed_close(img), 0);
    check_on_disk();
}
