/*
 * export-bitmaps.c - the dirty bitmaps of an export as the NBD side sees
 * them: the list of bitmap names the owner thread publishes (at open and
 * after every control change), which the handshake reads on any thread,
 * and the bitmaps NBD clients selected (bm_uses), which the control
 * socket's bitmap-remove checks on the owner.  Both are under the
 * export's bm_lock.
 *
 * Why a published copy and not libqed: only the owner calls libqed for an
 * image (threads.h), and a handshake runs on its connection's thread.
 */
#include "config.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qednbd.h"
#include "threads.h"

/* The image's bitmaps now into a new list (on the owner), or NULL. */
static struct export_bitmap_names *read_names(struct export *e)
{
    struct export_bitmap_names *bn = calloc(1, sizeof(*bn));
    unsigned n;

    if (!bn)
        return NULL;
    n = e->img ? qed_bitmap_count(e->img) : 0;
    for (unsigned i = 0; i < n && i < QED_BITMAP_MAX; i++) {
        struct qed_bitmap_info bi;

        /* Keep the library's indexes: an unreadable one stays, inconsistent. */
        if (qed_bitmap_info(e->img, i, &bi) < 0) {
            bn->b[bn->n++].inconsistent = true;
            continue;
        }
        snprintf(bn->b[bn->n].name, sizeof(bn->b[0].name), "%s", bi.name);
        bn->b[bn->n++].inconsistent = bi.inconsistent;
    }
    return bn;
}

void export_bitmaps_init(struct export *e)
{
    if (pthread_mutex_init(&e->bm_lock, NULL) != 0)
        srv_die("cannot make a lock");
    /* On the main thread, which opened the image for its owner: no thread runs yet. */
    e->bm_names = read_names(e);
    if (!e->bm_names)
        srv_die("out of memory");
}

void export_bitmaps_free(struct export *e)
{
    free(e->bm_names);
    e->bm_names = NULL;
    pthread_mutex_destroy(&e->bm_lock);
}

int export_bitmaps_publish(struct export *e)
{
    struct export_bitmap_names *bn, *old;

    assert(export_owned_here(e));
    bn = read_names(e);
    if (!bn)
        return -ENOMEM;
    pthread_mutex_lock(&e->bm_lock);
    old = e->bm_names;
    e->bm_names = bn;
    pthread_mutex_unlock(&e->bm_lock);
    free(old);
    return 0;
}

void export_bitmaps_get(struct export *e, struct export_bitmap_names *out)
{
    pthread_mutex_lock(&e->bm_lock);
    *out = *e->bm_names;
    pthread_mutex_unlock(&e->bm_lock);
}

/* The published consistent bitmap @name of @e, or NULL (under bm_lock). */
static struct export_bitmap_name *find_published(struct export *e, const char *name)
{
    for (unsigned i = 0; i < e->bm_names->n; i++)
        if (!e->bm_names->b[i].inconsistent && strcmp(e->bm_names->b[i].name, name) == 0)
            return &e->bm_names->b[i];
    return NULL;
}

/* The use record of @name on @e, or NULL (under bm_lock). */
static struct export_bitmap_use *find_use(struct export *e, const char *name)
{
    for (struct export_bitmap_use *u = e->bm_uses; u; u = u->next)
        if (strcmp(u->name, name) == 0)
            return u;
    return NULL;
}

int export_bitmap_hold(struct export *e, const char *name, struct export_bitmap_use **out)
{
    struct export_bitmap_use *u;
    size_t n = strlen(name);
    int ret = 0;

    pthread_mutex_lock(&e->bm_lock);
    u = find_use(e, name);
    if (u) {
        u->users++;
    } else if (!find_published(e, name)) {
        ret = -ENOENT;
    } else if (!(u = malloc(sizeof(*u) + n + 1))) {
        ret = -ENOMEM;
    } else {
        memcpy(u->name, name, n + 1);
        u->users = 1;
        u->next = e->bm_uses;
        e->bm_uses = u;
    }
    pthread_mutex_unlock(&e->bm_lock);
    *out = u;
    return ret;
}

void export_bitmap_release(struct export *e, struct export_bitmap_use *u)
{
    struct export_bitmap_use **pp;

    pthread_mutex_lock(&e->bm_lock);
    if (--u->users == 0)
        for (pp = &e->bm_uses; *pp; pp = &(*pp)->next)
            if (*pp == u) {
                *pp = u->next;
                free(u);
                break;
            }
    pthread_mutex_unlock(&e->bm_lock);
}

unsigned export_bitmap_users(struct export *e, const char *name)
{
    const struct export_bitmap_use *u;
    unsigned n;

    pthread_mutex_lock(&e->bm_lock);
    u = find_use(e, name);
    n = u ? u->users : 0;
    pthread_mutex_unlock(&e->bm_lock);
    return n;
}

int export_bitmap_remove(struct export *e, const char *name)
{
    struct export_bitmap_name *b;
    int ret;

    assert(export_owned_here(e));
    pthread_mutex_lock(&e->bm_lock);
    if (find_use(e, name)) {
        pthread_mutex_unlock(&e->bm_lock);
        return -EBUSY;
    }
    /* Withdrawn before the lock is let go: no handshake selects it from
     * now on, so no client holds what is being removed. */
    b = find_published(e, name);
    if (b)
        b->inconsistent = true;
    pthread_mutex_unlock(&e->bm_lock);
    ret = qed_bitmap_remove(e->img, name);
    /* Also after a failure: what is withdrawn and still there comes back. */
    export_bitmaps_publish(e);
    return ret;
}
