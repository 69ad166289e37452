/*
 * handshake.c - fixed newstyle option haggling.
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
 * (conn_start_tls), and a second STARTTLS gets ERR_INVALID.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "tls.h"

static const char *opt_name(uint32_t opt)
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

/* Queue one option reply: header + @len bytes of @data. */
static void reply(struct conn *c, uint32_t type, const void *data, size_t len)
{
    struct nbd_opt_reply r = {
        .magic = htobe64(NBD_REP_MAGIC),
        .option = htobe32(c->opt),
        .type = htobe32(type),
        .len = htobe32((uint32_t)len),
    };

    if (conn_queue_copy(c, &r, sizeof(r), data, len) < 0)
        conn_close(c, "out of memory queueing an option reply");
}

/* An error reply carrying a human-readable message (logged with -v). */
static void reply_err(struct conn *c, uint32_t type, const char *msg)
{
    conn_log(c, SRV_LOG_INFO, "option %s: error 0x%x: %s", opt_name(c->opt), type, msg);
    reply(c, type, msg, strlen(msg));
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
    if (c->structured)
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
    conn_expect(c, CONN_HS_CLIENT_FLAGS, c->hdr, 4);
}

void hs_client_flags_done(struct conn *c)
{
    uint32_t flags;

    memcpy(&flags, c->hdr, 4);
    flags = be32toh(flags);
    /* The server MUST close the connection on client flags it does not know. */
    if (flags & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
        conn_log(c, SRV_LOG_INFO, "unknown client flags 0x%x", flags);
        conn_close(c, "unknown client flags");
        return;
    }
    c->no_zeroes = flags & NBD_FLAG_C_NO_ZEROES;
    conn_log(c, SRV_LOG_DEBUG, "client flags 0x%x", flags);
    conn_expect(c, CONN_HS_OPT_HEADER, c->hdr, sizeof(struct nbd_opt_header));
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
    c->opt = be32toh(h.option);
    c->opt_len = be32toh(h.len);
    conn_log(c, SRV_LOG_INFO, "option %s (%u), %u bytes of data", opt_name(c->opt), c->opt,
             c->opt_len);

    /* Why a hard limit on the option count: option haggling costs the client
     * nothing and us a reply each; past the limit we treat the client as a
     * denial of service, which the spec allows to be a hard disconnect. */
    if (++c->nopts > SRV_MAX_OPTIONS) {
        conn_close(c, "too many options");
        return;
    }

    if (c->opt == NBD_OPT_EXPORT_NAME && c->opt_len > NBD_MAX_STRING) {
        /* EXPORT_NAME cannot carry an error: the session must end. */
        conn_close(c, "export name longer than 4096 bytes");
        return;
    }
    if (c->opt_len > SRV_MAX_OPTION_DRAIN) {
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
                 opt_name(c->opt), c->opt_len, SRV_MAX_OPTION_DRAIN);
        conn_close(c, "option data too long");
        return;
    }
    if (c->opt_len > SRV_MAX_OPTION_LEN) {
        /* Never allocate by the client's length: drop the bytes, then say
         * TOO_BIG.  Draining at most SRV_MAX_OPTION_DRAIN bytes is cheap, and
         * erroring the option is what the spec asks of a server first. */
        c->skip_left = c->opt_len;
        conn_expect(c, CONN_HS_OPT_SKIP, NULL, 0);
        return;
    }
    free(c->opt_buf);
    c->opt_buf = NULL;
    if (c->opt_len) {
        c->opt_buf = malloc(c->opt_len);
        if (!c->opt_buf) {
            conn_close(c, "out of memory for an option payload");
            return;
        }
    }
    conn_expect(c, CONN_HS_OPT_PAYLOAD, c->opt_buf, c->opt_len);
}

/* FORCEDTLS and not upgraded yet: must this option be refused? */
static bool tls_required(const struct conn *c)
{
    return tls_mode() == TLS_REQUIRE && !c->tls_active && c->opt != NBD_OPT_STARTTLS &&
           c->opt != NBD_OPT_ABORT;
}

void hs_opt_skip_done(struct conn *c)
{
    if (c->refuse && c->opt != NBD_OPT_ABORT)
        reply_err(c, NBD_REP_ERR_SHUTDOWN, "server is at its connection limit");
    else if (tls_required(c) && c->opt == NBD_OPT_EXPORT_NAME)
        conn_close(c, "EXPORT_NAME before STARTTLS, and TLS is required");
    else if (tls_required(c))
        reply_err(c, NBD_REP_ERR_TLS_REQD, "TLS is required: send STARTTLS first");
    else
        reply_err(c, NBD_REP_ERR_TOO_BIG, "option data larger than 64 KiB");
    if (c->state != CONN_DEAD && c->state != CONN_DRAINING)
        conn_expect(c, CONN_HS_OPT_HEADER, c->hdr, sizeof(struct nbd_opt_header));
}

/* ---- Option handlers ---------------------------------------------------- */

/* A cursor over the option payload: every read is bounds-checked. */
struct cursor {
    const uint8_t *p;
    size_t left;
};

static bool cur_u32(struct cursor *k, uint32_t *v)
{
    if (k->left < 4)
        return false;
    memcpy(v, k->p, 4);
    *v = be32toh(*v);
    k->p += 4;
    k->left -= 4;
    return true;
}

static bool cur_u16(struct cursor *k, uint16_t *v)
{
    if (k->left < 2)
        return false;
    memcpy(v, k->p, 2);
    *v = be16toh(*v);
    k->p += 2;
    k->left -= 2;
    return true;
}

static bool cur_bytes(struct cursor *k, size_t n, const char **out)
{
    if (k->left < n)
        return false;
    *out = (const char *)k->p;
    k->p += n;
    k->left -= n;
    return true;
}

static void send_info_export(struct conn *c, const struct export *e)
{
    struct nbd_info_export ie = {
        .info = htobe16(NBD_INFO_EXPORT),
        .size = htobe64(e->size),
        .tx_flags = htobe16(hs_tx_flags(c, e)),
    };
    reply(c, NBD_REP_INFO, &ie, sizeof(ie));
}

static void send_info_string(struct conn *c, uint16_t type, const char *s)
{
    size_t n = strlen(s);
    uint8_t *buf = malloc(2 + n);
    uint16_t t = htobe16(type);

    if (!buf) {
        conn_close(c, "out of memory");
        return;
    }
    memcpy(buf, &t, 2);
    memcpy(buf + 2, s, n);
    reply(c, NBD_REP_INFO, buf, 2 + n);
    free(buf);
}

static void send_info_block_size(struct conn *c, const struct export *e)
{
    struct nbd_info_block_size bs = {
        .info = htobe16(NBD_INFO_BLOCK_SIZE),
        .minimum = htobe32(1),
        .preferred = htobe32(e->pref_block),
        .maximum = htobe32(SRV_MAX_PAYLOAD),
    };
    reply(c, NBD_REP_INFO, &bs, sizeof(bs));
}

/* NBD_OPT_INFO and NBD_OPT_GO. */
static void opt_info_go(struct conn *c)
{
    struct cursor k = { c->opt_buf, c->opt_len };
    uint32_t namelen;
    uint16_t nreq;
    const char *name;
    const char *reqs;
    struct export *e;
    bool want_name = false, want_desc = false;

    if (!cur_u32(&k, &namelen) || namelen > k.left || !cur_bytes(&k, namelen, &name) ||
        !cur_u16(&k, &nreq) || k.left != 2u * nreq || !cur_bytes(&k, k.left, &reqs)) {
        reply_err(c, NBD_REP_ERR_INVALID, "malformed INFO/GO request");
        return;
    }
    if (namelen > NBD_MAX_STRING) {
        reply_err(c, NBD_REP_ERR_INVALID, "export name longer than 4096 bytes");
        return;
    }
    e = srv_find_export(name, namelen);
    if (!e) {
        reply_err(c, NBD_REP_ERR_UNKNOWN, "no such export");
        return;
    }
    for (uint16_t i = 0; i < nreq; i++) {
        uint16_t r;
        memcpy(&r, reqs + 2 * i, 2);
        r = be16toh(r);
        if (r == NBD_INFO_NAME)
            want_name = true;
        else if (r == NBD_INFO_DESCRIPTION)
            want_desc = true;
        /* INFO_EXPORT is always sent, INFO_BLOCK_SIZE too (it describes the
         * defaults we honour anyway); unknown requests are ignored. */
    }
    send_info_export(c, e);
    if (want_name)
        send_info_string(c, NBD_INFO_NAME, e->name);
    if (want_desc && srv.description)
        send_info_string(c, NBD_INFO_DESCRIPTION, srv.description);
    send_info_block_size(c, e);
    reply(c, NBD_REP_ACK, NULL, 0);
    if (c->state == CONN_DEAD)
        return;
    if (c->opt == NBD_OPT_GO)
        conn_enter_transmission(c, e);
}

static void opt_export_name(struct conn *c)
{
    struct export *e = srv_find_export((const char *)c->opt_buf, c->opt_len);
    struct nbd_export_name_reply r;
    static const uint8_t zeroes[124];

    if (!e) {
        /* No way to return an error: the spec says terminate the session. */
        conn_close(c, "EXPORT_NAME of an unknown export");
        return;
    }
    r.size = htobe64(e->size);
    r.tx_flags = htobe16(hs_tx_flags(c, e));
    if (conn_queue_copy(c, &r, sizeof(r), zeroes, c->no_zeroes ? 0 : sizeof(zeroes)) < 0) {
        conn_close(c, "out of memory");
        return;
    }
    conn_enter_transmission(c, e);
}

/* NBD_OPT_STARTTLS. */
static void opt_starttls(struct conn *c)
{
    char err[256];
    int r;

    if (c->opt_len) {
        reply_err(c, NBD_REP_ERR_INVALID, "STARTTLS takes no data");
        return;
    }
    if (tls_mode() == TLS_OFF) {
        reply_err(c, NBD_REP_ERR_POLICY, "TLS is not enabled on this server (see --tls)");
        return;
    }
    if (c->tls) {
        reply_err(c, NBD_REP_ERR_INVALID, "TLS is already in use");
        return;
    }
    /* Set everything up before saying yes: after the ACK there is no way
     * back to plaintext, so a failure now must still be an error reply. */
    c->tls_out = malloc(CONN_TLS_RECORD);
    if (!c->tls_out) {
        reply_err(c, NBD_REP_ERR_PLATFORM, "out of memory for TLS");
        return;
    }
    conn_mem_charge(c, CONN_TLS_RECORD);    /* released where it is freed (conn_close) */
    r = tls_session_new(c->rfd, c->wfd, &c->tls, err, sizeof(err));
    if (r < 0) {
        conn_log(c, SRV_LOG_ERROR, "cannot start TLS: %s", err);
        free(c->tls_out);
        c->tls_out = NULL;
        conn_mem_release(c, CONN_TLS_RECORD);
        reply_err(c, NBD_REP_ERR_PLATFORM, "the server could not set up TLS");
        return;
    }
    reply(c, NBD_REP_ACK, NULL, 0);
    conn_start_tls(c);
}

static void opt_list(struct conn *c)
{
    if (c->opt_len) {
        reply_err(c, NBD_REP_ERR_INVALID, "LIST takes no data");
        return;
    }
    for (size_t i = 0; i < srv.nexports && c->state != CONN_DEAD; i++) {
        const struct export *e = &srv.exports[i];
        size_t nlen = strlen(e->name);
        size_t dlen = srv.description ? strlen(srv.description) : 0;
        uint8_t *buf = malloc(4 + nlen + dlen);
        uint32_t be = htobe32((uint32_t)nlen);

        if (!buf) {
            conn_close(c, "out of memory");
            return;
        }
        memcpy(buf, &be, 4);
        memcpy(buf + 4, e->name, nlen);
        if (dlen)
            memcpy(buf + 4 + nlen, srv.description, dlen);
        reply(c, NBD_REP_SERVER, buf, 4 + nlen + dlen);
        free(buf);
    }
    reply(c, NBD_REP_ACK, NULL, 0);
}

/* Contexts we know, in id order. */
static const struct {
    const char *name;
    uint32_t id;
} contexts[] = {
    { "base:allocation", CTX_ID_BASE_ALLOCATION },
    { "qemu:allocation-depth", CTX_ID_ALLOCATION_DEPTH },
};
#define NCONTEXTS (sizeof(contexts) / sizeof(contexts[0]))

/*
 * Which contexts does @q (@len bytes) select?  Sets bits in *mask (bit i =
 * contexts[i]).  Returns false when the query is malformed (no colon, or an
 * empty namespace).  Rules: "base:allocation" and "qemu:allocation-depth"
 * select themselves; the wildcards "base:" and "qemu:" select their whole
 * namespace in LIST only (the spec: SET must ignore them); anything else is
 * ignored, as the spec requires for unknown namespaces and leaf names.
 */
static bool match_query(const char *q, size_t len, bool list, unsigned *mask)
{
    const char *colon = memchr(q, ':', len);

    if (!colon || colon == q)
        return false;
    for (size_t i = 0; i < NCONTEXTS; i++) {
        const char *n = contexts[i].name;
        size_t nslen = (size_t)(strchr(n, ':') - n) + 1;  /* including the colon */

        if (len == strlen(n) && memcmp(q, n, len) == 0)
            *mask |= 1u << i;
        else if (list && len == nslen && memcmp(q, n, nslen) == 0)
            *mask |= 1u << i;
    }
    return true;
}

/* NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT. */
static void opt_meta_context(struct conn *c)
{
    bool list = c->opt == NBD_OPT_LIST_META_CONTEXT;
    struct cursor k = { c->opt_buf, c->opt_len };
    uint32_t namelen, nq;
    const char *name;
    struct export *e;
    unsigned mask = 0;

    if (!list) {
        /* SET replaces the selection even when it fails. */
        c->meta_exp = NULL;
        c->meta_base = c->meta_depth = false;
    }
    if (!c->structured) {
        reply_err(c, NBD_REP_ERR_INVALID, "negotiate structured replies first");
        return;
    }
    if (!cur_u32(&k, &namelen) || namelen > k.left || !cur_bytes(&k, namelen, &name) ||
        !cur_u32(&k, &nq)) {
        reply_err(c, NBD_REP_ERR_INVALID, "malformed meta context request");
        return;
    }
    if (namelen > NBD_MAX_STRING) {
        reply_err(c, NBD_REP_ERR_INVALID, "export name longer than 4096 bytes");
        return;
    }
    for (uint32_t i = 0; i < nq; i++) {
        uint32_t qlen;
        const char *q;

        if (!cur_u32(&k, &qlen) || qlen > k.left || !cur_bytes(&k, qlen, &q)) {
            reply_err(c, NBD_REP_ERR_INVALID, "meta context query runs past the option data");
            return;
        }
        if (qlen > NBD_MAX_STRING || !match_query(q, qlen, list, &mask)) {
            reply_err(c, NBD_REP_ERR_INVALID, "malformed meta context query");
            return;
        }
    }
    if (k.left) {
        reply_err(c, NBD_REP_ERR_INVALID, "trailing bytes after the meta context queries");
        return;
    }
    e = srv_find_export(name, namelen);
    if (!e) {
        reply_err(c, NBD_REP_ERR_UNKNOWN, "no such export");
        return;
    }
    if (list && nq == 0)
        mask = (1u << NCONTEXTS) - 1;     /* no query: everything available */

    for (size_t i = 0; i < NCONTEXTS && c->state != CONN_DEAD; i++) {
        size_t n = strlen(contexts[i].name);
        uint8_t buf[4 + 64];
        uint32_t id = htobe32(list ? 0 : contexts[i].id);

        if (!(mask & (1u << i)))
            continue;
        memcpy(buf, &id, 4);
        memcpy(buf + 4, contexts[i].name, n);
        conn_log(c, SRV_LOG_INFO, "%s meta context %s", list ? "list" : "select",
                 contexts[i].name);
        reply(c, NBD_REP_META_CONTEXT, buf, 4 + n);
    }
    if (!list) {
        c->meta_exp = mask ? e : NULL;
        c->meta_base = mask & 1u;
        c->meta_depth = mask & 2u;
    }
    reply(c, NBD_REP_ACK, NULL, 0);
}

void hs_opt_payload_done(struct conn *c)
{
    if (c->refuse && c->opt != NBD_OPT_ABORT) {
        if (c->opt == NBD_OPT_EXPORT_NAME)
            conn_close(c, "EXPORT_NAME while over the connection limit");
        else
            reply_err(c, NBD_REP_ERR_SHUTDOWN, "server is at its connection limit");
        goto next;
    }
    if (tls_required(c)) {
        if (c->opt == NBD_OPT_EXPORT_NAME)
            conn_close(c, "EXPORT_NAME before STARTTLS, and TLS is required");
        else
            reply_err(c, NBD_REP_ERR_TLS_REQD, "TLS is required: send STARTTLS first");
        goto next;
    }

    switch (c->opt) {
    case NBD_OPT_EXPORT_NAME:
        opt_export_name(c);
        break;
    case NBD_OPT_ABORT:
        /* Data is ignored, as the spec asks; reply, then close once written. */
        reply(c, NBD_REP_ACK, NULL, 0);
        conn_drain(c, "client sent ABORT");
        break;
    case NBD_OPT_LIST:
        opt_list(c);
        break;
    case NBD_OPT_STARTTLS:
        opt_starttls(c);
        break;
    case NBD_OPT_INFO:
    case NBD_OPT_GO:
        opt_info_go(c);
        break;
    case NBD_OPT_STRUCTURED_REPLY:
        if (c->opt_len) {
            reply_err(c, NBD_REP_ERR_INVALID, "STRUCTURED_REPLY takes no data");
        } else {
            c->structured = true;
            reply(c, NBD_REP_ACK, NULL, 0);
        }
        break;
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
        opt_meta_context(c);
        break;
    default:
        reply_err(c, NBD_REP_ERR_UNSUP, "option not supported");
        break;
    }

next:
    free(c->opt_buf);
    c->opt_buf = NULL;
    /* Still haggling?  Then the next option header comes. */
    if (c->state == CONN_HS_OPT_PAYLOAD)
        conn_expect(c, CONN_HS_OPT_HEADER, c->hdr, sizeof(struct nbd_opt_header));
}
