/*
 * qed-img.h - what the qed-img sub-commands share: messages and option
 * parsing, opening an image (tool.c), the read-only views' options, extent
 * walk and output helpers (view.c), and the sub-commands main.c dispatches to.
 * Only the public libqed API (qed.h) is used.
 */
#ifndef QED_IMG_H
#define QED_IMG_H

#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "qed.h"

#define PROG "qed-img"

/* ---- Messages and parsing (tool.c) -------------------------------------- */

/** errmsg - print "qed-img: MESSAGE" and a newline to stderr. */
void errmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/** log_to_stderr - the library's message callback: each message on stderr. */
void log_to_stderr(enum qed_log_level level, const char *msg, void *opaque);

/** usage - print the help text to @f (main.c). */
void usage(FILE *f);

/** parse_size_arg - parse a size option or argument, printing why it is bad.  0 or -1. */
int parse_size_arg(const char *what, const char *s, uint64_t *out);

/*
 * Backing-file confinement (--backing-dir=DIR, --no-backing), taken by every
 * command that opens an image (info, check, map, resize, bitmap) and applied to the
 * whole backing chain by the library.  Default: backing names are followed
 * as QEMU follows them.
 */
enum { OPT_BACKING_DIR = 0x100, OPT_NO_BACKING };
#define CONFINE_LONGOPTS                                                                          \
    { "backing-dir", required_argument, NULL, OPT_BACKING_DIR },                                  \
        { "no-backing", no_argument, NULL, OPT_NO_BACKING }

/* The long options parse_options() takes itself: --help and the confinement options. */
#define COMMON_LONGOPTS { "help", no_argument, NULL, 'h' }, CONFINE_LONGOPTS

/** confine_option - take a confinement option @c (with @arg); false when @c is not one. */
bool confine_option(int c, const char *arg);

/* A command's own options: take option @c (with @arg); -1 when taken, else the exit status. */
typedef int (*option_fn)(int c, const char *arg, void *ctx);

/**
 * parse_options - run getopt_long over @argc/@argv with @optstring and
 * @longopts: -h prints the help, -U sets *@no_lock (when @no_lock is not
 * NULL), the confinement options are taken, and any other option goes to
 * @take (may be NULL) with @ctx.  An option getopt does not know (it already
 * said so) ends with status 1.  Returns -1 to go on, or the exit status to
 * return at once.
 */
int parse_options(int argc, char **argv, const char *optstring, const struct option *longopts,
                  bool *no_lock, option_fn take, void *ctx);

/* ---- Opening (tool.c) --------------------------------------------------- */

struct tool_image {
    qed_aio *aio;
    qed_image *img;
};

/**
 * tool_open - open @path with an I/O engine on the default loop.  Prints the
 * library's message on failure.  @repair: a read-write open zeroes invalid
 * entries of an image marked clean (only `check -r` asks; other read-write
 * commands are refused on such an image).  Returns 0 or -1.
 */
int tool_open(struct tool_image *t, const char *path, bool read_only, bool no_lock, bool repair);

/** tool_close - close the image (flushing it) and free the engine.  Returns 0 or -1. */
int tool_close(struct tool_image *t);

/* ---- Read-only views (view.c) ------------------------------------------- */

/**
 * parse_view_args - options shared by the read-only views (info, map):
 * --json / --output=FMT, -U / --force-share, the confinement options, -h,
 * and exactly one FILE.  Returns -1 to go on, or the exit status to return
 * at once.
 */
int parse_view_args(int argc, char **argv, const char *cmd, bool *json, bool *no_lock,
                    const char **path);

/**
 * view_open - open @path read-only for a view.  The library's notice that a
 * read-only open leaves NEED_CHECK alone is not printed: info shows the
 * dirty flag and says what it means (info_explain_dirty), and for map it is
 * noise.  Returns 0 or -1, as tool_open.
 */
int view_open(struct tool_image *t, const char *path, bool no_lock);

typedef int (*extent_fn)(const struct qed_extent *e, void *opaque);

/**
 * walk_extents - describe the whole image with block status, merging
 * neighbours that qemu-img would merge, and call @fn for each merged extent
 * in order.  Returns 0, -1 after printing an error, or what @fn returned.
 */
int walk_extents(qed_image *img, extent_fn fn, void *opaque);

/** json_string - print @s as a JSON string literal. */
void json_string(FILE *f, const char *s);

/** human_size - format @v like qemu-img: three significant digits, binary units. */
void human_size(uint64_t v, char *buf, size_t len);

/* ---- Sub-commands: argv[0] is "qed-img COMMAND"; each returns the exit status. */

int cmd_create(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_resize(int argc, char **argv);
int cmd_bitmap(int argc, char **argv);

#endif /* QED_IMG_H */
