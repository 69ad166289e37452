/*
 * alloc-queue.c - the allocating-write queue: which requests that change
 * metadata may run, side by side or alone, and in what order.
 *
 * A request enters it from RS_START (write zeroes, resize, clean) or from
 * RS_RUN (a write that must allocate), waits in RS_QUEUE_WAIT when it
 * cannot start, and leaves it when it finishes (qed_req_finish).
 */
#include "config.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>

#include "checked.h"
#include "qed-image.h"
#include "request-internal.h"

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
    if (qed_image_must_mark_dirty(img))
        return true;
    for (uint64_t i = qed_l1_index(&img->g, r->lock_lo);
         i <= qed_l1_index(&img->g, r->lock_hi - 1) && i < img->g.table_entries; i++)
        if (img->l1[i] == QED_ENTRY_UNALLOCATED)
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

void qed_queue_leave(struct qed_req *r)
{
    struct qed_image *img = r->img;

    QED_DLIST_UNLINK(img->active, r, aprev, anext);
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
            qed_req_resume(r); /* in RS_QUEUE_WAIT: goes on to r->resume */
            img->kick_again = true;
        }
    } while (img->kick_again);
    img->kicking = false;
}

bool qed_queue_enter(struct qed_req *r, enum qed_req_state resume)
{
    struct qed_image *img = r->img;
    const struct qed_geom *g = &img->g;
    uint64_t from = r->type == REQ_WRITE ? r->cur_pos : r->off;

    /* Allocation activity postpones the clean: NEED_CHECK stays set while busy. */
    qed_image_stop_clean(img);
    r->lock_lo = qed_start_of_cluster(g, from);
    if (qed_align_up_overflows(r->end, g->cluster_size, &r->lock_hi)) {
        /* Cannot happen below QED_MAX_VIRTUAL_SIZE; if it did, an end that
         * wrapped to 0 would make the range empty and let a second writer of
         * the same clusters in.  Lock everything from lock_lo on instead. */
        qed_log(QED_LOG_ERROR, "%s: %s range end %" PRIu64 " overflows; locking to the end",
                img->path, qed_req_type_name(r->type), r->end);
        r->lock_hi = qed_start_of_cluster(g, UINT64_MAX);
    }
    if (r->lock_hi <= r->lock_lo)
        r->lock_hi = r->lock_lo + g->cluster_size; /* empty ranges still order */
    if (!img->queue_head && can_start(r)) {
        activate(r);
        qed_req_set_state(r, resume);
        return true;
    }
    QED_FIFO_APPEND(img->queue_head, img->queue_tail, r, next);
    r->resume = resume;
    qed_req_set_state(r, RS_QUEUE_WAIT);
    return false;
}

void qed_queue_next(struct qed_image *img)
{
    if (!img->queue_head && img->nactive == 0)
        qed_image_arm_clean(img);
    queue_kick(img);
}

/* ---- The state that waits in the queue ---- */

enum qed_rs_next qed_rs_queue_wait(struct qed_req *r)
{
    /* queue_kick made us the holder. */
    return qed_rs_go(r, r->resume);
}
