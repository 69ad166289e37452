/*
 * create.c - qed-img create: make a new image, with the geometry asked for
 * and an optional backing file whose format is probed here (and recorded)
 * and whose size the image takes when none is given.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qed-img.h"

/* Take -c CLUSTER into @o.  Returns 0 or -1 after printing why. */
static int create_cluster_opt(const char *arg, struct qed_create_opts *o)
{
    uint64_t v;

    if (parse_size_arg("cluster size", arg, &v) < 0)
        return -1;
    if (v > UINT32_MAX) {
        errmsg("QED cluster size %" PRIu64 " is not a power of two in [%u, %u]", v,
               QED_MIN_CLUSTER_SIZE, QED_MAX_CLUSTER_SIZE);
        return -1;
    }
    o->cluster_size = (uint32_t)v;
    if (o->cluster_size == 0) {
        errmsg("QED cluster size 0 is not a power of two in [%u, %u]",
               QED_MIN_CLUSTER_SIZE, QED_MAX_CLUSTER_SIZE);
        return -1;
    }
    return 0;
}

/* Take -t TABLE into @o.  Returns 0 or -1 after printing why. */
static int create_table_opt(const char *arg, struct qed_create_opts *o)
{
    uint64_t v;

    if (qed_parse_size(arg, &v) < 0 || strpbrk(arg, "kKmMgGtTpPeE")) {
        errmsg("invalid table size '%s': expected a number of clusters", arg);
        return -1;
    }
    if (v == 0 || v > UINT32_MAX) {
        errmsg("QED table size %s is not a power of two in [%u, %u]", arg,
               QED_MIN_TABLE_SIZE, QED_MAX_TABLE_SIZE);
        return -1;
    }
    o->table_size = (uint32_t)v;
    return 0;
}

/* Take -F raw|qed (given with -b) into @o.  Returns 0 or -1 after printing why. */
static int create_backing_fmt_opt(const char *arg, struct qed_create_opts *o)
{
    if (!o->backing_file) {
        errmsg("-F needs a backing file (-b)");
        return -1;
    }
    if (strcmp(arg, "raw") == 0)
        o->backing_fmt = QED_BACKING_RAW;
    else if (strcmp(arg, "qed") == 0)
        o->backing_fmt = QED_BACKING_QED;
    else {
        errmsg("unknown backing format '%s': use raw or qed", arg);
        return -1;
    }
    return 0;
}

/* Parse the options into @o.  Returns -1 to go on, or the exit status to return at once. */
static int create_parse_opts(int argc, char **argv, struct qed_create_opts *o)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *backing_fmt_arg = NULL;
    int c;

    while ((c = getopt_long(argc, argv, "c:t:b:F:f:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            if (create_cluster_opt(optarg, o) < 0)
                return 1;
            break;
        case 't':
            if (create_table_opt(optarg, o) < 0)
                return 1;
            break;
        case 'b':
            o->backing_file = optarg;
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
    if (backing_fmt_arg && create_backing_fmt_opt(backing_fmt_arg, o) < 0)
        return 1;
    return -1;
}

/*
 * Probe the backing file of the new image @path (through the library, which
 * resolves its name and looks at it as qed_open will), and take its size
 * into o->size when @want_size.  Returns 0 or -1 after printing why.
 */
static int create_probe_backing(const char *path, struct qed_create_opts *o, bool want_size)
{
    char err[1024] = "";
    char *bpath = NULL;
    int r = qed_backing_path(path, o->backing_file, &bpath);

    if (r < 0) {
        errmsg("backing file '%s' of '%s': %s", o->backing_file, path, strerror(-r));
        return -1;
    }
    r = qed_probe_format(bpath, &o->backing_fmt, want_size ? &o->size : NULL, err, sizeof(err));
    if (r == -ENOTSUP && want_size)
        errmsg("cannot take the size of block device '%s'; give SIZE", bpath);
    else if (r < 0)
        errmsg("backing file: %s", err[0] ? err : strerror(-r));
    free(bpath);
    return r < 0 ? -1 : 0;
}

int cmd_create(int argc, char **argv)
{
    struct qed_create_opts o = { 0 };
    const char *path;
    char err[1024] = "";
    int r;

    r = create_parse_opts(argc, argv, &o);
    if (r >= 0)
        return r;
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
    /* Probe here rather than at every open: a raw backing file then gets
     * BACKING_FORMAT_NO_PROBE, so guest data that happens to start with the
     * QED magic can never change how the image is read later. */
    if (o.backing_file && create_probe_backing(path, &o, argc - optind == 1) < 0)
        return 1;

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
