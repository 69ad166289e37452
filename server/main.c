/*
 * main.c - qednbd: serve QED images over NBD from one libev loop.
 *
 * Start-up order: parse every option, open every image (the library checks
 * them), and only then open the listening socket, so a bad option or a bad
 * image exits 1 before any client could connect.
 *
 * Shutdown: SIGINT/SIGTERM stop accepting, let the requests in flight finish
 * and their replies go out (at most SHUTDOWN_GRACE seconds), then leave the
 * loop; qed_close then flushes each image and clears NEED_CHECK.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <ev.h>

#include "nbd-proto.h"
#include "qednbd.h"

#define SHUTDOWN_GRACE 10.0     /* seconds for in-flight requests at shutdown */
#define MAX_LISTEN 8
#define ACCEPT_BUDGET 16        /* clients accepted per listen event */

struct server srv;

static struct {
    const char *port;
    const char *bind;
    const char *unix_path;
    const char *export_name;
    bool read_only;
    enum qed_aio_backend aio_kind;
    unsigned l2_cache;
} opt = {
    .aio_kind = QED_AIO_AUTO,
};

static int listen_fds[MAX_LISTEN];
static ev_io listen_w[MAX_LISTEN];
static int nlisten;
static bool unix_created;
static ev_signal sigint_w, sigterm_w;
static ev_timer grace_w;
static char listen_desc[512];

void srv_log(int level, const char *fmt, ...)
{
    char buf[2048];
    va_list ap;

    if (level > srv.verbose)
        return;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    fprintf(stderr, "qednbd: %s\n", buf);
}

static void lib_log(enum qed_log_level level, const char *msg, void *opaque)
{
    (void)opaque;
    fprintf(stderr, "qednbd: libqed%s: %s\n",
            level == QED_LOG_ERROR ? " error" : level == QED_LOG_WARN ? " warning" : "", msg);
}

struct export *srv_find_export(const char *name, size_t len)
{
    if (len == 0 && srv.nexports)
        return &srv.exports[0];
    for (size_t i = 0; i < srv.nexports; i++)
        if (strlen(srv.exports[i].name) == len && memcmp(srv.exports[i].name, name, len) == 0)
            return &srv.exports[i];
    return NULL;
}

/* ---- Command line ------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: qednbd [OPTIONS] IMAGE                      serve IMAGE as the default export\n"
            "       qednbd [OPTIONS] -e NAME=IMAGE [-e ...]     serve several named exports\n"
            "  -p, --port PORT            TCP port, default 10809\n"
            "  -b, --bind ADDR            address to listen on (IPv4 or IPv6), default 127.0.0.1;\n"
            "                             0.0.0.0 or :: for every interface\n"
            "  -u, --unix PATH            listen on a Unix socket instead of TCP\n"
            "  -s, --stdio                serve a single client on stdin/stdout, then exit\n"
            "  -e, --export NAME=IMAGE    add a named export (repeatable)\n"
            "  -x, --export-name NAME     name of the export in the single-IMAGE form\n"
            "  -r, --read-only            every export read-only\n"
            "  -D, --description TEXT     description of every export (NBD_INFO_DESCRIPTION)\n"
            "      --aio=uring|threads    file I/O backend (default: uring, else threads)\n"
            "      --l2-cache=N           L2 tables cached per image\n"
            "      --max-connections=N    default 100; extra clients are refused politely\n"
            "      --handshake-timeout=S  default 10; clients slower to negotiate are dropped\n"
            "  -v, --verbose              log connections and options (-vv: every request)\n"
            "  -h, --help                 this help\n"
            "  -V, --version              print the version\n");
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "qednbd: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    exit(1);
}

static unsigned long parse_num(const char *s, const char *what, unsigned long min,
                               unsigned long max)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || end == s || *end || *s == '-' || v < min || v > max)
        die("invalid %s '%s' (expected a number in [%lu, %lu])", what, s, min, max);
    return v;
}

static void add_export(const char *name, const char *path)
{
    struct export *e;

    if (strlen(name) > NBD_MAX_STRING)
        die("export name longer than %u bytes", NBD_MAX_STRING);
    if (!*path)
        die("empty image path for export '%s'", name);
    for (size_t i = 0; i < srv.nexports; i++)
        if (strcmp(srv.exports[i].name, name) == 0)
            die("export name '%s' given twice", name);
    e = realloc(srv.exports, (srv.nexports + 1) * sizeof(*e));
    if (!e)
        die("out of memory");
    srv.exports = e;
    e = &srv.exports[srv.nexports++];
    memset(e, 0, sizeof(*e));
    e->name = strdup(name);
    e->path = strdup(path);
    if (!e->name || !e->path)
        die("out of memory");
}

enum { OPT_AIO = 256, OPT_L2_CACHE, OPT_MAX_CONNS, OPT_HS_TIMEOUT };

static void parse_args(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "port", required_argument, NULL, 'p' },
        { "bind", required_argument, NULL, 'b' },
        { "unix", required_argument, NULL, 'u' },
        { "stdio", no_argument, NULL, 's' },
        { "export", required_argument, NULL, 'e' },
        { "export-name", required_argument, NULL, 'x' },
        { "read-only", no_argument, NULL, 'r' },
        { "description", required_argument, NULL, 'D' },
        { "aio", required_argument, NULL, OPT_AIO },
        { "l2-cache", required_argument, NULL, OPT_L2_CACHE },
        { "max-connections", required_argument, NULL, OPT_MAX_CONNS },
        { "handshake-timeout", required_argument, NULL, OPT_HS_TIMEOUT },
        { "verbose", no_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    int ch;
    char *s;

    srv.max_conns = 100;
    srv.hs_timeout = 10;
    while ((ch = getopt_long(argc, argv, "p:b:u:se:x:rD:vhV", longopts, NULL)) != -1) {
        switch (ch) {
        case 'p':
            parse_num(optarg, "port", 0, 65535);
            opt.port = optarg;
            break;
        case 'b':
            opt.bind = optarg;
            break;
        case 'u':
            if (!*optarg || strlen(optarg) >= sizeof(((struct sockaddr_un *)0)->sun_path))
                die("Unix socket path '%s' is empty or too long", optarg);
            opt.unix_path = optarg;
            break;
        case 's':
            srv.stdio = true;
            break;
        case 'e':
            s = strchr(optarg, '=');
            if (!s)
                die("-e expects NAME=IMAGE, got '%s'", optarg);
            *s = '\0';
            add_export(optarg, s + 1);
            break;
        case 'x':
            opt.export_name = optarg;
            break;
        case 'r':
            opt.read_only = true;
            break;
        case 'D':
            if (strlen(optarg) > NBD_MAX_STRING)
                die("description longer than %u bytes", NBD_MAX_STRING);
            srv.description = optarg;
            break;
        case OPT_AIO:
            if (strcmp(optarg, "uring") == 0)
                opt.aio_kind = QED_AIO_URING;
            else if (strcmp(optarg, "threads") == 0)
                opt.aio_kind = QED_AIO_THREADS;
            else
                die("invalid --aio '%s' (expected uring or threads)", optarg);
            break;
        case OPT_L2_CACHE:
            opt.l2_cache = (unsigned)parse_num(optarg, "--l2-cache", 1, 1u << 20);
            break;
        case OPT_MAX_CONNS:
            srv.max_conns = (unsigned)parse_num(optarg, "--max-connections", 1, 1u << 20);
            break;
        case OPT_HS_TIMEOUT:
            srv.hs_timeout = (double)parse_num(optarg, "--handshake-timeout", 1, 86400);
            break;
        case 'v':
            srv.verbose++;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case 'V':
            printf("qednbd %s\n", PACKAGE_VERSION);
            exit(0);
        default:
            usage(stderr);
            exit(1);
        }
    }

    if (optind < argc) {
        if (srv.nexports)
            die("give either IMAGE or -e NAME=IMAGE, not both");
        if (argc - optind > 1)
            die("too many arguments: one IMAGE (use -e NAME=IMAGE for several exports)");
        add_export(opt.export_name ? opt.export_name : "", argv[optind]);
    } else if (!srv.nexports) {
        usage(stderr);
        die("no image given");
    } else if (opt.export_name) {
        die("-x applies to the single-IMAGE form; use -e NAME=IMAGE");
    }
    if (srv.stdio && (opt.unix_path || opt.port || opt.bind))
        die("--stdio cannot be combined with --unix, --port or --bind");
    if (opt.unix_path && (opt.port || opt.bind))
        die("--unix cannot be combined with --port or --bind");
}

/* ---- Images ---------------------------------------------------------------- */

static void open_images(void)
{
    for (size_t i = 0; i < srv.nexports; i++) {
        struct export *e = &srv.exports[i];
        struct qed_open_opts oo = {
            .read_only = opt.read_only,
            .l2_cache_tables = opt.l2_cache,
        };
        char err[512] = "";
        int r;

        for (size_t j = 0; j < i; j++)
            if (strcmp(srv.exports[j].path, e->path) == 0)
                die("image '%s' is given for two exports ('%s' and '%s')", e->path,
                    srv.exports[j].name, e->name);
        r = qed_open(srv.aio, e->path, &oo, &e->img, err, sizeof(err));
        if (r < 0)
            die("cannot open '%s': %s", e->path, err[0] ? err : strerror(-r));
        e->size = qed_size(e->img);
        e->read_only = qed_is_read_only(e->img);
        e->pref_block = qed_cluster_size(e->img);
        if (e->pref_block > SRV_MAX_PREFERRED)
            e->pref_block = SRV_MAX_PREFERRED;
        if (e->pref_block < 512)
            e->pref_block = 512;
    }
}

static void close_images(int *status)
{
    for (size_t i = 0; i < srv.nexports; i++) {
        struct export *e = &srv.exports[i];
        if (!e->img)
            continue;
        /* Why here, after the loop: qed_close runs the loop itself to finish
         * what is in flight, then flushes and clears NEED_CHECK. */
        int r = qed_close(e->img);
        e->img = NULL;
        if (r < 0) {
            srv_log(SRV_LOG_ERROR, "closing '%s': %s", e->path, strerror(-r));
            *status = 1;
        }
    }
}

/* ---- Listening ------------------------------------------------------------ */

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        die("fcntl(O_NONBLOCK): %s", strerror(errno));
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
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED)
                srv_log(SRV_LOG_ERROR, "accept: %s", strerror(errno));
            return;
        }
        peer_name(&ss, sl, peer, sizeof(peer));
        if (ss.ss_family != AF_UNIX) {
            int one = 1;
            /* The spec asks both ends to disable Nagle. */
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        if (srv.nconns >= srv.max_conns) {
            /* Refuse politely (see handshake.c), but do not let refused
             * clients pile up either: past a second allowance, just close. */
            if (srv.nrefused >= srv.max_conns) {
                srv_log(SRV_LOG_INFO, "connection from %s dropped: over the limit", peer);
                close(fd);
                continue;
            }
            conn_new(fd, fd, true, peer);
        } else {
            conn_new(fd, fd, false, peer);
        }
    }
}

static void add_listener(int fd)
{
    if (nlisten == MAX_LISTEN)
        die("too many listening sockets");
    listen_fds[nlisten] = fd;
    ev_io_init(&listen_w[nlisten], on_accept, fd, EV_READ);
    ev_io_start(srv.loop, &listen_w[nlisten]);
    nlisten++;
}

static void listen_unix(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct stat st;
    int fd;

    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", opt.unix_path);
    if (lstat(opt.unix_path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            die("'%s' exists and is not a socket", opt.unix_path);
        unlink(opt.unix_path);  /* a stale socket from an earlier run */
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        die("bind '%s': %s", opt.unix_path, strerror(errno));
    unix_created = true;
    if (listen(fd, 128) < 0)
        die("listen '%s': %s", opt.unix_path, strerror(errno));
    set_nonblock(fd);
    add_listener(fd);
    snprintf(listen_desc, sizeof(listen_desc), "unix:%s", opt.unix_path);
}

static void listen_tcp(void)
{
    const char *port = opt.port ? opt.port : "10809";
    char host[256];
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV,
    };
    struct addrinfo *res;
    int r;

    /* Accept "[::1]" as well as "::1". */
    snprintf(host, sizeof(host), "%s", opt.bind ? opt.bind : "127.0.0.1");
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = '\0';
    }
    r = getaddrinfo(host, port, &hints, &res);
    if (r != 0)
        die("invalid bind address '%s' or port '%s': %s", host, port, gai_strerror(r));
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        int one = 1;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        char name[160];

        if (fd < 0)
            die("socket: %s", strerror(errno));
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
            die("bind %s port %s: %s", host, port, strerror(errno));
        if (listen(fd, 128) < 0)
            die("listen: %s", strerror(errno));
        set_nonblock(fd);
        add_listener(fd);
        /* Report the real port (useful with -p 0). */
        getsockname(fd, (struct sockaddr *)&ss, &sl);
        peer_name(&ss, sl, name, sizeof(name));
        snprintf(listen_desc + strlen(listen_desc), sizeof(listen_desc) - strlen(listen_desc),
                 "%s%s", listen_desc[0] ? " " : "", name);
        break;  /* a numeric host gives one address */
    }
    freeaddrinfo(res);
}

/*
 * Socket activation (systemd's protocol, also used by nbdinfo/nbdcopy
 * "[ CMD ]"): when LISTEN_PID is our pid, the LISTEN_FDS sockets from fd 3 on
 * are already listening.  Returns true when they were taken.
 */
static bool listen_activation(void)
{
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    char *end;
    long n;

    if (!pid || !fds || strtol(pid, &end, 10) != (long)getpid() || *end)
        return false;
    n = strtol(fds, &end, 10);
    if (*end || n < 1 || n > MAX_LISTEN)
        die("invalid LISTEN_FDS '%s'", fds);
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    for (int fd = 3; fd < 3 + n; fd++) {
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        set_nonblock(fd);
        add_listener(fd);
    }
    snprintf(listen_desc, sizeof(listen_desc), "%ld socket(s) passed by socket activation", n);
    return true;
}

static void stop_listening(void)
{
    for (int i = 0; i < nlisten; i++) {
        ev_io_stop(srv.loop, &listen_w[i]);
        close(listen_fds[i]);
    }
    nlisten = 0;
    if (unix_created) {
        unlink(opt.unix_path);
        unix_created = false;
    }
}

/* ---- Shutdown ---------------------------------------------------------------- */

void srv_conn_gone(void)
{
    if ((srv.stdio || srv.shutting_down) && !srv.conns)
        ev_break(srv.loop, EVBREAK_ALL);
}

static void on_grace(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    srv_log(SRV_LOG_ERROR, "requests still in flight after %.0f s: closing the connections",
            SHUTDOWN_GRACE);
    while (srv.conns)
        conn_abort(srv.conns);
    ev_break(srv.loop, EVBREAK_ALL);
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    struct conn *c, *next;

    (void)revents;
    if (srv.shutting_down) {
        srv_log(SRV_LOG_ERROR, "second signal: closing the connections now");
        on_grace(loop, &grace_w, 0);
        return;
    }
    srv_log(SRV_LOG_ERROR, "signal %d: shutting down", w->signum);
    srv.shutting_down = true;
    stop_listening();
    for (c = conn_next(NULL); c; c = next) {
        next = conn_next(c);
        conn_shutdown(c);
    }
    if (!srv.conns) {
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    ev_timer_start(loop, &grace_w);
}

/* ---- main ------------------------------------------------------------------- */

static void describe_exports(char *buf, size_t n)
{
    size_t used = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < srv.nexports && used < n; i++) {
        const struct export *e = &srv.exports[i];
        used += (size_t)snprintf(buf + used, n - used, "%s\"%s\" = %s (%llu bytes, %s)",
                                 i ? ", " : "", e->name, e->path, (unsigned long long)e->size,
                                 e->read_only ? "read-only" : "read-write");
    }
}

int main(int argc, char **argv)
{
    char exports_desc[2048];
    int status = 0;
    int r;

    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    /* A write past RLIMIT_FSIZE must fail with EFBIG (reported as ENOSPC),
     * not kill the server. */
    signal(SIGXFSZ, SIG_IGN);

    srv.loop = ev_default_loop(EVFLAG_AUTO);
    if (!srv.loop)
        die("cannot create the event loop");
    ev_timer_init(&grace_w, on_grace, SHUTDOWN_GRACE, 0.);
    qed_set_log(lib_log, NULL, srv.verbose >= 2 ? QED_LOG_DEBUG
                               : srv.verbose ? QED_LOG_INFO : QED_LOG_WARN);
    r = qed_aio_new(srv.loop, opt.aio_kind, &srv.aio);
    if (r < 0)
        die("cannot set up the %s I/O backend: %s",
            opt.aio_kind == QED_AIO_URING ? "io_uring" :
            opt.aio_kind == QED_AIO_THREADS ? "thread-pool" : "file", strerror(-r));
    srv_log(SRV_LOG_INFO, "I/O backend: %s", qed_aio_backend_name(srv.aio));

    open_images();
    describe_exports(exports_desc, sizeof(exports_desc));

    if (srv.stdio) {
        /* Nothing but the protocol may go to stdout: every log goes to stderr. */
        set_nonblock(0);
        set_nonblock(1);
        srv_log(SRV_LOG_INFO, "serving one client on stdin/stdout: %s", exports_desc);
        if (!conn_new(0, 1, false, "stdio")) {
            close_images(&status);
            qed_aio_free(srv.aio);
            return 1;
        }
    } else {
        if (opt.unix_path)
            listen_unix();
        else if (opt.port || opt.bind || !listen_activation())
            listen_tcp();
        fprintf(stderr, "qednbd: listening on %s, serving %s\n", listen_desc, exports_desc);
    }

    ev_signal_init(&sigint_w, on_signal, SIGINT);
    ev_signal_start(srv.loop, &sigint_w);
    ev_signal_init(&sigterm_w, on_signal, SIGTERM);
    ev_signal_start(srv.loop, &sigterm_w);

    ev_run(srv.loop, 0);

    /* Leaving: stop our own watchers before qed_close runs the loop again. */
    ev_signal_stop(srv.loop, &sigint_w);
    ev_signal_stop(srv.loop, &sigterm_w);
    ev_timer_stop(srv.loop, &grace_w);
    /* Stopping the watchers restored the default action (terminate): a
     * second Ctrl-C during the final flush would kill us before the images
     * are closed and NEED_CHECK cleared.  Ignore them until we are done. */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    stop_listening();
    while (srv.conns)
        conn_abort(srv.conns);
    close_images(&status);
    qed_aio_free(srv.aio);
    for (size_t i = 0; i < srv.nexports; i++) {
        free(srv.exports[i].name);
        free(srv.exports[i].path);
    }
    free(srv.exports);
    srv_log(SRV_LOG_INFO, "exit %d", status);
    return status;
}
