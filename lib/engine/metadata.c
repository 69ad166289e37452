/*
 * metadata.c - keep entries that were invalid at open invalid for good.
 *
 * New clusters are taken from the end of the file, so an L1 or L2 entry that
 * pointed past the end when the image was opened would point at freshly
 * allocated data or tables once the file grows: reads would return other
 * data, and writes would land on metadata.  Likewise an L2 entry that points
 * at the header, the L1 table or an L2 table aliases metadata.
 *
 * So the open-time view is recorded: the file end, and the set of L2 tables
 * that L1 names.  Invalid L1 entries are disabled in memory at open; an L2
 * table that existed at open is checked the first time it is read, and the
 * entries found invalid are remembered and disabled again on every later
 * read.  "Disabled" means the low bit is set, which no valid (cluster-aligned)
 * offset has; the in-memory copies are never written back whole, so the
 * marks never reach the disk and check/repair still see the original values
 * (check reads the tables from disk).
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qed-image.h"

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Index of @off in the sorted meta tables, or -1. */
static long meta_find(const struct qed_image *img, uint64_t off)
{
    size_t lo = 0, hi = img->nmeta_tables;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (img->meta_tables[mid] == off)
            return (long)mid;
        if (img->meta_tables[mid] < off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

/* Does host cluster @off belong to the header, the L1 table or a meta table? */
static bool is_metadata(const struct qed_image *img, uint64_t off)
{
    const struct qed_geom *g = &img->g;
    size_t lo = 0, hi = img->nmeta_tables;

    if (off < g->header_bytes)
        return true;
    if (off >= img->h.l1_table_offset && off - img->h.l1_table_offset < g->table_bytes)
        return true;
    /* The last table starting at or before @off. */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (img->meta_tables[mid] <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && off - img->meta_tables[lo - 1] < g->table_bytes;
}

int qed_meta_init(struct qed_image *img)
{
    const struct qed_geom *g = &img->g;
    size_t n = 0;

    /* Kept across a re-init after repair: validity is judged against the
     * file as it was when opened, not as this open has grown it. */
    if (!img->open_end)
        img->open_end = img->file_size;
    img->meta_tables = malloc(((size_t)g->table_entries + 1) * sizeof(uint64_t));
    if (!img->meta_tables)
        return -ENOMEM;
    for (uint64_t i = 0; i < g->table_entries; i++) {
        uint64_t off = le64toh(img->l1[i]);
        if (off == QED_ENTRY_UNALLOCATED)
            continue;
        if (!qed_check_table_offset(g, off, img->open_end)) {
            qed_log(QED_LOG_WARN, "%s: L1 entry %" PRIu64 " (0x%" PRIx64 ") is invalid", img->path,
                    i, off);
            img->l1[i] = htole64(off | QED_ENTRY_DISABLED);
            continue;
        }
        img->meta_tables[n++] = off;
    }
    qsort(img->meta_tables, n, sizeof(uint64_t), cmp_u64);
    /* Duplicates (two L1 entries naming one table) collapse to one. */
    size_t u = 0;
    for (size_t i = 0; i < n; i++)
        if (u == 0 || img->meta_tables[u - 1] != img->meta_tables[i])
            img->meta_tables[u++] = img->meta_tables[i];
    img->nmeta_tables = u;
    img->meta_scanned = calloc(u ? u : 1, 1);
    return img->meta_scanned ? 0 : -ENOMEM;
}

static int bogus_add(struct qed_image *img, uint64_t table, uint64_t index, uint64_t value)
{
    if (img->nbogus == img->bogus_cap) {
        size_t cap = img->bogus_cap ? 2 * img->bogus_cap : 16;
        struct qed_bogus *b = realloc(img->bogus, cap * sizeof(*b));
        if (!b)
            return -ENOMEM;
        img->bogus = b;
        img->bogus_cap = cap;
    }
    img->bogus[img->nbogus].table = table;
    img->bogus[img->nbogus].value = value;
    img->bogus[img->nbogus++].index = index;
    return 0;
}

int qed_meta_sanitize_l2(struct qed_image *img, uint64_t table_off, uint64_t *t)
{
    const struct qed_geom *g = &img->g;
    long k = meta_find(img, table_off);

    if (k < 0)
        return 0; /* a table this open created: every entry is ours */
    if (img->meta_scanned[k]) {
        /* Only while the entry still holds the bad value: a repair may
         * have zeroed it on disk since. */
        for (size_t i = 0; i < img->nbogus; i++)
            if (img->bogus[i].table == table_off &&
                le64toh(t[img->bogus[i].index]) == img->bogus[i].value)
                t[img->bogus[i].index] = htole64(img->bogus[i].value | QED_ENTRY_DISABLED);
        return 0;
    }
    for (uint64_t j = 0; j < g->table_entries; j++) {
        uint64_t e = le64toh(t[j]);
        if (e == QED_ENTRY_UNALLOCATED || e == QED_ENTRY_ZERO ||
            (e & (g->cluster_size - 1)))
            continue; /* unallocated, zero, or already invalid for good */
        if (e >= img->open_end || is_metadata(img, e)) {
            qed_log(QED_LOG_WARN,
                    "%s: L2 entry %" PRIu64 " of the table at 0x%" PRIx64 " (0x%" PRIx64
                    ") points %s", img->path, j, table_off, e,
                    e >= img->open_end ? "past the end of the file" : "at metadata");
            if (bogus_add(img, table_off, j, e) < 0)
                return -ENOMEM;
            t[j] = htole64(e | QED_ENTRY_DISABLED);
        }
    }
    img->meta_scanned[k] = 1;
    return 0;
}

bool qed_meta_disabled_l2(const struct qed_image *img, uint64_t table_off, uint64_t index,
                          uint64_t *value)
{
    for (size_t i = 0; i < img->nbogus; i++)
        if (img->bogus[i].table == table_off && img->bogus[i].index == index) {
            *value = img->bogus[i].value;
            return true;
        }
    return false;
}

void qed_meta_free(struct qed_image *img)
{
    free(img->meta_tables);
    free(img->meta_scanned);
    free(img->bogus);
    img->meta_tables = NULL;
    img->meta_scanned = NULL;
    img->bogus = NULL;
    /* A repair frees and re-runs qed_meta_init on an open image: a count
     * left behind would make the next bogus_add write through NULL. */
    img->nbogus = img->bogus_cap = 0;
}
