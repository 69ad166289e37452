/*
 * request-run.c - handling one run (a stretch of clusters that the mapping
 * treats the same way) for each request type: state RS_RUN, the data I/O
 * it waits for (RS_DATA_WAIT), and block status, with the backing image's
 * answer (RS_BS_BACKING_WAIT).  A run that must allocate goes on to
 * RS_ALLOC_BEGIN (request-alloc.c).
 */
#include "config.h"

#include <errno.h>
#include <stddef.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "checked.h"
#include "qed-image.h"
#include "request-internal.h"

#define BS_TMP_EXTENTS 64

/* ---- Read, write, discard ---- */

/* The next step of a long zero fill, one loop turn later. */
static void zero_step_defer_fn(struct qed_defer *d)
{
    struct qed_req *r = (struct qed_req *)((char *)d - offsetof(struct qed_req, defer));

    r->pending--;
    qed_req_resume(r);
}

/*
 * A run that reads as zeros (unallocated without a backing file, or a zero
 * cluster): fill the caller's buffer.  Why in steps: a read of a long hole
 * would otherwise zero up to a whole request (32 MiB) in one loop turn while
 * every other client waits; each step zeroes at most QED_IO_LOOP_COPY_MAX
 * bytes and the next one runs on a later turn (r->defer is free until the
 * request finishes, which sets it back).
 */
static enum qed_rs_next run_read_zeros(struct qed_req *r, uint8_t *dst)
{
    uint64_t n = qed_min64(r->run_len, QED_IO_LOOP_COPY_MAX);
    bool more = n < r->run_len;

    memset(dst, 0, n);
    qed_aio_loop_copy_note(r->img->aio, n);
    r->run_len = n;
    qed_req_run_advance(r);
    if (!more)
        return QED_RS_GO;
    r->defer.fn = zero_step_defer_fn;
    r->pending++; /* stepped again only by zero_step_defer_fn */
    qed_aio_defer(r->img->aio, &r->defer);
    return QED_RS_STOP;
}

static enum qed_rs_next run_read(struct qed_req *r)
{
    struct qed_image *img = r->img;
    uint8_t *dst = r->buf + (r->cur_pos - r->off);

    if (r->kind == RUN_DATA) {
        qed_req_set_state(r, RS_DATA_WAIT);
        qed_req_submit_rw(r, 0, QED_IO_READ, dst, r->run_len, r->host);
        return QED_RS_STOP;
    }
    if (r->kind == RUN_UNALLOC && img->backing_kind != BACKING_NONE) {
        qed_req_set_state(r, RS_DATA_WAIT);
        qed_req_backing_read(r, 0, r->cur_pos, dst, r->run_len);
        /* Nothing in flight (past the backing file's end, or a failed
         * submit): RS_DATA_WAIT runs at once. */
        return r->pending ? QED_RS_STOP : QED_RS_GO;
    }
    return run_read_zeros(r, dst);
}

static enum qed_rs_next run_write(struct qed_req *r)
{
    struct qed_image *img = r->img;

    if (r->kind == RUN_DATA) {
        qed_req_set_state(r, RS_DATA_WAIT);
        qed_req_submit_rw(r, 0, QED_IO_WRITE, r->buf + (r->cur_pos - r->off), r->run_len,
                          r->host);
        return QED_RS_STOP;
    }
    if (!r->holding) {
        /* Allocation needs the queue.  Drop the table: it may change while
         * we wait, and the lookup is redone once we hold the queue. */
        if (r->l2)
            qed_l2_cache_unref(&img->cache, r->l2);
        r->l2 = NULL;
        return qed_queue_enter(r, RS_NEXT) ? QED_RS_GO : QED_RS_STOP;
    }
    return qed_rs_go(r, RS_ALLOC_BEGIN);
}

static enum qed_rs_next run_discard(struct qed_req *r)
{
    struct qed_image *img = r->img;
    const struct qed_geom *g = &img->g;
    uint64_t a, b;

    /* Whole clusters only: [cur_pos rounded up, run end rounded down). */
    if (r->kind == RUN_DATA && !qed_align_up_overflows(r->cur_pos, g->cluster_size, &a) &&
        !qed_add_overflows(r->cur_pos, r->run_len, &b) && (b = qed_start_of_cluster(g, b)) > a) {
        qed_req_set_state(r, RS_DATA_WAIT);
        qed_req_submit_io(r, 0, QED_IO_PUNCH, img->fd, NULL, 0, r->host + (a - r->cur_pos),
                          b - a);
        return QED_RS_STOP;
    }
    qed_req_run_advance(r);
    return QED_RS_GO;
}

/* ---- Write zeroes ---- */

/* Is the write-zeroes run at cur_pos doable without writing data? */
static bool wzero_run_is_fast(const struct qed_req *r)
{
    const struct qed_geom *g = &r->img->g;
    bool whole = qed_offset_in_cluster(g, r->cur_pos) == 0 &&
                 qed_offset_in_cluster(g, r->cur_pos + r->run_len) == 0;

    switch (r->kind) {
    case RUN_ZERO:
        return true;
    case RUN_UNALLOC:
        return whole || r->img->backing_kind == BACKING_NONE;
    default:
        return false;
    }
}

/*
 * Write zeroes handles partial clusters and whole clusters differently, so a
 * run never mixes them: a partial head cluster, then the whole clusters, then
 * a partial tail cluster.  Zero writes are also bounded in size.
 */
static void wzero_trim_run(struct qed_req *r)
{
    const struct qed_geom *g = &r->img->g;
    uint64_t pos = r->cur_pos, in = qed_offset_in_cluster(g, pos);

    if (in) {
        r->run_len = qed_min64(r->run_len, g->cluster_size - in);
    } else if (r->run_len >= g->cluster_size) {
        r->run_len = qed_start_of_cluster(g, r->run_len);
    }
    if (r->run_len > QED_ZERO_RUN_MAX)
        r->run_len = QED_ZERO_RUN_MAX;
}

static enum qed_rs_next run_wzero(struct qed_req *r)
{
    struct qed_image *img = r->img;

    wzero_trim_run(r);
    if (r->scanning) {
        /* FAST_ZERO: look at the whole range before changing anything. */
        if (!wzero_run_is_fast(r))
            return qed_rs_finish(r, -ENOTSUP);
        qed_req_run_advance(r);
        return QED_RS_GO;
    }
    if (r->kind == RUN_DATA) {
        int n = qed_req_iov_add_zeros(r, 0, r->run_len);
        qed_req_set_state(r, RS_DATA_WAIT);
        qed_req_submit_io(r, 0, QED_IO_WRITE, img->fd, r->iov, n, r->host, r->run_len);
        return QED_RS_STOP;
    }
    if (r->flags & QED_REQ_NO_HOLE)
        return qed_rs_go(r, RS_ALLOC_BEGIN); /* fully provision: allocate, write real zeros */
    if (r->kind == RUN_ZERO) {
        qed_req_run_advance(r);
        return QED_RS_GO;
    }
    /* Unallocated */
    if (qed_offset_in_cluster(&img->g, r->cur_pos) == 0 &&
        qed_offset_in_cluster(&img->g, r->cur_pos + r->run_len) == 0) {
        r->zero_entries = true; /* whole clusters: zero entries, no data */
        return qed_rs_go(r, RS_ALLOC_BEGIN);
    }
    if (img->backing_kind != BACKING_NONE)
        return qed_rs_go(r, RS_ALLOC_BEGIN); /* partial: copy the rest from backing */
    qed_req_run_advance(r); /* partial and no backing: already reads as zeros */
    return QED_RS_GO;
}

/* ---- Block status ---- */

/* Add @x to the caller's extent list, merging with the last one.  False when full. */
static bool bs_emit(struct qed_req *r, const struct qed_extent *x)
{
    size_t n = *r->ext_n;

    if (x->length == 0)
        return true;
    if (n > 0) {
        struct qed_extent *l = &r->ext[n - 1];
        if (l->start + l->length == x->start && l->depth == x->depth &&
            l->present == x->present && l->zero == x->zero && l->data == x->data &&
            l->has_offset == x->has_offset &&
            (!l->has_offset || l->offset + l->length == x->offset)) {
            l->length += x->length;
            return true;
        }
    }
    if (n == r->ext_max)
        return false;
    r->ext[n] = *x;
    *r->ext_n = n + 1;
    return true;
}

/* Emit extents for [pos, pos+len) of a raw backing file, found with SEEK_DATA/SEEK_HOLE. */
static bool bs_raw(struct qed_req *r, uint64_t pos, uint64_t len)
{
    int fd = r->img->backing_fd;
    uint64_t end = pos + len;

    while (pos < end) {
        struct qed_extent x = {.start = pos, .depth = 1, .present = true, .has_offset = true,
                               .offset = pos};
        off_t d = lseek(fd, (off_t)pos, SEEK_DATA);
        uint64_t stop;

        if (d < 0 || (uint64_t)d > pos) {
            /* A hole up to the next data (or to the end when there is none). */
            stop = d < 0 ? end : qed_min64((uint64_t)d, end);
            x.zero = true;
        } else {
            off_t h = lseek(fd, (off_t)pos, SEEK_HOLE);
            stop = h < 0 ? end : qed_min64((uint64_t)h, end);
            x.data = true;
        }
        if (stop <= pos)
            stop = end;
        x.length = stop - pos;
        if (!bs_emit(r, &x))
            return false;
        pos = stop;
    }
    return true;
}

/* Ask the backing image for the block status of the unallocated run. */
static enum qed_rs_next bs_ask_backing(struct qed_req *r, uint64_t n)
{
    int rc;

    if (!r->bs_tmp) {
        r->bs_tmp = malloc(BS_TMP_EXTENTS * sizeof(*r->bs_tmp));
        if (!r->bs_tmp)
            return qed_rs_finish(r, -ENOMEM);
    }
    r->bs_tmp_n = 0;
    qed_req_set_state(r, RS_BS_BACKING_WAIT);
    r->pending++;
    rc = qed_block_status(r->img->backing, r->cur_pos, n, r->bs_tmp, BS_TMP_EXTENTS,
                          &r->bs_tmp_n, qed_req_sub_done, r);
    if (rc < 0) {
        r->pending--;
        qed_req_finish(r, rc);
    }
    return QED_RS_STOP;
}

static enum qed_rs_next run_bstatus(struct qed_req *r)
{
    struct qed_image *img = r->img;
    struct qed_extent x = {.start = r->cur_pos, .length = r->run_len};
    bool more;

    if (r->kind == RUN_DATA) {
        x.present = x.data = x.has_offset = true;
        x.offset = r->host;
        more = bs_emit(r, &x);
    } else if (r->kind == RUN_ZERO) {
        x.present = x.zero = true;
        more = bs_emit(r, &x);
    } else if (img->backing_kind == BACKING_NONE || r->cur_pos >= img->backing_size) {
        x.zero = true; /* unallocated everywhere */
        more = bs_emit(r, &x);
    } else {
        uint64_t n = qed_min64(r->run_len, img->backing_size - r->cur_pos);
        if (img->backing_kind != BACKING_RAW)
            return bs_ask_backing(r, n);
        r->run_len = n;
        more = bs_raw(r, r->cur_pos, n);
    }
    if (!more)
        return qed_rs_finish(r, 0); /* the caller's list is full */
    qed_req_run_advance(r);
    return QED_RS_GO;
}

/* ---- The states ---- */

/* Is the run's L2 table the L1 table, for a request that may update it? */
static bool run_would_write_l1(const struct qed_req *r)
{
    const struct qed_image *img = r->img;

    return r->l2 && r->type != REQ_READ && r->type != REQ_BSTATUS &&
           r->l2->offset >= img->h.l1_table_offset &&
           r->l2->offset - img->h.l1_table_offset < img->g.table_bytes;
}

enum qed_rs_next qed_rs_run(struct qed_req *r)
{
    qed_req_run_lookup(r);
    if (r->kind == RUN_BAD)
        return qed_rs_finish(r, -EIO);
    if (run_would_write_l1(r)) {
        /* A corrupt L1 entry names the L1 table as an L2 table: reading
         * through it is harmless, but an update would overwrite L1. */
        qed_log(QED_LOG_ERROR, "%s: L1 entry %" PRIu64 " points at the L1 table; refusing to "
                "write through it", r->img->path, r->l1_index);
        return qed_rs_finish(r, -EIO);
    }
    switch (r->type) {
    case REQ_READ:
        return run_read(r);
    case REQ_WRITE:
        return run_write(r);
    case REQ_WZERO:
        return run_wzero(r);
    case REQ_DISCARD:
        return run_discard(r);
    case REQ_BSTATUS:
        return run_bstatus(r);
    default:
        return qed_rs_finish(r, -EINVAL);
    }
}

enum qed_rs_next qed_rs_data_wait(struct qed_req *r)
{
    if (r->type == REQ_DISCARD && r->err == -EOPNOTSUPP)
        r->err = 0; /* discard is advisory where holes cannot be punched */
    if (qed_rs_failed(r))
        return QED_RS_STOP;
    qed_req_run_advance(r);
    return QED_RS_GO;
}

enum qed_rs_next qed_rs_bs_backing_wait(struct qed_req *r)
{
    uint64_t covered = 0;

    if (qed_rs_failed(r))
        return QED_RS_STOP;
    for (size_t i = 0; i < r->bs_tmp_n; i++) {
        struct qed_extent x = r->bs_tmp[i];
        x.depth++;
        if (!bs_emit(r, &x))
            return qed_rs_finish(r, 0);
        covered += x.length;
    }
    if (covered == 0)
        return qed_rs_finish(r, -EIO);
    r->run_len = covered;
    qed_req_run_advance(r);
    return QED_RS_GO;
}
