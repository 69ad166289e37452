/*
 * control.c - the control socket (--control=PATH): the listening Unix
 * socket and its clients, each a line reader and a reply writer on
 * srv_self->loop.  What a request does is in control-ops.c.
 *
 * Everything a control client can make the server hold is bounded: at
 * most CTL_MAX_CLIENTS clients (one more is told "busy" and closed), one
 * request line of CTL_MAX_LINE bytes each (a longer one is answered with
 * an error and the client closed: there is no way to find the next
 * request reliably), one request at a time (the next line is not looked
 * at before the reply of the last one is queued), unread replies up to
 * CTL_OUT_HIGH (past it the client is not read: a client that never reads
 * stops itself), and an idle timeout (no byte read or written for that
 * long) that frees all of it.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <ev.h>

#include "control.h"
#include "threads.h"

struct ctl_client {
    struct ctl_client *next;
    int fd;
    unsigned id;
    ev_io io;
    ev_timer idle;
    double last_active;
    char in[CTL_MAX_LINE];
    size_t in_len;
    struct jbuf out;            /* replies not yet written */
    size_t out_off;             /* bytes of @out already written */
    struct ctl_req rq;
    bool busy;                  /* @rq runs */
    bool starting;              /* inside ctl_request_start */
    bool eof;                   /* the client sent everything it will */
    bool closing;               /* close once @out is written (and the client closed) */
    bool shut;                  /* closing: our side is shut down, input is dropped */
    bool dead;                  /* closed; freed when @rq is done */
};

static int ctl_fd = -1;
static ev_io ctl_accept_w;
static const char *ctl_path;
static double ctl_timeout;
static struct ctl_client *clients;
static unsigned nclients, next_id;

static void client_update(struct ctl_client *cl);

static void client_free(struct ctl_client *cl)
{
    jb_free(&cl->out);
    free(cl);
}

/* Close @cl (@why goes to the log); freed now, or when its request is done. */
static void client_close(struct ctl_client *cl, const char *why)
{
    struct ctl_client **pp;

    if (cl->dead)
        return;
    srv_log(SRV_LOG_INFO, "control client %u: %s", cl->id, why);
    cl->dead = true;
    ev_io_stop(srv_self->loop, &cl->io);
    ev_timer_stop(srv_self->loop, &cl->idle);
    close(cl->fd);
    for (pp = &clients; *pp; pp = &(*pp)->next)
        if (*pp == cl) {
            *pp = cl->next;
            break;
        }
    nclients--;
    if (!cl->busy)
        client_free(cl);
}

/* Queue reply line @b (newline included) for @cl. */
static void client_queue(struct ctl_client *cl, const struct jbuf *b)
{
    cl->out.max = CTL_OUT_HIGH + CTL_MAX_REPLY;
    jb_raw(&cl->out, b->p, b->len);
    if (cl->out.overflow)
        client_close(cl, "reply buffer overflow");      /* cannot happen: not read past HIGH */
}

static void request_done(struct ctl_req *rq)
{
    struct ctl_client *cl = rq->opaque;

    if (!cl->dead)
        client_queue(cl, &rq->reply);
    ctl_request_free(rq);
    cl->busy = false;
    if (cl->dead) {
        client_free(cl);
        return;
    }
    /* Done inside ctl_request_start: client_update goes on from there. */
    if (!cl->starting)
        client_update(cl);
}

/* Answer @cl with an error and close it once that is written. */
static void client_refuse(struct ctl_client *cl, int err, const char *msg)
{
    struct jbuf b = { .max = CTL_MAX_REPLY };

    ctl_error_reply(&b, err, msg);
    client_queue(cl, &b);
    jb_free(&b);
    cl->closing = true;
}

/* Run the next complete line of @cl, if any and none runs. */
static void client_next_line(struct ctl_client *cl)
{
    char line[CTL_MAX_LINE];
    char *nl;
    size_t len, used;

    if (cl->busy || cl->closing || cl->out.len - cl->out_off > CTL_OUT_HIGH)
        return;
    nl = memchr(cl->in, '\n', cl->in_len);
    if (!nl && !(cl->eof && cl->in_len)) {
        if (cl->in_len == sizeof(cl->in))
            client_refuse(cl, -E2BIG, "request line longer than 4096 bytes");
        return;
    }
    len = nl ? (size_t)(nl - cl->in) : cl->in_len;
    memcpy(line, cl->in, len);
    used = nl ? len + 1 : len;
    memmove(cl->in, cl->in + used, cl->in_len - used);
    cl->in_len -= used;
    memset(&cl->rq, 0, sizeof(cl->rq));
    cl->rq.finish = request_done;
    cl->rq.opaque = cl;
    cl->busy = cl->starting = true;
    ctl_request_start(&cl->rq, line, len);
    cl->starting = false;
}

/* Write what is queued; false once @cl was closed. */
static bool client_flush(struct ctl_client *cl)
{
    while (cl->out_off < cl->out.len) {
        ssize_t n = send(cl->fd, cl->out.p + cl->out_off, cl->out.len - cl->out_off,
                         MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return true;
        if (n <= 0) {
            client_close(cl, "write failed");
            return false;
        }
        cl->out_off += (size_t)n;
        cl->last_active = ev_now(srv_self->loop);
    }
    cl->out.len = cl->out_off = 0;
    return true;
}

/* Pick the events @cl waits for, after anything changed. */
static void client_update(struct ctl_client *cl)
{
    int ev = 0;

    for (;;) {
        size_t before = cl->in_len;
        bool was_busy = cl->busy;

        if (!client_flush(cl))
            return;
        client_next_line(cl);
        if (cl->dead)
            return;
        if (cl->in_len == before && cl->busy == was_busy)
            break;
    }
    if (!client_flush(cl))
        return;
    if (cl->out.len == 0 && cl->closing && !cl->shut) {
        /* Why not close at once: closing a socket with unread input resets
         * it, and the client could lose the error reply.  Shut our side,
         * drop what it still sends until it closes (or the idle timeout). */
        shutdown(cl->fd, SHUT_WR);
        cl->shut = true;
    }
    if (cl->out.len == 0 && cl->eof && (cl->closing || (!cl->busy && !cl->in_len))) {
        client_close(cl, cl->closing ? "closed after an error" : "disconnected");
        return;
    }
    if (cl->shut) {
        ev_io_stop(srv_self->loop, &cl->io);
        ev_io_set(&cl->io, cl->fd, EV_READ);
        ev_io_start(srv_self->loop, &cl->io);
        return;
    }
    if (cl->out.len)
        ev |= EV_WRITE;
    if (!cl->eof && !cl->closing && !cl->busy && cl->in_len < sizeof(cl->in) &&
        cl->out.len - cl->out_off <= CTL_OUT_HIGH)
        ev |= EV_READ;
    ev_io_stop(srv_self->loop, &cl->io);
    ev_io_set(&cl->io, cl->fd, ev);
    if (ev)
        ev_io_start(srv_self->loop, &cl->io);
}

static void on_client_io(struct ev_loop *loop, ev_io *w, int revents)
{
    struct ctl_client *cl = w->data;
    ssize_t n;

    (void)loop;
    if (revents & EV_READ) {
        if (cl->shut)
            cl->in_len = 0;     /* closing: input is dropped */
        n = recv(cl->fd, cl->in + cl->in_len, sizeof(cl->in) - cl->in_len, 0);
        if (n > 0) {
            cl->in_len += (size_t)n;
            cl->last_active = ev_now(srv_self->loop);
        } else if (n == 0) {
            cl->eof = true;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            client_close(cl, "read failed");
            return;
        }
    }
    client_update(cl);
}

/* The idle timer: libev's "last activity" pattern, one timer per client. */
static void on_client_idle(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct ctl_client *cl = w->data;
    double due = cl->last_active + ctl_timeout;

    (void)revents;
    if (due <= ev_now(loop) && !cl->busy) {
        client_close(cl, "idle timeout");
        return;
    }
    w->repeat = due > ev_now(loop) ? due - ev_now(loop) : ctl_timeout;
    ev_timer_again(loop, w);
}

static void client_new(int fd)
{
    struct ctl_client *cl = calloc(1, sizeof(*cl));

    if (!cl) {
        close(fd);
        return;
    }
    cl->fd = fd;
    cl->id = ++next_id;
    cl->out.max = CTL_OUT_HIGH + CTL_MAX_REPLY;
    cl->last_active = ev_now(srv_self->loop);
    ev_io_init(&cl->io, on_client_io, fd, EV_READ);
    cl->io.data = cl;
    ev_init(&cl->idle, on_client_idle);
    cl->idle.repeat = ctl_timeout;
    cl->idle.data = cl;
    ev_timer_again(srv_self->loop, &cl->idle);
    cl->next = clients;
    clients = cl;
    nclients++;
    srv_log(SRV_LOG_INFO, "control client %u connected", cl->id);
    if (nclients > CTL_MAX_CLIENTS)
        client_refuse(cl, -EBUSY, "too many control clients");
    client_update(cl);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    for (int i = 0; i < 16; i++) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED)
                srv_log(SRV_LOG_WARN, "control socket: accept: %s", strerror(errno));
            return;
        }
        /* One over the limit is accepted to be told why (client_new). */
        if (nclients > CTL_MAX_CLIENTS) {
            close(fd);
            continue;
        }
        client_new(fd);
    }
}

/* Whether a server answers at @sa: true for a live one, false for a stale socket. */
static bool socket_alive(const struct sockaddr_un *sa)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int r, e;

    if (fd < 0)
        srv_die("socket: %s", strerror(errno));
    /* Non-blocking: a live server with a full backlog says EAGAIN, not a hang. */
    r = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
    e = errno;
    close(fd);
    if (r == 0 || e == EAGAIN || e == EINPROGRESS)
        return true;
    if (e == ECONNREFUSED)
        return false;
    srv_die("--control: cannot probe '%s': %s", sa->sun_path, strerror(e));
}

void control_listen(const char *path, unsigned timeout)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct stat st;
    mode_t old;
    int r, e;

    if (strlen(path) >= sizeof(sa.sun_path))
        srv_die("--control: path '%s' is too long for a Unix socket", path);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            srv_die("--control: '%s' exists and is not a socket", path);
        if (socket_alive(&sa))
            srv_die("--control: another server answers on '%s'", path);
        if (unlink(path) < 0)
            srv_die("--control: cannot remove the stale socket '%s': %s", path, strerror(errno));
        srv_log(SRV_LOG_INFO, "control socket: removed the stale socket '%s'", path);
    }
    ctl_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (ctl_fd < 0)
        srv_die("socket: %s", strerror(errno));
    /* Why umask around bind: the socket file is created by bind with the
     * mode the umask leaves; 0177 makes it 0600 from its first instant,
     * where a chmod after bind would leave a window. */
    old = umask(0177);
    r = bind(ctl_fd, (struct sockaddr *)&sa, sizeof(sa));
    e = errno;
    umask(old);
    if (r < 0)
        srv_die("--control: bind '%s': %s", path, strerror(e));
    ctl_path = path;
    if (listen(ctl_fd, (int)CTL_MAX_CLIENTS) < 0)
        srv_die("--control: listen '%s': %s", path, strerror(errno));
    ctl_timeout = timeout;
    ev_io_init(&ctl_accept_w, on_accept, ctl_fd, EV_READ);
    ev_io_start(srv_self->loop, &ctl_accept_w);
    srv_log(SRV_LOG_INFO, "control socket on %s", path);
}

void control_stop(void)
{
    if (ctl_fd < 0)
        return;
    ev_io_stop(srv_self->loop, &ctl_accept_w);
    close(ctl_fd);
    ctl_fd = -1;
    while (clients)
        client_close(clients, "server exiting");
    if (ctl_path)
        unlink(ctl_path);
}
