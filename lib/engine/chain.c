/*
 * chain.c - backing chains: resolving backing names, probing a file's
 * format (QED magic or raw), and naming the files of an open image's chain.
 *
 * The open path (backing-file.c, image-create.c) and the public helpers
 * below share these, so that
 * qed-img and the library can never disagree on which file a backing name
 * means or on what counts as a QED image.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "qed-image.h"

int qed_chain_resolve(const char *image_path, const char *name, char *out, size_t outlen)
{
    const char *slash = strrchr(image_path, '/');
    int n;

    if (name[0] == '/' || !slash)
        n = snprintf(out, outlen, "%s", name);
    else
        n = snprintf(out, outlen, "%.*s/%s", (int)(slash - image_path), image_path, name);
    return (n < 0 || (size_t)n >= outlen) ? -ENAMETOOLONG : 0;
}

/* Read up to @len bytes at offset 0; a short file leaves the rest zero. */
static int read_start(int fd, unsigned char *buf, size_t len)
{
    size_t got = 0;

    memset(buf, 0, len);
    while (got < len) {
        ssize_t n = pread(fd, buf + got, len - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return 0;
}

int qed_chain_probe(const char *owner, const char *path, const char *confine_dir, bool *is_qed,
                    struct stat *st, char *err, size_t errlen)
{
    unsigned char magic[4];
    struct stat st0;
    int fd, r;

    r = qed_file_open(path, O_RDONLY, owner, confine_dir, &fd, st ? st : &st0, err, errlen);
    if (r < 0)
        return r;
    r = read_start(fd, magic, sizeof(magic));
    close(fd);
    if (r < 0)
        return owner ? qed_errf(err, errlen, r, "%s: cannot read backing file %s: %s", owner,
                                path, strerror(-r))
                     : qed_errf(err, errlen, r, "%s: cannot read: %s", path, strerror(-r));
    *is_qed = memcmp(magic, QED_MAGIC_BYTES, sizeof(magic)) == 0;
    return 0;
}

int qed_backing_path(const char *image_path, const char *backing_name, char **out)
{
    size_t len;
    int r;

    *out = NULL;
    if (!backing_name[0])
        return -EINVAL;
    len = strlen(image_path) + strlen(backing_name) + 2;
    *out = malloc(len);
    if (!*out)
        return -ENOMEM;
    r = qed_chain_resolve(image_path, backing_name, *out, len);
    if (r < 0) { /* cannot happen: @len fits both names and the slash */
        free(*out);
        *out = NULL;
    }
    return r;
}

/* The virtual size of the QED image @path, from its header (opened
 * read-only, without a lock, as a backing file is looked at). */
static int qed_file_size(const char *path, uint64_t *size, char *err, size_t errlen)
{
    struct qed_open_opts o = {.read_only = true, .no_lock = true};
    qed_image *img = NULL;
    int r = qed_open(NULL, path, &o, &img, err, errlen);

    if (r < 0)
        return r;
    *size = qed_size(img);
    qed_close(img);
    return 0;
}

int qed_probe_format(const char *path, enum qed_backing_fmt *fmt, uint64_t *size, char *err,
                     size_t errlen)
{
    struct stat st;
    bool is_qed = false;
    int r = qed_chain_probe(NULL, path, NULL, &is_qed, &st, err, errlen);

    if (r < 0)
        return r;
    if (*fmt == QED_BACKING_PROBE)
        *fmt = is_qed ? QED_BACKING_QED : QED_BACKING_RAW;
    if (!size)
        return 0;
    if (*fmt == QED_BACKING_QED)
        return qed_file_size(path, size, err, errlen);
    if (S_ISBLK(st.st_mode))
        return qed_errf(err, errlen, -ENOTSUP, "%s: cannot take the size of a block device",
                        path);
    *size = (uint64_t)st.st_size;
    return 0;
}

const char *qed_chain_path(const qed_image *img, unsigned depth)
{
    for (; img; img = img->backing) {
        if (depth == 0)
            return img->path;
        if (img->backing_kind == BACKING_NONE)
            return NULL;
        if (depth == 1)
            return img->backing_path;
        depth--;
    }
    return NULL;
}
