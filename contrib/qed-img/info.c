/*
 * info.c - qed-img info: the header's fields, the disk usage, the backing
 * file, the bytes allocated in the image itself, the dirty flag and the
 * dirty bitmaps, as text in qemu-img's words or as a JSON object with
 * qemu-img's key names (the bitmaps as qemu-img shows qcow2's, in its
 * "format-specific" part, with "dirty bytes" added).
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "qed-img.h"

/* What `info` shows besides the header's fields. */
struct info_view {
    const char *path;
    struct qed_info info;
    uint64_t disk;      /* bytes the file takes on disk */
    uint64_t allocated; /* bytes of data in the image itself (depth 0) */
    bool known;         /* false: the allocation could not be read */
};

static int sum_allocated(const struct qed_extent *e, void *opaque)
{
    uint64_t *sum = opaque;

    if (e->depth == 0 && e->data)
        *sum += e->length;
    return 0;
}

/*
 * The bitmaps, shaped as qemu-img's format-specific "bitmaps" list for
 * qcow2: its flags are "in-use" (qcow2's mark of a bitmap that was not
 * stored cleanly: ours are the inconsistent ones) and "auto" (recording
 * writes: enabled).  "dirty-bytes" is ours; an inconsistent bitmap has
 * none to show.  Printed only when there are bitmaps, as qemu-img does.
 */
static void info_bitmaps_json(qed_image *img)
{
    unsigned n = qed_bitmap_count(img);

    if (n == 0)
        return;
    printf("    \"format-specific\": {\n        \"type\": \"qed\",\n"
           "        \"data\": {\n            \"bitmaps\": [\n");
    for (unsigned i = 0; i < n; i++) {
        struct qed_bitmap_info bi;

        if (qed_bitmap_info(img, i, &bi) < 0)
            continue;
        printf("                {\n                    \"flags\": [");
        if (bi.inconsistent)
            printf("\n                        \"in-use\"%s", bi.enabled ? "," : "");
        if (bi.enabled)
            printf("\n                        \"auto\"");
        printf("\n                    ],\n                    \"name\": ");
        json_string(stdout, bi.name);
        printf(",\n                    \"granularity\": %" PRIu32, bi.granularity);
        if (!bi.inconsistent)
            printf(",\n                    \"dirty-bytes\": %" PRIu64, bi.dirty_bytes);
        printf("\n                }%s\n", i + 1 < n ? "," : "");
    }
    printf("            ]\n        }\n    },\n");
}

/* The same for the text output, as qemu-img's "Format specific information". */
static void info_bitmaps_human(qed_image *img)
{
    unsigned n = qed_bitmap_count(img);

    if (n == 0)
        return;
    printf("Format specific information:\n    bitmaps:\n");
    for (unsigned i = 0; i < n; i++) {
        struct qed_bitmap_info bi;
        unsigned f = 0;

        if (qed_bitmap_info(img, i, &bi) < 0)
            continue;
        printf("        [%u]:\n            flags:\n", i);
        if (bi.inconsistent)
            printf("                [%u]: in-use\n", f++);
        if (bi.enabled)
            printf("                [%u]: auto\n", f++);
        printf("            name: %s\n            granularity: %" PRIu32 "\n", bi.name,
               bi.granularity);
        if (!bi.inconsistent)
            printf("            dirty bytes: %" PRIu64 "\n", bi.dirty_bytes);
    }
}

static void info_print_json(const struct info_view *v, qed_image *img)
{
    const struct qed_info *info = &v->info;

    printf("{\n    \"filename\": ");
    json_string(stdout, v->path);
    printf(",\n    \"format\": \"qed\",\n");
    printf("    \"virtual-size\": %" PRIu64 ",\n", info->size);
    printf("    \"actual-size\": %" PRIu64 ",\n", v->disk);
    printf("    \"cluster-size\": %u,\n", info->cluster_size);
    printf("    \"table-size\": %u,\n", info->table_size);
    printf("    \"max-virtual-size\": %" PRIu64 ",\n", info->max_size);
    if (info->backing_file[0]) {
        printf("    \"backing-filename\": ");
        json_string(stdout, info->backing_file);
        printf(",\n    \"full-backing-filename\": ");
        json_string(stdout, info->backing_path);
        printf(",\n");
        if (info->backing_format) {
            printf("    \"backing-filename-format\": ");
            json_string(stdout, info->backing_format);
            printf(",\n");
        }
    }
    if (v->known)
        printf("    \"allocated-size\": %" PRIu64 ",\n", v->allocated);
    info_bitmaps_json(img);
    printf("    \"dirty-flag\": %s\n}\n", info->dirty ? "true" : "false");
}

static void info_print_human(const struct info_view *v, qed_image *img)
{
    const struct qed_info *info = &v->info;
    char a[32], b[32], d[32];

    human_size(info->size, a, sizeof(a));
    human_size(v->disk, d, sizeof(d));
    human_size(v->allocated, b, sizeof(b));
    printf("image: %s\n", v->path);
    printf("file format: qed\n");
    printf("virtual size: %s (%" PRIu64 " bytes)\n", a, info->size);
    printf("disk size: %s\n", d);
    printf("cluster_size: %u\n", info->cluster_size);
    printf("table_size: %u\n", info->table_size);
    if (info->backing_file[0]) {
        if (strcmp(info->backing_path, info->backing_file) != 0)
            printf("backing file: %s (actual path: %s)\n", info->backing_file,
                   info->backing_path);
        else
            printf("backing file: %s\n", info->backing_file);
        if (info->backing_format)
            printf("backing file format: %s\n", info->backing_format);
    }
    if (v->known)
        printf("allocated: %s (%" PRIu64 " bytes)\n", b, v->allocated);
    else
        printf("allocated: unknown\n");
    printf("dirty flag: %s\n", info->dirty ? "yes" : "no");
    info_bitmaps_human(img);
}

/*
 * Say what a set dirty flag means (issue 13).  NEED_CHECK is set on disk
 * while a writer (qednbd, QEMU) has the image open and has written since it
 * was last idle, and stays set after a crash.  With -U the image may be in
 * use, and then the flag is normal, not damage: say so instead of alarming
 * a user who followed the README.  Without -U our shared lock was granted,
 * so no locking writer has it open: it was not closed cleanly.
 */
static void info_explain_dirty(const char *path, bool no_lock)
{
    if (no_lock)
        errmsg("%s: dirty flag (NEED_CHECK) set: the image is open read-write elsewhere (normal "
               "while a server writes it) or was not closed cleanly; run `" PROG " check %s` "
               "when no one uses it", path, path);
    else
        errmsg("%s: dirty flag (NEED_CHECK) set: the image was not closed cleanly; `" PROG
               " check -r %s` repairs it (so does opening it read-write)", path, path);
}

int cmd_info(int argc, char **argv)
{
    struct info_view v = { .allocated = 0 };
    struct tool_image t;
    struct stat st;
    bool json = false, no_lock = false;
    int c, ret;

    c = parse_view_args(argc, argv, "info", &json, &no_lock, &v.path);
    if (c >= 0)
        return c;
    if (view_open(&t, v.path, no_lock) < 0)
        return 1;
    qed_get_info(t.img, &v.info);
    /* A damaged image still shows its header: only the allocation is
     * unknown (walk_extents said why), and the exit status says so. */
    v.known = walk_extents(t.img, sum_allocated, &v.allocated) == 0;
    if (stat(v.path, &st) == 0)
        v.disk = (uint64_t)st.st_blocks * 512;
    if (json) {
        info_print_json(&v, t.img);
    } else {
        info_print_human(&v, t.img);
        if (v.info.dirty)
            info_explain_dirty(v.path, no_lock);
    }
    ret = v.known ? 0 : 1;
    /* v.info's strings belong to the image: printed above, before the close. */
    if (tool_close(&t) < 0)
        ret = 1;
    return ret;
}
