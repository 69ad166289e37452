/*
 * qed-io-test.h - the test I/O backend (QED_AIO_TEST) and its controls.
 * For tests, fuzzers and the crash simulator; not part of the public API.
 *
 * The test backend holds every submitted I/O until the test completes it, so
 * a test chooses the completion order, and can fail any chosen I/O.  In auto
 * mode it completes everything on the next loop turn, in submission order,
 * still applying the failure rules.
 */
#ifndef QED_IO_TEST_H
#define QED_IO_TEST_H

#include <stdbool.h>
#include <stddef.h>

#include "qed-io.h"

/*
 * The backend kind to pass to qed_aio_new() for the test backend.  It is not
 * in the public enum qed_aio_backend: users of qed.h cannot ask for it.
 */
#define QED_AIO_TEST ((enum qed_aio_backend)100)

/** Number of I/Os held and not yet completed. */
size_t qed_aio_test_pending(qed_aio *aio);

/** The @i-th held I/O in submission order (0 = oldest), or NULL. */
struct qed_io *qed_aio_test_peek(qed_aio *aio, size_t i);

/**
 * Complete the @i-th held I/O.  With @err == 0 the operation is performed
 * for real; with @err < 0 nothing is done and the I/O fails with @err.
 * Runs its done callback before returning.  Returns 0, or -ENOENT.
 */
int qed_aio_test_complete(qed_aio *aio, size_t i, int err);

/** Auto mode: complete every I/O on the next loop turn, oldest first. */
void qed_aio_test_set_auto(qed_aio *aio, bool on);

/**
 * Failure rule: the @nth (0-based) I/O submitted from now on whose op is in
 * @op_mask (bit 1<<QED_IO_READ, ...) fails with @err instead of running.
 * One rule at a time; a new call replaces it.  @err == 0 clears the rule.
 */
void qed_aio_test_fail_nth(qed_aio *aio, unsigned op_mask, unsigned nth, int err);

/**
 * Observer: called for every I/O just before it is performed (or failed),
 * with the error that will be applied.  The crash simulator uses it to record
 * writes and flushes.  NULL removes it.
 */
void qed_aio_test_set_observer(qed_aio *aio, void (*fn)(struct qed_io *io, int err, void *opaque),
                               void *opaque);

/** Counts of I/Os performed so far, by op. */
uint64_t qed_aio_test_count(qed_aio *aio, enum qed_io_op op);

/**
 * The largest copy of file data that @aio's loop thread did, or let the
 * kernel do inline in a system call it made, since the engine was made or
 * the last reset (@reset true sets it back to 0 after reading).  Any
 * backend.  Never more than QED_IO_LOOP_COPY_MAX (qed-io.h).
 */
uint64_t qed_aio_test_loop_copy_max(qed_aio *aio, bool reset);

/**
 * The file descriptor of @aio's io_uring ring (for a test to ask the kernel
 * about it with io_uring_register), or -ENOTSUP for another backend.
 */
int qed_aio_test_uring_fd(qed_aio *aio);

#endif /* QED_IO_TEST_H */
