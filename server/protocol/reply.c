/*
 * reply.c - the replies of the transmission phase: simple replies, and
 * structured ones (READ cut into data and hole chunks, BLOCK_STATUS,
 * errors with a message).  Every header is built from the wire structs
 * of nbd-proto.h.
 */
#include "config.h"

#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"
#include "request.h"

/* ---- Replies ------------------------------------------------------------- */

/* Does the reply in @iov point into @r's data buffer? */
static bool reply_uses_buf(const struct req *r, const struct iovec *iov, int niov)
{
    uintptr_t lo = (uintptr_t)r->buf, hi = lo + r->len;

    for (int i = 0; i < niov; i++) {
        uintptr_t p = (uintptr_t)iov[i].iov_base;
        if (r->buf && iov[i].iov_len && p >= lo && p < hi)
            return true;
    }
    return false;
}

static void queue_reply(struct req *r, struct iovec *iov, int niov)
{
    /*
     * Free now what the reply does not need, and give back the rest of the
     * charge taken at admission: a reply may wait long in the queue of a
     * client that does not read.  Why the buffer: a WRITE's payload, and a
     * READ answered with holes only or with an error, leave nothing of it
     * on the wire; holding its megabytes until a 32-byte reply is written
     * is how the cap was once bypassed.  Why the extents: the reply is a
     * copy.  A buffer the reply points into stays, charged, until req_free.
     */
    if (r->buf && !reply_uses_buf(r, iov, niov)) {
        req_buf_put(r->buf, r->len);
        r->buf = NULL;
    }
    if (r->ext && r->ext != r->ext_inline) {
        free(r->ext);
        r->ext = NULL;
    }
    free(r->bm);
    r->bm = NULL;
    req_settle(r);
    r->out.iov = iov;
    r->out.niov = niov;
    r->out.release = req_release;
    conn_queue_batched(r->c, &r->out);
}

static void put_sr_header(uint8_t *p, uint16_t flags, uint16_t type, uint64_t cookie,
                          uint32_t len)
{
    struct nbd_structured_reply h = {
        .magic = htobe32(NBD_STRUCTURED_REPLY_MAGIC),
        .flags = htobe16(flags),
        .type = htobe16(type),
        .cookie = htobe64(cookie),
        .len = htobe32(len),
    };
    memcpy(p, &h, sizeof(h));
}

/* A simple reply; a successful READ carries its data. */
static void reply_simple(struct req *r, uint32_t err)
{
    struct nbd_simple_reply h = {
        .magic = htobe32(NBD_SIMPLE_REPLY_MAGIC),
        .error = htobe32(err),
        .cookie = htobe64(r->cookie),
    };
    int n = 1;

    memcpy(r->hdr, &h, sizeof(h));
    r->iov[0].iov_base = r->hdr;
    r->iov[0].iov_len = sizeof(h);
    if (r->type == NBD_CMD_READ && !err && r->len) {
        r->iov[1].iov_base = r->buf;
        r->iov[1].iov_len = r->len;
        n = 2;
    }
    queue_reply(r, r->iov, n);
}

/* Reply with an error: an ERROR chunk with a message when structured
 * replies are on (the spec prefers that; READ requires it). */
void reply_error(struct req *r, uint32_t err, const char *msg)
{
    struct conn *c = r->c;

    assert(err != 0);
    EXPORT_STATS(c->proto->exp)->errors++;
    conn_log(c, SRV_LOG_DEBUG, "reply %s cookie=0x%llx error %u: %s", tx_cmd_name(r->type),
             (unsigned long long)r->cookie, err, msg);
    if (!c->proto->structured) {
        reply_simple(r, err);
        return;
    }
    size_t mlen = strlen(msg);
    if (mlen > sizeof(r->hdr) - SR_ERROR_HDR_LEN)
        mlen = sizeof(r->hdr) - SR_ERROR_HDR_LEN;
    struct nbd_chunk_error ce = { .error = htobe32(err), .msg_len = htobe16((uint16_t)mlen) };
    put_sr_header(r->hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, r->cookie,
                  (uint32_t)(sizeof(ce) + mlen));
    memcpy(r->hdr + SR_HDR_LEN, &ce, sizeof(ce));
    memcpy(r->hdr + SR_ERROR_HDR_LEN, msg, mlen);
    r->iov[0].iov_base = r->hdr;
    r->iov[0].iov_len = SR_ERROR_HDR_LEN + mlen;
    queue_reply(r, r->iov, 1);
}

void reply_ok(struct req *r)
{
    if (srv_log_enabled(SRV_LOG_DEBUG))
        conn_log(r->c, SRV_LOG_DEBUG, "reply %s cookie=0x%llx ok", tx_cmd_name(r->type),
                 (unsigned long long)r->cookie);
    if (r->type == NBD_CMD_READ && r->c->proto->structured && r->len == 0) {
        /* Nothing to cover: a lone NONE chunk ends the reply. */
        put_sr_header(r->hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, r->cookie, 0);
        r->iov[0].iov_base = r->hdr;
        r->iov[0].iov_len = SR_HDR_LEN;
        queue_reply(r, r->iov, 1);
        return;
    }
    reply_simple(r, 0);
}

static bool all_zero(const uint8_t *p, size_t n)
{
    if (n == 0)
        return true;
    return p[0] == 0 && memcmp(p, p + 1, n - 1) == 0;
}

/* The header of an OFFSET_DATA chunk of @len bytes at @offset, at @h;
 * returns its size (the data follows in its own iovec). */
static size_t put_data_header(uint8_t *h, uint16_t flags, uint64_t cookie, uint64_t offset,
                              uint32_t len)
{
    struct nbd_chunk_offset_data d = { .offset = htobe64(offset) };

    put_sr_header(h, flags, NBD_REPLY_TYPE_OFFSET_DATA, cookie, (uint32_t)sizeof(d) + len);
    memcpy(h + SR_HDR_LEN, &d, sizeof(d));
    return SR_DATA_HDR_LEN;
}

/* One data chunk holding the whole READ, built in hdr: no allocation. */
static void reply_read_one_data(struct req *r)
{
    r->iov[0].iov_base = r->hdr;
    r->iov[0].iov_len = put_data_header(r->hdr, NBD_REPLY_FLAG_DONE, r->cookie, r->offset,
                                        r->len);
    r->iov[1].iov_base = r->buf;
    r->iov[1].iov_len = r->len;
    if (srv_log_enabled(SRV_LOG_DEBUG))
        conn_log(r->c, SRV_LOG_DEBUG, "reply READ cookie=0x%llx ok: one data chunk",
                 (unsigned long long)r->cookie);
    queue_reply(r, r->iov, 2);
}

/*
 * A structured READ reply, cut from the data read: OFFSET_HOLE chunks for
 * the clusters (aligned on the image's cluster size) that read as zeros,
 * OFFSET_DATA chunks for the rest, adjacent runs of one kind merged.  With
 * DF, one data chunk.  The last chunk carries DONE: the data is complete in
 * memory before anything is queued, so no error can follow it.
 *
 * Why from the data and not from a block status lookup: the lookup was a
 * second pass through the L2 mapping (a second library request) on every
 * READ, to learn what one scan of the buffer tells as well.  A hole chunk
 * only promises that the range reads as zeros, which the scan proves; an
 * allocated cluster full of zeros goes as a hole too, and that is allowed.
 * The scan stops at the first non-zero byte, so data costs next to nothing;
 * only zeros are scanned in full, and they are then not sent.
 */
void reply_read_structured(struct req *r)
{
    struct run { uint32_t start, len; bool hole; } runs[READ_MAX_CHUNKS];
    uint64_t cs = r->c->proto->exp->cluster_size;
    size_t nruns = 0, holes = 0;
    uint32_t pos = 0;
    int niov = 0;

    assert(r->len > 0);
    if (r->flags & NBD_CMD_FLAG_DF) {
        reply_read_one_data(r);
        return;
    }
    while (pos < r->len) {
        uint64_t end = (r->offset + pos) / cs * cs + cs - r->offset;
        uint32_t n = end < r->len ? (uint32_t)end - pos : r->len - pos;
        bool hole = all_zero(r->buf + pos, n);

        if (nruns && runs[nruns - 1].hole == hole) {
            runs[nruns - 1].len += n;
        } else if (nruns + 1 < READ_MAX_CHUNKS) {
            runs[nruns++] = (struct run){ pos, n, hole };
        } else {
            /* Out of chunks: the rest goes as data (one slot was kept for it). */
            if (runs[nruns - 1].hole)
                runs[nruns++] = (struct run){ pos, r->len - pos, false };
            else
                runs[nruns - 1].len += r->len - pos;
            break;
        }
        pos += n;
    }
    assert(nruns >= 1 && nruns <= READ_MAX_CHUNKS);

    if (nruns == 1 && !runs[0].hole) {
        reply_read_one_data(r);     /* the usual case: all data */
        return;
    }
    /* Chunk headers (READ_CHUNK_SLOT bytes each), then the iovecs: in hdr
     * and iov for a lone hole (an unallocated range), else in one
     * allocation, where nruns * READ_CHUNK_SLOT keeps the iovecs aligned. */
    uint8_t *meta = r->hdr;
    struct iovec *iov = r->iov;
    if (nruns > 1) {
        r->meta_bytes = nruns * READ_CHUNK_SLOT + 2 * nruns * sizeof(struct iovec);
        r->meta = malloc(r->meta_bytes);
        if (!r->meta) {
            r->meta_bytes = 0;
            /* No memory for the split: one data chunk, zeros included. */
            reply_read_one_data(r);
            return;
        }
        meta = r->meta;
        iov = (struct iovec *)(void *)(r->meta + nruns * READ_CHUNK_SLOT);
    }
    for (size_t i = 0; i < nruns; i++) {
        uint8_t *h = meta + i * READ_CHUNK_SLOT;
        uint16_t fl = i + 1 == nruns ? NBD_REPLY_FLAG_DONE : 0;
        if (runs[i].hole) {
            struct nbd_chunk_offset_hole ch = { htobe64(r->offset + runs[i].start),
                                                htobe32(runs[i].len) };
            put_sr_header(h, fl, NBD_REPLY_TYPE_OFFSET_HOLE, r->cookie, sizeof(ch));
            memcpy(h + SR_HDR_LEN, &ch, sizeof(ch));
            iov[niov].iov_base = h;
            iov[niov++].iov_len = SR_HOLE_LEN;
            holes++;
        } else {
            iov[niov].iov_base = h;
            iov[niov++].iov_len = put_data_header(h, fl, r->cookie, r->offset + runs[i].start,
                                                  runs[i].len);
            iov[niov].iov_base = r->buf + runs[i].start;
            iov[niov++].iov_len = runs[i].len;
        }
    }
    if (srv_log_enabled(SRV_LOG_DEBUG))
        conn_log(r->c, SRV_LOG_DEBUG, "reply READ cookie=0x%llx ok: %zu chunks, %zu holes",
                 (unsigned long long)r->cookie, nruns, holes);
    queue_reply(r, iov, niov);
}

static uint32_t base_flags(const struct qed_extent *x)
{
    return (x->data ? 0 : NBD_STATE_HOLE) | (x->zero ? NBD_STATE_ZERO : 0);
}

static uint32_t depth_flags(const struct qed_extent *x)
{
    /* Like qemu-nbd: 0 unallocated everywhere, 1 in the top image, 2 in its backing... */
    return x->present ? x->depth + 1 : 0;
}

/*
 * Add the descriptor (@len, @f) after the *@n at @d, merged into the last
 * one when its flags are equal (fewer, larger descriptors).  Returns false
 * when it does not go in: with REQ_ONE (@one) only the first run does.
 */
static bool add_desc(uint8_t *d, size_t *n, uint32_t len, uint32_t f, bool one)
{
    if (*n) {
        struct nbd_block_descriptor prev;
        memcpy(&prev, d + SR_BS_DESC_LEN * (*n - 1), SR_BS_DESC_LEN);
        if (be32toh(prev.status_flags) == f) {
            prev.length = htobe32(be32toh(prev.length) + len);
            memcpy(d + SR_BS_DESC_LEN * (*n - 1), &prev, SR_BS_DESC_LEN);
            return true;
        }
        if (one)
            return false;
    }
    struct nbd_block_descriptor bd = { htobe32(len), htobe32(f) };
    memcpy(d + SR_BS_DESC_LEN * *n, &bd, SR_BS_DESC_LEN);
    (*n)++;
    return true;
}

/* The header of a BLOCK_STATUS chunk of @n descriptors at @p; returns the chunk's size. */
static size_t put_bs_header(struct req *r, uint8_t *p, uint32_t ctx, size_t n, bool last)
{
    struct nbd_chunk_block_status bs = { .context_id = htobe32(ctx) };

    put_sr_header(p, last ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_BLOCK_STATUS, r->cookie,
                  (uint32_t)(sizeof(bs) + SR_BS_DESC_LEN * n));
    memcpy(p + SR_HDR_LEN, &bs, sizeof(bs));
    return SR_BS_HDR_LEN + SR_BS_DESC_LEN * n;
}

/* Append one context's BLOCK_STATUS chunk at @p; returns its size. */
static size_t put_bs_chunk(struct req *r, uint8_t *p, uint32_t ctx,
                           uint32_t (*fl)(const struct qed_extent *), bool last)
{
    size_t n = 0;
    uint8_t *d = p + SR_BS_HDR_LEN;
    uint64_t total = 0;
    bool one = r->flags & NBD_CMD_FLAG_REQ_ONE;

    for (size_t i = 0; i < r->next && total < r->len; i++) {
        uint64_t len = r->ext[i].length;
        if (len > r->len - total)
            len = r->len - total;
        if (len == 0)
            continue;
        if (!add_desc(d, &n, (uint32_t)len, fl(&r->ext[i]), one))
            break;
        total += len;
    }
    if (n == 0) {
        /* The library returned nothing: status 0 ("unknown") is always safe. */
        struct nbd_block_descriptor bd = { htobe32(r->len), 0 };
        memcpy(d, &bd, SR_BS_DESC_LEN);
        n = 1;
    }
    return put_bs_header(r, p, ctx, n, last);
}

/*
 * Append the chunk of selected bitmap @i (context @ctx) at @p, from its
 * runs in r->bm (read on the owner: tx_bitmaps_status): flag
 * NBD_STATE_DIRTY (1) on dirty bytes, 0 on clean ones, as qemu-nbd encodes
 * qemu:dirty-bitmap.  Returns its size, or 0 when there is no run.
 */
static size_t put_bitmap_chunk(struct req *r, uint8_t *p, uint32_t ctx, unsigned i, bool last)
{
    const struct req_bitmaps *bm = r->bm;
    const struct qed_dirty_extent *x = bm->x + i * bm->max;
    size_t n = 0;
    uint8_t *d = p + SR_BS_HDR_LEN;
    uint64_t total = 0;
    bool one = r->flags & NBD_CMD_FLAG_REQ_ONE;

    for (size_t k = 0; k < bm->got[i] && total < r->len; k++) {
        uint64_t len = x[k].length;
        if (len > r->len - total)
            len = r->len - total;
        if (len == 0)
            continue;
        if (!add_desc(d, &n, (uint32_t)len, x[k].dirty ? NBD_STATE_DIRTY : 0, one))
            break;
        total += len;
    }
    return n ? put_bs_header(r, p, ctx, n, last) : 0;
}

/*
 * Append a chunk per selected bitmap at @p; returns their size, or 0 on a
 * failure.  Why a failure is an error and not "status 0": for this context
 * 0 means clean, and a backup that trusted it would miss changed blocks.
 */
static size_t put_bitmap_chunks(struct req *r, uint8_t *p)
{
    const struct proto_conn *pc = r->c->proto;
    size_t used = 0;

    if (!r->bm)
        return 0;
    for (unsigned i = 0; i < pc->meta_nbitmaps; i++) {
        size_t n = 0;

        if (r->bm->ret == 0 || i < r->bm->failed)
            n = put_bitmap_chunk(r, p + used, CTX_ID_BITMAP0 + i, i, i + 1 == pc->meta_nbitmaps);
        if (n == 0) {
            conn_log(r->c, SRV_LOG_ERROR, "BLOCK_STATUS of bitmap \"%s\" on \"%s\" failed",
                     pc->meta_bitmaps[i]->name, pc->exp->name);
            used = 0;
            break;
        }
        used += n;
    }
    return used;
}

/*
 * The BLOCK_STATUS reply: one chunk per selected context, base:allocation
 * and qemu:allocation-depth from r->ext (the library's extents), then the
 * dirty bitmaps from r->bm (their runs, read on the image's owner).
 */
void reply_block_status(struct req *r)
{
    struct conn *c = r->c;
    const struct proto_conn *pc = c->proto;
    size_t per = SR_BS_HDR_LEN + SR_BS_DESC_LEN * (r->next ? r->next : 1);
    size_t per_bm = SR_BS_HDR_LEN +
                    SR_BS_DESC_LEN * ((r->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : BS_MAX_EXTENTS);
    size_t bytes = 2 * per + pc->meta_nbitmaps * per_bm;
    uint8_t *meta = malloc(bytes);
    size_t used = 0;

    if (!meta) {
        reply_error(r, NBD_ENOMEM, "out of memory");
        return;
    }
    if (pc->meta_base)
        used += put_bs_chunk(r, meta + used, CTX_ID_BASE_ALLOCATION, base_flags,
                             !pc->meta_depth && !pc->meta_nbitmaps);
    if (pc->meta_depth)
        used += put_bs_chunk(r, meta + used, CTX_ID_ALLOCATION_DEPTH, depth_flags,
                             !pc->meta_nbitmaps);
    if (pc->meta_nbitmaps) {
        size_t n = put_bitmap_chunks(r, meta + used);
        if (n == 0) {
            free(meta);
            reply_error(r, NBD_EIO, "cannot read the dirty bitmap");
            return;
        }
        used += n;
        /* Bitmap chunks were sized for BS_MAX_EXTENTS runs: give back the rest. */
        uint8_t *shrunk = realloc(meta, used);
        if (shrunk) {
            meta = shrunk;
            bytes = used;
        }
    }
    r->meta = meta;
    r->meta_bytes = bytes;
    conn_log(c, SRV_LOG_DEBUG, "reply BLOCK_STATUS cookie=0x%llx ok: %zu extents, %u bitmaps",
             (unsigned long long)r->cookie, r->next, pc->meta_nbitmaps);
    r->iov[0].iov_base = meta;
    r->iov[0].iov_len = used;
    queue_reply(r, r->iov, 1);
}
