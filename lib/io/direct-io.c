/*
 * direct-io.c - O_DIRECT for the asynchronous engine (cache=none): the
 * alignment check of a file, bounce buffers for I/O that is not aligned,
 * read-modify-write of partial blocks, and the per-block-range order of
 * writes that keeps that read-modify-write safe.
 *
 * O_DIRECT refuses (EINVAL) an offset, a length or a buffer address that is
 * not aligned to the device.  The engine issues such I/O all the time (a
 * client writes 512 bytes; the header is 64 bytes), so qed_aio_submit sends
 * every QED_IO_F_DIRECT read, write and punch here:
 *  - an aligned read goes to the backend unchanged;
 *  - another read reads the aligned blocks around it into a bounce buffer
 *    and copies its part out;
 *  - a write (or punch) first takes its block range, widened to
 *    QED_DIO_ALIGN: it waits while an earlier write or punch overlapping that
 *    range is running or waiting.  Why all writes and not only the partial
 *    ones: a read-modify-write writes back the bytes of its edge blocks that
 *    it read, and an overlapping write that completed between its read and
 *    its write would lose them (two 512-byte writes into one 4 KiB block
 *    must both survive).  Then an aligned write goes to the backend as it is;
 *    one with unaligned buffers is copied into a bounce buffer; one with an
 *    unaligned offset or length reads its first and last block (once when
 *    they are the same block), copies its bytes in, and writes whole blocks.
 * Bounce copies run on the loop thread, so they are cut into steps of at
 * most QED_IO_LOOP_COPY_MAX (qed-io.h), one step per loop turn (a deferred
 * call each): a 32 MiB unaligned request never stalls the loop for one
 * long copy.  A write holds its block range through all of its steps, so
 * the write order above is unchanged.
 * Knows nothing of QED: only files, offsets and blocks.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <linux/fs.h>

#include "qed-io.h"
#include "qed-log.h"

enum dio_step { DIO_PASS, DIO_READ, DIO_HEAD, DIO_TAIL, DIO_WRITE };

/* One O_DIRECT I/O taken from its submitter (the outer io). */
struct qed_dio {
    qed_aio *aio;
    struct qed_io *outer;
    struct qed_io inner;       /* the step in flight */
    struct iovec iov;
    enum dio_step step;
    char *buf;                 /* bounce buffer for [a0, a1), or NULL */
    uint64_t a0, a1;           /* the range widened to whole blocks */
    bool locked;               /* a write or punch: on dio_active */
    struct qed_dio *next;      /* on dio_active or dio_waiting */

    /* The bounce copy in progress (dio_copy_step) */
    struct qed_defer copy_defer; /* runs the next step on a later loop turn */
    uint64_t copied;           /* bytes of the outer vector copied so far */
    bool to_buf;               /* into the bounce buffer (a write), or out of it */
};

#define ALIGN_DOWN(x) ((x) / QED_DIO_ALIGN * QED_DIO_ALIGN)
#define ALIGN_UP(x) ALIGN_DOWN((x) + QED_DIO_ALIGN - 1)

int qed_dio_check(int fd, char *why, size_t whylen)
{
    struct stat st;
    unsigned long need = 0, mem = 0;

    if (fstat(fd, &st) < 0)
        return snprintf(why, whylen, "cannot stat: %s", strerror(errno)), -errno;
    if (S_ISBLK(st.st_mode)) {
        int bs = 0;
        if (ioctl(fd, BLKSSZGET, &bs) == 0 && bs > 0)
            need = (unsigned long)bs;
    }
#if defined(STATX_DIOALIGN)
    {
        struct statx sx;
        if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
            (sx.stx_mask & STATX_DIOALIGN)) {
            if (sx.stx_dio_offset_align > need)
                need = sx.stx_dio_offset_align;
            mem = sx.stx_dio_mem_align;
        }
    }
#endif
    if (need > QED_DIO_ALIGN || QED_DIO_ALIGN % (need ? need : 1) != 0 ||
        mem > QED_DIO_MEM_ALIGN) {
        snprintf(why, whylen,
                 "direct I/O needs %lu-byte offsets and %lu-byte buffers here, more than the "
                 "%u and %u supported", need, mem, QED_DIO_ALIGN, QED_DIO_MEM_ALIGN);
        return -EINVAL;
    }
    return 0;
}

bool qed_dio_aligned(const struct qed_io *io)
{
    if (io->offset % QED_DIO_ALIGN || io->length % QED_DIO_ALIGN)
        return false;
    for (int i = 0; i < io->iovcnt; i++)
        if ((uintptr_t)io->iov[i].iov_base % QED_DIO_MEM_ALIGN ||
            io->iov[i].iov_len % QED_DIO_ALIGN)
            return false;
    return true;
}

static void dio_done(struct qed_io *io);
static void dio_step(struct qed_dio *d, enum dio_step step, enum qed_io_op op, uint64_t off,
                     uint64_t len);
static void dio_finish(struct qed_dio *d, int64_t res);

/* Copy up to QED_IO_LOOP_COPY_MAX bytes of the outer vector, from d->copied
 * on, into the bounce buffer or out of it.  Returns the bytes copied. */
static uint64_t dio_copy_some(struct qed_dio *d)
{
    uint64_t skip = d->copied, left = QED_IO_LOOP_COPY_MAX, n = 0;
    char *p = d->buf + (d->outer->offset - d->a0) + d->copied;

    for (int i = 0; i < d->outer->iovcnt && left; i++) {
        struct iovec *v = &d->outer->iov[i];
        uint64_t take;

        if (skip >= v->iov_len) {
            skip -= v->iov_len;
            continue;
        }
        take = v->iov_len - skip < left ? v->iov_len - skip : left;
        if (d->to_buf)
            memcpy(p, (char *)v->iov_base + skip, take);
        else
            memcpy((char *)v->iov_base + skip, p, take);
        p += take;
        n += take;
        left -= take;
        skip = 0;
    }
    qed_aio_loop_copy_note(d->aio, n);
    return n;
}

/* One step of the bounce copy; the next runs on a later loop turn.  When the
 * copy is whole: a write writes the bounce buffer, a read completes. */
static void dio_copy_step(struct qed_dio *d)
{
    d->copied += dio_copy_some(d);
    if (d->copied < d->outer->length) {
        qed_aio_defer(d->aio, &d->copy_defer);
        return;
    }
    if (d->to_buf)
        dio_step(d, DIO_WRITE, QED_IO_WRITE, d->a0, d->a1 - d->a0);
    else
        dio_finish(d, (int64_t)d->outer->length);
}

static void dio_copy_defer_fn(struct qed_defer *df)
{
    dio_copy_step((struct qed_dio *)((char *)df - offsetof(struct qed_dio, copy_defer)));
}

/* Copy the outer vector into the bounce buffer (@to_buf) and write it, or
 * out of it and complete: in bounded steps (dio_copy_step). */
static void dio_copy(struct qed_dio *d, bool to_buf)
{
    d->copied = 0;
    d->to_buf = to_buf;
    d->copy_defer.fn = dio_copy_defer_fn;
    dio_copy_step(d);
}

/* Run the next step: @op on [@off, @off + @len) of the bounce buffer. */
static void dio_step(struct qed_dio *d, enum dio_step step, enum qed_io_op op, uint64_t off,
                     uint64_t len)
{
    d->step = step;
    d->iov = (struct iovec){.iov_base = d->buf + (off - d->a0), .iov_len = len};
    qed_io_set(&d->inner, op, d->outer->fd, d->outer->flags, &d->iov, 1, off, len, dio_done, d);
    qed_aio_submit_backend(d->aio, &d->inner);
}

/* Does @a overlap @b (both on the same file)? */
static bool dio_overlap(const struct qed_dio *a, const struct qed_dio *b)
{
    return a->outer->fd == b->outer->fd && a->a0 < b->a1 && b->a0 < a->a1;
}

/* Does @d overlap any of the list @l (up to, not including, @stop)? */
static bool dio_overlaps_list(const struct qed_dio *d, const struct qed_dio *l,
                              const struct qed_dio *stop)
{
    for (; l && l != stop; l = l->next)
        if (dio_overlap(d, l))
            return true;
    return false;
}

/* The first step of @d, which holds its range if it needs one. */
static void dio_start(struct qed_dio *d)
{
    struct qed_io *o = d->outer;

    if (d->step == DIO_PASS) {
        /* An aligned write or a punch: the backend runs the outer io's own
         * parameters through inner, so that completion comes back here. */
        qed_io_set(&d->inner, o->op, o->fd, o->flags, o->iov, o->iovcnt, o->offset, o->length,
                   dio_done, d);
        qed_aio_submit_backend(d->aio, &d->inner);
    } else if (d->step == DIO_READ) {
        dio_step(d, DIO_READ, QED_IO_READ, d->a0, d->a1 - d->a0);
    } else if (o->offset != d->a0) {
        dio_step(d, DIO_HEAD, QED_IO_READ, d->a0, QED_DIO_ALIGN);
    } else if (o->offset + o->length != d->a1) {
        dio_step(d, DIO_TAIL, QED_IO_READ, d->a1 - QED_DIO_ALIGN, QED_DIO_ALIGN);
    } else {
        dio_copy(d, true); /* then writes */
    }
}

/* Release @d's range and start the waiting writes it no longer blocks, in order. */
static void dio_unlock(struct qed_dio *d)
{
    qed_aio *aio = d->aio;
    struct qed_dio **pp = &aio->dio_active, *w, *prev = NULL;

    while (*pp != d)
        pp = &(*pp)->next;
    *pp = d->next;
    w = aio->dio_waiting;
    while (w) {
        struct qed_dio *next = w->next;
        if (!dio_overlaps_list(w, aio->dio_active, NULL) &&
            !dio_overlaps_list(w, aio->dio_waiting, w)) {
            if (prev)
                prev->next = next;
            else
                aio->dio_waiting = next;
            w->next = aio->dio_active;
            aio->dio_active = w;
            dio_start(w);
        } else {
            prev = w;
        }
        w = next;
    }
}

/* Finish @d with @res: release its range, then complete the outer io. */
static void dio_finish(struct qed_dio *d, int64_t res)
{
    struct qed_io *outer = d->outer;
    qed_aio *aio = d->aio;

    if (d->locked)
        dio_unlock(d);
    free(d->buf);
    free(d);
    outer->res = res;
    qed_aio_complete(aio, outer);
}

static void dio_done(struct qed_io *io)
{
    struct qed_dio *d = io->opaque;
    struct qed_io *o = d->outer;

    if (io->res < 0 || d->step == DIO_PASS) {
        dio_finish(d, io->res < 0 ? io->res : (int64_t)o->length);
        return;
    }
    switch (d->step) {
    case DIO_READ:
        dio_copy(d, false); /* then completes */
        return;
    case DIO_HEAD:
        /* The last block still to read, unless the head was it. */
        if (o->offset + o->length != d->a1 && d->a1 - d->a0 > QED_DIO_ALIGN) {
            dio_step(d, DIO_TAIL, QED_IO_READ, d->a1 - QED_DIO_ALIGN, QED_DIO_ALIGN);
            return;
        }
        /* fall through */
    case DIO_TAIL:
        dio_copy(d, true); /* then writes */
        return;
    default:
        dio_finish(d, (int64_t)o->length);
    }
}

bool qed_dio_submit(qed_aio *aio, struct qed_io *io)
{
    struct qed_dio *d;
    bool aligned;

    if ((io->op != QED_IO_READ && io->op != QED_IO_WRITE && io->op != QED_IO_PUNCH) ||
        io->length == 0)
        return false;
    aligned = io->op == QED_IO_PUNCH || qed_dio_aligned(io);
    if (io->op == QED_IO_READ && aligned)
        return false;
    d = calloc(1, sizeof(*d));
    if (!d) {
        io->res = -ENOMEM;
        qed_aio_complete_later(aio, io);
        return true;
    }
    d->aio = aio;
    d->outer = io;
    d->a0 = ALIGN_DOWN(io->offset);
    d->a1 = ALIGN_UP(io->offset + io->length);
    d->step = aligned ? DIO_PASS : io->op == QED_IO_READ ? DIO_READ : DIO_WRITE;
    if (!aligned && posix_memalign((void **)&d->buf, QED_DIO_ALIGN, d->a1 - d->a0) != 0) {
        free(d);
        io->res = -ENOMEM;
        qed_aio_complete_later(aio, io);
        return true;
    }
    if (io->op == QED_IO_READ) {
        dio_start(d);
        return true;
    }
    d->locked = true;
    if (dio_overlaps_list(d, aio->dio_active, NULL) ||
        dio_overlaps_list(d, aio->dio_waiting, NULL)) {
        struct qed_dio **pp = &aio->dio_waiting;
        while (*pp)
            pp = &(*pp)->next;
        *pp = d; /* last: writes start in submission order */
        return true;
    }
    d->next = aio->dio_active;
    aio->dio_active = d;
    dio_start(d);
    return true;
}
