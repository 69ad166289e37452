/*
 * qed-img - create, inspect, check, map and grow QED images, in the command
 * style of qemu-img.
 *
 *   qed-img create [-c CLUSTER] [-t TABLE] [-b BACKING [-F raw|qed]] FILE [SIZE]
 *   qed-img info [--json] [-U] FILE
 *   qed-img check [-r] [-U] FILE
 *   qed-img map [--json] [-U] FILE
 *   qed-img resize FILE [+]SIZE
 *
 * Everything goes through libqed: the image is opened with an I/O engine on
 * the default libev loop and the synchronous wrappers run that loop until
 * each request completes.  Errors go to stderr, prefixed with "qed-img: ",
 * and make the tool exit with status 1 (check has its own exit codes).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ev.h>

#include "qed.h"

#define PROG "qed-img"

/* Extents asked for per block-status call; the image is walked in chunks. */
#define MAP_CHUNK_EXTENTS 1024

/* Deepest backing chain whose file names `map` will look up. */
#define MAX_CHAIN_DEPTH 64

/* ---- Messages ---------------------------------------------------------- */

static void __attribute__((format(printf, 1, 2))) errmsg(const char *fmt, ...)
{
    va_list ap;

    fputs(PROG ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* The library's messages (e.g. each problem found by check) go to stderr. */
static void log_to_stderr(enum qed_log_level level, const char *msg, void *opaque)
{
    (void)opaque;
    (void)level;
    fprintf(stderr, PROG ": %s\n", msg);
}

static void usage(FILE *f)
{
    fputs("Usage: " PROG " COMMAND [OPTIONS] ...\n"
          "\n"
          "Create, inspect, check, map and grow QED (QEMU Enhanced Disk) images.\n"
          "\n"
          "Commands:\n"
          "  create [-c CLUSTER] [-t TABLE] [-b BACKING [-F raw|qed]] FILE [SIZE]\n"
          "        Create FILE.  CLUSTER is the cluster size (power of two in\n"
          "        [4K, 64M], default 64K); TABLE the table size in clusters (power\n"
          "        of two in [1, 16], default 4).  BACKING is stored as given and\n"
          "        resolved relative to FILE's directory; without -F its format is\n"
          "        probed.  SIZE defaults to the backing file's size.\n"
          "  info [--json] [-U] FILE\n"
          "        Show size, cluster size, table size, backing file, dirty flag\n"
          "        and allocated bytes.\n"
          "  check [-r] [-U] FILE\n"
          "        Check the metadata; -r repairs.  Exit status: 0 clean,\n"
          "        2 corruption, 3 leaked clusters only, 1 the check failed.\n"
          "  map [--json] [-U] FILE\n"
          "        List the extents as data, zero or hole; --json prints the\n"
          "        format of `qemu-img map --output=json`.\n"
          "  resize FILE [+]SIZE\n"
          "        Grow FILE to SIZE (or by +SIZE).  Shrinking is refused.\n"
          "\n"
          "Options:\n"
          "  -U, --force-share   open without taking the image lock (read-only\n"
          "                      commands only; the image may be in use)\n"
          "  --backing-dir=DIR   (info, check, map, resize) allow backing files\n"
          "                      only under DIR, symlinks and \"..\" resolved,\n"
          "                      along the whole chain\n"
          "  --no-backing        (info, check, map, resize) refuse an image that\n"
          "                      has a backing file\n"
          "  -h, --help          show this help\n"
          "  -V, --version       show the version\n"
          "\n"
          "SIZE takes an optional suffix K, M, G, T, P or E (powers of 1024);\n"
          "a plain number is bytes.\n",
          f);
}

/* ---- Parsing ----------------------------------------------------------- */

/* Parse a size option or argument, printing why it is bad.  Returns 0 or -1. */
static int parse_size_arg(const char *what, const char *s, uint64_t *out)
{
    int r = qed_parse_size(s, out);

    if (r == -ERANGE) {
        errmsg("%s '%s' is too large (the maximum is %" PRIu64 " bytes)", what, s, UINT64_MAX);
        return -1;
    }
    if (r < 0) {
        errmsg("invalid %s '%s': expected a number of bytes with an optional "
               "K, M, G, T, P or E suffix", what, s);
        return -1;
    }
    return 0;
}

/* ---- Paths ------------------------------------------------------------- */

/**
 * backing_display_path - the name under which a backing file stored as
 * @backing in @image is opened: as stored when absolute or when @image has no
 * directory part, otherwise relative to @image's directory.  This is also the
 * name `qemu-img map` prints for it.  Returns a malloc'd string or NULL.
 */
static char *backing_display_path(const char *image, const char *backing)
{
    const char *slash = strrchr(image, '/');
    char *out;

    if (backing[0] == '/' || !slash)
        return strdup(backing);
    if (asprintf(&out, "%.*s/%s", (int)(slash - image + 1) - 1, image, backing) < 0)
        return NULL;
    return out;
}

/* ---- Opening ----------------------------------------------------------- */

/*
 * Backing-file confinement (--backing-dir=DIR, --no-backing), taken by every
 * command that opens an image (info, check, map, resize) and applied to the
 * whole backing chain by the library.  Default: backing names are followed
 * as QEMU follows them.
 */
enum { OPT_BACKING_DIR = 0x100, OPT_NO_BACKING };
#define CONFINE_LONGOPTS                                                                          \
    { "backing-dir", required_argument, NULL, OPT_BACKING_DIR },                                  \
        { "no-backing", no_argument, NULL, OPT_NO_BACKING }
static const char *opt_backing_dir;
static bool opt_no_backing;

/* Take a confinement option @c (with @arg); false when @c is not one. */
static bool confine_option(int c, const char *arg)
{
    if (c == OPT_BACKING_DIR)
        opt_backing_dir = arg;
    else if (c == OPT_NO_BACKING)
        opt_no_backing = true;
    else
        return false;
    return true;
}

struct tool_image {
    qed_aio *aio;
    qed_image *img;
};

/**
 * tool_open - open @path with an I/O engine on the default loop.  Prints the
 * library's message on failure.  @repair: a read-write open zeroes invalid
 * entries of an image marked clean (only `check -r` asks; other read-write
 * commands are refused on such an image).  Returns 0 or -1.
 */
static int tool_open(struct tool_image *t, const char *path, bool read_only, bool no_lock,
                     bool repair)
{
    struct qed_open_opts opts = { .read_only = read_only, .no_lock = no_lock,
                                  .repair_corrupt = repair,
                                  .backing_dir = opt_backing_dir,
                                  .no_backing = opt_no_backing };
    struct ev_loop *loop = ev_default_loop(0);
    char err[1024] = "";
    int r;

    t->aio = NULL;
    t->img = NULL;
    if (!loop) {
        errmsg("cannot initialise the libev event loop");
        return -1;
    }
    r = qed_aio_new(loop, QED_AIO_AUTO, &t->aio);
    if (r < 0) {
        errmsg("cannot set up file I/O: %s", strerror(-r));
        return -1;
    }
    r = qed_open(t->aio, path, &opts, &t->img, err, sizeof(err));
    if (r < 0) {
        if (err[0])
            errmsg("%s", err);
        else
            errmsg("cannot open '%s': %s", path, strerror(-r));
        qed_aio_free(t->aio);
        t->aio = NULL;
        return -1;
    }
    return 0;
}

/* tool_close - close the image (flushing it) and free the engine.  Returns 0 or -1. */
static int tool_close(struct tool_image *t)
{
    int ret = 0;

    if (t->img) {
        const char *path = qed_path(t->img);
        char *name = strdup(path ? path : "image");
        int r = qed_close(t->img);
        if (r < 0) {
            errmsg("error closing '%s': %s", name ? name : "image", strerror(-r));
            ret = -1;
        }
        free(name);
        t->img = NULL;
    }
    if (t->aio) {
        qed_aio_free(t->aio);
        t->aio = NULL;
    }
    return ret;
}

/* ---- Extent walking ---------------------------------------------------- */

typedef int (*extent_fn)(const struct qed_extent *e, void *opaque);

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

/**
 * walk_extents - describe the whole image with block status, merging
 * neighbours that qemu-img would merge, and call @fn for each merged extent
 * in order.  Returns 0, -1 after printing an error, or what @fn returned.
 */
static int walk_extents(qed_image *img, extent_fn fn, void *opaque)
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

/* Print @s as a JSON string literal. */
static void json_string(FILE *f, const char *s)
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
static void human_size(uint64_t v, char *buf, size_t len)
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

/* ---- create ------------------------------------------------------------ */

/**
 * probe_backing - read the start of the backing file: QED magic means qed,
 * anything else raw.  Also fetch its virtual size when @size is non-NULL.
 * Returns 0 or -1 after printing why.
 */
static int probe_backing(const char *path, enum qed_backing_fmt *fmt, uint64_t *size)
{
    unsigned char magic[4] = { 0 };
    struct stat st;
    ssize_t got;
    /* O_NONBLOCK: a FIFO must be refused, not waited on for ever. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);

    if (fd < 0) {
        errmsg("cannot open backing file '%s': %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) < 0) {
        errmsg("cannot stat backing file '%s': %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
        errmsg("backing file '%s' is %s: only a regular file or a block device can back an "
               "image", path, S_ISFIFO(st.st_mode) ? "a FIFO" : S_ISSOCK(st.st_mode) ? "a socket"
               : S_ISCHR(st.st_mode) ? "a character device" : S_ISDIR(st.st_mode) ? "a directory"
               : "not a regular file");
        close(fd);
        return -1;
    }
    got = pread(fd, magic, sizeof(magic), 0);
    if (got < 0) {
        errmsg("cannot read backing file '%s': %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    if (*fmt == QED_BACKING_PROBE)
        *fmt = (got == 4 && memcmp(magic, QED_MAGIC_BYTES, 4) == 0) ? QED_BACKING_QED
                                                                    : QED_BACKING_RAW;
    if (!size)
        return 0;
    if (*fmt == QED_BACKING_RAW) {
        if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
            errmsg("cannot take the size of backing file '%s': not a regular file; give SIZE",
                   path);
            return -1;
        }
        if (S_ISBLK(st.st_mode)) {
            errmsg("cannot take the size of block device '%s'; give SIZE", path);
            return -1;
        }
        *size = (uint64_t)st.st_size;
        return 0;
    }
    /* A qed backing file: its virtual size comes from its header, through the library. */
    {
        struct qed_open_opts o = { .read_only = true, .no_lock = true };
        qed_image *b = NULL;
        char err[1024] = "";
        int r = qed_open(NULL, path, &o, &b, err, sizeof(err));
        if (r < 0) {
            errmsg("%s", err[0] ? err : strerror(-r));
            return -1;
        }
        *size = qed_size(b);
        qed_close(b);
    }
    return 0;
}

static int cmd_create(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct qed_create_opts o = { 0 };
    const char *backing_fmt_arg = NULL, *path;
    char err[1024] = "";
    uint64_t v;
    int c, r;

    while ((c = getopt_long(argc, argv, "c:t:b:F:f:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            if (parse_size_arg("cluster size", optarg, &v) < 0)
                return 1;
            if (v > UINT32_MAX) {
                errmsg("QED cluster size %" PRIu64 " is not a power of two in [%u, %u]", v,
                       QED_MIN_CLUSTER_SIZE, QED_MAX_CLUSTER_SIZE);
                return 1;
            }
            o.cluster_size = (uint32_t)v;
            if (o.cluster_size == 0) {
                errmsg("QED cluster size 0 is not a power of two in [%u, %u]",
                       QED_MIN_CLUSTER_SIZE, QED_MAX_CLUSTER_SIZE);
                return 1;
            }
            break;
        case 't':
            if (qed_parse_size(optarg, &v) < 0 || strpbrk(optarg, "kKmMgGtTpPeE")) {
                errmsg("invalid table size '%s': expected a number of clusters", optarg);
                return 1;
            }
            if (v == 0 || v > UINT32_MAX) {
                errmsg("QED table size %s is not a power of two in [%u, %u]", optarg,
                       QED_MIN_TABLE_SIZE, QED_MAX_TABLE_SIZE);
                return 1;
            }
            o.table_size = (uint32_t)v;
            break;
        case 'b':
            o.backing_file = optarg;
            break;
        case 'F':
            backing_fmt_arg = optarg;
            break;
        case 'f':
            /* Accepted for qemu-img muscle memory; this tool only makes qed. */
            if (strcmp(optarg, "qed") != 0) {
                errmsg("only the qed format can be created, not '%s'", optarg);
                return 1;
            }
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            return 1;
        }
    }
    if (backing_fmt_arg) {
        if (!o.backing_file) {
            errmsg("-F needs a backing file (-b)");
            return 1;
        }
        if (strcmp(backing_fmt_arg, "raw") == 0)
            o.backing_fmt = QED_BACKING_RAW;
        else if (strcmp(backing_fmt_arg, "qed") == 0)
            o.backing_fmt = QED_BACKING_QED;
        else {
            errmsg("unknown backing format '%s': use raw or qed", backing_fmt_arg);
            return 1;
        }
    }
    if (argc - optind < 1 || argc - optind > 2) {
        errmsg("usage: create [-c CLUSTER] [-t TABLE] [-b BACKING [-F raw|qed]] FILE [SIZE]");
        return 1;
    }
    path = argv[optind];
    if (argc - optind == 2) {
        if (parse_size_arg("image size", argv[optind + 1], &o.size) < 0)
            return 1;
    } else if (!o.backing_file) {
        errmsg("image size must be given (only with a backing file may it be left out)");
        return 1;
    }

    if (o.backing_file) {
        /* Probe here rather than at every open: a raw backing file then gets
         * BACKING_FORMAT_NO_PROBE, so guest data that happens to start with the
         * QED magic can never change how the image is read later. */
        char *bpath = backing_display_path(path, o.backing_file);
        if (!bpath) {
            errmsg("out of memory");
            return 1;
        }
        r = probe_backing(bpath, &o.backing_fmt, argc - optind == 2 ? NULL : &o.size);
        free(bpath);
        if (r < 0)
            return 1;
    }

    printf("Formatting '%s', fmt=qed size=%" PRIu64, path, o.size);
    if (o.backing_file)
        printf(" backing_file=%s backing_fmt=%s", o.backing_file,
               o.backing_fmt == QED_BACKING_QED ? "qed" : "raw");
    printf(" cluster_size=%u table_size=%u\n",
           o.cluster_size ? o.cluster_size : QED_DEFAULT_CLUSTER_SIZE,
           o.table_size ? o.table_size : QED_DEFAULT_TABLE_SIZE);
    fflush(stdout);

    r = qed_create(path, &o, err, sizeof(err));
    if (r < 0) {
        if (err[0])
            errmsg("%s", err);
        else
            errmsg("cannot create '%s': %s", path, strerror(-r));
        return 1;
    }
    return 0;
}

/* ---- info -------------------------------------------------------------- */

static int sum_allocated(const struct qed_extent *e, void *opaque)
{
    uint64_t *sum = opaque;

    if (e->depth == 0 && e->data)
        *sum += e->length;
    return 0;
}

/*
 * Options shared by the read-only views (info, map): --json / --output=FMT,
 * -U / --force-share, -h, and exactly one FILE.  Returns -1 to go on, or the
 * exit status to return at once.
 */
static int parse_view_args(int argc, char **argv, const char *cmd, bool *json, bool *no_lock,
                           const char **path)
{
    static const struct option longopts[] = {
        { "json", no_argument, NULL, 'j' },
        { "output", required_argument, NULL, 'o' },
        { "force-share", no_argument, NULL, 'U' },
        { "help", no_argument, NULL, 'h' },
        CONFINE_LONGOPTS,
        { NULL, 0, NULL, 0 },
    };
    int c;

    while ((c = getopt_long(argc, argv, "hU", longopts, NULL)) != -1) {
        switch (c) {
        case 'j':
            *json = true;
            break;
        case 'o':
            if (strcmp(optarg, "json") == 0)
                *json = true;
            else if (strcmp(optarg, "human") == 0)
                *json = false;
            else {
                errmsg("--output must be human or json, not '%s'", optarg);
                return 1;
            }
            break;
        case 'U':
            *no_lock = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            if (confine_option(c, optarg))
                break;
            return 1;
        }
    }
    if (argc - optind != 1) {
        errmsg("usage: %s [--json] [-U] FILE", cmd);
        return 1;
    }
    *path = argv[optind];
    return -1;
}

static int cmd_info(int argc, char **argv)
{
    struct tool_image t;
    struct qed_info info;
    struct stat st;
    uint64_t allocated = 0, disk = 0;
    bool json = false, no_lock = false, known;
    const char *path;
    char *full = NULL;
    char a[32], b[32], d[32];
    int c, ret = 1;

    c = parse_view_args(argc, argv, "info", &json, &no_lock, &path);
    if (c >= 0)
        return c;
    if (tool_open(&t, path, true, no_lock, false) < 0)
        return 1;
    qed_get_info(t.img, &info);
    /* A damaged image still shows its header: only the allocation is
     * unknown (walk_extents said why), and the exit status says so. */
    known = walk_extents(t.img, sum_allocated, &allocated) == 0;
    if (stat(path, &st) == 0)
        disk = (uint64_t)st.st_blocks * 512;
    if (info.backing_file[0]) {
        full = backing_display_path(path, info.backing_file);
        if (!full) {
            errmsg("out of memory");
            goto out;
        }
    }

    if (json) {
        printf("{\n    \"filename\": ");
        json_string(stdout, path);
        printf(",\n    \"format\": \"qed\",\n");
        printf("    \"virtual-size\": %" PRIu64 ",\n", info.size);
        printf("    \"actual-size\": %" PRIu64 ",\n", disk);
        printf("    \"cluster-size\": %u,\n", info.cluster_size);
        printf("    \"table-size\": %u,\n", info.table_size);
        printf("    \"max-virtual-size\": %" PRIu64 ",\n", info.max_size);
        if (info.backing_file[0]) {
            printf("    \"backing-filename\": ");
            json_string(stdout, info.backing_file);
            printf(",\n    \"full-backing-filename\": ");
            json_string(stdout, full);
            printf(",\n");
            if (info.backing_format) {
                printf("    \"backing-filename-format\": ");
                json_string(stdout, info.backing_format);
                printf(",\n");
            }
        }
        if (known)
            printf("    \"allocated-size\": %" PRIu64 ",\n", allocated);
        printf("    \"dirty-flag\": %s\n}\n", info.dirty ? "true" : "false");
    } else {
        human_size(info.size, a, sizeof(a));
        human_size(disk, d, sizeof(d));
        human_size(allocated, b, sizeof(b));
        printf("image: %s\n", path);
        printf("file format: qed\n");
        printf("virtual size: %s (%" PRIu64 " bytes)\n", a, info.size);
        printf("disk size: %s\n", d);
        printf("cluster_size: %u\n", info.cluster_size);
        printf("table_size: %u\n", info.table_size);
        if (info.backing_file[0]) {
            if (strcmp(full, info.backing_file) != 0)
                printf("backing file: %s (actual path: %s)\n", info.backing_file, full);
            else
                printf("backing file: %s\n", info.backing_file);
            if (info.backing_format)
                printf("backing file format: %s\n", info.backing_format);
        }
        if (known)
            printf("allocated: %s (%" PRIu64 " bytes)\n", b, allocated);
        else
            printf("allocated: unknown\n");
        printf("dirty flag: %s\n", info.dirty ? "yes" : "no");
    }
    ret = known ? 0 : 1;
out:
    free(full);
    if (tool_close(&t) < 0)
        ret = 1;
    return ret;
}

/* ---- check ------------------------------------------------------------- */

/* Check @path once; read-write with @repair.  Returns 0, or -1 when the check could not run. */
static int check_once(const char *path, bool repair, bool no_lock, struct qed_check_result *res)
{
    struct tool_image t;
    int r, ret = 0;

    memset(res, 0, sizeof(*res));
    if (tool_open(&t, path, !repair, no_lock && !repair, repair) < 0)
        return -1;
    r = qed_check(t.img, repair, res);
    if (r < 0) {
        errmsg("Check failed: %s", strerror(-r));
        ret = -1;
    }
    if (tool_close(&t) < 0)
        ret = -1;
    return ret;
}

static void print_check(const struct qed_check_result *r)
{
    if (!r->corruptions && !r->leaks && !r->check_errors) {
        printf("No errors were found on the image.\n");
    } else {
        if (r->corruptions)
            printf("\n%" PRIu64 " errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image may corrupt it.\n",
                   r->corruptions);
        if (r->leaks)
            printf("\n%" PRIu64 " leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n",
                   r->leaks);
        if (r->check_errors)
            printf("\n%" PRIu64 " internal errors have occurred during the check.\n",
                   r->check_errors);
    }
    if (r->total_clusters && r->allocated_clusters)
        printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, "
               "%0.2f%% compressed clusters\n",
               r->allocated_clusters, r->total_clusters,
               100.0 * (double)r->allocated_clusters / (double)r->total_clusters,
               100.0 * (double)r->fragmented_clusters / (double)r->allocated_clusters, 0.0);
    if (r->image_end_offset)
        printf("Image end offset: %" PRIu64 "\n", r->image_end_offset);
}

/* Problems repaired: at least @fixed, and at least those of @before no longer found. */
static uint64_t repaired_count(uint64_t before, uint64_t found, uint64_t fixed)
{
    uint64_t remaining = found > fixed ? found - fixed : 0;
    uint64_t gone = before > remaining ? before - remaining : 0;

    return gone > fixed ? gone : fixed;
}

static int cmd_check(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "repair", no_argument, NULL, 'r' },
        { "force-share", no_argument, NULL, 'U' },
        { "help", no_argument, NULL, 'h' },
        CONFINE_LONGOPTS,
        { NULL, 0, NULL, 0 },
    };
    struct qed_check_result before, after, final;
    bool repair = false, no_lock = false;
    const char *path;
    uint64_t fixed_corruptions, fixed_leaks;
    int c, r;

    while ((c = getopt_long(argc, argv, "rUh", longopts, NULL)) != -1) {
        switch (c) {
        case 'r':
            repair = true;
            break;
        case 'U':
            no_lock = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            if (confine_option(c, optarg))
                break;
            return 1;
        }
    }
    /* qemu-img spells it "-r all" or "-r leaks"; take those words too. */
    if (repair && argc - optind == 2 &&
        (strcmp(argv[optind], "all") == 0 || strcmp(argv[optind], "leaks") == 0))
        optind++;
    if (argc - optind != 1) {
        errmsg("usage: check [-r] [-U] FILE");
        return 1;
    }
    if (repair && no_lock) {
        errmsg("-U cannot be used with -r: repairing needs the image lock");
        return 1;
    }
    path = argv[optind];

    /* Look first without writing: a read-write open of a NEED_CHECK image
     * (and, as -r asks, of a clean image with invalid entries) repairs it
     * inside qed_open, so only this read-only pass sees (and can report)
     * what was wrong before any repair. */
    if (repair)
        /* The repair pass below logs each problem again; say it once. */
        qed_set_log(log_to_stderr, NULL, QED_LOG_ERROR);
    r = check_once(path, false, no_lock, &before);
    qed_set_log(log_to_stderr, NULL, QED_LOG_WARN);
    if (r < 0)
        return 1;

    if (!repair) {
        final = before;
    } else {
        if (check_once(path, true, false, &after) < 0)
            return 1;
        final = after;
        /* Count what was repaired both ways: what this pass reports fixing, and
         * what vanished since the read-only look (a NEED_CHECK image was
         * already repaired by the read-write open, before qed_check ran). */
        fixed_corruptions = repaired_count(before.corruptions, after.corruptions,
                                           after.corruptions_fixed);
        fixed_leaks = repaired_count(before.leaks, after.leaks, after.leaks_fixed);
        if (fixed_corruptions || fixed_leaks) {
            printf("The following inconsistencies were found and repaired:\n\n"
                   "    %" PRIu64 " leaked clusters\n"
                   "    %" PRIu64 " corruptions\n\n"
                   "Double checking the fixed image now...\n",
                   fixed_leaks, fixed_corruptions);
            fflush(stdout);
            if (check_once(path, false, false, &final) < 0)
                return 1;
        }
    }
    print_check(&final);
    if (final.check_errors) {
        errmsg("Check failed");
        return 1;
    }
    if (final.corruptions)
        return 2;
    if (final.leaks)
        return 3;
    return 0;
}

/* ---- map --------------------------------------------------------------- */

struct map_state {
    bool json;
    bool first;
    const char *names[MAX_CHAIN_DEPTH]; /* file name per backing depth, for human output */
    char *owned[MAX_CHAIN_DEPTH];
    unsigned nnames;
};

static int map_print(const struct qed_extent *e, void *opaque)
{
    struct map_state *m = opaque;

    if (m->json) {
        printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %u,"
               " \"present\": %s, \"zero\": %s, \"data\": %s",
               m->first ? "[" : ",\n", e->start, e->length, e->depth,
               e->present ? "true" : "false", e->zero ? "true" : "false",
               e->data ? "true" : "false");
        if (e->has_offset)
            printf(", \"offset\": %" PRIu64, e->offset);
        printf("}");
        m->first = false;
        return 0;
    }
    if (!e->data || e->zero)
        return 0;
    if (!e->has_offset) {
        errmsg("extent at %" PRIu64 " holds data without a host offset", e->start);
        return -1;
    }
    if (e->depth >= m->nnames) {
        errmsg("extent at %" PRIu64 " has backing depth %u, beyond the chain of %u files",
               e->start, e->depth, m->nnames);
        return -1;
    }
    char s[24], l[24], o[24];
    snprintf(s, sizeof(s), e->start ? "0x%" PRIx64 : "%" PRIu64, e->start);
    snprintf(l, sizeof(l), e->length ? "0x%" PRIx64 : "%" PRIu64, e->length);
    snprintf(o, sizeof(o), e->offset ? "0x%" PRIx64 : "%" PRIu64, e->offset);
    printf("%-16s%-16s%-16s%s\n", s, l, o, m->names[e->depth]);
    return 0;
}

/**
 * map_chain_names - record the file name of each layer: the image, then each
 * qed backing file opened read-only without a lock to learn its own backing.
 * Returns 0 or -1.
 */
static int map_chain_names(struct map_state *m, const char *path, const struct qed_info *top)
{
    struct qed_info *info = malloc(sizeof(*info));
    const char *cur = path;

    if (!info) {
        errmsg("out of memory");
        return -1;
    }
    *info = *top;
    m->names[m->nnames++] = path;
    while (info->backing_file[0] && m->nnames < MAX_CHAIN_DEPTH) {
        char *name = backing_display_path(cur, info->backing_file);
        struct qed_open_opts o = { .read_only = true, .no_lock = true };
        qed_image *b = NULL;
        char err[1024] = "";

        if (!name) {
            errmsg("out of memory");
            free(info);
            return -1;
        }
        m->owned[m->nnames] = name;
        m->names[m->nnames++] = name;
        cur = name;
        if (!info->backing_format || strcmp(info->backing_format, "qed") != 0)
            break;
        if (qed_open(NULL, name, &o, &b, err, sizeof(err)) < 0) {
            errmsg("%s", err[0] ? err : "cannot open backing file");
            free(info);
            return -1;
        }
        qed_get_info(b, info);
        qed_close(b);
    }
    free(info);
    return 0;
}

static int cmd_map(int argc, char **argv)
{
    struct map_state m = { .first = true };
    struct tool_image t;
    struct qed_info *info = NULL;
    bool no_lock = false;
    const char *path;
    int c, ret = 1;

    c = parse_view_args(argc, argv, "map", &m.json, &no_lock, &path);
    if (c >= 0)
        return c;
    if (tool_open(&t, path, true, no_lock, false) < 0)
        return 1;
    if (!m.json) {
        info = malloc(sizeof(*info));
        if (!info) {
            errmsg("out of memory");
            goto out;
        }
        qed_get_info(t.img, info);
        if (map_chain_names(&m, path, info) < 0)
            goto out;
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    }
    if (qed_size(t.img) == 0) {
        /* qemu-img describes an empty image by one empty extent; do the same. */
        if (m.json)
            printf("[{ \"start\": 0, \"length\": 0, \"depth\": 0, \"present\": false,"
                   " \"zero\": false, \"data\": false}]\n");
        ret = 0;
        goto out;
    }
    if (walk_extents(t.img, map_print, &m) != 0)
        goto out;
    if (m.json)
        printf("]\n");
    ret = 0;
out:
    if (ret && m.json && !m.first)
        printf("\n");
    for (unsigned i = 0; i < MAX_CHAIN_DEPTH; i++)
        free(m.owned[i]);
    free(info);
    if (tool_close(&t) < 0)
        ret = 1;
    return ret;
}

/* ---- resize ------------------------------------------------------------ */

static int cmd_resize(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        CONFINE_LONGOPTS,
        { NULL, 0, NULL, 0 },
    };
    struct tool_image t;
    struct qed_info info;
    const char *path, *arg;
    uint64_t size, cur, want;
    bool relative = false;
    int c, r, ret = 1;

    /* "+" stops option parsing at the first non-option, so "-1G" is not an option. */
    while ((c = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage(stdout);
            return 0;
        default:
            if (confine_option(c, optarg))
                break;
            return 1;
        }
    }
    if (argc - optind != 2) {
        errmsg("usage: resize FILE [+]SIZE");
        return 1;
    }
    path = argv[optind];
    arg = argv[optind + 1];
    if (arg[0] == '-') {
        errmsg("shrinking is not supported: QED images can only grow (asked for %s)", arg);
        return 1;
    }
    if (arg[0] == '+') {
        relative = true;
        arg++;
    }
    if (parse_size_arg("image size", arg, &size) < 0)
        return 1;
    if (tool_open(&t, path, false, false, false) < 0)
        return 1;
    qed_get_info(t.img, &info);
    cur = info.size;
    if (relative) {
        if (size > UINT64_MAX - cur) {
            errmsg("new size of '%s' overflows: %" PRIu64 " + %" PRIu64, path, cur, size);
            goto out;
        }
        want = cur + size;
    } else {
        want = size;
    }
    if (want < cur) {
        errmsg("shrinking is not supported: '%s' is %" PRIu64 " bytes, asked for %" PRIu64,
               path, cur, want);
        goto out;
    }
    if (want > info.max_size) {
        errmsg("size %" PRIu64 " is too large for '%s': the maximum for cluster size %u "
               "and table size %u is %" PRIu64 " bytes",
               want, path, info.cluster_size, info.table_size, info.max_size);
        goto out;
    }
    r = qed_sync_resize(t.img, want);
    if (r < 0) {
        errmsg("cannot resize '%s' to %" PRIu64 " bytes: %s", path, want, strerror(-r));
        goto out;
    }
    ret = 0;
out:
    if (tool_close(&t) < 0)
        ret = 1;
    if (ret == 0)
        printf("Image resized.\n");
    return ret;
}

/* ---- main -------------------------------------------------------------- */

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {
        { "create", cmd_create }, { "info", cmd_info },     { "check", cmd_check },
        { "map", cmd_map },       { "resize", cmd_resize },
    };
    int ret = -1;

    qed_set_log(log_to_stderr, NULL, QED_LOG_WARN);

    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "-V") == 0 || strcmp(argv[1], "--version") == 0) {
        printf(PROG " (" PACKAGE_NAME ") " PACKAGE_VERSION "\n");
        return 0;
    }
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        if (strcmp(argv[1], cmds[i].name) == 0) {
            /* Each command parses its own options from argv + 1; its argv[0]
             * becomes "qed-img COMMAND" so getopt's messages say who speaks. */
            char self[64];
            snprintf(self, sizeof(self), PROG " %s", cmds[i].name);
            argv[1] = self;
            ret = cmds[i].fn(argc - 1, argv + 1);
            break;
        }
    }
    if (ret < 0) {
        errmsg("unknown command '%s' (try '" PROG " --help')", argv[1]);
        return 1;
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        errmsg("error writing the output: %s", strerror(errno));
        return 1;
    }
    return ret;
}
