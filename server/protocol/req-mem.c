/*
 * req-mem.c - the memory of requests: free lists of request structs and
 * data buffers (so the steady state calls no malloc), what a request costs
 * (charged at admission, mem.c) and how it is given back piece by piece.
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
#include "conn-ops.h"

/* ---- Request memory ------------------------------------------------------ */

/*
 * Free lists, one set per loop thread: a request and its buffers are
 * allocated and freed on its connection's thread (the owner thread of the
 * image only borrows them), so they need no lock.  Why bounded: after a
 * burst (many connections, large requests) the memory goes back to malloc
 * instead of staying cached for ever.  With several threads each keeps
 * its share of the bounds (pool_share).
 */
static __thread struct req *req_pool;
static __thread unsigned req_pool_n;

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
static __thread struct pooled_buf *buf_pool[TX_BUF_CLASSES];
static __thread size_t buf_pool_bytes;

/* A thread's share of a free-list bound @total: total / N, at least @min. */
static size_t pool_share(size_t total, size_t min)
{
    size_t share = total / (srv.nthreads ? srv.nthreads : 1);

    return share > min ? share : (min < total ? min : total);
}

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

/*
 * Memory for a data buffer of @n bytes.  Why 4 KiB-aligned when the size
 * allows it: with --cache=none the library hands an aligned buffer straight
 * to O_DIRECT; any other buffer costs a bounce copy on the loop thread.
 */
static void *data_alloc(size_t n)
{
    return n % 4096 == 0 ? aligned_alloc(4096, n) : malloc(n);
}

/* A buffer of @n bytes (n > 0), or NULL. */
static uint8_t *buf_get(size_t n)
{
    int k = buf_class(n);

    if (k < 0)
        return data_alloc(n);
    if (buf_pool[k]) {
        struct pooled_buf *b = buf_pool[k];
        buf_pool[k] = b->next;
        buf_pool_bytes -= (size_t)1 << (TX_BUF_MIN_SHIFT + k);
        return (uint8_t *)b;
    }
    return data_alloc((size_t)1 << (TX_BUF_MIN_SHIFT + k));
}

/* Give back a buffer of buf_get(@n). */
void req_buf_put(uint8_t *p, size_t n)
{
    int k = buf_class(n);
    size_t sz;

    if (k < 0) {
        free(p);
        return;
    }
    sz = (size_t)1 << (TX_BUF_MIN_SHIFT + k);
    if (!SRV_POOLS || buf_pool_bytes + sz > pool_share(TX_BUF_POOL_BYTES, 4u << 20)) {
        free(p);
        return;
    }
    struct pooled_buf *b = (struct pooled_buf *)p;
    b->next = buf_pool[k];
    buf_pool[k] = b;
    buf_pool_bytes += sz;
}

/* A cleared request (hdr excepted), or NULL. */
struct req *req_get(void)
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
size_t req_cost(const struct conn *c, uint16_t type, uint16_t flags, uint32_t len,
                       uint32_t err)
{
    size_t n = sizeof(struct req);

    if (err)
        return n;
    switch (type) {
    case NBD_CMD_READ:
        n += len;
        if (len && c->proto->structured && !(flags & NBD_CMD_FLAG_DF))
            n += READ_META_MAX;
        break;
    case NBD_CMD_WRITE:
        n += len;
        break;
    case NBD_CMD_BLOCK_STATUS:
        /* The library's extents (base:allocation, qemu:allocation-depth),
         * the runs of every selected bitmap (read on the owner:
         * tx_bitmaps_status), and a chunk per selected context. */
        if (c->proto->meta_nbitmaps)
            n += req_bitmaps_size(c->proto->meta_nbitmaps,
                                  (flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : BS_MAX_EXTENTS);
        if (!(flags & NBD_CMD_FLAG_REQ_ONE))
            n += BS_MAX_EXTENTS * sizeof(struct qed_extent) +
                 (2 + c->proto->meta_nbitmaps) * (SR_BS_HDR_LEN + SR_BS_DESC_LEN * BS_MAX_EXTENTS);
        else
            n += (2 + c->proto->meta_nbitmaps) * (SR_BS_HDR_LEN + SR_BS_DESC_LEN);
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
    if (r->bm)
        n += req_bitmaps_size(r->c->proto->meta_nbitmaps, r->bm->max);
    return n;
}

/* Give back the part of @r's charge it no longer holds (its reply is built:
 * nothing it frees from now on until req_free). */
void req_settle(struct req *r)
{
    size_t now = req_holds(r);

    assert(now <= r->charge);
    conn_mem_release(r->c, r->charge - now);
    r->charge = now;
}

void req_free(struct req *r)
{
    struct conn *c = r->c;
    size_t charge = r->charge;

    assert(c->inflight > 0 && SRV_LOAD(srv.nreqs) > 0);
    c->inflight--;
    __atomic_sub_fetch(&srv.nreqs, 1, __ATOMIC_SEQ_CST);
    if (r->buf)
        req_buf_put(r->buf, r->len);
    if (r->ext != r->ext_inline)
        free(r->ext);
    free(r->bm);
    free(r->meta);
    if (SRV_POOLS && req_pool_n < pool_share(TX_REQ_POOL_MAX, 64)) {
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

void req_release(struct outmsg *m)
{
    req_free((struct req *)m);  /* out is the first member */
}

/* The data buffer of @r: r->len bytes (n is r->len or 0); its admission
 * charged it already. */
int req_alloc_buf(struct req *r, size_t n)
{
    if (n == 0)
        return 0;
    assert(n == r->len);
    r->buf = buf_get(n);
    if (!r->buf)
        return -ENOMEM;
    return 0;
}

void proto_thread_exit(void)
{
    struct req *r;

    while ((r = req_pool)) {
        req_pool = r->pool_next;
        free(r);
    }
    req_pool_n = 0;
    for (int k = 0; k < TX_BUF_CLASSES; k++) {
        struct pooled_buf *b;
        while ((b = buf_pool[k])) {
            buf_pool[k] = b->next;
            free(b);
        }
    }
    buf_pool_bytes = 0;
}

void tx_abort_current(struct conn *c)
{
    if (c->proto->cur) {
        req_free(c->proto->cur);
        c->proto->cur = NULL;
    }
}

