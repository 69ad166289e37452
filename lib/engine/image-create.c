/*
 * image-create.c - creating a new QED image file (qed_create).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checked.h"
#include "chain.h"
#include "qed-image.h"

/* Set the backing-file fields of @h for opts->backing_file, probing its
 * format unless the options name it. */
static int create_backing(const char *path, const struct qed_create_opts *opts,
                          struct qed_header *h, char *err, size_t errlen)
{
    size_t name_len = strlen(opts->backing_file);
    bool is_qed = false;
    int r;

    if (name_len > h->cluster_size - QED_HEADER_BYTES || name_len >= PATH_MAX)
        return qed_errf(err, errlen, -EINVAL, "%s: backing file name is too long (%zu bytes)",
                        path, name_len);
    switch (opts->backing_fmt) {
    case QED_BACKING_RAW:
        is_qed = false;
        break;
    case QED_BACKING_QED:
        is_qed = true;
        break;
    default: {
        char resolved[PATH_MAX];
        if (qed_chain_resolve(path, opts->backing_file, resolved, sizeof(resolved)) < 0)
            return qed_errf(err, errlen, -ENAMETOOLONG, "%s: backing path too long", path);
        r = qed_chain_probe(path, resolved, NULL, &is_qed, NULL, err, errlen);
        if (r < 0)
            return r;
    }
    }
    h->features |= QED_F_BACKING_FILE;
    if (!is_qed)
        h->features |= QED_F_BACKING_FORMAT_NO_PROBE;
    h->backing_filename_offset = QED_HEADER_BYTES;
    h->backing_filename_size = (uint32_t)name_len;
    return 0;
}

/* The header of the new image, and its geometry in @g. */
static int create_header(const char *path, const struct qed_create_opts *opts,
                         struct qed_header *h, struct qed_geom *g, char *err, size_t errlen)
{
    uint32_t cs = opts->cluster_size ? opts->cluster_size : QED_DEFAULT_CLUSTER_SIZE;
    uint32_t ts = opts->table_size ? opts->table_size : QED_DEFAULT_TABLE_SIZE;
    uint64_t size;
    int r;

    r = qed_geom_init(g, cs, ts, 1, path, err, errlen);
    if (r < 0)
        return r;
    /* g.max_size is at most QED_MAX_VIRTUAL_SIZE (header.c). */
    if (qed_align_up_overflows(opts->size, 512, &size) || size > g->max_size)
        return qed_errf(err, errlen, -EINVAL,
                        "%s: image size %" PRIu64 " is too large for cluster size %" PRIu32
                        " and table size %" PRIu32 " (maximum %" PRIu64 "%s)",
                        path, opts->size, cs, ts, g->max_size,
                        g->max_size == QED_MAX_VIRTUAL_SIZE
                            ? ", 2^63 - 512: the most NBD clients can address"
                            : "");

    /* One header cluster, the L1 table right after it. */
    *h = (struct qed_header){.magic = QED_MAGIC, .cluster_size = cs, .table_size = ts,
                             .header_size = 1, .l1_table_offset = cs, .image_size = size};
    if (opts->backing_file && opts->backing_file[0])
        return create_backing(path, opts, h, err, errlen);
    return 0;
}

/* Write the header cluster (with the backing name) and the empty L1 table
 * to the new file @fd. */
static int create_write(int fd, const char *path, const struct qed_header *h,
                        const struct qed_geom *g, const char *backing, char *err, size_t errlen)
{
    uint32_t cs = h->cluster_size;
    uint8_t *hdr_cluster = calloc(1, cs);
    int r;

    if (!hdr_cluster)
        return qed_errf(err, errlen, -ENOMEM, "%s: out of memory", path);
    qed_header_encode(h, hdr_cluster);
    if (h->backing_filename_size)
        memcpy(hdr_cluster + QED_HEADER_BYTES, backing, h->backing_filename_size);
    /* The L1 table is all zeros: extend the file instead of writing them. */
    r = qed_pwrite_full(fd, hdr_cluster, cs, 0);
    if (r == 0 && ftruncate(fd, (off_t)(cs + g->table_bytes)) < 0)
        r = -errno;
    if (r == 0 && fdatasync(fd) < 0)
        r = -errno;
    if (r < 0)
        qed_errf(err, errlen, r, "%s: cannot write: %s", path, strerror(-r));
    free(hdr_cluster);
    return r;
}

int qed_create(const char *path, const struct qed_create_opts *opts, char *err, size_t errlen)
{
    struct qed_header h;
    struct qed_geom g;
    int fd, r;

    r = create_header(path, opts, &h, &g, err, errlen);
    if (r < 0)
        return r;
    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return qed_errf(err, errlen, -errno, "%s: cannot create: %s", path, strerror(errno));
    r = create_write(fd, path, &h, &g, opts->backing_file, err, errlen);
    close(fd);
    if (r < 0)
        unlink(path);
    return r;
}
