/*
 * conn.h - one client connection, as the network layer (server/net) keeps
 * it, and what it offers the protocol (server/protocol): reading states,
 * the input buffer, the output queue, close and drain, memory accounting.
 * What the protocol keeps per connection is behind c->proto, opaque here.
 * Not used outside the server.
 */
#ifndef CONN_H
#define CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <ev.h>

#include "qednbd.h"
#include "threads.h"

/*
 * The states of a connection.  conn_step() runs the state machine: each
 * reading state waits for a fixed number of bytes (conn_fill), then the
 * protocol (proto_input_ready) decides the next state.  The network layer
 * knows the states only to read the right way (read-ahead, skipping, TLS,
 * backpressure at request boundaries).
 */
enum conn_state {
    CONN_HS_CLIENT_FLAGS,  /* waits for the client's 32-bit flags after our greeting */
    CONN_HS_OPT_HEADER,    /* waits for a 16-byte option header (IHAVEOPT, option, length) */
    CONN_HS_OPT_PAYLOAD,   /* waits for the option's payload (at most 64 KiB, buffered) */
    CONN_HS_OPT_SKIP,      /* waits for an over-long option payload to be read and dropped */
    CONN_TLS_HANDSHAKE,    /* STARTTLS was acknowledged: the ACK goes out in plaintext, then
                              the TLS handshake runs (driven by both watchers), then options
                              again, over TLS */
    CONN_TX_REQ_HEADER,    /* waits for a 28-byte request header */
    CONN_TX_WRITE_PAYLOAD, /* waits for the payload of an accepted WRITE */
    CONN_TX_SKIP_PAYLOAD,  /* waits for the payload of a rejected WRITE, to be dropped */
    CONN_DRAINING,         /* reads nothing; waits for requests in flight and queued replies,
                              then closes (after DISC, ABORT, a fatal error or shutdown) */
    CONN_DEAD,             /* socket closed; waits for library completions to drop their refs */
};

/** conn_state_name - the state's name, for logs. */
const char *conn_state_name(enum conn_state st);

/*
 * A message queued for writing: an iovec array plus a release function run
 * once it has been written completely (or dropped because the connection
 * died).
 */
struct outmsg {
    struct outmsg *next;
    struct iovec *iov;
    int niov;
    int idx;                 /* first iovec not completely written */
    size_t left;             /* bytes still to write */
    void (*release)(struct outmsg *m);
};

struct proto_conn;
struct tls_session;

/* Largest TLS record payload: replies are gathered into records this big. */
#define CONN_TLS_RECORD (16u * 1024)

struct conn {
    struct conn *prev, *next;     /* srv_self->conns of its thread */
    uint64_t id;
    char peer[128];
    unsigned refs;                /* 1 while open + 1 per request in the library */
    enum conn_state state;
    bool refuse;                  /* over the connection limit: options get ERR_SHUTDOWN */
    bool counted;                 /* counted in srv.nconns (else in srv.nrefused) */

    int rfd, wfd;
    ev_io rw, ww;
    ev_timer hs_timer;

    /* Input: the current reading state fills in_ptr[0 .. in_want). */
    uint8_t *in_ptr;
    size_t in_want, in_got;
    /* Read-ahead (transmission phase, plaintext only): bytes read past the
     * current state's need, ibuf[ipos .. ilen), consumed before the socket. */
    uint8_t *ibuf;                /* SRV_INPUT_BUFFER bytes, held only while it holds some */
    size_t ipos, ilen;
    bool in_drained;              /* the last read was short: wait for readable */
    uint64_t skip_left;           /* bytes still to drop in a SKIP state */
    uint8_t hdr[32];              /* option / request headers, client flags */

    /* What the protocol keeps (protocol.h); the network layer never looks
     * inside.  Set by proto_greeting, freed by proto_free. */
    struct proto_conn *proto;

    /* Transmission */
    bool stop_reading;            /* shutdown: go DRAINING at the next request boundary */
    unsigned inflight;            /* requests read and not yet answered */
    size_t mem_held;              /* bytes charged to this connection (mem.c) */
    bool mem_wait;                /* a request header waits for memory (mem.c) */
    size_t mem_wait_cost;         /* what that request will cost */

    struct outmsg *out_head, *out_tail;

    /* Work for the end of the loop turn (net/turn.c, on_turn_end); each list
     * holds a reference on the connection. */
    struct conn *flush_next;      /* in the list of connections with batched replies */
    bool flush_listed;
    struct conn *resume_next;     /* in the list of connections with read-ahead to parse */
    bool resume_listed;

    /* TLS (after a successful STARTTLS) */
    struct tls_session *tls;      /* the session, from STARTTLS on */
    bool tls_active;              /* handshake done: every byte goes through tls */
    bool tls_rd_wants_write;      /* a TLS read returned EAGAIN wanting the socket writable */
    bool tls_wr_wants_read;       /* a TLS write returned EAGAIN wanting the socket readable */
    uint8_t *tls_out;             /* the record being sent (CONN_TLS_RECORD bytes) */
    size_t tls_out_len;           /* its bytes not yet accepted by GnuTLS */
};

/* ---- Entry points for main and the service (net/conn.c) ---- */

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

/**
 * conn_thread_exit - the calling loop thread is leaving: free its free
 * lists (read-ahead buffers, requests, data buffers), which no other
 * thread can reach.
 */
void conn_thread_exit(void);

/** conn_next - iterate over the calling thread's connections, srv_self->conns (NULL starts). */
struct conn *conn_next(struct conn *c);

/** conn_log - srv_log with the connection's id in front. */
void conn_log(struct conn *c, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** conn_set_state - change state, logged with -vv. */
void conn_set_state(struct conn *c, enum conn_state st);

/** conn_expect - the next reading state fills @want bytes at @buf. */
void conn_expect(struct conn *c, enum conn_state st, void *buf, size_t want);

/** conn_expect_skip - the next reading state (a SKIP state) reads and drops @n bytes. */
void conn_expect_skip(struct conn *c, enum conn_state st, uint64_t n);

/** conn_queue - append @m to the output queue and try to write at once. */
void conn_queue(struct conn *c, struct outmsg *m);

/**
 * conn_queue_batched - append @m to the output queue; it is written, with
 * every other reply queued in the same loop turn, in one writev before the
 * loop polls again.  For replies of the transmission phase.
 */
void conn_queue_batched(struct conn *c, struct outmsg *m);

/** conn_queue_copy - queue a copy of @a (@alen bytes) followed by @b (@blen bytes). */
int conn_queue_copy(struct conn *c, const void *a, size_t alen, const void *b, size_t blen);

/** conn_close - hard disconnect now. */
void conn_close(struct conn *c, const char *why);

/** conn_drain - stop reading; close once everything queued has been written. */
void conn_drain(struct conn *c, const char *why);

/** conn_handshake_over - option haggling is over: stop the handshake timer. */
void conn_handshake_over(struct conn *c);

/**
 * conn_tls_prepare - STARTTLS was asked for: allocate the TLS record buffer
 * and the session (nothing is sent yet).  Returns 0, -ENOBUFS when the
 * record buffer cannot be allocated, or another negative errno from
 * tls_session_new with the cause in @err.
 */
int conn_tls_prepare(struct conn *c, char *err, size_t errlen);

/**
 * conn_start_tls - STARTTLS was acknowledged (the ACK is queued): run the
 * TLS handshake on @c->tls as soon as the ACK has been written.
 */
void conn_start_tls(struct conn *c);

/** conn_ref / conn_unref - references held by requests inside the library. */
void conn_ref(struct conn *c);
void conn_unref(struct conn *c);

/**
 * conn_kick - re-evaluate a connection after progress (a reply queued, a
 * request released): close it if it was draining and is now idle, restart
 * reading if the backpressure has lifted.
 */
void conn_kick(struct conn *c);

/* ---- mem.c, memory accounting (see there for the rules) ---- */

/** conn_mem_charge - @c now holds @n more bytes (allocated or taken from a free list). */
void conn_mem_charge(struct conn *c, size_t n);

/**
 * conn_mem_release - @c gave back @n bytes (freed or returned to a free
 * list); connections waiting for memory that now fits are resumed.
 */
void conn_mem_release(struct conn *c, size_t n);

/** conn_mem_fits - would a request costing @cost be admitted on @c now? */
bool conn_mem_fits(const struct conn *c, size_t cost);

/**
 * conn_mem_admit - admit a request costing @cost on @c: charge it and
 * return true, or mark @c as waiting for memory and return false (the
 * caller stops reading; conn_mem_wake brings it back).
 */
bool conn_mem_admit(struct conn *c, size_t cost);

/** conn_mem_try - charge @n bytes if they fit under both caps; false if not (never waits). */
bool conn_mem_try(struct conn *c, size_t n);

/** conn_mem_unwait - @c no longer waits for memory (admitted, draining or closed). */
void conn_mem_unwait(struct conn *c);

/**
 * conn_mem_wake - (net/turn.c) memory was given back while connections wait:
 * at the end of this loop turn, resume every waiting connection whose
 * request now fits.
 */
void conn_mem_wake(void);

#endif /* CONN_H */
