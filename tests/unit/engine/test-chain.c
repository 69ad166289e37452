/*
 * test-chain.c - unit tests of the public backing-chain helpers (qed.h):
 * qed_backing_path (how a backing name is resolved, as qed_open and QEMU
 * resolve it), qed_probe_format (QED magic or raw, the size in that format,
 * and what is refused), qed_chain_path (the file at each depth of an open
 * image's chain), and the strings qed_get_info hands out.
 * Only the public API is used, as qed-img uses it (the shared fixture
 * gives the temporary directory).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fixture.h"

#define MiB (1024ull * 1024)

static struct test_fixture F;
static char err[1024];

/* Path of @name inside the test directory. */
static const char *tp(const char *name)
{
    return tf_path(&F, name);
}

static void setup(void)
{
    tf_setup(&F, "chain", QED_AIO_TEST);
    cr_assert_eq(mkdir(tp("sub"), 0755), 0);
}

static void teardown(void)
{
    tf_teardown(&F);
}

/* A raw file of @len bytes starting with @head (rest zeros). */
static void make_raw(const char *name, size_t len, const char *head)
{
    int fd = open(tp(name), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert(fd >= 0, "create %s: %s", name, strerror(errno));
    if (head)
        cr_assert_eq(write(fd, head, strlen(head)), (ssize_t)strlen(head));
    cr_assert_eq(ftruncate(fd, (off_t)len), 0);
    close(fd);
}

static void make_qed(const char *name, uint64_t size, const char *backing, enum qed_backing_fmt f)
{
    struct qed_create_opts o = {.size = size, .backing_file = backing, .backing_fmt = f};
    int r = qed_create(tp(name), &o, err, sizeof(err));
    cr_assert_eq(r, 0, "create %s: %s", name, err);
}

/* qed_probe_format of @name, which must succeed; returns the format it gives. */
static enum qed_backing_fmt probe_ok(const char *name, enum qed_backing_fmt f, uint64_t *size)
{
    int r = qed_probe_format(tp(name), &f, size, err, sizeof(err));
    cr_assert_eq(r, 0, "probe %s: %d %s", name, r, err);
    return f;
}

/* qed_backing_path, checked and freed. */
static void expect_path(const char *image, const char *name, const char *want)
{
    char *out = (char *)"unset";
    int r = qed_backing_path(image, name, &out);
    cr_assert_eq(r, 0, "qed_backing_path(%s, %s): %d", image, name, r);
    cr_assert_str_eq(out, want, "qed_backing_path(%s, %s)", image, name);
    free(out);
}

TestSuite(chain, .init = setup, .fini = teardown, .timeout = 30);

Test(chain, relative_names_resolve_against_the_image_directory)
{
    expect_path("dir/img.qed", "base.raw", "dir/base.raw");
    expect_path("a/b/img.qed", "../base.qed", "a/b/../base.qed");
    expect_path("/srv/vm/img.qed", "base.raw", "/srv/vm/base.raw");
    expect_path("dir/img.qed", "sub/base.raw", "dir/sub/base.raw");
    /* QEMU's path_combine keeps everything up to the last slash. */
    expect_path("/img.qed", "base.raw", "/base.raw");
}

Test(chain, names_without_a_directory_part_stay_as_given)
{
    expect_path("img.qed", "base.raw", "base.raw");
    expect_path("img.qed", "../x/base.raw", "../x/base.raw");
}

Test(chain, absolute_names_stay_as_given)
{
    expect_path("dir/img.qed", "/abs/base.raw", "/abs/base.raw");
    expect_path("img.qed", "/abs/base.raw", "/abs/base.raw");
}

Test(chain, an_empty_name_is_refused)
{
    char *out = (char *)"unset";
    cr_assert_eq(qed_backing_path("dir/img.qed", "", &out), -EINVAL);
    cr_assert_null(out);
}

Test(chain, probe_tells_qed_from_raw)
{
    uint64_t size = 0;

    make_qed("base.qed", 3 * MiB, NULL, QED_BACKING_PROBE);
    cr_assert_eq(probe_ok("base.qed", QED_BACKING_PROBE, &size), QED_BACKING_QED);
    cr_assert_eq(size, 3 * MiB, "a QED image's size is its virtual size, not the file's");

    make_raw("base.raw", 5000, "QEX");
    cr_assert_eq(probe_ok("base.raw", QED_BACKING_PROBE, &size), QED_BACKING_RAW);
    cr_assert_eq(size, 5000);

    /* Shorter than the magic: raw, and no read past the end is an error. */
    make_raw("tiny.raw", 2, "QE");
    cr_assert_eq(probe_ok("tiny.raw", QED_BACKING_PROBE, NULL), QED_BACKING_RAW);
}

Test(chain, a_format_given_is_kept)
{
    enum qed_backing_fmt f;
    uint64_t size = 0;
    struct stat st;

    /* A QED file read as raw (what -F raw asks): its length, not its header's size. */
    make_qed("base.qed", 3 * MiB, NULL, QED_BACKING_PROBE);
    cr_assert_eq(probe_ok("base.qed", QED_BACKING_RAW, &size), QED_BACKING_RAW);
    cr_assert_eq(stat(tp("base.qed"), &st), 0);
    cr_assert_eq(size, (uint64_t)st.st_size);

    /* A raw file said to be QED: its size cannot be read from a header. */
    f = QED_BACKING_QED;
    make_raw("base.raw", 4096, NULL);
    cr_assert_lt(qed_probe_format(tp("base.raw"), &f, &size, err, sizeof(err)), 0);
    cr_assert_neq(err[0], '\0');
}

Test(chain, probe_errors_name_the_file)
{
    enum qed_backing_fmt f = QED_BACKING_PROBE;

    err[0] = '\0';
    cr_assert_eq(qed_probe_format(tp("missing.raw"), &f, NULL, err, sizeof(err)), -ENOENT);
    cr_assert(strstr(err, "missing.raw"), "%s", err);

    /* Not a regular file or block device: refused without blocking. */
    cr_assert_eq(mkfifo(tp("fifo"), 0600), 0);
    err[0] = '\0';
    cr_assert_lt(qed_probe_format(tp("fifo"), &f, NULL, err, sizeof(err)), 0);
    cr_assert(strstr(err, "FIFO"), "%s", err);

    err[0] = '\0';
    cr_assert_lt(qed_probe_format(tp("sub"), &f, NULL, err, sizeof(err)), 0);
    cr_assert(strstr(err, "directory"), "%s", err);
    cr_assert_eq(f, QED_BACKING_PROBE, "a failed probe leaves the format alone");
}

/* Open @name read-only without an engine (enough for the chain's names). */
static qed_image *open_ro(const char *name)
{
    struct qed_open_opts o = {.read_only = true};
    qed_image *img = NULL;
    int r = qed_open(NULL, tp(name), &o, &img, err, sizeof(err));
    cr_assert_eq(r, 0, "open %s: %s", name, err);
    return img;
}

Test(chain, chain_path_names_each_depth)
{
    struct qed_info info;
    qed_image *img;

    make_raw("sub/base.raw", 1 * MiB, NULL);
    make_qed("sub/mid.qed", 1 * MiB, "base.raw", QED_BACKING_RAW);
    make_qed("top.qed", 1 * MiB, "sub/mid.qed", QED_BACKING_PROBE);
    img = open_ro("top.qed");
    cr_assert_str_eq(qed_chain_path(img, 0), tp("top.qed"));
    cr_assert_str_eq(qed_chain_path(img, 1), tp("sub/mid.qed"));
    cr_assert_str_eq(qed_chain_path(img, 2), tp("sub/base.raw"));
    cr_assert_null(qed_chain_path(img, 3));
    cr_assert_null(qed_chain_path(img, 1000));

    /* qed_get_info's strings point into the image. */
    qed_get_info(img, &info);
    cr_assert_str_eq(info.backing_file, "sub/mid.qed");
    cr_assert_str_eq(info.backing_path, tp("sub/mid.qed"));
    cr_assert_str_eq(info.backing_format, "qed");
    cr_assert_eq(qed_close(img), 0);
}

Test(chain, an_image_without_backing_has_a_chain_of_one)
{
    struct qed_info info;
    qed_image *img;

    make_qed("alone.qed", 1 * MiB, NULL, QED_BACKING_PROBE);
    img = open_ro("alone.qed");
    cr_assert_str_eq(qed_chain_path(img, 0), tp("alone.qed"));
    cr_assert_null(qed_chain_path(img, 1));
    qed_get_info(img, &info);
    cr_assert_not_null(info.backing_file);
    cr_assert_not_null(info.backing_path);
    cr_assert_str_eq(info.backing_file, "");
    cr_assert_str_eq(info.backing_path, "");
    cr_assert_null(info.backing_format);
    cr_assert_eq(qed_close(img), 0);
}

Test(chain, the_open_path_and_qed_backing_path_agree)
{
    struct qed_info info;
    qed_image *img;
    char *want = NULL;

    make_raw("sub/base.raw", 1 * MiB, NULL);
    make_qed("sub/top.qed", 1 * MiB, "base.raw", QED_BACKING_RAW);
    img = open_ro("sub/top.qed");
    qed_get_info(img, &info);
    cr_assert_eq(qed_backing_path(tp("sub/top.qed"), info.backing_file, &want), 0);
    cr_assert_str_eq(info.backing_path, want);
    cr_assert_str_eq(qed_chain_path(img, 1), want);
    free(want);
    cr_assert_eq(qed_close(img), 0);
}
