/*
 * dirty-bits.c - the bit array of a dirty bitmap: set runs, find the next
 * set or clear bit, merge arrays of different granularities.  Pure code.
 */
#include "config.h"

#include <string.h>

#include "dirty-bits.h"

/* Set the bits of @mask in word @i, counting the ones that were clear. */
static void set_word(struct qed_bits *b, uint64_t i, uint64_t mask)
{
    b->nset += (uint64_t)__builtin_popcountll(mask & ~b->w[i]);
    b->w[i] |= mask;
}

void qed_bits_set(struct qed_bits *b, uint64_t first, uint64_t n)
{
    uint64_t end;

    if (first >= b->nbits || n == 0)
        return;
    /* Clip before adding: first < nbits, so nbits - first cannot wrap. */
    end = n > b->nbits - first ? b->nbits : first + n;
    while (first < end) {
        uint64_t i = first / 64, lo = first % 64;
        uint64_t hi = end - first >= 64 - lo ? 64 : lo + (end - first);
        uint64_t mask = (hi == 64 ? ~0ull : ((1ull << hi) - 1)) & ~((1ull << lo) - 1);

        set_word(b, i, mask);
        first += hi - lo;
    }
}

void qed_bits_clear_all(struct qed_bits *b)
{
    memset(b->w, 0, qed_bits_words(b->nbits) * sizeof(uint64_t));
    b->nset = 0;
}

uint64_t qed_bits_next(const struct qed_bits *b, uint64_t from, bool value)
{
    uint64_t nw = qed_bits_words(b->nbits);

    if (from >= b->nbits)
        return b->nbits;
    for (uint64_t i = from / 64; i < nw; i++) {
        uint64_t w = value ? b->w[i] : ~b->w[i];

        if (i == from / 64)
            w &= ~0ull << (from % 64);
        if (w) {
            uint64_t r = i * 64 + (uint64_t)__builtin_ctzll(w);
            return r < b->nbits ? r : b->nbits;
        }
    }
    return b->nbits;
}

uint64_t qed_bits_count(const struct qed_bits *b)
{
    uint64_t n = 0, nw = qed_bits_words(b->nbits);

    for (uint64_t i = 0; i < nw; i++)
        n += (uint64_t)__builtin_popcountll(b->w[i]);
    return n;
}

void qed_bits_truncate(struct qed_bits *b, uint64_t nbits)
{
    uint64_t nw = qed_bits_words(nbits);

    if (nbits < b->nbits) {
        /* Clear the tail of the new last word and every word after it. */
        if (nbits % 64)
            b->w[nw - 1] &= (1ull << (nbits % 64)) - 1;
        memset(b->w + nw, 0, (qed_bits_words(b->nbits) - nw) * sizeof(uint64_t));
    }
    b->nbits = nbits;
    b->nset = qed_bits_count(b);
}

void qed_bits_merge(struct qed_bits *dst, uint64_t dst_gran, const struct qed_bits *src,
                    uint64_t src_gran, uint64_t size)
{
    uint64_t i = qed_bits_next(src, 0, true);

    while (i < src->nbits) {
        uint64_t j = qed_bits_next(src, i, false);
        /* Byte range of the run, clipped to @size.  i * src_gran and
         * j * src_gran cannot wrap: nbits * gran is below size + gran,
         * and size <= 2^63, gran <= 2^31. */
        uint64_t s = i * src_gran, e = j * src_gran;

        if (s >= size)
            break;
        if (e > size)
            e = size;
        qed_bits_set(dst, s / dst_gran, (e - 1) / dst_gran - s / dst_gran + 1);
        i = qed_bits_next(src, j, true);
    }
}
