/*
 * map.c - qed-img map: the image as extents of data, zeros and holes, in
 * `qemu-img map`'s human format (data extents with the file holding them)
 * or its JSON format (every extent).
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>

#include "qed-img.h"

struct map_state {
    bool json;
    bool first;         /* no JSON extent printed yet */
    const qed_image *img; /* names the file of each backing depth (qed_chain_path) */
};

static void map_print_json(struct map_state *m, const struct qed_extent *e)
{
    printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %u,"
           " \"present\": %s, \"zero\": %s, \"data\": %s",
           m->first ? "[" : ",\n", e->start, e->length, e->depth,
           e->present ? "true" : "false", e->zero ? "true" : "false",
           e->data ? "true" : "false");
    if (e->has_offset)
        printf(", \"offset\": %" PRIu64, e->offset);
    printf("}");
    m->first = false;
}

static int map_print(const struct qed_extent *e, void *opaque)
{
    struct map_state *m = opaque;
    const char *name;

    if (m->json) {
        map_print_json(m, e);
        return 0;
    }
    if (!e->data || e->zero)
        return 0;
    if (!e->has_offset) {
        errmsg("extent at %" PRIu64 " holds data without a host offset", e->start);
        return -1;
    }
    name = qed_chain_path(m->img, e->depth);
    if (!name) {
        errmsg("extent at %" PRIu64 " has backing depth %u, beyond the image's backing chain",
               e->start, e->depth);
        return -1;
    }
    char s[24], l[24], o[24];
    snprintf(s, sizeof(s), e->start ? "0x%" PRIx64 : "%" PRIu64, e->start);
    snprintf(l, sizeof(l), e->length ? "0x%" PRIx64 : "%" PRIu64, e->length);
    snprintf(o, sizeof(o), e->offset ? "0x%" PRIx64 : "%" PRIu64, e->offset);
    printf("%-16s%-16s%-16s%s\n", s, l, o, name);
    return 0;
}

int cmd_map(int argc, char **argv)
{
    struct map_state m = { .first = true };
    struct tool_image t;
    bool no_lock = false;
    const char *path;
    int c, ret = 1;

    c = parse_view_args(argc, argv, "map", &m.json, &no_lock, &path);
    if (c >= 0)
        return c;
    if (view_open(&t, path, no_lock) < 0)
        return 1;
    m.img = t.img;
    if (!m.json)
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
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
    if (tool_close(&t) < 0)
        ret = 1;
    return ret;
}
