/*
 * test-bitmap.c - dirty bitmaps in memory (issue 15): names, adding and
 * removing, marking by write, write-zeroes and discard at submission (also
 * when the write fails), clear, enable, merge across granularities and
 * images, status runs, granularities from 512 B to 2 GiB, ranges at the end
 * of the disk and disks near QED_MAX_VIRTUAL_SIZE, resize, and the memory
 * limit checked before allocating.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <ev.h>

#include "checked.h"
#include "dirty-bits.h"
#include "fixture.h"
#include "qed-image.h"
#include "qed-io-test.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define GiB (1024ull * MiB)

static struct {
    struct test_fixture tf;
    qed_image *img, *img2;
} F;

static void setup(void)
{
    memset(&F, 0, sizeof(F));
    tf_setup(&F.tf, "bitmap", QED_AIO_TEST);
    qed_set_log(tf_quiet_log, NULL, QED_LOG_ERROR);
}

static void teardown(void)
{
    tf_close_left_open(&F.tf, &F.img);
    tf_close_left_open(&F.tf, &F.img2);
    tf_teardown(&F.tf);
    qed_set_log(NULL, NULL, QED_LOG_WARN);
}

TestSuite(bitmap, .init = setup, .fini = teardown, .timeout = 60);

/* A new image "name" of @size bytes (64 KiB clusters), opened read-write. */
static qed_image *open_new(const char *name, uint64_t size)
{
    tf_create(&F.tf, name, size, 64 * KiB, 4, NULL, QED_BACKING_PROBE);
    return tf_open(&F.tf, name, NULL);
}

/* Assert that the status of @name over [@off, @off + @len) is exactly the
 * @n runs in @want (start, length, dirty). */
static void expect_runs(qed_image *img, const char *name, uint64_t off, uint64_t len,
                        const struct qed_dirty_extent *want, size_t n)
{
    struct qed_dirty_extent got[16];
    size_t ngot = 0;
    int r = qed_bitmap_status(img, name, off, len, got, 16, &ngot);

    cr_assert_eq(r, 0, "status %s: %s", name, strerror(-r));
    cr_assert_eq(ngot, n, "%s: %zu runs, want %zu", name, ngot, n);
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(got[i].start, want[i].start, "%s run %zu start %" PRIu64 " want %" PRIu64,
                     name, i, got[i].start, want[i].start);
        cr_assert_eq(got[i].length, want[i].length, "%s run %zu length %" PRIu64
                     " want %" PRIu64, name, i, got[i].length, want[i].length);
        cr_assert_eq(got[i].dirty, want[i].dirty, "%s run %zu dirty", name, i);
    }
}

static uint64_t dirty_bytes(qed_image *img, const char *name)
{
    struct qed_bitmap_info info;
    int i = qed_bitmap_find(img, name);

    cr_assert_geq(i, 0, "no bitmap %s", name);
    cr_assert_eq(qed_bitmap_info(img, (unsigned)i, &info), 0);
    return info.dirty_bytes;
}

/* ---- pure bit runs ---- */

Test(bitmap, bits_set_next_merge)
{
    uint64_t w[4] = {0}, w2[4] = {0};
    struct qed_bits b = {.w = w, .nbits = 200}, d = {.w = w2, .nbits = 50};

    qed_bits_set(&b, 60, 10);       /* across a word boundary */
    cr_assert_eq(b.nset, 10);
    qed_bits_set(&b, 65, 10);       /* overlapping: counts only new bits */
    cr_assert_eq(b.nset, 15);
    qed_bits_set(&b, 190, 1000);    /* clipped at nbits */
    cr_assert_eq(b.nset, 25);
    cr_assert_eq(w[3] >> 8, 0, "bits past nbits were set");
    cr_assert_eq(qed_bits_next(&b, 0, true), 60);
    cr_assert_eq(qed_bits_next(&b, 60, false), 75);
    cr_assert_eq(qed_bits_next(&b, 75, true), 190);
    cr_assert_eq(qed_bits_next(&b, 190, false), 200);
    cr_assert_eq(qed_bits_count(&b), 25);
    /* 200 bits of 512 B = 100 KiB; into 2 KiB bits: 60..75 -> 15..18, 190.. -> 47..49 */
    qed_bits_merge(&d, 2048, &b, 512, 200 * 512);
    cr_assert_eq(qed_bits_next(&d, 0, true), 15);
    cr_assert_eq(qed_bits_next(&d, 15, false), 19);
    cr_assert_eq(qed_bits_next(&d, 19, true), 47);
    cr_assert_eq(qed_bits_next(&d, 47, false), 50);
    qed_bits_truncate(&b, 70);
    cr_assert_eq(b.nset, 10);
    b.nbits = 200;                  /* grown again: the old bits are clean */
    cr_assert_eq(qed_bits_next(&b, 70, true), 200);
    qed_bits_clear_all(&b);
    cr_assert_eq(b.nset, 0);
    cr_assert_eq(qed_bits_next(&b, 0, true), 200);
}

/* ---- names and management ---- */

Test(bitmap, names)
{
    char longest[QED_BITMAP_NAME_MAX + 2];

    cr_assert(qed_bitmap_name_valid("b0"));
    cr_assert(qed_bitmap_name_valid("backup-2026.12:07_x"));
    cr_assert(!qed_bitmap_name_valid(""));
    cr_assert(!qed_bitmap_name_valid(NULL));
    cr_assert(!qed_bitmap_name_valid("a b"));
    cr_assert(!qed_bitmap_name_valid("a\"b"));
    cr_assert(!qed_bitmap_name_valid("a\\b"));
    cr_assert(!qed_bitmap_name_valid("a\tb"));
    cr_assert(!qed_bitmap_name_valid("caf\xc3\xa9"));
    memset(longest, 'x', QED_BITMAP_NAME_MAX);
    longest[QED_BITMAP_NAME_MAX] = '\0';
    cr_assert(qed_bitmap_name_valid(longest));
    longest[QED_BITMAP_NAME_MAX] = 'x';
    longest[QED_BITMAP_NAME_MAX + 1] = '\0';
    cr_assert(!qed_bitmap_name_valid(longest));
}

Test(bitmap, add_find_remove)
{
    struct qed_bitmap_info info;
    char name[16];

    F.img = open_new("a.qed", 16 * MiB);
    cr_assert_eq(qed_bitmap_count(F.img), 0);
    cr_assert_eq(qed_bitmap_add(F.img, "one", 0, false), 0);
    cr_assert_eq(qed_bitmap_add(F.img, "two", 4096, true), 0);
    cr_assert_eq(qed_bitmap_add(F.img, "one", 0, false), -EEXIST);
    cr_assert_eq(qed_bitmap_add(F.img, "bad name", 0, false), -EINVAL);
    cr_assert_eq(qed_bitmap_add(F.img, "g", 256, false), -EINVAL);
    cr_assert_eq(qed_bitmap_add(F.img, "g", 3 * 4096, false), -EINVAL);
    cr_assert_eq(qed_bitmap_add(F.img, "g", 1u << 31, false), 0);
    cr_assert_eq(qed_bitmap_count(F.img), 3);
    cr_assert_eq(qed_bitmap_find(F.img, "two"), 1);
    cr_assert_eq(qed_bitmap_find(F.img, "three"), -ENOENT);
    cr_assert_eq(qed_bitmap_info(F.img, 0, &info), 0);
    cr_assert_str_eq(info.name, "one");
    cr_assert_eq(info.granularity, QED_BITMAP_DEFAULT_GRANULARITY);
    cr_assert(info.enabled && !info.inconsistent);
    cr_assert_eq(info.dirty_bytes, 0);
    cr_assert_eq(qed_bitmap_info(F.img, 1, &info), 0);
    cr_assert(!info.enabled);
    cr_assert_eq(qed_bitmap_info(F.img, 3, &info), -ENOENT);
    cr_assert_eq(qed_bitmap_remove(F.img, "one"), 0);
    cr_assert_eq(qed_bitmap_remove(F.img, "one"), -ENOENT);
    cr_assert_eq(qed_bitmap_find(F.img, "two"), 0, "removal kept the order");
    cr_assert_eq(qed_bitmap_clear(F.img, "nope"), -ENOENT);
    cr_assert_eq(qed_bitmap_enable(F.img, "nope", true), -ENOENT);
    for (unsigned i = qed_bitmap_count(F.img); i < QED_BITMAP_MAX; i++) {
        snprintf(name, sizeof(name), "m%u", i);
        cr_assert_eq(qed_bitmap_add(F.img, name, 0, false), 0);
    }
    cr_assert_eq(qed_bitmap_add(F.img, "more", 0, false), -ENOSPC);
    cr_assert_eq(qed_close(F.img), 0);
    F.img = NULL;
}

Test(bitmap, read_only_refuses_changes)
{
    struct qed_open_opts ro = {.read_only = true};

    tf_create(&F.tf, "a.qed", 16 * MiB, 64 * KiB, 4, NULL, QED_BACKING_PROBE);
    F.img = tf_open(&F.tf, "a.qed", &ro);
    cr_assert_eq(qed_bitmap_add(F.img, "b", 0, false), -EROFS);
    cr_assert_eq(qed_bitmap_count(F.img), 0);
}

/* ---- marking ---- */

Test(bitmap, writes_zeroes_discards_mark)
{
    uint8_t buf[4096];
    uint64_t g = 64 * KiB;

    memset(buf, 0x5a, sizeof(buf));
    F.img = open_new("a.qed", 16 * MiB);
    cr_assert_eq(qed_bitmap_add(F.img, "b", 0, false), 0);
    cr_assert_eq(qed_bitmap_add(F.img, "off", 0, true), 0);
    cr_assert_eq(qed_sync_write(F.img, g + 100, buf, sizeof(buf), 0), 0);
    cr_assert_eq(qed_sync_write_zeroes(F.img, 4 * g - 1, 2, 0), 0); /* two granules */
    cr_assert_eq(qed_sync_discard(F.img, 10 * g, 3 * g), 0);
    {
        const struct qed_dirty_extent want[] = {
            {0, g, false},      {g, g, true},       {2 * g, g, false},  {3 * g, 2 * g, true},
            {5 * g, 5 * g, false}, {10 * g, 3 * g, true}, {13 * g, 16 * MiB - 13 * g, false},
        };
        expect_runs(F.img, "b", 0, 16 * MiB, want, 7);
    }
    cr_assert_eq(dirty_bytes(F.img, "b"), 6 * g);
    cr_assert_eq(dirty_bytes(F.img, "off"), 0, "a disabled bitmap recorded a write");
    /* Reads, flushes and block status mark nothing. */
    cr_assert_eq(qed_sync_read(F.img, 8 * g, buf, sizeof(buf)), 0);
    cr_assert_eq(qed_sync_flush(F.img), 0);
    cr_assert_eq(dirty_bytes(F.img, "b"), 6 * g);

    cr_assert_eq(qed_bitmap_enable(F.img, "b", false), 0);
    cr_assert_eq(qed_sync_write(F.img, 8 * g, buf, sizeof(buf), 0), 0);
    cr_assert_eq(dirty_bytes(F.img, "b"), 6 * g);
    cr_assert_eq(qed_bitmap_enable(F.img, "off", true), 0);
    cr_assert_eq(qed_sync_write(F.img, 8 * g, buf, sizeof(buf), 0), 0);
    cr_assert_eq(dirty_bytes(F.img, "off"), g);
    cr_assert_eq(qed_bitmap_clear(F.img, "b"), 0);
    cr_assert_eq(dirty_bytes(F.img, "b"), 0);
    {
        const struct qed_dirty_extent want[] = {{0, 16 * MiB, false}};
        expect_runs(F.img, "b", 0, 16 * MiB, want, 1);
    }
}

/* Marked at submission: before the write completes, and when it fails. */
Test(bitmap, marked_at_submission_and_on_failure)
{
    uint8_t buf[512] = {1};
    struct tf_done d = {0};
    int rc;

    F.img = open_new("a.qed", 16 * MiB);
    cr_assert_eq(qed_bitmap_add(F.img, "b", 512, false), 0);
    qed_aio_test_set_auto(F.tf.aio, false);
    rc = TF_SUBMIT(qed_write(F.img, 1 * MiB, buf, sizeof(buf), 0, tf_done_cb, &d));
    cr_assert_eq(rc, 0);
    cr_assert_eq(dirty_bytes(F.img, "b"), 512, "not marked at submission");
    qed_aio_test_set_auto(F.tf.aio, true);
    tf_wait_idle(&F.tf, &d, 1);
    cr_assert_eq(d.ret, 0);

    qed_aio_test_fail_nth(F.tf.aio, 1u << QED_IO_WRITE, 0, -EIO);
    cr_assert_neq(qed_sync_write(F.img, 4 * MiB, buf, sizeof(buf), 0), 0);
    qed_aio_test_fail_nth(F.tf.aio, 0, 0, 0);
    cr_assert_eq(dirty_bytes(F.img, "b"), 1024, "a failed write was not marked");
    /* A refused request marks nothing. */
    cr_assert_eq(qed_sync_write(F.img, 16 * MiB, buf, sizeof(buf), 0), -ENOSPC);
    cr_assert_eq(dirty_bytes(F.img, "b"), 1024);
}

/* A bitmap cleared, or added, while a write is in flight still records it
 * when it completes (QEMU marks at completion; marking only at submission
 * lost such writes from the next incremental backup). */
Test(bitmap, cleared_or_added_while_in_flight_still_records)
{
    uint8_t buf[512] = {1};
    struct tf_done d[3] = {{0}};

    F.img = open_new("a.qed", 16 * MiB);
    /* Data under the discard, so that it has I/O to wait for. */
    cr_assert_eq(qed_sync_write_zeroes(F.img, 3 * MiB, 64 * KiB, QED_REQ_NO_HOLE), 0);
    cr_assert_eq(qed_bitmap_add(F.img, "b", 512, false), 0);
    qed_aio_test_set_auto(F.tf.aio, false);
    cr_assert_eq(TF_SUBMIT(qed_write(F.img, 1 * MiB, buf, sizeof(buf), 0, tf_done_cb, &d[0])), 0);
    cr_assert_eq(TF_SUBMIT(qed_write_zeroes(F.img, 2 * MiB, 512, 0, tf_done_cb, &d[1])), 0);
    cr_assert_eq(TF_SUBMIT(qed_discard(F.img, 3 * MiB, 64 * KiB, 0, tf_done_cb, &d[2])), 0);
    cr_assert_gt(qed_aio_test_pending(F.tf.aio), 0, "nothing in flight");
    cr_assert_eq(qed_bitmap_clear(F.img, "b"), 0);
    cr_assert_eq(qed_bitmap_add(F.img, "late", 512, false), 0);
    cr_assert_eq(dirty_bytes(F.img, "b"), 0);
    qed_aio_test_set_auto(F.tf.aio, true);
    tf_wait_idle(&F.tf, d, 3);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(d[i].ret, 0);
    cr_assert_eq(dirty_bytes(F.img, "b"), 1024 + 64 * KiB, "in-flight requests were lost: %" PRIu64,
                 dirty_bytes(F.img, "b"));
    cr_assert_eq(dirty_bytes(F.img, "late"), 1024 + 64 * KiB);
}

/* ---- granularities and the end of the disk ---- */

Test(bitmap, every_granularity_at_the_end)
{
    /* 5 GiB + 1536: ends inside a granule for every granularity over 512. */
    uint64_t size = 5 * GiB + 1536;
    uint8_t buf[512];
    char name[32];

    memset(buf, 7, sizeof(buf));
    F.img = open_new("a.qed", size);
    for (uint64_t g = QED_BITMAP_MIN_GRANULARITY; g <= QED_BITMAP_MAX_GRANULARITY; g *= 2) {
        snprintf(name, sizeof(name), "g%" PRIu64, g);
        cr_assert_eq(qed_bitmap_add(F.img, name, (uint32_t)g, false), 0, "%s", name);
    }
    /* The last 512 bytes of the disk, and 512 bytes at 3 GiB - 512. */
    cr_assert_eq(qed_sync_write(F.img, size - 512, buf, 512, 0), 0);
    cr_assert_eq(qed_sync_write(F.img, 3 * GiB - 512, buf, 512, 0), 0);
    for (uint64_t g = QED_BITMAP_MIN_GRANULARITY; g <= QED_BITMAP_MAX_GRANULARITY; g *= 2) {
        uint64_t a = (3 * GiB - 512) / g * g, last = (size - 512) / g * g;
        struct qed_dirty_extent got[8];
        size_t n = 0;

        snprintf(name, sizeof(name), "g%" PRIu64, g);
        cr_assert_eq(qed_bitmap_status(F.img, name, 0, size, got, 8, &n), 0);
        if (a + g == last) {
            /* The two writes share a run (2 GiB granules: [2G,4G) and [4G,size)). */
            cr_assert_eq(n, 2, "%s: %zu runs", name, n);
            cr_assert_eq(got[0].start, 0);
            cr_assert_eq(got[0].length, a);
            cr_assert(got[1].dirty);
            cr_assert_eq(got[1].start + got[1].length, size);
        } else {
            const struct qed_dirty_extent want[] = {
                {0, a, false}, {a, g, true}, {a + g, last - a - g, false},
                {last, size - last, true},
            };
            expect_runs(F.img, name, 0, size, want, 4);
        }
        cr_assert_eq(dirty_bytes(F.img, name), g + (size - last),
                     "%s dirty bytes", name);
        cr_assert_leq(dirty_bytes(F.img, name), size);
        /* A range ending at the disk's end, and one past it. */
        cr_assert_eq(qed_bitmap_status(F.img, name, size - 1, 1, got, 8, &n), 0);
        cr_assert_eq(n, 1);
        cr_assert(got[0].dirty && got[0].start == size - 1 && got[0].length == 1);
        cr_assert_eq(qed_bitmap_status(F.img, name, size - 1, 2, got, 8, &n), -EINVAL);
        cr_assert_eq(qed_bitmap_status(F.img, name, UINT64_MAX, 2, got, 8, &n), -EINVAL);
    }
}

/* A 4 MiB-cluster image of the largest size its geometry allows (2^63 - 512). */
Test(bitmap, largest_disk)
{
    uint64_t size, end;
    uint8_t buf[512];
    struct qed_dirty_extent got[4];
    size_t n = 0;

    memset(buf, 9, sizeof(buf));
    tf_create(&F.tf, "big.qed", qed_max_image_size(4 * MiB, 4), 4 * MiB, 4, NULL,
              QED_BACKING_PROBE);
    F.img = tf_open(&F.tf, "big.qed", NULL);
    size = qed_size(F.img);
    cr_assert_eq(size, QED_MAX_VIRTUAL_SIZE);
    /* 1 GiB granules: 2^33 bits, 1 GiB of memory: over the limit, refused
     * before allocating.  2 GiB granules: 512 MiB, just at the limit. */
    cr_assert_eq(qed_bitmap_add(F.img, "g1g", 1u << 30, false), -EFBIG);
    cr_assert_eq(qed_bitmap_add(F.img, "g2g", 1u << 31, false), 0);
    cr_assert_eq(qed_bitmap_add(F.img, "more", 1u << 31, false), 0);
    cr_assert_eq(qed_bitmap_add(F.img, "third", 1u << 31, false), -EFBIG,
                 "the image's total limit (1 GiB) was not applied");
    cr_assert_eq(qed_sync_write(F.img, size - 512, buf, 512, 0), 0);
    cr_assert(!qed_add_overflows(size - 512, 512, &end) && end == size);
    /* The last granule is [2^63 - 2 GiB, 2^63); the disk ends 512 bytes
     * before it does. */
    cr_assert_eq(qed_bitmap_status(F.img, "g2g", size - 4 * GiB, 4 * GiB, got, 4, &n), 0);
    cr_assert_eq(n, 2);
    cr_assert(!got[0].dirty && got[0].length == 2 * GiB + 512);
    cr_assert(got[1].dirty && got[1].start == size + 512 - 2 * GiB);
    cr_assert_eq(got[1].length, 2 * GiB - 512);
    cr_assert_eq(dirty_bytes(F.img, "g2g"), 2 * GiB - 512);
    cr_assert_eq(dirty_bytes(F.img, "more"), 2 * GiB - 512);
}

/* ---- status ---- */

Test(bitmap, status_runs_are_maximal_and_bounded)
{
    uint8_t buf[64 * 1024];
    struct qed_dirty_extent got[2];
    size_t n = 0;
    uint64_t g = 64 * KiB;

    memset(buf, 1, sizeof(buf));
    F.img = open_new("a.qed", 16 * MiB);
    cr_assert_eq(qed_bitmap_add(F.img, "b", 0, false), 0);
    /* Adjacent writes merge into one run; one in the middle of a run too. */
    cr_assert_eq(qed_sync_write(F.img, 2 * g, buf, sizeof(buf), 0), 0);
    cr_assert_eq(qed_sync_write(F.img, 3 * g, buf, sizeof(buf), 0), 0);
    cr_assert_eq(qed_sync_write(F.img, 5 * g, buf, sizeof(buf), 0), 0);
    cr_assert_eq(qed_sync_write(F.img, 4 * g, buf, sizeof(buf), 0), 0);
    {
        const struct qed_dirty_extent want[] = {
            {g + 5, g - 5, false}, {2 * g, 4 * g, true}, {6 * g, 10, false}};
        expect_runs(F.img, "b", g + 5, 5 * g + 5, want, 3);
    }
    /* @max stops the runs short of @len. */
    cr_assert_eq(qed_bitmap_status(F.img, "b", 0, 16 * MiB, got, 2, &n), 0);
    cr_assert_eq(n, 2);
    cr_assert_eq(got[1].start + got[1].length, 6 * g);
    cr_assert_eq(qed_bitmap_status(F.img, "b", 0, 0, got, 2, &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_eq(qed_bitmap_status(F.img, "nope", 0, 1, got, 2, &n), -ENOENT);
}

/* ---- merge ---- */

Test(bitmap, merge_granularities_and_images)
{
    uint8_t buf[512];
    uint64_t size = 64 * MiB;

    memset(buf, 3, sizeof(buf));
    F.img = open_new("a.qed", size);
    F.img2 = open_new("b.qed", size);
    cr_assert_eq(qed_bitmap_add(F.img, "fine", 512, true), 0);
    cr_assert_eq(qed_bitmap_add(F.img, "coarse", 1 * MiB, true), 0);
    cr_assert_eq(qed_bitmap_add(F.img, "dst", 64 * KiB, true), 0);
    cr_assert_eq(qed_bitmap_enable(F.img, "fine", true), 0);
    cr_assert_eq(qed_sync_write(F.img, 1000, buf, 1, 0), 0);
    cr_assert_eq(qed_sync_write(F.img, 10 * MiB - 512, buf, 512, 0), 0);
    cr_assert_eq(qed_bitmap_enable(F.img, "fine", false), 0);
    cr_assert_eq(qed_bitmap_enable(F.img, "coarse", true), 0);
    cr_assert_eq(qed_sync_write(F.img, 20 * MiB + 5, buf, 1, 0), 0);

    /* Fine into coarser: each dirty byte's 64 KiB granule. */
    cr_assert_eq(qed_bitmap_merge(F.img, "dst", F.img, "fine"), 0);
    /* Coarse into finer: every 64 KiB granule of the 1 MiB one. */
    cr_assert_eq(qed_bitmap_merge(F.img, "dst", F.img, "coarse"), 0);
    {
        const struct qed_dirty_extent want[] = {
            {0, 64 * KiB, true}, {64 * KiB, 10 * MiB - 128 * KiB, false},
            {10 * MiB - 64 * KiB, 64 * KiB, true}, {10 * MiB, 10 * MiB, false},
            {20 * MiB, 1 * MiB, true}, {21 * MiB, size - 21 * MiB, false},
        };
        expect_runs(F.img, "dst", 0, size, want, 6);
    }
    /* Into a bitmap of another image of the same size. */
    cr_assert_eq(qed_bitmap_add(F.img2, "x", 2 * MiB, false), 0);
    cr_assert_eq(qed_bitmap_merge(F.img2, "x", F.img, "fine"), 0);
    {
        const struct qed_dirty_extent want[] = {
            {0, 2 * MiB, true}, {2 * MiB, 6 * MiB, false}, {8 * MiB, 2 * MiB, true},
            {10 * MiB, size - 10 * MiB, false},
        };
        expect_runs(F.img2, "x", 0, size, want, 4);
    }
    cr_assert_eq(qed_bitmap_merge(F.img2, "x", F.img, "none"), -ENOENT);
    cr_assert_eq(qed_bitmap_merge(F.img2, "none", F.img, "fine"), -ENOENT);
    cr_assert_eq(qed_sync_resize(F.img2, 2 * size), 0);
    cr_assert_eq(qed_bitmap_merge(F.img2, "x", F.img, "fine"), -EINVAL);
}

/* ---- resize ---- */

Test(bitmap, resize_grows_with_clean_bits)
{
    uint8_t buf[512];
    uint64_t size = 10 * MiB + 512, g = 1 * MiB;

    memset(buf, 4, sizeof(buf));
    F.img = open_new("a.qed", size);
    cr_assert_eq(qed_bitmap_add(F.img, "b", (uint32_t)g, false), 0);
    cr_assert_eq(qed_sync_write(F.img, size - 512, buf, 512, 0), 0);
    cr_assert_eq(dirty_bytes(F.img, "b"), 512);
    cr_assert_eq(qed_sync_resize(F.img, 100 * MiB), 0);
    cr_assert_eq(dirty_bytes(F.img, "b"), g, "the last granule now covers 1 MiB");
    {
        const struct qed_dirty_extent want[] = {
            {0, 10 * MiB, false}, {10 * MiB, g, true}, {11 * MiB, 89 * MiB, false}};
        expect_runs(F.img, "b", 0, 100 * MiB, want, 3);
    }
    cr_assert_eq(qed_sync_write(F.img, 100 * MiB - 512, buf, 512, 0), 0);
    cr_assert_eq(dirty_bytes(F.img, "b"), 2 * g);
}

/* A resize whose bitmaps would pass the memory limit is refused, unchanged. */
Test(bitmap, resize_over_the_limit)
{
    F.img = open_new("a.qed", 1 * GiB);
    cr_assert_eq(qed_bitmap_add(F.img, "b", 512, false), 0);
    /* 512 B granules over 4 TiB: 1 GiB of bits, over the 512 MiB limit. */
    cr_assert_eq(qed_sync_resize(F.img, 4096 * GiB), -EFBIG);
    cr_assert_eq(qed_size(F.img), 1 * GiB);
    cr_assert_eq(qed_sync_resize(F.img, 2048 * GiB), 0);
    cr_assert_eq(qed_size(F.img), 2048 * GiB);
}

/* A resize whose header write fails shrinks the bitmaps back. */
Test(bitmap, failed_resize_shrinks_back)
{
    uint8_t buf[512];
    uint64_t size = 10 * MiB + 512;
    struct qed_dirty_extent ext[4];
    size_t n = 0;

    memset(buf, 6, sizeof(buf));
    F.img = open_new("a.qed", size);
    cr_assert_eq(qed_bitmap_add(F.img, "b", 1 * MiB, false), 0);
    cr_assert_eq(qed_sync_write(F.img, size - 512, buf, 512, 0), 0);
    qed_aio_test_fail_nth(F.tf.aio, 1u << QED_IO_WRITE, 0, -EIO);
    cr_assert_neq(qed_sync_resize(F.img, 100 * MiB), 0);
    qed_aio_test_fail_nth(F.tf.aio, 0, 0, 0);
    cr_assert_eq(qed_size(F.img), size);
    cr_assert_eq(dirty_bytes(F.img, "b"), 512, "the last granule still ends at the old size");
    cr_assert_eq(qed_bitmap_status(F.img, "b", 0, size, ext, 4, &n), 0);
    cr_assert_eq(n, 2);
    cr_assert_eq(ext[1].start + ext[1].length, size);
}
