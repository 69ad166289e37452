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

void stats_print(void)
{
    uint64_t total_conns = srv.next_conn_id;
    unsigned io = 0;

    for (size_t i = 0; i < srv.nexports; i++)
        if (srv.exports[i].img)
            io += qed_inflight(srv.exports[i].img);

    srv_log(SRV_LOG_NOTICE,
            "stats: server uptime=%.0f connections=%llu active=%u refused=%llu "
            "tls_handshakes=%llu tls_failures=%llu mem_held=%llu mem_peak=%llu mem_waits=%llu "
            "mem_waiting=%u requests_held=%u io_in_flight=%u mem_tables=%llu",
            ev_time() - srv.start_time, (unsigned long long)total_conns, srv.nconns,
            (unsigned long long)srv.conns_refused, (unsigned long long)srv.tls_ok,
            (unsigned long long)srv.tls_failed, (unsigned long long)srv.mem_held,
            (unsigned long long)srv.mem_peak, (unsigned long long)srv.mem_waits,
            srv.mem_waiters, srv.nreqs, io, (unsigned long long)srv.mem_tables);
    for (size_t i = 0; i < srv.nexports; i++) {
        const struct export *e = &srv.exports[i];
        const struct export_stats *s = &e->st;
        struct qed_info info;
        char name[4 * 4096 + 1];
        uint64_t appended = 0, file_clusters = 0;
        int flush_failed = 0;

        memset(&info, 0, sizeof(info));
        if (e->img) {
            qed_get_info(e->img, &info);
            if (info.file_size > e->alloc_at_open)
                appended = (info.file_size - e->alloc_at_open) / info.cluster_size;
            file_clusters = info.file_size / info.cluster_size;
            flush_failed = info.flush_error != 0;
        }
        escape_name(e->name, name, sizeof(name));
        srv_log(SRV_LOG_NOTICE,
                "stats: export name=\"%s\" connections=%llu requests=%llu reads=%llu "
                "writes=%llu flushes=%llu trims=%llu zeroes=%llu cache=%llu "
                "block_status=%llu bytes_read=%llu bytes_written=%llu bytes_zeroed=%llu "
                "bytes_trimmed=%llu errors=%llu cluster_size=%u clusters_appended=%llu "
                "file_clusters=%llu flush_failed=%d l2_cache=%llu l2_cache_peak=%llu",
                name, (unsigned long long)s->connections, (unsigned long long)s->requests,
                (unsigned long long)s->reads, (unsigned long long)s->writes,
                (unsigned long long)s->flushes, (unsigned long long)s->trims,
                (unsigned long long)s->zeroes, (unsigned long long)s->caches,
                (unsigned long long)s->block_status, (unsigned long long)s->bytes_read,
                (unsigned long long)s->bytes_written, (unsigned long long)s->bytes_zeroed,
                (unsigned long long)s->bytes_trimmed, (unsigned long long)s->errors,
                info.cluster_size, (unsigned long long)appended,
                (unsigned long long)file_clusters, flush_failed,
                (unsigned long long)info.l2_cache_bytes,
                (unsigned long long)info.l2_cache_peak_bytes);
    }
}
