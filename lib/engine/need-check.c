/*
 * need-check.c - the life of the NEED_CHECK flag in an open image: set and
 * made durable before the first allocating write, cleared by the clean
 * timer once allocating writes have been idle, and on close cleared after
 * the final flush (or written back, when a flush failed).
 *
 * The flag says "the tables may be inconsistent": while it is on disk, the
 * next read-write open checks and repairs the image (image-open.c, check.c).
 * The asynchronous header writes and flushes themselves are request states
 * (request.c: RS_ALLOC_BEGIN..RS_HDR_FLUSH_WAIT set it, RS_CLEAN_* clear it);
 * the decisions they apply are the functions below.
 */
#include "config.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "qed-image.h"

/* ---- Setting it before the first allocating write ---- */

bool qed_image_must_mark_dirty(const struct qed_image *img)
{
    /* Rule 1 (request.c): without a backing file, NEED_CHECK is written and
     * flushed before the first allocation.  With one, the data flush before
     * the L2 update protects the tables instead, and the flag is not used. */
    return img->backing_kind == BACKING_NONE && !(img->h.features & QED_F_NEED_CHECK);
}

void qed_image_mark_dirty(struct qed_image *img)
{
    img->h.features |= QED_F_NEED_CHECK;
    img->dirty_set_by_us = true;
    qed_header_encode(&img->h, img->hdr_raw);
}

void qed_image_unmark_dirty(struct qed_image *img)
{
    /* The flag is not known to be on disk: a failed write or fdatasync may
     * have dropped the header page for good.  Forget it, so that the next
     * allocation writes and flushes it again (and fails while the flush
     * latch is set) instead of allocating without a durable NEED_CHECK.  If
     * it did reach the disk, it stays there: close never clears it on a
     * failed image. */
    img->h.features &= ~QED_F_NEED_CHECK;
}

/* ---- Clearing it when idle (the clean timer) ---- */

bool qed_image_may_clean(const struct qed_image *img)
{
    /* Only a flag we set ourselves: one left by a crash or by unrepaired
     * corruption must stay until a check clears it. */
    return (img->h.features & QED_F_NEED_CHECK) && !img->read_only && img->dirty_set_by_us;
}

void qed_image_mark_clean(struct qed_image *img)
{
    /* Called only after the flush: NEED_CHECK may be cleared only when every
     * metadata update made under it is on stable storage. */
    img->h.features &= ~QED_F_NEED_CHECK;
    qed_header_encode(&img->h, img->hdr_raw);
}

static void clean_done(void *opaque, int ret)
{
    struct qed_image *img = opaque;
    img->clean_queued = false;
    if (ret < 0)
        qed_log(QED_LOG_WARN, "%s: clearing NEED_CHECK failed: %s", img->path, strerror(-ret));
}

static void clean_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct qed_image *img = w->data;

    (void)loop;
    (void)revents;
    if (img->clean_queued || !(img->h.features & QED_F_NEED_CHECK) || img->flush_err)
        return;
    if (qed_req_submit_clean(img, clean_done, img) == 0)
        img->clean_queued = true;
}

void qed_image_init_clean(struct qed_image *img)
{
    ev_timer_init(&img->clean_timer, clean_timer_cb, 0., 0.);
    img->clean_timer.data = img;
}

void qed_image_arm_clean(struct qed_image *img)
{
    /* A failed flush (the latch) keeps NEED_CHECK for good: no clean. */
    if (!img->aio || !(img->h.features & QED_F_NEED_CHECK) || img->flush_err)
        return;
    ev_timer_stop(img->aio->loop, &img->clean_timer);
    ev_timer_set(&img->clean_timer, img->clean_delay_ms / 1000.0, 0.);
    ev_timer_start(img->aio->loop, &img->clean_timer);
}

void qed_image_stop_clean(struct qed_image *img)
{
    if (img->aio && ev_is_active(&img->clean_timer))
        ev_timer_stop(img->aio->loop, &img->clean_timer);
}

/* ---- Close ---- */

/*
 * Closing a failed image: make sure NEED_CHECK is on disk, whatever the
 * in-memory flag says (the header write that set it may be what the failed
 * flush lost), so that the next open checks the image.  Best effort: the
 * error is already reported.
 */
static void close_failed(struct qed_image *img)
{
    int r;

    img->h.features |= QED_F_NEED_CHECK;
    r = qed_image_write_header_sync(img);
    if (r == 0 && fdatasync(img->fd) < 0)
        r = -errno;
    if (r < 0)
        qed_log(QED_LOG_ERROR, "%s: cannot mark the image NEED_CHECK after a failed flush: %s",
                img->path, strerror(-r));
}

int qed_image_close_clean(struct qed_image *img)
{
    int r = qed_sync_flush(img);

    if (r == 0 && (img->h.features & QED_F_NEED_CHECK) && img->dirty_set_by_us) {
        /* Why only after the flush: the flag may say "consistent" only
         * once every metadata update before it is on disk. */
        img->h.features &= ~QED_F_NEED_CHECK;
        r = qed_image_write_header_sync(img);
        if (r == 0 && fdatasync(img->fd) < 0)
            r = qed_image_flush_result(img, -errno);
    }
    if (img->flush_err) {
        /* Never "consistent" after a failed flush, even one that
         * failed before this close: write NEED_CHECK back. */
        close_failed(img);
        if (r == 0)
            r = -EIO;
    }
    return r;
}
