/*
 * test-reserve.c - reserving sparse new clusters (the "Reserving" comment
 * in lib/engine/request-alloc.c, qed_open_opts.reserve).
 *
 * Images with 64 KiB clusters: a write of 4 KiB into a fresh cluster of an
 * existing table is sparse (only its data is written).  A warm-up write of
 * a whole cluster creates the table first.
 *
 *   - with reserve on, a sparse write fallocates (KEEP_SIZE) 4 MiB from its
 *     cluster on, before its data write, and the file's blocks cover that
 *     afterwards, on the test backend and on the real ones; the next sparse
 *     writes, whose clusters lie inside, reserve nothing more;
 *   - a write of whole clusters, and any write with reserve off, does not;
 *   - auto follows the file system of the image (ext4/XFS: on);
 *   - an injected ENOSPC on the reservation ahead makes the run reserve
 *     only its own cluster, and the write succeeds;
 *   - an injected ENOSPC on that one too fails the write with ENOSPC
 *     before any data reaches the file: no L2 entry, the range reads as
 *     zeros, the live and the on-disk check find neither corruption nor
 *     leak, the file size is unchanged, and the retried write takes the
 *     same cluster again and succeeds;
 *   - an injected EOPNOTSUPP turns reserving off for the open image, and
 *     the write succeeds.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <linux/magic.h>

#include <criterion/criterion.h>
#include <ev.h>

#include "fixture.h"
#include "qed-io-test.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define CS (64 * KiB)
#define IMG_SIZE (64 * MiB)
#define AHEAD (4 * MiB) /* RESERVE_AHEAD in request-alloc.c */

struct alloc_rec {
    uint64_t off, len;
    unsigned flags;
    unsigned seq_pos;            /* position among the I/Os seen */
};

struct fixture {
    struct test_fixture tf;
    qed_image *img;
    const char *name;            /* the image's file name in the directory */
    unsigned seen;               /* I/Os performed (or failed) */
    unsigned nalloc;
    struct alloc_rec alloc[16];
    unsigned data_writes;        /* writes outside the first 4 clusters' metadata */
    unsigned first_data_pos;     /* position of the first data write after reset */
    bool fail_retry;             /* when a reservation fails, fail the next one too */
};

static struct fixture F;

static void observer(struct qed_io *io, int err, void *opaque)
{
    (void)opaque;
    if (io->op == QED_IO_ALLOCATE && F.nalloc < 16)
        F.alloc[F.nalloc++] = (struct alloc_rec){io->offset, io->length, io->flags, F.seen};
    if (io->op == QED_IO_ALLOCATE && err == -ENOSPC && F.fail_retry) {
        /* Armed before done runs, so the retry it submits fails too. */
        F.fail_retry = false;
        qed_aio_test_fail_nth(F.tf.aio, 1u << QED_IO_ALLOCATE, 0, -ENOSPC);
    }
    /* A write of at most 4 KiB at a cluster-aligned offset + 8 KiB is the
     * data of the sparse writes below (metadata lies at other offsets). */
    if (io->op == QED_IO_WRITE && io->offset % CS == 8 * KiB) {
        if (!F.data_writes)
            F.first_data_pos = F.seen;
        F.data_writes++;
    }
    F.seen++;
}

static void reset_counts(void)
{
    F.seen = F.nalloc = F.data_writes = F.first_data_pos = 0;
}

static void setup_kind(enum qed_aio_backend kind)
{
    memset(&F, 0, sizeof(F));
    tf_setup(&F.tf, "reserve", kind);
    qed_set_log(tf_quiet_log, NULL, QED_LOG_ERROR);
}

static void setup(void)
{
    setup_kind(QED_AIO_TEST);
}

static void setup_real(void)
{
    setup_kind(QED_AIO_AUTO);
}

static void setup_threads(void)
{
    setup_kind(QED_AIO_THREADS);
}

static void teardown(void)
{
    tf_close_left_open(&F.tf, &F.img);
    tf_teardown(&F.tf);
}

TestSuite(reserve, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(reserve_real, .init = setup_real, .fini = teardown, .timeout = 60);
TestSuite(reserve_threads, .init = setup_threads, .fini = teardown, .timeout = 60);

/* Create image @name, open it with @mode and write cluster 0 whole (the table). */
static void make_image(const char *name, enum qed_reserve mode)
{
    struct qed_open_opts oo = {.reserve = mode};
    uint8_t *buf = malloc(CS);

    cr_assert_not_null(buf);
    F.name = name;
    tf_create(&F.tf, F.name, IMG_SIZE, CS, 1, NULL, QED_BACKING_RAW);
    F.img = tf_open(&F.tf, F.name, &oo);
    if (strcmp(qed_aio_backend_name(F.tf.aio), "test") == 0)
        qed_aio_test_set_observer(F.tf.aio, observer, NULL);
    memset(buf, 0x5a, CS);
    cr_assert_eq(qed_sync_write(F.img, 0, buf, CS, 0), 0);
    free(buf);
    reset_counts();
}

static struct stat file_stat(void)
{
    struct stat st;

    cr_assert_eq(stat(tf_path(&F.tf, F.name), &st), 0);
    return st;
}

/* Host offset of the guest cluster at @off, or 0 when it has no L2 entry. */
static uint64_t host_of(uint64_t off)
{
    struct qed_extent e;
    size_t n = 0;

    cr_assert_eq(qed_sync_block_status(F.img, off, CS, &e, 1, &n), 0);
    cr_assert_eq(n, 1);
    return e.present && e.data && e.has_offset ? e.offset : 0;
}

/* Write 4 KiB of @fill at 8 KiB into the guest cluster @c. */
static int sparse_write(unsigned c, uint8_t fill)
{
    uint8_t b[4096];

    memset(b, fill, sizeof(b));
    return qed_sync_write(F.img, (uint64_t)c * CS + 8 * KiB, b, sizeof(b), 0);
}

/* Guest cluster @c reads as @fill at [8K, 12K) and zeros elsewhere. */
static void expect_cluster(unsigned c, uint8_t fill)
{
    uint8_t *b = malloc(CS);

    cr_assert_not_null(b);
    cr_assert_eq(qed_sync_read(F.img, (uint64_t)c * CS, b, CS), 0);
    for (uint64_t i = 0; i < CS; i++) {
        uint8_t want = i >= 8 * KiB && i < 12 * KiB ? fill : 0;
        cr_assert_eq(b[i], want, "cluster %u byte %" PRIu64 ": %u, expected %u", c, i, b[i], want);
    }
    free(b);
}

static void expect_clean(void)
{
    struct qed_check_result res = {0};

    cr_assert_eq(qed_check(F.img, false, &res), 0);
    cr_assert(res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0,
              "live check: %" PRIu64 " corruptions, %" PRIu64 " leaks", res.corruptions, res.leaks);
}

static void close_and_check(void)
{
    struct qed_check_result res;

    if (strcmp(qed_aio_backend_name(F.tf.aio), "test") == 0)
        qed_aio_test_set_observer(F.tf.aio, NULL, NULL);
    cr_assert_eq(qed_close(F.img), 0);
    F.img = NULL;
    res = tf_disk_check(&F.tf, F.name);
    cr_assert(res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0,
              "disk check: %" PRIu64 " corruptions, %" PRIu64 " leaks", res.corruptions, res.leaks);
}

/* ---- the tests ---- */

Test(reserve, sparse_write_reserves_its_cluster_first)
{
    make_image("a.qed", QED_RESERVE_ON);
    struct stat before = file_stat();
    cr_assert_eq(sparse_write(3, 0xa1), 0);
    uint64_t host = host_of(3 * CS);

    cr_assert_eq(F.nalloc, 1, "%u reservations", F.nalloc);
    cr_assert_eq(F.alloc[0].off, host);
    cr_assert_eq(F.alloc[0].len, AHEAD);
    cr_assert(F.alloc[0].flags & QED_IO_F_KEEP_SIZE);
    cr_assert_eq(F.data_writes, 1);
    cr_assert_lt(F.alloc[0].seq_pos, F.first_data_pos, "the data was written before the reservation");
    /* The test backend performs the reservation for real, keeping the size. */
    struct stat after = file_stat();
    cr_assert_geq((uint64_t)(after.st_blocks - before.st_blocks) * 512, AHEAD,
                  "blocks grew by %lld only", (long long)(after.st_blocks - before.st_blocks));
    cr_assert_eq((uint64_t)after.st_size, host + CS, "the file ends at %lld", (long long)after.st_size);
    expect_cluster(3, 0xa1);

    /* The next clusters were reserved ahead. */
    cr_assert_eq(sparse_write(5, 0xa2), 0);
    cr_assert_eq(sparse_write(9, 0xa3), 0);
    cr_assert_eq(F.nalloc, 1, "reserved again inside the reservation ahead");
    cr_assert_eq(host_of(9 * CS), host + 2 * CS);
    expect_cluster(5, 0xa2);
    expect_cluster(9, 0xa3);
    expect_clean();
    close_and_check();
}

Test(reserve, whole_clusters_and_off_do_not_reserve)
{
    uint8_t *b = calloc(1, 2 * CS);

    cr_assert_not_null(b);
    make_image("a.qed", QED_RESERVE_ON);
    cr_assert_eq(qed_sync_write(F.img, 4 * CS, b, 2 * CS, 0), 0);
    cr_assert_eq(F.nalloc, 0, "a write of whole clusters reserved");
    free(b);
    close_and_check();
    make_image("b.qed", QED_RESERVE_OFF);
    cr_assert_eq(sparse_write(3, 0xb2), 0);
    cr_assert_eq(F.nalloc, 0, "reserve=off reserved");
    expect_cluster(3, 0xb2);
    close_and_check();
}

Test(reserve, auto_follows_the_file_system)
{
    struct statfs sfs;

    make_image("a.qed", QED_RESERVE_AUTO);
    cr_assert_eq(statfs(F.tf.dir, &sfs), 0);
    cr_assert_eq(sparse_write(3, 0xc3), 0);
    bool pays = sfs.f_type == EXT4_SUPER_MAGIC || sfs.f_type == XFS_SUPER_MAGIC;
    cr_assert_eq(F.nalloc, pays ? 1u : 0u, "auto on f_type %#lx: %u reservations",
                 (unsigned long)sfs.f_type, F.nalloc);
    close_and_check();
}

Test(reserve, enospc_ahead_reserves_just_the_run)
{
    make_image("a.qed", QED_RESERVE_ON);
    qed_aio_test_fail_nth(F.tf.aio, 1u << QED_IO_ALLOCATE, 0, -ENOSPC);
    cr_assert_eq(sparse_write(3, 0xd3), 0);
    uint64_t host = host_of(3 * CS);
    cr_assert_eq(F.nalloc, 2, "%u reservations", F.nalloc);
    cr_assert_eq(F.alloc[0].len, AHEAD);
    cr_assert_eq(F.alloc[1].off, host);
    cr_assert_eq(F.alloc[1].len, CS, "the retry reserved %" PRIu64 " bytes", F.alloc[1].len);
    /* Nothing was reserved ahead: the next sparse write reserves again. */
    cr_assert_eq(sparse_write(4, 0xd4), 0);
    cr_assert_eq(F.nalloc, 3);
    expect_cluster(3, 0xd3);
    expect_cluster(4, 0xd4);
    expect_clean();
    close_and_check();
}

Test(reserve, enospc_fails_the_write_cleanly)
{
    make_image("a.qed", QED_RESERVE_ON);
    struct stat before = file_stat();

    F.fail_retry = true;
    qed_aio_test_fail_nth(F.tf.aio, 1u << QED_IO_ALLOCATE, 0, -ENOSPC);
    cr_assert_eq(sparse_write(3, 0xd4), -ENOSPC);
    cr_assert_eq(F.nalloc, 2);
    cr_assert_eq(F.alloc[1].len, CS);
    cr_assert_eq(F.data_writes, 0, "the data was written after a failed reservation");
    cr_assert_eq(host_of(3 * CS), 0, "a cluster that could not be reserved has an L2 entry");
    expect_cluster(3, 0);
    cr_assert_eq(file_stat().st_size, before.st_size, "the file changed size");
    expect_clean();

    /* The clusters were handed back: the retry takes the same one. */
    uint64_t host = F.alloc[0].off;
    cr_assert_eq(sparse_write(3, 0xd5), 0);
    cr_assert_eq(host_of(3 * CS), host);
    expect_cluster(3, 0xd5);
    expect_clean();
    close_and_check();
    F.img = tf_open(&F.tf, F.name, NULL);
    expect_cluster(3, 0xd5);
}

Test(reserve, enospc_beside_another_allocation)
{
    /* Two writes side by side: the first one's reservation fails while the
     * second holds the clusters after it, so the failed ones cannot be
     * handed back; they leak (nothing points at them, nothing was written). */
    uint8_t a[4096], b2[4096];
    struct tf_done d[2] = {{0}};

    make_image("a.qed", QED_RESERVE_ON);
    memset(a, 0xe1, sizeof(a));
    memset(b2, 0xe2, sizeof(b2));
    F.fail_retry = true;
    qed_aio_test_fail_nth(F.tf.aio, 1u << QED_IO_ALLOCATE, 0, -ENOSPC);
    cr_assert_eq(TF_SUBMIT(qed_write(F.img, 5 * CS + 8 * KiB, a, sizeof(a), 0, tf_done_cb, &d[0])), 0);
    cr_assert_eq(TF_SUBMIT(qed_write(F.img, 7 * CS + 8 * KiB, b2, sizeof(b2), 0, tf_done_cb, &d[1])), 0);
    tf_wait_idle(&F.tf, d, 2);
    cr_assert_eq(d[0].ret + d[1].ret, -ENOSPC, "results %d and %d", d[0].ret, d[1].ret);
    unsigned bad = d[0].ret ? 5 : 7, good = d[0].ret ? 7 : 5;
    cr_assert_eq(host_of((uint64_t)bad * CS), 0);
    expect_cluster(bad, 0);
    expect_cluster(good, good == 5 ? 0xe1 : 0xe2);

    struct qed_check_result res = {0};
    cr_assert_eq(qed_check(F.img, false, &res), 0);
    cr_assert(res.corruptions == 0 && res.check_errors == 0);
}

Test(reserve, unsupported_turns_reserving_off)
{
    make_image("a.qed", QED_RESERVE_ON);
    qed_aio_test_fail_nth(F.tf.aio, 1u << QED_IO_ALLOCATE, 0, -EOPNOTSUPP);
    cr_assert_eq(sparse_write(3, 0xf6), 0);
    cr_assert_eq(F.nalloc, 1);
    cr_assert_eq(sparse_write(4, 0xf7), 0);
    cr_assert_eq(F.nalloc, 1, "reserved again after EOPNOTSUPP");
    expect_cluster(3, 0xf6);
    expect_cluster(4, 0xf7);
    expect_clean();
    close_and_check();
}

/* A real backend (io_uring when it works, else the thread pool) reserves. */
static void real_backend_reserves(void)
{
    make_image("a.qed", QED_RESERVE_ON);
    struct stat before = file_stat();
    cr_assert_eq(sparse_write(3, 0x17), 0);
    struct stat after = file_stat();
    cr_assert_geq((uint64_t)(after.st_blocks - before.st_blocks) * 512, AHEAD,
                  "%s: blocks grew by %lld only", qed_aio_backend_name(F.tf.aio),
                  (long long)(after.st_blocks - before.st_blocks));
    expect_cluster(3, 0x17);
    close_and_check();
}

Test(reserve_real, real_backend_reserves_the_cluster)
{
    real_backend_reserves();
}

Test(reserve_threads, thread_pool_reserves_the_cluster)
{
    real_backend_reserves();
}
