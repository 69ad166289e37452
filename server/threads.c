/*
 * threads.c - the loop threads of --threads=N: their set-up, their inboxes
 * (a list under a mutex plus an ev_async watcher), the calls made on an
 * export's owner thread, and the order in which they stop.  The rules are
 * in threads.h.
 *
 * Stopping (SIGTERM), in this order, so that no image is closed while a
 * request for it can still arrive:
 *   1. thread 0 stops listening and tells every thread to drain its
 *      connections (threads_shutdown); each thread reports to thread 0
 *      once it has none left (threads_conns_gone);
 *   2. when all have reported, thread 0's loop ends; main calls
 *      threads_stop, which tells threads 1 .. N-1 to leave their loops:
 *      each closes the images it owns (qed_close finishes what is in
 *      flight there) and frees its qed_aio;
 *   3. main joins them, runs what is left in their inboxes (completions of
 *      requests of connections that were aborted; their connection only
 *      waits for them to be freed), then closes thread 0's images.
 * Why a request posted to an owner is always served before the owner
 * leaves: it is in the owner's inbox before its connection closed, so
 * before that thread reported in step 1, so before thread 0 posted the
 * owner's exit message behind it.
 */
#include "config.h"

#define _GNU_SOURCE 1
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"
#include "exports.h"
#include "threads.h"

static struct srv_thread thread0_single;
__thread struct srv_thread *srv_self = &thread0_single;

unsigned threads_default(void)
{
    cpu_set_t set;
    long n = 0;

    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        n = CPU_COUNT(&set);
    if (n <= 0)
        n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    return n > (long)SRV_DEFAULT_THREADS_CAP ? SRV_DEFAULT_THREADS_CAP : (unsigned)n;
}

/* ---- Inboxes ------------------------------------------------------------ */

/* Run every message in @t's inbox (on @t, or on the main thread once @t
 * has exited).  Returns how many ran. */
static unsigned inbox_run(struct srv_thread *t)
{
    struct thread_msg *m;
    unsigned n = 0;

    pthread_mutex_lock(&t->lock);
    m = t->head;
    t->head = t->tail = NULL;
    pthread_mutex_unlock(&t->lock);
    while (m) {
        /* Why next first: fn may post the same node elsewhere (a request
         * going back to its connection's thread). */
        struct thread_msg *next = m->next;
        m->fn(m->arg);
        m = next;
        n++;
    }
    return n;
}

static void on_wake(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)revents;
    inbox_run(w->data);
}

void thread_post(struct srv_thread *t, struct thread_msg *m, void (*fn)(void *), void *arg)
{
    m->next = NULL;
    m->fn = fn;
    m->arg = arg;
    pthread_mutex_lock(&t->lock);
    if (t->tail)
        t->tail->next = m;
    else
        t->head = m;
    t->tail = m;
    pthread_mutex_unlock(&t->lock);
    /* After the unlock: the receiver may already be running the list, and
     * then finds the message; a wake-up more costs one empty turn. */
    ev_async_send(t->loop, &t->wake);
}

/* A message posted with thread_post_new: the node is freed before fn runs. */
struct owned_msg {
    struct thread_msg m;
    void (*fn)(void *);
    void *arg;
};

static void owned_run(void *p)
{
    struct owned_msg *om = p;
    void (*fn)(void *) = om->fn;
    void *arg = om->arg;

    free(om);
    fn(arg);
}

void thread_post_new(struct srv_thread *t, void (*fn)(void *), void *arg)
{
    struct owned_msg *om = malloc(sizeof(*om));

    if (!om)
        srv_die("out of memory posting to thread %u", t->idx);
    om->fn = fn;
    om->arg = arg;
    thread_post(t, &om->m, owned_run, om);
}

/* ---- Set-up ------------------------------------------------------------- */

static void thread_setup(struct srv_thread *t, unsigned idx, struct ev_loop *loop, qed_aio *aio)
{
    t->idx = idx;
    t->loop = loop;
    t->aio = aio;
    pthread_mutex_init(&t->lock, NULL);
    ev_async_init(&t->wake, on_wake);
    t->wake.data = t;
    ev_async_start(loop, &t->wake);
    /* Thread 0's loop ends as it always did (listeners gone, stdio client
     * gone): its inbox must not keep it running.  The others run until
     * told to leave (threads_stop). */
    if (idx == 0)
        ev_unref(loop);
}

void threads_init_single(struct ev_loop *loop, qed_aio *aio)
{
    srv.threads = &thread0_single;
    srv.nthreads = 1;
    thread_setup(&thread0_single, 0, loop, aio);
    srv_self = &thread0_single;
}

int threads_init(unsigned n, enum qed_aio_backend kind)
{
    struct srv_thread *ts = calloc(n, sizeof(*ts));
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    /* Why a cap per ring: each loop thread gets its own pool of io_uring
     * workers, by default up to 4 per online CPU; N threads share that
     * total (at least QED_URING_IOWQ_BOUNDED each).  One thread keeps the
     * kernel's default. */
    unsigned workers = cpus < 1 ? 0 : (unsigned)((4 * cpus + n - 1) / n);

    if (workers < QED_URING_IOWQ_BOUNDED)
        workers = QED_URING_IOWQ_BOUNDED;
    if (!ts)
        return -ENOMEM;
    for (unsigned i = 0; i < n; i++) {
        struct ev_loop *loop = i == 0 ? ev_default_loop(EVFLAG_AUTO) : ev_loop_new(EVFLAG_AUTO);
        qed_aio *aio;
        int r;

        if (!loop)
            return -ENOMEM;
        r = qed_aio_new(loop, kind, &aio);
        if (r < 0)
            return r;
        if (n > 1)
            (void)qed_aio_set_max_workers(aio, workers); /* -ENOTSUP: the default */
        thread_setup(&ts[i], i, loop, aio);
    }
    srv.threads = ts;
    srv.nthreads = n;
    srv_self = &ts[0];
    return 0;
}

static void *thread_main(void *arg)
{
    struct srv_thread *t = arg;

    srv_self = t;
    ev_run(t->loop, 0);
    /* Told to leave (threads_stop): every connection is gone, so no request
     * can reach its images any more. */
    exports_close_owned(t, &t->exit_status);
    qed_aio_free(t->aio);
    t->aio = NULL;
    conn_thread_exit();
    return NULL;
}

void threads_start(void)
{
    sigset_t all, old;

    /* Why block every signal around pthread_create: the new threads inherit
     * the mask, so signals go to thread 0, whose loop watches them. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (unsigned i = 1; i < srv.nthreads; i++) {
        int r = pthread_create(&srv.threads[i].tid, NULL, thread_main, &srv.threads[i]);
        if (r)
            srv_die("cannot start loop thread %u: %s", i, strerror(r));
        srv.threads[i].started = true;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* ---- Owner calls ---------------------------------------------------------- */

struct owner_call {
    struct thread_msg m;
    struct export *e;
    void (*fn)(struct export *e, void *arg);
    void (*done)(struct export *e, void *arg);
    void *arg;
    struct srv_thread *caller;
};

static void owner_call_done(void *p)
{
    struct owner_call *oc = p;

    oc->done(oc->e, oc->arg);
    free(oc);
}

static void owner_call_run(void *p)
{
    struct owner_call *oc = p;

    oc->fn(oc->e, oc->arg);
    thread_post(oc->caller, &oc->m, owner_call_done, oc);
}

int exports_call_on_owner(struct export *e, void (*fn)(struct export *e, void *arg),
                          void (*done)(struct export *e, void *arg), void *arg)
{
    struct owner_call *oc = malloc(sizeof(*oc));

    if (!oc)
        return -ENOMEM;
    oc->e = e;
    oc->fn = fn;
    oc->done = done;
    oc->arg = arg;
    oc->caller = srv_self;
    thread_post(e->owner, &oc->m, owner_call_run, oc);
    return 0;
}

/* ---- Connections ---------------------------------------------------------- */

struct srv_thread *threads_pick(void)
{
    static unsigned rr;     /* thread 0 only */
    struct srv_thread *best = NULL;
    unsigned best_n = 0;

    for (unsigned k = 0; k < srv.nthreads; k++) {
        struct srv_thread *t = &srv.threads[(rr + k) % srv.nthreads];
        unsigned n = SRV_LOAD(t->nconns);
        if (!best || n < best_n) {
            best = t;
            best_n = n;
        }
    }
    rr = (best->idx + 1) % srv.nthreads;
    return best;
}

/* Thread 0: one more thread has no connection left. */
static void on_thread_idle(void *arg)
{
    static unsigned nidle;

    (void)arg;
    if (++nidle == srv.nthreads)
        ev_break(srv_self->loop, EVBREAK_ALL);
}

void threads_conns_gone(void)
{
    struct srv_thread *t = srv_self;

    if (!t->stopping || t->idle_reported || t->conns || t->lib_inflight)
        return;
    t->idle_reported = true;
    if (t->idx == 0)
        on_thread_idle(NULL);
    else
        thread_post_new(&srv.threads[0], on_thread_idle, NULL);
}

/* On each thread: stop its connections (drain, or close at once). */
static void shutdown_here(bool abort)
{
    struct srv_thread *t = srv_self;
    struct conn *c, *next;

    t->stopping = true;
    for (c = t->conns; c; c = next) {
        next = c->next;
        if (abort)
            conn_abort(c);
        else
            conn_shutdown(c);
    }
    threads_conns_gone();
}

static void on_shutdown(void *arg)
{
    (void)arg;
    shutdown_here(false);
}

static void on_abort(void *arg)
{
    (void)arg;
    shutdown_here(true);
}

void threads_shutdown(bool abort)
{
    for (unsigned i = 1; i < srv.nthreads; i++)
        thread_post_new(&srv.threads[i], abort ? on_abort : on_shutdown, NULL);
    shutdown_here(abort);
}

/* ---- Memory wake-ups ---------------------------------------------------- */

static void on_mem_wake(void *arg)
{
    struct srv_thread *t = arg;

    __atomic_store_n(&t->mem_wake_posted, false, __ATOMIC_SEQ_CST);
    conn_mem_wake();
}

void threads_mem_wake_others(void)
{
    for (unsigned i = 0; i < srv.nthreads; i++) {
        struct srv_thread *t = &srv.threads[i];
        if (t == srv_self || !__atomic_load_n(&t->mem_waiters, __ATOMIC_SEQ_CST))
            continue;
        if (!__atomic_exchange_n(&t->mem_wake_posted, true, __ATOMIC_SEQ_CST))
            thread_post(t, &t->mem_wake_msg, on_mem_wake, t);
    }
}

/* ---- Stopping ------------------------------------------------------------- */

static void on_leave(void *arg)
{
    (void)arg;
    ev_break(srv_self->loop, EVBREAK_ALL);
}

/* Run what is left in every inbox, each as its own thread, until all are
 * empty (a message may post another). */
static void drain_inboxes(void)
{
    struct srv_thread *me = srv_self;
    unsigned n;

    do {
        n = 0;
        for (unsigned i = 0; i < srv.nthreads; i++) {
            srv_self = &srv.threads[i];
            n += inbox_run(&srv.threads[i]);
        }
    } while (n);
    srv_self = me;
}

void threads_stop(int *status)
{
    struct srv_thread *t0 = &srv.threads[0];

    for (unsigned i = 1; i < srv.nthreads; i++)
        thread_post_new(&srv.threads[i], on_leave, NULL);
    for (unsigned i = 1; i < srv.nthreads; i++) {
        struct srv_thread *t = &srv.threads[i];
        if (!t->started)
            continue;
        pthread_join(t->tid, NULL);
        t->started = false;
        if (t->exit_status)
            *status = 1;
    }
    drain_inboxes();
    exports_close_owned(t0, status);
    drain_inboxes();
    for (unsigned i = 1; i < srv.nthreads; i++) {
        struct srv_thread *t = &srv.threads[i];
        ev_async_stop(t->loop, &t->wake);
        ev_loop_destroy(t->loop);
        t->loop = NULL;
        pthread_mutex_destroy(&t->lock);
    }
    ev_ref(t0->loop);
    ev_async_stop(t0->loop, &t0->wake);
}
