/*
 * turn.c - work done at the end of each loop turn: batched replies
 * written in one writev, read-ahead parsed after a budget ran out, and
 * connections waiting for memory resumed.
 */
#include "config.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/uio.h>

#include "conn.h"
#include "net-internal.h"

/* ---- End of the loop turn ----------------------------------------------- */

/*
 * Two lists of connections with work for the end of the loop turn: replies
 * batched for one writev (flush list), and read-ahead bytes left over after
 * a budget ran out or backpressure lifted (resume list).  An ev_prepare
 * watcher serves them: prepare watchers run after every callback of the
 * turn and before the loop polls.  It runs before the io_uring engine's own
 * prepare watcher (that one has the lowest priority), so I/O submitted by
 * the requests resumed here goes to the kernel in the same turn.
 */
/* One set per loop thread (each runs its own turns). */
static __thread ev_prepare turn_w;
static __thread ev_idle nowait_w;        /* active while work is left for the next turn */
static __thread ev_check turn_begin_w;   /* runs right after the poll: a new turn */
static __thread bool turn_ended;         /* on_turn_end ran, and the loop has not polled since */
static __thread bool turn_inited;
static __thread struct conn *flush_head, *resume_head;
static __thread bool mem_wake_pending;   /* memory was given back while connections wait */

static void on_turn_end(struct ev_loop *loop, ev_prepare *w, int revents);

static void on_turn_begin(struct ev_loop *loop, ev_check *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    turn_ended = false;
}

static void on_nowait(struct ev_loop *loop, ev_idle *w, int revents)
{
    /* Nothing to do: being active is the point (the loop polls with a zero
     * timeout); on_turn_end does the work. */
    (void)loop;
    (void)w;
    (void)revents;
}

void turn_init(void)
{
    if (turn_inited)
        return;
    ev_prepare_init(&turn_w, on_turn_end);
    ev_idle_init(&nowait_w, on_nowait);
    /* Lowest priority: it must not run instead of pending I/O callbacks. */
    ev_set_priority(&nowait_w, EV_MINPRI);
    /* Why start and stop both at once: libev grows its watcher arrays on a
     * first start and keeps them.  Done here, with the first connection,
     * rather than on the first busy moment, memory use stays flat from
     * then on (the protocol fuzzer checks that every input frees what it
     * allocates). */
    ev_prepare_start(srv_self->loop, &turn_w);
    ev_prepare_stop(srv_self->loop, &turn_w);
    ev_idle_start(srv_self->loop, &nowait_w);
    ev_idle_stop(srv_self->loop, &nowait_w);
    /* Highest priority: the first callback after the poll.  Unref'd: it
     * alone must not keep the loop running. */
    ev_check_init(&turn_begin_w, on_turn_begin);
    ev_set_priority(&turn_begin_w, EV_MAXPRI);
    ev_check_start(srv_self->loop, &turn_begin_w);
    ev_unref(srv_self->loop);
    turn_inited = true;
}

/* Why the watcher stays counted (not ev_unref'd) while a list has work:
 * the loop must not end (ev_run returns when nothing active is left)
 * before the work is done, e.g. the last replies of a draining client. */
static void turn_arm(void)
{
    if (!ev_is_active(&turn_w))
        ev_prepare_start(srv_self->loop, &turn_w);
    /* Work added after on_turn_end has run in this turn (by a prepare
     * watcher that runs after ours): the loop must not block before the
     * next turn serves it. */
    if (turn_ended && !ev_is_active(&nowait_w))
        ev_idle_start(srv_self->loop, &nowait_w);
}

/* Push @c on the list @head through its @next link, unless @listed says it
 * is there already.  The list holds a reference on @c. */
static void list_push(struct conn *c, bool *listed, struct conn **next, struct conn **head)
{
    if (*listed)
        return;
    conn_ref(c);
    *listed = true;
    *next = *head;
    *head = c;
    turn_arm();
}

void turn_flush_add(struct conn *c)
{
    list_push(c, &c->flush_listed, &c->flush_next, &flush_head);
}

void turn_resume_add(struct conn *c)
{
    list_push(c, &c->resume_listed, &c->resume_next, &resume_head);
}

void conn_mem_wake(void)
{
    if (mem_wake_pending)
        return;
    mem_wake_pending = true;
    turn_arm();
}

/* Put every connection of this thread waiting for memory whose request
 * now fits on the resume list (mem.c); the other threads' waiters are
 * woken through their inboxes. */
static void mem_wake_run(void)
{
    mem_wake_pending = false;
    if (__atomic_load_n(&srv.mem_waiters, __ATOMIC_SEQ_CST) == 0)
        return;
    if (srv_self->mem_released) {
        srv_self->mem_released = false;
        if (srv.nthreads > 1)
            threads_mem_wake_others();
    }
    if (__atomic_load_n(&srv_self->mem_waiters, __ATOMIC_SEQ_CST) == 0)
        return;
    for (struct conn *c = srv_self->conns; c; c = c->next)
        if (c->mem_wait && conn_mem_fits(c, c->mem_wait_cost))
            turn_resume_add(c);
}

/*
 * on_turn_end - the end of a loop turn: first put the connections waiting
 * for memory that now fits on the resume list, then parse the read-ahead of
 * the resume list (a budget each), then write the batched replies.  Why in
 * this order: parsing may answer at once (a rejected request), and that
 * reply then leaves with the others.  Connections queued again while this
 * runs wait for the next turn.
 */
static void on_turn_end(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct conn *c, *list;

    (void)w;
    (void)revents;
    if (mem_wake_pending)
        mem_wake_run();     /* before the resume list, which then serves them */
    list = resume_head;
    resume_head = NULL;
    while ((c = list)) {
        list = c->resume_next;
        c->resume_listed = false;
        if (c->state != CONN_DEAD) {
            conn_step(c);
            conn_kick(c);
        }
        conn_unref(c);
    }
    list = flush_head;
    flush_head = NULL;
    while ((c = list)) {
        list = c->flush_next;
        c->flush_listed = false;
        if (c->state != CONN_DEAD && !ev_is_active(&c->ww) && conn_flush(c) == 0)
            conn_kick(c);   /* written replies may end a drain or lift backpressure */
        conn_unref(c);
    }
    /* Work left (read-ahead waiting, or memory given back while connections
     * wait): poll without blocking, and come back. */
    if (!resume_head && !flush_head && !mem_wake_pending) {
        ev_prepare_stop(loop, &turn_w);
        if (ev_is_active(&nowait_w))
            ev_idle_stop(loop, &nowait_w);
    } else if (!ev_is_active(&nowait_w)) {
        ev_idle_start(loop, &nowait_w);
    }
    turn_ended = true;
}
