/*
 * threads.h - the loop threads of --threads=N (threads.c): each has its
 * own libev loop, its own qed_aio, its own connections and an inbox through
 * which the other threads post work to it.
 *
 * The rules (doc/architecture.md, "Threads"):
 *   - thread 0 is the main thread: it listens, accepts, handles signals,
 *     and hands each new connection to a thread before the handshake; a
 *     connection never moves after that;
 *   - each export has one owner thread (export k on thread k mod N), the
 *     only thread that ever calls libqed for its image (its requests, its
 *     statistics, its close); a connection on another thread posts its
 *     requests to the owner and gets the completions back in its inbox;
 *   - anything else that must touch an image goes through
 *     exports_call_on_owner.
 * With --threads=1 there is one thread and nothing is ever posted.
 */
#ifndef THREADS_H
#define THREADS_H

#include <pthread.h>
#include <stdbool.h>
#include <ev.h>

#include "qednbd.h"

/** One message of an inbox: @fn(@arg) runs on the receiving thread. */
struct thread_msg {
    struct thread_msg *next;
    void (*fn)(void *arg);
    void *arg;
};

struct srv_thread {
    unsigned idx;                 /* 0 .. srv.nthreads - 1 */
    pthread_t tid;
    bool started;                 /* tid is a running (or joined) thread */
    struct ev_loop *loop;
    qed_aio *aio;                 /* its I/O engine (io_uring ring or thread pool) */
    struct conn *conns;           /* its live connections (doubly linked) */
    unsigned nconns;              /* how many (atomic: thread 0 reads it to balance) */

    /* The inbox: a list under a lock, and a watcher that wakes the loop.
     * ev_async_send wakes it once per batch, however many messages came. */
    pthread_mutex_t lock;
    struct thread_msg *head, *tail;
    ev_async wake;

    unsigned mem_waiters;         /* its connections waiting for memory (atomic) */
    bool mem_wake_posted;         /* a memory wake-up is in its inbox (atomic) */
    bool mem_released;            /* it gave memory back while others wait: wake them
                                     at the end of its turn (only a release does, so
                                     two waiting threads never wake each other for ever) */
    struct thread_msg mem_wake_msg;
    bool stopping;                /* shutdown: its connections are closing */
    bool idle_reported;           /* it told thread 0 its connections are gone */
    int exit_status;              /* 1 when closing one of its images failed */
    uint64_t tls_ok, tls_failed;  /* TLS handshakes (written only by this thread) */
    uint64_t engine_calls;        /* requests it submitted to libqed as an owner */
    unsigned lib_inflight;        /* requests of its connections not back from the
                                     library yet (request.c): shutdown waits for them */
    uint64_t fast_calls;          /* requests it served itself on another thread's image
                                     (qed_read_on, qed_write_on: req-owner.c) */
    uint64_t conns_total;         /* connections it served (written only by this thread) */
};

/** EXPORT_STATS - the calling thread's counter block of export @e. */
#define EXPORT_STATS(e) (&(e)->st[srv_self->idx])

/**
 * threads_default - the default --threads: the CPUs this process may run
 * on (sched_getaffinity, so cpusets and containers count), at most
 * SRV_DEFAULT_THREADS_CAP.
 */
unsigned threads_default(void);

/**
 * threads_init - make @n thread structures, each with a loop and a qed_aio
 * of @kind (thread 0 gets the default loop, which handles signals), and
 * make the calling thread thread 0.  Nothing runs yet.  Returns 0 or a
 * negative errno.
 */
int threads_init(unsigned n, enum qed_aio_backend kind);

/**
 * threads_init_single - make the calling thread thread 0 of a one-thread
 * server on @loop and @aio (the protocol fuzzer, tests).
 */
void threads_init_single(struct ev_loop *loop, qed_aio *aio);

/** threads_start - start threads 1 .. N-1, each running its loop (signals blocked). */
void threads_start(void);

/**
 * thread_post - run @fn(@arg) on thread @t, from its loop, in the order
 * posted.  @m is the caller's message node, which must stay valid until
 * @fn runs (a request carries its own).  Callable from any thread,
 * including @t itself (then @fn runs on a later turn, never inside).
 */
void thread_post(struct srv_thread *t, struct thread_msg *m, void (*fn)(void *), void *arg);

/** thread_post_new - thread_post with a node of its own (allocated; fatal when out of memory). */
void thread_post_new(struct srv_thread *t, void (*fn)(void *), void *arg);

/**
 * exports_call_on_owner - run @fn(@e, @arg) on the owner thread of @e (the
 * one thread allowed to call libqed for e->img), then @done(@e, @arg) back
 * on the calling thread.  Both run from their loops on a later turn, never
 * inside this call, also when the caller is the owner.  Callable from any
 * loop thread (the statistics, the control socket); it never blocks, so no
 * two threads can wait for each other.  @fn must check e->img (NULL once
 * the image is closed at shutdown).  Returns 0 or -ENOMEM (nothing runs).
 */
int exports_call_on_owner(struct export *e, void (*fn)(struct export *e, void *arg),
                          void (*done)(struct export *e, void *arg), void *arg);

/** export_owned_here - is the calling thread the owner of @e? */
static inline bool export_owned_here(const struct export *e)
{
    return e->owner == srv_self;
}

/** threads_pick - the thread for a new connection: the fewest connections, ties round robin. */
struct srv_thread *threads_pick(void);

/**
 * threads_shutdown - (thread 0, on SIGTERM) every thread closes or drains
 * its connections; when every thread has none left, thread 0's loop ends.
 * With @abort the connections are closed at once, requests in flight or not.
 */
void threads_shutdown(bool abort);

/**
 * threads_conns_gone - (any thread) the calling thread's last connection
 * closed during shutdown: tell thread 0.
 */
void threads_conns_gone(void);

/**
 * threads_stop - (main thread, after its loop ended) stop threads 1 .. N-1:
 * each closes the images it owns and frees its I/O engine, then exits;
 * then join them, finish what they left in their inboxes, and close thread
 * 0's images.  *@status becomes 1 when closing an image failed.
 */
void threads_stop(int *status);

/** threads_mem_wake_others - memory was given back: wake the other threads' waiters. */
void threads_mem_wake_others(void);

#endif /* THREADS_H */
