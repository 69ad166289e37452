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

/* Contexts we know, in id order; then the image's dirty bitmaps. */
static const struct {
    const char *name;
    uint32_t id;
} contexts[] = {
    { "base:allocation", CTX_ID_BASE_ALLOCATION },
    { "qemu:allocation-depth", CTX_ID_ALLOCATION_DEPTH },
};
#define NCONTEXTS (sizeof(contexts) / sizeof(contexts[0]))

/* What a meta context option selects: bit i of @fixed is contexts[i], bit i
 * of @bitmaps the image's bitmap number i (QED_BITMAP_MAX is 64). */
struct meta_sel {
    unsigned fixed;
    uint64_t bitmaps;
};
_Static_assert(QED_BITMAP_MAX <= 64, "one bit per bitmap");

/*
 * The bitmaps of @bn (an export's, as its owner published them:
 * export-bitmaps.c) offered as qemu:dirty-bitmap:NAME: every consistent
 * one, enabled or not (a disabled bitmap is still a valid record of what
 * changed).  An inconsistent one is never offered: its bits cannot be
 * trusted (the server was killed, or QEMU wrote the image).
 */
static uint64_t offered_bitmaps(struct conn *c, const struct export_bitmap_names *bn)
{
    uint64_t mask = 0;

    for (unsigned i = 0; i < bn->n; i++) {
        if (bn->b[i].inconsistent) {
            conn_log(c, SRV_LOG_INFO, "not offering " CTX_BITMAP_PREFIX "%s: the bitmap is "
                     "inconsistent (the image was not closed cleanly, or QEMU wrote it); "
                     "remove it and add a new one", bn->b[i].name);
            continue;
        }
        mask |= (uint64_t)1 << i;
    }
    return mask;
}

/* The offered bitmap of @bn called @name (@len bytes), as a bit of @offered, or 0. */
static uint64_t bitmap_named(const struct export_bitmap_names *bn, uint64_t offered,
                             const char *name, size_t len)
{
    for (unsigned i = 0; i < bn->n; i++)
        if (strlen(bn->b[i].name) == len && memcmp(bn->b[i].name, name, len) == 0)
            return offered & ((uint64_t)1 << i);
    return 0;
}

/*
 * Which contexts does @q (@len bytes) select, among those of an export
 * with bitmaps @e (@offered of them)?  Adds them to *@sel.  Returns false when the query is
 * malformed (no colon, or an empty namespace); @e is NULL for that check
 * alone.  Rules, as qemu-nbd has them: "base:allocation",
 * "qemu:allocation-depth" and "qemu:dirty-bitmap:NAME" select themselves;
 * the wildcards "base:", "qemu:" and "qemu:dirty-bitmap:" select what they
 * cover in LIST only (the spec: SET must ignore them); anything else is
 * ignored, as the spec requires for unknown namespaces and leaf names.
 */
static bool match_query(const char *q, size_t len, bool list,
                        const struct export_bitmap_names *e, uint64_t offered,
                        struct meta_sel *sel)
{
    const char *colon = memchr(q, ':', len);
    size_t plen = strlen(CTX_BITMAP_PREFIX);

    if (!colon || colon == q)
        return false;
    if (!e)
        return true;
    for (size_t i = 0; i < NCONTEXTS; i++) {
        const char *n = contexts[i].name;
        size_t nslen = (size_t)(strchr(n, ':') - n) + 1;  /* including the colon */

        if (len == strlen(n) && memcmp(q, n, len) == 0)
            sel->fixed |= 1u << i;
        else if (list && len == nslen && memcmp(q, n, nslen) == 0)
            sel->fixed |= 1u << i;
    }
    if (list && ((len == 5 && memcmp(q, "qemu:", 5) == 0) ||
                 (len == plen && memcmp(q, CTX_BITMAP_PREFIX, plen) == 0)))
        sel->bitmaps |= offered;
    else if (len > plen && memcmp(q, CTX_BITMAP_PREFIX, plen) == 0)
        sel->bitmaps |= bitmap_named(e, offered, q + plen, len - plen);
    return true;
}

/*
 * Run every query of the option (at @k, @nq of them) through match_query:
 * with @e NULL only to check them (an error reply is queued and false
 * returned for a malformed one), then again to select.
 */
static bool match_queries(struct conn *c, struct cursor k, uint32_t nq, bool list,
                          const struct export_bitmap_names *e, uint64_t offered,
                          struct meta_sel *sel)
{
    for (uint32_t i = 0; i < nq; i++) {
        uint32_t qlen;
        const char *q;

        if (!cur_be(&k, 4, &qlen) || qlen > k.left || !cur_bytes(&k, qlen, &q)) {
            hs_reply_err(c, NBD_REP_ERR_INVALID, "meta context query runs past the option data");
            return false;
        }
        if (qlen > NBD_MAX_STRING || !match_query(q, qlen, list, e, offered, sel)) {
            hs_reply_err(c, NBD_REP_ERR_INVALID, "malformed meta context query");
            return false;
        }
    }
    if (k.left) {
        hs_reply_err(c, NBD_REP_ERR_INVALID, "trailing bytes after the meta context queries");
        return false;
    }
    return true;
}

/* Send one NBD_REP_META_CONTEXT: @prefix @name, with @id (0 in LIST). */
static void send_context(struct conn *c, bool list, uint32_t id, const char *prefix,
                         const char *name)
{
    size_t pl = strlen(prefix), n = strlen(name);
    struct nbd_rep_meta_context mc = { .context_id = htobe32(list ? 0 : id) };
    uint8_t buf[sizeof(mc) + sizeof(CTX_BITMAP_PREFIX) + QED_BITMAP_NAME_MAX];

    if (pl + n > sizeof(buf) - sizeof(mc))
        return;         /* cannot happen: names are at most QED_BITMAP_NAME_MAX */
    memcpy(buf, &mc, sizeof(mc));
    memcpy(buf + sizeof(mc), prefix, pl);
    memcpy(buf + sizeof(mc) + pl, name, n);
    conn_log(c, SRV_LOG_INFO, "%s meta context %s%s", list ? "list" : "select", prefix, name);
    hs_reply(c, NBD_REP_META_CONTEXT, buf, sizeof(mc) + pl + n);
}

/*
 * Reply with every context of @sel; with SET, make it the selection (the
 * bitmaps are held on @e from now on, see export_bitmap_hold).
 */
static void reply_contexts(struct conn *c, bool list, struct export *e,
                           const struct export_bitmap_names *bn, const struct meta_sel *sel)
{
    struct proto_conn *p = c->proto;

    for (size_t i = 0; i < NCONTEXTS && c->state != CONN_DEAD; i++)
        if (sel->fixed & (1u << i))
            send_context(c, list, contexts[i].id, "", contexts[i].name);
    if (!list) {
        p->meta_exp = sel->fixed || sel->bitmaps ? e : NULL;
        p->meta_base = sel->fixed & 1u;
        p->meta_depth = sel->fixed & 2u;
    }
    for (unsigned i = 0; i < bn->n && c->state != CONN_DEAD; i++) {
        if (!(sel->bitmaps & ((uint64_t)1 << i)))
            continue;
        if (!list) {
            struct export_bitmap_use *u;
            int r = export_bitmap_hold(e, bn->b[i].name, &u);
            if (r == -ENOENT)
                continue;       /* removed since @bn was read: not selected */
            if (r < 0) {
                conn_close(c, "out of memory");
                return;
            }
            p->meta_bitmaps[p->meta_nbitmaps++] = u;
        }
        send_context(c, list, CTX_ID_BITMAP0 + (list ? 0 : p->meta_nbitmaps - 1),
                     CTX_BITMAP_PREFIX, bn->b[i].name);
    }
    hs_reply(c, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT. */
static void opt_meta_context(struct conn *c)
{
    bool list = c->proto->opt == NBD_OPT_LIST_META_CONTEXT;
    struct cursor k = { c->proto->opt_buf, c->proto->opt_len };
    uint32_t namelen, nq;
    const char *name;
    struct export *e;
    struct meta_sel sel = { 0, 0 };
    struct export_bitmap_names *bn;
    uint64_t offered;

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
    if (!match_queries(c, k, nq, list, NULL, 0, &sel))
        return;
    e = find_named_export(c, name, namelen);
    if (!e)
        return;
    /* A copy of what the owner published: only it calls libqed. */
    bn = malloc(sizeof(*bn));
    if (!bn) {
        conn_close(c, "out of memory");
        return;
    }
    export_bitmaps_get(e, bn);
    offered = offered_bitmaps(c, bn);
    if (list && nq == 0) {
        /* No query: everything available. */
        sel.fixed = (1u << NCONTEXTS) - 1;
        sel.bitmaps = offered;
    } else {
        match_queries(c, k, nq, list, bn, offered, &sel);
    }
    reply_contexts(c, list, e, bn, &sel);
    free(bn);
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
