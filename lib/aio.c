/*
 * aio.c - the backend-independent part of the I/O engine: construction with
 * fallback, in-flight accounting, and deferred calls.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qed-aio.h"
#include "qed-internal.h"

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
    while (d) {
        struct qed_defer *next = d->next;
        d->next = NULL;
        d->fn(d);
        d = next;
    }
}

void qed_aio_defer(qed_aio *aio, struct qed_defer *d)
{
    d->next = NULL;
    if (aio->defer_tail)
        aio->defer_tail->next = d;
    else
        aio->defer_head = d;
    aio->defer_tail = d;
    if (!ev_is_active(&aio->defer_idle))
        ev_idle_start(aio->loop, &aio->defer_idle);
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

    switch (kind) {
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

const char *qed_aio_backend_name(const qed_aio *aio)
{
    return aio->ops->name;
}

struct ev_loop *qed_aio_loop(const qed_aio *aio)
{
    return aio->loop;
}

void qed_aio_free(qed_aio *aio)
{
    if (!aio)
        return;
    if (ev_is_active(&aio->defer_idle))
        ev_idle_stop(aio->loop, &aio->defer_idle);
    aio->ops->destroy(aio);
    free(aio);
}

void qed_aio_submit(qed_aio *aio, struct qed_io *io)
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
    aio->ops->submit(aio, io);
}

void qed_aio_complete(qed_aio *aio, struct qed_io *io)
{
    aio->inflight--;
    io->done(io);
}
