/*
 * stats.c - the counters printed on SIGUSR1.
 *
 * Format (one log line each, at notice level, so always printed; the
 * fields are documented in qednbd(8)):
 *
 *   stats: server uptime=SECONDS connections=N active=N refused=N tls_handshakes=N tls_failures=N
 *          mem_held=BYTES mem_peak=BYTES mem_waits=N mem_waiting=N requests_held=N
 *          io_in_flight=N mem_tables=BYTES
 *   stats: export name="NAME" connections=N requests=N reads=N writes=N flushes=N trims=N
 *          zeroes=N cache=N block_status=N bytes_read=N bytes_written=N bytes_zeroed=N
 *          bytes_trimmed=N errors=N cluster_size=N clusters_appended=N file_clusters=N
 *          flush_failed=0|1 l2_cache=BYTES l2_cache_peak=BYTES
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
 * flush_failed is 1 once a flush of the image failed (qed_flush_error):
 * from then on every FLUSH and FUA write of the export fails with EIO.
 *
 * The same counters, by the same names, are what the control socket's
 * "stats" command answers in JSON (control-ops.c): both are made from
 * stats_server_fields and stats_export_fields.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <ev.h>

#include "qednbd.h"

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

/* The server's counters (the names are those of the log line). */
size_t stats_server_fields(struct stats_field *f)
{
    unsigned io = 0;
    size_t n = 0;

    for (size_t i = 0; i < srv.nexports; i++)
        if (srv.exports[i].img)
            io += qed_inflight(srv.exports[i].img);
#define F(k, v) f[n++] = (struct stats_field){ k, (uint64_t)(v) }
    /* Rounded as "%.0f" rounded it when the line was printed from a double. */
    F("uptime", ev_time() - srv.start_time + 0.5);
    F("connections", srv.next_conn_id);
    F("active", srv.nconns);
    F("refused", srv.conns_refused);
    F("tls_handshakes", srv.tls_ok);
    F("tls_failures", srv.tls_failed);
    F("mem_held", srv.mem_held);
    F("mem_peak", srv.mem_peak);
    F("mem_waits", srv.mem_waits);
    F("mem_waiting", srv.mem_waiters);
    F("requests_held", srv.nreqs);
    F("io_in_flight", io);
    F("mem_tables", srv.mem_tables);
    return n;
}

/* The counters of export @e (its name apart). */
size_t stats_export_fields(const struct export *e, struct stats_field *f)
{
    const struct export_stats *s = &e->st;
    struct qed_info info;
    uint64_t appended = 0, file_clusters = 0;
    int flush_failed = 0;
    size_t n = 0;

    memset(&info, 0, sizeof(info));
    if (e->img) {
        qed_get_info(e->img, &info);
        if (info.file_size > e->alloc_at_open)
            appended = (info.file_size - e->alloc_at_open) / info.cluster_size;
        file_clusters = info.file_size / info.cluster_size;
        flush_failed = info.flush_error != 0;
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
    F("cluster_size", info.cluster_size);
    F("clusters_appended", appended);
    F("file_clusters", file_clusters);
    F("flush_failed", flush_failed);
    F("l2_cache", info.l2_cache_bytes);
    F("l2_cache_peak", info.l2_cache_peak_bytes);
#undef F
    return n;
}

/* " key=value" for each of the @n fields at @f, into @out. */
static void format_fields(const struct stats_field *f, size_t n, char *out, size_t len)
{
    size_t used = 0;

    out[0] = '\0';
    for (size_t i = 0; i < n && used < len; i++)
        used += (size_t)snprintf(out + used, len - used, " %s=%llu", f[i].key,
                                 (unsigned long long)f[i].value);
}

void stats_print(void)
{
    struct stats_field f[STATS_MAX_FIELDS];
    char line[STATS_MAX_FIELDS * 48];

    format_fields(f, stats_server_fields(f), line, sizeof(line));
    srv_log(SRV_LOG_NOTICE, "stats: server%s", line);
    for (size_t i = 0; i < srv.nexports; i++) {
        const struct export *e = &srv.exports[i];
        char name[4 * 4096 + 1];

        escape_name(e->name, name, sizeof(name));
        format_fields(f, stats_export_fields(e, f), line, sizeof(line));
        srv_log(SRV_LOG_NOTICE, "stats: export name=\"%s\"%s", name, line);
    }
}
