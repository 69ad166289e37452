/*
 * bitmap.c - qed-img bitmap: add, remove, clear, enable, disable and merge
 * an image's persistent dirty bitmaps, in the words of `qemu-img bitmap`.
 * Several actions may be given in one call; they are applied in order to
 * the image, opened read-write (with the image lock) once, and the close
 * stores the bitmaps.
 *
 * A merge from another file (-b SOURCE_FILE) reads the source bitmaps first,
 * into a private temporary image, and closes the source before FILE is
 * opened: the source is often an overlay of FILE (the backup workflow's
 * `--merge NAME -b top.qed disk.qed NAME` after committing top.qed), and a
 * read-only open locks the whole backing chain against writers, so the two
 * could not be open at the same time.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qed-img.h"

enum bm_act { ACT_ADD, ACT_REMOVE, ACT_CLEAR, ACT_ENABLE, ACT_DISABLE, ACT_MERGE };

static const char *const bm_act_name[] = { "add", "remove", "clear", "enable", "disable",
                                           "merge" };

struct bm_action {
    enum bm_act act;
    const char *src; /* merge: the source bitmap */
};

/* The command line, parsed. */
struct bm_args {
    struct bm_action *acts; /* in the order given */
    size_t n;
    const char *src_file;   /* -b: merge sources are read from this image */
    const char *src_fmt;    /* -F */
    const char *gran_arg;   /* -g as given (NULL: none) */
    uint32_t granularity;   /* 0: the default */
    bool add_disabled;      /* --disabled */
    bool has[ACT_MERGE + 1]; /* which actions were asked for */
};

#define QED_STR2(x) #x
#define QED_STR(x) QED_STR2(x)

enum { OPT_ADD = 0x200, OPT_REMOVE, OPT_CLEAR, OPT_ENABLE, OPT_DISABLE, OPT_MERGE,
       OPT_DISABLED };

/* ---- Options ----------------------------------------------------------- */

/* Take -g GRANULARITY: a power of two in the range the library takes. */
static int bm_granularity_opt(const char *arg, struct bm_args *a)
{
    uint64_t v;

    if (parse_size_arg("granularity", arg, &v) < 0)
        return 1;
    if (v < QED_BITMAP_MIN_GRANULARITY || v > QED_BITMAP_MAX_GRANULARITY || (v & (v - 1))) {
        errmsg("invalid granularity '%s': a power of two from %u bytes to 2G (%u)",
               arg, QED_BITMAP_MIN_GRANULARITY, QED_BITMAP_MAX_GRANULARITY);
        return 1;
    }
    a->gran_arg = arg;
    a->granularity = (uint32_t)v;
    return -1;
}

/* One option of bitmap's own (parse_options' option_fn). */
static int bm_option(int c, const char *arg, void *ctx)
{
    struct bm_args *a = ctx;

    switch (c) {
    case OPT_ADD: case OPT_REMOVE: case OPT_CLEAR: case OPT_ENABLE: case OPT_DISABLE:
    case OPT_MERGE:
        a->acts[a->n].act = (enum bm_act)(c - OPT_ADD);
        a->acts[a->n].src = c == OPT_MERGE ? arg : NULL;
        a->has[c - OPT_ADD] = true;
        a->n++;
        return -1;
    case OPT_DISABLED:
        a->add_disabled = true;
        return -1;
    case 'b':
        a->src_file = arg;
        return -1;
    case 'F':
        a->src_fmt = arg;
        return -1;
    case 'g':
        return bm_granularity_opt(arg, a);
    default:
        return 1;
    }
}

/* The options that only make sense together, as qemu-img checks them. */
static int bm_check_combinations(const struct bm_args *a)
{
    if (a->n == 0)
        errmsg("bitmap: at least one of --add, --remove, --clear, --enable, --disable or "
               "--merge is needed");
    else if (a->gran_arg && !a->has[ACT_ADD])
        errmsg("bitmap: -g (granularity) is only used with --add");
    else if (a->add_disabled && !a->has[ACT_ADD])
        errmsg("bitmap: --disabled is only used with --add");
    else if (a->src_fmt && !a->src_file)
        errmsg("bitmap: -F is only used with -b");
    else if (a->src_file && !a->has[ACT_MERGE])
        errmsg("bitmap: -b (merge source file) is only used with --merge");
    else if (a->src_fmt && strcmp(a->src_fmt, "qed") != 0)
        errmsg("bitmap: -F %s: only qed images have bitmaps here", a->src_fmt);
    else
        return 0;
    return 1;
}

/* Is @name a valid bitmap name?  Prints why not. */
static bool bm_name_ok(const char *name)
{
    if (qed_bitmap_name_valid(name))
        return true;
    errmsg("invalid bitmap name '%s': 1 to %d printable ASCII characters other than space, "
           "'\"' and '\\'", name, QED_BITMAP_NAME_MAX);
    return false;
}

/* Parse the command line into @a.  Returns -1 to go on, or the exit status. */
static int bm_parse(int argc, char **argv, struct bm_args *a, const char **path,
                    const char **bitmap)
{
    static const struct option longopts[] = {
        { "add", no_argument, NULL, OPT_ADD },
        { "remove", no_argument, NULL, OPT_REMOVE },
        { "clear", no_argument, NULL, OPT_CLEAR },
        { "enable", no_argument, NULL, OPT_ENABLE },
        { "disable", no_argument, NULL, OPT_DISABLE },
        { "merge", required_argument, NULL, OPT_MERGE },
        { "disabled", no_argument, NULL, OPT_DISABLED },
        { "granularity", required_argument, NULL, 'g' },
        { "source-file", required_argument, NULL, 'b' },
        { "source-format", required_argument, NULL, 'F' },
        COMMON_LONGOPTS,
        { NULL, 0, NULL, 0 },
    };
    int r = parse_options(argc, argv, "hb:F:g:", longopts, NULL, bm_option, a);

    if (r >= 0)
        return r;
    if (bm_check_combinations(a))
        return 1;
    if (argc - optind != 2) {
        errmsg("usage: bitmap (--merge SOURCE | --add | --remove | --clear | --enable | "
               "--disable)... [-b SOURCE_FILE [-F SOURCE_FMT]] [-g GRANULARITY] [--disabled] "
               "FILE BITMAP");
        return 1;
    }
    *path = argv[optind];
    *bitmap = argv[optind + 1];
    if (!bm_name_ok(*bitmap))
        return 1;
    for (size_t i = 0; i < a->n; i++)
        if (a->acts[i].src && !bm_name_ok(a->acts[i].src))
            return 1;
    return -1;
}

/* ---- Why an action failed ---------------------------------------------- */

/* The reason for @r when bitmap @name of @img is the one at fault. */
static const char *bm_reason(int r)
{
    switch (r) {
    case -EEXIST:
        return "a bitmap of that name exists";
    case -ENOENT:
        return "no such bitmap";
    case -EUCLEAN:
        return "the bitmap is inconsistent (the image was not closed cleanly while the "
               "bitmap recorded writes, or a program that does not know bitmaps, such as "
               "QEMU, wrote the image); it can only be removed";
    case -ENOSPC:
        return "the image already has the most bitmaps an image may have "
               "(QED_BITMAP_MAX, " QED_STR(QED_BITMAP_MAX) ")";
    case -EFBIG:
        return "the bitmap would be too large (the memory limit, or no room left in the "
               "image's header area); use a larger granularity (-g)";
    default:
        return strerror(-r);
    }
}

/* Is bitmap @name of @img usable as a source or target (exists, consistent)? */
static int bm_usable(const qed_image *img, const char *name)
{
    struct qed_bitmap_info bi;
    int idx = qed_bitmap_find(img, name);

    if (idx < 0)
        return idx;
    if (qed_bitmap_info(img, (unsigned)idx, &bi) < 0)
        return -ENOENT;
    return bi.inconsistent ? -EUCLEAN : 0;
}

/* ---- Merge sources from another file ----------------------------------- */

/*
 * Copy the source bitmaps the merges name from @src_file into a fresh
 * private image @stage (created in $TMPDIR and unlinked at once: it only
 * lives in memory and in an anonymous file), then close the source.  Each
 * copy keeps the source's granularity, so it is exact.  Returns 0, or -1
 * after printing why (naming the source file and bitmap).
 */
static int bm_stage_sources(const struct bm_args *a, struct tool_image *stage)
{
    struct tool_image src;
    struct qed_info info;
    struct qed_create_opts co = { .size = 0 };
    const char *tmpdir = getenv("TMPDIR");
    char dir[4096], path[4200], err[1024] = "";
    int r, ret = -1;

    stage->img = NULL;
    stage->aio = NULL;
    if (tool_open(&src, a->src_file, true, false, false) < 0)
        return -1;
    /* The source's geometry, so that its size fits. */
    qed_get_info(src.img, &info);
    co.size = info.size;
    co.cluster_size = info.cluster_size;
    co.table_size = info.table_size;
    snprintf(dir, sizeof(dir), "%s/qed-img-bitmap.XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp");
    if (!mkdtemp(dir)) {
        errmsg("cannot make a temporary directory for the merge sources: %s", strerror(errno));
        goto out;
    }
    snprintf(path, sizeof(path), "%s/stage.qed", dir);
    r = qed_create(path, &co, err, sizeof(err));
    if (r == 0 && tool_open(stage, path, false, false, false) < 0)
        r = -EIO;
    else if (r < 0)
        errmsg("cannot create %s: %s", path, err[0] ? err : strerror(-r));
    unlink(path);
    rmdir(dir);
    if (r < 0)
        goto out;
    for (size_t i = 0; i < a->n; i++) {
        const char *name = a->acts[i].src;
        struct qed_bitmap_info bi = { .granularity = 0 };

        if (!name || qed_bitmap_find(stage->img, name) >= 0)
            continue;
        r = bm_usable(src.img, name);
        if (r == 0)
            r = qed_bitmap_info(src.img, (unsigned)qed_bitmap_find(src.img, name), &bi);
        if (r == 0)
            r = qed_bitmap_add(stage->img, name, bi.granularity, true);
        if (r == 0)
            r = qed_bitmap_merge(stage->img, name, src.img, name);
        if (r < 0) {
            errmsg("%s: cannot read bitmap '%s' to merge it: %s", a->src_file, name,
                   bm_reason(r));
            goto out;
        }
    }
    ret = 0;
out:
    if (tool_close(&src) < 0)
        ret = -1;
    if (ret < 0)
        tool_close(stage);
    return ret;
}

/* ---- Applying ---------------------------------------------------------- */

/* Merge bitmap @act->src (of @src, FILE itself or the staged copy) into @bitmap. */
static int bm_merge(qed_image *img, const char *path, const char *bitmap, const qed_image *src,
                    const char *src_file, const char *src_name)
{
    const char *from = src_file ? src_file : path;
    int r = bm_usable(img, bitmap);

    if (r < 0) {
        errmsg("%s: cannot merge into bitmap '%s': %s", path, bitmap, bm_reason(r));
        return r;
    }
    r = bm_usable(src, src_name);
    if (r < 0) {
        errmsg("%s: cannot merge bitmap '%s' of %s into '%s': %s", path, src_name, from,
               bitmap, bm_reason(r));
        return r;
    }
    r = qed_bitmap_merge(img, bitmap, src, src_name);
    if (r == -EINVAL)
        errmsg("%s: cannot merge bitmap '%s' of %s into '%s': the images have different "
               "virtual sizes (%" PRIu64 " and %" PRIu64 " bytes)", path, src_name, from,
               bitmap, qed_size(img), qed_size(src));
    else if (r < 0)
        errmsg("%s: cannot merge bitmap '%s' of %s into '%s': %s", path, src_name, from,
               bitmap, bm_reason(r));
    return r;
}

/* Apply one action to bitmap @bitmap of @img.  0, or a negative errno after printing why. */
static int bm_apply(qed_image *img, const char *path, const char *bitmap,
                    const struct bm_args *a, const struct bm_action *act,
                    const qed_image *stage)
{
    int r;

    switch (act->act) {
    case ACT_ADD:
        r = qed_bitmap_add(img, bitmap, a->granularity, a->add_disabled);
        break;
    case ACT_REMOVE:
        r = qed_bitmap_remove(img, bitmap);
        break;
    case ACT_CLEAR:
        r = qed_bitmap_clear(img, bitmap);
        break;
    case ACT_ENABLE:
    case ACT_DISABLE:
        r = qed_bitmap_enable(img, bitmap, act->act == ACT_ENABLE);
        break;
    case ACT_MERGE:
        return bm_merge(img, path, bitmap, stage ? stage : img, a->src_file, act->src);
    default:
        r = -EINVAL;
    }
    if (r < 0)
        errmsg("%s: cannot %s bitmap '%s': %s", path, bm_act_name[act->act], bitmap,
               bm_reason(r));
    return r;
}

int cmd_bitmap(int argc, char **argv)
{
    struct bm_args a = { .n = 0 };
    struct tool_image t, stage = { NULL, NULL };
    const char *path = NULL, *bitmap = NULL;
    int r, ret = 1;

    a.acts = calloc((size_t)argc, sizeof(*a.acts));
    if (!a.acts) {
        errmsg("out of memory");
        return 1;
    }
    r = bm_parse(argc, argv, &a, &path, &bitmap);
    if (r >= 0) {
        free(a.acts);
        return r;
    }
    if (a.src_file && bm_stage_sources(&a, &stage) < 0)
        goto out;
    if (tool_open(&t, path, false, false, false) < 0)
        goto out;
    /* As qemu-img: the first failure stops, and what was done before it
     * stays done (the close below stores it). */
    ret = 0;
    for (size_t i = 0; i < a.n && ret == 0; i++)
        if (bm_apply(t.img, path, bitmap, &a, &a.acts[i], stage.img) < 0)
            ret = 1;
    if (tool_close(&t) < 0)
        ret = 1;
out:
    if (tool_close(&stage) < 0)
        ret = 1;
    free(a.acts);
    return ret;
}
