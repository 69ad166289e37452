/*
 * fixture.h - what the engine tests that drive lib/ directly share:
 * a private event loop with the test I/O backend (qed-io-test.h), a private
 * temporary directory removed with everything in it, and a log callback that
 * drops the messages a test provokes on purpose.  Header-only: each test
 * program includes it once.
 */
#ifndef QED_TEST_FIXTURE_H
#define QED_TEST_FIXTURE_H

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <criterion/criterion.h>
#include <ev.h>

#include "qed-io-test.h"
#include "qed.h"

struct engine_fixture {
    struct ev_loop *loop;
    qed_aio *aio;      /* QED_AIO_TEST, in auto mode after ef_setup() */
    char dir[64];      /* /tmp/qed-test-NAME-XXXXXX */
};

/* A qed_set_log() callback that drops everything. */
static inline void ef_quiet_log(enum qed_log_level level, const char *msg, void *opaque)
{
    (void)level;
    (void)msg;
    (void)opaque;
}

/* A new loop, a test I/O engine in auto mode, and a directory for @name. */
static inline void ef_setup(struct engine_fixture *f, const char *name)
{
    memset(f, 0, sizeof(*f));
    f->loop = ev_loop_new(EVFLAG_AUTO);
    cr_assert_not_null(f->loop);
    cr_assert_eq(qed_aio_new(f->loop, QED_AIO_TEST, &f->aio), 0);
    qed_aio_test_set_auto(f->aio, true);
    snprintf(f->dir, sizeof(f->dir), "/tmp/qed-test-%s-XXXXXX", name);
    cr_assert_not_null(mkdtemp(f->dir), "mkdtemp: %s", strerror(errno));
}

static inline int ef_rm_entry(const char *path, const struct stat *st, int flag,
                              struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Remove the directory and free the engine and the loop (images closed first). */
static inline void ef_teardown(struct engine_fixture *f)
{
    if (f->dir[0])
        nftw(f->dir, ef_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (f->aio)
        qed_aio_free(f->aio);
    if (f->loop)
        ev_loop_destroy(f->loop);
    memset(f, 0, sizeof(*f));
}

#endif /* QED_TEST_FIXTURE_H */
