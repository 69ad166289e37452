/*
 * listen.c - the listening sockets: a Unix socket, a TCP address, or the
 * sockets passed by socket activation; accepting clients (a budget per
 * event, a pause when out of descriptors) and handing them to conn_new.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <ev.h>

#include "conn.h"
#include "listen.h"
#include "tls.h"

#define MAX_LISTEN 8
#define ACCEPT_BUDGET 16        /* clients accepted per listen event */
#define ACCEPT_PAUSE 0.5        /* seconds without accepting when out of descriptors */

static int listen_fds[MAX_LISTEN];
static ev_io listen_w[MAX_LISTEN];
static int nlisten;
static const char *unix_path;   /* the Unix socket we created, to unlink */
static bool unix_created;
static char listen_desc[512];
static ev_timer accept_pause_w;     /* runs while the listeners are paused */
static bool accept_paused;          /* listeners stopped by accept_pause() (atomic: read
                                       by every thread in srv_conn_gone) */
static double accept_starved_since; /* start of the episode of failed accepts, or 0 */

void net_set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        srv_die("fcntl(O_NONBLOCK): %s", strerror(errno));
}

static void peer_name(const struct sockaddr_storage *ss, socklen_t len, char *buf, size_t n)
{
    char host[INET6_ADDRSTRLEN + 1], port[16];

    if (ss->ss_family == AF_UNIX) {
        snprintf(buf, n, "unix socket");
        return;
    }
    if (getnameinfo((const struct sockaddr *)ss, len, host, sizeof(host), port, sizeof(port),
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(buf, n, "?");
        return;
    }
    snprintf(buf, n, ss->ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
}

/* End a pause of accept_pause(): start the listeners' watchers again.
 * (Nothing to do when not paused; stop_listening ends a pause for good.) */
static void accept_resume(void)
{
    if (!SRV_LOAD(accept_paused))
        return;
    __atomic_store_n(&accept_paused, false, __ATOMIC_RELAXED);
    ev_timer_stop(srv_self->loop, &accept_pause_w);
    for (int i = 0; i < nlisten; i++)
        ev_io_start(srv_self->loop, &listen_w[i]);
}

static void on_accept_pause_end(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    accept_resume();
}

/*
 * accept4 failed with @err, which leaves the client in the backlog (out of
 * descriptors or kernel memory).  Why stop the listeners: the socket stays
 * readable, so the loop would call accept4 again at once, burn a core and
 * log each failure.  Like nginx and nbdkit, stop accepting for ACCEPT_PAUSE
 * seconds (or until a connection closes and frees a descriptor: see
 * srv_conn_gone), and log once per episode, not per attempt: the episode
 * ends at the next accept4 that succeeds.
 */
static void accept_pause(int err)
{
    struct rlimit rl = { 0, 0 };

    if (accept_starved_since == 0) {
        accept_starved_since = ev_now(srv_self->loop);
        getrlimit(RLIMIT_NOFILE, &rl);
        srv_log(SRV_LOG_ERROR,
                "accept on %s: %s; not accepting new connections until a connection closes "
                "(retrying every %.1f s; %u clients connected, descriptor limit %llu: raise it "
                "with ulimit -n or LimitNOFILE=, or lower --max-connections)",
                listen_desc, strerror(err), ACCEPT_PAUSE,
                SRV_LOAD(srv.nconns) + SRV_LOAD(srv.nrefused),
                (unsigned long long)rl.rlim_cur);
    }
    for (int i = 0; i < nlisten; i++)
        ev_io_stop(srv_self->loop, &listen_w[i]);
    __atomic_store_n(&accept_paused, true, __ATOMIC_RELAXED);
    ev_timer_init(&accept_pause_w, on_accept_pause_end, ACCEPT_PAUSE, 0.);
    ev_timer_start(srv_self->loop, &accept_pause_w);
}

/* An accept4 worked (or found the backlog empty): a pause episode is over. */
static void accept_episode_end(void)
{
    if (accept_starved_since == 0)
        return;
    srv_log(SRV_LOG_NOTICE, "accepting connections again after %.1f s",
            ev_now(srv_self->loop) - accept_starved_since);
    accept_starved_since = 0;
}

/* A client handed to another loop thread (thread 0 accepted it). */
struct handoff {
    struct srv_thread *t;
    int fd;
    bool refuse;
    char peer[128];
};

static unsigned handoffs_pending;   /* handed over, not yet adopted (atomic) */

/* On the chosen thread: serve it from here on (the handshake included). */
static void handoff_adopt(void *arg)
{
    struct handoff *h = arg;

    if (h->t->stopping)
        close(h->fd);       /* shutdown began after it was accepted */
    else
        conn_new(h->fd, h->fd, h->refuse, h->peer);
    SRV_SUB(h->t->nconns, 1);   /* conn_new counted it again */
    SRV_SUB(handoffs_pending, 1);
    free(h);
}

/*
 * Serve the accepted client @fd on the thread with the fewest connections,
 * before the handshake (so TLS and the handshake run there too).  The
 * thread's count goes up now, not when it adopts the client: a burst of
 * clients accepted in one event must not all go to the same thread.
 */
static void hand_over(int fd, bool refuse, const char *peer)
{
    struct srv_thread *t = srv.nthreads > 1 ? threads_pick() : srv_self;
    struct handoff *h;

    if (t == srv_self || !(h = malloc(sizeof(*h)))) {
        conn_new(fd, fd, refuse, peer);
        return;
    }
    h->t = t;
    h->fd = fd;
    h->refuse = refuse;
    snprintf(h->peer, sizeof(h->peer), "%s", peer);
    SRV_ADD(t->nconns, 1);
    SRV_ADD(handoffs_pending, 1);
    thread_post_new(t, handoff_adopt, h);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    for (int i = 0; i < ACCEPT_BUDGET; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        char peer[128];
        int fd = accept4(w->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                accept_pause(errno);
            else if (errno == EAGAIN || errno == EWOULDBLOCK)
                accept_episode_end();   /* nobody left waiting */
            else if (errno != EINTR && errno != ECONNABORTED)
                srv_log(SRV_LOG_ERROR, "accept: %s", strerror(errno));
            return;
        }
        accept_episode_end();
        peer_name(&ss, sl, peer, sizeof(peer));
        if (ss.ss_family != AF_UNIX) {
            int one = 1;
            /* The spec asks both ends to disable Nagle. */
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        /* Clients handed over and not yet adopted count as connections:
         * the limit holds through a burst (a refused one may count twice
         * for a moment, which only refuses sooner). */
        if (SRV_LOAD(srv.nconns) + SRV_LOAD(handoffs_pending) >= srv.max_conns) {
            srv.conns_refused++;
            /* Refuse politely (see protocol/handshake.c), but do not let refused
             * clients pile up either: past a second allowance, just close. */
            if (SRV_LOAD(srv.nrefused) >= srv.max_conns) {
                srv_log(SRV_LOG_INFO, "connection from %s dropped: over the limit", peer);
                close(fd);
                continue;
            }
            hand_over(fd, true, peer);
        } else {
            hand_over(fd, false, peer);
        }
    }
}

static void add_listener(int fd)
{
    if (nlisten == MAX_LISTEN)
        srv_die("too many listening sockets");
    listen_fds[nlisten] = fd;
    ev_io_init(&listen_w[nlisten], on_accept, fd, EV_READ);
    ev_io_start(srv_self->loop, &listen_w[nlisten]);
    nlisten++;
}

/* Is @sa a loopback address (or not a network address at all)? */
static bool is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return true;
}

/* The rule: a network-facing socket without TLS deserves a warning. */
static void warn_if_exposed(const struct sockaddr *sa, const char *name)
{
    if (is_loopback(sa) || tls_mode() == TLS_REQUIRE)
        return;
    if (tls_mode() == TLS_OFF)
        srv_log(SRV_LOG_WARN,
                "listening on %s, a non-loopback address, without TLS: anyone who can reach "
                "it can use the exports, and the data travels in clear (use --tls=require with "
                "--tls-certificates or --tls-psk)", name);
    else
        srv_log(SRV_LOG_WARN,
                "listening on %s, a non-loopback address, with --tls=on: clients may still "
                "connect without TLS (use --tls=require)", name);
}

void listen_unix(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct stat st;
    int fd;

    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        srv_die("socket: %s", strerror(errno));
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            srv_die("'%s' exists and is not a socket", path);
        /* Someone still answering there is a live server, not a leftover:
         * never pull its socket from under it.  Why a second socket: after
         * a failed connect() a socket's state is unspecified, and @fd is
         * the one we bind. */
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe < 0)
            srv_die("socket: %s", strerror(errno));
        if (connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            srv_die("another server is listening on '%s'", path);
        close(probe);
        if (unlink(path) < 0 && errno != ENOENT) /* a stale socket from an earlier run */
            srv_die("cannot remove the stale socket '%s': %s", path, strerror(errno));
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        srv_die("bind '%s': %s", path, strerror(errno));
    unix_path = path;
    unix_created = true;
    if (listen(fd, 128) < 0)
        srv_die("listen '%s': %s", path, strerror(errno));
    net_set_nonblock(fd);
    add_listener(fd);
    snprintf(listen_desc, sizeof(listen_desc), "unix:%s", path);
}

void listen_tcp(const char *bind_addr, const char *port_arg)
{
    const char *port = port_arg ? port_arg : "10809";
    char host[256];
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV,
    };
    struct addrinfo *res;
    int r;

    /* Accept "[::1]" as well as "::1". */
    snprintf(host, sizeof(host), "%s", bind_addr ? bind_addr : "127.0.0.1");
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = '\0';
    }
    r = getaddrinfo(host, port, &hints, &res);
    if (r != 0)
        srv_die("invalid bind address '%s' or port '%s': %s", host, port, gai_strerror(r));
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        int one = 1;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        char name[160];

        if (fd < 0)
            srv_die("socket: %s", strerror(errno));
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
            srv_die("bind %s port %s: %s", host, port, strerror(errno));
        if (listen(fd, 128) < 0)
            srv_die("listen: %s", strerror(errno));
        net_set_nonblock(fd);
        add_listener(fd);
        /* Report the real port (useful with -p 0). */
        getsockname(fd, (struct sockaddr *)&ss, &sl);
        peer_name(&ss, sl, name, sizeof(name));
        warn_if_exposed((struct sockaddr *)&ss, name);
        snprintf(listen_desc + strlen(listen_desc), sizeof(listen_desc) - strlen(listen_desc),
                 "%s%s", listen_desc[0] ? " " : "", name);
        break;  /* a numeric host gives one address */
    }
    freeaddrinfo(res);
}
/* Take the activated sockets (check_activation found activation_n of them). */
bool listen_activation(int activation_n)
{
    if (!activation_n)
        return false;
    for (int fd = 3; fd < 3 + activation_n; fd++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        char name[160];

        net_set_nonblock(fd);
        add_listener(fd);
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
            peer_name(&ss, sl, name, sizeof(name));
            warn_if_exposed((struct sockaddr *)&ss, name);
        }
    }
    snprintf(listen_desc, sizeof(listen_desc), "%d socket(s) passed by socket activation",
             activation_n);
    return true;
}

void stop_listening(void)
{
    ev_timer_stop(srv_self->loop, &accept_pause_w);
    __atomic_store_n(&accept_paused, false, __ATOMIC_RELAXED);
    for (int i = 0; i < nlisten; i++) {
        ev_io_stop(srv_self->loop, &listen_w[i]);
        close(listen_fds[i]);
    }
    nlisten = 0;
    if (unix_created) {
        unlink(unix_path);
        unix_created = false;
    }
}

static void accept_resume_msg(void *arg)
{
    (void)arg;
    accept_resume();
}

void srv_conn_gone(void)
{
    /* Why resume now: a closed connection freed a descriptor, and the
     * clients waiting in the backlog need not wait for the pause to end.
     * The listeners are thread 0's. */
    if (srv_self->idx == 0)
        accept_resume();
    else if (SRV_LOAD(accept_paused))
        thread_post_new(&srv.threads[0], accept_resume_msg, NULL);
    if (srv.stdio && !srv_self->conns)
        ev_break(srv_self->loop, EVBREAK_ALL);
    else if (SRV_LOAD(srv.shutting_down) && !srv_self->conns)
        threads_conns_gone();
}

const char *listen_describe(void)
{
    return listen_desc;
}
