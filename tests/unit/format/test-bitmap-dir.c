/*
 * test-bitmap-dir.c - unit tests of the bitmap directory of the QED bitmap
 * extension (lib/format/bitmap-dir.c, doc/qed-bitmaps.md): CRC-32C, the
 * encoding round trip, every refusal of decode and validate, where the
 * area starts, and the size of a bitmap's bits.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "bitmap-dir.h"
#include "qed-format.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)

static uint8_t buf[QED_BMDIR_SLOT];
static struct qed_bmdir D, out;
static char why[256];

/* A header of 64 KiB clusters whose area holds 16 clusters. */
static struct qed_header H = {.magic = QED_MAGIC, .cluster_size = 64 * 1024, .table_size = 4,
                              .header_size = 16, .image_size = 1024 * MiB};

static void two_bitmaps(void)
{
    memset(&D, 0, sizeof(D));
    D.generation = 7;
    D.image_size = H.image_size;
    D.nb = 2;
    strcpy(D.e[0].name, "a");
    D.e[0].granularity = 64 * 1024;
    D.e[0].flags = QED_BME_ENABLED;
    D.e[0].data_offset = 128 * KiB;
    D.e[0].data_length = qed_bm_data_bytes(D.image_size, 64 * 1024);
    strcpy(D.e[1].name, "backup-2026.12.07");
    D.e[1].granularity = 512;
    D.e[1].flags = QED_BME_IN_USE;
    D.e[1].data_offset = 132 * KiB;
    D.e[1].data_length = qed_bm_data_bytes(D.image_size, 512);
}

/* Encode @d and decode it again into out. */
static int reencode_decode(const struct qed_bmdir *d)
{
    qed_bmdir_encode(d, buf);
    return qed_bmdir_decode(buf, &out, why, sizeof(why));
}

Test(bmdir, crc32c_known_answer)
{
    cr_assert_eq(qed_bmdir_crc32c((const uint8_t *)"123456789", 9), 0xe3069283u);
    cr_assert_eq(qed_bmdir_crc32c((const uint8_t *)"", 0), 0);
}

Test(bmdir, round_trip)
{
    size_t n;

    two_bitmaps();
    n = qed_bmdir_encode(&D, buf);
    cr_assert_eq(n, QED_BMDIR_HDR + 2 * QED_BME_HDR + 8 + 24);
    cr_assert_eq(memcmp(buf, "QEDBITMP", 8), 0);
    cr_assert_eq(qed_bmdir_decode(buf, &out, why, sizeof(why)), 0, "%s", why);
    cr_assert_eq(out.generation, 7);
    cr_assert_eq(out.nb, 2);
    cr_assert_eq(out.image_size, D.image_size);
    for (int i = 0; i < 2; i++) {
        cr_assert_str_eq(out.e[i].name, D.e[i].name);
        cr_assert_eq(out.e[i].granularity, D.e[i].granularity);
        cr_assert_eq(out.e[i].flags, D.e[i].flags);
        cr_assert_eq(out.e[i].data_offset, D.e[i].data_offset);
        cr_assert_eq(out.e[i].data_length, D.e[i].data_length);
    }
    cr_assert_eq(qed_bmdir_validate(&out, &H, why, sizeof(why)), 0, "%s", why);
}

Test(bmdir, decode_refusals)
{
    two_bitmaps();
    memset(buf, 0, sizeof(buf));
    cr_assert_eq(qed_bmdir_decode(buf, &out, why, sizeof(why)), -ENOENT);
    qed_bmdir_encode(&D, buf);
    buf[100] ^= 1;
    cr_assert_eq(qed_bmdir_decode(buf, &out, why, sizeof(why)), -EINVAL);
    cr_assert(strstr(why, "checksum"), "%s", why);
    qed_bmdir_encode(&D, buf);
    buf[8] = 2;
    cr_assert_eq(qed_bmdir_decode(buf, &out, why, sizeof(why)), -EINVAL);
    cr_assert(strstr(why, "version"), "%s", why);
    qed_bmdir_encode(&D, buf);
    qed_put32(buf + 24, QED_BMDIR_SLOT + 8);
    cr_assert_eq(qed_bmdir_decode(buf, &out, why, sizeof(why)), -EINVAL);
    cr_assert(strstr(why, "size"), "%s", why);
    /* More bitmaps than entries: the checksum is right, the entries run out. */
    qed_bmdir_encode(&D, buf);
    qed_put32(buf + 28, 3);
    qed_put32(buf + 12, 0);
    qed_put32(buf + 12, qed_bmdir_crc32c(buf, qed_get32(buf + 24)));
    cr_assert_eq(qed_bmdir_decode(buf, &out, why, sizeof(why)), -EINVAL);
    cr_assert(strstr(why, "past the end") || strstr(why, "name length"), "%s", why);
    qed_put32(buf + 28, 65);
    qed_put32(buf + 12, 0);
    qed_put32(buf + 12, qed_bmdir_crc32c(buf, qed_get32(buf + 24)));
    cr_assert_eq(qed_bmdir_decode(buf, &out, why, sizeof(why)), -EINVAL);
    cr_assert(strstr(why, "at most 64"), "%s", why);
}

Test(bmdir, validate_refusals)
{
    struct qed_bmdir d;

    two_bitmaps();
    d = D, strcpy(d.e[1].name, "a");
    cr_assert_eq(reencode_decode(&d), 0);
    cr_assert_eq(qed_bmdir_validate(&out, &H, why, sizeof(why)), -EINVAL);
    cr_assert(strstr(why, "twice"), "%s", why);
    d = D, strcpy(d.e[1].name, "a b");
    cr_assert_eq(reencode_decode(&d), 0);
    cr_assert_eq(qed_bmdir_validate(&out, &H, why, sizeof(why)), -EINVAL);
    cr_assert(strstr(why, "invalid name"), "%s", why);
    d = D, d.e[0].granularity = 256;
    cr_assert_eq(reencode_decode(&d), 0);
    cr_assert_eq(qed_bmdir_validate(&out, &H, why, sizeof(why)), -EINVAL);
    d = D, d.e[0].flags |= 4;
    cr_assert_eq(reencode_decode(&d), 0);
    cr_assert_eq(qed_bmdir_validate(&out, &H, why, sizeof(why)), -EINVAL);
    cr_assert(strstr(why, "unknown flags"), "%s", why);
    d = D, d.e[0].data_length += 8;
    cr_assert_eq(reencode_decode(&d), 0);
    cr_assert_eq(qed_bmdir_validate(&out, &H, why, sizeof(why)), -EINVAL);
    cr_assert(strstr(why, "bytes of bits"), "%s", why);
    d = D, d.e[0].data_offset = 64 * KiB; /* in a directory slot */
    cr_assert_eq(reencode_decode(&d), 0);
    cr_assert_eq(qed_bmdir_validate(&out, &H, why, sizeof(why)), -EINVAL);
    d = D, d.e[1].data_offset = 16 * 64 * KiB - 4096; /* past the header end */
    cr_assert_eq(reencode_decode(&d), 0);
    cr_assert_eq(qed_bmdir_validate(&out, &H, why, sizeof(why)), -EINVAL);
    d = D, d.e[1].data_offset = 128 * KiB + 512; /* unaligned */
    cr_assert_eq(reencode_decode(&d), 0);
    cr_assert_eq(qed_bmdir_validate(&out, &H, why, sizeof(why)), -EINVAL);
    d = D, d.e[0].data_offset = 132 * KiB; /* overlaps e[1] */
    cr_assert_eq(reencode_decode(&d), 0);
    cr_assert_eq(qed_bmdir_validate(&out, &H, why, sizeof(why)), -EINVAL);
    cr_assert(strstr(why, "overlap"), "%s", why);
    d = D, d.e[0].data_offset = UINT64_MAX - 4095; /* wraps */
    cr_assert_eq(reencode_decode(&d), 0);
    cr_assert_eq(qed_bmdir_validate(&out, &H, why, sizeof(why)), -EINVAL);
    /* An in-use bitmap may be stored without bits. */
    d = D, d.e[1].data_offset = 0, d.e[1].data_length = 0;
    cr_assert_eq(reencode_decode(&d), 0);
    cr_assert_eq(qed_bmdir_validate(&out, &H, why, sizeof(why)), 0, "%s", why);
}

Test(bmdir, area_start_and_sizes)
{
    struct qed_header h = H;

    cr_assert_eq(qed_bmdir_area_start(&h), 64 * KiB);
    h.features = QED_F_BACKING_FILE;
    h.backing_filename_offset = 64;
    h.backing_filename_size = 100;
    cr_assert_eq(qed_bmdir_area_start(&h), 64 * KiB);
    h.backing_filename_size = 64 * 1024; /* runs into cluster 1 */
    cr_assert_eq(qed_bmdir_area_start(&h), 128 * KiB);
    h.features = 0; /* the name fields mean nothing without the feature */
    cr_assert_eq(qed_bmdir_area_start(&h), 64 * KiB);
    cr_assert_eq(qed_bm_nbits(1024 * MiB, 65536), 16384);
    cr_assert_eq(qed_bm_nbits(1024 * MiB + 512, 65536), 16385);
    cr_assert_eq(qed_bm_data_bytes(1024 * MiB, 65536), 2048);
    cr_assert_eq(qed_bm_data_bytes(512, 512), 8);
    cr_assert_eq(qed_bm_data_bytes(0, 512), 0);
    /* 2^63 - 512 at 2 GiB granules: 2^32 bits, 512 MiB. */
    cr_assert_eq(qed_bm_data_bytes(QED_MAX_VIRTUAL_SIZE, 1ull << 31), 512 * MiB);
}
