/*
 * fixture.h - what the unit tests share: a private event loop and I/O
 * engine (the test backend of qed-io-test.h, or a real one), a private
 * temporary directory removed with everything in it (also when Criterion
 * ends a test on its timeout), a watchdog timer, paths inside the
 * directory, creating and opening images, waiting for request completions
 * (checking that a callback runs once and never inside its submitting
 * call), deterministic test bytes, and a log callback that drops the
 * messages a test provokes on purpose.
 *
 * Header-only: each test program includes it once and uses what it needs.
 * A test keeps a struct test_fixture (usually inside its own fixture
 * struct), calls tf_setup() or tf_init() from its .init and tf_teardown()
 * from its .fini.
 */
#ifndef QED_TEST_FIXTURE_H
#define QED_TEST_FIXTURE_H

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <ev.h>

#include "qed-io-test.h"
#include "qed.h"

/* Loop turns a wait may take before the test fails instead of hanging. */
#define TF_MAX_TURNS 5000000

struct test_fixture {
    struct ev_loop *loop;
    qed_aio *aio;       /* after tf_setup() or tf_new_aio(); the test backend starts in auto mode */
    char dir[64];       /* /tmp/qed-test-NAME-XXXXXX, "" when the test has none */
    ev_timer watchdog;  /* after tf_watchdog() */
    bool watchdog_on;
    bool watchdog_unref;
    bool timed_out;     /* the watchdog fired */
};

/* ---- logs ---- */

/* A qed_set_log() callback that drops everything. */
static inline void tf_quiet_log(enum qed_log_level level, const char *msg, void *opaque)
{
    (void)level;
    (void)msg;
    (void)opaque;
}

/* ---- the temporary directory ---- */

/* nftw() callback of tf_rm_tree(): remove one entry (children first). */
static inline int tf_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Remove @dir and everything in it. */
static inline void tf_rm_tree(const char *dir)
{
    if (dir[0])
        nftw(dir, tf_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The directory the timeout handler removes (a copy: the handler may run
 * after the fixture that owns the directory was cleared). */
static char tf_timeout_dir[64];

/*
 * Criterion ends a test that runs past its timeout with SIGPROF (SIGALRM is
 * our own backstop), and the .fini fixture does not run then.  Remove the
 * temp directory first (fork and exec are async-signal-safe), then die of
 * the signal as Criterion expects.
 */
static inline void tf_timeout_cleanup(int sig)
{
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/rm", "rm", "-rf", tf_timeout_dir, (char *)NULL);
        _exit(127);
    }
    if (pid > 0)
        waitpid(pid, NULL, 0);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Remove @dir when the test is killed on its timeout; with @alarm_s > 0,
 * also arm an alarm of our own, in case Criterion's timeout never fires. */
static inline void tf_cleanup_on_timeout(const char *dir, unsigned alarm_s)
{
    struct sigaction sa;

    snprintf(tf_timeout_dir, sizeof(tf_timeout_dir), "%s", dir);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = tf_timeout_cleanup;
    sigaction(SIGPROF, &sa, NULL);
    if (alarm_s) {
        sigaction(SIGALRM, &sa, NULL);
        alarm(alarm_s);
    }
}

/* ---- loop, engine, watchdog ---- */

/* A new loop and, when @name is not NULL, a new directory for @name; no engine yet. */
static inline void tf_init(struct test_fixture *f, const char *name)
{
    memset(f, 0, sizeof(*f));
    f->loop = ev_loop_new(EVFLAG_AUTO);
    cr_assert_not_null(f->loop);
    if (name) {
        snprintf(f->dir, sizeof(f->dir), "/tmp/qed-test-%s-XXXXXX", name);
        cr_assert_not_null(mkdtemp(f->dir), "mkdtemp: %s", strerror(errno));
    }
}

/* The engine of @kind on the fixture's loop (the test backend in auto mode);
 * returns 0 or the negative errno of qed_aio_new. */
static inline int tf_new_aio(struct test_fixture *f, enum qed_aio_backend kind)
{
    int r = qed_aio_new(f->loop, kind, &f->aio);

    if (r == 0 && (int)kind == QED_AIO_TEST)
        qed_aio_test_set_auto(f->aio, true);
    return r;
}

/* tf_init() and an engine of @kind, which must work. */
static inline void tf_setup(struct test_fixture *f, const char *name, enum qed_aio_backend kind)
{
    int r;

    tf_init(f, name);
    r = tf_new_aio(f, kind);
    cr_assert_eq(r, 0, "qed_aio_new(%d): %s", (int)kind, strerror(-r));
}

/* The watchdog fired: note it and leave the loop, so the wait fails. */
static inline void tf_watchdog_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct test_fixture *f = w->data;

    (void)revents;
    f->timed_out = true;
    ev_break(loop, EVBREAK_ALL);
}

/* Set f->timed_out after @seconds.  With @unref the timer does not keep
 * the loop alive (EVRUN_ONCE returns when nothing else is pending). */
static inline void tf_watchdog(struct test_fixture *f, double seconds, bool unref)
{
    ev_timer_init(&f->watchdog, tf_watchdog_cb, seconds, 0.);
    f->watchdog.data = f;
    ev_timer_start(f->loop, &f->watchdog);
    f->watchdog_on = true;
    f->watchdog_unref = unref;
    if (unref)
        ev_unref(f->loop);
}

/* Remove the directory, stop the watchdog, free the engine and the loop
 * (images closed first). */
static inline void tf_teardown(struct test_fixture *f)
{
    tf_rm_tree(f->dir);
    if (f->loop && f->watchdog_on) {
        if (f->watchdog_unref)
            ev_ref(f->loop);
        ev_timer_stop(f->loop, &f->watchdog);
    }
    if (f->aio)
        qed_aio_free(f->aio);
    if (f->loop)
        ev_loop_destroy(f->loop);
    memset(f, 0, sizeof(*f));
}

/* ---- files and images ---- */

/* Path of @name inside the fixture's directory (a few rotating buffers). */
static inline const char *tf_path(const struct test_fixture *f, const char *name)
{
    static char bufs[8][PATH_MAX];
    static int next;
    char *p = bufs[next++ % 8];

    snprintf(p, PATH_MAX, "%s/%s", f->dir, name);
    return p;
}

/* Create image @name (backing file @backing inside the directory, or none). */
static inline void tf_create(const struct test_fixture *f, const char *name, uint64_t size,
                             uint32_t cs, uint32_t ts, const char *backing,
                             enum qed_backing_fmt fmt)
{
    struct qed_create_opts o = {.size = size, .cluster_size = cs, .table_size = ts,
                                .backing_file = backing ? tf_path(f, backing) : NULL,
                                .backing_fmt = fmt};
    char err[512] = "";
    int r = qed_create(tf_path(f, name), &o, err, sizeof(err));

    cr_assert_eq(r, 0, "qed_create %s: %s", name, err);
}

/* Open image @name with @o (NULL: defaults) on the fixture's engine; must work. */
static inline qed_image *tf_open(const struct test_fixture *f, const char *name,
                                 const struct qed_open_opts *o)
{
    char err[512] = "";
    qed_image *img = NULL;
    int r = qed_open(f->aio, tf_path(f, name), o, &img, err, sizeof(err));

    cr_assert_eq(r, 0, "qed_open %s: %s", name, err);
    return img;
}

/* qed_check of image @name as it is on disk (read-only, lock-free open, no engine). */
static inline struct qed_check_result tf_disk_check(const struct test_fixture *f,
                                                    const char *name)
{
    struct qed_open_opts o = {.read_only = true, .no_lock = true};
    struct qed_check_result res;
    char err[512] = "";
    qed_image *img = NULL;
    int r = qed_open(NULL, tf_path(f, name), &o, &img, err, sizeof(err));

    cr_assert_eq(r, 0, "check open %s: %s", name, err);
    r = qed_check(img, false, &res);
    cr_assert_eq(r, 0, "qed_check %s: %s", name, strerror(-r));
    qed_close(img);
    return res;
}

/* Close *@img if a test left it open (from a .fini): a test that failed may
 * leave I/O held, so the test backend completes it on its own first. */
static inline void tf_close_left_open(struct test_fixture *f, qed_image **img)
{
    if (*img) {
        qed_aio_test_set_auto(f->aio, true);
        qed_close(*img);
        *img = NULL;
    }
}

/* The byte at @pos of a tf_raw_pattern() file. */
static inline uint8_t tf_raw_byte(uint64_t pos)
{
    return (uint8_t)(0xb0 ^ (pos >> 9));
}

/* A raw file of @size bytes at @path, byte @pos being tf_raw_byte(pos). */
static inline void tf_raw_pattern(const char *path, uint64_t size)
{
    uint8_t *b = malloc(size);
    FILE *fp = fopen(path, "wb");

    cr_assert_not_null(b);
    cr_assert_not_null(fp);
    for (uint64_t i = 0; i < size; i++)
        b[i] = tf_raw_byte(i);
    cr_assert_eq(fwrite(b, 1, size, fp), size);
    fclose(fp);
    free(b);
}

/* Deterministic bytes: xorshift32 seeded with @seed. */
static inline void tf_fill(uint8_t *p, size_t n, uint32_t seed)
{
    uint32_t x = seed * 2654435761u + 0x9e3779b9u;

    if (!x)
        x = 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (uint8_t)(x >> 24);
    }
}

/* Seed for randomised tests: $QED_TEST_SEED, or the time; printed. */
static inline unsigned tf_seed(const char *what)
{
    const char *e = getenv("QED_TEST_SEED");
    unsigned s = e && *e ? (unsigned)strtoul(e, NULL, 0) : (unsigned)time(NULL);

    cr_log_info("%s: seed %u (set QED_TEST_SEED to repeat)", what, s);
    fprintf(stderr, "%s: seed %u\n", what, s);
    return s;
}

/* ---- waiting for requests ---- */

/* What a request's completion callback saw. */
struct tf_done {
    int ret;
    int calls;
};

/* True while a qed_* submit call runs: a callback seeing it breaks the API. */
static bool tf_in_submit;

/* A completion callback for struct tf_done: runs once, never inside the submitting call. */
static inline void tf_done_cb(void *opaque, int ret)
{
    struct tf_done *d = opaque;

    cr_assert(!tf_in_submit, "completion callback ran inside the submitting call");
    cr_assert_eq(d->calls, 0, "completion callback ran twice (ret %d)", ret);
    d->calls++;
    d->ret = ret;
}

/* Evaluate a submit expression with tf_in_submit set around it. */
#define TF_SUBMIT(expr)                                                                            \
    ({                                                                                             \
        tf_in_submit = true;                                                                       \
        int rc_ = (expr);                                                                          \
        tf_in_submit = false;                                                                      \
        rc_;                                                                                       \
    })

/* Have all requests of @d[0..n) completed? */
static inline bool tf_all_done(const struct tf_done *d, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (d[i].calls == 0)
            return false;
    return true;
}

/* Run the loop until every request of @d[0..n) has completed. */
static inline void tf_wait(struct test_fixture *f, const struct tf_done *d, size_t n)
{
    for (unsigned long t = 0; !tf_all_done(d, n); t++) {
        cr_assert(t < TF_MAX_TURNS && !f->timed_out, "requests never completed");
        ev_run(f->loop, EVRUN_ONCE);
    }
}

/* tf_wait(), then no I/O of the test backend may be left in flight. */
static inline void tf_wait_idle(struct test_fixture *f, const struct tf_done *d, size_t n)
{
    tf_wait(f, d, n);
    ev_run(f->loop, EVRUN_NOWAIT);
    cr_assert_eq(qed_aio_test_pending(f->aio), 0, "I/O left in flight");
}

/* Index of the I/O the test backend holds at file offset @off; fails the test if none. */
static inline size_t tf_find_pending(struct test_fixture *f, uint64_t off)
{
    for (size_t i = 0; i < qed_aio_test_pending(f->aio); i++)
        if (qed_aio_test_peek(f->aio, i)->offset == off)
            return i;
    cr_assert_fail("no pending I/O at %llu", (unsigned long long)off);
    return 0;
}

/* The result of a request submitted with return code @rc: @rc when the
 * submission failed, else what its callback got, after tf_wait_idle(). */
static inline int tf_result(struct test_fixture *f, int rc, struct tf_done *d)
{
    if (rc < 0)
        return rc;
    tf_wait_idle(f, d, 1);
    return d->ret;
}

#endif /* QED_TEST_FIXTURE_H */
