/*
 * qed-pattern.c - helper for the QEMU interop tests: drives libqed from the
 * command line so that shell scripts can compare its results with qemu-img
 * and qemu-io.
 *
 *   qed-pattern create IMG SIZE CLUSTER TABLE [BACKING raw|qed]
 *   qed-pattern mkraw FILE SIZE SEED
 *       a raw file of SIZE random bytes (deterministic for SEED)
 *   qed-pattern write IMG SHADOW SEED NOPS
 *       NOPS random steps through the library: writes (some FUA, some
 *       unaligned, some spanning L2 tables), write zeroes (some aligned,
 *       some NO_HOLE), discards and flushes, several requests in flight at
 *       once on disjoint ranges.  The same bytes go to the raw SHADOW file,
 *       which must start with the image's contents (zeros, or a copy of the
 *       backing file).  Discarded clusters may read as zeros or as their old
 *       contents: the range is read back, checked to be one of the two, and
 *       the shadow takes what was read.
 *   qed-pattern read IMG OUT       the whole virtual disk, as a raw file
 *   qed-pattern compare IMG RAW    library-only comparison (exit 1 on a difference)
 *   qed-pattern check IMG          qed_check; exit 0 clean, 2 corruption, 3 leaks
 *   qed-pattern map IMG            block status as `qemu-img map --output=json`
 *
 * Everything goes through the public API (qed.h) with the default engine.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ev.h>

#include "qed.h"

#define MAX_BATCH 8
#define MAP_EXT 1024

static struct ev_loop *loop;
static qed_aio *aio;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("qed-pattern: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static uint64_t parse_u64(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end)
        die("bad number '%s'", s);
    return v;
}

static void engine_init(void)
{
    int r;
    loop = ev_default_loop(0);
    if (!loop)
        die("cannot create the event loop");
    r = qed_aio_new(loop, QED_AIO_AUTO, &aio);
    if (r < 0)
        die("cannot create the I/O engine: %s", strerror(-r));
}

static qed_image *open_image(const char *path, bool ro)
{
    struct qed_open_opts o = {.read_only = ro};
    char err[1024] = "";
    qed_image *img = NULL;
    int r = qed_open(aio, path, &o, &img, err, sizeof(err));
    if (r < 0)
        die("%s", err[0] ? err : strerror(-r));
    return img;
}

static void close_image(qed_image *img)
{
    int r = qed_close(img);
    if (r < 0)
        die("closing the image failed: %s", strerror(-r));
}

/* Deterministic random numbers (xorshift64*). */
static uint64_t rng_state;

static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static uint64_t rnd_below(uint64_t n)
{
    return n ? rnd() % n : 0;
}

static void rnd_fill(uint8_t *p, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = rnd();
        memcpy(p + i, &v, 8);
    }
    for (; i < n; i++)
        p[i] = (uint8_t)rnd();
}

static void pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("pread: %s", strerror(errno));
        if (n == 0) {
            memset(p, 0, len);
            return;
        }
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
}

static void pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("pwrite: %s", strerror(errno));
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
}

/* ---- create, mkraw ---- */

static int cmd_create(int argc, char **argv)
{
    struct qed_create_opts o = {0};
    char err[1024] = "";
    int r;

    if (argc != 5 && argc != 7)
        die("usage: create IMG SIZE CLUSTER TABLE [BACKING raw|qed]");
    o.size = parse_u64(argv[2]);
    o.cluster_size = (uint32_t)parse_u64(argv[3]);
    o.table_size = (uint32_t)parse_u64(argv[4]);
    if (argc == 7) {
        o.backing_file = argv[5];
        o.backing_fmt = strcmp(argv[6], "raw") == 0   ? QED_BACKING_RAW
                        : strcmp(argv[6], "qed") == 0 ? QED_BACKING_QED
                                                      : QED_BACKING_PROBE;
    }
    r = qed_create(argv[1], &o, err, sizeof(err));
    if (r < 0)
        die("%s", err[0] ? err : strerror(-r));
    return 0;
}

static int cmd_mkraw(int argc, char **argv)
{
    uint64_t size, done = 0;
    uint8_t *buf = malloc(1 << 20);
    int fd;

    if (argc != 4)
        die("usage: mkraw FILE SIZE SEED");
    size = parse_u64(argv[2]);
    rng_state = parse_u64(argv[3]) * 0x9E3779B97F4A7C15ull + 1;
    fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || !buf)
        die("%s: %s", argv[1], strerror(errno));
    while (done < size) {
        size_t n = size - done < (1 << 20) ? (size_t)(size - done) : (1 << 20);
        rnd_fill(buf, n);
        pwrite_full(fd, buf, n, done);
        done += n;
    }
    close(fd);
    free(buf);
    return 0;
}

/* ---- write ---- */

enum op { OP_WRITE, OP_WZERO, OP_DISCARD, OP_FLUSH };

struct preq {
    enum op op;
    uint64_t off, len;
    unsigned flags;
    uint8_t *buf;
    bool done;
    int ret;
};

static void preq_done(void *opaque, int ret)
{
    struct preq *q = opaque;
    q->done = true;
    q->ret = ret;
}

struct geometry {
    uint64_t size, cs, coverage, backing_end;
};

/* An offset that likes boundaries: clusters, L2 tables, the backing end. */
static uint64_t pick_offset(const struct geometry *g)
{
    uint64_t base, jitter = rnd_below(2 * 4096);
    switch (rnd_below(6)) {
    case 0: /* around a cluster boundary */
        base = (rnd_below(g->size / g->cs) + 1) * g->cs;
        break;
    case 1: /* around an L2 table boundary */
        base = g->coverage < g->size ? (rnd_below(g->size / g->coverage) + 1) * g->coverage
                                     : rnd_below(g->size);
        break;
    case 2: /* around the end of the backing file */
        base = g->backing_end ? g->backing_end : rnd_below(g->size);
        break;
    default:
        base = rnd_below(g->size);
        jitter = 4096;
        break;
    }
    base = base + 4096 > jitter ? base + 4096 - jitter : 0;
    if (rnd_below(3))
        base &= ~(uint64_t)511; /* mostly sector-aligned, sometimes not */
    return base >= g->size ? g->size - 1 : base;
}

static uint64_t pick_length(const struct geometry *g)
{
    uint64_t len;
    switch (rnd_below(8)) {
    case 0:
        len = 1 + rnd_below(600);
        break;
    case 1:
        len = 512 * (1 + rnd_below(16));
        break;
    case 2:
        len = g->cs;
        break;
    case 3:
        /* spans L2 tables when they are small; bounded for big clusters */
        len = g->coverage + rnd_below(g->cs) + 1;
        if (len > 8 << 20)
            len = (8 << 20) - rnd_below(4096);
        break;
    default:
        len = 1 + rnd_below(3 * g->cs);
        if (len > 3 << 20)
            len = 1 + rnd_below(3 << 20);
        break;
    }
    return len;
}

static bool overlaps(const struct preq *a, const struct preq *b)
{
    return a->off < b->off + b->len && b->off < a->off + a->len;
}

static void run_batch(struct preq *q, int n)
{
    for (;;) {
        bool all = true;
        for (int i = 0; i < n; i++)
            all &= q[i].done;
        if (all)
            break;
        ev_run(loop, EVRUN_ONCE);
    }
}

static int cmd_write(int argc, char **argv)
{
    struct qed_info info;
    struct geometry g;
    qed_image *img;
    uint64_t seed, nops;
    int sfd;
    struct stat st;
    uint64_t counts[4] = {0};

    if (argc != 5)
        die("usage: write IMG SHADOW SEED NOPS");
    seed = parse_u64(argv[3]);
    nops = parse_u64(argv[4]);
    rng_state = seed * 0x9E3779B97F4A7C15ull + 7;
    printf("qed-pattern write %s: seed %" PRIu64 "\n", argv[1], seed);
    engine_init();
    img = open_image(argv[1], false);
    qed_get_info(img, &info);
    sfd = open(argv[2], O_RDWR);
    if (sfd < 0 || fstat(sfd, &st) < 0)
        die("%s: %s", argv[2], strerror(errno));
    if ((uint64_t)st.st_size != info.size)
        die("%s is %lld bytes, the image %" PRIu64, argv[2], (long long)st.st_size, info.size);
    g.size = info.size;
    g.cs = info.cluster_size;
    g.coverage = (uint64_t)info.table_size * info.cluster_size / 8 * info.cluster_size;
    g.backing_end = 0;
    if (info.backing_path[0]) {
        struct stat bst;
        if (stat(info.backing_path, &bst) == 0 && strcmp(info.backing_format, "raw") == 0)
            g.backing_end = (uint64_t)bst.st_size;
    }

    for (uint64_t step = 0; step < nops;) {
        struct preq q[MAX_BATCH];
        int n = 0, want = 1 + (int)rnd_below(MAX_BATCH);

        memset(q, 0, sizeof(q));
        while (n < want && step < nops) {
            struct preq *p = &q[n];
            unsigned pick = (unsigned)rnd_below(100);
            p->op = pick < 60 ? OP_WRITE : pick < 80 ? OP_WZERO : pick < 92 ? OP_DISCARD : OP_FLUSH;
            p->off = pick_offset(&g);
            p->len = pick_length(&g);
            if (p->op == OP_WZERO && rnd_below(2)) {
                /* whole clusters: zero entries */
                p->off = p->off / g.cs * g.cs;
                p->len = (1 + rnd_below(4)) * g.cs;
            }
            if (p->off + p->len > g.size)
                p->len = g.size - p->off;
            if (p->op == OP_FLUSH)
                p->off = p->len = 0;
            /* Discards alone: a punch may race with a write to the same cluster. */
            if (p->op == OP_DISCARD && n > 0)
                break;
            /* Requests in flight together touch disjoint bytes, so the
             * result does not depend on their order. */
            bool clash = false;
            for (int i = 0; i < n; i++)
                clash |= overlaps(p, &q[i]);
            if (clash)
                break;
            if (p->op == OP_WRITE) {
                p->buf = malloc(p->len ? p->len : 1);
                if (!p->buf)
                    die("out of memory");
                rnd_fill(p->buf, p->len);
                if (rnd_below(8) == 0)
                    p->flags = QED_REQ_FUA;
            } else if (p->op == OP_WZERO) {
                unsigned f = (unsigned)rnd_below(6);
                p->flags = f == 0 ? QED_REQ_NO_HOLE : f == 1 ? QED_REQ_FUA : 0;
            }
            n++;
            step++;
            if (p->op == OP_DISCARD)
                break;
        }
        if (n == 0)
            continue;
        for (int i = 0; i < n; i++) {
            struct preq *p = &q[i];
            int rc = 0;
            switch (p->op) {
            case OP_WRITE:
                rc = qed_write(img, p->off, p->buf, p->len, p->flags, preq_done, p);
                break;
            case OP_WZERO:
                rc = qed_write_zeroes(img, p->off, p->len, p->flags, preq_done, p);
                break;
            case OP_DISCARD:
                rc = qed_discard(img, p->off, p->len, 0, preq_done, p);
                break;
            case OP_FLUSH:
                rc = qed_flush(img, preq_done, p);
                break;
            }
            if (rc < 0)
                die("submitting op %d at %" PRIu64 "+%" PRIu64 ": %s", p->op, p->off, p->len,
                    strerror(-rc));
            counts[p->op]++;
        }
        run_batch(q, n);
        for (int i = 0; i < n; i++) {
            struct preq *p = &q[i];
            if (p->ret < 0)
                die("op %d at %" PRIu64 "+%" PRIu64 " failed: %s", p->op, p->off, p->len,
                    strerror(-p->ret));
            if (p->op == OP_WRITE) {
                pwrite_full(sfd, p->buf, p->len, p->off);
            } else if (p->op == OP_WZERO) {
                uint8_t *z = calloc(1, p->len ? p->len : 1);
                pwrite_full(sfd, z, p->len, p->off);
                free(z);
            } else if (p->op == OP_DISCARD && p->len) {
                /* Each cluster reads as zeros or as before; partial ones as before. */
                uint8_t *got = malloc(p->len), *old = malloc(p->len);
                if (!got || !old)
                    die("out of memory");
                if (qed_sync_read(img, p->off, got, p->len) < 0)
                    die("reading back a discard failed");
                pread_full(sfd, old, p->len, p->off);
                for (uint64_t pos = p->off; pos < p->off + p->len;) {
                    uint64_t cend = (pos / g.cs + 1) * g.cs, end = p->off + p->len;
                    uint64_t l = (cend < end ? cend : end) - pos, i0 = pos - p->off;
                    bool whole = pos % g.cs == 0 && l == g.cs;
                    bool same = memcmp(got + i0, old + i0, l) == 0;
                    bool zero = true;
                    for (uint64_t b = 0; b < l && zero; b++)
                        zero = got[i0 + b] == 0;
                    if (!same && !(whole && zero))
                        die("after a discard of %" PRIu64 "+%" PRIu64 ", the bytes at %" PRIu64
                            " are neither their old contents nor a zeroed cluster",
                            p->off, p->len, pos);
                    pos += l;
                }
                pwrite_full(sfd, got, p->len, p->off);
                free(got);
                free(old);
            }
            free(p->buf);
        }
    }
    printf("  %" PRIu64 " writes, %" PRIu64 " write-zeroes, %" PRIu64 " discards, %" PRIu64
           " flushes (engine %s)\n",
           counts[OP_WRITE], counts[OP_WZERO], counts[OP_DISCARD], counts[OP_FLUSH],
           qed_aio_backend_name(aio));
    close(sfd);
    close_image(img);
    qed_aio_free(aio);
    return 0;
}

/* ---- read, compare ---- */

static int cmd_read(int argc, char **argv)
{
    const size_t chunk = 4 << 20;
    uint8_t *buf = malloc(chunk);
    qed_image *img;
    uint64_t size;
    int fd;

    if (argc != 3)
        die("usage: read IMG OUT");
    engine_init();
    img = open_image(argv[1], true);
    size = qed_size(img);
    fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || !buf)
        die("%s: %s", argv[2], strerror(errno));
    for (uint64_t off = 0; off < size; off += chunk) {
        size_t n = size - off < chunk ? (size_t)(size - off) : chunk;
        int r = qed_sync_read(img, off, buf, n);
        if (r < 0)
            die("%s: read at %" PRIu64 " failed: %s", argv[1], off, strerror(-r));
        pwrite_full(fd, buf, n, off);
    }
    if (ftruncate(fd, (off_t)size) < 0)
        die("ftruncate: %s", strerror(errno));
    close(fd);
    close_image(img);
    qed_aio_free(aio);
    free(buf);
    return 0;
}

static int cmd_compare(int argc, char **argv)
{
    const size_t chunk = 4 << 20;
    uint8_t *a = malloc(chunk), *b = malloc(chunk);
    qed_image *img;
    uint64_t size;
    struct stat st;
    int fd;

    if (argc != 3)
        die("usage: compare IMG RAW");
    engine_init();
    img = open_image(argv[1], true);
    size = qed_size(img);
    fd = open(argv[2], O_RDONLY);
    if (fd < 0 || fstat(fd, &st) < 0 || !a || !b)
        die("%s: %s", argv[2], strerror(errno));
    if ((uint64_t)st.st_size != size) {
        printf("Image size mismatch: %" PRIu64 " vs %lld\n", size, (long long)st.st_size);
        return 1;
    }
    for (uint64_t off = 0; off < size; off += chunk) {
        size_t n = size - off < chunk ? (size_t)(size - off) : chunk;
        int r = qed_sync_read(img, off, a, n);
        if (r < 0)
            die("%s: read at %" PRIu64 " failed: %s", argv[1], off, strerror(-r));
        pread_full(fd, b, n, off);
        for (size_t i = 0; i < n; i++)
            if (a[i] != b[i]) {
                printf("Content mismatch at offset %" PRIu64 "!\n", off + i);
                return 1;
            }
    }
    printf("Images are identical.\n");
    close(fd);
    close_image(img);
    qed_aio_free(aio);
    free(a);
    free(b);
    return 0;
}

/* ---- check ---- */

static int cmd_check(int argc, char **argv)
{
    struct qed_open_opts o = {.read_only = true};
    struct qed_check_result res;
    char err[1024] = "";
    qed_image *img = NULL;
    int r;

    if (argc != 2)
        die("usage: check IMG");
    r = qed_open(NULL, argv[1], &o, &img, err, sizeof(err));
    if (r < 0)
        die("%s", err[0] ? err : strerror(-r));
    r = qed_check(img, false, &res);
    qed_close(img);
    if (r < 0)
        die("check failed: %s", strerror(-r));
    printf("%" PRIu64 " corruptions, %" PRIu64 " leaks, %" PRIu64 " check errors, %" PRIu64
           "/%" PRIu64 " clusters allocated\n",
           res.corruptions, res.leaks, res.check_errors, res.allocated_clusters,
           res.total_clusters);
    return res.check_errors ? 1 : res.corruptions ? 2 : res.leaks ? 3 : 0;
}

/* ---- map ---- */

static bool mergeable(const struct qed_extent *a, const struct qed_extent *b)
{
    return a->start + a->length == b->start && a->depth == b->depth &&
           a->present == b->present && a->zero == b->zero && a->data == b->data &&
           a->has_offset == b->has_offset && (!a->has_offset || a->offset + a->length == b->offset);
}

static void print_extent(const struct qed_extent *x, bool first)
{
    printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %u, \"present\": %s, "
           "\"zero\": %s, \"data\": %s",
           first ? "[" : ",\n", x->start, x->length, x->depth, x->present ? "true" : "false",
           x->zero ? "true" : "false", x->data ? "true" : "false");
    if (x->has_offset)
        printf(", \"offset\": %" PRIu64, x->offset);
    printf("}");
}

static int cmd_map(int argc, char **argv)
{
    struct qed_extent *ext = calloc(MAP_EXT, sizeof(*ext)), cur;
    bool have = false, first = true;
    qed_image *img;
    uint64_t pos = 0, size;

    if (argc != 2)
        die("usage: map IMG");
    engine_init();
    img = open_image(argv[1], true);
    size = qed_size(img);
    while (pos < size) {
        size_t n = 0;
        int r = qed_sync_block_status(img, pos, size - pos, ext, MAP_EXT, &n);
        if (r < 0)
            die("block status at %" PRIu64 " failed: %s", pos, strerror(-r));
        if (n == 0)
            die("block status at %" PRIu64 " returned no extent", pos);
        for (size_t i = 0; i < n; i++) {
            if (ext[i].start != pos)
                die("extent at %" PRIu64 " does not start where the last ended (%" PRIu64 ")",
                    ext[i].start, pos);
            pos += ext[i].length;
            if (have && mergeable(&cur, &ext[i])) {
                cur.length += ext[i].length;
                continue;
            }
            if (have) {
                print_extent(&cur, first);
                first = false;
            }
            cur = ext[i];
            have = true;
        }
    }
    if (have)
        print_extent(&cur, first);
    printf("]\n");
    close_image(img);
    qed_aio_free(aio);
    free(ext);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        die("usage: qed-pattern create|mkraw|write|read|compare|check|map ...");
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(argv[1], "create") == 0)
        return cmd_create(argc - 1, argv + 1);
    if (strcmp(argv[1], "mkraw") == 0)
        return cmd_mkraw(argc - 1, argv + 1);
    if (strcmp(argv[1], "write") == 0)
        return cmd_write(argc - 1, argv + 1);
    if (strcmp(argv[1], "read") == 0)
        return cmd_read(argc - 1, argv + 1);
    if (strcmp(argv[1], "compare") == 0)
        return cmd_compare(argc - 1, argv + 1);
    if (strcmp(argv[1], "check") == 0)
        return cmd_check(argc - 1, argv + 1);
    if (strcmp(argv[1], "map") == 0)
        return cmd_map(argc - 1, argv + 1);
    die("unknown command '%s'", argv[1]);
}
