/*
 * aio-threads.c - the thread-pool I/O backend, used where io_uring cannot be
 * set up or when asked for.
 *
 * A few worker threads take jobs from a mutex + condvar queue and run them
 * with qed_io_run_sync().  A finished job goes on a mutex-protected done list
 * and, when that list was empty, the worker writes to an eventfd; an ev_io
 * watcher on the loop reads the eventfd and calls qed_aio_complete() for
 * every finished job, so done always runs on the loop thread.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qed-io.h"
#include "qed-log.h"

#define THREADS_POOL_SIZE 4

struct threads_priv {
    pthread_mutex_t lock;             /* protects the job queue and stop */
    pthread_cond_t cond;              /* signalled when a job arrives or on stop */
    struct qed_io *job_head, *job_tail;
    bool stop;

    pthread_mutex_t done_lock;        /* protects the done list */
    struct qed_io *done_head, *done_tail;

    pthread_t threads[THREADS_POOL_SIZE];
    int nthreads;                     /* threads actually started */
    bool locks_ok;

    struct qed_aio_wake wake;         /* workers signal finished jobs on it */
    unsigned njobs;                   /* submitted to the pool, not yet completed */
    bool *freed;                      /* set by destroy while a callback runs */
};

static void *threads_worker(void *arg)
{
    struct threads_priv *p = arg;

    for (;;) {
        struct qed_io *io;
        bool was_empty;

        pthread_mutex_lock(&p->lock);
        while (!p->job_head && !p->stop)
            pthread_cond_wait(&p->cond, &p->lock);
        if (!p->job_head) {
            /* stop is set and the queue is drained. */
            pthread_mutex_unlock(&p->lock);
            break;
        }
        io = p->job_head;
        p->job_head = io->next;
        if (!p->job_head)
            p->job_tail = NULL;
        pthread_mutex_unlock(&p->lock);

        qed_io_run_sync(io);

        pthread_mutex_lock(&p->done_lock);
        was_empty = p->done_head == NULL;
        qed_io_list_push(&p->done_head, &p->done_tail, io);
        pthread_mutex_unlock(&p->done_lock);

        /* Why only on empty -> non-empty: the loop side reads the eventfd
         * before taking the list, so a job added to a non-empty list is
         * picked up by the wakeup already pending for it. */
        if (was_empty) {
            uint64_t one = 1;

            while (write(p->wake.fd, &one, sizeof(one)) < 0 && errno == EINTR)
                ;
        }
    }
    return NULL;
}

static void threads_efd_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    qed_aio *aio = w->data;
    struct threads_priv *p = aio->priv;
    struct qed_io *io;
    bool freed = false;

    (void)loop;
    (void)revents;
    /* Read the eventfd first, then take the list (see threads_worker). */
    qed_aio_wake_read(&p->wake, "thread pool");

    pthread_mutex_lock(&p->done_lock);
    io = p->done_head;
    p->done_head = p->done_tail = NULL;
    pthread_mutex_unlock(&p->done_lock);

    /* A done callback may free the engine once nothing is in flight. */
    p->freed = &freed;
    while (io) {
        struct qed_io *next = io->next;

        io->next = NULL;
        p->njobs--;
        qed_aio_complete(aio, io);
        if (freed)
            return;
        io = next;
    }
    p->freed = NULL;
    /* The pool's own count, not aio->inflight: see uring_efd_cb. */
    if (p->njobs == 0)
        qed_aio_wake_unref(aio, &p->wake);
}

static void threads_submit(qed_aio *aio, struct qed_io *io)
{
    struct threads_priv *p = aio->priv;

    if (qed_aio_run_memory(aio, io))
        return;
    p->njobs++;
    /* While I/O is in flight the eventfd watcher must keep ev_run() alive. */
    qed_aio_wake_ref(aio, &p->wake);
    pthread_mutex_lock(&p->lock);
    qed_io_list_push(&p->job_head, &p->job_tail, io);
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

/* Stop and join the workers, then free everything. */
static void threads_free_priv(qed_aio *aio, struct threads_priv *p)
{
    if (p->locks_ok) {
        pthread_mutex_lock(&p->lock);
        p->stop = true;
        pthread_cond_broadcast(&p->cond);
        pthread_mutex_unlock(&p->lock);
    }
    for (int i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);

    qed_aio_wake_close(aio, &p->wake);
    if (p->locks_ok) {
        pthread_cond_destroy(&p->cond);
        pthread_mutex_destroy(&p->lock);
        pthread_mutex_destroy(&p->done_lock);
    }
    free(p);
    aio->priv = NULL;
}

static void threads_destroy(qed_aio *aio)
{
    struct threads_priv *p = aio->priv;

    if (!p)
        return;
    if (aio->inflight)
        qed_log(QED_LOG_ERROR, "thread pool engine freed with %u I/Os in flight",
                aio->inflight);
    if (p->freed)
        *p->freed = true;
    threads_free_priv(aio, p);
}

static const struct qed_aio_ops threads_ops = {.name = "threads", .submit = threads_submit, .destroy = threads_destroy};

int qed_aio_threads_init(qed_aio *aio)
{
    struct threads_priv *p = calloc(1, sizeof(*p));
    sigset_t all, old;
    int r;

    if (!p)
        return -ENOMEM;
    p->wake.fd = -1;
    aio->priv = p;

    /* Default attributes: these calls cannot fail on Linux. */
    pthread_mutex_init(&p->lock, NULL);
    pthread_mutex_init(&p->done_lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    p->locks_ok = true;

    r = qed_aio_wake_open(&p->wake);
    if (r < 0)
        goto fail;

    /* Why block signals around pthread_create: the workers inherit the
     * mask, so signals are delivered to the loop thread, where the
     * application's libev signal watchers expect them. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (int i = 0; i < THREADS_POOL_SIZE; i++) {
        r = pthread_create(&p->threads[i], NULL, threads_worker, p);
        if (r != 0) {
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            qed_log(QED_LOG_WARN, "pthread_create: %s", strerror(r));
            r = -r;
            goto fail;
        }
        p->nthreads++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    /* Unref'd while idle; its priority matters: see qed_aio_wake_start. */
    qed_aio_wake_start(aio, &p->wake, threads_efd_cb);

    aio->ops = &threads_ops;
    return 0;

fail:
    threads_free_priv(aio, p);
    return r;
}
