/*
 * bitmap-store.c - the dirty bitmaps on disk (doc/qed-bitmaps.md): loading
 * them at open, marking them in use before a read-write open returns, and
 * storing them at close (growing the header area first when they do not
 * fit: header-grow.c).  Blocking I/O on the set-up paths only, through
 * qed_pread_full/qed_pwrite_full (which also serve cache=none).
 *
 * Why two directory slots: a directory may span several sectors, and a
 * power cut may tear its write.  Each store writes the slot that does not
 * hold the current directory, with the next generation, and the newest
 * valid slot wins at open; a torn slot fails its checksum, so the other,
 * which was on stable storage before the write began, is used.  What makes
 * that safe is the in-use rule: before anything can change the disk or the
 * bits after an open, the current directory says every bitmap is in use.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qed-image.h"

/* The bits of @bm, @len bytes, from or to the file at @off (little-endian words). */
static int bits_io(struct qed_image *img, struct qed_bitmap *bm, uint64_t off, uint64_t len,
                   bool write)
{
    int r;

#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    for (uint64_t i = 0; write && i < len / 8; i++)
        bm->bits.w[i] = htole64(bm->bits.w[i]);
#endif
    r = write ? qed_pwrite_full(img->fd, bm->bits.w, len, off)
              : qed_pread_full(img->fd, bm->bits.w, len, off);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    for (uint64_t i = 0; i < len / 8; i++)
        bm->bits.w[i] = le64toh(bm->bits.w[i]);
#endif
    return r;
}

/* Read both slots; the newest valid one into img->bmdir.  -ENOENT: none has the magic. */
static int read_dir(struct qed_image *img, char *why, size_t whylen)
{
    uint64_t a = qed_bmdir_area_start(&img->h);
    struct qed_bmdir *d[2] = {NULL, NULL};
    uint8_t *buf = malloc(QED_BMDIR_SLOT);
    int rs[2], r = -ENOMEM, best = -1;

    d[0] = malloc(sizeof(*d[0]));
    d[1] = malloc(sizeof(*d[1]));
    if (!buf || !d[0] || !d[1])
        goto out;
    for (int s = 0; s < 2; s++) {
        r = qed_pread_full(img->fd, buf, QED_BMDIR_SLOT, a + (uint64_t)s * QED_BMDIR_SLOT);
        if (r < 0) {
            qed_errf(why, whylen, r, "cannot read it: %s", strerror(-r));
            goto out;
        }
        rs[s] = qed_bmdir_decode(buf, d[s], why, whylen);
        if (rs[s] == 0 && (best < 0 || d[s]->generation > d[best]->generation))
            best = s;
    }
    if (best >= 0) {
        /* A slot with the magic and a bad checksum beside a valid one is
         * a torn write of a store that never completed: not an error. */
        img->bmdir = d[best];
        img->bmdir_slot = best;
        d[best] = NULL;
        r = 0;
    } else {
        r = rs[0] == -ENOENT && rs[1] == -ENOENT ? -ENOENT : -EINVAL;
    }
out:
    free(buf);
    free(d[0]);
    free(d[1]);
    return r;
}

/* One bitmap from directory entry @e: allocated, and read unless inconsistent. */
static int load_one(struct qed_image *img, const struct qed_bmdir_entry *e, bool trusted,
                    char *err, size_t errlen)
{
    uint64_t bytes = qed_bitmap_bytes(qed_bm_nbits(img->h.image_size, e->granularity));
    bool inconsistent = !trusted || (e->flags & QED_BME_IN_USE);
    struct qed_bitmap *bm;
    int r;

    /* An inconsistent bitmap holds no bits, so it never counts against the
     * limits: it must stay removable whatever the size became. */
    if (!inconsistent &&
        (bytes > QED_BITMAP_MAX_BYTES || img->bitmap_bytes + bytes > QED_BITMAP_TOTAL_BYTES))
        return qed_errf(err, errlen, -EFBIG, "%s: bitmap %s takes %" PRIu64 " bytes, over the "
                        "memory limit (%llu MiB for one, %llu MiB for all)", img->path, e->name,
                        bytes, (unsigned long long)(QED_BITMAP_MAX_BYTES >> 20),
                        (unsigned long long)(QED_BITMAP_TOTAL_BYTES >> 20));
    bm = qed_bitmap_new(img, e->name, e->granularity, inconsistent);
    if (!bm)
        return qed_errf(err, errlen, -ENOMEM, "%s: out of memory for bitmap %s", img->path,
                        e->name);
    bm->enabled = (e->flags & QED_BME_ENABLED) != 0;
    if (!bm->inconsistent) {
        /* validate said data_length is exactly the words of these bits */
        r = bits_io(img, bm, e->data_offset, e->data_length, false);
        if (r < 0) {
            qed_bitmap_free(bm);
            return qed_errf(err, errlen, r, "%s: cannot read bitmap %s: %s", img->path,
                            e->name, strerror(-r));
        }
        qed_bits_truncate(&bm->bits, bm->bits.nbits); /* stray bits past the end, and nset */
    }
    return qed_bitmap_insert(img, bm);
}

int qed_bitmap_load(struct qed_image *img, char *err, size_t errlen)
{
    bool af = (img->h.autoclear_features & QED_AF_BITMAPS) != 0, trusted;
    char why[256] = "";
    int r;

    if (qed_bmdir_area_start(&img->h) + 2ull * QED_BMDIR_SLOT > img->g.header_bytes)
        return 0; /* no room for a directory: an image without bitmaps */
    r = read_dir(img, why, sizeof(why));
    if (r == -ENOENT || r == -ENOMEM)
        return r == -ENOENT ? 0 : qed_errf(err, errlen, r, "%s: out of memory", img->path);
    if (r == 0)
        r = qed_bmdir_validate(img->bmdir, &img->h, why, sizeof(why));
    if (r < 0 && !af) {
        /* Without the bit, another writer had the image: its header
         * writes (a longer backing file name) may have covered the
         * directory.  Nothing in it would be trusted anyway. */
        qed_log(QED_LOG_WARN, "%s: ignoring a damaged bitmap directory (%s)", img->path, why);
        free(img->bmdir);
        img->bmdir = NULL;
        return 0;
    }
    if (r < 0)
        return qed_errf(err, errlen, -EINVAL, "%s: malformed bitmap directory: %s", img->path,
                        why);
    /* Not the bit: QEMU (or another writer) wrote the image.  Another
     * size: the bits no longer describe this disk. */
    trusted = af && img->bmdir->image_size == img->h.image_size;
    for (uint32_t i = 0; i < img->bmdir->nb; i++) {
        r = load_one(img, &img->bmdir->e[i], trusted, err, errlen);
        if (r < 0)
            return r;
    }
    return 0;
}

/* Write @d as the next generation into the slot that does not hold the
 * current directory, then fdatasync. */
static int write_dir(struct qed_image *img, struct qed_bmdir *d)
{
    uint64_t a = qed_bmdir_area_start(&img->h);
    int slot = img->bmdir ? 1 - img->bmdir_slot : 0;
    uint8_t *buf = malloc(QED_BMDIR_SLOT);
    int r;

    if (!buf)
        return -ENOMEM;
    d->generation = img->bmdir ? img->bmdir->generation + 1 : 1;
    qed_bmdir_encode(d, buf);
    r = qed_pwrite_full(img->fd, buf, QED_BMDIR_SLOT, a + (uint64_t)slot * QED_BMDIR_SLOT);
    free(buf);
    /* Why flush here: the caller's next step (a guest write after open,
     * or nothing after close) must find this directory on stable storage. */
    if (r == 0 && fdatasync(img->fd) < 0)
        r = -errno;
    if (r < 0)
        return r;
    if (!img->bmdir) {
        img->bmdir = malloc(sizeof(*img->bmdir));
        if (!img->bmdir)
            return -ENOMEM;
    }
    *img->bmdir = *d;
    img->bmdir_slot = slot;
    return 0;
}

int qed_bitmap_mark_in_use(struct qed_image *img, char *err, size_t errlen)
{
    struct qed_bmdir *d;
    bool need = false;
    int r;

    if (!img->bmdir)
        return 0;
    for (uint32_t i = 0; i < img->bmdir->nb; i++)
        need |= !(img->bmdir->e[i].flags & QED_BME_IN_USE);
    if (!need)
        return 0;
    d = malloc(sizeof(*d));
    if (!d)
        return qed_errf(err, errlen, -ENOMEM, "%s: out of memory", img->path);
    /* Every entry, also those that are inconsistent only because the
     * autoclear bit is clear: close sets the bit before it writes the new
     * directory, and a crash between the two must not revive them. */
    *d = *img->bmdir;
    for (uint32_t i = 0; i < d->nb; i++)
        d->e[i].flags |= QED_BME_IN_USE;
    r = write_dir(img, d);
    free(d);
    if (r < 0)
        return qed_errf(err, errlen, r, "%s: cannot mark the bitmaps in use: %s", img->path,
                        strerror(-r));
    return 0;
}

/* Where each bitmap's bits go, in @d; returns the end of the last one. */
static uint64_t layout(const struct qed_image *img, const struct qed_header *h,
                       struct qed_bmdir *d)
{
    uint64_t pos = qed_bmdir_area_start(h) + 2ull * QED_BMDIR_SLOT;

    memset(d, 0, sizeof(*d));
    d->image_size = img->h.image_size;
    d->nb = img->nbitmaps;
    for (unsigned i = 0; i < img->nbitmaps; i++) {
        const struct qed_bitmap *bm = img->bitmaps[i];
        struct qed_bmdir_entry *e = &d->e[i];

        strcpy(e->name, bm->name);
        e->granularity = bm->granularity;
        e->flags = (bm->enabled ? QED_BME_ENABLED : 0) | (bm->inconsistent ? QED_BME_IN_USE : 0);
        if (bm->inconsistent)
            continue; /* stored without bits: they are never read */
        pos = (pos + QED_BM_DATA_ALIGN - 1) / QED_BM_DATA_ALIGN * QED_BM_DATA_ALIGN;
        e->data_offset = pos;
        e->data_length = qed_bm_data_bytes(img->h.image_size, bm->granularity);
        pos += e->data_length;
    }
    return pos;
}

/* The header area the bitmaps need (@need bytes), as a header_size, with
 * room to spare so that growing is rare; 0 when even the cap is too small. */
static uint32_t grown_header_size(const struct qed_image *img, uint64_t need)
{
    uint64_t cs = img->g.cluster_size, cap = UINT32_MAX / cs;
    uint64_t want = (2 * need + cs - 1) / cs;

    if ((need + cs - 1) / cs > cap)
        return 0;
    return (uint32_t)(want > cap ? cap : want);
}

int qed_bitmap_store_fits(const struct qed_image *img, uint64_t extra)
{
    struct qed_bmdir *d = malloc(sizeof(*d));
    uint64_t need;

    if (!d)
        return -ENOMEM;
    need = layout(img, &img->h, d) + extra + QED_BM_DATA_ALIGN;
    free(d);
    return grown_header_size(img, need) ? 0 : -EFBIG;
}

/* Write the bits of every consistent bitmap where @d puts them. */
static int write_bits(struct qed_image *img, const struct qed_bmdir *d)
{
    for (uint32_t i = 0; i < d->nb; i++) {
        int r;

        if (!d->e[i].data_length)
            continue;
        r = bits_io(img, img->bitmaps[i], d->e[i].data_offset, d->e[i].data_length, true);
        if (r < 0)
            return r;
    }
    return 0;
}

/* Zero both directory slots (not flushed: the bits' flush covers it). */
static int zero_slots(struct qed_image *img)
{
    uint8_t *z = calloc(2, QED_BMDIR_SLOT);
    int r;

    if (!z)
        return -ENOMEM;
    r = qed_pwrite_full(img->fd, z, 2 * QED_BMDIR_SLOT, qed_bmdir_area_start(&img->h));
    free(z);
    return r;
}

/* The body of qed_bitmap_store, with @d to fill. */
static int store(struct qed_image *img, struct qed_bmdir *d)
{
    uint64_t need = layout(img, &img->h, d);
    bool header = !(img->h.autoclear_features & QED_AF_BITMAPS);
    int r;

    if (need > img->g.header_bytes) {
        uint32_t hs = grown_header_size(img, need);

        if (!hs) {
            qed_log(QED_LOG_ERROR, "%s: the bitmaps need %" PRIu64 " bytes of header area, "
                    "more than the format allows (4 GiB); not stored", img->path, need);
            return -EFBIG;
        }
        r = qed_header_grow(img, hs);
        if (r < 0)
            return r;
        header = true; /* the grown header has the bit cleared */
    }
    /* Without a current directory, the slots hold whatever was there: the
     * clusters a growth relocated (guest data too), or a directory an open
     * ignored as damaged, maybe of a higher generation.  Zero both, so that
     * nothing but ours can pass for a directory once the bit is set. */
    r = img->bmdir ? 0 : zero_slots(img);
    if (r == 0)
        r = write_bits(img, d);
    /* Why flush before the directory: it makes the bits reachable, so
     * they must be on stable storage first. */
    if (r == 0 && fdatasync(img->fd) < 0)
        r = -errno;
    if (r == 0)
        r = write_dir(img, d);
    if (r == 0 && header) {
        /* Why the bit last: without it every bitmap is inconsistent, so a
         * crash before this header write loses them but trusts nothing;
         * and a first directory torn by a crash is ignored, not refused,
         * while the bit is clear.  The directory was flushed first. */
        img->h.autoclear_features |= QED_AF_BITMAPS;
        r = qed_image_write_header_sync(img);
        if (r == 0 && fdatasync(img->fd) < 0)
            r = -errno;
    }
    return r;
}

int qed_bitmap_store(struct qed_image *img)
{
    struct qed_bmdir *d;
    int r;

    /* Nothing to store, and nothing on disk to mark clean. */
    if (img->nbitmaps == 0 && (!img->bmdir || img->bmdir->nb == 0))
        return 0;
    d = malloc(sizeof(*d));
    if (!d)
        return -ENOMEM;
    r = store(img, d);
    free(d);
    if (r < 0)
        qed_log(QED_LOG_ERROR, "%s: storing the dirty bitmaps failed: %s (they will be "
                "inconsistent at the next open)", img->path, strerror(-r));
    return r;
}
