/*
 * qed-format.h - the QED on-disk format: constants, the header, table
 * entries, geometry and address arithmetic.  Pure code: libc only, no I/O.
 * Used by the engine and by tests; never by server/ or contrib/ (they see
 * lib/include/qed.h).
 */
#ifndef QED_FORMAT_H
#define QED_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Format constants ------------------------------------------------- */
/*
 * lib/include/qed.h repeats the geometry limits its users need, token for
 * token: the engine includes both headers, so a difference is a "macro
 * redefined" error there, never two silent values.
 */
#define QED_MAGIC_BYTES "QED"            /* followed by a NUL: 'Q' 'E' 'D' '\0' */
#define QED_MAGIC 0x00444551u            /* the magic as a little-endian u32 */

#define QED_F_BACKING_FILE 0x1ull
#define QED_F_NEED_CHECK 0x2ull
#define QED_F_BACKING_FORMAT_NO_PROBE 0x4ull
#define QED_F_KNOWN (QED_F_BACKING_FILE | QED_F_NEED_CHECK | QED_F_BACKING_FORMAT_NO_PROBE)

/* Geometry limits (repeated in qed.h; see above) */
#define QED_MIN_CLUSTER_SIZE (4u * 1024)
#define QED_MIN_TABLE_SIZE 1u
#define QED_MAX_CLUSTER_SIZE (64u * 1024 * 1024)
#define QED_MAX_TABLE_SIZE 16u
#define QED_DEFAULT_CLUSTER_SIZE (64u * 1024)
#define QED_DEFAULT_TABLE_SIZE 4u

/* The largest virtual size of any image: 2^63 - 512 (see qed.h). */
#define QED_MAX_VIRTUAL_SIZE ((uint64_t)INT64_MAX & ~(uint64_t)511)

/* ---- Table entries ------------------------------------------------------ */
/*
 * An L1 or L2 entry is a little-endian u64 file offset, with three meanings
 * that are not offsets:
 *  - QED_ENTRY_UNALLOCATED (0): nothing here; read through to the backing file.
 *  - QED_ENTRY_ZERO (1, L2 only): the cluster reads as zeros (QEMU's "zero
 *    cluster"); no data cluster is allocated.
 *  - an offset with QED_ENTRY_DISABLED set (odd, and not 1): an entry found
 *    invalid at open, disabled in memory only (engine/metadata.c); no valid
 *    offset is odd, since data clusters and tables are cluster-aligned.
 */
#define QED_ENTRY_UNALLOCATED 0ull
#define QED_ENTRY_ZERO 1ull
#define QED_ENTRY_DISABLED 1ull

/** qed_entry_is_offset - true when @e names a cluster (neither 0, 1 nor disabled). */
static inline bool qed_entry_is_offset(uint64_t e)
{
    return e > QED_ENTRY_ZERO && !(e & QED_ENTRY_DISABLED);
}

/* ---- Messages (message.c) ---------------------------------------------- */

/** qed_errf - format an error message into @err (may be NULL) and return @ret. */
int qed_errf(char *err, size_t errlen, int ret, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- Little-endian fields ---------------------------------------------- */

/** qed_get32 - the little-endian u32 at @p. */
static inline uint32_t qed_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/** qed_get64 - the little-endian u64 at @p. */
static inline uint64_t qed_get64(const uint8_t *p)
{
    return (uint64_t)qed_get32(p) | (uint64_t)qed_get32(p + 4) << 32;
}

/** qed_put32 - store @v at @p, little-endian. */
static inline void qed_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/** qed_put64 - store @v at @p, little-endian. */
static inline void qed_put64(uint8_t *p, uint64_t v)
{
    qed_put32(p, (uint32_t)v);
    qed_put32(p + 4, (uint32_t)(v >> 32));
}

/* ---- On-disk header (header.c) ---------------------------------------- */

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

#endif /* QED_FORMAT_H */
