/*
 * request-lookup.c - the mapping of a request: the L2 table covering
 * cur_pos (cached, loaded, or waited for), the run it describes, and the
 * requests waiting for room in the bounded L2 cache.  States RS_NEXT,
 * RS_L2_LOAD_WAIT and RS_L2_ROOM_WAIT.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <string.h>

#include "checked.h"
#include "qed-image.h"
#include "request-internal.h"

/* ---- Mapping lookup ---- */

/* Log the corrupt entry @e0 at index @idx of the run's table. */
static void run_report_bad(const struct qed_req *r, uint64_t idx, uint64_t e0)
{
    const struct qed_image *img = r->img;
    uint64_t stored;
    /* Name the value in the file: an entry disabled at open holds a
     * mark in memory that is nowhere on disk (metadata.c). */
    bool disabled = qed_meta_disabled_l2(img, r->l2->offset, idx, &stored) &&
                    (stored | QED_ENTRY_DISABLED) == e0;

    qed_log(QED_LOG_ERROR,
            "%s: corrupt L2 entry 0x%" PRIx64 " for guest offset %" PRIu64
            " (table at %" PRIu64 ", index %" PRIu64 ")%s",
            img->path, disabled ? stored : e0, r->cur_pos, r->l2->offset, idx,
            disabled ? ": it points past the end of the file or at metadata; "
                       "`qed-img check` lists such entries" : "");
}

/* Limited to the request end and to the L2 table that covers cur_pos. */
void qed_req_run_lookup(struct qed_req *r)
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
    limit = qed_min64(r->end, l2_end);

    if (!r->l2) {
        r->kind = RUN_UNALLOC;
        r->run_len = limit - pos;
        return;
    }
    idx = qed_l2_index(g, pos);
    e0 = le64toh(r->l2->t[idx]);
    if (e0 == QED_ENTRY_UNALLOCATED)
        kind = RUN_UNALLOC;
    else if (e0 == QED_ENTRY_ZERO)
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
        run_report_bad(r, idx, e0);
    }
    r->kind = kind;
    r->run_len = qed_min64(c, limit) - pos;
    r->host = kind == RUN_DATA ? e0 + qed_offset_in_cluster(g, pos) : 0;
}

void qed_req_run_advance(struct qed_req *r)
{
    r->cur_pos += r->run_len;
    if (r->l2) {
        qed_l2_cache_unref(&r->img->cache, r->l2);
        r->l2 = NULL;
    }
    qed_req_set_state(r, RS_NEXT);
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
        qed_l2_publish(img, e); /* L1 named it: other threads may read it now */
    }
    /* Each waiter holds its own reference, so stepping one (which may drop
     * its reference) cannot free the entry under the others. */
    while (w) {
        struct qed_req *next = w->next;
        w->next = NULL;
        if (res < 0 && !w->err)
            w->err = res;
        w->pending--;
        qed_req_resume(w);
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
        qed_req_resume(r);
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

    QED_FIFO_APPEND(c->room_head, c->room_tail, r, next);
    r->resume = resume;
    r->pending++; /* stepped again only by l2_room_defer_fn */
    c->room_waits++;
    qed_req_set_state(r, RS_L2_ROOM_WAIT);
}

/* Must @r queue behind waiters for room before it takes any table? */
static bool l2_room_others_first(const struct qed_req *r)
{
    const struct qed_l2_cache *c = &r->img->cache;

    return c->room_head && c->room_turn != r;
}

bool qed_req_l2_room_take(struct qed_req *r, enum qed_req_state resume)
{
    /* Earlier waiters first, except for the one being woken. */
    if (!l2_room_others_first(r) && qed_l2_cache_make_room(&r->img->cache))
        return true;
    l2_room_wait(r, resume);
    return false;
}

/* Insert the table at @off, LOADING, with @r its first waiter, and read it.  0 or -ENOMEM. */
static int l2_load_start(struct qed_req *r, uint64_t off)
{
    struct qed_image *img = r->img;
    struct qed_l2 *e = qed_l2_cache_insert(&img->cache, img, off, L2_LOADING);

    if (!e)
        return -ENOMEM;
    r->l2 = e;
    e->l1_index = r->l1_index;
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
    if (off == QED_ENTRY_UNALLOCATED)
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
    if (!qed_req_l2_room_take(r, RS_NEXT))
        return 2;
    return l2_load_start(r, off);
}

/* ---- The states ---- */

/* The range is done: the FAST_ZERO scan starts over for real, or the request finishes. */
static enum qed_rs_next next_at_end(struct qed_req *r)
{
    if (r->scanning) {
        /* The scan found nothing slow: now do it for real. */
        r->scanning = false;
        r->cur_pos = r->off;
        return QED_RS_GO; /* RS_NEXT again */
    }
    if ((r->flags & QED_REQ_FUA) && r->type != REQ_READ && r->type != REQ_BSTATUS) {
        /* FUA: the data and the metadata that maps it must be
         * stable before we report success. */
        return qed_rs_wait_fsync(r, RS_FLUSH_WAIT);
    }
    return qed_rs_finish(r, 0);
}

enum qed_rs_next qed_rs_next(struct qed_req *r)
{
    int rc;

    if (r->cur_pos >= r->end)
        return next_at_end(r);
    rc = get_l2(r);
    if (rc < 0)
        return qed_rs_finish(r, rc);
    if (rc == 0) {
        qed_req_set_state(r, RS_L2_LOAD_WAIT);
        return QED_RS_STOP;
    }
    if (rc == 2)
        return QED_RS_STOP; /* RS_L2_ROOM_WAIT */
    return qed_rs_go(r, RS_RUN);
}

enum qed_rs_next qed_rs_l2_load_wait(struct qed_req *r)
{
    return qed_rs_then(r, RS_RUN);
}

enum qed_rs_next qed_rs_l2_room_wait(struct qed_req *r)
{
    /* There is room now: look the table up again (another request
     * may have loaded it meanwhile), or take the new table. */
    return qed_rs_go(r, r->resume);
}
