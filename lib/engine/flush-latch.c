/*
 * flush-latch.c - flushing an open image: the latch that keeps the first
 * fdatasync failure for the life of the image, and the queue that runs one
 * fdatasync of the image at a time.
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "qed-image.h"

/*
 * Why a latch: every flush of an image goes through one descriptor on a
 * buffered file, and Linux reports a write-back error once, to whichever
 * fdatasync runs next; the pages it could not write are then clean in the
 * page cache and never retried.  So the next fdatasync succeeds although
 * data written before it is gone -- on another connection's FLUSH, a FUA
 * write, a group commit, or the flush before NEED_CHECK is cleared.  As
 * PostgreSQL and QEMU do since "fsyncgate", the first failure is kept for
 * the life of the open image: every later flush fails with -EIO (nobody is
 * told their data is durable when it may not be), NEED_CHECK is never
 * cleared, and close marks the image NEED_CHECK.
 *
 * Only fdatasync failures latch.  A failed data or table write returns its
 * error to its own request, whose state machine keeps the cached tables as
 * they were (request.c, rule 5): its outcome concerns its own range only.
 * A failed fdatasync concerns every write completed before it, whoever made
 * it, which is what only an image-wide state can express.
 */
int qed_image_flush_result(struct qed_image *img, int res)
{
    if (res < 0 && img->flush_err == 0) {
        img->flush_err = res;
        qed_log(QED_LOG_ERROR,
                "%s: flushing the image failed (%s): data written before may be lost; from now "
                "on every flush and FUA write of this image fails, and it stays marked "
                "NEED_CHECK (restart to check and repair it)",
                img->path, strerror(-res));
        qed_image_stop_clean(img); /* NEED_CHECK stays (need-check.c) */
        return res;
    }
    if (res < 0)
        return res;
    return img->flush_err ? -EIO : 0;
}

/*
 * One fdatasync at a time.  Why: with two in flight on the same descriptor,
 * the kernel reports a write-back error to one of them only, and the other
 * may complete first, successfully, although the writes it had to cover were
 * lost: the latch would be set too late for it.  Run one after the other, the
 * failure is latched before the next fdatasync starts, and that one then
 * answers -EIO.  Flushes that arrive while one is in flight cannot ride on it
 * (it may have started before their writes completed), so they wait and
 * share the next one, which starts after every one of them was submitted:
 * under concurrent flushes this also issues fewer fdatasyncs.
 */
static void fsync_leader_done(struct qed_io *io);

/* Submit the waiting flushes' fdatasync: the first is the leader, the
 * rest ride on it.  The leader's completion comes to fsync_leader_done. */
static void fsync_start(struct qed_image *img)
{
    struct qed_io *leader = img->fsync_wait;

    img->fsync_wait = img->fsync_wait_tail = NULL;
    img->fsync_busy = true;
    img->fsync_riders = leader->next;
    img->fsync_leader_done = leader->done;
    img->fsync_leader_opaque = leader->opaque;
    leader->done = fsync_leader_done;
    leader->opaque = img;
    leader->next = NULL;
    for (struct qed_io *r = img->fsync_riders; r; r = r->next)
        img->fsync_riders_total++;
    img->fsyncs++;
    qed_aio_submit(img->aio, leader);
}

static void fsync_leader_done(struct qed_io *io)
{
    struct qed_image *img = io->opaque;
    struct qed_io *riders = img->fsync_riders;
    int64_t res = io->res; /* @io may be reused once its done ran */

    io->done = img->fsync_leader_done;
    io->opaque = img->fsync_leader_opaque;
    img->fsync_riders = NULL;
    img->fsync_busy = false;
    /* The next group starts before any completion runs: a completion may
     * submit more flushes, and the last one may let the caller close the
     * image, after which @img must not be touched. */
    if (img->fsync_wait)
        fsync_start(img);
    io->done(io);
    while (riders) {
        struct qed_io *r = riders;
        riders = r->next;
        r->next = NULL;
        r->res = res;
        r->done(r);
    }
}

void qed_image_submit_fsync(struct qed_image *img, struct qed_io *io)
{
    qed_io_list_push(&img->fsync_wait, &img->fsync_wait_tail, io);
    if (!img->fsync_busy)
        fsync_start(img);
}

void qed_image_submit_io(struct qed_image *img, struct qed_io *io)
{
    if (io->op == QED_IO_FSYNC)
        qed_image_submit_fsync(img, io); /* one fdatasync at a time, through the latch */
    else
        qed_aio_submit(img->aio, io);
}

int qed_flush_error(const qed_image *img)
{
    return img->flush_err;
}
