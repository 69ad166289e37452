/*
 * request-internal.h - what the files of the request machine share: the
 * state handlers' prototypes (from request-states.h), the driver's helpers,
 * I/O helpers, and the entry points of the allocating-write queue, the L2
 * cache room and the group commit.  Internal to lib/engine.
 *
 * The files, in the order of a write's life:
 *   request.c         API entry points, the driver, finishing, RS_START
 *   alloc-queue.c     the allocating-write queue (RS_QUEUE_WAIT)
 *   request-lookup.c  the mapping: L2 lookup, load, room in the cache
 *   request-run.c     a run by request type, data I/O, block status
 *   request-alloc.c   an allocation, from NEED_CHECK to the L1 update
 *   group-commit.c    the second machine: batches of L2 entry updates
 *   request-header.c  flush, resize and clean (header updates)
 *   request-io.c      submitting I/O for a request, zero buffers
 */
#ifndef QED_REQUEST_INTERNAL_H
#define QED_REQUEST_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "qed-image.h"

#define QED_ZERO_BUF_SIZE (1u << 20)
#define QED_ZERO_RUN_MAX (64ull << 20) /* longest zero write in one I/O */

/* Shared source of zeros for zero writes (request-io.c). */
extern uint8_t qed_zero_buf[QED_ZERO_BUF_SIZE];

static inline uint64_t qed_min64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* ---- The driver (request.c) ---- */

/* What a state handler tells the driver. */
enum qed_rs_next {
    QED_RS_STOP, /* the request waits (I/O, the queue, room, a batch) or has finished:
                    it may be freed already and must not be touched */
    QED_RS_GO,   /* the next state is set: run it now */
};

#define QED_REQ_STATE(id, name, handler) enum qed_rs_next handler(struct qed_req *r);
#include "request-states.h"
#undef QED_REQ_STATE

/** Log @r's move to state @s (debug logging only; see qed_req_set_state). */
void qed_req_log_transition(const struct qed_req *r, enum qed_req_state s);

/**
 * Enter state @s, logging the transition when debug logging is on.  Inline:
 * every step of every request passes here.
 */
static inline void qed_req_set_state(struct qed_req *r, enum qed_req_state s)
{
    if (__builtin_expect(qed_log_debug, 0))
        qed_req_log_transition(r, s);
    r->state = s;
}
/** Name of request type @t, for messages. */
const char *qed_req_type_name(enum qed_req_type t);
/**
 * Run @r's state machine from its current state, unless I/Os it started
 * are still in flight.  Every completion (I/O, L2 load, room, queue,
 * group commit batch) comes back through here.
 */
void qed_req_resume(struct qed_req *r);
/** Finish @r with @err (0 or a negative errno; the first error met wins). */
void qed_req_finish(struct qed_req *r, int err);

/** Enter state @s and tell the driver to run it now. */
static inline enum qed_rs_next qed_rs_go(struct qed_req *r, enum qed_req_state s)
{
    qed_req_set_state(r, s);
    return QED_RS_GO;
}

/** Finish @r with @err; the driver must stop (@r may be freed). */
static inline enum qed_rs_next qed_rs_finish(struct qed_req *r, int err)
{
    qed_req_finish(r, err);
    return QED_RS_STOP;
}

/**
 * The check every wait state starts with: did an I/O it waited for fail?
 * Then @r is finished with that error (and may be freed): true.
 */
static inline bool qed_rs_failed(struct qed_req *r)
{
    if (!r->err)
        return false;
    qed_req_finish(r, r->err);
    return true;
}

/**
 * The end of a wait state whose I/O leads to one next state: finish @r if
 * an I/O failed (qed_rs_failed), otherwise go on to @next.
 */
static inline enum qed_rs_next qed_rs_then(struct qed_req *r, enum qed_req_state next)
{
    return qed_rs_failed(r) ? QED_RS_STOP : qed_rs_go(r, next);
}

/* ---- I/O for a request (request-io.c) ---- */

/** Enter wait state @s and flush the image file; the driver stops until it completes. */
enum qed_rs_next qed_rs_wait_fsync(struct qed_req *r, enum qed_req_state s);
/**
 * Encode the in-memory header, enter wait state @s and write the header;
 * the driver stops until it completes.  Exclusive requests only: they own
 * img->hdr_raw.
 */
enum qed_rs_next qed_rs_wait_header_write(struct qed_req *r, enum qed_req_state s);

/** Submit one I/O in slot @slot of @r; its completion resumes @r. */
void qed_req_submit_io(struct qed_req *r, int slot, enum qed_io_op op, int fd, struct iovec *iov,
                       int iovcnt, uint64_t offset, uint64_t length);
/** Read or write @len bytes at @buf from or to @host in the image file. */
void qed_req_submit_rw(struct qed_req *r, int slot, enum qed_io_op op, void *buf, uint64_t len,
                       uint64_t host);
/** Completion of a request on a backing image: resumes @opaque. */
void qed_req_sub_done(void *opaque, int ret);
/** Append zero-buffer pieces covering @len bytes to r->iov from index @n. */
int qed_req_iov_add_zeros(struct qed_req *r, int n, uint64_t len);
/** Append the source of the run's data (caller's buffer or zeros). */
int qed_req_iov_add_source(struct qed_req *r, int n);
/** Read guest range [pos, pos+len) of the backing file into @dst (zeros past its end). */
void qed_req_backing_read(struct qed_req *r, int slot, uint64_t pos, uint8_t *dst, uint64_t len);

/* ---- The allocating-write queue (alloc-queue.c) ---- */

/**
 * Enter the queue.  Returns true when @r may go on at once (state set to
 * @resume), false when it waits (state RS_QUEUE_WAIT) and will be resumed
 * by the queue.
 */
bool qed_queue_enter(struct qed_req *r, enum qed_req_state resume);
/** @r, admitted by the queue, finished: give up its place. */
void qed_queue_leave(struct qed_req *r);
/** After a holder left: arm the clean when idle, admit the next waiters. */
void qed_queue_next(struct qed_image *img);

/* ---- The mapping (request-lookup.c) ---- */

/** Find the run at cur_pos given r->l2: sets kind, run_len and host. */
void qed_req_run_lookup(struct qed_req *r);
/** The run is handled: move past it (state RS_NEXT). */
void qed_req_run_advance(struct qed_req *r);
/**
 * Is there room for one more table in the L2 cache?  True: insert it now.
 * False: @r now waits (RS_L2_ROOM_WAIT) and enters @resume once there is.
 */
bool qed_req_l2_room_take(struct qed_req *r, enum qed_req_state resume);

/* ---- Allocation (request-alloc.c) ---- */

/** May the run being allocated leave the unwritten parts of its clusters unwritten? */
bool qed_req_alloc_can_be_sparse(struct qed_req *r);

/* ---- Group commit (group-commit.c) ---- */

/** Queue @r (state RS_GC_WAIT, r->ents filled) for the next batch. */
void qed_gc_join(struct qed_req *r);

#endif /* QED_REQUEST_INTERNAL_H */
