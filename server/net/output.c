/*
 * output.c - the writing side of a connection: the output queue, eager
 * and batched writev, TLS records, and copied messages.
 *
 * Output.  Handshake messages are written eagerly with writev as soon as
 * they are queued.  Replies of the transmission phase are batched
 * (conn_queue_batched): every reply a loop turn produced goes out in one
 * writev at the end of the turn (on_turn_end, an ev_prepare watcher, so
 * before the loop can block: no added latency).  An EV_WRITE watcher runs
 * only while the socket is full.
 *
 * TLS: see input.c; a record GnuTLS could not send at once is offered
 * again byte for byte from tls_out (conn_flush_tls).
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
#include "tls.h"

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
                    ev_io_start(srv_self->loop, &c->ww);
            } else {
                c->tls_wr_wants_read = true;
                conn_update_read_watcher(c);
            }
            return 0;
        }
        conn_log(c, SRV_LOG_INFO, "%s", tls_session_error(c->tls));
        conn_close(c, "TLS write error");
        return -1;
    }
    if (ev_is_active(&c->ww) && !c->tls_rd_wants_write)
        ev_io_stop(srv_self->loop, &c->ww);
    return 0;
}

/* iovecs gathered for one writev: 2 per 4 KiB READ reply, so a whole QD32
 * batch and more fits (IOV_MAX is 1024). */
#define CONN_MAX_IOV 256

/* Write as much of the queue as the socket takes.  Returns -1 if closed. */
int conn_flush(struct conn *c)
{
    if (c->tls_active)
        return conn_flush_tls(c);
    while (c->out_head) {
        struct iovec iov[CONN_MAX_IOV];
        size_t bytes = 0;
        int n = 0;
        ssize_t r;

        /* Gather iovecs across queued messages: one writev for many replies,
         * copying at most SRV_LOOP_COPY_MAX (the bound on one copy on the
         * loop; a 32 MiB READ reply takes many calls, all in this turn). */
        for (struct outmsg *m = c->out_head; m && n < CONN_MAX_IOV && bytes < SRV_LOOP_COPY_MAX;
             m = m->next)
            for (int i = m->idx; i < m->niov && n < CONN_MAX_IOV && bytes < SRV_LOOP_COPY_MAX;
                 i++)
                if (m->iov[i].iov_len) {
                    iov[n] = m->iov[i];
                    if (iov[n].iov_len > SRV_LOOP_COPY_MAX - bytes)
                        iov[n].iov_len = SRV_LOOP_COPY_MAX - bytes;
                    bytes += iov[n++].iov_len;
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
                        ev_io_start(srv_self->loop, &c->ww);
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
                ev_io_start(srv_self->loop, &c->ww);
            return 0;
        }
    }
    if (ev_is_active(&c->ww))
        ev_io_stop(srv_self->loop, &c->ww);
    return 0;
}

void conn_on_writable(struct ev_loop *loop, ev_io *w, int revents)
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
        turn_flush_add(c);
}

/* A copy of a message, charged to its connection until written. */
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

