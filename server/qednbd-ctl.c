/*
 * qednbd-ctl.c - the client of qednbd's control socket (--control=PATH):
 * builds one request line from its arguments, sends it, prints the reply
 * line, and exits 0 on {"ok":true}, 1 on an error reply, 2 when it could
 * not ask (usage, connection, timeout, a malformed reply).  See
 * qednbd-ctl(1).
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "json.h"

#define MAX_REPLY (1024u * 1024 + 2)    /* the server's longest reply line, and its newline */

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: qednbd-ctl -s PATH [-t SECONDS] COMMAND [ARGS]\n"
            "Commands:\n"
            "  stats                                 the counters SIGUSR1 logs, as JSON\n"
            "  bitmap-list EXPORT                    the export's dirty bitmaps\n"
            "  bitmap-add EXPORT NAME [-g GRANULARITY] [--disabled]\n"
            "                                        add a bitmap (granularity in bytes,\n"
            "                                        K/M/G allowed; default 64K)\n"
            "  bitmap-remove|bitmap-clear|bitmap-enable|bitmap-disable EXPORT NAME\n"
            "  raw JSON                              send JSON as the request line\n"
            "Options:\n"
            "  -s, --socket PATH      the server's --control socket\n"
            "  -t, --timeout SECONDS  give up after this long (default 30)\n"
            "  -h, --help             this help\n"
            "Prints the reply line; exits 0 on success, 1 on an error reply, 2 otherwise.\n");
}

static __attribute__((noreturn, format(printf, 1, 2))) void die(const char *fmt, ...)
{
    va_list ap;

    fputs("qednbd-ctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

/* A size: digits with an optional K, M or G (powers of 1024). */
static unsigned long long parse_size(const char *s)
{
    char *end;
    unsigned long long v;
    int shift = 0;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || end == s || *s == '-')
        die("invalid granularity '%s'", s);
    if (*end == 'K' || *end == 'k') shift = 10;
    else if (*end == 'M' || *end == 'm') shift = 20;
    else if (*end == 'G' || *end == 'g') shift = 30;
    else if (*end) die("invalid granularity '%s'", s);
    if (shift && end[1])
        die("invalid granularity '%s'", s);
    if (v > (0xffffffffull >> shift))
        die("granularity '%s' is too large", s);
    return v << shift;
}

/* Build the request line for @argv (the command and its operands). */
static void build(struct jbuf *b, int argc, char **argv, const char *gran, bool disabled)
{
    static const char *const one_bitmap[] = { "bitmap-add", "bitmap-remove", "bitmap-clear",
                                              "bitmap-enable", "bitmap-disable", NULL };
    const char *cmd = argv[0];
    bool bm = false;

    if (strcmp(cmd, "raw") == 0) {
        if (argc != 2)
            die("raw takes one JSON argument");
        jb_cstr(b, argv[1]);
        jb_cstr(b, "\n");
        return;
    }
    for (int i = 0; one_bitmap[i]; i++)
        bm |= strcmp(cmd, one_bitmap[i]) == 0;
    if (strcmp(cmd, "stats") == 0) {
        if (argc != 1)
            die("stats takes no arguments");
    } else if (strcmp(cmd, "bitmap-list") == 0) {
        if (argc != 2)
            die("bitmap-list takes EXPORT");
    } else if (bm) {
        if (argc != 3)
            die("%s takes EXPORT NAME", cmd);
    } else {
        die("unknown command '%s' (see --help)", cmd);
    }
    if ((gran || disabled) && strcmp(cmd, "bitmap-add") != 0)
        die("-g and --disabled go with bitmap-add");
    jb_cstr(b, "{\"cmd\":");
    jb_str(b, cmd);
    if (argc >= 2) {
        jb_key(b, "export", false);
        jb_str(b, argv[1]);
    }
    if (argc >= 3) {
        jb_key(b, "name", false);
        jb_str(b, argv[2]);
    }
    if (gran) {
        jb_key(b, "granularity", false);
        jb_u64(b, parse_size(gran));
    }
    if (disabled)
        jb_cstr(b, ",\"disabled\":true");
    jb_cstr(b, "}\n");
}

static int connect_to(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd;

    if (strlen(path) >= sizeof(sa.sun_path))
        die("socket path '%s' is too long", path);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        die("cannot connect to '%s': %s", path, strerror(errno));
    return fd;
}

/* CLOCK_MONOTONIC, in seconds. */
static double now_mono(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Milliseconds left until @deadline (now_mono seconds), at least 0. */
static int ms_left(double deadline)
{
    double now = now_mono();

    return now >= deadline ? 0 : (int)((deadline - now) * 1000) + 1;
}

/* Wait for @events on @fd until @deadline. */
static void wait_for(int fd, short events, double deadline)
{
    struct pollfd p = { .fd = fd, .events = events };
    int r;

    do
        r = poll(&p, 1, ms_left(deadline));
    while (r < 0 && errno == EINTR);
    if (r < 0)
        die("poll: %s", strerror(errno));
    if (r == 0)
        die("no reply within the timeout");
}

/* Send @b, then read the reply line into @reply (@max bytes); returns its length. */
static size_t exchange(int fd, const struct jbuf *b, char *reply, size_t max, double deadline)
{
    size_t off = 0, got = 0;

    while (off < b->len) {
        ssize_t n;
        wait_for(fd, POLLOUT, deadline);
        n = send(fd, b->p + off, b->len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n < 0)
            die("send: %s", strerror(errno));
        off += (size_t)n;
    }
    for (;;) {
        ssize_t n;
        wait_for(fd, POLLIN, deadline);
        n = recv(fd, reply + got, max - got, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n < 0)
            die("recv: %s", strerror(errno));
        if (n == 0)
            die("the server closed the connection without a reply");
        got += (size_t)n;
        if (memchr(reply + got - (size_t)n, '\n', (size_t)n))
            return (size_t)((char *)memchr(reply, '\n', got) - reply);
        if (got == max)
            die("reply longer than %zu bytes", max);
    }
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "socket", required_argument, NULL, 's' },
        { "timeout", required_argument, NULL, 't' },
        { "granularity", required_argument, NULL, 'g' },
        { "disabled", no_argument, NULL, 'd' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *path = NULL, *gran = NULL;
    bool disabled = false;
    double timeout = 30;
    struct jbuf b = { .max = 64 * 1024 };
    struct json_obj o;
    const struct json_member *ok;
    char *reply, *arena, err[128];
    size_t len;
    int ch, fd;

    while ((ch = getopt_long(argc, argv, "s:t:g:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 's': path = optarg; break;
        case 't':
            timeout = strtod(optarg, NULL);
            if (!(timeout > 0))
                die("invalid timeout '%s'", optarg);
            break;
        case 'g': gran = optarg; break;
        case 'd': disabled = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!path || optind >= argc) {
        usage(stderr);
        return 2;
    }
    build(&b, argc - optind, argv + optind, gran, disabled);
    if (b.overflow)
        die("request too long");
    reply = malloc(MAX_REPLY);
    arena = malloc(MAX_REPLY);
    if (!reply || !arena)
        die("out of memory");
    fd = connect_to(path);
    len = exchange(fd, &b, reply, MAX_REPLY, now_mono() + timeout);
    close(fd);
    printf("%.*s\n", (int)len, reply);
    if (json_parse_object(reply, len, &o, arena, MAX_REPLY, err, sizeof(err)) < 0)
        die("the reply is not a JSON object: %s", err);
    ok = json_get(&o, "ok");
    if (!ok || ok->type != JSON_BOOL)
        die("the reply has no \"ok\"");
    ch = ok->b ? 0 : 1;
    free(reply);
    free(arena);
    jb_free(&b);
    return ch;
}
