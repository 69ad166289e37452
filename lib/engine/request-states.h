/*
 * request-states.h - the states of the request machine, each declared once.
 *
 * An X-macro list: every line is QED_REQ_STATE(id, name, handler), the enum
 * value, the name debug logs print, and the function that runs the state.
 * The includer defines QED_REQ_STATE first; qed-image.h makes the enum of
 * the list, request-internal.h the handlers' prototypes and request.c the
 * table of names and handlers the driver loops over, so no state can lack a
 * name or a handler.  No include guard: it is meant to be included more than
 * once.
 *
 * A state named *_WAIT waits for what its comment names: the driver enters
 * its handler again when the last of those completes (qed_req_resume).  The
 * other states are actions that run at once and end by naming the next
 * state.  The list follows the life of a write: the queue, the L2 lookup,
 * the run, then an allocation from NEED_CHECK to the L1 update; then the
 * states of block status, flush, resize and clean.
 */

/* Action: the first step after submission; picks the path for the type (request.c). */
QED_REQ_STATE(RS_START, "START", qed_rs_start)
/* Waits to reach the head of the allocating-write queue (alloc-queue.c). */
QED_REQ_STATE(RS_QUEUE_WAIT, "QUEUE_WAIT", qed_rs_queue_wait)
/* Action: start the next run at cur_pos (get its L2 table), or finish. */
QED_REQ_STATE(RS_NEXT, "NEXT", qed_rs_next)
/* Waits for the L2 table covering cur_pos to load (request-lookup.c). */
QED_REQ_STATE(RS_L2_LOAD_WAIT, "L2_LOAD_WAIT", qed_rs_l2_load_wait)
/* Waits for room in the L2 cache, then goes to r->resume (request-lookup.c). */
QED_REQ_STATE(RS_L2_ROOM_WAIT, "L2_ROOM_WAIT", qed_rs_l2_room_wait)
/* Action: handle the run at cur_pos given its L2 table, by type (request-run.c). */
QED_REQ_STATE(RS_RUN, "RUN", qed_rs_run)
/* Waits for a data read, an in-place write, a backing read or a punch. */
QED_REQ_STATE(RS_DATA_WAIT, "DATA_WAIT", qed_rs_data_wait)
/* Action: set NEED_CHECK if this is the first allocation (request-alloc.c). */
QED_REQ_STATE(RS_ALLOC_BEGIN, "ALLOC_BEGIN", qed_rs_alloc_begin)
/* Waits for the header write that sets NEED_CHECK. */
QED_REQ_STATE(RS_HDR_WAIT, "HDR_WAIT", qed_rs_hdr_wait)
/* Waits for the flush that makes NEED_CHECK durable. */
QED_REQ_STATE(RS_HDR_FLUSH_WAIT, "HDR_FLUSH_WAIT", qed_rs_hdr_flush_wait)
/* Action: take clusters (and an L2 table) from the end of the file. */
QED_REQ_STATE(RS_ALLOC_CLUSTERS, "ALLOC_CLUSTERS", qed_rs_alloc_clusters)
/* Waits for the backing reads that fill a partial cluster. */
QED_REQ_STATE(RS_COW_WAIT, "COW_WAIT", qed_rs_cow_wait)
/* Waits for the reservation (fallocate) of fresh clusters written sparsely. */
QED_REQ_STATE(RS_ALLOC_RESERVE_WAIT, "ALLOC_RESERVE_WAIT", qed_rs_alloc_reserve_wait)
/* Action: write head + data + tail into the new clusters. */
QED_REQ_STATE(RS_ALLOC_WRITE, "ALLOC_WRITE", qed_rs_alloc_write)
/* Waits for that data write. */
QED_REQ_STATE(RS_ALLOC_WRITE_WAIT, "ALLOC_WRITE_WAIT", qed_rs_alloc_write_wait)
/* Waits for the data flush before the L2 update (backing file, new table). */
QED_REQ_STATE(RS_ALLOC_FLUSH_WAIT, "ALLOC_FLUSH_WAIT", qed_rs_alloc_flush_wait)
/* Action: set the L2 entries; write a new table, or join the group commit. */
QED_REQ_STATE(RS_L2_UPDATE, "L2_UPDATE", qed_rs_l2_update)
/* Waits for its group commit batch (L2 entries of an existing table; group-commit.c). */
QED_REQ_STATE(RS_GC_WAIT, "GC_WAIT", qed_rs_gc_wait)
/* Waits for the write of a whole new L2 table. */
QED_REQ_STATE(RS_L2_WRITE_WAIT, "L2_WRITE_WAIT", qed_rs_l2_write_wait)
/* Waits for the flush of a new L2 table before the L1 update. */
QED_REQ_STATE(RS_L2_FLUSH_WAIT, "L2_FLUSH_WAIT", qed_rs_l2_flush_wait)
/* Waits for the L1 entry write. */
QED_REQ_STATE(RS_L1_WRITE_WAIT, "L1_WRITE_WAIT", qed_rs_l1_write_wait)
/* Action: the run is allocated and mapped; move on to the next run. */
QED_REQ_STATE(RS_ALLOC_DONE, "ALLOC_DONE", qed_rs_alloc_done)
/* Waits for block status of the backing image (request-run.c). */
QED_REQ_STATE(RS_BS_BACKING_WAIT, "BS_BACKING_WAIT", qed_rs_bs_backing_wait)
/* Waits for the final fdatasync (FLUSH, FUA, RESIZE) (request-header.c). */
QED_REQ_STATE(RS_FLUSH_WAIT, "FLUSH_WAIT", qed_rs_flush_wait)
/* Action: write the header with the new size. */
QED_REQ_STATE(RS_RESIZE_BEGIN, "RESIZE_BEGIN", qed_rs_resize_begin)
/* Waits for that header write. */
QED_REQ_STATE(RS_RESIZE_HDR_WAIT, "RESIZE_HDR_WAIT", qed_rs_resize_hdr_wait)
/* Action: flush before clearing NEED_CHECK. */
QED_REQ_STATE(RS_CLEAN_BEGIN, "CLEAN_BEGIN", qed_rs_clean_begin)
/* Waits for that flush. */
QED_REQ_STATE(RS_CLEAN_FLUSH_WAIT, "CLEAN_FLUSH_WAIT", qed_rs_clean_flush_wait)
/* Waits for the header write that clears NEED_CHECK. */
QED_REQ_STATE(RS_CLEAN_HDR_WAIT, "CLEAN_HDR_WAIT", qed_rs_clean_hdr_wait)
/* Finished; the callback is delivered or deferred.  Nothing runs here. */
QED_REQ_STATE(RS_DONE, "DONE", qed_rs_done)
