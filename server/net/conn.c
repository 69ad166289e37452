/*
 * conn.c - one client connection: its state, its lifetime (references,
 * close, drain, shutdown) and its creation.  The reading side is in
 * input.c, the writing side in output.c, the end-of-turn work in turn.c;
 * what the bytes mean is the protocol's (conn-ops.h).
 *
 * Lifetime.  A connection holds one reference while it is open and one per
 * request that is inside the library.  Closing it (conn_close) closes the
 * socket, drops queued replies and the "open" reference; the memory goes
 * only when the last library completion has dropped its reference, so a
 * completion never touches freed memory.
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
#include "conn-ops.h"
#include "net-internal.h"
#include "tls.h"

const char *conn_state_name(enum conn_state st)
{
    switch (st) {
    case CONN_HS_CLIENT_FLAGS: return "HS_CLIENT_FLAGS";
    case CONN_HS_OPT_HEADER: return "HS_OPT_HEADER";
    case CONN_HS_OPT_PAYLOAD: return "HS_OPT_PAYLOAD";
    case CONN_HS_OPT_SKIP: return "HS_OPT_SKIP";
    case CONN_TLS_HANDSHAKE: return "TLS_HANDSHAKE";
    case CONN_TX_REQ_HEADER: return "TX_REQ_HEADER";
    case CONN_TX_WRITE_PAYLOAD: return "TX_WRITE_PAYLOAD";
    case CONN_TX_SKIP_PAYLOAD: return "TX_SKIP_PAYLOAD";
    case CONN_DRAINING: return "DRAINING";
    case CONN_DEAD: return "DEAD";
    }
    return "?";
}

void conn_log(struct conn *c, int level, const char *fmt, ...)
{
    char prefix[32];
    va_list ap;

    snprintf(prefix, sizeof(prefix), "[c%llu] ", (unsigned long long)c->id);
    va_start(ap, fmt);
    srv_vlog(level, prefix, fmt, ap);
    va_end(ap);
}

void conn_set_state(struct conn *c, enum conn_state st)
{
    if (c->state != st && srv_log_enabled(SRV_LOG_DEBUG))
        conn_log(c, SRV_LOG_DEBUG, "state %s -> %s", conn_state_name(c->state),
                 conn_state_name(st));
    c->state = st;
}

void conn_expect(struct conn *c, enum conn_state st, void *buf, size_t want)
{
    /* A reply queued just before may have closed the connection (write
     * error), or an option may have started draining it: never revive it. */
    if (c->state == CONN_DEAD || c->state == CONN_DRAINING)
        return;
    c->in_ptr = buf;
    c->in_want = want;
    c->in_got = 0;
    conn_set_state(c, st);
}

void conn_expect_skip(struct conn *c, enum conn_state st, uint64_t n)
{
    if (c->state == CONN_DEAD || c->state == CONN_DRAINING)
        return;
    c->skip_left = n;
    conn_expect(c, st, NULL, 0);
}

/* ---- Lifetime --------------------------------------------------------- */

void conn_ref(struct conn *c)
{
    c->refs++;
}

void conn_unref(struct conn *c)
{
    assert(c->refs > 0);
    if (--c->refs == 0) {
        assert(c->state == CONN_DEAD);
        assert(!c->ibuf);
        proto_free(c);
        free(c);
    }
}

struct conn *conn_next(struct conn *c)
{
    return c ? c->next : srv_self->conns;
}

/* Drop every queued message (the connection is going away). */
void conn_drop_output(struct conn *c)
{
    struct outmsg *m = c->out_head;

    c->out_head = c->out_tail = NULL;
    while (m) {
        struct outmsg *next = m->next;
        m->release(m);
        m = next;
    }
}

void conn_close(struct conn *c, const char *why)
{
    if (c->state == CONN_DEAD)
        return;
    conn_log(c, SRV_LOG_INFO, "closing: %s", why);
    conn_set_state(c, CONN_DEAD);
    conn_mem_unwait(c);
    ev_io_stop(srv_self->loop, &c->rw);
    ev_io_stop(srv_self->loop, &c->ww);
    ev_timer_stop(srv_self->loop, &c->hs_timer);
    proto_closed(c);
    conn_drop_output(c);
    conn_ibuf_release(c, true);
    tls_session_free(c->tls);
    c->tls = NULL;
    c->tls_active = false;
    if (c->tls_out) {
        free(c->tls_out);
        c->tls_out = NULL;
        conn_mem_release(c, CONN_TLS_RECORD);
    }
    c->tls_out_len = 0;
    /* Why before close: with --threads, thread 0 may accept the client's
     * next connection as soon as it sees this one's EOF, and must find it
     * uncounted by then. */
    if (c->counted)
        SRV_SUB(srv.nconns, 1);
    else
        SRV_SUB(srv.nrefused, 1);
    SRV_SUB(srv_self->nconns, 1);
    close(c->rfd);
    if (c->wfd != c->rfd)
        close(c->wfd);
    c->rfd = c->wfd = -1;

    if (c->prev)
        c->prev->next = c->next;
    else
        srv_self->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;

    conn_unref(c);          /* the "open" reference */
    srv_conn_gone();
}

/* Close a draining connection once nothing is left to wait for. */
static void maybe_finish_drain(struct conn *c)
{
    if (c->state == CONN_DRAINING && c->inflight == 0 && !c->out_head && !c->tls_out_len) {
        if (c->tls_active)
            tls_session_bye(c->tls);
        conn_close(c, "drained");
    }
}

void conn_drain(struct conn *c, const char *why)
{
    if (c->state == CONN_DEAD || c->state == CONN_DRAINING)
        return;
    conn_log(c, SRV_LOG_INFO, "draining: %s", why);
    conn_set_state(c, CONN_DRAINING);
    conn_mem_unwait(c);     /* a request still waiting for memory was never admitted */
    conn_update_read_watcher(c);     /* stops reading (unless a TLS write needs a read) */
    ev_timer_stop(srv_self->loop, &c->hs_timer);
    maybe_finish_drain(c);
}

void conn_abort(struct conn *c)
{
    conn_close(c, "aborted by the server");
}

void conn_shutdown(struct conn *c)
{
    if (c->state == CONN_DEAD || c->state == CONN_DRAINING)
        return;
    if (conn_handshaking(c->state)) {
        conn_close(c, "server shutting down during the handshake");
        return;
    }
    /* Between requests: stop now.  Inside one: finish reading it first, so
     * the request is served and answered rather than cut in half.  A header
     * waiting for memory was not admitted: waiting for other clients to
     * read could hold the shutdown for ever, so it is dropped. */
    if (c->state == CONN_TX_REQ_HEADER && (c->in_got == 0 || c->mem_wait))
        conn_drain(c, "server shutting down");
    else
        c->stop_reading = true;
}

int conn_tls_prepare(struct conn *c, char *err, size_t errlen)
{
    int r;

    c->tls_out = malloc(CONN_TLS_RECORD);
    if (!c->tls_out)
        return -ENOBUFS;
    conn_mem_charge(c, CONN_TLS_RECORD);    /* released where it is freed (conn_close) */
    r = tls_session_new(c->rfd, c->wfd, &c->tls, err, errlen);
    if (r < 0) {
        free(c->tls_out);
        c->tls_out = NULL;
        conn_mem_release(c, CONN_TLS_RECORD);
    }
    return r;
}

void conn_start_tls(struct conn *c)
{
    if (c->state == CONN_DEAD || c->state == CONN_DRAINING)
        return;
    conn_set_state(c, CONN_TLS_HANDSHAKE);
}

void conn_kick(struct conn *c)
{
    if (c->state == CONN_DEAD)
        return;
    maybe_finish_drain(c);
    if (c->state != CONN_DEAD)
        conn_update_read_watcher(c);
}

/* ---- Handshake timer ---------------------------------------------------- */

static void on_hs_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct conn *c = w->data;

    (void)loop;
    (void)revents;
    conn_log(c, SRV_LOG_INFO, "handshake not finished after %g s", srv.hs_timeout);
    conn_close(c, "handshake timeout");
}

void conn_handshake_over(struct conn *c)
{
    ev_timer_stop(srv_self->loop, &c->hs_timer);
}

/* ---- Creation ------------------------------------------------------------ */

struct conn *conn_new(int rfd, int wfd, bool refuse, const char *peer)
{
    struct conn *c = calloc(1, sizeof(*c));

    turn_init();
    if (!c) {
        srv_log(SRV_LOG_ERROR, "out of memory accepting %s", peer);
        close(rfd);
        if (wfd != rfd)
            close(wfd);
        return NULL;
    }
    c->id = SRV_ADD(srv.next_conn_id, 1);
    snprintf(c->peer, sizeof(c->peer), "%s", peer);
    c->refs = 1;
    c->rfd = rfd;
    c->wfd = wfd;
    c->refuse = refuse;
    c->counted = !refuse;
    c->state = CONN_HS_CLIENT_FLAGS;
    if (refuse)
        SRV_ADD(srv.nrefused, 1);
    else
        SRV_ADD(srv.nconns, 1);
    SRV_ADD(srv_self->nconns, 1);
    srv_self->conns_total++;

    /* Link first: closing (even from proto_greeting) unlinks. */
    c->next = srv_self->conns;
    if (srv_self->conns)
        srv_self->conns->prev = c;
    srv_self->conns = c;

    ev_io_init(&c->rw, conn_on_readable, rfd, EV_READ);
    c->rw.data = c;
    ev_io_init(&c->ww, conn_on_writable, wfd, EV_WRITE);
    c->ww.data = c;
    ev_timer_init(&c->hs_timer, on_hs_timeout, srv.hs_timeout, 0.);
    c->hs_timer.data = c;

    conn_log(c, SRV_LOG_INFO, "new connection from %s%s", peer,
             refuse ? " (over the connection limit: refusing)" : "");
    ev_timer_start(srv_self->loop, &c->hs_timer);
    conn_ref(c);
    proto_greeting(c);
    bool dead = c->state == CONN_DEAD;
    if (!dead)
        conn_update_read_watcher(c);
    conn_unref(c);
    return dead ? NULL : c;
}
