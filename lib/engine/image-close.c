/*
 * image-close.c - closing an open image (qed_close) and freeing what an
 * open allocated.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qed-image.h"

void qed_image_free(struct qed_image *img)
{
    if (!img)
        return;
    qed_image_stop_clean(img);
    if (img->backing)
        qed_image_free(img->backing);
    if (img->backing_fd >= 0)
        close(img->backing_fd);
    if (img->fd >= 0)
        close(img->fd);
    qed_l2_cache_destroy(&img->cache);
    free(img->pub);
    while (img->free_reqs) {
        struct qed_req *r = img->free_reqs;
        img->free_reqs = r->next;
        free(r);
    }
    qed_meta_free(img);
    qed_bitmap_free_all(img);
    free(img->bmdir);
    free(img->l1);
    free(img->path);
    free(img);
}

int qed_close(qed_image *img)
{
    int r = 0;

    if (!img)
        return 0;
    if (img->aio) {
        struct ev_loop *loop = img->aio->loop;
        /* Let every request finish: their callbacks may still use the image. */
        while (img->inflight > 0 || img->clean_queued)
            ev_run(loop, EVRUN_ONCE);
        qed_image_stop_clean(img);
        /* The final flush, then NEED_CHECK cleared or written back (need-check.c).
         * Why a real flush even with cache=unsafe (QED_IO_F_NOSYNC): a clean
         * close must leave a consistent image, and NEED_CHECK may be cleared
         * only once every metadata write before it is on disk. */
        img->fd_io_flags &= ~QED_IO_F_NOSYNC;
        if (!img->read_only)
            r = qed_image_close_clean(img);
    }
    /* Why the bitmaps last: the final flush above made every write they
     * recorded durable, and nothing else is in flight to race the header
     * area (or the clusters a growth relocates).  Never after a failed
     * flush: left in use on disk, they are inconsistent at the next open. */
    if (r == 0 && !img->read_only && !img->flush_err)
        r = qed_bitmap_store(img);
    if (r < 0)
        qed_log(QED_LOG_ERROR, "%s: closing failed: %s", img->path, strerror(-r));
    if (img->backing)
        qed_close(img->backing), img->backing = NULL;
    qed_image_free(img);
    return r;
}
