/*
 * image.c - creating, opening and closing QED images, and their backing files.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checked.h"
#include "qed-image.h"

#define QED_MAX_BACKING_DEPTH 16

/* Full pread/pwrite for the blocking set-up paths (open, create, check, close). */
static int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0) {
            memset(p, 0, len);
            return 0;
        }
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

static int pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

void qed_image_encode_header(const struct qed_image *img, uint8_t out[QED_HEADER_BYTES])
{
    qed_header_encode(&img->h, out);
}

int qed_image_write_header_sync(struct qed_image *img)
{
    uint8_t raw[QED_HEADER_BYTES];
    int r;

    qed_header_encode(&img->h, raw);
    r = pwrite_full(img->fd, raw, sizeof(raw), 0);
    if (r < 0)
        qed_log(QED_LOG_ERROR, "%s: writing the header failed: %s", img->path, strerror(-r));
    return r;
}

/* ---- Create ---- */

/* Is the backing file @path (of image @owner) a QED image?  Opened as every
 * backing file is: never blocking, confined to @confine_dir when given. */
static int probe_is_qed(const char *owner, const char *path, const char *confine_dir,
                        bool *is_qed, char *err, size_t errlen)
{
    uint8_t magic[4] = {0};
    struct stat st;
    int fd, r;

    r = qed_file_open(path, O_RDONLY, owner, confine_dir, &fd, &st, err, errlen);
    if (r < 0)
        return r;
    r = pread_full(fd, magic, sizeof(magic), 0);
    close(fd);
    if (r < 0)
        return qed_errf(err, errlen, r, "%s: cannot read backing file %s: %s", owner, path,
                        strerror(-r));
    *is_qed = memcmp(magic, "QED\0", 4) == 0;
    return 0;
}

/* Resolve a backing name relative to the directory of @image_path, as QEMU does. */
static int resolve_backing(const char *image_path, const char *name, char *out, size_t outlen)
{
    char tmp[PATH_MAX];
    const char *dir;
    int n;

    if (name[0] == '/' || !strchr(image_path, '/')) {
        n = snprintf(out, outlen, "%s", name);
    } else {
        snprintf(tmp, sizeof(tmp), "%s", image_path);
        dir = dirname(tmp);
        n = snprintf(out, outlen, "%s/%s", dir, name);
    }
    return (n < 0 || (size_t)n >= outlen) ? -ENAMETOOLONG : 0;
}

int qed_create(const char *path, const struct qed_create_opts *opts, char *err, size_t errlen)
{
    uint32_t cs = opts->cluster_size ? opts->cluster_size : QED_DEFAULT_CLUSTER_SIZE;
    uint32_t ts = opts->table_size ? opts->table_size : QED_DEFAULT_TABLE_SIZE;
    struct qed_header h = {0};
    struct qed_geom g;
    uint8_t *hdr_cluster = NULL;
    uint64_t size;
    size_t name_len = 0;
    int fd, r;

    r = qed_geom_init(&g, cs, ts, 1, path, err, errlen);
    if (r < 0)
        return r;
    /* g.max_size is at most QED_MAX_VIRTUAL_SIZE (header.c). */
    if (qed_align_up_overflows(opts->size, 512, &size) || size > g.max_size)
        return qed_errf(err, errlen, -EINVAL,
                        "%s: image size %" PRIu64 " is too large for cluster size %" PRIu32
                        " and table size %" PRIu32 " (maximum %" PRIu64 "%s)",
                        path, opts->size, cs, ts, g.max_size,
                        g.max_size == QED_MAX_VIRTUAL_SIZE
                            ? ", 2^63 - 512: the most NBD clients can address"
                            : "");

    h.magic = QED_MAGIC;
    h.cluster_size = cs;
    h.table_size = ts;
    h.header_size = 1;
    h.l1_table_offset = cs;
    h.image_size = size;
    if (opts->backing_file && opts->backing_file[0]) {
        bool is_qed = false;
        name_len = strlen(opts->backing_file);
        if (name_len > cs - QED_HEADER_BYTES || name_len >= PATH_MAX)
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
            if (resolve_backing(path, opts->backing_file, resolved, sizeof(resolved)) < 0)
                return qed_errf(err, errlen, -ENAMETOOLONG, "%s: backing path too long", path);
            r = probe_is_qed(path, resolved, NULL, &is_qed, err, errlen);
            if (r < 0)
                return r;
        }
        }
        h.features |= QED_F_BACKING_FILE;
        if (!is_qed)
            h.features |= QED_F_BACKING_FORMAT_NO_PROBE;
        h.backing_filename_offset = QED_HEADER_BYTES;
        h.backing_filename_size = (uint32_t)name_len;
    }

    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return qed_errf(err, errlen, -errno, "%s: cannot create: %s", path, strerror(errno));
    hdr_cluster = calloc(1, cs);
    if (!hdr_cluster) {
        r = qed_errf(err, errlen, -ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    qed_header_encode(&h, hdr_cluster);
    if (name_len)
        memcpy(hdr_cluster + QED_HEADER_BYTES, opts->backing_file, name_len);
    /* The L1 table is all zeros: extend the file instead of writing them. */
    r = pwrite_full(fd, hdr_cluster, cs, 0);
    if (r == 0 && ftruncate(fd, (off_t)(cs + g.table_bytes)) < 0)
        r = -errno;
    if (r == 0 && fdatasync(fd) < 0)
        r = -errno;
    if (r < 0) {
        qed_errf(err, errlen, r, "%s: cannot write: %s", path, strerror(-r));
        goto fail;
    }
    free(hdr_cluster);
    close(fd);
    return 0;

fail:
    free(hdr_cluster);
    close(fd);
    unlink(path);
    return r;
}

/* ---- Open ---- */

static int open_backing(struct qed_image *img, qed_aio *aio, const struct qed_open_opts *opts,
                        int depth, char *err, size_t errlen)
{
    const struct qed_header *h = &img->h;
    bool is_qed;
    int r;

    if (!(h->features & QED_F_BACKING_FILE))
        return 0;
    if (h->backing_filename_size == 0)
        return qed_errf(err, errlen, -EINVAL, "%s: QED backing file name is empty", img->path);
    r = pread_full(img->fd, img->backing_name, h->backing_filename_size,
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
    if (resolve_backing(img->path, img->backing_name, img->backing_path,
                        sizeof(img->backing_path)) < 0)
        return qed_errf(err, errlen, -ENAMETOOLONG, "%s: backing file path is too long",
                        img->path);
    if (depth >= QED_MAX_BACKING_DEPTH)
        return qed_errf(err, errlen, -ELOOP, "%s: backing chain deeper than %d images",
                        img->path, QED_MAX_BACKING_DEPTH);

    if (h->features & QED_F_BACKING_FORMAT_NO_PROBE) {
        is_qed = false;
    } else {
        r = probe_is_qed(img->path, img->backing_path, opts->backing_dir, &is_qed, err, errlen);
        if (r < 0)
            return r;
    }

    if (is_qed) {
        /* The whole chain is confined as the image is. */
        struct qed_open_opts o = {.read_only = true,
                                  .backing_dir = opts->backing_dir,
                                  .no_backing = opts->no_backing,
                                  .lock_wait_ms = opts->lock_wait_ms};
        r = qed_open_depth(aio, img->backing_path, &o, depth + 1, &img->backing, err, errlen);
        if (r < 0)
            return r;
        img->backing_kind = BACKING_QED;
        img->backing_size = img->backing->h.image_size;
    } else {
        struct stat st;
        r = qed_file_open(img->backing_path, O_RDONLY, img->path, opts->backing_dir,
                          &img->backing_fd, &st, err, errlen);
        if (r < 0)
            return r;
        img->backing_io_flags = qed_fd_in_memory(img->backing_fd) ? QED_IO_F_MEMORY : 0;
        r = qed_lock_image_wait(img->backing_fd, false, true, opts->lock_wait_ms,
                                img->backing_path, err, errlen);
        if (r < 0)
            return r;
        img->backing_kind = BACKING_RAW;
        img->backing_size = (uint64_t)st.st_size;
    }
    return 0;
}

static void image_free(struct qed_image *img)
{
    if (!img)
        return;
    if (img->aio && ev_is_active(&img->clean_timer))
        ev_timer_stop(img->aio->loop, &img->clean_timer);
    if (img->backing)
        image_free(img->backing);
    if (img->backing_fd >= 0)
        close(img->backing_fd);
    if (img->fd >= 0)
        close(img->fd);
    qed_l2_cache_destroy(&img->cache);
    while (img->free_reqs) {
        struct qed_req *r = img->free_reqs;
        img->free_reqs = r->next;
        free(r);
    }
    qed_meta_free(img);
    free(img->l1);
    free(img->path);
    free(img);
}

static void clean_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);

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

int qed_open_depth(qed_aio *aio, const char *path, const struct qed_open_opts *opts, int depth,
                   qed_image **out, char *err, size_t errlen)
{
    struct qed_open_opts defaults = {0};
    struct qed_image *img;
    uint8_t raw[QED_HEADER_BYTES];
    struct stat st;
    int r;

    if (!opts)
        opts = &defaults;
    if (opts->no_lock && !opts->read_only)
        return qed_errf(err, errlen, -EINVAL, "%s: only a read-only open may skip locking", path);
    img = calloc(1, sizeof(*img));
    if (!img)
        return qed_errf(err, errlen, -ENOMEM, "%s: out of memory", path);
    img->fd = img->backing_fd = -1;
    img->aio = aio;
    img->read_only = opts->read_only;
    img->path = strdup(path);
    img->clean_delay_ms = opts->clean_delay_ms ? opts->clean_delay_ms : QED_DEFAULT_CLEAN_DELAY_MS;
    if (!img->path) {
        r = qed_errf(err, errlen, -ENOMEM, "%s: out of memory", path);
        goto fail;
    }

    /* A backing image (depth > 0) is confined like every backing file. */
    r = qed_file_open(path, opts->read_only ? O_RDONLY : O_RDWR, NULL,
                      depth > 0 ? opts->backing_dir : NULL, &img->fd, &st, err, errlen);
    if (r < 0)
        goto fail;
    img->fd_io_flags = qed_fd_in_memory(img->fd) ? QED_IO_F_MEMORY : 0;
    if (!opts->no_lock) {
        r = qed_lock_image_wait(img->fd, !opts->read_only, depth > 0, opts->lock_wait_ms, path,
                                err, errlen);
        if (r < 0)
            goto fail;
    }
    if ((uint64_t)st.st_size < QED_HEADER_BYTES) {
        r = qed_errf(err, errlen, -EINVAL,
                     "%s: file is %lld bytes, too small to hold a QED header", path,
                     (long long)st.st_size);
        goto fail;
    }
    r = pread_full(img->fd, raw, sizeof(raw), 0);
    if (r < 0) {
        qed_errf(err, errlen, r, "%s: cannot read the header: %s", path, strerror(-r));
        goto fail;
    }
    qed_header_decode(raw, &img->h);
    r = qed_header_validate(&img->h, (uint64_t)st.st_size, path, &img->g, err, errlen);
    if (r < 0)
        goto fail;
    /* A trailing partial cluster is ignored: allocation starts at the rounded-down end. */
    img->file_size = (uint64_t)st.st_size & ~(uint64_t)(img->g.cluster_size - 1);

    img->l1 = malloc(img->g.table_bytes);
    if (!img->l1) {
        r = qed_errf(err, errlen, -ENOMEM, "%s: out of memory for the L1 table", path);
        goto fail;
    }
    r = pread_full(img->fd, img->l1, img->g.table_bytes, img->h.l1_table_offset);
    if (r < 0) {
        qed_errf(err, errlen, r, "%s: cannot read the L1 table: %s", path, strerror(-r));
        goto fail;
    }

    /* By default 64 tables and at most 32 MiB of them; a table count given
     * by the caller is taken as it is.  Either way at least one table: with
     * 1 GiB tables (64 MiB clusters, table size 16) that is 1 GiB. */
    qed_l2_cache_init(&img->cache, opts->l2_cache_tables,
                      opts->l2_cache_tables ? 0 : QED_DEFAULT_L2_CACHE_BYTES, img->g.table_bytes);

    r = open_backing(img, aio, opts, depth, err, errlen);
    if (r < 0)
        goto fail;

    if (!img->read_only) {
        bool write_header = false;
        if (img->h.autoclear_features) {
            /* No autoclear bits are defined: whatever is set belongs to a
             * writer we do not know, and clearing says we did not keep it up. */
            qed_log(QED_LOG_INFO, "%s: clearing unknown autoclear feature bits 0x%" PRIx64, path,
                    img->h.autoclear_features);
            img->h.autoclear_features = 0;
            write_header = true;
        }
        if (img->h.features & QED_F_NEED_CHECK) {
            struct qed_check_result res;
            qed_log(QED_LOG_INFO, "%s: image was not closed cleanly; checking and repairing",
                    path);
            r = qed_check_image(img, true, &res);
            if (r < 0) {
                qed_errf(err, errlen, r, "%s: check and repair failed: %s", path, strerror(-r));
                goto fail;
            }
            write_header = false; /* the repair wrote the header */
        } else {
            r = scan_clean_image(img, opts->repair_corrupt, &write_header, err, errlen);
            if (r < 0)
                goto fail;
        }
        if (write_header) {
            r = qed_image_write_header_sync(img);
            if (r == 0 && fdatasync(img->fd) < 0)
                r = -errno;
            if (r < 0) {
                qed_errf(err, errlen, r, "%s: cannot update the header: %s", path, strerror(-r));
                goto fail;
            }
        }
    } else if (img->h.features & QED_F_NEED_CHECK) {
        qed_log(QED_LOG_WARN, "%s: image needs a check (opened read-only, not repairing)", path);
    }

    /* After any repair: record the metadata as it now is. */
    r = qed_meta_init(img);
    if (r < 0) {
        qed_errf(err, errlen, r, "%s: out of memory", path);
        goto fail;
    }

    if (aio) {
        ev_timer_init(&img->clean_timer, clean_timer_cb, 0., 0.);
        img->clean_timer.data = img;
    }
    *out = img;
    return 0;

fail:
    image_free(img);
    return r;
}

int qed_open(qed_aio *aio, const char *path, const struct qed_open_opts *opts, qed_image **out,
             char *err, size_t errlen)
{
    return qed_open_depth(aio, path, opts, 0, out, err, errlen);
}

/* ---- The flush failure latch ---- */

/*
 * Why a latch: every flush of an image goes through one descriptor on a
 * buffered file, and Linux reports a write-back error once, to whichever
 * fdatasync runs next; the pages it could not write are then clean in the
 * page cache and never retried.  So the next fdatasync succeeds although
 * data written before it is gone -- on another connection's FLUSH, a FUA
 * write, a group commit, or the flush before NEED_CHECK is cleared.  As
 * PostgreSQL and QEMU do since "fsyncgate", the first failure is kept for
 * the life of the open image: every later flush fails with -EIO (nobody is
 * told their data is durable when it may not be), NEED_CHECK is never
 * cleared, and close marks the image NEED_CHECK.
 *
 * Only fdatasync failures latch.  A failed data or table write returns its
 * error to its own request, whose state machine keeps the cached tables as
 * they were (request.c, rule 5): its outcome concerns its own range only.
 * A failed fdatasync concerns every write completed before it, whoever made
 * it, which is what only an image-wide state can express.
 */
int qed_image_flush_result(struct qed_image *img, int res)
{
    if (res < 0 && img->flush_err == 0) {
        img->flush_err = res;
        qed_log(QED_LOG_ERROR,
                "%s: flushing the image failed (%s): data written before may be lost; from now "
                "on every flush and FUA write of this image fails, and it stays marked "
                "NEED_CHECK (restart to check and repair it)",
                img->path, strerror(-res));
        if (img->aio && ev_is_active(&img->clean_timer))
            ev_timer_stop(img->aio->loop, &img->clean_timer);
        return res;
    }
    if (res < 0)
        return res;
    return img->flush_err ? -EIO : 0;
}

/*
 * One fdatasync at a time.  Why: with two in flight on the same descriptor,
 * the kernel reports a write-back error to one of them only, and the other
 * may complete first, successfully, although the writes it had to cover were
 * lost: the latch would be set too late for it.  Run one after the other, the
 * failure is latched before the next fdatasync starts, and that one then
 * answers -EIO.  Flushes that arrive while one is in flight cannot ride on it
 * (it may have started before their writes completed), so they wait and
 * share the next one, which starts after every one of them was submitted:
 * under concurrent flushes this also issues fewer fdatasyncs.
 */
static void fsync_leader_done(struct qed_io *io);

/* Submit the waiting flushes' fdatasync: the first is the leader, the
 * rest ride on it.  The leader's completion comes to fsync_leader_done. */
static void fsync_start(struct qed_image *img)
{
    struct qed_io *leader = img->fsync_wait;

    img->fsync_wait = img->fsync_wait_tail = NULL;
    img->fsync_busy = true;
    img->fsync_riders = leader->next;
    img->fsync_leader_done = leader->done;
    img->fsync_leader_opaque = leader->opaque;
    leader->done = fsync_leader_done;
    leader->opaque = img;
    leader->next = NULL;
    for (struct qed_io *r = img->fsync_riders; r; r = r->next)
        img->fsync_riders_total++;
    img->fsyncs++;
    qed_aio_submit(img->aio, leader);
}

static void fsync_leader_done(struct qed_io *io)
{
    struct qed_image *img = io->opaque;
    struct qed_io *riders = img->fsync_riders;
    int64_t res = io->res; /* @io may be reused once its done ran */

    io->done = img->fsync_leader_done;
    io->opaque = img->fsync_leader_opaque;
    img->fsync_riders = NULL;
    img->fsync_busy = false;
    /* The next group starts before any completion runs: a completion may
     * submit more flushes, and the last one may let the caller close the
     * image, after which @img must not be touched. */
    if (img->fsync_wait)
        fsync_start(img);
    io->done(io);
    while (riders) {
        struct qed_io *r = riders;
        riders = r->next;
        r->next = NULL;
        r->res = res;
        r->done(r);
    }
}

void qed_image_submit_fsync(struct qed_image *img, struct qed_io *io)
{
    io->next = NULL;
    if (img->fsync_wait_tail)
        img->fsync_wait_tail->next = io;
    else
        img->fsync_wait = io;
    img->fsync_wait_tail = io;
    if (!img->fsync_busy)
        fsync_start(img);
}

int qed_flush_error(const qed_image *img)
{
    return img->flush_err;
}

/*
 * Closing a failed image: make sure NEED_CHECK is on disk, whatever the
 * in-memory flag says (the header write that set it may be what the failed
 * flush lost), so that the next open checks the image.  Best effort: the
 * error is already reported.
 */
static void close_failed(struct qed_image *img)
{
    int r;

    img->h.features |= QED_F_NEED_CHECK;
    r = qed_image_write_header_sync(img);
    if (r == 0 && fdatasync(img->fd) < 0)
        r = -errno;
    if (r < 0)
        qed_log(QED_LOG_ERROR, "%s: cannot mark the image NEED_CHECK after a failed flush: %s",
                img->path, strerror(-r));
}

/* ---- NEED_CHECK clearing ---- */

static void clean_done(void *opaque, int ret)
{
    struct qed_image *img = opaque;
    img->clean_queued = false;
    if (ret < 0)
        qed_log(QED_LOG_WARN, "%s: clearing NEED_CHECK failed: %s", img->path, strerror(-ret));
}

static void clean_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct qed_image *img = w->data;

    (void)loop;
    (void)revents;
    if (img->clean_queued || !(img->h.features & QED_F_NEED_CHECK) || img->flush_err)
        return;
    if (qed_req_submit_clean(img, clean_done, img) == 0)
        img->clean_queued = true;
}

void qed_image_arm_clean(struct qed_image *img)
{
    /* A failed flush (the latch) keeps NEED_CHECK for good: no clean. */
    if (!img->aio || !(img->h.features & QED_F_NEED_CHECK) || img->flush_err)
        return;
    ev_timer_stop(img->aio->loop, &img->clean_timer);
    ev_timer_set(&img->clean_timer, img->clean_delay_ms / 1000.0, 0.);
    ev_timer_start(img->aio->loop, &img->clean_timer);
}

/* ---- Close ---- */

int qed_close(qed_image *img)
{
    int r = 0;

    if (!img)
        return 0;
    if (img->aio) {
        struct ev_loop *loop = img->aio->loop;
        /* Let every request finish: their callbacks may still use the image. */
        while (img->inflight > 0 || img->clean_queued)
            ev_run(loop, EVRUN_ONCE);
        if (ev_is_active(&img->clean_timer))
            ev_timer_stop(loop, &img->clean_timer);
        if (!img->read_only) {
            r = qed_sync_flush(img);
            if (r == 0 && (img->h.features & QED_F_NEED_CHECK) && img->dirty_set_by_us) {
                /* Why only after the flush: the flag may say "consistent" only
                 * once every metadata update before it is on disk. */
                img->h.features &= ~QED_F_NEED_CHECK;
                r = qed_image_write_header_sync(img);
                if (r == 0 && fdatasync(img->fd) < 0)
                    r = qed_image_flush_result(img, -errno);
            }
            if (img->flush_err) {
                /* Never "consistent" after a failed flush, even one that
                 * failed before this close: write NEED_CHECK back. */
                close_failed(img);
                if (r == 0)
                    r = -EIO;
            }
        }
    }
    if (r < 0)
        qed_log(QED_LOG_ERROR, "%s: closing failed: %s", img->path, strerror(-r));
    if (img->backing)
        qed_close(img->backing), img->backing = NULL;
    image_free(img);
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

int qed_check(qed_image *img, bool repair, struct qed_check_result *res)
{
    if (repair && img->read_only)
        return -EROFS;
    if (repair && img->flush_err) {
        /* The page cache may hold what the disk lost: a repair would judge
         * the wrong tables, and must not clear NEED_CHECK.  Reopen first. */
        qed_log(QED_LOG_ERROR, "%s: not repairing: a flush failed while the image was open "
                "(close and reopen it to check it)", img->path);
        return -EIO;
    }
    if (img->inflight)
        return -EBUSY;
    return qed_check_image(img, repair, res);
}
