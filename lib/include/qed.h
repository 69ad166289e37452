/*
 * qed.h - public API of libqed, the asynchronous QED (QEMU Enhanced Disk) library.
 *
 * Model
 * -----
 * Everything runs on one libev loop.  A qed_aio is the file I/O engine bound to
 * that loop (io_uring, a thread pool, or a test engine).  A qed_image is one
 * open QED file, plus its backing chain.
 *
 * Requests (read, write, write-zeroes, discard, flush, block-status, resize)
 * are submitted with qed_*() calls that never block.  A submit call returns
 * 0, in which case the completion callback will run exactly once, later, on
 * the loop, and never from inside the submitting call; or a negative errno,
 * in which case the callback never runs.
 *
 * Opening, creating and checking an image are blocking set-up operations: call
 * them before the loop runs, or from a thread that does not run the loop.
 *
 * Every function that can fail returns 0 or a negative errno.  Functions that
 * take an error buffer put a human-readable message there that names the file
 * and the problem.
 */
#ifndef QED_H
#define QED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ev_loop;

typedef struct qed_aio qed_aio;
typedef struct qed_image qed_image;

/* ---- Format constants ------------------------------------------------- */

/*
 * The geometry limits users need (qed-img validates its options with them).
 * lib/format/qed-format.h holds the whole format (magic, feature bits, the
 * same limits); the engine includes both, so a difference between the two
 * copies is a "macro redefined" error, never two silent values.  Users probe
 * a file's format with qed_probe_format(), not with the magic.
 */
#define QED_MIN_CLUSTER_SIZE (4u * 1024)
#define QED_MAX_CLUSTER_SIZE (64u * 1024 * 1024)
#define QED_DEFAULT_CLUSTER_SIZE (64u * 1024)
#define QED_MIN_TABLE_SIZE 1u
#define QED_MAX_TABLE_SIZE 16u
#define QED_DEFAULT_TABLE_SIZE 4u
#define QED_DEFAULT_CLEAN_DELAY_MS 5000u
#define QED_DEFAULT_L2_CACHE_TABLES 64u

/*
 * The largest virtual size of any image: INT64_MAX rounded down to a multiple
 * of 512 (2^63 - 512).  NBD clients address at most 2^63 - 1 bytes (QEMU and
 * nbdkit cap sizes at INT64_MAX), and below this bound no offset, cluster end
 * or request end can wrap around 2^64.  Creating, opening or resizing to a
 * larger size is refused, whatever the geometry would allow.
 */
#define QED_MAX_VIRTUAL_SIZE ((uint64_t)INT64_MAX & ~(uint64_t)511)

/* ---- I/O engine -------------------------------------------------------- */

enum qed_aio_backend {
    QED_AIO_AUTO = 0,  /* io_uring, or the thread pool if io_uring cannot be set up */
    QED_AIO_URING,     /* io_uring only; fail if unavailable */
    QED_AIO_THREADS,   /* thread pool doing preadv/pwritev */
};

/**
 * qed_aio_new - create an I/O engine bound to @loop.
 * @loop: the libev loop every completion is delivered on.
 * @kind: which backend; QED_AIO_AUTO falls back from io_uring to threads.
 * @out: receives the engine.
 * Returns 0 or a negative errno (the cause is logged to stderr).
 */
int qed_aio_new(struct ev_loop *loop, enum qed_aio_backend kind, qed_aio **out);

/** qed_aio_backend_name - "io_uring", "threads" or "test": the backend in use. */
const char *qed_aio_backend_name(const qed_aio *aio);

/** qed_aio_loop - the libev loop the engine delivers completions on. */
struct ev_loop *qed_aio_loop(const qed_aio *aio);

/** qed_aio_free - free the engine.  No I/O may be in flight. */
void qed_aio_free(qed_aio *aio);

/*
 * The least number of io_uring workers a caller that splits the machine
 * among several engines should leave each one (qed_aio_set_max_workers).
 * Why 4: a buffered read or write above 128 KiB is handed to a worker and
 * holds it for the whole copy, fsync and fallocate always run on one, and
 * the kernel runs buffered writes to one file one at a time anyway; four
 * let a write, a flush and two large reads go on at once on one engine.
 */
#define QED_URING_IOWQ_BOUNDED 4u

/**
 * qed_aio_set_max_workers - cap the kernel threads an io_uring engine may
 * use for the work it hands off (its io-wq workers) at @bounded.
 * @aio: the engine; the cap holds for the thread that submits to it.
 * @bounded: at most this many workers (clamped to the ring's size, which
 * bounds the kernel's own default: min(ring entries, 4 * online CPUs)).
 * 0 changes nothing.
 * Why: every thread that submits to a ring gets its own pool of workers,
 * so N engines on N threads could start N times the default; a caller
 * running several sets each to about its share.  Call it before any I/O
 * (from any thread: the kernel applies it to the thread that submits).
 * Returns 0, or -ENOTSUP when the engine has no such workers (the thread
 * pool) or the kernel cannot cap them (before Linux 5.15; logged once at
 * info level): the engine works as before either way.
 */
int qed_aio_set_max_workers(qed_aio *aio, unsigned bounded);

/**
 * qed_parse_size - parse a size written by a person: "123", "64K", "10G"
 * (suffixes K, M, G, T, P, E are powers of 1024, case-insensitive).
 * Returns 0, -EINVAL for garbage, or -ERANGE when it does not fit 64 bits.
 */
int qed_parse_size(const char *s, uint64_t *out);

/* ---- Create / open / close --------------------------------------------- */

enum qed_backing_fmt {
    QED_BACKING_PROBE = 0, /* probe: QED magic means qed, anything else raw */
    QED_BACKING_RAW,       /* raw, and set BACKING_FORMAT_NO_PROBE */
    QED_BACKING_QED,
};

struct qed_create_opts {
    uint64_t size;              /* virtual size in bytes; rounded up to 512 */
    uint32_t cluster_size;      /* 0 = default 64 KiB */
    uint32_t table_size;        /* 0 = default 4 */
    const char *backing_file;   /* NULL = none; stored as given */
    enum qed_backing_fmt backing_fmt;
};

/**
 * qed_create - create a new QED image at @path (blocking).
 * Fails if the file exists.  The geometry is validated, and a size too large
 * for it, or above QED_MAX_VIRTUAL_SIZE, is refused (-EINVAL) with the
 * maximum named in @err.
 */
int qed_create(const char *path, const struct qed_create_opts *opts, char *err, size_t errlen);

/*
 * How an image's file is cached, as qemu-nbd's --cache.  Backing files are
 * opened the same way (read-only).
 */
enum qed_cache_mode {
    QED_CACHE_WRITEBACK = 0, /* buffered I/O; flushes (and FUA) run fdatasync */
    QED_CACHE_NONE,          /* O_DIRECT (the page cache bypassed); flushes run fdatasync.
                                The file system must support O_DIRECT (tmpfs does not) */
    QED_CACHE_UNSAFE,        /* buffered I/O; flushes and FUA are acknowledged without
                                fdatasync, so nothing is durable until the image is
                                closed cleanly (close still flushes) */
};

struct qed_open_opts {
    bool read_only;             /* never write to the file */
    bool no_lock;               /* take no image lock (like qemu-img -U); read-only only */
    /* L2 tables cached.  0: QED_DEFAULT_L2_CACHE_TABLES (64), and at most
     * 32 MiB of them.  N: at most N tables, whatever their size.  Either way
     * at least one table, which requests then share in turn (a table is
     * table_size * cluster_size bytes: 1 GiB for 64 MiB clusters and table
     * size 16).  The bound includes tables in use by requests: a request
     * that needs a table waits until there is room.  Each QED image of a
     * backing chain has its own cache, bounded the same way by default. */
    unsigned l2_cache_tables;
    unsigned clean_delay_ms;    /* idle time before NEED_CHECK is cleared; 0 = 5000 */
    bool repair_corrupt;        /* read-write: zero invalid table entries of an image marked
                                   clean, as `qed-img check -r` does (see qed_open) */
    /* Backing-file confinement, applied along the whole chain.  The default
     * (NULL, false) follows backing names as QEMU does: relative to the
     * image's directory, absolute paths, ".." and symlinks included.  Every
     * file is refused unless it is a regular file or a block device, and no
     * open blocks (a FIFO is refused, not waited on). */
    const char *backing_dir;    /* allow backing files only under this directory,
                                   symlinks and ".." resolved; NULL = anywhere */
    bool no_backing;            /* refuse an image that has a backing file */
    unsigned lock_wait_ms;      /* a lock held by another process: poll this long
                                   (logged once) before -EBUSY; 0 = fail at once */
    enum qed_cache_mode cache;  /* QED_CACHE_WRITEBACK by default (zeroed opts) */
    /* Reserve (fallocate) the clusters a write allocates but fills only in
     * part, so that overwriting the rest never fails with ENOSPC; a full
     * file system then fails the allocating write itself with -ENOSPC.
     * AUTO: where that is cheap and keeps its promise (ext4, XFS); not on
     * tmpfs/ramfs (it would only cost memory) nor on copy-on-write btrfs. */
    enum qed_reserve { QED_RESERVE_AUTO = 0, QED_RESERVE_ON, QED_RESERVE_OFF } reserve;
};

/**
 * qed_open - open a QED image (blocking).
 * Validates the header and every table offset it can see (an image size
 * above QED_MAX_VIRTUAL_SIZE is refused with -EINVAL), opens the backing
 * chain, takes the image lock, and for a read-write open of a NEED_CHECK image
 * runs check-and-repair first (QED's recovery after a crash).  A read-only
 * open never writes.
 * A read-write open of an image marked clean scans its tables too.  When
 * some entries are invalid (past the end of the file, in the header,
 * misaligned) the open fails with -EUCLEAN and changes nothing; the message
 * counts the entries and names `qed-img check -r`.  With
 * opts->repair_corrupt it zeroes them instead, and those clusters read as
 * zeros.  A read-only open of such an image succeeds, and reads (and block
 * status) through an invalid entry fail with -EIO.
 * @aio may be NULL for a read-only open used only for qed_check(); such an
 * image cannot take requests.
 * The image's dirty bitmaps are loaded (read-only opens too); a malformed
 * bitmap directory refuses the open with -EINVAL and a message naming the
 * file and the problem, and a read-write open marks the bitmaps in use on
 * disk before it returns (see "Persistent dirty bitmaps" below).
 */
int qed_open(qed_aio *aio, const char *path, const struct qed_open_opts *opts,
             qed_image **out, char *err, size_t errlen);

/**
 * qed_close - finish in-flight requests, flush, clear NEED_CHECK, store the
 * dirty bitmaps of a read-write image (growing its header area when they do
 * not fit), and free the image (blocking: runs the loop until done).  Must not be called from a
 * loop callback.  Returns the first error met while flushing; the image is
 * freed either way.  After a failed flush (qed_flush_error) it leaves
 * NEED_CHECK set on disk and returns -EIO.
 */
int qed_close(qed_image *img);

/* ---- Information ------------------------------------------------------- */

struct qed_info {
    uint64_t size;               /* virtual size */
    uint32_t cluster_size;
    uint32_t table_size;
    uint32_t header_size;        /* in clusters */
    uint64_t features;
    uint64_t compat_features;
    uint64_t autoclear_features;
    uint64_t l1_table_offset;
    uint64_t file_size;          /* bytes of the image file */
    uint64_t max_size;           /* largest size this geometry allows (<= QED_MAX_VIRTUAL_SIZE) */
    uint64_t l2_cache_bytes;     /* bytes of L2 tables this image's cache holds now */
    uint64_t l2_cache_max_bytes; /* the bound on them (see qed_open_opts.l2_cache_tables) */
    uint64_t l2_cache_peak_bytes; /* the most they have been since open */
    bool read_only;
    bool dirty;                  /* NEED_CHECK set on disk */
    int flush_error;             /* qed_flush_error(): 0, or the first failed flush */
    /* The strings below belong to the image: valid until qed_close. */
    const char *backing_file;    /* "" when none; as stored in the header */
    const char *backing_path;    /* "" when none; resolved path actually opened */
    const char *backing_format;  /* "raw", "qed" or NULL */
};

/**
 * qed_get_info - fill @info from the open image (no I/O).  Its strings point
 * into the image and stay valid until qed_close(@img).
 */
void qed_get_info(const qed_image *img, struct qed_info *info);

/** qed_size - the virtual size in bytes. */
uint64_t qed_size(const qed_image *img);

/** qed_cluster_size - the cluster size in bytes. */
uint32_t qed_cluster_size(const qed_image *img);

/** qed_is_read_only - true when the image was opened read-only. */
bool qed_is_read_only(const qed_image *img);

/** qed_path - the path the image was opened with. */
const char *qed_path(const qed_image *img);

/** qed_inflight - requests submitted and not yet completed. */
unsigned qed_inflight(const qed_image *img);

/**
 * qed_flush_error - 0 while every flush of this open image has succeeded;
 * otherwise the negative errno of the first that failed.
 *
 * A failed fdatasync means writes already completed may be lost, and the
 * kernel reports that only once, so the failure is latched for the image:
 * every later flush, FUA write and flushing request (resize, a write that
 * needs a flush before its table update) fails with -EIO, NEED_CHECK is
 * never cleared, and qed_close writes NEED_CHECK and returns -EIO.  Only a
 * new open (which checks and repairs the image) clears the state.
 */
int qed_flush_error(const qed_image *img);

/**
 * qed_l2_cache_bytes - bytes of L2 tables held in memory now by @img and the
 * QED images of its backing chain (each has its own cache).  This is the
 * memory the caches hold beyond a fixed per-image part (the L1 table, one
 * table of table_size * cluster_size bytes per image, is not included); a
 * server counts it in a process-wide memory cap.  No I/O; loop thread only.
 */
uint64_t qed_l2_cache_bytes(const qed_image *img);

/**
 * qed_table_memory_max - the most memory the tables of @img and of the QED
 * images of its backing chain can hold while open: each image's L1 table
 * (table_size * cluster_size bytes, held from open to close) plus the bound
 * of its L2 cache (qed_info.l2_cache_max_bytes).  Fixed at open; a server
 * reserves it out of its memory cap.  No I/O.
 */
uint64_t qed_table_memory_max(const qed_image *img);

/* ---- Backing chains ---------------------------------------------------- */

/**
 * qed_backing_path - the path under which the backing file named
 * @backing_name in the image at @image_path is opened, the way qed_open and
 * QEMU open it: @backing_name itself when it is absolute or @image_path has
 * no directory part, otherwise @backing_name relative to @image_path's
 * directory.  This is also the name `qemu-img info` and `map` print for it.
 * No I/O.  *@out receives a malloc'd string (NULL on failure).
 * Returns 0, -EINVAL for an empty @backing_name, or -ENOMEM.
 */
int qed_backing_path(const char *image_path, const char *backing_name, char **out);

/**
 * qed_probe_format - look at the file @path as qed_create and qed_open look
 * at a backing file (blocking, but never waiting on a FIFO: only a regular
 * file or a block device is accepted).  *@fmt QED_BACKING_PROBE becomes
 * QED_BACKING_QED when the file starts with the QED magic, QED_BACKING_RAW
 * otherwise; any other *@fmt is kept (the file is still opened and checked).
 * @size (may be NULL) receives the virtual size in that format: a QED
 * image's size from its header, a raw regular file's length; a raw block
 * device's size is not taken (-ENOTSUP).
 * Returns 0 or a negative errno with a message naming @path in @err.
 */
int qed_probe_format(const char *path, enum qed_backing_fmt *fmt, uint64_t *size, char *err,
                     size_t errlen);

/**
 * qed_chain_path - the path of the file at @depth of @img's backing chain,
 * as opened: 0 is @img itself (qed_path), 1 its backing file, and so on
 * (the depths of struct qed_extent).  NULL when the chain is shorter.
 * Valid until qed_close(@img).  No I/O.
 */
const char *qed_chain_path(const qed_image *img, unsigned depth);

/* ---- Requests ---------------------------------------------------------- */

/** Completion: @ret is 0 or a negative errno. */
typedef void (*qed_done_fn)(void *opaque, int ret);

/* Request flags */
#define QED_REQ_FUA 0x1u        /* data (and its metadata) stable before completion */
#define QED_REQ_NO_HOLE 0x2u    /* write-zeroes: fully provision, write real zeros */
#define QED_REQ_FAST_ZERO 0x4u  /* write-zeroes: fail with -ENOTSUP, changing nothing,
                                   unless it needs no data writes */

/**
 * qed_read - read @len bytes at @off into @buf.
 * Out-of-range requests return -EINVAL at submit.  Corrupt table entries fail
 * the request with -EIO.
 */
int qed_read(qed_image *img, uint64_t off, void *buf, size_t len, qed_done_fn cb, void *opaque);

/**
 * qed_write - write @len bytes from @buf at @off.  @buf must stay valid until
 * completion.  Returns -EROFS on a read-only image, -ENOSPC past the end.
 */
int qed_write(qed_image *img, uint64_t off, const void *buf, size_t len, unsigned flags,
              qed_done_fn cb, void *opaque);

/**
 * qed_write_zeroes - make [@off, @off+@len) read as zeros.  Whole clusters
 * that are unallocated or zero become zero clusters without data; everything
 * else gets zeros written, unless QED_REQ_FAST_ZERO refuses with -ENOTSUP.
 */
int qed_write_zeroes(qed_image *img, uint64_t off, uint64_t len, unsigned flags,
                     qed_done_fn cb, void *opaque);

/**
 * qed_discard - give back host space of whole allocated clusters in the range
 * (punch holes, keep the mapping).  Afterwards the range reads as zeros or as
 * its old contents.
 */
int qed_discard(qed_image *img, uint64_t off, uint64_t len, unsigned flags,
                qed_done_fn cb, void *opaque);

/**
 * qed_flush - everything completed so far is on stable storage at completion.
 * Once a flush of the image has failed, every later one fails with -EIO
 * (see qed_flush_error).
 */
int qed_flush(qed_image *img, qed_done_fn cb, void *opaque);

/**
 * qed_resize - grow the image to @new_size (rounded up to 512); shrinking is
 * -EINVAL, a size above the geometry's maximum or QED_MAX_VIRTUAL_SIZE is
 * -EFBIG.
 */
int qed_resize(qed_image *img, uint64_t new_size, qed_done_fn cb, void *opaque);

/* Block status */
struct qed_extent {
    uint64_t start;
    uint64_t length;
    uint32_t depth;       /* 0 = this image, 1 = its backing file, ... */
    bool present;         /* some layer holds this range (false: unallocated everywhere) */
    bool zero;            /* reads as zeros */
    bool data;            /* backed by data in a file */
    bool has_offset;
    uint64_t offset;      /* host offset in the file at @depth, when has_offset */
};

/**
 * qed_block_status - describe [@off, @off+@len) as a list of extents, the way
 * `qemu-img map` does.  At most @max extents are written to @ext; *@n receives
 * the count.  The extents start at @off and are contiguous; they may cover
 * less than @len when @max is reached.  A range that reaches a corrupt table
 * entry fails with -EIO, as a read of it does.
 */
int qed_block_status(qed_image *img, uint64_t off, uint64_t len, struct qed_extent *ext,
                     size_t max, size_t *n, qed_done_fn cb, void *opaque);

/* ---- The fast path: other threads ------------------------------------- */

/*
 * An image belongs to one thread, its owner: the one that opened it with
 * its qed_aio, and the only one that may call the functions above for it.
 * Other threads may read and overwrite clusters that are already allocated
 * themselves, with their own qed_aio (each on its own loop), through the
 * two calls below: no message to the owner, no lock.  Whatever they cannot
 * do alone (a hole, a zero cluster, a table not in the owner's cache, an
 * allocation, FUA, an image with dirty bitmaps, ...) they refuse with
 * -EAGAIN, having done nothing; the caller then sends the request to the
 * owner, which calls qed_read or qed_write as usual.  A request sent after
 * another completed sees what that one did, on any thread.  The image must
 * not be closed while a fast-path request is in flight.  Design and rules:
 * lib/engine/fast-path.c and contrib/bench/README.md ("Multi-core design").
 */

/**
 * qed_fast_enable - (owner, before other threads use @img) publish @img's
 * cached L2 tables to other threads from now on.  Without it, qed_read_on
 * and qed_write_on always say -EAGAIN.  The cache then keeps the memory of
 * evicted tables for reuse (never more than its bound) instead of freeing
 * it.  Returns 0, -EINVAL (a check-only open) or -ENOMEM.
 */
int qed_fast_enable(qed_image *img);

/**
 * qed_read_on - (any thread but the owner; @aio is that thread's engine)
 * read @len bytes at @off into @buf when the whole range is allocated data
 * in tables the owner has cached.  Returns 0 (@cb runs later on @aio's
 * loop, exactly once, never inside this call) or -EAGAIN (nothing done:
 * ask the owner).
 */
int qed_read_on(qed_image *img, qed_aio *aio, uint64_t off, void *buf, size_t len,
                qed_done_fn cb, void *opaque);

/**
 * qed_write_on - as qed_read_on, an overwrite of allocated data without
 * @flags (FUA goes to the owner, whose flush latch sees every fdatasync),
 * on an image with no dirty bitmap; with cache=none only whole aligned
 * blocks.  *@remark is set before @cb runs: true when a bitmap was added
 * while the write was in flight, and then the owner must call
 * qed_bitmap_mark_write for the range before the completion is reported.
 */
int qed_write_on(qed_image *img, qed_aio *aio, uint64_t off, const void *buf, size_t len,
                 unsigned flags, bool *remark, qed_done_fn cb, void *opaque);

/**
 * qed_bitmap_mark_write - (owner) mark [@off, @off+@len) in every enabled
 * bitmap of @img, for a qed_write_on that came back with *remark set.
 */
void qed_bitmap_mark_write(qed_image *img, uint64_t off, uint64_t len);

/* ---- Synchronous wrapper ----------------------------------------------- */

/**
 * qed_sync_* - submit one request and run the loop until it completes.
 * For tools and simple tests only.  Must not be called from a loop callback.
 */
int qed_sync_read(qed_image *img, uint64_t off, void *buf, size_t len);
int qed_sync_write(qed_image *img, uint64_t off, const void *buf, size_t len, unsigned flags);
int qed_sync_write_zeroes(qed_image *img, uint64_t off, uint64_t len, unsigned flags);
int qed_sync_discard(qed_image *img, uint64_t off, uint64_t len);
int qed_sync_flush(qed_image *img);
int qed_sync_resize(qed_image *img, uint64_t new_size);
int qed_sync_block_status(qed_image *img, uint64_t off, uint64_t len, struct qed_extent *ext,
                          size_t max, size_t *n);

/* ---- Persistent dirty bitmaps (doc/qed-bitmaps.md) -------------------- */

/*
 * A QED image may carry named dirty bitmaps, stored in its header area and
 * guarded by the autoclear feature bit QED_AF_BITMAPS, so that QEMU (which
 * clears unknown autoclear bits when it opens an image read-write) makes
 * them inconsistent by writing the image.  Each bit covers @granularity
 * bytes of the virtual disk.  While an image is open read-write, every
 * qed_write, qed_write_zeroes and qed_discard marks the range it touches in
 * every enabled bitmap when it is submitted (so also when it fails part-way).
 * Bitmaps are loaded at qed_open and kept in memory; a read-write open marks
 * them in use on disk before the first write, and qed_close stores them and
 * clears the mark.  A bitmap found in use at open (a crash, a kill -9), or
 * whose image lost QED_AF_BITMAPS, is inconsistent: it is reported, never
 * trusted, and may only be removed.  The functions below run on the loop
 * thread that owns the image, do no I/O and never block; changes are stored
 * at qed_close.  Names are 1 to QED_BITMAP_NAME_MAX bytes of printable
 * ASCII other than space, '"' and '\\' (so that they pass through NBD
 * context names, JSON and shell words unchanged).
 */
#define QED_BITMAP_NAME_MAX 255
#define QED_BITMAP_MAX 64                              /* per image */
#define QED_BITMAP_DEFAULT_GRANULARITY (64u * 1024)
#define QED_BITMAP_MIN_GRANULARITY 512u                /* a power of two between these */
#define QED_BITMAP_MAX_GRANULARITY (2u * 1024 * 1024 * 1024)

struct qed_bitmap_info {
    const char *name;     /* valid until the bitmap is removed or the image closed */
    uint32_t granularity; /* bytes per bit */
    bool enabled;         /* records writes */
    bool inconsistent;    /* never trust; may only be removed */
    uint64_t dirty_bytes; /* bytes of the virtual disk marked dirty (at most the size) */
};

/** qed_bitmap_name_valid - whether @name may name a bitmap. */
bool qed_bitmap_name_valid(const char *name);

/** qed_bitmap_count - how many bitmaps the image has (consistent or not). */
unsigned qed_bitmap_count(const qed_image *img);

/**
 * qed_bitmap_info - describe bitmap number @idx (0 <= @idx < count, in the
 * order they are stored).  Returns 0, or -ENOENT for a bad index.
 */
int qed_bitmap_info(const qed_image *img, unsigned idx, struct qed_bitmap_info *out);

/** qed_bitmap_find - the index of bitmap @name, or -ENOENT. */
int qed_bitmap_find(const qed_image *img, const char *name);

/**
 * qed_bitmap_add - add an empty bitmap, enabled unless @disabled.
 * @granularity 0 means QED_BITMAP_DEFAULT_GRANULARITY.  -EEXIST, -EINVAL
 * (name or granularity), -EROFS (read-only image), -ENOSPC (QED_BITMAP_MAX
 * reached), -EFBIG (the bitmap would pass the memory limit, 512 MiB for one
 * bitmap and 1 GiB for all of an image's, or could not be stored in the
 * image: logged, naming the file; use a larger granularity), -ENOMEM.
 * Every call below that changes a bitmap returns -EROFS on a read-only image.
 */
int qed_bitmap_add(qed_image *img, const char *name, uint32_t granularity, bool disabled);

/** qed_bitmap_remove - remove bitmap @name (also an inconsistent one). */
int qed_bitmap_remove(qed_image *img, const char *name);

/** qed_bitmap_clear - mark every bit clean.  -EUCLEAN if inconsistent. */
int qed_bitmap_clear(qed_image *img, const char *name);

/** qed_bitmap_enable - start (@enable) or stop recording writes.  -EUCLEAN if inconsistent. */
int qed_bitmap_enable(qed_image *img, const char *name, bool enable);

/**
 * qed_bitmap_merge - @dst |= @src, where @src is a bitmap of @src_img (which
 * may be @img itself, or another open image of the same virtual size, as
 * `qemu-img bitmap --merge SRC -b SRC_FILE` does).  The granularities may
 * differ: every @dst bit that covers a dirty byte of @src becomes dirty.
 * -EUCLEAN if either is inconsistent, -EINVAL for different sizes.
 */
int qed_bitmap_merge(qed_image *img, const char *dst, const qed_image *src_img,
                     const char *src);

/** A run of equally dirty bytes, as qed_bitmap_status reports it. */
struct qed_dirty_extent {
    uint64_t start;
    uint64_t length;
    bool dirty;
};

/**
 * qed_bitmap_status - describe [@off, @off+@len) of bitmap @name as runs of
 * dirty and clean bytes (the last run ends at the virtual size at most).  At
 * most @max runs go to @ext; *@n receives the count; the runs start at @off,
 * are contiguous and maximal, and may stop short of @len when @max is
 * reached.  -ENOENT, -EUCLEAN if inconsistent, -EINVAL for a range outside
 * the disk.
 */
int qed_bitmap_status(const qed_image *img, const char *name, uint64_t off, uint64_t len,
                      struct qed_dirty_extent *ext, size_t max, size_t *n);

/* ---- Check and repair -------------------------------------------------- */

struct qed_check_result {
    uint64_t corruptions;        /* invalid offsets and doubly referenced clusters */
    uint64_t corruptions_fixed;
    uint64_t repairable;         /* corruptions a repair fixes (invalid entries) */
    uint64_t leaks;              /* clusters nothing references */
    uint64_t leaks_fixed;
    uint64_t check_errors;       /* I/O errors while checking */
    uint64_t allocated_clusters; /* data clusters referenced by L2 tables */
    uint64_t fragmented_clusters;
    uint64_t total_clusters;     /* virtual size in clusters */
    uint64_t image_end_offset;   /* end of the last referenced cluster */
};

/**
 * qed_check - check the image's metadata (blocking; no requests may be in
 * flight).  With @repair, invalid table entries are zeroed and NEED_CHECK is
 * cleared when no corruption remains; the image must be read-write.
 * Each problem found is logged through the message callback when set.
 */
int qed_check(qed_image *img, bool repair, struct qed_check_result *res);

/* ---- Logging ----------------------------------------------------------- */

/** Log levels for qed_set_log. */
enum qed_log_level { QED_LOG_ERROR = 0, QED_LOG_WARN, QED_LOG_INFO, QED_LOG_DEBUG };

/**
 * qed_set_log - route the library's messages to @fn (default: stderr for
 * ERROR and WARN).  @level is the most verbose level delivered.
 */
void qed_set_log(void (*fn)(enum qed_log_level, const char *msg, void *opaque),
                 void *opaque, enum qed_log_level level);

#ifdef __cplusplus
}
#endif
#endif /* QED_H */
