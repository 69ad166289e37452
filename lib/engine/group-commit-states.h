/*
 * group-commit-states.h - the states of a group commit batch, each declared
 * once (group-commit.c).
 *
 * An X-macro list like request-states.h: every line is
 * QED_GC_STATE(id, name, handler).  group-commit.c makes the enum, the
 * handlers' prototypes and the table of names and handlers of it.  No
 * include guard: it is meant to be included more than once.
 *
 * A batch runs the states in this order, skipping the ones it does not
 * need; a *_WAIT state waits for the batch's I/Os in flight, and its
 * handler runs when the last of them completed.  A failed extension or
 * flush goes straight to GC_FINISH.
 */

/* Action: extend the file to the end of the highest fresh cluster, if needed. */
QED_GC_STATE(GC_EXTEND, "EXTEND", gc_extend)
/* Waits for that extension (zeros in the last bytes of the cluster). */
QED_GC_STATE(GC_EXTEND_WAIT, "EXTEND_WAIT", gc_extend_wait)
/* Action: flush the members' data before the L2 writes (rule 3), if needed. */
QED_GC_STATE(GC_FLUSH, "FLUSH", gc_flush)
/* Waits for that flush. */
QED_GC_STATE(GC_FLUSH_WAIT, "FLUSH_WAIT", gc_flush_wait)
/* Action: sort the members and write each merged stretch of entries. */
QED_GC_STATE(GC_L2_WRITE, "L2_WRITE", gc_l2_write)
/* Waits for those L2 writes; each stretch fails or succeeds alone. */
QED_GC_STATE(GC_L2_WAIT, "L2_WAIT", gc_l2_wait)
/* Action: publish the written entries and let every member go on. */
QED_GC_STATE(GC_FINISH, "FINISH", gc_finish)
