/*
 * qed-image-probe.c - open one (possibly broken) QED image through libqed's
 * real open path and hold it to a list of expectations.  Driven by
 * malformed-images.sh over the corpus that make-corpus.py writes; one image,
 * one command, one process, so that a crash or a hang is caught by the
 * caller and never takes other images down with it.
 *
 * Usage: qed-image-probe [-w] [-R] [-s SPEC] [-c CLUSTERS] [-b BACKING] [-x FIRST]
 *                        [-a SPEC] COMMAND IMAGE
 *   -w           open read-write (default: read-only)
 *   -R           with -w: repair invalid entries of an image marked clean at
 *                open (qed_open_opts.repair_corrupt); without it such an
 *                image is refused read-write
 *   -s SPEC      what each guest cluster reads as (see make-corpus.py):
 *                comma-separated A[-B]:K, K = Z (zeros), E (fails with EIO),
 *                D<hex> (the file's bytes at that host offset), A<hex> (the
 *                entry points at metadata: EIO or the file's bytes there, and
 *                writes must fail); clusters not listed are unallocated
 *                (zeros, or the backing file's bytes)
 *   -c CLUSTERS  how many guest clusters the image has (checked against it)
 *   -b BACKING   raw backing file that unallocated clusters read from
 *   -x FIRST     (write) first guest cluster of an empty L2 range that
 *                allocating writes may use
 *   -a SPEC      (write) items in -s syntax that apply from the reopen after
 *                the writes on (see reopen= in make-corpus.py)
 * Commands:
 *   open    open and close; exit 3 with "refused: MESSAGE" when refused
 *   reads   open, read every cluster three ways (one cluster at a time, in
 *           64-cluster runs, and straddling each cluster boundary) and
 *           compare with SPEC; then close
 *   write   (-w) as reads, then: writes to clusters that must fail (E) fail
 *           with EIO, before and after allocating writes in the scratch
 *           range (which grow the file); then every cluster reads back as
 *           SPEC says, the scratch clusters as written
 *   check   qed_check without repair; prints the counts as key=value
 *   repair  qed_check with repair (-w and -R implied, as qed-img check -r);
 *           prints the counts
 * Exit status: 0 as expected, 1 an expectation failed (each failure is
 * printed as a line starting with "MISMATCH"), 2 usage or set-up error,
 * 3 the open was refused.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ev.h>

#include "qed.h"

#define EXIT_MISMATCH 1
#define EXIT_SETUP 2
#define EXIT_REFUSED 3

/* Print at most this many mismatches: one broken rule can fail thousands of reads. */
#define MAX_REPORTS 20

enum kind {
    K_UNALLOC = 0, /* zeros, or the backing file's bytes */
    K_ZERO,
    K_EIO,
    K_DATA,        /* the image file's bytes at @host */
    K_ALIAS,       /* points at metadata: EIO, or the file's bytes at @host;
                      a write must fail rather than overwrite the metadata */
    K_WRITTEN,     /* written by check_writes */
    K_HALF,        /* first half unallocated, second half written by check_writes */
};

struct expect {
    enum kind kind;
    uint64_t host; /* K_DATA, K_ALIAS */
};

static const char *image_path;
static struct expect *exp_tab;
static uint64_t nclusters;
static uint32_t cs;
static uint64_t image_size;
static int file_fd = -1;    /* the image, opened separately, to fetch D bytes */
static int backing_fd = -1; /* the raw backing file, or -1 */
static unsigned mismatches;

static void mismatch(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void mismatch(const char *fmt, ...)
{
    va_list ap;

    if (++mismatches > MAX_REPORTS)
        return;
    printf("MISMATCH: ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    if (mismatches == MAX_REPORTS)
        printf("MISMATCH: (further mismatches not shown)\n");
}

/* pread that fills with zeros past the end of the file. */
static int pread_zero(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;

    memset(buf, 0, len);
    while (len) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return 0;
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

/* Parse SPEC into exp_tab (nclusters entries).  Returns 0 or -EINVAL. */
static int parse_spec(const char *spec)
{
    char *copy = strdup(spec), *save = NULL, *item;

    if (!copy)
        return -ENOMEM;
    for (item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *end;
        uint64_t a = strtoull(item, &end, 10), b = a, host = 0;
        enum kind k;

        if (*end == '-')
            b = strtoull(end + 1, &end, 10);
        if (*end != ':' || b < a || b >= nclusters)
            goto bad;
        end++;
        switch (*end) {
        case 'Z':
            k = K_ZERO;
            break;
        case 'E':
            k = K_EIO;
            break;
        case 'D':
        case 'A':
            k = *end == 'D' ? K_DATA : K_ALIAS;
            host = strtoull(end + 1, &end, 16);
            end--;
            break;
        default:
            goto bad;
        }
        if (end[1] != '\0')
            goto bad;
        for (uint64_t g = a; g <= b; g++) {
            exp_tab[g].kind = k;
            exp_tab[g].host = host ? host + (g - a) * cs : 0;
        }
        continue;
    bad:
        fprintf(stderr, "qed-image-probe: bad spec item '%s'\n", item);
        free(copy);
        return -EINVAL;
    }
    free(copy);
    return 0;
}

/*
 * Fill @buf with the data check_writes writes at guest offset @guest_off:
 * each 8-byte word holds its own guest offset, tagged.  Offsets are always
 * multiples of 8 here (cluster sizes and halves of them).
 */
static void fill_written(uint8_t *buf, size_t len, uint64_t guest_off)
{
    for (size_t i = 0; i + 8 <= len; i += 8) {
        uint64_t w = 0x3717E00000000000ull | (guest_off + i);
        memcpy(buf + i, &w, 8);
    }
}

enum outcome {
    MUST_FAIL, /* some cluster is E: the read must fail with EIO */
    MAY_FAIL,  /* some cluster is A: EIO, or the bytes in the buffer */
    MUST_READ, /* the read must return the bytes in the buffer */
};

/* What the guest bytes [off, off+len) must read as; fills @buf. */
static enum outcome expected_bytes(uint64_t off, uint8_t *buf, size_t len)
{
    enum outcome out = MUST_READ;
    size_t done = 0;

    while (done < len) {
        uint64_t pos = off + done;
        uint64_t g = pos / cs, in = pos % cs;
        size_t n = cs - in;
        const struct expect *e = &exp_tab[g];

        if (n > len - done)
            n = len - done;
        switch (e->kind) {
        case K_EIO:
            return MUST_FAIL;
        case K_ZERO:
            memset(buf + done, 0, n);
            break;
        case K_ALIAS:
            out = MAY_FAIL;
            /* fall through */
        case K_DATA:
            if (pread_zero(file_fd, buf + done, n, e->host + in) < 0)
                memset(buf + done, 0xA5, n); /* cannot match: reported as a mismatch */
            break;
        case K_HALF:
            if (in >= cs / 2) {
                fill_written(buf + done, n, pos);
                break;
            }
            /* The unwritten first half: as an unallocated cluster. */
            if (n > cs / 2 - in)
                n = cs / 2 - in;
            /* fall through */
        case K_UNALLOC:
            if (backing_fd >= 0)
                pread_zero(backing_fd, buf + done, n, pos);
            else
                memset(buf + done, 0, n);
            break;
        case K_WRITTEN:
            fill_written(buf + done, n, pos);
            break;
        }
        done += n;
    }
    return out;
}

/* Describe where the first differing byte of a wrong read came from. */
static void explain(const char *what, uint64_t off, const uint8_t *got, const uint8_t *want,
                    size_t len)
{
    size_t i = 0;
    uint64_t word = 0;

    while (i < len && got[i] == want[i])
        i++;
    if ((i & ~(size_t)7) + 8 <= len)
        memcpy(&word, got + (i & ~(size_t)7), 8);
    mismatch("%s at guest %" PRIu64 " (cluster %" PRIu64 ", %zu bytes): first wrong byte at +%zu,"
             " got word 0x%016" PRIx64 "%s",
             what, off, off / cs, len, i, word,
             (word >> 48) == 0xDA7A   ? " (data the generator wrote at host offset in the low bits)"
             : (word >> 48) == 0xBAC4 ? " (backing file data)"
             : (word >> 48) == 0x3717 ? " (data this test wrote at guest offset in the low bits)"
                                      : "");
}

/* Read [off, off+len) and compare with the expectation. */
static void check_read(qed_image *img, const char *what, uint64_t off, size_t len)
{
    uint8_t *got = malloc(len), *want = malloc(len);
    enum outcome want_r;
    int r;

    if (!got || !want) {
        mismatch("out of memory");
        goto out;
    }
    memset(got, 0x5A, len);
    want_r = expected_bytes(off, want, len);
    r = qed_sync_read(img, off, got, len);
    if (want_r == MAY_FAIL && r == -EIO)
        goto out;
    if (want_r == MUST_FAIL) {
        if (r != -EIO)
            mismatch("%s at guest %" PRIu64 " (cluster %" PRIu64 ", %zu bytes): expected EIO, got %s",
                     what, off, off / cs, len, r < 0 ? strerror(-r) : "success");
    } else if (r < 0) {
        mismatch("%s at guest %" PRIu64 " (cluster %" PRIu64 ", %zu bytes): failed with %s", what,
                 off, off / cs, len, strerror(-r));
    } else if (memcmp(got, want, len) != 0) {
        explain(what, off, got, want, len);
    }
out:
    free(got);
    free(want);
}

/* Every cluster, three ways. */
static void check_all_reads(qed_image *img, const char *phase)
{
    char what[64];
    const uint64_t run = 64;

    snprintf(what, sizeof(what), "%s: cluster read", phase);
    for (uint64_t g = 0; g < nclusters; g++) {
        uint64_t off = g * cs;
        check_read(img, what, off, (size_t)(off + cs <= image_size ? cs : image_size - off));
    }
    snprintf(what, sizeof(what), "%s: 64-cluster read", phase);
    for (uint64_t g = 0; g < nclusters; g += run) {
        uint64_t off = g * cs, len = run * cs;
        if (off + len > image_size)
            len = image_size - off;
        check_read(img, what, off, (size_t)len);
    }
    snprintf(what, sizeof(what), "%s: straddling read", phase);
    for (uint64_t g = 0; g + 1 < nclusters; g++) {
        uint64_t off = g * cs + cs / 2;
        if (off + cs <= image_size)
            check_read(img, what, off, cs);
    }
}

/*
 * A write to the first cluster of each E run must fail with EIO, and so must
 * a write to any A cluster: it would land on the image's metadata.
 */
static void write_corrupt(qed_image *img, uint8_t *buf, const char *when)
{
    for (uint64_t g = 0; g < nclusters; g++) {
        enum kind k = exp_tab[g].kind;
        int r;
        if (k == K_EIO && g > 0 && exp_tab[g - 1].kind == K_EIO)
            continue;
        if (k != K_EIO && k != K_ALIAS)
            continue;
        fill_written(buf, cs, g * cs);
        r = qed_sync_write(img, g * cs, buf, cs, 0);
        if (r == -EIO)
            continue;
        if (k == K_EIO)
            mismatch("%s: write to corrupt cluster %" PRIu64 ": expected EIO, got %s", when, g,
                     r < 0 ? strerror(-r) : "success");
        else if (r == 0)
            mismatch("%s: write to cluster %" PRIu64 " succeeded: its L2 entry points at "
                     "metadata (host 0x%" PRIx64 "), which now holds guest data",
                     when, g, exp_tab[g].host);
        else
            mismatch("%s: write to metadata-aliasing cluster %" PRIu64 ": expected EIO, got %s",
                     when, g, strerror(-r));
    }
}

/*
 * Writes: every E cluster refuses a write with EIO; then allocating writes in
 * the scratch range (a whole cluster, half a cluster, a 3-cluster run); then
 * the E clusters still refuse writes.  The caller reads everything back.
 */
static void check_writes(qed_image *img, uint64_t scratch)
{
    uint8_t *buf = malloc(4 * (size_t)cs);
    static const struct {
        uint64_t first, count; /* clusters from scratch */
        bool half;             /* write only the second half of the first cluster */
    } w[] = {{0, 1, false}, {2, 1, true}, {10, 3, false}};

    if (!buf) {
        mismatch("out of memory");
        return;
    }
    write_corrupt(img, buf, "before allocating");

    for (size_t i = 0; i < sizeof(w) / sizeof(w[0]); i++) {
        uint64_t g = scratch + w[i].first, off = g * cs;
        size_t len = (size_t)(w[i].count * cs);
        int r;

        if (w[i].half)
            off += cs / 2, len -= cs / 2;
        fill_written(buf, len, off);
        r = qed_sync_write(img, off, buf, len, 0);
        if (r < 0) {
            mismatch("allocating write at guest %" PRIu64 " (%zu bytes) failed: %s", off, len,
                     strerror(-r));
            continue;
        }
        /* From now on these clusters read as what was written (the
         * unwritten half as before: zeros or backing data). */
        for (uint64_t k = 0; k < w[i].count; k++)
            exp_tab[g + k].kind = K_WRITTEN;
        if (w[i].half)
            exp_tab[g].kind = K_HALF;
    }
    if (qed_sync_flush(img) < 0)
        mismatch("flush after the allocating writes failed");
    /* The file has grown: an entry that pointed past its old end must not
     * have become a way to write over the new clusters. */
    write_corrupt(img, buf, "after allocating");
    free(buf);
}

static void print_check(const char *label, const struct qed_check_result *res)
{
    printf("%s corruptions=%" PRIu64 " corruptions_fixed=%" PRIu64 " leaks=%" PRIu64
           " check_errors=%" PRIu64 " allocated=%" PRIu64 "\n",
           label, res->corruptions, res->corruptions_fixed, res->leaks, res->check_errors,
           res->allocated_clusters);
}

static void usage(void)
{
    fprintf(stderr, "usage: qed-image-probe [-w] [-R] [-s SPEC] [-c CLUSTERS] [-b BACKING] [-x FIRST] [-a SPEC] "
                    "open|reads|write|check|repair IMAGE\n");
    exit(EXIT_SETUP);
}

int main(int argc, char **argv)
{
    struct qed_open_opts o = {.read_only = true};
    const char *spec = "", *backing = NULL, *cmd;
    uint64_t want_clusters = 0;
    int64_t scratch = -1;
    const char *reopen_spec = "";
    struct ev_loop *loop = EV_DEFAULT;
    qed_aio *aio = NULL;
    qed_image *img = NULL;
    struct qed_info info;
    char err[1024] = "";
    int opt, r;

    while ((opt = getopt(argc, argv, "wRs:c:b:x:a:")) != -1) {
        switch (opt) {
        case 'w':
            o.read_only = false;
            break;
        case 'R':
            o.repair_corrupt = true;
            break;
        case 's':
            spec = optarg;
            break;
        case 'c':
            want_clusters = strtoull(optarg, NULL, 10);
            break;
        case 'b':
            backing = optarg;
            break;
        case 'x':
            scratch = strtoll(optarg, NULL, 10);
            break;
        case 'a':
            reopen_spec = optarg;
            break;
        default:
            usage();
        }
    }
    if (argc - optind != 2)
        usage();
    cmd = argv[optind];
    image_path = argv[optind + 1];
    if (!strcmp(cmd, "repair")) {
        o.read_only = false;
        o.repair_corrupt = true;
    }
    if (!strcmp(cmd, "write") && o.read_only) {
        fprintf(stderr, "qed-image-probe: write needs -w\n");
        return EXIT_SETUP;
    }

    /* A read-only check uses the open path without an I/O engine, as
     * qed-img check does; everything else opens with one. */
    if (strcmp(cmd, "check") != 0) {
        r = qed_aio_new(loop, QED_AIO_AUTO, &aio);
        if (r < 0) {
            fprintf(stderr, "qed-image-probe: no I/O engine: %s\n", strerror(-r));
            return EXIT_SETUP;
        }
    }

    r = qed_open(aio, image_path, &o, &img, err, sizeof(err));
    if (r < 0) {
        printf("refused: %s\n", err);
        if (aio)
            qed_aio_free(aio);
        return EXIT_REFUSED;
    }
    qed_get_info(img, &info);
    printf("opened %s: size %" PRIu64 ", cluster size %" PRIu32 ", features 0x%" PRIx64
           ", autoclear 0x%" PRIx64 "\n",
           image_path, info.size, info.cluster_size, info.features, info.autoclear_features);

    if (!strcmp(cmd, "check") || !strcmp(cmd, "repair")) {
        struct qed_check_result res;
        bool repair = !strcmp(cmd, "repair");
        r = qed_check(img, repair, &res);
        print_check(repair ? "repair:" : "check:", &res);
        if (r < 0)
            printf("check returned %s\n", strerror(-r));
        r = qed_close(img);
        if (aio)
            qed_aio_free(aio);
        return r < 0 ? EXIT_MISMATCH : 0;
    }

    if (!strcmp(cmd, "reads") || !strcmp(cmd, "write")) {
        cs = info.cluster_size;
        image_size = info.size;
        nclusters = (image_size + cs - 1) / cs;
        if (want_clusters && want_clusters != nclusters)
            mismatch("the image has %" PRIu64 " clusters, the manifest says %" PRIu64, nclusters,
                     want_clusters);
        exp_tab = calloc(nclusters ? nclusters : 1, sizeof(*exp_tab));
        file_fd = open(image_path, O_RDONLY | O_CLOEXEC);
        if (backing) {
            backing_fd = open(backing, O_RDONLY | O_CLOEXEC);
            if (backing_fd < 0)
                mismatch("cannot open the backing file %s: %s", backing, strerror(errno));
        }
        if (!exp_tab || file_fd < 0 || parse_spec(spec) < 0) {
            fprintf(stderr, "qed-image-probe: set-up failed\n");
            return EXIT_SETUP;
        }
        check_all_reads(img, "before writes");
        if (!strcmp(cmd, "write")) {
            if (scratch < 0 || (uint64_t)scratch >= nclusters) {
                fprintf(stderr, "qed-image-probe: write needs -x inside the image\n");
                return EXIT_SETUP;
            }
            check_writes(img, (uint64_t)scratch);
            /* The new clusters read back, and nothing else moved. */
            check_all_reads(img, "after writes");
            /* And the same from disk, not from the L2 cache: what was
             * acknowledged must survive a close. */
            r = qed_close(img);
            img = NULL;
            if (r < 0)
                mismatch("close after writes failed: %s", strerror(-r));
            o.read_only = true;
            r = qed_open(aio, image_path, &o, &img, err, sizeof(err));
            if (r < 0)
                mismatch("reopen after writes refused: %s", err);
            else if (parse_spec(reopen_spec) < 0)
                mismatch("bad -a spec: %s", reopen_spec);
            else
                check_all_reads(img, "after reopen");
        }
        printf("%" PRIu64 " clusters checked, %u mismatches\n", nclusters, mismatches);
    }

    r = img ? qed_close(img) : 0;
    if (r < 0)
        mismatch("close failed: %s", strerror(-r));
    if (aio)
        qed_aio_free(aio);
    if (file_fd >= 0)
        close(file_fd);
    if (backing_fd >= 0)
        close(backing_fd);
    free(exp_tab);
    return mismatches ? EXIT_MISMATCH : 0;
}
