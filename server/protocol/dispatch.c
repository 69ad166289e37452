/*
 * dispatch.c - the protocol's side of conn-ops.h: what the network layer
 * calls when a connection starts, when the bytes a state asked for are in,
 * when TLS is up, and when the connection goes away.  The one place where a
 * reading state is mapped to its handler.
 */
#include "config.h"

#include <assert.h>
#include <stdlib.h>

#include "conn-ops.h"
#include "protocol.h"

void proto_greeting(struct conn *c)
{
    c->proto = calloc(1, sizeof(*c->proto));
    if (!c->proto) {
        conn_close(c, "out of memory for a new connection");
        return;
    }
    hs_start(c);
}

void proto_input_ready(struct conn *c)
{
    switch (c->state) {
    case CONN_HS_CLIENT_FLAGS: hs_client_flags_done(c); break;
    case CONN_HS_OPT_HEADER: hs_opt_header_done(c); break;
    case CONN_HS_OPT_PAYLOAD: hs_opt_payload_done(c); break;
    case CONN_HS_OPT_SKIP: hs_opt_skip_done(c); break;
    case CONN_TX_REQ_HEADER: tx_req_header_done(c); break;
    case CONN_TX_WRITE_PAYLOAD: tx_write_payload_done(c); break;
    case CONN_TX_SKIP_PAYLOAD: tx_skip_payload_done(c); break;
    case CONN_TLS_HANDSHAKE:
    case CONN_DRAINING:
    case CONN_DEAD:
        assert(!"not a reading state");
    }
}

void proto_tls_ready(struct conn *c)
{
    hs_expect_option(c);
}

void proto_closed(struct conn *c)
{
    if (c->proto) {
        tx_abort_current(c);
        /* Why here and not only in proto_free: a closed client no longer
         * uses its bitmaps, so the control socket may remove them at once.
         * But not while requests are out: with --threads a BLOCK_STATUS
         * still at the image's owner reads the selected bitmaps' names
         * (tx_bitmaps_status); proto_free, once the last one came back,
         * lets go of them then. */
        if (c->inflight == 0)
            hs_forget_meta(c);
    }
}

void proto_free(struct conn *c)
{
    if (!c->proto)
        return;
    hs_forget_meta(c);
    free(c->proto->opt_buf);
    free(c->proto);
    c->proto = NULL;
}
