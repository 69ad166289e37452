/*
 * dirty-bits.h - a plain bit array with a count of its set bits: the pure
 * part of the dirty bitmaps (setting runs, finding the next set or clear
 * bit, merging).  No allocation and no I/O: the caller owns the words.
 * Internal to libqed (engine/bitmap.c uses it).
 */
#ifndef QED_DIRTY_BITS_H
#define QED_DIRTY_BITS_H

#include <stdbool.h>
#include <stdint.h>

/** A bit array of @nbits bits in @w (qed_bits_words(nbits) words); @nset bits are set. */
struct qed_bits {
    uint64_t *w;
    uint64_t nbits;
    uint64_t nset;
};

/** qed_bits_words - how many 64-bit words hold @nbits bits. */
static inline uint64_t qed_bits_words(uint64_t nbits)
{
    return nbits / 64 + (nbits % 64 != 0);
}

/** qed_bits_get - the value of bit @i (@i < nbits). */
static inline bool qed_bits_get(const struct qed_bits *b, uint64_t i)
{
    return (b->w[i / 64] >> (i % 64)) & 1;
}

/** qed_bits_set - set bits [@first, @first + @n), clipped to nbits; keeps nset. */
void qed_bits_set(struct qed_bits *b, uint64_t first, uint64_t n);

/** qed_bits_clear_all - clear every bit. */
void qed_bits_clear_all(struct qed_bits *b);

/**
 * qed_bits_next - the first index >= @from whose bit is @value, or nbits
 * when there is none.
 */
uint64_t qed_bits_next(const struct qed_bits *b, uint64_t from, bool value);

/** qed_bits_count - count the set bits (to recompute nset after loading words). */
uint64_t qed_bits_count(const struct qed_bits *b);

/**
 * qed_bits_truncate - make the array @nbits long (@nbits <= the words'
 * capacity): bits at and past @nbits are cleared, so a later growth finds
 * them clean, and nset is recounted.
 */
void qed_bits_truncate(struct qed_bits *b, uint64_t nbits);

/**
 * qed_bits_merge - for every run of set bits of @src (each bit covering
 * @src_gran bytes), set the bits of @dst (@dst_gran bytes each) that cover
 * any of its bytes below @size.  The two may be the same array.
 */
void qed_bits_merge(struct qed_bits *dst, uint64_t dst_gran, const struct qed_bits *src,
                    uint64_t src_gran, uint64_t size);

#endif /* QED_DIRTY_BITS_H */
