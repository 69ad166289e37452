/*
 * fuzz-nbd.c - libFuzzer target for the qednbd protocol code (issue 4,
 * "Protocol fuzzing").
 *
 * In-process: the binary links the real server (every source of server/ and
 * its net/ and protocol/ folders; main.c, compiled with -Dmain=qednbd_main,
 * provides srv) and the real library (every lib/ source).  Each input is
 * the byte stream of one client: it goes into one end of a
 * socketpair, the other end is handed to conn_new() exactly as main() hands
 * it an accepted socket, and the server's libev loop runs until the
 * connection has ended and every request it started has completed.  What the
 * server writes back is read and discarded.  Nothing is forked.
 *
 * Exports (set up once in LLVMFuzzerInitialize, in a fresh temporary
 * directory under $TMPDIR):
 *   "fuzz" (also the default export, reached by the empty name): read-write,
 *          4 MiB, 4 KiB clusters, 1-cluster tables (so two L2 tables), over a
 *          QED backing file, with allocated, zero and unallocated clusters;
 *   "ro":  the same contents, read-only;
 *   "big": 64 MiB, read-write, no backing file: larger than the 32 MiB
 *          payload limit, so that requests over the limit reach the checks
 *          that refuse them instead of failing the range check first.
 * After each input (and once at start-up) every image is restored from an
 * in-memory template and reopened, so every input starts from the same
 * state and a crash input replays exactly.  The library runs on its test I/O backend in auto mode:
 * real file I/O, done on the loop thread in submission order, so runs are
 * deterministic and need no threads.
 *
 * Oracles, besides ASan/UBSan/LeakSanitizer:
 *   - the connection must end by itself once the input is exhausted (the
 *     client's write side is shut down after the last byte) -- otherwise
 *     abort() after FUZZ_MAX_TURNS loop turns;
 *   - once it has ended: no connection left in srv_self->conns, srv.nconns and
 *     srv.nrefused back to 0, no request in flight in the connection or in
 *     the library, and its memory accounting back to 0: the connection's
 *     (mem_held) and the server's (srv.mem_held, srv.nreqs, nobody waiting
 *     for memory; server/mem.c).
 *
 * Environment: QEDNBD_FUZZ_VERBOSE=N sets the server's verbosity (-v...) and
 * shows library log messages; QEDNBD_FUZZ_STATS=FILE appends, at exit, one
 * line "inputs=N transmission=N replied=N" (used by fuzz-run.sh to check
 * that the seed corpus really drives the server into both phases).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <ev.h>

#include "qed.h"
#include "qed-io-test.h"
#include "conn.h"
#include "nbd-proto.h"
#include "protocol.h"
#include "threads.h"

#define FUZZ_IMAGE_SIZE (4u * 1024 * 1024)
#define FUZZ_BIG_SIZE (64u * 1024 * 1024)
#define NEXPORTS 3
#define FUZZ_CLUSTER 4096u
#define FUZZ_MAX_TURNS 2000000u     /* loop turns per input before calling it a hang */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[PATH_MAX - 32];
static char base_path[PATH_MAX], work_path[PATH_MAX], ro_path[PATH_MAX], big_path[PATH_MAX];
static struct export exports[NEXPORTS];
static uint8_t *template_buf[NEXPORTS];   /* each export's file right after set-up */
static size_t template_len[NEXPORTS];
static int verbose;
static unsigned long long n_inputs, n_transmission, n_replied;

static void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fatal(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "fuzz-nbd: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    abort();
}

static void quiet_log(enum qed_log_level level, const char *msg, void *opaque)
{
    (void)opaque;
    if (verbose)
        fprintf(stderr, "fuzz-nbd: libqed(%d): %s\n", (int)level, msg);
}

/* ---- Images ---------------------------------------------------------------- */

static void fill(uint8_t *buf, size_t n, uint8_t seed)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)(seed + i * 7);
}

/* Create a QED image of @size bytes at @path over @backing (or none) and
 * give it some contents: @top selects the top image's layout, else the
 * backing one. */
static void make_image(const char *path, uint64_t size, const char *backing, bool top)
{
    struct qed_create_opts co = {
        .size = size,
        .cluster_size = FUZZ_CLUSTER,
        .table_size = 1,
        .backing_file = backing,
        .backing_fmt = backing ? QED_BACKING_QED : QED_BACKING_PROBE,
    };
    struct qed_open_opts oo = { 0 };
    qed_image *img;
    char err[512] = "";
    uint8_t buf[3 * FUZZ_CLUSTER];
    int r;

    r = qed_create(path, &co, err, sizeof(err));
    if (r < 0)
        fatal("qed_create %s: %s", path, err[0] ? err : strerror(-r));
    r = qed_open(srv_self->aio, path, &oo, &img, err, sizeof(err));
    if (r < 0)
        fatal("qed_open %s: %s", path, err[0] ? err : strerror(-r));
    if (!top) {
        /* Backing: data in both L2 tables, some of it later shadowed. */
        fill(buf, sizeof(buf), 0xa0);
        if (qed_sync_write(img, 0, buf, 2 * FUZZ_CLUSTER, 0) < 0 ||
            qed_sync_write(img, 2u * 1024 * 1024 + FUZZ_CLUSTER, buf, sizeof(buf), 0) < 0 ||
            qed_sync_write(img, size - FUZZ_CLUSTER, buf, FUZZ_CLUSTER, 0) < 0)
            fatal("writing the backing image failed");
    } else {
        /* Top: its own data, a partial cluster (COW from the backing file),
         * zero clusters over backing data, and a discarded cluster. */
        fill(buf, sizeof(buf), 0x50);
        if (qed_sync_write(img, FUZZ_CLUSTER, buf, 2 * FUZZ_CLUSTER, 0) < 0 ||
            qed_sync_write(img, 2u * 1024 * 1024 + 512, buf, 1024, 0) < 0 ||
            qed_sync_write(img, 1024 * 1024, buf, sizeof(buf), 0) < 0 ||
            qed_sync_write_zeroes(img, 2u * 1024 * 1024 + 2 * FUZZ_CLUSTER, 2 * FUZZ_CLUSTER,
                                  0) < 0 ||
            qed_sync_discard(img, 1024 * 1024 + FUZZ_CLUSTER, FUZZ_CLUSTER) < 0)
            fatal("writing the top image failed");
    }
    r = qed_close(img);
    if (r < 0)
        fatal("qed_close %s: %s", path, strerror(-r));
}

static void read_file(const char *path, uint8_t **out, size_t *len)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0 || fstat(fd, &st) < 0)
        fatal("%s: %s", path, strerror(errno));
    *len = (size_t)st.st_size;
    *out = malloc(*len ? *len : 1);
    if (!*out || pread(fd, *out, *len, 0) != (ssize_t)*len)
        fatal("reading %s failed", path);
    close(fd);
}

static void write_file(const char *path, const uint8_t *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

    if (fd < 0 || write(fd, buf, len) != (ssize_t)len || close(fd) < 0)
        fatal("writing %s: %s", path, strerror(errno));
}

static void open_export(struct export *e)
{
    struct qed_open_opts oo = { .read_only = e->read_only };
    char err[512] = "";
    int r = qed_open(srv_self->aio, e->path, &oo, &e->img, err, sizeof(err));

    if (r < 0)
        fatal("qed_open %s: %s", e->path, err[0] ? err : strerror(-r));
    /* As main.c's open_images() does. */
    e->size = qed_size(e->img);
    e->owner = srv_self;
    e->cluster_size = qed_cluster_size(e->img);
    e->pref_block = e->cluster_size;
    if (e->pref_block > SRV_MAX_PREFERRED)
        e->pref_block = SRV_MAX_PREFERRED;
    if (e->pref_block < 512)
        e->pref_block = 512;
    /* A dirty bitmap on the writable exports, so that qemu:dirty-bitmap:fz
     * is offered and BLOCK_STATUS reads it (it may exist already once the
     * library stores bitmaps: then EEXIST is fine). */
    if (!e->read_only)
        (void)qed_bitmap_add(e->img, "fz", 4096, false);
    /* As exports_open does: what the handshake offers (export-bitmaps.c). */
    export_bitmaps_init(e);
}

static void close_export(struct export *e)
{
    int r = qed_close(e->img);

    e->img = NULL;
    export_bitmaps_free(e);
    if (r < 0)
        fatal("qed_close %s: %s", e->path, strerror(-r));
}

/* Put both exports back in their initial state. */
static void reset_exports(void)
{
    for (size_t i = 0; i < NEXPORTS; i++)
        if (exports[i].img)
            close_export(&exports[i]);
    /* Why rewrite the read-only copy too: a bug could write to it, and the
     * next input must not see that. */
    for (size_t i = 0; i < NEXPORTS; i++)
        write_file(exports[i].path, template_buf[i], template_len[i]);
    for (size_t i = 0; i < NEXPORTS; i++)
        open_export(&exports[i]);
}

static void remove_dir(void)
{
    for (size_t i = 0; i < NEXPORTS; i++)
        if (exports[i].img)
            close_export(&exports[i]);
    unlink(work_path);
    unlink(ro_path);
    unlink(big_path);
    unlink(base_path);
    rmdir(dir);
}

static void write_stats(void)
{
    const char *f = getenv("QEDNBD_FUZZ_STATS");
    FILE *fp;

    if (!f || !*f)
        return;
    fp = fopen(f, "a");
    if (!fp)
        return;
    fprintf(fp, "inputs=%llu transmission=%llu replied=%llu\n", n_inputs, n_transmission,
            n_replied);
    fclose(fp);
}

static void at_exit(void)
{
    write_stats();
    remove_dir();
    for (size_t i = 0; i < NEXPORTS; i++) {
        free(template_buf[i]);
        template_buf[i] = NULL;
    }
}

static void run_one(const uint8_t *data, size_t size, bool *tx, size_t *out_bytes);

/*
 * Run one complete session before fuzzing starts.  Why: libev, the test I/O
 * backend and the allocator grow some arrays on first use and keep them;
 * done during the first real input, that looks like "more mallocs than
 * frees" to libFuzzer, which then re-runs the input to hunt for a leak.
 */
static void warm_up(void)
{
    static const uint8_t session[] = {
        0, 0, 0, 3,                                           /* client flags */
        'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 8, 0, 0, 0, 0, /* STRUCTURED_REPLY */
        'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 7, 0, 0, 0, 6, /* GO "", no infos */
        0, 0, 0, 0, 0, 0,
        0x25, 0x60, 0x95, 0x13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,     /* READ 0+4096 */
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0,
        0x25, 0x60, 0x95, 0x13, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2,     /* DISC */
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    };
    bool tx;
    size_t out;

    run_one(session, sizeof(session), &tx, &out);
    if (!tx || out <= sizeof(struct nbd_greeting) + 4096)
        fatal("warm-up session failed: transmission=%d, %zu bytes answered", tx, out);
}

/**
 * LLVMFuzzerInitialize - called once by libFuzzer: make the temporary
 * directory, the event loop, the test I/O engine, the images and their
 * templates, open the exports, and run the warm-up session.
 */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *tmp = getenv("TMPDIR");
    const char *v = getenv("QEDNBD_FUZZ_VERBOSE");
    char top_tmp[PATH_MAX];
    struct ev_loop *loop;
    qed_aio *aio;
    int r;

    (void)argc;
    (void)argv;
    verbose = v ? atoi(v) : 0;
    qed_set_log(quiet_log, NULL, verbose >= 2 ? QED_LOG_DEBUG : QED_LOG_WARN);

    snprintf(dir, sizeof(dir), "%s/qednbd-fuzz.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir))
        fatal("mkdtemp %s: %s", dir, strerror(errno));
    snprintf(base_path, sizeof(base_path), "%s/base.qed", dir);
    snprintf(work_path, sizeof(work_path), "%s/work.qed", dir);
    snprintf(ro_path, sizeof(ro_path), "%s/ro.qed", dir);
    snprintf(big_path, sizeof(big_path), "%s/big.qed", dir);
    snprintf(top_tmp, sizeof(top_tmp), "%s/top.qed", dir);

    loop = ev_default_loop(EVFLAG_AUTO);
    if (!loop)
        fatal("cannot create the event loop");
    r = qed_aio_new(loop, QED_AIO_TEST, &aio);
    if (r < 0)
        fatal("qed_aio_new(test): %s", strerror(-r));
    qed_aio_test_set_auto(aio, true);
    /* One loop thread, as qednbd --threads=1. */
    threads_init_single(loop, aio);

    make_image(base_path, FUZZ_IMAGE_SIZE, NULL, false);
    make_image(top_tmp, FUZZ_IMAGE_SIZE, base_path, true);
    read_file(top_tmp, &template_buf[0], &template_len[0]);
    read_file(top_tmp, &template_buf[1], &template_len[1]);
    unlink(top_tmp);
    make_image(big_path, FUZZ_BIG_SIZE, NULL, false);
    read_file(big_path, &template_buf[2], &template_len[2]);

    exports[0] = (struct export){ .name = "fuzz", .path = work_path };
    exports[1] = (struct export){ .name = "ro", .path = ro_path, .read_only = true };
    exports[2] = (struct export){ .name = "big", .path = big_path };
    srv.exports = exports;
    srv.nexports = NEXPORTS;
    srv.description = "qednbd fuzz target";
    srv.verbose = verbose;
    srv.max_conns = 100;
    srv.hs_timeout = 10;
    reset_exports();
    atexit(at_exit);
    warm_up();
    return 0;
}

/* ---- One input ----------------------------------------------------------------- */

/* Read and drop what the server wrote; count it in *@total. */
static void drain_output(int fd, size_t *total)
{
    static uint8_t buf[64 * 1024];
    ssize_t n;

    while ((n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0)
        *total += (size_t)n;
}

/* Serve @data as one client's byte stream; *@tx: the connection reached
 * the transmission phase; *@out_bytes: bytes the server wrote. */
static void run_one(const uint8_t *data, size_t size, bool *tx_out, size_t *out_bytes_out)
{
    int sv[2];
    struct conn *c;
    size_t off = 0;
    bool shut = false, tx = false;
    size_t out_bytes = 0;
    unsigned long turns = 0;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        fatal("socketpair: %s", strerror(errno));

    /* The server side, exactly as main() hands over an accepted socket; the
     * greeting is queued (and written) at once.  Our own reference keeps the
     * struct readable after the server has closed it, so the end state can
     * be checked; it is dropped below, which frees it. */
    c = conn_new(sv[0], sv[0], false, "fuzz");
    if (c)
        conn_ref(c);

    for (;;) {
        if (off < size) {
            ssize_t n = send(sv[1], data + off, size - off, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0)
                off += (size_t)n;
            else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                off = size;   /* the server closed its end: the rest cannot go */
        }
        if (off == size && !shut) {
            /* End of input = the client half-closes: the server sees EOF. */
            shutdown(sv[1], SHUT_WR);
            shut = true;
        }
        drain_output(sv[1], &out_bytes);
        ev_run(srv_self->loop, EVRUN_NOWAIT);
        if (c && c->proto && c->proto->exp)
            tx = true;
        if (!c || (c->state == CONN_DEAD && c->refs == 1))
            break;
        if (++turns > FUZZ_MAX_TURNS)
            fatal("connection still alive after %u loop turns with the input exhausted "
                  "(state %s, %u requests in flight)", FUZZ_MAX_TURNS,
                  conn_state_name(c->state), c->inflight);
    }
    drain_output(sv[1], &out_bytes);

    /* End-state invariants. */
    if (srv_self->conns || srv.nconns || srv.nrefused || srv_self->nconns)
        fatal("connection accounting not back to zero: conns=%p nconns=%u nrefused=%u",
              (void *)srv_self->conns, srv.nconns, srv.nrefused);
    if (c) {
        struct req *cur = c->proto ? c->proto->cur : NULL;

        if (c->inflight || c->mem_held || cur || c->out_head)
            fatal("closed connection still holds work: inflight=%u mem_held=%zu "
                  "cur=%p out_head=%p", c->inflight, c->mem_held, (void *)cur,
                  (void *)c->out_head);
        conn_unref(c);
    }
    if (srv.mem_held || srv.nreqs || srv.mem_waiters)
        fatal("memory accounting not back to zero: mem_held=%llu nreqs=%u mem_waiters=%u",
              (unsigned long long)srv.mem_held, srv.nreqs, srv.mem_waiters);
    for (size_t i = 0; i < NEXPORTS; i++)
        if (qed_inflight(exports[i].img))
            fatal("export %s: %u library requests still in flight", exports[i].name,
                  qed_inflight(exports[i].img));
    close(sv[1]);

    /* Why the reset comes last rather than first: libFuzzer re-runs (and
     * after 1000 times stops leak-checking) any input that does more
     * mallocs than frees.  Closing the images here frees, within this
     * input, the L2 tables it loaded, and the reopen allocates what the
     * previous reopen did, so a leak-free input stays balanced. */
    reset_exports();
    *tx_out = tx;
    *out_bytes_out = out_bytes;
}

/**
 * LLVMFuzzerTestOneInput - called by libFuzzer for each input: serve it as
 * one client's session and count what it reached (QEDNBD_FUZZ_STATS).
 * Any failure aborts (see the oracles at the top); returns 0.
 */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bool tx;
    size_t out_bytes;

    run_one(data, size, &tx, &out_bytes);
    n_inputs++;
    n_transmission += tx;
    /* More than the 18-byte greeting came back: an option or request was answered. */
    n_replied += out_bytes > sizeof(struct nbd_greeting);
    return 0;
}
