/*
 * fast-path.c - reads and overwrites of allocated clusters from threads
 * that do not own the image (qed_read_on, qed_write_on; issue 14).
 *
 * The engine is single-threaded: one thread, the owner, runs every request
 * machine of an image (its L2 cache, the allocating-write queue, group
 * commit, the flush latch).  Another thread may still read or overwrite
 * data clusters that are already allocated, on its own I/O engine, without
 * a message to the owner: the owner publishes its cached L2 tables
 * (l2-cache.c, struct qed_l2_slot) and this file reads them, seqlock
 * style, and does the data I/O itself.  Whatever it cannot do alone it
 * refuses with -EAGAIN before it starts, and the caller sends the request
 * to the owner instead: a table not in the cache, an entry that is not
 * allocated data (a hole, a zero cluster, a backing file's range), FUA,
 * a read-only image, an O_DIRECT write not aligned for O_DIRECT, an image
 * with dirty bitmaps (their marks are the owner's), more pieces than fit.
 *
 * Why this is safe beside the owner (contrib/bench/README.md, "Who owns
 * each image", has the long form):
 *  - publish after write: the owner stores an entry only once it is on
 *    disk, and before the request that made it completes; a request sent
 *    after that completion reads the entry, on any thread;
 *  - a host cluster is handed out once per open and never taken back
 *    (shrinking is not supported, discard keeps the mapping), so a write
 *    through an entry the owner changes meanwhile lands in a cluster
 *    nobody else gets: two overlapping requests in flight, which NBD
 *    leaves undefined;
 *  - an overwrite changes no metadata, so it needs neither the queue nor
 *    NEED_CHECK;
 *  - O_DIRECT: the owner's engine serializes read-modify-writes of partial
 *    blocks per engine (direct-io.c); an aligned write covers whole blocks,
 *    so it can only meet such a read-modify-write when the two overlap, and
 *    unaligned writes never come here;
 *  - bitmaps: a write must mark every enabled bitmap; while the image has
 *    any bitmap, writes go to the owner, and a write that finds one added
 *    while it was in flight tells its caller (*@remark) to have the owner
 *    mark it (qed_bitmap_mark_write) before it reports completion;
 *  - close: the caller closes the image only after every fast-path request
 *    completed (the server's threads stop only once every request they
 *    submitted is back, closed connections' too: request.c,
 *    lib_request_gone);
 *  - a corrupt L1 entry naming the L1 table as an L2 table is never
 *    published (l2-cache.c), as the owner refuses to write through it.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qed-image.h"

/* At most this many separate host runs in one fast request; more goes to the owner. */
#define FAST_MAX_IO 8

struct qed_fast {
    struct qed_image *img;
    qed_done_fn cb;
    void *opaque;
    bool *remark;              /* writes: set when bitmaps appeared in flight */
    bool write;
    unsigned pending;
    int err;
    struct qed_io io[FAST_MAX_IO];
    struct iovec iov[FAST_MAX_IO];
};

/* A planned run of the request: host offset and length. */
struct fast_run {
    uint64_t host, len;
};

int qed_fast_enable(qed_image *img)
{
    if (!img || !img->aio)
        return -EINVAL;
    if (img->pub)
        return 0;
    img->pub = calloc(img->g.table_entries, sizeof(img->pub[0]));
    if (!img->pub)
        return -ENOMEM;
    img->cache.pooled = true;
    /* Tables cached before now become readable when next loaded or
     * allocated; publish the ones already there at once. */
    for (struct qed_l2 *e = img->cache.mru; e; e = e->lnext)
        qed_l2_publish(img, e);
    return 0;
}

/*
 * Map [@off, @end) of the L2 table of L1 index @l1i through its published
 * slot into @runs (continuing run *@n).  Returns 0, or -EAGAIN when the
 * table is not published, changed while being read, or maps anything but
 * allocated data, or when the runs do not fit.
 */
static int map_table(struct qed_image *img, uint64_t l1i, uint64_t off, uint64_t end,
                     uint64_t file_size, struct fast_run *runs, unsigned *n)
{
    const struct qed_geom *g = &img->g;
    struct qed_l2_slot *s = __atomic_load_n(&img->pub[l1i], __ATOMIC_ACQUIRE);
    uint64_t seq, idx = qed_l2_index(g, off);

    if (!s)
        return -EAGAIN;
    seq = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
    if ((seq & 1) || __atomic_load_n(&s->l1_index, __ATOMIC_RELAXED) != l1i)
        return -EAGAIN;
    for (uint64_t pos = off; pos < end; idx++) {
        uint64_t e = le64toh(__atomic_load_n(&s->t[idx], __ATOMIC_RELAXED));
        uint64_t next = qed_start_of_cluster(g, pos) + g->cluster_size;
        uint64_t len = (next < end ? next : end) - pos;
        uint64_t host = e + qed_offset_in_cluster(g, pos);

        /* Plain allocated data only: no hole, zero cluster or bad entry. */
        if (e == QED_ENTRY_UNALLOCATED || e == QED_ENTRY_ZERO ||
            !qed_check_cluster_offset(g, e, file_size))
            return -EAGAIN;
        if (*n && runs[*n - 1].host + runs[*n - 1].len == host) {
            runs[*n - 1].len += len;
        } else {
            if (*n == FAST_MAX_IO)
                return -EAGAIN;
            runs[(*n)++] = (struct fast_run){host, len};
        }
        pos += len;
    }
    /* The entries before the second look at the sequence: if the owner
     * changed the slot meanwhile, the sequence says so. */
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (__atomic_load_n(&s->seq, __ATOMIC_RELAXED) != seq)
        return -EAGAIN;
    return 0;
}

/* Map the whole request, table by table.  0 or -EAGAIN. */
static int map_range(struct qed_image *img, uint64_t off, uint64_t len, struct fast_run *runs,
                     unsigned *n)
{
    const struct qed_geom *g = &img->g;
    uint64_t size = __atomic_load_n(&img->h.image_size, __ATOMIC_RELAXED);
    uint64_t file_size = __atomic_load_n(&img->file_size, __ATOMIC_RELAXED);
    uint64_t end, pos = off;

    /* Out of range, or empty: the owner gives the error or the answer. */
    if (len == 0 || off > size || len > size - off)
        return -EAGAIN;
    end = off + len;
    *n = 0;
    while (pos < end) {
        uint64_t l1i = qed_l1_index(g, pos);
        uint64_t tend = (pos | (qed_l2_coverage(g) - 1)) + 1; /* no wrap: end <= size */
        int r;

        if (l1i >= g->table_entries)
            return -EAGAIN;
        if (tend > end || tend == 0)
            tend = end;
        r = map_table(img, l1i, pos, tend, file_size, runs, n);
        if (r < 0)
            return r;
        pos = tend;
    }
    return 0;
}

static void fast_io_done(struct qed_io *io)
{
    struct qed_fast *f = io->opaque;
    struct qed_image *img = f->img;
    int ret;

    if (io->res < 0 && !f->err) {
        f->err = (int)io->res;
        qed_log(QED_LOG_ERROR, "%s: %s I/O at %" PRIu64 " failed: %s", img->path,
                f->write ? "write" : "read", io->offset, strerror((int)-io->res));
    }
    if (--f->pending)
        return;
    /* A bitmap added while the write was in flight must still record it,
     * as a write on the owner marks again when it completes (bitmap.c). */
    if (f->write && __atomic_load_n(&img->nbitmaps, __ATOMIC_SEQ_CST))
        *f->remark = true;
    ret = f->err;
    f->cb(f->opaque, ret);
    free(f);
}

/* Plan, then submit every run of @f on @aio.  0 or -EAGAIN (nothing submitted). */
static int fast_submit(struct qed_image *img, qed_aio *aio, bool write, uint64_t off,
                       const void *buf, size_t len, qed_done_fn cb, void *opaque, bool *remark)
{
    struct fast_run runs[FAST_MAX_IO];
    struct qed_fast *f;
    unsigned n;
    uint8_t *p = (uint8_t *)(uintptr_t)buf;

    if (!img || !img->pub || !aio || !cb || map_range(img, off, len, runs, &n) < 0)
        return -EAGAIN;
    f = malloc(sizeof(*f));
    if (!f)
        return -EAGAIN; /* the owner's path may have the memory */
    f->img = img;
    f->cb = cb;
    f->opaque = opaque;
    f->remark = remark;
    f->write = write;
    f->err = 0;
    f->pending = n;
    for (unsigned k = 0; k < n; k++) {
        f->iov[k].iov_base = p;
        f->iov[k].iov_len = runs[k].len;
        qed_io_set(&f->io[k], write ? QED_IO_WRITE : QED_IO_READ, img->fd, img->fd_io_flags,
                   &f->iov[k], 1, runs[k].host, runs[k].len, fast_io_done, f);
        p += runs[k].len;
    }
    /* Every run was planned before the first submission, so a refusal
     * never leaves half a request in flight.  No FSYNC here: flushes go
     * through the owner's latch (flush-latch.c). */
    for (unsigned k = 0; k < n; k++)
        qed_aio_submit(aio, &f->io[k]);
    return 0;
}

int qed_read_on(qed_image *img, qed_aio *aio, uint64_t off, void *buf, size_t len,
                qed_done_fn cb, void *opaque)
{
    return fast_submit(img, aio, false, off, buf, len, cb, opaque, NULL);
}

int qed_write_on(qed_image *img, qed_aio *aio, uint64_t off, const void *buf, size_t len,
                 unsigned flags, bool *remark, qed_done_fn cb, void *opaque)
{
    if (!img || !remark || img->read_only || flags)
        return -EAGAIN;
    /* Bitmaps are marked on the owner; see the top of this file. */
    if (__atomic_load_n(&img->nbitmaps, __ATOMIC_SEQ_CST))
        return -EAGAIN;
    /* An O_DIRECT write that needs a read-modify-write must be ordered
     * with the owner's (direct-io.c): only whole aligned blocks here. */
    if ((img->fd_io_flags & QED_IO_F_DIRECT) &&
        ((off | len) % QED_DIO_ALIGN || (uintptr_t)buf % QED_DIO_MEM_ALIGN))
        return -EAGAIN;
    *remark = false;
    return fast_submit(img, aio, true, off, buf, len, cb, opaque, remark);
}

void qed_bitmap_mark_write(qed_image *img, uint64_t off, uint64_t len)
{
    if (img)
        qed_bitmap_mark(img, off, len);
}
