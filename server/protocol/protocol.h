/*
 * protocol.h - the NBD protocol inside server/protocol: the handshake
 * (handshake.c, options.c), the requests (request.c) and their replies
 * (reply.c), tied to the network layer by dispatch.c (conn-ops.h).  Not
 * included by server/net.
 */
#ifndef PROTOCOL_H
#define PROTOCOL_H

#include <stdbool.h>
#include <stdint.h>

#include "conn.h"
#include "nbd-proto.h"

/*
 * What the protocol keeps per connection, c->proto (the network layer sees
 * only a pointer).  Allocated by proto_greeting, freed by proto_free.
 */
struct proto_conn {
    /* Handshake */
    uint32_t opt, opt_len;        /* option being read */
    uint8_t *opt_buf;             /* its payload */
    unsigned nopts;
    bool no_zeroes;
    bool structured;              /* NBD_OPT_STRUCTURED_REPLY was acknowledged */
    struct export *meta_exp;      /* export named by the last SET_META_CONTEXT */
    bool meta_base;               /* base:allocation selected (context id 1) */
    bool meta_depth;              /* qemu:allocation-depth selected (context id 2) */
    unsigned meta_nbitmaps;       /* qemu:dirty-bitmap:NAME selected (ids CTX_ID_BITMAP0 + i) */
    struct export_bitmap_use *meta_bitmaps[QED_BITMAP_MAX]; /* held on meta_exp (exports.c) */

    /* Transmission */
    struct export *exp;           /* the export served (NULL while negotiating) */
    uint16_t tx_flags;
    struct req *cur;              /* request whose payload is being read */
};

/* Metadata context ids we hand out in SET_META_CONTEXT. */
#define CTX_ID_BASE_ALLOCATION 1u
#define CTX_ID_ALLOCATION_DEPTH 2u
#define CTX_ID_BITMAP0 3u       /* the i-th selected dirty bitmap: CTX_ID_BITMAP0 + i */
#define CTX_BITMAP_PREFIX "qemu:dirty-bitmap:"

/** proto_meta_count - how many metadata contexts @c selected (0: BLOCK_STATUS is refused). */
unsigned proto_meta_count(const struct conn *c);

/*
 * The handlers of the reading states, run by dispatch.c once the bytes the
 * state asked for are in.  handshake.c: the 4 client-flag bytes (c->hdr),
 * a 16-byte option header (c->hdr), an option payload (c->opt_buf), an
 * over-long option payload dropped.  request.c: a request header (c->hdr),
 * the payload of c->cur, the payload of a rejected c->cur dropped.
 */
void hs_client_flags_done(struct conn *c);
void hs_opt_header_done(struct conn *c);
void hs_opt_payload_done(struct conn *c);
void hs_opt_skip_done(struct conn *c);
void tx_req_header_done(struct conn *c);
void tx_write_payload_done(struct conn *c);
void tx_skip_payload_done(struct conn *c);

/* ---- handshake.c ---- */

/** hs_start - queue the greeting and wait for the client flags. */
void hs_start(struct conn *c);

/** hs_expect_option - the next option header comes (tx_expect_request: the next request). */
void hs_expect_option(struct conn *c);

/** hs_tx_flags - the transmission flags @c would get for @e. */
uint16_t hs_tx_flags(const struct conn *c, const struct export *e);

/**
 * hs_reply - queue one option reply: header + @len bytes of @data.
 * hs_reply_err - an error reply carrying a human-readable message (logged
 * with -v).  Either closes @c when out of memory.
 */
void hs_reply(struct conn *c, uint32_t type, const void *data, size_t len);
void hs_reply_err(struct conn *c, uint32_t type, const char *msg);

/** hs_opt_name - the option's name, for logs. */
const char *hs_opt_name(uint32_t opt);

/**
 * hs_forget_meta - forget the metadata contexts selected (STARTTLS, SET,
 * another export, the connection closing), and let go of its bitmaps.  hs_enter_transmission - option haggling is over;
 * serve @e.
 */
void hs_forget_meta(struct conn *c);
void hs_enter_transmission(struct conn *c, struct export *e);

/* ---- options.c: one handler per option ---- */

/** opt_dispatch - run the handler of option c->opt (its payload is in c->opt_buf). */
void opt_dispatch(struct conn *c);

/* ---- request.c ---- */

/**
 * tx_expect_request - the next request header comes.  tx_abort_current -
 * free c->cur, the request being read, when closing.
 */
void tx_expect_request(struct conn *c);
void tx_abort_current(struct conn *c);

/**
 * nbd_errno_from - map a negative errno from the library (or the server
 * itself) to an NBD error value.  The one place where this mapping lives.
 */
uint32_t nbd_errno_from(int neg_errno);

#endif /* PROTOCOL_H */
