/*
 * qed-internal.h - structures and helpers shared by the modules of libqed.
 * Not installed; tests include it to reach the pure functions.
 */
#ifndef QED_INTERNAL_H
#define QED_INTERNAL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qed.h"

/* ---- Logging (log.c) ---- */

/** qed_log - deliver a message to the configured log sink. */
void qed_log(enum qed_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** True when DEBUG messages are delivered: lets hot paths skip formatting. */
extern bool qed_log_debug;

/** qed_errf - format an error message into @err (may be NULL) and return @ret. */
int qed_errf(char *err, size_t errlen, int ret, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- On-disk header (header.c) ---- */

#define QED_HEADER_BYTES 64

/** The header in CPU byte order. */
struct qed_header {
    uint32_t magic;
    uint32_t cluster_size;
    uint32_t table_size;
    uint32_t header_size;
    uint64_t features;
    uint64_t compat_features;
    uint64_t autoclear_features;
    uint64_t l1_table_offset;
    uint64_t image_size;
    uint32_t backing_filename_offset;
    uint32_t backing_filename_size;
};

/** Geometry derived from a valid header. */
struct qed_geom {
    uint32_t cluster_size;
    uint32_t table_size;
    uint32_t cluster_bits;   /* log2(cluster_size) */
    uint32_t table_entries;  /* N = table_size * cluster_size / 8 */
    uint32_t entry_bits;     /* log2(N) */
    uint32_t l2_shift;       /* = cluster_bits */
    uint32_t l1_shift;       /* = cluster_bits + entry_bits */
    uint64_t table_bytes;    /* table_size * cluster_size */
    uint64_t header_bytes;   /* header_size * cluster_size */
    uint64_t max_size;       /* N * N * cluster_size, capped at QED_MAX_VIRTUAL_SIZE */
};

/** qed_header_decode - parse 64 little-endian bytes. */
void qed_header_decode(const uint8_t raw[QED_HEADER_BYTES], struct qed_header *h);

/** qed_header_encode - produce the 64 on-disk bytes. */
void qed_header_encode(const struct qed_header *h, uint8_t raw[QED_HEADER_BYTES]);

/** qed_is_pow2 - true for a nonzero power of two. */
bool qed_is_pow2(uint64_t v);

/**
 * qed_geom_init - fill @g from a cluster and table size.  Returns 0, or
 * -EINVAL when either is not a power of two in its range (a message naming
 * the field goes to @err, prefixed with @name).
 */
int qed_geom_init(struct qed_geom *g, uint32_t cluster_size, uint32_t table_size,
                  uint32_t header_size, const char *name, char *err, size_t errlen);

/**
 * qed_max_image_size - N*N*cluster_size without overflow, rounded down to
 * 512, and at most QED_MAX_VIRTUAL_SIZE.
 */
uint64_t qed_max_image_size(uint32_t cluster_size, uint32_t table_size);

/**
 * qed_header_validate - apply every open-time rule to @h, for a file of
 * @file_size bytes called @name.  Fills @g on success.  Returns 0, or
 * -EINVAL (bad field) / -ENOTSUP (unknown feature bit) with a message in @err
 * like "t.qed: QED cluster size 12288 is not a power of two in [4096, 67108864]".
 */
int qed_header_validate(const struct qed_header *h, uint64_t file_size, const char *name,
                        struct qed_geom *g, char *err, size_t errlen);

/* Address arithmetic */
static inline uint64_t qed_l1_index(const struct qed_geom *g, uint64_t pos)
{
    return pos >> g->l1_shift;
}
static inline uint64_t qed_l2_index(const struct qed_geom *g, uint64_t pos)
{
    return (pos >> g->l2_shift) & (g->table_entries - 1);
}
static inline uint64_t qed_offset_in_cluster(const struct qed_geom *g, uint64_t pos)
{
    return pos & (g->cluster_size - 1);
}
static inline uint64_t qed_start_of_cluster(const struct qed_geom *g, uint64_t pos)
{
    return pos & ~(uint64_t)(g->cluster_size - 1);
}
/** Clusters needed to hold @bytes starting at a cluster boundary (rounds up). */
static inline uint64_t qed_bytes_to_clusters(const struct qed_geom *g, uint64_t bytes)
{
    return (bytes >> g->cluster_bits) + ((bytes & (g->cluster_size - 1)) != 0);
}
/** Bytes of guest space one L2 table covers. */
static inline uint64_t qed_l2_coverage(const struct qed_geom *g)
{
    return (uint64_t)1 << g->l1_shift;
}

/**
 * qed_check_cluster_offset - is @off a valid data-cluster offset for a file of
 * @file_size bytes (aligned, after the header, before the end)?
 */
bool qed_check_cluster_offset(const struct qed_geom *g, uint64_t off, uint64_t file_size);

/** qed_check_table_offset - is the whole table at @off inside [header, file_size)? */
bool qed_check_table_offset(const struct qed_geom *g, uint64_t off, uint64_t file_size);

/* ---- Locking (lock.c) ---- */

/**
 * qed_lock_image - take the image lock on @fd (QEMU-compatible OFD byte-range
 * locks): a read-write open takes the write permission and shares none of
 * write/resize; a read-only open takes consistent-read and refuses to share
 * write.  Returns 0, or -EBUSY with a message naming @name.
 */
int qed_lock_image(int fd, bool write, bool backing, const char *name, char *err, size_t errlen);

/**
 * qed_lock_image_wait - qed_lock_image, but while another process holds a
 * conflicting lock, poll for it for up to @wait_ms milliseconds (logging once
 * that it waits) before failing with the same -EBUSY and message.  @wait_ms 0
 * fails at once.  Blocks the caller: for the open path only.
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

#endif /* QED_INTERNAL_H */
