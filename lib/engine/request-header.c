/*
 * request-header.c - the end of a request and the requests that rewrite
 * the header: the final flush (FLUSH, FUA, RESIZE), resize, and the
 * internal clean that clears NEED_CHECK.  Resize and clean hold the
 * allocating-write queue alone (alloc-queue.c).
 */
#include "config.h"

#include <errno.h>

#include "qed-image.h"
#include "request-internal.h"

/* ---- Flush ---- */

enum qed_rs_next qed_rs_flush_wait(struct qed_req *r)
{
    return qed_rs_finish(r, r->err);
}

/* ---- Resize ---- */

enum qed_rs_next qed_rs_resize_begin(struct qed_req *r)
{
    struct qed_image *img = r->img;
    int rc;

    if (img->flush_err) {
        /* Why refuse before writing: the header in memory may lack a
         * NEED_CHECK that is on disk (RS_HDR_FLUSH_WAIT forgets it),
         * and the resize's own fdatasync would make that header
         * durable.  The resize would fail at its flush anyway. */
        qed_log(QED_LOG_ERROR, "%s: not resizing: a flush of the image failed earlier",
                img->path);
        return qed_rs_finish(r, -EIO);
    }
    r->old_size = img->h.image_size;
    /* Why the bitmaps grow before the size changes: a write to the new
     * range may be submitted as soon as image_size says it is inside the
     * disk, and its submission marks the bitmaps. */
    rc = qed_bitmap_resize(img, r->new_size);
    if (rc < 0) {
        qed_bitmap_resize(img, r->old_size);
        return qed_rs_finish(r, rc);
    }
    __atomic_store_n(&img->h.image_size, r->new_size, __ATOMIC_RELAXED); /* fast-path.c */
    return qed_rs_wait_header_write(r, RS_RESIZE_HDR_WAIT);
}

enum qed_rs_next qed_rs_resize_hdr_wait(struct qed_req *r)
{
    if (r->err) {
        __atomic_store_n(&r->img->h.image_size, r->old_size, __ATOMIC_RELAXED);
        qed_bitmap_resize(r->img, r->old_size); /* shrinking never fails */
    }
    if (qed_rs_failed(r))
        return QED_RS_STOP;
    return qed_rs_wait_fsync(r, RS_FLUSH_WAIT);
}

/* ---- Clean: clear NEED_CHECK ---- */

enum qed_rs_next qed_rs_clean_begin(struct qed_req *r)
{
    struct qed_image *img = r->img;

    /* Only a flag we set ourselves (need-check.c says why). */
    if (!qed_image_may_clean(img))
        return qed_rs_finish(r, 0);
    /* Why flush first: NEED_CHECK may be cleared only when every
     * metadata update made under it is on stable storage. */
    return qed_rs_wait_fsync(r, RS_CLEAN_FLUSH_WAIT);
}

enum qed_rs_next qed_rs_clean_flush_wait(struct qed_req *r)
{
    struct qed_image *img = r->img;

    if (qed_rs_failed(r))
        return QED_RS_STOP;
    qed_image_mark_clean(img);
    return qed_rs_wait_header_write(r, RS_CLEAN_HDR_WAIT);
}

enum qed_rs_next qed_rs_clean_hdr_wait(struct qed_req *r)
{
    if (r->err)
        r->img->h.features |= QED_F_NEED_CHECK; /* still dirty on disk, maybe */
    return qed_rs_finish(r, r->err);
}
