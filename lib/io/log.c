/*
 * log.c - the library's message sink.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>

#include "qed-log.h"

/* qed_log drops a message whose level is above the one asked for (`>`), and
 * qed_log_debug compares with `>=`: both need the levels in order of
 * verbosity. */
_Static_assert(QED_LOG_ERROR < QED_LOG_WARN && QED_LOG_WARN < QED_LOG_INFO &&
                   QED_LOG_INFO < QED_LOG_DEBUG,
               "enum qed_log_level must be ordered ERROR < WARN < INFO < DEBUG");

static void (*log_fn)(enum qed_log_level, const char *, void *);
static void *log_opaque;
static enum qed_log_level log_max = QED_LOG_WARN;
bool qed_log_debug;

void qed_set_log(void (*fn)(enum qed_log_level, const char *msg, void *opaque), void *opaque,
                 enum qed_log_level level)
{
    log_fn = fn;
    log_opaque = opaque;
    log_max = level;
    qed_log_debug = level >= QED_LOG_DEBUG;
}

void qed_log(enum qed_log_level level, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;

    if (level > log_max)
        return;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (log_fn)
        log_fn(level, buf, log_opaque);
    else
        fprintf(stderr, "libqed: %s\n", buf);
}
