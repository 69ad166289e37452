/*
 * lock.c - image locking compatible with QEMU's file driver.
 *
 * QEMU expresses permissions as shared OFD read locks on single bytes:
 * holding byte 100+b means "I use permission b", holding byte 200+b means
 * "I do not let others use permission b".  A conflict is found by asking
 * (F_OFD_GETLK with a write lock) whether anyone else holds the opposite byte.
 * Because OFD locks belong to the open file description, two opens in one
 * process conflict just like two processes do.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "qed-image.h"

enum {
    PERM_CONSISTENT_READ = 0,
    PERM_WRITE = 1,
    PERM_WRITE_UNCHANGED = 2,
    PERM_RESIZE = 3,
    PERM_GRAPH_MOD = 4,
    PERM_COUNT = 5,
    LOCK_PERM_BASE = 100,
    LOCK_SHARED_BASE = 200,
};

static const char *perm_name[PERM_COUNT] = {
    "consistent read", "write", "write unchanged", "resize", "change children",
};

static int lock_byte(int fd, off_t byte)
{
    struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};
    return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* 1 if another open file description holds a lock on @byte, 0 if not, -errno. */
static int byte_is_held(int fd, off_t byte)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return -errno;
    return fl.l_type != F_UNLCK;
}

/*
 * Does another process conflict with our use of permission @b (@shared
 * false: someone refuses to share it) or with our refusal to share it
 * (@shared true: someone uses it)?  0 if not, -EBUSY with a message naming
 * @name if so, or the error of the test with its message.
 */
static int conflict(int fd, int b, bool shared, const char *name, char *err, size_t errlen)
{
    int r = byte_is_held(fd, (shared ? LOCK_PERM_BASE : LOCK_SHARED_BASE) + b);

    if (r < 0)
        return qed_errf(err, errlen, r, "%s: cannot lock the image: %s", name, strerror(-r));
    if (!r)
        return 0;
    return qed_errf(err, errlen, -EBUSY,
                    "%s: failed to get %s\"%s\" lock: another process (qednbd or QEMU) is "
                    "using the image%s",
                    name, shared ? "shared " : "", perm_name[b],
                    shared ? "" : " and does not share it");
}

/*
 * Take the image lock on @fd at once: a read-write open takes the write
 * permission and shares none of write/resize; a read-only open takes
 * consistent-read and refuses to share write.  Returns 0, or -EBUSY with a
 * message naming @name.
 */
static int lock_image(int fd, bool write, bool backing, const char *name, char *err,
                      size_t errlen)
{
    unsigned perms, unshared;
    int r;

    if (write) {
        /* Like qemu-nbd on a writable image: use read, write and resize, and
         * let nobody else write or resize. */
        perms = 1u << PERM_CONSISTENT_READ | 1u << PERM_WRITE | 1u << PERM_RESIZE;
        unshared = 1u << PERM_WRITE | 1u << PERM_RESIZE;
    } else if (backing) {
        /* A backing file is read by every overlay that uses it: share all
         * but writing and resizing, which would change data under us. */
        perms = 1u << PERM_CONSISTENT_READ;
        unshared = 1u << PERM_WRITE | 1u << PERM_RESIZE;
    } else {
        perms = 1u << PERM_CONSISTENT_READ;
        unshared = 1u << PERM_WRITE;
    }

    for (int b = 0; b < PERM_COUNT; b++) {
        if (perms & (1u << b)) {
            r = lock_byte(fd, LOCK_PERM_BASE + b);
            if (r < 0)
                goto fail_errno;
        }
        if (unshared & (1u << b)) {
            r = lock_byte(fd, LOCK_SHARED_BASE + b);
            if (r < 0)
                goto fail_errno;
        }
    }
    /* Now look for conflicts with everyone else's locks. */
    for (int b = 0; b < PERM_COUNT; b++) {
        /* Using permission b conflicts with anyone who does not share it;
         * not sharing it conflicts with anyone who uses it. */
        if (perms & (1u << b)) {
            r = conflict(fd, b, false, name, err, errlen);
            if (r)
                return r;
        }
        if (unshared & (1u << b)) {
            r = conflict(fd, b, true, name, err, errlen);
            if (r)
                return r;
        }
    }
    return 0;

fail_errno:
    return qed_errf(err, errlen, r, "%s: cannot lock the image: %s", name, strerror(-r));
}

/* Drop every lock byte we hold on @fd (QEMU's bytes 100..299). */
static void unlock_all(int fd)
{
    struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = LOCK_PERM_BASE,
                       .l_len = LOCK_SHARED_BASE + 100 - LOCK_PERM_BASE};
    (void)fcntl(fd, F_OFD_SETLK, &fl);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define LOCK_POLL_S 0.05 /* between two tries while waiting for a lock */

int qed_lock_image_wait(int fd, bool write, bool backing, unsigned wait_ms, const char *name,
                        char *err, size_t errlen)
{
    double start, deadline, left;
    int r = lock_image(fd, write, backing, name, err, errlen);

    if (r != -EBUSY || wait_ms == 0)
        return r;
    /* Why wait at all: a server killed with SIGKILL keeps its locks until the
     * kernel has finished its in-flight io_uring requests, which hold the
     * file (and the open file description that owns the locks) a little
     * after the process is gone.  A supervisor's immediate restart must not
     * fail for that. */
    qed_log(QED_LOG_WARN, "waiting up to %g s for the lock on %s (%s)", wait_ms / 1000.0, name,
            err ? err : "in use");
    start = now_s();
    deadline = start + wait_ms / 1000.0;
    for (;;) {
        /* Why release our own bytes between tries: holding them while we wait
         * would make another waiter (or QEMU) see us and fail in turn. */
        unlock_all(fd);
        left = deadline - now_s();
        if (left <= 0)
            return r;
        {
            double d = left < LOCK_POLL_S ? left : LOCK_POLL_S;
            struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(d * 1e9)};
            while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
        }
        r = lock_image(fd, write, backing, name, err, errlen);
        if (r != -EBUSY) {
            if (r == 0)
                qed_log(QED_LOG_INFO, "got the lock on %s after %.1f s", name, now_s() - start);
            return r;
        }
    }
}
