/*
 * qed-io.h - internal interface between the QED core and its file I/O
 * backends (io_uring, thread pool, test).
 *
 * The core fills a struct qed_io and calls qed_aio_submit().  The backend runs
 * the operation off the loop and later calls qed_aio_complete() from a loop
 * callback, which runs io->done exactly once.  done never runs from inside
 * qed_aio_submit().
 */
#ifndef QED_IO_H
#define QED_IO_H

#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <ev.h>

#include "qed-list.h"
#include "qed.h"

/* ---- One I/O, the engine and its backends ---- */

/*
 * The longest single copy of file data the loop thread may do: 128 KiB.
 * Why a bound: a copy on the loop stalls every connection it serves (a
 * 32 MiB copy holds it for milliseconds), while the hand-off to a worker
 * costs about the same whatever the size, so only small copies pay for
 * staying on the loop.  Every path that copies on the loop keeps to it:
 *  - the memory-file path (qed_aio_run_memory, aio.c) runs only transfers
 *    up to this size on the loop;
 *  - io_uring (aio-uring.c) tries RWF_NOWAIT inline only up to it, and a
 *    buffered read or write above it is handed to io_uring's workers
 *    (IOSQE_ASYNC), so that the kernel's own inline attempt inside
 *    io_uring_enter does not copy it on the loop;
 *  - O_DIRECT bounce copies (direct-io.c) run in steps of at most this
 *    size, one step per loop turn.
 * qed_aio_loop_copy_note records the largest such copy (qed-io-test.h).
 */
#define QED_IO_LOOP_COPY_MAX (128u * 1024)

enum qed_io_op {
    QED_IO_READ,   /* preadv; a read past EOF is zero-filled, res = full length */
    QED_IO_WRITE,  /* pwritev; short writes are retried, res = full length */
    QED_IO_FSYNC,  /* fdatasync(fd) */
    QED_IO_PUNCH,  /* fallocate(PUNCH_HOLE|KEEP_SIZE) over [offset, offset+length) */
    QED_IO_ALLOCATE, /* fallocate(0, or KEEP_SIZE with QED_IO_F_KEEP_SIZE) over the range */
};

struct qed_io {
    /* Filled by the submitter */
    enum qed_io_op op;
    int fd;
    struct iovec *iov;       /* READ/WRITE; the backend may modify it while retrying */
    int iovcnt;
    uint64_t offset;
    uint64_t length;         /* PUNCH/ALLOCATE: bytes; READ/WRITE: set by qed_aio_submit to sum(iov) */
    void (*done)(struct qed_io *io);
    void *opaque;
    unsigned flags;          /* QED_IO_F_* */

    /* Set before done runs */
    int64_t res;             /* bytes transferred (== length) on success, or -errno */

    /* Owned by the engine / backend */
    struct qed_io *next;
    uint64_t seq;            /* submission number, unique per engine */
    uint64_t done_bytes;     /* progress for retried short transfers */
};

/*
 * The file lives in memory (tmpfs, ramfs): its reads and writes are copies
 * to and from the page cache with no device behind them, so the io_uring and
 * thread-pool backends run them on the loop thread (see qed_aio_run_memory).
 */
#define QED_IO_F_MEMORY 1u
/*
 * The file is open with O_DIRECT (cache=none): qed_aio_submit passes I/O
 * that is not aligned to QED_DIO_ALIGN (offset, length, each buffer) through
 * bounce buffers, and serializes writes per block range so that the
 * read-modify-write of a partial block never loses a neighbour's bytes
 * (direct-io.c).  Never together with QED_IO_F_MEMORY: tmpfs refuses O_DIRECT.
 */
#define QED_IO_F_DIRECT 2u
/*
 * FSYNC is acknowledged at once without fdatasync (cache=unsafe): nothing
 * is made durable.  The engine's own set-up and close paths call fdatasync
 * directly and are not affected.
 */
#define QED_IO_F_NOSYNC 4u

struct qed_dio;
/* QED_IO_ALLOCATE: reserve the blocks without changing the file size. */
#define QED_IO_F_KEEP_SIZE 8u

struct qed_aio_ops {
    const char *name;
    /* Start @io.  Must not call done.  May fail only by completing later with res < 0. */
    void (*submit)(qed_aio *aio, struct qed_io *io);
    /* Release backend state; nothing is in flight. */
    void (*destroy)(qed_aio *aio);
    /* qed_aio_set_max_workers (qed.h); NULL: the backend has no such workers. */
    int (*set_max_workers)(qed_aio *aio, unsigned bounded);
};

/* A deferred call, run on a later turn of the loop (see qed_aio_defer). */
struct qed_defer {
    void (*fn)(struct qed_defer *d);
    struct qed_defer *next;
};

struct qed_aio {
    const struct qed_aio_ops *ops;
    struct ev_loop *loop;
    void *priv;              /* backend state */
    unsigned inflight;       /* I/Os submitted and not completed */
    uint64_t next_seq;

    /* Deferred calls: a max-priority idle watcher drains them each turn. */
    ev_idle defer_idle;
    struct qed_defer *defer_head, *defer_tail;

    bool memory_inline;      /* qed_aio_run_memory; off with QED_AIO_MEMORY=0 */

    /* I/O finished on the loop thread, completed on the next turn */
    struct qed_io *ready_head, *ready_tail;
    struct qed_defer ready_defer;
    bool ready_scheduled;
    bool *freed;             /* set by qed_aio_free while deferred calls run */

    /* O_DIRECT writes and punches (direct-io.c): running, and waiting for an
     * overlapping one to finish (in submission order) */
    struct qed_dio *dio_active, *dio_waiting;

    /* The largest copy of file data done (or, for io_uring, allowed to be
     * done inline by the kernel) on the loop thread (qed_aio_loop_copy_note) */
    uint64_t loop_copy_max;
};

/* ---- The engine, deferred calls, memory files (aio.c) ---- */

/** qed_io_list_push - append @io to the singly linked list @head .. @tail. */
static inline void qed_io_list_push(struct qed_io **head, struct qed_io **tail, struct qed_io *io)
{
    QED_FIFO_APPEND(*head, *tail, io, next);
}

/*
 * The completion eventfd of the io_uring and thread-pool backends (aio.c):
 * whoever finishes I/O off the loop signals it, and an ev_io watcher on the
 * loop reaps the completions.  The watcher is unref'd while nothing is in
 * flight, so that an idle engine does not keep ev_run() from returning.
 */
struct qed_aio_wake {
    int fd;                  /* the eventfd; -1 when not open */
    ev_io w;                 /* its watcher on the loop; data is the engine */
    bool refd;               /* w keeps the loop alive: I/O is in flight */
};

/** qed_aio_wake_open - create the eventfd.  Returns 0 or a negative errno (logged). */
int qed_aio_wake_open(struct qed_aio_wake *k);
/** qed_aio_wake_start - watch the eventfd with @cb (w.data = @aio), unref'd. */
void qed_aio_wake_start(qed_aio *aio, struct qed_aio_wake *k,
                        void (*cb)(struct ev_loop *loop, ev_io *w, int revents));
/** qed_aio_wake_ref - I/O goes in flight: the watcher keeps the loop alive. */
void qed_aio_wake_ref(qed_aio *aio, struct qed_aio_wake *k);
/** qed_aio_wake_unref - nothing is in flight any more. */
void qed_aio_wake_unref(qed_aio *aio, struct qed_aio_wake *k);
/** qed_aio_wake_read - reset the eventfd (in the watcher's callback); @what names it. */
void qed_aio_wake_read(struct qed_aio_wake *k, const char *what);
/** qed_aio_wake_close - stop the watcher and close the eventfd (either may be absent). */
void qed_aio_wake_close(qed_aio *aio, struct qed_aio_wake *k);

/**
 * qed_io_set - fill @io for one operation (every other field zeroed): the
 * submitter's side of struct qed_io in one call.
 */
static inline void qed_io_set(struct qed_io *io, enum qed_io_op op, int fd, unsigned flags,
                              struct iovec *iov, int iovcnt, uint64_t offset, uint64_t length,
                              void (*done)(struct qed_io *io), void *opaque)
{
    *io = (struct qed_io){.op = op, .fd = fd, .flags = flags, .iov = iov, .iovcnt = iovcnt,
                          .offset = offset, .length = length, .done = done, .opaque = opaque};
}

/** qed_aio_submit - count @io as in flight, compute its length, and pass it to the backend. */
void qed_aio_submit(qed_aio *aio, struct qed_io *io);

/**
 * qed_aio_complete - called by a backend, from a loop callback, when @io has
 * finished with io->res set.  Runs io->done.
 */
void qed_aio_complete(qed_aio *aio, struct qed_io *io);

/**
 * qed_aio_defer - run d->fn(d) on a later turn of the loop.  Used to deliver
 * completions that are ready during submission.
 */
void qed_aio_defer(qed_aio *aio, struct qed_defer *d);

/**
 * qed_aio_complete_later - for a backend that finished @io (io->res set) on
 * the loop thread, inside its submit: complete it from the deferred calls
 * (on the next loop turn, or later in the current pass of deferred calls
 * when the delivery is already queued there), in the order of these calls,
 * so that done never runs inside the submit.
 */
void qed_aio_complete_later(qed_aio *aio, struct qed_io *io);

/**
 * qed_aio_run_memory - for a backend's submit: when @io has QED_IO_F_MEMORY
 * (and the fast path is on), perform it now on the calling (loop) thread and
 * complete it on a later loop turn; return true.  Otherwise return false and
 * the backend runs @io as usual.
 */
bool qed_aio_run_memory(qed_aio *aio, struct qed_io *io);

/**
 * qed_aio_loop_copy_note - the loop thread copies (or lets the kernel copy,
 * inside a system call it makes) @n bytes of file data at once: keep the
 * largest such @n for qed_aio_test_loop_copy_max.  Every copy on the loop
 * must stay within QED_IO_LOOP_COPY_MAX.
 */
static inline void qed_aio_loop_copy_note(qed_aio *aio, uint64_t n)
{
    if (n > aio->loop_copy_max)
        aio->loop_copy_max = n;
}

/**
 * qed_fd_in_memory - true when @fd is a file on a memory file system (tmpfs,
 * ramfs), whose I/O may carry QED_IO_F_MEMORY.
 */
bool qed_fd_in_memory(int fd);

/**
 * qed_aio_submit_backend - qed_aio_submit without the cache-mode handling
 * (QED_IO_F_DIRECT, QED_IO_F_NOSYNC): for direct-io.c's own aligned I/O.
 */
void qed_aio_submit_backend(qed_aio *aio, struct qed_io *io);

/* ---- O_DIRECT: alignment, bounce buffers, per-block write order (direct-io.c) ---- */

/*
 * What this library aligns O_DIRECT I/O to.  Why 4096 and 512: a device's
 * logical block is 512 or 4096 bytes almost everywhere, and buffer
 * addresses need the DMA alignment (511 on most devices); being
 * conservative costs one bounce copy at worst.  qed_dio_check refuses a
 * file that needs more.
 */
#define QED_DIO_ALIGN 4096u
#define QED_DIO_MEM_ALIGN 512u

/**
 * qed_dio_check - can @fd (open with O_DIRECT) be driven with QED_DIO_ALIGN
 * offsets and lengths and QED_DIO_MEM_ALIGN buffers?  Asks the device
 * (ioctl BLKSSZGET on a block device; statx STATX_DIOALIGN on a file when
 * the kernel has it).  Returns 0, or -EINVAL with @why filled.
 */
int qed_dio_check(int fd, char *why, size_t whylen);

/** qed_dio_aligned - is @io (READ/WRITE) aligned for O_DIRECT: offset, length, each buffer? */
bool qed_dio_aligned(const struct qed_io *io);

/**
 * qed_dio_submit - for qed_aio_submit, @io with QED_IO_F_DIRECT: take it
 * (bounce, read-modify-write, write ordering) and return true, or return
 * false when the backend may run it as it is (an aligned read, a flush).
 */
bool qed_dio_submit(qed_aio *aio, struct qed_io *io);

/**
 * qed_dio_eof - for a backend, after a short read: a QED_IO_F_DIRECT read
 * whose next offset is not block aligned stopped at the end of the file
 * (O_DIRECT reads are short only there), and must not be retried at that
 * offset (O_DIRECT refuses it with EINVAL): the rest reads as zeros.
 */
static inline bool qed_dio_eof(const struct qed_io *io)
{
    return (io->flags & QED_IO_F_DIRECT) && io->op == QED_IO_READ &&
           ((io->offset + io->done_bytes) % QED_DIO_ALIGN) != 0;
}

/**
 * qed_fd_reserve_pays - true when @fd is on a file system where fallocate
 * is cheap and makes later overwrites of the range safe from ENOSPC (ext4,
 * XFS).  Not tmpfs (pages would be taken early for nothing), nor btrfs (an
 * overwrite is copy-on-write, so a reservation does not keep its promise).
 */
bool qed_fd_reserve_pays(int fd);

/* ---- Backends (aio-uring.c, aio-threads.c, aio-test.c) ---- */

/* Constructors: set aio->ops and aio->priv, return 0 or -errno. */
int qed_aio_uring_init(qed_aio *aio);
int qed_aio_threads_init(qed_aio *aio);
int qed_aio_test_init(qed_aio *aio);

/* ---- Blocking I/O (io-sync.c) ---- */

/**
 * qed_io_run_sync - perform @io synchronously on the calling thread with
 * preadv/pwritev/fdatasync/fallocate, with the short-transfer rules above,
 * and set io->res.  Does not call done.  Shared by the thread pool and the
 * test backend.
 */
void qed_io_run_sync(struct qed_io *io);

/** qed_io_falloc_mode - the fallocate(2) mode of a PUNCH or ALLOCATE @io (io-sync.c). */
int qed_io_falloc_mode(const struct qed_io *io);

/**
 * qed_pread_full - read @len bytes at @off from @fd, blocking, retrying short
 * reads and EINTR; what lies past the end of the file reads as zeros.  For
 * the set-up paths (open, create, check, close), never on the loop's hot
 * path.  Returns 0 or a negative errno.
 */
int qed_pread_full(int fd, void *buf, size_t len, uint64_t off);
/** qed_pwrite_full - write all of @buf at @off, as qed_pread_full reads; -EIO if no progress. */
int qed_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);

/* iovec bookkeeping for retried short transfers, shared by the backends */

/** qed_iov_first - index of the first non-empty iovec in @iov[0..@cnt). */
int qed_iov_first(const struct iovec *iov, int cnt);
/** qed_iov_consume - advance the vector past @n transferred bytes. */
void qed_iov_consume(struct iovec *iov, int cnt, size_t n);
/** qed_iov_zero_rest - zero-fill what remains of a read vector and mark it done. */
void qed_iov_zero_rest(struct iovec *iov, int cnt);

#endif /* QED_IO_H */
