/*
 * checked.h - overflow-checked arithmetic on offsets and lengths.
 * Internal to libqed.
 *
 * Every helper computes into *@res and returns true when the exact result
 * does not fit in 64 bits (then *@res holds the wrapped value, which the
 * caller must not use).  Read "if (qed_add_overflows(off, len, &end))" as
 * "if off + len wraps".
 *
 * Where the values come from, and where they are checked
 * ------------------------------------------------------
 * The root rule: no image has a virtual size above QED_MAX_VIRTUAL_SIZE
 * (INT64_MAX rounded down to 512, the most an NBD client can address), and no
 * cluster size or table size is above 64 MiB or 16.  Then every guest offset
 * and the end of every guest cluster, L2 table coverage and request lies
 * below 2^63, and sums of two of them cannot wrap.  The helpers below check
 * the places where that reasoning is not enough, or where a slip would turn
 * into a heap overflow or an empty lock range.
 *
 * From the image (untrusted until checked):
 *  - header fields (cluster size, table size, header size, image size, L1
 *    offset, backing name offset and length): qed_geom_init() and
 *    qed_header_validate() (header.c) at open; qed_max_image_size() caps the
 *    size at QED_MAX_VIRTUAL_SIZE; qed_create() (image-create.c) and
 *    qed_resize() (request.c) apply the same maximum to new sizes.
 *  - L1 entries (L2 table offsets): qed_check_table_offset() (header.c), used
 *    by qed_meta_init() (metadata.c) at open, get_l2() (request.c) before every
 *    load, and qed_check_image() (check.c).
 *  - L2 entries (data cluster offsets): qed_check_cluster_offset() (header.c),
 *    used by run_lookup() (request.c) for every run and by check_l2()
 *    (check.c); qed_meta_sanitize_l2() (metadata.c) also disables, when a
 *    table is first loaded, entries past the end of the file at open or
 *    pointing at metadata.
 *  - the backing file name length: qed_header_validate() (within the header
 *    clusters, shorter than PATH_MAX) before qed_backing_open()
 *    (backing-file.c) reads it.
 *
 * From the client (an NBD request, or any caller of the qed_* API):
 *  - offset and length of read, write, write-zeroes, discard, block status:
 *    the server's tx_check() (server/tx.c) first, then check_range()
 *    (request.c), which refuses off + len past the image size or past 2^64
 *    before a request exists;
 *  - a new size: qed_resize() (request.c), qed_create() (image-create.c).
 *  Within a request, run_lookup() (cluster and table ends), queue_enter()
 *  (the cluster range a request locks) and the discard range in step_run()
 *  compute ends through these helpers, so a wrap fails the request or keeps a
 *  conservative range instead of indexing past a table.
 */
#ifndef QED_CHECKED_H
#define QED_CHECKED_H

#include <stdbool.h>
#include <stdint.h>

/** qed_add_overflows - *@res = @a + @b; true when the sum wraps past 2^64. */
static inline bool qed_add_overflows(uint64_t a, uint64_t b, uint64_t *res)
{
    return __builtin_add_overflow(a, b, res);
}

/** qed_mul_overflows - *@res = @a * @b; true when the product does not fit 64 bits. */
static inline bool qed_mul_overflows(uint64_t a, uint64_t b, uint64_t *res)
{
    return __builtin_mul_overflow(a, b, res);
}

/**
 * qed_align_up_overflows - *@res = @v rounded up to a multiple of @align (a
 * power of two); true when that multiple is 2^64 or more.
 */
static inline bool qed_align_up_overflows(uint64_t v, uint64_t align, uint64_t *res)
{
    uint64_t t;

    if (__builtin_add_overflow(v, align - 1, &t)) {
        *res = 0;
        return true;
    }
    *res = t & ~(align - 1);
    return false;
}

/**
 * qed_range_within - does [@off, @off + @len) lie inside [0, @limit)?  False
 * as well when @off + @len wraps.
 */
static inline bool qed_range_within(uint64_t off, uint64_t len, uint64_t limit)
{
    uint64_t end;

    return !qed_add_overflows(off, len, &end) && end <= limit;
}

#endif /* QED_CHECKED_H */
