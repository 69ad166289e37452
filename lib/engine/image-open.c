/*
 * image-open.c - opening a QED image (qed_open): the file, its lock, the
 * header and the L1 table, the backing chain, and the check a read-write
 * open runs before anything is allocated.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qed-image.h"

/* A new image object for @path, before anything is opened. */
static struct qed_image *image_new(qed_aio *aio, const char *path,
                                   const struct qed_open_opts *opts)
{
    struct qed_image *img = calloc(1, sizeof(*img));

    if (!img)
        return NULL;
    img->fd = img->backing_fd = -1;
    img->aio = aio;
    img->read_only = opts->read_only;
    img->path = strdup(path);
    img->clean_delay_ms = opts->clean_delay_ms ? opts->clean_delay_ms : QED_DEFAULT_CLEAN_DELAY_MS;
    if (!img->path) {
        free(img);
        return NULL;
    }
    return img;
}

/* Open and lock the file, read and validate its header, read the L1 table. */
static int open_file_and_tables(struct qed_image *img, const struct qed_open_opts *opts,
                                int depth, char *err, size_t errlen)
{
    const char *path = img->path;
    uint8_t raw[QED_HEADER_BYTES];
    struct stat st;
    int r;

    /* A backing image (depth > 0) is confined like every backing file. */
    r = qed_file_open(path, (opts->read_only ? O_RDONLY : O_RDWR) | qed_cache_open_flags(opts),
                      NULL, depth > 0 ? opts->backing_dir : NULL, &img->fd, &st, err, errlen);
    if (r < 0)
        return r;
    r = qed_cache_io_flags(img->fd, opts, path, &img->fd_io_flags, err, errlen);
    if (r < 0)
        return r;
    if (!opts->read_only && opts->reserve != QED_RESERVE_OFF)
        img->reserve = opts->reserve == QED_RESERVE_ON || qed_fd_reserve_pays(img->fd);
    if (!opts->no_lock) {
        r = qed_lock_image_wait(img->fd, !opts->read_only, depth > 0, opts->lock_wait_ms, path,
                                err, errlen);
        if (r < 0)
            return r;
    }
    if ((uint64_t)st.st_size < QED_HEADER_BYTES)
        return qed_errf(err, errlen, -EINVAL,
                        "%s: file is %lld bytes, too small to hold a QED header", path,
                        (long long)st.st_size);
    r = qed_pread_full(img->fd, raw, sizeof(raw), 0);
    if (r < 0)
        return qed_errf(err, errlen, r, "%s: cannot read the header: %s", path, strerror(-r));
    qed_header_decode(raw, &img->h);
    r = qed_header_validate(&img->h, (uint64_t)st.st_size, path, &img->g, err, errlen);
    if (r < 0)
        return r;
    /* A trailing partial cluster is ignored: allocation starts at the rounded-down end. */
    img->file_size = (uint64_t)st.st_size & ~(uint64_t)(img->g.cluster_size - 1);

    img->l1 = malloc(img->g.table_bytes);
    if (!img->l1)
        return qed_errf(err, errlen, -ENOMEM, "%s: out of memory for the L1 table", path);
    r = qed_pread_full(img->fd, img->l1, img->g.table_bytes, img->h.l1_table_offset);
    if (r < 0)
        return qed_errf(err, errlen, r, "%s: cannot read the L1 table: %s", path, strerror(-r));
    return 0;
}

/*
 * Read-write open of an image marked clean: scan every table for invalid
 * entries before anything is allocated.
 *
 * Why every read-write open scans, clean flag or not: an entry that points
 * past the end of the file is harmless only while the file stays that short.
 * This open will grow the file, and at the next open such an entry would
 * point at a cluster this session allocated to other data or to an L2 table,
 * so reads would return foreign data and writes would land on it.  The scan
 * reads every L2 table once: 8 bytes per allocated cluster (16 MiB of tables
 * for 128 GiB of data in 64 KiB clusters).
 *
 * Why a clean image with such entries is refused rather than repaired: the
 * flag says no crash happened, so the damage came from elsewhere (a bug, a
 * bad disk, a hand edit), and zeroing the entries would make the client read
 * zeros where its data was and erase the evidence.  As qcow2 does, nothing is
 * changed unless the operator asks (@repair, `qed-img check -r`).  A
 * read-only open needs no repair: it never allocates, and reads through the
 * bad entries fail with EIO (metadata.c).  Entries that a repair would not
 * change either (clusters referenced twice) do not refuse the open: refusing
 * them would leave no way to write the image; metadata.c keeps those that
 * alias metadata disabled.
 *
 * Returns 0 (*@write_header cleared when a repair wrote the header), -EUCLEAN
 * with a message in @err, or the error of the scan.
 */
static int scan_clean_image(struct qed_image *img, bool repair, bool *write_header, char *err,
                            size_t errlen)
{
    struct qed_check_result res;
    int r = qed_check_image(img, false, &res);

    if (r < 0)
        return qed_errf(err, errlen, r, "%s: check of the tables failed: %s", img->path,
                        strerror(-r));
    if (res.repairable == 0)
        return 0;
    if (!repair)
        /* The repair command first: a short buffer keeps it. */
        return qed_errf(err, errlen, -EUCLEAN,
                        "%s: %" PRIu64 " invalid table %s in an image marked clean; not opened "
                        "read-write, nothing changed.  Repair: `qed-img check -r %s` (those "
                        "clusters then read as zeros); or open it read-only (reads of them "
                        "fail with EIO)",
                        img->path, res.repairable, res.repairable == 1 ? "entry" : "entries",
                        img->path);
    qed_log(QED_LOG_WARN,
            "%s: %" PRIu64 " invalid table %s in an image marked clean; repairing as asked "
            "(the damaged clusters will read as zeros)", img->path, res.repairable,
            res.repairable == 1 ? "entry" : "entries");
    r = qed_check_image(img, true, &res);
    if (r < 0)
        return qed_errf(err, errlen, r, "%s: repair of the tables failed: %s", img->path,
                        strerror(-r));
    *write_header = false; /* the repair wrote it */
    return 0;
}

/*
 * Before a read-write open may allocate: clear unknown autoclear bits, check
 * and repair an image left NEED_CHECK, scan one marked clean, and write the
 * header when it changed.
 */
static int open_for_writing(struct qed_image *img, const struct qed_open_opts *opts, char *err,
                            size_t errlen)
{
    const char *path = img->path;
    bool write_header = false;
    /* Ours (QED_AF_BITMAPS) stays while there is a bitmap directory: we
     * keep the bitmaps up to date.  Without one it guards nothing. */
    uint64_t keep = img->bmdir ? QED_AF_KNOWN : 0;
    int r;

    if (img->h.autoclear_features & ~keep) {
        /* Bits we do not know belong to a writer we do not know, and
         * clearing says we did not keep its data up to date. */
        qed_log(QED_LOG_INFO, "%s: clearing autoclear feature bits 0x%" PRIx64, path,
                img->h.autoclear_features & ~keep);
        img->h.autoclear_features &= keep;
        write_header = true;
    }
    /* Why before the check: a repair changes what the guest reads (a
     * zeroed entry reads zeros or the backing file, not EIO) and marks the
     * bitmaps, so the disk must say "in use" first, or a crash after the
     * repair could leave a trusted bitmap that lacks those ranges.  And
     * before returning: the first write may come right after the open. */
    r = qed_bitmap_mark_in_use(img, err, errlen);
    if (r < 0)
        return r;
    if (img->h.features & QED_F_NEED_CHECK) {
        struct qed_check_result res;
        qed_log(QED_LOG_INFO, "%s: image was not closed cleanly; checking and repairing", path);
        r = qed_check_image(img, true, &res);
        if (r < 0)
            return qed_errf(err, errlen, r, "%s: check and repair failed: %s", path,
                            strerror(-r));
        write_header = false; /* the repair wrote the header */
    } else {
        r = scan_clean_image(img, opts->repair_corrupt, &write_header, err, errlen);
        if (r < 0)
            return r;
    }
    if (write_header) {
        r = qed_image_write_header_sync(img);
        if (r == 0 && fdatasync(img->fd) < 0)
            r = -errno;
        if (r < 0)
            return qed_errf(err, errlen, r, "%s: cannot update the header: %s", path,
                            strerror(-r));
    }
    return 0;
}

int qed_open_depth(qed_aio *aio, const char *path, const struct qed_open_opts *opts, int depth,
                   qed_image **out, char *err, size_t errlen)
{
    struct qed_open_opts defaults = {0};
    struct qed_image *img;
    int r;

    if (!opts)
        opts = &defaults;
    if (opts->no_lock && !opts->read_only)
        return qed_errf(err, errlen, -EINVAL, "%s: only a read-only open may skip locking", path);
    img = image_new(aio, path, opts);
    if (!img)
        return qed_errf(err, errlen, -ENOMEM, "%s: out of memory", path);
    r = open_file_and_tables(img, opts, depth, err, errlen);
    if (r < 0)
        goto fail;

    /* By default 64 tables and at most 32 MiB of them; a table count given
     * by the caller is taken as it is.  Either way at least one table: with
     * 1 GiB tables (64 MiB clusters, table size 16) that is 1 GiB. */
    qed_l2_cache_init(&img->cache, opts->l2_cache_tables,
                      opts->l2_cache_tables ? 0 : QED_DEFAULT_L2_CACHE_BYTES, img->g.table_bytes);

    r = qed_backing_open(img, aio, opts, depth, err, errlen);
    if (r < 0)
        goto fail;

    /* The bitmaps of the image asked for (a backing image's are never
     * asked about), before a repair: it leaves the header area alone. */
    if (depth == 0) {
        r = qed_bitmap_load(img, err, errlen);
        if (r < 0)
            goto fail;
    }
    if (!img->read_only) {
        r = open_for_writing(img, opts, err, errlen); /* marks the bitmaps in use first */
        if (r < 0)
            goto fail;
    } else if (img->h.features & QED_F_NEED_CHECK) {
        qed_log(QED_LOG_WARN, "%s: image needs a check (opened read-only, not repairing)", path);
    }

    /* After any repair: record the metadata as it now is. */
    r = qed_meta_init(img);
    if (r < 0) {
        qed_errf(err, errlen, r, "%s: out of memory", path);
        goto fail;
    }

    if (aio)
        qed_image_init_clean(img);
    *out = img;
    return 0;

fail:
    qed_image_free(img);
    return r;
}

int qed_open(qed_aio *aio, const char *path, const struct qed_open_opts *opts, qed_image **out,
             char *err, size_t errlen)
{
    return qed_open_depth(aio, path, opts, 0, out, err, errlen);
}
