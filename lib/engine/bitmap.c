/*
 * bitmap.c - the persistent dirty bitmaps of an open image, in memory:
 * the public qed_bitmap_* calls (add, remove, clear, enable, merge,
 * status, find, info), marking the ranges writes touch, and growing them
 * with the image.  Loading and storing them: bitmap-store.c.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "qed-image.h"

bool qed_bitmap_name_valid(const char *name)
{
    return qed_bmdir_name_valid(name);
}

unsigned qed_bitmap_count(const qed_image *img)
{
    return img ? img->nbitmaps : 0;
}

int qed_bitmap_find(const qed_image *img, const char *name)
{
    if (!img || !name)
        return -ENOENT;
    for (unsigned i = 0; i < img->nbitmaps; i++)
        if (strcmp(img->bitmaps[i]->name, name) == 0)
            return (int)i;
    return -ENOENT;
}

static struct qed_bitmap *find(const qed_image *img, const char *name)
{
    int i = qed_bitmap_find(img, name);

    return i < 0 ? NULL : img->bitmaps[i];
}

/* Bytes of the virtual disk marked dirty: the last bit may cover less than a granule. */
static uint64_t dirty_bytes(const struct qed_bitmap *bm, uint64_t size)
{
    uint64_t n = bm->bits.nset * bm->granularity;

    if (bm->bits.nbits && qed_bits_get(&bm->bits, bm->bits.nbits - 1))
        n -= bm->bits.nbits * bm->granularity - size;
    return n;
}

int qed_bitmap_info(const qed_image *img, unsigned idx, struct qed_bitmap_info *out)
{
    const struct qed_bitmap *bm;

    if (!img || idx >= img->nbitmaps || !out)
        return -ENOENT;
    bm = img->bitmaps[idx];
    out->name = bm->name;
    out->granularity = bm->granularity;
    out->enabled = bm->enabled;
    out->inconsistent = bm->inconsistent;
    out->dirty_bytes = bm->inconsistent ? 0 : dirty_bytes(bm, img->h.image_size);
    return 0;
}

uint64_t qed_bitmap_bytes(uint64_t nbits)
{
    return qed_bits_words(nbits) * sizeof(uint64_t);
}

/* Refuse, with a message, a bitmap of @granularity over @size bytes that
 * would take more memory than one bitmap or all of them may. */
static int check_memory(const struct qed_image *img, const char *name, uint32_t granularity,
                        uint64_t size, uint64_t bytes_now)
{
    uint64_t bytes = qed_bitmap_bytes(qed_bm_nbits(size, granularity));

    if (bytes > QED_BITMAP_MAX_BYTES || img->bitmap_bytes - bytes_now + bytes >
                                            QED_BITMAP_TOTAL_BYTES) {
        qed_log(QED_LOG_ERROR, "%s: bitmap %s: %" PRIu64 " bytes at granularity %" PRIu32
                " exceed the limit (%llu MiB for one bitmap, %llu MiB for all of an image's);"
                " use a larger granularity", img->path, name, bytes, granularity,
                (unsigned long long)(QED_BITMAP_MAX_BYTES >> 20),
                (unsigned long long)(QED_BITMAP_TOTAL_BYTES >> 20));
        return -EFBIG;
    }
    return 0;
}

struct qed_bitmap *qed_bitmap_new(struct qed_image *img, const char *name, uint32_t granularity,
                                  bool inconsistent)
{
    struct qed_bitmap *bm = calloc(1, sizeof(*bm));

    if (!bm)
        return NULL;
    bm->name = strdup(name);
    bm->granularity = granularity;
    bm->inconsistent = inconsistent;
    /* Why no bits for an inconsistent one: they are never read, marked or
     * stored, and counting them against the memory limits could make an
     * image (say, grown by QEMU) impossible to open even to remove it. */
    bm->bits.nbits = inconsistent ? 0 : qed_bm_nbits(img->h.image_size, granularity);
    /* calloc: clean bits; a large one comes from mmap, so untouched words cost nothing. */
    bm->bits.w = calloc(qed_bits_words(bm->bits.nbits) ? qed_bits_words(bm->bits.nbits) : 1,
                        sizeof(uint64_t));
    if (!bm->name || !bm->bits.w) {
        qed_bitmap_free(bm);
        return NULL;
    }
    return bm;
}

void qed_bitmap_free(struct qed_bitmap *bm)
{
    if (!bm)
        return;
    free(bm->bits.w);
    free(bm->name);
    free(bm);
}

int qed_bitmap_insert(struct qed_image *img, struct qed_bitmap *bm)
{
    if (img->nbitmaps >= QED_BITMAP_MAX)
        return -ENOSPC;
    img->bitmaps[img->nbitmaps] = bm;
    /* Atomic: other threads' fast path reads it (fast-path.c). */
    __atomic_store_n(&img->nbitmaps, img->nbitmaps + 1, __ATOMIC_SEQ_CST);
    img->bitmap_bytes += qed_bitmap_bytes(bm->bits.nbits);
    return 0;
}

int qed_bitmap_add(qed_image *img, const char *name, uint32_t granularity, bool disabled)
{
    struct qed_bitmap *bm;
    int r;

    if (!img)
        return -EINVAL;
    if (granularity == 0)
        granularity = QED_BITMAP_DEFAULT_GRANULARITY;
    if (!qed_bitmap_name_valid(name) || !qed_bmdir_granularity_valid(granularity))
        return -EINVAL;
    if (img->read_only)
        return -EROFS;
    if (find(img, name))
        return -EEXIST;
    if (img->nbitmaps >= QED_BITMAP_MAX)
        return -ENOSPC;
    r = check_memory(img, name, granularity, img->h.image_size, 0);
    if (r == 0 &&
        qed_bitmap_store_fits(img, qed_bm_data_bytes(img->h.image_size, granularity)) < 0) {
        qed_log(QED_LOG_ERROR, "%s: bitmap %s would not fit in the image's header area "
                "(at most 4 GiB); use a larger granularity", img->path, name);
        r = -EFBIG;
    }
    if (r < 0)
        return r;
    bm = qed_bitmap_new(img, name, granularity, false);
    if (!bm)
        return -ENOMEM;
    bm->enabled = !disabled;
    return qed_bitmap_insert(img, bm);
}

int qed_bitmap_remove(qed_image *img, const char *name)
{
    int i = qed_bitmap_find(img, name);

    if (i < 0)
        return i;
    if (img->read_only)
        return -EROFS;
    img->bitmap_bytes -= qed_bitmap_bytes(img->bitmaps[i]->bits.nbits);
    qed_bitmap_free(img->bitmaps[i]);
    /* Keep the stored order: info indexes follow it. */
    memmove(&img->bitmaps[i], &img->bitmaps[i + 1],
            (img->nbitmaps - (unsigned)i - 1) * sizeof(img->bitmaps[0]));
    __atomic_store_n(&img->nbitmaps, img->nbitmaps - 1, __ATOMIC_SEQ_CST);
    return 0;
}

/* The bitmap @name for a change: -ENOENT, -EROFS, -EUCLEAN. */
static int writable(qed_image *img, const char *name, struct qed_bitmap **out)
{
    *out = find(img, name);
    if (!*out)
        return -ENOENT;
    if (img->read_only)
        return -EROFS;
    if ((*out)->inconsistent)
        return -EUCLEAN;
    return 0;
}

int qed_bitmap_clear(qed_image *img, const char *name)
{
    struct qed_bitmap *bm;
    int r = writable(img, name, &bm);

    if (r < 0)
        return r;
    qed_bits_clear_all(&bm->bits);
    return 0;
}

int qed_bitmap_enable(qed_image *img, const char *name, bool enable)
{
    struct qed_bitmap *bm;
    int r = writable(img, name, &bm);

    if (r < 0)
        return r;
    bm->enabled = enable;
    return 0;
}

int qed_bitmap_merge(qed_image *img, const char *dst, const qed_image *src_img, const char *src)
{
    struct qed_bitmap *d;
    const struct qed_bitmap *s;
    int r = writable(img, dst, &d);

    if (r < 0)
        return r;
    s = find(src_img, src);
    if (!s)
        return -ENOENT;
    if (s->inconsistent)
        return -EUCLEAN;
    if (src_img->h.image_size != img->h.image_size)
        return -EINVAL;
    qed_bits_merge(&d->bits, d->granularity, &s->bits, s->granularity, img->h.image_size);
    return 0;
}

int qed_bitmap_status(const qed_image *img, const char *name, uint64_t off, uint64_t len,
                      struct qed_dirty_extent *ext, size_t max, size_t *n)
{
    const struct qed_bitmap *bm = find(img, name);
    uint64_t end, pos = off;

    if (!bm)
        return -ENOENT;
    if (bm->inconsistent)
        return -EUCLEAN;
    if (!qed_range_within(off, len, img->h.image_size) || !n || (max && !ext))
        return -EINVAL;
    end = off + len;
    *n = 0;
    while (pos < end && *n < max) {
        uint64_t i = pos / bm->granularity;
        bool dirty = qed_bits_get(&bm->bits, i);
        /* next <= nbits, and nbits * granularity < size + granularity:
         * no wrap (size <= 2^63, granularity <= 2^31). */
        uint64_t stop = qed_bits_next(&bm->bits, i, !dirty) * bm->granularity;

        if (stop > end)
            stop = end;
        ext[*n] = (struct qed_dirty_extent){.start = pos, .length = stop - pos, .dirty = dirty};
        (*n)++;
        pos = stop;
    }
    return 0;
}

void qed_bitmap_mark(struct qed_image *img, uint64_t off, uint64_t len)
{
    uint64_t size = img->h.image_size;

    if (len == 0 || off >= size)
        return;
    if (len > size - off)
        len = size - off; /* (a repair's L1 entry covers past the end) */
    for (unsigned i = 0; i < img->nbitmaps; i++) {
        struct qed_bitmap *bm = img->bitmaps[i];
        uint64_t first = off / bm->granularity, last = (off + len - 1) / bm->granularity;

        if (bm->enabled && !bm->inconsistent)
            qed_bits_set(&bm->bits, first, last - first + 1);
    }
}

/* Make @bm's words hold @nbits bits; new bits are clean. */
static int resize_one(struct qed_image *img, struct qed_bitmap *bm, uint64_t nbits)
{
    uint64_t old = qed_bits_words(bm->bits.nbits), now = qed_bits_words(nbits);

    if (now > old) {
        /* calloc and copy rather than realloc and memset: a large calloc
         * comes from mmap, so the new clean words cost no memory until
         * written. */
        uint64_t *w = calloc(now, sizeof(uint64_t));

        if (!w)
            return -ENOMEM;
        memcpy(w, bm->bits.w, old * sizeof(uint64_t));
        free(bm->bits.w);
        bm->bits.w = w;
    }
    /* Shrinking keeps the words (never fails): truncate clears the bits past
     * the new end, so that a later growth finds them clean. */
    img->bitmap_bytes -= qed_bitmap_bytes(bm->bits.nbits);
    img->bitmap_bytes += qed_bitmap_bytes(nbits);
    if (nbits < bm->bits.nbits)
        qed_bits_truncate(&bm->bits, nbits);
    else
        bm->bits.nbits = nbits;
    return 0;
}

int qed_bitmap_resize(struct qed_image *img, uint64_t new_size)
{
    uint64_t total = 0;

    /* Check every limit before changing any bitmap, so a refusal changes nothing. */
    for (unsigned i = 0; i < img->nbitmaps; i++) {
        struct qed_bitmap *bm = img->bitmaps[i];
        uint64_t bytes = qed_bitmap_bytes(qed_bm_nbits(new_size, bm->granularity));
        int r;

        if (bm->inconsistent)
            continue; /* holds no bits (qed_bitmap_new) */
        r = check_memory(img, bm->name, bm->granularity, new_size,
                         qed_bitmap_bytes(bm->bits.nbits));
        if (r < 0)
            return r;
        total += bytes;
    }
    if (total > QED_BITMAP_TOTAL_BYTES) {
        qed_log(QED_LOG_ERROR, "%s: the bitmaps would take %" PRIu64 " bytes at size %" PRIu64
                ", over the limit of %llu MiB", img->path, total, new_size,
                (unsigned long long)(QED_BITMAP_TOTAL_BYTES >> 20));
        return -EFBIG;
    }
    for (unsigned i = 0; i < img->nbitmaps; i++) {
        struct qed_bitmap *bm = img->bitmaps[i];
        int r = bm->inconsistent ? 0 : resize_one(img, bm, qed_bm_nbits(new_size, bm->granularity));

        /* The ones grown so far have clean bits past the old size; the
         * caller shrinks them back (which cannot fail). */
        if (r < 0)
            return r;
    }
    return 0;
}

void qed_bitmap_free_all(struct qed_image *img)
{
    for (unsigned i = 0; i < img->nbitmaps; i++)
        qed_bitmap_free(img->bitmaps[i]);
    img->nbitmaps = 0;
    img->bitmap_bytes = 0;
}
