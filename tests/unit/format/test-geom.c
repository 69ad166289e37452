/*
 * test-geom.c - unit tests of the address arithmetic: qed_geom_init, the
 * index helpers, qed_bytes_to_clusters, qed_max_image_size, and the cluster
 * and table offset checks, at the extreme geometries 4 KiB/1 and 64 MiB/16
 * and at the default 64 KiB/4.
 *
 * Expected values are written out by hand or computed here independently
 * (128-bit arithmetic for the maximum size), never taken from the library.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include <criterion/criterion.h>

#include "qed-format.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define GiB (1024ull * MiB)
#define TiB (1024ull * GiB)

static struct qed_geom G;

static void geom(uint32_t cs, uint32_t ts, uint32_t hs)
{
    char err[256] = "";
    int r = qed_geom_init(&G, cs, ts, hs, "g.qed", err, sizeof(err));
    cr_assert_eq(r, 0, "qed_geom_init(%u, %u, %u): %d %s", cs, ts, hs, r, err);
}

/* Independent model of the maximum: N*N*cs in 128 bits, capped at INT64_MAX
 * rounded down to 512 (what NBD clients can address), rounded to 512. */
static uint64_t model_max(uint32_t cs, uint32_t ts)
{
    unsigned __int128 n = (unsigned __int128)ts * cs / 8;
    unsigned __int128 m = n * n * cs;
    uint64_t cap = (uint64_t)INT64_MAX & ~511ull;
    return m > cap ? cap : (uint64_t)m & ~511ull;
}

/* Rebuild a position from its parts. */
static uint64_t compose(uint64_t l1, uint64_t l2, uint64_t in)
{
    return (l1 << G.l1_shift) | (l2 << G.l2_shift) | in;
}

/* ---- geometry fields ---- */

Test(geom, fields_4k_table1)
{
    geom(4 * KiB, 1, 1);
    cr_assert_eq(G.cluster_bits, 12);
    cr_assert_eq(G.table_entries, 512);
    cr_assert_eq(G.entry_bits, 9);
    cr_assert_eq(G.l2_shift, 12);
    cr_assert_eq(G.l1_shift, 21);
    cr_assert_eq(G.table_bytes, 4096);
    cr_assert_eq(G.header_bytes, 4096);
    cr_assert_eq(qed_l2_coverage(&G), 2 * MiB);
}

Test(geom, fields_64k_table4)
{
    geom(64 * KiB, 4, 1);
    cr_assert_eq(G.cluster_bits, 16);
    cr_assert_eq(G.table_entries, 32768);
    cr_assert_eq(G.entry_bits, 15);
    cr_assert_eq(G.l2_shift, 16);
    cr_assert_eq(G.l1_shift, 31);
    cr_assert_eq(G.table_bytes, 256 * KiB);
    cr_assert_eq(qed_l2_coverage(&G), 2 * GiB);
}

Test(geom, fields_64m_table16)
{
    geom(64 * MiB, 16, 1);
    cr_assert_eq(G.cluster_bits, 26);
    cr_assert_eq(G.table_entries, 1u << 27);
    cr_assert_eq(G.entry_bits, 27);
    cr_assert_eq(G.l2_shift, 26);
    cr_assert_eq(G.l1_shift, 53);
    cr_assert_eq(G.table_bytes, 1 * GiB);
    cr_assert_eq(G.header_bytes, 64 * MiB);
    cr_assert_eq(qed_l2_coverage(&G), 1ull << 53);
}

Test(geom, header_bytes_multi_cluster)
{
    geom(64 * MiB, 16, 63);
    cr_assert_eq(G.header_bytes, 63 * 64 * MiB);
}

Test(geom, init_refuses_bad_cluster_size_with_name)
{
    char err[256] = "";
    cr_assert_eq(qed_geom_init(&G, 12288, 4, 1, "g.qed", err, sizeof(err)), -EINVAL);
    cr_assert_str_eq(err, "g.qed: QED cluster size 12288 is not a power of two in [4096, 67108864]");
}

Test(geom, init_refuses_bad_table_size_with_name)
{
    char err[256] = "";
    cr_assert_eq(qed_geom_init(&G, 65536, 5, 1, "g.qed", err, sizeof(err)), -EINVAL);
    cr_assert_str_eq(err, "g.qed: QED table size 5 is not a power of two in [1, 16]");
}

Test(geom, is_pow2)
{
    cr_assert_not(qed_is_pow2(0));
    cr_assert(qed_is_pow2(1));
    cr_assert(qed_is_pow2(2));
    cr_assert_not(qed_is_pow2(3));
    cr_assert(qed_is_pow2(4096));
    cr_assert_not(qed_is_pow2(12288));
    cr_assert(qed_is_pow2(1ull << 63));
    cr_assert_not(qed_is_pow2(UINT64_MAX));
}

/* ---- qed_max_image_size ---- */

Test(geom, max_size_4k_table1_is_1gib)
{
    cr_assert_eq(qed_max_image_size(4 * KiB, 1), 1 * GiB);
}

Test(geom, max_size_64k_table4_is_64tib)
{
    cr_assert_eq(qed_max_image_size(64 * KiB, 4), 64 * TiB);
}

Test(geom, max_size_64m_table16_is_capped)
{
    /* 2^27 * 2^27 * 2^26 = 2^80 */
    cr_assert_eq(qed_max_image_size(64 * MiB, 16), (1ull << 63) - 512);
}

Test(geom, max_size_largest_exact_value)
{
    /* 1 MiB / 16: N = 2^21, max = 2^62: fits. */
    cr_assert_eq(qed_max_image_size(1 * MiB, 16), 1ull << 62);
    /* 1 MiB / 8: N = 2^20, max = 2^60. */
    cr_assert_eq(qed_max_image_size(1 * MiB, 8), 1ull << 60);
    /* 2 MiB / 8: N = 2^21, max = 2^63: one past INT64_MAX; capped at 2^63 - 512. */
    cr_assert_eq(qed_max_image_size(2 * MiB, 8), (1ull << 63) - 512);
    /* 4 MiB / 4: N = 2^21, max = 2^64: capped the same. */
    cr_assert_eq(qed_max_image_size(4 * MiB, 4), (1ull << 63) - 512);
    cr_assert_eq(QED_MAX_VIRTUAL_SIZE, (1ull << 63) - 512);
}

Test(geom, max_size_matches_model_for_every_geometry)
{
    for (uint32_t cs = 4 * KiB; cs <= 64 * MiB; cs <<= 1) {
        for (uint32_t ts = 1; ts <= 16; ts <<= 1) {
            uint64_t want = model_max(cs, ts);
            cr_assert_eq(qed_max_image_size(cs, ts), want,
                         "max for %u/%u: %" PRIu64 ", expected %" PRIu64, cs, ts,
                         qed_max_image_size(cs, ts), want);
            geom(cs, ts, 1);
            cr_assert_eq(G.max_size, want, "geom max for %u/%u", cs, ts);
            cr_assert_eq(G.max_size % 512, 0);
        }
    }
}

/* ---- index arithmetic ---- */

Test(geom, index_first_byte)
{
    uint32_t geoms[][2] = {{4 * KiB, 1}, {64 * KiB, 4}, {64 * MiB, 16}};
    for (size_t i = 0; i < 3; i++) {
        geom(geoms[i][0], geoms[i][1], 1);
        cr_assert_eq(qed_l1_index(&G, 0), 0);
        cr_assert_eq(qed_l2_index(&G, 0), 0);
        cr_assert_eq(qed_offset_in_cluster(&G, 0), 0);
    }
}

Test(geom, index_4k_table1_last_byte)
{
    geom(4 * KiB, 1, 1);
    uint64_t last = 1 * GiB - 1; /* last byte of the largest image */
    cr_assert_eq(qed_l1_index(&G, last), 511);
    cr_assert_eq(qed_l2_index(&G, last), 511);
    cr_assert_eq(qed_offset_in_cluster(&G, last), 4095);
    cr_assert_eq(qed_start_of_cluster(&G, last), 1 * GiB - 4096);
}

Test(geom, index_4k_table1_table_boundary)
{
    geom(4 * KiB, 1, 1);
    /* One L2 table covers 512 clusters of 4 KiB = 2 MiB. */
    cr_assert_eq(qed_l1_index(&G, 2 * MiB - 1), 0);
    cr_assert_eq(qed_l2_index(&G, 2 * MiB - 1), 511);
    cr_assert_eq(qed_l1_index(&G, 2 * MiB), 1);
    cr_assert_eq(qed_l2_index(&G, 2 * MiB), 0);
    cr_assert_eq(qed_l2_index(&G, 2 * MiB + 4096), 1);
    cr_assert_eq(qed_l2_index(&G, 4095), 0);
    cr_assert_eq(qed_l2_index(&G, 4096), 1);
}

Test(geom, index_64k_table4_last_byte)
{
    geom(64 * KiB, 4, 1);
    uint64_t last = 64 * TiB - 1;
    cr_assert_eq(qed_l1_index(&G, last), 32767);
    cr_assert_eq(qed_l2_index(&G, last), 32767);
    cr_assert_eq(qed_offset_in_cluster(&G, last), 65535);
}

Test(geom, index_64k_table4_table_boundary)
{
    geom(64 * KiB, 4, 1);
    cr_assert_eq(qed_l1_index(&G, 2 * GiB - 1), 0);
    cr_assert_eq(qed_l2_index(&G, 2 * GiB - 1), 32767);
    cr_assert_eq(qed_l1_index(&G, 2 * GiB), 1);
    cr_assert_eq(qed_l2_index(&G, 2 * GiB), 0);
    cr_assert_eq(qed_l1_index(&G, 10 * GiB + 3 * 64 * KiB + 5), 5);
    cr_assert_eq(qed_l2_index(&G, 10 * GiB + 3 * 64 * KiB + 5), 3);
}

Test(geom, index_64m_table16_last_byte)
{
    geom(64 * MiB, 16, 1);
    uint64_t last = QED_MAX_VIRTUAL_SIZE - 1;
    /* 2^63 / 2^53 = 1024 L1 entries cover the largest image; 2048 would
     * cover the whole 64-bit range. */
    cr_assert_eq(qed_l1_index(&G, last), 1023);
    cr_assert_eq(qed_l2_index(&G, last), (1u << 27) - 1);
    cr_assert_eq(qed_offset_in_cluster(&G, last), 64 * MiB - 513);
    cr_assert_eq(qed_l1_index(&G, UINT64_MAX), 2047);
}

Test(geom, index_64m_table16_table_boundary)
{
    geom(64 * MiB, 16, 1);
    uint64_t cover = 1ull << 53;
    cr_assert_eq(qed_l1_index(&G, cover - 1), 0);
    cr_assert_eq(qed_l2_index(&G, cover - 1), (1u << 27) - 1);
    cr_assert_eq(qed_l1_index(&G, cover), 1);
    cr_assert_eq(qed_l2_index(&G, cover), 0);
    cr_assert_eq(qed_l2_index(&G, 64 * MiB - 1), 0);
    cr_assert_eq(qed_l2_index(&G, 64 * MiB), 1);
}

Test(geom, index_decomposition_round_trips)
{
    uint32_t geoms[][2] = {{4 * KiB, 1}, {64 * KiB, 4}, {64 * MiB, 16}, {4 * KiB, 16}, {64 * MiB, 1}};
    for (size_t i = 0; i < 5; i++) {
        geom(geoms[i][0], geoms[i][1], 1);
        uint64_t pos[] = {0, 1, G.cluster_size - 1, G.cluster_size, qed_l2_coverage(&G) - 1,
                          qed_l2_coverage(&G), qed_l2_coverage(&G) + G.cluster_size + 7,
                          G.max_size / 3, G.max_size - 1};
        for (size_t j = 0; j < sizeof(pos) / sizeof(pos[0]); j++) {
            uint64_t p = pos[j];
            uint64_t l1 = qed_l1_index(&G, p), l2 = qed_l2_index(&G, p);
            cr_assert_lt(l1, G.table_entries, "l1 index out of the table for %" PRIu64, p);
            cr_assert_lt(l2, G.table_entries, "l2 index out of the table for %" PRIu64, p);
            cr_assert_eq(compose(l1, l2, qed_offset_in_cluster(&G, p)), p,
                         "%u/%u: position %" PRIu64 " does not round-trip", geoms[i][0],
                         geoms[i][1], p);
        }
    }
}

Test(geom, l1_index_of_last_byte_fits_l1_for_every_geometry)
{
    for (uint32_t cs = 4 * KiB; cs <= 64 * MiB; cs <<= 1)
        for (uint32_t ts = 1; ts <= 16; ts <<= 1) {
            geom(cs, ts, 1);
            cr_assert_lt(qed_l1_index(&G, G.max_size - 1), G.table_entries, "%u/%u", cs, ts);
        }
}

/* ---- qed_bytes_to_clusters ---- */

Test(geom, bytes_to_clusters_small_values)
{
    geom(64 * KiB, 4, 1);
    cr_assert_eq(qed_bytes_to_clusters(&G, 0), 0);
    cr_assert_eq(qed_bytes_to_clusters(&G, 1), 1);
    cr_assert_eq(qed_bytes_to_clusters(&G, 64 * KiB - 1), 1);
    cr_assert_eq(qed_bytes_to_clusters(&G, 64 * KiB), 1);
    cr_assert_eq(qed_bytes_to_clusters(&G, 64 * KiB + 1), 2);
    cr_assert_eq(qed_bytes_to_clusters(&G, 128 * KiB), 2);
}

Test(geom, bytes_to_clusters_4k)
{
    geom(4 * KiB, 1, 1);
    cr_assert_eq(qed_bytes_to_clusters(&G, 0), 0);
    cr_assert_eq(qed_bytes_to_clusters(&G, 1), 1);
    cr_assert_eq(qed_bytes_to_clusters(&G, 4095), 1);
    cr_assert_eq(qed_bytes_to_clusters(&G, 4096), 1);
    cr_assert_eq(qed_bytes_to_clusters(&G, 4097), 2);
}

Test(geom, bytes_to_clusters_64mib_write_at_4k_is_16384)
{
    /* The seed divided by cluster_size - 1: 64 MiB / 4095 rounds up to 16389. */
    geom(4 * KiB, 16, 1);
    cr_assert_eq(qed_bytes_to_clusters(&G, 64 * MiB), 16384);
    cr_assert_eq(qed_bytes_to_clusters(&G, 16 * MiB), 4096);
    cr_assert_eq(qed_bytes_to_clusters(&G, 64 * MiB - 1), 16384);
    cr_assert_eq(qed_bytes_to_clusters(&G, 64 * MiB + 1), 16385);
}

Test(geom, bytes_to_clusters_every_multiple_exact)
{
    /* n whole clusters are exactly n clusters, for every n up to 2 table spans. */
    geom(4 * KiB, 1, 1);
    for (uint64_t n = 0; n <= 1024; n++) {
        cr_assert_eq(qed_bytes_to_clusters(&G, n * 4096), n, "n=%" PRIu64, n);
        if (n)
            cr_assert_eq(qed_bytes_to_clusters(&G, n * 4096 - 1), n, "n=%" PRIu64 " - 1", n);
    }
}

Test(geom, bytes_to_clusters_64m)
{
    geom(64 * MiB, 16, 1);
    cr_assert_eq(qed_bytes_to_clusters(&G, 1), 1);
    cr_assert_eq(qed_bytes_to_clusters(&G, 64 * MiB), 1);
    cr_assert_eq(qed_bytes_to_clusters(&G, 64 * MiB + 1), 2);
    cr_assert_eq(qed_bytes_to_clusters(&G, 1 * GiB), 16);
}

Test(geom, bytes_to_clusters_no_overflow_at_top)
{
    geom(4 * KiB, 1, 1);
    cr_assert_eq(qed_bytes_to_clusters(&G, UINT64_MAX), 1ull << 52);
    geom(64 * MiB, 16, 1);
    cr_assert_eq(qed_bytes_to_clusters(&G, UINT64_MAX & ~511ull), 1ull << 38);
}

/* ---- qed_start_of_cluster / qed_offset_in_cluster ---- */

Test(geom, start_and_offset_in_cluster)
{
    geom(64 * KiB, 4, 1);
    cr_assert_eq(qed_start_of_cluster(&G, 64 * KiB + 5), 64 * KiB);
    cr_assert_eq(qed_offset_in_cluster(&G, 64 * KiB + 5), 5);
    cr_assert_eq(qed_start_of_cluster(&G, 128 * KiB), 128 * KiB);
    cr_assert_eq(qed_offset_in_cluster(&G, 128 * KiB), 0);
    geom(64 * MiB, 16, 1);
    cr_assert_eq(qed_start_of_cluster(&G, UINT64_MAX), UINT64_MAX - (64 * MiB - 1));
    cr_assert_eq(qed_offset_in_cluster(&G, UINT64_MAX), 64 * MiB - 1);
}

/* ---- qed_check_cluster_offset ---- */

Test(geom, cluster_offset_valid_after_header)
{
    geom(64 * KiB, 4, 1);
    cr_assert(qed_check_cluster_offset(&G, 64 * KiB, 1 * MiB));
    cr_assert(qed_check_cluster_offset(&G, 1 * MiB - 64 * KiB, 1 * MiB));
}

Test(geom, cluster_offset_zero_is_inside_header)
{
    geom(64 * KiB, 4, 1);
    cr_assert_not(qed_check_cluster_offset(&G, 0, 1 * MiB));
}

Test(geom, cluster_offset_inside_multi_cluster_header)
{
    geom(64 * KiB, 4, 3);
    cr_assert_not(qed_check_cluster_offset(&G, 64 * KiB, 1 * MiB));
    cr_assert_not(qed_check_cluster_offset(&G, 128 * KiB, 1 * MiB));
    cr_assert(qed_check_cluster_offset(&G, 192 * KiB, 1 * MiB));
}

Test(geom, cluster_offset_unaligned)
{
    geom(64 * KiB, 4, 1);
    cr_assert_not(qed_check_cluster_offset(&G, 64 * KiB + 512, 1 * MiB));
    cr_assert_not(qed_check_cluster_offset(&G, 64 * KiB + 1, 1 * MiB));
    cr_assert_not(qed_check_cluster_offset(&G, 128 * KiB - 1, 1 * MiB));
    geom(4 * KiB, 1, 1);
    cr_assert(qed_check_cluster_offset(&G, 8 * KiB, 1 * MiB));
    cr_assert_not(qed_check_cluster_offset(&G, 8 * KiB + 2048, 1 * MiB));
}

Test(geom, cluster_offset_at_or_past_eof)
{
    geom(64 * KiB, 4, 1);
    cr_assert_not(qed_check_cluster_offset(&G, 1 * MiB, 1 * MiB));
    cr_assert_not(qed_check_cluster_offset(&G, 2 * MiB, 1 * MiB));
    cr_assert_not(qed_check_cluster_offset(&G, UINT64_MAX & ~(64 * KiB - 1), 1 * MiB));
}

Test(geom, cluster_offset_huge_geometry)
{
    geom(64 * MiB, 16, 1);
    cr_assert_not(qed_check_cluster_offset(&G, 32 * MiB, 1 * GiB));
    cr_assert(qed_check_cluster_offset(&G, 64 * MiB, 1 * GiB));
    cr_assert(qed_check_cluster_offset(&G, 1 * GiB - 64 * MiB, 1 * GiB));
    cr_assert_not(qed_check_cluster_offset(&G, 1 * GiB, 1 * GiB));
}

/* ---- qed_check_table_offset ---- */

Test(geom, table_offset_fits_exactly)
{
    geom(64 * KiB, 4, 1);
    /* Table of 4 clusters at 64K ends at 320K. */
    cr_assert(qed_check_table_offset(&G, 64 * KiB, 320 * KiB));
    cr_assert(qed_check_table_offset(&G, 256 * KiB, 512 * KiB));
}

Test(geom, table_offset_last_cluster_past_eof)
{
    geom(64 * KiB, 4, 1);
    cr_assert_not(qed_check_table_offset(&G, 64 * KiB, 256 * KiB));
    cr_assert_not(qed_check_table_offset(&G, 320 * KiB, 512 * KiB));
}

Test(geom, table_offset_unaligned_or_in_header)
{
    geom(64 * KiB, 4, 1);
    cr_assert_not(qed_check_table_offset(&G, 64 * KiB + 4096, 1 * MiB));
    cr_assert_not(qed_check_table_offset(&G, 0, 1 * MiB));
}

Test(geom, table_offset_overflow_near_uint64_max)
{
    geom(64 * KiB, 4, 1);
    /* The start is a valid cluster in a huge file; the table end wraps. */
    uint64_t off = UINT64_MAX & ~(64 * KiB - 1);
    cr_assert_not(qed_check_table_offset(&G, off, UINT64_MAX));
    cr_assert_not(qed_check_table_offset(&G, off - 128 * KiB, UINT64_MAX));
    /* A table that ends at the last whole cluster fits. */
    cr_assert(qed_check_table_offset(&G, off - 256 * KiB, UINT64_MAX));
}

Test(geom, table_offset_table_size_1_same_as_cluster)
{
    geom(4 * KiB, 1, 1);
    cr_assert(qed_check_table_offset(&G, 4 * KiB, 8 * KiB));
    cr_assert_not(qed_check_table_offset(&G, 8 * KiB, 8 * KiB));
    cr_assert_not(qed_check_table_offset(&G, 4 * KiB + 512, 16 * KiB));
}

Test(geom, table_offset_huge_geometry)
{
    geom(64 * MiB, 16, 1);
    /* Header 64 MiB, table 1 GiB. */
    cr_assert(qed_check_table_offset(&G, 64 * MiB, 64 * MiB + 1 * GiB));
    cr_assert_not(qed_check_table_offset(&G, 64 * MiB, 1 * GiB));
    uint64_t top = UINT64_MAX & ~(64 * MiB - 1);
    cr_assert_not(qed_check_table_offset(&G, top, UINT64_MAX));
    cr_assert(qed_check_table_offset(&G, top - 1 * GiB, UINT64_MAX));
}
