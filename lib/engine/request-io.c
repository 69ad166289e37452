/*
 * request-io.c - submitting the I/O of a request: to the image file, to a
 * backing file or image, and the shared buffer of zeros.  Every completion
 * resumes the request's state machine (qed_req_resume).
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <string.h>

#include "qed-image.h"
#include "request-internal.h"

/* Shared source of zeros for zero writes; .bss costs no memory until read. */
uint8_t qed_zero_buf[QED_ZERO_BUF_SIZE];

/* ---- I/O helpers ---- */

static void req_io_done(struct qed_io *io)
{
    struct qed_req *r = io->opaque;

    if (io->op == QED_IO_FSYNC) {
        /* Every flush answers through the image's latch: after one failed,
         * none may report success (flush-latch.c, qed_image_flush_result). */
        int res = qed_image_flush_result(r->img, (int)io->res);
        if (res < 0 && io->res >= 0 && !r->err)
            r->err = res; /* latched: logged once, when it failed */
    }
    if (io->res < 0 && !r->err) {
        r->err = (int)io->res;
        qed_log(QED_LOG_ERROR, "%s: %s I/O at %" PRIu64 " failed: %s", r->img->path,
                io->op == QED_IO_READ    ? "read"
                : io->op == QED_IO_WRITE ? "write"
                : io->op == QED_IO_FSYNC ? "flush"
                                         : "punch",
                io->offset, strerror((int)-io->res));
    }
    r->pending--;
    qed_req_resume(r);
}

void qed_req_sub_done(void *opaque, int ret)
{
    struct qed_req *r = opaque;

    if (ret < 0 && !r->err)
        r->err = ret;
    r->pending--;
    qed_req_resume(r);
}

void qed_req_submit_io(struct qed_req *r, int slot, enum qed_io_op op, int fd, struct iovec *iov,
                       int iovcnt, uint64_t offset, uint64_t length)
{
    struct qed_io *io = &r->io[slot];
    unsigned flags = fd == r->img->fd ? r->img->fd_io_flags : r->img->backing_io_flags;

    if (op == QED_IO_ALLOCATE)
        flags |= QED_IO_F_KEEP_SIZE; /* why: see "Reserving" in request-alloc.c */

    qed_io_set(io, op, fd, flags, iov, iovcnt, offset, length, req_io_done, r);
    r->pending++;
    qed_image_submit_io(r->img, io); /* fdatasyncs one at a time (flush-latch.c) */
}

void qed_req_submit_rw(struct qed_req *r, int slot, enum qed_io_op op, void *buf, uint64_t len,
                       uint64_t host)
{
    r->iov2[slot].iov_base = buf;
    r->iov2[slot].iov_len = len;
    qed_req_submit_io(r, slot, op, r->img->fd, &r->iov2[slot], 1, host, len);
}

/* Flush the image file (one fdatasync at a time, through the flush latch). */
static void req_submit_fsync(struct qed_req *r)
{
    qed_req_submit_io(r, 0, QED_IO_FSYNC, r->img->fd, NULL, 0, 0, 0);
}

int qed_req_iov_add_zeros(struct qed_req *r, int n, uint64_t len)
{
    while (len) {
        uint64_t piece = qed_min64(len, QED_ZERO_BUF_SIZE);
        r->iov[n].iov_base = qed_zero_buf;
        r->iov[n].iov_len = piece;
        n++;
        len -= piece;
    }
    return n;
}

int qed_req_iov_add_source(struct qed_req *r, int n)
{
    if (r->buf) {
        r->iov[n].iov_base = r->buf + (r->cur_pos - r->off);
        r->iov[n].iov_len = r->run_len;
        return n + 1;
    }
    return qed_req_iov_add_zeros(r, n, r->run_len);
}

/*
 * Read guest range [pos, pos+len) of the backing file into @dst; what lies
 * past the backing file's end reads as zeros.
 */
void qed_req_backing_read(struct qed_req *r, int slot, uint64_t pos, uint8_t *dst, uint64_t len)
{
    struct qed_image *img = r->img;
    uint64_t n = pos >= img->backing_size ? 0 : qed_min64(len, img->backing_size - pos);

    if (n < len)
        memset(dst + n, 0, len - n);
    if (n == 0)
        return;
    if (img->backing_kind == BACKING_RAW) {
        r->iov2[slot].iov_base = dst;
        r->iov2[slot].iov_len = n;
        qed_req_submit_io(r, slot, QED_IO_READ, img->backing_fd, &r->iov2[slot], 1, pos, n);
    } else {
        int rc;
        r->pending++;
        rc = qed_read(img->backing, pos, dst, n, qed_req_sub_done, r);
        if (rc < 0) {
            r->pending--;
            if (!r->err)
                r->err = rc;
        }
    }
}


enum qed_rs_next qed_rs_wait_fsync(struct qed_req *r, enum qed_req_state s)
{
    qed_req_set_state(r, s);
    req_submit_fsync(r);
    return QED_RS_STOP;
}

enum qed_rs_next qed_rs_wait_header_write(struct qed_req *r, enum qed_req_state s)
{
    struct qed_image *img = r->img;

    qed_header_encode(&img->h, img->hdr_raw);
    qed_req_set_state(r, s);
    qed_req_submit_rw(r, 0, QED_IO_WRITE, img->hdr_raw, QED_HEADER_BYTES, 0);
    return QED_RS_STOP;
}
