/*
 * fuzz-model.h - the reference model of fuzz-engine.c: data patterns and a
 * sparse list of extents saying what each byte of the virtual disk may read
 * as (see the top of fuzz-engine.c).  Header-only, included once.
 */
#ifndef FUZZ_MODEL_H
#define FUZZ_MODEL_H

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>

#include "fuzz-util.h"

/* ---- Data patterns ------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Byte @o of write number @seed: never zero. */
static uint8_t pat_byte(uint32_t seed, uint64_t o)
{
    return (uint8_t)((mix64(((uint64_t)seed << 40) ^ (o >> 3)) >> ((o & 7) * 8)) | 1);
}

static void pat_fill(uint8_t *buf, uint32_t seed, uint64_t off, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = pat_byte(seed, off + i);
}

/* ---- The reference model --------------------------------------------------- */

enum mkind { MK_ZERO, MK_BACKING, MK_DATA, MK_ANY };
static const char *mk_name[] = {"zero", "backing", "data", "any"};

struct mext {
    uint64_t s, e;        /* [s, e) */
    uint8_t kind;
    bool or_zero;         /* zeros are allowed too */
    uint32_t seed;        /* MK_DATA */
};

struct range {
    uint64_t s, e;
};

static struct {
    struct mext *v;
    size_t n, cap;
} M;

static uint8_t *bk;          /* backing content (bk_len bytes; zeros beyond) */
static uint64_t bk_len;

static void *xrealloc(void *p, size_t sz)
{
    p = realloc(p, sz ? sz : 1);
    if (!p)
        fz_fail("out of memory (%zu bytes)", sz);
    return p;
}

static void m_reset(enum mkind k)
{
    M.n = 1;
    if (!M.cap) {
        M.cap = 64;
        M.v = xrealloc(NULL, M.cap * sizeof(*M.v));
    }
    M.v[0] = (struct mext){0, UINT64_MAX, (uint8_t)k, false, 0};
}

/* Index of the extent containing @at. */
static size_t m_find(uint64_t at)
{
    size_t lo = 0, hi = M.n;

    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (M.v[mid].s <= at)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* Make @at an extent boundary; returns the index of the extent starting there. */
static size_t m_split(uint64_t at)
{
    size_t i = m_find(at);

    if (at == UINT64_MAX)
        return M.n;
    if (M.v[i].s == at)
        return i;
    if (M.n == M.cap) {
        M.cap *= 2;
        M.v = xrealloc(M.v, M.cap * sizeof(*M.v));
    }
    memmove(&M.v[i + 2], &M.v[i + 1], (M.n - i - 1) * sizeof(*M.v));
    M.v[i + 1] = M.v[i];
    M.v[i].e = at;
    M.v[i + 1].s = at;
    M.n++;
    return i + 1;
}

static void m_set(uint64_t s, uint64_t e, enum mkind k, uint32_t seed)
{
    size_t a, b;

    if (s >= e)
        return;
    a = m_split(s);
    b = m_split(e);
    a = m_find(s);
    /* Replace extents [a, b) by one. */
    M.v[a] = (struct mext){s, e, (uint8_t)k, false, seed};
    memmove(&M.v[a + 1], &M.v[b], (M.n - b) * sizeof(*M.v));
    M.n -= b - a - 1;
}

static void m_or_zero(uint64_t s, uint64_t e)
{
    size_t a, b;

    if (s >= e)
        return;
    a = m_split(s);
    b = m_split(e);
    a = m_find(s);
    for (size_t i = a; i < b; i++)
        M.v[i].or_zero = true;
}

static uint8_t m_expect(const struct mext *x, uint64_t o)
{
    switch (x->kind) {
    case MK_BACKING:
        return o < bk_len ? bk[o] : 0;
    case MK_DATA:
        return pat_byte(x->seed, o);
    default:
        return 0;
    }
}

/* Check @len bytes read at @off against the model. */
static void m_check_read(uint64_t off, const uint8_t *buf, size_t len, const char *when)
{
    uint64_t end = off + len;

    for (size_t i = m_find(off); i < M.n && M.v[i].s < end; i++) {
        const struct mext *x = &M.v[i];
        uint64_t s = x->s > off ? x->s : off, e = x->e < end ? x->e : end;

        if (x->kind == MK_ANY)
            continue;
        for (uint64_t o = s; o < e; o++) {
            uint8_t got = buf[o - off], want = m_expect(x, o);
            if (got != want && !(x->or_zero && got == 0))
                fz_fail("%s: read at %" PRIu64 " (+%" PRIu64 "): byte %" PRIu64
                        " is 0x%02x, the model says 0x%02x (%s%s, write #%u, extent [%" PRIu64
                        ", %" PRIu64 "))",
                        when, off, (uint64_t)len, o, got, want, mk_name[x->kind],
                        x->or_zero ? " or zero" : "", x->seed, x->s, x->e);
        }
    }
}

/* True when the model allows every byte of [s, e) to read as zero. */
static bool m_zero_ok(uint64_t s, uint64_t e, uint64_t *bad)
{
    for (size_t i = m_find(s); i < M.n && M.v[i].s < e; i++) {
        const struct mext *x = &M.v[i];
        uint64_t a = x->s > s ? x->s : s, b = x->e < e ? x->e : e;

        if (x->or_zero || x->kind == MK_ZERO || x->kind == MK_ANY)
            continue;
        if (x->kind == MK_DATA) {
            *bad = a;
            return false;
        }
        for (uint64_t o = a; o < b && o < bk_len; o++) {
            if (bk[o]) {
                *bad = o;
                return false;
            }
        }
    }
    return true;
}

#endif /* FUZZ_MODEL_H */
