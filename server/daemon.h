/*
 * daemon.h - qednbd as a service (daemon.c): socket activation, --fork,
 * the pidfile, sd_notify and the signal handlers.
 */
#ifndef DAEMON_H
#define DAEMON_H

/**
 * daemon_check_activation - the number of sockets passed by socket
 * activation to this pid (0: none); exits on a bad LISTEN_FDS.  Call before
 * daemon_fork (the child has another pid).
 */
int daemon_check_activation(void);

/** daemon_fork - --fork: the parent waits until the child serves, and never returns. */
void daemon_fork(void);

/** daemon_ready - --fork: start-up is over; detach and let the parent go. */
void daemon_ready(void);

/** daemon_write_pidfile - write and lock @path (NULL: nothing to do); fatal on failure. */
void daemon_write_pidfile(const char *path);

/** daemon_remove_pidfile - unlink the pidfile, if we wrote one. */
void daemon_remove_pidfile(void);

/** daemon_take_notify_socket - remember $NOTIFY_SOCKET and clear it from the environment. */
void daemon_take_notify_socket(void);

/** daemon_notify - send @msg to the notify socket (systemd Type=notify), if any. */
void daemon_notify(const char *msg);

/** daemon_signals_start - watch SIGINT/SIGTERM (shutdown), SIGHUP (log), SIGUSR1 (stats). */
void daemon_signals_start(void);

/** daemon_signals_stop - stop those watchers, and ignore SIGINT/SIGTERM until exit. */
void daemon_signals_stop(void);

#endif /* DAEMON_H */
