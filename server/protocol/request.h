/*
 * request.h - one NBD request of the transmission phase, shared by
 * request.c (parse, check, submit), reply.c (the replies) and req-mem.c
 * (free lists and memory accounting).
 */
#ifndef REQUEST_H
#define REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "protocol.h"

/* Chunks of a sparse structured READ reply at most (the rest goes as data). */
#define READ_MAX_CHUNKS 128u
/* Extents asked for one BLOCK_STATUS without REQ_ONE. */
#define BS_MAX_EXTENTS 4096u
/* The most the chunk headers and iovecs of a split READ reply take (r->meta). */
#define READ_META_MAX (READ_MAX_CHUNKS * READ_CHUNK_SLOT + \
                       2 * READ_MAX_CHUNKS * sizeof(struct iovec))

/* Sizes of the reply headers the server builds (wire layout in nbd-proto.h). */
#define SR_HDR_LEN sizeof(struct nbd_structured_reply)
#define SR_DATA_HDR_LEN (SR_HDR_LEN + sizeof(struct nbd_chunk_offset_data))
#define SR_HOLE_LEN (SR_HDR_LEN + sizeof(struct nbd_chunk_offset_hole))
#define SR_ERROR_HDR_LEN (SR_HDR_LEN + sizeof(struct nbd_chunk_error))
#define SR_BS_HDR_LEN (SR_HDR_LEN + sizeof(struct nbd_chunk_block_status))
#define SR_BS_DESC_LEN sizeof(struct nbd_block_descriptor)
/* Room for one chunk header of a split READ reply (data or hole) in r->meta;
 * a multiple of 8 keeps the iovecs stored after them aligned. */
#define READ_CHUNK_SLOT 32u
_Static_assert(READ_CHUNK_SLOT >= SR_DATA_HDR_LEN && READ_CHUNK_SLOT >= SR_HOLE_LEN &&
               READ_CHUNK_SLOT % 8 == 0, "READ chunk slot");

/*
 * The runs of every selected dirty bitmap of a BLOCK_STATUS, read on the
 * image's owner (tx_bitmaps_status) and only formatted on the connection's
 * thread (reply.c): @max runs per bitmap, bitmap i's at x[i * max].
 */
struct req_bitmaps {
    int ret;                    /* 0, or the first failure (the reply is EIO) */
    unsigned failed;            /* which bitmap failed */
    size_t max;
    size_t got[QED_BITMAP_MAX];
    struct qed_dirty_extent x[];
};

/** req_bitmaps_size - the bytes of a struct req_bitmaps of @n bitmaps, @max runs each. */
static inline size_t req_bitmaps_size(unsigned n, size_t max)
{
    return sizeof(struct req_bitmaps) + (size_t)n * max * sizeof(struct qed_dirty_extent);
}

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
    struct req_bitmaps *bm;     /* BLOCK_STATUS: the selected bitmaps' runs (heap) */
    size_t ext_max;             /* entries of a heap ext */
    size_t next;
    uint32_t err;               /* NBD error of a rejected request */
    const char *errmsg;
    uint8_t *meta;              /* reply headers (and their iovecs) beyond hdr */
    size_t meta_bytes;          /* its size */
    struct iovec iov[2];
    struct req *pool_next;      /* in the free list */
    /* Sent to the image's owner thread (req-owner.c): the inbox node, the
     * connection's thread, and the library's result carried back. */
    struct thread_msg hop;
    struct srv_thread *home;
    int hop_ret;
    bool remark;                /* a fast-path write must be marked in the bitmaps */
    /* Not cleared when a request is reused: written before every use. */
    uint8_t hdr[64];
};

/** tx_cmd_name - the command's name, for logs. */
const char *tx_cmd_name(uint16_t type);

/**
 * tx_lib_call - hand @r to the library on the image's owner thread (the
 * calling thread must be it); @done completes it there.  Returns 0 (@done
 * will run, never inside this call) or a negative errno.
 */
int tx_lib_call(struct req *r, void (*done)(void *opaque, int ret));

/** tx_lib_done - the completion of @opaque (a struct req), on its connection's thread. */
void tx_lib_done(void *opaque, int ret);

/* ---- req-owner.c ---- */

/**
 * tx_submit_on_owner - post @r to its image's owner thread, which calls
 * tx_lib_call there; the completion comes back to this thread's inbox and
 * runs tx_lib_done here.  A submit the library refuses comes back the same
 * way, as a completion with that error.
 */
void tx_submit_on_owner(struct req *r);

/**
 * tx_submit_fast - on a thread that does not own the image: serve @r
 * here when the library's fast path takes it (a READ, or a WRITE without
 * FUA, of allocated clusters: qed_read_on, qed_write_on); tx_lib_done runs
 * later on this thread.  -EAGAIN when it does not (nothing was done): send
 * it to the owner.
 */
int tx_submit_fast(struct req *r);

/* ---- req-mem.c ---- */

/** req_get - a cleared request (hdr excepted), or NULL. */
struct req *req_get(void);

/** req_cost - what a request costs, known from its header (@err: it was rejected). */
size_t req_cost(const struct conn *c, uint16_t type, uint16_t flags, uint32_t len, uint32_t err);

/** req_settle - give back the part of @r's charge it no longer holds. */
void req_settle(struct req *r);

/** req_free - free @r (to the free list), and give back its charge. */
void req_free(struct req *r);

/** req_release - outmsg release function of a reply: the reply was written (or dropped). */
void req_release(struct outmsg *m);

/** req_alloc_buf - the data buffer of @r: r->len bytes (n is r->len or 0).  0 or -ENOMEM. */
int req_alloc_buf(struct req *r, size_t n);

/** req_buf_put - give back a data buffer of req_alloc_buf (@n bytes). */
void req_buf_put(uint8_t *p, size_t n);

/* ---- reply.c ---- */

/** reply_error - reply with NBD error @err (an ERROR chunk with @msg when structured). */
void reply_error(struct req *r, uint32_t err, const char *msg);

/** reply_ok - a successful reply without data (or a simple READ reply with its data). */
void reply_ok(struct req *r);

/** reply_read_structured - a structured READ reply cut from the data read. */
void reply_read_structured(struct req *r);

/**
 * tx_bitmaps_status - (on the image's owner) read the runs of every
 * selected dirty bitmap into r->bm.  Returns 0 or -ENOMEM; a bitmap that
 * cannot be read is recorded in r->bm->ret (the reply is then EIO).
 */
int tx_bitmaps_status(struct req *r);

/** reply_block_status - the BLOCK_STATUS reply from r->ext and r->bm. */
void reply_block_status(struct req *r);

#endif /* REQUEST_H */
