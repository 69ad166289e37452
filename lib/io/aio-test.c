/*
 * aio-test.c - the test I/O backend (QED_AIO_TEST), controlled through
 * qed-io-test.h.
 *
 * Every submitted I/O is held, in submission order, until the test completes
 * it with qed_aio_test_complete(), in any order, either for real (performed
 * with qed_io_run_sync on the calling thread) or failed with a chosen error.
 * In auto mode an idle watcher completes the held I/Os on the next loop turn,
 * oldest first.
 *
 * The failure rule is applied at submission: the nth matching I/O submitted
 * after qed_aio_test_fail_nth() is marked with the error, and whoever
 * completes it later (auto mode or the test with err == 0) fails it with that
 * error.  The rule fires once.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qed-io-test.h"
#include "qed-log.h"

struct test_held {
    struct qed_io *io;
    int err;                      /* error marked by the failure rule, or 0 */
};

struct test_priv {
    struct test_held *held;       /* held I/Os, oldest first */
    size_t nheld, cap;

    bool auto_mode;
    ev_idle idle;                 /* auto mode: completes held I/Os */

    /* Failure rule */
    bool rule_on;
    unsigned rule_mask;
    unsigned rule_nth;
    int rule_err;
    unsigned rule_seen;           /* matching I/Os submitted since the rule was set */

    void (*observer)(struct qed_io *io, int err, void *opaque);
    void *observer_opaque;

    uint64_t counts[QED_IO_ALLOCATE + 1];
    bool *freed;                  /* set by destroy while the idle callback runs */
};

static struct test_priv *test_priv(qed_aio *aio)
{
    return aio->priv;
}

static void test_update_idle(qed_aio *aio)
{
    struct test_priv *p = test_priv(aio);
    bool want = p->auto_mode && p->nheld > 0;

    if (want && !ev_is_active(&p->idle))
        ev_idle_start(aio->loop, &p->idle);
    else if (!want && ev_is_active(&p->idle))
        ev_idle_stop(aio->loop, &p->idle);
}

static void test_submit(qed_aio *aio, struct qed_io *io)
{
    struct test_priv *p = test_priv(aio);
    int err = 0;

    if (p->nheld == p->cap) {
        size_t ncap = p->cap ? p->cap * 2 : 16;
        struct test_held *n = realloc(p->held, ncap * sizeof(*n));

        if (!n) {
            /* submit cannot fail and must not call done; the test engine
             * is for tests only, so running out of memory here is fatal. */
            qed_log(QED_LOG_ERROR, "test aio: out of memory holding an I/O");
            abort();
        }
        p->held = n;
        p->cap = ncap;
    }
    if (p->rule_on && (unsigned)io->op < 32 && (p->rule_mask & (1u << io->op))) {
        if (p->rule_seen == p->rule_nth) {
            err = p->rule_err;
            p->rule_on = false;   /* the rule fires once */
        }
        p->rule_seen++;
    }
    p->held[p->nheld].io = io;
    p->held[p->nheld].err = err;
    p->nheld++;
    test_update_idle(aio);
}

/* Remove held entry @i and perform or fail it, then run done. */
static void test_finish(qed_aio *aio, size_t i, int err)
{
    struct test_priv *p = test_priv(aio);
    struct qed_io *io = p->held[i].io;

    if (err == 0)
        err = p->held[i].err;
    /* Why remove before any callback: the observer and done may submit or
     * complete other I/Os, and must see a consistent list. */
    memmove(&p->held[i], &p->held[i + 1], (p->nheld - i - 1) * sizeof(p->held[0]));
    p->nheld--;
    test_update_idle(aio);

    if ((unsigned)io->op <= QED_IO_ALLOCATE)
        p->counts[io->op]++;
    if (p->observer)
        p->observer(io, err, p->observer_opaque);
    if (err < 0)
        io->res = err;
    else
        qed_io_run_sync(io);
    qed_aio_complete(aio, io);
}

static void test_idle_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
    qed_aio *aio = w->data;
    struct test_priv *p = test_priv(aio);
    size_t n = p->nheld;
    bool freed = false;

    (void)loop;
    (void)revents;
    /* A done callback may free the engine once nothing is in flight. */
    p->freed = &freed;
    /* Only the I/Os held when this turn started: those submitted by done
     * callbacks now wait for the next turn, like real completions would. */
    while (n-- > 0 && p->auto_mode && p->nheld > 0) {
        test_finish(aio, 0, 0);
        if (freed)
            return;
    }
    p->freed = NULL;
}

static void test_destroy(qed_aio *aio)
{
    struct test_priv *p = test_priv(aio);

    if (!p)
        return;
    if (p->nheld)
        qed_log(QED_LOG_ERROR, "test aio engine freed with %zu I/Os held", p->nheld);
    if (ev_is_active(&p->idle))
        ev_idle_stop(aio->loop, &p->idle);
    if (p->freed)
        *p->freed = true;
    free(p->held);
    free(p);
    aio->priv = NULL;
}

static const struct qed_aio_ops test_ops = {.name = "test", .submit = test_submit, .destroy = test_destroy};

int qed_aio_test_init(qed_aio *aio)
{
    struct test_priv *p = calloc(1, sizeof(*p));

    if (!p)
        return -ENOMEM;
    ev_idle_init(&p->idle, test_idle_cb);
    /* Max priority, like the deferred calls: a lower-priority idle watcher
     * would starve while other watchers stay busy. */
    ev_set_priority(&p->idle, EV_MAXPRI);
    p->idle.data = aio;
    aio->priv = p;
    aio->ops = &test_ops;
    return 0;
}

/* The control functions below trust that @aio is a test engine. */

size_t qed_aio_test_pending(qed_aio *aio)
{
    return test_priv(aio)->nheld;
}

struct qed_io *qed_aio_test_peek(qed_aio *aio, size_t i)
{
    struct test_priv *p = test_priv(aio);

    return i < p->nheld ? p->held[i].io : NULL;
}

int qed_aio_test_complete(qed_aio *aio, size_t i, int err)
{
    struct test_priv *p = test_priv(aio);

    if (i >= p->nheld)
        return -ENOENT;
    /* Accept EIO as well as -EIO, like qed_aio_test_fail_nth. */
    test_finish(aio, i, err > 0 ? -err : err);
    return 0;
}

void qed_aio_test_set_auto(qed_aio *aio, bool on)
{
    test_priv(aio)->auto_mode = on;
    test_update_idle(aio);
}

void qed_aio_test_fail_nth(qed_aio *aio, unsigned op_mask, unsigned nth, int err)
{
    struct test_priv *p = test_priv(aio);

    p->rule_on = err != 0;
    p->rule_mask = op_mask;
    p->rule_nth = nth;
    p->rule_err = err > 0 ? -err : err;
    p->rule_seen = 0;
}

void qed_aio_test_set_observer(qed_aio *aio, void (*fn)(struct qed_io *io, int err, void *opaque),
                               void *opaque)
{
    struct test_priv *p = test_priv(aio);

    p->observer = fn;
    p->observer_opaque = fn ? opaque : NULL;
}

uint64_t qed_aio_test_count(qed_aio *aio, enum qed_io_op op)
{
    struct test_priv *p = test_priv(aio);

    return (unsigned)op <= QED_IO_ALLOCATE ? p->counts[op] : 0;
}
