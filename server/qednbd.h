/*
 * qednbd.h - state shared by the modules of the qednbd server: the exports,
 * the server-wide configuration, logging and statistics.  The connections
 * are in net/conn.h, the protocol in protocol/protocol.h.
 */
#ifndef QEDNBD_H
#define QEDNBD_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qed.h"

struct ev_loop;
struct conn;     /* net/conn.h */

/* Tunables of the transmission phase. */
#define SRV_MAX_PAYLOAD (32u * 1024 * 1024)      /* largest READ/WRITE payload */
#define SRV_MAX_PREFERRED (64u * 1024)           /* cap of the preferred block size */
#define SRV_MAX_INFLIGHT 64u                     /* requests per connection, then stop reading */
/* Memory a connection may hold (mem.c): 64 MiB of request and reply data,
 * so two requests of the maximum size, plus 1 MiB for their bookkeeping
 * (request structs, chunk headers, extent lists, read-ahead). */
#define SRV_CONN_MAX_MEMORY ((64u + 1u) * 1024 * 1024)
#define SRV_MAX_MEMORY_DEFAULT ((uint64_t)1 << 30)   /* --max-memory: all connections */
#define SRV_MAX_MEMORY_MIN ((uint64_t)SRV_CONN_MAX_MEMORY) /* its smallest value */
#define SRV_READ_BUDGET 16u                      /* requests parsed per read event (fairness) */
#define SRV_INPUT_BUFFER (64u * 1024)            /* read-ahead buffer per connection */
/* The most one system call on a loop thread may copy between a socket and
 * our buffers (issue 14's bound on loop work; the library's file copies
 * use the same 128 KiB, QED_IO_LOOP_COPY_MAX in lib/io/qed-io.h). */
#define SRV_LOOP_COPY_MAX (128u * 1024)

/* Free lists of the transmission phase (protocol/req-mem.c): steady state without malloc. */
#define TX_REQ_POOL_MAX 1024u                    /* request structs kept for reuse */
#define TX_BUF_MIN_SHIFT 12                      /* data buffers pooled: 4 KiB ... */
#define TX_BUF_MAX_SHIFT 22                      /* ... 4 MiB, powers of two only */
#define TX_BUF_POOL_BYTES (32u * 1024 * 1024)    /* data buffer bytes kept for reuse */

/* Under AddressSanitizer the free lists (requests, data and read-ahead
 * buffers) are off: memory then goes back to malloc at once, so that a use
 * after free is still caught. */
#if defined(__SANITIZE_ADDRESS__)
#define SRV_POOLS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SRV_POOLS 0
#endif
#endif
#ifndef SRV_POOLS
#define SRV_POOLS 1
#endif

/* Limits of the handshake phase. */
#define SRV_MAX_OPTIONS 32u                     /* options per connection */
#define SRV_MAX_OPTION_LEN (64u * 1024)         /* option payload we are willing to buffer */
#define SRV_MAX_OPTION_DRAIN (1024u * 1024)     /* longer options: hard disconnect, no drain */

/**
 * Per-export counters, printed on SIGUSR1 (stats.c; the format is in
 * qednbd(8)).  They count since the server started.
 */
struct export_stats {
    uint64_t connections;    /* clients that entered transmission on the export */
    uint64_t requests;       /* requests received, every command but DISC */
    uint64_t reads, writes, flushes, trims, zeroes, caches, block_status;
    uint64_t bytes_read;     /* payload of successful READs */
    uint64_t bytes_written;  /* payload of successful WRITEs */
    uint64_t bytes_zeroed;   /* length of successful WRITE_ZEROES */
    uint64_t bytes_trimmed;  /* length of successful TRIMs */
    uint64_t errors;         /* requests answered with an error (rejected or failed) */
    /* One block per thread: padded to 128 bytes so that two threads'
     * blocks share at most one cache line.  (Not an aligned type: the
     * exports live in a realloc'd array, which guarantees 16 bytes.) */
    uint64_t pad_[2];
};

/* --threads: the most loop threads (each export keeps one counter block per thread). */
#define SRV_MAX_THREADS 64u
/* The default --threads: the CPUs we may run on, at most this many. */
#define SRV_DEFAULT_THREADS_CAP 8u

struct srv_thread;   /* threads.h */

/** One export: a name bound to an open image. */
struct export {
    char *name;              /* export name ("" allowed) */
    char *path;              /* image path as given */
    qed_image *img;
    uint64_t size;
    uint32_t pref_block;     /* preferred block size: cluster size capped at 64 KiB */
    bool read_only;
    uint32_t cluster_size;   /* the image's, kept here: only the owner calls libqed */
    uint64_t alloc_at_open;  /* the image's allocation point when it was opened */
    struct srv_thread *owner; /* the one thread that calls libqed for img (threads.h) */
    /* Counters, one block per loop thread, each written only by its thread
     * (EXPORT_STATS); SIGUSR1 gathers them on their threads (stats.c). */
    struct export_stats st[SRV_MAX_THREADS];
    /* The bitmaps, for the NBD side (export-bitmaps.c): under bm_lock. */
    pthread_mutex_t bm_lock;
    struct export_bitmap_names *bm_names; /* what the owner published */
    struct export_bitmap_use *bm_uses;    /* bitmaps NBD clients selected */
};

/** Server-wide state; there is exactly one, `srv`.  What each loop thread
 * keeps for itself (its loop, its qed_aio, its connections) is in struct
 * srv_thread (threads.h); srv_self is the calling thread's.  Fields written
 * by several threads are marked "atomic" and only used with __atomic
 * builtins. */
struct server {
    struct srv_thread *threads; /* --threads of them; threads[0] is the main thread */
    unsigned nthreads;
    struct export *exports;
    size_t nexports;
    const char *description; /* NBD_INFO_DESCRIPTION text for every export, or NULL */
    int verbose;             /* 0, 1 (-v: connections, options), 2 (-vv: every request) */
    unsigned max_conns;      /* connections served at once; more are refused */
    double hs_timeout;       /* seconds a client may take to finish negotiating */
    bool stdio;              /* serving one client on stdin/stdout */
    bool shutting_down;      /* SIGINT/SIGTERM received (atomic) */

    unsigned nconns;         /* live connections, counted against max_conns (atomic) */
    unsigned nrefused;       /* live connections being refused politely (atomic) */
    uint64_t next_conn_id;   /* (atomic) */

    /* Server-wide counters (stats.c). */
    double start_time;       /* ev_time() at start-up */
    uint64_t conns_refused;  /* clients turned away over --max-connections (thread 0) */

    /* Memory held for connections (mem.c); the counters are atomic. */
    uint64_t max_memory;     /* --max-memory; 0 = SRV_MAX_MEMORY_DEFAULT */
    uint64_t mem_held;       /* bytes charged to connections now */
    uint64_t mem_peak;       /* the most mem_held has been */
    uint64_t mem_tables;     /* reserved out of --max-memory for the images' tables
                                (qed_table_memory_max, summed at open) */
    uint64_t mem_waits;      /* times a connection stopped reading to wait for memory */
    unsigned mem_waiters;    /* connections waiting for memory now */
    unsigned nreqs;          /* requests alive (admitted, not yet freed) on every connection */
};

extern struct server srv;

/** srv_self - the calling loop thread's state (threads.h); thread 0's on the main thread. */
extern __thread struct srv_thread *srv_self;

/* Atomic access to the fields marked atomic (relaxed: counters and flags
 * that order nothing; mem.c uses sequentially consistent ones where it must). */
#define SRV_LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define SRV_ADD(x, n) __atomic_add_fetch(&(x), (n), __ATOMIC_RELAXED)
#define SRV_SUB(x, n) __atomic_sub_fetch(&(x), (n), __ATOMIC_RELAXED)

/* ---- Logging (log.c) ---- */

/**
 * Log levels of srv_log, most severe first, so that a larger number is
 * always a less important message: ERROR, WARN and NOTICE always print;
 * INFO needs -v, DEBUG -vv (srv_log_enabled).  Test a level with
 * srv_log_enabled, never by comparing it with srv.verbose.
 */
enum { SRV_LOG_ERROR = 0, SRV_LOG_WARN, SRV_LOG_NOTICE, SRV_LOG_INFO, SRV_LOG_DEBUG };

/** Where the log goes: stderr (default), syslog (--log=syslog) or a file (--log-file). */
enum srv_log_target { SRV_LOG_TO_STDERR, SRV_LOG_TO_SYSLOG, SRV_LOG_TO_FILE };

/**
 * srv_log_enabled - would a message at @level be printed with this
 * verbosity?  Inline: the hot path asks it for every request.
 */
static inline bool srv_log_enabled(int level)
{
    return level <= SRV_LOG_NOTICE + srv.verbose;
}

/** srv_vlog - log one line at @level: @prefix, then @fmt formatted with @ap. */
void srv_vlog(int level, const char *prefix, const char *fmt, va_list ap);

/** srv_log - log one line at @level (see log.c for the formats). */
void srv_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/**
 * srv_vdie - log a fatal error (the caller exits).  Before the server has
 * detached from the terminal it goes to stderr too, whatever the target.
 */
void srv_vdie(const char *fmt, va_list ap);

/** srv_die - srv_vdie, then exit(1) (start-up errors). */
void srv_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/**
 * srv_log_open - send the log to @target from now on; @path is the file for
 * SRV_LOG_TO_FILE (it should be absolute: the daemon changes directory).
 * Returns 0 or a negative errno with the cause in @err.
 */
int srv_log_open(enum srv_log_target target, const char *path, char *err, size_t errlen);

/**
 * srv_log_reopen - SIGHUP: reopen the log file (after logrotate moved it).
 * Nothing to do for stderr and syslog.  Returns 0 or a negative errno
 * (logged; the old file stays in use).
 */
int srv_log_reopen(void);

/**
 * srv_log_detach_stderr - the daemon has detached: point stdin and stdout
 * at /dev/null, and stderr at the log file (or /dev/null with syslog).
 */
void srv_log_detach_stderr(void);

/* ---- Statistics (stats.c) ---- */

/**
 * stats_print - log every counter (SIGUSR1), one line per export plus a
 * server line.  With several threads the counters are gathered on the
 * threads that write them first, so the lines come out a few loop turns later.
 */
void stats_print(void);

/** One counter: its name (as in the log line) and value. */
struct stats_field {
    const char *key;
    uint64_t value;
};
#define STATS_MAX_FIELDS 24     /* the most any function below fills */

/** The counters one stats_gather collected (stats.c). */
struct stats_gather;

/**
 * stats_gather - collect every counter where it is written (each thread's
 * on that thread, each image's on its owner), then call @done(@g, @arg) on
 * the calling thread (thread 0), on a later loop turn with several threads
 * (at once with one).  @g is valid only during @done.  SIGUSR1's lines and
 * the control socket's "stats" are both made from it.  Returns 0 or
 * -ENOMEM (then @done never runs).
 */
int stats_gather(void (*done)(const struct stats_gather *g, void *arg), void *arg);

/**
 * stats_server_fields - the server-wide counters of @g into @f; returns how many.
 * stats_export_fields - those of export number @i (its name apart).
 * stats_thread_fields - those of loop thread @t (its "stats: thread" line).
 */
size_t stats_server_fields(const struct stats_gather *g, struct stats_field *f);
size_t stats_export_fields(const struct stats_gather *g, size_t i, struct stats_field *f);
size_t stats_thread_fields(const struct stats_gather *g, unsigned t, struct stats_field *f);

/* ---- Exports (exports.c; the rest of the table is in exports.h) ---- */

/**
 * srv_find_export - the export called @name (@len bytes, not NUL
 * terminated), or NULL.  The empty name selects the first export (the
 * default export), as the protocol reserves it for that.
 */
struct export *srv_find_export(const char *name, size_t len);

/*
 * The dirty bitmaps of an export as the NBD side sees them (export-bitmaps.c).
 * Only the owner thread calls libqed; connections on any thread read what
 * it published here, under the export's bm_lock, which also guards
 * bm_uses.  So a bitmap being removed is never selected meanwhile, and a
 * selected one is never removed.
 */

/** A bitmap of the image, as published by its owner. */
struct export_bitmap_name {
    char name[QED_BITMAP_NAME_MAX + 1];
    bool inconsistent;           /* never offered: its bits cannot be trusted */
};

/** Every bitmap of an image, in the library's order. */
struct export_bitmap_names {
    unsigned n;
    struct export_bitmap_name b[QED_BITMAP_MAX];
};

/**
 * A dirty bitmap of an export's image that NBD clients selected as a meta
 * context (qemu:dirty-bitmap:NAME), with how many hold it.  While held,
 * the control socket refuses to remove it (as qemu-nbd refuses to remove
 * a bitmap it exports).  The list is under the export's bm_lock.
 */
struct export_bitmap_use {
    struct export_bitmap_use *next;
    unsigned users;
    char name[];
};

/**
 * export_bitmaps_init - (at open, on the main thread, before the threads
 * start) make @e's lock and publish its bitmaps.  Fatal when out of memory.
 * export_bitmaps_free - free them (after the image is closed).
 */
void export_bitmaps_init(struct export *e);
void export_bitmaps_free(struct export *e);

/**
 * export_bitmaps_publish - (on @e's owner) publish the image's bitmaps as
 * they are now; call after every change.  Returns 0 or -ENOMEM (the old
 * list stays).
 */
int export_bitmaps_publish(struct export *e);

/** export_bitmaps_get - (any thread) a copy of what @e's owner published. */
void export_bitmaps_get(struct export *e, struct export_bitmap_names *out);

/**
 * export_bitmap_hold - (any thread) one more user of bitmap @name of @e,
 * into *@u (give it back with export_bitmap_release).  Returns 0, -ENOENT
 * when no consistent bitmap of that name is published now (it was just
 * removed), or -ENOMEM.
 * export_bitmap_users - how many hold bitmap @name of @e.
 */
int export_bitmap_hold(struct export *e, const char *name, struct export_bitmap_use **u);
void export_bitmap_release(struct export *e, struct export_bitmap_use *u);
unsigned export_bitmap_users(struct export *e, const char *name);

/**
 * export_bitmap_remove - (on @e's owner) remove bitmap @name from the
 * image unless an NBD client holds it (-EBUSY); then publish.  Returns 0
 * or a negative errno (qed_bitmap_remove's).
 */
int export_bitmap_remove(struct export *e, const char *name);

/* ---- Listening (net/listen.c; the rest is in net/listen.h) ---- */

/**
 * srv_conn_gone - called by the connection module whenever a
 * connection has been closed: accepting resumes if it was paused, and the
 * loop ends once the last connection is gone in stdio mode or at shutdown.
 */
void srv_conn_gone(void);

#endif /* QEDNBD_H */
