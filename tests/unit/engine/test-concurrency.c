/*
 * test-concurrency.c - 64 overlapping random requests in flight at once.
 *
 * Each round submits 64 requests together (writes, some with FUA, write
 * zeroes, some cluster-aligned, some NO_HOLE, discards, reads and flushes)
 * on a small image with 4 KiB clusters and table size 1, concentrated in two
 * hot windows (one of them across the boundary between two L2 tables) so
 * that they collide.  The requests then run to completion with the io_uring
 * engine, the thread pool, or the test engine completing the held I/Os in a
 * seeded random order.
 *
 * The model of allowed outcomes works per 512-byte sector.  Every write has
 * its own random pattern.  Since all requests of a round are concurrent,
 * any order among them is allowed, so after the round a sector must hold:
 *   - the data of one of the writes that covered it, or zeros if a
 *     write-zeroes covered it, or zeros if a discard covered its whole
 *     cluster (a punched cluster reads as zeros);
 *   - its previous content, only when no write or write-zeroes covered it.
 * A read may return, per sector (per byte with the real engines, where a
 * concurrent buffered write may be copied in while the read copies out),
 * the previous content or any of the values above.  Every request must
 * succeed, and qed_check must find no corruption and no leak after each
 * round, on the live image and on disk after the last round.
 *
 * The seed is printed; set QED_TEST_SEED to repeat a run.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
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
#define NREQ 64
#define ROUNDS 8
#define CS 4096ull
#define SECTOR 512ull
#define IMG_SIZE (2 * MiB + 256 * KiB)
#define WINDOW (256 * KiB) /* each hot window */
#define MAX_TURNS 5000000

struct fixture {
    struct test_fixture tf;   /* loop, directory, watchdog; the engine comes from use_engine() */
    enum qed_aio_backend kind;
};

static struct fixture F;

static void setup(void)
{
    memset(&F, 0, sizeof(F));
    tf_init(&F.tf, "conc");
    tf_watchdog(&F.tf, 50., true);
}

static void teardown(void)
{
    tf_teardown(&F.tf);
}

TestSuite(concurrency, .init = setup, .fini = teardown, .timeout = 60);

/* An engine of @kind; false (and the test is skipped) when it cannot run here. */
static bool use_engine(enum qed_aio_backend kind)
{
    int r = tf_new_aio(&F.tf, kind);

    F.kind = kind;
    if (r < 0 && kind == QED_AIO_URING) {
        cr_skip_test("io_uring cannot be set up here (%s): skipping the io_uring run",
                     strerror(-r));
        return false;
    }
    cr_assert_eq(r, 0, "qed_aio_new(%d): %s", (int)kind, strerror(-r));
    cr_log_info("engine: %s", qed_aio_backend_name(F.tf.aio));
    return true;
}

static bool is_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

/* ---- the requests of a round ---- */

enum kind { K_WRITE, K_WZERO, K_DISCARD, K_READ, K_FLUSH };

static const char *kind_names[] = {"write", "write-zeroes", "discard", "read", "flush"};

struct creq {
    enum kind k;
    uint64_t off, len;
    unsigned flags;
    uint8_t *buf;
    struct tf_done d;
};

struct round {
    struct creq r[NREQ];
    uint8_t *prev;   /* image contents before the round */
    unsigned seed;
};

static bool covers(const struct creq *q, uint64_t pos)
{
    return pos >= q->off && pos < q->off + q->len;
}

/* Does discard @q cover the whole cluster holding @pos? */
static bool punches(const struct creq *q, uint64_t pos)
{
    uint64_t c = pos & ~(CS - 1);
    return q->k == K_DISCARD && c >= q->off && c + CS <= q->off + q->len;
}

/* A random offset in one of the two hot windows, aligned to @align. */
static uint64_t hot_offset(unsigned *rs, uint64_t align)
{
    uint64_t w = (uint64_t)rand_r(rs) % (2 * WINDOW);
    uint64_t base = w < WINDOW ? 0 : 2 * MiB - WINDOW / 2 - WINDOW;
    uint64_t off = (base + w) & ~(align - 1);
    return off;
}

static void make_round(struct round *R, unsigned seed)
{
    unsigned rs = seed;

    R->seed = seed;
    for (int i = 0; i < NREQ; i++) {
        struct creq *q = &R->r[i];
        unsigned pick = (unsigned)rand_r(&rs) % 100;
        uint64_t align = SECTOR;

        memset(q, 0, sizeof(*q));
        q->k = pick < 40 ? K_WRITE : pick < 55 ? K_WZERO : pick < 65 ? K_DISCARD
               : pick < 90 ? K_READ : K_FLUSH;
        if (q->k == K_FLUSH)
            continue;
        if ((q->k == K_WZERO || q->k == K_DISCARD) && rand_r(&rs) % 2)
            align = CS; /* whole clusters: zero entries, punches */
        q->off = hot_offset(&rs, align);
        q->len = align * (1 + (uint64_t)rand_r(&rs) % (align == CS ? 8 : 64));
        if (q->off + q->len > IMG_SIZE)
            q->len = IMG_SIZE - q->off;
        if (q->k == K_WRITE) {
            q->buf = malloc(q->len);
            tf_fill(q->buf, q->len, seed * 131u + (unsigned)i);
            if (rand_r(&rs) % 8 == 0)
                q->flags = QED_REQ_FUA;
        } else if (q->k == K_WZERO) {
            unsigned f = (unsigned)rand_r(&rs) % 8;
            q->flags = f == 0 ? QED_REQ_NO_HOLE : f == 1 ? QED_REQ_FUA : 0;
        } else if (q->k == K_READ) {
            q->buf = malloc(q->len);
            memset(q->buf, 0xE7, q->len);
        }
    }
}

static void free_round(struct round *R)
{
    for (int i = 0; i < NREQ; i++)
        free(R->r[i].buf);
}

static void submit_round(qed_image *img, struct round *R)
{
    for (int i = 0; i < NREQ; i++) {
        struct creq *q = &R->r[i];
        int rc = 0;
        switch (q->k) {
        case K_WRITE:
            rc = TF_SUBMIT(qed_write(img, q->off, q->buf, q->len, q->flags, tf_done_cb, &q->d));
            break;
        case K_WZERO:
            rc = TF_SUBMIT(qed_write_zeroes(img, q->off, q->len, q->flags, tf_done_cb, &q->d));
            break;
        case K_DISCARD:
            rc = TF_SUBMIT(qed_discard(img, q->off, q->len, 0, tf_done_cb, &q->d));
            break;
        case K_READ:
            rc = TF_SUBMIT(qed_read(img, q->off, q->buf, q->len, tf_done_cb, &q->d));
            break;
        case K_FLUSH:
            rc = TF_SUBMIT(qed_flush(img, tf_done_cb, &q->d));
            break;
        }
        cr_assert_eq(rc, 0, "seed %u: submitting %s %d at %" PRIu64 "+%" PRIu64 ": %s", R->seed,
                     kind_names[q->k], i, q->off, q->len, strerror(-rc));
    }
}

static bool round_done(const struct round *R)
{
    for (int i = 0; i < NREQ; i++)
        if (!R->r[i].d.calls)
            return false;
    return true;
}

static void run_round(struct round *R, unsigned *order_rs)
{
    unsigned idle = 0;

    for (unsigned t = 0; !round_done(R); t++) {
        cr_assert(t < MAX_TURNS && !F.tf.timed_out, "seed %u: requests never completed", R->seed);
        if (F.kind == QED_AIO_TEST) {
            size_t n;
            ev_run(F.tf.loop, EVRUN_NOWAIT);
            n = qed_aio_test_pending(F.tf.aio);
            if (n == 0) {
                cr_assert(++idle < 1000, "seed %u: nothing held, requests incomplete", R->seed);
                continue;
            }
            idle = 0;
            cr_assert_eq(qed_aio_test_complete(F.tf.aio, (size_t)rand_r(order_rs) % n, 0), 0);
        } else {
            ev_run(F.tf.loop, EVRUN_ONCE);
        }
    }
    ev_run(F.tf.loop, EVRUN_NOWAIT);
    for (int i = 0; i < NREQ; i++)
        cr_assert_eq(R->r[i].d.ret, 0, "seed %u: %s %d at %" PRIu64 "+%" PRIu64 " failed: %s",
                     R->seed, kind_names[R->r[i].k], i, R->r[i].off, R->r[i].len,
                     strerror(-R->r[i].d.ret));
}

/* May the final sector at @pos hold @got? */
static bool final_sector_ok(const struct round *R, uint64_t pos, const uint8_t *got)
{
    bool written = false;

    for (int i = 0; i < NREQ; i++) {
        const struct creq *q = &R->r[i];
        if (q->k == K_WRITE && covers(q, pos)) {
            written = true;
            if (memcmp(got, q->buf + (pos - q->off), SECTOR) == 0)
                return true;
        } else if (q->k == K_WZERO && covers(q, pos)) {
            written = true;
            if (is_zero(got, SECTOR))
                return true;
        } else if (punches(q, pos) && is_zero(got, SECTOR)) {
            return true;
        }
    }
    return !written && memcmp(got, R->prev + pos, SECTOR) == 0;
}

/* May a read have returned @got (@n bytes) for the bytes at @pos? */
static bool read_bytes_ok(const struct round *R, uint64_t pos, const uint8_t *got, size_t n)
{
    for (size_t b = 0; b < n; b++) {
        uint64_t p = pos + b;
        bool ok = got[b] == R->prev[p];
        for (int i = 0; i < NREQ && !ok; i++) {
            const struct creq *q = &R->r[i];
            if (q->k == K_WRITE && covers(q, p))
                ok = got[b] == q->buf[p - q->off];
            else if ((q->k == K_WZERO && covers(q, p)) || punches(q, p))
                ok = got[b] == 0;
        }
        if (!ok)
            return false;
    }
    return true;
}

static bool read_sector_ok(const struct round *R, uint64_t pos, const uint8_t *got)
{
    if (memcmp(got, R->prev + pos, SECTOR) == 0)
        return true;
    for (int i = 0; i < NREQ; i++) {
        const struct creq *q = &R->r[i];
        if (q->k == K_WRITE && covers(q, pos) && memcmp(got, q->buf + (pos - q->off), SECTOR) == 0)
            return true;
        if (((q->k == K_WZERO && covers(q, pos)) || punches(q, pos)) && is_zero(got, SECTOR))
            return true;
    }
    return false;
}

static void check_reads(const struct round *R)
{
    for (int i = 0; i < NREQ; i++) {
        const struct creq *q = &R->r[i];
        if (q->k != K_READ)
            continue;
        for (uint64_t s = 0; s < q->len; s += SECTOR) {
            const uint8_t *got = q->buf + s;
            /* Real engines do buffered I/O: a read copying a page out while a
             * write copies it in may see a mix inside one sector, so only the
             * test engine, whose I/Os are atomic, is held to whole sectors. */
            bool ok = F.kind == QED_AIO_TEST ? read_sector_ok(R, q->off + s, got)
                                             : read_bytes_ok(R, q->off + s, got, SECTOR);
            cr_assert(ok, "seed %u: read %d at %" PRIu64 "+%" PRIu64 ": sector at %" PRIu64
                      " holds a value no request could have produced", R->seed, i, q->off, q->len,
                      q->off + s);
        }
    }
}

static void read_all(qed_image *img, uint8_t *buf)
{
    struct tf_done d = {0};
    cr_assert_eq(TF_SUBMIT(qed_read(img, 0, buf, IMG_SIZE, tf_done_cb, &d)), 0);
    for (unsigned t = 0; !d.calls; t++) {
        cr_assert(t < MAX_TURNS && !F.tf.timed_out);
        if (F.kind == QED_AIO_TEST) {
            ev_run(F.tf.loop, EVRUN_NOWAIT);
            if (!d.calls && qed_aio_test_pending(F.tf.aio))
                qed_aio_test_complete(F.tf.aio, 0, 0);
        } else {
            ev_run(F.tf.loop, EVRUN_ONCE);
        }
    }
    cr_assert_eq(d.ret, 0, "reading the image: %s", strerror(-d.ret));
}

static void check_clean(const struct qed_check_result *res, unsigned seed, const char *what)
{
    cr_assert(res->corruptions == 0 && res->check_errors == 0,
              "seed %u: %s: %" PRIu64 " corruptions, %" PRIu64 " check errors", seed, what,
              res->corruptions, res->check_errors);
    cr_assert_eq(res->leaks, 0, "seed %u: %s: %" PRIu64 " leaked clusters", seed, what,
                 res->leaks);
}

/*
 * Run ROUNDS rounds of 64 concurrent requests on a fresh image (@backing:
 * 0 none, 1 raw, 2 qed) with the engine @kind.
 */
static void run_test_opts(enum qed_aio_backend kind, int backing, const char *name,
                          unsigned clean_ms, unsigned l2_cache)
{
    struct qed_open_opts oo = {.clean_delay_ms = clean_ms, .l2_cache_tables = l2_cache};
    struct qed_create_opts co = {.size = IMG_SIZE, .cluster_size = CS, .table_size = 1};
    uint8_t *cur = calloc(1, IMG_SIZE), *got = malloc(IMG_SIZE);
    char err[512] = "";
    qed_image *img = NULL;
    unsigned base = tf_seed(name), order_rs = base ^ 0x5bd1e995u;
    struct qed_check_result res;
    int r;

    if (!use_engine(kind))
        return;
    if (kind == QED_AIO_TEST)
        qed_aio_test_set_auto(F.tf.aio, false);
    if (backing == 1) {
        /* raw backing, shorter than the image so that some clusters have none */
        int fd = open(tf_path(&F.tf, "b.raw"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        uint64_t blen = IMG_SIZE - 100 * KiB - 300;
        cr_assert(fd >= 0);
        tf_fill(cur, blen, base ^ 77);
        cr_assert_eq(pwrite(fd, cur, blen, 0), (ssize_t)blen);
        close(fd);
        co.backing_file = tf_path(&F.tf, "b.raw");
        co.backing_fmt = QED_BACKING_RAW;
    } else if (backing == 2) {
        /* qed backing written through the library with the sync wrapper */
        struct qed_create_opts bo = {.size = IMG_SIZE, .cluster_size = CS, .table_size = 2};
        qed_image *b = NULL;
        bool was_test = kind == QED_AIO_TEST;
        cr_assert_eq(qed_create(tf_path(&F.tf, "b.qed"), &bo, err, sizeof(err)), 0, "%s", err);
        cr_assert_eq(qed_open(F.tf.aio, tf_path(&F.tf, "b.qed"), NULL, &b, err, sizeof(err)), 0,
                     "%s", err);
        if (was_test)
            qed_aio_test_set_auto(F.tf.aio, true);
        for (uint64_t off = 0; off < IMG_SIZE; off += 3 * CS) {
            tf_fill(cur + off, CS, base ^ (unsigned)off);
            cr_assert_eq(qed_sync_write(b, off, cur + off, CS, 0), 0);
        }
        cr_assert_eq(qed_close(b), 0);
        if (was_test)
            qed_aio_test_set_auto(F.tf.aio, false);
        co.backing_file = tf_path(&F.tf, "b.qed");
        co.backing_fmt = QED_BACKING_QED;
    }
    r = qed_create(tf_path(&F.tf, "a.qed"), &co, err, sizeof(err));
    cr_assert_eq(r, 0, "qed_create: %s", err);
    r = qed_open(F.tf.aio, tf_path(&F.tf, "a.qed"), &oo, &img, err, sizeof(err));
    cr_assert_eq(r, 0, "qed_open: %s", err);

    for (unsigned round = 0; round < ROUNDS; round++) {
        struct round *R = calloc(1, sizeof(*R));
        make_round(R, base + round * 7919u);
        R->prev = cur;
        submit_round(img, R);
        run_round(R, &order_rs);
        check_reads(R);
        read_all(img, got);
        for (uint64_t pos = 0; pos < IMG_SIZE; pos += SECTOR)
            cr_assert(final_sector_ok(R, pos, got + pos),
                      "seed %u (%s, round %u): sector at %" PRIu64
                      " holds a value no order of the requests allows",
                      R->seed, name, round, pos);
        /* The internal NEED_CHECK clean may be running: qed_check needs
         * the image idle, so let it finish. */
        for (unsigned t = 0; qed_inflight(img) > 0; t++) {
            cr_assert(t < MAX_TURNS && !F.tf.timed_out, "seed %u: the image never went idle",
                      R->seed);
            if (F.kind == QED_AIO_TEST) {
                ev_run(F.tf.loop, EVRUN_NOWAIT);
                if (qed_aio_test_pending(F.tf.aio))
                    qed_aio_test_complete(F.tf.aio, 0, 0);
            } else {
                ev_run(F.tf.loop, EVRUN_ONCE);
            }
        }
        if (clean_ms) {
            /* Idle now: NEED_CHECK must get cleared, on disk too. */
            struct qed_info info;
            for (unsigned t = 0;; t++) {
                qed_get_info(img, &info);
                if (!info.dirty && qed_inflight(img) == 0)
                    break;
                cr_assert(t < MAX_TURNS && !F.tf.timed_out, "seed %u: NEED_CHECK never cleared",
                          R->seed);
                if (F.kind == QED_AIO_TEST) {
                    ev_run(F.tf.loop, EVRUN_NOWAIT);
                    if (qed_aio_test_pending(F.tf.aio))
                        qed_aio_test_complete(F.tf.aio, 0, 0);
                } else {
                    ev_run(F.tf.loop, EVRUN_ONCE);
                }
            }
            uint8_t h[64];
            int fd = open(tf_path(&F.tf, "a.qed"), O_RDONLY);
            cr_assert(fd >= 0 && pread(fd, h, sizeof(h), 0) == (ssize_t)sizeof(h));
            close(fd);
            cr_assert_eq(h[16] & QED_F_NEED_CHECK, 0, "seed %u: NEED_CHECK still set on disk",
                         R->seed);
        }
        res = (struct qed_check_result){0};
        r = qed_check(img, false, &res);
        cr_assert_eq(r, 0, "seed %u: qed_check: %s", R->seed, strerror(-r));
        check_clean(&res, R->seed, "live check");
        memcpy(cur, got, IMG_SIZE);
        free_round(R);
        free(R);
    }
    /* qed_close runs the loop until its flush completes: let the engine run. */
    if (kind == QED_AIO_TEST)
        qed_aio_test_set_auto(F.tf.aio, true);
    cr_assert_eq(qed_close(img), 0);

    /* on disk: clean, and the same contents after reopening */
    {
        struct qed_open_opts ro = {.read_only = true, .no_lock = true};
        cr_assert_eq(qed_open(NULL, tf_path(&F.tf, "a.qed"), &ro, &img, err, sizeof(err)), 0, "%s",
                     err);
        cr_assert_eq(qed_check(img, false, &res), 0);
        check_clean(&res, base, "on-disk check");
        qed_close(img);
    }
    cr_assert_eq(qed_open(F.tf.aio, tf_path(&F.tf, "a.qed"), NULL, &img, err, sizeof(err)), 0, "%s",
                 err);
    read_all(img, got);
    cr_assert(memcmp(got, cur, IMG_SIZE) == 0, "seed %u: contents changed across reopen", base);
    cr_assert_eq(qed_close(img), 0);
    free(cur);
    free(got);
}

static void run_test(enum qed_aio_backend kind, int backing, const char *name, unsigned clean_ms)
{
    run_test_opts(kind, backing, name, clean_ms, 0);
}

Test(concurrency, io_uring_no_backing)
{
    run_test(QED_AIO_URING, 0, "io_uring, no backing", 0);
}

Test(concurrency, io_uring_raw_backing)
{
    run_test(QED_AIO_URING, 1, "io_uring, raw backing", 0);
}

Test(concurrency, threads_raw_backing)
{
    run_test(QED_AIO_THREADS, 1, "threads, raw backing", 0);
}

Test(concurrency, test_engine_random_order_no_backing)
{
    run_test(QED_AIO_TEST, 0, "test engine random order, no backing", 0);
}

Test(concurrency, test_engine_random_order_raw_backing)
{
    run_test(QED_AIO_TEST, 1, "test engine random order, raw backing", 0);
}

Test(concurrency, test_engine_random_order_qed_backing)
{
    run_test(QED_AIO_TEST, 2, "test engine random order, qed backing", 0);
}

/*
 * NEED_CHECK cleared after 1 ms of allocation idleness: the clean request
 * (flush, header write) interleaves with the rounds, and the next
 * allocation must set the flag again.
 */
Test(concurrency, io_uring_fast_clean)
{
    run_test(QED_AIO_URING, 0, "io_uring, 1 ms clean delay", 1);
}

Test(concurrency, test_engine_random_order_fast_clean)
{
    run_test(QED_AIO_TEST, 0, "test engine random order, 1 ms clean delay", 1);
}

/* A one-table L2 cache: every request pair on two tables forces evictions. */
Test(concurrency, test_engine_random_order_tiny_l2_cache)
{
    run_test_opts(QED_AIO_TEST, 1, "test engine random order, 1-table L2 cache", 0, 1);
}

Test(concurrency, io_uring_tiny_l2_cache)
{
    run_test_opts(QED_AIO_URING, 0, "io_uring, 1-table L2 cache", 0, 1);
}
