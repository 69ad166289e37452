/*
 * tx.c - the transmission phase: parse and check requests, submit them to
 * the library, and build the replies as the library completes them.
 *
 * Requests are checked once, here at the edge (magic, command, flags,
 * ranges, payload size); everything past tx_check() may assert.
 *
 * Replies go out in completion order.  With simple replies, a READ's reply
 * header is only queued together with its data, after the read completed:
 * a read error can therefore always be reported as an error reply, and the
 * "error after the header went out" disconnect can never be needed.
 *
 * Hot path.  A READ is one library request: the sparse structured reply is
 * cut from the data itself (zero clusters go as holes), not from a block
 * status lookup made first.  Request structs and data buffers come from free
 * lists (req_get, buf_get), so the steady state calls no malloc.  Replies are
 * queued with conn_queue_batched: every reply completed in one loop turn
 * leaves in one writev, header and data together.
 *
 * Memory.  A request is admitted only when its worst-case cost (req_cost)
 * fits under the connection's and the server's caps (mem.c); it is charged
 * then, and given back piece by piece: when its reply is built, whatever
 * the reply does not point into is freed at once (queue_reply), and the
 * rest when the reply has been written (req_free).
 */
#include "config.h"

#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"

/* Chunks of a sparse structured READ reply at most (the rest goes as data). */
#define READ_MAX_CHUNKS 128u
/* Extents asked for one BLOCK_STATUS without REQ_ONE. */
#define BS_MAX_EXTENTS 4096u
/* The most the chunk headers and iovecs of a split READ reply take (r->meta). */
#define READ_META_MAX (READ_MAX_CHUNKS * 32 + 2 * READ_MAX_CHUNKS * sizeof(struct iovec))

struct req {
    struct outmsg out;          /* the reply, once built */
    struct conn *c;
    uint64_t cookie;
    uint64_t offset;
    uint32_t len;
    uint16_t type;
    uint16_t flags;
    uint8_t *buf;               /* READ data or WRITE payload (buf_get), r->len bytes */
    size_t charge;              /* bytes charged to c for this request (mem.c) */
    struct qed_extent *ext;     /* block status results (ext_inline or heap) */
    struct qed_extent ext_inline[4]; /* BLOCK_STATUS with REQ_ONE: no allocation */
    size_t ext_max;             /* entries of a heap ext */
    size_t next;
    uint32_t err;               /* NBD error of a rejected request */
    const char *errmsg;
    uint8_t *meta;              /* reply headers (and their iovecs) beyond hdr */
    size_t meta_bytes;          /* its size */
    struct iovec iov[2];
    struct req *pool_next;      /* in the free list */
    /* Not cleared when a request is reused: written before every use. */
    uint8_t hdr[64];
};

static const char *cmd_name(uint16_t type)
{
    switch (type) {
    case NBD_CMD_READ: return "READ";
    case NBD_CMD_WRITE: return "WRITE";
    case NBD_CMD_DISC: return "DISC";
    case NBD_CMD_FLUSH: return "FLUSH";
    case NBD_CMD_TRIM: return "TRIM";
    case NBD_CMD_CACHE: return "CACHE";
    case NBD_CMD_WRITE_ZEROES: return "WRITE_ZEROES";
    case NBD_CMD_BLOCK_STATUS: return "BLOCK_STATUS";
    default: return "unknown";
    }
}

uint32_t nbd_errno_from(int neg_errno)
{
    switch (-neg_errno) {
    case 0: return 0;
    case EPERM:
    case EROFS:
    case EACCES: return NBD_EPERM;
    case EIO: return NBD_EIO;
    case ENOMEM: return NBD_ENOMEM;
    case EINVAL: return NBD_EINVAL;
    case ENOSPC:
    case EDQUOT:
    case EFBIG: return NBD_ENOSPC;
    case EOVERFLOW: return NBD_EOVERFLOW;
    case ENOTSUP: return NBD_ENOTSUP;
    case ESHUTDOWN: return NBD_ESHUTDOWN;
    default: return NBD_EIO;    /* the caller logged the real errno */
    }
}

/* ---- Request memory ------------------------------------------------------ */

/*
 * Free lists.  The server runs on one thread, so they need no lock.  Why
 * bounded: after a burst (many connections, large requests) the memory goes
 * back to malloc instead of staying cached for ever.
 */
static struct req *req_pool;
static unsigned req_pool_n;

/*
 * Data buffers whose size is a power of two, TX_BUF_MIN_SHIFT ..
 * TX_BUF_MAX_SHIFT, one list per size: the sizes clients use (4 KiB, 64 KiB,
 * 1 MiB ...).  Why not round other sizes up to a class: a buffer would then
 * hold up to twice what the request needs, and the peak memory with it.
 */
struct pooled_buf {
    struct pooled_buf *next;
};
#define TX_BUF_CLASSES (TX_BUF_MAX_SHIFT - TX_BUF_MIN_SHIFT + 1)
static struct pooled_buf *buf_pool[TX_BUF_CLASSES];
static size_t buf_pool_bytes;

/* The pool of @n-byte buffers, or -1 when that size is not pooled. */
static int buf_class(size_t n)
{
    int k = 0;

    if (n < (size_t)1 << TX_BUF_MIN_SHIFT || n > (size_t)1 << TX_BUF_MAX_SHIFT ||
        (n & (n - 1)) != 0)
        return -1;
    while (((size_t)1 << (TX_BUF_MIN_SHIFT + k)) < n)
        k++;
    return k;
}

/* A buffer of @n bytes (n > 0), or NULL. */
static uint8_t *buf_get(size_t n)
{
    int k = buf_class(n);

    if (k < 0)
        return malloc(n);
    if (buf_pool[k]) {
        struct pooled_buf *b = buf_pool[k];
        buf_pool[k] = b->next;
        buf_pool_bytes -= (size_t)1 << (TX_BUF_MIN_SHIFT + k);
        return (uint8_t *)b;
    }
    return malloc((size_t)1 << (TX_BUF_MIN_SHIFT + k));
}

/* Give back a buffer of buf_get(@n). */
static void buf_put(uint8_t *p, size_t n)
{
    int k = buf_class(n);
    size_t sz;

    if (k < 0) {
        free(p);
        return;
    }
    sz = (size_t)1 << (TX_BUF_MIN_SHIFT + k);
    if (!SRV_POOLS || buf_pool_bytes + sz > TX_BUF_POOL_BYTES) {
        free(p);
        return;
    }
    struct pooled_buf *b = (struct pooled_buf *)p;
    b->next = buf_pool[k];
    buf_pool[k] = b;
    buf_pool_bytes += sz;
}

/* A cleared request (hdr excepted), or NULL. */
static struct req *req_get(void)
{
    struct req *r = req_pool;

    if (r) {
        req_pool = r->pool_next;
        req_pool_n--;
    } else {
        r = malloc(sizeof(*r));
        if (!r)
            return NULL;
    }
    memset(r, 0, offsetof(struct req, hdr));
    return r;
}

/*
 * What a request costs, known from its header (@err: it was rejected): the
 * most it will hold at once, charged when it is admitted (conn_mem_admit).
 * The request struct itself (it holds small replies, errors included), the
 * data buffer, and for BLOCK_STATUS the extent array plus the reply built
 * from it; for a structured READ, the chunk headers of a split reply.
 */
static size_t req_cost(const struct conn *c, uint16_t type, uint16_t flags, uint32_t len,
                       uint32_t err)
{
    size_t n = sizeof(struct req);

    if (err)
        return n;
    switch (type) {
    case NBD_CMD_READ:
        n += len;
        if (len && c->structured && !(flags & NBD_CMD_FLAG_DF))
            n += READ_META_MAX;
        break;
    case NBD_CMD_WRITE:
        n += len;
        break;
    case NBD_CMD_BLOCK_STATUS:
        if (!(flags & NBD_CMD_FLAG_REQ_ONE))
            n += BS_MAX_EXTENTS * sizeof(struct qed_extent) + 2 * (24 + 8 * BS_MAX_EXTENTS);
        else
            n += 2 * (24 + 8);
        break;
    default:
        break;
    }
    return n;
}

/* What @r holds now: its struct and whatever it still has allocated. */
static size_t req_holds(const struct req *r)
{
    size_t n = sizeof(*r) + r->meta_bytes;

    if (r->buf)
        n += r->len;
    if (r->ext && r->ext != r->ext_inline)
        n += r->ext_max * sizeof(*r->ext);
    return n;
}

/* Give back the part of @r's charge it no longer holds (its reply is built:
 * nothing it frees from now on until req_free). */
static void req_settle(struct req *r)
{
    size_t now = req_holds(r);

    assert(now <= r->charge);
    conn_mem_release(r->c, r->charge - now);
    r->charge = now;
}

static void req_free(struct req *r)
{
    struct conn *c = r->c;
    size_t charge = r->charge;

    assert(c->inflight > 0 && srv.nreqs > 0);
    c->inflight--;
    srv.nreqs--;
    if (r->buf)
        buf_put(r->buf, r->len);
    if (r->ext != r->ext_inline)
        free(r->ext);
    free(r->meta);
    if (SRV_POOLS && req_pool_n < TX_REQ_POOL_MAX) {
        r->pool_next = req_pool;
        req_pool = r;
        req_pool_n++;
    } else {
        free(r);
    }
    /* Why last: the memory is back (in malloc or a free list) before the
     * connections waiting for it are told. */
    conn_mem_release(c, charge);
}

static void req_release(struct outmsg *m)
{
    req_free((struct req *)m);  /* out is the first member */
}

/* The data buffer of @r: r->len bytes (n is r->len or 0); its admission
 * charged it already. */
static int req_alloc_buf(struct req *r, size_t n)
{
    if (n == 0)
        return 0;
    assert(n == r->len);
    r->buf = buf_get(n);
    if (!r->buf)
        return -ENOMEM;
    return 0;
}

void tx_abort_current(struct conn *c)
{
    if (c->cur) {
        req_free(c->cur);
        c->cur = NULL;
    }
}

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
        buf_put(r->buf, r->len);
        r->buf = NULL;
    }
    if (r->ext && r->ext != r->ext_inline) {
        free(r->ext);
        r->ext = NULL;
    }
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
static void reply_error(struct req *r, uint32_t err, const char *msg)
{
    struct conn *c = r->c;

    assert(err != 0);
    c->exp->st.errors++;
    conn_log(c, SRV_LOG_DEBUG, "reply %s cookie=0x%llx error %u: %s", cmd_name(r->type),
             (unsigned long long)r->cookie, err, msg);
    if (!c->structured) {
        reply_simple(r, err);
        return;
    }
    size_t mlen = strlen(msg);
    if (mlen > sizeof(r->hdr) - 26)
        mlen = sizeof(r->hdr) - 26;
    struct nbd_chunk_error ce = { .error = htobe32(err), .msg_len = htobe16((uint16_t)mlen) };
    put_sr_header(r->hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, r->cookie,
                  (uint32_t)(sizeof(ce) + mlen));
    memcpy(r->hdr + 20, &ce, sizeof(ce));
    memcpy(r->hdr + 26, msg, mlen);
    r->iov[0].iov_base = r->hdr;
    r->iov[0].iov_len = 26 + mlen;
    queue_reply(r, r->iov, 1);
}

static void reply_ok(struct req *r)
{
    if (srv.verbose >= SRV_LOG_DEBUG)
        conn_log(r->c, SRV_LOG_DEBUG, "reply %s cookie=0x%llx ok", cmd_name(r->type),
                 (unsigned long long)r->cookie);
    if (r->type == NBD_CMD_READ && r->c->structured && r->len == 0) {
        /* Nothing to cover: a lone NONE chunk ends the reply. */
        put_sr_header(r->hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, r->cookie, 0);
        r->iov[0].iov_base = r->hdr;
        r->iov[0].iov_len = 20;
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

/* One data chunk holding the whole READ, built in hdr: no allocation. */
static void reply_read_one_data(struct req *r)
{
    uint64_t o = htobe64(r->offset);

    put_sr_header(r->hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, r->cookie, 8 + r->len);
    memcpy(r->hdr + 20, &o, 8);
    r->iov[0].iov_base = r->hdr;
    r->iov[0].iov_len = 28;
    r->iov[1].iov_base = r->buf;
    r->iov[1].iov_len = r->len;
    if (srv.verbose >= SRV_LOG_DEBUG)
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
static void reply_read_structured(struct req *r)
{
    struct run { uint32_t start, len; bool hole; } runs[READ_MAX_CHUNKS];
    uint64_t cs = qed_cluster_size(r->c->exp->img);
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
    /* Chunk headers (32 bytes each), then the iovecs: in hdr and iov for a
     * lone hole (an unallocated range), else in one allocation, where
     * nruns * 32 keeps the iovecs aligned. */
    uint8_t *meta = r->hdr;
    struct iovec *iov = r->iov;
    if (nruns > 1) {
        r->meta_bytes = nruns * 32 + 2 * nruns * sizeof(struct iovec);
        r->meta = malloc(r->meta_bytes);
        if (!r->meta) {
            r->meta_bytes = 0;
            /* No memory for the split: one data chunk, zeros included. */
            reply_read_one_data(r);
            return;
        }
        meta = r->meta;
        iov = (struct iovec *)(void *)(r->meta + nruns * 32);
    }
    for (size_t i = 0; i < nruns; i++) {
        uint8_t *h = meta + i * 32;
        uint16_t fl = i + 1 == nruns ? NBD_REPLY_FLAG_DONE : 0;
        if (runs[i].hole) {
            struct nbd_chunk_offset_hole ch = { htobe64(r->offset + runs[i].start),
                                                htobe32(runs[i].len) };
            put_sr_header(h, fl, NBD_REPLY_TYPE_OFFSET_HOLE, r->cookie, sizeof(ch));
            memcpy(h + 20, &ch, sizeof(ch));
            iov[niov].iov_base = h;
            iov[niov++].iov_len = 20 + sizeof(ch);
            holes++;
        } else {
            uint64_t o = htobe64(r->offset + runs[i].start);
            put_sr_header(h, fl, NBD_REPLY_TYPE_OFFSET_DATA, r->cookie, 8 + runs[i].len);
            memcpy(h + 20, &o, 8);
            iov[niov].iov_base = h;
            iov[niov++].iov_len = 28;
            iov[niov].iov_base = r->buf + runs[i].start;
            iov[niov++].iov_len = runs[i].len;
        }
    }
    if (srv.verbose >= SRV_LOG_DEBUG)
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

/* Append one context's BLOCK_STATUS chunk at @p; returns its size. */
static size_t put_bs_chunk(struct req *r, uint8_t *p, uint32_t ctx,
                           uint32_t (*fl)(const struct qed_extent *), bool last)
{
    size_t n = 0;
    uint8_t *d = p + 24;
    uint64_t total = 0;
    bool one = r->flags & NBD_CMD_FLAG_REQ_ONE;

    for (size_t i = 0; i < r->next && total < r->len; i++) {
        uint64_t len = r->ext[i].length;
        uint32_t f = fl(&r->ext[i]);
        if (len > r->len - total)
            len = r->len - total;
        if (len == 0)
            continue;
        /* Merge equal neighbours: fewer, larger descriptors. */
        if (n) {
            struct nbd_block_descriptor prev;
            memcpy(&prev, d + 8 * (n - 1), 8);
            if (be32toh(prev.status_flags) == f) {
                prev.length = htobe32(be32toh(prev.length) + (uint32_t)len);
                memcpy(d + 8 * (n - 1), &prev, 8);
                total += len;
                continue;
            }
            if (one)
                break;
        }
        struct nbd_block_descriptor bd = { htobe32((uint32_t)len), htobe32(f) };
        memcpy(d + 8 * n, &bd, 8);
        n++;
        total += len;
    }
    if (n == 0) {
        /* The library returned nothing: status 0 ("unknown") is always safe. */
        struct nbd_block_descriptor bd = { htobe32(r->len), 0 };
        memcpy(d, &bd, 8);
        n = 1;
    }
    uint32_t id = htobe32(ctx);
    put_sr_header(p, last ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_BLOCK_STATUS, r->cookie,
                  (uint32_t)(4 + 8 * n));
    memcpy(p + 20, &id, 4);
    return 24 + 8 * n;
}

static void reply_block_status(struct req *r)
{
    struct conn *c = r->c;
    size_t per = 24 + 8 * (r->next ? r->next : 1);
    uint8_t *meta = malloc(2 * per);
    size_t used = 0;

    if (!meta) {
        reply_error(r, NBD_ENOMEM, "out of memory");
        return;
    }
    r->meta = meta;
    r->meta_bytes = 2 * per;
    if (c->meta_base)
        used += put_bs_chunk(r, meta + used, CTX_ID_BASE_ALLOCATION, base_flags, !c->meta_depth);
    if (c->meta_depth)
        used += put_bs_chunk(r, meta + used, CTX_ID_ALLOCATION_DEPTH, depth_flags, true);
    conn_log(c, SRV_LOG_DEBUG, "reply BLOCK_STATUS cookie=0x%llx ok: %zu extents",
             (unsigned long long)r->cookie, r->next);
    r->iov[0].iov_base = meta;
    r->iov[0].iov_len = used;
    queue_reply(r, r->iov, 1);
}

/* ---- Library calls --------------------------------------------------- */

/* Count the bytes of a request that succeeded (the request itself was
 * counted when it arrived, errors in reply_error). */
static void count_success(const struct req *r)
{
    struct export_stats *st = &r->c->exp->st;

    switch (r->type) {
    case NBD_CMD_READ: st->bytes_read += r->len; break;
    case NBD_CMD_WRITE: st->bytes_written += r->len; break;
    case NBD_CMD_WRITE_ZEROES: st->bytes_zeroed += r->len; break;
    case NBD_CMD_TRIM: st->bytes_trimmed += r->len; break;
    default: break;
    }
}

/* Completion of a library request. */
static void lib_done(void *opaque, int ret)
{
    struct req *r = opaque;
    struct conn *c = r->c;

    if (c->state == CONN_DEAD) {
        /* The client is gone: nobody to answer; just let go. */
        req_free(r);
        conn_unref(c);
        return;
    }
    if (ret < 0) {
        uint32_t e = nbd_errno_from(ret);
        if (e == NBD_EIO || e == NBD_ENOMEM)
            conn_log(c, SRV_LOG_ERROR, "%s at %llu+%u on \"%s\" failed: %s", cmd_name(r->type),
                     (unsigned long long)r->offset, r->len, c->exp->name, strerror(-ret));
        reply_error(r, e, strerror(-ret));
    } else {
        switch (r->type) {
        case NBD_CMD_READ:
            count_success(r);
            if (c->structured)
                reply_read_structured(r);
            else
                reply_ok(r);
            break;
        case NBD_CMD_BLOCK_STATUS:
            reply_block_status(r);
            break;
        default:
            count_success(r);
            reply_ok(r);
            break;
        }
    }
    conn_kick(c);
    conn_unref(c);
}

/* Hand @r to the library.  Returns 0 (lib_done will run) or a negative errno. */
static int submit(struct req *r)
{
    struct conn *c = r->c;
    qed_image *img = c->exp->img;
    unsigned qf = (r->flags & NBD_CMD_FLAG_FUA) ? QED_REQ_FUA : 0;
    int ret;

    switch (r->type) {
    case NBD_CMD_READ:
        /* One library request, structured or not: see reply_read_structured. */
        if (req_alloc_buf(r, r->len) < 0)
            return -ENOMEM;
        ret = qed_read(img, r->offset, r->buf, r->len, lib_done, r);
        break;
    case NBD_CMD_WRITE:
        ret = qed_write(img, r->offset, r->buf, r->len, qf, lib_done, r);
        break;
    case NBD_CMD_FLUSH:
        ret = qed_flush(img, lib_done, r);
        break;
    case NBD_CMD_TRIM:
        ret = qed_discard(img, r->offset, r->len, qf, lib_done, r);
        break;
    case NBD_CMD_WRITE_ZEROES:
        if (r->flags & NBD_CMD_FLAG_NO_HOLE)
            qf |= QED_REQ_NO_HOLE;
        if (r->flags & NBD_CMD_FLAG_FAST_ZERO)
            qf |= QED_REQ_FAST_ZERO;
        ret = qed_write_zeroes(img, r->offset, r->len, qf, lib_done, r);
        break;
    case NBD_CMD_BLOCK_STATUS: {
        size_t max = (r->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : BS_MAX_EXTENTS;
        if (max <= sizeof(r->ext_inline) / sizeof(r->ext_inline[0])) {
            r->ext = r->ext_inline;
        } else {
            r->ext = calloc(max, sizeof(*r->ext));
            if (!r->ext)
                return -ENOMEM;
            r->ext_max = max;
        }
        ret = qed_block_status(img, r->offset, r->len, r->ext, max, &r->next, lib_done, r);
        break;
    }
    default:
        assert(!"submit of a command without library work");
        return -EINVAL;
    }
    if (ret == 0)
        conn_ref(c);            /* the library holds the request until lib_done */
    return ret;
}

/* Submit, or answer at once when the library refuses. */
static void submit_or_fail(struct req *r)
{
    int ret = submit(r);

    if (ret < 0) {
        uint32_t e = nbd_errno_from(ret);
        if (e == NBD_EIO || e == NBD_ENOMEM)
            conn_log(r->c, SRV_LOG_ERROR, "%s at %llu+%u: submit failed: %s", cmd_name(r->type),
                     (unsigned long long)r->offset, r->len, strerror(-ret));
        reply_error(r, e, strerror(-ret));
    }
}

/* ---- Request parsing ------------------------------------------------------ */

/*
 * tx_check - the edge check of the request header @h (wire order).  Returns
 * 0, or an NBD error with *msg set.  Order: command, flags, permission, range, size.
 */
static uint32_t tx_check(const struct conn *c, const struct nbd_request *h, const char **msg)
{
    uint16_t type = be16toh(h->type), flags = be16toh(h->flags);
    uint64_t offset = be64toh(h->offset);
    uint32_t len = be32toh(h->len);
    const struct export *e = c->exp;
    uint16_t allowed = NBD_CMD_FLAG_FUA;   /* FUA is valid on every command */
    bool writes = false;

    switch (type) {
    case NBD_CMD_READ:
        if (c->structured)
            allowed |= NBD_CMD_FLAG_DF;
        break;
    case NBD_CMD_WRITE:
    case NBD_CMD_TRIM:
        writes = true;
        break;
    case NBD_CMD_WRITE_ZEROES:
        allowed |= NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
        writes = true;
        break;
    case NBD_CMD_FLUSH:
    case NBD_CMD_CACHE:
        break;
    case NBD_CMD_BLOCK_STATUS:
        allowed |= NBD_CMD_FLAG_REQ_ONE;
        break;
    default:
        *msg = "unknown command";
        return NBD_EINVAL;
    }
    if (flags & ~allowed) {
        *msg = "flag not valid for this command";
        return NBD_EINVAL;
    }
    if (writes && e->read_only) {
        *msg = "export is read-only";
        return NBD_EPERM;
    }
    if (type == NBD_CMD_FLUSH) {
        if (offset || len) {
            *msg = "FLUSH offset and length must be zero";
            return NBD_EINVAL;
        }
        return 0;
    }
    if (offset > e->size || len > e->size - offset) {
        *msg = "request beyond the end of the export";
        return writes && type != NBD_CMD_TRIM ? NBD_ENOSPC : NBD_EINVAL;
    }
    if (type == NBD_CMD_READ && len > SRV_MAX_PAYLOAD) {
        /* Larger than one chunk may carry: refused up front, as the spec allows. */
        *msg = "read larger than the 32 MiB maximum payload";
        return c->structured ? NBD_EOVERFLOW : NBD_EINVAL;
    }
    if (type == NBD_CMD_BLOCK_STATUS) {
        if (!c->structured || !(c->meta_base || c->meta_depth)) {
            *msg = "no metadata context was negotiated";
            return NBD_EINVAL;
        }
        if (len == 0) {
            *msg = "block status of length 0";
            return NBD_EINVAL;
        }
    }
    return 0;
}

/* Count a request as it arrives, by command. */
static void count_request(struct export *e, uint16_t type)
{
    struct export_stats *st = &e->st;

    st->requests++;
    switch (type) {
    case NBD_CMD_READ: st->reads++; break;
    case NBD_CMD_WRITE: st->writes++; break;
    case NBD_CMD_FLUSH: st->flushes++; break;
    case NBD_CMD_TRIM: st->trims++; break;
    case NBD_CMD_CACHE: st->caches++; break;
    case NBD_CMD_WRITE_ZEROES: st->zeroes++; break;
    case NBD_CMD_BLOCK_STATUS: st->block_status++; break;
    default: break;     /* unknown commands: counted in requests and errors */
    }
}

/*
 * tx_req_header_done - a request header is in c->hdr.  It runs again for
 * the same header when the request had to wait for memory (c->mem_wait
 * set by conn_mem_admit): the first run logs and counts it.
 */
void tx_req_header_done(struct conn *c)
{
    struct nbd_request h;
    struct req *r;
    const char *msg = NULL;
    bool again = c->mem_wait;

    memcpy(&h, c->hdr, sizeof(h));
    if (be32toh(h.magic) != NBD_REQUEST_MAGIC) {
        conn_close(c, "bad request magic");
        return;
    }
    uint16_t type = be16toh(h.type);
    uint32_t len = be32toh(h.len);
    if (srv.verbose >= SRV_LOG_DEBUG && !again)
        conn_log(c, SRV_LOG_DEBUG, "request %s cookie=0x%llx offset=%llu len=%u flags=0x%x",
                 cmd_name(type), (unsigned long long)be64toh(h.cookie),
                 (unsigned long long)be64toh(h.offset), len, be16toh(h.flags));

    if (type == NBD_CMD_DISC) {
        /* No reply; answer what is in flight, then close. */
        conn_drain(c, "client sent DISC");
        return;
    }
    if (!again)
        count_request(c->exp, type);
    if (type == NBD_CMD_WRITE && len > SRV_MAX_PAYLOAD) {
        c->exp->st.errors++;
        /* We will not buffer it, and cannot skip it in step cheaply: the
         * spec allows a hard disconnect for payloads over 32 MiB. */
        conn_log(c, SRV_LOG_INFO, "WRITE payload of %u bytes exceeds 32 MiB", len);
        conn_close(c, "oversized WRITE payload");
        return;
    }

    uint32_t err = tx_check(c, &h, &msg);
    size_t cost = req_cost(c, type, be16toh(h.flags), len, err);

    /* Why before anything is allocated: a request that does not fit waits
     * here, its header read and its payload (if any) still unread, and the
     * connection reads nothing more until it fits (conn_step). */
    if (!conn_mem_admit(c, cost))
        return;
    r = req_get();
    if (!r) {
        conn_mem_release(c, cost);
        conn_close(c, "out of memory for a request");
        return;
    }
    r->charge = cost;
    srv.nreqs++;
    r->c = c;
    r->cookie = be64toh(h.cookie);
    r->offset = be64toh(h.offset);
    r->len = len;
    r->type = type;
    r->flags = be16toh(h.flags);
    c->inflight++;

    if (type == NBD_CMD_WRITE) {
        c->cur = r;
        if (err) {
            /* Read the payload anyway and drop it, so the stream stays in step. */
            r->err = err;
            r->errmsg = msg;
            c->skip_left = len;
            conn_expect(c, CONN_TX_SKIP_PAYLOAD, NULL, 0);
            return;
        }
        if (req_alloc_buf(r, len) < 0) {
            r->err = NBD_ENOMEM;
            r->errmsg = "out of memory";
            c->skip_left = len;
            conn_expect(c, CONN_TX_SKIP_PAYLOAD, NULL, 0);
            return;
        }
        conn_expect(c, CONN_TX_WRITE_PAYLOAD, r->buf, len);
        return;
    }

    conn_expect(c, CONN_TX_REQ_HEADER, c->hdr, sizeof(struct nbd_request));
    if (err) {
        reply_error(r, err, msg);
        return;
    }
    if (type == NBD_CMD_CACHE || (len == 0 && type != NBD_CMD_FLUSH)) {
        /* CACHE: the range is valid and the library has no cache to fill
         * beyond its L2 tables, so there is nothing to do.  Zero-length
         * READ/TRIM/WRITE_ZEROES: nothing to do either (the spec asks not to
         * disconnect). */
        reply_ok(r);
        return;
    }
    submit_or_fail(r);
}

void tx_write_payload_done(struct conn *c)
{
    struct req *r = c->cur;

    c->cur = NULL;
    conn_expect(c, CONN_TX_REQ_HEADER, c->hdr, sizeof(struct nbd_request));
    if (r->len == 0) {
        reply_ok(r);
        return;
    }
    submit_or_fail(r);
}

void tx_skip_payload_done(struct conn *c)
{
    struct req *r = c->cur;

    c->cur = NULL;
    conn_expect(c, CONN_TX_REQ_HEADER, c->hdr, sizeof(struct nbd_request));
    reply_error(r, r->err, r->errmsg);
}
