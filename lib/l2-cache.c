/*
 * l2-cache.c - a bounded, reference-counted cache of L2 tables.
 *
 * Entries are found by the table's host offset.  A referenced entry is never
 * evicted; when every entry is referenced the cache grows past its capacity
 * and shrinks back as references drop.  An entry being loaded is already in
 * the cache (state L2_LOADING), so a second miss on the same table finds it
 * and waits instead of reading the table again.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "qed-image.h"

static unsigned l2_bucket(uint64_t offset)
{
    uint64_t x = offset >> 12;
    x ^= x >> 17;
    x *= 0x9e3779b97f4a7c15ull;
    return (unsigned)(x >> 56) % QED_L2_HASH;
}

void qed_l2_cache_init(struct qed_l2_cache *c, unsigned max)
{
    memset(c, 0, sizeof(*c));
    c->max = max ? max : QED_DEFAULT_L2_CACHE_TABLES;
}

static void lru_unlink(struct qed_l2_cache *c, struct qed_l2 *e)
{
    if (e->lprev)
        e->lprev->lnext = e->lnext;
    else
        c->mru = e->lnext;
    if (e->lnext)
        e->lnext->lprev = e->lprev;
    else
        c->lru = e->lprev;
    e->lprev = e->lnext = NULL;
}

static void lru_push_front(struct qed_l2_cache *c, struct qed_l2 *e)
{
    e->lprev = NULL;
    e->lnext = c->mru;
    if (c->mru)
        c->mru->lprev = e;
    c->mru = e;
    if (!c->lru)
        c->lru = e;
}

static void l2_free(struct qed_l2 *e)
{
    free(e->t);
    free(e);
}

/* Take @e out of the hash and the LRU list. */
static void l2_remove(struct qed_l2_cache *c, struct qed_l2 *e)
{
    struct qed_l2 **pp = &c->hash[l2_bucket(e->offset)];

    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = e->hnext;
    e->hnext = NULL;
    lru_unlink(c, e);
    e->cached = false;
    c->count--;
}

/* Evict unreferenced entries, least recently used first, while over capacity. */
static void l2_shrink(struct qed_l2_cache *c)
{
    struct qed_l2 *e = c->lru;

    while (c->count > c->max && e) {
        struct qed_l2 *prev = e->lprev;
        if (e->ref == 0) {
            l2_remove(c, e);
            l2_free(e);
        }
        e = prev;
    }
}

void qed_l2_cache_destroy(struct qed_l2_cache *c)
{
    struct qed_l2 *e = c->mru;

    while (e) {
        struct qed_l2 *next = e->lnext;
        l2_free(e);
        e = next;
    }
    memset(c->hash, 0, sizeof(c->hash));
    c->mru = c->lru = NULL;
    c->count = 0;
}

struct qed_l2 *qed_l2_cache_get(struct qed_l2_cache *c, uint64_t offset)
{
    struct qed_l2 *e;

    for (e = c->hash[l2_bucket(offset)]; e; e = e->hnext) {
        if (e->offset == offset) {
            e->ref++;
            lru_unlink(c, e);
            lru_push_front(c, e);
            c->hits++;
            return e;
        }
    }
    c->misses++;
    return NULL;
}

struct qed_l2 *qed_l2_cache_insert(struct qed_l2_cache *c, struct qed_image *img, uint64_t offset,
                                   enum qed_l2_state state)
{
    struct qed_l2 *e = calloc(1, sizeof(*e));
    unsigned b;

    if (!e)
        return NULL;
    e->t = calloc(1, img->g.table_bytes);
    if (!e->t) {
        free(e);
        return NULL;
    }
    e->offset = offset;
    e->ref = 1;
    e->state = state;
    e->img = img;
    e->cached = true;
    b = l2_bucket(offset);
    e->hnext = c->hash[b];
    c->hash[b] = e;
    lru_push_front(c, e);
    c->count++;
    l2_shrink(c);
    return e;
}

void qed_l2_cache_forget(struct qed_l2_cache *c, struct qed_l2 *e)
{
    if (e->cached)
        l2_remove(c, e);
}

void qed_l2_cache_unref(struct qed_l2_cache *c, struct qed_l2 *e)
{
    if (--e->ref > 0)
        return;
    if (!e->cached) {
        l2_free(e);
        return;
    }
    l2_shrink(c);
}
