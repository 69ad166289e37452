/*
 * input.c - the reading side of a connection: read-ahead buffers, the
 * non-blocking reads (plain or TLS), the TLS handshake, and the loop
 * that fills the current state's buffer and hands complete reads to the
 * protocol (conn-ops.h: proto_input_ready).
 *
 * Input.  In the transmission phase (plaintext) every read is one readv of
 * what the current state still needs, straight into its buffer (a WRITE
 * payload lands in the buffer the library writes from), plus a read-ahead
 * buffer: the following request headers and payloads come in with the same
 * system call and are parsed from there.  A short read means the socket is
 * empty: the next read waits for the socket to be readable again instead of
 * costing a system call that fails with EAGAIN.  Read-ahead buffers come
 * from a small free list and are held only while they hold bytes, so idle
 * connections cost none.
 *
 * Backpressure.  While a connection has SRV_MAX_INFLIGHT requests in flight
 * its read watcher is stopped at the next request boundary; it restarts as
 * replies drain.  Memory is the other limit: a request whose header has
 * been read waits there until its cost fits under the connection's and the
 * server's caps (mem.c, which states the rules and why they cannot
 * deadlock); the read watcher stays stopped meanwhile, and the connection
 * is resumed through the resume list when memory is given back.
 *
 * Fairness.  One read event parses at most SRV_READ_BUDGET requests, then
 * returns to the loop, which is level-triggered and will come back.  Bytes
 * left in the read-ahead buffer make no socket event: the connection is put
 * on the resume list, which on_turn_end serves once per loop turn (another
 * budget each), and the loop polls without blocking while the list is not
 * empty.  So a busy client gets a budget per turn, and every other client
 * with work gets its turn in between.
 *
 * TLS.  After STARTTLS every byte goes through GnuTLS (conn_recv and
 * conn_flush_tls), without ever blocking: GnuTLS's "try again" names the
 * direction it waits for, and the matching watcher is started.  Two things
 * differ from plain sockets: decrypted bytes GnuTLS already holds make no
 * socket event (conn_update_read_watcher feeds one), and a record GnuTLS could
 * not send at once must be offered again byte for byte, so replies are
 * copied into a record buffer (tls_out) that stays put until it is sent.
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

/* The transmission phase reads with read-ahead (plaintext only: GnuTLS
 * reads the socket itself and has its own buffer). */
static bool reads_ahead(const struct conn *c)
{
    return (c->state == CONN_TX_REQ_HEADER || c->state == CONN_TX_WRITE_PAYLOAD ||
            c->state == CONN_TX_SKIP_PAYLOAD) && !c->tls;
}

/* ---- Read-ahead buffers ------------------------------------------------- */

/* Spare buffers, kept for the next read: one list per loop thread, no lock. */
#define IBUF_POOL_MAX 8
static __thread uint8_t *ibuf_pool[IBUF_POOL_MAX];   /* per loop thread */
static __thread unsigned ibuf_pool_n;

/* A read-ahead buffer for @c, charged to it; NULL when it does not fit
 * under the memory caps (then @c reads without one) or malloc fails. */
static uint8_t *ibuf_get(struct conn *c)
{
    uint8_t *p;

    if (!conn_mem_try(c, SRV_INPUT_BUFFER))
        return NULL;
    p = ibuf_pool_n ? ibuf_pool[--ibuf_pool_n] : malloc(SRV_INPUT_BUFFER);
    if (!p)
        conn_mem_release(c, SRV_INPUT_BUFFER);
    return p;
}

/* Give back @c's read-ahead buffer if it holds nothing (or @force). */
void conn_ibuf_release(struct conn *c, bool force)
{
    if (!c->ibuf || (!force && c->ipos < c->ilen))
        return;
    if (SRV_POOLS && ibuf_pool_n < IBUF_POOL_MAX)
        ibuf_pool[ibuf_pool_n++] = c->ibuf;
    else
        free(c->ibuf);
    c->ibuf = NULL;
    c->ipos = c->ilen = 0;
    conn_mem_release(c, SRV_INPUT_BUFFER);
}

void conn_thread_exit(void)
{
    while (ibuf_pool_n)
        free(ibuf_pool[--ibuf_pool_n]);
    proto_thread_exit();
}

/* ---- Input ------------------------------------------------------------- */

/*
 * conn_recv - read up to @n bytes from the client: the socket, or TLS once
 * it is up.  Returns the count, 0 at the end of the stream, or -1 with
 * errno set (EAGAIN: wait; the watcher TLS needs is arranged here).
 */
static ssize_t conn_recv(struct conn *c, void *buf, size_t n)
{
    ssize_t r;

    if (!c->tls_active)
        return read(c->rfd, buf, n);
    r = tls_session_recv(c->tls, buf, n);
    if (r >= 0)
        return r;
    if (r == -EAGAIN) {
        /* Usually it needs more bytes from the socket; during a key update
         * it may need to write first. */
        c->tls_rd_wants_write = tls_session_wants_write(c->tls);
        if (c->tls_rd_wants_write && !ev_is_active(&c->ww))
            ev_io_start(srv_self->loop, &c->ww);
    } else {
        conn_log(c, SRV_LOG_INFO, "%s", tls_session_error(c->tls));
    }
    errno = (int)-r;
    return -1;
}

/* Bytes the current state still wants: a SKIP state drops @n at most
 * (*@dst NULL), the others fill *@dst.  Returns false when it wants none. */
static bool fill_wants(struct conn *c, bool skipping, uint8_t **dst, size_t *n)
{
    if (skipping) {
        *dst = NULL;
        *n = c->skip_left < SIZE_MAX ? (size_t)c->skip_left : SIZE_MAX;
        return c->skip_left != 0;
    }
    if (c->in_got == c->in_want)
        return false;   /* before the pointer sum: a state of 0 bytes may have none */
    *dst = c->in_ptr + c->in_got;
    *n = c->in_want - c->in_got;
    return true;
}

/* Account @got bytes read (or dropped) for the current state. */
static void fill_got(struct conn *c, bool skipping, size_t got)
{
    if (skipping)
        c->skip_left -= got;
    else
        c->in_got += got;
}

/* Take what we can of the @n bytes from the read-ahead buffer. */
static void fill_from_ibuf(struct conn *c, bool skipping, uint8_t *dst, size_t n)
{
    /* Why first: these bytes came before anything still in the socket. */
    size_t take = c->ilen - c->ipos < n ? c->ilen - c->ipos : n;

    if (!skipping)
        memcpy(dst, c->ibuf + c->ipos, take);
    fill_got(c, skipping, take);
    c->ipos += take;
    if (c->ipos == c->ilen)
        c->ipos = c->ilen = 0;
}

/* One readv: what the state needs, straight into its buffer (@dst, @n), and
 * whatever follows into the read-ahead buffer.  Returns what readv did. */
static ssize_t fill_read_ahead(struct conn *c, bool skipping, uint8_t *dst, size_t n)
{
    struct iovec iov[2];
    int niov = 0;
    size_t asked = SRV_INPUT_BUFFER;
    ssize_t r;

    if (!skipping) {
        iov[niov].iov_base = dst;
        iov[niov++].iov_len = n;
        asked += n;
    }
    /* Why: one readv copies at most SRV_LOOP_COPY_MAX.  A state that wants
     * more than the read-ahead buffer leaves it out (n is capped by the
     * caller), and what follows is read ahead on the next call. */
    if (skipping || n + SRV_INPUT_BUFFER <= SRV_LOOP_COPY_MAX) {
        iov[niov].iov_base = c->ibuf;
        iov[niov++].iov_len = SRV_INPUT_BUFFER;
    } else {
        asked = n;
    }
    r = readv(c->rfd, iov, niov);
    if (r > 0) {
        size_t got = (size_t)r;
        if (!skipping) {
            size_t direct = got < n ? got : n;
            c->in_got += direct;
            got -= direct;
        }
        c->ipos = 0;
        c->ilen = got;
        c->in_drained = (size_t)r < asked;
    }
    return r;
}

/*
 * conn_fill - read into the current state's buffer (or drop bytes in a SKIP
 * state): from the read-ahead buffer first, then from the socket.  Returns
 * 1 when the state's bytes are complete, 0 when the socket would block (or
 * was found empty by the last read), -1 on EOF or error (the connection is
 * closed).
 */
static int conn_fill(struct conn *c)
{
    static __thread uint8_t scratch[64 * 1024]; /* dropped bytes: one per loop thread */

    for (;;) {
        bool skipping = c->state == CONN_HS_OPT_SKIP || c->state == CONN_TX_SKIP_PAYLOAD;
        uint8_t *dst;
        size_t n;
        ssize_t r;

        if (!fill_wants(c, skipping, &dst, &n))
            return 1;
        if (n > SRV_LOOP_COPY_MAX)
            n = SRV_LOOP_COPY_MAX;   /* the bound on one copy; the loop comes back for more */
        if (c->ipos < c->ilen) {
            fill_from_ibuf(c, skipping, dst, n);
            continue;
        }
        if (c->in_drained)
            return 0;       /* empty a moment ago: let the loop say when it is not */
        if (reads_ahead(c) && (c->ibuf || (c->ibuf = ibuf_get(c)))) {
            r = fill_read_ahead(c, skipping, dst, n);
        } else {
            if (skipping) {
                dst = scratch;
                n = n < sizeof(scratch) ? n : sizeof(scratch);
            }
            r = conn_recv(c, dst, n);
            if (r > 0)
                fill_got(c, skipping, (size_t)r);
        }
        if (r > 0)
            continue;
        if (r == 0) {
            conn_close(c, c->in_got || skipping ? "client disconnected mid-message"
                                                : "client disconnected");
            return -1;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        conn_log(c, SRV_LOG_INFO, "read: %s", strerror(errno));
        conn_close(c, "read error");
        return -1;
    }
}

/* Too many requests in flight to take another one?  (Memory is checked
 * once the header says what the request costs: conn_mem_admit.) */
static bool throttled(const struct conn *c)
{
    return c->inflight >= SRV_MAX_INFLIGHT;
}

/*
 * Between two options, with earlier replies still queued because the socket
 * is full?  Then the next option waits, as it would with a server that
 * writes each reply before reading on: a client that sends options without
 * reading their replies makes the server hold one option's replies at most
 * (they are charged, but cannot wait for memory: mem.c).
 */
static bool hs_output_blocked(const struct conn *c)
{
    return c->state == CONN_HS_OPT_HEADER && c->in_got == 0 &&
           (c->out_head || c->tls_out_len) && ev_is_active(&c->ww);
}

/* Start or stop the read watcher to match the state and the backpressure. */
void conn_update_read_watcher(struct conn *c)
{
    bool want = conn_reading_state(c->state);

    if (c->state == CONN_TLS_HANDSHAKE)
        return;         /* conn_tls_handshake picks the direction */
    if (want && c->state == CONN_TX_REQ_HEADER && (c->mem_wait || (c->in_got == 0 && throttled(c))))
        want = false;
    if (want && hs_output_blocked(c))
        want = false;
    if (want && c->tls_rd_wants_write)
        want = false;   /* the read waits for writable, not readable */
    if (c->tls_wr_wants_read)
        want = true;    /* a TLS write waits for readable */
    if (want && !ev_is_active(&c->rw))
        ev_io_start(srv_self->loop, &c->rw);
    else if (!want && ev_is_active(&c->rw))
        ev_io_stop(srv_self->loop, &c->rw);
    /* Read-ahead bytes will never make the socket readable either. */
    if (want && conn_reading_state(c->state) && c->ipos < c->ilen)
        turn_resume_add(c);
    /* Bytes GnuTLS has already decrypted will never make the socket
     * readable: run the state machine for them as if it were. */
    if (want && conn_reading_state(c->state) && c->tls_active && tls_session_pending(c->tls))
        ev_feed_event(srv_self->loop, &c->rw, EV_READ);
}

/*
 * conn_tls_handshake - drive the TLS handshake after STARTTLS.  Returns 1
 * when it is done (options follow, over TLS), 0 to wait for the socket, -1
 * when it failed (the connection is closed).
 */
static int conn_tls_handshake(struct conn *c)
{
    char desc[512];
    int r;

    if (c->out_head) {
        /* Why wait: the ACK of STARTTLS must reach the client whole, in
         * plaintext, before the first TLS byte.  conn_flush has started the
         * write watcher, whose callback comes back here. */
        ev_io_stop(srv_self->loop, &c->rw);
        if (!ev_is_active(&c->ww))
            ev_io_start(srv_self->loop, &c->ww);
        return 0;
    }
    r = tls_session_handshake(c->tls);
    if (r == -EAGAIN) {
        if (tls_session_wants_write(c->tls)) {
            ev_io_stop(srv_self->loop, &c->rw);
            ev_io_start(srv_self->loop, &c->ww);
        } else {
            ev_io_stop(srv_self->loop, &c->ww);
            ev_io_start(srv_self->loop, &c->rw);
        }
        return 0;
    }
    if (r < 0) {
        srv_self->tls_failed++;
        conn_log(c, SRV_LOG_WARN, "TLS handshake with %s failed: %s", c->peer,
                 tls_session_error(c->tls));
        conn_close(c, "TLS handshake failed");
        return -1;
    }
    srv_self->tls_ok++;
    c->tls_active = true;
    ev_io_stop(srv_self->loop, &c->ww);
    conn_log(c, SRV_LOG_INFO, "TLS established: %s",
             tls_session_describe(c->tls, desc, sizeof(desc)));
    proto_tls_ready(c);
    return 1;
}

/*
 * conn_step - run the state machine on the bytes available.  Each complete
 * read hands over to the protocol (proto_input_ready), which picks the next
 * state.
 */
void conn_step(struct conn *c)
{
    unsigned budget = SRV_READ_BUDGET;

    conn_ref(c);            /* handlers may close the connection under us */
    while (conn_reading_state(c->state)) {
        enum conn_state st = c->state;

        if (st == CONN_TLS_HANDSHAKE) {
            if (conn_tls_handshake(c) <= 0)
                break;
            continue;
        }

        if (st == CONN_TX_REQ_HEADER && c->in_got == 0) {
            if (c->stop_reading) {
                conn_drain(c, "server shutting down");
                break;
            }
            if (throttled(c)) {
                conn_log(c, SRV_LOG_DEBUG, "throttled: %u in flight, %zu bytes held",
                         c->inflight, c->mem_held);
                break;
            }
            if (budget-- == 0)
                break;      /* fairness: let other connections run */
        }
        /* A complete header waiting for memory: the handler runs again (and
         * admits it) only once it fits. */
        if (st == CONN_TX_REQ_HEADER && c->mem_wait && !conn_mem_fits(c, c->mem_wait_cost))
            break;
        if (hs_output_blocked(c))
            break;
        if (conn_fill(c) <= 0)
            break;
        proto_input_ready(c);
    }
    if (c->state != CONN_DEAD) {
        conn_ibuf_release(c, false);
        conn_update_read_watcher(c);
    }
    conn_unref(c);
}

int conn_flush(struct conn *c);

void conn_on_readable(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn *c = w->data;

    (void)loop;
    (void)revents;
    conn_ref(c);
    c->in_drained = false;      /* the socket has something (or EOF) again */
    if (c->tls_wr_wants_read) {
        /* A TLS write was waiting for this. */
        c->tls_wr_wants_read = false;
        if (conn_flush(c) < 0) {
            conn_unref(c);
            return;
        }
    }
    conn_step(c);
    conn_kick(c);
    conn_unref(c);
}

