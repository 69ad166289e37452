/*
 * qed-bitmaps.c - a helper the bitmap interop and crash scripts drive: add
 * dirty bitmaps to an image, write through libqed (so that they record
 * it), and print them (name, granularity, state, dirty runs) in a form a
 * script can compare.  Not a user tool: qed-img bitmap is.
 *
 *   qed-bitmaps add IMG NAME GRANULARITY
 *   qed-bitmaps write IMG OFFSET LENGTH BYTE
 *   qed-bitmaps show IMG          (read-only open)
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "qed.h"

static struct ev_loop *loop;
static qed_aio *aio;

static void die(const char *what, int r, const char *err)
{
    fprintf(stderr, "qed-bitmaps: %s: %s\n", what, err && err[0] ? err : strerror(-r));
    exit(1);
}

static uint64_t num(const char *s)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 0);
    if (errno || *end)
        die("bad number", -EINVAL, s);
    return v;
}

static qed_image *open_image(const char *path, bool ro)
{
    struct qed_open_opts o = {.read_only = ro};
    char err[1024] = "";
    qed_image *img = NULL;
    int r;

    loop = ev_default_loop(0);
    r = qed_aio_new(loop, QED_AIO_AUTO, &aio);
    if (r < 0)
        die("I/O engine", r, NULL);
    r = qed_open(aio, path, &o, &img, err, sizeof(err));
    if (r < 0)
        die("open", r, err);
    return img;
}

static int finish(qed_image *img)
{
    int r = qed_close(img);

    if (r < 0)
        die("close", r, NULL);
    qed_aio_free(aio);
    return 0;
}

static void show(qed_image *img)
{
    struct qed_dirty_extent ext[256];

    for (unsigned i = 0; i < qed_bitmap_count(img); i++) {
        struct qed_bitmap_info bi;
        uint64_t pos = 0, size = qed_size(img);

        qed_bitmap_info(img, i, &bi);
        printf("bitmap %s %" PRIu32 " %s %s %" PRIu64 "\n", bi.name, bi.granularity,
               bi.enabled ? "enabled" : "disabled",
               bi.inconsistent ? "inconsistent" : "consistent", bi.dirty_bytes);
        while (!bi.inconsistent && pos < size) {
            size_t n = 0;
            int r = qed_bitmap_status(img, bi.name, pos, size - pos, ext, 256, &n);

            if (r < 0)
                die("status", r, NULL);
            for (size_t k = 0; k < n; k++)
                if (ext[k].dirty)
                    printf("dirty %s %" PRIu64 " %" PRIu64 "\n", bi.name, ext[k].start,
                           ext[k].length);
            pos = ext[n - 1].start + ext[n - 1].length;
        }
    }
}

int main(int argc, char **argv)
{
    qed_image *img;
    int r = 0;

    if (argc == 5 && strcmp(argv[1], "add") == 0) {
        img = open_image(argv[2], false);
        r = qed_bitmap_add(img, argv[3], (uint32_t)num(argv[4]), false);
    } else if (argc == 6 && strcmp(argv[1], "write") == 0) {
        size_t len = (size_t)num(argv[4]);
        char *buf = malloc(len ? len : 1);

        if (!buf)
            die("malloc", -ENOMEM, NULL);
        memset(buf, (int)num(argv[5]), len);
        img = open_image(argv[2], false);
        r = qed_sync_write(img, num(argv[3]), buf, len, 0);
        free(buf);
    } else if (argc == 3 && strcmp(argv[1], "show") == 0) {
        img = open_image(argv[2], true);
        show(img);
    } else {
        fprintf(stderr, "usage: qed-bitmaps add IMG NAME GRAN | write IMG OFF LEN BYTE | "
                        "show IMG\n");
        return 2;
    }
    if (r < 0)
        die(argv[1], r, NULL);
    return finish(img);
}
