/*
 * image.c - the open image's header write, and what the public API tells
 * about an open image (qed_get_info and the small getters).
 *
 * The rest of an image's life is in files of its own: image-create.c,
 * image-open.c, backing-file.c, need-check.c, flush-latch.c, image-close.c
 * (see qed-image.h for who calls whom).
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "qed-image.h"

int qed_image_write_header_sync(struct qed_image *img)
{
    uint8_t raw[QED_HEADER_BYTES];
    int r;

    qed_header_encode(&img->h, raw);
    r = qed_pwrite_full(img->fd, raw, sizeof(raw), 0);
    if (r < 0)
        qed_log(QED_LOG_ERROR, "%s: writing the header failed: %s", img->path, strerror(-r));
    return r;
}

/* ---- Information ---- */

void qed_get_info(const qed_image *img, struct qed_info *info)
{
    memset(info, 0, sizeof(*info));
    info->size = img->h.image_size;
    info->cluster_size = img->h.cluster_size;
    info->table_size = img->h.table_size;
    info->header_size = img->h.header_size;
    info->features = img->h.features;
    info->compat_features = img->h.compat_features;
    info->autoclear_features = img->h.autoclear_features;
    info->l1_table_offset = img->h.l1_table_offset;
    info->file_size = img->file_size;
    info->max_size = img->g.max_size;
    info->l2_cache_bytes = img->cache.bytes;
    info->l2_cache_max_bytes = img->cache.max_bytes;
    info->l2_cache_peak_bytes = img->cache.peak_bytes;
    info->read_only = img->read_only;
    info->dirty = (img->h.features & QED_F_NEED_CHECK) != 0;
    info->flush_error = img->flush_err;
    info->backing_file = img->backing_name;
    info->backing_path = img->backing_path;
    info->backing_format = img->backing_kind == BACKING_RAW   ? "raw"
                           : img->backing_kind == BACKING_QED ? "qed"
                                                              : NULL;
}

uint64_t qed_size(const qed_image *img)
{
    return img->h.image_size;
}

uint32_t qed_cluster_size(const qed_image *img)
{
    return img->h.cluster_size;
}

bool qed_is_read_only(const qed_image *img)
{
    return img->read_only;
}

const char *qed_path(const qed_image *img)
{
    return img->path;
}

unsigned qed_inflight(const qed_image *img)
{
    return img->inflight;
}

uint64_t qed_l2_cache_bytes(const qed_image *img)
{
    uint64_t n = 0;

    for (; img; img = img->backing)
        n += img->cache.bytes;
    return n;
}

uint64_t qed_table_memory_max(const qed_image *img)
{
    uint64_t n = 0;

    /* Fixed per image: both come from the geometry and the cache options.
     * It cannot wrap: a table is at most 16 x 64 MiB = 1 GiB, an image adds
     * at most two, and a chain is at most QED_MAX_BACKING_DEPTH deep. */
    for (; img; img = img->backing)
        if (img->l1)
            n += img->g.table_bytes + img->cache.max_bytes;
    return n;
}
