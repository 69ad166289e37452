/*
 * bitmap-dir.h - the on-disk bitmap directory of the QED bitmap extension
 * (doc/qed-bitmaps.md): its constants, encoding, decoding and every rule
 * an open applies to it, and the layout of the bitmap area in the header
 * clusters.  Pure code: libc only, no I/O.  Internal to libqed.
 */
#ifndef QED_BITMAP_DIR_H
#define QED_BITMAP_DIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qed-format.h"

/* Autoclear feature bit: the bitmaps were kept up to date by every writer. */
#define QED_AF_BITMAPS ((uint64_t)1)
#define QED_AF_KNOWN QED_AF_BITMAPS

/* Limits (repeated in qed.h token for token, as the geometry limits are). */
#define QED_BITMAP_NAME_MAX 255
#define QED_BITMAP_MAX 64
#define QED_BITMAP_MIN_GRANULARITY 512u
#define QED_BITMAP_MAX_GRANULARITY (2u * 1024 * 1024 * 1024)

#define QED_BMDIR_MAGIC "QEDBITMP"      /* 8 bytes, no NUL */
#define QED_BMDIR_VERSION 1u
#define QED_BMDIR_SLOT (32u * 1024)     /* bytes of one directory slot; two slots */
#define QED_BMDIR_HDR 64u               /* directory header bytes */
#define QED_BME_HDR 32u                 /* entry bytes before the name */
#define QED_BM_DATA_ALIGN 4096u         /* each bitmap's data starts on such a boundary */

/* Entry flags */
#define QED_BME_IN_USE 0x1u   /* the bitmap may be out of date: inconsistent */
#define QED_BME_ENABLED 0x2u  /* records writes */
#define QED_BME_KNOWN (QED_BME_IN_USE | QED_BME_ENABLED)

struct qed_bmdir_entry {
    uint64_t data_offset;     /* file offset of the bits (0 when none are stored) */
    uint64_t data_length;     /* bytes of bits */
    uint32_t granularity;
    uint32_t flags;
    char name[QED_BITMAP_NAME_MAX + 1];
};

/** A decoded directory (one slot). */
struct qed_bmdir {
    uint64_t generation;      /* the slot with the highest valid generation is current */
    uint64_t image_size;      /* virtual size the bits were stored for */
    uint32_t nb;
    struct qed_bmdir_entry e[QED_BITMAP_MAX];
};

/** qed_bmdir_name_valid - 1 to 255 bytes of printable ASCII except space, '"' and '\\'. */
bool qed_bmdir_name_valid(const char *name);

/** qed_bmdir_granularity_valid - a power of two in [512 B, 2 GiB]. */
bool qed_bmdir_granularity_valid(uint64_t g);

/** Bits a bitmap of @granularity needs over @size bytes (rounded up). */
uint64_t qed_bm_nbits(uint64_t size, uint64_t granularity);

/** Bytes of bits stored for it: whole little-endian 64-bit words. */
uint64_t qed_bm_data_bytes(uint64_t size, uint64_t granularity);

/**
 * qed_bmdir_area_start - file offset of the directory's first slot: the
 * first cluster after the header and the backing file name (cluster 1 for
 * every image QEMU or qed-img creates).
 */
uint64_t qed_bmdir_area_start(const struct qed_header *h);

/** qed_bmdir_crc32c - CRC-32C (Castagnoli) of @len bytes. */
uint32_t qed_bmdir_crc32c(const uint8_t *p, size_t len);

/**
 * qed_bmdir_encode - encode @d into @buf (QED_BMDIR_SLOT bytes, zeroed
 * first), checksum included.  Returns the directory's size in bytes.
 */
size_t qed_bmdir_encode(const struct qed_bmdir *d, uint8_t *buf);

/**
 * qed_bmdir_decode - decode a slot of QED_BMDIR_SLOT bytes.  Returns 0;
 * -ENOENT when the slot has no directory magic; -EINVAL when it has one
 * but its size or checksum is wrong (a slot whose write was torn, or
 * damage), with the reason in @why.
 */
int qed_bmdir_decode(const uint8_t *buf, struct qed_bmdir *d, char *why, size_t whylen);

/**
 * qed_bmdir_validate - the rules for a decoded directory of an image with
 * header @h: names valid and distinct, granularities valid, flags known,
 * and the data of every entry with data inside the bitmap data area
 * [area start + 2 slots, header end), aligned, disjoint, and as long as
 * its bits at the directory's image size.  Returns 0 or -EINVAL with the
 * reason in @why.
 */
int qed_bmdir_validate(const struct qed_bmdir *d, const struct qed_header *h, char *why,
                       size_t whylen);

#endif /* QED_BITMAP_DIR_H */
