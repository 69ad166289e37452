/*
 * crash-sim.c - crash simulator: every power cut a workload could suffer,
 * reopened, repaired and checked.
 *
 * Recording
 * ---------
 * A workload runs through the library on the test I/O engine.  The engine's
 * observer sees every I/O just before it is performed; we log each WRITE (its
 * offset and a copy of its data), PUNCH and FSYNC in the order they are
 * performed.  Reads are not logged: they do not change the file.  For each
 * I/O we also note how many logged I/Os had been performed when it was
 * *submitted* (the observer scans the engine's held list), because an
 * fdatasync only covers writes that completed before it was called: a write
 * that finishes while the FSYNC is in flight may or may not be covered.
 *
 * Each library request (write, write-zeroes, discard, flush) is recorded with
 * its submission and completion positions, both in the I/O log ("how many
 * logged I/Os were performed") and on a logical clock of submissions and
 * completions (to order requests among themselves).
 *
 * Ways of running the I/Os (each without and with a raw backing file, with
 * 4 KiB clusters and table size 1 or 2 so that one L2 table covers 2 or 4 MiB
 * and the workload creates several of them):
 *   - auto: the engine performs them one at a time in submission order (the
 *     library's own test mode);
 *   - shuffle: held I/Os are completed in a seeded random order (newest first
 *     half the time) while new requests keep being submitted, which is what
 *     io_uring or the thread pool may do;
 *   - lagmeta: shuffle, but small metadata writes (L1/L2 entries, header)
 *     complete only when nothing else is held;
 *   - scripted: directed scenarios.  An allocating write runs until its L2
 *     entry write (or the L1 entry write of its new table) is held; then an
 *     overwrite of the same cluster is submitted (FUA, or followed by a
 *     flush) and run to completion while that entry write stays held.
 * The random workloads mix allocating writes (partial, whole-cluster,
 * unaligned across clusters), overwrites, write-zeroes (whole clusters,
 * partial, NO_HOLE), discards, FUA, flushes, batches of concurrent
 * allocating writes submitted at once (so that group commit stays covered),
 * allocations immediately followed by an overwrite of the same cluster and a
 * flush, and (auto mode) idle pauses that let the library clear NEED_CHECK.
 * The gcbatch workloads (auto, shuffle, lagmeta) are mostly batches of 3 to
 * 16 concurrent allocating writes into the same and different tables, so
 * that group commit batches of several runs form: crash points then fall
 * between the members' (sparse) data writes, the batch's file extension,
 * its flush and its L2 writes.  Each workload prints the library's group
 * commit counters; a gcbatch workload that formed no batch of more than one
 * run fails the run.
 *
 * Crash states
 * ------------
 * For crash point k (I/Os 0..k-1 performed), the durable horizon D is the
 * largest "submitted at" position of the FSYNCs among those I/Os: every write
 * or punch before D is on disk.  The ones in [D, k) each may or may not have
 * reached the disk, and one that did may be torn: only some of its 512-byte
 * sectors (file offsets) applied.  The file is as long as the original file
 * and the end of every applied write.  Several random states are built per
 * crash point, so that at least MIN_STATES_DEFAULT states are checked per run.
 *
 * Checks on each state, after qed_open() read-write (which repairs a
 * NEED_CHECK image):
 *   - open succeeds and qed_check() finds no corruption (leaks are allowed);
 *   - per 512-byte guest sector, the content read is allowed by the model:
 *     let d be the last request (in submission order) touching the sector that
 *     is guaranteed at k -- a write or write-zeroes that completed before a
 *     completed flush was submitted, or a FUA one that completed -- then the
 *     sector may hold d's content (initial content if there is no d: zeros or
 *     the backing data), or the content of any other request touching it that
 *     was submitted before the crash and did not complete before d started
 *     (a discard contributes zeros).  This covers both "guaranteed data reads
 *     back intact" and "no read returns data never written there".
 *   - on a sample of states with table size 2, `qemu-img check` on the
 *     repaired and closed image must exit 0 or 3 (3 = leaks only).
 * Touched sectors are read on every state; every FULL_READ_EVERY-th state
 * (and every sampled one) reads the whole disk, untouched sectors included.
 *
 * Replay: the seed is printed; CRASH_SEED=n repeats a run, CRASH_WORKLOAD=i
 * runs only workload i, CRASH_POINT=k checks only crash point k (each state's
 * randomness depends only on seed, workload, k and repetition).
 * CRASH_STATES=n changes the minimum number of states (default 10000).
 * CRASH_DUMP=1 prints each workload's I/O log and requests; CRASH_KEEP=1
 * keeps the scratch directory and each failing crash state (before repair).  The scripted
 * scenarios do not depend on the seed.
 *
 * Exit 0 when every state passes, 1 on a violation (with the seed, the crash
 * point, the sector and what it held), 77 when no scratch directory exists.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "qed-io-test.h"
#include "qed-image.h" /* group commit counters */
#include "qed.h"

#define MiB (UINT64_C(1024) * 1024)
#define SECTOR UINT64_C(512)
#define CS UINT64_C(4096)                /* cluster size of every workload */
#define SPC (CS / SECTOR)          /* sectors per cluster */
#define MIN_STATES_DEFAULT 10000
#define FULL_READ_EVERY 8          /* full-disk read on every 8th state */
#define QEMU_CHECK_EVERY 250       /* states of a qemu-sampled workload per qemu-img check */
#define MAX_REPS 64                /* random states per crash point, at most */
#define CLEAN_DELAY_MS 50          /* auto workloads' NEED_CHECK clean delay */
#define MAX_INFLIGHT 8             /* shuffle mode: requests in flight at most */
#define MAX_VIOLATIONS 2           /* per workload: print this many, then go on to the next */
#define SECTOR_MAGIC "CRASHSIM"
#define BACKING_MAGIC "BACKING!"

/* ---- Small helpers ---- */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "crash-sim: FATAL: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);

    if (!p)
        die("out of memory (%zu x %zu bytes)", n, sz);
    return p;
}

static void *xrealloc(void *p, size_t sz)
{
    p = realloc(p, sz ? sz : 1);
    if (!p)
        die("out of memory (%zu bytes)", sz);
    return p;
}

static uint64_t max64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

static uint64_t min64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* splitmix64: small, seedable, good enough for test randomness. */
static uint64_t rng_next(uint64_t *st)
{
    uint64_t z = (*st += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rng_below(uint64_t *st, uint64_t n)
{
    return n ? rng_next(st) % n : 0;
}

/* A state seed that depends only on its coordinates, for CRASH_POINT replays. */
static uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c, uint64_t d)
{
    uint64_t st = a ^ (b * 0x100000001b3ull) ^ (c << 20) ^ (d << 52);

    rng_next(&st);
    st ^= c * 0xff51afd7ed558ccdull + d;
    return rng_next(&st);
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t env_u64(const char *name, uint64_t def, bool *set)
{
    const char *v = getenv(name);
    char *end;
    unsigned long long x;

    if (set)
        *set = false;
    if (!v || !*v)
        return def;
    errno = 0;
    x = strtoull(v, &end, 0);
    if (errno || *end)
        die("%s=%s is not a number", name, v);
    if (set)
        *set = true;
    return x;
}

static int write_file(const char *path, const uint8_t *buf, uint64_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    uint64_t done = 0;

    if (fd < 0)
        return -errno;
    while (done < len) {
        ssize_t n = pwrite(fd, buf + done, len - done, (off_t)done);
        if (n < 0) {
            int e = errno;
            if (e == EINTR)
                continue;
            close(fd);
            return -e;
        }
        done += (uint64_t)n;
    }
    if (close(fd) < 0)
        return -errno;
    return 0;
}

/* Read the whole of @path into a new buffer of at least @cap bytes (zero-filled). */
static uint8_t *read_file(const char *path, uint64_t *len, uint64_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    uint8_t *buf;
    uint64_t done = 0;

    if (fd < 0 || fstat(fd, &st) < 0)
        die("%s: %s", path, strerror(errno));
    *len = (uint64_t)st.st_size;
    buf = xcalloc(1, max64(cap, *len));
    while (done < *len) {
        ssize_t n = pread(fd, buf + done, *len - done, (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("%s: short read", path);
        done += (uint64_t)n;
    }
    close(fd);
    return buf;
}

/* ---- The library's log: kept, shown only with a violation ---- */

#define LOG_KEEP 16
static char log_ring[LOG_KEEP][256];
static unsigned log_pos;

static void log_cb(enum qed_log_level level, const char *msg, void *opaque)
{
    (void)opaque;
    snprintf(log_ring[log_pos++ % LOG_KEEP], sizeof(log_ring[0]), "[%d] %s", (int)level, msg);
}

static void log_dump(void)
{
    unsigned n = log_pos < LOG_KEEP ? log_pos : LOG_KEEP;

    if (n)
        fprintf(stderr, "  last library messages:\n");
    for (unsigned i = log_pos - n; i != log_pos; i++)
        fprintf(stderr, "    %s\n", log_ring[i % LOG_KEEP]);
}

static void log_clear(void)
{
    log_pos = 0;
}

/* ---- Workload description ---- */

enum run_mode {
    M_AUTO,      /* the engine performs I/Os one at a time in submission order */
    M_SHUFFLE,   /* random completion order (newest-first half the time) */
    M_LAGMETA,   /* shuffle, but small metadata writes complete last */
    M_SCRIPTED,  /* directed: overwrite and flush while an allocation's mapping is in flight */
};

struct config {
    const char *name;
    uint32_t table_size;
    uint64_t vsize;        /* virtual size */
    bool backing;          /* raw backing file of known content */
    enum run_mode mode;
    bool qemu;             /* sample qemu-img check (needs table size >= 2) */
    unsigned nsteps;       /* workload steps */
    bool batchy;           /* mostly big batches of concurrent allocating writes */
};

static const struct config configs[] = {
    {"auto/ts1/no-backing", 1, 8 * MiB, false, M_AUTO, false, 110, false},
    {"auto/ts1/backing", 1, 8 * MiB, true, M_AUTO, false, 110, false},
    {"auto/ts2/no-backing", 2, 12 * MiB, false, M_AUTO, true, 110, false},
    {"auto/ts2/backing", 2, 12 * MiB, true, M_AUTO, true, 110, false},
    {"shuffle/ts1/no-backing", 1, 8 * MiB, false, M_SHUFFLE, false, 150, false},
    {"shuffle/ts2/backing", 2, 12 * MiB, true, M_SHUFFLE, true, 150, false},
    {"lagmeta/ts1/backing", 1, 8 * MiB, true, M_LAGMETA, false, 120, false},
    {"lagmeta/ts2/no-backing", 2, 12 * MiB, false, M_LAGMETA, true, 120, false},
    {"scripted/ts1/no-backing", 1, 8 * MiB, false, M_SCRIPTED, false, 0, false},
    {"scripted/ts2/backing", 2, 12 * MiB, true, M_SCRIPTED, true, 0, false},
    /* Group commit: many concurrent allocating writes into the same and
     * different tables, so that batches of several runs form and crash
     * points fall between a batch's data writes, its flush and its L2
     * writes. */
    {"gcbatch/ts1/no-backing", 1, 8 * MiB, false, M_AUTO, false, 60, true},
    {"gcbatch/ts2/backing", 2, 12 * MiB, true, M_SHUFFLE, true, 60, true},
    {"gcbatch/ts1/backing", 1, 8 * MiB, true, M_LAGMETA, false, 60, true},
};
#define NCONFIGS (sizeof(configs) / sizeof(configs[0]))

enum rtype { R_WRITE, R_WZERO, R_DISCARD, R_FLUSH, R_IDLE };
static const char *rtype_names[] = {"write", "write-zeroes", "discard", "flush", "idle"};

/* One workload operation; ops sharing a group are submitted together (auto mode). */
struct op {
    enum rtype type;
    unsigned flags;
    uint64_t off, len;
    unsigned group;
};

/* A request as submitted and completed. */
struct req_rec {
    struct sim *sim;
    enum rtype type;
    unsigned flags;
    uint64_t off, len;
    uint8_t *data;           /* R_WRITE: the bytes written */
    uint64_t s_ev, c_ev;     /* logical clock at submission and completion */
    uint64_t s_log, c_log;   /* logged I/Os performed at submission and completion */
    bool done;
    int ret;
};

/* A logged I/O. */
struct io_rec {
    enum qed_io_op op;
    uint64_t off, len;
    uint8_t *data;           /* WRITE */
    uint64_t sub_at;         /* logged I/Os performed when it was submitted */
};

struct sim {
    const struct config *cfg;
    unsigned cfg_idx;
    uint64_t seed;           /* this workload's seed */
    uint64_t base_seed;
    char dir[256];
    char img_path[300], state_path[300], backing_path[300], fail_path[300];

    struct ev_loop *loop;
    qed_aio *aio;
    qed_image *img;

    /* Backing content (vsize bytes view: beyond backing_len reads zeros) */
    uint8_t *backing;
    uint64_t backing_len;

    /* Image file before the workload */
    uint8_t *base;
    uint64_t base_len;

    /* The I/O log */
    struct io_rec *log;
    size_t nlog, caplog;
    uint64_t *seen;          /* by io->seq: logged I/Os performed when first seen held */
    size_t nseen;
    int unexpected_err;

    /* Requests */
    struct req_rec *reqs;
    size_t nreq, capreq;
    uint64_t clock;
    unsigned my_inflight;

    /* Per guest sector: requests touching it (CSR) */
    uint32_t *sec_start;     /* nsec + 1 */
    uint32_t *sec_req;

    /* Read extents of touched sectors */
    uint64_t (*ext)[2];
    size_t next;
};

static const uint8_t zero_sector[SECTOR];

/* ---- Recording ---- */

static void note_seen(struct sim *s, const struct qed_io *io)
{
    if (io->seq >= s->nseen) {
        size_t n = s->nseen ? s->nseen : 1024;
        while (n <= io->seq)
            n *= 2;
        s->seen = xrealloc(s->seen, n * sizeof(*s->seen));
        for (size_t i = s->nseen; i < n; i++)
            s->seen[i] = UINT64_MAX;
        s->nseen = n;
    }
    if (s->seen[io->seq] == UINT64_MAX)
        s->seen[io->seq] = s->nlog;
}

static void observer(struct qed_io *io, int err, void *opaque)
{
    struct sim *s = opaque;
    struct io_rec *r;

    /* Everything held now and not seen before was submitted after the
     * previous performed I/O: its "submitted at" position is the current
     * count.  The I/O being performed has already left the held list. */
    note_seen(s, io);
    for (size_t i = 0;; i++) {
        struct qed_io *h = qed_aio_test_peek(s->aio, i);
        if (!h)
            break;
        note_seen(s, h);
    }
    if (err < 0 && !s->unexpected_err)
        s->unexpected_err = err;
    if (io->op == QED_IO_READ)
        return;
    if (s->nlog == s->caplog) {
        s->caplog = s->caplog ? 2 * s->caplog : 1024;
        s->log = xrealloc(s->log, s->caplog * sizeof(*s->log));
    }
    r = &s->log[s->nlog];
    memset(r, 0, sizeof(*r));
    r->op = io->op;
    r->sub_at = s->seen[io->seq];
    r->off = io->offset;
    if (io->op == QED_IO_WRITE) {
        uint64_t pos = 0;
        for (int i = 0; i < io->iovcnt; i++)
            pos += io->iov[i].iov_len;
        r->len = pos;
        r->data = xcalloc(1, pos);
        pos = 0;
        for (int i = 0; i < io->iovcnt; i++) {
            memcpy(r->data + pos, io->iov[i].iov_base, io->iov[i].iov_len);
            pos += io->iov[i].iov_len;
        }
    } else if (io->op == QED_IO_PUNCH) {
        r->len = io->length;
    }
    s->nlog++;
}

static void req_cb(void *opaque, int ret)
{
    struct req_rec *r = opaque;
    struct sim *s = r->sim;

    if (r->done)
        die("request callback ran twice");
    r->done = true;
    r->ret = ret;
    r->c_ev = s->clock++;
    r->c_log = s->nlog;
    s->my_inflight--;
}

/* Fill a write's data: each sector is tagged with the request and its guest offset. */
static void fill_data(uint8_t *d, uint64_t len, uint32_t id, uint64_t off, uint64_t *rng)
{
    for (uint64_t p = 0; p < len; p += SECTOR) {
        uint8_t *sec = d + p;
        uint64_t o = off + p;
        memcpy(sec, SECTOR_MAGIC, 8);
        memcpy(sec + 8, &id, 4);
        memcpy(sec + 12, &o, 8);
        for (uint64_t i = 20; i + 8 <= SECTOR; i += 8) {
            uint64_t x = rng_next(rng);
            memcpy(sec + i, &x, 8);
        }
    }
}

static void submit_op(struct sim *s, const struct op *o, uint64_t *rng)
{
    struct req_rec *r;
    int rc;

    if (s->nreq == s->capreq)
        die("request table full");  /* sized from the op count: cannot happen */
    r = &s->reqs[s->nreq];
    memset(r, 0, sizeof(*r));
    r->sim = s;
    r->type = o->type;
    r->flags = o->flags;
    r->off = o->off;
    r->len = o->len;
    if (o->type == R_WRITE) {
        r->data = xcalloc(1, o->len);
        fill_data(r->data, o->len, (uint32_t)s->nreq, o->off, rng);
    }
    r->s_ev = s->clock++;
    r->s_log = s->nlog;
    s->nreq++;
    s->my_inflight++;
    switch (o->type) {
    case R_WRITE:
        rc = qed_write(s->img, o->off, r->data, o->len, o->flags, req_cb, r);
        break;
    case R_WZERO:
        rc = qed_write_zeroes(s->img, o->off, o->len, o->flags, req_cb, r);
        break;
    case R_DISCARD:
        rc = qed_discard(s->img, o->off, o->len, o->flags, req_cb, r);
        break;
    case R_FLUSH:
        rc = qed_flush(s->img, req_cb, r);
        break;
    default:
        die("bad op type %d", (int)o->type);
    }
    if (rc < 0)
        die("[%s] seed %" PRIu64 ": submitting %s at %" PRIu64 "+%" PRIu64 " failed: %s",
            s->cfg->name, s->base_seed, rtype_names[o->type], o->off, o->len, strerror(-rc));
}

/* ---- Workload generation ---- */

struct gen {
    uint64_t *rng;
    uint64_t vsize, nclusters, l2_cover;
    uint8_t *written;       /* per cluster: data written by the workload */
    uint64_t *wlist;        /* written clusters */
    size_t nw;
    struct op *ops;
    size_t nops, cap;
    unsigned group;
};

static void gen_push(struct gen *g, enum rtype t, unsigned flags, uint64_t off, uint64_t len)
{
    if (g->nops == g->cap) {
        g->cap = g->cap ? 2 * g->cap : 256;
        g->ops = xrealloc(g->ops, g->cap * sizeof(*g->ops));
    }
    if (t != R_FLUSH && t != R_IDLE) {
        if (off + len > g->vsize)
            len = g->vsize - off;
        if (len == 0) {
            off = 0;
            len = SECTOR;
        }
    }
    g->ops[g->nops++] = (struct op){.type = t, .flags = flags, .off = off, .len = len,
                                    .group = g->group};
}

static void gen_mark(struct gen *g, uint64_t off, uint64_t len)
{
    for (uint64_t c = off / CS; c < g->nclusters && c * CS < off + len; c++) {
        if (!g->written[c]) {
            g->written[c] = 1;
            g->wlist[g->nw++] = c;
        }
    }
}

static uint64_t gen_fresh_cluster(struct gen *g)
{
    uint64_t c = rng_below(g->rng, g->nclusters);

    for (int i = 0; i < 16 && g->written[c]; i++)
        c = rng_below(g->rng, g->nclusters);
    return c;
}

static uint64_t gen_written_cluster(struct gen *g)
{
    return g->nw ? g->wlist[rng_below(g->rng, g->nw)] : gen_fresh_cluster(g);
}

static unsigned gen_fua(struct gen *g)
{
    return rng_below(g->rng, 100) < 18 ? QED_REQ_FUA : 0;
}

/* An allocating write at cluster @c: partial, whole clusters, or unaligned across two. */
static void gen_alloc_write(struct gen *g, uint64_t c)
{
    uint64_t off, len;

    switch (rng_below(g->rng, 3)) {
    case 0: { /* partial cluster */
        uint64_t a = rng_below(g->rng, SPC), b = a + 1 + rng_below(g->rng, SPC - a);
        if (a == 0 && b == SPC)
            b = SPC - 1;
        off = c * CS + a * SECTOR;
        len = (b - a) * SECTOR;
        break;
    }
    case 1: /* whole clusters */
        off = c * CS;
        len = (1 + rng_below(g->rng, 3)) * CS;
        break;
    default: /* unaligned, across a cluster boundary */
        off = c * CS + (1 + rng_below(g->rng, SPC - 1)) * SECTOR;
        len = (1 + rng_below(g->rng, 2 * SPC)) * SECTOR;
        break;
    }
    gen_push(g, R_WRITE, gen_fua(g), off, len);
    gen_mark(g, off, len);
}

static void gen_overwrite(struct gen *g)
{
    uint64_t c = gen_written_cluster(g);
    uint64_t a = rng_below(g->rng, SPC);
    uint64_t len = (1 + rng_below(g->rng, SPC + SPC / 2)) * SECTOR;

    gen_push(g, R_WRITE, gen_fua(g), c * CS + a * SECTOR, len);
    gen_mark(g, c * CS + a * SECTOR, len);
}

/* A cluster in the L2 region that has nothing written yet, if any: a new L2 table. */
static uint64_t gen_new_region_cluster(struct gen *g)
{
    uint64_t per = g->l2_cover / CS, nreg = g->nclusters / per;

    for (int tries = 0; tries < 8; tries++) {
        uint64_t reg = rng_below(g->rng, nreg);
        bool empty = true;
        for (uint64_t c = reg * per; c < (reg + 1) * per && empty; c++)
            empty = !g->written[c];
        if (empty)
            return reg * per + rng_below(g->rng, per);
    }
    return gen_fresh_cluster(g);
}

static void gen_single(struct gen *g)
{
    uint64_t r = rng_below(g->rng, 100), c;

    if (r < 30) {
        gen_alloc_write(g, gen_fresh_cluster(g));
    } else if (r < 52) {
        gen_overwrite(g);
    } else if (r < 60) { /* write-zeroes of whole clusters: zero entries or zero writes */
        c = rng_below(g->rng, 2) ? gen_written_cluster(g) : gen_fresh_cluster(g);
        gen_push(g, R_WZERO, gen_fua(g), c * CS, (1 + rng_below(g->rng, 4)) * CS);
    } else if (r < 66) { /* partial write-zeroes */
        uint64_t a = rng_below(g->rng, SPC - 1);
        c = rng_below(g->rng, 2) ? gen_written_cluster(g) : gen_fresh_cluster(g);
        gen_push(g, R_WZERO, gen_fua(g), c * CS + a * SECTOR,
                 (1 + rng_below(g->rng, SPC - 1 - a)) * SECTOR);
    } else if (r < 69) { /* fully provisioned zeros */
        c = gen_fresh_cluster(g);
        gen_push(g, R_WZERO, QED_REQ_NO_HOLE | gen_fua(g), c * CS + SECTOR * rng_below(g->rng, SPC),
                 (1 + rng_below(g->rng, 2 * SPC)) * SECTOR);
        gen_mark(g, c * CS, 2 * CS);
    } else if (r < 78) { /* discard, aligned or not */
        c = gen_written_cluster(g);
        if (rng_below(g->rng, 3))
            gen_push(g, R_DISCARD, 0, c * CS, (1 + rng_below(g->rng, 3)) * CS);
        else
            gen_push(g, R_DISCARD, 0, c * CS + SECTOR * rng_below(g->rng, SPC),
                     (SPC + rng_below(g->rng, 3 * SPC)) * SECTOR);
    } else if (r < 88) {
        gen_push(g, R_FLUSH, 0, 0, 0);
    } else {
        /* An allocating write that needs a new L2 table. */
        gen_alloc_write(g, gen_new_region_cluster(g));
    }
}

/* Several allocating writes submitted at once, maybe with an overwrite and a flush. */
static void gen_batch(struct gen *g, unsigned max)
{
    unsigned n = 3 + (unsigned)rng_below(g->rng, max - 2);
    uint64_t near = gen_fresh_cluster(g);

    for (unsigned i = 0; i < n; i++) {
        uint64_t r = rng_below(g->rng, 10), c;
        if (r < 3)
            c = gen_new_region_cluster(g);
        else if (r < 6)
            c = min64(near + rng_below(g->rng, 4), g->nclusters - 1); /* same table, close */
        else
            c = gen_fresh_cluster(g);
        gen_alloc_write(g, c);
        if (rng_below(g->rng, 8) == 0)
            gen_overwrite(g);
        if (rng_below(g->rng, 8) == 0)
            gen_push(g, R_FLUSH, 0, 0, 0);
    }
}

/*
 * An allocating write, then an overwrite inside the clusters it allocates,
 * then a flush, submitted together: with a shuffled completion order the
 * overwrite may find the new mapping while its L2/L1 write is still in
 * flight, and the flush may run before that write lands.
 */
static void gen_alloc_then_overwrite(struct gen *g)
{
    uint64_t c = rng_below(g->rng, 2) ? gen_new_region_cluster(g) : gen_fresh_cluster(g);
    uint64_t off = c * CS, a = rng_below(g->rng, SPC);

    gen_push(g, R_WRITE, 0, off, (1 + rng_below(g->rng, 2)) * CS);
    gen_mark(g, off, 2 * CS);
    gen_push(g, R_WRITE, gen_fua(g), off + a * SECTOR, (1 + rng_below(g->rng, SPC - a)) * SECTOR);
    gen_push(g, R_FLUSH, 0, 0, 0);
}

static void gen_workload(struct gen *g, const struct config *cfg)
{
    for (unsigned step = 0; step < cfg->nsteps; step++) {
        uint64_t r = rng_below(g->rng, 100);
        g->group = step;
        if (r < 8)
            gen_alloc_then_overwrite(g);
        else if (r < 18 || (cfg->batchy && r < 75))
            gen_batch(g, cfg->batchy ? 16 : 6);
        else if (r < 21 && cfg->mode == M_AUTO)
            gen_push(g, R_IDLE, 0, 0, 0);
        else
            gen_single(g);
    }
    g->group = cfg->nsteps;
    gen_push(g, R_FLUSH, 0, 0, 0);
}

/*
 * The directed scenarios, in groups: [A, C, F] or [A, C FUA].  A allocates a
 * whole cluster (in an L2 table that exists, made by a warm-up write, or in
 * a new one); C overwrites sectors of that cluster; F flushes.
 */
static void gen_scripted(struct gen *g)
{
    uint64_t per = g->l2_cover / CS;

    for (unsigned v = 0; v < 4; v++) {
        bool new_table = v >= 2, fua = v & 1;
        uint64_t region = new_table ? v - 1 : 0; /* regions 1 and 2 stay empty until then */
        uint64_t x = region * per + 16 + 8 * v, a = rng_below(g->rng, SPC - 2);

        g->group = 2 * v;
        if (v == 0)
            gen_push(g, R_WRITE, 0, region * per * CS, CS); /* warm-up: region 0's table */
        g->group = 2 * v + 1;
        gen_push(g, R_WRITE, 0, x * CS, CS);
        gen_push(g, R_WRITE, fua ? QED_REQ_FUA : 0, x * CS + a * SECTOR,
                 (1 + rng_below(g->rng, SPC - a)) * SECTOR);
        if (!fua)
            gen_push(g, R_FLUSH, 0, 0, 0);
        gen_mark(g, x * CS, CS);
    }
}

/* ---- Running the workload ---- */

static void drain(struct sim *s)
{
    for (unsigned long turns = 0; qed_inflight(s->img) > 0 || s->my_inflight > 0; turns++) {
        if (turns > 10000000)
            die("[%s] requests never completed", s->cfg->name);
        if (s->cfg->mode != M_AUTO && qed_aio_test_pending(s->aio) > 0)
            qed_aio_test_complete(s->aio, 0, 0);
        else
            ev_run(s->loop, EVRUN_ONCE);
    }
}

/* Wait past the clean delay so that the library clears NEED_CHECK (flush, header). */
static void idle_pause(struct sim *s)
{
    drain(s);
    usleep((CLEAN_DELAY_MS + 5) * 1000);
    ev_now_update(s->loop);
    ev_run(s->loop, EVRUN_NOWAIT);
    drain(s);
}

static void run_auto(struct sim *s, const struct op *ops, size_t nops, uint64_t *rng)
{
    size_t i = 0;

    while (i < nops) {
        if (ops[i].type == R_IDLE) {
            idle_pause(s);
            i++;
            continue;
        }
        /* Submit the whole group before running the loop: concurrent requests. */
        unsigned grp = ops[i].group;
        while (i < nops && ops[i].group == grp && ops[i].type != R_IDLE)
            submit_op(s, &ops[i++], rng);
        drain(s);
    }
    drain(s);
}

/* A small metadata write: the header, or table entries (L1 entries, and L2
 * entries, which group commit may merge into writes of a few KiB: those are
 * still not a whole number of sectors, unlike data). */
static bool is_small_meta(const struct qed_io *io)
{
    return io->op == QED_IO_WRITE && (io->length < SECTOR || io->length % SECTOR != 0);
}

/* Is every held I/O a small metadata write?  Only matters with lag_meta. */
static bool only_meta_held(struct sim *s, size_t n)
{
    if (s->cfg->mode != M_LAGMETA)
        return false;
    for (size_t j = 0; j < n; j++) {
        struct qed_io *io = qed_aio_test_peek(s->aio, j);
        if (!is_small_meta(io))
            return false;
    }
    return true;
}

static void run_shuffle(struct sim *s, const struct op *ops, size_t nops, uint64_t *rng,
                        uint64_t *order)
{
    size_t i = 0;
    unsigned long stuck = 0;

    while (i < nops || s->my_inflight > 0 || qed_inflight(s->img) > 0) {
        size_t n;
        ev_run(s->loop, EVRUN_NOWAIT); /* deferred completions */
        n = qed_aio_test_pending(s->aio);
        if (i < nops && s->my_inflight < MAX_INFLIGHT &&
            (n == 0 || rng_below(order, 100) < (only_meta_held(s, n) ? 90u : 35u))) {
            if (ops[i].type != R_IDLE)
                submit_op(s, &ops[i], rng);
            i++;
            stuck = 0;
        } else if (n > 0) {
            /* Half the time the newest I/O: older ones (a metadata write
             * submitted before a later request's I/O) then lag behind, as
             * they may on a real engine. */
            size_t pick = rng_below(order, 2) ? n - 1 : (size_t)rng_below(order, n);
            if (s->cfg->mode == M_LAGMETA && rng_below(order, 100) < 85) {
                /* Metadata writes (table entries, header: under a sector)
                 * wait while anything else is held. */
                size_t alt = n;
                for (size_t j = n; j-- > 0 && alt == n;) {
                    struct qed_io *io = qed_aio_test_peek(s->aio, j);
                    if (!is_small_meta(io))
                        alt = j;
                }
                if (alt < n)
                    pick = alt;
            }
            qed_aio_test_complete(s->aio, pick, 0);
            stuck = 0;
        } else if (++stuck > 1000000) {
            die("[%s] nothing held and requests incomplete", s->cfg->name);
        }
    }
}

/* A write under a sector that is not the header: an L1 or L2 entry update. */
static bool is_meta_write(const struct qed_io *io)
{
    return is_small_meta(io) && io->offset != 0;
}

/* Complete the newest held I/O that is not a table entry write; false if none. */
static bool complete_non_meta(struct sim *s)
{
    for (size_t j = qed_aio_test_pending(s->aio); j-- > 0;) {
        if (!is_meta_write(qed_aio_test_peek(s->aio, j))) {
            qed_aio_test_complete(s->aio, j, 0);
            return true;
        }
    }
    return false;
}

/* Run until @r completes, holding back table entry writes as long as possible. */
static void run_until_done(struct sim *s, const struct req_rec *r)
{
    for (unsigned long t = 0; !r->done; t++) {
        if (t > 1000000)
            die("[%s] scripted request never completed", s->cfg->name);
        ev_run(s->loop, EVRUN_NOWAIT);
        if (r->done)
            break;
        if (!complete_non_meta(s) && qed_aio_test_pending(s->aio))
            qed_aio_test_complete(s->aio, 0, 0); /* only entry writes left: let them go */
    }
}

static unsigned scripted_armed, scripted_total;
static unsigned gc_multi; /* workloads that formed a group commit batch of >1 run */

static void run_scripted(struct sim *s, const struct op *ops, size_t nops, uint64_t *rng)
{
    size_t i = 0;

    while (i < nops) {
        unsigned grp = ops[i].group;
        size_t first = i, n = 0;
        while (i + n < nops && ops[i + n].group == grp)
            n++;
        i += n;
        if (n == 1) {
            submit_op(s, &ops[first], rng);
            drain(s);
            continue;
        }
        /* A: run it, oldest I/O first, until one of its table entry writes
         * (L2 entries, or the L1 entry of a new table) is held. */
        const struct req_rec *a = &s->reqs[s->nreq];
        submit_op(s, &ops[first], rng);
        bool armed = false;
        for (unsigned long t = 0; !a->done && !armed; t++) {
            if (t > 1000000)
                die("[%s] scripted allocation never completed", s->cfg->name);
            ev_run(s->loop, EVRUN_NOWAIT);
            for (size_t j = 0; j < qed_aio_test_pending(s->aio) && !armed; j++)
                armed = is_meta_write(qed_aio_test_peek(s->aio, j));
            if (!armed && qed_aio_test_pending(s->aio))
                qed_aio_test_complete(s->aio, 0, 0);
        }
        scripted_total++;
        scripted_armed += armed;
        /* C, then F, while A's entry write stays held as long as anything
         * else can run. */
        for (size_t j = first + 1; j < first + n; j++) {
            const struct req_rec *r = &s->reqs[s->nreq];
            submit_op(s, &ops[j], rng);
            run_until_done(s, r);
        }
        drain(s);
    }
}

/* ---- Crash states ---- */

struct crash_ctx {
    struct sim *s;
    uint64_t k;              /* crash point */
    uint64_t D;              /* durable horizon */
    int64_t g_ev;            /* flush guarantee: requests completed before this clock */
    unsigned rep;
    uint64_t npend;
};

static bool req_guaranteed(const struct crash_ctx *c, const struct req_rec *r)
{
    if (r->type != R_WRITE && r->type != R_WZERO)
        return false;
    if (!r->done || r->ret < 0)
        return false;
    if ((int64_t)r->c_ev < c->g_ev)
        return true;
    return (r->flags & QED_REQ_FUA) && r->c_log <= c->k;
}

static const uint8_t *initial_sector(const struct sim *s, uint64_t sec)
{
    uint64_t off = sec * SECTOR;

    return off < s->backing_len ? s->backing + off : zero_sector;
}

/* Content request @r gives sector @sec. */
static const uint8_t *req_sector(const struct req_rec *r, uint64_t sec)
{
    if (r->type == R_WRITE)
        return r->data + (sec * SECTOR - r->off);
    return zero_sector;
}

static void describe(const struct sim *s, const uint8_t *d, char *out, size_t n)
{
    uint32_t id;
    uint64_t off;

    if (memcmp(d, zero_sector, SECTOR) == 0) {
        snprintf(out, n, "zeros");
    } else if (memcmp(d, SECTOR_MAGIC, 8) == 0) {
        memcpy(&id, d + 8, 4);
        memcpy(&off, d + 12, 8);
        if (id < s->nreq && s->reqs[id].type == R_WRITE && off >= s->reqs[id].off &&
            off < s->reqs[id].off + s->reqs[id].len &&
            memcmp(d, s->reqs[id].data + (off - s->reqs[id].off), SECTOR) == 0)
            snprintf(out, n, "data of request #%" PRIu32 " for guest offset %" PRIu64, id, off);
        else
            snprintf(out, n, "damaged data tagged request #%" PRIu32 " guest offset %" PRIu64,
                     id, off);
    } else if (memcmp(d, BACKING_MAGIC, 8) == 0) {
        memcpy(&off, d + 8, 8);
        snprintf(out, n, "backing data of guest offset %" PRIu64, off);
    } else {
        snprintf(out, n, "unrecognised bytes %02x %02x %02x %02x...", d[0], d[1], d[2], d[3]);
    }
}

static void print_req(const struct sim *s, const struct crash_ctx *c, size_t i)
{
    const struct req_rec *r = &s->reqs[i];

    fprintf(stderr,
            "    #%zu %s %" PRIu64 "+%" PRIu64 "%s%s: submitted after I/O %" PRIu64
            ", completed after I/O %" PRIu64 "%s\n",
            i, rtype_names[r->type], r->off, r->len, (r->flags & QED_REQ_FUA) ? " FUA" : "",
            (r->flags & QED_REQ_NO_HOLE) ? " NO_HOLE" : "", r->s_log, r->c_log,
            req_guaranteed(c, r) ? " [guaranteed at this crash point]" : "");
}

static unsigned violations;

static void violation_header(const struct crash_ctx *c, const char *what)
{
    const struct sim *s = c->s;

    fprintf(stderr,
            "\nVIOLATION [%s] seed %" PRIu64 " workload %u: crash point %" PRIu64 " of %zu"
            " (durable up to I/O %" PRIu64 ", %" PRIu64 " unflushed writes, state %u): %s\n",
            s->cfg->name, s->base_seed, s->cfg_idx, c->k, s->nlog, c->D, c->npend, c->rep, what);
    fprintf(stderr, "  replay: CRASH_SEED=%" PRIu64 " CRASH_WORKLOAD=%u CRASH_POINT=%" PRIu64 "\n",
            s->base_seed, s->cfg_idx, c->k);
}

/* Check one sector; false (and a report) when its content is not allowed. */
static bool check_sector(const struct crash_ctx *c, uint64_t sec, const uint8_t *got)
{
    const struct sim *s = c->s;
    uint32_t a = s->sec_start[sec], b = s->sec_start[sec + 1];
    const struct req_rec *d = NULL;
    uint32_t di = 0;

    if (a == b) {
        /* Untouched by the workload: must read its initial content. */
        if (memcmp(got, initial_sector(s, sec), SECTOR) == 0)
            return true;
        goto bad;
    }

    for (uint32_t j = b; j-- > a;) {
        const struct req_rec *r = &s->reqs[s->sec_req[j]];
        if (r->type != R_DISCARD && req_guaranteed(c, r)) {
            d = r;
            di = j;
            break;
        }
    }
    if (memcmp(got, d ? req_sector(d, sec) : initial_sector(s, sec), SECTOR) == 0)
        return true;
    for (uint32_t j = a; j < b; j++) {
        const struct req_rec *e = &s->reqs[s->sec_req[j]];
        if (d && j == di)
            continue;
        if (e->s_log >= c->k)
            continue; /* submitted after the crash: none of its I/O was performed */
        if (d && j < di && e->done && e->c_ev < d->s_ev)
            continue; /* completed before d started: d overwrote it */
        if (memcmp(got, req_sector(e, sec), SECTOR) == 0)
            return true;
    }

bad:
    violations++;
    {
        char desc[160];
        violation_header(c, "a sector reads content the model does not allow");
        describe(s, got, desc, sizeof(desc));
        fprintf(stderr, "  guest offset %" PRIu64 " (sector %" PRIu64 ") reads %s\n",
                sec * SECTOR, sec, desc);
        describe(s, initial_sector(s, sec), desc, sizeof(desc));
        fprintf(stderr, "  initial content: %s\n", desc);
        if (d)
            fprintf(stderr, "  must read request #%u's data or a later/concurrent request's\n",
                    s->sec_req[di]);
        fprintf(stderr, "  requests touching it:\n");
        for (uint32_t j = a; j < b; j++)
            print_req(s, c, s->sec_req[j]);
    }
    return false;
}

/* Per-sector request lists and the extents to read. */
static void build_sector_index(struct sim *s)
{
    uint64_t nsec = s->cfg->vsize / SECTOR;
    uint32_t *cnt = xcalloc(nsec + 1, sizeof(uint32_t));

    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < s->nreq; i++) {
            const struct req_rec *r = &s->reqs[i];
            uint64_t a = r->off, b = r->off + r->len;
            if (r->type == R_FLUSH)
                continue;
            if (r->type == R_DISCARD) {
                /* Only whole clusters are punched; the rest is left alone. */
                a = (a + CS - 1) / CS * CS;
                b = b / CS * CS;
            }
            for (uint64_t sec = a / SECTOR; sec * SECTOR < b; sec++) {
                if (pass == 0)
                    cnt[sec]++;
                else
                    s->sec_req[s->sec_start[sec] + cnt[sec]++] = (uint32_t)i;
            }
        }
        if (pass == 0) {
            s->sec_start = xcalloc(nsec + 1, sizeof(uint32_t));
            for (uint64_t i = 0; i < nsec; i++)
                s->sec_start[i + 1] = s->sec_start[i] + cnt[i];
            s->sec_req = xcalloc(s->sec_start[nsec], sizeof(uint32_t));
            memset(cnt, 0, (nsec + 1) * sizeof(uint32_t));
        }
    }
    free(cnt);

    s->next = 0;
    for (uint64_t sec = 0; sec < nsec;) {
        uint64_t end;
        if (s->sec_start[sec] == s->sec_start[sec + 1]) {
            sec++;
            continue;
        }
        end = sec;
        while (end < nsec && s->sec_start[end] != s->sec_start[end + 1])
            end++;
        s->ext = xrealloc(s->ext, (s->next + 1) * sizeof(*s->ext));
        s->ext[s->next][0] = sec;
        s->ext[s->next][1] = end;
        s->next++;
        sec = end;
    }
}

/* Apply log entry @e to @buf, all of it or (torn) some of its 512-byte file sectors. */
static void apply_io(const struct io_rec *e, uint8_t *buf, uint64_t *len, bool torn,
                     uint64_t *rng)
{
    uint64_t pos = e->off, end = e->off + e->len, last_end = 0;
    bool any = false;

    while (pos < end) {
        uint64_t piece_end = min64((pos / SECTOR + 1) * SECTOR, end);
        if (!torn || (rng_next(rng) & 1)) {
            if (e->op == QED_IO_WRITE) {
                memcpy(buf + pos, e->data + (pos - e->off), piece_end - pos);
                last_end = piece_end;
                any = true;
            } else if (pos < *len) {
                /* PUNCH keeps the size: only what lies inside the file. */
                memset(buf + pos, 0, min64(piece_end, *len) - pos);
            }
        }
        pos = piece_end;
    }
    if (e->op == QED_IO_WRITE && any) {
        /* A torn extending write may have extended the file to its full end
         * or only to its last sector on disk. */
        uint64_t new_end = torn && (rng_next(rng) & 1) ? last_end : end;
        *len = max64(*len, new_end);
    }
}

static int run_qemu_check(const struct sim *s, const char *path, char *out, size_t outlen)
{
    char outfile[320];
    pid_t pid;
    int status, fd;

    snprintf(outfile, sizeof(outfile), "%.200s/qemu-check.out", s->dir);
    pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        fd = open(outfile, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execlp("qemu-img", "qemu-img", "check", "-f", "qed", path, (char *)NULL);
        _exit(127);
    }
    if (waitpid(pid, &status, 0) < 0)
        die("waitpid: %s", strerror(errno));
    out[0] = '\0';
    fd = open(outfile, O_RDONLY);
    if (fd >= 0) {
        ssize_t n = read(fd, out, outlen - 1);
        out[n > 0 ? n : 0] = '\0';
        close(fd);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static bool qemu_missing;
static bool keep_files;      /* CRASH_KEEP=1: keep failing states and the scratch directory */
static unsigned long qemu_checks;

/* Check one crash state already written to s->state_path.  False on a violation. */
static bool check_state(struct crash_ctx *c, uint8_t *vbuf, bool full, bool qemu,
                        const uint8_t *state, uint64_t state_len)
{
    struct sim *s = c->s;
    struct qed_open_opts oo = {.clean_delay_ms = 600000};
    struct qed_check_result res;
    qed_image *img = NULL;
    char err[512];
    bool ok = true;
    int r;

    log_clear();
    r = qed_open(s->aio, s->state_path, &oo, &img, err, sizeof(err));
    if (r < 0) {
        violations++;
        violation_header(c, "the crashed image does not open read-write");
        fprintf(stderr, "  %s\n", err);
        ok = false;
        goto out;
    }
    r = qed_check(img, false, &res);
    if (r < 0 || res.corruptions || res.check_errors) {
        violations++;
        violation_header(c, "qed_check after the repairing open is not clean");
        fprintf(stderr, "  rc %d, %" PRIu64 " corruptions, %" PRIu64 " check errors\n", r,
                res.corruptions, res.check_errors);
        ok = false;
        goto out;
    }
    if (full) {
        r = qed_sync_read(img, 0, vbuf, s->cfg->vsize);
        if (r < 0) {
            violations++;
            violation_header(c, "reading the whole disk failed");
            fprintf(stderr, "  %s\n", strerror(-r));
            ok = false;
            goto out;
        }
        for (uint64_t sec = 0; sec < s->cfg->vsize / SECTOR && ok; sec++)
            ok = check_sector(c, sec, vbuf + sec * SECTOR);
    } else {
        for (size_t x = 0; x < s->next && ok; x++) {
            uint64_t a = s->ext[x][0], b = s->ext[x][1];
            r = qed_sync_read(img, a * SECTOR, vbuf + a * SECTOR, (b - a) * SECTOR);
            if (r < 0) {
                violations++;
                violation_header(c, "a read failed");
                fprintf(stderr, "  at %" PRIu64 "+%" PRIu64 ": %s\n", a * SECTOR,
                        (b - a) * SECTOR, strerror(-r));
                ok = false;
                break;
            }
            for (uint64_t sec = a; sec < b && ok; sec++)
                ok = check_sector(c, sec, vbuf + sec * SECTOR);
        }
    }

out:
    if (img) {
        r = qed_close(img);
        if (r < 0 && ok) {
            violations++;
            violation_header(c, "closing the repaired image failed");
            ok = false;
        }
    }
    if (ok && qemu && !qemu_missing) {
        char out[4096];
        int rc = run_qemu_check(s, s->state_path, out, sizeof(out));
        if (rc == 127) {
            qemu_missing = true;
            printf("crash-sim: qemu-img not found; the qemu-img check sample is skipped\n");
        } else if (rc != 0 && rc != 3) {
            violations++;
            violation_header(c, "qemu-img check of the repaired image reports a problem");
            fprintf(stderr, "  qemu-img check exit %d:\n%s\n", rc, out);
            ok = false;
        } else {
            qemu_checks++;
        }
    }
    if (!ok) {
        log_dump();
        if (keep_files && write_file(s->fail_path, state, state_len) == 0)
            fprintf(stderr, "  the crash state (before repair) is kept in %s\n", s->fail_path);
    }
    return ok;
}

static unsigned long total_states;

/* Build and check the crash states of the recorded workload. */
static void check_crash_states(struct sim *s, uint64_t states_target, bool only_point,
                               uint64_t point)
{
    uint64_t cap = s->base_len, npoints_pend = 0, D = 0, applied = 0, dlen;
    uint8_t *durable, *state, *vbuf;
    uint64_t state_dirty = 0;
    unsigned reps;
    unsigned long n_states = 0;
    unsigned v0 = violations;

    for (size_t i = 0; i < s->nlog; i++)
        if (s->log[i].op == QED_IO_WRITE)
            cap = max64(cap, s->log[i].off + s->log[i].len);
    cap = (cap + SECTOR - 1) / SECTOR * SECTOR;

    /* How many crash points have unflushed writes: sets the states per point. */
    for (uint64_t k = 0, d = 0; k <= s->nlog; k++) {
        bool pend = false;
        if (k > 0 && s->log[k - 1].op == QED_IO_FSYNC)
            d = max64(d, s->log[k - 1].sub_at);
        for (uint64_t j = d; j < k && !pend; j++)
            pend = s->log[j].op != QED_IO_FSYNC;
        npoints_pend += pend;
    }
    reps = (unsigned)((states_target + npoints_pend - 1) / (npoints_pend ? npoints_pend : 1));
    reps = reps < 2 ? 2 : reps > MAX_REPS ? MAX_REPS : reps;

    durable = xcalloc(1, cap);
    state = xcalloc(1, cap);
    vbuf = xcalloc(1, s->cfg->vsize);
    memcpy(durable, s->base, s->base_len);
    dlen = s->base_len;

    for (uint64_t k = 0; k <= s->nlog && violations - v0 < MAX_VIOLATIONS; k++) {
        struct crash_ctx c = {.s = s, .k = k, .g_ev = -1};
        if (k > 0 && s->log[k - 1].op == QED_IO_FSYNC)
            D = max64(D, s->log[k - 1].sub_at);
        /* Everything before the durable horizon is on disk, in log order. */
        for (; applied < D; applied++)
            if (s->log[applied].op != QED_IO_FSYNC)
                apply_io(&s->log[applied], durable, &dlen, false, NULL);
        c.D = D;
        for (uint64_t j = D; j < k; j++)
            c.npend += s->log[j].op != QED_IO_FSYNC;
        /* The flush guarantee: completed flushes cover requests completed
         * before they were submitted. */
        for (size_t i = 0; i < s->nreq; i++) {
            const struct req_rec *r = &s->reqs[i];
            if (r->type == R_FLUSH && r->done && r->ret == 0 && r->c_log <= k &&
                (int64_t)r->s_ev > c.g_ev)
                c.g_ev = (int64_t)r->s_ev;
        }
        if (only_point && k != point)
            continue;

        for (unsigned rep = 0; rep < (c.npend ? reps : 1u); rep++) {
            uint64_t rng = mix_seed(s->base_seed, s->cfg_idx, k, rep);
            uint64_t len = dlen;
            unsigned p_apply = (unsigned)(rep == 0 ? 100 : rng_below(&rng, 101));
            unsigned p_tear = (unsigned)(rep == 0 ? 0 : rng_below(&rng, 60));
            bool full, qemu;
            int r;

            c.rep = rep;
            memcpy(state, durable, dlen);
            if (state_dirty > dlen)
                memset(state + dlen, 0, state_dirty - dlen);
            for (uint64_t j = D; j < k; j++) {
                const struct io_rec *e = &s->log[j];
                if (e->op == QED_IO_FSYNC || rng_below(&rng, 100) >= p_apply)
                    continue;
                apply_io(e, state, &len, rng_below(&rng, 100) < p_tear, &rng);
            }
            state_dirty = len;
            r = write_file(s->state_path, state, len);
            if (r < 0)
                die("%s: %s", s->state_path, strerror(-r));
            full = (n_states % FULL_READ_EVERY) == 0 || k == s->nlog;
            qemu = s->cfg->qemu && (n_states % QEMU_CHECK_EVERY) == QEMU_CHECK_EVERY / 2;
            if (!check_state(&c, vbuf, full || qemu, qemu, state, len))
                break;
            n_states++;
        }
    }
    total_states += n_states;
    printf("crash-sim: [%s] %zu requests, %zu logged I/Os, %lu crash states checked"
           " (%u per crash point with unflushed writes)\n",
           s->cfg->name, s->nreq, s->nlog, n_states, reps);
    free(durable);
    free(state);
    free(vbuf);
}

/* ---- One workload, end to end ---- */

static void make_backing(struct sim *s, uint64_t *rng)
{
    int r;

    s->backing_len = s->cfg->vsize * 3 / 4 + 3 * SECTOR; /* ends inside a cluster */
    s->backing = xcalloc(1, s->cfg->vsize);
    for (uint64_t off = 0; off < s->backing_len; off += SECTOR) {
        uint8_t *sec = s->backing + off;
        memcpy(sec, BACKING_MAGIC, 8);
        memcpy(sec + 8, &off, 8);
        for (uint64_t i = 16; i + 8 <= SECTOR; i += 8) {
            uint64_t x = rng_next(rng);
            memcpy(sec + i, &x, 8);
        }
    }
    r = write_file(s->backing_path, s->backing, s->backing_len);
    if (r < 0)
        die("%s: %s", s->backing_path, strerror(-r));
}

/* CRASH_DUMP=1: print the I/O log and the requests, for diagnosing a violation. */
static void dump_log(const struct sim *s)
{
    static const char *opn[] = {"READ", "WRITE", "FSYNC", "PUNCH"};

    printf("I/O log of [%s]:\n", s->cfg->name);
    for (size_t i = 0; i < s->nlog; i++) {
        const struct io_rec *e = &s->log[i];
        char desc[160] = "";
        if (e->op == QED_IO_WRITE && e->len >= SECTOR)
            describe(s, e->data, desc, sizeof(desc));
        printf("  I/O %zu: %s %" PRIu64 "+%" PRIu64 " (submitted after I/O %" PRIu64 ")%s%s\n",
               i, opn[e->op], e->off, e->len, e->sub_at, desc[0] ? ", first sector: " : "",
               desc);
    }
    printf("requests of [%s]:\n", s->cfg->name);
    for (size_t i = 0; i < s->nreq; i++) {
        const struct req_rec *r = &s->reqs[i];
        printf("  #%zu %s %" PRIu64 "+%" PRIu64 "%s%s: submitted after I/O %" PRIu64
               ", completed after I/O %" PRIu64 "\n",
               i, rtype_names[r->type], r->off, r->len, (r->flags & QED_REQ_FUA) ? " FUA" : "",
               (r->flags & QED_REQ_NO_HOLE) ? " NO_HOLE" : "", r->s_log, r->c_log);
    }
}

static void run_workload(struct sim *s, uint64_t states_target, bool only_point, uint64_t point)
{
    const struct config *cfg = s->cfg;
    struct qed_create_opts co = {.size = cfg->vsize, .cluster_size = CS,
                                 .table_size = cfg->table_size};
    /* Why a long delay outside auto mode: only auto workloads have idle
     * pauses; elsewhere a clean would fire only when the machine is slow,
     * and would make a replay differ. */
    struct qed_open_opts oo = {.clean_delay_ms = cfg->mode == M_AUTO ? CLEAN_DELAY_MS : 600000};
    struct gen g = {0};
    uint64_t rng = s->seed, order = s->seed ^ 0x5eedull, final_len, recon_len = 0;
    uint8_t *final_file, *recon;
    char err[512];
    int r;

    snprintf(s->img_path, sizeof(s->img_path), "%.200s/work.qed", s->dir);
    snprintf(s->state_path, sizeof(s->state_path), "%.200s/state.qed", s->dir);
    snprintf(s->backing_path, sizeof(s->backing_path), "%.200s/backing.raw", s->dir);
    snprintf(s->fail_path, sizeof(s->fail_path), "%.200s/failing-state-w%u.qed", s->dir, s->cfg_idx);
    unlink(s->img_path);

    if (cfg->backing) {
        make_backing(s, &rng);
        co.backing_file = s->backing_path;
        co.backing_fmt = QED_BACKING_RAW;
    } else {
        s->backing = NULL;
        s->backing_len = 0;
    }
    r = qed_create(s->img_path, &co, err, sizeof(err));
    if (r < 0)
        die("create: %s", err);

    r = qed_aio_new(s->loop, QED_AIO_TEST, &s->aio);
    if (r < 0)
        die("test aio engine: %s", strerror(-r));
    qed_aio_test_set_auto(s->aio, true);
    r = qed_open(s->aio, s->img_path, &oo, &s->img, err, sizeof(err));
    if (r < 0)
        die("open: %s", err);
    /* The image as it is before the workload: the start of every crash state. */
    s->base = read_file(s->img_path, &s->base_len, 0);

    /* Generate the workload. */
    g.rng = &rng;
    g.vsize = cfg->vsize;
    g.nclusters = cfg->vsize / CS;
    g.l2_cover = (uint64_t)cfg->table_size * CS / 8 * CS;
    g.written = xcalloc(g.nclusters, 1);
    g.wlist = xcalloc(g.nclusters, sizeof(uint64_t));
    if (cfg->mode == M_SCRIPTED)
        gen_scripted(&g);
    else
        gen_workload(&g, cfg);
    s->capreq = g.nops;
    s->reqs = xcalloc(s->capreq, sizeof(*s->reqs));

    /* Record it. */
    qed_aio_test_set_observer(s->aio, observer, s);
    if (cfg->mode == M_AUTO) {
        run_auto(s, g.ops, g.nops, &rng);
    } else {
        qed_aio_test_set_auto(s->aio, false);
        if (cfg->mode == M_SCRIPTED)
            run_scripted(s, g.ops, g.nops, &rng);
        else
            run_shuffle(s, g.ops, g.nops, &rng, &order);
        drain(s);
        qed_aio_test_set_auto(s->aio, true);
    }
    qed_aio_test_set_observer(s->aio, NULL, NULL);
    {
        /* Group commit: how many batches, and how many of them carried
         * several runs (the crash points between their I/Os are checked). */
        const struct qed_image *im = s->img;
        printf("crash-sim: [%s] group commit: %" PRIu64 " batches, %" PRIu64 " runs, %" PRIu64
               " L2 writes, largest batch %" PRIu64 "\n", cfg->name, im->gc_batches,
               im->gc_batched, im->gc_l2_writes, im->gc_max_batch);
        gc_multi += im->gc_max_batch > 1;
        if (cfg->batchy && im->gc_max_batch < 2)
            die("[%s] seed %" PRIu64 ": no group commit batch of more than one run formed",
                cfg->name, s->base_seed);
    }
    if (s->unexpected_err)
        die("[%s] an I/O failed during the workload: %s", cfg->name,
            strerror(-s->unexpected_err));
    for (size_t i = 0; i < s->nreq; i++)
        if (!s->reqs[i].done || s->reqs[i].ret < 0)
            die("[%s] seed %" PRIu64 ": request #%zu (%s %" PRIu64 "+%" PRIu64 ") failed: %s",
                cfg->name, s->base_seed, i, rtype_names[s->reqs[i].type], s->reqs[i].off,
                s->reqs[i].len, s->reqs[i].done ? strerror(-s->reqs[i].ret) : "never completed");

    /* Self-check of the recorder: the base plus every logged I/O, in order,
     * must give exactly the file the workload produced. */
    final_file = read_file(s->img_path, &final_len, 0);
    recon = xcalloc(1, max64(final_len, s->base_len) + 64 * MiB);
    memcpy(recon, s->base, s->base_len);
    recon_len = s->base_len;
    for (size_t i = 0; i < s->nlog; i++) {
        const struct io_rec *e = &s->log[i];
        if (e->op == QED_IO_FSYNC)
            continue;
        if (e->op == QED_IO_WRITE && e->off + e->len > max64(final_len, s->base_len) + 64 * MiB)
            die("[%s] logged write past the end of the final file", cfg->name);
        apply_io(e, recon, &recon_len, false, NULL);
    }
    if (recon_len != final_len || memcmp(recon, final_file, final_len) != 0)
        die("[%s] recorder self-check: replaying the I/O log (%" PRIu64
            " bytes) does not give the final file (%" PRIu64 " bytes)",
            cfg->name, recon_len, final_len);
    free(recon);
    free(final_file);

    r = qed_close(s->img);
    s->img = NULL;
    if (r < 0)
        die("[%s] closing the workload image failed: %s", cfg->name, strerror(-r));

    if (getenv("CRASH_DUMP"))
        dump_log(s);
    build_sector_index(s);
    check_crash_states(s, states_target, only_point, point);

    qed_aio_free(s->aio);
    s->aio = NULL;
    free(g.written);
    free(g.wlist);
    free(g.ops);
}

static void sim_free(struct sim *s)
{
    for (size_t i = 0; i < s->nlog; i++)
        free(s->log[i].data);
    for (size_t i = 0; i < s->nreq; i++)
        free(s->reqs[i].data);
    free(s->log);
    free(s->seen);
    free(s->reqs);
    free(s->sec_start);
    free(s->sec_req);
    free(s->ext);
    free(s->base);
    free(s->backing);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

int main(void)
{
    bool seed_set, only_w, only_p;
    uint64_t seed = env_u64("CRASH_SEED", 0, &seed_set);
    uint64_t only_workload = env_u64("CRASH_WORKLOAD", 0, &only_w);
    uint64_t point = env_u64("CRASH_POINT", 0, &only_p);
    uint64_t min_states = env_u64("CRASH_STATES", MIN_STATES_DEFAULT, NULL);
    const char *tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    char dir[256];
    struct ev_loop *loop;
    double t0 = now_s();
    unsigned nrun = 0;

    keep_files = getenv("CRASH_KEEP") && strcmp(getenv("CRASH_KEEP"), "0") != 0;
    if (!seed_set) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = ((uint64_t)ts.tv_sec * 1000003u) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
        seed &= 0xffffffffffffull;
    }
    printf("crash-sim: seed %" PRIu64 " (replay with CRASH_SEED=%" PRIu64 ")\n", seed, seed);
    fflush(stdout);
    if (only_w && only_workload >= NCONFIGS)
        die("CRASH_WORKLOAD=%" PRIu64 ": there are %zu workloads", only_workload, NCONFIGS);

    snprintf(dir, sizeof(dir), "%s/qed-crash-XXXXXX", tmp);
    if (!mkdtemp(dir)) {
        printf("crash-sim: cannot create a scratch directory in %s: %s\n", tmp, strerror(errno));
        return 77;
    }
    qed_set_log(log_cb, NULL, QED_LOG_WARN);
    loop = ev_loop_new(EVFLAG_AUTO);
    if (!loop)
        die("ev_loop_new failed");

    for (unsigned w = 0; w < NCONFIGS; w++) {
        struct sim s = {0};
        if (only_w && w != only_workload)
            continue;
        nrun++;
        s.cfg = &configs[w];
        s.cfg_idx = w;
        s.base_seed = seed;
        s.seed = mix_seed(seed, w, 0x776f726b, 0);
        s.loop = loop;
        snprintf(s.dir, sizeof(s.dir), "%.200s", dir);
        run_workload(&s, (min_states + NCONFIGS - 1) / NCONFIGS + 100, only_p, point);
        sim_free(&s);
        fflush(stdout);
    }

    ev_loop_destroy(loop);
    printf("crash-sim: %u workload(s) formed group commit batches of more than one run\n",
           gc_multi);
    if (scripted_total)
        printf("crash-sim: directed scenarios: %u of %u overwrites were submitted while the"
               " allocation's table entry write was in flight\n",
               scripted_armed, scripted_total);
    printf("crash-sim: %lu crash states checked in %.1f s, %lu qemu-img checks, seed %" PRIu64
           "\n",
           total_states, now_s() - t0, qemu_checks, seed);
    if (violations && keep_files) {
        fprintf(stderr, "crash-sim: FAIL: %u violation(s); scratch files kept in %s\n",
                violations, dir);
        return 1;
    }
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (violations) {
        fprintf(stderr, "crash-sim: FAIL: %u violation(s) (CRASH_KEEP=1 keeps the failing"
                " crash states)\n", violations);
        return 1;
    }
    if (!only_w && !only_p && total_states < min_states) {
        fprintf(stderr, "crash-sim: FAIL: only %lu crash states checked, fewer than %" PRIu64 "\n",
                total_states, min_states);
        return 1;
    }
    if (nrun && !qemu_missing && !only_p && qemu_checks == 0 && (!only_w || configs[only_workload].qemu)) {
        fprintf(stderr, "crash-sim: FAIL: no qemu-img check was run\n");
        return 1;
    }
    printf("crash-sim: PASS\n");
    return 0;
}
