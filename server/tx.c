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
 */
#include "config.h"

#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"

/* Extents asked from the library for a structured READ (the rest goes as data). */
#define READ_MAX_EXTENTS 128u
/* Extents asked for one BLOCK_STATUS without REQ_ONE. */
#define BS_MAX_EXTENTS 4096u

struct req {
    struct outmsg out;          /* the reply, once built */
    struct conn *c;
    uint64_t cookie;
    uint64_t offset;
    uint32_t len;
    uint16_t type;
    uint16_t flags;
    uint8_t *buf;               /* READ data or WRITE payload */
    size_t buf_bytes;           /* counted in c->queued_bytes */
    struct qed_extent *ext;     /* block status results (ext_inline or heap) */
    struct qed_extent ext_inline[4]; /* small reads: no allocation */
    size_t next;
    bool read_status_done;      /* structured READ: the block status step has run */
    uint32_t err;               /* NBD error of a rejected request */
    const char *errmsg;
    uint8_t *meta;              /* reply headers when they do not fit in hdr */
    struct iovec *iov_heap;
    struct iovec iov[2];
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

static void req_free(struct req *r)
{
    struct conn *c = r->c;

    assert(c->inflight > 0);
    c->inflight--;
    c->queued_bytes -= r->buf_bytes;
    free(r->buf);
    if (r->ext != r->ext_inline)
        free(r->ext);
    free(r->meta);
    free(r->iov_heap);
    free(r);
}

static void req_release(struct outmsg *m)
{
    req_free((struct req *)m);  /* out is the first member */
}

static int req_alloc_buf(struct req *r, size_t n)
{
    if (n == 0)
        return 0;
    r->buf = malloc(n);
    if (!r->buf)
        return -ENOMEM;
    r->buf_bytes = n;
    r->c->queued_bytes += n;
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

static void queue_reply(struct req *r, struct iovec *iov, int niov)
{
    /* From now on the data buffer is accounted as reply bytes still to be
     * written (conn_queue counts them), not as a request buffer: counting it
     * twice would halve the backpressure limit.  (Holes sent as OFFSET_HOLE
     * leave part of the buffer uncounted until the reply is written.) */
    r->c->queued_bytes -= r->buf_bytes;
    r->buf_bytes = 0;
    r->out.iov = iov;
    r->out.niov = niov;
    r->out.release = req_release;
    conn_queue(r->c, &r->out);
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

/*
 * A structured READ reply: OFFSET_HOLE chunks for extents the library
 * reports as zero (and whose data really read as zeros: a write racing the
 * read cannot make us claim a hole that is not one), OFFSET_DATA chunks for
 * the rest, adjacent runs of one kind merged.  With DF, one data chunk.  The
 * last chunk carries DONE: the data is complete in memory before anything
 * is queued, so no error can follow it.
 */
static void reply_read_structured(struct req *r)
{
    size_t maxruns = r->next + 1;
    struct run { uint64_t start, len; bool hole; } *runs = NULL;
    size_t nruns = 0, holes = 0;
    uint64_t covered = 0;
    int niov = 0;

    assert(r->len > 0);
    if (!(r->flags & NBD_CMD_FLAG_DF))
        runs = malloc(maxruns * sizeof(*runs));
    r->meta = malloc(maxruns * 32);
    r->iov_heap = malloc(2 * maxruns * sizeof(struct iovec));
    if (!runs || !r->meta || !r->iov_heap) {
        /* DF, or no memory for the split: one data chunk built in hdr. */
        uint64_t o = htobe64(r->offset);
        free(runs);
        put_sr_header(r->hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, r->cookie,
                      8 + r->len);
        memcpy(r->hdr + 20, &o, 8);
        r->iov[0].iov_base = r->hdr;
        r->iov[0].iov_len = 28;
        r->iov[1].iov_base = r->buf;
        r->iov[1].iov_len = r->len;
        conn_log(r->c, SRV_LOG_DEBUG, "reply READ cookie=0x%llx ok: one data chunk",
                 (unsigned long long)r->cookie);
        queue_reply(r, r->iov, 2);
        return;
    }

    /* Extents -> runs, clipped to the request; the library's extents start
     * at the request offset and are contiguous. */
    for (size_t i = 0; i < r->next && covered < r->len; i++) {
        uint64_t len = r->ext[i].length;
        if (len > r->len - covered)
            len = r->len - covered;
        if (len == 0)
            continue;
        bool hole = r->ext[i].zero && all_zero(r->buf + covered, len);
        if (nruns && runs[nruns - 1].hole == hole)
            runs[nruns - 1].len += len;
        else
            runs[nruns++] = (struct run){ covered, len, hole };
        covered += len;
    }
    if (covered < r->len) {
        /* Not described (extent limit reached): send as data. */
        if (nruns && !runs[nruns - 1].hole)
            runs[nruns - 1].len += r->len - covered;
        else
            runs[nruns++] = (struct run){ covered, r->len - covered, false };
    }
    assert(nruns <= maxruns);

    for (size_t i = 0; i < nruns; i++) {
        uint8_t *h = r->meta + i * 32;
        uint16_t fl = i + 1 == nruns ? NBD_REPLY_FLAG_DONE : 0;
        if (runs[i].hole) {
            struct nbd_chunk_offset_hole ch = { htobe64(r->offset + runs[i].start),
                                                htobe32((uint32_t)runs[i].len) };
            put_sr_header(h, fl, NBD_REPLY_TYPE_OFFSET_HOLE, r->cookie, sizeof(ch));
            memcpy(h + 20, &ch, sizeof(ch));
            r->iov_heap[niov].iov_base = h;
            r->iov_heap[niov++].iov_len = 20 + sizeof(ch);
            holes++;
        } else {
            uint64_t o = htobe64(r->offset + runs[i].start);
            put_sr_header(h, fl, NBD_REPLY_TYPE_OFFSET_DATA, r->cookie,
                          (uint32_t)(8 + runs[i].len));
            memcpy(h + 20, &o, 8);
            r->iov_heap[niov].iov_base = h;
            r->iov_heap[niov++].iov_len = 28;
            r->iov_heap[niov].iov_base = r->buf + runs[i].start;
            r->iov_heap[niov++].iov_len = runs[i].len;
        }
    }
    conn_log(r->c, SRV_LOG_DEBUG, "reply READ cookie=0x%llx ok: %zu chunks, %zu holes",
             (unsigned long long)r->cookie, nruns, holes);
    free(runs);
    queue_reply(r, r->iov_heap, niov);
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

static int submit(struct req *r);

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
    if (ret < 0 && !(r->type == NBD_CMD_READ && !r->read_status_done)) {
        uint32_t e = nbd_errno_from(ret);
        if (e == NBD_EIO || e == NBD_ENOMEM)
            conn_log(c, SRV_LOG_ERROR, "%s at %llu+%u on \"%s\" failed: %s", cmd_name(r->type),
                     (unsigned long long)r->offset, r->len, c->exp->name, strerror(-ret));
        reply_error(r, e, strerror(-ret));
    } else {
        switch (r->type) {
        case NBD_CMD_READ:
            if (!r->read_status_done) {
                /* The block status step of a structured READ finished. */
                r->read_status_done = true;
                if (ret < 0) {
                    conn_log(c, SRV_LOG_INFO, "block status for READ failed (%s): sending data",
                             strerror(-ret));
                    r->next = 0;
                }
                int sr = qed_read(c->exp->img, r->offset, r->buf, r->len, lib_done, r);
                if (sr == 0)
                    return;     /* still in the library, still holding our ref */
                conn_log(c, SRV_LOG_ERROR, "READ at %llu+%u: submit failed: %s",
                         (unsigned long long)r->offset, r->len, strerror(-sr));
                reply_error(r, nbd_errno_from(sr), strerror(-sr));
                break;
            }
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
        if (req_alloc_buf(r, r->len) < 0)
            return -ENOMEM;
        if (c->structured && !(r->flags & NBD_CMD_FLAG_DF)) {
            /* Find the zero regions first so that sparse data travels sparse.
             * A QED image gives at most one extent per cluster the read
             * touches, so small reads use the inline array (a raw backing file
             * can split finer; what the extents leave out goes out as data). */
            uint64_t cs = qed_cluster_size(img);
            uint64_t spanned = (r->offset % cs + r->len + cs - 1) / cs;
            size_t max = spanned < READ_MAX_EXTENTS ? (size_t)spanned : READ_MAX_EXTENTS;
            if (max == 0)
                max = 1;
            if (max <= sizeof(r->ext_inline) / sizeof(r->ext_inline[0])) {
                r->ext = r->ext_inline;
            } else {
                r->ext = malloc(max * sizeof(*r->ext));
                if (!r->ext)
                    return -ENOMEM;
            }
            ret = qed_block_status(img, r->offset, r->len, r->ext, max, &r->next, lib_done, r);
        } else {
            r->read_status_done = true;
            ret = qed_read(img, r->offset, r->buf, r->len, lib_done, r);
        }
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
        r->ext = calloc(max, sizeof(*r->ext));
        if (!r->ext)
            return -ENOMEM;
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
 * tx_check - the edge check of a request.  Returns 0, or an NBD error with
 * *msg set.  Order: command, flags, permission, range, size.
 */
static uint32_t tx_check(const struct conn *c, const struct req *r, const char **msg)
{
    const struct export *e = c->exp;
    uint16_t allowed = NBD_CMD_FLAG_FUA;   /* FUA is valid on every command */
    bool writes = false;

    switch (r->type) {
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
    if (r->flags & ~allowed) {
        *msg = "flag not valid for this command";
        return NBD_EINVAL;
    }
    if (writes && e->read_only) {
        *msg = "export is read-only";
        return NBD_EPERM;
    }
    if (r->type == NBD_CMD_FLUSH) {
        if (r->offset || r->len) {
            *msg = "FLUSH offset and length must be zero";
            return NBD_EINVAL;
        }
        return 0;
    }
    if (r->offset > e->size || r->len > e->size - r->offset) {
        *msg = "request beyond the end of the export";
        return writes && r->type != NBD_CMD_TRIM ? NBD_ENOSPC : NBD_EINVAL;
    }
    if (r->type == NBD_CMD_READ && r->len > SRV_MAX_PAYLOAD) {
        /* Larger than one chunk may carry: refused up front, as the spec allows. */
        *msg = "read larger than the 32 MiB maximum payload";
        return c->structured ? NBD_EOVERFLOW : NBD_EINVAL;
    }
    if (r->type == NBD_CMD_BLOCK_STATUS) {
        if (!c->structured || !(c->meta_base || c->meta_depth)) {
            *msg = "no metadata context was negotiated";
            return NBD_EINVAL;
        }
        if (r->len == 0) {
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

void tx_req_header_done(struct conn *c)
{
    struct nbd_request h;
    struct req *r;
    const char *msg = NULL;

    memcpy(&h, c->hdr, sizeof(h));
    if (be32toh(h.magic) != NBD_REQUEST_MAGIC) {
        conn_close(c, "bad request magic");
        return;
    }
    uint16_t type = be16toh(h.type);
    uint32_t len = be32toh(h.len);
    conn_log(c, SRV_LOG_DEBUG, "request %s cookie=0x%llx offset=%llu len=%u flags=0x%x",
             cmd_name(type), (unsigned long long)be64toh(h.cookie),
             (unsigned long long)be64toh(h.offset), len, be16toh(h.flags));

    if (type == NBD_CMD_DISC) {
        /* No reply; answer what is in flight, then close. */
        conn_drain(c, "client sent DISC");
        return;
    }
    count_request(c->exp, type);
    if (type == NBD_CMD_WRITE && len > SRV_MAX_PAYLOAD) {
        c->exp->st.errors++;
        /* We will not buffer it, and cannot skip it in step cheaply: the
         * spec allows a hard disconnect for payloads over 32 MiB. */
        conn_log(c, SRV_LOG_INFO, "WRITE payload of %u bytes exceeds 32 MiB", len);
        conn_close(c, "oversized WRITE payload");
        return;
    }

    r = calloc(1, sizeof(*r));
    if (!r) {
        conn_close(c, "out of memory for a request");
        return;
    }
    r->c = c;
    r->cookie = be64toh(h.cookie);
    r->offset = be64toh(h.offset);
    r->len = len;
    r->type = type;
    r->flags = be16toh(h.flags);
    c->inflight++;

    uint32_t err = tx_check(c, r, &msg);

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
