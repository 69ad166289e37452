/*
 * qed-image.h - the open image, its L2 cache and its request state machines.
 * Internal to libqed (lib/engine).
 *
 * Which file provides what, and whom it calls in the engine (->):
 *   image-open.c    qed_open: file, lock, header, L1, backing chain, and the
 *                   check a read-write open runs -> backing-file.c, check.c,
 *                   image.c, metadata.c, l2-cache.c, need-check.c (timer
 *                   set-up), image-close.c (freeing after a failure)
 *   image-create.c  qed_create -> chain.c (resolve, probe)
 *   backing-file.c  opening the backing file -> chain.c (name, probe),
 *                   image-open.c (a QED backing file is opened as an
 *                   image, one level deeper)
 *   chain.c         backing names and probing, and the public chain API
 *   image-close.c   qed_close, qed_image_free -> need-check.c, l2-cache.c,
 *                   metadata.c
 *   need-check.c    the NEED_CHECK flag's life -> request.c (the CLEAN
 *                   request the timer submits), sync.c (close's final
 *                   flush), flush-latch.c, image.c
 *   flush-latch.c   the fdatasync latch and queue -> need-check.c (a failed
 *                   flush stops the clean timer)
 *   check.c         check and repair, qed_check -> flush-latch.c, image.c,
 *                   metadata.c, l2-cache.c; never open internals
 *   image.c         the synchronous header write, the information getters
 *   request.c       the request machines -> need-check.c, flush-latch.c,
 *                   metadata.c, l2-cache.c
 *   bitmap.c        dirty bitmaps in memory (the qed_bitmap_* API, marking
 *                   writes, resizing) -> bitmap-store.c (room on disk)
 *   bitmap-store.c  loading, marking in use, storing -> image.c (header),
 *                   header-grow.c, bitmap.c
 *   header-grow.c   growing the header area (relocation) -> image.c
 *   sync.c          blocking wrappers -> the public request calls (request.c)
 *   l2-cache.c      -> request.c (qed_req_l2_room wakes requests waiting for
 *                   room); metadata.c, lock.c, file-open.c, size.c: leaves
 * Cycles left, each on purpose: need-check.c <-> request.c (the
 * timer submits a CLEAN request; requests arm the timer when allocating
 * writes go idle), need-check.c <-> flush-latch.c, l2-cache.c <-> request.c,
 * and image-open.c <-> backing-file.c (the chain).  Everything may use
 * format/ and io/, which call nothing here.
 */
#ifndef QED_IMAGE_H
#define QED_IMAGE_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "bitmap-dir.h"
#include "dirty-bits.h"
#include "qed-format.h"
#include "qed-io.h"
#include "qed-log.h"
#include "qed.h"

struct qed_req;
struct qed_gc_batch;

/* ---- L2 cache (l2-cache.c) ---- */

enum qed_l2_state {
    L2_LOADING,  /* read from disk in flight; waiters are queued on it */
    L2_VALID,    /* contents usable */
};

/*
 * The memory of one cached table, as other threads see it (fast-path.c).
 * With the fast path on (qed_fast_enable), a slot is never freed while the
 * image is open: an evicted table's slot goes to the cache's pool and is
 * reused for the next table, so a reader on another thread never touches
 * freed memory.  It tells a stale read by @seq, a sequence counter: odd
 * while the slot is not published (being loaded, filled, evicted, pooled),
 * even while it holds the table of L1 index @l1_index, unchanged but for
 * single entries the owner stores atomically (group-commit.c).  Readers
 * read @seq, the entries, and @seq again (a seqlock).
 */
struct qed_l2_slot {
    uint64_t seq;              /* atomic; see above */
    uint64_t l1_index;         /* atomic; valid while seq is even */
    uint64_t *t;               /* the table memory, table_bytes */
    struct qed_l2_slot *next;  /* in the pool */
};

/** One cached L2 table.  Entries are kept little-endian, exactly as on disk. */
struct qed_l2 {
    uint64_t offset;           /* host offset of the table: the cache key */
    uint64_t *t;               /* table_entries entries (slot->t) */
    struct qed_l2_slot *slot;  /* its memory */
    uint64_t l1_index;         /* the L1 entry that names it (for publishing) */
    bool published;            /* img->pub[l1_index] points at its slot */
    unsigned ref;              /* holders; a referenced entry is never evicted */
    enum qed_l2_state state;
    bool cached;               /* in the hash and LRU list */
    struct qed_req *waiters;   /* requests waiting for the load */
    struct qed_l2 *hnext;      /* hash chain */
    struct qed_l2 *lprev, *lnext; /* LRU list, most recent first */
    struct qed_image *img;
    struct qed_io io;          /* the load */
    struct iovec iov;
};

#define QED_L2_HASH 256

struct qed_l2_cache {
    struct qed_l2 *hash[QED_L2_HASH];
    struct qed_l2 *mru, *lru;
    unsigned count;            /* entries in the cache */
    unsigned max;              /* idle entries are evicted past this many (max_bytes / table) */
    uint64_t hits, misses, loads;
    uint64_t table_bytes;      /* bytes of one table */
    uint64_t bytes;            /* table bytes allocated: cached, loading, or forgotten but
                                  still referenced (freed at the last unref) */
    uint64_t max_bytes;        /* bound on bytes, a multiple of table_bytes, >= one table */
    uint64_t peak_bytes;       /* highest bytes seen */
    /* Requests waiting for room (request-lookup.c): the engine inserts a table only
     * when qed_l2_cache_make_room() says it fits, so bytes <= max_bytes. */
    struct qed_req *room_head, *room_tail;
    struct qed_req *room_turn; /* the waiter being woken; it goes before the others */
    bool room_scheduled;       /* room_defer is queued */
    struct qed_defer room_defer;
    uint64_t room_waits;       /* times a request had to wait for room */
    /* The fast path (fast-path.c): freed slots are kept here for reuse
     * instead of being freed, while @pooled. */
    bool pooled;
    struct qed_l2_slot *pool;
};

/** Default byte bound of one image's cache when no table count is given. */
#define QED_DEFAULT_L2_CACHE_BYTES (32ull << 20)

/**
 * qed_l2_cache_init - an empty cache of tables of @table_bytes each, holding
 * at most @max_tables tables (0: QED_DEFAULT_L2_CACHE_TABLES) and at most
 * @max_bytes bytes of them (0: no byte bound besides the table count), but
 * always room for one table, whatever its size: a request needs one table at
 * a time to make progress.
 */
void qed_l2_cache_init(struct qed_l2_cache *c, unsigned max_tables, uint64_t max_bytes,
                       uint64_t table_bytes);
void qed_l2_cache_destroy(struct qed_l2_cache *c);
/**
 * qed_l2_cache_drop - forget every table (none may be in use), unpublishing
 * each first; with the fast path on, their slots stay in the pool, since
 * another thread may still be looking at one (fast-path.c).  For a repair
 * of the open image, whose cached tables may predate it.
 */
void qed_l2_cache_drop(struct qed_l2_cache *c);
/**
 * qed_l2_cache_make_room - evict unreferenced tables, least recently used
 * first, until one more table fits under max_bytes.  False when it cannot:
 * every table left is referenced (in use by a request or being loaded).
 */
bool qed_l2_cache_make_room(struct qed_l2_cache *c);
/** Is @offset in the cache (VALID or LOADING)?  No reference, no LRU change. */
bool qed_l2_cache_holds(const struct qed_l2_cache *c, uint64_t offset);
/** Find @offset; takes a reference on a hit (VALID or LOADING). */
struct qed_l2 *qed_l2_cache_get(struct qed_l2_cache *c, uint64_t offset);
/** Allocate an entry for @offset (table zeroed), insert it with one reference. */
struct qed_l2 *qed_l2_cache_insert(struct qed_l2_cache *c, struct qed_image *img, uint64_t offset,
                                   enum qed_l2_state state);
/** Remove @e from lookup (after a failed load or write); it is freed at its last unref. */
void qed_l2_cache_forget(struct qed_l2_cache *c, struct qed_l2 *e);
/** Drop a reference; evicts least-recently-used unreferenced entries over capacity. */
void qed_l2_cache_unref(struct qed_l2_cache *c, struct qed_l2 *e);
/**
 * qed_l2_publish - (owner) let other threads' fast path read @e, a VALID
 * table that L1 entry e->l1_index names on disk and in img->l1: a table
 * just loaded, or a new one once its L1 entry is written.  No-op without
 * the fast path, or when img->l1 does not name it.
 */
void qed_l2_publish(struct qed_image *img, struct qed_l2 *e);

/* ---- Backing file kinds (backing-file.c) ---- */

enum qed_backing_kind { BACKING_NONE, BACKING_RAW, BACKING_QED };

/* ---- Requests (request*.c, alloc-queue.c, group-commit.c) ---- */

enum qed_req_type {
    REQ_READ,
    REQ_WRITE,
    REQ_WZERO,     /* write zeroes */
    REQ_DISCARD,
    REQ_FLUSH,
    REQ_BSTATUS,
    REQ_RESIZE,
    REQ_CLEAN,     /* internal: flush and clear NEED_CHECK */
};

/*
 * Request states, declared once in request-states.h (with what each waits
 * for); the names and handlers come from the same list (request.c).
 */
enum qed_req_state {
#define QED_REQ_STATE(id, name, handler) id,
#include "request-states.h"
#undef QED_REQ_STATE
    QED_REQ_NSTATES      /* not a state: how many there are */
};

/* What the mapping says about the run at cur_pos. */
enum qed_run_kind { RUN_DATA, RUN_ZERO, RUN_UNALLOC, RUN_BAD };

#define QED_REQ_IOV 200  /* zero head, data (64 zero pieces at most), zero tail, each <= 64 */

struct qed_req {
    struct qed_image *img;
    enum qed_req_type type;
    enum qed_req_state state;
    unsigned flags;
    int err;                   /* first error met (negative errno) */
    unsigned pending;          /* I/Os in flight for the current state */

    uint64_t off, end;         /* requested range */
    uint64_t cur_pos;          /* start of the current run */
    uint8_t *buf;              /* READ: destination; WRITE: source (NULL = zeros) */

    /* Current run */
    struct qed_l2 *l2;         /* referenced table for cur_pos, or NULL */
    uint64_t l1_index;
    enum qed_run_kind kind;
    uint64_t run_len;
    uint64_t host;             /* host offset for RUN_DATA */

    /* Allocating write in progress */
    bool holding;              /* admitted by the allocating-write queue, not finished */
    bool exclusive;            /* admitted to run alone */
    uint64_t lock_lo, lock_hi; /* guest cluster range it holds while admitted */
    struct qed_req *aprev, *anext; /* list of admitted requests */
    uint8_t *cow;              /* head and tail copied from the backing file */
    bool new_l2;               /* the run allocated a new L2 table */
    uint64_t alloc_host;       /* first newly allocated data cluster (0 = none: zero entries) */
    uint64_t alloc_first, alloc_n; /* L2 index and count of entries being set */
    uint64_t *ents;            /* new L2 entries being written (existing table) */
    uint64_t l1_ent;           /* new L1 entry being written */
    bool zero_entries;         /* write-zeroes: set entries to QED_ENTRY_ZERO, no data */
    bool scanning;             /* FAST_ZERO: first pass only looks */
    uint64_t head_len, tail_len; /* bytes copied into the first/last new cluster */
    bool cow_zero;             /* head/tail are zeros: no copy, point at the zero buffer */
    bool sparse;               /* head/tail left unwritten: fresh clusters read as zeros */
    enum qed_req_state resume; /* state to enter on reaching the queue head, or on
                                  getting room in the L2 cache */
    struct qed_req *gc_next;   /* group commit: next request waiting or in the batch */

    /* Block status */
    struct qed_extent *ext;
    size_t ext_max, *ext_n;
    struct qed_extent *bs_tmp; /* backing's extents */
    size_t bs_tmp_n;
    uint64_t bs_len;           /* range asked of the backing */

    uint64_t new_size, old_size; /* RESIZE */

    qed_done_fn cb;
    void *opaque;

    struct qed_io io[2];
    struct iovec iov[QED_REQ_IOV];
    struct iovec iov2[2];
    struct qed_defer defer;
    struct qed_req *next;      /* queue / waiter links */
};

/* ---- Dirty bitmaps (bitmap.c) ---- */

/*
 * Memory limits, checked before a bitmap is allocated (add, load, resize):
 * one bitmap at most 512 MiB (2^32 bits: 2 GiB granularity over the
 * largest disk, or 64 KiB granularity over 256 TiB), all of an image's at
 * most 1 GiB.  They also keep the stored bitmaps well inside the header
 * area's 4 GiB cap (doc/qed-bitmaps.md).
 */
#define QED_BITMAP_MAX_BYTES (512ull << 20)
#define QED_BITMAP_TOTAL_BYTES (1024ull << 20)

/** One dirty bitmap in memory. */
struct qed_bitmap {
    char *name;
    uint32_t granularity;      /* bytes per bit */
    bool enabled;              /* records writes */
    bool inconsistent;         /* never trusted; only removal allowed */
    struct qed_bits bits;      /* qed_bm_nbits(image size, granularity) bits */
};


struct qed_image {
    char *path;
    int fd;
    unsigned fd_io_flags;      /* QED_IO_F_MEMORY when fd is on tmpfs */
    bool reserve;              /* fallocate sparse new clusters (qed_open_opts.reserve) */
    uint64_t resv_end;         /* a completed reservation reached this far (request-alloc.c) */
    qed_aio *aio;              /* NULL for a check-only open */
    bool read_only;
    struct qed_header h;       /* CPU byte order, always current */
    struct qed_geom g;
    uint64_t file_size;        /* allocation point: end of the last cluster in use */
    uint64_t *l1;              /* table_entries entries, little-endian as on disk */

    char backing_name[4096];   /* as stored */
    char backing_path[4096];   /* resolved */
    enum qed_backing_kind backing_kind;
    int backing_fd;            /* raw */
    unsigned backing_io_flags; /* QED_IO_F_MEMORY when backing_fd is on tmpfs */
    uint64_t backing_size;
    struct qed_image *backing; /* qed */

    struct qed_l2_cache cache;

    /* Allocating-write queue: the head holds it until it finishes. */
    struct qed_req *active;    /* admitted requests (see alloc-queue.c) */
    unsigned nactive;
    bool active_exclusive;     /* one of them runs alone */
    struct qed_req *queue_head, *queue_tail;
    bool kicking, kick_again;

    /* Group commit of L2 entry updates (see group-commit.c) */
    struct qed_req *gc_head, *gc_tail; /* runs waiting for the next batch */
    struct qed_gc_batch *gc_cur;       /* the batch whose metadata is in flight */
    bool gc_scheduled;                 /* gc_defer is queued */
    struct qed_defer gc_defer;
    uint64_t gc_batches, gc_batched;   /* batches committed, runs they carried */
    uint64_t gc_l2_writes;             /* L2 entry writes they issued */
    uint64_t gc_max_batch;             /* most runs in one batch */
    bool fresh_known;                  /* fresh_from is set */
    uint64_t fresh_from;               /* file bytes from here on never held data before this open */
    uint64_t ext_end;                  /* the file is known to extend at least this far */

    unsigned inflight;
    unsigned submitting;       /* depth of submit calls on the stack */
    bool dirty_set_by_us;      /* we set NEED_CHECK during this open */
    int flush_err;             /* first failed flush (negative errno), 0 = none: the latch
                                  (see qed_image_flush_result) */
    /* fdatasync of fd, one at a time (see qed_image_submit_fsync) */
    bool fsync_busy;                   /* one is in flight */
    void (*fsync_leader_done)(struct qed_io *io); /* its own completion and opaque */
    void *fsync_leader_opaque;
    struct qed_io *fsync_riders;       /* flushes it answers too */
    struct qed_io *fsync_wait, *fsync_wait_tail; /* flushes for the next one */
    uint64_t fsyncs, fsync_riders_total; /* fdatasyncs issued, flushes that rode on one */
    ev_timer clean_timer;
    unsigned clean_delay_ms;
    bool clean_queued;

    /* Entries that were invalid when the image was opened must stay invalid
     * when the file grows past what they point at (see metadata.c). */
    uint64_t open_end;         /* file size (whole clusters) at open */
    uint64_t *meta_tables;     /* sorted offsets of the L2 tables L1 named at open */
    size_t nmeta_tables;
    uint8_t *meta_scanned;     /* per meta table: its entries were checked once */
    struct qed_bogus { uint64_t table, index, value; } *bogus; /* entries found invalid */
    size_t nbogus, bogus_cap;

    /* Dirty bitmaps, in the order they are stored (bitmap.c) */
    struct qed_bitmap *bitmaps[QED_BITMAP_MAX];
    unsigned nbitmaps;
    uint64_t bitmap_bytes;     /* memory of their bits, <= QED_BITMAP_TOTAL_BYTES */
    struct qed_bmdir *bmdir;   /* the current directory on disk, NULL when none */
    int bmdir_slot;            /* the slot (0 or 1) that holds it */

    /* The fast path (fast-path.c): per L1 index, the published slot of its
     * cached table or NULL (atomic); NULL when the fast path is off. */
    struct qed_l2_slot **pub;

    /* Finished requests kept for reuse: no malloc on the steady-state path. */
    struct qed_req *free_reqs;
    unsigned nfree_reqs;

    /* Used only by an exclusive request (header updates) */
    uint8_t hdr_raw[QED_HEADER_BYTES];
};

/* ---- Open, create, close (image-open.c, image-create.c, image-close.c) ---- */

/** Deepest backing chain an open follows (backing-file.c). */
#define QED_MAX_BACKING_DEPTH 16

/** qed_open at backing-chain depth @depth (0 = the image asked for). */
int qed_open_depth(qed_aio *aio, const char *path, const struct qed_open_opts *opts, int depth,
                   qed_image **out, char *err, size_t errlen);
/** Free @img and its backing chain, closing their files; no flush, no header write. */
void qed_image_free(struct qed_image *img);

/* ---- Backing file (backing-file.c) ---- */

/* (Resolving the name and probing the format: chain.h.) */
/**
 * Open the backing file @img's header names, if any: a QED image read-only
 * at @depth + 1, or a raw file, locked and confined as the options say.
 */
int qed_backing_open(struct qed_image *img, qed_aio *aio, const struct qed_open_opts *opts,
                     int depth, char *err, size_t errlen);

/* ---- Header write and information (image.c) ---- */

/** Write the in-memory header to disk (synchronously; open/close/check only). */
int qed_image_write_header_sync(struct qed_image *img);

/* ---- The NEED_CHECK flag (need-check.c) ---- */

/** Must an allocation first set NEED_CHECK (no backing file, flag not set)? */
bool qed_image_must_mark_dirty(const struct qed_image *img);
/** Set NEED_CHECK in memory (ours to clear) and encode the header into img->hdr_raw. */
void qed_image_mark_dirty(struct qed_image *img);
/** The header write or flush that set NEED_CHECK failed: forget the flag. */
void qed_image_unmark_dirty(struct qed_image *img);
/** May a CLEAN request clear NEED_CHECK (set by us, image writable)? */
bool qed_image_may_clean(const struct qed_image *img);
/** Clear NEED_CHECK in memory (after the flush) and encode the header into img->hdr_raw. */
void qed_image_mark_clean(struct qed_image *img);
/** Set up the clean timer of an image opened with an engine. */
void qed_image_init_clean(struct qed_image *img);
/** Arm the timer that clears NEED_CHECK once allocating writes have been idle. */
void qed_image_arm_clean(struct qed_image *img);
/** Stop the clean timer (allocation activity, a failed flush, close). */
void qed_image_stop_clean(struct qed_image *img);
/**
 * On close of a writable image: the final flush, then NEED_CHECK cleared if
 * we set it, or written back to disk after a failed flush.  Returns 0 or a
 * negative errno (-EIO after a failed flush).
 */
int qed_image_close_clean(struct qed_image *img);

/* ---- Flushes (flush-latch.c) ---- */

/**
 * The result an fdatasync of img->fd (@res: 0 or a negative errno) gives its
 * caller.  A failure is latched, and logged once; from then on every flush
 * of this open image returns -EIO, whatever fdatasync says.
 */
int qed_image_flush_result(struct qed_image *img, int res);
/**
 * Submit @io, an FSYNC of img->fd, so that no two run at once: one that
 * comes while another is in flight waits, and all that waited share the
 * next fdatasync.  @io->done runs on the loop as for qed_aio_submit.
 */
void qed_image_submit_fsync(struct qed_image *img, struct qed_io *io);
/**
 * Submit @io for @img: an FSYNC through qed_image_submit_fsync (the latch),
 * anything else straight to the I/O engine.  Every engine I/O goes this way.
 */
void qed_image_submit_io(struct qed_image *img, struct qed_io *io);


/* ---- Invalid entries found at open (metadata.c) ---- */
/**
 * Record which metadata the image holds at open and disable L1 entries that
 * are invalid then (they point past the end, into the header or at the L1
 * table), so that a growing file never makes them valid.  Returns 0 or -ENOMEM.
 */
int qed_meta_init(struct qed_image *img);
/** Disable the invalid entries of an L2 table that was just read from disk. */
int qed_meta_sanitize_l2(struct qed_image *img, uint64_t table_off, uint64_t *t);
/**
 * Was entry @index of the L2 table at @table_off disabled when the table was
 * read?  True with *@value set to the entry as stored in the file (messages
 * name it, not the in-memory mark).
 */
bool qed_meta_disabled_l2(const struct qed_image *img, uint64_t table_off, uint64_t index,
                          uint64_t *value);
/** Release what qed_meta_init allocated. */
void qed_meta_free(struct qed_image *img);

/* ---- Request entry points for the other engine files ---- */
/* request-lookup.c */
/**
 * Called by the L2 cache when a table became evictable or was freed while
 * requests wait for room: wakes them on the next loop turn.
 */
void qed_req_l2_room(struct qed_image *img);
/* request.c */
/** Submit an internal CLEAN request (NEED_CHECK clearing) through the queue. */
int qed_req_submit_clean(struct qed_image *img, qed_done_fn cb, void *opaque);
/**
 * The name debug logs give request state @s, or NULL when @s is not a state
 * (tests walk the list with it).
 */
const char *qed_req_state_name(unsigned s);
/** Does request state @s have a handler in the driver's table? */
bool qed_req_state_has_handler(unsigned s);
/* group-commit.c */
/** The name of group commit state @s, or NULL when @s is not a state. */
const char *qed_gc_state_name(unsigned s);
/** Does group commit state @s have a handler in the batch driver's table? */
bool qed_gc_state_has_handler(unsigned s);

/* ---- Dirty bitmaps (bitmap.c) ---- */

/** Bytes of memory (whole 64-bit words) that @nbits bits take. */
uint64_t qed_bitmap_bytes(uint64_t nbits);
/**
 * A new clean, disabled bitmap sized for @img (the caller checked the
 * memory limits), or NULL when out of memory.
 */
struct qed_bitmap *qed_bitmap_new(struct qed_image *img, const char *name, uint32_t granularity,
                                  bool inconsistent);
/** Free @bm (NULL is fine). */
void qed_bitmap_free(struct qed_bitmap *bm);
/** Append @bm to @img's bitmaps (-ENOSPC past QED_BITMAP_MAX). */
int qed_bitmap_insert(struct qed_image *img, struct qed_bitmap *bm);
/**
 * Mark [@off, @off + @len) dirty in every enabled, consistent bitmap (at the
 * submission of a write, write-zeroes or discard, and for each entry a
 * repair zeroes); the part past the virtual size is ignored.
 */
void qed_bitmap_mark(struct qed_image *img, uint64_t off, uint64_t len);
/**
 * Resize every bitmap for a virtual size of @new_size (new bits clean).
 * Checks the memory limits first (-EFBIG, logged, nothing changed);
 * -ENOMEM may leave some grown, and a resize back to the old size (which
 * never fails) undoes that.
 */
int qed_bitmap_resize(struct qed_image *img, uint64_t new_size);
/** Free every bitmap of @img. */
void qed_bitmap_free_all(struct qed_image *img);

/* ---- Dirty bitmaps on disk (bitmap-store.c, header-grow.c) ---- */

/**
 * Load the bitmaps of @img (at open, read-only opens too): none when the
 * header area has no directory; inconsistent ones when they are in use or
 * the autoclear bit is clear.  A malformed directory of an image with the
 * bit set is refused: -EINVAL with a message naming the file and the
 * problem in @err.
 */
int qed_bitmap_load(struct qed_image *img, char *err, size_t errlen);
/**
 * Read-write open: write a directory saying every bitmap is in use, and
 * flush, before the open returns (so before any write can change the disk).
 */
int qed_bitmap_mark_in_use(struct qed_image *img, char *err, size_t errlen);
/**
 * Would the bitmaps, plus @extra bytes of bits, fit in the largest header
 * area the format allows?  0 or -EFBIG.
 */
int qed_bitmap_store_fits(const struct qed_image *img, uint64_t extra);
/**
 * Close of a read-write image, nothing in flight, after the final flush:
 * store the bitmaps (growing the header area when needed) and clear their
 * in-use flags.  Returns 0 or a negative errno (logged); on failure the
 * bitmaps on disk stay in use, so the next open finds them inconsistent.
 */
int qed_bitmap_store(struct qed_image *img);
/**
 * Grow the header area to @header_size clusters: relocate the clusters in
 * the way to the end of the file, repoint every reference, and write the
 * header (with QED_AF_BITMAPS cleared), each step flushed.  img->h, img->g
 * and img->file_size follow.  Returns 0 or a negative errno (logged).
 */
int qed_header_grow(struct qed_image *img, uint32_t header_size);

/* ---- Check and repair (check.c) ---- */

/**
 * qed_check_image - check the tables of @img (blocking, nothing in flight),
 * and with @repair zero invalid entries, flush, and clear NEED_CHECK when no
 * corruption remains.  qed_check is the public entry, with its refusals.
 */
int qed_check_image(struct qed_image *img, bool repair, struct qed_check_result *res);

/* ---- Locking (lock.c) ---- */

/**
 * qed_lock_image_wait - take the image lock on @fd (QEMU-compatible OFD
 * byte-range locks): a read-write open takes the write permission and shares
 * none of write/resize; a read-only open takes consistent-read and refuses
 * to share write.  While another process holds a conflicting lock, poll for
 * it for up to @wait_ms milliseconds (logging once that it waits) before
 * failing with -EBUSY and a message naming @name.  @wait_ms 0 fails at once.
 * Blocks the caller: for the open path only.
 */
int qed_lock_image_wait(int fd, bool write, bool backing, unsigned wait_ms, const char *name,
                        char *err, size_t errlen);

/* ---- Opening files (file-open.c) ---- */

struct stat;

/**
 * qed_file_open - open @path for I/O with open(2) @flags without ever
 * blocking: refuse anything but a regular file or a block device (a FIFO, a
 * socket, a character device, a directory) before opening it for I/O, and,
 * when @confine_dir is not NULL, anything whose resolved path (symlinks and
 * ".." followed by the kernel) is not under the resolved @confine_dir.
 * @owner is the image naming @path as its backing file, or NULL when @path is
 * an image itself; messages name both.  On success *@out is the fd (blocking
 * mode, close-on-exec) and *@st its fstat.  Returns 0 or a negative errno.
 */
int qed_file_open(const char *path, int flags, const char *owner, const char *confine_dir,
                  int *out, struct stat *st, char *err, size_t errlen);

/** qed_cache_open_flags - the open(2) flags opts->cache adds: O_DIRECT for QED_CACHE_NONE. */
int qed_cache_open_flags(const struct qed_open_opts *opts);

/**
 * qed_cache_io_flags - the QED_IO_F_* flags of @fd, the file @path opened
 * with opts->cache: QED_IO_F_DIRECT (after qed_dio_check) for
 * QED_CACHE_NONE, QED_IO_F_NOSYNC for QED_CACHE_UNSAFE, QED_IO_F_MEMORY on
 * tmpfs unless direct.  Returns 0 or a negative errno with @err set.
 */
int qed_cache_io_flags(int fd, const struct qed_open_opts *opts, const char *path,
                       unsigned *flags, char *err, size_t errlen);

#endif /* QED_IMAGE_H */
