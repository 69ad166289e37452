/*
 * test-limits.c - the largest images and the arithmetic at their end
 * (issue 11, item 1).
 *
 * No image may be larger than QED_MAX_VIRTUAL_SIZE (INT64_MAX rounded down to
 * 512): create, open and resize refuse more, with a message naming the file,
 * the size and the maximum.  On an image of the largest size its geometry
 * allows, the last cluster reads, writes, zeroes, discards and reports block
 * status correctly, two allocating writes to it are serialised, and requests
 * whose end lies past the image or past 2^64 are refused.  Before the cap, a
 * 4 MiB-cluster image could be 2^64 - 512 bytes, the end of its last cluster
 * wrapped to 0, and run_lookup read past the L2 table (a heap overflow).
 *
 * The tests use the geometry's maximum (qed_max_image_size), not the cap
 * itself, so they exercise the same image before and after the cap.  Image
 * files are sparse: a 4 MiB-cluster image here stays a few tens of MiB.
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
#include <unistd.h>

#include <criterion/criterion.h>
#include <ev.h>

#include "checked.h"
#include "fixture.h"
#include "qed-io-test.h"
#include "qed-image.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define CS (4 * MiB)
#define TS 4u
#define MAX_TURNS 1000000

static struct {
    struct test_fixture tf;
    char path[128];
} F;

static char err[1024];

static void setup(void)
{
    memset(&F, 0, sizeof(F));
    tf_setup(&F.tf, "limits", QED_AIO_TEST);
    snprintf(F.path, sizeof(F.path), "%s/a.qed", F.tf.dir);
}

static void teardown(void)
{
    tf_teardown(&F.tf);
}

TestSuite(limits, .init = setup, .fini = teardown, .timeout = 120);

static int create_img(uint64_t size, uint32_t cs, uint32_t ts)
{
    struct qed_create_opts o = {.size = size, .cluster_size = cs, .table_size = ts};
    unlink(F.path);
    err[0] = '\0';
    return qed_create(F.path, &o, err, sizeof(err));
}

static qed_image *open_rw(void)
{
    qed_image *img = NULL;
    int r = qed_open(F.tf.aio, F.path, NULL, &img, err, sizeof(err));
    cr_assert_eq(r, 0, "open %s: %s", F.path, err);
    return img;
}

/* An image of the largest size its geometry allows, 4 MiB clusters, table size 4. */
static qed_image *max_image(void)
{
    uint64_t max = qed_max_image_size(CS, TS);
    int r = create_img(max, CS, TS);
    cr_assert_eq(r, 0, "create at the geometry's maximum %" PRIu64 ": %s", max, err);
    qed_image *img = open_rw();
    cr_assert_eq(qed_size(img), max);
    return img;
}

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (uint8_t)x;
    }
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

/* ---- the cap at create, open and resize ---- */

static void expect_create_refused(uint64_t size, uint32_t cs, uint32_t ts)
{
    char want[64];
    cr_assert_eq(create_img(size, cs, ts), -EINVAL, "size %" PRIu64 " (%u/%u) was accepted",
                 size, cs, ts);
    cr_assert(strstr(err, F.path), "message does not name the file: %s", err);
    snprintf(want, sizeof(want), "%" PRIu64, size);
    cr_assert(strstr(err, want), "message does not name the size %s: %s", want, err);
    snprintf(want, sizeof(want), "%" PRIu64, QED_MAX_VIRTUAL_SIZE);
    cr_assert(strstr(err, want), "message does not name the maximum %s: %s", want, err);
    cr_assert_eq(access(F.path, F_OK), -1, "a refused create left a file");
}

Test(limits, create_at_cap_works_and_more_is_refused)
{
    /* Both geometries allow 2^63 or more without the cap. */
    const uint32_t geo[][2] = {{4 * MiB, 4}, {2 * MiB, 8}};
    for (size_t i = 0; i < 2; i++) {
        uint32_t cs = geo[i][0], ts = geo[i][1];
        cr_assert_eq(create_img(QED_MAX_VIRTUAL_SIZE, cs, ts), 0, "%u/%u: %s", cs, ts, err);
        qed_image *img = open_rw();
        struct qed_info info;
        qed_get_info(img, &info);
        cr_assert_eq(info.size, (1ull << 63) - 512);
        cr_assert_eq(info.max_size, QED_MAX_VIRTUAL_SIZE);
        cr_assert_eq(qed_close(img), 0);

        expect_create_refused(QED_MAX_VIRTUAL_SIZE + 1, cs, ts);   /* rounds up to 2^63 */
        expect_create_refused(QED_MAX_VIRTUAL_SIZE + 512, cs, ts); /* 2^63 */
        expect_create_refused(18446744073709551104ull, cs, ts);    /* 2^64 - 512 */
        expect_create_refused(UINT64_MAX, cs, ts);                 /* rounding wraps */
    }
}

/* Patch the image size field of the header (little-endian, offset 48). */
static void set_header_size(uint64_t size)
{
    uint8_t b[8];
    int fd = open(F.path, O_WRONLY);
    cr_assert(fd >= 0);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(size >> (8 * i));
    cr_assert_eq(pwrite(fd, b, 8, 48), 8);
    close(fd);
}

Test(limits, open_refuses_size_over_cap)
{
    const uint64_t sizes[] = {1ull << 63, 18446744073709551104ull};
    for (size_t i = 0; i < 2; i++) {
        char want[64];
        cr_assert_eq(create_img(1 * MiB, CS, TS), 0, "%s", err);
        set_header_size(sizes[i]);
        for (int ro = 0; ro < 2; ro++) {
            struct qed_open_opts o = {.read_only = ro};
            qed_image *img = NULL;
            err[0] = '\0';
            int r = qed_open(F.tf.aio, F.path, &o, &img, err, sizeof(err));
            cr_assert_eq(r, -EINVAL, "size %" PRIu64 " opened (%s): %d", sizes[i],
                         ro ? "read-only" : "read-write", r);
            cr_assert_null(img);
            cr_assert(strstr(err, F.path), "message does not name the file: %s", err);
            snprintf(want, sizeof(want), "%" PRIu64, sizes[i]);
            cr_assert(strstr(err, want), "message does not name the size: %s", err);
            snprintf(want, sizeof(want), "%" PRIu64, QED_MAX_VIRTUAL_SIZE);
            cr_assert(strstr(err, want), "message does not name the maximum: %s", err);
        }
    }
}

Test(limits, resize_stops_at_cap)
{
    cr_assert_eq(create_img(1 * MiB, CS, TS), 0, "%s", err);
    qed_image *img = open_rw();
    cr_assert_eq(qed_sync_resize(img, QED_MAX_VIRTUAL_SIZE + 1), -EFBIG);
    cr_assert_eq(qed_sync_resize(img, 1ull << 63), -EFBIG);
    cr_assert_eq(qed_sync_resize(img, 18446744073709551104ull), -EFBIG);
    cr_assert_eq(qed_sync_resize(img, UINT64_MAX), -EFBIG);
    cr_assert_eq(qed_size(img), 1 * MiB, "a refused resize changed the size");
    cr_assert_eq(qed_sync_resize(img, QED_MAX_VIRTUAL_SIZE), 0);
    cr_assert_eq(qed_size(img), QED_MAX_VIRTUAL_SIZE);
    cr_assert_eq(qed_close(img), 0);
}

/* ---- the last cluster of the largest image ---- */

Test(limits, last_cluster_round_trips)
{
    qed_image *img = max_image();
    uint64_t size = qed_size(img);
    uint64_t last = (size - 1) & ~(CS - 1);
    size_t len = (size_t)(size - last); /* 4 MiB - 512: the image ends inside it */
    uint8_t *w = malloc(len), *r = malloc(len);
    cr_assert(w && r);

    fill(w, len, 1);
    cr_assert_eq(qed_sync_write(img, last, w, len, 0), 0);
    cr_assert_eq(qed_sync_read(img, last, r, len), 0);
    cr_assert(memcmp(w, r, len) == 0, "the last cluster did not read back");

    /* Across the boundary of the last two clusters. */
    fill(w, 8192, 2);
    cr_assert_eq(qed_sync_write(img, last - 4096, w, 8192, QED_REQ_FUA), 0);
    cr_assert_eq(qed_sync_read(img, last - 4096, r, 8192), 0);
    cr_assert(memcmp(w, r, 8192) == 0, "the write across the last boundary did not read back");

    /* Zeroes in the middle of the last cluster, and up to the very end. */
    cr_assert_eq(qed_sync_write_zeroes(img, last + 64 * KiB, 64 * KiB, 0), 0);
    cr_assert_eq(qed_sync_write_zeroes(img, size - 4096, 4096, 0), 0);
    cr_assert_eq(qed_sync_read(img, last, r, len), 0);
    cr_assert(all_zero(r + 64 * KiB, 64 * KiB), "write-zeroes in the last cluster");
    cr_assert(all_zero(r + len - 4096, 4096), "write-zeroes at the end of the image");
    cr_assert(memcmp(r, w + 4096, 4096) == 0, "write-zeroes touched other bytes");

    /* Block status of the last cluster: contiguous extents covering it. */
    struct qed_extent ext[16];
    size_t n = 0;
    cr_assert_eq(qed_sync_block_status(img, last, len, ext, 16, &n), 0);
    cr_assert_gt(n, 0);
    cr_assert_eq(ext[0].start, last);
    uint64_t covered = 0;
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(ext[i].start, last + covered, "extents not contiguous");
        cr_assert(ext[i].data, "the written last cluster reported as a hole");
        covered += ext[i].length;
    }
    cr_assert_eq(covered, len, "block status covered %" PRIu64 " of %zu", covered, len);

    /* Trim: afterwards every byte reads as zero or as before. */
    uint8_t *before = malloc(len);
    cr_assert_not_null(before);
    memcpy(before, r, len);
    cr_assert_eq(qed_sync_discard(img, last, len), 0);
    cr_assert_eq(qed_sync_discard(img, last - CS, size - (last - CS)), 0);
    cr_assert_eq(qed_sync_read(img, last, r, len), 0);
    for (size_t i = 0; i < len; i++)
        cr_assert(r[i] == 0 || r[i] == before[i], "trim changed byte %zu", i);

    /* Zeroes over the whole last cluster, then it reads as zeros. */
    cr_assert_eq(qed_sync_write_zeroes(img, last, len, 0), 0);
    cr_assert_eq(qed_sync_read(img, last, r, len), 0);
    cr_assert(all_zero(r, len), "the last cluster does not read as zeros");

    struct qed_check_result res;
    cr_assert_eq(qed_check(img, false, &res), 0);
    cr_assert_eq(res.corruptions, 0);
    cr_assert_eq(qed_close(img), 0);
    free(before);
    free(w);
    free(r);
}

/* Does any held I/O read from or write to memory in [p, p + n)? */
static bool io_touches(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < qed_aio_test_pending(F.tf.aio); i++) {
        struct qed_io *io = qed_aio_test_peek(F.tf.aio, i);
        for (int k = 0; k < io->iovcnt; k++) {
            const uint8_t *b = io->iov[k].iov_base;
            if (b < p + n && p < b + io->iov[k].iov_len)
                return true;
        }
    }
    return false;
}

Test(limits, two_allocating_writes_to_last_cluster_serialised)
{
    qed_image *img = max_image();
    uint64_t size = qed_size(img);
    uint64_t last = (size - 1) & ~(CS - 1);
    size_t len = 64 * KiB;
    uint8_t *a = malloc(len), *b = malloc(len), *r = malloc(len);
    cr_assert(a && b && r);

    /* The last L2 table exists and NEED_CHECK is set: allocating writes to
     * disjoint clusters of that table may now run side by side. */
    fill(a, len, 3);
    cr_assert_eq(qed_sync_write(img, last - CS, a, len, 0), 0);

    fill(a, len, 4);
    fill(b, len, 5);
    qed_aio_test_set_auto(F.tf.aio, false);
    struct tf_done da = {0}, db = {0};
    cr_assert_eq(qed_write(img, last, a, len, 0, tf_done_cb, &da), 0);
    cr_assert_eq(qed_write(img, last + 1 * MiB, b, len, 0, tf_done_cb, &db), 0);
    /* The same cluster: the second write waits for the first, and has not
     * started any I/O of its data.  The first one's I/O is its data write,
     * or the reservation before it where the file system reserves
     * (request-alloc.c): one I/O either way. */
    struct qed_io *first = qed_aio_test_peek(F.tf.aio, 0);
    cr_assert(io_touches(a, len) || (first && first->op == QED_IO_ALLOCATE),
              "the first write did not start");
    cr_assert_not(io_touches(b, len), "the second write to the same cluster ran at once");
    cr_assert_eq(qed_aio_test_pending(F.tf.aio), 1, "the second write started some I/O");
    for (unsigned t = 0; da.calls == 0 || db.calls == 0; t++) {
        cr_assert_lt(t, MAX_TURNS, "the writes never completed");
        ev_run(F.tf.loop, EVRUN_NOWAIT);
        if (qed_aio_test_pending(F.tf.aio))
            cr_assert_eq(qed_aio_test_complete(F.tf.aio, 0, 0), 0);
    }
    cr_assert_eq(da.calls, 1);
    cr_assert_eq(db.calls, 1);
    cr_assert_eq(da.ret, 0);
    cr_assert_eq(db.ret, 0);
    qed_aio_test_set_auto(F.tf.aio, true);

    cr_assert_eq(qed_sync_read(img, last, r, len), 0);
    cr_assert(memcmp(r, a, len) == 0, "the first write was lost");
    cr_assert_eq(qed_sync_read(img, last + 1 * MiB, r, len), 0);
    cr_assert(memcmp(r, b, len) == 0, "the second write was lost");

    /* One cluster each for the two last guest clusters, nothing leaked. */
    struct qed_check_result res;
    cr_assert_eq(qed_check(img, false, &res), 0);
    cr_assert_eq(res.corruptions, 0);
    cr_assert_eq(res.allocated_clusters, 2);
    cr_assert_eq(res.leaks, 0, "a second cluster was allocated for the last guest cluster");
    cr_assert_eq(qed_close(img), 0);
    free(a);
    free(b);
    free(r);
}

/* ---- requests past the end and past 2^64 ---- */

static int submit_and_wait(qed_image *img, int type, uint64_t off, uint64_t len, uint8_t *buf)
{
    struct tf_done d = {0};
    struct qed_extent ext[4];
    size_t n;
    int rc;

    switch (type) {
    case 0:
        rc = qed_read(img, off, buf, (size_t)len, tf_done_cb, &d);
        break;
    case 1:
        rc = qed_write(img, off, buf, (size_t)len, 0, tf_done_cb, &d);
        break;
    case 2:
        rc = qed_write_zeroes(img, off, len, 0, tf_done_cb, &d);
        break;
    case 3:
        rc = qed_discard(img, off, len, 0, tf_done_cb, &d);
        break;
    default:
        rc = qed_block_status(img, off, len, ext, 4, &n, tf_done_cb, &d);
        break;
    }
    if (rc < 0)
        return rc;
    tf_wait(&F.tf, &d, 1);
    return d.ret;
}

Test(limits, range_overflow_rejected)
{
    static const char *names[] = {"read", "write", "write-zeroes", "trim", "block-status"};
    /* The documented error past the end: ENOSPC for what writes, else EINVAL. */
    static const int past_end[] = {-EINVAL, -ENOSPC, -ENOSPC, -EINVAL, -EINVAL};
    qed_image *img = max_image();
    uint64_t size = qed_size(img);
    uint8_t *buf = calloc(1, 4096);
    cr_assert_not_null(buf);
    const struct {
        uint64_t off, len;
    } bad[] = {
        {size - 512, 1024},             /* past the end */
        {size, 512},                    /* at the end */
        {1ull << 63, 512},              /* at 2^63 */
        {(1ull << 63) - 512, 1024},     /* across 2^63 */
        {INT64_MAX, 1},                 /* the last byte NBD can name */
        {0ull - 4 * MiB, 4 * MiB - 512}, /* the last cluster of a 2^64 - 512 image */
        {0ull - 1024, 512},             /* below 2^64 */
        {0ull - 512, 1024},             /* wraps past 2^64 to 512 */
        {UINT64_MAX, 1},                /* wraps to 0 */
        {4096, UINT64_MAX - 4095},      /* wraps to 0 */
        {size - 512, UINT64_MAX},       /* wraps */
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        for (int t = 0; t < 5; t++) {
            /* Lengths a buffer cannot hold are only given to the calls without one. */
            if (t <= 1 && bad[i].len > 4 * MiB)
                continue;
            uint8_t *b = buf;
            uint8_t *big = NULL;
            if (t <= 1 && bad[i].len > 4096)
                b = big = calloc(1, (size_t)bad[i].len);
            int rc = submit_and_wait(img, t, bad[i].off, bad[i].len, b);
            free(big);
            cr_assert_eq(rc, past_end[t], "%s at %" PRIu64 "+%" PRIu64 ": %d, expected %d",
                         names[t], bad[i].off, bad[i].len, rc, past_end[t]);
        }
    }
    /* The last sector itself is fine. */
    for (int t = 0; t < 5; t++)
        cr_assert_eq(submit_and_wait(img, t, size - 512, 512, buf), 0, "%s of the last sector",
                     names[t]);
    cr_assert_eq(qed_close(img), 0);
    free(buf);
}

/* ---- the checked helpers themselves ---- */

Test(limits, checked_helpers)
{
    uint64_t r;

    cr_assert_not(qed_add_overflows(1ull << 63, (1ull << 63) - 1, &r));
    cr_assert_eq(r, UINT64_MAX);
    cr_assert(qed_add_overflows(1ull << 63, 1ull << 63, &r));
    cr_assert(qed_add_overflows(UINT64_MAX, 1, &r));
    cr_assert_not(qed_add_overflows(INT64_MAX, 1, &r));
    cr_assert_eq(r, 1ull << 63);

    cr_assert_not(qed_mul_overflows(1ull << 31, 1ull << 32, &r));
    cr_assert_eq(r, 1ull << 63);
    cr_assert(qed_mul_overflows(1ull << 32, 1ull << 32, &r));
    cr_assert(qed_mul_overflows(3, INT64_MAX, &r));

    cr_assert_not(qed_align_up_overflows((1ull << 63) - 1, 4 * MiB, &r));
    cr_assert_eq(r, 1ull << 63);
    cr_assert_not(qed_align_up_overflows(0ull - 4 * MiB, 4 * MiB, &r));
    cr_assert_eq(r, 0ull - 4 * MiB);
    cr_assert(qed_align_up_overflows(0ull - 4 * MiB + 1, 4 * MiB, &r), "2^64 must overflow");
    cr_assert(qed_align_up_overflows(UINT64_MAX, 512, &r));
    cr_assert_not(qed_align_up_overflows(0, 512, &r));
    cr_assert_eq(r, 0);

    cr_assert(qed_range_within(0, 0, 0));
    cr_assert(qed_range_within(QED_MAX_VIRTUAL_SIZE - 512, 512, QED_MAX_VIRTUAL_SIZE));
    cr_assert_not(qed_range_within(QED_MAX_VIRTUAL_SIZE - 512, 1024, QED_MAX_VIRTUAL_SIZE));
    cr_assert_not(qed_range_within(0ull - 512, 1024, UINT64_MAX));
    cr_assert_not(qed_range_within(UINT64_MAX, 1, UINT64_MAX));
    cr_assert(qed_range_within(UINT64_MAX - 1, 1, UINT64_MAX));
}

/*
 * An overlay at the cap over a QED backing image at the cap: reads, block
 * status, copy-on-write of a partial write, write-zeroes (with and without
 * NO_HOLE, and FAST_ZERO) and trim in the last cluster all reach the
 * backing image's last cluster too, whose end is 2^63 - 512.
 */
Test(limits, chain_at_cap_last_cluster)
{
    char bpath[160];
    struct qed_create_opts bo = {.size = QED_MAX_VIRTUAL_SIZE, .cluster_size = CS,
                                 .table_size = TS};
    qed_image *base, *img;
    uint64_t size = QED_MAX_VIRTUAL_SIZE, last = (size - 1) & ~(CS - 1);
    size_t len = (size_t)(size - last);
    uint8_t *b = malloc(len), *r = malloc(len), *want = malloc(len);
    struct qed_extent ext[16];
    size_t n = 0;

    cr_assert(b && r && want);
    snprintf(bpath, sizeof(bpath), "%s/base.qed", F.tf.dir);
    cr_assert_eq(qed_create(bpath, &bo, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(qed_open(F.tf.aio, bpath, NULL, &base, err, sizeof(err)), 0, "%s", err);
    fill(b, len, 11);
    cr_assert_eq(qed_sync_write(base, last, b, len, 0), 0);
    cr_assert_eq(qed_close(base), 0);

    struct qed_create_opts to = {.size = QED_MAX_VIRTUAL_SIZE, .cluster_size = CS,
                                 .table_size = TS, .backing_file = bpath,
                                 .backing_fmt = QED_BACKING_QED};
    cr_assert_eq(qed_create(F.path, &to, err, sizeof(err)), 0, "%s", err);
    img = open_rw();
    cr_assert_eq(qed_sync_read(img, last, r, len), 0);
    cr_assert(memcmp(r, b, len) == 0, "the backing's last cluster through the overlay");
    cr_assert_eq(qed_sync_block_status(img, last, len, ext, 16, &n), 0);
    cr_assert_eq(n, 1);
    cr_assert_eq(ext[0].depth, 1);
    cr_assert_eq(ext[0].length, len);

    /* A partial write copies the rest of the cluster from the backing. */
    memcpy(want, b, len);
    fill(want + 4096, 512, 12);
    cr_assert_eq(qed_sync_write(img, last + 4096, want + 4096, 512, QED_REQ_FUA), 0);
    cr_assert_eq(qed_sync_read(img, last, r, len), 0);
    cr_assert(memcmp(r, want, len) == 0, "copy-on-write of the last cluster");

    /* FAST_ZERO of allocated data needs writes: refused, nothing changed. */
    cr_assert_eq(qed_sync_write_zeroes(img, size - 512, 512, QED_REQ_FAST_ZERO), -ENOTSUP);
    cr_assert_eq(qed_sync_write_zeroes(img, size - 1024, 1024, QED_REQ_NO_HOLE), 0);
    memset(want + len - 1024, 0, 1024);
    cr_assert_eq(qed_sync_discard(img, last, len), 0);
    cr_assert_eq(qed_sync_read(img, last, r, len), 0);
    for (size_t i = 0; i < len; i++)
        cr_assert(r[i] == 0 || r[i] == want[i], "byte %zu after trim", i);
    cr_assert_eq(qed_sync_write_zeroes(img, last, len, 0), 0);
    cr_assert_eq(qed_sync_read(img, last, r, len), 0);
    cr_assert(all_zero(r, len), "the last cluster after write-zeroes");

    struct qed_check_result res;
    cr_assert_eq(qed_check(img, false, &res), 0);
    cr_assert_eq(res.corruptions, 0);
    cr_assert_eq(qed_close(img), 0);
    free(b);
    free(r);
    free(want);
}
