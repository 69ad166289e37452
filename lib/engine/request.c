/*
 * request.c - the request state machines: read, write, write zeroes,
 * discard, flush, block status, resize, and the internal NEED_CHECK clean.
 *
 * Every request has one state field (enum qed_req_state) and one step
 * function, req_step(), that advances it.  Every I/O completion re-enters
 * req_step(), so the whole chain -- L2 lookup, data I/O, L2/L1 update,
 * flush -- reads top to bottom in one switch.
 *
 * A request works through its range one "run" at a time: a stretch of
 * clusters inside one L2 table that the mapping treats the same way (data at
 * contiguous host offsets, zero clusters, unallocated clusters).
 *
 * Allocating writes (and everything else that changes metadata: write
 * zeroes, resize, clean) go through the per-image queue.  An admitted
 * request keeps its place until it finishes; allocating writes to disjoint
 * clusters are admitted side by side, everything else alone (see "The
 * allocating-write queue" below).  Writes to allocated clusters, reads,
 * discards and flushes do not queue and run concurrently with everything.
 *
 * Ordering rules for an allocation, in the order they happen:
 *  1. No backing file: NEED_CHECK is written and flushed before the first
 *     allocation, because the data is not flushed before the L2 update and a
 *     crash may leave an L2 entry that points past the end of the file.
 *  2. Data (with the copied-on-write head and tail) goes to new clusters at
 *     the end of the file.  Zeros for the head and tail of fresh clusters
 *     are not written; the batch extends the file instead ("Sparse
 *     allocation" below).
 *  3. With a backing file the data is flushed before the L2 update: an entry
 *     pointing at lost data would read zeros instead of the backing data.
 *  4. A new L2 table is written and flushed before the L1 entry that points
 *     to it, so L1 never points at a table that is not on disk.
 *  5. The cached L1/L2 entries change only after their write succeeded, so
 *     nobody writes in place into clusters a failed update leaves unmapped.
 * Entry updates of existing L2 tables are group committed (see "Group
 * commit" below): a batch keeps these rules for every one of its members.
 */
#include "config.h"

#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checked.h"
#include "qed-image.h"

#define ZERO_BUF_SIZE (1u << 20)
#define ZERO_RUN_MAX (64ull << 20)  /* longest zero write in one I/O */
#define BS_TMP_EXTENTS 64

/* Shared source of zeros for zero writes; .bss costs no memory until read. */
static uint8_t zero_buf[ZERO_BUF_SIZE];

static const char *state_names[] = {
    [RS_START] = "START",
    [RS_NEXT] = "NEXT",
    [RS_L2_LOAD_WAIT] = "L2_LOAD_WAIT",
    [RS_L2_ROOM_WAIT] = "L2_ROOM_WAIT",
    [RS_RUN] = "RUN",
    [RS_DATA_WAIT] = "DATA_WAIT",
    [RS_QUEUE_WAIT] = "QUEUE_WAIT",
    [RS_ALLOC_BEGIN] = "ALLOC_BEGIN",
    [RS_HDR_WAIT] = "HDR_WAIT",
    [RS_HDR_FLUSH_WAIT] = "HDR_FLUSH_WAIT",
    [RS_ALLOC_CLUSTERS] = "ALLOC_CLUSTERS",
    [RS_COW_WAIT] = "COW_WAIT",
    [RS_ALLOC_WRITE] = "ALLOC_WRITE",
    [RS_ALLOC_WRITE_WAIT] = "ALLOC_WRITE_WAIT",
    [RS_ALLOC_FLUSH_WAIT] = "ALLOC_FLUSH_WAIT",
    [RS_L2_UPDATE] = "L2_UPDATE",
    [RS_GC_WAIT] = "GC_WAIT",
    [RS_L2_WRITE_WAIT] = "L2_WRITE_WAIT",
    [RS_L2_FLUSH_WAIT] = "L2_FLUSH_WAIT",
    [RS_L1_WRITE_WAIT] = "L1_WRITE_WAIT",
    [RS_ALLOC_DONE] = "ALLOC_DONE",
    [RS_RESIZE_BEGIN] = "RESIZE_BEGIN",
    [RS_CLEAN_BEGIN] = "CLEAN_BEGIN",
    [RS_BS_BACKING_WAIT] = "BS_BACKING_WAIT",
    [RS_FLUSH_WAIT] = "FLUSH_WAIT",
    [RS_CLEAN_FLUSH_WAIT] = "CLEAN_FLUSH_WAIT",
    [RS_CLEAN_HDR_WAIT] = "CLEAN_HDR_WAIT",
    [RS_RESIZE_HDR_WAIT] = "RESIZE_HDR_WAIT",
    [RS_DONE] = "DONE",
};

static const char *type_names[] = {
    [REQ_READ] = "read",         [REQ_WRITE] = "write",   [REQ_WZERO] = "write-zeroes",
    [REQ_DISCARD] = "discard",   [REQ_FLUSH] = "flush",   [REQ_BSTATUS] = "block-status",
    [REQ_RESIZE] = "resize",     [REQ_CLEAN] = "clean",
};

static void req_step(struct qed_req *r);

static uint64_t min64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static void set_state(struct qed_req *r, enum qed_req_state s)
{
    if (qed_log_debug)
        qed_log(QED_LOG_DEBUG, "%s req %p: %s -> %s", type_names[r->type], (void *)r,
            state_names[r->state], state_names[s]);
    r->state = s;
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

/* ---- The allocating-write queue ---- */

/*
 * Allocating writes may run side by side when they cannot disturb each
 * other: their cluster ranges are disjoint, every L2 table they need exists,
 * and NEED_CHECK is already set.  Each then takes its own clusters from the
 * end of the file (one thread: the bump is atomic), writes its data, and
 * writes only its own L2 entries -- distinct bytes of the table.
 *
 * Everything else is exclusive and runs alone: a write that needs a new L2
 * table or must set NEED_CHECK first, write zeroes, resize and clean.
 *
 * The queue is strictly FIFO, and a request keeps its place (its range stays
 * locked) until it finishes, as in QEMU; so a later write to the same
 * clusters waits for an earlier one and then sees its mapping.
 */

/* Must @r run alone?  Decided when it starts, from state only exclusive
 * requests change (L1 entries, the NEED_CHECK flag). */
static bool needs_exclusive(const struct qed_req *r)
{
    const struct qed_image *img = r->img;

    if (r->type != REQ_WRITE)
        return true;
    if (img->backing_kind == BACKING_NONE && !(img->h.features & QED_F_NEED_CHECK))
        return true;
    for (uint64_t i = qed_l1_index(&img->g, r->lock_lo);
         i <= qed_l1_index(&img->g, r->lock_hi - 1) && i < img->g.table_entries; i++)
        if (img->l1[i] == 0)
            return true;
    return false;
}

static bool can_start(const struct qed_req *r)
{
    const struct qed_image *img = r->img;

    if (img->active_exclusive)
        return false;
    if (needs_exclusive(r))
        return img->nactive == 0;
    for (const struct qed_req *a = img->active; a; a = a->anext)
        if (a->lock_lo < r->lock_hi && r->lock_lo < a->lock_hi)
            return false;
    return true;
}

static void activate(struct qed_req *r)
{
    struct qed_image *img = r->img;

    r->exclusive = needs_exclusive(r);
    r->holding = true;
    r->aprev = NULL;
    r->anext = img->active;
    if (img->active)
        img->active->aprev = r;
    img->active = r;
    img->nactive++;
    if (r->exclusive)
        img->active_exclusive = true;
}

static void deactivate(struct qed_req *r)
{
    struct qed_image *img = r->img;

    if (r->aprev)
        r->aprev->anext = r->anext;
    else
        img->active = r->anext;
    if (r->anext)
        r->anext->aprev = r->aprev;
    r->aprev = r->anext = NULL;
    img->nactive--;
    if (r->exclusive)
        img->active_exclusive = false;
    r->holding = false;
    r->exclusive = false;
}

/*
 * Start waiters from the head of the queue while they can start.  Why a loop
 * with a guard instead of recursion: a started request may finish at once
 * and kick the queue again; the guard turns that chain into iterations.
 */
static void queue_kick(struct qed_image *img)
{
    if (img->kicking) {
        img->kick_again = true;
        return;
    }
    img->kicking = true;
    do {
        img->kick_again = false;
        if (img->queue_head && can_start(img->queue_head)) {
            struct qed_req *r = img->queue_head;
            img->queue_head = r->next;
            if (!img->queue_head)
                img->queue_tail = NULL;
            r->next = NULL;
            activate(r);
            req_step(r);
            img->kick_again = true;
        }
    } while (img->kick_again);
    img->kicking = false;
}

/*
 * Enter the queue.  Returns true when @r may go on at once, false when it
 * waits (state RS_QUEUE_WAIT) and will be stepped by queue_kick.
 */
static bool queue_enter(struct qed_req *r, enum qed_req_state resume)
{
    struct qed_image *img = r->img;
    const struct qed_geom *g = &img->g;
    uint64_t from = r->type == REQ_WRITE ? r->cur_pos : r->off;

    /* Allocation activity postpones the clean: NEED_CHECK stays set while busy. */
    if (img->aio && ev_is_active(&img->clean_timer))
        ev_timer_stop(img->aio->loop, &img->clean_timer);
    r->lock_lo = qed_start_of_cluster(g, from);
    if (qed_align_up_overflows(r->end, g->cluster_size, &r->lock_hi)) {
        /* Cannot happen below QED_MAX_VIRTUAL_SIZE; if it did, an end that
         * wrapped to 0 would make the range empty and let a second writer of
         * the same clusters in.  Lock everything from lock_lo on instead. */
        qed_log(QED_LOG_ERROR, "%s: %s range end %" PRIu64 " overflows; locking to the end",
                img->path, type_names[r->type], r->end);
        r->lock_hi = qed_start_of_cluster(g, UINT64_MAX);
    }
    if (r->lock_hi <= r->lock_lo)
        r->lock_hi = r->lock_lo + g->cluster_size; /* empty ranges still order */
    if (!img->queue_head && can_start(r)) {
        activate(r);
        set_state(r, resume);
        return true;
    }
    r->next = NULL;
    if (img->queue_tail)
        img->queue_tail->next = r;
    else
        img->queue_head = r;
    img->queue_tail = r;
    r->resume = resume;
    set_state(r, RS_QUEUE_WAIT);
    return false;
}

/* ---- Finishing ---- */

static void req_finish(struct qed_req *r, int err)
{
    struct qed_image *img = r->img;
    bool was_holding = r->holding;

    if (err < 0 && !r->err)
        r->err = err;
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
    set_state(r, RS_DONE);

    free(r->cow);
    r->cow = NULL;
    if (was_holding)
        deactivate(r);
    /* Why defer inside a submit call: the callback must never run from
     * inside the call that submitted its request. */
    if (img->submitting)
        qed_aio_defer(img->aio, &r->defer);
    else
        req_deliver(r);

    if (was_holding) {
        if (!img->queue_head && img->nactive == 0)
            qed_image_arm_clean(img);
        queue_kick(img);
    }
}

/* ---- I/O helpers ---- */

static void req_io_done(struct qed_io *io)
{
    struct qed_req *r = io->opaque;

    if (io->op == QED_IO_FSYNC) {
        /* Every flush answers through the image's latch: after one failed,
         * none may report success (image.c, qed_image_flush_result). */
        int res = qed_image_flush_result(r->img, (int)io->res);
        if (res < 0 && io->res >= 0 && !r->err)
            r->err = res; /* latched: logged once, when it failed */
    }
    if (io->res < 0 && !r->err) {
        r->err = (int)io->res;
        qed_log(QED_LOG_ERROR, "%s: %s I/O at %" PRIu64 " failed: %s", r->img->path,
                io->op == QED_IO_READ    ? "read"
                : io->op == QED_IO_WRITE ? "write"
                : io->op == QED_IO_FSYNC ? "flush"
                                         : "punch",
                io->offset, strerror((int)-io->res));
    }
    r->pending--;
    req_step(r);
}

static void req_sub_done(void *opaque, int ret)
{
    struct qed_req *r = opaque;

    if (ret < 0 && !r->err)
        r->err = ret;
    r->pending--;
    req_step(r);
}

static void submit_io(struct qed_req *r, int slot, enum qed_io_op op, int fd, struct iovec *iov,
                      int iovcnt, uint64_t offset, uint64_t length)
{
    struct qed_io *io = &r->io[slot];

    memset(io, 0, sizeof(*io));
    io->op = op;
    io->fd = fd;
    io->flags = fd == r->img->fd ? r->img->fd_io_flags : r->img->backing_io_flags;
    io->iov = iov;
    io->iovcnt = iovcnt;
    io->offset = offset;
    io->length = length;
    io->done = req_io_done;
    io->opaque = r;
    r->pending++;
    if (op == QED_IO_FSYNC)
        qed_image_submit_fsync(r->img, io); /* one fdatasync at a time (image.c) */
    else
        qed_aio_submit(r->img->aio, io);
}

static void submit_rw(struct qed_req *r, int slot, enum qed_io_op op, void *buf, uint64_t len,
                      uint64_t host)
{
    r->iov2[slot].iov_base = buf;
    r->iov2[slot].iov_len = len;
    submit_io(r, slot, op, r->img->fd, &r->iov2[slot], 1, host, len);
}

static void submit_fsync(struct qed_req *r)
{
    submit_io(r, 0, QED_IO_FSYNC, r->img->fd, NULL, 0, 0, 0);
}

/* Append zero-buffer pieces covering @len bytes to r->iov from index @n. */
static int iov_add_zeros(struct qed_req *r, int n, uint64_t len)
{
    while (len) {
        uint64_t piece = min64(len, ZERO_BUF_SIZE);
        r->iov[n].iov_base = zero_buf;
        r->iov[n].iov_len = piece;
        n++;
        len -= piece;
    }
    return n;
}

/* Append the source of the run's data (caller's buffer or zeros). */
static int iov_add_source(struct qed_req *r, int n)
{
    if (r->buf) {
        r->iov[n].iov_base = r->buf + (r->cur_pos - r->off);
        r->iov[n].iov_len = r->run_len;
        return n + 1;
    }
    return iov_add_zeros(r, n, r->run_len);
}

/*
 * Read guest range [pos, pos+len) of the backing file into @dst; what lies
 * past the backing file's end reads as zeros.
 */
static void backing_read(struct qed_req *r, int slot, uint64_t pos, uint8_t *dst, uint64_t len)
{
    struct qed_image *img = r->img;
    uint64_t n = pos >= img->backing_size ? 0 : min64(len, img->backing_size - pos);

    if (n < len)
        memset(dst + n, 0, len - n);
    if (n == 0)
        return;
    if (img->backing_kind == BACKING_RAW) {
        r->iov2[slot].iov_base = dst;
        r->iov2[slot].iov_len = n;
        submit_io(r, slot, QED_IO_READ, img->backing_fd, &r->iov2[slot], 1, pos, n);
    } else {
        int rc;
        r->pending++;
        rc = qed_read(img->backing, pos, dst, n, req_sub_done, r);
        if (rc < 0) {
            r->pending--;
            if (!r->err)
                r->err = rc;
        }
    }
}

/* ---- Group commit of L2 entry updates ---- */

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
 *    a failed flush also sets the image's flush latch (image.c).
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
 * New L2 tables and the L1 entries pointing at them do not take part: a run
 * needing one is exclusive (see needs_exclusive) and writes the table, the
 * flush (rule 4) and the L1 entry itself.
 */

#define GC_GAP_MAX 1024 /* entries (8 KiB) a merged L2 write may rewrite unchanged */

struct gc_seg {
    struct qed_l2 *l2;
    uint64_t lo, hi;           /* entry range written */
    size_t first, last;        /* members [first, last) of the sorted array */
    uint64_t *buf;
    int err;                   /* its write failed (or was never made: -ENOMEM) */
    struct qed_io io;
    struct iovec iov;
};

enum gc_phase { GC_EXTEND, GC_FLUSH, GC_L2 };

struct qed_gc_batch {
    struct qed_image *img;
    struct qed_req **mem;      /* members */
    size_t n, nseg;
    unsigned pending;
    int err;
    enum gc_phase phase;       /* what the I/Os in flight are */
    bool flush;                /* rule 3: flush the members' data before the L2 write */
    uint64_t ext_off, ext_len; /* zeros that extend the file (ext_len 0: none) */
    struct qed_io fio, eio;
    struct iovec eiov;
    struct gc_seg seg[];       /* n at most */
};

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

/* Queue @r (state RS_GC_WAIT, r->ents filled) for the next batch. */
static void gc_join(struct qed_req *r)
{
    struct qed_image *img = r->img;

    r->gc_next = NULL;
    r->pending++; /* stepped again only by gc_finish */
    if (img->gc_tail)
        img->gc_tail->gc_next = r;
    else
        img->gc_head = r;
    img->gc_tail = r;
    /* Why not start at once: data writes completing in this same turn (one
     * engine wake-up) should share the batch; why not while a batch is in
     * flight: that is what makes the next batch large. */
    if (!img->gc_cur)
        gc_schedule(img);
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
            /* On disk: now readers and in-place writers may see the entries. */
            memcpy(r->l2->t + r->alloc_first, r->ents, r->alloc_n * sizeof(uint64_t));
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
static void gc_finish(struct qed_gc_batch *b)
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
        req_step(r);
    }
    free(mem);
}

static void gc_write(struct qed_gc_batch *b);
static void gc_submit(struct qed_gc_batch *b, struct qed_io *io, enum qed_io_op op, void *buf,
                      uint64_t len, uint64_t offset, struct iovec *iov);

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
    if (res < 0 && b->phase == GC_L2) {
        /* Only L2 writes are in flight now: this stretch fails alone. */
        ((struct gc_seg *)((char *)io - offsetof(struct gc_seg, io)))->err = res;
    } else if (res < 0 && !b->err) {
        b->err = res;
    }
    if (--b->pending > 0)
        return;
    if (b->err || b->phase == GC_L2) {
        gc_finish(b);
        return;
    }
    if (b->phase == GC_EXTEND && b->flush) {
        b->phase = GC_FLUSH;
        gc_submit(b, &b->fio, QED_IO_FSYNC, NULL, 0, 0, NULL);
        return;
    }
    gc_write(b);
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
        if (e > 1 && (e & (img->g.cluster_size - 1)))
            return false;
    }
    return true;
}

static void gc_submit(struct qed_gc_batch *b, struct qed_io *io, enum qed_io_op op, void *buf,
                      uint64_t len, uint64_t offset, struct iovec *iov)
{
    memset(io, 0, sizeof(*io));
    io->op = op;
    io->fd = b->img->fd;
    io->flags = b->img->fd_io_flags;
    if (buf) {
        iov->iov_base = buf;
        iov->iov_len = len;
        io->iov = iov;
        io->iovcnt = 1;
    }
    io->offset = offset;
    io->length = len;
    io->done = gc_io_done;
    io->opaque = b;
    b->pending++;
    if (op == QED_IO_FSYNC)
        qed_image_submit_fsync(b->img, io); /* one fdatasync at a time (image.c) */
    else
        qed_aio_submit(b->img->aio, io);
}

/* Write the members' entries: one write per merged stretch of each table. */
static void gc_write(struct qed_gc_batch *b)
{
    struct qed_image *img = b->img;

    qsort(b->mem, b->n, sizeof(b->mem[0]), gc_cmp);
    b->nseg = 0;
    for (size_t i = 0; i < b->n; i++) {
        struct qed_req *r = b->mem[i];
        struct gc_seg *s = b->nseg ? &b->seg[b->nseg - 1] : NULL;

        if (s && s->l2 == r->l2) {
            /* The queue admits only runs on disjoint clusters. */
            assert(r->alloc_first >= s->hi);
        }
        if (!s || s->l2 != r->l2 || !gc_can_merge(img, s, r->alloc_first)) {
            s = &b->seg[b->nseg++];
            s->l2 = r->l2;
            s->lo = r->alloc_first;
            s->first = i;
        }
        s->hi = r->alloc_first + r->alloc_n;
        s->last = i + 1;
    }
    /* Why hold one count while submitting: an engine may complete an I/O
     * before its submit call returns, and the batch must not end early. */
    b->pending++;
    b->phase = GC_L2;
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
    if (--b->pending == 0)
        gc_finish(b);
}

/* Take every waiting run into a new batch and start it. */
static void gc_start(struct qed_image *img)
{
    struct qed_req *list = img->gc_head, *r;
    struct qed_gc_batch *b;
    size_t n = 0;
    bool flush = false;

    struct qed_req *top = NULL;
    uint64_t top_end = 0;

    img->gc_head = img->gc_tail = NULL;
    for (r = list; r; r = r->gc_next) {
        n++;
        /* Rule 3, once for the batch: members whose clusters got data. */
        if (img->backing_kind != BACKING_NONE && r->alloc_host)
            flush = true;
        if (r->alloc_host && r->alloc_host + r->alloc_n * img->g.cluster_size > top_end) {
            top = r;
            top_end = r->alloc_host + r->alloc_n * img->g.cluster_size;
        }
    }
    b = calloc(1, sizeof(*b) + n * sizeof(b->seg[0]));
    if (b)
        b->mem = malloc(n * sizeof(b->mem[0]));
    if (!b || !b->mem) {
        free(b);
        while (list) {
            r = list;
            list = r->gc_next;
            if (!r->err)
                r->err = -ENOMEM;
            r->pending--;
            req_step(r);
        }
        return;
    }
    b->img = img;
    b->n = n;
    n = 0;
    for (r = list; r; r = r->gc_next)
        b->mem[n++] = r;
    img->gc_cur = b;
    b->flush = flush;
    if (top && top->sparse && top->tail_len && top_end > img->ext_end) {
        /* The highest cluster's tail is unwritten: extend the file to its
         * end with zeros in its last bytes (at most a sector). */
        b->ext_len = min64(top->tail_len, 512);
        b->ext_off = top_end - b->ext_len;
    }
    if (b->ext_len) {
        /* The extension completes before any entry naming the clusters it
         * makes valid is written (see "Sparse allocation"). */
        b->phase = GC_EXTEND;
        gc_submit(b, &b->eio, QED_IO_WRITE, zero_buf, b->ext_len, b->ext_off, &b->eiov);
        return;
    }
    if (flush) {
        b->phase = GC_FLUSH;
        gc_submit(b, &b->fio, QED_IO_FSYNC, NULL, 0, 0, NULL);
        return;
    }
    gc_write(b);
}

/*
 * May the run being allocated leave the unwritten parts of its clusters
 * unwritten?  Only a data write (write-zeroes with NO_HOLE must provision)
 * into an existing table (its entries go through the group commit, which
 * extends the file) whose clusters are fresh (see "Sparse allocation").
 */
static bool alloc_can_be_sparse(struct qed_req *r)
{
    struct qed_image *img = r->img;

    if (r->type != REQ_WRITE || !r->buf || r->new_l2 || r->zero_entries || !r->alloc_host)
        return false;
    if (!img->fresh_known) {
        struct stat st;
        uint64_t cs = img->g.cluster_size;

        /* Why the size now and not at open: the file only grows while it is
         * open, so this is at least the size at open; past it (rounded up)
         * lie only clusters this open allocated, each written by its owner
         * alone, and what no write has reached yet. */
        if (fstat(img->fd, &st) < 0)
            return false;
        img->fresh_from = ((uint64_t)st.st_size + cs - 1) & ~(cs - 1);
        img->ext_end = (uint64_t)st.st_size;
        img->fresh_known = true;
    }
    return r->alloc_host >= img->fresh_from;
}

/* ---- Mapping lookup ---- */

/*
 * Find the run at cur_pos: limited to the request end and to the L2 table
 * that covers cur_pos; sets kind, run_len and host.
 */
static void run_lookup(struct qed_req *r)
{
    struct qed_image *img = r->img;
    const struct qed_geom *g = &img->g;
    uint64_t pos = r->cur_pos;
    uint64_t l2_end, limit, idx, e0, c;
    enum qed_run_kind kind;

    /* The end of the guest range the table covers and of pos's cluster.
     * Below QED_MAX_VIRTUAL_SIZE neither wraps; if one did, the scan below
     * would run past the end of the table, so the run fails instead. */
    if (qed_add_overflows(pos | (qed_l2_coverage(g) - 1), 1, &l2_end) ||
        qed_add_overflows(qed_start_of_cluster(g, pos), g->cluster_size, &c)) {
        qed_log(QED_LOG_ERROR, "%s: guest offset %" PRIu64 " has no cluster end below 2^64",
                img->path, pos);
        r->kind = RUN_BAD;
        r->run_len = 0;
        return;
    }
    limit = min64(r->end, l2_end);

    if (!r->l2) {
        r->kind = RUN_UNALLOC;
        r->run_len = limit - pos;
        return;
    }
    idx = qed_l2_index(g, pos);
    e0 = le64toh(r->l2->t[idx]);
    if (e0 == 0)
        kind = RUN_UNALLOC;
    else if (e0 == 1)
        kind = RUN_ZERO;
    else if (qed_check_cluster_offset(g, e0, img->file_size))
        kind = RUN_DATA;
    else
        kind = RUN_BAD;

    if (kind != RUN_BAD) {
        uint64_t prev = e0;
        /* c < limit <= l2_end keeps idx inside the table; the second bound
         * says so to the reader and to any future change of the ends. */
        while (c < limit && idx + 1 < g->table_entries) {
            uint64_t e = le64toh(r->l2->t[++idx]);
            if (kind == RUN_DATA) {
                if (e != prev + g->cluster_size)
                    break;
                prev = e;
            } else if (e != e0) {
                break;
            }
            c += g->cluster_size;
        }
    } else {
        uint64_t stored;
        /* Name the value in the file: an entry disabled at open holds a
         * mark in memory that is nowhere on disk (metadata.c). */
        bool disabled = qed_meta_disabled_l2(img, r->l2->offset, idx, &stored) &&
                        (stored | 1) == e0;
        qed_log(QED_LOG_ERROR,
                "%s: corrupt L2 entry 0x%" PRIx64 " for guest offset %" PRIu64
                " (table at %" PRIu64 ", index %" PRIu64 ")%s",
                img->path, disabled ? stored : e0, pos, r->l2->offset, idx,
                disabled ? ": it points past the end of the file or at metadata; "
                           "`qed-img check` lists such entries" : "");
    }
    r->kind = kind;
    r->run_len = min64(c, limit) - pos;
    r->host = kind == RUN_DATA ? e0 + qed_offset_in_cluster(g, pos) : 0;
}

/* The run is handled: move past it. */
static void run_advance(struct qed_req *r)
{
    r->cur_pos += r->run_len;
    if (r->l2) {
        qed_l2_cache_unref(&r->img->cache, r->l2);
        r->l2 = NULL;
    }
    set_state(r, RS_NEXT);
}

/* L2 table load finished: wake every request waiting for it. */
static void l2_load_done(struct qed_io *io)
{
    struct qed_l2 *e = io->opaque;
    struct qed_image *img = e->img;
    struct qed_req *w = e->waiters;
    int res = (int)io->res;

    e->waiters = NULL;
    if (io->res < 0) {
        qed_log(QED_LOG_ERROR, "%s: reading L2 table at %" PRIu64 " failed: %s", img->path,
                e->offset, strerror((int)-io->res));
        /* Forget it so that a later request tries the read again. */
        qed_l2_cache_forget(&img->cache, e);
    } else if ((res = qed_meta_sanitize_l2(img, e->offset, e->t)) < 0) {
        qed_l2_cache_forget(&img->cache, e);
    } else {
        e->state = L2_VALID;
        img->cache.loads++;
    }
    /* Each waiter holds its own reference, so stepping one (which may drop
     * its reference) cannot free the entry under the others. */
    while (w) {
        struct qed_req *next = w->next;
        w->next = NULL;
        if (res < 0 && !w->err)
            w->err = res;
        w->pending--;
        req_step(w);
        w = next;
    }
}

/* ---- Room in the L2 cache ---- */

/*
 * The cache holds at most cache.max_bytes of tables (l2-cache.c, "Memory
 * bound").  A request that needs a table the cache does not hold waits here
 * until one is released; waiters are served in order, and while any waits,
 * a request that would take a table, even a cached one, queues behind them
 * (get_l2), so that tables in use drain.  A waiting request holds no table,
 * and every request that holds one gets to release it without room or the
 * allocating-write queue, so the wait always ends.
 */

/*
 * May the first waiter @r go on?  When there is room for a table, or when
 * it waits only for its turn (get_l2) and its table is in the cache: then it
 * needs no room, and evicting that table to make some would only read it
 * again.  Every waiter waits in RS_NEXT (get_l2, r->l1_index set) or in
 * RS_ALLOC_CLUSTERS (a new table: always room).
 */
static bool l2_room_ready(struct qed_l2_cache *c, const struct qed_req *r)
{
    if (r->resume == RS_NEXT &&
        qed_l2_cache_holds(c, le64toh(r->img->l1[r->l1_index])))
        return true;
    return qed_l2_cache_make_room(c);
}

static void l2_room_defer_fn(struct qed_defer *d)
{
    struct qed_l2_cache *c =
        (struct qed_l2_cache *)((char *)d - offsetof(struct qed_l2_cache, room_defer));

    /* room_scheduled stays set while the waiters are stepped: a table they
     * release meanwhile is seen by the loop's next make_room, and must not
     * queue another call that would outlive the last waiter (and run on a
     * closed image).  When the loop stops for lack of room, every table is
     * referenced, and its release schedules the next call. */
    while (c->room_head && l2_room_ready(c, c->room_head)) {
        struct qed_req *r = c->room_head;
        c->room_head = r->next;
        if (!c->room_head)
            c->room_tail = NULL;
        r->next = NULL;
        r->pending--;
        c->room_turn = r;
        req_step(r);
        c->room_turn = NULL;
    }
    c->room_scheduled = false;
}

void qed_req_l2_room(struct qed_image *img)
{
    struct qed_l2_cache *c = &img->cache;

    /* Why on the next loop turn: this runs inside an unref, in the middle of
     * another request's step; the waiter must not be stepped from there. */
    if (c->room_scheduled || !c->room_head)
        return;
    c->room_scheduled = true;
    c->room_defer.fn = l2_room_defer_fn;
    qed_aio_defer(img->aio, &c->room_defer);
}

/* Make @r wait for room (RS_L2_ROOM_WAIT), behind the earlier waiters. */
static void l2_room_wait(struct qed_req *r, enum qed_req_state resume)
{
    struct qed_l2_cache *c = &r->img->cache;

    r->next = NULL;
    if (c->room_tail)
        c->room_tail->next = r;
    else
        c->room_head = r;
    c->room_tail = r;
    r->resume = resume;
    r->pending++; /* stepped again only by l2_room_defer_fn */
    c->room_waits++;
    set_state(r, RS_L2_ROOM_WAIT);
}

/* Must @r queue behind waiters for room before it takes any table? */
static bool l2_room_others_first(const struct qed_req *r)
{
    const struct qed_l2_cache *c = &r->img->cache;

    return c->room_head && c->room_turn != r;
}

/*
 * Is there room for one more table?  True: insert it now.  False: @r now
 * waits (RS_L2_ROOM_WAIT) and enters @resume once there is room.
 */
static bool l2_room(struct qed_req *r, enum qed_req_state resume)
{
    /* Earlier waiters first, except for the one being woken. */
    if (!l2_room_others_first(r) && qed_l2_cache_make_room(&r->img->cache))
        return true;
    l2_room_wait(r, resume);
    return false;
}

/*
 * Get the L2 table covering cur_pos into r->l2 (NULL when the L1 entry is
 * empty).  Returns 1 when it is ready, 0 when the request now waits for a
 * load, 2 when it waits for room in the cache (state set), -EIO for a corrupt
 * L1 entry, -ENOMEM.
 */
static int get_l2(struct qed_req *r)
{
    struct qed_image *img = r->img;
    uint64_t l1i = qed_l1_index(&img->g, r->cur_pos);
    uint64_t off = le64toh(img->l1[l1i]);
    struct qed_l2 *e;

    r->l1_index = l1i;
    r->l2 = NULL;
    if (off == 0)
        return 1;
    if (!qed_check_table_offset(&img->g, off, img->file_size)) {
        qed_log(QED_LOG_ERROR, "%s: corrupt L1 entry %" PRIu64 ": L2 table offset 0x%" PRIx64,
                img->path, l1i, off);
        return -EIO;
    }
    if (l2_room_others_first(r)) {
        /* Why not take a cached table while others wait for room: a table
         * that requests keep using back to back is never idle, so it could
         * never be evicted, and the waiters would wait for as long as that
         * goes on.  Queued here, the holders drain, and each request gets its
         * turn in order.  A request that waits holds no table. */
        l2_room_wait(r, RS_NEXT);
        return 2;
    }
    e = qed_l2_cache_get(&img->cache, off);
    if (e) {
        r->l2 = e;
        if (e->state == L2_VALID)
            return 1;
        /* Another request is loading this table: wait for it, read it once. */
        r->next = e->waiters;
        e->waiters = r;
        r->pending++;
        return 0;
    }
    if (!l2_room(r, RS_NEXT))
        return 2;
    e = qed_l2_cache_insert(&img->cache, img, off, L2_LOADING);
    if (!e)
        return -ENOMEM;
    r->l2 = e;
    r->next = NULL;
    e->waiters = r;
    r->pending++;
    e->iov.iov_base = e->t;
    e->iov.iov_len = img->g.table_bytes;
    memset(&e->io, 0, sizeof(e->io));
    e->io.op = QED_IO_READ;
    e->io.fd = img->fd;
    e->io.flags = img->fd_io_flags;
    e->io.iov = &e->iov;
    e->io.iovcnt = 1;
    e->io.offset = off;
    e->io.done = l2_load_done;
    e->io.opaque = e;
    qed_aio_submit(img->aio, &e->io);
    return 0;
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
            stop = d < 0 ? end : min64((uint64_t)d, end);
            x.zero = true;
        } else {
            off_t h = lseek(fd, (off_t)pos, SEEK_HOLE);
            stop = h < 0 ? end : min64((uint64_t)h, end);
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

/* ---- The step function ---- */

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
        r->run_len = min64(r->run_len, g->cluster_size - in);
    } else if (r->run_len >= g->cluster_size) {
        r->run_len = qed_start_of_cluster(g, r->run_len);
    }
    if (r->run_len > ZERO_RUN_MAX)
        r->run_len = ZERO_RUN_MAX;
}

/*
 * Handle the current run for each request type.  Returns true when the
 * caller should keep stepping (a new state was set), false when the request
 * waits for I/O or the queue, or has finished -- then it may be freed already
 * and must not be touched.
 */
static bool step_run(struct qed_req *r)
{
    struct qed_image *img = r->img;

    run_lookup(r);
    if (r->kind == RUN_BAD) {
        req_finish(r, -EIO);
        return false;
    }
    if (r->l2 && r->type != REQ_READ && r->type != REQ_BSTATUS &&
        r->l2->offset >= img->h.l1_table_offset &&
        r->l2->offset - img->h.l1_table_offset < img->g.table_bytes) {
        /* A corrupt L1 entry names the L1 table as an L2 table: reading
         * through it is harmless, but an update would overwrite L1. */
        qed_log(QED_LOG_ERROR, "%s: L1 entry %" PRIu64 " points at the L1 table; refusing to "
                "write through it", img->path, r->l1_index);
        req_finish(r, -EIO);
        return false;
    }

    switch (r->type) {
    case REQ_READ: {
        uint8_t *dst = r->buf + (r->cur_pos - r->off);
        if (r->kind == RUN_DATA) {
            set_state(r, RS_DATA_WAIT);
            submit_rw(r, 0, QED_IO_READ, dst, r->run_len, r->host);
        } else if (r->kind == RUN_UNALLOC && img->backing_kind != BACKING_NONE) {
            set_state(r, RS_DATA_WAIT);
            backing_read(r, 0, r->cur_pos, dst, r->run_len);
            if (r->pending)
                return false;
            if (r->err) {
                req_finish(r, r->err);
                return false;
            }
            run_advance(r);
        } else {
            memset(dst, 0, r->run_len);
            run_advance(r);
        }
        return r->state == RS_NEXT;
    }

    case REQ_WRITE:
        if (r->kind == RUN_DATA) {
            set_state(r, RS_DATA_WAIT);
            submit_rw(r, 0, QED_IO_WRITE, r->buf + (r->cur_pos - r->off), r->run_len, r->host);
            return false;
        }
        if (!r->holding) {
            /* Allocation needs the queue.  Drop the table: it may change while
             * we wait, and the lookup is redone once we hold the queue. */
            if (r->l2)
                qed_l2_cache_unref(&img->cache, r->l2);
            r->l2 = NULL;
            return queue_enter(r, RS_NEXT);
        }
        set_state(r, RS_ALLOC_BEGIN);
        return true;

    case REQ_WZERO:
        wzero_trim_run(r);
        if (r->scanning) {
            /* FAST_ZERO: look at the whole range before changing anything. */
            if (!wzero_run_is_fast(r)) {
                req_finish(r, -ENOTSUP);
                return false;
            }
            run_advance(r);
            return true;
        }
        if (r->kind == RUN_DATA) {
            int n = iov_add_zeros(r, 0, r->run_len);
            set_state(r, RS_DATA_WAIT);
            submit_io(r, 0, QED_IO_WRITE, img->fd, r->iov, n, r->host, r->run_len);
            return false;
        }
        if (r->flags & QED_REQ_NO_HOLE) {
            /* Fully provision: allocate and write real zeros. */
            set_state(r, RS_ALLOC_BEGIN);
            return true;
        }
        if (r->kind == RUN_ZERO) {
            run_advance(r);
            return true;
        }
        /* Unallocated */
        if (qed_offset_in_cluster(&img->g, r->cur_pos) == 0 &&
            qed_offset_in_cluster(&img->g, r->cur_pos + r->run_len) == 0) {
            r->zero_entries = true; /* whole clusters: zero entries, no data */
            set_state(r, RS_ALLOC_BEGIN);
        } else if (img->backing_kind != BACKING_NONE) {
            set_state(r, RS_ALLOC_BEGIN); /* partial: copy the rest from backing */
        } else {
            run_advance(r); /* partial and no backing: already reads as zeros */
        }
        return true;

    case REQ_DISCARD:
        if (r->kind == RUN_DATA) {
            const struct qed_geom *g = &img->g;
            uint64_t a, b;
            /* Whole clusters only: [cur_pos rounded up, run end rounded down). */
            if (!qed_align_up_overflows(r->cur_pos, g->cluster_size, &a) &&
                !qed_add_overflows(r->cur_pos, r->run_len, &b) &&
                (b = qed_start_of_cluster(g, b)) > a) {
                set_state(r, RS_DATA_WAIT);
                submit_io(r, 0, QED_IO_PUNCH, img->fd, NULL, 0, r->host + (a - r->cur_pos),
                          b - a);
                return false;
            }
        }
        run_advance(r);
        return true;

    case REQ_BSTATUS: {
        struct qed_extent x = {.start = r->cur_pos, .length = r->run_len};
        bool more = true;
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
            uint64_t n = min64(r->run_len, img->backing_size - r->cur_pos);
            if (img->backing_kind == BACKING_RAW) {
                r->run_len = n;
                more = bs_raw(r, r->cur_pos, n);
            } else {
                int rc;
                if (!r->bs_tmp) {
                    r->bs_tmp = malloc(BS_TMP_EXTENTS * sizeof(*r->bs_tmp));
                    if (!r->bs_tmp) {
                        req_finish(r, -ENOMEM);
                        return false;
                    }
                }
                r->bs_tmp_n = 0;
                set_state(r, RS_BS_BACKING_WAIT);
                r->pending++;
                rc = qed_block_status(img->backing, r->cur_pos, n, r->bs_tmp, BS_TMP_EXTENTS,
                                      &r->bs_tmp_n, req_sub_done, r);
                if (rc < 0) {
                    r->pending--;
                    req_finish(r, rc);
                }
                return false;
            }
        }
        if (!more) {
            req_finish(r, 0);
            return false;
        }
        run_advance(r);
        return true;
    }

    default:
        req_finish(r, -EINVAL);
        return false;
    }
}

static void step(struct qed_req *r);

static void req_step(struct qed_req *r)
{
    /* Why wait for all: some states start two I/Os (head and tail copies). */
    if (r->pending)
        return;
    step(r);
}

static void step(struct qed_req *r)
{
    struct qed_image *img = r->img;
    const struct qed_geom *g = &img->g;

    for (;;) {
        switch (r->state) {
        case RS_START:
            switch (r->type) {
            case REQ_FLUSH:
                set_state(r, RS_FLUSH_WAIT);
                submit_fsync(r);
                return;
            case REQ_WZERO:
                if ((r->flags & QED_REQ_FAST_ZERO) && (r->flags & QED_REQ_NO_HOLE)) {
                    req_finish(r, -ENOTSUP); /* provisioning means writing data */
                    return;
                }
                r->scanning = (r->flags & QED_REQ_FAST_ZERO) != 0;
                r->cur_pos = r->off;
                /* Metadata changes: hold the queue for the whole request, so a
                 * FAST_ZERO scan stays true until the changes are made. */
                if (!queue_enter(r, RS_NEXT))
                    return;
                continue;
            case REQ_RESIZE:
            case REQ_CLEAN:
                if (!queue_enter(r, r->type == REQ_RESIZE ? RS_RESIZE_BEGIN : RS_CLEAN_BEGIN))
                    return;
                continue;
            default:
                r->cur_pos = r->off;
                set_state(r, RS_NEXT);
                continue;
            }

        case RS_QUEUE_WAIT:
            /* queue_kick made us the holder. */
            set_state(r, r->resume);
            continue;

        case RS_NEXT:
            if (r->cur_pos >= r->end) {
                if (r->scanning) {
                    /* The scan found nothing slow: now do it for real. */
                    r->scanning = false;
                    r->cur_pos = r->off;
                    continue;
                }
                if ((r->flags & QED_REQ_FUA) && r->type != REQ_READ && r->type != REQ_BSTATUS) {
                    /* FUA: the data and the metadata that maps it must be
                     * stable before we report success. */
                    set_state(r, RS_FLUSH_WAIT);
                    submit_fsync(r);
                    return;
                }
                req_finish(r, 0);
                return;
            }
            {
                int rc = get_l2(r);
                if (rc < 0) {
                    req_finish(r, rc);
                    return;
                }
                if (rc == 0) {
                    set_state(r, RS_L2_LOAD_WAIT);
                    return;
                }
                if (rc == 2)
                    return; /* RS_L2_ROOM_WAIT */
            }
            set_state(r, RS_RUN);
            continue;

        case RS_L2_ROOM_WAIT:
            /* There is room now: look the table up again (another request
             * may have loaded it meanwhile), or take the new table. */
            set_state(r, r->resume);
            continue;

        case RS_L2_LOAD_WAIT:
            if (r->err) {
                req_finish(r, r->err);
                return;
            }
            set_state(r, RS_RUN);
            continue;

        case RS_RUN:
            if (!step_run(r))
                return; /* waiting, or finished and possibly freed */
            continue;

        case RS_DATA_WAIT:
            if (r->type == REQ_DISCARD && r->err == -EOPNOTSUPP)
                r->err = 0; /* discard is advisory where holes cannot be punched */
            if (r->err) {
                req_finish(r, r->err);
                return;
            }
            run_advance(r);
            continue;

        /* ---- Allocation (the queue holder only) ---- */

        case RS_ALLOC_BEGIN:
            if (!r->zero_entries && img->backing_kind == BACKING_NONE &&
                !(img->h.features & QED_F_NEED_CHECK)) {
                /* Rule 1: NEED_CHECK durable before the first allocation. */
                assert(r->exclusive);
                img->h.features |= QED_F_NEED_CHECK;
                img->dirty_set_by_us = true;
                qed_header_encode(&img->h, img->hdr_raw);
                set_state(r, RS_HDR_WAIT);
                submit_rw(r, 0, QED_IO_WRITE, img->hdr_raw, QED_HEADER_BYTES, 0);
                return;
            }
            set_state(r, RS_ALLOC_CLUSTERS);
            continue;

        case RS_HDR_WAIT:
            if (r->err) {
                img->h.features &= ~QED_F_NEED_CHECK;
                req_finish(r, r->err);
                return;
            }
            set_state(r, RS_HDR_FLUSH_WAIT);
            submit_fsync(r);
            return;

        case RS_HDR_FLUSH_WAIT:
            if (r->err) {
                /* The flag is not known to be on disk: a failed fdatasync may
                 * have dropped the header page for good.  Forget it, so that
                 * the next allocation writes and flushes it again (and fails
                 * while the flush latch is set) instead of allocating without
                 * a durable NEED_CHECK.  If it did reach the disk, it stays
                 * there: close never clears it on a failed image. */
                img->h.features &= ~QED_F_NEED_CHECK;
                req_finish(r, r->err);
                return;
            }
            set_state(r, RS_ALLOC_CLUSTERS);
            continue;

        case RS_ALLOC_CLUSTERS: {
            uint64_t in = qed_offset_in_cluster(g, r->cur_pos);
            uint64_t end = r->cur_pos + r->run_len;
            uint64_t end_in = qed_offset_in_cluster(g, end);

            if (!r->buf && r->run_len > ZERO_RUN_MAX - in)
                r->run_len = ZERO_RUN_MAX - in; /* keep the zero iovec bounded */
            end = r->cur_pos + r->run_len;
            end_in = qed_offset_in_cluster(g, end);
            r->alloc_first = qed_l2_index(g, r->cur_pos);
            r->alloc_n = qed_bytes_to_clusters(g, in + r->run_len);
            if (!r->l2) {
                /* No L2 table yet: take one from the end of the file. */
                assert(r->exclusive || r->type != REQ_WRITE);
                /* Waiting for room here is safe: the lines above only
                 * recompute the run from cur_pos and run_len. */
                if (!l2_room(r, RS_ALLOC_CLUSTERS))
                    return;
                struct qed_l2 *e = qed_l2_cache_insert(&img->cache, img, img->file_size, L2_VALID);
                if (!e) {
                    req_finish(r, -ENOMEM);
                    return;
                }
                img->file_size += g->table_bytes;
                r->l2 = e;
                r->new_l2 = true;
            }
            if (r->zero_entries) {
                r->alloc_host = 0;
                set_state(r, RS_L2_UPDATE);
                continue;
            }
            r->alloc_host = img->file_size;
            img->file_size += r->alloc_n * g->cluster_size;

            /* Fill the parts of the first and last cluster the write does not
             * cover: from the backing file, or with zeros when there is none or
             * the cluster was a zero cluster (never backing data there). */
            r->head_len = in;
            r->tail_len = end_in ? g->cluster_size - end_in : 0;
            if (r->head_len || r->tail_len) {
                bool from_backing = r->kind == RUN_UNALLOC && img->backing_kind != BACKING_NONE;

                r->cow_zero = !from_backing;
                if (r->cow_zero) {
                    /* Zeros come from the shared zero buffer at write time,
                     * or, in fresh clusters, are not written at all. */
                    r->sparse = alloc_can_be_sparse(r);
                    set_state(r, RS_ALLOC_WRITE);
                    continue;
                }
                /* Each allocating write has its own copy buffer: several run at once. */
                r->cow = malloc(r->head_len + r->tail_len);
                if (!r->cow) {
                    req_finish(r, -ENOMEM);
                    return;
                }
                set_state(r, RS_COW_WAIT);
                if (r->head_len)
                    backing_read(r, 0, qed_start_of_cluster(g, r->cur_pos), r->cow,
                                 r->head_len);
                if (r->tail_len)
                    backing_read(r, 1, end, r->cow + r->head_len, r->tail_len);
                if (r->pending)
                    return;
                if (r->err) {
                    req_finish(r, r->err);
                    return;
                }
            }
            set_state(r, RS_ALLOC_WRITE);
            continue;
        }

        case RS_COW_WAIT:
            if (r->err) {
                req_finish(r, r->err); /* the new clusters leak; nothing points at them */
                return;
            }
            set_state(r, RS_ALLOC_WRITE);
            continue;

        case RS_ALLOC_WRITE: {
            int n = 0;
            if (r->sparse) {
                /* Only the data: the rest of the fresh clusters reads as
                 * zeros (a hole, or past the end until the batch extends
                 * the file). */
                n = iov_add_source(r, 0);
                set_state(r, RS_ALLOC_WRITE_WAIT);
                submit_io(r, 0, QED_IO_WRITE, img->fd, r->iov, n, r->alloc_host + r->head_len,
                          r->run_len);
                return;
            }
            if (r->head_len && r->cow_zero) {
                n = iov_add_zeros(r, n, r->head_len);
            } else if (r->head_len) {
                r->iov[n].iov_base = r->cow;
                r->iov[n++].iov_len = r->head_len;
            }
            n = iov_add_source(r, n);
            if (r->tail_len && r->cow_zero) {
                n = iov_add_zeros(r, n, r->tail_len);
            } else if (r->tail_len) {
                r->iov[n].iov_base = r->cow + r->head_len;
                r->iov[n++].iov_len = r->tail_len;
            }
            set_state(r, RS_ALLOC_WRITE_WAIT);
            submit_io(r, 0, QED_IO_WRITE, img->fd, r->iov, n, r->alloc_host,
                      r->alloc_n * g->cluster_size);
            return;
        }

        case RS_ALLOC_WRITE_WAIT:
            if (r->err) {
                req_finish(r, r->err); /* the new clusters leak; nothing points at them */
                return;
            }
            if (img->backing_kind != BACKING_NONE && r->new_l2) {
                /* Rule 3: data stable before the L2 entry points at it.  An
                 * update of an existing table is group committed instead, and
                 * its batch flushes once for all its members (gc_start). */
                set_state(r, RS_ALLOC_FLUSH_WAIT);
                submit_fsync(r);
                return;
            }
            set_state(r, RS_L2_UPDATE);
            continue;

        case RS_ALLOC_FLUSH_WAIT:
            if (r->err) {
                req_finish(r, r->err);
                return;
            }
            set_state(r, RS_L2_UPDATE);
            continue;

        case RS_L2_UPDATE: {
            uint64_t *t = r->l2->t;
            uint64_t *ents = t + r->alloc_first;
            if (!r->new_l2) {
                /* Why a separate buffer: the cached table must show the new
                 * entries only once they are on disk.  A request that saw them
                 * earlier could write in place into the new clusters, and that
                 * completed write would vanish if this L2 write then failed. */
                r->ents = malloc(r->alloc_n * sizeof(uint64_t));
                if (!r->ents) {
                    req_finish(r, -ENOMEM);
                    return;
                }
                ents = r->ents;
            }
            /* A new table is not reachable until L1 points at it, so it is
             * filled in place and written whole. */
            for (uint64_t i = 0; i < r->alloc_n; i++)
                ents[i] = htole64(r->alloc_host ? r->alloc_host + i * g->cluster_size : 1);
            if (!r->new_l2) {
                /* Entries of an existing table: written by the next group
                 * commit batch, together with those of the other runs that
                 * reach this point meanwhile. */
                set_state(r, RS_GC_WAIT);
                gc_join(r);
                return;
            }
            set_state(r, RS_L2_WRITE_WAIT);
            submit_rw(r, 0, QED_IO_WRITE, t, g->table_bytes, r->l2->offset);
            return;
        }

        case RS_GC_WAIT:
            /* The batch wrote (or failed to write) our entries; on success it
             * has also put them into the cached table (rule 5). */
            if (r->err) {
                req_finish(r, r->err);
                return;
            }
            set_state(r, RS_ALLOC_DONE);
            continue;

        case RS_L2_WRITE_WAIT:
            /* Only a new table gets here; entry updates go through gc. */
            if (r->err) {
                qed_l2_cache_forget(&img->cache, r->l2);
                req_finish(r, r->err);
                return;
            }
            /* Rule 4: the new table stable before L1 points at it. */
            set_state(r, RS_L2_FLUSH_WAIT);
            submit_fsync(r);
            return;

        case RS_L2_FLUSH_WAIT:
            if (r->err) {
                qed_l2_cache_forget(&img->cache, r->l2);
                req_finish(r, r->err);
                return;
            }
            /* The L1 entry, like L2 entries, becomes visible only once written. */
            r->l1_ent = htole64(r->l2->offset);
            set_state(r, RS_L1_WRITE_WAIT);
            submit_rw(r, 0, QED_IO_WRITE, &r->l1_ent, sizeof(uint64_t),
                      img->h.l1_table_offset + r->l1_index * sizeof(uint64_t));
            return;

        case RS_L1_WRITE_WAIT:
            if (r->err) {
                qed_l2_cache_forget(&img->cache, r->l2);
                req_finish(r, r->err);
                return;
            }
            img->l1[r->l1_index] = r->l1_ent;
            set_state(r, RS_ALLOC_DONE);
            continue;

        case RS_ALLOC_DONE:
            free(r->ents);
            r->ents = NULL;
            free(r->cow);
            r->cow = NULL;
            r->new_l2 = false;
            r->zero_entries = false;
            r->head_len = r->tail_len = 0;
            r->cow_zero = false;
            r->sparse = false;
            run_advance(r);
            continue;

        /* ---- Block status of the backing image ---- */

        case RS_BS_BACKING_WAIT: {
            uint64_t covered = 0;
            if (r->err) {
                req_finish(r, r->err);
                return;
            }
            for (size_t i = 0; i < r->bs_tmp_n; i++) {
                struct qed_extent x = r->bs_tmp[i];
                x.depth++;
                if (!bs_emit(r, &x)) {
                    req_finish(r, 0);
                    return;
                }
                covered += x.length;
            }
            if (covered == 0) {
                req_finish(r, -EIO);
                return;
            }
            r->run_len = covered;
            run_advance(r);
            continue;
        }

        /* ---- Flush, resize, clean ---- */

        case RS_FLUSH_WAIT:
            req_finish(r, r->err);
            return;

        case RS_RESIZE_BEGIN:
            if (img->flush_err) {
                /* Why refuse before writing: the header in memory may lack a
                 * NEED_CHECK that is on disk (RS_HDR_FLUSH_WAIT forgets it),
                 * and the resize's own fdatasync would make that header
                 * durable.  The resize would fail at its flush anyway. */
                qed_log(QED_LOG_ERROR, "%s: not resizing: a flush of the image failed earlier",
                        img->path);
                req_finish(r, -EIO);
                return;
            }
            r->old_size = img->h.image_size;
            img->h.image_size = r->new_size;
            qed_header_encode(&img->h, img->hdr_raw);
            set_state(r, RS_RESIZE_HDR_WAIT);
            submit_rw(r, 0, QED_IO_WRITE, img->hdr_raw, QED_HEADER_BYTES, 0);
            return;

        case RS_RESIZE_HDR_WAIT:
            if (r->err) {
                img->h.image_size = r->old_size;
                req_finish(r, r->err);
                return;
            }
            set_state(r, RS_FLUSH_WAIT);
            submit_fsync(r);
            return;

        case RS_CLEAN_BEGIN:
            /* Only a flag we set ourselves: one left by a crash or by unrepaired
             * corruption must stay until a check clears it. */
            if (!(img->h.features & QED_F_NEED_CHECK) || img->read_only || !img->dirty_set_by_us) {
                req_finish(r, 0);
                return;
            }
            /* Why flush first: NEED_CHECK may be cleared only when every
             * metadata update made under it is on stable storage. */
            set_state(r, RS_CLEAN_FLUSH_WAIT);
            submit_fsync(r);
            return;

        case RS_CLEAN_FLUSH_WAIT:
            if (r->err) {
                req_finish(r, r->err);
                return;
            }
            img->h.features &= ~QED_F_NEED_CHECK;
            qed_header_encode(&img->h, img->hdr_raw);
            set_state(r, RS_CLEAN_HDR_WAIT);
            submit_rw(r, 0, QED_IO_WRITE, img->hdr_raw, QED_HEADER_BYTES, 0);
            return;

        case RS_CLEAN_HDR_WAIT:
            if (r->err)
                img->h.features |= QED_F_NEED_CHECK; /* still dirty on disk, maybe */
            req_finish(r, r->err);
            return;

        case RS_DONE:
            return;
        }
    }
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
    req_step(r);
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
    return rc < 0 ? rc : req_submit(r);
}

int qed_discard(qed_image *img, uint64_t off, uint64_t len, unsigned flags, qed_done_fn cb,
                void *opaque)
{
    struct qed_req *r;
    int rc = check_range(img, off, len, true, flags, QED_REQ_FUA, -EINVAL);

    if (rc == 0)
        rc = submit_new(img, REQ_DISCARD, off, len, NULL, flags, cb, opaque, &r);
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
