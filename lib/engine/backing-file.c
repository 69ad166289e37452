/*
 * backing-file.c - opening an image's backing file (a QED image, read-only,
 * or a raw file); resolving its name and probing its format are in chain.c.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "qed-image.h"

int qed_backing_open(struct qed_image *img, qed_aio *aio, const struct qed_open_opts *opts,
                     int depth, char *err, size_t errlen)
{
    const struct qed_header *h = &img->h;
    bool is_qed;
    int r;

    if (!(h->features & QED_F_BACKING_FILE))
        return 0;
    if (h->backing_filename_size == 0)
        return qed_errf(err, errlen, -EINVAL, "%s: QED backing file name is empty", img->path);
    r = qed_pread_full(img->fd, img->backing_name, h->backing_filename_size,
                   h->backing_filename_offset);
    if (r < 0)
        return qed_errf(err, errlen, r, "%s: cannot read the backing file name: %s", img->path,
                        strerror(-r));
    img->backing_name[h->backing_filename_size] = '\0';
    if (strlen(img->backing_name) != h->backing_filename_size)
        return qed_errf(err, errlen, -EINVAL, "%s: QED backing file name contains a NUL byte",
                        img->path);
    if (opts->no_backing)
        return qed_errf(err, errlen, -EPERM,
                        "%s: has the backing file %s, and images with a backing file are "
                        "refused (no-backing)", img->path, img->backing_name);
    if (qed_chain_resolve(img->path, img->backing_name, img->backing_path,
                        sizeof(img->backing_path)) < 0)
        return qed_errf(err, errlen, -ENAMETOOLONG, "%s: backing file path is too long",
                        img->path);
    if (depth >= QED_MAX_BACKING_DEPTH)
        return qed_errf(err, errlen, -ELOOP, "%s: backing chain deeper than %d images",
                        img->path, QED_MAX_BACKING_DEPTH);

    if (h->features & QED_F_BACKING_FORMAT_NO_PROBE) {
        is_qed = false;
    } else {
        r = qed_chain_probe(img->path, img->backing_path, opts->backing_dir, &is_qed, NULL, err,
                              errlen);
        if (r < 0)
            return r;
    }

    if (is_qed) {
        /* The whole chain is confined as the image is. */
        struct qed_open_opts o = {.read_only = true,
                                  .backing_dir = opts->backing_dir,
                                  .no_backing = opts->no_backing,
                                  .lock_wait_ms = opts->lock_wait_ms,
                                  .cache = opts->cache};
        r = qed_open_depth(aio, img->backing_path, &o, depth + 1, &img->backing, err, errlen);
        if (r < 0)
            return r;
        img->backing_kind = BACKING_QED;
        img->backing_size = img->backing->h.image_size;
    } else {
        struct stat st;
        r = qed_file_open(img->backing_path, O_RDONLY | qed_cache_open_flags(opts), img->path,
                          opts->backing_dir, &img->backing_fd, &st, err, errlen);
        if (r < 0)
            return r;
        r = qed_cache_io_flags(img->backing_fd, opts, img->backing_path, &img->backing_io_flags,
                               err, errlen);
        if (r < 0)
            return r;
        r = qed_lock_image_wait(img->backing_fd, false, true, opts->lock_wait_ms,
                                img->backing_path, err, errlen);
        if (r < 0)
            return r;
        img->backing_kind = BACKING_RAW;
        img->backing_size = (uint64_t)st.st_size;
    }
    return 0;
}

