/*
 * bitmap-dir.c - the bitmap directory of the QED bitmap extension:
 * encoding, decoding, checksum and validation (doc/qed-bitmaps.md).
 * Pure code.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "bitmap-dir.h"
#include "checked.h"

bool qed_bmdir_name_valid(const char *name)
{
    size_t n = 0;

    if (!name)
        return false;
    for (; name[n]; n++) {
        unsigned char c = (unsigned char)name[n];

        if (n >= QED_BITMAP_NAME_MAX || c <= ' ' || c > '~' || c == '"' || c == '\\')
            return false;
    }
    return n > 0;
}

bool qed_bmdir_granularity_valid(uint64_t g)
{
    return qed_is_pow2(g) && g >= QED_BITMAP_MIN_GRANULARITY && g <= QED_BITMAP_MAX_GRANULARITY;
}

uint64_t qed_bm_nbits(uint64_t size, uint64_t granularity)
{
    return size / granularity + (size % granularity != 0);
}

uint64_t qed_bm_data_bytes(uint64_t size, uint64_t granularity)
{
    uint64_t nbits = qed_bm_nbits(size, granularity);

    return (nbits / 64 + (nbits % 64 != 0)) * 8;
}

uint64_t qed_bmdir_area_start(const struct qed_header *h)
{
    uint64_t cs = h->cluster_size;
    uint64_t end = QED_HEADER_BYTES;

    if (h->features & QED_F_BACKING_FILE)
        end = (uint64_t)h->backing_filename_offset + h->backing_filename_size;
    if (end < QED_HEADER_BYTES)
        end = QED_HEADER_BYTES;
    end = (end + cs - 1) / cs * cs;
    return end < cs ? cs : end;
}

/* CRC-32C over @len more bytes, without the initial and final inversions. */
static uint32_t crc_update(uint32_t crc, const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ ((crc & 1) ? 0x82f63b78u : 0);
    }
    return crc;
}

uint32_t qed_bmdir_crc32c(const uint8_t *p, size_t len)
{
    return ~crc_update(0xffffffffu, p, len);
}

/* Bytes an entry with a name of @n bytes takes: the name padded to 8. */
static size_t entry_bytes(size_t n)
{
    return QED_BME_HDR + (n + 7) / 8 * 8;
}

size_t qed_bmdir_encode(const struct qed_bmdir *d, uint8_t *buf)
{
    size_t pos = QED_BMDIR_HDR;

    memset(buf, 0, QED_BMDIR_SLOT);
    memcpy(buf, QED_BMDIR_MAGIC, 8);
    qed_put32(buf + 8, QED_BMDIR_VERSION);
    qed_put64(buf + 16, d->generation);
    qed_put32(buf + 28, d->nb);
    qed_put64(buf + 32, d->image_size);
    for (uint32_t i = 0; i < d->nb; i++) {
        const struct qed_bmdir_entry *e = &d->e[i];
        size_t n = strlen(e->name);

        qed_put64(buf + pos, e->data_offset);
        qed_put64(buf + pos + 8, e->data_length);
        qed_put32(buf + pos + 16, e->granularity);
        qed_put32(buf + pos + 20, e->flags);
        buf[pos + 24] = (uint8_t)n;
        buf[pos + 25] = (uint8_t)(n >> 8);
        memcpy(buf + pos + QED_BME_HDR, e->name, n);
        pos += entry_bytes(n);
    }
    qed_put32(buf + 24, (uint32_t)pos);
    qed_put32(buf + 12, qed_bmdir_crc32c(buf, pos));
    return pos;
}

int qed_bmdir_decode(const uint8_t *buf, struct qed_bmdir *d, char *why, size_t whylen)
{
    uint8_t tmp[QED_BMDIR_HDR];
    uint32_t size, crc, version;
    size_t pos = QED_BMDIR_HDR;

    if (memcmp(buf, QED_BMDIR_MAGIC, 8) != 0)
        return -ENOENT;
    version = qed_get32(buf + 8);
    size = qed_get32(buf + 24);
    if (version != QED_BMDIR_VERSION)
        return qed_errf(why, whylen, -EINVAL, "version %" PRIu32 " (only %u is known)", version,
                        QED_BMDIR_VERSION);
    if (size < QED_BMDIR_HDR || size > QED_BMDIR_SLOT)
        return qed_errf(why, whylen, -EINVAL, "size %" PRIu32 " outside [%u, %u]", size,
                        QED_BMDIR_HDR, QED_BMDIR_SLOT);
    /* The checksum covers the directory with its own field read as zero. */
    memcpy(tmp, buf, sizeof(tmp));
    memset(tmp + 12, 0, 4);
    crc = crc_update(0xffffffffu, tmp, sizeof(tmp));
    crc = crc_update(crc, buf + QED_BMDIR_HDR, size - QED_BMDIR_HDR);
    if (~crc != qed_get32(buf + 12))
        return qed_errf(why, whylen, -EINVAL, "checksum mismatch");
    memset(d, 0, sizeof(*d));
    d->generation = qed_get64(buf + 16);
    d->nb = qed_get32(buf + 28);
    d->image_size = qed_get64(buf + 32);
    if (d->nb > QED_BITMAP_MAX)
        return qed_errf(why, whylen, -EINVAL, "%" PRIu32 " bitmaps (at most %d)", d->nb,
                        QED_BITMAP_MAX);
    for (uint32_t i = 0; i < d->nb; i++) {
        struct qed_bmdir_entry *e = &d->e[i];
        size_t n;

        if (pos + QED_BME_HDR > size)
            return qed_errf(why, whylen, -EINVAL, "entry %" PRIu32 " past the end", i);
        n = (size_t)buf[pos + 24] | (size_t)buf[pos + 25] << 8;
        if (n == 0 || n > QED_BITMAP_NAME_MAX || pos + entry_bytes(n) > size)
            return qed_errf(why, whylen, -EINVAL, "entry %" PRIu32 ": bad name length %zu", i,
                            n);
        e->data_offset = qed_get64(buf + pos);
        e->data_length = qed_get64(buf + pos + 8);
        e->granularity = qed_get32(buf + pos + 16);
        e->flags = qed_get32(buf + pos + 20);
        memcpy(e->name, buf + pos + QED_BME_HDR, n);
        e->name[n] = '\0';
        if (strlen(e->name) != n)
            return qed_errf(why, whylen, -EINVAL, "entry %" PRIu32 ": NUL in the name", i);
        pos += entry_bytes(n);
    }
    if (pos != size)
        return qed_errf(why, whylen, -EINVAL, "%zu bytes of entries, size says %" PRIu32,
                        pos - QED_BMDIR_HDR, size - QED_BMDIR_HDR);
    return 0;
}

/* Entry @i's own rules, and its data inside [@lo, @hi). */
static int validate_entry(const struct qed_bmdir *d, uint32_t i, uint64_t lo, uint64_t hi,
                          char *why, size_t whylen)
{
    const struct qed_bmdir_entry *e = &d->e[i];
    uint64_t end;

    if (!qed_bmdir_name_valid(e->name))
        return qed_errf(why, whylen, -EINVAL, "bitmap %" PRIu32 ": invalid name", i);
    for (uint32_t j = 0; j < i; j++)
        if (strcmp(d->e[j].name, e->name) == 0)
            return qed_errf(why, whylen, -EINVAL, "bitmap %s appears twice", e->name);
    if (!qed_bmdir_granularity_valid(e->granularity))
        return qed_errf(why, whylen, -EINVAL, "bitmap %s: granularity %" PRIu32 " is not a "
                        "power of two in [512, 2147483648]", e->name, e->granularity);
    if (e->flags & ~QED_BME_KNOWN)
        return qed_errf(why, whylen, -EINVAL, "bitmap %s: unknown flags 0x%" PRIx32, e->name,
                        e->flags & ~QED_BME_KNOWN);
    if (e->data_length == 0 && e->data_offset == 0 && (e->flags & QED_BME_IN_USE))
        return 0; /* an inconsistent bitmap stored without bits */
    if (!(e->flags & QED_BME_IN_USE) &&
        e->data_length != qed_bm_data_bytes(d->image_size, e->granularity))
        return qed_errf(why, whylen, -EINVAL, "bitmap %s: %" PRIu64 " bytes of bits, %" PRIu64
                        " expected for size %" PRIu64, e->name, e->data_length,
                        qed_bm_data_bytes(d->image_size, e->granularity), d->image_size);
    if (e->data_offset % QED_BM_DATA_ALIGN || e->data_offset < lo ||
        qed_add_overflows(e->data_offset, e->data_length, &end) || end > hi)
        return qed_errf(why, whylen, -EINVAL, "bitmap %s: data at %" PRIu64 " (+%" PRIu64
                        ") outside the bitmap area [%" PRIu64 ", %" PRIu64 ") or unaligned",
                        e->name, e->data_offset, e->data_length, lo, hi);
    for (uint32_t j = 0; j < i; j++) {
        const struct qed_bmdir_entry *o = &d->e[j];

        if (o->data_length && e->data_offset < o->data_offset + o->data_length &&
            o->data_offset < end)
            return qed_errf(why, whylen, -EINVAL, "bitmaps %s and %s overlap", o->name,
                            e->name);
    }
    return 0;
}

int qed_bmdir_validate(const struct qed_bmdir *d, const struct qed_header *h, char *why,
                       size_t whylen)
{
    uint64_t lo = qed_bmdir_area_start(h) + 2ull * QED_BMDIR_SLOT;
    uint64_t hi = (uint64_t)h->header_size * h->cluster_size;

    for (uint32_t i = 0; i < d->nb; i++) {
        int r = validate_entry(d, i, lo, hi, why, whylen);

        if (r < 0)
            return r;
    }
    return 0;
}
