/*
 * group-commit.c - group commit of L2 entry updates: the second state
 * machine.  Its states are declared once in group-commit-states.h; a batch
 * of runs goes through them, one batch in flight at a time.
 *
 * How a request passes from one machine to the other: in RS_L2_UPDATE
 * (request-alloc.c) a run of an existing L2 table fills r->ents, enters
 * RS_GC_WAIT and calls qed_gc_join(), which queues it on img->gc_head and
 * takes one count of r->pending, so that nothing but this machine resumes
 * it.  On the next loop turn gc_start() takes every queued run into a
 * batch and runs the batch's states.  In GC_FINISH the batch publishes the
 * entries it wrote (or hands each member its error), drops that count and
 * resumes each member (qed_req_resume): the member's RS_GC_WAIT handler
 * then goes on to RS_ALLOC_DONE, or finishes it with the error.
 */
#include "config.h"

#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "qed-image.h"
#include "request-internal.h"

/*
 * An allocating write into an existing L2 table writes its data at once
 * (side by side with the others the queue admitted), and then, instead of
 * writing its L2 entries itself, joins the group commit: runs waiting in
 * img->gc_head.  One batch at a time is in flight (img->gc_cur); when the
 * first run joins an idle group commit, the batch starts on the next loop
 * turn, so that every data write completing in this turn joins it, and
 * runs that join while a batch is in flight make up the next batch, started
 * when that one completes.
 *
 * A batch, with the same ordering as a single run:
 *  - with a backing file, one flush of the members' data (rule 3): every
 *    member's data write completed before it joined, so one fdatasync
 *    called now covers them all;
 *  - then one write per stretch of each touched table (members sorted by
 *    table and index, neighbours merged when at most GC_GAP_MAX entries lie
 *    between them).  The bytes in a gap are copied from the cached table:
 *    only a batch changes entries of an existing table, one batch at a time,
 *    and the cache holds exactly what the earlier batches wrote, so the gap
 *    rewrites what is on disk (or, after a failed batch, the old entries the
 *    cache kept: the clusters of that batch leak, nothing points at them).
 *    A gap holding an entry disabled at open (metadata.c) is never merged
 *    over: that marker lives only in memory.
 *  - each stretch stands alone: when its write succeeded, its members'
 *    entries go into the cached table (rule 5) and they go on; when it
 *    failed, only its members fail with that error and the cached table
 *    keeps their old entries, so nobody writes in place into clusters the
 *    failure may have left unmapped on disk.  Why not fail the whole
 *    batch: the other stretches are on disk, and a cache that kept their
 *    old entries would disagree with the disk, so the range would change
 *    with no write once the table is evicted and read again (or the image
 *    reopened).  (A failed write that reached the file after all can do
 *    that to its own range, unless a later batch rewrote those entries from
 *    the cache first: allowed for a write that reported failure, as after a
 *    failed L1 update.)  When a step every member depends on fails (the
 *    extension, or the flush), no entry is written and every member fails;
 *    a failed flush also sets the image's flush latch (flush-latch.c).
 * A member is acknowledged only after its batch's L2 write completed (and
 * after its own FUA flush, which follows as before).
 *
 * Sparse allocation.  A run that fills only part of its new clusters, where
 * the rest must read as zeros (no backing file, or a zero cluster), writes
 * only its data when the clusters are fresh: at or past fresh_from, the end
 * of the file at open rounded up to a cluster, so no byte there ever held
 * data (clusters are taken only from the end of the file and never handed
 * out twice in one open; the unwritten bytes are a hole, or past the end of
 * the file, and read as zeros after any crash, never as another cluster's
 * stale data).  Such a run joins the group commit even when it is its own
 * batch.  The file must still reach the end of every cluster an L2 entry
 * names (an opener takes the file size rounded down to a cluster as the
 * end of valid clusters), so the batch writes zeros into the last bytes of
 * its highest cluster when that cluster's tail was left unwritten, as its
 * first step: the owner of that cluster has written its data and nobody
 * else writes there until the batch makes the entry visible.  Ordering:
 *  - the extension completes before the L2 writes start: if it fails, the
 *    batch fails with no entry written, so an entry that reached the file
 *    never names clusters past its end -- which would be corruption once a
 *    clean close cleared NEED_CHECK;
 *  - with a backing file (no NEED_CHECK), the rule 3 flush comes between
 *    them, so an entry on disk names clusters the durable file covers;
 *  - without one, a crash may keep an entry and lose the extension: the
 *    check at open (NEED_CHECK is set) drops entries past the end of the
 *    file, exactly as it does for lost data writes (rule 1).
 *
 * Where the image reserves space (request-alloc.c, "Reserving"), a sparse
 * run's clusters were fallocated, keeping the file size, before its data
 * write: none of the above changes, and the extension writes into blocks
 * already reserved.
 *
 * New L2 tables and the L1 entries pointing at them do not take part: a run
 * needing one is exclusive (see needs_exclusive, alloc-queue.c) and writes the table, the
 * flush (rule 4) and the L1 entry itself.
 */

#define GC_GAP_MAX 1024 /* entries (8 KiB) a merged L2 write may rewrite unchanged */

enum gc_state {
#define QED_GC_STATE(id, name, handler) id,
#include "group-commit-states.h"
#undef QED_GC_STATE
    GC_NSTATES /* not a state: how many there are */
};

struct gc_seg {
    struct qed_l2 *l2;
    uint64_t lo, hi;           /* entry range written */
    size_t first, last;        /* members [first, last) of the sorted array */
    uint64_t *buf;
    int err;                   /* its write failed (or was never made: -ENOMEM) */
    struct qed_io io;
    struct iovec iov;
};

struct qed_gc_batch {
    struct qed_image *img;
    struct qed_req **mem;      /* members */
    size_t n, nseg;
    unsigned pending;
    int err;
    enum gc_state state;       /* what the batch does, or what its I/Os in flight are */
    bool flush;                /* rule 3: flush the members' data before the L2 write */
    uint64_t ext_off, ext_len; /* zeros that extend the file (ext_len 0: none) */
    struct qed_io fio, eio;
    struct iovec eiov;
    struct gc_seg seg[];       /* n at most */
};

/* What a batch state's handler tells the driver (as for requests). */
enum gc_next { GC_STOP, GC_GO };

#define QED_GC_STATE(id, name, handler) static enum gc_next handler(struct qed_gc_batch *b);
#include "group-commit-states.h"
#undef QED_GC_STATE

/* The driver's table: the name and the handler of every state, from the one list. */
static const struct gc_state_info {
    const char *name;
    enum gc_next (*fn)(struct qed_gc_batch *b);
} gc_states[GC_NSTATES] = {
#define QED_GC_STATE(id, name, handler) [id] = {name, handler},
#include "group-commit-states.h"
#undef QED_GC_STATE
};

const char *qed_gc_state_name(unsigned s)
{
    return s < GC_NSTATES ? gc_states[s].name : NULL;
}

bool qed_gc_state_has_handler(unsigned s)
{
    return s < GC_NSTATES && gc_states[s].fn != NULL;
}

/* Enter state @s (logged when debug logging is on) and run it now. */
static enum gc_next gc_go(struct qed_gc_batch *b, enum gc_state s)
{
    if (qed_log_debug)
        qed_log(QED_LOG_DEBUG, "group commit batch %p: %s -> %s", (void *)b,
                gc_states[b->state].name, gc_states[s].name);
    b->state = s;
    return GC_GO;
}

/* Run the batch's states until one waits for I/O or the batch is over (freed). */
static void gc_run(struct qed_gc_batch *b)
{
    while (gc_states[b->state].fn(b) == GC_GO)
        ;
}

/* ---- Joining ---- */

static void gc_start(struct qed_image *img);

static void gc_defer_fn(struct qed_defer *d)
{
    struct qed_image *img = (struct qed_image *)((char *)d - offsetof(struct qed_image, gc_defer));

    img->gc_scheduled = false;
    if (!img->gc_cur && img->gc_head)
        gc_start(img);
}

static void gc_schedule(struct qed_image *img)
{
    if (img->gc_scheduled)
        return;
    img->gc_scheduled = true;
    img->gc_defer.fn = gc_defer_fn;
    qed_aio_defer(img->aio, &img->gc_defer);
}

void qed_gc_join(struct qed_req *r)
{
    struct qed_image *img = r->img;

    r->pending++; /* resumed again only by gc_finish (or gc_start on -ENOMEM) */
    QED_FIFO_APPEND(img->gc_head, img->gc_tail, r, gc_next);
    /* Why not start at once: data writes completing in this same turn (one
     * engine wake-up) should share the batch; why not while a batch is in
     * flight: that is what makes the next batch large. */
    if (!img->gc_cur)
        gc_schedule(img);
}

/* ---- The batch's I/O ---- */

static void gc_io_done(struct qed_io *io)
{
    struct qed_gc_batch *b = io->opaque;
    int res = (int)io->res;

    if (io->op == QED_IO_FSYNC)
        res = qed_image_flush_result(b->img, res); /* latched: -EIO, logged once */
    if (io->res < 0)
        qed_log(QED_LOG_ERROR, "%s: group commit %s at %" PRIu64 " failed: %s", b->img->path,
                io->op == QED_IO_FSYNC ? "flush"
                : io == &b->eio        ? "file extension"
                                       : "L2 write",
                io->offset, strerror((int)-io->res));
    if (res < 0 && b->state == GC_L2_WAIT) {
        /* Only L2 writes are in flight now: this stretch fails alone. */
        ((struct gc_seg *)((char *)io - offsetof(struct gc_seg, io)))->err = res;
    } else if (res < 0 && !b->err) {
        b->err = res;
    }
    if (--b->pending > 0)
        return;
    gc_run(b); /* the wait state decides what comes next */
}

static void gc_submit(struct qed_gc_batch *b, struct qed_io *io, enum qed_io_op op, void *buf,
                      uint64_t len, uint64_t offset, struct iovec *iov)
{
    if (buf) {
        iov->iov_base = buf;
        iov->iov_len = len;
    }
    qed_io_set(io, op, b->img->fd, b->img->fd_io_flags, buf ? iov : NULL, buf ? 1 : 0, offset,
               len, gc_io_done, b);
    b->pending++;
    qed_image_submit_io(b->img, io); /* fdatasyncs one at a time (flush-latch.c) */
}

/* ---- Starting a batch ---- */

/* No batch could be made: every waiting run fails with @err. */
static void gc_fail_all(struct qed_req *list, int err)
{
    while (list) {
        struct qed_req *r = list;
        list = r->gc_next;
        if (!r->err)
            r->err = err;
        r->pending--;
        qed_req_resume(r);
    }
}

/* Decide what the batch does before its L2 writes: the flush and the extension. */
static void gc_plan(struct qed_gc_batch *b)
{
    struct qed_image *img = b->img;
    const struct qed_req *top = NULL;
    uint64_t top_end = 0;

    for (size_t i = 0; i < b->n; i++) {
        const struct qed_req *r = b->mem[i];
        /* Rule 3, once for the batch: members whose clusters got data. */
        if (img->backing_kind != BACKING_NONE && r->alloc_host)
            b->flush = true;
        if (r->alloc_host && r->alloc_host + r->alloc_n * img->g.cluster_size > top_end) {
            top = r;
            top_end = r->alloc_host + r->alloc_n * img->g.cluster_size;
        }
    }
    if (top && top->sparse && top->tail_len && top_end > img->ext_end) {
        /* The highest cluster's tail is unwritten: extend the file to its
         * end with zeros in its last bytes (at most a sector). */
        b->ext_len = qed_min64(top->tail_len, 512);
        b->ext_off = top_end - b->ext_len;
    }
}

/* Take every waiting run into a new batch and start it. */
static void gc_start(struct qed_image *img)
{
    struct qed_req *list = img->gc_head, *r;
    struct qed_gc_batch *b;
    size_t n = 0;

    img->gc_head = img->gc_tail = NULL;
    for (r = list; r; r = r->gc_next)
        n++;
    b = calloc(1, sizeof(*b) + n * sizeof(b->seg[0]));
    if (b)
        b->mem = malloc(n * sizeof(b->mem[0]));
    if (!b || !b->mem) {
        free(b);
        gc_fail_all(list, -ENOMEM);
        return;
    }
    b->img = img;
    b->n = n;
    n = 0;
    for (r = list; r; r = r->gc_next)
        b->mem[n++] = r;
    img->gc_cur = b;
    gc_plan(b);
    b->state = GC_EXTEND;
    gc_run(b);
}

/* ---- The states, in order ---- */

static enum gc_next gc_extend(struct qed_gc_batch *b)
{
    if (!b->ext_len)
        return gc_go(b, GC_FLUSH);
    /* The extension completes before any entry naming the clusters it
     * makes valid is written (see "Sparse allocation"). */
    gc_go(b, GC_EXTEND_WAIT);
    gc_submit(b, &b->eio, QED_IO_WRITE, qed_zero_buf, b->ext_len, b->ext_off, &b->eiov);
    return GC_STOP;
}

static enum gc_next gc_extend_wait(struct qed_gc_batch *b)
{
    /* Failed: no entry is written, every member fails. */
    return gc_go(b, b->err ? GC_FINISH : GC_FLUSH);
}

static enum gc_next gc_flush(struct qed_gc_batch *b)
{
    if (!b->flush)
        return gc_go(b, GC_L2_WRITE);
    gc_go(b, GC_FLUSH_WAIT);
    gc_submit(b, &b->fio, QED_IO_FSYNC, NULL, 0, 0, NULL);
    return GC_STOP;
}

static enum gc_next gc_flush_wait(struct qed_gc_batch *b)
{
    /* Failed (the image's flush latch is set too): every member fails. */
    return gc_go(b, b->err ? GC_FINISH : GC_L2_WRITE);
}

static int gc_cmp(const void *pa, const void *pb)
{
    const struct qed_req *a = *(struct qed_req *const *)pa, *b = *(struct qed_req *const *)pb;

    if (a->l2->offset != b->l2->offset)
        return a->l2->offset < b->l2->offset ? -1 : 1;
    if (a->alloc_first != b->alloc_first)
        return a->alloc_first < b->alloc_first ? -1 : 1;
    return 0;
}

/* May segment @s grow to cover entries up to @to?  Not across a long gap, nor
 * across an entry that is disabled only in memory. */
static bool gc_can_merge(const struct qed_image *img, const struct gc_seg *s, uint64_t to)
{
    if (to - s->hi > GC_GAP_MAX)
        return false;
    if (img->nbogus == 0)
        return true; /* every marker is in img->bogus (metadata.c): none exists */
    for (uint64_t i = s->hi; i < to; i++) {
        uint64_t e = le64toh(s->l2->t[i]);
        /* A disabled entry (QED_ENTRY_DISABLED set) is never cluster-aligned. */
        if (e > QED_ENTRY_ZERO && (e & (img->g.cluster_size - 1)))
            return false;
    }
    return true;
}

/* Sort the members by table and index, and merge neighbours into segments. */
static void gc_segments(struct qed_gc_batch *b)
{
    qsort(b->mem, b->n, sizeof(b->mem[0]), gc_cmp);
    b->nseg = 0;
    for (size_t i = 0; i < b->n; i++) {
        struct qed_req *r = b->mem[i];
        struct gc_seg *s = b->nseg ? &b->seg[b->nseg - 1] : NULL;

        if (s && s->l2 == r->l2) {
            /* The queue admits only runs on disjoint clusters. */
            assert(r->alloc_first >= s->hi);
        }
        if (!s || s->l2 != r->l2 || !gc_can_merge(b->img, s, r->alloc_first)) {
            s = &b->seg[b->nseg++];
            s->l2 = r->l2;
            s->lo = r->alloc_first;
            s->first = i;
        }
        s->hi = r->alloc_first + r->alloc_n;
        s->last = i + 1;
    }
}

/* Write the members' entries: one write per merged stretch of each table. */
static enum gc_next gc_l2_write(struct qed_gc_batch *b)
{
    gc_segments(b);
    /* Why hold one count while submitting: an engine may complete an I/O
     * before its submit call returns, and the batch must not end early. */
    b->pending++;
    gc_go(b, GC_L2_WAIT);
    for (size_t k = 0; k < b->nseg; k++) {
        struct gc_seg *s = &b->seg[k];
        uint64_t n = s->hi - s->lo;

        s->buf = malloc(n * sizeof(uint64_t));
        if (!s->buf) {
            /* This stretch and the rest are not written: their members fail. */
            for (size_t j = k; j < b->nseg; j++)
                b->seg[j].err = -ENOMEM;
            break;
        }
        memcpy(s->buf, s->l2->t + s->lo, n * sizeof(uint64_t));
        for (size_t i = s->first; i < s->last; i++) {
            struct qed_req *r = b->mem[i];
            memcpy(s->buf + (r->alloc_first - s->lo), r->ents, r->alloc_n * sizeof(uint64_t));
        }
        gc_submit(b, &s->io, QED_IO_WRITE, s->buf, n * sizeof(uint64_t),
                  s->l2->offset + s->lo * sizeof(uint64_t), &s->iov);
    }
    return --b->pending == 0 ? GC_GO : GC_STOP;
}

static enum gc_next gc_l2_wait(struct qed_gc_batch *b)
{
    /* Each stretch's error is in its segment (gc_io_done). */
    return gc_go(b, GC_FINISH);
}

/*
 * The L2 writes are over: publish the entries of each stretch that was
 * written, and give the members of each failed stretch its error.
 */
static void gc_publish(struct qed_gc_batch *b)
{
    struct qed_image *img = b->img;
    size_t ok = 0, okseg = 0;

    for (size_t k = 0; k < b->nseg; k++) {
        const struct gc_seg *s = &b->seg[k];

        for (size_t i = s->first; i < s->last; i++) {
            struct qed_req *r = b->mem[i];
            if (s->err) {
                if (!r->err)
                    r->err = s->err;
                continue;
            }
            /* On disk: now readers and in-place writers may see the entries.
             * One atomic store each: other threads' fast path reads the
             * table as it changes (fast-path.c). */
            for (uint64_t j = 0; j < r->alloc_n; j++)
                __atomic_store_n(&r->l2->t[r->alloc_first + j], r->ents[j], __ATOMIC_RELEASE);
            ok++;
        }
        okseg += !s->err;
    }
    if (okseg) {
        img->gc_batches++;
        img->gc_batched += ok;
        img->gc_l2_writes += okseg;
        if (ok > img->gc_max_batch)
            img->gc_max_batch = ok;
    }
    /* The extension completed before the L2 writes started. */
    if (b->ext_len && b->ext_off + b->ext_len > img->ext_end)
        img->ext_end = b->ext_off + b->ext_len;
}

/* The batch is over: publish or drop its entries, then let every member go on. */
static enum gc_next gc_finish(struct qed_gc_batch *b)
{
    struct qed_image *img = b->img;
    struct qed_req **mem = b->mem;
    size_t n = b->n;
    int err = b->err;

    if (!err)
        gc_publish(b);
    for (size_t i = 0; i < b->nseg; i++)
        free(b->seg[i].buf);
    free(b);
    img->gc_cur = NULL;
    /* Runs that joined meanwhile form the next batch.  Scheduled before the
     * members go on: the last member's callback may let the caller close
     * the image, after which @img must not be touched. */
    if (img->gc_head)
        gc_schedule(img);
    for (size_t i = 0; i < n; i++) {
        struct qed_req *r = mem[i];
        if (err && !r->err)
            r->err = err;
        r->pending--;
        qed_req_resume(r); /* back to the request machine, in RS_GC_WAIT */
    }
    free(mem);
    return GC_STOP;
}
