/*
 * aio-uring.c - the io_uring I/O backend.
 *
 * One ring per engine (and with qed_aio_set_max_workers, a cap on the
 * kernel threads it may hand work to).  Completions are signalled through an eventfd
 * registered with the ring; an ev_io watcher on that eventfd reaps every CQE
 * and calls qed_aio_complete(), so done always runs from a loop callback and
 * never from inside qed_aio_submit().
 *
 * Submission is batched: submit() only fills SQEs, and an ev_prepare watcher
 * hands them to the kernel (one io_uring_enter) just before the loop blocks.
 * A prepare watcher runs on every loop iteration before the loop polls, so a
 * caller that drives the loop with ev_run(loop, EVRUN_ONCE) gets the same
 * guarantee.  The only gap is an I/O submitted by a callback that runs after
 * our prepare callback but before the poll (another prepare watcher); an
 * ev_check watcher tracks that window and, inside it, submit() enters the
 * kernel at once.
 *
 * At most cq_entries operations are in the ring at a time (SQE filled or CQE
 * not yet reaped), so the completion queue cannot overflow; the rest wait on
 * a backlog list in submission order and move into the ring as CQEs free
 * room.
 *
 * Short reads and writes continue from where they stopped, a read that
 * reaches end of file is zero-filled, and -EAGAIN / -EINTR are retried.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/uio.h>

#include <liburing.h>

#include "qed-io.h"
#include "qed-io-test.h"
#include "qed-log.h"

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

#define URING_QUEUE_DEPTH 256

struct uring_priv {
    struct io_uring ring;
    bool ring_ok;            /* ring initialised (for cleanup) */
    struct qed_aio_wake wake; /* eventfd the kernel signals on each CQE */
    ev_prepare prepare;      /* flushes filled SQEs before the loop blocks */
    ev_check check;          /* closes the "after our prepare" window */
    ev_timer retry;          /* retries a failed io_uring_submit */
    bool window_open;        /* our prepare ran and the loop has not polled yet */
    unsigned in_ring;        /* ops with an SQE filled and no CQE reaped yet */
    unsigned cap;            /* bound on in_ring: the CQ size */
    struct qed_io *backlog_head, *backlog_tail;
    bool *freed;             /* set by destroy while a callback runs */

    bool nowait_read, nowait_write; /* the file system takes RWF_NOWAIT */
    bool big_split;          /* QED_AIO_BIG=split: see uring_prep_rw */
};

/* ---- submission ---- */

/*
 * Fill @sqe for what remains of the read or write @io (a capped vector is a
 * short transfer that uring_handle continues).
 *
 * Why more than a readv: io_uring_enter, on the loop thread, first tries
 * each request without blocking, and a buffered read the page cache holds
 * (or a write the file system takes without waiting) is copied right there.
 * Above QED_IO_LOOP_COPY_MAX (qed-io.h) that copy must not happen on the
 * loop, so the request goes straight to an io-wq worker (IOSQE_ASYNC).
 * O_DIRECT requests are not copied by the CPU and go as they are.  With
 * QED_AIO_BIG=split (for comparisons) the request is cut instead into
 * steps of at most the bound, one in the ring at a time, each a short
 * transfer continued from uring_handle: the copies stay on the loop, one
 * bounded step per loop turn.
 */
static void uring_prep_rw(qed_aio *aio, struct io_uring_sqe *sqe, struct qed_io *io)
{
    struct uring_priv *p = aio->priv;
    bool is_read = io->op == QED_IO_READ;
    uint64_t off = io->offset + io->done_bytes, len = 0;
    int first = qed_iov_first(io->iov, io->iovcnt);
    int cnt = io->iovcnt - first;
    struct iovec *v = io->iov + first;

    if (cnt > IOV_MAX)
        cnt = IOV_MAX;
    for (int i = 0; i < cnt; i++)
        len += v[i].iov_len;
    if (!(io->flags & QED_IO_F_DIRECT) && len > QED_IO_LOOP_COPY_MAX && p->big_split) {
        /* As many whole iovecs as fit in the bound, or a piece of the first. */
        uint64_t sum = 0;
        int k = 0;
        while (k < cnt && sum + v[k].iov_len <= QED_IO_LOOP_COPY_MAX)
            sum += v[k++].iov_len;
        if (k == 0) {
            if (is_read)
                io_uring_prep_read(sqe, io->fd, v->iov_base, QED_IO_LOOP_COPY_MAX, off);
            else
                io_uring_prep_write(sqe, io->fd, v->iov_base, QED_IO_LOOP_COPY_MAX, off);
            qed_aio_loop_copy_note(aio, QED_IO_LOOP_COPY_MAX);
            return;
        }
        cnt = k;
        len = sum;
    }
    if (is_read)
        io_uring_prep_readv(sqe, io->fd, v, (unsigned)cnt, off);
    else
        io_uring_prep_writev(sqe, io->fd, v, (unsigned)cnt, off);
    if (io->flags & QED_IO_F_DIRECT)
        return;
    if (len > QED_IO_LOOP_COPY_MAX)
        io_uring_sqe_set_flags(sqe, IOSQE_ASYNC);
    else
        qed_aio_loop_copy_note(aio, len); /* the kernel may copy it inline */
}

/* Fill @sqe for what remains of @io. */
static void uring_prep(qed_aio *aio, struct io_uring_sqe *sqe, struct qed_io *io)
{
    switch (io->op) {
    case QED_IO_READ:
    case QED_IO_WRITE:
        uring_prep_rw(aio, sqe, io);
        break;
    case QED_IO_FSYNC:
        io_uring_prep_fsync(sqe, io->fd, IORING_FSYNC_DATASYNC);
        break;
    case QED_IO_PUNCH:
    case QED_IO_ALLOCATE:
        if (io->length == 0) {
            /* fallocate refuses a zero length; an empty range is already
             * done.  A NOP still completes through the CQ, later. */
            io_uring_prep_nop(sqe);
        } else {
            io_uring_prep_fallocate(sqe, io->fd, qed_io_falloc_mode(io), (off_t)io->offset,
                                    (off_t)io->length);
        }
        break;
    default:
        /* Unknown op: a NOP lets uring_handle fail it with -EINVAL from the
         * completion path, never from submit. */
        io_uring_prep_nop(sqe);
        break;
    }
    io_uring_sqe_set_data(sqe, io);
}

/* Hand every filled SQE to the kernel. */
static void uring_flush(qed_aio *aio)
{
    struct uring_priv *p = aio->priv;
    int r;

    if (io_uring_sq_ready(&p->ring) == 0)
        return;
    r = io_uring_submit(&p->ring);
    if (r >= 0 && io_uring_sq_ready(&p->ring) == 0)
        return;
    /* The SQEs left stay in the ring.  Something must retry the submit even
     * if nothing else is in flight to wake the loop, hence the timer. */
    if (r < 0 && r != -EAGAIN && r != -EBUSY && r != -EINTR)
        qed_log(QED_LOG_ERROR, "io_uring_submit: %s", strerror(-r));
    if (!ev_is_active(&p->retry)) {
        ev_timer_set(&p->retry, 0.001, 0.);
        ev_timer_start(aio->loop, &p->retry);
    }
}

/* Put @io into the ring, or on the backlog when the ring is full.  Returns
 * false if it went on the backlog. */
static bool uring_try_enqueue(qed_aio *aio, struct qed_io *io)
{
    struct uring_priv *p = aio->priv;
    struct io_uring_sqe *sqe;

    if (p->in_ring >= p->cap)
        return false;
    sqe = io_uring_get_sqe(&p->ring);
    if (!sqe) {
        /* SQ full of filled entries: pass them to the kernel to make room. */
        uring_flush(aio);
        sqe = io_uring_get_sqe(&p->ring);
        if (!sqe)
            return false;
    }
    uring_prep(aio, sqe, io);
    p->in_ring++;
    return true;
}

static void uring_backlog_push(struct uring_priv *p, struct qed_io *io)
{
    qed_io_list_push(&p->backlog_head, &p->backlog_tail, io);
}

/* Move backlog entries into the ring while there is room. */
static void uring_fill_from_backlog(qed_aio *aio)
{
    struct uring_priv *p = aio->priv;

    while (p->backlog_head) {
        struct qed_io *io = p->backlog_head;

        if (!uring_try_enqueue(aio, io))
            break;
        p->backlog_head = io->next;
        if (!p->backlog_head)
            p->backlog_tail = NULL;
        io->next = NULL;
    }
}

/* Queue @io (new or retried) behind anything already waiting. */
static void uring_queue(qed_aio *aio, struct qed_io *io)
{
    struct uring_priv *p = aio->priv;

    /* Why the backlog goes first: keep submission order among waiting I/Os. */
    if (p->backlog_head || !uring_try_enqueue(aio, io))
        uring_backlog_push(p, io);
    /* Inside the window our prepare callback has already run for this
     * iteration, so nothing else would submit before the loop blocks. */
    if (p->window_open)
        uring_flush(aio);
}

static void uring_ref(qed_aio *aio)
{
    struct uring_priv *p = aio->priv;

    qed_aio_wake_ref(aio, &p->wake);
}

/*
 * Try a read or write at once with RWF_NOWAIT: when the data is in the page
 * cache this finishes without a trip through an io_uring worker thread, and
 * the flag guarantees it never blocks the loop (the kernel answers EAGAIN
 * instead).  Returns true when @io is complete; a partial transfer leaves the
 * rest for the ring.
 */
static bool uring_try_inline(qed_aio *aio, struct qed_io *io)
{
    struct uring_priv *p = aio->priv;
    bool is_read = io->op == QED_IO_READ;
    int first, cnt;
    ssize_t n;

    /* Why not O_DIRECT: there is no page cache to hit, and a synchronous
     * direct read or write waits for the device even with RWF_NOWAIT. */
    /* Why the bound: the copy happens here, on the loop (QED_IO_LOOP_COPY_MAX). */
    if (!(is_read ? p->nowait_read : p->nowait_write) || io->length == 0 ||
        io->length > QED_IO_LOOP_COPY_MAX || (io->flags & QED_IO_F_DIRECT))
        return false;
    first = qed_iov_first(io->iov, io->iovcnt);
    cnt = io->iovcnt - first;
    if (cnt > IOV_MAX)
        return false;
    n = is_read ? preadv2(io->fd, io->iov + first, cnt, (off_t)io->offset, RWF_NOWAIT)
                : pwritev2(io->fd, io->iov + first, cnt, (off_t)io->offset, RWF_NOWAIT);
    if (n < 0) {
        if (errno == EOPNOTSUPP || errno == EINVAL) {
            /* This file system cannot do it: stop trying. */
            if (is_read)
                p->nowait_read = false;
            else
                p->nowait_write = false;
        }
        return false; /* EAGAIN and real errors: the ring retries and reports */
    }
    qed_aio_loop_copy_note(aio, (uint64_t)n);
    if ((uint64_t)n < io->length) {
        io->done_bytes = (uint64_t)n;
        qed_iov_consume(io->iov + first, cnt, (size_t)n);
        return false;
    }
    io->done_bytes = io->length;
    io->res = (int64_t)io->length;
    qed_aio_complete_later(aio, io);
    return true;
}

static void uring_submit(qed_aio *aio, struct qed_io *io)
{
    if (qed_aio_run_memory(aio, io))
        return;
    if ((io->op == QED_IO_READ || io->op == QED_IO_WRITE) && uring_try_inline(aio, io))
        return;
    /* While I/O is in flight the eventfd watcher must keep ev_run() alive. */
    uring_ref(aio);
    uring_queue(aio, io);
}

/* ---- completion ---- */

static bool uring_retryable(int res)
{
    return res == -EAGAIN || res == -EINTR;
}

/* Process one CQE for @io.  Either requeues it or completes it. */
static void uring_handle(qed_aio *aio, struct qed_io *io, int res)
{
    switch (io->op) {
    case QED_IO_READ:
    case QED_IO_WRITE: {
        bool is_read = io->op == QED_IO_READ;
        uint64_t remaining = io->length - io->done_bytes;
        int first = qed_iov_first(io->iov, io->iovcnt);

        if (res < 0) {
            if (uring_retryable(res)) {
                uring_queue(aio, io);
                return;
            }
            qed_log(QED_LOG_DEBUG, "io_uring %s(fd %d, offset %llu, %llu bytes): %s",
                    is_read ? "readv" : "writev", io->fd,
                    (unsigned long long)(io->offset + io->done_bytes),
                    (unsigned long long)remaining, strerror(-res));
            io->res = res;
            break;
        }
        if (res == 0 && remaining > 0) {
            if (is_read) {
                /* End of file: the rest of the range reads as zeros. */
                qed_iov_zero_rest(io->iov + first, io->iovcnt - first);
                io->done_bytes = io->length;
                io->res = (int64_t)io->length;
                break;
            }
            /* A write that makes no progress would be retried forever. */
            qed_log(QED_LOG_WARN, "io_uring writev(fd %d, offset %llu) wrote nothing", io->fd,
                    (unsigned long long)(io->offset + io->done_bytes));
            io->res = -EIO;
            break;
        }
        if ((uint64_t)res > remaining)
            res = (int)remaining;  /* cannot happen; never run past the vector */
        io->done_bytes += (uint64_t)res;
        qed_iov_consume(io->iov + first, io->iovcnt - first, (size_t)res);
        if (io->done_bytes < io->length && qed_dio_eof(io)) {
            qed_iov_zero_rest(io->iov + first, io->iovcnt - first);
            io->done_bytes = io->length;
        }
        if (io->done_bytes < io->length) {
            /* Short transfer: continue with the remainder. */
            uring_queue(aio, io);
            return;
        }
        io->res = (int64_t)io->length;
        break;
    }
    case QED_IO_FSYNC:
    case QED_IO_PUNCH:
    case QED_IO_ALLOCATE:
        if (res < 0) {
            if (uring_retryable(res)) {
                uring_queue(aio, io);
                return;
            }
            qed_log(QED_LOG_DEBUG, "io_uring %s(fd %d): %s",
                    io->op == QED_IO_FSYNC  ? "fsync"
                    : io->op == QED_IO_PUNCH ? "fallocate(PUNCH_HOLE)"
                                             : "fallocate",
                    io->fd, strerror(-res));
            io->res = res;
        } else {
            io->res = io->op == QED_IO_FSYNC ? 0 : (int64_t)io->length;
        }
        break;
    default:
        qed_log(QED_LOG_ERROR, "unknown I/O op %d", (int)io->op);
        io->res = -EINVAL;
        break;
    }
    qed_aio_complete(aio, io);
}

static void uring_efd_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    qed_aio *aio = w->data;
    struct uring_priv *p = aio->priv;
    unsigned n;
    bool freed = false;

    (void)loop;
    (void)revents;
    /* Why read the eventfd before looking at the CQ: a CQE posted after the
     * read signals it again, so nothing can be missed. */
    qed_aio_wake_read(&p->wake, "io_uring");

    /* Reap only what is there now; CQEs posted while done callbacks run
     * re-signal the eventfd and are handled on the next turn. */
    n = io_uring_cq_ready(&p->ring);
    /* A done callback may free the engine once nothing is in flight. */
    p->freed = &freed;
    while (n-- > 0) {
        struct io_uring_cqe *cqe;
        struct qed_io *io;
        int res;

        if (io_uring_peek_cqe(&p->ring, &cqe) != 0 || !cqe)
            break;
        io = io_uring_cqe_get_data(cqe);
        res = cqe->res;
        /* Release the CQ slot before running callbacks that may submit. */
        io_uring_cqe_seen(&p->ring, cqe);
        p->in_ring--;
        uring_handle(aio, io, res);
        if (freed)
            return;
        /* Room was freed in the ring: let waiting I/Os in, oldest first. */
        uring_fill_from_backlog(aio);
    }
    p->freed = NULL;
    /* Why the ring's own count and not aio->inflight: I/O completed on the
     * loop thread (qed_aio_complete_later) is kept alive by its deferred
     * call, and must not keep this watcher referenced after it is done. */
    if (p->in_ring == 0 && !p->backlog_head)
        qed_aio_wake_unref(aio, &p->wake);
    /* Why not submit here: the prepare watcher submits everything queued by
     * these callbacks in one call before the loop blocks. */
}

static void uring_prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    qed_aio *aio = w->data;
    struct uring_priv *p = aio->priv;

    (void)loop;
    (void)revents;
    uring_fill_from_backlog(aio);
    uring_flush(aio);
    p->window_open = true;
}

static void uring_check_cb(struct ev_loop *loop, ev_check *w, int revents)
{
    qed_aio *aio = w->data;
    struct uring_priv *p = aio->priv;

    (void)loop;
    (void)revents;
    p->window_open = false;
}

static void uring_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    qed_aio *aio = w->data;

    (void)loop;
    (void)revents;
    uring_fill_from_backlog(aio);
    uring_flush(aio);
}

/* ---- setup / teardown ---- */

static void uring_free_priv(qed_aio *aio, struct uring_priv *p)
{
    if (ev_is_active(&p->prepare)) {
        ev_ref(aio->loop);
        ev_prepare_stop(aio->loop, &p->prepare);
    }
    if (ev_is_active(&p->check)) {
        ev_ref(aio->loop);
        ev_check_stop(aio->loop, &p->check);
    }
    if (ev_is_active(&p->retry))
        ev_timer_stop(aio->loop, &p->retry);
    if (p->ring_ok)
        io_uring_queue_exit(&p->ring);
    /* After the ring is gone: the eventfd is registered with it. */
    qed_aio_wake_close(aio, &p->wake);
    free(p);
    aio->priv = NULL;
}

static void uring_destroy(qed_aio *aio)
{
    struct uring_priv *p = aio->priv;

    if (!p)
        return;
    if (p->in_ring || p->backlog_head)
        qed_log(QED_LOG_ERROR, "io_uring engine freed with %u I/Os in flight", aio->inflight);
    if (p->freed)
        *p->freed = true;
    uring_free_priv(aio, p);
}

/*
 * qed_aio_set_max_workers for io_uring: io_uring_register_iowq_max_workers
 * with {bounded, unbounded}.
 *
 * What the two kinds of worker run: "bounded" ones run work on regular
 * files and block devices, which for us is every hand-off: a buffered read
 * or write above QED_IO_LOOP_COPY_MAX sent with IOSQE_ASYNC, one the page
 * cache could not take without waiting (an ext4 buffered write that must
 * allocate), fsync and fallocate, and an O_DIRECT request the device
 * refused without waiting.  "Unbounded" ones run reads and writes on
 * sockets and pipes, which may block for ever; we submit none, and cap
 * them at the same number so that nothing unforeseen escapes the cap (their
 * default is RLIMIT_NPROC).
 *
 * Why the clamp to the SQ size: the kernel's default bounded limit is
 * min(SQ entries, 4 * online CPUs); a caller's share never needs more.
 *
 * The workers belong to the thread that submits, not to the ring: the
 * kernel applies the cap to the calling thread's pool if it has one, and
 * records it in the ring so that a thread submitting there later (a
 * server's loop thread, for a ring set up by its main thread) starts with
 * it.  Kernels before 5.15 refuse the call (-EINVAL): the engine runs as
 * before, with the kernel's default, and we say so once.
 */
static int uring_set_max_workers(qed_aio *aio, unsigned bounded)
{
    static atomic_bool said;  /* the failure is the kernel's: say it once */
    struct uring_priv *p = aio->priv;
    unsigned vals[2];
    int r;

    if (bounded == 0)
        return 0;
    if (bounded > p->ring.sq.ring_entries)
        bounded = p->ring.sq.ring_entries;
    vals[0] = vals[1] = bounded;
    r = io_uring_register_iowq_max_workers(&p->ring, vals);
    if (r < 0) {
        if (!atomic_exchange(&said, true))
            qed_log(QED_LOG_INFO, "io_uring: cannot cap the kernel's workers per ring (%s); "
                    "keeping its default", strerror(-r));
        return -ENOTSUP;
    }
    qed_log(QED_LOG_DEBUG, "io_uring: at most %u kernel workers for this ring's thread", bounded);
    return 0;
}

static const struct qed_aio_ops uring_ops = {.name = "io_uring",
                                             .submit = uring_submit,
                                             .destroy = uring_destroy,
                                             .set_max_workers = uring_set_max_workers};

int qed_aio_test_uring_fd(qed_aio *aio)
{
    struct uring_priv *p = aio->priv;

    if (aio->ops != &uring_ops)
        return -ENOTSUP;
    return p->ring.ring_fd;
}

/* Check that the kernel implements every opcode we use. */
static int uring_probe_ops(struct io_uring *ring)
{
    static const struct {
        int op;
        const char *name;
    } needed[] = {
        { IORING_OP_READV, "READV" },     { IORING_OP_WRITEV, "WRITEV" },
        { IORING_OP_READ, "READ" },       { IORING_OP_WRITE, "WRITE" },
        { IORING_OP_FSYNC, "FSYNC" },     { IORING_OP_FALLOCATE, "FALLOCATE" },
        { IORING_OP_NOP, "NOP" },
    };
    struct io_uring_probe *probe = io_uring_get_probe_ring(ring);
    int r = 0;

    if (!probe) {
        /* Kernels before 5.6 have no probe, and no FALLOCATE either. */
        qed_log(QED_LOG_INFO, "io_uring: cannot probe supported operations");
        return -ENOTSUP;
    }
    for (size_t i = 0; i < sizeof(needed) / sizeof(needed[0]); i++) {
        if (!io_uring_opcode_supported(probe, needed[i].op)) {
            qed_log(QED_LOG_INFO, "io_uring: kernel lacks IORING_OP_%s", needed[i].name);
            r = -ENOTSUP;
            break;
        }
    }
    io_uring_free_probe(probe);
    return r;
}

int qed_aio_uring_init(qed_aio *aio)
{
    struct uring_priv *p = calloc(1, sizeof(*p));
    int r;

    if (!p)
        return -ENOMEM;
    p->wake.fd = -1;
    /* QED_AIO_NOWAIT=0 turns the inline attempt off (for comparisons). */
    p->nowait_read = p->nowait_write = !(getenv("QED_AIO_NOWAIT") &&
                                         strcmp(getenv("QED_AIO_NOWAIT"), "0") == 0);
    /* QED_AIO_BIG=split cuts large buffered transfers instead of handing
     * them to workers (uring_prep_rw; for comparisons). */
    p->big_split = getenv("QED_AIO_BIG") && strcmp(getenv("QED_AIO_BIG"), "split") == 0;
    aio->priv = p;

    r = io_uring_queue_init(URING_QUEUE_DEPTH, &p->ring, 0);
    if (r < 0) {
        /* Typical causes: io_uring disabled by sysctl or a seccomp filter. */
        qed_log(QED_LOG_INFO, "io_uring_queue_init(%d): %s", URING_QUEUE_DEPTH, strerror(-r));
        goto fail;
    }
    p->ring_ok = true;
    r = uring_probe_ops(&p->ring);
    if (r < 0)
        goto fail;
    p->cap = p->ring.cq.ring_entries;

    r = qed_aio_wake_open(&p->wake);
    if (r < 0)
        goto fail;
    r = io_uring_register_eventfd(&p->ring, p->wake.fd);
    if (r < 0) {
        qed_log(QED_LOG_WARN, "io_uring_register_eventfd: %s", strerror(-r));
        goto fail;
    }

    ev_prepare_init(&p->prepare, uring_prepare_cb);
    p->prepare.data = aio;
    /* Lowest priority: run after other prepare watchers, which may submit. */
    ev_set_priority(&p->prepare, EV_MINPRI);
    ev_check_init(&p->check, uring_check_cb);
    p->check.data = aio;
    /* Highest priority: close the window as early as possible after the poll. */
    ev_set_priority(&p->check, EV_MAXPRI);
    ev_timer_init(&p->retry, uring_retry_cb, 0.001, 0.);
    p->retry.data = aio;

    /* Why unref: an idle engine must not keep ev_run() from returning.  The
     * eventfd watcher is ref'd again while I/O is in flight.  Its priority
     * matters too: see qed_aio_wake_start. */
    qed_aio_wake_start(aio, &p->wake, uring_efd_cb);
    ev_prepare_start(aio->loop, &p->prepare);
    ev_unref(aio->loop);
    ev_check_start(aio->loop, &p->check);
    ev_unref(aio->loop);

    aio->ops = &uring_ops;
    return 0;

fail:
    uring_free_priv(aio, p);
    return r;
}
