/*
 * control-ops.c - the commands of the control socket: a request line is
 * parsed (json.c), checked, turned into operations on export images, and
 * answered with one reply line.  Every operation that touches an image
 * goes through ctl_apply, which runs it on the image's owner thread.
 *
 * Requests (one JSON object per line; unknown members are refused):
 *   {"cmd":"stats"}
 *   {"cmd":"bitmap-list","export":E}
 *   {"cmd":"bitmap-add","export":E,"name":N[,"granularity":BYTES][,"disabled":true]}
 *   {"cmd":"bitmap-remove"|"bitmap-clear"|"bitmap-enable"|"bitmap-disable","export":E,"name":N}
 * Replies: {"ok":true[,...]} or {"ok":false,"error":"TEXT","errno":"ENAME"}.
 */
#include "config.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "threads.h"

/* The commands: name, what they ask of ctl_apply, which members they take.
 * In enum ctl_kind order: ctl_apply names an operation by its kind. */
static const struct {
    const char *cmd;
    enum ctl_kind kind;
    bool image;              /* takes "export" (and runs on that export only) */
    bool bitmap;             /* takes "name" */
    bool add;                /* takes "granularity" and "disabled" */
} commands[] = {
    { "stats", CTL_EXPORT_STATS, false, false, false },
    { "bitmap-list", CTL_BITMAP_LIST, true, false, false },
    { "bitmap-add", CTL_BITMAP_ADD, true, true, true },
    { "bitmap-remove", CTL_BITMAP_REMOVE, true, true, false },
    { "bitmap-clear", CTL_BITMAP_CLEAR, true, true, false },
    { "bitmap-enable", CTL_BITMAP_ENABLE, true, true, false },
    { "bitmap-disable", CTL_BITMAP_DISABLE, true, true, false },
};
#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))
_Static_assert(NCOMMANDS == CTL_BITMAP_DISABLE + 1, "one command per kind, in order");

void ctl_error_reply(struct jbuf *b, int err, const char *msg)
{
    const char *name = strerrorname_np(-err);

    b->len = 0;
    b->overflow = false;
    jb_cstr(b, "{\"ok\":false,\"error\":");
    jb_str(b, msg);
    jb_cstr(b, ",\"errno\":");
    jb_str(b, name ? name : "EIO");
    jb_cstr(b, "}\n");
}

/* What an error of a bitmap operation means, in the operator's words. */
static const char *op_message(const struct ctl_op *op)
{
    switch (-op->ret) {
    case EEXIST: return "a bitmap of that name exists";
    case ENOENT: return "no bitmap of that name";
    case EINVAL: return op->kind == CTL_BITMAP_ADD ? "invalid granularity (a power of two "
                        "from 512 bytes to 2 GiB)" : "invalid request";
    case EUCLEAN: return "the bitmap is inconsistent: it can only be removed";
    case EROFS: return "the export is read-only";
    case ENOSPC: return "the image has as many bitmaps as it can hold";
    case EFBIG: return "no room for the bitmap (memory limit or the image's header area)";
    case EBUSY: return "an NBD client has the bitmap selected as a meta context";
    default: return strerror(-op->ret);
    }
}

/* bitmap-list: "bitmaps":[...] into op->out. */
static void list_bitmaps(struct export *e, struct ctl_op *op)
{
    unsigned n = qed_bitmap_count(e->img);

    jb_cstr(&op->out, ",\"bitmaps\":[");
    for (unsigned i = 0; i < n; i++) {
        struct qed_bitmap_info bi;

        if (qed_bitmap_info(e->img, i, &bi) < 0)
            continue;
        jb_cstr(&op->out, i ? ",{" : "{");
        jb_key(&op->out, "name", true);
        jb_str(&op->out, bi.name);
        jb_key(&op->out, "granularity", false);
        jb_u64(&op->out, bi.granularity);
        jb_key(&op->out, "enabled", false);
        jb_cstr(&op->out, bi.enabled ? "true" : "false");
        jb_key(&op->out, "inconsistent", false);
        jb_cstr(&op->out, bi.inconsistent ? "true" : "false");
        jb_key(&op->out, "dirty_bytes", false);
        jb_u64(&op->out, bi.dirty_bytes);
        jb_key(&op->out, "nbd_clients", false);
        jb_u64(&op->out, export_bitmap_users(e, bi.name));
        jb_cstr(&op->out, "}");
    }
    jb_cstr(&op->out, "]");
}

/* On the owner of @e: run the operation @arg (a struct ctl_op). */
static void apply_on_owner(struct export *e, void *arg)
{
    struct ctl_op *op = arg;
    qed_image *img = e->img;

    assert(export_owned_here(e));
    if (!img) {
        op->ret = -ESHUTDOWN;   /* closed: the server is stopping */
        return;
    }
    switch (op->kind) {
    case CTL_EXPORT_STATS: op->ret = -EINVAL; break;   /* stats_gather's, not ours */
    case CTL_BITMAP_LIST: list_bitmaps(e, op); op->ret = 0; break;
    case CTL_BITMAP_ADD:
        op->ret = qed_bitmap_add(img, op->name, op->granularity, op->disabled);
        break;
    case CTL_BITMAP_REMOVE:
        /* Why refused and not forced: a client reading a bitmap's BLOCK_STATUS
         * would get an error mid-backup; qemu-nbd keeps an exported bitmap busy.
         * The check and the withdrawal are one step under the export's bm_lock. */
        op->ret = export_bitmap_remove(e, op->name);
        break;
    case CTL_BITMAP_CLEAR: op->ret = qed_bitmap_clear(img, op->name); break;
    case CTL_BITMAP_ENABLE: op->ret = qed_bitmap_enable(img, op->name, true); break;
    case CTL_BITMAP_DISABLE: op->ret = qed_bitmap_enable(img, op->name, false); break;
    }
    /* What the handshakes offer follows every change (remove published its own). */
    if (op->kind != CTL_BITMAP_LIST && op->kind != CTL_BITMAP_REMOVE &&
        export_bitmaps_publish(e) < 0)
        srv_log(SRV_LOG_WARN, "control: out of memory: NBD clients are offered the bitmaps "
                "as they were before this %s until the next change", commands[op->kind].cmd);
}

/* Back on the control socket's thread: log and answer. */
static void apply_done(struct export *e, void *arg)
{
    struct ctl_op *op = arg;

    if (op->ret == 0 && op->out.overflow)
        op->ret = -E2BIG;
    if (op->ret < 0)
        op->msg = op_message(op);
    if (op->kind != CTL_BITMAP_LIST)
        srv_log(op->ret ? SRV_LOG_WARN : SRV_LOG_NOTICE, "control: %s of bitmap \"%s\" on "
                "export \"%s\": %s", commands[op->kind].cmd, op->name, e->name,
                op->ret ? op->msg : "done");
    op->done(op);
}

/*
 * The one place where a control command touches an image: it runs on the
 * image's owner thread (threads.h), the only one that calls libqed for it,
 * and @op->done runs back on this thread (thread 0, the control socket's).
 */
void ctl_apply(struct export *e, struct ctl_op *op)
{
    op->out.max = CTL_MAX_REPLY;
    if (exports_call_on_owner(e, apply_on_owner, apply_done, op) < 0) {
        op->ret = -ENOMEM;
        op->msg = op_message(op);
        op->done(op);
    }
}

/* "key":value,... of the @n fields at @f into @b (@first: no comma before the first). */
static void put_fields(struct jbuf *b, const struct stats_field *f, size_t n, bool first)
{
    for (size_t i = 0; i < n; i++) {
        jb_key(b, f[i].key, first && i == 0);
        jb_u64(b, f[i].value);
    }
}

/* stats: the gathered counters, by the names of SIGUSR1's lines. */
static void stats_reply(const struct stats_gather *g, void *arg)
{
    struct ctl_req *rq = arg;
    struct jbuf *b = &rq->reply;
    struct stats_field f[STATS_MAX_FIELDS];

    b->max = CTL_MAX_REPLY;
    jb_cstr(b, "{\"ok\":true,\"server\":{");
    put_fields(b, f, stats_server_fields(g, f), true);
    jb_cstr(b, "},\"exports\":[");
    for (size_t i = 0; i < srv.nexports; i++) {
        jb_cstr(b, i ? ",{" : "{");
        jb_key(b, "name", true);
        jb_str(b, srv.exports[i].name);
        put_fields(b, f, stats_export_fields(g, i, f), false);
        jb_cstr(b, "}");
    }
    /* SIGUSR1's "stats: thread" lines (it logs them with several threads only). */
    jb_cstr(b, "],\"threads\":[");
    for (unsigned t = 0; t < srv.nthreads; t++) {
        jb_cstr(b, t ? ",{" : "{");
        put_fields(b, f, stats_thread_fields(g, t, f), true);
        jb_cstr(b, "}");
    }
    jb_cstr(b, "]}\n");
    if (b->overflow)
        ctl_error_reply(b, -E2BIG, "reply too long");
    rq->finish(rq);
}

/* The reply once every op is done: the first error, or every op's output. */
static void finish(struct ctl_req *rq)
{
    struct jbuf *b = &rq->reply;

    b->max = CTL_MAX_REPLY;
    for (size_t i = 0; i < rq->nops; i++)
        if (rq->ops[i].ret < 0) {
            ctl_error_reply(b, rq->ops[i].ret, rq->ops[i].msg);
            rq->finish(rq);
            return;
        }
    jb_cstr(b, "{\"ok\":true");
    if (rq->nops)
        jb_raw(b, rq->ops[0].out.p, rq->ops[0].out.len);
    jb_cstr(b, "}\n");
    if (b->overflow)
        ctl_error_reply(b, -E2BIG, "reply too long");
    rq->finish(rq);
}

static void op_done(struct ctl_op *op)
{
    struct ctl_req *rq = op->opaque;

    if (--rq->pending == 0)
        finish(rq);
}

/* Answer @rq with an error at once. */
static void fail(struct ctl_req *rq, int err, const char *msg)
{
    rq->reply.max = CTL_MAX_REPLY;
    ctl_error_reply(&rq->reply, err, msg);
    rq->finish(rq);
}

/* Check the members of @o for command @c; NULL or what is wrong. */
static const char *check_members(const struct json_obj *o, size_t c)
{
    for (size_t i = 0; i < o->n; i++) {
        const struct json_member *m = &o->m[i];
        const char *k = m->key;

        if (strcmp(k, "cmd") == 0)
            continue;
        if ((strcmp(k, "export") == 0 && commands[c].image) ||
            (strcmp(k, "name") == 0 && commands[c].bitmap)) {
            if (m->type != JSON_STRING)
                return "\"export\" and \"name\" must be strings";
        } else if (strcmp(k, "granularity") == 0 && commands[c].add) {
            if (m->type != JSON_NUMBER || !m->is_uint || m->u > UINT32_MAX)
                return "\"granularity\" must be a number of bytes";
        } else if (strcmp(k, "disabled") == 0 && commands[c].add) {
            if (m->type != JSON_BOOL)
                return "\"disabled\" must be true or false";
        } else {
            return "unknown member for this command";
        }
    }
    if (commands[c].image && !json_get(o, "export"))
        return "\"export\" is missing";
    if (commands[c].bitmap && !json_get(o, "name"))
        return "\"name\" is missing";
    return NULL;
}

/* Make @n ops for @rq; false (after the reply) when out of memory. */
static bool alloc_ops(struct ctl_req *rq, size_t n)
{
    rq->ops = calloc(n ? n : 1, sizeof(*rq->ops));
    if (!rq->ops) {
        fail(rq, -ENOMEM, "out of memory");
        return false;
    }
    rq->nops = n;
    rq->pending = (unsigned)n;
    for (size_t i = 0; i < n; i++) {
        rq->ops[i].done = op_done;
        rq->ops[i].opaque = rq;
    }
    return true;
}

/* Run the checked command @c of @o. */
static void run(struct ctl_req *rq, const struct json_obj *o, size_t c)
{
    const struct json_member *ex = json_get(o, "export"), *nm = json_get(o, "name");
    const struct json_member *g = json_get(o, "granularity"), *d = json_get(o, "disabled");
    struct export *e;

    if (!commands[c].image) {           /* stats: every thread, every export */
        if (stats_gather(stats_reply, rq) < 0)
            fail(rq, -ENOMEM, "out of memory");
        return;
    }
    e = srv_find_export(ex->str, strlen(ex->str));
    if (!e) {
        fail(rq, -ENOENT, "no such export");
        return;
    }
    if (nm && !qed_bitmap_name_valid(nm->str)) {
        fail(rq, -EINVAL, "invalid bitmap name (1 to 255 printable ASCII characters, "
             "no space, '\"' or '\\\\')");
        return;
    }
    if (!alloc_ops(rq, 1))
        return;
    rq->ops[0].kind = commands[c].kind;
    if (nm)
        snprintf(rq->ops[0].name, sizeof(rq->ops[0].name), "%s", nm->str);
    rq->ops[0].granularity = g ? (uint32_t)g->u : 0;
    rq->ops[0].disabled = d && d->b;
    ctl_apply(e, &rq->ops[0]);
}

void ctl_request_start(struct ctl_req *rq, const char *line, size_t len)
{
    struct json_obj o;
    char arena[CTL_MAX_LINE + 1];
    char err[128];
    const struct json_member *cmd;
    const char *bad;
    size_t c;

    if (json_parse_object(line, len, &o, arena, sizeof(arena), err, sizeof(err)) < 0) {
        fail(rq, -EINVAL, err);
        return;
    }
    cmd = json_get(&o, "cmd");
    if (!cmd || cmd->type != JSON_STRING) {
        fail(rq, -EINVAL, "the request has no \"cmd\" string");
        return;
    }
    for (c = 0; c < NCOMMANDS; c++)
        if (strcmp(commands[c].cmd, cmd->str) == 0)
            break;
    if (c == NCOMMANDS) {
        fail(rq, -EOPNOTSUPP, "unknown command");
        return;
    }
    bad = check_members(&o, c);
    if (bad) {
        fail(rq, -EINVAL, bad);
        return;
    }
    run(rq, &o, c);
}

void ctl_request_free(struct ctl_req *rq)
{
    for (size_t i = 0; i < rq->nops; i++)
        jb_free(&rq->ops[i].out);
    free(rq->ops);
    rq->ops = NULL;
    rq->nops = 0;
    jb_free(&rq->reply);
}
