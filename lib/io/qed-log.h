/*
 * qed-log.h - the library's message sink (log.c), for every part of libqed.
 */
#ifndef QED_LOG_H
#define QED_LOG_H

#include <stdbool.h>

#include "qed.h"

/** qed_log - deliver a message to the configured log sink. */
void qed_log(enum qed_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** True when DEBUG messages are delivered: lets hot paths skip formatting. */
extern bool qed_log_debug;

#endif /* QED_LOG_H */
