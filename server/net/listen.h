/*
 * listen.h - the listening sockets (listen.c): opened by main at start-up,
 * closed at shutdown.  Failures to open them are fatal (srv_die).
 */
#ifndef LISTEN_H
#define LISTEN_H

#include <stdbool.h>

/** listen_unix - listen on the Unix socket @path (a stale socket is replaced). */
void listen_unix(const char *path);

/** listen_tcp - listen on @bind_addr (NULL: 127.0.0.1), port @port (NULL: 10809). */
void listen_tcp(const char *bind_addr, const char *port);

/**
 * listen_activation - take the @n sockets passed by socket activation
 * (daemon_check_activation found them).  Returns false when @n is 0.
 */
bool listen_activation(int n);

/** stop_listening - close every listening socket (and unlink the Unix socket). */
void stop_listening(void);

/** listen_describe - what we listen on, for the log. */
const char *listen_describe(void);

/** net_set_nonblock - make @fd non-blocking (fatal on failure). */
void net_set_nonblock(int fd);

#endif /* LISTEN_H */
