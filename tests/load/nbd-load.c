/*
 * nbd-load.c - many NBD clients in one process, on libnbd's aio API.
 *
 *   nbd-load -u SOCKET [--active N] [--idle M] [--seconds S] [--region BYTES]
 *            [--depth D] [--seed SEED] [--server-pid PID] [--expect FILE]
 *
 * 1. Connects M idle and N active clients (a bounded number handshaking at a
 *    time, so that the listen backlog never overflows) and waits until all of
 *    them have finished the handshake.
 * 2. For S seconds every active client keeps up to D requests in flight on
 *    its own region (client i owns [i * BYTES, (i + 1) * BYTES)): writes of
 *    random data, write-zeroes, flushes and reads.  A shadow copy of each
 *    region is kept; every read is compared with it.  Requests of one client
 *    never overlap while in flight, so the shadow is exact.  The idle clients
 *    send nothing, but stay in the poll set: a server that drops one is seen.
 * 3. Every active client flushes and reads back its whole region; every idle
 *    client reads 4 KiB of some active region (proof that it is still served).
 * 4. All disconnect; with --expect, the expected contents of the whole export
 *    (the shadows, zeroes elsewhere) are written to FILE as a raw image, so
 *    that the caller can compare it with the image once the server has exited.
 *
 * With --server-pid, the server's VmRSS after the connect phase and its
 * VmHWM at the end are printed ("server-rss-kib-connected N", "server-hwm-kib
 * N").  Any error, mismatch, lost connection or deadline exceeded prints the
 * cause and exits 1; exit 0 means every check passed.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>

#define MAX_DEPTH 8
#define MAX_IO (64 * 1024)
#define SECTOR 512
#define IDLE_READ 4096
#define CONNECTING_AT_ONCE 32    /* below the server's listen backlog (128) */
#define CONNECT_DEADLINE 120.0   /* seconds for the whole connect phase */
#define DRAIN_DEADLINE 60.0      /* seconds for in-flight requests to finish */
#define VERIFY_DEADLINE 120.0    /* seconds for the final read-back */

enum op_kind { OP_NONE, OP_WRITE, OP_ZERO, OP_FLUSH, OP_READ, OP_VERIFY, OP_IDLE_READ };

struct op {
    enum op_kind kind;
    uint64_t off;          /* within the client's region (or the export, OP_IDLE_READ) */
    uint32_t len;
    bool done;
    int err;               /* errno from the completion callback */
    uint8_t *buf;          /* MAX_IO bytes */
};

struct client {
    struct nbd_handle *h;
    unsigned idx;
    bool active;
    bool connecting;
    bool ready;
    bool closed;
    uint64_t base;         /* region start in the export */
    uint8_t *shadow;       /* expected region contents (active clients) */
    struct op ops[MAX_DEPTH];
    unsigned inflight;
    uint64_t verify_next;  /* next offset of the final read-back */
    uint64_t rng;
};

static struct client *clients;
static unsigned n_active = 200, n_idle = 1000, n_total;
static unsigned depth = 2;
static double seconds = 30;
static uint64_t region = 256 * 1024;
static uint64_t seed;
static long server_pid;
static const char *sock_path, *expect_path;

static struct {
    uint64_t writes, zeroes, flushes, reads, bytes_written, bytes_read;
} stats;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "nbd-load: FAIL: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    exit(1);
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* xorshift64*: a fast generator; the seed is printed so a run can be replayed
 * as far as the interleaving allows. */
static uint64_t rnd(uint64_t *s)
{
    uint64_t x = *s;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void fill_random(uint64_t *s, uint8_t *buf, size_t len)
{
    size_t i;

    for (i = 0; i + 8 <= len; i += 8) {
        uint64_t v = rnd(s);
        memcpy(buf + i, &v, 8);
    }
    for (; i < len; i++)
        buf[i] = (uint8_t)rnd(s);
}

/* The server's /proc status field @key in KiB, or -1. */
static long proc_kib(const char *key)
{
    char path[64], line[256];
    size_t klen = strlen(key);
    long v = -1;
    FILE *f;

    if (!server_pid)
        return -1;
    snprintf(path, sizeof(path), "/proc/%ld/status", server_pid);
    f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            v = strtol(line + klen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

static const char *kind_name(enum op_kind k)
{
    switch (k) {
    case OP_WRITE: return "write";
    case OP_ZERO: return "write-zeroes";
    case OP_FLUSH: return "flush";
    case OP_READ: return "read";
    case OP_VERIFY: return "read-back";
    case OP_IDLE_READ: return "idle read";
    default: return "?";
    }
}

/* ---- Completion --------------------------------------------------------- */

/* Why the callback only records: libnbd calls it from inside notify_read /
 * notify_write, and the main loop is the one place that submits and checks. */
static int on_complete(void *user_data, int *error)
{
    struct op *o = user_data;

    o->done = true;
    o->err = *error;
    return 1;   /* retire the command */
}

static void report_mismatch(struct client *cl, struct op *o, uint64_t base, const uint8_t *want)
{
    uint32_t i;

    for (i = 0; i < o->len && o->buf[i] == want[i]; i++)
        ;
    die("client %u: %s of %" PRIu32 " bytes at export offset %" PRIu64
        ": byte %" PRIu32 " (offset %" PRIu64 ") is 0x%02x, expected 0x%02x",
        cl->idx, kind_name(o->kind), o->len, base + o->off, i, base + o->off + i,
        o->buf[i], want[i]);
}

/* Check one finished request and apply it to the shadow. */
static void finish_op(struct client *cl, struct op *o)
{
    if (o->err)
        die("client %u: %s of %" PRIu32 " bytes at export offset %" PRIu64 " failed: %s",
            cl->idx, kind_name(o->kind), o->len, cl->base + o->off, strerror(o->err));
    switch (o->kind) {
    case OP_WRITE:
        /* Why the shadow changes only now: no overlapping request was in
         * flight, so nothing could have read this range in between. */
        memcpy(cl->shadow + o->off, o->buf, o->len);
        stats.writes++;
        stats.bytes_written += o->len;
        break;
    case OP_ZERO:
        memset(cl->shadow + o->off, 0, o->len);
        stats.zeroes++;
        break;
    case OP_FLUSH:
        stats.flushes++;
        break;
    case OP_READ:
    case OP_VERIFY:
        if (memcmp(o->buf, cl->shadow + o->off, o->len) != 0)
            report_mismatch(cl, o, cl->base, cl->shadow + o->off);
        stats.reads++;
        stats.bytes_read += o->len;
        break;
    case OP_IDLE_READ: {
        struct client *owner = &clients[n_idle + (cl->idx % n_active)];

        if (memcmp(o->buf, owner->shadow + o->off, o->len) != 0)
            report_mismatch(cl, o, owner->base, owner->shadow + o->off);
        stats.reads++;
        break;
    }
    default:
        die("client %u: completion of an unknown request", cl->idx);
    }
    o->kind = OP_NONE;
    o->done = false;
    cl->inflight--;
}

static void reap(struct client *cl)
{
    for (unsigned i = 0; i < MAX_DEPTH; i++)
        if (cl->ops[i].kind != OP_NONE && cl->ops[i].done)
            finish_op(cl, &cl->ops[i]);
}

/* ---- Submission --------------------------------------------------------- */

static struct op *free_slot(struct client *cl)
{
    for (unsigned i = 0; i < depth; i++)
        if (cl->ops[i].kind == OP_NONE)
            return &cl->ops[i];
    return NULL;
}

static bool overlaps_inflight(struct client *cl, uint64_t off, uint32_t len)
{
    for (unsigned i = 0; i < MAX_DEPTH; i++) {
        struct op *o = &cl->ops[i];

        if (o->kind == OP_NONE || o->kind == OP_FLUSH)
            continue;
        if (off < o->off + o->len && o->off < off + len)
            return true;
    }
    return false;
}

static void submit(struct client *cl, struct op *o, enum op_kind kind, uint64_t off,
                   uint32_t len)
{
    nbd_completion_callback cb = { .callback = on_complete, .user_data = o };
    uint64_t where = kind == OP_IDLE_READ ? off : cl->base + off;
    int64_t cookie;

    o->kind = kind;
    o->off = off;
    o->len = len;
    o->done = false;
    o->err = 0;
    switch (kind) {
    case OP_WRITE:
        fill_random(&cl->rng, o->buf, len);
        cookie = nbd_aio_pwrite(cl->h, o->buf, len, where, cb, 0);
        break;
    case OP_ZERO:
        cookie = nbd_aio_zero(cl->h, len, where, cb, 0);
        break;
    case OP_FLUSH:
        cookie = nbd_aio_flush(cl->h, cb, 0);
        break;
    default:
        /* Why the buffer is scribbled first: a short read must not pass. */
        memset(o->buf, 0xa5, len);
        cookie = nbd_aio_pread(cl->h, o->buf, len, where, cb, 0);
        break;
    }
    if (cookie < 0)
        die("client %u: submitting %s: %s", cl->idx, kind_name(kind), nbd_get_error());
    cl->inflight++;
}

/* Keep the active client's queue full with random, non-overlapping requests. */
static void feed(struct client *cl)
{
    struct op *o;

    while ((o = free_slot(cl)) != NULL) {
        unsigned pick = rnd(&cl->rng) % 100;
        uint32_t sectors = 1 + rnd(&cl->rng) % (MAX_IO / SECTOR);
        uint32_t len = sectors * SECTOR;
        uint64_t off;
        int tries;

        if (len > region)
            len = (uint32_t)region;
        if (pick < 3) {
            submit(cl, o, OP_FLUSH, 0, 0);
            continue;
        }
        for (tries = 0; tries < 8; tries++) {
            off = (rnd(&cl->rng) % ((region - len) / SECTOR + 1)) * SECTOR;
            if (!overlaps_inflight(cl, off, len))
                break;
        }
        if (tries == 8)
            return;   /* crowded: try again after a completion */
        if (pick < 50)
            submit(cl, o, OP_WRITE, off, len);
        else if (pick < 60)
            submit(cl, o, OP_ZERO, off, len);
        else
            submit(cl, o, OP_READ, off, len);
    }
}

/* ---- Event loop --------------------------------------------------------- */

static struct pollfd *pfds;
static unsigned *pidx;

/* One poll round over every open handle; returns after events were handled
 * or @timeout_ms passed.  A handle that dies is fatal. */
static void poll_round(int timeout_ms)
{
    unsigned n = 0;

    for (unsigned i = 0; i < n_total; i++) {
        struct client *cl = &clients[i];
        unsigned dir;

        if (cl->closed || !cl->h)
            continue;
        if (nbd_aio_is_dead(cl->h) || nbd_aio_is_closed(cl->h)) {
            die("client %u (%s): connection lost: %s", i, cl->active ? "active" : "idle",
                nbd_get_error() ? nbd_get_error() : "closed by the server");
        }
        dir = nbd_aio_get_direction(cl->h);
        if (!dir)
            continue;
        pfds[n].fd = nbd_aio_get_fd(cl->h);
        if (pfds[n].fd < 0)
            continue;
        pfds[n].events = ((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
                         ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0);
        pfds[n].revents = 0;
        pidx[n] = i;
        n++;
    }
    if (poll(pfds, n, timeout_ms) < 0) {
        if (errno == EINTR)
            return;
        die("poll: %s", strerror(errno));
    }
    for (unsigned k = 0; k < n; k++) {
        struct client *cl = &clients[pidx[k]];
        short re = pfds[k].revents;
        int rc = 0;

        if (!re)
            continue;
        if (re & (POLLIN | POLLHUP | POLLERR))
            rc = nbd_aio_notify_read(cl->h);
        else if (re & POLLOUT)
            rc = nbd_aio_notify_write(cl->h);
        if (rc < 0)
            die("client %u (%s): %s", pidx[k], cl->active ? "active" : "idle", nbd_get_error());
    }
}

/* ---- Phases ------------------------------------------------------------- */

static void connect_all(void)
{
    double deadline = now() + CONNECT_DEADLINE;
    unsigned next = 0, ready = 0;
    int64_t size = -1;

    while (ready < n_total) {
        unsigned connecting = 0;

        for (unsigned i = 0; i < next; i++)
            connecting += clients[i].connecting;
        while (next < n_total && connecting < CONNECTING_AT_ONCE) {
            struct client *cl = &clients[next];

            cl->h = nbd_create();
            if (!cl->h)
                die("nbd_create: %s", nbd_get_error());
            if (nbd_aio_connect_unix(cl->h, sock_path) < 0)
                die("client %u: connect %s: %s", next, sock_path, nbd_get_error());
            cl->connecting = true;
            connecting++;
            next++;
        }
        poll_round(100);
        ready = 0;
        for (unsigned i = 0; i < next; i++) {
            struct client *cl = &clients[i];

            if (cl->connecting && !nbd_aio_is_connecting(cl->h) &&
                !nbd_aio_is_created(cl->h)) {
                if (!nbd_aio_is_ready(cl->h))
                    die("client %u: handshake failed: %s", i,
                        nbd_get_error() ? nbd_get_error() : "not ready after connecting");
                cl->connecting = false;
                cl->ready = true;
            }
            ready += cl->ready;
        }
        if (now() > deadline)
            die("only %u of %u clients finished the handshake within %.0f s", ready, n_total,
                CONNECT_DEADLINE);
    }
    size = nbd_get_size(clients[0].h);
    if (size < 0)
        die("nbd_get_size: %s", nbd_get_error());
    if ((uint64_t)size < n_active * region)
        die("export of %" PRId64 " bytes is smaller than %u regions of %" PRIu64, size,
            n_active, region);
}

static unsigned total_inflight(void)
{
    unsigned n = 0;

    for (unsigned i = 0; i < n_total; i++)
        n += clients[i].inflight;
    return n;
}

static void reap_all(void)
{
    for (unsigned i = 0; i < n_total; i++)
        if (clients[i].inflight)
            reap(&clients[i]);
}

static void drain(double limit, const char *what)
{
    double deadline = now() + limit;

    while (total_inflight()) {
        poll_round(100);
        reap_all();
        if (now() > deadline)
            die("%s: %u requests still in flight after %.0f s", what, total_inflight(), limit);
    }
}

static void run_load(void)
{
    double end = now() + seconds, last = now();

    while (now() < end) {
        for (unsigned i = n_idle; i < n_total; i++)
            feed(&clients[i]);
        poll_round(100);
        reap_all();
        if (now() - last >= 5) {
            last = now();
            printf("  %.0f s left: %" PRIu64 " writes, %" PRIu64 " zeroes, %" PRIu64
                   " flushes, %" PRIu64 " reads verified\n",
                   end - last, stats.writes, stats.zeroes, stats.flushes, stats.reads);
            fflush(stdout);
        }
    }
    drain(DRAIN_DEADLINE, "after the load phase");
}

/* Flush, then read every region back; idle clients read 4 KiB each. */
static void verify_all(void)
{
    double deadline = now() + VERIFY_DEADLINE;
    bool busy = true;

    for (unsigned i = n_idle; i < n_total; i++)
        submit(&clients[i], &clients[i].ops[0], OP_FLUSH, 0, 0);
    drain(DRAIN_DEADLINE, "final flush");

    for (unsigned i = 0; i < n_idle; i++) {
        struct client *cl = &clients[i];
        struct client *owner = &clients[n_idle + (i % n_active)];
        uint64_t off = 0;

        if (region >= IDLE_READ)
            off = (rnd(&cl->rng) % (region / IDLE_READ)) * IDLE_READ;
        /* The idle read compares with the owner's shadow: OP_IDLE_READ's
         * offset is relative to the owner's region for finish_op. */
        submit(cl, &cl->ops[0], OP_IDLE_READ, owner->base + off,
               (uint32_t)(region < IDLE_READ ? region : IDLE_READ));
        cl->ops[0].off = off;
    }
    while (busy) {
        busy = false;
        for (unsigned i = n_idle; i < n_total; i++) {
            struct client *cl = &clients[i];
            struct op *o;

            while (cl->verify_next < region && (o = free_slot(cl)) != NULL) {
                uint64_t len = region - cl->verify_next;

                if (len > MAX_IO)
                    len = MAX_IO;
                submit(cl, o, OP_VERIFY, cl->verify_next, (uint32_t)len);
                cl->verify_next += len;
            }
            if (cl->verify_next < region)
                busy = true;
        }
        if (total_inflight())
            busy = true;
        poll_round(100);
        reap_all();
        if (now() > deadline)
            die("final read-back not done after %.0f s", VERIFY_DEADLINE);
    }
}

static void disconnect_all(void)
{
    double deadline = now() + DRAIN_DEADLINE;
    unsigned open;

    for (unsigned i = 0; i < n_total; i++)
        if (nbd_aio_disconnect(clients[i].h, 0) < 0)
            die("client %u: disconnect: %s", i, nbd_get_error());
    do {
        open = 0;
        for (unsigned i = 0; i < n_total; i++) {
            struct client *cl = &clients[i];

            if (cl->closed)
                continue;
            if (nbd_aio_is_closed(cl->h) || nbd_aio_is_dead(cl->h)) {
                cl->closed = true;
                continue;
            }
            open++;
        }
        if (open) {
            unsigned n = 0;

            for (unsigned i = 0; i < n_total; i++) {
                struct client *cl = &clients[i];
                unsigned dir;

                if (cl->closed)
                    continue;
                dir = nbd_aio_get_direction(cl->h);
                pfds[n].fd = nbd_aio_get_fd(cl->h);
                pfds[n].events = ((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
                                 ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0);
                pfds[n].revents = 0;
                pidx[n++] = i;
            }
            if (poll(pfds, n, 100) < 0 && errno != EINTR)
                die("poll: %s", strerror(errno));
            for (unsigned k = 0; k < n; k++) {
                struct client *cl = &clients[pidx[k]];

                if (pfds[k].revents & (POLLIN | POLLHUP | POLLERR))
                    nbd_aio_notify_read(cl->h);
                else if (pfds[k].revents & POLLOUT)
                    nbd_aio_notify_write(cl->h);
            }
        }
        if (now() > deadline)
            die("%u connections still open %.0f s after NBD_CMD_DISC", open, DRAIN_DEADLINE);
    } while (open);
    for (unsigned i = 0; i < n_total; i++) {
        nbd_close(clients[i].h);
        clients[i].h = NULL;
    }
}

static void write_expect(int64_t size)
{
    FILE *f = fopen(expect_path, "wb");

    if (!f)
        die("%s: %s", expect_path, strerror(errno));
    for (unsigned i = 0; i < n_active; i++)
        if (fwrite(clients[n_idle + i].shadow, 1, region, f) != region)
            die("writing %s: %s", expect_path, strerror(errno));
    if (fflush(f) || ftruncate(fileno(f), size) < 0 || fclose(f))
        die("writing %s: %s", expect_path, strerror(errno));
}

static void usage(void)
{
    fprintf(stderr, "usage: nbd-load -u SOCKET [--active N] [--idle M] [--seconds S] "
                    "[--region BYTES] [--depth D] [--seed SEED] [--server-pid PID] "
                    "[--expect FILE]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "unix", required_argument, NULL, 'u' },
        { "active", required_argument, NULL, 'a' },
        { "idle", required_argument, NULL, 'i' },
        { "seconds", required_argument, NULL, 't' },
        { "region", required_argument, NULL, 'r' },
        { "depth", required_argument, NULL, 'd' },
        { "seed", required_argument, NULL, 's' },
        { "server-pid", required_argument, NULL, 'p' },
        { "expect", required_argument, NULL, 'e' },
        { NULL, 0, NULL, 0 },
    };
    double t0, t1;
    int64_t size;
    long rss;
    int c;

    seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    while ((c = getopt_long(argc, argv, "u:", longopts, NULL)) != -1) {
        switch (c) {
        case 'u': sock_path = optarg; break;
        case 'a': n_active = (unsigned)strtoul(optarg, NULL, 0); break;
        case 'i': n_idle = (unsigned)strtoul(optarg, NULL, 0); break;
        case 't': seconds = strtod(optarg, NULL); break;
        case 'r': region = strtoull(optarg, NULL, 0); break;
        case 'd': depth = (unsigned)strtoul(optarg, NULL, 0); break;
        case 's': seed = strtoull(optarg, NULL, 0); break;
        case 'p': server_pid = strtol(optarg, NULL, 10); break;
        case 'e': expect_path = optarg; break;
        default: usage();
        }
    }
    if (!sock_path || optind != argc || n_active == 0 || depth == 0 || depth > MAX_DEPTH ||
        region < SECTOR || region % SECTOR)
        usage();
    n_total = n_active + n_idle;
    printf("seed %" PRIu64 ": %u active clients (depth %u, %" PRIu64
           "-byte regions), %u idle, %.0f s\n",
           seed, n_active, depth, region, n_idle, seconds);
    fflush(stdout);

    clients = calloc(n_total, sizeof(*clients));
    pfds = calloc(n_total, sizeof(*pfds));
    pidx = calloc(n_total, sizeof(*pidx));
    if (!clients || !pfds || !pidx)
        die("out of memory");
    /* Idle clients first: they connect before the load starts and sit idle
     * through all of it. */
    for (unsigned i = 0; i < n_total; i++) {
        struct client *cl = &clients[i];

        cl->idx = i;
        cl->active = i >= n_idle;
        cl->rng = seed * 0x9E3779B97F4A7C15ULL + i + 1;
        if (!cl->rng)
            cl->rng = 1;
        for (unsigned k = 0; k < MAX_DEPTH; k++) {
            if (k >= (cl->active ? depth : 1))
                continue;
            /* Idle clients only ever read IDLE_READ bytes, through ops[0]. */
            cl->ops[k].buf = malloc(cl->active ? MAX_IO : IDLE_READ);
            if (!cl->ops[k].buf)
                die("out of memory");
        }
        if (cl->active) {
            cl->base = (uint64_t)(i - n_idle) * region;
            /* The export starts out as zeroes (a fresh image). */
            cl->shadow = calloc(1, region);
            if (!cl->shadow)
                die("out of memory");
        }
    }

    t0 = now();
    connect_all();
    t1 = now();
    printf("connected %u clients in %.1f s\n", n_total, t1 - t0);
    rss = proc_kib("VmRSS");
    if (rss >= 0)
        printf("server-rss-kib-connected %ld\n", rss);
    fflush(stdout);

    run_load();
    printf("load done: %" PRIu64 " writes (%" PRIu64 " MiB), %" PRIu64 " zeroes, %" PRIu64
           " flushes, %" PRIu64 " reads verified (%" PRIu64 " MiB)\n",
           stats.writes, stats.bytes_written >> 20, stats.zeroes, stats.flushes, stats.reads,
           stats.bytes_read >> 20);
    fflush(stdout);
    if (stats.writes < n_active || stats.reads < n_active)
        die("too little I/O done: %" PRIu64 " writes, %" PRIu64 " reads", stats.writes,
            stats.reads);

    verify_all();
    printf("read back %u regions and %u idle reads: all match\n", n_active, n_idle);
    rss = proc_kib("VmHWM");
    if (rss >= 0)
        printf("server-hwm-kib %ld\n", rss);
    fflush(stdout);

    size = nbd_get_size(clients[0].h);
    disconnect_all();
    if (expect_path)
        write_expect(size);
    printf("ok\n");
    return 0;
}
