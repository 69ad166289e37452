/*
 * crash-bitmap.c - crash simulator for the dirty bitmaps on disk: every
 * power cut during a read-write session that marks them in use, records
 * writes, and stores them at close (the first store, which grows the
 * header area over the L1 table, L2 tables and data; a store into the
 * grown area; and a second growth with a directory already there).
 *
 * Recording: the bitmap code writes with blocking pwritev and fdatasync
 * (qed_pwrite_full and friends, on the set-up paths), and the test I/O
 * engine performs the guest writes with the same calls, so the program
 * wraps pwritev() and fdatasync() (-Wl,--wrap) and logs, in order, every
 * write to the image (offset and bytes) and every flush, while a workload
 * runs.  The image file is copied before the workload.
 *
 * Crash states: for crash point k (I/Os 0..k-1 performed), every write
 * before the last flush among them is on disk; each later one may be
 * missing, applied, or torn (only some of its 512-byte sectors applied).
 * Several random states per point, the first with everything applied.
 *
 * Checks on each state:
 *  - a read-only open succeeds (a directory torn by the crash is never a
 *    refusal), and every bitmap is inconsistent or, bit for bit, the one
 *    the image had before the workload or the one it had after it: never
 *    wrong;
 *  - a read-write open succeeds (repairing a NEED_CHECK image; one marked
 *    clean must need no repair); then the data written before the workload
 *    reads back unchanged, each sector the workload wrote reads as before
 *    (zeros) or as written, and qed_check finds no corruption.
 *
 * A plain program: exit 0 pass, 1 fail, 77 skip.  CRASH_SEED=n replays;
 * CRASH_KEEP=1 keeps the scratch directory; CRASH_DUMP=1 prints the I/Os.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "qed-io-test.h"
#include "qed.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define SIZE (1024 * MiB)
#define STATES_PER_POINT 12
#define MAX_OPS 4096

/* ---- recording ---- */

struct op {
    bool flush;
    uint64_t off;
    size_t len;
    uint8_t *data;
};

static struct op ops[MAX_OPS];
static size_t nops;
static bool recording;
static dev_t rec_dev;
static ino_t rec_ino;

ssize_t __real_pwritev(int fd, const struct iovec *iov, int cnt, off_t off);
int __real_fdatasync(int fd);
ssize_t __wrap_pwritev(int fd, const struct iovec *iov, int cnt, off_t off);
int __wrap_fdatasync(int fd);

static char dir[256];

/* Remove the scratch directory (also after a failure, unless CRASH_KEEP). */
static void cleanup(void)
{
    char cmd[600];

    if (dir[0] && !getenv("CRASH_KEEP")) {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "crash-bitmap: cannot remove %s\n", dir);
    }
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fputs("crash-bitmap: FAIL: ", stdout);
    vprintf(fmt, ap);
    putchar('\n');
    va_end(ap);
    if (getenv("CRASH_KEEP"))
        printf("crash-bitmap: files kept in %s (state.qed is the failing state)\n", dir);
    exit(1);
}

static bool is_target(int fd)
{
    struct stat st;

    return recording && fstat(fd, &st) == 0 && st.st_dev == rec_dev && st.st_ino == rec_ino;
}

ssize_t __wrap_pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    ssize_t n = __real_pwritev(fd, iov, cnt, off);

    if (n > 0 && is_target(fd)) {
        struct op *o = &ops[nops++];
        size_t done = 0;

        if (nops >= MAX_OPS)
            die("more than %d I/Os", MAX_OPS);
        o->flush = false;
        o->off = (uint64_t)off;
        o->len = (size_t)n;
        o->data = malloc((size_t)n);
        if (!o->data)
            die("out of memory");
        for (int i = 0; i < cnt && done < (size_t)n; i++) {
            size_t k = iov[i].iov_len < (size_t)n - done ? iov[i].iov_len : (size_t)n - done;
            memcpy(o->data + done, iov[i].iov_base, k);
            done += k;
        }
    }
    return n;
}

int __wrap_fdatasync(int fd)
{
    int r = __real_fdatasync(fd);

    if (r == 0 && is_target(fd)) {
        if (nops + 1 >= MAX_OPS)
            die("more than %d I/Os", MAX_OPS);
        ops[nops++] = (struct op){.flush = true};
    }
    return r;
}

/* ---- files ---- */

static uint64_t rng;

static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static const char *path(const char *name)
{
    static char bufs[4][512];
    static int next;
    char *p = bufs[next++ % 4];

    snprintf(p, 512, "%s/%s", dir, name);
    return p;
}

static uint8_t *slurp(const char *name, size_t *len)
{
    int fd = open(path(name), O_RDONLY);
    struct stat st;
    uint8_t *b;

    if (fd < 0 || fstat(fd, &st) < 0)
        die("open %s: %s", name, strerror(errno));
    b = malloc((size_t)st.st_size + 1);
    if (!b || pread(fd, b, (size_t)st.st_size, 0) != st.st_size)
        die("read %s", name);
    close(fd);
    *len = (size_t)st.st_size;
    return b;
}

/* Write @b (@len bytes) as file @name (holes where it is all zeros). */
static void spit(const char *name, const uint8_t *b, size_t len)
{
    static const uint8_t zero[4096];
    int fd = open(path(name), O_RDWR | O_CREAT | O_TRUNC, 0600);

    if (fd < 0)
        die("create %s: %s", name, strerror(errno));
    for (size_t o = 0; o < len; o += 4096) {
        size_t k = len - o < 4096 ? len - o : 4096;
        if (memcmp(b + o, zero, k) != 0 && pwrite(fd, b + o, k, (off_t)o) != (ssize_t)k)
            die("write %s", name);
    }
    if (ftruncate(fd, (off_t)len) < 0)
        die("truncate %s", name);
    close(fd);
}

/* ---- the library ---- */

static struct ev_loop *loop;
static qed_aio *aio;

static void quiet(enum qed_log_level l, const char *m, void *o)
{
    (void)l, (void)m, (void)o;
}

static qed_image *open_img(const char *name, bool ro, char *err, size_t errlen)
{
    struct qed_open_opts o = {.read_only = ro, .no_lock = ro};
    qed_image *img = NULL;

    return qed_open(aio, path(name), &o, &img, err, errlen) < 0 ? NULL : img;
}

/* The bitmaps of @img as text: one line per bitmap, its runs or "inconsistent". */
static void describe(qed_image *img, char *out, size_t outlen, char names[][64], size_t *nn)
{
    struct qed_dirty_extent ext[512];
    size_t pos = 0;

    *nn = 0;
    out[0] = '\0';
    for (unsigned i = 0; i < qed_bitmap_count(img); i++) {
        struct qed_bitmap_info bi;
        size_t n = 0;

        qed_bitmap_info(img, i, &bi);
        snprintf(names[(*nn)++], 64, "%s", bi.name);
        pos += (size_t)snprintf(out + pos, outlen - pos, "%s %u %d:", bi.name, bi.granularity,
                                bi.enabled);
        if (bi.inconsistent) {
            pos += (size_t)snprintf(out + pos, outlen - pos, " inconsistent\n");
            continue;
        }
        if (qed_bitmap_status(img, bi.name, 0, qed_size(img), ext, 512, &n) < 0)
            die("status");
        for (size_t k = 0; k < n; k++)
            if (ext[k].dirty)
                pos += (size_t)snprintf(out + pos, outlen - pos, " %" PRIu64 "+%" PRIu64,
                                        ext[k].start, ext[k].length);
        pos += (size_t)snprintf(out + pos, outlen - pos, "\n");
    }
}

/* The line of bitmap @name in a describe() text, or NULL. */
static const char *line_of(const char *text, const char *name, char *buf, size_t buflen)
{
    size_t n = strlen(name);

    for (const char *p = text; *p;) {
        const char *e = strchr(p, '\n');
        if (strncmp(p, name, n) == 0 && p[n] == ' ') {
            snprintf(buf, buflen, "%.*s", (int)(e - p), p);
            return buf;
        }
        p = e + 1;
    }
    return NULL;
}

/* ---- the workloads ---- */

/* Data written: offset, length, pattern byte. */
struct span {
    uint64_t off, len;
    uint8_t byte;
};
/* Before any workload: right after the header (the L1 table, an L2 table
 * and these clusters follow it), and further away. */
static const struct span setup_data[] = {
    {0, 192 * KiB, 0x11}, {1 * MiB, 64 * KiB, 0x22}, {512 * MiB, 4 * KiB, 0x33},
};
static struct span wl_data[16];
static size_t nwl;

static void write_span(qed_image *img, struct span s)
{
    uint8_t *b = malloc(s.len);

    memset(b, s.byte, s.len);
    if (qed_sync_write(img, s.off, b, s.len, 0) < 0)
        die("write at %" PRIu64, s.off);
    free(b);
}

static void add(qed_image *img, const char *name, uint32_t g)
{
    int r = qed_bitmap_add(img, name, g, false);

    if (r < 0)
        die("add %s: %s", name, strerror(-r));
}

/* Workload @w on image "img.qed": a whole read-write session. */
static void workload(int w)
{
    char err[512] = "";
    qed_image *img = open_img("img.qed", false, err, sizeof(err));
    struct span s = {.off = (uint64_t)(100 + 10 * w) * MiB, .len = 8 * KiB,
                     .byte = (uint8_t)(0x40 + w)};

    if (!img)
        die("workload %d open: %s", w, err);
    if (w == 0) {           /* the first store: the area grows over L1, L2, data */
        add(img, "a", 64 * 1024);
        add(img, "b", 512);
    } else if (w == 1) {    /* a store into the area as it is */
        qed_bitmap_clear(img, "a");
        add(img, "c", 4096);
    } else {                /* the area grows again, a directory already there */
        add(img, "d", 512);
        add(img, "e", 512);
        qed_bitmap_remove(img, "c");
    }
    write_span(img, s);
    wl_data[nwl++] = s;
    s.off += 64 * MiB + 512;
    write_span(img, s);
    wl_data[nwl++] = s;
    if (qed_close(img) < 0)
        die("workload %d close", w);
}

/* ---- checking a crash state ---- */

/* Does @s read as written (or, with @maybe_zero, as zeros), per sector? */
static bool span_reads(qed_image *img, struct span s, bool maybe_zero)
{
    uint8_t *b = malloc(s.len);
    bool ok = qed_sync_read(img, s.off, b, s.len) == 0;

    for (uint64_t i = 0; ok && i < s.len; i += 512) {
        bool all_b = true, all_z = true;
        for (uint64_t j = i; j < i + 512 && j < s.len; j++) {
            all_b &= b[j] == s.byte;
            all_z &= b[j] == 0;
        }
        ok = all_b || (maybe_zero && all_z);
    }
    free(b);
    return ok;
}

static void check_bitmaps(qed_image *img, const char *before, const char *after,
                          const char *what)
{
    static char now[65536];
    char names[64][64], l[1024], lb[1024], la[1024];
    size_t nn;

    describe(img, now, sizeof(now), names, &nn);
    for (size_t i = 0; i < nn; i++) {
        const char *b = line_of(before, names[i], lb, sizeof(lb));
        const char *a = line_of(after, names[i], la, sizeof(la));

        line_of(now, names[i], l, sizeof(l));
        if (strstr(l, " inconsistent"))
            continue;
        if ((b && strcmp(b, l) == 0) || (a && strcmp(a, l) == 0))
            continue;
        die("%s: bitmap %s is wrong:\n  now:    %s\n  before: %s\n  after:  %s", what,
            names[i], l, b ? b : "(none)", a ? a : "(none)");
    }
}

static void check_state(const char *before, const char *after, size_t wl_from,
                        const char *what)
{
    char err[512] = "";
    struct qed_check_result res;
    qed_image *img = open_img("state.qed", true, err, sizeof(err));

    if (!img)
        die("%s: read-only open refused: %s", what, err);
    check_bitmaps(img, before, after, what);
    qed_close(img);

    /* Data after the repair a read-write open runs (a NEED_CHECK image
     * may have entries past the end of the file until then). */
    img = open_img("state.qed", false, err, sizeof(err));
    if (!img)
        die("%s: read-write open refused: %s", what, err);
    for (size_t i = 0; i < sizeof(setup_data) / sizeof(setup_data[0]); i++)
        if (!span_reads(img, setup_data[i], false))
            die("%s: data at %" PRIu64 " changed", what, setup_data[i].off);
    for (size_t i = 0; i < nwl; i++)
        if (!span_reads(img, wl_data[i], i >= wl_from))
            die("%s: data at %" PRIu64 " is neither old nor new", what, wl_data[i].off);
    if (qed_check(img, false, &res) < 0 || res.corruptions)
        die("%s: %" PRIu64 " corruptions after the read-write open", what, res.corruptions);
    qed_close(img);
}

/* The file of crash point @k, repetition @rep, into @f; returns its length. */
static size_t build_state(uint8_t *f, size_t cap, const uint8_t *base, size_t base_len,
                          size_t k, int rep)
{
    size_t len = base_len, d = 0;

    for (size_t i = 0; i < k; i++)
        if (ops[i].flush)
            d = i;
    memcpy(f, base, base_len);
    memset(f + base_len, 0, cap - base_len);
    for (size_t i = 0; i < k; i++) {
        const struct op *o = &ops[i];
        int mode = i < d || rep == 0 ? 1 : (int)(rnd() % 3); /* 0 lost, 1 all, 2 torn */

        if (o->flush || mode == 0)
            continue;
        for (size_t s = 0; s < o->len; s += 512) {
            size_t n = o->len - s < 512 ? o->len - s : 512;
            if (mode == 1 || rnd() % 2)
                memcpy(f + o->off + s, o->data + s, n);
        }
        if (o->off + o->len > len)
            len = (size_t)(o->off + o->len);
    }
    return len;
}

/* Build the crash states of the recorded ops over @base and check each. */
static unsigned crash_points(const uint8_t *base, size_t base_len, const char *before,
                             const char *after, size_t wl_from, int w)
{
    unsigned states = 0;
    size_t cap = base_len;
    uint8_t *f;

    for (size_t i = 0; i < nops; i++)
        if (!ops[i].flush && ops[i].off + ops[i].len > cap)
            cap = (size_t)(ops[i].off + ops[i].len);
    f = calloc(1, cap);
    if (!f)
        die("out of memory");
    for (size_t k = 0; k <= nops; k++) {
        for (int rep = 0; rep < (k == 0 ? 1 : STATES_PER_POINT); rep++) {
            char what[128];
            size_t len = build_state(f, cap, base, base_len, k, rep);

            spit("state.qed", f, len);
            snprintf(what, sizeof(what), "workload %d, crash point %zu of %zu, state %d", w, k,
                     nops, rep);
            check_state(before, after, wl_from, what);
            states++;
        }
    }
    free(f);
    return states;
}

/* Run workload @w recorded, then check every crash state of it. */
static unsigned run_workload(int w)
{
    static char before[65536], after[65536];
    char err[512] = "", names[64][64];
    size_t base_len, wl_from = nwl, nn;
    uint8_t *base = slurp("img.qed", &base_len);
    struct stat st;
    qed_image *img;
    unsigned states;

    img = open_img("img.qed", true, err, sizeof(err));
    if (!img)
        die("open: %s", err);
    describe(img, before, sizeof(before), names, &nn);
    qed_close(img);
    if (stat(path("img.qed"), &st) < 0)
        die("stat");
    rec_dev = st.st_dev, rec_ino = st.st_ino;
    nops = 0;
    recording = true;
    workload(w);
    recording = false;
    img = open_img("img.qed", true, err, sizeof(err));
    if (!img)
        die("open after workload %d: %s", w, err);
    describe(img, after, sizeof(after), names, &nn);
    qed_close(img);
    if (getenv("CRASH_DUMP"))
        for (size_t i = 0; i < nops; i++)
            printf("  op %zu: %s %" PRIu64 " +%zu\n", i, ops[i].flush ? "flush" : "write",
                   ops[i].off, ops[i].len);
    states = crash_points(base, base_len, before, after, wl_from, w);
    printf("workload %d: %zu I/Os recorded, %u states; bitmaps after:\n%s", w, nops, states,
           after);
    for (size_t i = 0; i < nops; i++)
        free(ops[i].data);
    free(base);
    fflush(stdout);
    return states;
}

/*
 * A read-write open that repairs (qed_open_opts.repair_corrupt, qednbd
 * --repair) changes what the guest reads: the bitmaps must say "in use" on
 * stable storage before the repair writes a table, or a crash between the
 * two would leave a trusted bitmap that lacks the repaired range (which the
 * crash states above cannot tell: that bitmap equals the one before).  So
 * check the order of the recorded I/Os: a directory write and a flush come
 * before the first write past the header area.
 */
static void repair_marks_in_use_first(void)
{
    struct qed_open_opts o = {.repair_corrupt = true};
    uint64_t l1e, bad = (uint64_t)1 << 40;
    char err[512] = "";
    struct qed_info info;
    qed_image *img = open_img("img.qed", true, err, sizeof(err));
    struct stat st;
    bool dir_written = false, flushed_after = false;
    int fd;

    if (!img)
        die("open: %s", err);
    qed_get_info(img, &info);
    qed_close(img);
    fd = open(path("img.qed"), O_RDWR);
    if (fd < 0 || pread(fd, &l1e, 8, (off_t)info.l1_table_offset) != 8 || l1e == 0)
        die("no L2 table to corrupt");
    /* An invalid L2 entry (past the end of the file) for guest cluster 7. */
    if (pwrite(fd, &bad, 8, (off_t)(le64toh(l1e) + 7 * 8)) != 8)
        die("corrupt");
    close(fd);
    if (stat(path("img.qed"), &st) < 0)
        die("stat");
    rec_dev = st.st_dev, rec_ino = st.st_ino;
    nops = 0;
    recording = true;
    if (qed_open(aio, path("img.qed"), &o, &img, err, sizeof(err)) < 0)
        die("repairing open: %s", err);
    recording = false;
    for (size_t i = 0; i < nops; i++) {
        const uint64_t hdr = (uint64_t)info.header_size * info.cluster_size;

        if (ops[i].flush) {
            flushed_after = dir_written;
        } else if (ops[i].off >= info.cluster_size && ops[i].off < hdr) {
            dir_written = true;  /* the bitmap area: a directory slot */
        } else if (ops[i].off >= hdr) {
            if (!dir_written || !flushed_after)
                die("the repair wrote at %" PRIu64 " before the bitmaps were marked in use "
                    "on stable storage", ops[i].off);
            break;
        }
        free(ops[i].data);
        ops[i].data = NULL;
    }
    for (size_t i = 0; i < nops; i++)
        free(ops[i].data);
    if (!dir_written)
        die("the repairing open wrote no directory");
    qed_close(img);
    printf("repair: the bitmaps were marked in use before the repair wrote (%zu I/Os)\n", nops);
}

int main(void)
{
    const char *seed_s = getenv("CRASH_SEED");
    const char *tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    struct qed_create_opts co = {.size = SIZE, .cluster_size = 64 * 1024, .table_size = 4};
    uint64_t seed = seed_s ? strtoull(seed_s, NULL, 0) : (uint64_t)time(NULL) ^ (uint64_t)getpid();
    char err[512] = "";
    unsigned total = 0;
    qed_image *img;

    rng = seed | 1;
    printf("crash-bitmap: seed %" PRIu64 " (replay with CRASH_SEED=%" PRIu64 ")\n", seed, seed);
    snprintf(dir, sizeof(dir), "%s/qed-crash-bitmap-XXXXXX", tmp);
    if (!mkdtemp(dir))
        return 77;
    atexit(cleanup);
    qed_set_log(quiet, NULL, QED_LOG_ERROR);
    loop = ev_loop_new(EVFLAG_AUTO);
    if (!loop || qed_aio_new(loop, QED_AIO_TEST, &aio) < 0)
        die("engine");
    qed_aio_test_set_auto(aio, true);
    if (qed_create(path("img.qed"), &co, err, sizeof(err)) < 0)
        die("create: %s", err);
    img = open_img("img.qed", false, err, sizeof(err));
    if (!img)
        die("open: %s", err);
    for (size_t i = 0; i < sizeof(setup_data) / sizeof(setup_data[0]); i++)
        write_span(img, setup_data[i]);
    qed_close(img);

    for (int w = 0; w < 3; w++)
        total += run_workload(w);
    repair_marks_in_use_first();
    printf("crash-bitmap: %u crash states checked, all consistent\n", total);
    qed_aio_free(aio);
    ev_loop_destroy(loop);
    return 0;
}
