/*
 * conn-ops.h - the only way the network layer (server/net) calls the
 * protocol (server/protocol), as memcached's loop calls try_read_command
 * and never names a handler.  The network layer fills the buffer the
 * current state asked for (conn_expect) and says when it is complete; the
 * protocol decides what the bytes mean and what is read next.  Replies
 * travel the other way as struct outmsg, whose release function tells the
 * protocol that its reply was written (or dropped).
 */
#ifndef CONN_OPS_H
#define CONN_OPS_H

struct conn;

/**
 * proto_greeting - a new connection: set up c->proto, queue the greeting,
 * set the first state (or close @c when out of memory).
 */
void proto_greeting(struct conn *c);

/** proto_input_ready - the bytes the current state asked for are in (or were dropped). */
void proto_input_ready(struct conn *c);

/** proto_tls_ready - the TLS handshake after STARTTLS is done: options follow. */
void proto_tls_ready(struct conn *c);

/** proto_closed - @c was closed: free the request being read, if any. */
void proto_closed(struct conn *c);

/** proto_free - the last reference to @c is gone: free c->proto. */
void proto_free(struct conn *c);

/** proto_thread_exit - a loop thread is leaving: free its free lists (req-mem.c). */
void proto_thread_exit(void);

#endif /* CONN_OPS_H */
