/*
 * request-alloc.c - allocating a run: the states from RS_ALLOC_BEGIN
 * (NEED_CHECK before the first allocation) to RS_ALLOC_DONE, in the order
 * of the ordering rules in request.c: the data into new clusters at the end
 * of the file, then the L2 entries (a new table written whole and flushed
 * before its L1 entry, or the entries of an existing table through the
 * group commit, group-commit.c).  Only the holder of the allocating-write
 * queue gets here (alloc-queue.c).
 */
#include "config.h"

#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checked.h"
#include "qed-image.h"
#include "request-internal.h"

/* ---- NEED_CHECK before the first allocation (rule 1) ---- */

enum qed_rs_next qed_rs_alloc_begin(struct qed_req *r)
{
    struct qed_image *img = r->img;

    if (!r->zero_entries && qed_image_must_mark_dirty(img)) {
        /* Rule 1: NEED_CHECK durable before the first allocation. */
        assert(r->exclusive);
        qed_image_mark_dirty(img);
        return qed_rs_wait_header_write(r, RS_HDR_WAIT);
    }
    return qed_rs_go(r, RS_ALLOC_CLUSTERS);
}

/* The header write or its flush failed: the flag is not known to be on disk
 * (need-check.c says why it is forgotten); the request fails. */
static bool dirty_header_failed(struct qed_req *r)
{
    if (r->err)
        qed_image_unmark_dirty(r->img);
    return qed_rs_failed(r);
}

enum qed_rs_next qed_rs_hdr_wait(struct qed_req *r)
{
    return dirty_header_failed(r) ? QED_RS_STOP : qed_rs_wait_fsync(r, RS_HDR_FLUSH_WAIT);
}

enum qed_rs_next qed_rs_hdr_flush_wait(struct qed_req *r)
{
    return dirty_header_failed(r) ? QED_RS_STOP : qed_rs_go(r, RS_ALLOC_CLUSTERS);
}

/* ---- Taking clusters ---- */

/* No L2 table yet: take one from the end of the file.  False on -ENOMEM. */
static bool alloc_new_l2(struct qed_req *r)
{
    struct qed_image *img = r->img;
    struct qed_l2 *e = qed_l2_cache_insert(&img->cache, img, img->file_size, L2_VALID);

    if (!e)
        return false;
    /* Atomic: other threads' fast path reads it (fast-path.c). */
    __atomic_store_n(&img->file_size, img->file_size + img->g.table_bytes, __ATOMIC_RELAXED);
    e->l1_index = r->l1_index;
    r->l2 = e;
    r->new_l2 = true;
    return true;
}

/*
 * Reserving.  A sparse run (below) writes only its data into its fresh
 * clusters; the rest of them stays a hole, which a later overwrite must
 * allocate, and on a full file system that overwrite would fail with
 * ENOSPC although the client sees an allocated cluster.  So where the image
 * reserves (img->reserve, decided at open), the run first fallocates its
 * clusters, and only then writes its data.
 *  - Why before the data write and not beside it: when the reservation
 *    fails, nothing of the run has reached the file and nothing points at
 *    its clusters, so they can be handed back (below) and the image stays
 *    as it was, without even a leak; the client gets the ENOSPC.  A data
 *    write in parallel would have extended the file over clusters that are
 *    then leaked.
 *  - Why ahead (RESERVE_AHEAD past the run's first cluster): one fallocate
 *    per sparse run, waited for before the data write, cost more than half
 *    the rate of 4 KiB writes into a fresh image on ext4 (2.5x fewer IOPS,
 *    twice the server CPU per write).  A reservation reaching past the
 *    run's own clusters covers those that the next runs take (clusters come
 *    from the end of the file, in order), and a run whose clusters end
 *    below img->resv_end -- the farthest end of a completed reservation --
 *    skips its own.  That skip is sound: it is decided when the clusters
 *    are taken, and a reservation completed before then was made by a run
 *    that took its clusters earlier, so lower down, from there to its end.
 *    Measured (contrib/bench, randwrite-fresh on ext4, interleaved, on a
 *    busy 2-core machine): as fast as not reserving, or faster (one large
 *    unwritten extent instead of one allocation per 4 KiB write).
 *    When the reservation ahead does not fit (ENOSPC), the run reserves
 *    only its own clusters (its reservation started with them, so what a
 *    partial one took is theirs), and fails only when that fails.  At most
 *    RESERVE_AHEAD of blocks past the end of the file stay reserved after
 *    close.
 *  - Why per run and not once per group commit batch: the batch starts only
 *    after its members' data writes, too late to keep a failed run from
 *    leaving data in clusters nothing will map.
 *  - Why FALLOC_FL_KEEP_SIZE: the file size stays what the data writes and
 *    the batch's extension make it ("Sparse allocation", group-commit.c), so
 *    every file-end rule holds unchanged, and a reservation that fails part
 *    way leaves no trace in the size.  The blocks past the end of the file
 *    stay reserved for the writes that later reach them.
 *  - Only sparse runs: every other run writes each byte of its clusters,
 *    which allocates them (or fails that write with ENOSPC).
 */
#define RESERVE_AHEAD (4ull << 20) /* bytes a reservation covers from a run's first cluster */

/* Reserve @len bytes from the run's first cluster and wait. */
static enum qed_rs_next reserve_submit(struct qed_req *r, uint64_t len)
{
    qed_req_set_state(r, RS_ALLOC_RESERVE_WAIT);
    qed_req_submit_io(r, 0, QED_IO_ALLOCATE, r->img->fd, NULL, 0, r->alloc_host, len);
    return QED_RS_STOP;
}

static enum qed_rs_next alloc_reserve(struct qed_req *r)
{
    struct qed_image *img = r->img;
    uint64_t cs = img->g.cluster_size;
    uint64_t len = r->alloc_n * cs;

    if (r->alloc_host + len <= img->resv_end)
        return qed_rs_go(r, RS_ALLOC_WRITE); /* reserved ahead by an earlier run */
    if (len < RESERVE_AHEAD)
        len = (RESERVE_AHEAD + cs - 1) & ~(cs - 1); /* cluster sizes are powers of two */
    return reserve_submit(r, len);
}

enum qed_rs_next qed_rs_alloc_reserve_wait(struct qed_req *r)
{
    struct qed_image *img = r->img;
    uint64_t own = r->alloc_n * img->g.cluster_size;
    uint64_t end = r->alloc_host + own;
    const struct qed_io *io = &r->io[0];

    if (r->err == -ENOSPC && io->length > own) {
        /* The reservation ahead did not fit: just the run's own clusters. */
        r->err = 0;
        return reserve_submit(r, own);
    }
    if (!r->err && io->offset + io->length > img->resv_end)
        img->resv_end = io->offset + io->length;
    if (r->err == -EOPNOTSUPP) {
        /* The file system cannot reserve (reserve=on where it is not
         * supported): write sparsely, as without reserving. */
        qed_log(QED_LOG_WARN, "%s: fallocate not supported; clusters are not reserved",
                img->path);
        img->reserve = false;
        r->err = 0;
    }
    if (r->err && img->file_size == end) {
        /* Nothing was written into the clusters and nothing points at
         * them: the next allocation takes them again (still fresh). */
        __atomic_store_n(&img->file_size, r->alloc_host, __ATOMIC_RELAXED);
    }
    return qed_rs_then(r, RS_ALLOC_WRITE);
}

/*
 * Fill the parts of the first and last cluster the write does not cover:
 * from the backing file, or with zeros when there is none or the cluster
 * was a zero cluster (never backing data there).
 */
static enum qed_rs_next alloc_fill_ends(struct qed_req *r)
{
    struct qed_image *img = r->img;
    const struct qed_geom *g = &img->g;
    uint64_t end = r->cur_pos + r->run_len;
    uint64_t end_in = qed_offset_in_cluster(g, end);

    r->head_len = qed_offset_in_cluster(g, r->cur_pos);
    r->tail_len = end_in ? g->cluster_size - end_in : 0;
    if (!r->head_len && !r->tail_len)
        return qed_rs_go(r, RS_ALLOC_WRITE);
    r->cow_zero = !(r->kind == RUN_UNALLOC && img->backing_kind != BACKING_NONE);
    if (r->cow_zero) {
        /* Zeros come from the shared zero buffer at write time,
         * or, in fresh clusters, are not written at all. */
        r->sparse = qed_req_alloc_can_be_sparse(r);
        return r->sparse && img->reserve ? alloc_reserve(r) : qed_rs_go(r, RS_ALLOC_WRITE);
    }
    /* Each allocating write has its own copy buffer: several run at once. */
    r->cow = malloc(r->head_len + r->tail_len);
    if (!r->cow)
        return qed_rs_finish(r, -ENOMEM);
    qed_req_set_state(r, RS_COW_WAIT);
    if (r->head_len)
        qed_req_backing_read(r, 0, qed_start_of_cluster(g, r->cur_pos), r->cow, r->head_len);
    if (r->tail_len)
        qed_req_backing_read(r, 1, end, r->cow + r->head_len, r->tail_len);
    /* Nothing in flight (all past the backing file's end, or failed
     * submits): RS_COW_WAIT runs at once. */
    return r->pending ? QED_RS_STOP : QED_RS_GO;
}

enum qed_rs_next qed_rs_alloc_clusters(struct qed_req *r)
{
    struct qed_image *img = r->img;
    const struct qed_geom *g = &img->g;
    uint64_t in = qed_offset_in_cluster(g, r->cur_pos);

    if (!r->buf && r->run_len > QED_ZERO_RUN_MAX - in)
        r->run_len = QED_ZERO_RUN_MAX - in; /* keep the zero iovec bounded */
    r->alloc_first = qed_l2_index(g, r->cur_pos);
    r->alloc_n = qed_bytes_to_clusters(g, in + r->run_len);
    if (!r->l2) {
        assert(r->exclusive || r->type != REQ_WRITE);
        /* Waiting for room here is safe: the lines above only
         * recompute the run from cur_pos and run_len. */
        if (!qed_req_l2_room_take(r, RS_ALLOC_CLUSTERS))
            return QED_RS_STOP;
        if (!alloc_new_l2(r))
            return qed_rs_finish(r, -ENOMEM);
    }
    if (r->zero_entries) {
        r->alloc_host = 0;
        return qed_rs_go(r, RS_L2_UPDATE);
    }
    r->alloc_host = img->file_size;
    __atomic_store_n(&img->file_size, img->file_size + r->alloc_n * g->cluster_size,
                     __ATOMIC_RELAXED); /* (fast-path.c reads it) */
    return alloc_fill_ends(r);
}

enum qed_rs_next qed_rs_cow_wait(struct qed_req *r)
{
    /* On failure the new clusters leak; nothing points at them. */
    return qed_rs_then(r, RS_ALLOC_WRITE);
}

/* ---- Writing the data ---- */

enum qed_rs_next qed_rs_alloc_write(struct qed_req *r)
{
    struct qed_image *img = r->img;
    int n = 0;

    if (r->sparse) {
        /* Only the data: the rest of the fresh clusters reads as
         * zeros (a hole, or past the end until the batch extends
         * the file). */
        n = qed_req_iov_add_source(r, 0);
        qed_req_set_state(r, RS_ALLOC_WRITE_WAIT);
        qed_req_submit_io(r, 0, QED_IO_WRITE, img->fd, r->iov, n, r->alloc_host + r->head_len,
                          r->run_len);
        return QED_RS_STOP;
    }
    if (r->head_len && r->cow_zero) {
        n = qed_req_iov_add_zeros(r, n, r->head_len);
    } else if (r->head_len) {
        r->iov[n].iov_base = r->cow;
        r->iov[n++].iov_len = r->head_len;
    }
    n = qed_req_iov_add_source(r, n);
    if (r->tail_len && r->cow_zero) {
        n = qed_req_iov_add_zeros(r, n, r->tail_len);
    } else if (r->tail_len) {
        r->iov[n].iov_base = r->cow + r->head_len;
        r->iov[n++].iov_len = r->tail_len;
    }
    qed_req_set_state(r, RS_ALLOC_WRITE_WAIT);
    qed_req_submit_io(r, 0, QED_IO_WRITE, img->fd, r->iov, n, r->alloc_host,
                      r->alloc_n * img->g.cluster_size);
    return QED_RS_STOP;
}

enum qed_rs_next qed_rs_alloc_write_wait(struct qed_req *r)
{
    if (qed_rs_failed(r))
        return QED_RS_STOP; /* the new clusters leak; nothing points at them */
    if (r->img->backing_kind != BACKING_NONE && r->new_l2) {
        /* Rule 3: data stable before the L2 entry points at it.  An
         * update of an existing table is group committed instead, and
         * its batch flushes once for all its members (gc_plan). */
        return qed_rs_wait_fsync(r, RS_ALLOC_FLUSH_WAIT);
    }
    return qed_rs_go(r, RS_L2_UPDATE);
}

enum qed_rs_next qed_rs_alloc_flush_wait(struct qed_req *r)
{
    return qed_rs_then(r, RS_L2_UPDATE);
}

/* ---- Mapping the new clusters ---- */

enum qed_rs_next qed_rs_l2_update(struct qed_req *r)
{
    const struct qed_geom *g = &r->img->g;
    uint64_t *t = r->l2->t;
    uint64_t *ents = t + r->alloc_first;

    if (!r->new_l2) {
        /* Why a separate buffer: the cached table must show the new
         * entries only once they are on disk.  A request that saw them
         * earlier could write in place into the new clusters, and that
         * completed write would vanish if this L2 write then failed. */
        r->ents = malloc(r->alloc_n * sizeof(uint64_t));
        if (!r->ents)
            return qed_rs_finish(r, -ENOMEM);
        ents = r->ents;
    }
    /* A new table is not reachable until L1 points at it, so it is
     * filled in place and written whole. */
    for (uint64_t i = 0; i < r->alloc_n; i++)
        ents[i] = htole64(r->alloc_host ? r->alloc_host + i * g->cluster_size : QED_ENTRY_ZERO);
    if (!r->new_l2) {
        /* Entries of an existing table: written by the next group
         * commit batch, together with those of the other runs that
         * reach this point meanwhile.  The request passes to the group
         * commit machine here and comes back in RS_GC_WAIT. */
        qed_req_set_state(r, RS_GC_WAIT);
        qed_gc_join(r);
        return QED_RS_STOP;
    }
    qed_req_set_state(r, RS_L2_WRITE_WAIT);
    qed_req_submit_rw(r, 0, QED_IO_WRITE, t, g->table_bytes, r->l2->offset);
    return QED_RS_STOP;
}

enum qed_rs_next qed_rs_gc_wait(struct qed_req *r)
{
    /* The batch wrote (or failed to write) our entries; on success it
     * has also put them into the cached table (rule 5). */
    return qed_rs_then(r, RS_ALLOC_DONE);
}

/* A new table's write, its flush or the L1 write failed: the table is not
 * reachable; drop it from the cache and finish with the error.  True then. */
static bool new_l2_failed(struct qed_req *r)
{
    if (r->err)
        qed_l2_cache_forget(&r->img->cache, r->l2);
    return qed_rs_failed(r);
}

enum qed_rs_next qed_rs_l2_write_wait(struct qed_req *r)
{
    /* Only a new table gets here; entry updates go through gc. */
    if (new_l2_failed(r))
        return QED_RS_STOP;
    /* Rule 4: the new table stable before L1 points at it. */
    return qed_rs_wait_fsync(r, RS_L2_FLUSH_WAIT);
}

enum qed_rs_next qed_rs_l2_flush_wait(struct qed_req *r)
{
    struct qed_image *img = r->img;

    if (new_l2_failed(r))
        return QED_RS_STOP;
    /* The L1 entry, like L2 entries, becomes visible only once written. */
    r->l1_ent = htole64(r->l2->offset);
    qed_req_set_state(r, RS_L1_WRITE_WAIT);
    qed_req_submit_rw(r, 0, QED_IO_WRITE, &r->l1_ent, sizeof(uint64_t),
                      img->h.l1_table_offset + r->l1_index * sizeof(uint64_t));
    return QED_RS_STOP;
}

enum qed_rs_next qed_rs_l1_write_wait(struct qed_req *r)
{
    if (new_l2_failed(r))
        return QED_RS_STOP;
    r->img->l1[r->l1_index] = r->l1_ent;
    /* Written, flushed, and named by L1 on disk: other threads may read it
     * now (rule 5, publish after write). */
    qed_l2_publish(r->img, r->l2);
    return qed_rs_go(r, RS_ALLOC_DONE);
}

enum qed_rs_next qed_rs_alloc_done(struct qed_req *r)
{
    free(r->ents);
    r->ents = NULL;
    free(r->cow);
    r->cow = NULL;
    r->new_l2 = false;
    r->zero_entries = false;
    r->head_len = r->tail_len = 0;
    r->cow_zero = false;
    r->sparse = false;
    qed_req_run_advance(r);
    return QED_RS_GO;
}

/* ---- Sparse allocation ---- */

/*
 * May the run being allocated leave the unwritten parts of its clusters
 * unwritten?  Only a data write (write-zeroes with NO_HOLE must provision)
 * into an existing table (its entries go through the group commit, which
 * extends the file) whose clusters are fresh (see "Sparse allocation" in group-commit.c).
 */
bool qed_req_alloc_can_be_sparse(struct qed_req *r)
{
    struct qed_image *img = r->img;

    if (r->type != REQ_WRITE || !r->buf || r->new_l2 || r->zero_entries || !r->alloc_host)
        return false;
    if (!img->fresh_known) {
        struct stat st;
        uint64_t cs = img->g.cluster_size;

        /* Why the size now and not at open: the file only grows while it is
         * open, so this is at least the size at open; past it (rounded up)
         * lie only clusters this open allocated, each written by its owner
         * alone, and what no write has reached yet. */
        if (fstat(img->fd, &st) < 0)
            return false;
        img->fresh_from = ((uint64_t)st.st_size + cs - 1) & ~(cs - 1);
        img->ext_end = (uint64_t)st.st_size;
        img->fresh_known = true;
    }
    return r->alloc_host >= img->fresh_from;
}
