/*
 * file-open.c - open an image or a backing file without blocking, refuse
 * what cannot hold an image, confine backing files to a directory, and
 * the open and I/O flags of a cache mode (O_DIRECT, no flushes).
 *
 * A backing file name comes from the image header, that is from whoever
 * wrote the image: it may name a FIFO (an open would block for ever), a
 * device (opening /dev/watchdog arms it; a tape rewinds), or any file on the
 * host.  So a file is opened in two steps:
 *
 *  1. open(O_PATH): never blocks and opens no device; fstat it and refuse
 *     anything but a regular file or a block device; with a confinement
 *     directory, read the path the kernel actually resolved (the fd's
 *     /proc/self/fd link, symlinks and ".." already followed) and refuse it
 *     unless it lies under the directory's own resolved path.
 *  2. reopen that same inode for I/O through /proc/self/fd/N, with
 *     O_NONBLOCK (cleared afterwards: io_uring would answer EAGAIN instead of
 *     waiting on an O_NONBLOCK file).  Reopening the magic link cannot reach
 *     another file, so a rename or symlink swap between the check and the
 *     open changes nothing (no TOCTOU).
 *
 * Without /proc the second step reopens by name and refuses the file if it
 * is not the inode that was checked; the confinement check needs /proc and
 * fails closed without it.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qed-image.h"

/* What kind of file @mode is, for a refusal message. */
static const char *file_kind(mode_t mode)
{
    if (S_ISFIFO(mode))
        return "a FIFO";
    if (S_ISSOCK(mode))
        return "a socket";
    if (S_ISCHR(mode))
        return "a character device";
    if (S_ISDIR(mode))
        return "a directory";
    return "not a regular file";
}

/* "IMAGE: backing file PATH" or "PATH": who the message is about. */
static void subject(char *buf, size_t len, const char *owner, const char *path)
{
    if (owner)
        snprintf(buf, len, "%s: backing file %s", owner, path);
    else
        snprintf(buf, len, "%s", path);
}

/*
 * Is the file open as @pfd under @dir, once both are resolved?  0 when it
 * is, a negative errno with @err set when not or when it cannot be told.
 */
static int check_beneath(int pfd, const char *dir, const char *who, char *err, size_t errlen)
{
    char link[64], real[PATH_MAX], *droot;
    size_t n;
    ssize_t len;
    int r = 0;

    droot = realpath(dir, NULL);
    if (!droot)
        return qed_errf(err, errlen, -errno, "%s: cannot resolve the backing directory %s: %s",
                        who, dir, strerror(errno));
    snprintf(link, sizeof(link), "/proc/self/fd/%d", pfd);
    len = readlink(link, real, sizeof(real));
    if (len < 0 || (size_t)len >= sizeof(real)) {
        r = qed_errf(err, errlen, len < 0 ? -errno : -ENAMETOOLONG,
                     "%s: cannot tell where it resolves (%s: %s), so it cannot be confined to "
                     "%s", who, link, len < 0 ? strerror(errno) : "path too long", dir);
        goto out;
    }
    real[len] = '\0';
    n = strlen(droot);
    /* "/" allows everything; otherwise the directory itself plus a slash. */
    if (strcmp(droot, "/") != 0 && (strncmp(real, droot, n) != 0 || real[n] != '/'))
        r = qed_errf(err, errlen, -EPERM,
                     "%s resolves to %s, outside %s, the directory backing files are confined "
                     "to", who, real, droot);
out:
    free(droot);
    return r;
}

/* Step 2: open the inode @pfd refers to for I/O, without blocking; *@st
 * (the checked inode's) becomes the fstat of the descriptor opened. */
static int reopen_checked(int pfd, const char *path, int flags, struct stat *st,
                          const char *who, int *out, char *err, size_t errlen)
{
    char link[64];
    struct stat st2;
    int fd, fl;

    flags |= O_NONBLOCK | O_NOCTTY | O_CLOEXEC;
    snprintf(link, sizeof(link), "/proc/self/fd/%d", pfd);
    fd = open(link, flags);
    if (fd < 0 && errno == ENOENT && access("/proc/self/fd", F_OK) < 0)
        fd = open(path, flags); /* no /proc: by name, and compared below */
    if (fd < 0 && errno == EINVAL && (flags & O_DIRECT))
        return qed_errf(err, errlen, -EINVAL,
                        "%s: cannot open with O_DIRECT (cache=none): its file system does "
                        "not support direct I/O (tmpfs before Linux 6.6 does not); use "
                        "--cache=writeback or unsafe",
                        who);
    if (fd < 0)
        return qed_errf(err, errlen, -errno, "%s: cannot open: %s", who, strerror(errno));
    if (fstat(fd, &st2) < 0) {
        int e = errno;
        close(fd);
        return qed_errf(err, errlen, -e, "%s: cannot stat: %s", who, strerror(e));
    }
    if (st2.st_dev != st->st_dev || st2.st_ino != st->st_ino) {
        close(fd);
        return qed_errf(err, errlen, -EAGAIN, "%s: the file changed while it was opened", who);
    }
    fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        int e = errno;
        close(fd);
        return qed_errf(err, errlen, -e, "%s: cannot clear O_NONBLOCK: %s", who, strerror(e));
    }
    *st = st2;
    *out = fd;
    return 0;
}

int qed_file_open(const char *path, int flags, const char *owner, const char *confine_dir,
                  int *out, struct stat *st, char *err, size_t errlen)
{
    char who[PATH_MAX + 64];
    int pfd, r;

    subject(who, sizeof(who), owner, path);
    pfd = open(path, O_PATH | O_CLOEXEC);
    if (pfd < 0 && owner)
        return qed_errf(err, errlen, -errno, "%s: cannot open backing file %s: %s", owner, path,
                        strerror(errno));
    if (pfd < 0)
        return qed_errf(err, errlen, -errno, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(pfd, st) < 0) {
        r = qed_errf(err, errlen, -errno, "%s: cannot stat: %s", who, strerror(errno));
        goto out;
    }
    if (confine_dir) {
        r = check_beneath(pfd, confine_dir, who, err, errlen);
        if (r < 0)
            goto out;
    }
    if (!S_ISREG(st->st_mode) && !S_ISBLK(st->st_mode)) {
        r = qed_errf(err, errlen, -EINVAL,
                     "%s is %s: only a regular file or a block device can hold %s", who,
                     file_kind(st->st_mode), owner ? "a backing image" : "an image");
        goto out;
    }
    r = reopen_checked(pfd, path, flags, st, who, out, err, errlen);
out:
    close(pfd);
    return r;
}

int qed_cache_open_flags(const struct qed_open_opts *opts)
{
    return opts->cache == QED_CACHE_NONE ? O_DIRECT : 0;
}

int qed_cache_io_flags(int fd, const struct qed_open_opts *opts, const char *path,
                       unsigned *flags, char *err, size_t errlen)
{
    char why[160];
    int r;

    *flags = 0;
    if (opts->cache == QED_CACHE_NONE) {
        r = qed_dio_check(fd, why, sizeof(why));
        if (r < 0)
            return qed_errf(err, errlen, r, "%s: cannot use cache=none: %s", path, why);
        /* Never QED_IO_F_MEMORY: that path copies through the page cache
         * on the loop, which is what O_DIRECT is asked to bypass. */
        *flags = QED_IO_F_DIRECT;
        return 0;
    }
    if (opts->cache == QED_CACHE_UNSAFE)
        *flags |= QED_IO_F_NOSYNC;
    if (qed_fd_in_memory(fd))
        *flags |= QED_IO_F_MEMORY;
    return 0;
}
