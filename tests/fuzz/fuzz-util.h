/*
 * fuzz-util.h - small helpers shared by the library fuzzers (fuzz-engine.c,
 * fuzz-image.c): reading typed values from the fuzzer's input, a private
 * temporary directory, the library's log kept in a ring and shown only when
 * an invariant fails, and the fatal report.
 *
 * Header-only (static functions) so that each target is one translation
 * unit plus lib/.
 */
#ifndef FUZZ_UTIL_H
#define FUZZ_UTIL_H

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qed.h"

/* ---- Input ---------------------------------------------------------------- */

struct fz_in {
    const uint8_t *p;
    size_t n;
};

/* Every reader returns 0 once the input is exhausted. */
static inline uint8_t fz_u8(struct fz_in *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

static inline uint16_t fz_u16(struct fz_in *in)
{
    uint16_t a = fz_u8(in);
    return (uint16_t)(a | (uint16_t)fz_u8(in) << 8);
}

static inline uint32_t fz_u32(struct fz_in *in)
{
    uint32_t a = fz_u16(in);
    return a | (uint32_t)fz_u16(in) << 16;
}

static inline uint64_t fz_u64(struct fz_in *in)
{
    uint64_t a = fz_u32(in);
    return a | (uint64_t)fz_u32(in) << 32;
}

/* ---- The library's log: kept, shown only with a failure ------------------- */

#define FZ_LOG_KEEP 24
static char fz_log_ring[FZ_LOG_KEEP][300];
static unsigned fz_log_pos;
static int fz_verbose;

static void fz_log_cb(enum qed_log_level level, const char *msg, void *opaque)
{
    (void)opaque;
    if (fz_verbose)
        fprintf(stderr, "libqed[%d]: %s\n", (int)level, msg);
    snprintf(fz_log_ring[fz_log_pos++ % FZ_LOG_KEEP], sizeof(fz_log_ring[0]), "[%d] %s",
             (int)level, msg);
}

static void fz_log_dump(void)
{
    unsigned n = fz_log_pos < FZ_LOG_KEEP ? fz_log_pos : FZ_LOG_KEEP;

    if (n)
        fprintf(stderr, "last library messages:\n");
    for (unsigned i = fz_log_pos - n; i != fz_log_pos; i++)
        fprintf(stderr, "  %s\n", fz_log_ring[i % FZ_LOG_KEEP]);
}

/* An invariant failed: say which, show the library's last messages, abort
 * (libFuzzer keeps the input as a crash artifact). */
static void fz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void fz_fail(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "\n==== fuzz invariant failed: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    fz_log_dump();
    abort();
}

/* ---- Counters, for the make-check run to see that the seeds drive the library */

#define FZ_NSTATS 6
static const char *fz_stat_names[FZ_NSTATS];
static uint64_t fz_stats[FZ_NSTATS];

/* At exit, write "name=value ..." to $QEDNBD_FUZZ_STATS when it is set. */
static void fz_stats_write(void)
{
    const char *path = getenv("QEDNBD_FUZZ_STATS");
    FILE *f;

    if (!path || !(f = fopen(path, "w")))
        return;
    for (int i = 0; i < FZ_NSTATS; i++)
        if (fz_stat_names[i])
            fprintf(f, "%s%s=%llu", i ? " " : "", fz_stat_names[i],
                    (unsigned long long)fz_stats[i]);
    fprintf(f, "\n");
    fclose(f);
}

/* ---- Private temporary directory ----------------------------------------- */

static char fz_dir[512];

/* Remove every file of the private directory (it holds no subdirectories). */
static void fz_clean_dir(void)
{
    DIR *d = opendir(fz_dir);
    struct dirent *e;

    if (!d)
        return;
    while ((e = readdir(d))) {
        char p[1024];
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(p, sizeof(p), "%s/%s", fz_dir, e->d_name);
        unlink(p);
    }
    closedir(d);
}

static void fz_rm_dir(void)
{
    fz_clean_dir();
    rmdir(fz_dir);
}

/*
 * Make a private directory for this process under $TMPDIR, or /dev/shm
 * (tmpfs: no disk I/O) when TMPDIR is not set, or /tmp; every file the
 * target makes or opens is in it (fz_path).  Removed at exit.  Why no chdir
 * into it: libFuzzer opens the corpus and input paths given on the command
 * line after LLVMFuzzerInitialize, relative to the caller's directory.
 * A crash (abort) leaves the directory behind: fuzz-lib-run.sh points
 * TMPDIR at a directory of its own, which it removes.
 */
static void fz_make_dir(const char *what)
{
    const char *base = getenv("TMPDIR");

    if ((!base || !*base) && access("/dev/shm", W_OK) == 0)
        base = "/dev/shm";
    if (!base || !*base)
        base = "/tmp";
    snprintf(fz_dir, sizeof(fz_dir), "%s/qednbd-%s.XXXXXX", base, what);
    if (!mkdtemp(fz_dir)) {
        fprintf(stderr, "mkdtemp %s: %s\n", fz_dir, strerror(errno));
        exit(1);
    }
    atexit(fz_rm_dir);
    atexit(fz_stats_write);
}

/* @name in the private directory (a static buffer per call site slot). */
static const char *fz_path(const char *name)
{
    static char buf[4][1024];
    static unsigned i;
    char *p = buf[i++ % 4];

    snprintf(p, sizeof(buf[0]), "%s/%s", fz_dir, name);
    return p;
}

#endif /* FUZZ_UTIL_H */
