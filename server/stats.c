/*
 * stats.c - the counters printed on SIGUSR1 (and answered by the control
 * socket's "stats").
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
 *   stats: thread index=N connections=N active=N engine_calls=N fast_calls=N   (--threads > 1)
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
 * srv_thread); a gather (stats_gather) posts a message to every thread,
 * which copies its counters there, and one to every image's owner
 * (exports_call_on_owner), which reads libqed's figures there; when all
 * have answered, thread 0 sums them and calls back: SIGUSR1 prints.  owner_thread is the export's owner; engine_calls counts the
 * requests a thread handed to libqed, so only owners have any.
 *
 * flush_failed is 1 once a flush of the image failed (qed_flush_error):
 * from then on every FLUSH and FUA write of the export fails with EIO.
 *
 * The same counters, by the same names, are what the control socket's
 * "stats" command answers in JSON (control-ops.c; the thread lines as a
 * "threads" array, always there): both are made from one stats_gather,
 * through stats_server_fields, stats_export_fields and stats_thread_fields.
 */
#include "config.h"

#include <errno.h>
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

#define TC 5   /* counters per thread in struct stats_gather */

/* @sum += @add, field by field. */
static void stats_add(struct export_stats *sum, const struct export_stats *add)
{
    const uint64_t *a = (const uint64_t *)add;
    uint64_t *s = (uint64_t *)sum;

    _Static_assert(sizeof(struct export_stats) == 128, "export_stats: 128-byte blocks");
    for (size_t k = 0; k <= offsetof(struct export_stats, errors) / sizeof(uint64_t); k++)
        s[k] += a[k];
}

/* What one gather collects before its callback runs: per-thread counters
 * summed on thread 0, per-image figures read on each image's owner. */
struct stats_gather {
    unsigned pending;              /* messages still out (thread 0 only) */
    uint64_t tls_ok, tls_failed, engine_calls;
    struct export_stats *st;       /* per export: the sum over threads */
    struct qed_info *info;         /* per export, from its owner */
    unsigned *inflight;            /* per export, from its owner (each owner writes
                                      only its exports' slots) */
    /* Per thread, copied on that thread: its counter blocks of every export. */
    struct export_stats *snap;     /* nthreads * nexports */
    uint64_t *thread_tls;          /* nthreads * TC: tls_ok, tls_failed, engine_calls,
                                      connections, fast_calls */
    void (*done)(const struct stats_gather *g, void *arg);
    void *arg;
};

#define F(k, v) f[n++] = (struct stats_field){ k, (uint64_t)(v) }

size_t stats_server_fields(const struct stats_gather *g, struct stats_field *f)
{
    unsigned io = 0;
    size_t n = 0;

    for (size_t i = 0; i < srv.nexports; i++)
        io += g->inflight[i];
    /* Rounded as "%.0f" rounded it when the line was printed from a double. */
    F("uptime", ev_time() - srv.start_time + 0.5);
    F("connections", SRV_LOAD(srv.next_conn_id));
    F("active", SRV_LOAD(srv.nconns));
    F("refused", srv.conns_refused);
    F("tls_handshakes", g->tls_ok);
    F("tls_failures", g->tls_failed);
    F("mem_held", SRV_LOAD(srv.mem_held));
    F("mem_peak", SRV_LOAD(srv.mem_peak));
    F("mem_waits", SRV_LOAD(srv.mem_waits));
    F("mem_waiting", SRV_LOAD(srv.mem_waiters));
    F("requests_held", SRV_LOAD(srv.nreqs));
    F("io_in_flight", io);
    F("mem_tables", srv.mem_tables);
    F("threads", srv.nthreads);
    return n;
}

size_t stats_export_fields(const struct stats_gather *g, size_t i, struct stats_field *f)
{
    const struct export *e = &srv.exports[i];
    const struct export_stats *s = &g->st[i];
    const struct qed_info *info = &g->info[i];
    uint64_t appended = 0, file_clusters = 0;
    int flush_failed = 0;
    size_t n = 0;

    if (info->cluster_size) {
        if (info->file_size > e->alloc_at_open)
            appended = (info->file_size - e->alloc_at_open) / info->cluster_size;
        file_clusters = info->file_size / info->cluster_size;
        flush_failed = info->flush_error != 0;
    }
    F("connections", s->connections);
    F("requests", s->requests);
    F("reads", s->reads);
    F("writes", s->writes);
    F("flushes", s->flushes);
    F("trims", s->trims);
    F("zeroes", s->zeroes);
    F("cache", s->caches);
    F("block_status", s->block_status);
    F("bytes_read", s->bytes_read);
    F("bytes_written", s->bytes_written);
    F("bytes_zeroed", s->bytes_zeroed);
    F("bytes_trimmed", s->bytes_trimmed);
    F("errors", s->errors);
    F("cluster_size", info->cluster_size);
    F("clusters_appended", appended);
    F("file_clusters", file_clusters);
    F("flush_failed", flush_failed);
    F("l2_cache", info->l2_cache_bytes);
    F("l2_cache_peak", info->l2_cache_peak_bytes);
    F("owner_thread", e->owner ? e->owner->idx : 0);
    return n;
}

size_t stats_thread_fields(const struct stats_gather *g, unsigned t, struct stats_field *f)
{
    size_t n = 0;

    F("index", t);
    F("connections", g->thread_tls[TC * t + 3]);
    F("active", SRV_LOAD(srv.threads[t].nconns));
    F("engine_calls", g->thread_tls[TC * t + 2]);
    F("fast_calls", g->thread_tls[TC * t + 4]);
    return n;
}
#undef F

/* " key=value" for each of the @n fields at @f, into @out. */
static void format_fields(const struct stats_field *f, size_t n, char *out, size_t len)
{
    size_t used = 0;

    out[0] = '\0';
    for (size_t i = 0; i < n && used < len; i++)
        used += (size_t)snprintf(out + used, len - used, " %s=%llu", f[i].key,
                                 (unsigned long long)f[i].value);
}

/* SIGUSR1's lines: the server, each export, and with several threads each thread. */
static void print_gathered(const struct stats_gather *g, void *arg)
{
    struct stats_field f[STATS_MAX_FIELDS];
    char line[STATS_MAX_FIELDS * 48];

    (void)arg;
    format_fields(f, stats_server_fields(g, f), line, sizeof(line));
    srv_log(SRV_LOG_NOTICE, "stats: server%s", line);
    for (size_t i = 0; i < srv.nexports; i++) {
        char name[4 * 4096 + 1];

        escape_name(srv.exports[i].name, name, sizeof(name));
        format_fields(f, stats_export_fields(g, i, f), line, sizeof(line));
        srv_log(SRV_LOG_NOTICE, "stats: export name=\"%s\"%s", name, line);
    }
    /* Per thread: where the connections went and which thread called
     * libqed (only owners do). */
    if (srv.nthreads > 1)
        for (unsigned t = 0; t < srv.nthreads; t++) {
            format_fields(f, stats_thread_fields(g, t, f), line, sizeof(line));
            srv_log(SRV_LOG_NOTICE, "stats: thread%s", line);
        }
}

static void gather_free(struct stats_gather *g)
{
    free(g->st);
    free(g->info);
    free(g->inflight);
    free(g->snap);
    free(g->thread_tls);
    free(g);
}

/* Thread 0: one answer is in; once all are, sum them and call back. */
static void gather_one_done(struct stats_gather *g)
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
    g->done(g, g->arg);
    gather_free(g);
}

static void snap_back(void *arg)
{
    gather_one_done(arg);
}

/* On each thread: copy the counters it writes. */
static void snap_thread_here(struct stats_gather *g)
{
    unsigned t = srv_self->idx;

    for (size_t i = 0; i < srv.nexports; i++)
        g->snap[t * srv.nexports + i] = *EXPORT_STATS(&srv.exports[i]);
    g->thread_tls[TC * t] = srv_self->tls_ok;
    g->thread_tls[TC * t + 1] = srv_self->tls_failed;
    g->thread_tls[TC * t + 2] = srv_self->engine_calls;
    g->thread_tls[TC * t + 3] = srv_self->conns_total;
    g->thread_tls[TC * t + 4] = srv_self->fast_calls;
}

static void snap_thread(void *arg)
{
    snap_thread_here(arg);
    thread_post_new(&srv.threads[0], snap_back, arg);
}

/* On an export's owner: what libqed says about the image. */
static void snap_image(struct export *e, void *arg)
{
    struct stats_gather *g = arg;
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

int stats_gather(void (*done)(const struct stats_gather *g, void *arg), void *arg)
{
    struct stats_gather *g = calloc(1, sizeof(*g));
    size_t ne = srv.nexports ? srv.nexports : 1;

    if (g) {
        g->st = calloc(ne, sizeof(*g->st));
        g->info = calloc(ne, sizeof(*g->info));
        g->inflight = calloc(ne, sizeof(*g->inflight));
        g->snap = calloc(ne * srv.nthreads, sizeof(*g->snap));
        g->thread_tls = calloc(TC * srv.nthreads, sizeof(*g->thread_tls));
    }
    if (!g || !g->st || !g->info || !g->inflight || !g->snap || !g->thread_tls) {
        if (g)
            gather_free(g);
        return -ENOMEM;
    }
    g->done = done;
    g->arg = arg;
    if (srv.nthreads == 1) {
        /* One thread: everything is ours, read it now. */
        g->pending = 1;
        snap_thread_here(g);
        for (size_t i = 0; i < srv.nexports; i++)
            snap_image(&srv.exports[i], g);
        gather_one_done(g);
        return 0;
    }
    /* One extra count held while posting, so no answer can finish it early. */
    g->pending = srv.nthreads + (unsigned)srv.nexports + 1;
    for (unsigned t = 0; t < srv.nthreads; t++)
        thread_post_new(&srv.threads[t], snap_thread, g);
    for (size_t i = 0; i < srv.nexports; i++)
        if (exports_call_on_owner(&srv.exports[i], snap_image, snap_image_done, g) < 0)
            gather_one_done(g);
    gather_one_done(g);
    return 0;
}

void stats_print(void)
{
    if (stats_gather(print_gathered, NULL) < 0)
        srv_log(SRV_LOG_ERROR, "stats: out of memory");
}
