/*
 * request.c - the request machine's API entry points (read, write, write
 * zeroes, discard, flush, block status, resize, and the internal NEED_CHECK
 * clean), its driver, and finishing a request.
 *
 * Every request has one state field (enum qed_req_state).  The states are
 * declared once, in request-states.h, with what each waits for; each has
 * one handler, a small function that does its work and names the next
 * state (qed_rs_go) or stops because the request waits or finished.  The
 * driver below loops over the handler table; every completion re-enters it
 * through qed_req_resume().  The handlers live in the files named in
 * request-internal.h, in the order of a write's life.
 *
 * A request works through its range one "run" at a time: a stretch of
 * clusters inside one L2 table that the mapping treats the same way (data at
 * contiguous host offsets, zero clusters, unallocated clusters).
 *
 * Allocating writes (and everything else that changes metadata: write
 * zeroes, resize, clean) go through the per-image queue.  An admitted
 * request keeps its place until it finishes; allocating writes to disjoint
 * clusters are admitted side by side, everything else alone (see
 * alloc-queue.c).  Writes to allocated clusters, reads, discards and
 * flushes do not queue and run concurrently with everything.
 *
 * Ordering rules for an allocation, in the order they happen:
 *  1. No backing file: NEED_CHECK is written and flushed before the first
 *     allocation, because the data is not flushed before the L2 update and a
 *     crash may leave an L2 entry that points past the end of the file.
 *  2. Data (with the copied-on-write head and tail) goes to new clusters at
 *     the end of the file.  Zeros for the head and tail of fresh clusters
 *     are not written; the batch extends the file instead ("Sparse
 *     allocation" in group-commit.c).
 *  3. With a backing file the data is flushed before the L2 update: an entry
 *     pointing at lost data would read zeros instead of the backing data.
 *  4. A new L2 table is written and flushed before the L1 entry that points
 *     to it, so L1 never points at a table that is not on disk.
 *  5. The cached L1/L2 entries change only after their write succeeded, so
 *     nobody writes in place into clusters a failed update leaves unmapped.
 * Entry updates of existing L2 tables are group committed (group-commit.c,
 * a second machine): a batch keeps these rules for every one of its members.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "qed-image.h"
#include "request-internal.h"

/* The driver's table: the name and the handler of every state, from the one list. */
static const struct req_state_info {
    const char *name;
    enum qed_rs_next (*fn)(struct qed_req *r);
} req_states[QED_REQ_NSTATES] = {
#define QED_REQ_STATE(id, name, handler) [id] = {name, handler},
#include "request-states.h"
#undef QED_REQ_STATE
};

static const char *type_names[] = {
    [REQ_READ] = "read",         [REQ_WRITE] = "write",   [REQ_WZERO] = "write-zeroes",
    [REQ_DISCARD] = "discard",   [REQ_FLUSH] = "flush",   [REQ_BSTATUS] = "block-status",
    [REQ_RESIZE] = "resize",     [REQ_CLEAN] = "clean",
};

const char *qed_req_state_name(unsigned s)
{
    return s < QED_REQ_NSTATES ? req_states[s].name : NULL;
}

bool qed_req_state_has_handler(unsigned s)
{
    return s < QED_REQ_NSTATES && req_states[s].fn != NULL;
}

const char *qed_req_type_name(enum qed_req_type t)
{
    return type_names[t];
}

void qed_req_log_transition(const struct qed_req *r, enum qed_req_state s)
{
    qed_log(QED_LOG_DEBUG, "%s req %p: %s -> %s", type_names[r->type], (void *)r,
            req_states[r->state].name, req_states[s].name);
}

/* ---- The driver ---- */

void qed_req_resume(struct qed_req *r)
{
    /* Why wait for all: some states start two I/Os (head and tail copies). */
    if (r->pending)
        return;
    /* Each handler either names the next state (QED_RS_GO) or stops: then
     * @r waits for a completion that resumes it here, or it has finished
     * and may be freed already. */
    while (req_states[r->state].fn(r) == QED_RS_GO)
        ;
}

/* ---- Completion delivery ---- */

#define REQ_POOL_MAX 256

/* Keep a finished request for reuse, up to a bound; free the rest. */
static void req_recycle(struct qed_image *img, struct qed_req *r)
{
    if (img->nfree_reqs < REQ_POOL_MAX) {
        r->next = img->free_reqs;
        img->free_reqs = r;
        img->nfree_reqs++;
    } else {
        free(r);
    }
}

static void req_deliver(struct qed_req *r)
{
    struct qed_image *img = r->img;
    qed_done_fn cb = r->cb;
    void *opaque = r->opaque;
    int err = r->err;

    req_recycle(img, r);
    img->inflight--;
    cb(opaque, err);
}

static void req_defer_fn(struct qed_defer *d)
{
    req_deliver((struct qed_req *)((char *)d - offsetof(struct qed_req, defer)));
}

/* ---- Finishing ---- */

void qed_req_finish(struct qed_req *r, int err)
{
    struct qed_image *img = r->img;
    bool was_holding = r->holding;

    if (err < 0 && !r->err)
        r->err = err;
    /* Why mark again at the end (the submission marked already): a bitmap
     * added or cleared while this request was in flight (control socket)
     * must still record it, as QEMU marks at completion. */
    if (r->type == REQ_WRITE || r->type == REQ_WZERO || r->type == REQ_DISCARD)
        qed_bitmap_mark(img, r->off, r->end - r->off);
    if (r->err < 0 && r->type != REQ_CLEAN)
        qed_log(QED_LOG_DEBUG, "%s: %s at %" PRIu64 "+%" PRIu64 " failed: %s", img->path,
                type_names[r->type], r->off, r->end - r->off, strerror(-r->err));
    if (r->l2) {
        qed_l2_cache_unref(&img->cache, r->l2);
        r->l2 = NULL;
    }
    free(r->ents);
    r->ents = NULL;
    free(r->bs_tmp);
    r->bs_tmp = NULL;
    qed_req_set_state(r, RS_DONE);

    free(r->cow);
    r->cow = NULL;
    if (was_holding)
        qed_queue_leave(r);
    /* Why defer inside a submit call: the callback must never run from
     * inside the call that submitted its request. */
    if (img->submitting) {
        r->defer.fn = req_defer_fn; /* a zero fill may have used it (request-run.c) */
        qed_aio_defer(img->aio, &r->defer);
    }
    else
        req_deliver(r);

    if (was_holding)
        qed_queue_next(img);
}

/* ---- The first and the last state ---- */

static enum qed_rs_next start_wzero(struct qed_req *r)
{
    if ((r->flags & QED_REQ_FAST_ZERO) && (r->flags & QED_REQ_NO_HOLE))
        return qed_rs_finish(r, -ENOTSUP); /* provisioning means writing data */
    r->scanning = (r->flags & QED_REQ_FAST_ZERO) != 0;
    r->cur_pos = r->off;
    /* Metadata changes: hold the queue for the whole request, so a
     * FAST_ZERO scan stays true until the changes are made. */
    return qed_queue_enter(r, RS_NEXT) ? QED_RS_GO : QED_RS_STOP;
}

enum qed_rs_next qed_rs_start(struct qed_req *r)
{
    switch (r->type) {
    case REQ_FLUSH:
        return qed_rs_wait_fsync(r, RS_FLUSH_WAIT);
    case REQ_WZERO:
        return start_wzero(r);
    case REQ_RESIZE:
    case REQ_CLEAN:
        return qed_queue_enter(r, r->type == REQ_RESIZE ? RS_RESIZE_BEGIN : RS_CLEAN_BEGIN)
                   ? QED_RS_GO
                   : QED_RS_STOP;
    default:
        r->cur_pos = r->off;
        return qed_rs_go(r, RS_NEXT);
    }
}

enum qed_rs_next qed_rs_done(struct qed_req *r)
{
    return QED_RS_STOP;
}

/* ---- Submission ---- */

static struct qed_req *req_new(struct qed_image *img, enum qed_req_type type, uint64_t off,
                               uint64_t len, void *buf, unsigned flags, qed_done_fn cb,
                               void *opaque)
{
    struct qed_req *r = img->free_reqs;

    if (r) {
        img->free_reqs = r->next;
        img->nfree_reqs--;
        /* Only the header needs clearing: the iovec arrays are always
         * written before they are read. */
        memset(r, 0, offsetof(struct qed_req, io));
    } else {
        r = calloc(1, sizeof(*r));
        if (!r)
            return NULL;
    }
    r->img = img;
    r->type = type;
    r->state = RS_START;
    r->flags = flags;
    r->off = off;
    r->end = off + len;
    r->buf = buf;
    r->cb = cb;
    r->opaque = opaque;
    r->defer.fn = req_defer_fn;
    return r;
}

static int req_submit(struct qed_req *r)
{
    struct qed_image *img = r->img;

    img->inflight++;
    img->submitting++;
    qed_req_resume(r);
    img->submitting--;
    return 0;
}

/* Common argument checks.  @write: the request changes the image. */
static int check_range(struct qed_image *img, uint64_t off, uint64_t len, bool write,
                       unsigned flags, unsigned allowed, int range_err)
{
    if (!img->aio)
        return -EINVAL;
    if (flags & ~allowed)
        return -EINVAL;
    if (write && img->read_only)
        return -EROFS;
    /* Also refuses an end that wraps past 2^64: every request end below is
     * then at most the image size, itself at most QED_MAX_VIRTUAL_SIZE. */
    if (!qed_range_within(off, len, img->h.image_size))
        return range_err;
    return 0;
}

static int submit_new(struct qed_image *img, enum qed_req_type type, uint64_t off, uint64_t len,
                      void *buf, unsigned flags, qed_done_fn cb, void *opaque,
                      struct qed_req **out)
{
    struct qed_req *r = req_new(img, type, off, len, buf, flags, cb, opaque);

    if (!r)
        return -ENOMEM;
    *out = r;
    return 0;
}

int qed_read(qed_image *img, uint64_t off, void *buf, size_t len, qed_done_fn cb, void *opaque)
{
    struct qed_req *r;
    int rc = check_range(img, off, len, false, 0, 0, -EINVAL);

    if (rc == 0)
        rc = submit_new(img, REQ_READ, off, len, buf, 0, cb, opaque, &r);
    return rc < 0 ? rc : req_submit(r);
}

int qed_write(qed_image *img, uint64_t off, const void *buf, size_t len, unsigned flags,
              qed_done_fn cb, void *opaque)
{
    struct qed_req *r;
    int rc = check_range(img, off, len, true, flags, QED_REQ_FUA, -ENOSPC);

    if (rc == 0)
        rc = submit_new(img, REQ_WRITE, off, len, (void *)buf, flags, cb, opaque, &r);
    if (rc == 0)
        qed_bitmap_mark(img, off, len);
    return rc < 0 ? rc : req_submit(r);
}

int qed_write_zeroes(qed_image *img, uint64_t off, uint64_t len, unsigned flags, qed_done_fn cb,
                     void *opaque)
{
    struct qed_req *r;
    int rc = check_range(img, off, len, true, flags,
                         QED_REQ_FUA | QED_REQ_NO_HOLE | QED_REQ_FAST_ZERO, -ENOSPC);

    if (rc == 0)
        rc = submit_new(img, REQ_WZERO, off, len, NULL, flags, cb, opaque, &r);
    if (rc == 0)
        qed_bitmap_mark(img, off, len);
    return rc < 0 ? rc : req_submit(r);
}

int qed_discard(qed_image *img, uint64_t off, uint64_t len, unsigned flags, qed_done_fn cb,
                void *opaque)
{
    struct qed_req *r;
    int rc = check_range(img, off, len, true, flags, QED_REQ_FUA, -EINVAL);

    if (rc == 0)
        rc = submit_new(img, REQ_DISCARD, off, len, NULL, flags, cb, opaque, &r);
    if (rc == 0)
        qed_bitmap_mark(img, off, len);
    return rc < 0 ? rc : req_submit(r);
}

int qed_flush(qed_image *img, qed_done_fn cb, void *opaque)
{
    struct qed_req *r;
    int rc = check_range(img, 0, 0, false, 0, 0, -EINVAL);

    if (rc == 0)
        rc = submit_new(img, REQ_FLUSH, 0, 0, NULL, 0, cb, opaque, &r);
    return rc < 0 ? rc : req_submit(r);
}

int qed_block_status(qed_image *img, uint64_t off, uint64_t len, struct qed_extent *ext,
                     size_t max, size_t *n, qed_done_fn cb, void *opaque)
{
    struct qed_req *r;
    int rc = check_range(img, off, len, false, 0, 0, -EINVAL);

    if (rc == 0 && (max == 0 || !ext || !n))
        rc = -EINVAL;
    if (rc == 0)
        rc = submit_new(img, REQ_BSTATUS, off, len, NULL, 0, cb, opaque, &r);
    if (rc < 0)
        return rc;
    *n = 0;
    r->ext = ext;
    r->ext_max = max;
    r->ext_n = n;
    return req_submit(r);
}

int qed_resize(qed_image *img, uint64_t new_size, qed_done_fn cb, void *opaque)
{
    struct qed_req *r;
    uint64_t rounded;
    int rc = check_range(img, 0, 0, true, 0, 0, -EINVAL);

    if (rc < 0)
        return rc;
    if (qed_align_up_overflows(new_size, 512, &rounded) || rounded > QED_MAX_VIRTUAL_SIZE) {
        qed_log(QED_LOG_ERROR, "%s: size %" PRIu64 " exceeds the maximum %" PRIu64
                " (2^63 - 512, the most NBD clients can address)", img->path, new_size,
                (uint64_t)QED_MAX_VIRTUAL_SIZE);
        return -EFBIG;
    }
    new_size = rounded;
    if (new_size < img->h.image_size) {
        qed_log(QED_LOG_ERROR, "%s: shrinking from %" PRIu64 " to %" PRIu64 " is not supported",
                img->path, img->h.image_size, new_size);
        return -EINVAL;
    }
    if (new_size > img->g.max_size) {
        qed_log(QED_LOG_ERROR, "%s: size %" PRIu64 " exceeds the maximum %" PRIu64
                " for this cluster and table size", img->path, new_size, img->g.max_size);
        return -EFBIG;
    }
    rc = submit_new(img, REQ_RESIZE, 0, 0, NULL, 0, cb, opaque, &r);
    if (rc < 0)
        return rc;
    r->new_size = new_size;
    return req_submit(r);
}

int qed_req_submit_clean(struct qed_image *img, qed_done_fn cb, void *opaque)
{
    struct qed_req *r;
    int rc = check_range(img, 0, 0, true, 0, 0, -EINVAL);

    if (rc == 0)
        rc = submit_new(img, REQ_CLEAN, 0, 0, NULL, 0, cb, opaque, &r);
    return rc < 0 ? rc : req_submit(r);
}
