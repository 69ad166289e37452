/*
 * test-bitmap-store.c - dirty bitmaps on disk (issue 15, milestone 2):
 * a round trip through close and open, the in-use rule after a crash (a
 * copy of the file taken while it is open read-write), QEMU's invalidation
 * (the autoclear bit cleared), malformed and torn directories, growing the
 * header area over the L1 table, L2 tables and data clusters that follow
 * it (data and qed_check verified after), read-only opens, resize, and the
 * same growth with cache=none (O_DIRECT, on /var/tmp) and --reserve.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <ev.h>

#include "bitmap-dir.h"
#include "fixture.h"
#include "qed-format.h"
#include "qed-io-test.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define GiB (1024ull * MiB)
#define CS (64 * KiB)

static struct {
    struct test_fixture tf;
    qed_image *img;
    bool real_aio;              /* a real engine (not the test backend) */
    char msg[1024];             /* the last error logged */
} F;

static void keep_log(enum qed_log_level level, const char *msg, void *opaque)
{
    (void)opaque;
    if (level <= QED_LOG_WARN)
        snprintf(F.msg, sizeof(F.msg), "%s", msg);
}

static void setup_in(const char *base)
{
    memset(&F, 0, sizeof(F));
    if (!base) {
        tf_setup(&F.tf, "bmstore", QED_AIO_TEST);
    } else {
        tf_init(&F.tf, NULL);
        snprintf(F.tf.dir, sizeof(F.tf.dir), "%s/qed-test-bmstore-XXXXXX", base);
        cr_assert_not_null(mkdtemp(F.tf.dir), "mkdtemp: %s", strerror(errno));
        tf_cleanup_on_timeout(F.tf.dir, 0);
        cr_assert_eq(tf_new_aio(&F.tf, QED_AIO_THREADS), 0);
        F.real_aio = true;
    }
    qed_set_log(keep_log, NULL, QED_LOG_WARN);
}

static void setup(void)
{
    setup_in(NULL);
}

static void setup_var_tmp(void)
{
    /* Criterion may run the suite's .init first: drop its /tmp directory. */
    if (F.tf.loop)
        tf_teardown(&F.tf);
    setup_in("/var/tmp");
}

static void teardown(void)
{
    if (F.real_aio && F.img)
        qed_close(F.img), F.img = NULL;
    tf_close_left_open(&F.tf, &F.img);
    tf_teardown(&F.tf);
    qed_set_log(NULL, NULL, QED_LOG_WARN);
}

TestSuite(bmstore, .init = setup, .fini = teardown, .timeout = 120);

static qed_image *open_rw(const char *name)
{
    return tf_open(&F.tf, name, NULL);
}

static qed_image *open_ro(const char *name)
{
    struct qed_open_opts ro = {.read_only = true};

    return tf_open(&F.tf, name, &ro);
}

static void close_img(qed_image **img)
{
    int r = qed_close(*img);

    *img = NULL;
    cr_assert_eq(r, 0, "qed_close: %s", strerror(-r));
}

static struct qed_bitmap_info info_of(qed_image *img, const char *name)
{
    struct qed_bitmap_info info;
    int i = qed_bitmap_find(img, name);

    cr_assert_geq(i, 0, "no bitmap %s", name);
    cr_assert_eq(qed_bitmap_info(img, (unsigned)i, &info), 0);
    return info;
}

/* The runs of @name over the whole disk, as "start+len:d" words. */
static void runs_of(qed_image *img, const char *name, char *out, size_t outlen)
{
    struct qed_dirty_extent ext[64];
    size_t n = 0, pos = 0;
    int r = qed_bitmap_status(img, name, 0, qed_size(img), ext, 64, &n);

    cr_assert_eq(r, 0, "status %s: %s", name, strerror(-r));
    out[0] = '\0';
    for (size_t i = 0; i < n && pos < outlen; i++)
        pos += (size_t)snprintf(out + pos, outlen - pos, "%" PRIu64 "+%" PRIu64 ":%d ",
                                ext[i].start, ext[i].length, ext[i].dirty);
}

static void assert_check_clean(const char *name)
{
    struct qed_check_result res = tf_disk_check(&F.tf, name);

    cr_assert_eq(res.corruptions, 0, "%s: %" PRIu64 " corruptions", name, res.corruptions);
    cr_assert_eq(res.leaks, 0, "%s: %" PRIu64 " leaks", name, res.leaks);
}

static uint32_t header_size_of(qed_image *img)
{
    struct qed_info info;

    qed_get_info(img, &info);
    return info.header_size;
}

/* The raw header of file @name. */
static void rw_header(const char *name, struct qed_header *h, bool write)
{
    uint8_t raw[QED_HEADER_BYTES];
    int fd = open(tf_path(&F.tf, name), O_RDWR);

    cr_assert_geq(fd, 0);
    if (write) {
        qed_header_encode(h, raw);
        cr_assert_eq(pwrite(fd, raw, sizeof(raw), 0), (ssize_t)sizeof(raw));
    } else {
        cr_assert_eq(pread(fd, raw, sizeof(raw), 0), (ssize_t)sizeof(raw));
        qed_header_decode(raw, h);
    }
    close(fd);
}

/* Copy file @from to @to (a crash image of a file that is open). */
static void copy_file(const char *from, const char *to)
{
    char cmd[2 * PATH_MAX];

    snprintf(cmd, sizeof(cmd), "cp --sparse=always '%s' '%s'", tf_path(&F.tf, from),
             tf_path(&F.tf, to));
    cr_assert_eq(system(cmd), 0);
}

/* a.qed of @size with bitmaps a (64 KiB), b (512 B, disabled), c (1 MiB);
 * writes at 0, 1 MiB + 5 and size - 512. */
static void make_image(uint64_t size)
{
    uint8_t buf[4096];

    memset(buf, 0xab, sizeof(buf));
    tf_create(&F.tf, "a.qed", size, CS, 4, NULL, QED_BACKING_PROBE);
    F.img = open_rw("a.qed");
    cr_assert_eq(qed_bitmap_add(F.img, "a", 0, false), 0);
    cr_assert_eq(qed_bitmap_add(F.img, "b", 512, true), 0);
    cr_assert_eq(qed_bitmap_add(F.img, "c", 1 * MiB, false), 0);
    cr_assert_eq(qed_sync_write(F.img, 0, buf, 4096, 0), 0);
    cr_assert_eq(qed_sync_write(F.img, 1 * MiB + 5, buf, 100, 0), 0);
    cr_assert_eq(qed_sync_write(F.img, size - 512, buf, 512, 0), 0);
    cr_assert_eq(qed_bitmap_enable(F.img, "b", true), 0);
    cr_assert_eq(qed_sync_write_zeroes(F.img, 3 * MiB, 512, 0), 0);
}

Test(bmstore, round_trip)
{
    char before[3][2048], after[2048];
    const char *names[] = {"a", "b", "c"};
    struct qed_info info;

    make_image(64 * MiB);
    for (int i = 0; i < 3; i++)
        runs_of(F.img, names[i], before[i], sizeof(before[i]));
    cr_assert_eq(header_size_of(F.img), 1);
    close_img(&F.img);
    assert_check_clean("a.qed");

    F.img = open_ro("a.qed");
    cr_assert_eq(qed_bitmap_count(F.img), 3);
    cr_assert_gt(header_size_of(F.img), 1, "the header area did not grow");
    qed_get_info(F.img, &info);
    cr_assert_eq(info.autoclear_features & QED_AF_BITMAPS, QED_AF_BITMAPS);
    for (int i = 0; i < 3; i++) {
        struct qed_bitmap_info bi = info_of(F.img, names[i]);

        cr_assert_str_eq(bi.name, names[i], "the order changed");
        cr_assert(!bi.inconsistent);
        cr_assert(bi.enabled);
        runs_of(F.img, names[i], after, sizeof(after));
        cr_assert_str_eq(after, before[i], "bitmap %s changed", names[i]);
    }
    cr_assert_eq(info_of(F.img, "b").granularity, 512);
    close_img(&F.img);

    /* A read-write open and close keeps them, and a second store reuses the area. */
    F.img = open_rw("a.qed");
    cr_assert_eq(qed_bitmap_remove(F.img, "a"), 0);
    cr_assert_eq(qed_bitmap_enable(F.img, "c", false), 0);
    close_img(&F.img);
    F.img = open_ro("a.qed");
    cr_assert_eq(qed_bitmap_count(F.img), 2);
    cr_assert_eq(qed_bitmap_find(F.img, "b"), 0);
    cr_assert(!info_of(F.img, "c").enabled);
    runs_of(F.img, "c", after, sizeof(after));
    cr_assert_str_eq(after, before[2]);
    close_img(&F.img);
    assert_check_clean("a.qed");
}

/* A crash while open read-write (a copy of the file taken then): in use, so
 * inconsistent; only removal is allowed on it. */
Test(bmstore, in_use_after_crash)
{
    struct qed_dirty_extent ext[4];
    size_t n;
    uint8_t buf[512] = {1};

    make_image(64 * MiB);
    close_img(&F.img);
    F.img = open_rw("a.qed");
    cr_assert_eq(qed_sync_write(F.img, 8 * MiB, buf, 512, 0), 0);
    copy_file("a.qed", "crash.qed");
    close_img(&F.img);

    F.img = open_ro("crash.qed");
    {
        struct qed_info info;

        qed_get_info(F.img, &info);
        cr_assert(info.dirty, "the crash copy should need a check (NEED_CHECK set)");
    }
    cr_assert_eq(qed_bitmap_count(F.img), 3);
    cr_assert(info_of(F.img, "a").inconsistent);
    cr_assert_eq(info_of(F.img, "a").dirty_bytes, 0);
    cr_assert_eq(qed_bitmap_status(F.img, "a", 0, 512, ext, 4, &n), -EUCLEAN);
    close_img(&F.img);
    /* The read-write open repairs (NEED_CHECK) and keeps the bitmaps. */
    F.img = open_rw("crash.qed");
    cr_assert_eq(qed_bitmap_count(F.img), 3, "the repair lost bitmaps");
    cr_assert_eq(qed_bitmap_clear(F.img, "a"), -EUCLEAN);
    cr_assert_eq(qed_bitmap_enable(F.img, "a", true), -EUCLEAN);
    cr_assert_eq(qed_bitmap_merge(F.img, "b", F.img, "a"), -EUCLEAN);
    cr_assert_eq(qed_bitmap_merge(F.img, "a", F.img, "b"), -EUCLEAN);
    cr_assert_eq(qed_sync_write(F.img, 9 * MiB, buf, 512, 0), 0);
    cr_assert_eq(qed_bitmap_remove(F.img, "a"), 0);
    cr_assert_eq(qed_bitmap_add(F.img, "a", 0, false), 0, "a name freed by removal");
    close_img(&F.img);
    /* Still inconsistent after a clean close: never trusted again. */
    F.img = open_ro("crash.qed");
    cr_assert(info_of(F.img, "b").inconsistent);
    cr_assert(!info_of(F.img, "a").inconsistent);
    close_img(&F.img);
    assert_check_clean("crash.qed");

    /* The original, closed cleanly, kept them, with the write recorded. */
    F.img = open_ro("a.qed");
    cr_assert(!info_of(F.img, "a").inconsistent);
    cr_assert_eq(qed_bitmap_status(F.img, "a", 8 * MiB, 64 * KiB, ext, 4, &n), 0);
    cr_assert(n == 1 && ext[0].dirty);
}

/* QEMU opening the image read-write clears the autoclear bit. */
Test(bmstore, autoclear_cleared_means_inconsistent)
{
    struct qed_header h;

    make_image(64 * MiB);
    close_img(&F.img);
    rw_header("a.qed", &h, false);
    cr_assert_eq(h.autoclear_features, QED_AF_BITMAPS);
    h.autoclear_features = 0;
    rw_header("a.qed", &h, true);
    F.img = open_ro("a.qed");
    cr_assert_eq(qed_bitmap_count(F.img), 3);
    for (unsigned i = 0; i < 3; i++) {
        struct qed_bitmap_info bi;

        cr_assert_eq(qed_bitmap_info(F.img, i, &bi), 0);
        cr_assert(bi.inconsistent, "%s trusted without the autoclear bit", bi.name);
    }
    close_img(&F.img);
    /* A read-write open and close sets the bit again; they stay inconsistent. */
    F.img = open_rw("a.qed");
    close_img(&F.img);
    rw_header("a.qed", &h, false);
    cr_assert_eq(h.autoclear_features, QED_AF_BITMAPS);
    F.img = open_ro("a.qed");
    cr_assert(info_of(F.img, "c").inconsistent);
}

/*
 * An image grown by another writer (QEMU clears the autoclear bit and sets
 * a size at which bitmap b's bits would be 1 GiB, over the 512 MiB limit):
 * its inconsistent bitmaps hold no bits, so the image still opens and b can
 * be removed, as the rules promise.  It used to fail to open with -EFBIG.
 */
Test(bmstore, inconsistent_bitmaps_never_count_against_the_limits)
{
    struct qed_header h;

    make_image(64 * MiB);
    close_img(&F.img);
    rw_header("a.qed", &h, false);
    h.autoclear_features = 0;
    h.image_size = 4096 * GiB;   /* b: 2^33 bits at 512 B */
    rw_header("a.qed", &h, true);
    F.img = open_ro("a.qed");
    cr_assert(info_of(F.img, "b").inconsistent);
    cr_assert_eq(info_of(F.img, "b").dirty_bytes, 0);
    close_img(&F.img);
    F.img = open_rw("a.qed");
    cr_assert_eq(qed_bitmap_count(F.img), 3);
    cr_assert_eq(qed_bitmap_remove(F.img, "b"), 0);
    cr_assert_eq(qed_bitmap_clear(F.img, "a"), -EUCLEAN);
    /* A resize leaves the bitless ones alone. */
    cr_assert_eq(qed_sync_resize(F.img, 4100 * GiB), 0);
    close_img(&F.img);
    F.img = open_ro("a.qed");
    cr_assert_eq(qed_bitmap_count(F.img), 2);
    cr_assert_lt(qed_bitmap_find(F.img, "b"), 0);
    cr_assert(info_of(F.img, "a").inconsistent && info_of(F.img, "c").inconsistent);
}

/* Overwrite slot @s of a.qed with @d encoded (or, with @d NULL, flip a byte). */
static void poke_slot(int s, const struct qed_bmdir *d)
{
    struct qed_header h;
    uint8_t *buf = calloc(1, QED_BMDIR_SLOT);
    int fd = open(tf_path(&F.tf, "a.qed"), O_RDWR);
    uint64_t off;

    cr_assert(buf && fd >= 0);
    rw_header("a.qed", &h, false);
    off = qed_bmdir_area_start(&h) + (uint64_t)s * QED_BMDIR_SLOT;
    cr_assert_eq(pread(fd, buf, QED_BMDIR_SLOT, (off_t)off), (ssize_t)QED_BMDIR_SLOT);
    if (d)
        qed_bmdir_encode(d, buf);
    else
        buf[QED_BMDIR_HDR + 40] ^= 0x40; /* inside the first entry's name */
    cr_assert_eq(pwrite(fd, buf, QED_BMDIR_SLOT, (off_t)off), (ssize_t)QED_BMDIR_SLOT);
    close(fd);
    free(buf);
}

/* The current directory of a.qed, and its slot. */
static int current_dir(struct qed_bmdir *d)
{
    struct qed_header h;
    struct qed_bmdir other;
    uint8_t *buf = malloc(QED_BMDIR_SLOT);
    int fd = open(tf_path(&F.tf, "a.qed"), O_RDONLY), r0, r1;
    char why[128];

    cr_assert(buf && fd >= 0);
    rw_header("a.qed", &h, false);
    cr_assert_eq(pread(fd, buf, QED_BMDIR_SLOT, (off_t)qed_bmdir_area_start(&h)),
                 (ssize_t)QED_BMDIR_SLOT);
    r0 = qed_bmdir_decode(buf, d, why, sizeof(why));
    cr_assert_eq(pread(fd, buf, QED_BMDIR_SLOT,
                       (off_t)(qed_bmdir_area_start(&h) + QED_BMDIR_SLOT)),
                 (ssize_t)QED_BMDIR_SLOT);
    r1 = qed_bmdir_decode(buf, &other, why, sizeof(why));
    close(fd);
    free(buf);
    cr_assert(r0 == 0 || r1 == 0);
    if (r1 == 0 && (r0 != 0 || other.generation > d->generation)) {
        *d = other;
        return 1;
    }
    return 0;
}

Test(bmstore, malformed_directories_are_refused)
{
    struct qed_bmdir d, bad;
    struct qed_header h;
    qed_image *img = NULL;
    char err[512] = "";
    int s;

    make_image(64 * MiB);
    close_img(&F.img);
    s = current_dir(&d);

    /* A valid checksum over wrong contents: each refused, naming the problem. */
    bad = d;
    bad.e[0].granularity = 1000;
    poke_slot(s, &bad);
    cr_assert_neq(qed_open(F.tf.aio, tf_path(&F.tf, "a.qed"), NULL, &img, err, sizeof(err)),
                  0);
    cr_assert(strstr(err, "a.qed") && strstr(err, "granularity"), "message: %s", err);

    bad = d;
    strcpy(bad.e[1].name, bad.e[0].name);
    poke_slot(s, &bad);
    cr_assert_neq(qed_open(F.tf.aio, tf_path(&F.tf, "a.qed"), NULL, &img, err, sizeof(err)),
                  0);
    cr_assert(strstr(err, "twice"), "message: %s", err);

    bad = d;
    bad.e[0].data_offset = 0;
    poke_slot(s, &bad);
    cr_assert_neq(qed_open(F.tf.aio, tf_path(&F.tf, "a.qed"), NULL, &img, err, sizeof(err)),
                  0);
    cr_assert(strstr(err, "outside the bitmap area"), "message: %s", err);

    bad = d;
    bad.e[2].data_offset = bad.e[1].data_offset;
    poke_slot(s, &bad);
    cr_assert_neq(qed_open(F.tf.aio, tf_path(&F.tf, "a.qed"), NULL, &img, err, sizeof(err)),
                  0);
    cr_assert(strstr(err, "overlap") || strstr(err, "bytes of bits"), "message: %s", err);

    bad = d;
    bad.e[0].flags |= 0x100;
    poke_slot(s, &bad);
    cr_assert_neq(qed_open(F.tf.aio, tf_path(&F.tf, "a.qed"), NULL, &img, err, sizeof(err)),
                  0);
    cr_assert(strstr(err, "unknown flags"), "message: %s", err);

    /* Both slots damaged: a bad checksum is refused too (read-only as well). */
    poke_slot(s, &d);
    poke_slot(0, NULL);
    poke_slot(1, NULL);
    cr_assert_neq(qed_open(F.tf.aio, tf_path(&F.tf, "a.qed"), NULL, &img, err, sizeof(err)),
                  0);
    cr_assert(strstr(err, "a.qed: malformed bitmap directory") && strstr(err, "checksum"),
              "message: %s", err);
    {
        struct qed_open_opts ro = {.read_only = true};
        cr_assert_neq(qed_open(F.tf.aio, tf_path(&F.tf, "a.qed"), &ro, &img, err,
                               sizeof(err)), 0);
    }
    /* Without the autoclear bit (another writer had it), ignored with a warning. */
    rw_header("a.qed", &h, false);
    h.autoclear_features = 0;
    rw_header("a.qed", &h, true);
    F.img = open_rw("a.qed");
    cr_assert_eq(qed_bitmap_count(F.img), 0);
    cr_assert(strstr(F.msg, "damaged bitmap directory"), "log: %s", F.msg);
    close_img(&F.img);
    assert_check_clean("a.qed");
}

/* A torn write of the current slot: the other one (in use) is taken. */
Test(bmstore, torn_slot_falls_back_to_the_other)
{
    struct qed_bmdir d;
    int s;

    make_image(64 * MiB);
    close_img(&F.img);
    /* Both slots written: the open marks them in use in one, close stores
     * into the other. */
    F.img = open_rw("a.qed");
    close_img(&F.img);
    s = current_dir(&d);
    poke_slot(s, NULL);
    F.img = open_ro("a.qed");
    cr_assert_eq(qed_bitmap_count(F.img), 3);
    cr_assert(info_of(F.img, "a").inconsistent, "the older slot was written at open: in use");
}

/* Growth over L1, L2 tables and data right after the header. */
static void relocation_over(const struct qed_open_opts *o, uint64_t size)
{
    static const uint64_t at[] = {0, 64 * KiB, 1 * MiB, 100 * MiB, 700 * MiB};
    uint8_t w[CS], r[CS];
    struct qed_info info0, info1;
    char runs[2048], runs2[2048];

    tf_create(&F.tf, "a.qed", size, CS, 4, NULL, QED_BACKING_PROBE);
    F.img = tf_open(&F.tf, "a.qed", o);
    for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
        tf_fill(w, sizeof(w), (uint32_t)i + 1);
        cr_assert_eq(qed_sync_write(F.img, at[i], w, sizeof(w), 0), 0);
    }
    qed_get_info(F.img, &info0);
    /* 512 B granules over 1 GiB: 256 KiB of bits, so the area grows past
     * the L1 table (64 KiB..320 KiB), the L2 table and the data clusters. */
    cr_assert_eq(qed_bitmap_add(F.img, "fine", 512, false), 0);
    cr_assert_eq(qed_sync_write(F.img, 5 * MiB, w, 512, 0), 0);
    runs_of(F.img, "fine", runs, sizeof(runs));
    close_img(&F.img);
    assert_check_clean("a.qed");

    F.img = tf_open(&F.tf, "a.qed", o);
    qed_get_info(F.img, &info1);
    cr_assert_gt((uint64_t)info1.header_size * CS, info0.l1_table_offset + 3 * CS,
                 "the area (%u clusters) did not cover the L1, L2 and data", info1.header_size);
    cr_assert_neq(info1.l1_table_offset, info0.l1_table_offset);
    for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
        tf_fill(w, sizeof(w), (uint32_t)i + 1);
        cr_assert_eq(qed_sync_read(F.img, at[i], r, sizeof(r)), 0);
        cr_assert(memcmp(w, r, sizeof(r)) == 0, "data at %" PRIu64 " changed", at[i]);
    }
    cr_assert(!info_of(F.img, "fine").inconsistent);
    runs_of(F.img, "fine", runs2, sizeof(runs2));
    cr_assert_str_eq(runs2, runs);
    /* The image keeps working: a new allocation, read back after reopening. */
    tf_fill(w, sizeof(w), 99);
    cr_assert_eq(qed_sync_write(F.img, 300 * MiB, w, sizeof(w), 0), 0);
    close_img(&F.img);
    assert_check_clean("a.qed");
    F.img = tf_open(&F.tf, "a.qed", o);
    cr_assert_eq(qed_sync_read(F.img, 300 * MiB, r, sizeof(r)), 0);
    cr_assert(memcmp(w, r, sizeof(r)) == 0);
    cr_assert_eq(qed_sync_read(F.img, 0, r, sizeof(r)), 0);
    tf_fill(w, sizeof(w), 1);
    cr_assert(memcmp(w, r, sizeof(r)) == 0);
    close_img(&F.img);
}

Test(bmstore, relocation_keeps_data_and_check_clean)
{
    relocation_over(NULL, 1 * GiB);
}

Test(bmstore, relocation_with_reserve)
{
    struct qed_open_opts o = {.reserve = QED_RESERVE_ON};

    relocation_over(&o, 1 * GiB);
}

Test(bmstore, relocation_with_cache_none, .init = setup_var_tmp)
{
    struct qed_open_opts o = {.cache = QED_CACHE_NONE};
    char err[512];
    qed_image *img = NULL;

    tf_create(&F.tf, "probe.qed", 1 * MiB, CS, 4, NULL, QED_BACKING_PROBE);
    if (qed_open(F.tf.aio, tf_path(&F.tf, "probe.qed"), &o, &img, err, sizeof(err)) < 0)
        cr_skip_test("cache=none is not available on /var/tmp: %s", err);
    qed_close(img);
    relocation_over(&o, 1 * GiB);
}

/* Resized while open: stored for the new size. */
Test(bmstore, resize_is_stored)
{
    uint8_t buf[512] = {2};
    char runs[2048], runs2[2048];

    make_image(64 * MiB);
    cr_assert_eq(qed_sync_resize(F.img, 200 * MiB), 0);
    cr_assert_eq(qed_sync_write(F.img, 200 * MiB - 512, buf, 512, 0), 0);
    runs_of(F.img, "c", runs, sizeof(runs));
    close_img(&F.img);
    F.img = open_ro("a.qed");
    cr_assert(!info_of(F.img, "c").inconsistent);
    runs_of(F.img, "c", runs2, sizeof(runs2));
    cr_assert_str_eq(runs2, runs);
}

/* An image without bitmaps is left as it was: no growth, no bit. */
Test(bmstore, no_bitmaps_no_change)
{
    struct qed_header h;

    tf_create(&F.tf, "a.qed", 64 * MiB, CS, 4, NULL, QED_BACKING_PROBE);
    F.img = open_rw("a.qed");
    close_img(&F.img);
    rw_header("a.qed", &h, false);
    cr_assert_eq(h.header_size, 1);
    cr_assert_eq(h.autoclear_features, 0);
}

/* A damaged directory ignored (the bit clear) never comes back: the next
 * store zeroes both slots before writing its own, even over a damaged one
 * of a higher generation. */
Test(bmstore, ignored_directory_never_comes_back)
{
    struct qed_bmdir d, bad;
    struct qed_header h;
    int s;

    make_image(64 * MiB);
    close_img(&F.img);
    s = current_dir(&d);
    bad = d;
    bad.generation = d.generation + 100;
    bad.e[0].granularity = 1000;
    poke_slot(1 - s, &bad);
    rw_header("a.qed", &h, false);
    h.autoclear_features = 0;
    rw_header("a.qed", &h, true);
    F.img = open_rw("a.qed");
    cr_assert_eq(qed_bitmap_count(F.img), 0);
    cr_assert_eq(qed_bitmap_add(F.img, "n", 0, false), 0);
    close_img(&F.img);
    F.img = open_ro("a.qed");
    cr_assert_eq(qed_bitmap_count(F.img), 1);
    cr_assert(!info_of(F.img, "n").inconsistent);
    close_img(&F.img);
    assert_check_clean("a.qed");
}

/* After a failed flush nothing is stored: the bitmaps stay in use on disk. */
Test(bmstore, failed_flush_leaves_them_inconsistent)
{
    uint8_t buf[512] = {3};

    make_image(64 * MiB);
    close_img(&F.img);
    F.img = open_rw("a.qed");
    cr_assert_eq(qed_sync_write(F.img, 9 * MiB, buf, 512, 0), 0);
    qed_aio_test_fail_nth(F.tf.aio, 1u << QED_IO_FSYNC, 0, -EIO);
    cr_assert_neq(qed_sync_flush(F.img), 0);
    qed_aio_test_fail_nth(F.tf.aio, 0, 0, 0);
    cr_assert_neq(qed_close(F.img), 0, "close after a failed flush must fail");
    F.img = NULL;
    F.img = open_ro("a.qed");
    cr_assert_eq(qed_bitmap_count(F.img), 3);
    cr_assert(info_of(F.img, "a").inconsistent);
    cr_assert(info_of(F.img, "c").inconsistent);
}

/* Make a @size image (make_image), close it, and open its file for raw
 * writes: returns the descriptor, sets *@info and *@l1e (L1 entry 0, as
 * stored, little-endian). */
static int make_image_raw(uint64_t size, struct qed_info *info, uint64_t *l1e)
{
    int fd;

    make_image(size);
    close_img(&F.img);
    F.img = open_ro("a.qed");
    qed_get_info(F.img, info);
    close_img(&F.img);
    fd = open(tf_path(&F.tf, "a.qed"), O_RDWR);
    cr_assert_geq(fd, 0);
    cr_assert_eq(pread(fd, l1e, 8, (off_t)info->l1_table_offset), 8);
    cr_assert_neq(*l1e, 0, "no L2 table for the first 2 GiB");
    return fd;
}

/* A repair that zeroes an entry changes what the cluster reads (an error
 * before, zeros now): the bitmaps record it. */
Test(bmstore, repair_marks_the_repaired_clusters)
{
    struct qed_open_opts o = {.repair_corrupt = true};
    struct qed_dirty_extent ext[4];
    struct qed_info info;
    uint64_t l1e, bad = (uint64_t)1 << 40;
    size_t n = 0;
    int fd = make_image_raw(64 * MiB, &info, &l1e);

    /* L2 entry 100: guest bytes [100 * 64 KiB, 101 * 64 KiB), unwritten so far. */
    cr_assert_eq(pwrite(fd, &bad, 8, (off_t)(le64toh(l1e) + 100 * 8)), 8);
    close(fd);
    F.img = tf_open(&F.tf, "a.qed", &o);
    cr_assert_eq(qed_bitmap_status(F.img, "a", 100 * CS, CS, ext, 4, &n), 0);
    cr_assert(n == 1 && ext[0].dirty, "the repaired cluster is not marked dirty");
    cr_assert_eq(qed_bitmap_status(F.img, "a", 101 * CS, CS, ext, 4, &n), 0);
    cr_assert(n == 1 && !ext[0].dirty);
    close_img(&F.img);
    assert_check_clean("a.qed");
}

/* Two L1 entries name one table (a corruption the repair leaves): an entry
 * it zeroes changes what both guest ranges read, and both are marked.  The
 * check judges the table's entries once, through the first L1 entry; the
 * second range was once left unmarked. */
Test(bmstore, repair_marks_the_range_of_each_table_naming_the_entry)
{
    struct qed_open_opts o = {.repair_corrupt = true};
    struct qed_dirty_extent ext[4];
    struct qed_info info;
    uint64_t l1e, bad = (uint64_t)1 << 40, cover = 2 * GiB; /* 32768 entries of 64 KiB */
    size_t n = 0;
    int fd = make_image_raw(3 * GiB, &info, &l1e);

    cr_assert_eq((uint64_t)info.table_size * CS / 8 * CS, cover);
    cr_assert_eq(pwrite(fd, &l1e, 8, (off_t)info.l1_table_offset + 8), 8);
    cr_assert_eq(pwrite(fd, &bad, 8, (off_t)(le64toh(l1e) + 100 * 8)), 8);
    close(fd);
    F.img = tf_open(&F.tf, "a.qed", &o);
    cr_assert_eq(qed_bitmap_status(F.img, "a", 100 * CS, CS, ext, 4, &n), 0);
    cr_assert(n == 1 && ext[0].dirty, "the range through L1[0] is not marked dirty");
    cr_assert_eq(qed_bitmap_status(F.img, "a", cover + 100 * CS, CS, ext, 4, &n), 0);
    cr_assert(n == 1 && ext[0].dirty, "the range through L1[1] is not marked dirty");
    cr_assert_eq(qed_bitmap_status(F.img, "a", cover + 101 * CS, CS, ext, 4, &n), 0);
    cr_assert(n == 1 && !ext[0].dirty);
    close_img(&F.img);
}
