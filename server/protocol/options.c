/*
 * options.c - one handler per NBD option of the fixed newstyle
 * handshake, and the table that picks it (opt_dispatch).  Every handler
 * works on c->proto->opt_buf, c->proto->opt_len bytes already read and bounded by
 * handshake.c, through a cursor whose every read is bounds-checked.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"
#include "tls.h"

/* A cursor over the option payload: every read is bounds-checked. */
struct cursor {
    const uint8_t *p;
    size_t left;
};

/* Read a big-endian integer of @n bytes (at most 4). */
static bool cur_be(struct cursor *k, size_t n, uint32_t *v)
{
    if (k->left < n)
        return false;
    *v = 0;
    for (size_t i = 0; i < n; i++)
        *v = *v << 8 | k->p[i];
    k->p += n;
    k->left -= n;
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
    hs_reply(c, NBD_REP_INFO, &ie, sizeof(ie));
}

static void send_info_string(struct conn *c, uint16_t type, const char *s)
{
    size_t n = strlen(s);
    struct nbd_info_header ih = { .info = htobe16(type) };
    uint8_t *buf = malloc(sizeof(ih) + n);

    if (!buf) {
        conn_close(c, "out of memory");
        return;
    }
    memcpy(buf, &ih, sizeof(ih));
    memcpy(buf + sizeof(ih), s, n);
    hs_reply(c, NBD_REP_INFO, buf, sizeof(ih) + n);
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
    hs_reply(c, NBD_REP_INFO, &bs, sizeof(bs));
}

/* The export an option names (@len bytes at @name), or NULL once the error
 * reply is queued (a name over the protocol's limit, or no such export). */
static struct export *find_named_export(struct conn *c, const char *name, uint32_t len)
{
    struct export *e;

    if (len > NBD_MAX_STRING) {
        hs_reply_err(c, NBD_REP_ERR_INVALID, "export name longer than 4096 bytes");
        return NULL;
    }
    e = srv_find_export(name, len);
    if (!e)
        hs_reply_err(c, NBD_REP_ERR_UNKNOWN, "no such export");
    return e;
}

/* NBD_OPT_INFO and NBD_OPT_GO. */
static void opt_info_go(struct conn *c)
{
    struct cursor k = { c->proto->opt_buf, c->proto->opt_len };
    uint32_t namelen;
    uint32_t nreq;     /* 16 bits on the wire */
    const char *name;
    const char *reqs;
    struct export *e;
    bool want_name = false, want_desc = false;

    if (!cur_be(&k, 4, &namelen) || namelen > k.left || !cur_bytes(&k, namelen, &name) ||
        !cur_be(&k, 2, &nreq) || k.left != 2u * nreq || !cur_bytes(&k, k.left, &reqs)) {
        hs_reply_err(c, NBD_REP_ERR_INVALID, "malformed INFO/GO request");
        return;
    }
    e = find_named_export(c, name, namelen);
    if (!e)
        return;
    for (uint32_t i = 0; i < nreq; i++) {
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
    hs_reply(c, NBD_REP_ACK, NULL, 0);
    if (c->state == CONN_DEAD)
        return;
    if (c->proto->opt == NBD_OPT_GO)
        hs_enter_transmission(c, e);
}

static void opt_export_name(struct conn *c)
{
    struct export *e = srv_find_export((const char *)c->proto->opt_buf, c->proto->opt_len);
    struct nbd_export_name_reply r;
    static const uint8_t zeroes[124];

    if (!e) {
        /* No way to return an error: the spec says terminate the session. */
        conn_close(c, "EXPORT_NAME of an unknown export");
        return;
    }
    r.size = htobe64(e->size);
    r.tx_flags = htobe16(hs_tx_flags(c, e));
    if (conn_queue_copy(c, &r, sizeof(r), zeroes, c->proto->no_zeroes ? 0 : sizeof(zeroes)) < 0) {
        conn_close(c, "out of memory");
        return;
    }
    hs_enter_transmission(c, e);
}

/* NBD_OPT_STARTTLS. */
static void opt_starttls(struct conn *c)
{
    char err[256];
    int r;

    if (c->proto->opt_len) {
        hs_reply_err(c, NBD_REP_ERR_INVALID, "STARTTLS takes no data");
        return;
    }
    if (tls_mode() == TLS_OFF) {
        hs_reply_err(c, NBD_REP_ERR_POLICY, "TLS is not enabled on this server (see --tls)");
        return;
    }
    if (c->tls) {
        hs_reply_err(c, NBD_REP_ERR_INVALID, "TLS is already in use");
        return;
    }
    /* Set everything up before saying yes: after the ACK there is no way
     * back to plaintext, so a failure now must still be an error reply. */
    r = conn_tls_prepare(c, err, sizeof(err));
    if (r == -ENOBUFS) {
        hs_reply_err(c, NBD_REP_ERR_PLATFORM, "out of memory for TLS");
        return;
    }
    if (r < 0) {
        conn_log(c, SRV_LOG_ERROR, "cannot start TLS: %s", err);
        hs_reply_err(c, NBD_REP_ERR_PLATFORM, "the server could not set up TLS");
        return;
    }
    hs_reply(c, NBD_REP_ACK, NULL, 0);
    if (c->state == CONN_DEAD || c->state == CONN_DRAINING)
        return;
    /* The spec: once STARTTLS succeeds, the server MUST NOT preserve any
     * negotiation state -- a man in the middle may have injected it. */
    c->proto->structured = false;
    hs_forget_meta(c);
    conn_start_tls(c);
}

static void opt_list(struct conn *c)
{
    if (c->proto->opt_len) {
        hs_reply_err(c, NBD_REP_ERR_INVALID, "LIST takes no data");
        return;
    }
    for (size_t i = 0; i < srv.nexports && c->state != CONN_DEAD; i++) {
        const struct export *e = &srv.exports[i];
        size_t nlen = strlen(e->name);
        size_t dlen = srv.description ? strlen(srv.description) : 0;
        struct nbd_rep_server rs = { .name_len = htobe32((uint32_t)nlen) };
        uint8_t *buf = malloc(sizeof(rs) + nlen + dlen);

        if (!buf) {
            conn_close(c, "out of memory");
            return;
        }
        memcpy(buf, &rs, sizeof(rs));
        memcpy(buf + sizeof(rs), e->name, nlen);
        if (dlen)
            memcpy(buf + sizeof(rs) + nlen, srv.description, dlen);
        hs_reply(c, NBD_REP_SERVER, buf, sizeof(rs) + nlen + dlen);
        free(buf);
    }
    hs_reply(c, NBD_REP_ACK, NULL, 0);
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
    bool list = c->proto->opt == NBD_OPT_LIST_META_CONTEXT;
    struct cursor k = { c->proto->opt_buf, c->proto->opt_len };
    uint32_t namelen, nq;
    const char *name;
    struct export *e;
    unsigned mask = 0;

    if (!list) {
        /* SET replaces the selection even when it fails. */
        hs_forget_meta(c);
    }
    if (!c->proto->structured) {
        hs_reply_err(c, NBD_REP_ERR_INVALID, "negotiate structured replies first");
        return;
    }
    if (!cur_be(&k, 4, &namelen) || namelen > k.left || !cur_bytes(&k, namelen, &name) ||
        !cur_be(&k, 4, &nq)) {
        hs_reply_err(c, NBD_REP_ERR_INVALID, "malformed meta context request");
        return;
    }
    if (namelen > NBD_MAX_STRING) {
        hs_reply_err(c, NBD_REP_ERR_INVALID, "export name longer than 4096 bytes");
        return;
    }
    for (uint32_t i = 0; i < nq; i++) {
        uint32_t qlen;
        const char *q;

        if (!cur_be(&k, 4, &qlen) || qlen > k.left || !cur_bytes(&k, qlen, &q)) {
            hs_reply_err(c, NBD_REP_ERR_INVALID, "meta context query runs past the option data");
            return;
        }
        if (qlen > NBD_MAX_STRING || !match_query(q, qlen, list, &mask)) {
            hs_reply_err(c, NBD_REP_ERR_INVALID, "malformed meta context query");
            return;
        }
    }
    if (k.left) {
        hs_reply_err(c, NBD_REP_ERR_INVALID, "trailing bytes after the meta context queries");
        return;
    }
    e = find_named_export(c, name, namelen);
    if (!e)
        return;
    if (list && nq == 0)
        mask = (1u << NCONTEXTS) - 1;     /* no query: everything available */

    for (size_t i = 0; i < NCONTEXTS && c->state != CONN_DEAD; i++) {
        size_t n = strlen(contexts[i].name);
        struct nbd_rep_meta_context mc = { .context_id = htobe32(list ? 0 : contexts[i].id) };
        uint8_t buf[sizeof(mc) + 64];

        if (!(mask & (1u << i)))
            continue;
        memcpy(buf, &mc, sizeof(mc));
        memcpy(buf + sizeof(mc), contexts[i].name, n);
        conn_log(c, SRV_LOG_INFO, "%s meta context %s", list ? "list" : "select",
                 contexts[i].name);
        hs_reply(c, NBD_REP_META_CONTEXT, buf, sizeof(mc) + n);
    }
    if (!list) {
        c->proto->meta_exp = mask ? e : NULL;
        c->proto->meta_base = mask & 1u;
        c->proto->meta_depth = mask & 2u;
    }
    hs_reply(c, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_ABORT: data is ignored, as the spec asks; reply, then close once written. */
static void opt_abort(struct conn *c)
{
    hs_reply(c, NBD_REP_ACK, NULL, 0);
    conn_drain(c, "client sent ABORT");
}

/* NBD_OPT_STRUCTURED_REPLY. */
static void opt_structured_reply(struct conn *c)
{
    if (c->proto->opt_len) {
        hs_reply_err(c, NBD_REP_ERR_INVALID, "STRUCTURED_REPLY takes no data");
        return;
    }
    c->proto->structured = true;
    hs_reply(c, NBD_REP_ACK, NULL, 0);
}

/* The handler of each option we support; the others get ERR_UNSUP. */
static const struct {
    uint32_t opt;
    void (*run)(struct conn *c);
} option_handlers[] = {
    { NBD_OPT_EXPORT_NAME, opt_export_name },
    { NBD_OPT_ABORT, opt_abort },
    { NBD_OPT_LIST, opt_list },
    { NBD_OPT_STARTTLS, opt_starttls },
    { NBD_OPT_INFO, opt_info_go },
    { NBD_OPT_GO, opt_info_go },
    { NBD_OPT_STRUCTURED_REPLY, opt_structured_reply },
    { NBD_OPT_LIST_META_CONTEXT, opt_meta_context },
    { NBD_OPT_SET_META_CONTEXT, opt_meta_context },
};

void opt_dispatch(struct conn *c)
{
    for (size_t i = 0; i < sizeof(option_handlers) / sizeof(option_handlers[0]); i++)
        if (option_handlers[i].opt == c->proto->opt) {
            option_handlers[i].run(c);
            return;
        }
    hs_reply_err(c, NBD_REP_ERR_UNSUP, "option not supported");
}
