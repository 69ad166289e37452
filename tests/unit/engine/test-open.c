/*
 * test-open.c - unit tests of qed_create, qed_open and qed_close: default
 * geometry, size rounding and limits, backing files, images made by
 * `qemu-img create`, refusal of bad images, feature bits, read-only opens
 * that never write, NEED_CHECK repair on open, and the exclusive image lock.
 *
 * Every test works in its own temp directory (removed by the fixture) with
 * its own libev loop and a QED_AIO_AUTO engine (fixture.h).  Headers are read and
 * written directly in the file to set up and to verify, independently of
 * the library's view.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <ev.h>

#include "fixture.h"
#include "qed-image.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define GiB (1024ull * MiB)
#define TiB (1024ull * GiB)

static struct test_fixture T; /* loop, QED_AIO_AUTO engine, directory */
static char err[1024];

/* ---- fixture and helpers ---- */

static void setup(void)
{
    tf_setup(&T, "open", QED_AIO_AUTO);
    tf_cleanup_on_timeout(T.dir, 150);
    memset(err, 0, sizeof(err));
}

static void teardown(void)
{
    tf_teardown(&T);
}

TestSuite(open, .init = setup, .fini = teardown, .timeout = 120);

/* Path of @name inside the test directory (a few rotating buffers). */
static const char *tp(const char *name)
{
    return tf_path(&T, name);
}

static void create(const char *name, uint64_t size, uint32_t cs, uint32_t ts)
{
    struct qed_create_opts o = {.size = size, .cluster_size = cs, .table_size = ts};
    int r = qed_create(tp(name), &o, err, sizeof(err));
    cr_assert_eq(r, 0, "qed_create %s: %d %s", name, r, err);
}

static qed_image *open_img(const char *name, bool ro)
{
    struct qed_open_opts o = {.read_only = ro};
    qed_image *img = NULL;
    int r = qed_open(T.aio, tp(name), &o, &img, err, sizeof(err));
    cr_assert_eq(r, 0, "qed_open %s: %d %s", name, r, err);
    return img;
}

static int try_open(const char *name, bool ro, qed_image **img)
{
    struct qed_open_opts o = {.read_only = ro};
    memset(err, 0, sizeof(err));
    *img = NULL;
    return qed_open(T.aio, tp(name), &o, img, err, sizeof(err));
}

static struct qed_header read_hdr(const char *name)
{
    uint8_t raw[QED_HEADER_BYTES];
    struct qed_header h;
    int fd = open(tp(name), O_RDONLY);
    cr_assert(fd >= 0, "open %s: %s", name, strerror(errno));
    cr_assert_eq(pread(fd, raw, sizeof(raw), 0), (ssize_t)sizeof(raw));
    close(fd);
    qed_header_decode(raw, &h);
    return h;
}

static void write_hdr(const char *name, const struct qed_header *h)
{
    uint8_t raw[QED_HEADER_BYTES];
    int fd = open(tp(name), O_WRONLY | O_CREAT, 0644);
    cr_assert(fd >= 0, "open %s: %s", name, strerror(errno));
    qed_header_encode(h, raw);
    cr_assert_eq(pwrite(fd, raw, sizeof(raw), 0), (ssize_t)sizeof(raw));
    close(fd);
}

static void pwrite_at(const char *name, const void *buf, size_t len, uint64_t off)
{
    int fd = open(tp(name), O_WRONLY);
    cr_assert(fd >= 0);
    cr_assert_eq(pwrite(fd, buf, len, (off_t)off), (ssize_t)len);
    close(fd);
}

static uint64_t pread_u64(const char *name, uint64_t off)
{
    uint64_t v = 0;
    int fd = open(tp(name), O_RDONLY);
    cr_assert(fd >= 0);
    cr_assert_eq(pread(fd, &v, 8, (off_t)off), 8);
    close(fd);
    return le64toh(v);
}

static void pwrite_u64(const char *name, uint64_t off, uint64_t v)
{
    uint64_t le = htole64(v);
    pwrite_at(name, &le, 8, off);
}

static uint64_t file_size(const char *name)
{
    struct stat st;
    cr_assert_eq(stat(tp(name), &st), 0, "stat %s: %s", name, strerror(errno));
    return (uint64_t)st.st_size;
}

static void set_size(const char *name, uint64_t size)
{
    cr_assert_eq(truncate(tp(name), (off_t)size), 0);
}

/* Whole file contents (malloc'd); *len receives the size. */
static uint8_t *slurp(const char *name, size_t *len)
{
    size_t n = file_size(name);
    uint8_t *b = malloc(n ? n : 1);
    int fd = open(tp(name), O_RDONLY);
    cr_assert(fd >= 0 && b);
    cr_assert_eq(pread(fd, b, n, 0), (ssize_t)n);
    close(fd);
    *len = n;
    return b;
}

/* Run a shell command in the test directory; returns its exit status. */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    int n;
    va_list ap;
    va_start(ap, fmt);
    n = snprintf(cmd, sizeof(cmd), "cd '%s' && ", T.dir);
    vsnprintf(cmd + n, sizeof(cmd) - (size_t)n, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    cr_assert(st != -1 && WIFEXITED(st), "command did not run: %s", cmd);
    return WEXITSTATUS(st);
}

static uint8_t pat(uint64_t pos, unsigned seed)
{
    return (uint8_t)(pos * 13 + (pos >> 11) + seed * 41 + 3);
}

static void fill(uint8_t *b, size_t len, uint64_t off, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        b[i] = pat(off + i, seed);
}

static void expect_pat(const uint8_t *b, size_t len, uint64_t off, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        cr_assert_eq(b[i], pat(off + i, seed), "byte %" PRIu64 ": %#x expected %#x", off + i,
                     b[i], pat(off + i, seed));
}

static void expect_zero(const uint8_t *b, size_t len, uint64_t off)
{
    for (size_t i = 0; i < len; i++)
        cr_assert_eq(b[i], 0, "byte %" PRIu64 ": %#x expected 0", off + i, b[i]);
}

static void write_pat(qed_image *img, uint64_t off, size_t len, unsigned seed)
{
    uint8_t *b = malloc(len);
    fill(b, len, off, seed);
    cr_assert_eq(qed_sync_write(img, off, b, len, 0), 0);
    free(b);
}

static void read_expect_pat(qed_image *img, uint64_t off, size_t len, unsigned seed)
{
    uint8_t *b = malloc(len);
    cr_assert_eq(qed_sync_read(img, off, b, len), 0);
    expect_pat(b, len, off, seed);
    free(b);
}

static void read_expect_zero(qed_image *img, uint64_t off, size_t len)
{
    uint8_t *b = malloc(len);
    memset(b, 0xcc, len);
    cr_assert_eq(qed_sync_read(img, off, b, len), 0);
    expect_zero(b, len, off);
    free(b);
}

static bool have_qemu(void)
{
    return system("qemu-img --version >/dev/null 2>&1") == 0;
}

/* ---- create: geometry and size ---- */

Test(open, create_defaults_64k_table4)
{
    create("a.qed", 1 * GiB, 0, 0);
    struct qed_header h = read_hdr("a.qed");
    cr_assert_eq(h.magic, QED_MAGIC);
    cr_assert_eq(h.cluster_size, 64 * KiB);
    cr_assert_eq(h.table_size, 4);
    cr_assert_eq(h.header_size, 1);
    cr_assert_eq(h.l1_table_offset, 64 * KiB);
    cr_assert_eq(h.image_size, 1 * GiB);
    cr_assert_eq(h.features, 0);
    cr_assert_eq(h.compat_features, 0);
    cr_assert_eq(h.autoclear_features, 0);
    /* Header cluster plus a 4-cluster L1 table, as qemu-img makes it. */
    cr_assert_eq(file_size("a.qed"), 64 * KiB + 256 * KiB);
}

Test(open, create_defaults_reported_by_info)
{
    create("a.qed", 1 * GiB, 0, 0);
    qed_image *img = open_img("a.qed", true);
    struct qed_info info;
    qed_get_info(img, &info);
    cr_assert_eq(info.size, 1 * GiB);
    cr_assert_eq(info.cluster_size, 64 * KiB);
    cr_assert_eq(info.table_size, 4);
    cr_assert_eq(info.max_size, 64 * TiB);
    cr_assert_not(info.dirty);
    cr_assert(info.read_only);
    cr_assert_str_eq(info.backing_file, "");
    cr_assert_null(info.backing_format);
    cr_assert_eq(qed_size(img), 1 * GiB);
    cr_assert_eq(qed_cluster_size(img), 64 * KiB);
    cr_assert_str_eq(qed_path(img), tp("a.qed"));
    cr_assert_eq(qed_close(img), 0);
}

Test(open, create_explicit_geometry)
{
    create("a.qed", 100 * MiB, 4 * KiB, 16);
    struct qed_header h = read_hdr("a.qed");
    cr_assert_eq(h.cluster_size, 4096);
    cr_assert_eq(h.table_size, 16);
    cr_assert_eq(h.l1_table_offset, 4096);
    cr_assert_eq(file_size("a.qed"), 4096 + 16 * 4096);
}

Test(open, create_rounds_size_up_to_512)
{
    create("a.qed", 1000, 0, 0);
    cr_assert_eq(read_hdr("a.qed").image_size, 1024);
    create("b.qed", 1, 0, 0);
    cr_assert_eq(read_hdr("b.qed").image_size, 512);
    create("c.qed", 512, 0, 0);
    cr_assert_eq(read_hdr("c.qed").image_size, 512);
    create("d.qed", 10 * MiB + 513, 0, 0);
    cr_assert_eq(read_hdr("d.qed").image_size, 10 * MiB + 1024);
}

Test(open, create_zero_size)
{
    create("a.qed", 0, 0, 0);
    cr_assert_eq(read_hdr("a.qed").image_size, 0);
    qed_image *img = open_img("a.qed", true);
    cr_assert_eq(qed_size(img), 0);
    cr_assert_eq(qed_close(img), 0);
}

Test(open, create_too_large_refused_with_maximum_named)
{
    /* 4 KiB / 1: the maximum is 512 * 512 * 4096 = 1 GiB. */
    struct qed_create_opts o = {.size = 1 * GiB + 1, .cluster_size = 4096, .table_size = 1};
    int r = qed_create(tp("a.qed"), &o, err, sizeof(err));
    cr_assert_eq(r, -EINVAL, "%d %s", r, err);
    cr_assert(strstr(err, "1073741824") != NULL, "maximum not named: \"%s\"", err);
    cr_assert(strstr(err, tp("a.qed")) != NULL, "file not named: \"%s\"", err);
    cr_assert_eq(access(tp("a.qed"), F_OK), -1, "a refused image was left behind");
}

Test(open, create_at_maximum_accepted)
{
    create("a.qed", 1 * GiB, 4096, 1);
    cr_assert_eq(read_hdr("a.qed").image_size, 1 * GiB);
}

Test(open, create_too_large_default_geometry)
{
    struct qed_create_opts o = {.size = 64 * TiB + 1};
    cr_assert_eq(qed_create(tp("a.qed"), &o, err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "70368744177664") != NULL, "maximum not named: \"%s\"", err);
}

Test(open, create_size_near_uint64_max_refused)
{
    /* Rounding UINT64_MAX up to 512 must not wrap to a small size. */
    struct qed_create_opts o = {.size = UINT64_MAX};
    cr_assert_eq(qed_create(tp("a.qed"), &o, err, sizeof(err)), -EINVAL);
    o.size = UINT64_MAX - 100;
    cr_assert_eq(qed_create(tp("a.qed"), &o, err, sizeof(err)), -EINVAL);
    cr_assert_eq(access(tp("a.qed"), F_OK), -1);
}

/*
 * Every too-large size names the maximum, including one so large that
 * rounding it up to 512 would overflow (lib/engine/image-create.c, qed_create).
 */
Test(open, create_size_near_uint64_max_names_maximum)
{
    struct qed_create_opts o = {.size = UINT64_MAX};
    cr_assert_eq(qed_create(tp("a.qed"), &o, err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "70368744177664") != NULL,
              "a too-large size must be refused with the maximum named: \"%s\"", err);
}

Test(open, create_huge_geometry_huge_size)
{
    /* 64 MiB / 16: the maximum is capped at 2^63 - 512; 1 EiB fits. */
    create("a.qed", 1ull << 60, 64 * MiB, 16);
    qed_image *img = open_img("a.qed", true);
    struct qed_info info;
    qed_get_info(img, &info);
    cr_assert_eq(info.size, 1ull << 60);
    cr_assert_eq(info.max_size, QED_MAX_VIRTUAL_SIZE);
    cr_assert_eq(qed_close(img), 0);
}

Test(open, create_bad_cluster_size_refused)
{
    struct qed_create_opts o = {.size = 1 * MiB, .cluster_size = 12288};
    char want[512];
    cr_assert_eq(qed_create(tp("a.qed"), &o, err, sizeof(err)), -EINVAL);
    snprintf(want, sizeof(want),
             "%s: QED cluster size 12288 is not a power of two in [4096, 67108864]", tp("a.qed"));
    cr_assert_str_eq(err, want);
    cr_assert_eq(access(tp("a.qed"), F_OK), -1);
}

Test(open, create_bad_table_size_refused)
{
    struct qed_create_opts o = {.size = 1 * MiB, .table_size = 32};
    cr_assert_eq(qed_create(tp("a.qed"), &o, err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "table size 32") != NULL, "\"%s\"", err);
}

Test(open, create_existing_file_refused)
{
    create("a.qed", 1 * MiB, 0, 0);
    size_t n1, n2;
    uint8_t *before = slurp("a.qed", &n1);
    struct qed_create_opts o = {.size = 2 * MiB};
    cr_assert_eq(qed_create(tp("a.qed"), &o, err, sizeof(err)), -EEXIST, "%s", err);
    uint8_t *after = slurp("a.qed", &n2);
    cr_assert(n1 == n2 && memcmp(before, after, n1) == 0, "the existing file was changed");
    free(before);
    free(after);
}

/* ---- create: backing files ---- */

static void make_raw(const char *name, uint64_t size, unsigned seed)
{
    uint8_t *b = malloc(size);
    fill(b, size, 0, seed);
    int fd = open(tp(name), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, b, size), (ssize_t)size);
    close(fd);
    free(b);
}

static int create_backed(const char *name, uint64_t size, const char *backing,
                         enum qed_backing_fmt fmt)
{
    struct qed_create_opts o = {.size = size, .backing_file = backing, .backing_fmt = fmt};
    memset(err, 0, sizeof(err));
    return qed_create(tp(name), &o, err, sizeof(err));
}

/* The backing name stored in the header cluster. */
static void expect_stored_name(const char *name, const char *want)
{
    struct qed_header h = read_hdr(name);
    char got[256] = "";
    cr_assert(h.features & QED_F_BACKING_FILE);
    cr_assert_eq(h.backing_filename_size, strlen(want));
    cr_assert_geq(h.backing_filename_offset, QED_HEADER_BYTES);
    int fd = open(tp(name), O_RDONLY);
    cr_assert_eq(pread(fd, got, h.backing_filename_size, h.backing_filename_offset),
                 (ssize_t)h.backing_filename_size);
    close(fd);
    cr_assert_str_eq(got, want);
}

Test(open, create_backing_raw_sets_no_probe)
{
    make_raw("base.raw", 1 * MiB, 1);
    cr_assert_eq(create_backed("ov.qed", 4 * MiB, "base.raw", QED_BACKING_RAW), 0, "%s", err);
    struct qed_header h = read_hdr("ov.qed");
    cr_assert_eq(h.features, QED_F_BACKING_FILE | QED_F_BACKING_FORMAT_NO_PROBE);
    expect_stored_name("ov.qed", "base.raw");
    qed_image *img = open_img("ov.qed", true);
    struct qed_info info;
    qed_get_info(img, &info);
    cr_assert_str_eq(info.backing_file, "base.raw");
    cr_assert_str_eq(info.backing_format, "raw");
    cr_assert_eq(qed_close(img), 0);
}

Test(open, create_backing_qed_does_not_set_no_probe)
{
    create("base.qed", 4 * MiB, 0, 0);
    cr_assert_eq(create_backed("ov.qed", 4 * MiB, "base.qed", QED_BACKING_QED), 0, "%s", err);
    struct qed_header h = read_hdr("ov.qed");
    cr_assert_eq(h.features, QED_F_BACKING_FILE);
    expect_stored_name("ov.qed", "base.qed");
    qed_image *img = open_img("ov.qed", true);
    struct qed_info info;
    qed_get_info(img, &info);
    cr_assert_str_eq(info.backing_format, "qed");
    cr_assert_eq(qed_close(img), 0);
}

Test(open, create_backing_probed_formats)
{
    make_raw("base.raw", 64 * KiB, 1);
    create("base.qed", 4 * MiB, 0, 0);
    cr_assert_eq(create_backed("r.qed", 4 * MiB, "base.raw", QED_BACKING_PROBE), 0, "%s", err);
    cr_assert_eq(create_backed("q.qed", 4 * MiB, "base.qed", QED_BACKING_PROBE), 0, "%s", err);
    cr_assert_eq(read_hdr("r.qed").features,
                 QED_F_BACKING_FILE | QED_F_BACKING_FORMAT_NO_PROBE);
    cr_assert_eq(read_hdr("q.qed").features, QED_F_BACKING_FILE);
}

Test(open, create_probe_of_missing_backing_refused)
{
    int r = create_backed("ov.qed", 4 * MiB, "nothere.raw", QED_BACKING_PROBE);
    cr_assert_eq(r, -ENOENT, "%d %s", r, err);
    cr_assert(strstr(err, "nothere.raw") != NULL, "\"%s\"", err);
    cr_assert_eq(access(tp("ov.qed"), F_OK), -1);
}

Test(open, created_images_accepted_by_qemu_img)
{
    if (!have_qemu())
        cr_skip_test("qemu-img not installed");
    create("a.qed", 1 * GiB, 0, 0);
    create("b.qed", 100 * MiB, 4096, 16);
    make_raw("base.raw", 1 * MiB, 1);
    cr_assert_eq(create_backed("c.qed", 4 * MiB, "base.raw", QED_BACKING_RAW), 0, "%s", err);
    create("base.qed", 4 * MiB, 0, 0);
    cr_assert_eq(create_backed("d.qed", 4 * MiB, "base.qed", QED_BACKING_QED), 0, "%s", err);
    const char *names[] = {"a.qed", "b.qed", "c.qed", "d.qed"};
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(sh("qemu-img info %s >/dev/null", names[i]), 0, "qemu-img info %s", names[i]);
        cr_assert_eq(sh("qemu-img check %s >/dev/null", names[i]), 0, "qemu-img check %s",
                     names[i]);
    }
    cr_assert_eq(sh("qemu-img info --output=json a.qed | grep -q '\"virtual-size\": 1073741824'"),
                 0);
    cr_assert_eq(sh("qemu-img info c.qed | grep -q 'backing file format: raw'"), 0);
}

/* ---- open: images made by qemu-img ---- */

Test(open, opens_qemu_img_default_image)
{
    if (!have_qemu())
        cr_skip_test("qemu-img not installed");
    cr_assert_eq(sh("qemu-img create -f qed q.qed 10M >/dev/null"), 0);
    qed_image *img = open_img("q.qed", false);
    struct qed_info info;
    qed_get_info(img, &info);
    cr_assert_eq(info.size, 10 * MiB);
    cr_assert_eq(info.cluster_size, 64 * KiB);
    cr_assert_eq(info.table_size, 4);
    read_expect_zero(img, 0, 64 * KiB);
    cr_assert_eq(qed_close(img), 0);
}

Test(open, opens_qemu_img_4k_table16_image)
{
    if (!have_qemu())
        cr_skip_test("qemu-img not installed");
    cr_assert_eq(sh("qemu-img create -f qed -o cluster_size=4096,table_size=16 q.qed 100M "
                    ">/dev/null"),
                 0);
    qed_image *img = open_img("q.qed", true);
    struct qed_info info;
    qed_get_info(img, &info);
    cr_assert_eq(info.size, 100 * MiB);
    cr_assert_eq(info.cluster_size, 4096);
    cr_assert_eq(info.table_size, 16);
    cr_assert_eq(qed_close(img), 0);
}

Test(open, opens_qemu_img_table_size_1_image)
{
    /* qemu-img creates it but QEMU cannot open it; the spec allows it. */
    if (!have_qemu())
        cr_skip_test("qemu-img not installed");
    cr_assert_eq(sh("qemu-img create -f qed -o cluster_size=4096,table_size=1 q.qed 1M "
                    ">/dev/null"),
                 0);
    qed_image *img = open_img("q.qed", false);
    struct qed_info info;
    qed_get_info(img, &info);
    cr_assert_eq(info.table_size, 1);
    write_pat(img, 8192, 4096, 5);
    read_expect_pat(img, 8192, 4096, 5);
    cr_assert_eq(qed_close(img), 0);
}

Test(open, opens_qemu_img_image_with_raw_backing)
{
    if (!have_qemu())
        cr_skip_test("qemu-img not installed");
    make_raw("base.raw", 1 * MiB, 7);
    cr_assert_eq(sh("qemu-img create -f qed -b base.raw -F raw q.qed 2M >/dev/null"), 0);
    qed_image *img = open_img("q.qed", true);
    struct qed_info info;
    qed_get_info(img, &info);
    cr_assert_str_eq(info.backing_file, "base.raw");
    cr_assert_str_eq(info.backing_format, "raw");
    read_expect_pat(img, 0, 64 * KiB, 7);
    read_expect_zero(img, 1 * MiB, 64 * KiB); /* past the end of the backing file */
    cr_assert_eq(qed_close(img), 0);
}

Test(open, opens_qemu_img_image_with_qed_backing)
{
    if (!have_qemu())
        cr_skip_test("qemu-img not installed");
    cr_assert_eq(sh("qemu-img create -f qed b.qed 4M >/dev/null && "
                    "qemu-io -f qed -c 'write -P 0x5a 64k 64k' b.qed >/dev/null && "
                    "qemu-img create -f qed -b b.qed -F qed q.qed 4M >/dev/null"),
                 0);
    qed_image *img = open_img("q.qed", true);
    struct qed_info info;
    qed_get_info(img, &info);
    cr_assert_str_eq(info.backing_format, "qed");
    uint8_t b[64 * KiB];
    cr_assert_eq(qed_sync_read(img, 64 * KiB, b, sizeof(b)), 0);
    for (size_t i = 0; i < sizeof(b); i++)
        cr_assert_eq(b[i], 0x5a, "byte %zu", i);
    cr_assert_eq(qed_close(img), 0);
}

Test(open, reads_data_written_by_qemu_io)
{
    if (!have_qemu())
        cr_skip_test("qemu-img not installed");
    cr_assert_eq(sh("qemu-img create -f qed q.qed 8M >/dev/null && "
                    "qemu-io -f qed -c 'write -P 0xab 0 64k' -c 'write -P 0xcd 1M 4k' q.qed "
                    ">/dev/null"),
                 0);
    qed_image *img = open_img("q.qed", true);
    uint8_t b[64 * KiB];
    cr_assert_eq(qed_sync_read(img, 0, b, sizeof(b)), 0);
    for (size_t i = 0; i < sizeof(b); i++)
        cr_assert_eq(b[i], 0xab, "byte %zu", i);
    cr_assert_eq(qed_sync_read(img, 1 * MiB, b, 8192), 0);
    for (size_t i = 0; i < 4096; i++)
        cr_assert_eq(b[i], 0xcd, "byte %zu", i);
    expect_zero(b + 4096, 4096, 1 * MiB + 4096);
    cr_assert_eq(qed_close(img), 0);
}

/* ---- open: bad images refused, naming the file and the field ---- */

/* A 64K/4 header whose file holds the header and L1 table. */
static struct qed_header base_hdr(void)
{
    struct qed_header h = {
        .magic = QED_MAGIC,
        .cluster_size = 64 * KiB,
        .table_size = 4,
        .header_size = 1,
        .l1_table_offset = 64 * KiB,
        .image_size = 1 * GiB,
    };
    return h;
}

static void write_image(const char *name, const struct qed_header *h, uint64_t size)
{
    write_hdr(name, h);
    set_size(name, size);
}

static void expect_open_refused(const char *name, int ret, const char *needle)
{
    qed_image *img;
    int r = try_open(name, true, &img);
    cr_assert_eq(r, ret, "expected %d, got %d: %s", ret, r, err);
    cr_assert_null(img);
    cr_assert(strstr(err, tp(name)) != NULL, "message does not name the file: \"%s\"", err);
    cr_assert(strstr(err, needle) != NULL, "message does not mention \"%s\": \"%s\"", needle,
              err);
    /* A read-write open is refused the same way. */
    r = try_open(name, false, &img);
    cr_assert_eq(r, ret, "read-write: expected %d, got %d: %s", ret, r, err);
}

Test(open, refuses_bad_cluster_size_exact_message)
{
    struct qed_header h = base_hdr();
    h.cluster_size = 12288;
    write_image("bad.qed", &h, 1 * MiB);
    qed_image *img;
    char want[512];
    cr_assert_eq(try_open("bad.qed", true, &img), -EINVAL);
    snprintf(want, sizeof(want),
             "%s: QED cluster size 12288 is not a power of two in [4096, 67108864]",
             tp("bad.qed"));
    cr_assert_str_eq(err, want);
}

Test(open, refuses_bad_magic)
{
    struct qed_header h = base_hdr();
    h.magic = 0x12345678;
    write_image("bad.qed", &h, 1 * MiB);
    expect_open_refused("bad.qed", -EINVAL, "magic");
}

Test(open, refuses_bad_table_size)
{
    struct qed_header h = base_hdr();
    h.table_size = 3;
    write_image("bad.qed", &h, 1 * MiB);
    expect_open_refused("bad.qed", -EINVAL, "table size 3");
}

Test(open, refuses_unknown_feature_naming_bit)
{
    struct qed_header h = base_hdr();
    h.features = 0x40;
    write_image("bad.qed", &h, 1 * MiB);
    expect_open_refused("bad.qed", -ENOTSUP, "0x40");
}

Test(open, refuses_header_size_zero)
{
    struct qed_header h = base_hdr();
    h.header_size = 0;
    write_image("bad.qed", &h, 1 * MiB);
    expect_open_refused("bad.qed", -EINVAL, "header size");
}

Test(open, refuses_unaligned_image_size)
{
    struct qed_header h = base_hdr();
    h.image_size = 1 * MiB + 100;
    write_image("bad.qed", &h, 1 * MiB);
    expect_open_refused("bad.qed", -EINVAL, "image size");
}

Test(open, refuses_image_size_over_maximum)
{
    struct qed_header h = base_hdr();
    h.image_size = 64 * TiB + 512;
    write_image("bad.qed", &h, 1 * MiB);
    expect_open_refused("bad.qed", -EINVAL, "image size");
}

Test(open, refuses_l1_past_end_of_file)
{
    struct qed_header h = base_hdr();
    write_image("bad.qed", &h, 64 * KiB + 256 * KiB - 1);
    expect_open_refused("bad.qed", -EINVAL, "L1 table");
}

Test(open, refuses_l1_unaligned)
{
    struct qed_header h = base_hdr();
    h.l1_table_offset = 64 * KiB + 4096;
    write_image("bad.qed", &h, 1 * MiB);
    expect_open_refused("bad.qed", -EINVAL, "L1 table offset");
}

Test(open, refuses_backing_name_past_header)
{
    struct qed_header h = base_hdr();
    h.features = QED_F_BACKING_FILE;
    h.backing_filename_offset = 0xffffffffu;
    h.backing_filename_size = 2;
    write_image("bad.qed", &h, 1 * MiB);
    expect_open_refused("bad.qed", -EINVAL, "backing file name");
}

Test(open, refuses_file_shorter_than_header)
{
    int fd = open(tp("tiny.qed"), O_WRONLY | O_CREAT, 0644);
    cr_assert_eq(write(fd, "QED", 4), 4);
    close(fd);
    expect_open_refused("tiny.qed", -EINVAL, "too small");
}

Test(open, refuses_missing_file)
{
    qed_image *img;
    cr_assert_eq(try_open("none.qed", true, &img), -ENOENT);
    cr_assert(strstr(err, tp("none.qed")) != NULL, "\"%s\"", err);
}

Test(open, refuses_raw_file)
{
    make_raw("raw.img", 1 * MiB, 3);
    expect_open_refused("raw.img", -EINVAL, "magic");
}

Test(open, accepts_trailing_partial_cluster)
{
    create("a.qed", 4 * MiB, 0, 0);
    set_size("a.qed", 320 * KiB + 1000);
    qed_image *img = open_img("a.qed", false);
    struct qed_info info;
    qed_get_info(img, &info);
    cr_assert_eq(info.file_size, 320 * KiB, "the partial cluster must be ignored");
    write_pat(img, 0, 64 * KiB, 2);
    read_expect_pat(img, 0, 64 * KiB, 2);
    cr_assert_eq(qed_close(img), 0);
    /* Allocation started at the rounded-down end: nothing points into the tail. */
    uint64_t l2 = pread_u64("a.qed", 64 * KiB);
    cr_assert_eq(l2 % (64 * KiB), 0);
    cr_assert_geq(l2, 320 * KiB);
}

Test(open, accepts_unknown_compat_bits)
{
    create("a.qed", 4 * MiB, 0, 0);
    struct qed_header h = read_hdr("a.qed");
    h.compat_features = 0x8000000000000001ull;
    write_hdr("a.qed", &h);
    qed_image *img = open_img("a.qed", false);
    cr_assert_eq(qed_close(img), 0);
    cr_assert_eq(read_hdr("a.qed").compat_features, 0x8000000000000001ull,
                 "compat bits must be left alone");
}

/* ---- autoclear bits ---- */

Test(open, unknown_autoclear_cleared_on_read_write_open)
{
    create("a.qed", 4 * MiB, 0, 0);
    struct qed_header h = read_hdr("a.qed");
    h.autoclear_features = 0x5;
    h.compat_features = 0x3;
    write_hdr("a.qed", &h);
    qed_image *img = open_img("a.qed", false);
    /* Cleared by the open itself, not only at close. */
    cr_assert_eq(read_hdr("a.qed").autoclear_features, 0);
    cr_assert_eq(qed_close(img), 0);
    struct qed_header after = read_hdr("a.qed");
    cr_assert_eq(after.autoclear_features, 0);
    cr_assert_eq(after.compat_features, 0x3);
    cr_assert_eq(after.features, 0);
}

Test(open, unknown_autoclear_untouched_on_read_only_open)
{
    create("a.qed", 4 * MiB, 0, 0);
    struct qed_header h = read_hdr("a.qed");
    h.autoclear_features = 0x5;
    write_hdr("a.qed", &h);
    qed_image *img = open_img("a.qed", true);
    cr_assert_eq(read_hdr("a.qed").autoclear_features, 0x5);
    cr_assert_eq(qed_close(img), 0);
    cr_assert_eq(read_hdr("a.qed").autoclear_features, 0x5);
}

/* ---- read-only opens never write ---- */

struct fsnap {
    uint8_t *data;
    size_t len;
    struct timespec mtime, ctime;
};

static struct fsnap fsnap_take(const char *name)
{
    struct fsnap s;
    struct stat st;
    s.data = slurp(name, &s.len);
    cr_assert_eq(stat(tp(name), &st), 0);
    s.mtime = st.st_mtim;
    s.ctime = st.st_ctim;
    return s;
}

static void fsnap_expect_same(const char *name, struct fsnap *a)
{
    struct fsnap b = fsnap_take(name);
    cr_assert_eq(a->len, b.len, "file size changed: %zu -> %zu", a->len, b.len);
    cr_assert(memcmp(a->data, b.data, a->len) == 0, "file contents changed");
    cr_assert(a->mtime.tv_sec == b.mtime.tv_sec && a->mtime.tv_nsec == b.mtime.tv_nsec,
              "mtime changed");
    cr_assert(a->ctime.tv_sec == b.ctime.tv_sec && a->ctime.tv_nsec == b.ctime.tv_nsec,
              "ctime changed (metadata was written)");
    free(a->data);
    free(b.data);
}

/* An image with data, then made to look uncleanly closed, with an old mtime. */
static void make_dirty_image(const char *name)
{
    create(name, 8 * MiB, 0, 0);
    qed_image *img = open_img(name, false);
    write_pat(img, 0, 128 * KiB, 4);
    cr_assert_eq(qed_close(img), 0);
    struct qed_header h = read_hdr(name);
    h.features |= QED_F_NEED_CHECK;
    h.autoclear_features = 0x1;
    write_hdr(name, &h);
    struct timespec old[2] = {{.tv_sec = 946684800}, {.tv_sec = 946684800}};
    cr_assert_eq(utimensat(AT_FDCWD, tp(name), old, 0), 0);
}

Test(open, read_only_open_never_writes)
{
    make_dirty_image("a.qed");
    struct fsnap s = fsnap_take("a.qed");
    qed_image *img = open_img("a.qed", true);
    struct qed_info info;
    qed_get_info(img, &info);
    cr_assert(info.dirty, "NEED_CHECK not reported");
    read_expect_pat(img, 0, 128 * KiB, 4);
    read_expect_zero(img, 1 * MiB, 64 * KiB);
    struct qed_extent ext[8];
    size_t n = 0;
    cr_assert_eq(qed_sync_block_status(img, 0, 8 * MiB, ext, 8, &n), 0);
    cr_assert_eq(qed_close(img), 0);
    fsnap_expect_same("a.qed", &s);
}

Test(open, read_only_refuses_writes)
{
    create("a.qed", 8 * MiB, 0, 0);
    struct fsnap s = fsnap_take("a.qed");
    qed_image *img = open_img("a.qed", true);
    uint8_t b[4096] = {1};
    cr_assert(qed_is_read_only(img));
    cr_assert_eq(qed_write(img, 0, b, sizeof(b), 0, NULL, NULL), -EROFS);
    cr_assert_eq(qed_close(img), 0);
    fsnap_expect_same("a.qed", &s);
}

Test(open, read_only_check_never_writes)
{
    make_dirty_image("a.qed");
    /* Also a corrupt entry, which a repair would change. */
    uint64_t l2 = pread_u64("a.qed", 64 * KiB);
    pwrite_u64("a.qed", l2 + 8, 12345);
    struct timespec old[2] = {{.tv_sec = 946684800}, {.tv_sec = 946684800}};
    cr_assert_eq(utimensat(AT_FDCWD, tp("a.qed"), old, 0), 0);
    struct fsnap s = fsnap_take("a.qed");

    struct qed_open_opts o = {.read_only = true};
    qed_image *img;
    cr_assert_eq(qed_open(NULL, tp("a.qed"), &o, &img, err, sizeof(err)), 0, "%s", err);
    struct qed_check_result res;
    cr_assert_eq(qed_check(img, false, &res), 0);
    cr_assert_eq(res.corruptions, 1);
    cr_assert_eq(qed_check(img, true, &res), -EROFS, "repair on a read-only image");
    cr_assert_eq(qed_close(img), 0);
    fsnap_expect_same("a.qed", &s);
}

/* ---- NEED_CHECK on a read-write open ---- */

Test(open, need_check_image_repaired_on_read_write_open)
{
    create("a.qed", 8 * MiB, 0, 0);
    qed_image *img = open_img("a.qed", false);
    write_pat(img, 0, 64 * KiB, 1);
    write_pat(img, 64 * KiB, 64 * KiB, 2);
    write_pat(img, 128 * KiB, 64 * KiB, 3);
    cr_assert_eq(qed_close(img), 0);

    uint64_t l2 = pread_u64("a.qed", 64 * KiB);
    cr_assert_neq(l2, 0);
    uint64_t e1 = pread_u64("a.qed", l2 + 8);
    pwrite_u64("a.qed", l2 + 8, e1 + 512); /* unaligned: corrupt */
    struct qed_header h = read_hdr("a.qed");
    h.features |= QED_F_NEED_CHECK;
    write_hdr("a.qed", &h);

    img = open_img("a.qed", false);
    /* The open repaired the image and cleared the flag on disk. */
    cr_assert_eq(read_hdr("a.qed").features & QED_F_NEED_CHECK, 0, "NEED_CHECK still set");
    cr_assert_eq(pread_u64("a.qed", l2 + 8), 0, "the corrupt entry was not zeroed");
    struct qed_info info;
    qed_get_info(img, &info);
    cr_assert_not(info.dirty);
    read_expect_pat(img, 0, 64 * KiB, 1);
    read_expect_zero(img, 64 * KiB, 64 * KiB);
    read_expect_pat(img, 128 * KiB, 64 * KiB, 3);
    struct qed_check_result res;
    cr_assert_eq(qed_check(img, false, &res), 0);
    cr_assert_eq(res.corruptions, 0);
    cr_assert_eq(qed_close(img), 0);
}

Test(open, need_check_clean_image_flag_cleared_on_read_write_open)
{
    create("a.qed", 8 * MiB, 0, 0);
    struct qed_header h = read_hdr("a.qed");
    h.features |= QED_F_NEED_CHECK;
    write_hdr("a.qed", &h);
    qed_image *img = open_img("a.qed", false);
    cr_assert_eq(read_hdr("a.qed").features, 0);
    cr_assert_eq(qed_close(img), 0);
    cr_assert_eq(read_hdr("a.qed").features, 0);
}

Test(open, need_check_kept_on_read_only_open)
{
    create("a.qed", 8 * MiB, 0, 0);
    struct qed_header h = read_hdr("a.qed");
    h.features |= QED_F_NEED_CHECK;
    write_hdr("a.qed", &h);
    qed_image *img = open_img("a.qed", true);
    cr_assert_eq(qed_close(img), 0);
    cr_assert_eq(read_hdr("a.qed").features, QED_F_NEED_CHECK);
}

Test(open, clean_close_clears_need_check_set_by_writes)
{
    create("a.qed", 8 * MiB, 0, 0);
    qed_image *img = open_img("a.qed", false);
    write_pat(img, 0, 4096, 1);
    /* No backing file: the first allocation sets NEED_CHECK on disk. */
    cr_assert(read_hdr("a.qed").features & QED_F_NEED_CHECK);
    cr_assert_eq(qed_close(img), 0);
    cr_assert_eq(read_hdr("a.qed").features & QED_F_NEED_CHECK, 0);
}

/* ---- exclusive access ---- */

Test(open, second_read_write_open_refused)
{
    create("a.qed", 8 * MiB, 0, 0);
    qed_image *a = open_img("a.qed", false), *b;
    int r = try_open("a.qed", false, &b);
    cr_assert_eq(r, -EBUSY, "second read-write open: %d %s", r, err);
    cr_assert_null(b);
    cr_assert(strstr(err, tp("a.qed")) != NULL, "message does not name the file: \"%s\"", err);
    cr_assert(strstr(err, "lock") != NULL, "message does not mention the lock: \"%s\"", err);
    cr_assert_eq(qed_close(a), 0);
}

Test(open, refused_open_leaves_holder_working)
{
    create("a.qed", 8 * MiB, 0, 0);
    qed_image *a = open_img("a.qed", false), *b;
    cr_assert_eq(try_open("a.qed", false, &b), -EBUSY);
    write_pat(a, 0, 64 * KiB, 6);
    read_expect_pat(a, 0, 64 * KiB, 6);
    cr_assert_eq(qed_close(a), 0);
}

Test(open, lock_released_on_close)
{
    create("a.qed", 8 * MiB, 0, 0);
    qed_image *a = open_img("a.qed", false);
    cr_assert_eq(qed_close(a), 0);
    a = open_img("a.qed", false);
    cr_assert_eq(qed_close(a), 0);
}

Test(open, read_only_opens_coexist)
{
    create("a.qed", 8 * MiB, 0, 0);
    qed_image *a = open_img("a.qed", true);
    qed_image *b = open_img("a.qed", true);
    qed_image *c = open_img("a.qed", true);
    read_expect_zero(b, 0, 4096);
    cr_assert_eq(qed_close(a), 0);
    cr_assert_eq(qed_close(b), 0);
    cr_assert_eq(qed_close(c), 0);
}

Test(open, read_write_open_refused_while_read_only_open)
{
    /* A reader does not share write (as QEMU's readers do not). */
    create("a.qed", 8 * MiB, 0, 0);
    qed_image *a = open_img("a.qed", true), *b;
    int r = try_open("a.qed", false, &b);
    cr_assert_eq(r, -EBUSY, "%d %s", r, err);
    cr_assert_eq(qed_close(a), 0);
}

Test(open, no_lock_read_only_open_allowed_while_written)
{
    create("a.qed", 8 * MiB, 0, 0);
    qed_image *a = open_img("a.qed", false), *b;
    struct qed_open_opts o = {.read_only = true, .no_lock = true};
    int r = qed_open(T.aio, tp("a.qed"), &o, &b, err, sizeof(err));
    cr_assert_eq(r, 0, "%d %s", r, err);
    cr_assert_eq(qed_close(b), 0);
    cr_assert_eq(qed_close(a), 0);
}

Test(open, no_lock_read_write_refused)
{
    create("a.qed", 8 * MiB, 0, 0);
    struct qed_open_opts o = {.no_lock = true};
    qed_image *b;
    cr_assert_eq(qed_open(T.aio, tp("a.qed"), &o, &b, err, sizeof(err)), -EINVAL);
}

Test(open, read_write_open_refused_in_another_process)
{
    create("a.qed", 8 * MiB, 0, 0);
    qed_image *a = open_img("a.qed", false);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        struct ev_loop *l = ev_loop_new(EVFLAG_AUTO);
        qed_aio *ca;
        qed_image *b;
        char e[512];
        if (!l || qed_aio_new(l, QED_AIO_THREADS, &ca) < 0)
            _exit(100);
        int r = qed_open(ca, tp("a.qed"), NULL, &b, e, sizeof(e));
        _exit(r == -EBUSY ? 0 : r == 0 ? 1 : 2);
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st));
    cr_assert_eq(WEXITSTATUS(st), 0, "the other process got %s",
                 WEXITSTATUS(st) == 1 ? "the image" : "an unexpected error");
    cr_assert_eq(qed_close(a), 0);
}

Test(open, qemu_refused_while_we_write)
{
    if (!have_qemu())
        cr_skip_test("qemu-img not installed");
    create("a.qed", 8 * MiB, 0, 0);
    qed_image *a = open_img("a.qed", false);
    cr_assert_neq(sh("qemu-io -f qed -c 'write 0 4k' a.qed >/dev/null 2>&1"), 0,
                  "qemu-io wrote to an image we hold");
    cr_assert_neq(sh("qemu-img info a.qed >/dev/null 2>&1"), 0,
                  "qemu-img info opened an image we hold for writing");
    cr_assert_eq(sh("qemu-img info -U a.qed >/dev/null 2>&1"), 0);
    cr_assert_eq(qed_close(a), 0);
    cr_assert_eq(sh("qemu-img info a.qed >/dev/null 2>&1"), 0);
}

/* Is the byte QEMU locks for "write" held by someone? */
static bool write_perm_held(const char *name)
{
    int fd = open(tp(name), O_RDONLY);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 101, .l_len = 1};
    cr_assert(fd >= 0);
    cr_assert_eq(fcntl(fd, F_OFD_GETLK, &fl), 0);
    close(fd);
    return fl.l_type != F_UNLCK;
}

Test(open, read_write_open_refused_while_qemu_writes)
{
    if (!have_qemu())
        cr_skip_test("qemu-img not installed");
    create("a.qed", 8 * MiB, 0, 0);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int nul = open("/dev/null", O_WRONLY);
        dup2(nul, 1);
        dup2(nul, 2);
        execlp("qemu-io", "qemu-io", "-f", "qed", "-c", "sleep 20000", tp("a.qed"), (char *)NULL);
        _exit(127);
    }
    /* Wait until qemu-io holds its locks. */
    bool held = false;
    for (int i = 0; i < 200 && !held; i++) {
        held = write_perm_held("a.qed");
        if (!held)
            usleep(25000);
    }
    qed_image *b;
    int r = held ? try_open("a.qed", false, &b) : 0;
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    cr_assert(held, "qemu-io did not lock the image");
    cr_assert_eq(r, -EBUSY, "read-write open while qemu-io writes: %d %s", r, err);
    cr_assert(strstr(err, tp("a.qed")) != NULL, "\"%s\"", err);
}

/* ---- backing file resolution ---- */

Test(open, backing_path_relative_to_image_directory)
{
    cr_assert_eq(mkdir(tp("sub"), 0755), 0);
    make_raw("sub/base.raw", 1 * MiB, 9);
    make_raw("base.raw", 1 * MiB, 10); /* a decoy where the current directory is */
    cr_assert_eq(create_backed("sub/ov.qed", 2 * MiB, "base.raw", QED_BACKING_RAW), 0, "%s",
                 err);
    char cwd[512];
    cr_assert_not_null(getcwd(cwd, sizeof(cwd)));
    cr_assert_eq(chdir(T.dir), 0);
    struct qed_open_opts o = {.read_only = true};
    qed_image *img;
    int r = qed_open(T.aio, "sub/ov.qed", &o, &img, err, sizeof(err));
    cr_assert_eq(r, 0, "%d %s", r, err);
    struct qed_info info;
    qed_get_info(img, &info);
    cr_assert_str_eq(info.backing_file, "base.raw");
    cr_assert_str_eq(info.backing_path, "sub/base.raw");
    read_expect_pat(img, 0, 64 * KiB, 9);
    cr_assert_eq(qed_close(img), 0);
    cr_assert_eq(chdir(cwd), 0);
}

Test(open, backing_path_relative_with_absolute_image_path)
{
    cr_assert_eq(mkdir(tp("sub"), 0755), 0);
    make_raw("sub/base.raw", 1 * MiB, 9);
    cr_assert_eq(create_backed("sub/ov.qed", 2 * MiB, "base.raw", QED_BACKING_RAW), 0, "%s",
                 err);
    cr_assert_eq(chdir("/"), 0);
    qed_image *img = open_img("sub/ov.qed", true);
    struct qed_info info;
    qed_get_info(img, &info);
    cr_assert_str_eq(info.backing_path, tp("sub/base.raw"));
    read_expect_pat(img, 4096, 4096, 9);
    cr_assert_eq(qed_close(img), 0);
}

Test(open, backing_path_absolute_kept)
{
    make_raw("base.raw", 1 * MiB, 11);
    cr_assert_eq(mkdir(tp("sub"), 0755), 0);
    char abs[256];
    snprintf(abs, sizeof(abs), "%s", tp("base.raw"));
    cr_assert_eq(create_backed("sub/ov.qed", 2 * MiB, abs, QED_BACKING_RAW), 0, "%s", err);
    qed_image *img = open_img("sub/ov.qed", true);
    struct qed_info info;
    qed_get_info(img, &info);
    cr_assert_str_eq(info.backing_path, abs);
    read_expect_pat(img, 0, 4096, 11);
    cr_assert_eq(qed_close(img), 0);
}

Test(open, backing_qed_chain_resolved_relative_to_each_image)
{
    cr_assert_eq(mkdir(tp("d1"), 0755), 0);
    cr_assert_eq(mkdir(tp("d1/d2"), 0755), 0);
    make_raw("d1/d2/base.raw", 256 * KiB, 12);
    cr_assert_eq(create_backed("d1/d2/mid.qed", 1 * MiB, "base.raw", QED_BACKING_RAW), 0, "%s",
                 err);
    cr_assert_eq(create_backed("d1/top.qed", 1 * MiB, "d2/mid.qed", QED_BACKING_QED), 0, "%s",
                 err);
    qed_image *img = open_img("d1/top.qed", true);
    read_expect_pat(img, 0, 256 * KiB, 12);
    read_expect_zero(img, 256 * KiB, 64 * KiB);
    cr_assert_eq(qed_close(img), 0);
}

Test(open, missing_raw_backing_file_clear_error)
{
    cr_assert_eq(create_backed("ov.qed", 2 * MiB, "gone.raw", QED_BACKING_RAW), 0, "%s", err);
    qed_image *img;
    int r = try_open("ov.qed", true, &img);
    cr_assert_eq(r, -ENOENT, "%d %s", r, err);
    cr_assert_null(img);
    cr_assert(strstr(err, "gone.raw") != NULL, "backing file not named: \"%s\"", err);
    cr_assert(strstr(err, tp("ov.qed")) != NULL, "image not named: \"%s\"", err);
}

Test(open, missing_qed_backing_file_clear_error)
{
    create("base.qed", 2 * MiB, 0, 0);
    cr_assert_eq(create_backed("ov.qed", 2 * MiB, "base.qed", QED_BACKING_QED), 0, "%s", err);
    cr_assert_eq(unlink(tp("base.qed")), 0);
    qed_image *img;
    int r = try_open("ov.qed", false, &img);
    cr_assert_eq(r, -ENOENT, "%d %s", r, err);
    cr_assert(strstr(err, "base.qed") != NULL, "backing file not named: \"%s\"", err);
}

Test(open, backing_not_locked_for_writing)
{
    /* Two overlays may share one backing file. */
    make_raw("base.raw", 1 * MiB, 13);
    cr_assert_eq(create_backed("a.qed", 2 * MiB, "base.raw", QED_BACKING_RAW), 0, "%s", err);
    cr_assert_eq(create_backed("b.qed", 2 * MiB, "base.raw", QED_BACKING_RAW), 0, "%s", err);
    qed_image *a = open_img("a.qed", false);
    qed_image *b = open_img("b.qed", false);
    read_expect_pat(a, 0, 4096, 13);
    read_expect_pat(b, 0, 4096, 13);
    cr_assert_eq(qed_close(a), 0);
    cr_assert_eq(qed_close(b), 0);
}
