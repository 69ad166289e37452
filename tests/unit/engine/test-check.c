/*
 * test-check.c - unit tests of check and repair (check.c) on hand-corrupted
 * images.
 *
 * Each test creates an image with qed_create, writes data with
 * qed_sync_write, closes it, then corrupts table entries with pwrite and
 * checks the verdict: corruptions, leaks, allocated and fragmented counts,
 * what repair changes on disk, and that the data of other clusters survives.
 * Where QEMU can open the image, `qemu-img check` is the oracle: its exit
 * code (0 clean, 2 corruption, 3 leaks only) and its JSON counts must agree
 * with ours.
 *
 * The default layout (4 KiB clusters, table size 2, 16 MiB; QEMU cannot
 * open table size 1, and its leak count is only right for small files):
 *   header 0..4K, L1 4K..12K, then tables and data allocated at the end.
 * Offsets of tables and data are always read back from the file, never
 * assumed.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <ev.h>

#include "fixture.h"
#include "qed-image.h"

#define CS 4096u
#define TS 2u
#define TABLE (CS * TS)
#define COVER ((uint64_t)TABLE / 8 * CS) /* guest bytes per L2 table: 4 MiB */
#define IMG_SIZE (16u * 1024 * 1024)
#define NAME "t.qed"

static struct test_fixture T; /* loop, QED_AIO_AUTO engine, directory */
static char path[128];
static char err[1024];

/* ---- fixture ---- */

static void setup(void)
{
    tf_setup(&T, "check", QED_AIO_AUTO);
    tf_cleanup_on_timeout(T.dir, 150);
    snprintf(path, sizeof(path), "%s/%s", T.dir, NAME);
}

static void teardown(void)
{
    qed_set_log(NULL, NULL, QED_LOG_WARN);
    tf_teardown(&T);
}

TestSuite(check, .init = setup, .fini = teardown, .timeout = 120);

/* ---- file helpers ---- */

static uint64_t rd64(uint64_t off)
{
    uint64_t v = 0;
    int fd = open(path, O_RDONLY);
    cr_assert(fd >= 0);
    cr_assert_eq(pread(fd, &v, 8, (off_t)off), 8);
    close(fd);
    return le64toh(v);
}

static void wr64(uint64_t off, uint64_t v)
{
    uint64_t le = htole64(v);
    int fd = open(path, O_WRONLY);
    cr_assert(fd >= 0);
    cr_assert_eq(pwrite(fd, &le, 8, (off_t)off), 8);
    close(fd);
}

static struct qed_header hdr(void)
{
    uint8_t raw[QED_HEADER_BYTES];
    struct qed_header h;
    int fd = open(path, O_RDONLY);
    cr_assert(fd >= 0);
    cr_assert_eq(pread(fd, raw, sizeof(raw), 0), (ssize_t)sizeof(raw));
    close(fd);
    qed_header_decode(raw, &h);
    return h;
}

static void set_hdr(const struct qed_header *h)
{
    uint8_t raw[QED_HEADER_BYTES];
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    cr_assert(fd >= 0);
    qed_header_encode(h, raw);
    cr_assert_eq(pwrite(fd, raw, sizeof(raw), 0), (ssize_t)sizeof(raw));
    close(fd);
}

static void set_need_check(void)
{
    struct qed_header h = hdr();
    h.features |= QED_F_NEED_CHECK;
    set_hdr(&h);
}

static uint64_t fsize(void)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    return (uint64_t)st.st_size;
}

static void grow_file(uint64_t bytes)
{
    cr_assert_eq(truncate(path, (off_t)(fsize() + bytes)), 0);
}

/* File offset of L1 entry @i, and of entry @j of the L2 table L1[@i] names. */
static uint64_t l1_at(uint64_t i)
{
    return hdr().l1_table_offset + 8 * i;
}

static uint64_t l1(uint64_t i)
{
    return rd64(l1_at(i));
}

static uint64_t l2_at(uint64_t i, uint64_t j)
{
    uint64_t t = l1(i);
    cr_assert_neq(t, 0, "L1 entry %" PRIu64 " is empty", i);
    return t + 8 * j;
}

static uint64_t l2(uint64_t i, uint64_t j)
{
    return rd64(l2_at(i, j));
}

/* ---- data helpers ---- */

static uint8_t pat(uint64_t pos, unsigned seed)
{
    return (uint8_t)(pos * 11 + (pos >> 12) * 29 + seed * 53 + 1);
}

static qed_image *open_rw(void)
{
    qed_image *img;
    int r = qed_open(T.aio, path, NULL, &img, err, sizeof(err));
    cr_assert_eq(r, 0, "open: %d %s", r, err);
    return img;
}

/* Read-write, asking for the repair of invalid entries of a clean image. */
static qed_image *open_rw_repair(void)
{
    struct qed_open_opts o = {.repair_corrupt = true};
    qed_image *img;
    int r = qed_open(T.aio, path, &o, &img, err, sizeof(err));
    cr_assert_eq(r, 0, "open: %d %s", r, err);
    return img;
}

static void write_clusters(qed_image *img, uint64_t first, uint64_t n, unsigned seed)
{
    size_t len = n * CS;
    uint64_t off = first * CS;
    uint8_t *b = malloc(len);
    for (size_t i = 0; i < len; i++)
        b[i] = pat(off + i, seed);
    cr_assert_eq(qed_sync_write(img, off, b, len, 0), 0);
    free(b);
}

/* Create the image and write clusters [first, first+n) for each pair in @runs. */
static void build(const uint64_t (*runs)[2], size_t nruns)
{
    struct qed_create_opts o = {.size = IMG_SIZE, .cluster_size = CS, .table_size = TS};
    cr_assert_eq(qed_create(path, &o, err, sizeof(err)), 0, "create: %s", err);
    qed_image *img = open_rw();
    for (size_t i = 0; i < nruns; i++)
        write_clusters(img, runs[i][0], runs[i][1], 1);
    cr_assert_eq(qed_close(img), 0);
}

/* The default image: guest clusters 0, 1 and 2 written in one request. */
static void build3(void)
{
    static const uint64_t runs[][2] = {{0, 3}};
    build(runs, 1);
}

/* Read guest cluster @c through the library (read-only); returns the request result. */
static int read_cluster(uint64_t c, uint8_t *buf)
{
    struct qed_open_opts o = {.read_only = true};
    qed_image *img;
    cr_assert_eq(qed_open(T.aio, path, &o, &img, err, sizeof(err)), 0, "open: %s", err);
    int r = qed_sync_read(img, c * CS, buf, CS);
    cr_assert_eq(qed_close(img), 0);
    return r;
}

static void expect_cluster_data(uint64_t c, unsigned seed)
{
    uint8_t b[CS];
    cr_assert_eq(read_cluster(c, b), 0, "reading guest cluster %" PRIu64, c);
    for (unsigned i = 0; i < CS; i++)
        cr_assert_eq(b[i], pat(c * CS + i, seed), "guest cluster %" PRIu64 " byte %u", c, i);
}

static void expect_cluster_zero(uint64_t c)
{
    uint8_t b[CS];
    memset(b, 0xcc, sizeof(b));
    cr_assert_eq(read_cluster(c, b), 0, "reading guest cluster %" PRIu64, c);
    for (unsigned i = 0; i < CS; i++)
        cr_assert_eq(b[i], 0, "guest cluster %" PRIu64 " byte %u", c, i);
}

/* ---- check helpers ---- */

/* Check without repair on a read-only, check-only open (no engine). */
static struct qed_check_result check_ro(void)
{
    struct qed_open_opts o = {.read_only = true};
    struct qed_check_result res;
    qed_image *img;
    cr_assert_eq(qed_open(NULL, path, &o, &img, err, sizeof(err)), 0, "open: %s", err);
    memset(&res, 0xa5, sizeof(res));
    cr_assert_eq(qed_check(img, false, &res), 0);
    cr_assert_eq(qed_close(img), 0);
    cr_assert_eq(res.check_errors, 0);
    return res;
}

/*
 * Check and repair the way `qed-img check -r` does: look read-only first,
 * then open read-write asking for repair and run qed_check with repair.
 * That open already repairs invalid entries itself (lib/engine/image-open.c), so the
 * repair may happen there or in qed_check: the result counts the
 * corruptions seen before, and as fixed every one that is gone afterwards
 * (or that qed_check reports fixing).
 */
static struct qed_check_result repair(void)
{
    struct qed_check_result before = check_ro(), res;
    qed_image *img = open_rw_repair();
    memset(&res, 0xa5, sizeof(res));
    cr_assert_eq(qed_check(img, true, &res), 0);
    cr_assert_eq(qed_close(img), 0);
    cr_assert_eq(res.check_errors, 0);
    cr_assert_geq(before.corruptions, res.corruptions - res.corruptions_fixed);
    res.corruptions_fixed = before.corruptions - (res.corruptions - res.corruptions_fixed);
    res.corruptions = before.corruptions;
    return res;
}

static int verdict(const struct qed_check_result *r)
{
    return r->corruptions ? 2 : r->leaks ? 3 : 0;
}

static bool have_qemu(void)
{
    return system("qemu-img --version >/dev/null 2>&1") == 0;
}

/* Exit code of `qemu-img check` on the image. */
static int qemu_check(void)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "qemu-img check -f qed '%s' >/dev/null 2>&1", path);
    int st = system(cmd);
    cr_assert(st != -1 && WIFEXITED(st));
    return WEXITSTATUS(st);
}

/* A count from `qemu-img check --output=json` (QEMU omits zero counts). */
static uint64_t qemu_count(const char *key)
{
    char cmd[512], out[8192] = "", needle[64];
    snprintf(cmd, sizeof(cmd), "qemu-img check -f qed --output=json '%s' 2>/dev/null", path);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    size_t n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    pclose(p);
    cr_assert(strstr(out, "\"format\": \"qed\"") != NULL, "unexpected qemu-img output: %s", out);
    snprintf(needle, sizeof(needle), "\"%s\": ", key);
    const char *s = strstr(out, needle);
    return s ? strtoull(s + strlen(needle), NULL, 10) : 0;
}

/* qemu-img must agree with @r, in exit code and counts. */
static void expect_qemu_agrees(const struct qed_check_result *r)
{
    if (!have_qemu())
        return;
    cr_assert_eq(qemu_check(), verdict(r), "qemu-img check exits %d, our verdict is %d",
                 qemu_check(), verdict(r));
    cr_assert_eq(qemu_count("corruptions"), r->corruptions, "corruptions: qemu %" PRIu64
                 ", ours %" PRIu64, qemu_count("corruptions"), r->corruptions);
    cr_assert_eq(qemu_count("leaks"), r->leaks, "leaks: qemu %" PRIu64 ", ours %" PRIu64,
                 qemu_count("leaks"), r->leaks);
    /* QEMU also counts invalid entries as allocated; we count only valid
     * data clusters, so compare allocation on images without corruption. */
    if (r->corruptions == 0) {
        cr_assert_eq(qemu_count("allocated-clusters"), r->allocated_clusters,
                     "allocated: qemu %" PRIu64 ", ours %" PRIu64,
                     qemu_count("allocated-clusters"), r->allocated_clusters);
        cr_assert_eq(qemu_count("fragmented-clusters"), r->fragmented_clusters,
                     "fragmented: qemu %" PRIu64 ", ours %" PRIu64,
                     qemu_count("fragmented-clusters"), r->fragmented_clusters);
    }
}

/* ---- a clean image ---- */

Test(check, clean_image_is_clean)
{
    build3();
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 0);
    cr_assert_eq(r.leaks, 0);
    cr_assert_eq(r.allocated_clusters, 3);
    cr_assert_eq(r.fragmented_clusters, 0);
    cr_assert_eq(r.corruptions_fixed, 0);
    cr_assert_eq(r.leaks_fixed, 0);
}

Test(check, clean_image_totals)
{
    build3();
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.total_clusters, IMG_SIZE / CS);
    cr_assert_eq(r.image_end_offset, fsize());
}

Test(check, clean_image_qemu_agrees)
{
    build3();
    struct qed_check_result r = check_ro();
    expect_qemu_agrees(&r);
    if (have_qemu())
        cr_assert_eq(qemu_check(), 0);
}

Test(check, empty_image_is_clean)
{
    build(NULL, 0);
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 0);
    cr_assert_eq(r.leaks, 0);
    cr_assert_eq(r.allocated_clusters, 0);
    expect_qemu_agrees(&r);
}

/* ---- invalid L2 entries ---- */

/* Corrupt L2 entry 1 of table 0 to @v; returns the old value. */
static uint64_t corrupt_l2_1(uint64_t v)
{
    uint64_t old = l2(0, 1);
    cr_assert_neq(old, 0);
    wr64(l2_at(0, 1), v);
    return old;
}

Test(check, l2_entry_unaligned_is_corruption)
{
    build3();
    corrupt_l2_1(l2(0, 1) + 512);
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 1);
    cr_assert_eq(r.leaks, 1, "the cluster the entry used to name is now unreferenced");
    cr_assert_eq(r.allocated_clusters, 2);
    expect_qemu_agrees(&r);
}

Test(check, l2_entry_past_eof_is_corruption)
{
    build3();
    corrupt_l2_1((fsize() & ~(uint64_t)(CS - 1)) + 10 * CS);
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 1);
    cr_assert_eq(r.allocated_clusters, 2);
    expect_qemu_agrees(&r);
}

Test(check, l2_entry_at_eof_is_corruption)
{
    build3();
    corrupt_l2_1(fsize()); /* the first cluster past the end */
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 1);
    expect_qemu_agrees(&r);
}

Test(check, l2_entry_huge_is_corruption)
{
    build3();
    corrupt_l2_1(0xfffffffffffff000ull);
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 1);
    expect_qemu_agrees(&r);
}

/*
 * An image with a two-cluster header, so that a nonzero, aligned entry can
 * point inside the header: header 0..8K, L1 8K..16K.
 */
static void build_two_cluster_header(void)
{
    struct qed_header h = {
        .magic = QED_MAGIC,
        .cluster_size = CS,
        .table_size = TS,
        .header_size = 2,
        .l1_table_offset = 2 * CS,
        .image_size = IMG_SIZE,
    };
    set_hdr(&h);
    cr_assert_eq(truncate(path, 2 * CS + TABLE), 0);
    qed_image *img = open_rw();
    write_clusters(img, 0, 3, 1);
    cr_assert_eq(qed_close(img), 0);
}

Test(check, l2_entry_inside_header_is_corruption)
{
    build_two_cluster_header();
    struct qed_check_result r0 = check_ro();
    cr_assert_eq(r0.corruptions, 0, "the hand-made image is not clean to begin with");
    cr_assert_eq(r0.leaks, 0);
    expect_qemu_agrees(&r0);
    corrupt_l2_1(CS); /* aligned, nonzero, but the header's second cluster */
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 1);
    cr_assert_eq(r.leaks, 1);
    expect_qemu_agrees(&r);
}

Test(check, l2_entry_inside_header_repaired)
{
    build_two_cluster_header();
    corrupt_l2_1(CS);
    struct qed_check_result r = repair();
    cr_assert_eq(r.corruptions, 1);
    cr_assert_eq(r.corruptions_fixed, 1);
    cr_assert_eq(l2(0, 1), 0);
    cr_assert_eq(check_ro().corruptions, 0);
}

/*
 * Regression test: when the table had to be loaded first, the lookup that
 * finds the corrupt entry runs outside the submit call, so finishing the
 * request frees it at once; step() in lib/engine/request.c used to read r->state
 * from the freed request afterwards (a hang without ASan).  The short
 * timeout turns such a hang into a quick failure.
 */
Test(check, corrupt_l2_entry_fails_read_with_eio, .timeout = 15)
{
    build3();
    corrupt_l2_1(l2(0, 1) + 512);
    uint8_t b[CS];
    memset(b, 0xcc, sizeof(b));
    cr_assert_eq(read_cluster(1, b), -EIO, "a corrupt entry must fail the read");
    expect_cluster_data(0, 1);
    expect_cluster_data(2, 1);
}

Test(check, corrupt_l2_entry_fails_read_with_eio_table_cached)
{
    /* The table is already cached by a first read: the failing lookup
     * happens inside the submit call. */
    build3();
    corrupt_l2_1(l2(0, 1) + 512);
    struct qed_open_opts o = {.read_only = true};
    qed_image *img;
    uint8_t b[CS];
    cr_assert_eq(qed_open(T.aio, path, &o, &img, err, sizeof(err)), 0, "open: %s", err);
    cr_assert_eq(qed_sync_read(img, 0, b, CS), 0);
    for (unsigned i = 0; i < CS; i++)
        cr_assert_eq(b[i], pat(i, 1));
    memset(b, 0xcc, sizeof(b));
    cr_assert_eq(qed_sync_read(img, CS, b, CS), -EIO);
    /* Nothing from elsewhere was copied in. */
    for (unsigned i = 0; i < CS; i++)
        cr_assert(b[i] == 0xcc || b[i] == 0, "byte %u of a failed read holds %#x", i, b[i]);
    cr_assert_eq(qed_sync_read(img, 2 * CS, b, CS), 0);
    cr_assert_eq(qed_close(img), 0);
}

/* Regression test: the same path as above, reached after the data read of
 * the good first cluster completes. */
Test(check, read_spanning_good_and_corrupt_clusters_fails, .timeout = 15)
{
    build3();
    corrupt_l2_1(l2(0, 1) + 512);
    struct qed_open_opts o = {.read_only = true};
    qed_image *img;
    uint8_t big[3 * CS];
    cr_assert_eq(qed_open(T.aio, path, &o, &img, err, sizeof(err)), 0, "open: %s", err);
    cr_assert_eq(qed_sync_read(img, 0, big, sizeof(big)), -EIO);
    cr_assert_eq(qed_close(img), 0);
}

Test(check, l2_repair_counts_fixed)
{
    build3();
    corrupt_l2_1(l2(0, 1) + 512);
    struct qed_check_result r = repair();
    cr_assert_eq(r.corruptions, 1);
    cr_assert_eq(r.corruptions_fixed, 1);
}

Test(check, l2_repair_zeroes_entry_on_disk)
{
    build3();
    uint64_t e0 = l2(0, 0), e2 = l2(0, 2);
    corrupt_l2_1(l2(0, 1) + 512);
    repair();
    cr_assert_eq(l2(0, 1), 0, "the invalid entry was not zeroed");
    cr_assert_eq(l2(0, 0), e0, "a valid entry changed");
    cr_assert_eq(l2(0, 2), e2, "a valid entry changed");
}

Test(check, l2_second_check_after_repair_clean)
{
    build3();
    corrupt_l2_1(l2(0, 1) + 512);
    repair();
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 0);
    cr_assert_eq(r.leaks, 1, "the orphaned data cluster is a leak");
    cr_assert_eq(r.allocated_clusters, 2);
    expect_qemu_agrees(&r);
    if (have_qemu())
        cr_assert_eq(qemu_check(), 3);
}

Test(check, l2_repair_keeps_other_data)
{
    build3();
    corrupt_l2_1(l2(0, 1) + 512);
    repair();
    expect_cluster_data(0, 1);
    expect_cluster_zero(1);
    expect_cluster_data(2, 1);
}

Test(check, l2_past_eof_repaired_and_data_intact)
{
    build3();
    corrupt_l2_1(fsize() + 100 * CS);
    struct qed_check_result r = repair();
    cr_assert_eq(r.corruptions_fixed, 1);
    cr_assert_eq(l2(0, 1), 0);
    cr_assert_eq(check_ro().corruptions, 0);
    expect_cluster_data(0, 1);
    expect_cluster_data(2, 1);
}

Test(check, several_corrupt_entries_all_repaired)
{
    static const uint64_t runs[][2] = {{0, 4}, {1024, 2}}; /* two L2 tables */
    build(runs, 2);
    wr64(l2_at(0, 1), 3);                    /* unaligned */
    wr64(l2_at(0, 3), fsize() + CS);         /* past the end */
    wr64(l2_at(1, 1), l2(1, 1) + 100);       /* unaligned, second table */
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 3);
    cr_assert_eq(r.allocated_clusters, 3);
    expect_qemu_agrees(&r);
    r = repair();
    cr_assert_eq(r.corruptions_fixed, 3);
    r = check_ro();
    cr_assert_eq(r.corruptions, 0);
    cr_assert_eq(r.leaks, 3);
    expect_qemu_agrees(&r);
    expect_cluster_data(0, 1);
    expect_cluster_data(2, 1);
    expect_cluster_data(1024, 1);
    expect_cluster_zero(1025);
}

/* ---- invalid L1 entries ---- */

Test(check, l1_entry_unaligned_is_corruption)
{
    build3();
    wr64(l1_at(1), l1(0) + 512);
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 1);
    cr_assert_eq(r.allocated_clusters, 3, "the valid table was not checked");
    expect_qemu_agrees(&r);
}

Test(check, l1_entry_past_eof_is_corruption)
{
    build3();
    wr64(l1_at(2), fsize() + 4 * CS);
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 1);
    expect_qemu_agrees(&r);
}

Test(check, l1_table_partly_past_eof_is_corruption)
{
    /* The table's first cluster is the file's last one; its second is past the end. */
    build3();
    wr64(l1_at(1), fsize() - CS);
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 1);
    expect_qemu_agrees(&r);
}

Test(check, l1_entry_inside_header_is_corruption)
{
    build_two_cluster_header();
    wr64(l1_at(1), CS);
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 1);
    expect_qemu_agrees(&r);
}

Test(check, l1_entry_repaired)
{
    build3();
    uint64_t t0 = l1(0);
    wr64(l1_at(1), t0 + 512);
    struct qed_check_result r = repair();
    cr_assert_eq(r.corruptions, 1);
    cr_assert_eq(r.corruptions_fixed, 1);
    cr_assert_eq(l1(1), 0, "the invalid L1 entry was not zeroed");
    cr_assert_eq(l1(0), t0, "the valid L1 entry changed");
    r = check_ro();
    cr_assert_eq(r.corruptions, 0);
    cr_assert_eq(r.leaks, 0);
    expect_qemu_agrees(&r);
    expect_cluster_data(0, 1);
    expect_cluster_data(2, 1);
}

/* ---- a clean image with invalid entries: refused read-write, untouched ---- */

/* FNV-1a over every byte of the image file, then its size. */
static uint64_t file_hash(void)
{
    uint8_t buf[65536];
    uint64_t h = 0xcbf29ce484222325ull, size = 0;
    ssize_t n;
    int fd = open(path, O_RDONLY);

    cr_assert(fd >= 0);
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        for (ssize_t i = 0; i < n; i++)
            h = (h ^ buf[i]) * 0x100000001b3ull;
        size += (uint64_t)n;
    }
    cr_assert_eq(n, 0, "reading %s: %s", path, strerror(errno));
    close(fd);
    return (h ^ size) * 0x100000001b3ull;
}

/* A read-write open must fail with -EUCLEAN, with a message that names the
 * file, counts the entries (@count_words) and names the repair command, and
 * change no byte of the file. */
static void expect_rw_refused(const char *count_words)
{
    qed_image *img = NULL;
    char cmd[256];
    uint64_t h0 = file_hash();

    cr_assert_eq(hdr().features & QED_F_NEED_CHECK, 0, "the image must be marked clean");
    err[0] = '\0';
    int r = qed_open(T.aio, path, NULL, &img, err, sizeof(err));
    cr_assert_eq(r, -EUCLEAN, "read-write open of a clean corrupt image: %d (%s)", r, err);
    cr_assert_null(img);
    snprintf(cmd, sizeof(cmd), "qed-img check -r %s", path);
    cr_assert(strstr(err, path) == err, "the message does not start with the file: %s", err);
    cr_assert(strstr(err, count_words), "the message lacks '%s': %s", count_words, err);
    cr_assert(strstr(err, cmd), "the message lacks '%s': %s", cmd, err);
    cr_assert_eq(file_hash(), h0, "a refused open changed the file");
}

Test(check, rw_open_refuses_clean_image_with_l2_entry_past_eof)
{
    build3();
    uint64_t bad = fsize() + 2 * CS;
    corrupt_l2_1(bad);
    expect_rw_refused("1 invalid table entry");
    cr_assert_eq(l2(0, 1), bad, "the entry changed on disk");
    /* Refused again: the evidence is still there. */
    expect_rw_refused("1 invalid table entry");
}

Test(check, rw_open_refuses_clean_image_counting_every_entry)
{
    build3();
    corrupt_l2_1(l2(0, 1) + 512);               /* misaligned */
    wr64(l2_at(0, 3), fsize() + 64 * CS);        /* past the end */
    wr64(l1_at(3), fsize() + 8 * CS);            /* L1 entry past the end */
    /* Unknown autoclear bits: an accepted read-write open clears them, a
     * refused one must not. */
    struct qed_header h = hdr();
    h.autoclear_features = 0x10;
    set_hdr(&h);
    expect_rw_refused("3 invalid table entries");
    cr_assert_eq(hdr().autoclear_features, 0x10);
}

Test(check, ro_open_of_clean_corrupt_image_reads_eio_at_bad_entry)
{
    struct qed_open_opts o = {.read_only = true};
    struct qed_extent ext[8];
    uint8_t b[3 * CS];
    qed_image *img;
    size_t n = 0;

    build3();
    corrupt_l2_1(fsize() + 2 * CS);
    uint64_t h0 = file_hash();
    cr_assert_eq(qed_open(T.aio, path, &o, &img, err, sizeof(err)), 0, "open: %s", err);
    cr_assert_eq(qed_sync_read(img, 1 * CS, b, CS), -EIO, "read of the bad cluster");
    cr_assert_eq(qed_sync_read(img, 0, b, 3 * CS), -EIO, "read across the bad cluster");
    cr_assert_eq(qed_sync_block_status(img, CS, CS, ext, 8, &n), -EIO,
                 "block status of the bad cluster");
    cr_assert_eq(qed_sync_read(img, 0, b, CS), 0);
    cr_assert_eq(qed_sync_read(img, 2 * CS, b + 2 * CS, CS), 0);
    for (unsigned i = 0; i < CS; i++) {
        cr_assert_eq(b[i], pat(i, 1), "cluster 0 byte %u", i);
        cr_assert_eq(b[2 * CS + i], pat(2 * CS + i, 1), "cluster 2 byte %u", i);
    }
    cr_assert_eq(qed_sync_block_status(img, 0, CS, ext, 8, &n), 0);
    cr_assert(n >= 1 && ext[0].data && ext[0].length == CS);
    cr_assert_eq(qed_sync_write(img, 0, b, CS, 0), -EROFS);
    cr_assert_eq(qed_close(img), 0);
    cr_assert_eq(file_hash(), h0, "a read-only open changed the file");
}

Test(check, repair_option_zeroes_invalid_l2_entry_of_clean_image)
{
    build3();
    corrupt_l2_1(fsize() + 2 * CS);
    qed_image *img = open_rw_repair();
    cr_assert_eq(l2(0, 1), 0, "the repairing open did not zero the entry on disk");
    cr_assert_eq(hdr().features & QED_F_NEED_CHECK, 0);
    cr_assert_eq(qed_close(img), 0);
    cr_assert_eq(check_ro().corruptions, 0);
    expect_cluster_data(0, 1);
    expect_cluster_zero(1);
    expect_cluster_data(2, 1);
}

Test(check, repair_option_zeroes_invalid_l1_entry_of_clean_image)
{
    build3();
    uint64_t t0 = l1(0);
    wr64(l1_at(2), fsize() + 8 * CS);
    expect_rw_refused("1 invalid table entry");
    qed_image *img = open_rw_repair();
    cr_assert_eq(l1(2), 0, "the repairing open did not zero the L1 entry on disk");
    cr_assert_eq(l1(0), t0);
    cr_assert_eq(qed_close(img), 0);
    cr_assert_eq(check_ro().corruptions, 0);
}

Test(check, repair_option_changes_nothing_on_a_valid_image)
{
    build3();
    uint64_t h0 = file_hash();
    qed_image *img = open_rw_repair();
    cr_assert_eq(qed_close(img), 0);
    cr_assert_eq(file_hash(), h0);
}

Test(check, need_check_image_with_entry_past_eof_repaired_without_option)
{
    /* A crash may leave such an entry: QED's repair at open stays automatic. */
    build3();
    corrupt_l2_1(fsize() + 2 * CS);
    set_need_check();
    qed_image *img = open_rw();
    cr_assert_eq(l2(0, 1), 0, "the open did not repair the NEED_CHECK image");
    cr_assert_eq(hdr().features & QED_F_NEED_CHECK, 0);
    cr_assert_eq(qed_close(img), 0);
    cr_assert_eq(check_ro().corruptions, 0);
    expect_cluster_zero(1);
    expect_cluster_data(2, 1);
}

Test(check, rw_open_leaves_valid_image_untouched)
{
    build3();
    uint8_t before[3 * CS], after[3 * CS];
    int fd = open(path, O_RDONLY);
    cr_assert(fd >= 0);
    cr_assert_eq(pread(fd, before, sizeof(before), (off_t)hdr().l1_table_offset),
                 (ssize_t)sizeof(before));
    qed_image *img = open_rw();
    cr_assert_eq(qed_close(img), 0);
    cr_assert_eq(pread(fd, after, sizeof(after), (off_t)hdr().l1_table_offset),
                 (ssize_t)sizeof(after));
    close(fd);
    cr_assert_arr_eq(before, after, sizeof(before), "the tables of a valid image changed");
}

/*
 * The hazard the open-time scan closes: an entry pointing past the end of
 * the file, left on disk by a session that then grows the file, points at
 * that session's new clusters at the next open.  Without the repair option
 * no such session happens (the open is refused); with it, the session writes
 * enough new clusters to cover the bad offset, and cluster 1 must still read
 * as zeros afterwards, not as the data of another cluster.
 */
Test(check, entry_past_eof_does_not_alias_new_clusters_after_reopen)
{
    build3();
    uint64_t bad = fsize() + 2 * CS;
    corrupt_l2_1(bad);
    qed_image *img = open_rw_repair();
    write_clusters(img, 100, 8, 7); /* grows the file past @bad */
    cr_assert_eq(qed_close(img), 0);
    cr_assert_gt(fsize(), bad + CS, "the file did not grow past the bad offset");
    expect_cluster_zero(1);
    expect_cluster_data(0, 1);
    for (uint64_t c = 100; c < 108; c++)
        expect_cluster_data(c, 7);
    cr_assert_eq(check_ro().corruptions, 0);
}

Test(check, l1_entry_corrupt_fails_reads_of_its_range)
{
    build3();
    wr64(l1_at(1), l1(0) + 512);
    uint8_t b[CS];
    cr_assert_eq(read_cluster(COVER / CS, b), -EIO);
    expect_cluster_data(1, 1);
}

/* ---- clusters referenced twice ---- */

Test(check, data_cluster_referenced_twice_is_corruption)
{
    build3();
    wr64(l2_at(0, 1), l2(0, 0));
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 1);
    cr_assert_eq(r.leaks, 1, "the data cluster entry 1 used to name is unreferenced");
    expect_qemu_agrees(&r);
}

Test(check, double_reference_not_repaired)
{
    /* QEMU does not repair a doubly referenced cluster; neither do we. */
    build3();
    uint64_t e0 = l2(0, 0);
    wr64(l2_at(0, 1), e0);
    struct qed_check_result r = repair();
    cr_assert_eq(r.corruptions, 1);
    cr_assert_eq(r.corruptions_fixed, 0);
    cr_assert_eq(l2(0, 0), e0);
    cr_assert_eq(l2(0, 1), e0, "repair changed a doubly referenced entry");
    r = check_ro();
    cr_assert_eq(r.corruptions, 1);
    expect_qemu_agrees(&r);
}

Test(check, data_entry_pointing_at_l1_table_is_corruption)
{
    build3();
    wr64(l2_at(0, 1), hdr().l1_table_offset);
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 1);
    expect_qemu_agrees(&r);
}

Test(check, data_entry_pointing_at_l2_table_is_corruption)
{
    build3();
    wr64(l2_at(0, 1), l1(0) + CS); /* the table's second cluster */
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 1);
    expect_qemu_agrees(&r);
}

Test(check, l2_table_referenced_twice_is_corruption)
{
    build3();
    wr64(l1_at(1), l1(0));
    struct qed_check_result r = check_ro();
    cr_assert_geq(r.corruptions, 1);
    if (have_qemu())
        cr_assert_eq(qemu_check(), 2);
}

/* ---- leaks ---- */

Test(check, leaked_clusters_counted)
{
    build3();
    grow_file(3 * CS);
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.leaks, 3);
    cr_assert_eq(r.corruptions, 0);
    cr_assert_eq(r.allocated_clusters, 3);
    expect_qemu_agrees(&r);
    if (have_qemu())
        cr_assert_eq(qemu_check(), 3);
}

Test(check, leaks_are_not_corruption_after_repair)
{
    build3();
    grow_file(2 * CS);
    struct qed_check_result r = repair();
    cr_assert_eq(r.corruptions, 0);
    cr_assert_eq(r.leaks, 2);
    expect_cluster_data(0, 1);
    expect_cluster_data(1, 1);
}

Test(check, trailing_partial_cluster_is_not_a_leak)
{
    build3();
    grow_file(CS / 2);
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.leaks, 0);
    cr_assert_eq(r.corruptions, 0);
    expect_qemu_agrees(&r);
}

Test(check, leaks_plus_partial_cluster)
{
    build3();
    grow_file(2 * CS + 100);
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.leaks, 2);
    expect_qemu_agrees(&r);
}

Test(check, leaked_old_table_counted)
{
    /* An L1 entry cleared by hand leaves its table and data unreferenced. */
    build3();
    wr64(l1_at(0), 0);
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 0);
    cr_assert_eq(r.leaks, TS + 3);
    cr_assert_eq(r.allocated_clusters, 0);
    expect_qemu_agrees(&r);
}

/* ---- allocated and fragmented counts ---- */

/* Fragmented count of a layout, computed like QEMU: within each L2 table,
 * a data cluster not right after the previous one is fragmented. */
static uint64_t model_fragmented(unsigned ntables)
{
    uint64_t frag = 0;
    for (unsigned i = 0; i < ntables; i++) {
        uint64_t last = 0;
        if (!l1(i))
            continue;
        for (unsigned j = 0; j < TABLE / 8; j++) {
            uint64_t e = l2(i, j);
            if (e <= 1)
                continue;
            if (last && e != last + CS)
                frag++;
            last = e;
        }
    }
    return frag;
}

Test(check, allocated_counts_single_run)
{
    static const uint64_t runs[][2] = {{0, 8}};
    build(runs, 1);
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.allocated_clusters, 8);
    cr_assert_eq(r.fragmented_clusters, 0);
    expect_qemu_agrees(&r);
}

Test(check, fragmented_counts_out_of_order_writes)
{
    /* Written 5, then 0, then 1: the host order is 5, 0, 1, so walking the
     * table, 0 -> 1 is contiguous and 1 -> 5 jumps back: one fragment. */
    static const uint64_t runs[][2] = {{5, 1}, {0, 1}, {1, 1}};
    build(runs, 3);
    cr_assert_eq(l2(0, 1), l2(0, 0) + CS, "unexpected layout");
    cr_assert_eq(l2(0, 0), l2(0, 5) + CS, "unexpected layout");
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.allocated_clusters, 3);
    cr_assert_eq(r.fragmented_clusters, 1);
    cr_assert_eq(r.fragmented_clusters, model_fragmented(4));
    expect_qemu_agrees(&r);
    if (have_qemu())
        cr_assert_eq(qemu_count("fragmented-clusters"), 1);
}

Test(check, fragmented_counts_interleaved)
{
    /* Even clusters first, then odd ones: every step in the table jumps. */
    static const uint64_t runs[][2] = {{0, 1}, {2, 1}, {4, 1}, {1, 1}, {3, 1}, {5, 1}};
    build(runs, 6);
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.allocated_clusters, 6);
    cr_assert_eq(r.fragmented_clusters, model_fragmented(4));
    cr_assert_eq(r.fragmented_clusters, 5);
    if (have_qemu())
        cr_assert_eq(qemu_count("fragmented-clusters"), r.fragmented_clusters);
}

Test(check, fragmented_counted_per_l2_table_like_qemu)
{
    /*
     * Guest cluster 0, then the first cluster of the second L2 table, then
     * guest cluster 1.  Within table 0, cluster 1 does not follow cluster 0
     * on the host: one fragment.  Table 1 holds one cluster: QEMU starts
     * each table afresh, so it is not a fragment.
     */
    static const uint64_t runs[][2] = {{0, 1}, {COVER / CS, 1}, {1, 1}};
    build(runs, 3);
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.allocated_clusters, 3);
    cr_assert_eq(model_fragmented(4), 1);
    if (have_qemu())
        cr_assert_eq(qemu_count("fragmented-clusters"), 1, "QEMU's own count changed");
    cr_assert_eq(r.fragmented_clusters, 1,
                 "lib/engine/check.c counts %" PRIu64 " fragmented clusters, qemu-img check counts 1: "
                 "the previous-cluster tracker must restart at each L2 table",
                 r.fragmented_clusters);
}

Test(check, zero_clusters_not_allocated)
{
    build3();
    qed_image *img = open_rw();
    cr_assert_eq(qed_sync_write_zeroes(img, 8 * CS, 4 * CS, 0), 0);
    cr_assert_eq(qed_close(img), 0);
    cr_assert_eq(l2(0, 8), 1, "write zeroes did not make a zero cluster");
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.allocated_clusters, 3);
    cr_assert_eq(r.corruptions, 0);
    cr_assert_eq(r.leaks, 0);
    expect_qemu_agrees(&r);
}

/* ---- NEED_CHECK ---- */

Test(check, repair_clears_need_check)
{
    struct qed_create_opts o = {.size = IMG_SIZE, .cluster_size = CS, .table_size = TS};
    cr_assert_eq(qed_create(path, &o, err, sizeof(err)), 0, "%s", err);
    qed_image *img = open_rw();
    write_clusters(img, 0, 2, 1);
    /* The allocation set NEED_CHECK on disk; a repair clears it. */
    cr_assert(hdr().features & QED_F_NEED_CHECK);
    struct qed_check_result r;
    cr_assert_eq(qed_check(img, true, &r), 0);
    cr_assert_eq(r.corruptions, 0);
    cr_assert_eq(hdr().features & QED_F_NEED_CHECK, 0, "repair did not clear NEED_CHECK");
    struct qed_info info;
    qed_get_info(img, &info);
    cr_assert_not(info.dirty);
    cr_assert_eq(qed_close(img), 0);
}

Test(check, check_without_repair_keeps_need_check)
{
    build3();
    set_need_check();
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 0);
    cr_assert(hdr().features & QED_F_NEED_CHECK);
}

Test(check, open_repairs_need_check_image_and_clears_flag)
{
    build3();
    corrupt_l2_1(l2(0, 1) + 512);
    set_need_check();
    qed_image *img = open_rw(); /* runs check and repair */
    cr_assert_eq(hdr().features & QED_F_NEED_CHECK, 0);
    cr_assert_eq(l2(0, 1), 0);
    cr_assert_eq(qed_close(img), 0);
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 0);
    expect_qemu_agrees(&r);
}

Test(check, unrepairable_corruption_keeps_need_check)
{
    build3();
    wr64(l2_at(0, 1), l2(0, 0)); /* referenced twice: not repaired */
    set_need_check();
    qed_image *img = open_rw();
    cr_assert(hdr().features & QED_F_NEED_CHECK,
              "NEED_CHECK cleared while a corruption remains");
    cr_assert_eq(qed_close(img), 0);
    cr_assert(hdr().features & QED_F_NEED_CHECK);
    if (have_qemu())
        cr_assert_eq(qemu_check(), 2);
}

/* ---- messages ---- */

static char logbuf[8192];

static void log_cb(enum qed_log_level lvl, const char *msg, void *opaque)
{
    (void)lvl;
    (void)opaque;
    size_t n = strlen(logbuf);
    snprintf(logbuf + n, sizeof(logbuf) - n, "%s\n", msg);
}

Test(check, problems_are_logged_with_file_name)
{
    build3();
    corrupt_l2_1(l2(0, 1) + 512);
    wr64(l1_at(1), 7);
    logbuf[0] = '\0';
    qed_set_log(log_cb, NULL, QED_LOG_DEBUG);
    struct qed_check_result r = check_ro();
    qed_set_log(NULL, NULL, QED_LOG_WARN);
    cr_assert_eq(r.corruptions, 2);
    cr_assert(strstr(logbuf, path) != NULL, "log does not name the file:\n%s", logbuf);
    cr_assert(strstr(logbuf, "L2") != NULL, "log does not mention the L2 entry:\n%s", logbuf);
    cr_assert(strstr(logbuf, "L1") != NULL, "log does not mention the L1 entry:\n%s", logbuf);
}

/*
 * The message of a read through an entry disabled at open names the value
 * stored in the file and why it was disabled, not the in-memory mark (the
 * value with its low bit set, which is nowhere on disk).
 */
Test(check, read_of_disabled_entry_logs_the_value_on_disk)
{
    struct qed_open_opts o = {.read_only = true};
    uint8_t b[CS];
    qed_image *img;
    char want[64], mark[64];
    uint64_t bad;

    build3();
    bad = fsize() + 2 * CS;
    corrupt_l2_1(bad);
    cr_assert_eq(qed_open(T.aio, path, &o, &img, err, sizeof(err)), 0, "open: %s", err);
    logbuf[0] = '\0';
    qed_set_log(log_cb, NULL, QED_LOG_WARN);
    cr_assert_eq(qed_sync_read(img, 1 * CS, b, CS), -EIO);
    cr_assert_eq(qed_sync_read(img, 1 * CS, b, CS), -EIO, "a second read, table cached");
    qed_set_log(NULL, NULL, QED_LOG_WARN);
    snprintf(want, sizeof(want), "0x%" PRIx64, bad);
    snprintf(mark, sizeof(mark), "0x%" PRIx64, bad | 1);
    cr_assert(strstr(logbuf, want), "the log does not name the stored value %s:\n%s", want,
              logbuf);
    cr_assert_null(strstr(logbuf, mark), "the log names the in-memory mark %s:\n%s", mark,
                   logbuf);
    cr_assert(strstr(logbuf, "guest offset 4096"), "the log does not name the offset:\n%s",
              logbuf);
    cr_assert_eq(qed_close(img), 0);
}

/* A data entry of table A names table B's cluster, and B has an entry past
 * the end of the file.  B must still be checked: the check once marked B's
 * cluster used through A's entry first, took B itself for the duplicate and
 * never looked at its entries, so the past-EOF entry survived every repair
 * and, once the file grew, named another cluster's data (tests/fuzz
 * fuzz-image found it). */
static void build_entry_naming_a_table(uint64_t *bad)
{
    static const uint64_t runs[][2] = {{0, 2}, {COVER / CS, 1}};
    build(runs, 2);
    uint64_t table_b = l1(1);
    cr_assert_neq(table_b, 0);
    wr64(l2_at(0, 1), table_b);             /* A's second entry names table B */
    *bad = (fsize() & ~(uint64_t)(CS - 1)) + 8 * CS;
    wr64(l2_at(1, 0), *bad);                /* B's first entry: past the end */
}

/* The check sees one past-EOF entry (@what) besides one cluster referenced
 * twice, and so a read-write open refuses the image; returns the result. */
static struct qed_check_result expect_past_eof_entry_seen(const char *what)
{
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.repairable, 1, "%s was not seen: repairable %" PRIu64, what, r.repairable);
    cr_assert_eq(r.corruptions, 2, "a cluster referenced twice and %s: %" PRIu64 " corruptions",
                 what, r.corruptions);
    expect_rw_refused("1 invalid table entry");
    return r;
}

Test(check, table_named_by_a_data_entry_still_has_its_entries_checked)
{
    uint64_t bad;
    build_entry_naming_a_table(&bad);
    expect_past_eof_entry_seen("B's past-EOF entry");
}

Test(check, table_named_by_a_data_entry_is_repaired)
{
    uint64_t bad;
    build_entry_naming_a_table(&bad);
    repair();
    cr_assert_eq(l2(1, 0), 0, "B's past-EOF entry survived the repair");
}

/* Two L2 tables overlap: C at the end of the file and C' one cluster on, so
 * that C' shares its first cluster with C and has a second cluster of its
 * own, which holds an entry past the end of the file (the shape of
 * tests/fuzz/corpus-image/alias-after-clean-repair-2).  Returns the L1
 * index of C' and sets *@bad to the entry's value. */
static uint64_t build_overlapping_tables(uint64_t *bad)
{
    build3();
    uint64_t c = fsize();
    cr_assert_eq(c % CS, 0);
    grow_file(3 * CS);
    wr64(l1_at(2), c);                  /* C: clusters c, c + CS */
    wr64(l1_at(3), c + CS);             /* C': clusters c + CS, c + 2 * CS */
    *bad = fsize() + 4 * CS;
    wr64(l2_at(3, CS / 8), *bad);       /* C' entry 512: its own cluster */
    return 3;
}

/* A table that overlaps another is still "referenced twice", but the
 * entries of its own clusters are judged: the check once skipped the whole
 * table, so an entry past the end of the file there was neither counted
 * nor repaired (found by tests/fuzz/fuzz-image). */
Test(check, table_overlapping_another_has_its_own_entries_checked)
{
    uint64_t bad;
    build_overlapping_tables(&bad);
    struct qed_check_result r = expect_past_eof_entry_seen("the past-EOF entry of C'");
    cr_assert_eq(r.allocated_clusters, 3, "the shared cluster is counted once");
}

/* After the repair, allocating writes that grow the file past the old
 * entry's value add no alias: the repair zeroed it.  Before the fix the
 * entry survived, and once the file grew it named a new data cluster. */
Test(check, table_overlapping_another_gains_no_alias_after_repair)
{
    uint64_t bad, i = build_overlapping_tables(&bad);
    struct qed_check_result fixed = repair();
    qed_image *img = open_rw();
    write_clusters(img, 8, 8, 2);
    cr_assert_eq(qed_close(img), 0);
    cr_assert_gt(fsize(), bad, "the writes did not grow the file past the entry");
    /* Read through the entry of C': zeros, not the data the writes just put at
     * the entry's old value. */
    expect_cluster_zero(i * COVER / CS + CS / 8);
    struct qed_check_result r = check_ro();
    cr_assert_eq(r.corruptions, 1, "only the overlap should be left, found %" PRIu64
                 " corruptions: an allocation added an alias", r.corruptions);
    cr_assert_eq(r.repairable, 0);
    cr_assert_eq(fixed.corruptions_fixed, 1);
    cr_assert_eq(l2(i, CS / 8), 0, "the past-EOF entry of C' survived the repair");
    expect_cluster_data(8, 2);
}
