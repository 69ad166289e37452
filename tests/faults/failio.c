/*
 * failio.c - an LD_PRELOAD shim that makes chosen file I/O calls fail.
 *
 * It wraps preadv, pwritev, pread, pwrite (and their *64 aliases),
 * fdatasync, fsync and fallocate.  A call is "matching" when its file
 * descriptor refers to one of the files in FAILIO_PATH (compared with the
 * target of /proc/self/fd/N) and its kind is in FAILIO_OPS.  Matching calls
 * are numbered from 0 while the shim is armed; the calls numbered FAILIO_NTH
 * .. FAILIO_NTH + FAILIO_COUNT - 1 fail with FAILIO_ERRNO without touching
 * the file.  Everything else goes to the real libc function.
 *
 * Environment:
 *   FAILIO_PATH   comma-separated absolute paths (required; no path = no-op)
 *   FAILIO_OPS    comma-separated: preadv pwritev pread pwrite fdatasync fsync
 *                 fallocate, or the groups read, write, sync, punch, all
 *                 (default all)
 *   FAILIO_NTH    index of the first matching call to fail; -1 = none (default)
 *   FAILIO_COUNT  how many consecutive matching calls fail; 0 = all from
 *                 FAILIO_NTH on (default 1)
 *   FAILIO_ERRNO  EIO, ENOSPC, EFBIG, EDQUOT, EINTR or a number (default EIO);
 *                 0 or "none": the selected calls do not fail, they are only
 *                 delayed; "short": a selected read or write transfers only
 *                 the first half of its length (at least 1 byte) and returns
 *                 that count, as a short transfer may (other calls: no change)
 *   FAILIO_DELAY_MS  sleep this long in the selected calls before failing (or
 *                 performing) them (default 0): widens a race window so that
 *                 a test can act while the call is pending
 *   FAILIO_LOG    optional file: one line per matching call while armed:
 *                 "INDEX OP PATH OFFSET LENGTH ok|FAIL ERRNO-NAME" when it
 *                 returns, and "... HOLD -" when a delayed call starts waiting
 *   FAILIO_CTL    optional control file.  When set, the shim is armed only
 *                 while this file exists, and "key=value" lines in it (ops,
 *                 nth, count, errno, delay) override the environment.  Whenever the
 *                 file is replaced (a new inode, size or mtime) the call
 *                 counter restarts at 0, so a test can run many injection
 *                 rounds against one process: write the file to a temporary
 *                 name and rename it into place, remove it to disarm.
 *
 * Why a shim and not the library's test backend: this exercises the real
 * server binary with its real thread-pool backend, so what is tested is the
 * path a deployed qednbd takes when the disk fails.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum failio_op {
    OP_PREADV = 1u << 0,
    OP_PWRITEV = 1u << 1,
    OP_PREAD = 1u << 2,
    OP_PWRITE = 1u << 3,
    OP_FDATASYNC = 1u << 4,
    OP_FSYNC = 1u << 5,
    OP_FALLOCATE = 1u << 6,
};

#define OP_ALL 0x7fu
#define MAX_PATHS 8

struct failio_cfg {
    unsigned ops;
    long long nth;
    long long count;
    int err;          /* 0: delay only */
    long delay_ms;
};

static pthread_mutex_t failio_lock = PTHREAD_MUTEX_INITIALIZER;
static bool failio_inited;
static char *failio_paths[MAX_PATHS];
static int failio_npaths;
static struct failio_cfg failio_env_cfg;
static struct failio_cfg failio_cur;
static const char *failio_ctl;
static const char *failio_log;
static long long failio_counter;
static struct stat failio_ctl_st;
static bool failio_ctl_seen;

static ssize_t (*real_preadv)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pread)(int, void *, size_t, off_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static int (*real_fdatasync)(int);
static int (*real_fsync)(int);
static int (*real_fallocate)(int, int, off_t, off_t);

/* Prototypes: the build uses -Wmissing-prototypes. */
ssize_t preadv(int fd, const struct iovec *iov, int cnt, off_t off);
ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off);
ssize_t preadv64(int fd, const struct iovec *iov, int cnt, off_t off);
ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off);
ssize_t pread(int fd, void *buf, size_t len, off_t off);
ssize_t pwrite(int fd, const void *buf, size_t len, off_t off);
ssize_t pread64(int fd, void *buf, size_t len, off_t off);
ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off);
int fdatasync(int fd);
int fsync(int fd);
int fallocate(int fd, int mode, off_t off, off_t len);
int fallocate64(int fd, int mode, off_t off, off_t len);

static const char *failio_op_name(unsigned op)
{
    switch (op) {
    case OP_PREADV: return "preadv";
    case OP_PWRITEV: return "pwritev";
    case OP_PREAD: return "pread";
    case OP_PWRITE: return "pwrite";
    case OP_FDATASYNC: return "fdatasync";
    case OP_FSYNC: return "fsync";
    case OP_FALLOCATE: return "fallocate";
    default: return "?";
    }
}

static void failio_die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fputs("failio: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

/* Parse an ops list; dies on an unknown name (a typo must not test nothing). */
static unsigned failio_parse_ops(const char *s)
{
    unsigned ops = 0;
    char buf[256], *save = NULL, *tok;

    snprintf(buf, sizeof(buf), "%s", s);
    for (tok = strtok_r(buf, ", \t\n", &save); tok; tok = strtok_r(NULL, ", \t\n", &save)) {
        if (!strcmp(tok, "all")) ops |= OP_ALL;
        else if (!strcmp(tok, "read")) ops |= OP_PREADV | OP_PREAD;
        else if (!strcmp(tok, "write")) ops |= OP_PWRITEV | OP_PWRITE;
        else if (!strcmp(tok, "sync")) ops |= OP_FDATASYNC | OP_FSYNC;
        else if (!strcmp(tok, "punch")) ops |= OP_FALLOCATE;
        else if (!strcmp(tok, "preadv")) ops |= OP_PREADV;
        else if (!strcmp(tok, "pwritev")) ops |= OP_PWRITEV;
        else if (!strcmp(tok, "pread")) ops |= OP_PREAD;
        else if (!strcmp(tok, "pwrite")) ops |= OP_PWRITE;
        else if (!strcmp(tok, "fdatasync")) ops |= OP_FDATASYNC;
        else if (!strcmp(tok, "fsync")) ops |= OP_FSYNC;
        else if (!strcmp(tok, "fallocate")) ops |= OP_FALLOCATE;
        else failio_die("unknown op '%s' in FAILIO_OPS", tok);
    }
    return ops;
}

/* Not an errno: the selected read or write transfers only part of its
 * length (a short transfer, which callers must continue). */
#define FAILIO_SHORT (-1)

static int failio_parse_errno(const char *s)
{
    if (!strcmp(s, "none") || !strcmp(s, "0")) return 0;
    if (!strcmp(s, "short")) return FAILIO_SHORT;
    if (!strcmp(s, "EINTR")) return EINTR;
    if (!strcmp(s, "EIO")) return EIO;
    if (!strcmp(s, "ENOSPC")) return ENOSPC;
    if (!strcmp(s, "EFBIG")) return EFBIG;
    if (!strcmp(s, "EDQUOT")) return EDQUOT;
    if (!strcmp(s, "EROFS")) return EROFS;
    if (*s >= '1' && *s <= '9') return atoi(s);
    failio_die("unknown errno '%s' in FAILIO_ERRNO", s);
    return EIO;
}

static void failio_resolve(void)
{
    real_preadv = (ssize_t (*)(int, const struct iovec *, int, off_t))dlsym(RTLD_NEXT, "preadv");
    real_pwritev = (ssize_t (*)(int, const struct iovec *, int, off_t))dlsym(RTLD_NEXT, "pwritev");
    real_pread = (ssize_t (*)(int, void *, size_t, off_t))dlsym(RTLD_NEXT, "pread");
    real_pwrite = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
    real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    real_fallocate = (int (*)(int, int, off_t, off_t))dlsym(RTLD_NEXT, "fallocate");
    if (!real_preadv || !real_pwritev || !real_pread || !real_pwrite || !real_fdatasync ||
        !real_fsync || !real_fallocate)
        failio_die("dlsym(RTLD_NEXT) failed: %s", dlerror());
}

/* Read the environment once; caller holds failio_lock. */
static void failio_init_locked(void)
{
    const char *s;

    if (failio_inited)
        return;
    failio_resolve();
    s = getenv("FAILIO_PATH");
    if (s && *s) {
        char *dup = strdup(s), *save = NULL, *tok;
        if (!dup)
            failio_die("out of memory");
        for (tok = strtok_r(dup, ",", &save); tok && failio_npaths < MAX_PATHS;
             tok = strtok_r(NULL, ",", &save))
            failio_paths[failio_npaths++] = tok;
    }
    s = getenv("FAILIO_OPS");
    failio_env_cfg.ops = s && *s ? failio_parse_ops(s) : OP_ALL;
    s = getenv("FAILIO_NTH");
    failio_env_cfg.nth = s && *s ? atoll(s) : -1;
    s = getenv("FAILIO_COUNT");
    failio_env_cfg.count = s && *s ? atoll(s) : 1;
    s = getenv("FAILIO_ERRNO");
    failio_env_cfg.err = s && *s ? failio_parse_errno(s) : EIO;
    s = getenv("FAILIO_DELAY_MS");
    failio_env_cfg.delay_ms = s && *s ? atol(s) : 0;
    failio_ctl = getenv("FAILIO_CTL");
    if (failio_ctl && !*failio_ctl)
        failio_ctl = NULL;
    failio_log = getenv("FAILIO_LOG");
    if (failio_log && !*failio_log)
        failio_log = NULL;
    failio_cur = failio_env_cfg;
    failio_inited = true;
}

/* Lazily resolve the real functions (a call may come before any constructor). */
static void failio_init(void)
{
    pthread_mutex_lock(&failio_lock);
    failio_init_locked();
    pthread_mutex_unlock(&failio_lock);
}

static bool failio_fd_matches(int fd)
{
    char link[64], target[4096];
    ssize_t n;

    if (failio_npaths == 0 || fd < 0)
        return false;
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, target, sizeof(target) - 1);
    if (n <= 0)
        return false;
    target[n] = '\0';
    for (int i = 0; i < failio_npaths; i++)
        if (!strcmp(target, failio_paths[i]))
            return true;
    return false;
}

/*
 * Re-read the control file when it changed.  Returns false when the shim is
 * disarmed (FAILIO_CTL set and the file absent).  Caller holds failio_lock.
 */
static bool failio_armed_locked(void)
{
    struct stat st;
    char buf[512];
    ssize_t n;
    int fd;

    if (!failio_ctl)
        return true;
    if (stat(failio_ctl, &st) < 0) {
        failio_ctl_seen = false;
        return false;
    }
    if (failio_ctl_seen && st.st_ino == failio_ctl_st.st_ino &&
        st.st_size == failio_ctl_st.st_size &&
        st.st_mtim.tv_sec == failio_ctl_st.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == failio_ctl_st.st_mtim.tv_nsec)
        return true;
    /* A new control file: new settings, and counting starts again. */
    failio_ctl_st = st;
    failio_ctl_seen = true;
    failio_counter = 0;
    failio_cur = failio_env_cfg;
    fd = open(failio_ctl, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return true;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return true;
    buf[n] = '\0';
    {
        char *save = NULL, *line;
        for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            char *eq = strchr(line, '=');
            if (!eq)
                continue;
            *eq = '\0';
            if (!strcmp(line, "ops")) failio_cur.ops = failio_parse_ops(eq + 1);
            else if (!strcmp(line, "nth")) failio_cur.nth = atoll(eq + 1);
            else if (!strcmp(line, "count")) failio_cur.count = atoll(eq + 1);
            else if (!strcmp(line, "errno")) failio_cur.err = failio_parse_errno(eq + 1);
            else if (!strcmp(line, "delay")) failio_cur.delay_ms = atol(eq + 1);
            else failio_die("unknown key '%s' in %s", line, failio_ctl);
        }
    }
    return true;
}

static const char *failio_errname(int e)
{
    switch (e) {
    case 0: return "-";
    case EIO: return "EIO";
    case ENOSPC: return "ENOSPC";
    case EFBIG: return "EFBIG";
    case EDQUOT: return "EDQUOT";
    case EROFS: return "EROFS";
    case EINTR: return "EINTR";
    default: return "E?";
    }
}

static void failio_log_line(long long idx, unsigned op, int fd, long long off, long long len,
                            const char *what, int err)
{
    char target[1024], link[64], line[1400];
    ssize_t n;
    int lfd, len_line;

    if (!failio_log)
        return;
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, target, sizeof(target) - 1);
    if (n < 0)
        n = 0;
    target[n] = '\0';
    len_line = snprintf(line, sizeof(line), "%lld %s %s %lld %lld %s %s\n", idx,
                        failio_op_name(op), target, off, len, what, failio_errname(err));
    /* O_APPEND and one write per line: lines from several threads do not mix. */
    lfd = open(failio_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (lfd < 0)
        return;
    if (write(lfd, line, (size_t)len_line) < 0) {
        /* Nothing sensible to do: the test notices missing lines. */
    }
    close(lfd);
}

/*
 * Decide the fate of one call.  Returns the errno to fail it with, 0 to let
 * it through; *idx gets its index (-1 when it does not match or is disarmed).
 * A selected call with a delay is logged as "HOLD" first and then sleeps
 * (outside the lock, so other calls go on meanwhile): a test that sees the
 * HOLD line knows the call is pending and can act, e.g. kill the process.
 */
static int failio_decide(unsigned op, int fd, long long off, long long len, long long *idx)
{
    int err = 0;
    long delay = 0;

    *idx = -1;
    pthread_mutex_lock(&failio_lock);
    failio_init_locked();
    if (failio_npaths > 0 && failio_fd_matches(fd) && failio_armed_locked() &&
        (failio_cur.ops & op)) {
        *idx = failio_counter++;
        if (failio_cur.nth >= 0 && *idx >= failio_cur.nth &&
            (failio_cur.count == 0 || *idx < failio_cur.nth + failio_cur.count)) {
            err = failio_cur.err;
            delay = failio_cur.delay_ms;
        }
    }
    pthread_mutex_unlock(&failio_lock);
    if (delay > 0) {
        struct timespec ts = {.tv_sec = delay / 1000, .tv_nsec = (delay % 1000) * 1000000L};

        failio_log_line(*idx, op, fd, off, len, "HOLD", 0);
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
    }
    return err;
}

/* Common tail: log the call (when it matched) and set errno for a failure. */
static long long failio_finish(long long idx, unsigned op, int fd, long long off, long long len,
                               int injected, long long res, int saved_errno)
{
    if (injected == FAILIO_SHORT) {
        /* The call ran, shortened: report its real result. */
        if (idx >= 0)
            failio_log_line(idx, op, fd, off, len, res >= 0 ? "SHORT" : "ok",
                            res < 0 ? saved_errno : 0);
        errno = saved_errno;
        return res;
    }
    if (idx >= 0)
        failio_log_line(idx, op, fd, off, len, injected ? "FAIL" : "ok",
                        injected ? injected : (res < 0 ? saved_errno : 0));
    errno = injected ? injected : saved_errno;
    return injected ? -1 : res;
}

static size_t failio_iov_len(const struct iovec *iov, int cnt)
{
    size_t t = 0;

    for (int i = 0; i < cnt; i++)
        t += iov[i].iov_len;
    return t;
}

/* Half of @len, at least 1 (a zero-length transfer would not be "short"). */
static size_t failio_short_len(size_t len)
{
    return len > 1 ? len / 2 : len;
}

/*
 * Copy @iov into @out (at most 64 entries) cut to @len bytes; returns the new
 * count.  The caller's array is left alone.
 */
static int failio_iov_cut(const struct iovec *iov, int cnt, size_t len, struct iovec *out)
{
    int n = 0;

    for (int i = 0; i < cnt && n < 64 && len > 0; i++) {
        out[n] = iov[i];
        if (out[n].iov_len > len)
            out[n].iov_len = len;
        len -= out[n].iov_len;
        n++;
    }
    return n;
}

ssize_t preadv(int fd, const struct iovec *iov, int cnt, off_t off)
{
    long long idx;
    size_t total = failio_iov_len(iov, cnt);
    int inj = failio_decide(OP_PREADV, fd, off, (long long)total, &idx);
    ssize_t r;

    if (inj == FAILIO_SHORT) {
        struct iovec cut[64];
        r = real_preadv(fd, cut, failio_iov_cut(iov, cnt, failio_short_len(total), cut), off);
    } else {
        r = inj ? -1 : real_preadv(fd, iov, cnt, off);
    }
    return failio_finish(idx, OP_PREADV, fd, off, (long long)total, inj, r, errno);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    long long idx;
    size_t total = failio_iov_len(iov, cnt);
    int inj = failio_decide(OP_PWRITEV, fd, off, (long long)total, &idx);
    ssize_t r;

    if (inj == FAILIO_SHORT) {
        struct iovec cut[64];
        r = real_pwritev(fd, cut, failio_iov_cut(iov, cnt, failio_short_len(total), cut), off);
    } else {
        r = inj ? -1 : real_pwritev(fd, iov, cnt, off);
    }
    return failio_finish(idx, OP_PWRITEV, fd, off, (long long)total, inj, r, errno);
}

ssize_t preadv64(int fd, const struct iovec *iov, int cnt, off_t off)
{
    return preadv(fd, iov, cnt, off);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off)
{
    return pwritev(fd, iov, cnt, off);
}

ssize_t pread(int fd, void *buf, size_t len, off_t off)
{
    long long idx;
    int inj = failio_decide(OP_PREAD, fd, off, (long long)len, &idx);
    ssize_t r = inj == FAILIO_SHORT ? real_pread(fd, buf, failio_short_len(len), off)
                : inj               ? -1
                                    : real_pread(fd, buf, len, off);

    return failio_finish(idx, OP_PREAD, fd, off, (long long)len, inj, r, errno);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
    long long idx;
    int inj = failio_decide(OP_PWRITE, fd, off, (long long)len, &idx);
    ssize_t r = inj == FAILIO_SHORT ? real_pwrite(fd, buf, failio_short_len(len), off)
                : inj               ? -1
                                    : real_pwrite(fd, buf, len, off);

    return failio_finish(idx, OP_PWRITE, fd, off, (long long)len, inj, r, errno);
}

ssize_t pread64(int fd, void *buf, size_t len, off_t off)
{
    return pread(fd, buf, len, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off)
{
    return pwrite(fd, buf, len, off);
}

int fdatasync(int fd)
{
    long long idx;
    int inj = failio_decide(OP_FDATASYNC, fd, 0, 0, &idx);
    int r;

    if (inj == FAILIO_SHORT)
        inj = 0; /* nothing to shorten */
    r = inj ? -1 : real_fdatasync(fd);

    return (int)failio_finish(idx, OP_FDATASYNC, fd, 0, 0, inj, r, errno);
}

int fsync(int fd)
{
    long long idx;
    int inj = failio_decide(OP_FSYNC, fd, 0, 0, &idx);
    int r;

    if (inj == FAILIO_SHORT)
        inj = 0; /* nothing to shorten */
    r = inj ? -1 : real_fsync(fd);

    return (int)failio_finish(idx, OP_FSYNC, fd, 0, 0, inj, r, errno);
}

int fallocate(int fd, int mode, off_t off, off_t len)
{
    long long idx;
    int inj = failio_decide(OP_FALLOCATE, fd, off, len, &idx);
    int r;

    if (inj == FAILIO_SHORT)
        inj = 0; /* nothing to shorten */
    r = inj ? -1 : real_fallocate(fd, mode, off, len);

    return (int)failio_finish(idx, OP_FALLOCATE, fd, off, len, inj, r, errno);
}

int fallocate64(int fd, int mode, off_t off, off_t len)
{
    return fallocate(fd, mode, off, len);
}

/* Resolve early too, so that a library constructor calling pread works. */
__attribute__((constructor)) static void failio_ctor(void)
{
    failio_init();
}
