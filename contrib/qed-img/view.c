/*
 * view.c - what the read-only views (info, map) share: their options, the
 * walk over an image's extents, JSON strings and sizes for humans.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qed-img.h"

/* Extents asked for per block-status call; the image is walked in chunks. */
#define MAP_CHUNK_EXTENTS 1024

/* ---- Options and opening ------------------------------------------------ */

/* The views' own options: --json and --output=FMT (ctx: the bool json). */
static int view_option(int c, const char *arg, void *ctx)
{
    bool *json = ctx;

    if (c == 'j') {
        *json = true;
    } else if (c != 'o') {
        return 1;
    } else if (strcmp(arg, "json") == 0) {
        *json = true;
    } else if (strcmp(arg, "human") == 0) {
        *json = false;
    } else {
        errmsg("--output must be human or json, not '%s'", arg);
        return 1;
    }
    return -1;
}

int parse_view_args(int argc, char **argv, const char *cmd, bool *json, bool *no_lock,
                    const char **path)
{
    static const struct option longopts[] = {
        { "json", no_argument, NULL, 'j' },
        { "output", required_argument, NULL, 'o' },
        { "force-share", no_argument, NULL, 'U' },
        COMMON_LONGOPTS,
        { NULL, 0, NULL, 0 },
    };
    int r = parse_options(argc, argv, "hU", longopts, no_lock, view_option, json);

    if (r >= 0)
        return r;
    if (argc - optind != 1) {
        errmsg("usage: %s [--json] [-U] FILE", cmd);
        return 1;
    }
    *path = argv[optind];
    return -1;
}

/* The image view_open is opening: its own NEED_CHECK notice is dropped. */
static const char *view_path;

/*
 * The library's messages during a view's open.  A read-only open of an image
 * with NEED_CHECK set logs "PATH: image needs a check (opened read-only, not
 * repairing)"; for the image itself that is dropped (see view_open), for a
 * backing file, whose flag no view shows, it is kept.  Everything else (each
 * invalid table entry, ...) goes to stderr as always.
 */
static void view_log(enum qed_log_level level, const char *msg, void *opaque)
{
    static const char notice[] = ": image needs a check (";
    size_t n = strlen(view_path);

    if (level == QED_LOG_WARN && strncmp(msg, view_path, n) == 0 &&
        strncmp(msg + n, notice, sizeof(notice) - 1) == 0)
        return;
    log_to_stderr(level, msg, opaque);
}

int view_open(struct tool_image *t, const char *path, bool no_lock)
{
    int r;

    view_path = path;
    qed_set_log(view_log, NULL, QED_LOG_WARN);
    r = tool_open(t, path, true, no_lock, false);
    qed_set_log(log_to_stderr, NULL, QED_LOG_WARN);
    return r;
}

/* ---- Extent walking ---------------------------------------------------- */

/* Can @b be appended to @a as one extent?  Same kind, and contiguous in the file too. */
static bool extent_mergeable(const struct qed_extent *a, const struct qed_extent *b)
{
    if (a->start + a->length != b->start)
        return false;
    if (a->depth != b->depth || a->present != b->present || a->zero != b->zero ||
        a->data != b->data || a->has_offset != b->has_offset)
        return false;
    return !a->has_offset || a->offset + a->length == b->offset;
}

int walk_extents(qed_image *img, extent_fn fn, void *opaque)
{
    uint64_t size = qed_size(img), off = 0;
    struct qed_extent *ext = calloc(MAP_CHUNK_EXTENTS, sizeof(*ext));
    struct qed_extent cur;
    bool have = false;
    int ret = 0;

    if (!ext) {
        errmsg("out of memory");
        return -1;
    }
    while (off < size) {
        size_t n = 0, i;
        uint64_t covered = 0;
        int r = qed_sync_block_status(img, off, size - off, ext, MAP_CHUNK_EXTENTS, &n);

        if (r < 0) {
            /* EIO here is a damaged table entry (the library logged which):
             * say which command tells more. */
            errmsg("block status of '%s' at offset %" PRIu64 " failed: %s%s%s%s", qed_path(img),
                   off, strerror(-r), r == -EIO ? "; `qed-img check " : "",
                   r == -EIO ? qed_path(img) : "", r == -EIO ? "` lists the damage" : "");
            ret = -1;
            goto out;
        }
        for (i = 0; i < n; i++) {
            /* The library promises contiguous extents from @off; refuse anything
             * else rather than print a map with gaps or overlaps. */
            if (ext[i].start != off + covered || ext[i].length == 0 ||
                ext[i].length > size - ext[i].start) {
                errmsg("block status of '%s' returned a bad extent (start %" PRIu64
                       ", length %" PRIu64 ") where offset %" PRIu64 " was expected",
                       qed_path(img), ext[i].start, ext[i].length, off + covered);
                ret = -1;
                goto out;
            }
            covered += ext[i].length;
            if (have && extent_mergeable(&cur, &ext[i])) {
                cur.length += ext[i].length;
                continue;
            }
            if (have) {
                ret = fn(&cur, opaque);
                if (ret)
                    goto out;
            }
            cur = ext[i];
            have = true;
        }
        if (covered == 0) {
            errmsg("block status of '%s' made no progress at offset %" PRIu64, qed_path(img),
                   off);
            ret = -1;
            goto out;
        }
        off += covered;
    }
    if (have)
        ret = fn(&cur, opaque);
out:
    free(ext);
    return ret;
}

/* ---- JSON -------------------------------------------------------------- */

void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\b': fputs("\\b", f); break;
        case '\f': fputs("\\f", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (*p < 0x20)
                fprintf(f, "\\u%04x", *p);
            else
                fputc(*p, f);
        }
    }
    fputc('"', f);
}

/* ---- Sizes for humans -------------------------------------------------- */

/* Format @v like qemu-img does: three significant digits, binary units,
 * switching to the next unit once the number would reach 1000. */
void human_size(uint64_t v, char *buf, size_t len)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
    double d = (double)v;
    unsigned i = 0;

    while (d >= 1000.0 && i + 1 < sizeof(units) / sizeof(units[0])) {
        d /= 1024.0;
        i++;
    }
    snprintf(buf, len, "%0.3g %s", d, units[i]);
}
