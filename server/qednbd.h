/*
 * qednbd.h - state shared by the modules of the qednbd server: the exports,
 * the server-wide configuration, logging, and the entry points of the
 * connection module.
 */
#ifndef QEDNBD_H
#define QEDNBD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qed.h"

struct ev_loop;
struct conn;

/* Tunables of the transmission phase. */
#define SRV_MAX_PAYLOAD (32u * 1024 * 1024)      /* largest READ/WRITE payload */
#define SRV_MAX_PREFERRED (64u * 1024)           /* cap of the preferred block size */
#define SRV_MAX_INFLIGHT 64u                     /* requests per connection, then stop reading */
#define SRV_MAX_QUEUED_BYTES (64u * 1024 * 1024) /* reply + buffer bytes, then stop reading */
#define SRV_READ_BUDGET 16u                      /* requests parsed per read event (fairness) */

/* Limits of the handshake phase. */
#define SRV_MAX_OPTIONS 32u                     /* options per connection */
#define SRV_MAX_OPTION_LEN (64u * 1024)         /* option payload we are willing to buffer */

/** One export: a name bound to an open image. */
struct export {
    char *name;              /* export name ("" allowed) */
    char *path;              /* image path as given */
    qed_image *img;
    uint64_t size;
    uint32_t pref_block;     /* preferred block size: cluster size capped at 64 KiB */
    bool read_only;
};

/** Server-wide state; there is exactly one, `srv`. */
struct server {
    struct ev_loop *loop;
    qed_aio *aio;
    struct export *exports;
    size_t nexports;
    const char *description; /* NBD_INFO_DESCRIPTION text for every export, or NULL */
    int verbose;             /* 0, 1 (-v: connections, options), 2 (-vv: every request) */
    unsigned max_conns;      /* connections served at once; more are refused */
    double hs_timeout;       /* seconds a client may take to finish negotiating */
    bool stdio;              /* serving one client on stdin/stdout */
    bool shutting_down;      /* SIGINT/SIGTERM received */

    struct conn *conns;      /* every live connection (doubly linked) */
    unsigned nconns;         /* live connections, counted against max_conns */
    unsigned nrefused;       /* live connections being refused politely */
    uint64_t next_conn_id;
};

extern struct server srv;

/* ---- Logging (main.c) ---- */

/** Log levels of srv_log: errors always print, the others need -v / -vv. */
enum { SRV_LOG_ERROR = 0, SRV_LOG_INFO = 1, SRV_LOG_DEBUG = 2 };

/** srv_log - print "qednbd: MESSAGE" on stderr when @level <= the verbosity. */
void srv_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/**
 * srv_find_export - the export called @name (@len bytes, not NUL
 * terminated), or NULL.  The empty name selects the first export (the
 * default export), as the protocol reserves it for that.
 */
struct export *srv_find_export(const char *name, size_t len);

/**
 * srv_conn_gone - called by the connection module whenever a connection has
 * been closed, so that main can end the loop (stdio mode, shutdown).
 */
void srv_conn_gone(void);

/* ---- Connections (conn.c) ---- */

/**
 * conn_new - start serving a client that reads from @rfd and writes to @wfd
 * (the same socket, or stdin/stdout).  Sends the greeting at once.  When
 * @refuse is set the client is over the connection limit: it gets the
 * greeting, and every option is answered with NBD_REP_ERR_SHUTDOWN.
 * @peer names the client in logs.  Returns the connection or NULL (fds closed).
 */
struct conn *conn_new(int rfd, int wfd, bool refuse, const char *peer);

/**
 * conn_shutdown - the server is stopping: a connection still negotiating is
 * closed; one in transmission stops reading new requests, finishes the ones
 * in flight, sends their replies and then closes.
 */
void conn_shutdown(struct conn *c);

/** conn_abort - close @c now; requests in flight complete into the void. */
void conn_abort(struct conn *c);

/** conn_next - iterate over srv.conns (NULL starts). */
struct conn *conn_next(struct conn *c);

/**
 * nbd_errno_from - map a negative errno from the library (or the server
 * itself) to an NBD error value.  The one place where this mapping lives.
 */
uint32_t nbd_errno_from(int neg_errno);

#endif /* QEDNBD_H */
