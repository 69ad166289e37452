/*
 * req-owner.c - a request whose image is owned by another loop thread
 * (--threads): it goes to the owner through its inbox, the owner calls
 * libqed, and the completion comes back through the connection thread's
 * inbox, where the reply is built as for any completion (tx_lib_done).
 *
 * The request carries its buffers by pointer: they were allocated on the
 * connection's thread (its free lists, req-mem.c) and are freed there; the
 * owner only reads or fills them between the two messages.  The inbox
 * lock orders those accesses (what one thread wrote before posting, the
 * other sees after taking the message).  The connection holds a reference
 * for the whole trip (request.c, submit), so it outlives the request even
 * when it is closed meanwhile.
 *
 * Why every request of the image goes to the owner, FLUSH included: the
 * engine's rules (the allocating-write queue, publish after write, one
 * fdatasync at a time in the flush latch) hold because one thread runs
 * them.  A FLUSH on any connection covers every write completed before it
 * on any connection (CAN_MULTI_CONN): those writes completed on the owner
 * before their replies were sent, and the FLUSH reaches the owner after
 * the client saw them, so the owner's fdatasync starts after them.
 */
#include "config.h"

#include <errno.h>

#include "request.h"

/* On the connection's thread: the library's answer is in. */
static void hop_back(void *arg)
{
    struct req *r = arg;

    tx_lib_done(r, r->hop_ret);
}

/* On the owner: the library completed @opaque; send it home. */
static void hop_done(void *opaque, int ret)
{
    struct req *r = opaque;

    r->hop_ret = ret;
    thread_post(r->home, &r->hop, hop_back, r);
}

/* On the owner: submit. */
static void hop_run(void *arg)
{
    struct req *r = arg;
    int ret;

    ret = tx_lib_call(r, hop_done);
    if (ret < 0)
        hop_done(r, ret);
}

void tx_submit_on_owner(struct req *r)
{
    r->home = srv_self;
    thread_post(r->c->proto->exp->owner, &r->hop, hop_run, r);
}

/*
 * The fast path (lib/engine/fast-path.c): a READ, or a WRITE without FUA,
 * of clusters that are allocated and whose table the owner has cached is
 * done here, on this thread's own I/O engine, with no message to the
 * owner.  Why FUA goes to the owner: it ends in an fdatasync, and every
 * fdatasync of an image goes through the owner's flush latch, which must
 * see each write-back error.  A FLUSH from any connection still covers a
 * fast-path write: the write's data reached the file before its reply was
 * sent, the client sent the FLUSH after that reply, and the owner's
 * fdatasync starts only once the FLUSH arrives (flush-latch.c).
 */

/* On the owner: mark a fast-path write in the bitmaps added while it ran. */
static void remark_run(void *arg)
{
    struct req *r = arg;

    qed_bitmap_mark_write(r->c->proto->exp->img, r->offset, r->len);
    thread_post(r->home, &r->hop, hop_back, r);
}

/* On this thread: the library's fast path is done with @opaque. */
static void fast_done(void *opaque, int ret)
{
    struct req *r = opaque;

    if (r->remark) {
        /* A bitmap appeared while the write was in flight: the owner marks
         * the range before the client hears of the write, as it would
         * have for a write it ran itself. */
        r->hop_ret = ret;
        r->home = srv_self;
        thread_post(r->c->proto->exp->owner, &r->hop, remark_run, r);
        return;
    }
    tx_lib_done(r, ret);
}

int tx_submit_fast(struct req *r)
{
    qed_image *img = r->c->proto->exp->img;
    int ret;

    r->remark = false;
    switch (r->type) {
    case NBD_CMD_READ:
        ret = qed_read_on(img, srv_self->aio, r->offset, r->buf, r->len, fast_done, r);
        break;
    case NBD_CMD_WRITE:
        if (r->flags & NBD_CMD_FLAG_FUA)
            return -EAGAIN;
        ret = qed_write_on(img, srv_self->aio, r->offset, r->buf, r->len, 0, &r->remark,
                           fast_done, r);
        break;
    default:
        return -EAGAIN;
    }
    if (ret == 0)
        srv_self->fast_calls++;
    return ret;
}
