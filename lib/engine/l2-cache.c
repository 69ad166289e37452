/*
 * l2-cache.c - a bounded, reference-counted cache of L2 tables.
 *
 * Entries are found by the table's host offset.  A referenced entry is never
 * evicted.  An entry being loaded is already in the cache (state L2_LOADING),
 * so a second miss on the same table finds it and waits instead of reading
 * the table again.
 *
 * Memory bound.  The cache counts the bytes of every table it allocated and
 * has not freed yet (bytes), including tables that are referenced, loading,
 * or forgotten but still held.  The engine (request.c) inserts a table only
 * after qed_l2_cache_make_room() said it fits, and otherwise waits until a
 * table is released, so bytes never exceeds max_bytes.  max_bytes is at
 * least one table: a request holds at most one table at a time, and a
 * request holding one finishes with it without waiting for room or for the
 * allocating-write queue, so one table lets every request make progress, in
 * turn.  (The earlier floor of 4 tables came with a cache that simply grew
 * past its capacity while tables were in use; nothing depended on it, and it
 * broke the byte bound for tables of 16 MiB or more.)  qed_l2_cache_insert()
 * itself does not check the bound: it is the mechanism, the engine the policy.
 */
#include "config.h"

#include <stdlib.h>
#include <endian.h>
#include <string.h>
#include <sys/mman.h>

#include "checked.h"

#include "qed-image.h"

static unsigned l2_bucket(uint64_t offset)
{
    uint64_t x = offset >> 12;
    x ^= x >> 17;
    x *= 0x9e3779b97f4a7c15ull;
    return (unsigned)(x >> 56) % QED_L2_HASH;
}

void qed_l2_cache_init(struct qed_l2_cache *c, unsigned max_tables, uint64_t max_bytes,
                       uint64_t table_bytes)
{
    uint64_t tables = max_tables ? max_tables : QED_DEFAULT_L2_CACHE_TABLES;
    uint64_t bound;

    memset(c, 0, sizeof(*c));
    c->table_bytes = table_bytes ? table_bytes : 1;
    if (qed_mul_overflows(tables, c->table_bytes, &bound))
        bound = UINT64_MAX;
    if (max_bytes && bound > max_bytes)
        bound = max_bytes;
    /* Whole tables, and always one: see "Memory bound" above. */
    tables = bound / c->table_bytes;
    if (tables == 0)
        tables = 1;
    c->max_bytes = tables * c->table_bytes;
    c->max = tables > UINT32_MAX ? UINT32_MAX : (unsigned)tables;
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

/*
 * Tables of 1 MiB and more are mapped, not malloc'ed.  Why: glibc raises
 * its mmap threshold to the size of the last mapped chunk it freed (up to
 * 32 MiB), so after one evicted 16 MiB table the next ones come from the
 * heap, and freed heap memory is not given back: the process stayed 16 MiB
 * over the cache bound (tests/prod/memcap-tables.sh).  A mapping is given
 * back at once (with the fast path on, pooled slots keep their mapping and
 * give their pages back with MADV_DONTNEED: l2_free).  Smaller tables are loaded often and cost a syscall pair
 * each if mapped, so they stay with malloc.
 */
#define L2_MMAP_MIN (1u << 20)

static uint64_t *l2_table_alloc(uint64_t bytes)
{
    if (bytes < L2_MMAP_MIN) {
        /* Why aligned: with cache=none (O_DIRECT) a table whose buffer is
         * not QED_DIO_ALIGN-aligned goes through a bounce buffer and a copy
         * on the loop at every load and write (direct-io.c); the mapped ones
         * are page-aligned already. */
        void *p;
        if (posix_memalign(&p, QED_DIO_ALIGN, bytes) != 0)
            return NULL;
        return memset(p, 0, bytes);
    }
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p; /* anonymous mappings are zeroed */
}

static void l2_table_free(uint64_t *t, uint64_t bytes)
{
    if (bytes < L2_MMAP_MIN)
        free(t);
    else if (t)
        munmap(t, bytes);
}

static void l2_slot_free(struct qed_l2_cache *c, struct qed_l2_slot *s)
{
    l2_table_free(s->t, c->table_bytes);
    free(s);
}

/*
 * A slot for a new entry: from the pool, or new.  Why reuse rather than
 * free with the fast path on: another thread may be reading the slot's
 * memory this very moment (fast-path.c); it finds the sequence odd and
 * gives up, but the memory must still be there.  The pool never holds more
 * than the cache's bound: a slot is made only when the pool is empty, so
 * the slots in existence are at most the most tables the cache ever held.
 */
static struct qed_l2_slot *l2_slot_get(struct qed_l2_cache *c, bool zero)
{
    struct qed_l2_slot *s = c->pool;

    if (s) {
        c->pool = s->next;
        s->next = NULL;
        /* seq is odd: no reader trusts it.  A load overwrites it whole (a
         * read past the end zero-fills), and a mapped slot was given back
         * zeroed when pooled (l2_free); only a new table in a heap slot
         * needs clearing. */
        if (zero && c->table_bytes < L2_MMAP_MIN)
            memset(s->t, 0, c->table_bytes);
        return s;
    }
    s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->seq = 1; /* odd: not published */
    s->t = l2_table_alloc(c->table_bytes);
    if (!s->t) {
        free(s);
        return NULL;
    }
    return s;
}

static void l2_free(struct qed_l2_cache *c, struct qed_l2 *e)
{
    c->bytes -= c->table_bytes;
    if (c->pooled) {
        /* A mapped table's pages go back to the system now, as when it is
         * unmapped, but the mapping stays for a reader that still looks
         * (it reads zeros, and the sequence tells it to give up). */
        if (c->table_bytes >= L2_MMAP_MIN)
            (void)madvise(e->slot->t, c->table_bytes, MADV_DONTNEED);
        e->slot->next = c->pool;
        c->pool = e->slot;
    } else {
        l2_slot_free(c, e->slot);
    }
    free(e);
}

/*
 * Other threads must stop reading @e's slot: take it out of img->pub and
 * make its sequence odd before anything changes the memory (the release
 * fence orders the odd sequence before every later store to the slot; a
 * reader that saw such a store then sees the sequence changed).
 */
static void l2_unpublish(struct qed_l2 *e)
{
    struct qed_l2_slot *s = e->slot;

    if (!e->published)
        return;
    __atomic_store_n(&e->img->pub[e->l1_index], NULL, __ATOMIC_RELAXED);
    __atomic_store_n(&s->seq, s->seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    e->published = false;
}

void qed_l2_publish(struct qed_image *img, struct qed_l2 *e)
{
    struct qed_l2_slot *s = e->slot;

    if (!img->pub || e->published || !e->cached || e->state != L2_VALID ||
        e->l1_index >= img->g.table_entries || le64toh(img->l1[e->l1_index]) != e->offset)
        return;
    /* A corrupt L1 entry that names the L1 table as an L2 table: the owner
     * refuses to write through it (request-run.c, run_would_write_l1), so
     * it is not published, and its reads go to the owner too. */
    if (e->offset >= img->h.l1_table_offset &&
        e->offset - img->h.l1_table_offset < img->g.table_bytes)
        return;
    __atomic_store_n(&s->l1_index, e->l1_index, __ATOMIC_RELAXED);
    /* The table's contents and its index before the even sequence, and the
     * even sequence before the pointer that leads readers to it. */
    __atomic_store_n(&s->seq, s->seq + 1, __ATOMIC_RELEASE);
    __atomic_store_n(&img->pub[e->l1_index], s, __ATOMIC_RELEASE);
    e->published = true;
}

/* Take @e out of the hash and the LRU list (and out of other threads' reach). */
static void l2_remove(struct qed_l2_cache *c, struct qed_l2 *e)
{
    struct qed_l2 **pp = &c->hash[l2_bucket(e->offset)];

    l2_unpublish(e);

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
            l2_free(c, e);
        }
        e = prev;
    }
}

bool qed_l2_cache_make_room(struct qed_l2_cache *c)
{
    struct qed_l2 *e = c->lru;

    while (c->bytes + c->table_bytes > c->max_bytes && e) {
        struct qed_l2 *prev = e->lprev;
        if (e->ref == 0) {
            l2_remove(c, e);
            l2_free(c, e);
        }
        e = prev;
    }
    return c->bytes + c->table_bytes <= c->max_bytes;
}

void qed_l2_cache_drop(struct qed_l2_cache *c)
{
    struct qed_l2 *e = c->mru;

    while (e) {
        struct qed_l2 *next = e->lnext;
        /* Out of other threads' reach before the slot goes to the pool
         * (or is freed): img->pub must never lead to a dropped table. */
        l2_unpublish(e);
        l2_free(c, e);
        e = next;
    }
    memset(c->hash, 0, sizeof(c->hash));
    c->mru = c->lru = NULL;
    c->count = 0;
}

void qed_l2_cache_destroy(struct qed_l2_cache *c)
{
    qed_l2_cache_drop(c);
    while (c->pool) {
        struct qed_l2_slot *s = c->pool;
        c->pool = s->next;
        l2_slot_free(c, s);
    }
}

bool qed_l2_cache_holds(const struct qed_l2_cache *c, uint64_t offset)
{
    for (const struct qed_l2 *e = c->hash[l2_bucket(offset)]; e; e = e->hnext)
        if (e->offset == offset)
            return true;
    return false;
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
    e->slot = l2_slot_get(c, state != L2_LOADING);
    if (!e->slot) {
        free(e);
        return NULL;
    }
    e->t = e->slot->t;
    c->bytes += c->table_bytes;
    if (c->bytes > c->peak_bytes)
        c->peak_bytes = c->bytes;
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
    /* The table is evictable (or about to be freed): waiters may fit now. */
    if (c->room_head)
        qed_req_l2_room(e->img);
    if (!e->cached) {
        l2_free(c, e);
        return;
    }
    l2_shrink(c);
}
