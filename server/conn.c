/*
 * conn.c - one client connection: non-blocking socket I/O, the state
 * machine that reads the handshake and the requests, the output queue, and
 * the connection's lifetime.
 *
 * Lifetime.  A connection holds one reference while it is open and one per
 * request that is inside the library.  Closing it (conn_close) closes the
 * socket, drops queued replies and the "open" reference; the memory goes
 * only when the last library completion has dropped its reference, so a
 * completion never touches freed memory.
 *
 * Output.  Handshake messages are written eagerly with writev as soon as
 * they are queued.  Replies of the transmission phase are batched
 * (conn_queue_batched): every reply a loop turn produced goes out in one
 * writev at the end of the turn (on_turn_end, an ev_prepare watcher, so
 * before the loop can block: no added latency).  An EV_WRITE watcher runs
 * only while the socket is full.
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
 * socket event (update_read_watcher feeds one), and a record GnuTLS could
 * not send at once must be offered again byte for byte, so replies are
 * copied into a record buffer (tls_out) that stays put until it is sent.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <assert.h>
#include <sys/uio.h>

#include "conn.h"
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
    char buf[1024];
    va_list ap;

    if (!srv_log_enabled(level))
        return;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    srv_log(level, "[c%llu] %s", (unsigned long long)c->id, buf);
}

void conn_set_state(struct conn *c, enum conn_state st)
{
    if (c->state != st && srv.verbose >= SRV_LOG_DEBUG)
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

static bool reading_state(enum conn_state st)
{
    return st != CONN_DRAINING && st != CONN_DEAD;
}

static bool handshaking(enum conn_state st)
{
    return st <= CONN_TLS_HANDSHAKE;
}

static void update_read_watcher(struct conn *c);

/* The transmission phase reads with read-ahead (plaintext only: GnuTLS
 * reads the socket itself and has its own buffer). */
static bool reads_ahead(const struct conn *c)
{
    return (c->state == CONN_TX_REQ_HEADER || c->state == CONN_TX_WRITE_PAYLOAD ||
            c->state == CONN_TX_SKIP_PAYLOAD) && !c->tls;
}

/* ---- Read-ahead buffers ------------------------------------------------- */

/* Spare buffers, kept for the next read: one thread, no lock. */
#define IBUF_POOL_MAX 8
static uint8_t *ibuf_pool[IBUF_POOL_MAX];
static unsigned ibuf_pool_n;

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
static void ibuf_release(struct conn *c, bool force)
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
static ev_prepare turn_w;
static ev_idle nowait_w;        /* active while work is left for the next turn */
static ev_check turn_begin_w;   /* runs right after the poll: a new turn */
static bool turn_ended;         /* on_turn_end ran, and the loop has not polled since */
static bool turn_inited;
static struct conn *flush_head, *resume_head;
static bool mem_wake_pending;   /* memory was given back while connections wait */

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

static void turn_init(void)
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
    ev_prepare_start(srv.loop, &turn_w);
    ev_prepare_stop(srv.loop, &turn_w);
    ev_idle_start(srv.loop, &nowait_w);
    ev_idle_stop(srv.loop, &nowait_w);
    /* Highest priority: the first callback after the poll.  Unref'd: it
     * alone must not keep the loop running. */
    ev_check_init(&turn_begin_w, on_turn_begin);
    ev_set_priority(&turn_begin_w, EV_MAXPRI);
    ev_check_start(srv.loop, &turn_begin_w);
    ev_unref(srv.loop);
    turn_inited = true;
}

/* Why the watcher stays counted (not ev_unref'd) while a list has work:
 * the loop must not end (ev_run returns when nothing active is left)
 * before the work is done, e.g. the last replies of a draining client. */
static void turn_arm(void)
{
    if (!ev_is_active(&turn_w))
        ev_prepare_start(srv.loop, &turn_w);
    /* Work added after on_turn_end has run in this turn (by a prepare
     * watcher that runs after ours): the loop must not block before the
     * next turn serves it. */
    if (turn_ended && !ev_is_active(&nowait_w))
        ev_idle_start(srv.loop, &nowait_w);
}

static void flush_add(struct conn *c)
{
    if (c->flush_listed)
        return;
    conn_ref(c);
    c->flush_listed = true;
    c->flush_next = flush_head;
    flush_head = c;
    turn_arm();
}

static void resume_add(struct conn *c)
{
    if (c->resume_listed)
        return;
    conn_ref(c);
    c->resume_listed = true;
    c->resume_next = resume_head;
    resume_head = c;
    turn_arm();
}

void conn_mem_wake(void)
{
    if (mem_wake_pending)
        return;
    mem_wake_pending = true;
    turn_arm();
}

/* Put every connection waiting for memory whose request now fits on the
 * resume list (mem.c). */
static void mem_wake_run(void)
{
    mem_wake_pending = false;
    if (srv.mem_waiters == 0)
        return;
    for (struct conn *c = srv.conns; c; c = c->next)
        if (c->mem_wait && conn_mem_fits(c, c->mem_wait_cost))
            resume_add(c);
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
        free(c->opt_buf);
        free(c);
    }
}

struct conn *conn_next(struct conn *c)
{
    return c ? c->next : srv.conns;
}

/* Drop every queued message (the connection is going away). */
static void drop_output(struct conn *c)
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
    ev_io_stop(srv.loop, &c->rw);
    ev_io_stop(srv.loop, &c->ww);
    ev_timer_stop(srv.loop, &c->hs_timer);
    tx_abort_current(c);
    drop_output(c);
    ibuf_release(c, true);
    tls_session_free(c->tls);
    c->tls = NULL;
    c->tls_active = false;
    if (c->tls_out) {
        free(c->tls_out);
        c->tls_out = NULL;
        conn_mem_release(c, CONN_TLS_RECORD);
    }
    c->tls_out_len = 0;
    close(c->rfd);
    if (c->wfd != c->rfd)
        close(c->wfd);
    c->rfd = c->wfd = -1;

    if (c->prev)
        c->prev->next = c->next;
    else
        srv.conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    if (c->counted)
        srv.nconns--;
    else
        srv.nrefused--;

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
    update_read_watcher(c);     /* stops reading (unless a TLS write needs a read) */
    ev_timer_stop(srv.loop, &c->hs_timer);
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
    if (handshaking(c->state)) {
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
            ev_io_start(srv.loop, &c->ww);
    } else {
        conn_log(c, SRV_LOG_INFO, "%s", tls_session_error(c->tls));
    }
    errno = (int)-r;
    return -1;
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
    static uint8_t scratch[64 * 1024];

    for (;;) {
        bool skipping = c->state == CONN_HS_OPT_SKIP || c->state == CONN_TX_SKIP_PAYLOAD;
        uint8_t *dst = NULL;
        size_t n;
        ssize_t r;

        if (skipping) {
            if (c->skip_left == 0)
                return 1;
            n = c->skip_left < SIZE_MAX ? (size_t)c->skip_left : SIZE_MAX;
        } else {
            if (c->in_got == c->in_want)
                return 1;
            dst = c->in_ptr + c->in_got;
            n = c->in_want - c->in_got;
        }
        if (c->ipos < c->ilen) {
            /* Why first: these bytes came before anything still in the socket. */
            size_t take = c->ilen - c->ipos < n ? c->ilen - c->ipos : n;
            if (skipping) {
                c->skip_left -= take;
            } else {
                memcpy(dst, c->ibuf + c->ipos, take);
                c->in_got += take;
            }
            c->ipos += take;
            if (c->ipos == c->ilen)
                c->ipos = c->ilen = 0;
            continue;
        }
        if (c->in_drained)
            return 0;       /* empty a moment ago: let the loop say when it is not */
        if (reads_ahead(c) && (c->ibuf || (c->ibuf = ibuf_get(c)))) {
            /* One readv: what the state needs, straight into its buffer, and
             * whatever follows into the read-ahead buffer. */
            struct iovec iov[2];
            int niov = 0;
            size_t asked = SRV_INPUT_BUFFER;

            if (!skipping) {
                iov[niov].iov_base = dst;
                iov[niov++].iov_len = n;
                asked += n;
            }
            iov[niov].iov_base = c->ibuf;
            iov[niov++].iov_len = SRV_INPUT_BUFFER;
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
                continue;
            }
        } else {
            if (skipping) {
                dst = scratch;
                n = n < sizeof(scratch) ? n : sizeof(scratch);
            }
            r = conn_recv(c, dst, n);
            if (r > 0) {
                if (skipping)
                    c->skip_left -= (uint64_t)r;
                else
                    c->in_got += (size_t)r;
                continue;
            }
        }
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
static void update_read_watcher(struct conn *c)
{
    bool want = reading_state(c->state);

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
        ev_io_start(srv.loop, &c->rw);
    else if (!want && ev_is_active(&c->rw))
        ev_io_stop(srv.loop, &c->rw);
    /* Read-ahead bytes will never make the socket readable either. */
    if (want && reading_state(c->state) && c->ipos < c->ilen)
        resume_add(c);
    /* Bytes GnuTLS has already decrypted will never make the socket
     * readable: run the state machine for them as if it were. */
    if (want && reading_state(c->state) && c->tls_active && tls_session_pending(c->tls))
        ev_feed_event(srv.loop, &c->rw, EV_READ);
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
        ev_io_stop(srv.loop, &c->rw);
        if (!ev_is_active(&c->ww))
            ev_io_start(srv.loop, &c->ww);
        return 0;
    }
    r = tls_session_handshake(c->tls);
    if (r == -EAGAIN) {
        if (tls_session_wants_write(c->tls)) {
            ev_io_stop(srv.loop, &c->rw);
            ev_io_start(srv.loop, &c->ww);
        } else {
            ev_io_stop(srv.loop, &c->ww);
            ev_io_start(srv.loop, &c->rw);
        }
        return 0;
    }
    if (r < 0) {
        srv.tls_failed++;
        conn_log(c, SRV_LOG_WARN, "TLS handshake with %s failed: %s", c->peer,
                 tls_session_error(c->tls));
        conn_close(c, "TLS handshake failed");
        return -1;
    }
    srv.tls_ok++;
    c->tls_active = true;
    ev_io_stop(srv.loop, &c->ww);
    conn_log(c, SRV_LOG_INFO, "TLS established: %s",
             tls_session_describe(c->tls, desc, sizeof(desc)));
    conn_expect(c, CONN_HS_OPT_HEADER, c->hdr, sizeof(struct nbd_opt_header));
    return 1;
}

void conn_start_tls(struct conn *c)
{
    if (c->state == CONN_DEAD || c->state == CONN_DRAINING)
        return;
    /* The spec: once STARTTLS succeeds, the server MUST NOT preserve any
     * negotiation state -- a man in the middle may have injected it. */
    c->structured = false;
    c->meta_exp = NULL;
    c->meta_base = c->meta_depth = false;
    conn_set_state(c, CONN_TLS_HANDSHAKE);
}

/*
 * conn_step - run the state machine on the bytes available.  Each complete
 * read hands over to the state's handler, which picks the next state.
 */
static void conn_step(struct conn *c)
{
    unsigned budget = SRV_READ_BUDGET;

    conn_ref(c);            /* handlers may close the connection under us */
    while (reading_state(c->state)) {
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
        switch (st) {
        case CONN_HS_CLIENT_FLAGS: hs_client_flags_done(c); break;
        case CONN_HS_OPT_HEADER: hs_opt_header_done(c); break;
        case CONN_HS_OPT_PAYLOAD: hs_opt_payload_done(c); break;
        case CONN_HS_OPT_SKIP: hs_opt_skip_done(c); break;
        case CONN_TX_REQ_HEADER: tx_req_header_done(c); break;
        case CONN_TX_WRITE_PAYLOAD: tx_write_payload_done(c); break;
        case CONN_TX_SKIP_PAYLOAD: tx_skip_payload_done(c); break;
        case CONN_TLS_HANDSHAKE:
        case CONN_DRAINING:
        case CONN_DEAD:
            assert(!"not a reading state");
        }
    }
    if (c->state != CONN_DEAD) {
        ibuf_release(c, false);
        update_read_watcher(c);
    }
    conn_unref(c);
}

static int conn_flush(struct conn *c);

static void on_readable(struct ev_loop *loop, ev_io *w, int revents)
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

/* ---- Output ------------------------------------------------------------ */

/* Take @done bytes off the front of the output queue (written or copied),
 * releasing every message completed. */
static void consume_output(struct conn *c, size_t done)
{
    while (c->out_head) {
        struct outmsg *m = c->out_head;
        while (m->idx < m->niov) {
            struct iovec *v = &m->iov[m->idx];
            size_t take = done < v->iov_len ? done : v->iov_len;
            v->iov_base = (uint8_t *)v->iov_base + take;
            v->iov_len -= take;
            m->left -= take;
            done -= take;
            if (v->iov_len)
                break;
            m->idx++;
        }
        if (m->idx < m->niov)
            break;
        c->out_head = m->next;
        if (!c->out_head)
            c->out_tail = NULL;
        m->release(m);
    }
    assert(done == 0);
}

/*
 * The TLS side of conn_flush: gather queued bytes into one record in
 * tls_out, and offer it to GnuTLS until it is taken.  Why a copy: after
 * GNUTLS_E_AGAIN the very same buffer and length must be offered again,
 * while the queue below keeps changing; tls_out does not.
 */
static int conn_flush_tls(struct conn *c)
{
    for (;;) {
        ssize_t r;

        if (c->tls_out_len == 0) {
            size_t n = 0;
            for (struct outmsg *m = c->out_head; m && n < CONN_TLS_RECORD; m = m->next)
                for (int i = m->idx; i < m->niov && n < CONN_TLS_RECORD; i++) {
                    size_t take = m->iov[i].iov_len;
                    if (take > CONN_TLS_RECORD - n)
                        take = CONN_TLS_RECORD - n;
                    memcpy(c->tls_out + n, m->iov[i].iov_base, take);
                    n += take;
                }
            consume_output(c, n);
            c->tls_out_len = n;
            if (n == 0)
                break;
        }
        r = tls_session_send(c->tls, c->tls_out, c->tls_out_len);
        if (r > 0) {
            c->tls_out_len -= (size_t)r;
            if (c->tls_out_len)
                memmove(c->tls_out, c->tls_out + r, c->tls_out_len);
            continue;
        }
        if (r == -EAGAIN) {
            if (tls_session_wants_write(c->tls)) {
                if (!ev_is_active(&c->ww))
                    ev_io_start(srv.loop, &c->ww);
            } else {
                c->tls_wr_wants_read = true;
                update_read_watcher(c);
            }
            return 0;
        }
        conn_log(c, SRV_LOG_INFO, "%s", tls_session_error(c->tls));
        conn_close(c, "TLS write error");
        return -1;
    }
    if (ev_is_active(&c->ww) && !c->tls_rd_wants_write)
        ev_io_stop(srv.loop, &c->ww);
    return 0;
}

/* iovecs gathered for one writev: 2 per 4 KiB READ reply, so a whole QD32
 * batch and more fits (IOV_MAX is 1024). */
#define CONN_MAX_IOV 256

/* Write as much of the queue as the socket takes.  Returns -1 if closed. */
static int conn_flush(struct conn *c)
{
    if (c->tls_active)
        return conn_flush_tls(c);
    while (c->out_head) {
        struct iovec iov[CONN_MAX_IOV];
        size_t bytes = 0;
        int n = 0;
        ssize_t r;

        /* Gather iovecs across queued messages: one writev for many replies. */
        for (struct outmsg *m = c->out_head; m && n < CONN_MAX_IOV; m = m->next)
            for (int i = m->idx; i < m->niov && n < CONN_MAX_IOV; i++)
                if (m->iov[i].iov_len) {
                    iov[n++] = m->iov[i];
                    bytes += m->iov[i].iov_len;
                }
        if (n == 0) {
            /* Only empty messages: release them. */
            r = 0;
        } else {
            r = writev(c->wfd, iov, n);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    if (!ev_is_active(&c->ww))
                        ev_io_start(srv.loop, &c->ww);
                    return 0;
                }
                conn_log(c, SRV_LOG_INFO, "write: %s", strerror(errno));
                conn_close(c, "write error");
                return -1;
            }
        }
        consume_output(c, (size_t)r);
        if ((size_t)r < bytes) {
            /* A short write: the socket is full.  Why not try again at once:
             * that call would only fail with EAGAIN; the write watcher says
             * when there is room. */
            if (!ev_is_active(&c->ww))
                ev_io_start(srv.loop, &c->ww);
            return 0;
        }
    }
    if (ev_is_active(&c->ww))
        ev_io_stop(srv.loop, &c->ww);
    return 0;
}

static void on_writable(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn *c = w->data;

    bool tls_read = c->tls_rd_wants_write;

    (void)loop;
    (void)revents;
    conn_ref(c);
    c->tls_rd_wants_write = false;
    /* Draining the queue may finish a drain or lift the backpressure. */
    if (conn_flush(c) == 0) {
        /* The TLS handshake, or a TLS read, was waiting for writable. */
        if (c->state == CONN_TLS_HANDSHAKE || tls_read)
            conn_step(c);
        conn_kick(c);
    }
    conn_unref(c);
}

/* Append @m to @c's output queue. */
static void queue_append(struct conn *c, struct outmsg *m)
{
    assert(c->state != CONN_DEAD);
    m->next = NULL;
    m->idx = 0;
    m->left = 0;
    for (int i = 0; i < m->niov; i++)
        m->left += m->iov[i].iov_len;
    if (c->out_tail)
        c->out_tail->next = m;
    else
        c->out_head = m;
    c->out_tail = m;
}

void conn_queue(struct conn *c, struct outmsg *m)
{
    queue_append(c, m);
    /* Eager: try now unless the socket is already known to be full. */
    if (!ev_is_active(&c->ww))
        conn_flush(c);
}

void conn_queue_batched(struct conn *c, struct outmsg *m)
{
    queue_append(c, m);
    /* A full socket: the write watcher will send it.  Else at the end of
     * the turn, with the other replies of the turn. */
    if (!ev_is_active(&c->ww))
        flush_add(c);
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

struct copymsg {
    struct outmsg m;
    struct conn *c;             /* charged with the message */
    size_t charged;
    struct iovec iov;
    uint8_t data[];
};

static void copymsg_release(struct outmsg *m)
{
    struct copymsg *cm = (struct copymsg *)m;   /* m is the first member */

    conn_mem_release(cm->c, cm->charged);
    free(cm);
}

int conn_queue_copy(struct conn *c, const void *a, size_t alen, const void *b, size_t blen)
{
    struct copymsg *cm = malloc(sizeof(*cm) + alen + blen);

    if (!cm)
        return -ENOMEM;
    /* Why charged although handshake replies never wait for memory: they
     * are held until the client reads them, so they count (mem.c). */
    cm->c = c;
    cm->charged = sizeof(*cm) + alen + blen;
    conn_mem_charge(c, cm->charged);
    if (alen)
        memcpy(cm->data, a, alen);
    if (blen)
        memcpy(cm->data + alen, b, blen);
    cm->iov.iov_base = cm->data;
    cm->iov.iov_len = alen + blen;
    cm->m.iov = &cm->iov;
    cm->m.niov = 1;
    cm->m.release = copymsg_release;
    conn_queue(c, &cm->m);
    return 0;
}

void conn_kick(struct conn *c)
{
    if (c->state == CONN_DEAD)
        return;
    maybe_finish_drain(c);
    if (c->state != CONN_DEAD)
        update_read_watcher(c);
}

/* ---- Handshake timer and transmission entry ----------------------------- */

static void on_hs_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct conn *c = w->data;

    (void)loop;
    (void)revents;
    conn_log(c, SRV_LOG_INFO, "handshake not finished after %g s", srv.hs_timeout);
    conn_close(c, "handshake timeout");
}

void conn_enter_transmission(struct conn *c, struct export *e)
{
    if (c->state == CONN_DEAD)
        return;
    c->exp = e;
    c->tx_flags = hs_tx_flags(c, e);
    if (c->meta_exp != e) {
        /* Contexts were negotiated for another export: they do not apply. */
        c->meta_exp = NULL;
        c->meta_base = c->meta_depth = false;
    }
    ev_timer_stop(srv.loop, &c->hs_timer);
    e->st.connections++;
    conn_log(c, SRV_LOG_INFO,
             "serving export \"%s\" (%s, %llu bytes, flags 0x%x, %s replies%s%s)", e->name,
             e->path, (unsigned long long)e->size, c->tx_flags,
             c->structured ? "structured" : "simple", c->meta_base ? ", base:allocation" : "",
             c->meta_depth ? ", qemu:allocation-depth" : "");
    conn_expect(c, CONN_TX_REQ_HEADER, c->hdr, sizeof(struct nbd_request));
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
    c->id = ++srv.next_conn_id;
    snprintf(c->peer, sizeof(c->peer), "%s", peer);
    c->refs = 1;
    c->rfd = rfd;
    c->wfd = wfd;
    c->refuse = refuse;
    c->counted = !refuse;
    c->state = CONN_HS_CLIENT_FLAGS;
    if (refuse)
        srv.nrefused++;
    else
        srv.nconns++;

    /* Link first: closing (even from hs_start) unlinks. */
    c->next = srv.conns;
    if (srv.conns)
        srv.conns->prev = c;
    srv.conns = c;

    ev_io_init(&c->rw, on_readable, rfd, EV_READ);
    c->rw.data = c;
    ev_io_init(&c->ww, on_writable, wfd, EV_WRITE);
    c->ww.data = c;
    ev_timer_init(&c->hs_timer, on_hs_timeout, srv.hs_timeout, 0.);
    c->hs_timer.data = c;

    conn_log(c, SRV_LOG_INFO, "new connection from %s%s", peer,
             refuse ? " (over the connection limit: refusing)" : "");
    ev_timer_start(srv.loop, &c->hs_timer);
    conn_ref(c);
    hs_start(c);
    bool dead = c->state == CONN_DEAD;
    if (!dead)
        update_read_watcher(c);
    conn_unref(c);
    return dead ? NULL : c;
}
