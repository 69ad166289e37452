/*
 * tool.c - what every qed-img sub-command uses: messages, size arguments,
 * the backing-confinement options, and opening and closing an image with an
 * I/O engine on the default libev loop.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "qed-img.h"

/* ---- Messages ---------------------------------------------------------- */

void errmsg(const char *fmt, ...)
{
    va_list ap;

    fputs(PROG ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* The library's messages (e.g. each problem found by check) go to stderr. */
void log_to_stderr(enum qed_log_level level, const char *msg, void *opaque)
{
    (void)opaque;
    (void)level;
    fprintf(stderr, PROG ": %s\n", msg);
}

/* ---- Parsing ----------------------------------------------------------- */

int parse_size_arg(const char *what, const char *s, uint64_t *out)
{
    int r = qed_parse_size(s, out);

    if (r == -ERANGE) {
        errmsg("%s '%s' is too large (the maximum is %" PRIu64 " bytes)", what, s, UINT64_MAX);
        return -1;
    }
    if (r < 0) {
        errmsg("invalid %s '%s': expected a number of bytes with an optional "
               "K, M, G, T, P or E suffix", what, s);
        return -1;
    }
    return 0;
}

/* ---- Opening ----------------------------------------------------------- */

/* The confinement options given (see CONFINE_LONGOPTS). */
static const char *opt_backing_dir;
static bool opt_no_backing;

bool confine_option(int c, const char *arg)
{
    if (c == OPT_BACKING_DIR)
        opt_backing_dir = arg;
    else if (c == OPT_NO_BACKING)
        opt_no_backing = true;
    else
        return false;
    return true;
}

int parse_options(int argc, char **argv, const char *optstring, const struct option *longopts,
                  bool *no_lock, option_fn take, void *ctx)
{
    int c, r;

    while ((c = getopt_long(argc, argv, optstring, longopts, NULL)) != -1) {
        if (c == 'h') {
            usage(stdout);
            return 0;
        }
        if (c == 'U' && no_lock) {
            *no_lock = true;
            continue;
        }
        if (confine_option(c, optarg))
            continue;
        r = take && c != '?' ? take(c, optarg, ctx) : 1;
        if (r >= 0)
            return r;
    }
    return -1;
}

int tool_open(struct tool_image *t, const char *path, bool read_only, bool no_lock, bool repair)
{
    struct qed_open_opts opts = { .read_only = read_only, .no_lock = no_lock,
                                  .repair_corrupt = repair,
                                  .backing_dir = opt_backing_dir,
                                  .no_backing = opt_no_backing };
    struct ev_loop *loop = ev_default_loop(0);
    char err[1024] = "";
    int r;

    t->aio = NULL;
    t->img = NULL;
    if (!loop) {
        errmsg("cannot initialise the libev event loop");
        return -1;
    }
    r = qed_aio_new(loop, QED_AIO_AUTO, &t->aio);
    if (r < 0) {
        errmsg("cannot set up file I/O: %s", strerror(-r));
        return -1;
    }
    r = qed_open(t->aio, path, &opts, &t->img, err, sizeof(err));
    if (r < 0) {
        if (err[0])
            errmsg("%s", err);
        else
            errmsg("cannot open '%s': %s", path, strerror(-r));
        qed_aio_free(t->aio);
        t->aio = NULL;
        return -1;
    }
    return 0;
}

int tool_close(struct tool_image *t)
{
    int ret = 0;

    if (t->img) {
        const char *path = qed_path(t->img);
        char *name = strdup(path ? path : "image");
        int r = qed_close(t->img);
        if (r < 0) {
            errmsg("error closing '%s': %s", name ? name : "image", strerror(-r));
            ret = -1;
        }
        free(name);
        t->img = NULL;
    }
    if (t->aio) {
        qed_aio_free(t->aio);
        t->aio = NULL;
    }
    return ret;
}
