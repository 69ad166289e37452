/*
 * stats.c - the counters printed on SIGUSR1.
 *
 * Format (one log line each, at notice level, so always printed; the
 * fields are documented in qednbd(8)):
 *
 *   stats: server uptime=SECONDS connections=N active=N refused=N tls_handshakes=N tls_failures=N
 *          mem_held=BYTES mem_peak=BYTES mem_waits=N mem_waiting=N requests_held=N
 *          io_in_flight=N mem_tables=BYTES threads=N
 *   stats: export name="NAME" connections=N requests=N reads=N writes=N flushes=N trims=N
 *          zeroes=N cache=N block_status=N bytes_read=N bytes_written=N bytes_zeroed=N
 *          bytes_trimmed=N errors=N cluster_size=N clusters_appended=N file_clusters=N
 *          flush_failed=0|1 l2_cache=BYTES l2_cache_peak=BYTES owner_thread=N
 *   stats: thread index=N connections=N active=N engine_calls=N   (with --threads > 1)
 *
 * (each line is one line; they are folded here only for reading).  NAME
 * escapes '"', '\\' and bytes outside printable ASCII as \xHH.
 *
 * clusters_appended is what the server can tell honestly about allocation:
 * libqed counts no allocations, but QED only ever allocates by moving the
 * allocation point at the end of the file (for data clusters and for L2
 * tables alike), and qed_get_info() reports that point.  So this is the
 * number of clusters the point moved since the image was opened: data
 * clusters plus L2 tables (table_size clusters each), including any space
 * an allocating write reserved and then failed to fill.
 *
 * Threads: each thread writes only its own counters (EXPORT_STATS, struct
 * srv_thread); SIGUSR1 posts a message to every thread, which copies its
 * counters there, and one to every image's owner (exports_call_on_owner),
 * which reads libqed's figures there; thread 0 prints when all have
 * answered.  owner_thread is the export's owner; engine_calls counts the
 * requests a thread handed to libqed, so only owners have any.
 *
 * flush_failed is 1 once a flush of the image failed (qed_flush_error):
 * from then on every FLUSH and FUA write of the export fails with EIO.
 */
#include "config.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ev.h>

#include "qednbd.h"
#include "threads.h"

static void escape_name(const char *s, char *out, size_t n)
{
    size_t used = 0;

    for (; *s && used + 5 < n; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            used += (size_t)snprintf(out + used, n - used, "\\%c", ch);
        else if (ch < 0x20 || ch > 0x7e)
            used += (size_t)snprintf(out + used, n - used, "\\x%02x", ch);
        else
            out[used++] = (char)ch;
    }
    out[used] = '\0';
}

#define TC 4   /* counters per thread in struct gather */

/* @sum += @add, field by field. */
static void stats_add(struct export_stats *sum, const struct export_stats *add)
{
    const uint64_t *a = (const uint64_t *)add;
    uint64_t *s = (uint64_t *)sum;

    _Static_assert(sizeof(struct export_stats) == 128, "export_stats: 128-byte blocks");
    for (size_t k = 0; k <= offsetof(struct export_stats, errors) / sizeof(uint64_t); k++)
        s[k] += a[k];
}

/* The line of export @e: counters @s, the image's @info and @inflight. */
static void print_export(const struct export *e, const struct export_stats *s,
                         const struct qed_info *info, unsigned inflight)
{
    char name[4 * 4096 + 1];
    uint64_t appended = 0, file_clusters = 0;
    int flush_failed = 0;

    (void)inflight;
    if (info->cluster_size) {
        if (info->file_size > e->alloc_at_open)
            appended = (info->file_size - e->alloc_at_open) / info->cluster_size;
        file_clusters = info->file_size / info->cluster_size;
        flush_failed = info->flush_error != 0;
    }
    escape_name(e->name, name, sizeof(name));
    srv_log(SRV_LOG_NOTICE,
            "stats: export name=\"%s\" connections=%llu requests=%llu reads=%llu "
            "writes=%llu flushes=%llu trims=%llu zeroes=%llu cache=%llu "
            "block_status=%llu bytes_read=%llu bytes_written=%llu bytes_zeroed=%llu "
            "bytes_trimmed=%llu errors=%llu cluster_size=%u clusters_appended=%llu "
            "file_clusters=%llu flush_failed=%d l2_cache=%llu l2_cache_peak=%llu "
            "owner_thread=%u",
            name, (unsigned long long)s->connections, (unsigned long long)s->requests,
            (unsigned long long)s->reads, (unsigned long long)s->writes,
            (unsigned long long)s->flushes, (unsigned long long)s->trims,
            (unsigned long long)s->zeroes, (unsigned long long)s->caches,
            (unsigned long long)s->block_status, (unsigned long long)s->bytes_read,
            (unsigned long long)s->bytes_written, (unsigned long long)s->bytes_zeroed,
            (unsigned long long)s->bytes_trimmed, (unsigned long long)s->errors,
            info->cluster_size, (unsigned long long)appended,
            (unsigned long long)file_clusters, flush_failed,
            (unsigned long long)info->l2_cache_bytes,
            (unsigned long long)info->l2_cache_peak_bytes, e->owner ? e->owner->idx : 0);
}

struct gather;
static void print_thread(const struct gather *g, unsigned t);
static void snap_back(void *arg);

/* What one SIGUSR1 gathers before it prints: per-thread counters summed
 * on thread 0, per-image figures read on each image's owner. */
struct gather {
    unsigned pending;              /* messages still out (thread 0 only) */
    unsigned io;                   /* qed_inflight, summed (owners add under no lock:
                                      each writes only its exports' slots below) */
    uint64_t tls_ok, tls_failed, engine_calls;
    struct export_stats *st;       /* per export: the sum over threads */
    struct qed_info *info;         /* per export, from its owner */
    unsigned *inflight;            /* per export, from its owner */
    /* Per thread, copied on that thread: its counter blocks of every export. */
    struct export_stats *snap;     /* nthreads * nexports */
    uint64_t *thread_tls;          /* nthreads * TC: tls_ok, tls_failed, engine_calls,
                                      connections */
};

static void gather_print(struct gather *g)
{
    unsigned io = 0;

    for (size_t i = 0; i < srv.nexports; i++)
        io += g->inflight[i];
    srv_log(SRV_LOG_NOTICE,
            "stats: server uptime=%.0f connections=%llu active=%u refused=%llu "
            "tls_handshakes=%llu tls_failures=%llu mem_held=%llu mem_peak=%llu mem_waits=%llu "
            "mem_waiting=%u requests_held=%u io_in_flight=%u mem_tables=%llu threads=%u",
            ev_time() - srv.start_time, (unsigned long long)SRV_LOAD(srv.next_conn_id),
            SRV_LOAD(srv.nconns), (unsigned long long)srv.conns_refused,
            (unsigned long long)g->tls_ok, (unsigned long long)g->tls_failed,
            (unsigned long long)SRV_LOAD(srv.mem_held), (unsigned long long)SRV_LOAD(srv.mem_peak),
            (unsigned long long)SRV_LOAD(srv.mem_waits), SRV_LOAD(srv.mem_waiters),
            SRV_LOAD(srv.nreqs), io, (unsigned long long)srv.mem_tables, srv.nthreads);
    for (size_t i = 0; i < srv.nexports; i++)
        print_export(&srv.exports[i], &g->st[i], &g->info[i], g->inflight[i]);
    if (srv.nthreads > 1)
        for (unsigned t = 0; t < srv.nthreads; t++)
            print_thread(g, t);
}

/* With several threads, a line per thread: where the connections went and
 * which thread called libqed (only owners do). */
static void print_thread(const struct gather *g, unsigned t)
{
    srv_log(SRV_LOG_NOTICE, "stats: thread index=%u connections=%llu active=%u engine_calls=%llu",
            t, (unsigned long long)g->thread_tls[TC * t + 3], SRV_LOAD(srv.threads[t].nconns),
            (unsigned long long)g->thread_tls[TC * t + 2]);
}

static void gather_free(struct gather *g)
{
    free(g->st);
    free(g->info);
    free(g->inflight);
    free(g->snap);
    free(g->thread_tls);
    free(g);
}

/* Thread 0: one answer is in; print once all are. */
static void gather_one_done(struct gather *g)
{
    if (--g->pending)
        return;
    for (unsigned t = 0; t < srv.nthreads; t++) {
        g->tls_ok += g->thread_tls[TC * t];
        g->tls_failed += g->thread_tls[TC * t + 1];
        g->engine_calls += g->thread_tls[TC * t + 2];
        for (size_t i = 0; i < srv.nexports; i++)
            stats_add(&g->st[i], &g->snap[t * srv.nexports + i]);
    }
    gather_print(g);
    gather_free(g);
}

static void snap_back(void *arg)
{
    gather_one_done(arg);
}

/* On each thread: copy the counters it writes. */
static void snap_thread_here(struct gather *g)
{
    unsigned t = srv_self->idx;

    for (size_t i = 0; i < srv.nexports; i++)
        g->snap[t * srv.nexports + i] = *EXPORT_STATS(&srv.exports[i]);
    g->thread_tls[TC * t] = srv_self->tls_ok;
    g->thread_tls[TC * t + 1] = srv_self->tls_failed;
    g->thread_tls[TC * t + 2] = srv_self->engine_calls;
    g->thread_tls[TC * t + 3] = srv_self->conns_total;
}

static void snap_thread(void *arg)
{
    snap_thread_here(arg);
    thread_post_new(&srv.threads[0], snap_back, arg);
}

/* On an export's owner: what libqed says about the image. */
static void snap_image(struct export *e, void *arg)
{
    struct gather *g = arg;
    size_t i = (size_t)(e - srv.exports);

    if (e->img) {
        qed_get_info(e->img, &g->info[i]);
        g->inflight[i] = qed_inflight(e->img);
    }
}

static void snap_image_done(struct export *e, void *arg)
{
    (void)e;
    gather_one_done(arg);
}

void stats_print(void)
{
    struct gather *g = calloc(1, sizeof(*g));
    size_t ne = srv.nexports ? srv.nexports : 1;

    if (g) {
        g->st = calloc(ne, sizeof(*g->st));
        g->info = calloc(ne, sizeof(*g->info));
        g->inflight = calloc(ne, sizeof(*g->inflight));
        g->snap = calloc(ne * srv.nthreads, sizeof(*g->snap));
        g->thread_tls = calloc(TC * srv.nthreads, sizeof(*g->thread_tls));
    }
    if (!g || !g->st || !g->info || !g->inflight || !g->snap || !g->thread_tls) {
        srv_log(SRV_LOG_ERROR, "stats: out of memory");
        if (g)
            gather_free(g);
        return;
    }
    if (srv.nthreads == 1) {
        /* One thread: everything is ours, read it now. */
        g->pending = 1;
        snap_thread_here(g);
        for (size_t i = 0; i < srv.nexports; i++)
            snap_image(&srv.exports[i], g);
        gather_one_done(g);
        return;
    }
    g->pending = srv.nthreads + (unsigned)srv.nexports;
    for (unsigned t = 0; t < srv.nthreads; t++)
        thread_post_new(&srv.threads[t], snap_thread, g);
    for (size_t i = 0; i < srv.nexports; i++)
        if (exports_call_on_owner(&srv.exports[i], snap_image, snap_image_done, g) < 0)
            gather_one_done(g);
}
