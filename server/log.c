/*
 * log.c - where qednbd's messages go: stderr (the default in the
 * foreground), syslog (--log=syslog, the default with --fork), or a file
 * (--log-file=FILE), which SIGHUP reopens so that logrotate can move it away.
 *
 * Formats (documented in qednbd(8)):
 *   stderr:  "qednbd: MESSAGE"
 *   file:    "YYYY-MM-DDTHH:MM:SS.mmm+ZZZZ qednbd[PID]: MESSAGE"
 *   syslog:  "MESSAGE" with ident "qednbd", facility daemon, the pid
 *            attached, and priority err / warning / notice / info / debug.
 * Warnings carry "warning: " in front of the message, in every format.
 *
 * Threads (--threads): every loop thread logs.  Each line is formatted in
 * the caller's stack buffer and leaves in one write(2) (or one syslog(3)
 * call, which is thread-safe), so lines never interleave; `lg` is set up
 * before the threads start and only thread 0 reopens the file on SIGHUP,
 * with dup2 onto the same descriptor number, which other threads' writes
 * see atomically.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "qednbd.h"

static struct {
    enum srv_log_target target;
    char path[4096];        /* --log-file, absolute */
    int fd;                 /* the open log file, or -1 */
    bool stderr_gone;       /* daemonized: fd 2 is no longer the terminal */
} lg = {
    .target = SRV_LOG_TO_STDERR,
    .fd = -1,
};

static int syslog_prio(int level)
{
    switch (level) {
    case SRV_LOG_ERROR: return LOG_ERR;
    case SRV_LOG_WARN: return LOG_WARNING;
    case SRV_LOG_NOTICE: return LOG_NOTICE;
    case SRV_LOG_INFO: return LOG_INFO;
    default: return LOG_DEBUG;
    }
}

/* Write all of @buf to @fd; a log line is best effort, so errors are dropped. */
static void write_all(int fd, const char *buf, size_t n)
{
    while (n) {
        ssize_t r = write(fd, buf, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return;
        buf += r;
        n -= (size_t)r;
    }
}

static void emit(int level, const char *msg)
{
    const char *pfx = level == SRV_LOG_WARN ? "warning: " : "";
    char line[4200];
    int n;

    switch (lg.target) {
    case SRV_LOG_TO_SYSLOG:
        syslog(syslog_prio(level), "%s%s", pfx, msg);
        return;
    case SRV_LOG_TO_FILE:
        if (lg.fd >= 0) {
            struct timeval tv;
            struct tm tm;
            char ts[64], zone[8];

            gettimeofday(&tv, NULL);
            localtime_r(&tv.tv_sec, &tm);
            strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
            strftime(zone, sizeof(zone), "%z", &tm);
            n = snprintf(line, sizeof(line), "%s.%03ld%s qednbd[%ld]: %s%s\n", ts,
                         (long)(tv.tv_usec / 1000), zone, (long)getpid(), pfx, msg);
            if (n > 0)
                write_all(lg.fd, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
            return;
        }
        break;  /* no file open (cannot happen after srv_log_open): use stderr */
    case SRV_LOG_TO_STDERR:
        break;
    }
    n = snprintf(line, sizeof(line), "qednbd: %s%s\n", pfx, msg);
    if (n > 0)
        write_all(2, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

void srv_vlog(int level, const char *prefix, const char *fmt, va_list ap)
{
    char buf[4096];
    int n;

    if (!srv_log_enabled(level))
        return;
    n = snprintf(buf, sizeof(buf), "%s", prefix);
    if (n < 0 || (size_t)n >= sizeof(buf))
        n = 0;
    vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
    emit(level, buf);
}

void srv_log(int level, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    srv_vlog(level, "", fmt, ap);
    va_end(ap);
}

void srv_vdie(const char *fmt, va_list ap)
{
    char buf[4096];

    vsnprintf(buf, sizeof(buf), fmt, ap);
    emit(SRV_LOG_ERROR, buf);
    /* Before the server has detached, the operator is still looking at the
     * terminal: say it there too, whatever the log target. */
    if (lg.target != SRV_LOG_TO_STDERR && !lg.stderr_gone) {
        char line[4200];
        int n = snprintf(line, sizeof(line), "qednbd: %s\n", buf);
        if (n > 0)
            write_all(2, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
    }
}

void srv_die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    srv_vdie(fmt, ap);
    va_end(ap);
    exit(1);
}

/* Open the log file for appending: the fd, or a negative errno. */
static int open_file(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);

    return fd < 0 ? -errno : fd;
}

int srv_log_open(enum srv_log_target target, const char *path, char *err, size_t errlen)
{
    if (target == SRV_LOG_TO_FILE) {
        int fd;

        if (strlen(path) >= sizeof(lg.path)) {
            snprintf(err, errlen, "log file path too long");
            return -ENAMETOOLONG;
        }
        fd = open_file(path);
        if (fd < 0) {
            snprintf(err, errlen, "cannot open log file '%s': %s", path, strerror(-fd));
            return fd;
        }
        snprintf(lg.path, sizeof(lg.path), "%s", path);
        lg.fd = fd;
    } else if (target == SRV_LOG_TO_SYSLOG) {
        /* LOG_NDELAY: connect now, before a chroot or fd juggling could
         * make /dev/log unreachable. */
        openlog("qednbd", LOG_PID | LOG_NDELAY, LOG_DAEMON);
    }
    lg.target = target;
    return 0;
}

int srv_log_reopen(void)
{
    int fd;

    if (lg.target != SRV_LOG_TO_FILE)
        return 0;       /* stderr and syslog have nothing to reopen */
    fd = open_file(lg.path);
    if (fd < 0) {
        /* Keep writing to the old file rather than losing the messages. */
        srv_log(SRV_LOG_ERROR, "SIGHUP: cannot reopen log file '%s': %s; still logging to the "
                "old file", lg.path, strerror(-fd));
        return fd;
    }
    /* Why dup2 rather than swapping numbers: a daemon also has fd 2 pointing
     * at the log file (for messages that do not come through srv_log), and
     * the number lg.fd stays valid for both. */
    if (dup2(fd, lg.fd) < 0) {
        int e = errno;
        close(fd);
        srv_log(SRV_LOG_ERROR, "SIGHUP: dup2: %s", strerror(e));
        return -e;
    }
    close(fd);
    if (lg.stderr_gone)
        dup2(lg.fd, 2);
    srv_log(SRV_LOG_NOTICE, "log file reopened");
    return 0;
}

void srv_log_detach_stderr(void)
{
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);

    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
    }
    /* Stray messages (from a library, an assertion) land in the log file
     * when there is one, and nowhere with syslog.  With --log=stderr the
     * operator asked for stderr (a supervisor collecting it, say): keep it. */
    if (lg.target == SRV_LOG_TO_FILE && lg.fd >= 0)
        dup2(lg.fd, 2);
    else if (lg.target == SRV_LOG_TO_SYSLOG && null >= 0)
        dup2(null, 2);
    if (null > 2)
        close(null);
    if (lg.target != SRV_LOG_TO_STDERR)
        lg.stderr_gone = true;
}
