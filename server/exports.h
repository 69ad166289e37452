/*
 * exports.h - the table of exports, srv.exports (exports.c).  The lookup
 * used by the handshake, srv_find_export, is declared in qednbd.h.
 */
#ifndef EXPORTS_H
#define EXPORTS_H

#include <stddef.h>

#include "qednbd.h"

/**
 * exports_add - add the export @name (@namelen bytes, not NUL terminated:
 * it may point into argv, which is never modified) serving the image
 * @path.  Fatal on a name given twice, too long, or an empty path.
 */
void exports_add(const char *name, size_t namelen, const char *path);

/**
 * exports_open - open every export's image with the options @base, and
 * reserve their tables' memory out of --max-memory.  Export k belongs to
 * thread k mod N (its owner) and is opened with that thread's qed_aio,
 * before the threads start.  Fatal on any failure, with what to do about it.
 */
void exports_open(const struct qed_open_opts *base);

/**
 * exports_close_owned - close every image owned by thread @t (flushing
 * it), on that thread (or after it exited); *@status becomes 1 on a failure.
 */
void exports_close_owned(struct srv_thread *t, int *status);

/** exports_describe - one line describing every export, for the log, into @buf. */
void exports_describe(char *buf, size_t n);

/** exports_free - free the table (after exports_close). */
void exports_free(void);

#endif /* EXPORTS_H */
