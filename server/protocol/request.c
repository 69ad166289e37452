/*
 * request.c - the transmission phase: parse and check requests, submit them to
 * the library, and hand their completions to the replies (reply.c); the
 * request's memory is in req-mem.c.
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
 * lists (req_get, req_alloc_buf: req-mem.c), so the steady state calls no malloc.  Replies are
 * queued with conn_queue_batched: every reply completed in one loop turn
 * leaves in one writev, header and data together.
 *
 * Memory.  A request is admitted only when its worst-case cost (req_cost)
 * fits under the connection's and the server's caps (mem.c); it is charged
 * then, and given back piece by piece: when its reply is built, whatever
 * the reply does not point into is freed at once (reply.c, queue_reply), and the
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

#include "protocol.h"
#include "request.h"

const char *tx_cmd_name(uint16_t type)
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

/* ---- Library calls --------------------------------------------------- */

/* Count the bytes of a request that succeeded (the request itself was
 * counted when it arrived, errors in reply_error). */
static void count_success(const struct req *r)
{
    struct export_stats *st = EXPORT_STATS(r->c->proto->exp);

    switch (r->type) {
    case NBD_CMD_READ: st->bytes_read += r->len; break;
    case NBD_CMD_WRITE: st->bytes_written += r->len; break;
    case NBD_CMD_WRITE_ZEROES: st->bytes_zeroed += r->len; break;
    case NBD_CMD_TRIM: st->bytes_trimmed += r->len; break;
    default: break;
    }
}

/*
 * A request submitted from this thread (submit) is back from the library.
 * Why shutdown waits for these, not only for the connections: a closed
 * connection's requests may still be in flight, and a fast-path request
 * (req-owner.c) is I/O on this thread's engine against an image another
 * thread owns; if that thread closed its image first, the completion
 * would touch freed memory.  So a stopping thread says it is idle only
 * once none is left (threads_conns_gone).
 */
static void lib_request_gone(void)
{
    if (--srv_self->lib_inflight == 0)
        threads_conns_gone();
}

/* Completion of a library request (on the connection's thread). */
void tx_lib_done(void *opaque, int ret)
{
    struct req *r = opaque;
    struct conn *c = r->c;

    if (c->state == CONN_DEAD) {
        /* The client is gone: nobody to answer; just let go. */
        req_free(r);
        conn_unref(c);
        lib_request_gone();
        return;
    }
    if (ret < 0) {
        uint32_t e = nbd_errno_from(ret);
        if (e == NBD_EIO || e == NBD_ENOMEM)
            conn_log(c, SRV_LOG_ERROR, "%s at %llu+%u on \"%s\" failed: %s", tx_cmd_name(r->type),
                     (unsigned long long)r->offset, r->len, c->proto->exp->name, strerror(-ret));
        reply_error(r, e, strerror(-ret));
    } else {
        switch (r->type) {
        case NBD_CMD_READ:
            count_success(r);
            if (c->proto->structured)
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
    lib_request_gone();
}

/* Only the owner thread ever calls libqed for an image (threads.h): every
 * call of the request path checks it here in an assert build. */
static void assert_owner(const struct req *r)
{
    (void)r;
    assert(export_owned_here(r->c->proto->exp));
}

int tx_bitmaps_status(struct req *r)
{
    const struct proto_conn *pc = r->c->proto;
    size_t max = (r->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : BS_MAX_EXTENTS;
    struct req_bitmaps *bm;

    assert_owner(r);
    if (!pc->meta_nbitmaps)
        return 0;
    bm = malloc(req_bitmaps_size(pc->meta_nbitmaps, max));
    if (!bm)
        return -ENOMEM;
    bm->ret = 0;
    bm->max = max;
    /* In memory, no I/O: the bitmaps' runs are read now, at submission. */
    for (unsigned i = 0; i < pc->meta_nbitmaps; i++) {
        int ret = qed_bitmap_status(pc->exp->img, pc->meta_bitmaps[i]->name, r->offset, r->len,
                                    bm->x + i * max, max, &bm->got[i]);
        if (ret < 0) {
            bm->ret = ret;
            bm->failed = i;
            break;
        }
    }
    r->bm = bm;
    return 0;
}

/* Hand @r to the library, on the image's owner thread; @done completes
 * it there.  Returns 0 (@done will run) or a negative errno. */
int tx_lib_call(struct req *r, void (*done)(void *opaque, int ret))
{
    struct conn *c = r->c;
    qed_image *img = c->proto->exp->img;
    unsigned qf = (r->flags & NBD_CMD_FLAG_FUA) ? QED_REQ_FUA : 0;
    int ret;

    assert_owner(r);
    srv_self->engine_calls++;
    switch (r->type) {
    case NBD_CMD_READ:
        ret = qed_read(img, r->offset, r->buf, r->len, done, r);
        break;
    case NBD_CMD_WRITE:
        ret = qed_write(img, r->offset, r->buf, r->len, qf, done, r);
        break;
    case NBD_CMD_FLUSH:
        ret = qed_flush(img, done, r);
        break;
    case NBD_CMD_TRIM:
        ret = qed_discard(img, r->offset, r->len, qf, done, r);
        break;
    case NBD_CMD_WRITE_ZEROES:
        if (r->flags & NBD_CMD_FLAG_NO_HOLE)
            qf |= QED_REQ_NO_HOLE;
        if (r->flags & NBD_CMD_FLAG_FAST_ZERO)
            qf |= QED_REQ_FAST_ZERO;
        ret = qed_write_zeroes(img, r->offset, r->len, qf, done, r);
        break;
    case NBD_CMD_BLOCK_STATUS: {
        size_t max = (r->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : BS_MAX_EXTENTS;
        ret = tx_bitmaps_status(r);
        if (ret < 0)
            return ret;
        if (!c->proto->meta_base && !c->proto->meta_depth) {
            /* Bitmaps only, sent here from another thread (submit_or_fail
             * answers the owner's own at once): no library request; @done
             * (hop_done) only posts the answer home. */
            assert(done != tx_lib_done);
            done(r, 0);
            return 0;
        }
        if (max <= sizeof(r->ext_inline) / sizeof(r->ext_inline[0])) {
            r->ext = r->ext_inline;
        } else {
            r->ext = calloc(max, sizeof(*r->ext));
            if (!r->ext)
                return -ENOMEM;
            r->ext_max = max;
        }
        ret = qed_block_status(img, r->offset, r->len, r->ext, max, &r->next, done, r);
        break;
    }
    default:
        assert(!"submit of a command without library work");
        return -EINVAL;
    }
    return ret;
}

/* Hand @r to the library (through its owner thread when that is another
 * one: req-owner.c).  Returns 0 (tx_lib_done will run) or a negative errno. */
static int submit(struct req *r)
{
    struct conn *c = r->c;
    int ret;

    /* One library request, structured or not: see reply_read_structured.
     * The buffer comes from this thread's free list. */
    if (r->type == NBD_CMD_READ && req_alloc_buf(r, r->len) < 0)
        return -ENOMEM;
    if (!export_owned_here(c->proto->exp)) {
        conn_ref(c);            /* held until tx_lib_done, back on this thread */
        srv_self->lib_inflight++;
        if (tx_submit_fast(r) < 0)
            tx_submit_on_owner(r);
        return 0;
    }
    ret = tx_lib_call(r, tx_lib_done);
    if (ret == 0) {
        conn_ref(c);            /* the library holds the request until tx_lib_done */
        srv_self->lib_inflight++;
    }
    return ret;
}

/* Submit, or answer at once when the library refuses. */
static void submit_or_fail(struct req *r)
{
    int ret;

    if (r->type == NBD_CMD_BLOCK_STATUS && !r->c->proto->meta_base &&
        !r->c->proto->meta_depth && export_owned_here(r->c->proto->exp)) {
        /* Dirty bitmaps only, on the owner: they are in memory
         * (qed_bitmap_status does no I/O), so the reply is built now,
         * without a library request.  On another thread the runs are read
         * on the owner (tx_lib_call) and the reply built when they are back. */
        ret = tx_bitmaps_status(r);
        if (ret == 0) {
            reply_block_status(r);
            return;
        }
    } else {
        ret = submit(r);
    }

    if (ret < 0) {
        uint32_t e = nbd_errno_from(ret);
        if (e == NBD_EIO || e == NBD_ENOMEM)
            conn_log(r->c, SRV_LOG_ERROR, "%s at %llu+%u: submit failed: %s", tx_cmd_name(r->type),
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
    const struct export *e = c->proto->exp;
    uint16_t allowed = NBD_CMD_FLAG_FUA;   /* FUA is valid on every command */
    bool writes = false;

    switch (type) {
    case NBD_CMD_READ:
        if (c->proto->structured)
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
        return c->proto->structured ? NBD_EOVERFLOW : NBD_EINVAL;
    }
    if (type == NBD_CMD_BLOCK_STATUS) {
        if (!c->proto->structured || proto_meta_count(c) == 0) {
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
    struct export_stats *st = EXPORT_STATS(e);

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

void tx_expect_request(struct conn *c)
{
    conn_expect(c, CONN_TX_REQ_HEADER, c->hdr, sizeof(struct nbd_request));
}

/*
 * What ends a request at its header, before any memory is involved: a bad
 * magic, DISC, a WRITE payload over the limit.  Logs and counts the request
 * on its first run (not @again).  Returns 0 to go on, -1 when it was handled.
 */
static int header_first_checks(struct conn *c, const struct nbd_request *h, bool again)
{
    uint16_t type = be16toh(h->type);
    uint32_t len = be32toh(h->len);

    if (be32toh(h->magic) != NBD_REQUEST_MAGIC) {
        conn_close(c, "bad request magic");
        return -1;
    }
    if (srv_log_enabled(SRV_LOG_DEBUG) && !again)
        conn_log(c, SRV_LOG_DEBUG, "request %s cookie=0x%llx offset=%llu len=%u flags=0x%x",
                 tx_cmd_name(type), (unsigned long long)be64toh(h->cookie),
                 (unsigned long long)be64toh(h->offset), len, be16toh(h->flags));
    if (type == NBD_CMD_DISC) {
        /* No reply; answer what is in flight, then close. */
        conn_drain(c, "client sent DISC");
        return -1;
    }
    if (!again)
        count_request(c->proto->exp, type);
    if (type == NBD_CMD_WRITE && len > SRV_MAX_PAYLOAD) {
        EXPORT_STATS(c->proto->exp)->errors++;
        /* We will not buffer it, and cannot skip it in step cheaply: the
         * spec allows a hard disconnect for payloads over 32 MiB. */
        conn_log(c, SRV_LOG_INFO, "WRITE payload of %u bytes exceeds 32 MiB", len);
        conn_close(c, "oversized WRITE payload");
        return -1;
    }
    return 0;
}

/*
 * Admit the request of header @h (rejected with @err, or 0) once its cost
 * fits, and make its struct.  NULL when it waits for memory or the
 * connection was closed.
 */
static struct req *admit_request(struct conn *c, const struct nbd_request *h, uint32_t err)
{
    uint16_t type = be16toh(h->type), flags = be16toh(h->flags);
    uint32_t len = be32toh(h->len);
    size_t cost = req_cost(c, type, flags, len, err);
    struct req *r;

    /* Why before anything is allocated: a request that does not fit waits
     * here, its header read and its payload (if any) still unread, and the
     * connection reads nothing more until it fits (conn_step). */
    if (!conn_mem_admit(c, cost))
        return NULL;
    r = req_get();
    if (!r) {
        conn_mem_release(c, cost);
        conn_close(c, "out of memory for a request");
        return NULL;
    }
    r->charge = cost;
    __atomic_add_fetch(&srv.nreqs, 1, __ATOMIC_SEQ_CST);
    r->c = c;
    r->cookie = be64toh(h->cookie);
    r->offset = be64toh(h->offset);
    r->len = len;
    r->type = type;
    r->flags = flags;
    c->inflight++;
    return r;
}

/* A WRITE: read its payload into its buffer, or (rejected with @err, or
 * out of memory) read it anyway and drop it, so the stream stays in step. */
static void start_write_payload(struct conn *c, struct req *r, uint32_t err, const char *msg)
{
    c->proto->cur = r;
    if (!err && req_alloc_buf(r, r->len) < 0) {
        err = NBD_ENOMEM;
        msg = "out of memory";
    }
    if (err) {
        r->err = err;
        r->errmsg = msg;
        conn_expect_skip(c, CONN_TX_SKIP_PAYLOAD, r->len);
        return;
    }
    conn_expect(c, CONN_TX_WRITE_PAYLOAD, r->buf, r->len);
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
    uint32_t err;

    memcpy(&h, c->hdr, sizeof(h));
    if (header_first_checks(c, &h, c->mem_wait) < 0)
        return;
    err = tx_check(c, &h, &msg);
    r = admit_request(c, &h, err);
    if (!r)
        return;
    if (r->type == NBD_CMD_WRITE) {
        start_write_payload(c, r, err, msg);
        return;
    }
    tx_expect_request(c);
    if (err) {
        reply_error(r, err, msg);
        return;
    }
    if (r->type == NBD_CMD_CACHE || (r->len == 0 && r->type != NBD_CMD_FLUSH)) {
        /* CACHE: the range is valid and the library has no cache to fill
         * beyond its L2 tables, so there is nothing to do.  Zero-length
         * READ/TRIM/WRITE_ZEROES: nothing to do either (the spec asks not to
         * disconnect). */
        reply_ok(r);
        return;
    }
    submit_or_fail(r);
}

/* The request whose payload was being read is complete: hand it over and
 * wait for the next header. */
static struct req *take_current(struct conn *c)
{
    struct req *r = c->proto->cur;

    c->proto->cur = NULL;
    tx_expect_request(c);
    return r;
}

void tx_write_payload_done(struct conn *c)
{
    struct req *r = take_current(c);

    if (r->len == 0)
        reply_ok(r);
    else
        submit_or_fail(r);
}

void tx_skip_payload_done(struct conn *c)
{
    struct req *r = take_current(c);

    reply_error(r, r->err, r->errmsg);
}
