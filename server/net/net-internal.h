/*
 * net-internal.h - functions shared by the files of server/net (conn.c,
 * input.c, output.c, turn.c) and by nothing else.
 */
#ifndef NET_INTERNAL_H
#define NET_INTERNAL_H

#include <stdbool.h>
#include <ev.h>

#include "conn.h"

/** conn_reading_state - does @st read from the client? */
static inline bool conn_reading_state(enum conn_state st)
{
    return st != CONN_DRAINING && st != CONN_DEAD;
}

/** conn_handshaking - is @st a state of the handshake phase? */
static inline bool conn_handshaking(enum conn_state st)
{
    return st <= CONN_TLS_HANDSHAKE;
}

/* ---- input.c ---- */

/** conn_ibuf_release - give back @c's read-ahead buffer if it holds nothing (or @force). */
void conn_ibuf_release(struct conn *c, bool force);

/** conn_update_read_watcher - start or stop the read watcher to match state and backpressure. */
void conn_update_read_watcher(struct conn *c);

/** conn_step - run the reading state machine on the bytes available. */
void conn_step(struct conn *c);

/** conn_on_readable - the read watcher's callback. */
void conn_on_readable(struct ev_loop *loop, ev_io *w, int revents);

/* ---- output.c ---- */

/** conn_flush - write as much of the queue as the socket takes.  Returns -1 if closed. */
int conn_flush(struct conn *c);

/** conn_drop_output - drop every queued message (the connection is going away). */
void conn_drop_output(struct conn *c);

/** conn_on_writable - the write watcher's callback. */
void conn_on_writable(struct ev_loop *loop, ev_io *w, int revents);

/* ---- turn.c ---- */

/** turn_init - set up the end-of-turn watchers (once, with the first connection). */
void turn_init(void);

/** turn_flush_add - write @c's batched replies at the end of this turn. */
void turn_flush_add(struct conn *c);

/** turn_resume_add - parse @c's read-ahead at the end of this turn. */
void turn_resume_add(struct conn *c);

#endif /* NET_INTERNAL_H */
