/*
 * aio.c - the backend-independent part of the I/O engine: construction with
 * fallback, in-flight accounting, deferred calls, and the completion eventfd
 * the io_uring and thread-pool backends share (with the watcher priority
 * the deferred calls depend on).
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <linux/magic.h>

#include "qed-io.h"
#include "qed-io-test.h"
#include "qed-log.h"

/* Drain the deferred calls queued before this turn; later ones wait a turn. */
static void aio_defer_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
    qed_aio *aio = w->data;
    struct qed_defer *d = aio->defer_head;

    (void)revents;
    /* Why detach the whole list first: a deferred call may queue another one,
     * and that one must run on a later turn, not in this loop. */
    aio->defer_head = aio->defer_tail = NULL;
    ev_idle_stop(loop, w);
    /* A deferred call may free the engine (and what the later ones belong
     * to): stop then.  The guard nests, for a callback that runs the loop. */
    bool freed = false, *outer = aio->freed;
    aio->freed = &freed;
    while (d) {
        struct qed_defer *next = d->next;
        d->next = NULL;
        d->fn(d);
        if (freed) {
            if (outer)
                *outer = true;
            return;
        }
        d = next;
    }
    aio->freed = outer;
}

void qed_aio_defer(qed_aio *aio, struct qed_defer *d)
{
    QED_FIFO_APPEND(aio->defer_head, aio->defer_tail, d, next);
    if (!ev_is_active(&aio->defer_idle))
        ev_idle_start(aio->loop, &aio->defer_idle);
}

/*
 * I/O on memory files.
 *
 * On tmpfs a read or write is a copy between the page cache and our buffer:
 * there is no device to wait for, and the file system takes no RWF_NOWAIT,
 * so io_uring hands every such request to one of its worker threads (and the
 * thread pool to one of ours).  The hand-off -- a wake-up, two context
 * switches and a completion signal -- costs more than the copy itself.  So
 * the copy runs here, on the loop thread.  This keeps the rule "no blocking
 * I/O on the loop": a tmpfs copy waits only where touching our own heap
 * would (page reclaim, swap-in), and its time is that of a memcpy of at most
 * one request's payload.  fdatasync is a no-op on these file systems and
 * runs here too.  The completion still comes on a later loop turn, never
 * from inside the submit call.
 */

bool qed_fd_in_memory(int fd)
{
    struct statfs sfs;

    if (fstatfs(fd, &sfs) < 0)
        return false;
    return sfs.f_type == TMPFS_MAGIC || sfs.f_type == RAMFS_MAGIC;
}

bool qed_fd_reserve_pays(int fd)
{
    struct statfs sfs;

    if (fstatfs(fd, &sfs) < 0)
        return false;
    /* EXT4_SUPER_MAGIC is also ext2's and ext3's. */
    return sfs.f_type == EXT4_SUPER_MAGIC || sfs.f_type == XFS_SUPER_MAGIC;
}

/* Deliver the I/O that finished before this turn (qed_aio_complete_later). */
static void aio_ready_defer_fn(struct qed_defer *d)
{
    qed_aio *aio = (qed_aio *)((char *)d - offsetof(qed_aio, ready_defer));
    struct qed_io *io = aio->ready_head;
    /* Runs only from aio_defer_cb, whose guard tells when a done callback
     * freed the engine (allowed once nothing is in flight). */
    bool *freed = aio->freed;

    aio->ready_head = aio->ready_tail = NULL;
    aio->ready_scheduled = false;
    while (io) {
        struct qed_io *next = io->next;
        io->next = NULL;
        qed_aio_complete(aio, io);
        if (*freed)
            return;
        io = next;
    }
}

void qed_aio_complete_later(qed_aio *aio, struct qed_io *io)
{
    qed_io_list_push(&aio->ready_head, &aio->ready_tail, io);
    if (!aio->ready_scheduled) {
        aio->ready_scheduled = true;
        qed_aio_defer(aio, &aio->ready_defer);
    }
}

bool qed_aio_run_memory(qed_aio *aio, struct qed_io *io)
{
    if (!(io->flags & QED_IO_F_MEMORY) || !aio->memory_inline)
        return false;
    /* PUNCH too: a TRIM can span gigabytes, and freeing that many pages
     * takes the kernel a while. */
    /* Why the bound (QED_IO_LOOP_COPY_MAX, qed-io.h): the hand-off costs
     * about the same whatever the size, so it matters for small transfers
     * only; a large copy is better done by a worker while the loop serves
     * other requests. */
    if (io->op != QED_IO_FSYNC && io->length > QED_IO_LOOP_COPY_MAX)
        return false;
    if (io->op == QED_IO_READ || io->op == QED_IO_WRITE)
        qed_aio_loop_copy_note(aio, io->length);
    qed_io_run_sync(io);
    qed_aio_complete_later(aio, io);
    return true;
}

int qed_aio_new(struct ev_loop *loop, enum qed_aio_backend kind, qed_aio **out)
{
    qed_aio *aio = calloc(1, sizeof(*aio));
    int r;

    if (!aio)
        return -ENOMEM;
    aio->loop = loop;
    ev_idle_init(&aio->defer_idle, aio_defer_cb);
    /* Max priority: an idle watcher of lower priority would starve while
     * sockets stay busy, and deferred completions must not wait for a quiet loop. */
    ev_set_priority(&aio->defer_idle, EV_MAXPRI);
    aio->defer_idle.data = aio;
    aio->ready_defer.fn = aio_ready_defer_fn;
    /* QED_AIO_MEMORY=0 sends memory-file I/O through the backend like any
     * other (for comparisons). */
    aio->memory_inline = !(getenv("QED_AIO_MEMORY") && strcmp(getenv("QED_AIO_MEMORY"), "0") == 0);

    /* int: QED_AIO_TEST (qed-io-test.h) is outside the public enum. */
    switch ((int)kind) {
    case QED_AIO_AUTO:
        r = qed_aio_uring_init(aio);
        if (r < 0) {
            qed_log(QED_LOG_INFO, "io_uring unavailable (%s), using the thread pool",
                    strerror(-r));
            r = qed_aio_threads_init(aio);
        }
        break;
    case QED_AIO_URING:
        r = qed_aio_uring_init(aio);
        if (r < 0)
            qed_log(QED_LOG_ERROR, "io_uring cannot be set up: %s", strerror(-r));
        break;
    case QED_AIO_THREADS:
        r = qed_aio_threads_init(aio);
        break;
    case QED_AIO_TEST:
        r = qed_aio_test_init(aio);
        break;
    default:
        r = -EINVAL;
    }
    if (r < 0) {
        free(aio);
        return r;
    }
    *out = aio;
    return 0;
}

uint64_t qed_aio_test_loop_copy_max(qed_aio *aio, bool reset)
{
    uint64_t n = aio->loop_copy_max;

    if (reset)
        aio->loop_copy_max = 0;
    return n;
}

const char *qed_aio_backend_name(const qed_aio *aio)
{
    return aio->ops->name;
}

int qed_aio_set_max_workers(qed_aio *aio, unsigned bounded)
{
    if (!aio->ops->set_max_workers)
        return -ENOTSUP;
    return aio->ops->set_max_workers(aio, bounded);
}

struct ev_loop *qed_aio_loop(const qed_aio *aio)
{
    return aio->loop;
}

void qed_aio_free(qed_aio *aio)
{
    if (!aio)
        return;
    if (aio->freed)
        *aio->freed = true;
    if (ev_is_active(&aio->defer_idle))
        ev_idle_stop(aio->loop, &aio->defer_idle);
    aio->ops->destroy(aio);
    free(aio);
}

/* What every submission does first: length, progress, number, in flight. */
static void aio_prepare(qed_aio *aio, struct qed_io *io)
{
    if (io->op == QED_IO_READ || io->op == QED_IO_WRITE) {
        uint64_t len = 0;
        for (int i = 0; i < io->iovcnt; i++)
            len += io->iov[i].iov_len;
        io->length = len;
    }
    io->res = 0;
    io->done_bytes = 0;
    io->next = NULL;
    io->seq = aio->next_seq++;
    aio->inflight++;
}

void qed_aio_submit(qed_aio *aio, struct qed_io *io)
{
    aio_prepare(aio, io);
    if (io->op == QED_IO_FSYNC && (io->flags & QED_IO_F_NOSYNC)) {
        /* cache=unsafe: acknowledged, not made durable. */
        qed_aio_complete_later(aio, io);
        return;
    }
    if ((io->flags & QED_IO_F_DIRECT) && qed_dio_submit(aio, io))
        return; /* bounced, or ordered behind an overlapping write (direct-io.c) */
    aio->ops->submit(aio, io);
}

void qed_aio_submit_backend(qed_aio *aio, struct qed_io *io)
{
    aio_prepare(aio, io);
    aio->ops->submit(aio, io);
}

void qed_aio_complete(qed_aio *aio, struct qed_io *io)
{
    aio->inflight--;
    io->done(io);
}

/* ---- The completion eventfd (io_uring and thread-pool backends) ---- */

int qed_aio_wake_open(struct qed_aio_wake *k)
{
    k->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (k->fd < 0) {
        int r = -errno;
        qed_log(QED_LOG_WARN, "eventfd: %s", strerror(-r));
        return r;
    }
    return 0;
}

void qed_aio_wake_start(qed_aio *aio, struct qed_aio_wake *k,
                        void (*cb)(struct ev_loop *loop, ev_io *w, int revents))
{
    ev_io_init(&k->w, cb, k->fd, EV_READ);
    k->w.data = aio;
    /*
     * Why the default priority (0), set here so that it is seen: the
     * deferred calls' idle watcher has EV_MAXPRI (qed_aio_new), and libev
     * queues an idle watcher only in a turn where no watcher of its
     * priority or higher is pending.  Below EV_MAXPRI, this watcher never
     * holds the deferred calls back, even when the eventfd is readable on
     * every turn of a busy engine: memory-file completions, completions
     * made on the loop thread and request callbacks deferred out of a
     * submit keep running each turn.  And as pending watchers run highest
     * priority first, in a turn where both are pending the deferred calls
     * run before the completions reaped here.  At EV_MAXPRI the deferred
     * calls would wait for as long as the eventfd stays busy.  An
     * application's EV_MINPRI idle watcher (server/conn.c's nowait_w) waits
     * while completions are pending, which is what it asks for.
     */
    ev_set_priority(&k->w, 0);
    ev_io_start(aio->loop, &k->w);
    /* Why unref: an idle engine must not keep ev_run() from returning;
     * qed_aio_wake_ref counts it again while I/O is in flight. */
    ev_unref(aio->loop);
    k->refd = false;
}

void qed_aio_wake_ref(qed_aio *aio, struct qed_aio_wake *k)
{
    if (!k->refd) {
        ev_ref(aio->loop);
        k->refd = true;
    }
}

void qed_aio_wake_unref(qed_aio *aio, struct qed_aio_wake *k)
{
    if (k->refd) {
        ev_unref(aio->loop);
        k->refd = false;
    }
}

void qed_aio_wake_read(struct qed_aio_wake *k, const char *what)
{
    uint64_t v;

    if (read(k->fd, &v, sizeof(v)) < 0 && errno != EAGAIN && errno != EINTR)
        qed_log(QED_LOG_WARN, "read(%s eventfd): %s", what, strerror(errno));
}

void qed_aio_wake_close(qed_aio *aio, struct qed_aio_wake *k)
{
    if (ev_is_active(&k->w)) {
        /* A watcher that was unref'd must be ref'd again before it stops. */
        if (!k->refd)
            ev_ref(aio->loop);
        ev_io_stop(aio->loop, &k->w);
    }
    if (k->fd >= 0)
        close(k->fd);
    k->fd = -1;
}
