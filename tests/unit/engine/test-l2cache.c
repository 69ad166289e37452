/*
 * test-l2cache.c - unit tests of the L2 table cache (l2-cache.c): lookups,
 * LRU eviction, reference counts (a referenced table is never evicted),
 * forgetting, and, end to end through the test I/O backend, the rule that
 * two concurrent misses on one table read it once.
 *
 * The direct tests use a minimal struct qed_image (only g.table_bytes is
 * read by the cache).  Frees done by the library are observed by wrapping
 * free() at link time (-Wl,--wrap=free, see engine.am): __wrap_free records
 * each pointer, so a test can tell exactly which entries were released.
 *
 * The memory bound (issue 11, item 9) is measured independently of the
 * cache's own counter too: calloc(), posix_memalign(), mmap() and munmap()
 * are wrapped as well, and the tables (the only such allocations or
 * anonymous mappings of exactly one table's size; tables under 1 MiB come
 * from posix_memalign, aligned for O_DIRECT) are summed while they live.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <ev.h>

#include "fixture.h"
#include "qed-io-test.h"
#include "qed-image.h"

/* ---- free() tracking ---- */

void __real_free(void *p);
void __wrap_free(void *p);

#define FREED_MAX 4096
static void *freed[FREED_MAX];
static size_t nfreed;

/* Live callocs of exactly track_size bytes: the L2 tables (see above). */
void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size);

#define TRACK_MAX 64
static size_t track_size;
static void *tracked[TRACK_MAX];
static uint64_t track_live, track_peak;

static void track_add(void *p, size_t size);
static void track_remove(void *p);

void *__wrap_calloc(size_t n, size_t size)
{
    void *p = __real_calloc(n, size);

    if (p && track_size && n == 1 && size == track_size)
        track_add(p, size);
    return p;
}

/* Tables under 1 MiB are aligned allocations (l2-cache.c): the same tracking. */
int __real_posix_memalign(void **p, size_t align, size_t size);
int __wrap_posix_memalign(void **p, size_t align, size_t size);

int __wrap_posix_memalign(void **p, size_t align, size_t size)
{
    int r = __real_posix_memalign(p, align, size);

    if (r == 0 && track_size && size == track_size)
        track_add(*p, size);
    return r;
}

/* Tables of 1 MiB and more are mapped instead (l2-cache.c): the same
 * tracking for anonymous mappings of exactly track_size bytes. */
void *__real_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int __real_munmap(void *addr, size_t len);
int __wrap_munmap(void *addr, size_t len);

static void track_add(void *p, size_t size)
{
    for (int i = 0; i < TRACK_MAX; i++) {
        if (!tracked[i]) {
            tracked[i] = p;
            track_live += size;
            if (track_live > track_peak)
                track_peak = track_live;
            return;
        }
    }
}

static void track_remove(void *p)
{
    for (int i = 0; i < TRACK_MAX; i++) {
        if (tracked[i] == p) {
            tracked[i] = NULL;
            track_live -= track_size;
            return;
        }
    }
}

void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    void *p = __real_mmap(addr, len, prot, flags, fd, off);

    if (p != MAP_FAILED && track_size && len == track_size && (flags & MAP_ANONYMOUS))
        track_add(p, len);
    return p;
}

int __wrap_munmap(void *addr, size_t len)
{
    if (addr && nfreed < FREED_MAX)
        freed[nfreed++] = addr; /* a mapped table's release, as free() for the others */
    if (addr && track_size && len == track_size)
        track_remove(addr);
    return __real_munmap(addr, len);
}

static void track_start(size_t size)
{
    memset(tracked, 0, sizeof(tracked));
    track_live = track_peak = 0;
    track_size = size;
}

void __wrap_free(void *p)
{
    if (p && nfreed < FREED_MAX)
        freed[nfreed++] = p;
    if (p && track_size)
        track_remove(p);
    __real_free(p);
}

static bool was_freed(const void *p)
{
    for (size_t i = 0; i < nfreed; i++)
        if (freed[i] == p)
            return true;
    return false;
}

/* Entry pointers are compared after a free; only the addresses are kept. */
struct snap {
    const void *e, *t;
};

static struct snap snap_of(const struct qed_l2 *e)
{
    struct snap s = {e, e->t};
    return s;
}

static bool snap_freed(struct snap s)
{
    return was_freed(s.e) && was_freed(s.t);
}

static bool snap_alive(struct snap s)
{
    return !was_freed(s.e) && !was_freed(s.t);
}

/* ---- direct cache tests ---- */

static struct qed_image *IMG;
static struct qed_l2_cache *C;

static void cache_setup(unsigned max)
{
    IMG = calloc(1, sizeof(*IMG));
    cr_assert_not_null(IMG);
    IMG->g.table_bytes = 4096;
    IMG->g.table_entries = 512;
    IMG->g.cluster_size = 4096;
    C = &IMG->cache;
    qed_l2_cache_init(C, max, 0, IMG->g.table_bytes);
    nfreed = 0;
}

static void cache_teardown(void)
{
    qed_l2_cache_destroy(C);
    free(IMG);
}

static void setup3(void)
{
    cache_setup(3);
}

static struct qed_l2 *ins(uint64_t off)
{
    struct qed_l2 *e = qed_l2_cache_insert(C, IMG, off, L2_VALID);
    cr_assert_not_null(e, "insert %" PRIu64 " failed", off);
    return e;
}

/* Insert and drop the reference at once: an idle, cached table. */
static struct qed_l2 *ins_idle(uint64_t off)
{
    struct qed_l2 *e = ins(off);
    qed_l2_cache_unref(C, e);
    return e;
}

/* Is @off cached?  Looks without disturbing the LRU order or the counters. */
static bool cached(uint64_t off)
{
    for (struct qed_l2 *e = C->mru; e; e = e->lnext)
        if (e->offset == off)
            return true;
    return false;
}

#define T(o) ((uint64_t)(o) * 4096)

Test(l2cache, init_default_capacity)
{
    cache_setup(0);
    cr_assert_eq(C->max, QED_DEFAULT_L2_CACHE_TABLES);
    cr_assert_eq(C->max_bytes, QED_DEFAULT_L2_CACHE_TABLES * 4096);
    cr_assert_eq(C->count, 0);
    cr_assert_eq(C->bytes, 0);
    cache_teardown();
}

Test(l2cache, insert_returns_referenced_zeroed_entry, .init = setup3, .fini = cache_teardown)
{
    struct qed_l2 *e = qed_l2_cache_insert(C, IMG, T(5), L2_LOADING);
    cr_assert_not_null(e);
    cr_assert_eq(e->offset, T(5));
    cr_assert_eq(e->ref, 1);
    cr_assert_eq(e->state, L2_LOADING);
    cr_assert(e->cached);
    cr_assert_eq(e->img, IMG);
    for (unsigned i = 0; i < 512; i++)
        cr_assert_eq(e->t[i], 0, "entry %u not zeroed", i);
    cr_assert_eq(C->count, 1);
    qed_l2_cache_unref(C, e);
}

Test(l2cache, get_hit_takes_reference, .init = setup3, .fini = cache_teardown)
{
    struct qed_l2 *e = ins(T(2));
    e->t[7] = htole64(0x1234000);
    qed_l2_cache_unref(C, e);
    cr_assert_eq(e->ref, 0);

    struct qed_l2 *g = qed_l2_cache_get(C, T(2));
    cr_assert_eq(g, e, "hit returned a different entry");
    cr_assert_eq(g->ref, 1);
    cr_assert_eq(le64toh(g->t[7]), 0x1234000, "contents lost");
    cr_assert_eq(C->hits, 1);
    cr_assert_eq(C->misses, 0);
    qed_l2_cache_unref(C, g);
}

Test(l2cache, get_miss_counts, .init = setup3, .fini = cache_teardown)
{
    ins_idle(T(1));
    cr_assert_null(qed_l2_cache_get(C, T(2)));
    cr_assert_null(qed_l2_cache_get(C, T(1) + 4096 * 1000));
    cr_assert_eq(C->misses, 2);
    cr_assert_eq(C->hits, 0);
}

Test(l2cache, get_finds_loading_entry, .init = setup3, .fini = cache_teardown)
{
    /* A table being read is already in the cache: a second miss waits on it. */
    struct qed_l2 *e = qed_l2_cache_insert(C, IMG, T(9), L2_LOADING);
    struct qed_l2 *g = qed_l2_cache_get(C, T(9));
    cr_assert_eq(g, e);
    cr_assert_eq(g->state, L2_LOADING);
    cr_assert_eq(e->ref, 2);
    qed_l2_cache_unref(C, g);
    qed_l2_cache_unref(C, e);
}

Test(l2cache, many_offsets_in_one_bucket_range, .init = setup3, .fini = cache_teardown)
{
    /* More distinct tables than hash buckets, all found again. */
    C->max = 1000;
    for (unsigned i = 0; i < 600; i++)
        ins_idle(T(i * 4 + 1));
    cr_assert_eq(C->count, 600);
    for (unsigned i = 0; i < 600; i++) {
        struct qed_l2 *e = qed_l2_cache_get(C, T(i * 4 + 1));
        cr_assert_not_null(e, "table %u lost", i);
        cr_assert_eq(e->offset, T(i * 4 + 1));
        qed_l2_cache_unref(C, e);
    }
    cr_assert_eq(C->hits, 600);
}

Test(l2cache, count_tracks_inserts_up_to_capacity, .init = setup3, .fini = cache_teardown)
{
    ins_idle(T(1));
    cr_assert_eq(C->count, 1);
    ins_idle(T(2));
    ins_idle(T(3));
    cr_assert_eq(C->count, 3);
    ins_idle(T(4));
    cr_assert_eq(C->count, 3, "cache exceeded its capacity with idle entries");
}

Test(l2cache, evicts_least_recently_inserted, .init = setup3, .fini = cache_teardown)
{
    struct snap a = snap_of(ins_idle(T(1)));
    ins_idle(T(2));
    ins_idle(T(3));
    ins_idle(T(4));
    cr_assert_not(cached(T(1)), "the oldest table was not evicted");
    cr_assert(cached(T(2)) && cached(T(3)) && cached(T(4)));
    cr_assert(snap_freed(a), "the evicted table was not freed");
}

Test(l2cache, get_refreshes_lru_position, .init = setup3, .fini = cache_teardown)
{
    ins_idle(T(1));
    ins_idle(T(2));
    ins_idle(T(3));
    /* Touch 1: now 2 is the least recently used. */
    qed_l2_cache_unref(C, qed_l2_cache_get(C, T(1)));
    ins_idle(T(4));
    cr_assert(cached(T(1)), "a recently used table was evicted");
    cr_assert_not(cached(T(2)), "the least recently used table stayed");
    cr_assert(cached(T(3)) && cached(T(4)));
}

Test(l2cache, eviction_order_follows_use, .init = setup3, .fini = cache_teardown)
{
    ins_idle(T(1));
    ins_idle(T(2));
    ins_idle(T(3));
    qed_l2_cache_unref(C, qed_l2_cache_get(C, T(2)));
    qed_l2_cache_unref(C, qed_l2_cache_get(C, T(1)));
    /* LRU order now (oldest first): 3, 2, 1 */
    ins_idle(T(4));
    cr_assert_not(cached(T(3)));
    ins_idle(T(5));
    cr_assert_not(cached(T(2)));
    ins_idle(T(6));
    cr_assert_not(cached(T(1)));
    cr_assert(cached(T(4)) && cached(T(5)) && cached(T(6)));
}

Test(l2cache, referenced_entry_never_evicted, .init = setup3, .fini = cache_teardown)
{
    struct qed_l2 *held = ins(T(1)); /* kept referenced, and the oldest */
    struct snap hs = snap_of(held);
    ins_idle(T(2));
    ins_idle(T(3));
    ins_idle(T(4));
    ins_idle(T(5));
    cr_assert(cached(T(1)), "a referenced table was evicted");
    cr_assert(snap_alive(hs), "a referenced table was freed");
    cr_assert_not(cached(T(2)));
    cr_assert_not(cached(T(3)));
    cr_assert_eq(C->count, 3);
    qed_l2_cache_unref(C, held);
}

Test(l2cache, grows_past_max_when_all_referenced, .init = setup3, .fini = cache_teardown)
{
    struct qed_l2 *e[5];
    for (int i = 0; i < 5; i++)
        e[i] = ins(T(i + 1));
    cr_assert_eq(C->count, 5, "the cache must grow when every entry is in use");
    for (int i = 0; i < 5; i++) {
        cr_assert(cached(T(i + 1)));
        cr_assert_eq(e[i]->ref, 1);
    }
    for (int i = 0; i < 5; i++)
        qed_l2_cache_unref(C, e[i]);
}

Test(l2cache, shrinks_back_on_unref, .init = setup3, .fini = cache_teardown)
{
    struct qed_l2 *e[5];
    struct snap s[5];
    for (int i = 0; i < 5; i++) {
        e[i] = ins(T(i + 1));
        s[i] = snap_of(e[i]);
    }
    /* Dropping the newest first: the cache evicts what is unreferenced. */
    qed_l2_cache_unref(C, e[4]);
    cr_assert_eq(C->count, 4);
    cr_assert(snap_freed(s[4]));
    qed_l2_cache_unref(C, e[3]);
    cr_assert_eq(C->count, 3);
    cr_assert(snap_freed(s[3]));
    /* At capacity: further unrefs keep the entries. */
    qed_l2_cache_unref(C, e[0]);
    qed_l2_cache_unref(C, e[1]);
    qed_l2_cache_unref(C, e[2]);
    cr_assert_eq(C->count, 3);
    for (int i = 0; i < 3; i++)
        cr_assert(snap_alive(s[i]) && cached(T(i + 1)), "entry %d dropped at capacity", i);
}

Test(l2cache, shrink_skips_referenced_lru, .init = setup3, .fini = cache_teardown)
{
    struct qed_l2 *old = ins(T(1)); /* oldest, referenced */
    struct qed_l2 *mid = ins(T(2));
    struct qed_l2 *b = ins(T(3));
    struct qed_l2 *c = ins(T(4)); /* count 4 > 3 */
    cr_assert_eq(C->count, 4);
    qed_l2_cache_unref(C, mid);
    /* mid was the only unreferenced entry: it goes, the older held one stays. */
    cr_assert_not(cached(T(2)));
    cr_assert(cached(T(1)));
    cr_assert_eq(C->count, 3);
    qed_l2_cache_unref(C, old);
    qed_l2_cache_unref(C, b);
    qed_l2_cache_unref(C, c);
    cr_assert_eq(C->count, 3);
}

Test(l2cache, multiple_references_counted, .init = setup3, .fini = cache_teardown)
{
    struct qed_l2 *e = ins(T(1));
    struct qed_l2 *g1 = qed_l2_cache_get(C, T(1));
    struct qed_l2 *g2 = qed_l2_cache_get(C, T(1));
    cr_assert_eq(e->ref, 3);
    qed_l2_cache_unref(C, g1);
    qed_l2_cache_unref(C, g2);
    cr_assert_eq(e->ref, 1);
    /* Still referenced once: fill the cache, it must survive. */
    ins_idle(T(2));
    ins_idle(T(3));
    ins_idle(T(4));
    ins_idle(T(5));
    cr_assert(cached(T(1)));
    qed_l2_cache_unref(C, e);
    cr_assert_eq(e->ref, 0);
}

Test(l2cache, forget_removes_from_lookup, .init = setup3, .fini = cache_teardown)
{
    struct qed_l2 *e = ins(T(7));
    struct snap s = snap_of(e);
    qed_l2_cache_forget(C, e);
    cr_assert_eq(C->count, 0);
    cr_assert_not(e->cached);
    cr_assert_null(qed_l2_cache_get(C, T(7)), "a forgotten table is still found");
    cr_assert(snap_alive(s), "forget freed an entry that is still referenced");
    qed_l2_cache_unref(C, e);
}

Test(l2cache, forget_then_unref_frees, .init = setup3, .fini = cache_teardown)
{
    struct qed_l2 *e = ins(T(7));
    struct snap s = snap_of(e);
    qed_l2_cache_forget(C, e);
    qed_l2_cache_unref(C, e);
    cr_assert(snap_freed(s), "the last unref of a forgotten table did not free it");
}

Test(l2cache, forget_with_two_holders_frees_at_last_unref, .init = setup3,
     .fini = cache_teardown)
{
    struct qed_l2 *e = ins(T(7));
    struct qed_l2 *g = qed_l2_cache_get(C, T(7));
    struct snap s = snap_of(e);
    qed_l2_cache_forget(C, e);
    qed_l2_cache_forget(C, g); /* a second forget is harmless */
    cr_assert_eq(C->count, 0);
    qed_l2_cache_unref(C, e);
    cr_assert(snap_alive(s));
    qed_l2_cache_unref(C, g);
    cr_assert(snap_freed(s));
}

Test(l2cache, reinsert_after_forget_is_a_new_entry, .init = setup3, .fini = cache_teardown)
{
    struct qed_l2 *e = ins(T(7));
    qed_l2_cache_forget(C, e);
    struct qed_l2 *n = ins(T(7));
    cr_assert_neq(n, e);
    cr_assert_eq(qed_l2_cache_get(C, T(7)), n);
    cr_assert_eq(C->count, 1);
    qed_l2_cache_unref(C, n);
    qed_l2_cache_unref(C, n);
    qed_l2_cache_unref(C, e);
}

Test(l2cache, forget_keeps_other_entries, .init = setup3, .fini = cache_teardown)
{
    ins_idle(T(1));
    struct qed_l2 *e = ins(T(2));
    ins_idle(T(3));
    qed_l2_cache_forget(C, e);
    qed_l2_cache_unref(C, e);
    cr_assert(cached(T(1)) && cached(T(3)));
    cr_assert_eq(C->count, 2);
    /* The LRU list is still intact: two more inserts evict 1 then 3. */
    ins_idle(T(4));
    cr_assert_eq(C->count, 3);
    ins_idle(T(5));
    cr_assert_not(cached(T(1)));
    cr_assert(cached(T(3)) && cached(T(4)) && cached(T(5)));
}

Test(l2cache, destroy_frees_everything, .init = setup3)
{
    struct snap s[3];
    for (int i = 0; i < 3; i++)
        s[i] = snap_of(ins_idle(T(i + 1)));
    qed_l2_cache_destroy(C);
    cr_assert_eq(C->count, 0);
    cr_assert_null(C->mru);
    cr_assert_null(C->lru);
    for (int i = 0; i < 3; i++)
        cr_assert(snap_freed(s[i]), "entry %d not freed by destroy", i);
    free(IMG);
}

Test(l2cache, capacity_one, .fini = cache_teardown)
{
    cache_setup(1);
    ins_idle(T(1));
    ins_idle(T(2));
    cr_assert_eq(C->count, 1);
    cr_assert(cached(T(2)));
    cr_assert_not(cached(T(1)));
}

/* ---- The byte bound (issue 11, item 9) ---- */

#define MiB_ (1024ull * 1024)

/* A cache the way qed_open() sets it up by default, for tables of @table_bytes. */
static void bound_setup(uint64_t table_bytes, unsigned tables, uint64_t max_bytes)
{
    IMG = calloc(1, sizeof(*IMG));
    cr_assert_not_null(IMG);
    IMG->g.table_bytes = table_bytes;
    IMG->g.table_entries = (uint32_t)(table_bytes / 8);
    C = &IMG->cache;
    qed_l2_cache_init(C, tables, max_bytes, table_bytes);
    nfreed = 0;
    track_start(table_bytes);
}

static void bound_teardown(void)
{
    cache_teardown();
    cr_assert_eq(track_live, 0, "tables left allocated");
    track_size = 0;
}

Test(l2cache, byte_bound_4m_clusters_table4, .fini = bound_teardown)
{
    /* 4 MiB clusters, table size 4: 16 MiB tables, so two fit in 32 MiB. */
    bound_setup(16 * MiB_, 0, QED_DEFAULT_L2_CACHE_BYTES);
    cr_assert_eq(C->max_bytes, 32 * MiB_);
    cr_assert_eq(C->max, 2);
    cr_assert(qed_l2_cache_make_room(C));
    struct qed_l2 *a = ins(T(1));
    struct snap sa = snap_of(a);
    cr_assert(qed_l2_cache_make_room(C));
    struct qed_l2 *b = ins(T(2));
    cr_assert_eq(C->bytes, 32 * MiB_);
    cr_assert_not(qed_l2_cache_make_room(C), "a third table fits while two are in use");
    qed_l2_cache_unref(C, a);
    cr_assert(qed_l2_cache_make_room(C), "no room after a table was released");
    cr_assert(snap_freed(sa), "the released table was not evicted to make room");
    cr_assert_eq(C->bytes, 16 * MiB_);
    struct qed_l2 *c = ins(T(3));
    cr_assert_eq(C->bytes, 32 * MiB_);
    cr_assert_eq(C->peak_bytes, 32 * MiB_);
    cr_assert_eq(track_peak, 32 * MiB_, "tables alive at once: %" PRIu64, track_peak);
    qed_l2_cache_unref(C, b);
    qed_l2_cache_unref(C, c);
}

Test(l2cache, byte_bound_64m_clusters_table16_is_one_table, .fini = bound_teardown)
{
    /* 64 MiB clusters, table size 16: one table is 1 GiB, above the 32 MiB
     * bound.  The cache then allows exactly one table (documented), which
     * requests use in turn.  (calloc'ed and never touched: no real memory.) */
    bound_setup(1024 * MiB_, 0, QED_DEFAULT_L2_CACHE_BYTES);
    cr_assert_eq(C->max_bytes, 1024 * MiB_);
    cr_assert_eq(C->max, 1);
    cr_assert(qed_l2_cache_make_room(C), "an empty cache must take one table");
    struct qed_l2 *a = ins(T(1));
    struct snap sa = snap_of(a);
    cr_assert_not(qed_l2_cache_make_room(C), "a second 1 GiB table fits");
    qed_l2_cache_unref(C, a);
    cr_assert(qed_l2_cache_make_room(C));
    cr_assert(snap_freed(sa));
    cr_assert_eq(C->bytes, 0);
    struct qed_l2 *b = ins(T(2));
    cr_assert_eq(C->peak_bytes, 1024 * MiB_);
    cr_assert_eq(track_peak, 1024 * MiB_);
    qed_l2_cache_unref(C, b);
}

Test(l2cache, byte_bound_counts_forgotten_tables_until_freed, .fini = bound_teardown)
{
    bound_setup(16 * MiB_, 0, QED_DEFAULT_L2_CACHE_BYTES);
    struct qed_l2 *a = ins(T(1));
    struct qed_l2 *b = ins(T(2));
    /* A failed load forgets its table, but a waiter still holds it. */
    qed_l2_cache_forget(C, a);
    cr_assert_eq(C->bytes, 32 * MiB_);
    cr_assert_not(qed_l2_cache_make_room(C), "a forgotten table still in use was not counted");
    qed_l2_cache_unref(C, a);
    cr_assert_eq(C->bytes, 16 * MiB_);
    cr_assert(qed_l2_cache_make_room(C));
    qed_l2_cache_unref(C, b);
}

Test(l2cache, explicit_table_count_is_taken_as_given, .fini = bound_teardown)
{
    /* --l2-cache=N: N tables whatever their size (documented). */
    bound_setup(16 * MiB_, 3, 0);
    cr_assert_eq(C->max, 3);
    cr_assert_eq(C->max_bytes, 48 * MiB_);
}

Test(l2cache, default_bound_for_small_tables_is_64_tables, .fini = bound_teardown)
{
    /* 64 KiB clusters, table size 4: 256 KiB tables, 64 of them = 16 MiB. */
    bound_setup(256 * 1024, 0, QED_DEFAULT_L2_CACHE_BYTES);
    cr_assert_eq(C->max, 64);
    cr_assert_eq(C->max_bytes, 16 * MiB_);
}

/* ---- End to end: concurrent misses through the test backend ---- */

#define CS 4096u            /* 4 KiB clusters, table size 1: one table covers 2 MiB */
#define TS 1u
#define COVER (2u * 1024 * 1024)
#define IMG_SIZE (8u * 1024 * 1024)

static struct test_fixture T; /* loop, test engine (manual mode), directory */
static char path[128];

static uint8_t pat(uint64_t pos, unsigned seed)
{
    return (uint8_t)(pos * 7 + (pos >> 12) * 13 + seed);
}

/* Create the image and write one cluster of pattern at each of @offs. */
static void make_image(const uint64_t *offs, size_t n)
{
    struct qed_create_opts co = {.size = IMG_SIZE, .cluster_size = CS, .table_size = TS};
    char err[512] = "";
    struct test_fixture w; /* a loop and a real engine of its own, for writing */
    qed_image *img;
    uint8_t buf[CS];

    cr_assert_eq(qed_create(path, &co, err, sizeof(err)), 0, "create: %s", err);
    tf_setup(&w, NULL, QED_AIO_AUTO);
    cr_assert_eq(qed_open(w.aio, path, NULL, &img, err, sizeof(err)), 0, "open: %s", err);
    for (size_t i = 0; i < n; i++) {
        for (unsigned j = 0; j < CS; j++)
            buf[j] = pat(offs[i] + j, 1);
        cr_assert_eq(qed_sync_write(img, offs[i], buf, CS, 0), 0);
    }
    cr_assert_eq(qed_close(img), 0);
    tf_teardown(&w);
}

/* L1 entry @i as stored in the file. */
static uint64_t file_l1(unsigned i)
{
    int fd = open(path, O_RDONLY);
    uint64_t v = 0;
    cr_assert(fd >= 0);
    cr_assert_eq(pread(fd, &v, 8, CS + 8 * i), 8); /* L1 at cluster 1 */
    close(fd);
    return le64toh(v);
}

static void e2e_setup(void)
{
    tf_setup(&T, "l2c", QED_AIO_TEST);
    tf_cleanup_on_timeout(T.dir, 90);
    /* The tests hold I/O and complete it themselves. */
    qed_aio_test_set_auto(T.aio, false);
    snprintf(path, sizeof(path), "%s/t.qed", T.dir);
}

static void e2e_teardown(void)
{
    tf_teardown(&T);
}

struct rd {
    bool done;
    int ret;
    uint8_t buf[CS];
};

static void rd_cb(void *opaque, int ret)
{
    struct rd *r = opaque;
    cr_assert_not(r->done, "callback ran twice");
    r->done = true;
    r->ret = ret;
}

/* Run the loop in auto mode until every read in @r[0..n) is done. */
static void finish_all(struct rd *r, size_t n)
{
    qed_aio_test_set_auto(T.aio, true);
    for (int turn = 0; turn < 10000; turn++) {
        size_t done = 0;
        for (size_t i = 0; i < n; i++)
            done += r[i].done;
        if (done == n)
            return;
        ev_run(T.loop, EVRUN_ONCE);
    }
    cr_assert_fail("reads did not complete");
}

static void check_pattern(const struct rd *r, uint64_t off)
{
    for (unsigned j = 0; j < CS; j++)
        cr_assert_eq(r->buf[j], pat(off + j, 1), "byte %" PRIu64 ": %#x expected %#x", off + j,
                     r->buf[j], pat(off + j, 1));
}

/* Pending I/Os that read [off, off+len). */
static size_t pending_reads_at(uint64_t off, uint64_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < qed_aio_test_pending(T.aio); i++) {
        struct qed_io *io = qed_aio_test_peek(T.aio, i);
        if (io->op == QED_IO_READ && io->offset == off && io->length == len)
            n++;
    }
    return n;
}

/* Index of the pending I/O that reads into @buf. */
static size_t find_pending_buf(const void *buf)
{
    for (size_t i = 0; i < qed_aio_test_pending(T.aio); i++) {
        struct qed_io *io = qed_aio_test_peek(T.aio, i);
        if (io->iovcnt > 0 && io->iov[0].iov_base == buf)
            return i;
    }
    cr_assert_fail("no pending I/O into buffer %p", buf);
    return 0;
}

Test(l2cache_e2e, two_concurrent_misses_read_table_once, .init = e2e_setup,
     .fini = e2e_teardown, .timeout = 60)
{
    const uint64_t offs[] = {0, CS};
    struct qed_open_opts oo = {.read_only = true};
    struct rd r[2] = {0};
    char err[512] = "";
    qed_image *img;

    make_image(offs, 2);
    uint64_t l2off = file_l1(0);
    cr_assert_neq(l2off, 0, "no L2 table was written");

    cr_assert_eq(qed_open(T.aio, path, &oo, &img, err, sizeof(err)), 0, "open: %s", err);
    cr_assert_eq(qed_aio_test_pending(T.aio), 0);
    cr_assert_eq(qed_read(img, 0, r[0].buf, CS, rd_cb, &r[0]), 0);
    cr_assert_eq(qed_read(img, CS, r[1].buf, CS, rd_cb, &r[1]), 0);
    cr_assert_not(r[0].done || r[1].done, "a callback ran inside submit");

    /* Both reads need the same unloaded table: exactly one read of it. */
    cr_assert_eq(qed_aio_test_pending(T.aio), 1, "%zu I/Os pending, expected only the table read",
                 qed_aio_test_pending(T.aio));
    cr_assert_eq(pending_reads_at(l2off, CS * TS), 1);
    cr_assert_eq(img->cache.count, 1, "two copies of the table in the cache");

    cr_assert_eq(qed_aio_test_complete(T.aio, 0, 0), 0);
    /* Now the two data reads, and no second table read. */
    cr_assert_eq(pending_reads_at(l2off, CS * TS), 0);
    cr_assert_eq(qed_aio_test_pending(T.aio), 2);
    cr_assert_eq(img->cache.loads, 1);

    finish_all(r, 2);
    cr_assert_eq(r[0].ret, 0);
    cr_assert_eq(r[1].ret, 0);
    check_pattern(&r[0], 0);
    check_pattern(&r[1], CS);
    cr_assert_eq(qed_aio_test_count(T.aio, QED_IO_READ), 3, "one table read and two data reads");
    cr_assert_eq(img->cache.count, 1);
    cr_assert_eq(qed_close(img), 0);
}

Test(l2cache_e2e, many_concurrent_misses_read_table_once, .init = e2e_setup,
     .fini = e2e_teardown, .timeout = 60)
{
    const uint64_t offs[] = {0, CS, 2 * CS, 3 * CS, 4 * CS, 5 * CS, 6 * CS, 7 * CS};
    struct qed_open_opts oo = {.read_only = true};
    struct rd r[8] = {0};
    char err[512] = "";
    qed_image *img;

    make_image(offs, 8);
    uint64_t l2off = file_l1(0);
    cr_assert_eq(qed_open(T.aio, path, &oo, &img, err, sizeof(err)), 0, "open: %s", err);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(qed_read(img, offs[i], r[i].buf, CS, rd_cb, &r[i]), 0);
    cr_assert_eq(qed_aio_test_pending(T.aio), 1);
    cr_assert_eq(pending_reads_at(l2off, CS * TS), 1);
    finish_all(r, 8);
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(r[i].ret, 0);
        check_pattern(&r[i], offs[i]);
    }
    cr_assert_eq(img->cache.loads, 1);
    cr_assert_eq(qed_aio_test_count(T.aio, QED_IO_READ), 9);
    cr_assert_eq(qed_close(img), 0);
}

Test(l2cache_e2e, cached_table_is_not_read_again, .init = e2e_setup, .fini = e2e_teardown,
     .timeout = 60)
{
    const uint64_t offs[] = {0, CS};
    struct qed_open_opts oo = {.read_only = true};
    struct rd r[2] = {0};
    char err[512] = "";
    qed_image *img;

    make_image(offs, 2);
    uint64_t l2off = file_l1(0);
    cr_assert_eq(qed_open(T.aio, path, &oo, &img, err, sizeof(err)), 0, "open: %s", err);
    cr_assert_eq(qed_read(img, 0, r[0].buf, CS, rd_cb, &r[0]), 0);
    finish_all(r, 1);
    qed_aio_test_set_auto(T.aio, false);
    /* The table is cached now: a second read goes straight to the data. */
    cr_assert_eq(qed_read(img, CS, r[1].buf, CS, rd_cb, &r[1]), 0);
    cr_assert_not(r[1].done, "a cache hit ran the callback inside submit");
    cr_assert_eq(qed_aio_test_pending(T.aio), 1);
    cr_assert_eq(pending_reads_at(l2off, CS * TS), 0, "the cached table was read again");
    finish_all(&r[1], 1);
    check_pattern(&r[1], CS);
    cr_assert_eq(img->cache.loads, 1);
    cr_assert_eq(qed_close(img), 0);
}

Test(l2cache_e2e, failed_load_fails_all_waiters_then_retries, .init = e2e_setup,
     .fini = e2e_teardown, .timeout = 60)
{
    const uint64_t offs[] = {0, CS};
    struct qed_open_opts oo = {.read_only = true};
    struct rd r[3] = {0};
    char err[512] = "";
    qed_image *img;

    make_image(offs, 2);
    uint64_t l2off = file_l1(0);
    cr_assert_eq(qed_open(T.aio, path, &oo, &img, err, sizeof(err)), 0, "open: %s", err);
    cr_assert_eq(qed_read(img, 0, r[0].buf, CS, rd_cb, &r[0]), 0);
    cr_assert_eq(qed_read(img, CS, r[1].buf, CS, rd_cb, &r[1]), 0);
    cr_assert_eq(pending_reads_at(l2off, CS * TS), 1);
    cr_assert_eq(qed_aio_test_complete(T.aio, tf_find_pending(&T, l2off), -EIO), 0);
    /* Let any deferred delivery happen. */
    for (int i = 0; i < 10 && !(r[0].done && r[1].done); i++)
        ev_run(T.loop, EVRUN_NOWAIT);
    cr_assert(r[0].done && r[1].done, "waiters of a failed load did not complete");
    cr_assert_eq(r[0].ret, -EIO);
    cr_assert_eq(r[1].ret, -EIO);
    cr_assert_eq(qed_aio_test_pending(T.aio), 0);
    cr_assert_eq(img->cache.count, 0, "a table that failed to load stayed cached");

    /* A later read tries the table again and succeeds. */
    cr_assert_eq(qed_read(img, CS, r[2].buf, CS, rd_cb, &r[2]), 0);
    cr_assert_eq(pending_reads_at(l2off, CS * TS), 1, "the table was not read again");
    finish_all(&r[2], 1);
    cr_assert_eq(r[2].ret, 0);
    check_pattern(&r[2], CS);
    cr_assert_eq(qed_close(img), 0);
}

Test(l2cache_e2e, tables_in_use_stay_within_capacity, .init = e2e_setup,
     .fini = e2e_teardown, .timeout = 60)
{
    /* One cluster in each of three L2 tables, a cache of one table: the
     * three reads take the table in turn instead of growing the cache. */
    const uint64_t offs[] = {0, COVER, 2 * COVER};
    struct qed_open_opts oo = {.read_only = true, .l2_cache_tables = 1};
    struct rd r[3] = {0};
    char err[512] = "";
    qed_image *img;

    make_image(offs, 3);
    cr_assert_eq(qed_open(T.aio, path, &oo, &img, err, sizeof(err)), 0, "open: %s", err);
    cr_assert_eq(img->cache.max, 1);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(qed_read(img, offs[i], r[i].buf, CS, rd_cb, &r[i]), 0);
    uint64_t t0 = file_l1(0);
    cr_assert_eq(qed_aio_test_pending(T.aio), 1, "only one table read may be in flight");
    cr_assert_eq(pending_reads_at(t0, CS * TS), 1, "the first request's table is read first");
    cr_assert_eq(img->cache.count, 1);
    /* Complete I/Os one at a time: never more than one table in memory. */
    for (int turn = 0; turn < 1000 && !(r[0].done && r[1].done && r[2].done); turn++) {
        ev_run(T.loop, EVRUN_NOWAIT);
        if (qed_aio_test_pending(T.aio))
            cr_assert_eq(qed_aio_test_complete(T.aio, 0, 0), 0);
        cr_assert_leq(img->cache.bytes, CS * TS, "more than one table held");
        cr_assert_leq(img->cache.count, 1);
    }
    for (int i = 0; i < 3; i++) {
        cr_assert(r[i].done, "read %d never completed", i);
        cr_assert_eq(r[i].ret, 0);
        check_pattern(&r[i], offs[i]);
    }
    cr_assert_eq(img->cache.peak_bytes, CS * TS);
    cr_assert_geq(img->cache.room_waits, 2, "the later reads did not wait for room");
    cr_assert_eq(qed_close(img), 0);
}

Test(l2cache_e2e, reverse_completion_of_data_reads, .init = e2e_setup, .fini = e2e_teardown,
     .timeout = 60)
{
    const uint64_t offs[] = {0, CS};
    struct qed_open_opts oo = {.read_only = true};
    struct rd r[2] = {0};
    char err[512] = "";
    qed_image *img;

    make_image(offs, 2);
    cr_assert_eq(qed_open(T.aio, path, &oo, &img, err, sizeof(err)), 0, "open: %s", err);
    cr_assert_eq(qed_read(img, 0, r[0].buf, CS, rd_cb, &r[0]), 0);
    cr_assert_eq(qed_read(img, CS, r[1].buf, CS, rd_cb, &r[1]), 0);
    cr_assert_eq(qed_aio_test_complete(T.aio, 0, 0), 0); /* the table */
    cr_assert_eq(qed_aio_test_pending(T.aio), 2);
    /* Complete the second request's data read first. */
    cr_assert_eq(qed_aio_test_complete(T.aio, find_pending_buf(r[1].buf), 0), 0);
    cr_assert(r[1].done && !r[0].done);
    cr_assert_eq(r[1].ret, 0);
    cr_assert_eq(qed_aio_test_complete(T.aio, find_pending_buf(r[0].buf), 0), 0);
    cr_assert(r[0].done);
    cr_assert_eq(r[0].ret, 0);
    check_pattern(&r[0], 0);
    check_pattern(&r[1], CS);
    cr_assert_eq(qed_close(img), 0);
}

/* ---- End to end: the byte bound with 16 MiB tables (4 MiB clusters, table size 4) ---- */

#define BIG_CS (4u * 1024 * 1024)
#define BIG_TS 4u
#define BIG_TB ((uint64_t)BIG_CS * BIG_TS) /* 16 MiB */
#define BIG_COVER (1ull << 43)             /* guest bytes one table covers */
#define BOUND (32ull * 1024 * 1024)

/* A 4 MiB-cluster image whose L1 names @ntables empty L2 tables: holes in a
 * sparse file, so the file takes almost no space. */
static void make_big_image(unsigned ntables)
{
    struct qed_create_opts co = {.size = 4 * BIG_COVER, .cluster_size = BIG_CS,
                                 .table_size = BIG_TS};
    char err[512] = "";
    uint64_t first = BIG_CS + BIG_TB; /* after the header cluster and the L1 table */
    int fd;

    cr_assert_eq(qed_create(path, &co, err, sizeof(err)), 0, "create: %s", err);
    fd = open(path, O_RDWR);
    cr_assert(fd >= 0);
    for (unsigned i = 0; i < ntables; i++) {
        uint64_t e = htole64(first + i * BIG_TB);
        cr_assert_eq(pwrite(fd, &e, 8, BIG_CS + 8 * i), 8);
    }
    cr_assert_eq(ftruncate(fd, (off_t)(first + ntables * BIG_TB)), 0);
    close(fd);
}

static bool is_table_io(const struct qed_io *io)
{
    return io->length == BIG_TB;
}

/* The cache's own count, qed_l2_cache_bytes() and the tables alive agree and
 * stay within the bound. */
static void check_bound(qed_image *img)
{
    cr_assert_leq(img->cache.bytes, BOUND, "cache holds %" PRIu64 " bytes", img->cache.bytes);
    cr_assert_eq(qed_l2_cache_bytes(img), img->cache.bytes);
    cr_assert_leq(track_live, BOUND, "%" PRIu64 " bytes of tables alive", track_live);
}

Test(l2cache_e2e, byte_bound_holds_for_16mib_tables, .init = e2e_setup, .fini = e2e_teardown,
     .timeout = 60)
{
    struct qed_open_opts oo = {.read_only = true};
    struct rd r[4] = {0};
    char err[512] = "";
    qed_image *img;
    struct qed_info info;

    make_big_image(4);
    track_start(BIG_TB);
    cr_assert_eq(qed_open(T.aio, path, &oo, &img, err, sizeof(err)), 0, "open: %s", err);
    qed_get_info(img, &info);
    cr_assert_eq(info.l2_cache_max_bytes, BOUND);

    /* Four reads, one in each table, at once: two tables fit. */
    for (int i = 0; i < 4; i++)
        cr_assert_eq(qed_read(img, i * BIG_COVER, r[i].buf, CS, rd_cb, &r[i]), 0);
    size_t loads = 0;
    for (size_t i = 0; i < qed_aio_test_pending(T.aio); i++)
        loads += is_table_io(qed_aio_test_peek(T.aio, i));
    cr_assert_eq(loads, 2, "%zu table loads in flight, room for 2", loads);
    check_bound(img);
    for (int turn = 0; turn < 1000 && !(r[0].done && r[1].done && r[2].done && r[3].done);
         turn++) {
        ev_run(T.loop, EVRUN_NOWAIT);
        if (qed_aio_test_pending(T.aio))
            cr_assert_eq(qed_aio_test_complete(T.aio, 0, 0), 0);
        check_bound(img);
    }
    for (int i = 0; i < 4; i++) {
        cr_assert(r[i].done, "read %d never completed", i);
        cr_assert_eq(r[i].ret, 0, "read %d: %d", i, r[i].ret);
        for (unsigned j = 0; j < CS; j++)
            cr_assert_eq(r[i].buf[j], 0);
    }
    cr_assert_geq(img->cache.room_waits, 2);

    /* One after the other, the way a client touching four tables does. */
    qed_aio_test_set_auto(T.aio, true);
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 4; i++) {
            uint8_t buf[512];
            cr_assert_eq(qed_sync_read(img, i * BIG_COVER + 4096 * k, buf, sizeof(buf)), 0);
            check_bound(img);
        }
    qed_get_info(img, &info);
    cr_assert_leq(info.l2_cache_peak_bytes, BOUND);
    cr_assert_leq(track_peak, BOUND, "at the peak %" PRIu64 " bytes of tables were alive",
                  track_peak);
    cr_assert_eq(qed_close(img), 0);
    track_size = 0;
}

Test(l2cache_e2e, new_table_waits_for_room, .init = e2e_setup, .fini = e2e_teardown,
     .timeout = 60)
{
    /* Two reads hold both tables the bound allows; a write that needs a new
     * table must wait until one is released, then succeed. */
    struct rd r[2] = {0};
    char err[512] = "";
    qed_image *img;
    uint8_t wbuf[CS], rbuf[CS];

    make_big_image(2);
    track_start(BIG_TB);
    cr_assert_eq(qed_open(T.aio, path, NULL, &img, err, sizeof(err)), 0, "open: %s", err);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(qed_read(img, i * BIG_COVER, r[i].buf, CS, rd_cb, &r[i]), 0);
    for (unsigned j = 0; j < CS; j++)
        wbuf[j] = pat(j, 9);
    struct rd w = {0};
    cr_assert_eq(qed_write(img, 2 * BIG_COVER, wbuf, CS, 0, rd_cb, &w), 0);
    /* Let the write set NEED_CHECK (its header I/O) while the loads wait. */
    for (int turn = 0; turn < 100 && img->cache.room_waits == 0; turn++) {
        ev_run(T.loop, EVRUN_NOWAIT);
        for (size_t i = 0; i < qed_aio_test_pending(T.aio); i++) {
            if (!is_table_io(qed_aio_test_peek(T.aio, i))) {
                cr_assert_eq(qed_aio_test_complete(T.aio, i, 0), 0);
                break;
            }
        }
    }
    cr_assert_eq(img->cache.room_waits, 1, "the write did not wait for room");
    cr_assert_not(w.done);
    for (size_t i = 0; i < qed_aio_test_pending(T.aio); i++)
        cr_assert(qed_aio_test_peek(T.aio, i)->op == QED_IO_READ,
                  "the waiting write issued I/O");
    check_bound(img);
    for (int turn = 0; turn < 1000 && !(r[0].done && r[1].done && w.done); turn++) {
        ev_run(T.loop, EVRUN_NOWAIT);
        if (qed_aio_test_pending(T.aio))
            cr_assert_eq(qed_aio_test_complete(T.aio, 0, 0), 0);
        check_bound(img);
    }
    cr_assert(w.done && r[0].done && r[1].done, "requests never completed");
    cr_assert_eq(w.ret, 0);
    cr_assert_eq(r[0].ret, 0);
    cr_assert_eq(r[1].ret, 0);
    qed_aio_test_set_auto(T.aio, true);
    cr_assert_eq(qed_sync_read(img, 2 * BIG_COVER, rbuf, CS), 0);
    cr_assert(memcmp(rbuf, wbuf, CS) == 0, "the write did not read back");
    cr_assert_leq(track_peak, BOUND);
    cr_assert_eq(qed_close(img), 0);
    track_size = 0;
}
