/*
 * control.h - the control socket (--control=PATH): a Unix stream socket
 * speaking one JSON object per line each way (the protocol is in
 * qednbd(8), CONTROL SOCKET).  control.c holds the socket and its clients,
 * control-ops.c the commands and ctl_apply, the one function through which
 * a command touches an image.
 */
#ifndef CONTROL_H
#define CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "json.h"
#include "qednbd.h"

#define CTL_MAX_LINE 4096u          /* a request line, newline included */
#define CTL_MAX_CLIENTS 8u          /* control clients at once; more are refused */
#define CTL_OUT_HIGH (64u * 1024)   /* unread replies past which a client is not read */
#define CTL_MAX_REPLY (1024u * 1024) /* the longest reply line */
#define CTL_DEFAULT_TIMEOUT 60u     /* seconds a client may stay idle (--control-timeout) */

/* ---- control.c ---- */

/**
 * control_listen - create the control socket at @path (mode 0600; a stale
 * socket left there is replaced, anything else is refused) and serve it on
 * srv_self->loop; a client idle for @timeout seconds is dropped.  Fatal on
 * failure (start-up).
 */
void control_listen(const char *path, unsigned timeout);

/** control_stop - close the socket and every client, and remove @path. */
void control_stop(void);

/* ---- control-ops.c ---- */

/** What a command asks of one export's image. */
enum ctl_kind {
    CTL_EXPORT_STATS,    /* stats: answered from stats_gather, not through ctl_apply */
    CTL_BITMAP_LIST,
    CTL_BITMAP_ADD,
    CTL_BITMAP_REMOVE,
    CTL_BITMAP_CLEAR,
    CTL_BITMAP_ENABLE,
    CTL_BITMAP_DISABLE,
};

/**
 * One operation on one export's image, handed to ctl_apply.  The caller
 * fills the request part and @done; ctl_apply fills the result and calls
 * @done, once, either before it returns or later (when the image is owned
 * by another thread, it runs there and @done runs back on the caller's
 * loop).  @op must stay valid until then.
 */
struct ctl_op {
    enum ctl_kind kind;
    char name[QED_BITMAP_NAME_MAX + 1];  /* the bitmap */
    uint32_t granularity;                /* bitmap-add: 0 = the default */
    bool disabled;                       /* bitmap-add */
    int ret;                             /* result: 0 or a negative errno */
    const char *msg;                     /* an error's explanation, or NULL */
    struct jbuf out;                     /* result: JSON members to add, each after a comma */
    void (*done)(struct ctl_op *op);
    void *opaque;
};

/** ctl_apply - run @op on export @e's image (see struct ctl_op). */
void ctl_apply(struct export *e, struct ctl_op *op);

/**
 * A request being answered: control.c gives the line, control-ops.c runs
 * it (through ctl_apply for what touches images) and calls @finish once
 * @reply holds the whole reply line, newline included.
 */
struct ctl_req {
    struct jbuf reply;
    struct ctl_op *ops;
    size_t nops;
    unsigned pending;            /* ops not done yet */
    void (*finish)(struct ctl_req *rq);
    void *opaque;
};

/**
 * ctl_request_start - parse the request line @line (@len bytes, no
 * newline) and run it; @rq->finish runs once the reply is ready, maybe
 * before this returns.
 */
void ctl_request_start(struct ctl_req *rq, const char *line, size_t len);

/** ctl_request_free - free what @rq holds (after @finish). */
void ctl_request_free(struct ctl_req *rq);

/** ctl_error_reply - an error reply for @err (negative errno) with @msg, into @b. */
void ctl_error_reply(struct jbuf *b, int err, const char *msg);

#endif /* CONTROL_H */
