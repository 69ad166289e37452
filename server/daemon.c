/*
 * daemon.c - qednbd as a service: socket activation check, --fork, the
 * pidfile, systemd's readiness notification, and the signals (clean
 * shutdown with a grace period, log reopening, statistics).
 *
 * Daemon mode (--fork).  Why fork first, before the loop, the I/O engine
 * and the images: a fork keeps only the calling thread (the I/O thread pool
 * would be lost) and the epoll set and io_uring are not meant to be shared
 * with a parent.  So the parent forks at once and waits on a pipe; the
 * child does the whole start-up, and once it listens (pidfile written) it
 * detaches from the terminal and writes one byte to the pipe.  The parent
 * exits 0 on that byte, and 1 if the pipe closes without it (the child
 * failed, and said why on the terminal it still had).  The OFD image locks
 * are taken by the child, so they live as long as the server.
 *
 * Shutdown: SIGINT/SIGTERM stop accepting, let the requests in flight finish
 * and their replies go out (at most SHUTDOWN_GRACE seconds), then leave the
 * loop; qed_close then flushes each image and clears NEED_CHECK.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <ev.h>

#include "conn.h"
#include "daemon.h"
#include "listen.h"

#define SHUTDOWN_GRACE 10.0     /* seconds for in-flight requests at shutdown */
#define MAX_ACTIVATION 8        /* sockets accepted from socket activation */

static ev_signal sigint_w, sigterm_w, sighup_w, sigusr1_w;
static int ready_fd = -1;       /* --fork: the pipe to the waiting parent */
static const char *pidfile;     /* --pidfile, absolute */
static int pidfile_fd = -1;
static char notify_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static ev_timer grace_w;

/*
 * Socket activation (systemd's protocol, also used by nbdinfo/nbdcopy
 * "[ CMD ]"): when LISTEN_PID is our pid, the LISTEN_FDS sockets from fd 3 on
 * are already listening.  Checked before --fork (the child has another pid);
 * returns how many (0: none).
 */
int daemon_check_activation(void)
{
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    char *end;
    long n;

    if (!pid || !fds || strtol(pid, &end, 10) != (long)getpid() || *end)
        return 0;
    n = strtol(fds, &end, 10);
    if (*end || n < 1 || n > MAX_ACTIVATION)
        srv_die("invalid LISTEN_FDS '%s'", fds);
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    for (int fd = 3; fd < 3 + n; fd++) {
        int listening = 0, type = 0;
        socklen_t l1 = sizeof(listening), l2 = sizeof(type);

        /* Refuse anything but a listening stream socket: serving on some
         * other descriptor would hang every client. */
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &l1) < 0 ||
            getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l2) < 0 || !listening ||
            type != SOCK_STREAM)
            srv_die("fd %d passed by socket activation (LISTEN_FDS=%ld) is not a listening "
                "stream socket", fd, n);
        fcntl(fd, F_SETFD, FD_CLOEXEC);     /* now, so that no child of ours inherits them */
    }
    return (int)n;
}

/* --fork: the parent waits here until the child serves, and never returns. */
void daemon_fork(void)
{
    int p[2], st;
    pid_t pid;
    ssize_t r;
    char b;

    if (pipe2(p, O_CLOEXEC) < 0)
        srv_die("pipe: %s", strerror(errno));
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        srv_die("fork: %s", strerror(errno));
    if (pid == 0) {
        close(p[0]);
        ready_fd = p[1];
        /* A session of its own: no terminal, no SIGHUP from the shell. */
        if (setsid() < 0)
            srv_die("setsid: %s", strerror(errno));
        return;
    }
    close(p[1]);
    do
        r = read(p[0], &b, 1);
    while (r < 0 && errno == EINTR);
    if (r == 1)
        _exit(0);
    /* The child exited before it served; it said why on stderr. */
    if (waitpid(pid, &st, 0) == pid && WIFSIGNALED(st))
        fprintf(stderr, "qednbd: the server (pid %ld) was killed by signal %d while starting\n",
                (long)pid, WTERMSIG(st));
    else
        fprintf(stderr, "qednbd: the server did not start\n");
    _exit(1);
}

/* --fork: start-up is over; detach and let the parent go. */
void daemon_ready(void)
{
    if (ready_fd < 0)
        return;
    if (chdir("/") < 0)
        srv_log(SRV_LOG_WARN, "chdir /: %s", strerror(errno));
    srv_log_detach_stderr();
    /* Why the byte comes last: the parent's exit tells scripts and systemd
     * (Type=forking) that the server serves; everything must be ready. */
    if (write(ready_fd, "1", 1) != 1)
        srv_log(SRV_LOG_WARN, "telling the parent we are ready: %s", strerror(errno));
    close(ready_fd);
    ready_fd = -1;
}

/*
 * --pidfile: the file is locked (flock) for as long as we run, so a second
 * server given the same pidfile refuses to start instead of overwriting it.
 */
void daemon_write_pidfile(const char *path)
{
    char buf[32], old[32] = "";
    int fd, n;

    if (!path)
        return;
    pidfile = path;
    fd = open(pidfile, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY, 0644);
    if (fd < 0)
        srv_die("--pidfile %s: %s", pidfile, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        ssize_t r = pread(fd, old, sizeof(old) - 1, 0);
        old[r > 0 ? r : 0] = '\0';
        old[strcspn(old, "\n")] = '\0';
        if (e == EWOULDBLOCK)
            srv_die("--pidfile %s is held by another running server (pid %s)", pidfile,
                old[0] ? old : "?");
        srv_die("--pidfile %s: lock: %s", pidfile, strerror(e));
    }
    n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)n, 0) != n)
        srv_die("--pidfile %s: write: %s", pidfile, strerror(errno));
    pidfile_fd = fd;
}

void daemon_remove_pidfile(void)
{
    if (pidfile_fd < 0)
        return;
    /* Unlink while still holding the lock: a new server cannot have taken it. */
    unlink(pidfile);
    close(pidfile_fd);
    pidfile_fd = -1;
}

/* systemd's readiness protocol (Type=notify): one datagram to $NOTIFY_SOCKET. */
void daemon_notify(const char *msg)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    size_t len = strlen(notify_path);
    int fd;

    if (!len)
        return;
    memcpy(sa.sun_path, notify_path, len);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0';     /* abstract namespace */
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa,
               (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0)
        srv_log(SRV_LOG_WARN, "NOTIFY_SOCKET %s: %s", notify_path, strerror(errno));
    close(fd);
}

void daemon_take_notify_socket(void)
{
    const char *p = getenv("NOTIFY_SOCKET");

    if (p && (p[0] == '/' || p[0] == '@') && strlen(p) < sizeof(notify_path))
        snprintf(notify_path, sizeof(notify_path), "%s", p);
    unsetenv("NOTIFY_SOCKET");
}

/* ---- Shutdown ---------------------------------------------------------------- */

static void on_grace(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    srv_log(SRV_LOG_ERROR, "requests still in flight after %.0f s: closing the connections",
            SHUTDOWN_GRACE);
    /* Every thread closes its connections and reports; the loop ends when
     * all have (threads.c). */
    threads_shutdown(true);
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)revents;
    if (srv.shutting_down) {
        srv_log(SRV_LOG_ERROR, "second signal: closing the connections now");
        on_grace(loop, &grace_w, 0);
        return;
    }
    srv_log(SRV_LOG_NOTICE, "signal %d: shutting down", w->signum);
    __atomic_store_n(&srv.shutting_down, true, __ATOMIC_RELAXED);
    daemon_notify("STOPPING=1");
    stop_listening();
    /* Every thread drains its connections; the loop ends once none is
     * left on any thread (threads.c), or the grace timer aborts them. */
    ev_timer_start(loop, &grace_w);
    threads_shutdown(false);
}

/* SIGHUP: reopen the log.  Exports are not reloaded: there is no runtime change. */
static void on_sighup(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    srv_log(SRV_LOG_NOTICE, "SIGHUP: reopening the log (exports are fixed at start-up; "
            "restart qednbd to change them)");
    srv_log_reopen();
}

static void on_sigusr1(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    stats_print();
}

void daemon_signals_start(void)
{
    ev_timer_init(&grace_w, on_grace, SHUTDOWN_GRACE, 0.);
    ev_signal_init(&sigint_w, on_signal, SIGINT);
    ev_signal_start(srv_self->loop, &sigint_w);
    ev_signal_init(&sigterm_w, on_signal, SIGTERM);
    ev_signal_start(srv_self->loop, &sigterm_w);
    ev_signal_init(&sighup_w, on_sighup, SIGHUP);
    ev_signal_start(srv_self->loop, &sighup_w);
    ev_signal_init(&sigusr1_w, on_sigusr1, SIGUSR1);
    ev_signal_start(srv_self->loop, &sigusr1_w);
}

void daemon_signals_stop(void)
{
    ev_signal_stop(srv_self->loop, &sigint_w);
    ev_signal_stop(srv_self->loop, &sigterm_w);
    ev_signal_stop(srv_self->loop, &sighup_w);
    ev_signal_stop(srv_self->loop, &sigusr1_w);
    ev_timer_stop(srv_self->loop, &grace_w);
    /* Stopping the watchers restored the default action (terminate): a
     * second Ctrl-C during the final flush would kill us before the images
     * are closed and NEED_CHECK cleared.  Ignore them until we are done. */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
}
