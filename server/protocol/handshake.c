/*
 * handshake.c - fixed newstyle option haggling: greeting, client flags,
 * option headers and the checks every option passes before its handler.
 *
 * Input is checked here, once, at the edge: every length is compared with
 * the limits before anything is allocated or parsed, and the handlers below
 * work on buffers whose size they already know.
 *
 * Refusal policy.  A client over --max-connections still gets the greeting,
 * and then every option except ABORT is answered with NBD_REP_ERR_SHUTDOWN
 * (the spec says a client receiving it MUST soft-disconnect, which is what
 * we want from it); EXPORT_NAME, which cannot carry an error, closes the
 * connection.  This follows the spec's rule that a server which does not
 * want a client "MUST simply error inbound options until the client gets the
 * hint", and lets clients print a useful message instead of seeing a reset.
 *
 * TLS policy (--tls):
 *   off      NOTLS: STARTTLS gets ERR_POLICY.
 *   on       SELECTIVETLS with no TLS-only export: STARTTLS upgrades the
 *            session, plaintext clients are served too.
 *   require  FORCEDTLS: before the upgrade every option but STARTTLS and
 *            ABORT gets ERR_TLS_REQD, and EXPORT_NAME (which cannot carry an
 *            error) ends the session.
 * After a successful STARTTLS nothing negotiated before it survives
 * (opt_starttls), and a second STARTTLS gets ERR_INVALID.  The handler of
 * each option is in options.c.
 */
#include "config.h"

#include <endian.h>
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"
#include "tls.h"

const char *hs_opt_name(uint32_t opt)
{
    switch (opt) {
    case NBD_OPT_EXPORT_NAME: return "EXPORT_NAME";
    case NBD_OPT_ABORT: return "ABORT";
    case NBD_OPT_LIST: return "LIST";
    case NBD_OPT_PEEK_EXPORT: return "PEEK_EXPORT";
    case NBD_OPT_STARTTLS: return "STARTTLS";
    case NBD_OPT_INFO: return "INFO";
    case NBD_OPT_GO: return "GO";
    case NBD_OPT_STRUCTURED_REPLY: return "STRUCTURED_REPLY";
    case NBD_OPT_LIST_META_CONTEXT: return "LIST_META_CONTEXT";
    case NBD_OPT_SET_META_CONTEXT: return "SET_META_CONTEXT";
    case NBD_OPT_EXTENDED_HEADERS: return "EXTENDED_HEADERS";
    default: return "unknown";
    }
}

/* ---- Replies ----------------------------------------------------------- */

void hs_reply(struct conn *c, uint32_t type, const void *data, size_t len)
{
    struct nbd_opt_reply r = {
        .magic = htobe64(NBD_REP_MAGIC),
        .option = htobe32(c->proto->opt),
        .type = htobe32(type),
        .len = htobe32((uint32_t)len),
    };

    if (conn_queue_copy(c, &r, sizeof(r), data, len) < 0)
        conn_close(c, "out of memory queueing an option reply");
}

void hs_reply_err(struct conn *c, uint32_t type, const char *msg)
{
    conn_log(c, SRV_LOG_INFO, "option %s: error 0x%x: %s", hs_opt_name(c->proto->opt), type, msg);
    hs_reply(c, type, msg, strlen(msg));
}

uint16_t hs_tx_flags(const struct conn *c, const struct export *e)
{
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
                 NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_CACHE |
                 NBD_FLAG_SEND_FAST_ZERO |
                 /* Honest: every connection shares the export's one qed_image, and
                  * qed_flush flushes the whole file, so a flush on any connection
                  * covers writes completed on all of them. */
                 NBD_FLAG_CAN_MULTI_CONN;

    if (e->read_only)
        f |= NBD_FLAG_READ_ONLY;
    /* The spec: SEND_DF MUST stay clear unless structured replies were negotiated. */
    if (c->proto->structured)
        f |= NBD_FLAG_SEND_DF;
    return f;
}

/* ---- Greeting and client flags ---------------------------------------- */

void hs_start(struct conn *c)
{
    struct nbd_greeting g = {
        .magic = htobe64(NBD_MAGIC),
        .opts_magic = htobe64(NBD_OPTS_MAGIC),
        .hs_flags = htobe16(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES),
    };

    if (conn_queue_copy(c, &g, sizeof(g), NULL, 0) < 0) {
        conn_close(c, "out of memory sending the greeting");
        return;
    }
    conn_expect(c, CONN_HS_CLIENT_FLAGS, c->hdr, sizeof(struct nbd_client_flags));
}

void hs_client_flags_done(struct conn *c)
{
    struct nbd_client_flags cf;
    uint32_t flags;

    memcpy(&cf, c->hdr, sizeof(cf));
    flags = be32toh(cf.flags);
    /* The server MUST close the connection on client flags it does not know. */
    if (flags & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
        conn_log(c, SRV_LOG_INFO, "unknown client flags 0x%x", flags);
        conn_close(c, "unknown client flags");
        return;
    }
    c->proto->no_zeroes = flags & NBD_FLAG_C_NO_ZEROES;
    conn_log(c, SRV_LOG_DEBUG, "client flags 0x%x", flags);
    hs_expect_option(c);
}

/* ---- Option header ----------------------------------------------------- */

void hs_opt_header_done(struct conn *c)
{
    struct nbd_opt_header h;

    memcpy(&h, c->hdr, sizeof(h));
    if (be64toh(h.magic) != NBD_OPTS_MAGIC) {
        conn_close(c, "bad option magic");
        return;
    }
    c->proto->opt = be32toh(h.option);
    c->proto->opt_len = be32toh(h.len);
    conn_log(c, SRV_LOG_INFO, "option %s (%u), %u bytes of data", hs_opt_name(c->proto->opt),
             c->proto->opt, c->proto->opt_len);

    /* Why a hard limit on the option count: option haggling costs the client
     * nothing and us a reply each; past the limit we treat the client as a
     * denial of service, which the spec allows to be a hard disconnect. */
    if (++c->proto->nopts > SRV_MAX_OPTIONS) {
        conn_close(c, "too many options");
        return;
    }

    if (c->proto->opt == NBD_OPT_EXPORT_NAME && c->proto->opt_len > NBD_MAX_STRING) {
        /* EXPORT_NAME cannot carry an error: the session must end. */
        conn_close(c, "export name longer than 4096 bytes");
        return;
    }
    if (c->proto->opt_len > SRV_MAX_OPTION_DRAIN) {
        /* Why a hard disconnect, at once: the spec says a server "MUST
         * (save where set out above) simply error inbound options until the
         * client gets the hint that it is unwelcome, except that if a server
         * believes a client's behaviour constitutes a denial of service, it
         * MAY initiate a hard disconnect" ("Termination of the session
         * during option haggling").  No option we know carries more than a
         * few strings of at most 4096 bytes, so an option of over 1 MiB (up
         * to 4 GiB) only holds a connection slot until --handshake-timeout
         * while we read and drop it: a denial of service.  An error reply
         * first is no use: the client sends its data anyway, and only a
         * drain would keep the stream in step.  (nbdkit, too, disconnects
         * on an option over its limit.) */
        conn_log(c, SRV_LOG_INFO, "option %s: %u bytes of data, over the %u-byte limit",
                 hs_opt_name(c->proto->opt), c->proto->opt_len, SRV_MAX_OPTION_DRAIN);
        conn_close(c, "option data too long");
        return;
    }
    if (c->proto->opt_len > SRV_MAX_OPTION_LEN) {
        /* Never allocate by the client's length: drop the bytes, then say
         * TOO_BIG.  Draining at most SRV_MAX_OPTION_DRAIN bytes is cheap, and
         * erroring the option is what the spec asks of a server first. */
        conn_expect_skip(c, CONN_HS_OPT_SKIP, c->proto->opt_len);
        return;
    }
    free(c->proto->opt_buf);
    c->proto->opt_buf = NULL;
    if (c->proto->opt_len) {
        c->proto->opt_buf = malloc(c->proto->opt_len);
        if (!c->proto->opt_buf) {
            conn_close(c, "out of memory for an option payload");
            return;
        }
    }
    conn_expect(c, CONN_HS_OPT_PAYLOAD, c->proto->opt_buf, c->proto->opt_len);
}

/* FORCEDTLS and not upgraded yet: must this option be refused? */
static bool tls_required(const struct conn *c)
{
    return tls_mode() == TLS_REQUIRE && !c->tls_active && c->proto->opt != NBD_OPT_STARTTLS &&
           c->proto->opt != NBD_OPT_ABORT;
}

void hs_opt_skip_done(struct conn *c)
{
    if (c->refuse && c->proto->opt != NBD_OPT_ABORT)
        hs_reply_err(c, NBD_REP_ERR_SHUTDOWN, "server is at its connection limit");
    else if (tls_required(c) && c->proto->opt == NBD_OPT_EXPORT_NAME)
        conn_close(c, "EXPORT_NAME before STARTTLS, and TLS is required");
    else if (tls_required(c))
        hs_reply_err(c, NBD_REP_ERR_TLS_REQD, "TLS is required: send STARTTLS first");
    else
        hs_reply_err(c, NBD_REP_ERR_TOO_BIG, "option data larger than 64 KiB");
    if (c->state != CONN_DEAD && c->state != CONN_DRAINING)
        hs_expect_option(c);
}

void hs_opt_payload_done(struct conn *c)
{
    if (c->refuse && c->proto->opt != NBD_OPT_ABORT) {
        if (c->proto->opt == NBD_OPT_EXPORT_NAME)
            conn_close(c, "EXPORT_NAME while over the connection limit");
        else
            hs_reply_err(c, NBD_REP_ERR_SHUTDOWN, "server is at its connection limit");
        goto next;
    }
    if (tls_required(c)) {
        if (c->proto->opt == NBD_OPT_EXPORT_NAME)
            conn_close(c, "EXPORT_NAME before STARTTLS, and TLS is required");
        else
            hs_reply_err(c, NBD_REP_ERR_TLS_REQD, "TLS is required: send STARTTLS first");
        goto next;
    }

    opt_dispatch(c);

next:
    free(c->proto->opt_buf);
    c->proto->opt_buf = NULL;
    /* Still haggling?  Then the next option header comes. */
    if (c->state == CONN_HS_OPT_PAYLOAD)
        hs_expect_option(c);
}

void hs_expect_option(struct conn *c)
{
    conn_expect(c, CONN_HS_OPT_HEADER, c->hdr, sizeof(struct nbd_opt_header));
}

void hs_forget_meta(struct conn *c)
{
    struct proto_conn *p = c->proto;

    /* Requests still out (at the owner thread) read the selection. */
    assert(c->inflight == 0 || p->meta_nbitmaps == 0);

    for (unsigned i = 0; i < p->meta_nbitmaps; i++)
        export_bitmap_release(p->meta_exp, p->meta_bitmaps[i]);
    p->meta_nbitmaps = 0;
    p->meta_exp = NULL;
    p->meta_base = p->meta_depth = false;
}

unsigned proto_meta_count(const struct conn *c)
{
    return (unsigned)c->proto->meta_base + (unsigned)c->proto->meta_depth +
           c->proto->meta_nbitmaps;
}

void hs_enter_transmission(struct conn *c, struct export *e)
{
    if (c->state == CONN_DEAD)
        return;
    c->proto->exp = e;
    c->proto->tx_flags = hs_tx_flags(c, e);
    if (c->proto->meta_exp != e) {
        /* Contexts were negotiated for another export: they do not apply. */
        hs_forget_meta(c);
    }
    conn_handshake_over(c);
    EXPORT_STATS(e)->connections++;
    conn_log(c, SRV_LOG_INFO,
             "serving export \"%s\" (%s, %llu bytes, flags 0x%x, %s replies%s%s, "
             "%u dirty bitmaps)", e->name,
             e->path, (unsigned long long)e->size, c->proto->tx_flags,
             c->proto->structured ? "structured" : "simple",
             c->proto->meta_base ? ", base:allocation" : "",
             c->proto->meta_depth ? ", qemu:allocation-depth" : "", c->proto->meta_nbitmaps);
    tx_expect_request(c);
}

