/*
 * sync.c - the synchronous wrapper: submit one request and run the loop until
 * it completes.  For tools and simple tests; never call it from a loop callback.
 */
#include "config.h"

#include <errno.h>

#include "qed-image.h"

struct sync_wait {
    bool done;
    int ret;
};

static void sync_cb(void *opaque, int ret)
{
    struct sync_wait *w = opaque;
    w->ret = ret;
    w->done = true;
}

static int sync_run(qed_image *img, struct sync_wait *w, int rc)
{
    if (rc < 0)
        return rc;
    while (!w->done)
        ev_run(img->aio->loop, EVRUN_ONCE);
    return w->ret;
}

int qed_sync_read(qed_image *img, uint64_t off, void *buf, size_t len)
{
    struct sync_wait w = {0};
    return sync_run(img, &w, qed_read(img, off, buf, len, sync_cb, &w));
}

int qed_sync_write(qed_image *img, uint64_t off, const void *buf, size_t len, unsigned flags)
{
    struct sync_wait w = {0};
    return sync_run(img, &w, qed_write(img, off, buf, len, flags, sync_cb, &w));
}

int qed_sync_write_zeroes(qed_image *img, uint64_t off, uint64_t len, unsigned flags)
{
    struct sync_wait w = {0};
    return sync_run(img, &w, qed_write_zeroes(img, off, len, flags, sync_cb, &w));
}

int qed_sync_discard(qed_image *img, uint64_t off, uint64_t len)
{
    struct sync_wait w = {0};
    return sync_run(img, &w, qed_discard(img, off, len, 0, sync_cb, &w));
}

int qed_sync_flush(qed_image *img)
{
    struct sync_wait w = {0};
    return sync_run(img, &w, qed_flush(img, sync_cb, &w));
}

int qed_sync_resize(qed_image *img, uint64_t new_size)
{
    struct sync_wait w = {0};
    return sync_run(img, &w, qed_resize(img, new_size, sync_cb, &w));
}

int qed_sync_block_status(qed_image *img, uint64_t off, uint64_t len, struct qed_extent *ext,
                          size_t max, size_t *n)
{
    struct sync_wait w = {0};
    return sync_run(img, &w, qed_block_status(img, off, len, ext, max, n, sync_cb, &w));
}
