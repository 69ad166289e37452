/*
 * test-header.c - unit tests of the QED header: encoding, decoding, and every
 * open-time validation rule of qed_header_validate(), one test per rule (see
 * "What an opener must validate" in the format notes).
 *
 * Each test starts from a header that validates, breaks exactly one field,
 * and checks the return code and that the message names the file ("t.qed")
 * and the field.  The matching "just inside the limit" case is checked next
 * to each refusal, so a rule that refuses everything cannot pass.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include "qed-format.h"

#define NAME "t.qed"
#define KiB 1024ull
#define MiB (1024ull * 1024)
#define GiB (1024ull * MiB)

static char err[512];
static struct qed_geom geom;

/* A valid header: one header cluster, the L1 table right after it. */
static struct qed_header good(uint32_t cs, uint32_t ts)
{
    struct qed_header h = {
        .magic = QED_MAGIC,
        .cluster_size = cs,
        .table_size = ts,
        .header_size = 1,
        .l1_table_offset = cs,
        .image_size = 64 * MiB,
    };
    return h;
}

/* File size holding the header and the L1 table of good(). */
static uint64_t good_file_size(const struct qed_header *h)
{
    return (uint64_t)h->cluster_size * h->header_size + (uint64_t)h->cluster_size * h->table_size;
}

static int validate(const struct qed_header *h, uint64_t file_size)
{
    memset(err, 0, sizeof(err));
    memset(&geom, 0xa5, sizeof(geom));
    return qed_header_validate(h, file_size, NAME, &geom, err, sizeof(err));
}

static void expect_ok(const struct qed_header *h, uint64_t file_size)
{
    int r = validate(h, file_size);
    cr_assert_eq(r, 0, "expected the header to validate, got %d: %s", r, err);
}

/* Refused with @ret, and the message starts with the file name and contains @needle. */
static void expect_refused(const struct qed_header *h, uint64_t file_size, int ret,
                           const char *needle)
{
    int r = validate(h, file_size);
    cr_assert_eq(r, ret, "expected %d, got %d (message \"%s\")", ret, r, err);
    cr_assert(strncmp(err, NAME ": ", strlen(NAME) + 2) == 0,
              "message does not start with the file name: \"%s\"", err);
    cr_assert(strstr(err, needle) != NULL, "message \"%s\" does not mention \"%s\"", err,
              needle);
}

/* ---- Sanity: the base header is valid ---- */

Test(header, base_header_is_valid)
{
    struct qed_header h = good(64 * KiB, 4);
    expect_ok(&h, good_file_size(&h));
    cr_assert_eq(geom.cluster_size, 64 * KiB);
    cr_assert_eq(geom.table_size, 4);
    cr_assert_eq(geom.table_entries, 32768);
    cr_assert_eq(geom.header_bytes, 64 * KiB);
    cr_assert_eq(geom.table_bytes, 256 * KiB);
}

/* ---- magic ---- */

Test(header, bad_magic_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.magic = 0x00444552; /* "RED\0" */
    expect_refused(&h, good_file_size(&h), -EINVAL, "magic");
}

Test(header, qcow2_magic_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.magic = 0xfb494651; /* "QFI\xfb" read little-endian */
    expect_refused(&h, good_file_size(&h), -EINVAL, "not a QED image");
}

/* ---- features ---- */

Test(header, unknown_feature_bit_refused_and_named)
{
    struct qed_header h = good(64 * KiB, 4);
    h.features = QED_F_NEED_CHECK | 0x10;
    expect_refused(&h, good_file_size(&h), -ENOTSUP, "0x10 ");
    /* Only the unknown bit is named, not the whole field (0x12). */
    cr_assert(strstr(err, "0x12") == NULL, "message names known bits too: \"%s\"", err);
    cr_assert(strstr(err, "feature") != NULL, "message does not say \"feature\": \"%s\"", err);
}

Test(header, unknown_high_feature_bit_refused_and_named)
{
    struct qed_header h = good(64 * KiB, 4);
    h.features = 1ull << 63;
    expect_refused(&h, good_file_size(&h), -ENOTSUP, "0x8000000000000000");
}

Test(header, unknown_bit_3_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.features = 0x8; /* the first bit after the known ones */
    expect_refused(&h, good_file_size(&h), -ENOTSUP, "0x8 ");
}

Test(header, known_feature_bits_accepted)
{
    struct qed_header h = good(64 * KiB, 4);
    h.features = QED_F_NEED_CHECK | QED_F_BACKING_FORMAT_NO_PROBE;
    expect_ok(&h, good_file_size(&h));
}

Test(header, unknown_compat_bits_accepted)
{
    struct qed_header h = good(64 * KiB, 4);
    h.compat_features = ~0ull;
    expect_ok(&h, good_file_size(&h));
}

Test(header, unknown_autoclear_bits_accepted_by_validation)
{
    struct qed_header h = good(64 * KiB, 4);
    h.autoclear_features = ~0ull;
    expect_ok(&h, good_file_size(&h));
}

/* ---- cluster_size ---- */

Test(header, cluster_size_not_power_of_two_exact_message)
{
    struct qed_header h = good(64 * KiB, 4);
    h.cluster_size = 12288;
    cr_assert_eq(validate(&h, 1 * GiB), -EINVAL);
    cr_assert_str_eq(err, "t.qed: QED cluster size 12288 is not a power of two in [4096, 67108864]");
}

Test(header, cluster_size_below_4k_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.cluster_size = 2048;
    h.l1_table_offset = 2048;
    cr_assert_eq(validate(&h, 1 * GiB), -EINVAL);
    cr_assert_str_eq(err, "t.qed: QED cluster size 2048 is not a power of two in [4096, 67108864]");
}

Test(header, cluster_size_above_64m_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.cluster_size = 128 * MiB;
    h.l1_table_offset = 128 * MiB;
    cr_assert_eq(validate(&h, 4 * GiB), -EINVAL);
    cr_assert_str_eq(err,
                     "t.qed: QED cluster size 134217728 is not a power of two in [4096, 67108864]");
}

Test(header, cluster_size_zero_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.cluster_size = 0;
    cr_assert_eq(validate(&h, 1 * GiB), -EINVAL);
    cr_assert_str_eq(err, "t.qed: QED cluster size 0 is not a power of two in [4096, 67108864]");
}

Test(header, cluster_size_bounds_accepted)
{
    struct qed_header lo = good(4 * KiB, 4);
    struct qed_header hi = good(64 * MiB, 4);
    expect_ok(&lo, good_file_size(&lo));
    expect_ok(&hi, good_file_size(&hi));
}

/* ---- table_size ---- */

Test(header, table_size_zero_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.table_size = 0;
    cr_assert_eq(validate(&h, 1 * GiB), -EINVAL);
    cr_assert_str_eq(err, "t.qed: QED table size 0 is not a power of two in [1, 16]");
}

Test(header, table_size_three_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.table_size = 3;
    cr_assert_eq(validate(&h, 1 * GiB), -EINVAL);
    cr_assert_str_eq(err, "t.qed: QED table size 3 is not a power of two in [1, 16]");
}

Test(header, table_size_32_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.table_size = 32;
    cr_assert_eq(validate(&h, 1 * GiB), -EINVAL);
    cr_assert_str_eq(err, "t.qed: QED table size 32 is not a power of two in [1, 16]");
}

Test(header, table_size_1_accepted)
{
    /* QEMU refuses table size 1; the specification allows it. */
    struct qed_header h = good(64 * KiB, 1);
    expect_ok(&h, good_file_size(&h));
    cr_assert_eq(geom.table_entries, 8192);
}

Test(header, table_size_16_accepted)
{
    struct qed_header h = good(64 * KiB, 16);
    expect_ok(&h, good_file_size(&h));
}

/* ---- header_size ---- */

Test(header, header_size_zero_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.header_size = 0;
    expect_refused(&h, good_file_size(&h) + 64 * KiB, -EINVAL, "header size");
}

Test(header, header_size_overflowing_32_bits_refused)
{
    /* 64 clusters of 64 MiB = 2^32 bytes: one past UINT32_MAX. */
    struct qed_header h = good(64 * MiB, 1);
    h.header_size = 64;
    h.l1_table_offset = 64 * 64 * MiB;
    expect_refused(&h, 70 * 64 * MiB, -EINVAL, "header size");
}

Test(header, header_size_overflowing_32_bits_small_clusters_refused)
{
    /* 2^20 clusters of 4 KiB = 2^32 bytes. */
    struct qed_header h = good(4 * KiB, 1);
    h.header_size = 1u << 20;
    h.l1_table_offset = 4 * GiB;
    expect_refused(&h, 5 * GiB, -EINVAL, "header size");
}

Test(header, header_size_huge_product_refused)
{
    /* The product wraps in 32 bits to a small number: must be computed wider. */
    struct qed_header h = good(64 * KiB, 4);
    h.header_size = 0x10001; /* * 65536 = 2^32 + 65536, wraps to 65536 in 32 bits */
    h.l1_table_offset = 64 * KiB;
    expect_refused(&h, good_file_size(&h), -EINVAL, "header size");
}

Test(header, header_size_just_below_32_bits_accepted)
{
    /* 63 clusters of 64 MiB = 2^32 - 2^26 bytes fits in 32 bits. */
    struct qed_header h = good(64 * MiB, 1);
    h.header_size = 63;
    h.l1_table_offset = 63 * 64 * MiB;
    expect_ok(&h, 64 * 64 * MiB);
    cr_assert_eq(geom.header_bytes, 63 * 64 * MiB);
}

Test(header, header_size_two_accepted)
{
    struct qed_header h = good(64 * KiB, 4);
    h.header_size = 2;
    h.l1_table_offset = 128 * KiB;
    expect_ok(&h, 128 * KiB + 256 * KiB);
    cr_assert_eq(geom.header_bytes, 128 * KiB);
}

/* ---- image_size ---- */

Test(header, image_size_not_multiple_of_512_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.image_size = 1 * MiB + 1;
    expect_refused(&h, good_file_size(&h), -EINVAL, "image size 1048577");
    cr_assert(strstr(err, "512") != NULL, "message does not name 512: \"%s\"", err);
}

Test(header, image_size_256_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.image_size = 256;
    expect_refused(&h, good_file_size(&h), -EINVAL, "image size 256");
}

Test(header, image_size_zero_accepted)
{
    struct qed_header h = good(64 * KiB, 4);
    h.image_size = 0;
    expect_ok(&h, good_file_size(&h));
}

Test(header, image_size_above_max_refused)
{
    /* 4 KiB clusters, table size 1: N = 512, max = 512 * 512 * 4096 = 1 GiB. */
    struct qed_header h = good(4 * KiB, 1);
    h.image_size = 1 * GiB + 512;
    expect_refused(&h, good_file_size(&h), -EINVAL, "image size 1073742336");
    cr_assert(strstr(err, "1073741824") != NULL, "message does not name the maximum: \"%s\"",
              err);
}

Test(header, image_size_at_max_accepted)
{
    struct qed_header h = good(4 * KiB, 1);
    h.image_size = 1 * GiB;
    expect_ok(&h, good_file_size(&h));
    cr_assert_eq(geom.max_size, 1 * GiB);
}

Test(header, image_size_above_max_default_geometry_refused)
{
    /* 64 KiB / 4: N = 32768, max = 2^15 * 2^15 * 2^16 = 2^46 = 64 TiB. */
    struct qed_header h = good(64 * KiB, 4);
    h.image_size = (1ull << 46) + 512;
    expect_refused(&h, good_file_size(&h), -EINVAL, "70368744177664");
    h.image_size = 1ull << 46;
    expect_ok(&h, good_file_size(&h));
}

Test(header, max_size_huge_geometry_does_not_overflow)
{
    /* 64 MiB / 16: N = 2^27, N*N*cs = 2^80.  QEMU's 64-bit product overflows
     * and refuses every such image; the maximum must be capped instead, at
     * INT64_MAX rounded down to 512, the most NBD clients can address. */
    struct qed_header h = good(64 * MiB, 16);
    h.image_size = 1ull << 50;
    expect_ok(&h, good_file_size(&h));
    cr_assert_eq(geom.max_size, QED_MAX_VIRTUAL_SIZE);
}

Test(header, huge_geometry_accepts_largest_size)
{
    struct qed_header h = good(64 * MiB, 16);
    h.image_size = QED_MAX_VIRTUAL_SIZE;
    expect_ok(&h, good_file_size(&h));
}

Test(header, geometry_with_product_exactly_2_pow_64_capped)
{
    /* 4 MiB / 4: N = 2^21, N*N*cs = 2^64: wraps to 0 in 64 bits; capped at 2^63 - 512. */
    struct qed_header h = good(4 * MiB, 4);
    h.image_size = 1ull << 40;
    expect_ok(&h, good_file_size(&h));
    cr_assert_eq(geom.max_size, QED_MAX_VIRTUAL_SIZE);
}

/* ---- l1_table_offset ---- */

Test(header, l1_offset_unaligned_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.l1_table_offset = 64 * KiB + 512;
    expect_refused(&h, 1 * MiB, -EINVAL, "L1 table offset 66048");
    cr_assert(strstr(err, "aligned") != NULL, "message does not say aligned: \"%s\"", err);
}

Test(header, l1_offset_zero_inside_header_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.l1_table_offset = 0;
    expect_refused(&h, 1 * MiB, -EINVAL, "L1 table offset 0");
    cr_assert(strstr(err, "header") != NULL, "message does not name the header: \"%s\"", err);
}

Test(header, l1_offset_inside_multi_cluster_header_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.header_size = 4;
    h.l1_table_offset = 3 * 64 * KiB; /* the last header cluster */
    expect_refused(&h, 1 * MiB, -EINVAL, "inside the header");
    h.l1_table_offset = 4 * 64 * KiB; /* the first cluster after it */
    expect_ok(&h, 1 * MiB);
}

Test(header, l1_table_past_eof_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    /* The table needs 64K..320K; the file stops one cluster short. */
    expect_refused(&h, 256 * KiB, -EINVAL, "L1 table");
    cr_assert(strstr(err, "end of the file") != NULL, "message: \"%s\"", err);
}

Test(header, l1_table_ending_exactly_at_eof_accepted)
{
    struct qed_header h = good(64 * KiB, 4);
    expect_ok(&h, 320 * KiB);
}

Test(header, l1_table_needing_trailing_partial_cluster_refused)
{
    /* The file ends 1 byte short of the table's last cluster: rounded down to
     * a whole cluster it ends before the table does. */
    struct qed_header h = good(64 * KiB, 4);
    expect_refused(&h, 320 * KiB - 1, -EINVAL, "L1 table");
    /* Most of the last cluster present is still not enough. */
    expect_refused(&h, 256 * KiB + 4096, -EINVAL, "L1 table");
}

Test(header, trailing_partial_cluster_after_table_accepted)
{
    struct qed_header h = good(64 * KiB, 4);
    expect_ok(&h, 320 * KiB + 12345);
}

Test(header, l1_offset_plus_table_overflow_refused)
{
    /* Aligned, after the header, but offset + table size wraps around 2^64
     * to a small number, which a careless check would find inside the file. */
    struct qed_header h = good(64 * KiB, 4);
    h.l1_table_offset = UINT64_MAX & ~(uint64_t)(64 * KiB - 1); /* 2^64 - 64K */
    expect_refused(&h, UINT64_MAX, -EINVAL, "L1 table");
}

Test(header, l1_offset_plus_table_exactly_2_pow_64_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.l1_table_offset = 0 - 256 * KiB; /* offset + 256K == 2^64, which wraps to 0 */
    expect_refused(&h, UINT64_MAX, -EINVAL, "L1 table");
}

Test(header, l1_table_at_end_of_largest_file_accepted)
{
    /* The biggest file: rounded down it ends at 2^64 - 64K; a table ending
     * there is inside it. */
    struct qed_header h = good(64 * KiB, 4);
    h.l1_table_offset = 0 - 64 * KiB - 256 * KiB;
    expect_ok(&h, UINT64_MAX);
}

Test(header, l1_table_at_large_offset_accepted)
{
    struct qed_header h = good(64 * KiB, 4);
    h.l1_table_offset = 1 * GiB;
    expect_ok(&h, 1 * GiB + 256 * KiB);
    expect_refused(&h, 1 * GiB + 192 * KiB, -EINVAL, "L1 table");
}

/* ---- backing file name ---- */

Test(header, backing_name_past_header_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.features = QED_F_BACKING_FILE;
    h.backing_filename_offset = 64;
    h.backing_filename_size = 64 * KiB - 63; /* ends one byte past the header */
    expect_refused(&h, good_file_size(&h), -EINVAL, "backing file name");
}

Test(header, backing_name_ending_at_header_end_accepted)
{
    /* A name this long is also >= PATH_MAX, so use a larger header check:
     * offset near the end and a short name that ends exactly at the end. */
    struct qed_header h = good(64 * KiB, 4);
    h.features = QED_F_BACKING_FILE;
    h.backing_filename_offset = 64 * KiB - 100;
    h.backing_filename_size = 100;
    expect_ok(&h, good_file_size(&h));
    h.backing_filename_size = 101;
    expect_refused(&h, good_file_size(&h), -EINVAL, "backing file name");
}

Test(header, backing_offset_past_header_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.features = QED_F_BACKING_FILE;
    h.backing_filename_offset = 64 * KiB;
    h.backing_filename_size = 8;
    expect_refused(&h, good_file_size(&h), -EINVAL, "backing file name");
}

Test(header, backing_offset_size_32bit_overflow_refused)
{
    /* 0xffffffff + 2 is 1 in 32 bits: it must be computed in 64 bits. */
    struct qed_header h = good(64 * KiB, 4);
    h.features = QED_F_BACKING_FILE;
    h.backing_filename_offset = 0xffffffffu;
    h.backing_filename_size = 2;
    expect_refused(&h, good_file_size(&h), -EINVAL, "backing file name");
}

Test(header, backing_size_32bit_overflow_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.features = QED_F_BACKING_FILE;
    h.backing_filename_offset = 64;
    h.backing_filename_size = 0xffffffffu; /* 64 + that wraps to 63 in 32 bits */
    expect_refused(&h, good_file_size(&h), -EINVAL, "past the header");
}

Test(header, backing_overflow_with_largest_header_refused)
{
    /* A header of nearly 4 GiB: the 32-bit sum wraps below it, the 64-bit
     * sum does not fit. */
    struct qed_header h = good(64 * MiB, 1);
    h.header_size = 63;
    h.l1_table_offset = 63 * 64 * MiB;
    h.features = QED_F_BACKING_FILE;
    h.backing_filename_offset = 0xfffff000u;
    h.backing_filename_size = 0x2000;
    expect_refused(&h, 64 * 64 * MiB, -EINVAL, "backing file name");
}

Test(header, backing_name_path_max_refused)
{
    struct qed_header h = good(64 * KiB, 4);
    h.features = QED_F_BACKING_FILE;
    h.backing_filename_offset = 64;
    h.backing_filename_size = PATH_MAX;
    expect_refused(&h, good_file_size(&h), -EINVAL, "backing file name");
    cr_assert(strstr(err, "PATH_MAX") != NULL, "message does not name PATH_MAX: \"%s\"", err);
}

Test(header, backing_name_path_max_minus_one_accepted)
{
    struct qed_header h = good(64 * KiB, 4);
    h.features = QED_F_BACKING_FILE;
    h.backing_filename_offset = 64;
    h.backing_filename_size = PATH_MAX - 1;
    expect_ok(&h, good_file_size(&h));
}

Test(header, backing_fields_ignored_without_backing_feature)
{
    struct qed_header h = good(64 * KiB, 4);
    h.backing_filename_offset = 0xffffffffu;
    h.backing_filename_size = 0xffffffffu;
    expect_ok(&h, good_file_size(&h));
    h.features = QED_F_BACKING_FORMAT_NO_PROBE | QED_F_NEED_CHECK;
    expect_ok(&h, good_file_size(&h));
}

Test(header, backing_fields_checked_with_backing_feature)
{
    /* The same fields as above refused once BACKING_FILE is set. */
    struct qed_header h = good(64 * KiB, 4);
    h.backing_filename_offset = 0xffffffffu;
    h.backing_filename_size = 0xffffffffu;
    h.features = QED_F_BACKING_FILE;
    expect_refused(&h, good_file_size(&h), -EINVAL, "backing file name");
}

/* ---- geometry filled on success ---- */

Test(header, geometry_filled_on_success)
{
    struct qed_header h = good(4 * KiB, 16);
    h.header_size = 2;
    h.l1_table_offset = 8 * KiB;
    expect_ok(&h, 8 * KiB + 64 * KiB);
    cr_assert_eq(geom.cluster_size, 4096);
    cr_assert_eq(geom.table_size, 16);
    cr_assert_eq(geom.cluster_bits, 12);
    cr_assert_eq(geom.table_entries, 8192);
    cr_assert_eq(geom.entry_bits, 13);
    cr_assert_eq(geom.l2_shift, 12);
    cr_assert_eq(geom.l1_shift, 25);
    cr_assert_eq(geom.table_bytes, 64 * KiB);
    cr_assert_eq(geom.header_bytes, 8 * KiB);
    cr_assert_eq(geom.max_size, 1ull << 38);
}

Test(header, null_error_buffer_tolerated)
{
    struct qed_header h = good(64 * KiB, 4);
    struct qed_geom g;
    h.cluster_size = 12288;
    cr_assert_eq(qed_header_validate(&h, 1 * MiB, NAME, &g, NULL, 0), -EINVAL);
}

Test(header, message_truncated_to_buffer)
{
    struct qed_header h = good(64 * KiB, 4);
    struct qed_geom g;
    char small[12];
    memset(small, 'x', sizeof(small));
    h.cluster_size = 12288;
    cr_assert_eq(qed_header_validate(&h, 1 * MiB, NAME, &g, small, sizeof(small)), -EINVAL);
    cr_assert_eq(small[sizeof(small) - 1], '\0');
    cr_assert_str_eq(small, "t.qed: QED ");
}

/* ---- encode / decode ---- */

Test(header, encode_decode_round_trip)
{
    struct qed_header in = {
        .magic = QED_MAGIC,
        .cluster_size = 0x01020304,
        .table_size = 0x05060708,
        .header_size = 0x090a0b0c,
        .features = 0x1112131415161718ull,
        .compat_features = 0x2122232425262728ull,
        .autoclear_features = 0x3132333435363738ull,
        .l1_table_offset = 0x4142434445464748ull,
        .image_size = 0x5152535455565758ull,
        .backing_filename_offset = 0x61626364,
        .backing_filename_size = 0x71727374,
    };
    struct qed_header out;
    uint8_t raw[QED_HEADER_BYTES];

    memset(raw, 0xee, sizeof(raw));
    qed_header_encode(&in, raw);
    memset(&out, 0, sizeof(out));
    qed_header_decode(raw, &out);
    cr_assert_eq(out.magic, in.magic);
    cr_assert_eq(out.cluster_size, in.cluster_size);
    cr_assert_eq(out.table_size, in.table_size);
    cr_assert_eq(out.header_size, in.header_size);
    cr_assert_eq(out.features, in.features);
    cr_assert_eq(out.compat_features, in.compat_features);
    cr_assert_eq(out.autoclear_features, in.autoclear_features);
    cr_assert_eq(out.l1_table_offset, in.l1_table_offset);
    cr_assert_eq(out.image_size, in.image_size);
    cr_assert_eq(out.backing_filename_offset, in.backing_filename_offset);
    cr_assert_eq(out.backing_filename_size, in.backing_filename_size);
}

Test(header, encode_is_little_endian_at_spec_offsets)
{
    struct qed_header in = {
        .magic = QED_MAGIC,
        .cluster_size = 0x10000,
        .table_size = 4,
        .header_size = 1,
        .features = 0x5,
        .compat_features = 0x0102,
        .autoclear_features = 0x0a0b,
        .l1_table_offset = 0x10000,
        .image_size = 0x0102030405060700ull,
        .backing_filename_offset = 64,
        .backing_filename_size = 9,
    };
    /* The expected bytes are written out by hand from the format table. */
    static const uint8_t want[QED_HEADER_BYTES] = {
        'Q', 'E', 'D', 0,   0, 0, 1, 0,   4, 0, 0, 0,   1, 0, 0, 0,           /* 0..15 */
        5, 0, 0, 0, 0, 0, 0, 0,           0x02, 0x01, 0, 0, 0, 0, 0, 0,         /* 16..31 */
        0x0b, 0x0a, 0, 0, 0, 0, 0, 0,     0, 0, 1, 0, 0, 0, 0, 0,               /* 32..47 */
        0x00, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,                         /* 48..55 */
        64, 0, 0, 0,                      9, 0, 0, 0,                           /* 56..63 */
    };
    uint8_t raw[QED_HEADER_BYTES];

    qed_header_encode(&in, raw);
    for (int i = 0; i < QED_HEADER_BYTES; i++)
        cr_assert_eq(raw[i], want[i], "byte %d: %#x, expected %#x", i, raw[i], want[i]);
}

Test(header, decode_reads_magic_bytes)
{
    uint8_t raw[QED_HEADER_BYTES] = {'Q', 'E', 'D', 0};
    struct qed_header h;

    qed_header_decode(raw, &h);
    cr_assert_eq(h.magic, QED_MAGIC);
    cr_assert_eq(h.cluster_size, 0);
    cr_assert_eq(h.image_size, 0);
}

Test(header, decoded_qemu_style_header_validates)
{
    /* Bytes as qemu-img create -f qed writes them for a 1 GiB image. */
    uint8_t raw[QED_HEADER_BYTES] = {0};
    struct qed_header h;

    memcpy(raw, "QED", 4);
    raw[6] = 1;           /* cluster_size 0x10000 */
    raw[8] = 4;           /* table_size 4 */
    raw[12] = 1;          /* header_size 1 */
    raw[42] = 1;          /* l1_table_offset 0x10000 */
    raw[51] = 0x40;       /* image_size 0x40000000 */
    qed_header_decode(raw, &h);
    expect_ok(&h, 320 * KiB);
    cr_assert_eq(h.image_size, 1 * GiB);
}
