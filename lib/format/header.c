/*
 * header.c - the QED header: encoding, geometry, and every open-time rule.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <string.h>

#include "checked.h"
#include "qed-format.h"

void qed_header_decode(const uint8_t raw[QED_HEADER_BYTES], struct qed_header *h)
{
    h->magic = qed_get32(raw + 0);
    h->cluster_size = qed_get32(raw + 4);
    h->table_size = qed_get32(raw + 8);
    h->header_size = qed_get32(raw + 12);
    h->features = qed_get64(raw + 16);
    h->compat_features = qed_get64(raw + 24);
    h->autoclear_features = qed_get64(raw + 32);
    h->l1_table_offset = qed_get64(raw + 40);
    h->image_size = qed_get64(raw + 48);
    h->backing_filename_offset = qed_get32(raw + 56);
    h->backing_filename_size = qed_get32(raw + 60);
}

void qed_header_encode(const struct qed_header *h, uint8_t raw[QED_HEADER_BYTES])
{
    qed_put32(raw + 0, h->magic);
    qed_put32(raw + 4, h->cluster_size);
    qed_put32(raw + 8, h->table_size);
    qed_put32(raw + 12, h->header_size);
    qed_put64(raw + 16, h->features);
    qed_put64(raw + 24, h->compat_features);
    qed_put64(raw + 32, h->autoclear_features);
    qed_put64(raw + 40, h->l1_table_offset);
    qed_put64(raw + 48, h->image_size);
    qed_put32(raw + 56, h->backing_filename_offset);
    qed_put32(raw + 60, h->backing_filename_size);
}

bool qed_is_pow2(uint64_t v)
{
    return v && !(v & (v - 1));
}

static uint32_t log2u(uint64_t v)
{
    uint32_t n = 0;
    while (v > 1) {
        v >>= 1;
        n++;
    }
    return n;
}

uint64_t qed_max_image_size(uint32_t cluster_size, uint32_t table_size)
{
    /* N*N*cs = 2^(2*log2 N + log2 cs).  Large geometries exceed 2^64, so
     * work with exponents instead of overflowing like QEMU does, and never
     * go past QED_MAX_VIRTUAL_SIZE: above it, offsets near the end of the
     * image wrap around 2^64 (see checked.h). */
    uint64_t n = (uint64_t)table_size * cluster_size / sizeof(uint64_t);
    uint32_t bits = 2 * log2u(n) + log2u(cluster_size);

    if (bits >= 63)
        return QED_MAX_VIRTUAL_SIZE;
    return ((uint64_t)1 << bits) & ~(uint64_t)511;
}

int qed_geom_init(struct qed_geom *g, uint32_t cluster_size, uint32_t table_size,
                  uint32_t header_size, const char *name, char *err, size_t errlen)
{
    if (!qed_is_pow2(cluster_size) || cluster_size < QED_MIN_CLUSTER_SIZE ||
        cluster_size > QED_MAX_CLUSTER_SIZE)
        return qed_errf(err, errlen, -EINVAL,
                        "%s: QED cluster size %" PRIu32 " is not a power of two in [%u, %u]",
                        name, cluster_size, QED_MIN_CLUSTER_SIZE, QED_MAX_CLUSTER_SIZE);
    if (!qed_is_pow2(table_size) || table_size < QED_MIN_TABLE_SIZE ||
        table_size > QED_MAX_TABLE_SIZE)
        return qed_errf(err, errlen, -EINVAL,
                        "%s: QED table size %" PRIu32 " is not a power of two in [%u, %u]", name,
                        table_size, QED_MIN_TABLE_SIZE, QED_MAX_TABLE_SIZE);
    if (header_size == 0)
        return qed_errf(err, errlen, -EINVAL, "%s: QED header size is 0 clusters", name);
    if ((uint64_t)header_size * cluster_size > UINT32_MAX)
        return qed_errf(err, errlen, -EINVAL,
                        "%s: QED header size %" PRIu32 " clusters of %" PRIu32
                        " bytes overflows 32 bits",
                        name, header_size, cluster_size);

    memset(g, 0, sizeof(*g));
    g->cluster_size = cluster_size;
    g->table_size = table_size;
    g->cluster_bits = log2u(cluster_size);
    g->table_entries = (uint32_t)((uint64_t)table_size * cluster_size / sizeof(uint64_t));
    g->entry_bits = log2u(g->table_entries);
    g->l2_shift = g->cluster_bits;
    g->l1_shift = g->cluster_bits + g->entry_bits;
    g->table_bytes = (uint64_t)table_size * cluster_size;
    g->header_bytes = (uint64_t)header_size * cluster_size;
    g->max_size = qed_max_image_size(cluster_size, table_size);
    return 0;
}

bool qed_check_cluster_offset(const struct qed_geom *g, uint64_t off, uint64_t file_size)
{
    if (off & (g->cluster_size - 1))
        return false;
    return off >= g->header_bytes && off < file_size;
}

bool qed_check_table_offset(const struct qed_geom *g, uint64_t off, uint64_t file_size)
{
    uint64_t last;

    if (!qed_check_cluster_offset(g, off, file_size))
        return false;
    /* Guard the addition: a huge offset must not wrap around to a small one. */
    if (qed_add_overflows(off, g->table_bytes - g->cluster_size, &last))
        return false;
    return qed_check_cluster_offset(g, last, file_size);
}

int qed_header_validate(const struct qed_header *h, uint64_t file_size, const char *name,
                        struct qed_geom *g, char *err, size_t errlen)
{
    uint64_t unknown, file_end;
    int r;

    if (h->magic != QED_MAGIC)
        return qed_errf(err, errlen, -EINVAL, "%s: not a QED image (bad magic 0x%08" PRIx32 ")",
                        name, h->magic);
    unknown = h->features & ~QED_F_KNOWN;
    if (unknown)
        return qed_errf(err, errlen, -ENOTSUP,
                        "%s: QED image uses unknown feature bits 0x%" PRIx64
                        " (this version supports 0x%llx)",
                        name, unknown, (unsigned long long)QED_F_KNOWN);
    r = qed_geom_init(g, h->cluster_size, h->table_size, h->header_size, name, err, errlen);
    if (r < 0)
        return r;
    if (h->image_size % 512)
        return qed_errf(err, errlen, -EINVAL,
                        "%s: QED image size %" PRIu64 " is not a multiple of 512", name,
                        h->image_size);
    /* g->max_size is at most QED_MAX_VIRTUAL_SIZE: no offset in the image can
     * wrap around 2^64 (see checked.h). */
    if (h->image_size > g->max_size)
        return qed_errf(err, errlen, -EINVAL,
                        "%s: QED image size %" PRIu64 " exceeds the maximum %" PRIu64
                        " for cluster size %" PRIu32 " and table size %" PRIu32 "%s",
                        name, h->image_size, g->max_size, h->cluster_size, h->table_size,
                        g->max_size == QED_MAX_VIRTUAL_SIZE
                            ? " (2^63 - 512: the most NBD clients can address)"
                            : "");

    /* The trailing partial cluster of a file does not count. */
    file_end = file_size & ~(uint64_t)(g->cluster_size - 1);
    if (h->l1_table_offset & (g->cluster_size - 1))
        return qed_errf(err, errlen, -EINVAL,
                        "%s: QED L1 table offset %" PRIu64 " is not cluster-aligned", name,
                        h->l1_table_offset);
    if (h->l1_table_offset < g->header_bytes)
        return qed_errf(err, errlen, -EINVAL,
                        "%s: QED L1 table offset %" PRIu64 " lies inside the header", name,
                        h->l1_table_offset);
    if (!qed_range_within(h->l1_table_offset, g->table_bytes, file_end))
        return qed_errf(err, errlen, -EINVAL,
                        "%s: QED L1 table at %" PRIu64 " (%" PRIu64
                        " bytes) runs past the end of the file (%" PRIu64 " bytes)",
                        name, h->l1_table_offset, g->table_bytes, file_size);

    if (h->features & QED_F_BACKING_FILE) {
        if (!qed_range_within(h->backing_filename_offset, h->backing_filename_size,
                              g->header_bytes))
            return qed_errf(err, errlen, -EINVAL,
                            "%s: QED backing file name (offset %" PRIu32 ", size %" PRIu32
                            ") runs past the header (%" PRIu64 " bytes)",
                            name, h->backing_filename_offset, h->backing_filename_size,
                            g->header_bytes);
        if (h->backing_filename_size >= PATH_MAX)
            return qed_errf(err, errlen, -EINVAL,
                            "%s: QED backing file name is %" PRIu32
                            " bytes, at least PATH_MAX (%d)",
                            name, h->backing_filename_size, PATH_MAX);
    }
    return 0;
}
