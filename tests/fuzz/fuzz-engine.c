/*
 * fuzz-engine.c - libFuzzer target that drives lib/ directly (no server)
 * against an in-memory reference model of the disk (issue 11).
 *
 * Input: a geometry, then a sequence of operations.
 *
 *   geometry  cluster size 4 KiB .. 64 MiB, table size 1 .. 16; tables of
 *             at most 1 MiB but in one input in eight, where they reach
 *             4 MiB, or 64 MiB in one in 32 (opening an image reads and
 *             scans the whole L1 table several times: a large one costs
 *             seconds under the sanitizers);
 *             virtual size at or just below the largest allowed (the
 *             geometry's maximum, capped at 2^63 - 512), not a cluster
 *             multiple, small, or random; an optional raw or QED backing
 *             file shorter than the image (at most 2 MiB, half of it data);
 *             the L2 cache size and the clean delay.
 *   ops       read, write (with and without FUA), write-zeroes (NO_HOLE,
 *             FAST_ZERO, FUA), trim, flush, block status, resize, a batch of
 *             concurrent writes, clean close and reopen, simulated crash and
 *             reopen; offsets biased to 0, cluster and table boundaries, the
 *             end of the image and the data written so far, shifted by a
 *             sector, a byte or a few KiB; lengths small (at most 256 KiB of
 *             data), except write-zeroes, trim and block status, which can
 *             span many clusters without data.  Out-of-range requests
 *             (offsets up to 2^64 - 1) must be refused and change nothing.
 *
 * The model is a list of extents over [0, 2^64): each says what the range
 * reads as (zeros, the backing file, the data of write number N, or
 * anything), and whether zeros are also allowed (after a trim, whose whole
 * clusters may read as zeros or as before).  Written data is a pattern of
 * (write number, offset) that never has a zero byte, so misplaced data,
 * stale data and zeros are all told apart.
 *
 * Checks: every read matches the model byte for byte; every block status
 * reply is contiguous from the offset, within the request and the extent
 * limit, and an extent said to read as zeros (or not present) must be
 * allowed to by the model; a valid request never fails (there is no fault
 * injection here); after every reopen qed_check() finds no corruption, a
 * clean close leaves the image clean, and the written extents read back.
 *
 * Simulated crash: the image runs on the test I/O engine, whose observer
 * sees every I/O just before it is performed, in order.  Each WRITE and
 * PUNCH of the image since its last FSYNC is logged with the bytes it
 * replaces.  A crash builds a copy of the file, undoes the logged I/Os (and
 * truncates to the size at the last FSYNC: the durable state), then redoes
 * a subset of them chosen by the input, in order; the copy replaces the
 * image and is reopened (which repairs it).  The model then accepts
 * anything in the ranges written since the last successful flush (FUA
 * writes excepted) and any size taken since then.
 *
 * Run: see tests/fuzz/README.md.  QEDNBD_FUZZ_VERBOSE=1 traces each
 * operation and the library's log.
 */
#include "config.h"

#include <fcntl.h>
#include <inttypes.h>
#include <sys/stat.h>

#include <ev.h>

#include "fuzz-model.h"
#include "fuzz-util.h"
#include "qed-io-test.h"
#include "qed-image.h"
#include "qed.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define KiB UINT64_C(1024)
#define MiB (KiB * 1024)
/* The largest virtual size generated.  Build with
 * -DSIZE_CAP='(UINT64_MAX & ~UINT64_C(511))' to try sizes past INT64_MAX,
 * which the library must refuse (issue 11, item 1); the seeds of the
 * largest sizes then reach the end of the 64-bit range at once. */
#ifndef SIZE_CAP
#define SIZE_CAP (UINT64_C(0x7fffffffffffffff) & ~UINT64_C(511)) /* 2^63 - 512 */
#endif
#define MAX_DATA (256 * KiB)     /* data bytes of one read or write */
#define MAX_TABLE (1 * MiB)      /* largest table, but in one input in eight (see setup) */
#define MAX_BACKING (2 * MiB)
#define MAX_OPS 200
#define LOG_LIMIT (192 * MiB)    /* crash log bytes; past it a crash is a clean reopen */
#define IMG "img.qed"
#define CRASH_TMP "crash.tmp"

#define TRACE(...) do { if (fz_verbose) fprintf(stderr, __VA_ARGS__); } while (0)

/* Counters (QEDNBD_FUZZ_STATS) */
enum { ST_INPUTS, ST_READS, ST_WRITES, ST_BSTATUS, ST_REOPENS, ST_CRASHES };

/* ---- The engine under test -------------------------------------------------- */

struct logrec {
    enum qed_io_op op;
    uint64_t off, len;
    uint8_t *old, *new;   /* bytes replaced; bytes written (WRITE) */
};

static struct {
    struct ev_loop *loop;
    qed_aio *aio;
    qed_image *img;
    struct qed_open_opts oo;
    uint32_t cs, ts;
    uint64_t cover;       /* bytes one L2 table maps */
    uint64_t size;        /* current virtual size */
    uint64_t max;         /* largest size this geometry allows (capped) */
    uint64_t lib_max;     /* the library's maximum for it (qed_get_info) */
    uint32_t seed;        /* number of the last write */
    unsigned reopens;     /* reopens and crashes in this input */
    uint64_t last_off;

    /* Crash log: I/Os on the image since its last FSYNC */
    bool recording;
    struct logrec *log;
    size_t nlog, caplog;
    uint64_t log_bytes;
    bool log_overflow;
    uint64_t durable_size;

    /* Since the last successful flush: ranges written, sizes taken */
    struct range *dirty;
    size_t ndirty, capdirty;
    uint64_t sizes[MAX_OPS + 2];
    size_t nsizes;
} E;

static void log_clear(void)
{
    for (size_t i = 0; i < E.nlog; i++) {
        free(E.log[i].old);
        free(E.log[i].new);
    }
    E.nlog = 0;
    E.log_bytes = 0;
    E.log_overflow = false;
}

static uint64_t fd_size(int fd)
{
    struct stat st;

    if (fstat(fd, &st) < 0)
        fz_fail("fstat: %s", strerror(errno));
    return (uint64_t)st.st_size;
}

/* Full pread, zeros past EOF. */
static void pread_z(int fd, uint8_t *buf, uint64_t len, uint64_t off)
{
    uint64_t done = 0;

    memset(buf, 0, len);
    while (done < len) {
        ssize_t n = pread(fd, buf + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fz_fail("pread: %s", strerror(errno));
        if (n == 0)
            break;
        done += (uint64_t)n;
    }
}

static void pwrite_full(int fd, const uint8_t *buf, uint64_t len, uint64_t off)
{
    uint64_t done = 0;

    while (done < len) {
        ssize_t n = pwrite(fd, buf + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fz_fail("pwrite: %s", strerror(errno));
        done += (uint64_t)n;
    }
}

/* The test engine's observer: log the image's writes and punches (see the top). */
static void observer(struct qed_io *io, int err, void *opaque)
{
    struct logrec *r;

    (void)opaque;
    if (!E.recording || err < 0 || !E.img || io->fd != E.img->fd)
        return;
    if (io->op == QED_IO_FSYNC) {
        /* Every write performed so far is durable (the test engine
         * performs I/Os one at a time, in order). */
        log_clear();
        E.durable_size = fd_size(io->fd);
        return;
    }
    if (io->op != QED_IO_WRITE && io->op != QED_IO_PUNCH)
        return;
    if (E.log_overflow)
        return;
    if (E.log_bytes + 2 * io->length > LOG_LIMIT) {
        log_clear();
        E.log_overflow = true;   /* until the next FSYNC */
        return;
    }
    if (E.nlog == E.caplog) {
        E.caplog = E.caplog ? 2 * E.caplog : 64;
        E.log = xrealloc(E.log, E.caplog * sizeof(*E.log));
    }
    r = &E.log[E.nlog++];
    memset(r, 0, sizeof(*r));
    r->op = io->op;
    r->off = io->offset;
    r->len = io->length;
    r->old = xrealloc(NULL, r->len);
    pread_z(io->fd, r->old, r->len, r->off);
    E.log_bytes += r->len;
    if (io->op == QED_IO_WRITE) {
        uint64_t p = 0;
        r->new = xrealloc(NULL, r->len);
        for (int i = 0; i < io->iovcnt; i++) {
            memcpy(r->new + p, io->iov[i].iov_base, io->iov[i].iov_len);
            p += io->iov[i].iov_len;
        }
        E.log_bytes += r->len;
    }
}

static void dirty_add(uint64_t s, uint64_t e)
{
    if (s >= e)
        return;
    if (E.ndirty == E.capdirty) {
        E.capdirty = E.capdirty ? 2 * E.capdirty : 64;
        E.dirty = xrealloc(E.dirty, E.capdirty * sizeof(*E.dirty));
    }
    E.dirty[E.ndirty++] = (struct range){s, e};
}

/* Everything acknowledged so far is durable. */
static void durable_now(void)
{
    E.ndirty = 0;
    E.nsizes = 1;
    E.sizes[0] = E.size;
}

static void open_image(const char *why)
{
    char err[512];
    struct qed_check_result res;
    struct qed_info info;
    int r = qed_open(E.aio, fz_path(IMG), &E.oo, &E.img, err, sizeof(err));

    if (r < 0)
        fz_fail("%s: qed_open: %s (%d)", why, err, r);
    memset(&res, 0, sizeof(res));
    r = qed_check(E.img, false, &res);
    if (r < 0 || res.corruptions || res.check_errors)
        fz_fail("%s: qed_check returned %d: %" PRIu64 " corruptions, %" PRIu64 " check errors",
                why, r, res.corruptions, res.check_errors);
    qed_get_info(E.img, &info);
    E.durable_size = fd_size(E.img->fd);
    log_clear();
    E.recording = true;
    TRACE("  %s: size %" PRIu64 ", %" PRIu64 " clusters allocated, %" PRIu64 " leaked\n", why,
          info.size, res.allocated_clusters, res.leaks);
}

/* ---- Requests -------------------------------------------------------------- */

static bool in_range(uint64_t off, uint64_t len)
{
    return off <= E.size && len <= E.size - off;
}

static void do_read(uint64_t off, size_t len, const char *when)
{
    uint8_t *buf = xrealloc(NULL, len);
    bool ok = in_range(off, len);
    int r;

    memset(buf, 0xa5, len);
    r = qed_sync_read(E.img, off, buf, len);
    TRACE("read %" PRIu64 " +%zu = %d\n", off, len, r);
    if (ok && len && r < 0)
        fz_fail("%s: read at %" PRIu64 " +%zu (size %" PRIu64 ") failed: %s", when, off, len,
                E.size, strerror(-r));
    if (!ok && len && r == 0)
        fz_fail("read at %" PRIu64 " +%zu past the end (size %" PRIu64 ") succeeded", off, len,
                E.size);
    if (r == 0 && len) {
        m_check_read(off, buf, len, when);
        fz_stats[ST_READS]++;
    }
    free(buf);
}

static void do_write(uint64_t off, size_t len, unsigned flags)
{
    uint8_t *buf = xrealloc(NULL, len);
    bool ok = in_range(off, len);
    uint32_t seed = ++E.seed;
    int r;

    pat_fill(buf, seed, off, len);
    r = qed_sync_write(E.img, off, buf, len, flags);
    TRACE("write #%u %" PRIu64 " +%zu flags %u = %d\n", seed, off, len, flags, r);
    free(buf);
    if (ok && len && r < 0)
        fz_fail("write at %" PRIu64 " +%zu (size %" PRIu64 ") failed: %s", off, len, E.size,
                strerror(-r));
    if (!ok && len && r == 0)
        fz_fail("write at %" PRIu64 " +%zu past the end (size %" PRIu64 ") succeeded", off, len,
                E.size);
    if (r == 0 && len) {
        fz_stats[ST_WRITES]++;
        m_set(off, off + len, MK_DATA, seed);
        if (!(flags & QED_REQ_FUA))
            dirty_add(off, off + len);
        E.last_off = off;
    }
}

static void do_zero(uint64_t off, uint64_t len, unsigned flags)
{
    bool ok = in_range(off, len);
    int r = qed_sync_write_zeroes(E.img, off, len, flags);

    TRACE("write-zeroes %" PRIu64 " +%" PRIu64 " flags %u = %d\n", off, len, flags, r);
    if (ok && len && r < 0 && !(r == -ENOTSUP && (flags & QED_REQ_FAST_ZERO)))
        fz_fail("write-zeroes at %" PRIu64 " +%" PRIu64 " flags %u (size %" PRIu64
                ") failed: %s", off, len, flags, E.size, strerror(-r));
    if (!ok && len && r == 0)
        fz_fail("write-zeroes at %" PRIu64 " +%" PRIu64 " past the end (size %" PRIu64
                ") succeeded", off, len, E.size);
    if (r == 0 && len) {
        m_set(off, off + len, MK_ZERO, 0);
        if (!(flags & QED_REQ_FUA))
            dirty_add(off, off + len);
    }
}

static void do_trim(uint64_t off, uint64_t len)
{
    bool ok = in_range(off, len);
    int r = qed_sync_discard(E.img, off, len);
    uint64_t end = off + len, c;

    TRACE("trim %" PRIu64 " +%" PRIu64 " = %d\n", off, len, r);
    if (ok && len && r < 0)
        fz_fail("trim at %" PRIu64 " +%" PRIu64 " (size %" PRIu64 ") failed: %s", off, len,
                E.size, strerror(-r));
    if (!ok && len && r == 0)
        fz_fail("trim at %" PRIu64 " +%" PRIu64 " past the end (size %" PRIu64 ") succeeded",
                off, len, E.size);
    if (r < 0 || !len)
        return;
    /* Whole clusters in the range (the last, partial one counts when the
     * range reaches the end) may read as zeros or as before. */
    c = (off + E.cs - 1) / E.cs * E.cs;
    if (c < off)
        return;
    for (; c < end; c += E.cs) {
        uint64_t ce = E.size - c < E.cs ? E.size : c + E.cs;
        if (ce > end)
            break;
        m_or_zero(c, ce);
        dirty_add(c, ce);
    }
}

static void do_flush(void)
{
    int r = qed_sync_flush(E.img);

    TRACE("flush = %d\n", r);
    if (r < 0)
        fz_fail("flush failed: %s", strerror(-r));
    durable_now();
}

static void do_block_status(uint64_t off, uint64_t len, size_t max)
{
    struct qed_extent ext[64];
    size_t n = 0;
    bool ok = in_range(off, len);
    uint64_t pos = off, bad = 0;
    int r = qed_sync_block_status(E.img, off, len, ext, max, &n);

    TRACE("block-status %" PRIu64 " +%" PRIu64 " max %zu = %d, %zu extents\n", off, len, max,
          r, n);
    if (ok && len && r < 0)
        fz_fail("block status at %" PRIu64 " +%" PRIu64 " (size %" PRIu64 ") failed: %s", off,
                len, E.size, strerror(-r));
    if (!ok && len && r == 0)
        fz_fail("block status at %" PRIu64 " +%" PRIu64 " past the end succeeded", off, len);
    if (r < 0 || !len)
        return;
    if (n == 0 || n > max)
        fz_fail("block status at %" PRIu64 " +%" PRIu64 ": %zu extents (max %zu)", off, len, n,
                max);
    for (size_t i = 0; i < n; i++) {
        const struct qed_extent *x = &ext[i];
        if (x->start != pos || x->length == 0 || x->length > off + len - pos)
            fz_fail("block status at %" PRIu64 " +%" PRIu64 ": extent %zu is [%" PRIu64
                    " +%" PRIu64 "], expected to start at %" PRIu64 " within the range",
                    off, len, i, x->start, x->length, pos);
        if ((x->zero || !x->present) && !m_zero_ok(x->start, x->start + x->length, &bad))
            fz_fail("block status: extent [%" PRIu64 " +%" PRIu64 "] (depth %u) is said to "
                    "read as zeros%s, but byte %" PRIu64 " is not zero in the model",
                    x->start, x->length, x->depth, x->present ? "" : " (not present)", bad);
        pos += x->length;
    }
    fz_stats[ST_BSTATUS]++;
}

static void do_resize(uint64_t want)
{
    uint64_t rounded = (want + 511) & ~(uint64_t)511;
    int r = qed_sync_resize(E.img, want);
    bool ok = rounded >= E.size && rounded <= E.max;

    TRACE("resize %" PRIu64 " = %d\n", want, r);
    if (ok && r < 0)
        fz_fail("resize from %" PRIu64 " to %" PRIu64 " (max %" PRIu64 ") failed: %s", E.size,
                want, E.max, strerror(-r));
    if (rounded < E.size && r == 0)
        fz_fail("resize from %" PRIu64 " down to %" PRIu64 " succeeded", E.size, want);
    if ((rounded > E.lib_max || rounded < want) && r == 0)
        fz_fail("resize to %" PRIu64 ", past the maximum %" PRIu64 ", succeeded", want,
                E.lib_max);
    if (r == 0 && qed_size(E.img) != rounded)
        fz_fail("resize to %" PRIu64 ": the size is now %" PRIu64, want, qed_size(E.img));
    if (r == 0) {
        E.size = rounded;
        if (E.nsizes < sizeof(E.sizes) / sizeof(E.sizes[0]))
            E.sizes[E.nsizes++] = rounded;
    }
}

struct bw {
    uint64_t off;
    size_t len;
    uint32_t seed;
    uint8_t *buf;
    int ret;
    bool sub, done;
};

static void bw_cb(void *opaque, int ret)
{
    struct bw *w = opaque;

    w->ret = ret;
    w->done = true;
}

/* A batch of concurrent writes: overlapping parts may end up with any of them. */
static void do_batch(struct bw *w, size_t k)
{
    bool all;

    for (size_t i = 0; i < k; i++) {
        int r;
        w[i].seed = ++E.seed;
        w[i].buf = xrealloc(NULL, w[i].len);
        pat_fill(w[i].buf, w[i].seed, w[i].off, w[i].len);
        r = qed_write(E.img, w[i].off, w[i].buf, w[i].len, 0, bw_cb, &w[i]);
        w[i].sub = r == 0;
        w[i].ret = r;
        TRACE("batch write #%u %" PRIu64 " +%zu = %d\n", w[i].seed, w[i].off, w[i].len, r);
    }
    do {
        all = true;
        for (size_t i = 0; i < k; i++)
            all &= !w[i].sub || w[i].done;
        if (!all)
            ev_run(E.loop, EVRUN_ONCE);
    } while (!all);
    for (size_t i = 0; i < k; i++) {
        bool ok = in_range(w[i].off, w[i].len);
        free(w[i].buf);
        if (ok && w[i].len && w[i].ret < 0)
            fz_fail("batch write at %" PRIu64 " +%zu failed: %s", w[i].off, w[i].len,
                    strerror(-w[i].ret));
        if (!ok && w[i].len && w[i].ret == 0)
            fz_fail("batch write at %" PRIu64 " +%zu past the end succeeded", w[i].off,
                    w[i].len);
        if (w[i].ret == 0 && w[i].len) {
            m_set(w[i].off, w[i].off + w[i].len, MK_DATA, w[i].seed);
            dirty_add(w[i].off, w[i].off + w[i].len);
        }
    }
    for (size_t i = 0; i < k; i++)
        for (size_t j = i + 1; j < k; j++) {
            uint64_t s, e;
            if (w[i].ret || w[j].ret)
                continue;
            s = w[i].off > w[j].off ? w[i].off : w[j].off;
            e = w[i].off + w[i].len < w[j].off + w[j].len ? w[i].off + w[i].len
                                                          : w[j].off + w[j].len;
            if (s < e)
                m_set(s, e, MK_ANY, 0);
        }
}

/* Read back a few written extents (after a reopen). */
static void verify_some(const char *when)
{
    unsigned done = 0;

    for (size_t i = 0; i < M.n && done < 8; i++) {
        const struct mext *x = &M.v[i];
        uint64_t len;
        if (x->kind != MK_DATA || x->s >= E.size)
            continue;
        len = x->e - x->s;
        if (len > 64 * KiB)
            len = 64 * KiB;
        if (len > E.size - x->s)
            len = E.size - x->s;
        do_read(x->s, (size_t)len, when);
        done++;
    }
}

static void close_image(void)
{
    int r;

    E.recording = false;
    r = qed_close(E.img);
    E.img = NULL;
    if (r < 0)
        fz_fail("qed_close failed: %s", strerror(-r));
}

static void do_reopen(void)
{
    struct qed_info info;

    TRACE("close and reopen\n");
    fz_stats[ST_REOPENS]++;
    close_image();
    open_image("reopen after a clean close");
    qed_get_info(E.img, &info);
    if (info.dirty)
        fz_fail("the image is still marked NEED_CHECK after a clean close");
    if (info.size != E.size)
        fz_fail("size %" PRIu64 " after a clean close, expected %" PRIu64, info.size, E.size);
    durable_now();
    verify_some("after a clean close");
}

/* Copy the image file (sparse) to CRASH_TMP and return its descriptor. */
static int copy_image(void)
{
    int in = E.img->fd;
    int out = open(fz_path(CRASH_TMP), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    uint64_t size = fd_size(in);
    off_t pos = 0;
    uint8_t *buf = xrealloc(NULL, MiB);

    if (out < 0)
        fz_fail("%s: %s", CRASH_TMP, strerror(errno));
    if (ftruncate(out, (off_t)size) < 0)
        fz_fail("ftruncate: %s", strerror(errno));
    while ((uint64_t)pos < size) {
        off_t d = lseek(in, pos, SEEK_DATA), h;
        if (d < 0)
            break;
        h = lseek(in, d, SEEK_HOLE);
        for (pos = d; pos < h;) {
            uint64_t n = (uint64_t)(h - pos) < MiB ? (uint64_t)(h - pos) : MiB;
            pread_z(in, buf, n, (uint64_t)pos);
            pwrite_full(out, buf, n, (uint64_t)pos);
            pos += (off_t)n;
        }
    }
    free(buf);
    return out;
}

static void do_crash(struct fz_in *in)
{
    uint8_t mode = fz_u8(in);
    uint64_t rng = fz_u64(in), old_size = E.size;
    size_t kept = 0;
    int fd;

    if (E.log_overflow) {
        TRACE("crash: too much logged since the last fsync; a clean reopen instead\n");
        do_reopen();
        return;
    }
    fd = copy_image();
    /* Back to the durable state: undo everything logged, newest first. */
    for (size_t i = E.nlog; i-- > 0;)
        pwrite_full(fd, E.log[i].old, E.log[i].len, E.log[i].off);
    if (ftruncate(fd, (off_t)E.durable_size) < 0)
        fz_fail("ftruncate: %s", strerror(errno));
    /* Then a subset of the logged I/Os reached the disk, in order. */
    for (size_t i = 0; i < E.nlog; i++) {
        bool keep = mode % 3 == 1 || (mode % 3 == 2 && ((rng = mix64(rng)) & 1));
        const struct logrec *r = &E.log[i];
        if (!keep)
            continue;
        kept++;
        if (r->op == QED_IO_WRITE) {
            pwrite_full(fd, r->new, r->len, r->off);
        } else {
            uint64_t sz = fd_size(fd);
            if (r->off < sz) {
                uint64_t n = r->len < sz - r->off ? r->len : sz - r->off;
                uint8_t *z = calloc(1, n ? n : 1);
                if (!z)
                    fz_fail("out of memory");
                pwrite_full(fd, z, n, r->off);
                free(z);
            }
        }
    }
    close(fd);
    TRACE("crash: %zu I/Os since the last fsync, %zu kept; durable size %" PRIu64 "\n", E.nlog,
          kept, E.durable_size);
    log_clear();
    close_image();
    if (rename(fz_path(CRASH_TMP), fz_path(IMG)) < 0)
        fz_fail("rename: %s", strerror(errno));
    fz_stats[ST_CRASHES]++;
    open_image("reopen after a crash");

    /* What was not durable may read as anything; the size is one taken since. */
    for (size_t i = 0; i < E.ndirty; i++)
        m_set(E.dirty[i].s, E.dirty[i].e, MK_ANY, 0);
    E.size = qed_size(E.img);
    {
        bool known = false;
        for (size_t i = 0; i < E.nsizes; i++)
            known |= E.sizes[i] == E.size;
        if (!known)
            fz_fail("size %" PRIu64 " after a crash was never taken since the last flush "
                    "(last %" PRIu64 ")", E.size, old_size);
    }
    if (E.size < old_size)
        m_set(E.size, old_size, MK_ANY, 0);
    durable_now();
    verify_some("after a crash");
}

/* ---- Choosing offsets and lengths ------------------------------------------ */

static uint64_t pick_len_raw(struct fz_in *in, bool sparse)
{
    uint8_t b = fz_u8(in);
    uint64_t v = fz_u32(in);

    switch (b % 8) {
    case 0: return v % 4096 + 1;
    case 1: return (v % (MAX_DATA / 512) + 1) * 512;
    case 2: return E.cs <= MAX_DATA || sparse ? E.cs : MAX_DATA;
    case 3: return 0;
    case 4: return E.cs <= MAX_DATA || sparse ? E.cs + 512 * (v % 3) - 512 : MAX_DATA;
    case 5: return v % MAX_DATA + 1;
    case 6: return sparse ? E.cs * (v % 64 + 1) : 512;
    default: return sparse ? (v % 2 + 1) * E.cover : v % 64 + 1;
    }
}

/*
 * A length.  Data lengths are cut to MAX_DATA by the caller; a sparse one
 * (write-zeroes, trim, block status) may span up to two tables but at most
 * 1024 clusters and 4 GiB (an NBD request's length is 32 bits): the engine
 * does per-cluster work, so a bigger range only makes the input slow.
 */
static uint64_t pick_len(struct fz_in *in, bool sparse)
{
    uint64_t len = pick_len_raw(in, sparse);
    uint64_t cap = 1024 * (uint64_t)E.cs;

    if (cap > 4096 * MiB)
        cap = 4096 * MiB;
    return len > cap ? cap - (len & 511) : len;
}

static uint64_t pick_off(struct fz_in *in, uint64_t len)
{
    uint8_t b = fz_u8(in);
    uint64_t v = fz_u32(in), base, nclu = E.size / E.cs, ntab = E.size / E.cover;

    switch (b % 8) {
    case 0: base = 0; break;
    case 1: base = (b & 0x80 ? nclu - v % (nclu + 1) : v % (nclu + 1)) * E.cs; break;
    case 2: base = (b & 0x80 ? ntab - v % (ntab + 1) : v % (ntab + 1)) * E.cover; break;
    case 3: base = E.size; break;
    case 4: base = E.size - len; break;
    case 5: base = v * (uint64_t)fz_u32(in) % (E.size + 1); break;
    case 6: base = E.last_off; break;
    default: base = fz_u64(in); break;    /* anywhere, far past the end too */
    }
    switch ((b >> 3) % 8) {
    case 0: return base;
    case 1: return base + 512;
    case 2: return base - 512;
    case 3: return base + 1;
    case 4: return base - 1;
    case 5: return base + v % 65536;
    case 6: return base - v % 65536;
    default: return base + E.cs / 2;
    }
}

/* A data length: at most MAX_DATA. */
static size_t data_len(uint64_t len)
{
    return (size_t)(len > MAX_DATA ? MAX_DATA : len);
}

static void one_op(struct fz_in *in)
{
    uint8_t op = fz_u8(in);
    uint64_t len, off;

    switch (op % 16) {
    case 0: case 1: case 2:
        len = data_len(pick_len(in, false));
        do_read(pick_off(in, len), (size_t)len, "read");
        break;
    case 3: case 4: case 5:
        len = data_len(pick_len(in, false));
        off = pick_off(in, len);
        do_write(off, (size_t)len, op & 0x10 ? QED_REQ_FUA : 0);
        break;
    case 6: case 7: {
        unsigned flags = (op >> 4) & (QED_REQ_FUA | QED_REQ_NO_HOLE | QED_REQ_FAST_ZERO);
        len = pick_len(in, !(flags & QED_REQ_NO_HOLE));
        /* NO_HOLE writes real zeros: keep it to a few MiB. */
        if ((flags & QED_REQ_NO_HOLE) && len > 4 * MiB)
            len = 4 * MiB;
        do_zero(pick_off(in, len), len, flags);
        break;
    }
    case 8:
        len = pick_len(in, true);
        if (len > 16 * E.cs)
            len = 16 * E.cs;   /* the crash log copies what a punch replaces */
        do_trim(pick_off(in, len), len);
        break;
    case 9:
        do_flush();
        break;
    case 10: case 11: {
        size_t max = fz_u8(in) % 64 + 1;
        len = pick_len(in, true);
        if (op & 0x10)
            len = fz_u32(in);  /* up to 4 GiB */
        do_block_status(pick_off(in, len), len, max);
        break;
    }
    case 12: {
        uint8_t b = fz_u8(in);
        uint64_t v = fz_u32(in);
        uint64_t want = b % 5 == 0 ? E.size + 512 * (v % 64)
                      : b % 5 == 1 ? E.size + E.cs * (v % 4 + 1) + (b & 0x80 ? 1 : 0)
                      : b % 5 == 2 ? E.max - 512 * (v % 4)
                      : b % 5 == 3 ? E.size - 512 * (v % 2 + 1)
                      : E.size + v * (uint64_t)fz_u32(in) % (E.max - E.size + 1);
        do_resize(want);
        break;
    }
    case 13: {
        struct bw w[4];
        size_t k = fz_u8(in) % 3 + 2;
        memset(w, 0, sizeof(w));
        for (size_t i = 0; i < k; i++) {
            w[i].len = data_len(pick_len(in, false));
            w[i].off = pick_off(in, w[i].len);
        }
        do_batch(w, k);
        break;
    }
    case 14:
    default:
        /* Each reopen reads and scans the L1 table: with a large table
         * only the first two are worth their time; then a flush. */
        if (E.reopens >= (E.cs * (uint64_t)E.ts > MAX_TABLE ? 2u : 16u)) {
            do_flush();
            break;
        }
        E.reopens++;
        if (op % 16 == 14)
            do_reopen();
        else
            do_crash(in);
        break;
    }
}

/* ---- Set-up ------------------------------------------------------------------ */

static uint64_t geom_max(uint32_t cs, uint32_t ts)
{
    uint64_t n = (uint64_t)ts * cs / 8;
    unsigned bits = 0;

    for (uint64_t x = n * n; x > 1; x >>= 1)
        bits++;
    for (uint32_t x = cs; x > 1; x >>= 1)
        bits++;
    if (bits >= 64 || ((uint64_t)1 << bits) > SIZE_CAP)
        return SIZE_CAP;
    return (uint64_t)1 << bits;
}

/* The backing file: raw (any length) or QED; half of it holds data. */
static int make_backing(struct fz_in *in, uint8_t kind, uint64_t size, char *name)
{
    uint64_t want = fz_u32(in) % MAX_BACKING + 1;
    char err[512];
    int r;

    bk_len = want < size ? want : size - 1;
    if (kind == 2)
        bk_len &= ~(uint64_t)511;   /* a QED backing file's size is a multiple of 512 */
    bk = xrealloc(bk, bk_len);
    for (uint64_t o = 0; o < bk_len; o++)
        bk[o] = (o / (64 * KiB)) % 2 ? 0 : pat_byte(0xffffff, o);
    if (kind == 1) {
        int fd = open(fz_path("backing.raw"), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
            fz_fail("backing.raw: %s", strerror(errno));
        pwrite_full(fd, bk, bk_len, 0);
        close(fd);
        strcpy(name, "backing.raw");
        return 0;
    }
    {
        struct qed_create_opts co = {.size = bk_len, .cluster_size = 4096, .table_size = 1};
        struct qed_open_opts oo = {0};
        qed_image *b;

        r = qed_create(fz_path("backing.qed"), &co, err, sizeof(err));
        if (r < 0)
            fz_fail("creating the QED backing file: %s", err);
        r = qed_open(E.aio, fz_path("backing.qed"), &oo, &b, err, sizeof(err));
        if (r < 0)
            fz_fail("opening the QED backing file: %s", err);
        for (uint64_t o = 0; o < bk_len; o += 128 * KiB) {
            uint64_t n = bk_len - o < 64 * KiB ? bk_len - o : 64 * KiB;
            r = qed_sync_write(b, o, bk + o, n, 0);
            if (r < 0)
                fz_fail("writing the QED backing file: %s", strerror(-r));
        }
        r = qed_close(b);
        if (r < 0)
            fz_fail("closing the QED backing file: %s", strerror(-r));
        strcpy(name, "backing.qed");
    }
    return 0;
}

static bool setup(struct fz_in *in)
{
    uint8_t g = fz_u8(in), s = fz_u8(in), b = fz_u8(in), c = fz_u8(in);
    uint32_t cs = 4096u << (g % 15), ts = 1u << ((g >> 4) % 5);
    uint64_t v = fz_u64(in), size, max_table = MAX_TABLE;
    struct qed_create_opts co = {0};
    char name[64], err[512];
    int r;

    /* Mostly small clusters and tables: cheap, and many tables in a small
     * image.  One input in eight may have large ones (see the top). */
    if ((g & 0xe0) != 0xe0 && cs > 64 * KiB)
        cs = 4096u << (g % 5);
    if ((g & 0xe0) == 0xe0)
        max_table = (c & 0x60) == 0x60 ? 64 * MiB : 4 * MiB;
    if (cs > max_table)
        cs = (uint32_t)max_table;
    while (ts > 1 && (uint64_t)cs * ts > max_table)
        ts /= 2;
    E.cs = cs;
    E.ts = ts;
    E.cover = (uint64_t)cs * ts / 8 * cs;
    E.max = geom_max(cs, ts);
    switch (s % 8) {
    case 0: size = E.max; break;
    case 1: size = E.max - 512; break;
    case 2: size = E.max - cs + 512 * (v % (cs / 512 - 1) + 1); break;   /* not a multiple */
    case 3: size = (v % 64 + 1) * cs + 512 * (s >> 3); break;
    case 4: size = (v % (E.max / 512)) * 512 + 512; break;
    case 5: size = E.cover * (v % 4 + 1) - 512 * (s >> 7); break;
    case 6: size = E.max - E.cover + 512; break;
    default: size = (v % 16 + 1) * 512; break;
    }
    if (size > E.max)
        size = E.max;
    if (size < 512)
        size = 512;
    co.size = size;
    co.cluster_size = cs;
    co.table_size = ts;
    if (b % 3 && size > 512) {
        make_backing(in, b % 3, size, name);
        co.backing_file = name;
        co.backing_fmt = b % 3 == 1 ? (b & 0x80 ? QED_BACKING_PROBE : QED_BACKING_RAW)
                                    : (b & 0x80 ? QED_BACKING_PROBE : QED_BACKING_QED);
    } else {
        bk_len = 0;
    }
    E.oo.l2_cache_tables = c % 8 + 1;
    E.oo.clean_delay_ms = c & 0x80 ? 1 : 5000;
    r = qed_create(fz_path(IMG), &co, err, sizeof(err));
    TRACE("create cs %u ts %u size %" PRIu64 " (max %" PRIu64 ") backing %s: %d\n", cs, ts,
          size, E.max, co.backing_file ? co.backing_file : "-", r);
    /* Past INT64_MAX (only with -DSIZE_CAP=...), a refusal is right. */
    if (r < 0 && size > (UINT64_C(0x7fffffffffffffff) & ~UINT64_C(511)))
        return false;
    if (r < 0)
        fz_fail("qed_create of a valid geometry failed: %s", err);
    E.size = size;
    E.seed = 0;
    E.reopens = 0;
    E.last_off = 0;
    m_reset(MK_BACKING);
    open_image("open after create");
    {
        struct qed_info info;
        qed_get_info(E.img, &info);
        if (info.size != size)
            fz_fail("created with size %" PRIu64 ", opened with %" PRIu64, size, info.size);
        /* The library's own limit, if stricter (the cap of issue 11). */
        E.lib_max = info.max_size;
        if (info.max_size < E.max)
            E.max = info.max_size;
    }
    durable_now();
    return true;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *v = getenv("QEDNBD_FUZZ_VERBOSE");

    (void)argc;
    (void)argv;
    fz_verbose = v ? atoi(v) : 0;
    qed_set_log(fz_log_cb, NULL, fz_verbose >= 2 ? QED_LOG_DEBUG : QED_LOG_INFO);
    fz_make_dir("fuzz-engine");
    fz_stat_names[ST_INPUTS] = "inputs";
    fz_stat_names[ST_READS] = "reads_checked";
    fz_stat_names[ST_WRITES] = "writes";
    fz_stat_names[ST_BSTATUS] = "block_status_checked";
    fz_stat_names[ST_REOPENS] = "reopens";
    fz_stat_names[ST_CRASHES] = "crashes";
    E.loop = ev_loop_new(EVFLAG_AUTO);
    if (!E.loop || qed_aio_new(E.loop, QED_AIO_TEST, &E.aio) < 0) {
        fprintf(stderr, "fuzz-engine: cannot set up the loop and the test I/O engine\n");
        exit(1);
    }
    qed_aio_test_set_auto(E.aio, true);
    qed_aio_test_set_observer(E.aio, observer, NULL);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz_in in = {data, size};

    fz_log_pos = 0;
    fz_clean_dir();
    fz_stats[ST_INPUTS]++;
    if (setup(&in)) {
        for (unsigned i = 0; i < MAX_OPS && in.n; i++)
            one_op(&in);
        close_image();
    }
    log_clear();
    fz_clean_dir();
    return 0;
}
