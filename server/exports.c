/*
 * exports.c - the table of exports: built from the command line, looked up
 * by name during the handshake, opened (images checked and locked, their
 * tables' memory reserved) before the server listens, closed at exit.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exports.h"
#include "threads.h"
#include "nbd-proto.h"

struct export *srv_find_export(const char *name, size_t len)
{
    if (len == 0 && srv.nexports)
        return &srv.exports[0];
    for (size_t i = 0; i < srv.nexports; i++)
        if (strlen(srv.exports[i].name) == len && memcmp(srv.exports[i].name, name, len) == 0)
            return &srv.exports[i];
    return NULL;
}

void exports_add(const char *name, size_t namelen, const char *path)
{
    struct export *e;
    char *copy = strndup(name, namelen);

    if (!copy)
        srv_die("out of memory");
    if (namelen > NBD_MAX_STRING)
        srv_die("export name longer than %u bytes", NBD_MAX_STRING);
    if (!*path)
        srv_die("empty image path for export '%s'", copy);
    for (size_t i = 0; i < srv.nexports; i++)
        if (strcmp(srv.exports[i].name, copy) == 0)
            srv_die("export name '%s' given twice", copy);
    e = realloc(srv.exports, (srv.nexports + 1) * sizeof(*e));
    if (!e)
        srv_die("out of memory");
    srv.exports = e;
    e = &srv.exports[srv.nexports++];
    memset(e, 0, sizeof(*e));
    e->name = copy;
    e->path = strdup(path);
    if (!e->name || !e->path)
        srv_die("out of memory");
}

/*
 * The images' tables share --max-memory with the clients: their most (each
 * L1 table and the bound of each L2 cache) is fixed at open, so it is
 * reserved here and the clients get the rest.  Why reserve rather than
 * count what the caches hold now: a cache grows without asking the server,
 * so only its bound makes the sum a bound.  A geometry whose tables leave
 * less than one connection's cap for the clients is refused at start-up
 * (64 MiB clusters with table size 16 need 2 GiB), with what it needs.
 * Without --max-memory the default is 1 GiB for the clients plus the tables.
 */
static void reserve_table_memory(unsigned l2_cache)
{
    uint64_t cap;

    /* Without --max-memory the clients keep the default for themselves and
     * the tables come on top: serving many images needs no option. */
    if (!srv.max_memory)
        srv.max_memory = SRV_MAX_MEMORY_DEFAULT + srv.mem_tables;
    cap = srv.max_memory;
    if (srv.mem_tables > cap || cap - srv.mem_tables < SRV_CONN_MAX_MEMORY)
        srv_die("--max-memory=%lluM is too small for these images: their tables (L1 tables and "
            "L2 caches) need %lluM, and clients need at least %lluM more.  Raise --max-memory "
            "to at least %lluM%s", (unsigned long long)(cap >> 20),
            (unsigned long long)((srv.mem_tables + (1u << 20) - 1) >> 20),
            (unsigned long long)(SRV_CONN_MAX_MEMORY >> 20),
            (unsigned long long)((srv.mem_tables + SRV_CONN_MAX_MEMORY + (1u << 20) - 1) >> 20),
            l2_cache ? " or lower --l2-cache" : "");
}

void exports_open(const struct qed_open_opts *base)
{
    for (size_t i = 0; i < srv.nexports; i++) {
        struct export *e = &srv.exports[i];
        struct qed_open_opts oo = *base;
        struct qed_info info;
        char err[512] = "";
        int r;

        for (size_t j = 0; j < i; j++)
            if (strcmp(srv.exports[j].path, e->path) == 0)
                srv_die("image '%s' is given for two exports ('%s' and '%s')", e->path,
                    srv.exports[j].name, e->name);
        /* Why open here, on the main thread, with the owner's engine: the
         * owner threads do not run yet, and start-up errors stay fatal
         * before anything listens; the owner takes over at pthread_create. */
        e->owner = &srv.threads[i % srv.nthreads];
        r = qed_open(e->owner->aio, e->path, &oo, &e->img, err, sizeof(err));
        if (r == -EBUSY)
            srv_die("cannot serve '%s': it is in use (%s).  Stop the other user (QEMU, qemu-img, "
                "qemu-io or another qednbd) first%s", e->path, err[0] ? err : strerror(-r),
                base->read_only ? ", or add --force-share to serve it read-only without a lock "
                                "(reads may then see the data change)"
                              : "; if it only reads the image, --read-only can share it");
        if (r == -EUCLEAN)
            srv_die("cannot serve '%s' read-write: %s.  Serve it with --read-only, or with --repair "
                "to zero the entries at start-up", e->path, err);
        if (r < 0)
            srv_die("cannot open '%s': %s", e->path, err[0] ? err : strerror(-r));
        /* Several threads: the others read and overwrite allocated
         * clusters themselves (req-owner.c, tx_submit_fast). */
        if (srv.nthreads > 1 && (r = qed_fast_enable(e->img)) < 0)
            srv_die("cannot serve '%s' from %u threads: %s", e->path, srv.nthreads, strerror(-r));
        qed_get_info(e->img, &info);
        e->alloc_at_open = info.file_size;
        e->size = qed_size(e->img);
        e->read_only = qed_is_read_only(e->img);
        e->cluster_size = qed_cluster_size(e->img);
        e->pref_block = e->cluster_size;
        if (e->pref_block > SRV_MAX_PREFERRED)
            e->pref_block = SRV_MAX_PREFERRED;
        if (e->pref_block < 512)
            e->pref_block = 512;
        srv.mem_tables += qed_table_memory_max(e->img);
        export_bitmaps_init(e);
    }
    reserve_table_memory(base->l2_cache_tables);
}

void exports_close_owned(struct srv_thread *t, int *status)
{
    for (size_t i = 0; i < srv.nexports; i++) {
        struct export *e = &srv.exports[i];
        if (e->owner != t || !e->img)   /* owner first: the others' img is theirs */
            continue;
        /* Why here, after the loop: qed_close runs the loop itself to finish
         * what is in flight, then flushes and clears NEED_CHECK. */
        int r = qed_close(e->img);
        e->img = NULL;
        if (r < 0) {
            srv_log(SRV_LOG_ERROR, "closing '%s': %s", e->path, strerror(-r));
            *status = 1;
        }
    }
}

void exports_describe(char *buf, size_t n)
{
    size_t used = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < srv.nexports && used < n; i++) {
        const struct export *e = &srv.exports[i];
        used += (size_t)snprintf(buf + used, n - used, "%s\"%s\" = %s (%llu bytes, %s)",
                                 i ? ", " : "", e->name, e->path, (unsigned long long)e->size,
                                 e->read_only ? "read-only" : "read-write");
    }
}

void exports_free(void)
{
    for (size_t i = 0; i < srv.nexports; i++) {
        free(srv.exports[i].name);
        free(srv.exports[i].path);
        if (srv.exports[i].bm_names)
            export_bitmaps_free(&srv.exports[i]);
    }
    free(srv.exports);
    srv.exports = NULL;
    srv.nexports = 0;
}
