/*
 * io-sync.c - perform one struct qed_io synchronously on the calling thread.
 *
 * Used by the thread-pool backend (on its worker threads) and by the test
 * backend (on the loop thread).  The io_uring backend applies the same rules
 * to its completions: a read that reaches EOF is zero-filled and succeeds, a
 * short transfer continues where it stopped, EINTR is retried.
 *
 * Progress of a READ/WRITE is kept in io->done_bytes, and io->iov is
 * consumed in place: fully transferred entries get length 0 and the partly
 * transferred one is trimmed.  io->iov and io->iovcnt themselves are never
 * changed, so the submitter can still free its array.
 *
 * Also the blocking whole-buffer pread/pwrite of the engine's set-up paths
 * (open, create, check, close), through the same loop.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/uio.h>

#include "qed-io.h"
#include "qed-log.h"

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

/* Index of the first entry of @iov that still has bytes to transfer. */
int qed_iov_first(const struct iovec *iov, int cnt)
{
    int i = 0;

    while (i < cnt && iov[i].iov_len == 0)
        i++;
    return i;
}

/* Mark @n more bytes of @iov as transferred. */
void qed_iov_consume(struct iovec *iov, int cnt, size_t n)
{
    for (int i = 0; i < cnt && n > 0; i++) {
        size_t step = iov[i].iov_len < n ? iov[i].iov_len : n;

        iov[i].iov_base = (char *)iov[i].iov_base + step;
        iov[i].iov_len -= step;
        n -= step;
    }
}

/* Zero what is left of @iov (a read that hit end of file). */
void qed_iov_zero_rest(struct iovec *iov, int cnt)
{
    for (int i = 0; i < cnt; i++) {
        if (iov[i].iov_len)
            memset(iov[i].iov_base, 0, iov[i].iov_len);
        iov[i].iov_base = (char *)iov[i].iov_base + iov[i].iov_len;
        iov[i].iov_len = 0;
    }
}

static int64_t sync_rw(struct qed_io *io)
{
    const bool is_read = io->op == QED_IO_READ;

    while (io->done_bytes < io->length) {
        int first = qed_iov_first(io->iov, io->iovcnt);
        int cnt = io->iovcnt - first;
        off_t off = (off_t)(io->offset + io->done_bytes);
        ssize_t n;

        if (cnt <= 0) {
            /* length was computed from the vector, so this is a caller bug. */
            qed_log(QED_LOG_ERROR, "%s on fd %d: io length %llu exceeds its iovec",
                    is_read ? "read" : "write", io->fd, (unsigned long long)io->length);
            return -EINVAL;
        }
        /* Why cap the count: preadv refuses more than IOV_MAX entries, and a
         * capped call is just a short transfer that the loop continues. */
        if (cnt > IOV_MAX)
            cnt = IOV_MAX;
        if (is_read)
            n = preadv(io->fd, io->iov + first, cnt, off);
        else
            n = pwritev(io->fd, io->iov + first, cnt, off);
        if (n < 0) {
            int err = errno;

            if (err == EINTR)
                continue;
            qed_log(QED_LOG_DEBUG, "%s(fd %d, offset %llu, %llu bytes): %s",
                    is_read ? "preadv" : "pwritev", io->fd, (unsigned long long)off,
                    (unsigned long long)(io->length - io->done_bytes), strerror(err));
            return -err;
        }
        if (n == 0) {
            if (is_read) {
                /* End of file: the rest of the range reads as zeros. */
                qed_iov_zero_rest(io->iov + first, io->iovcnt - first);
                io->done_bytes = io->length;
                break;
            }
            /* A write that makes no progress would loop forever. */
            qed_log(QED_LOG_WARN, "pwritev(fd %d, offset %llu) wrote nothing", io->fd,
                    (unsigned long long)off);
            return -EIO;
        }
        io->done_bytes += (uint64_t)n;
        qed_iov_consume(io->iov + first, io->iovcnt - first, (size_t)n);
        if (io->done_bytes < io->length && qed_dio_eof(io)) {
            qed_iov_zero_rest(io->iov + first, io->iovcnt - first);
            io->done_bytes = io->length;
        }
    }
    return (int64_t)io->length;
}

static int64_t sync_fsync(struct qed_io *io)
{
    while (fdatasync(io->fd) < 0) {
        int err = errno;

        if (err == EINTR)
            continue;
        qed_log(QED_LOG_DEBUG, "fdatasync(fd %d): %s", io->fd, strerror(err));
        return -err;
    }
    return 0;
}

int qed_io_falloc_mode(const struct qed_io *io)
{
    if (io->op == QED_IO_PUNCH)
        return FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    return io->flags & QED_IO_F_KEEP_SIZE ? FALLOC_FL_KEEP_SIZE : 0;
}

/* PUNCH and ALLOCATE: one fallocate over the range. */
static int64_t sync_falloc(struct qed_io *io)
{
    int mode = qed_io_falloc_mode(io);

    /* fallocate refuses a zero length; an empty range is trivially done. */
    if (io->length == 0)
        return 0;
    while (fallocate(io->fd, mode, (off_t)io->offset, (off_t)io->length) < 0) {
        int err = errno;

        if (err == EINTR)
            continue;
        qed_log(QED_LOG_DEBUG, "fallocate(fd %d, mode %#x, offset %llu, %llu bytes): %s",
                io->fd, (unsigned)mode, (unsigned long long)io->offset,
                (unsigned long long)io->length, strerror(err));
        return -err;
    }
    return (int64_t)io->length;
}

/* One blocking transfer of @len bytes at @off through sync_rw's loop. */
static int rw_once(int fd, unsigned flags, enum qed_io_op op, void *buf, size_t len,
                   uint64_t off)
{
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    struct qed_io io = {.op = op, .fd = fd, .iov = &iov, .iovcnt = 1, .offset = off,
                        .length = len, .flags = flags};
    int64_t r = sync_rw(&io);

    return r < 0 ? (int)r : 0;
}

/*
 * rw_once, on a descriptor open with O_DIRECT (cache=none) too: what is not
 * aligned goes through an aligned bounce buffer, a write by reading the
 * whole blocks around it first.  The set-up paths that use this run with
 * no other I/O of the file in flight (or, for the header, none to its block).
 */
static int rw_full(int fd, enum qed_io_op op, void *buf, size_t len, uint64_t off)
{
    int fl = fcntl(fd, F_GETFL);
    uint64_t a0, a1;
    char *b;
    int r;

    if (fl < 0 || !(fl & O_DIRECT))
        return rw_once(fd, 0, op, buf, len, off);
    if (off % QED_DIO_ALIGN == 0 && len % QED_DIO_ALIGN == 0 &&
        (uintptr_t)buf % QED_DIO_MEM_ALIGN == 0)
        return rw_once(fd, QED_IO_F_DIRECT, op, buf, len, off);
    a0 = off / QED_DIO_ALIGN * QED_DIO_ALIGN;
    a1 = (off + len + QED_DIO_ALIGN - 1) / QED_DIO_ALIGN * QED_DIO_ALIGN;
    if (posix_memalign((void **)&b, QED_DIO_ALIGN, a1 - a0) != 0)
        return -ENOMEM;
    /* A write of whole blocks from an unaligned buffer reads nothing first. */
    r = op == QED_IO_WRITE && off == a0 && off + len == a1
            ? 0
            : rw_once(fd, QED_IO_F_DIRECT, QED_IO_READ, b, a1 - a0, a0);
    if (r == 0 && op == QED_IO_READ)
        memcpy(buf, b + (off - a0), len);
    if (r == 0 && op == QED_IO_WRITE) {
        memcpy(b + (off - a0), buf, len);
        r = rw_once(fd, QED_IO_F_DIRECT, QED_IO_WRITE, b, a1 - a0, a0);
    }
    free(b);
    return r;
}

int qed_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    return rw_full(fd, QED_IO_READ, buf, len, off);
}

int qed_pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
    return rw_full(fd, QED_IO_WRITE, (void *)buf, len, off);
}

void qed_io_run_sync(struct qed_io *io)
{
    switch (io->op) {
    case QED_IO_READ:
    case QED_IO_WRITE:
        io->res = sync_rw(io);
        break;
    case QED_IO_FSYNC:
        io->res = sync_fsync(io);
        break;
    case QED_IO_PUNCH:
    case QED_IO_ALLOCATE:
        io->res = sync_falloc(io);
        break;
    default:
        qed_log(QED_LOG_ERROR, "unknown I/O op %d", (int)io->op);
        io->res = -EINVAL;
    }
}
