/*
 * nbd-proto.h - every constant and wire structure of the NBD protocol that
 * qednbd uses, written from the protocol description (nbd-proto.md).
 *
 * All multi-byte fields travel in network (big-endian) byte order.  The
 * packed structs below describe the exact byte layout; fill them with
 * htobe16/32/64 and read them with be16/32/64toh.
 */
#ifndef NBD_PROTO_H
#define NBD_PROTO_H

#include <stdint.h>

/* ---- Magic numbers ---------------------------------------------------- */

#define NBD_MAGIC                  0x4e42444d41474943ull /* "NBDMAGIC" (INIT_PASSWD) */
#define NBD_OPTS_MAGIC             0x49484156454F5054ull /* "IHAVEOPT" */
#define NBD_REP_MAGIC              0x0003e889045565a9ull /* option reply magic */
#define NBD_REQUEST_MAGIC          0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC     0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efu

/* ---- Handshake flags (server, 16 bits) -------------------------------- */

#define NBD_FLAG_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_NO_ZEROES      (1u << 1)

/* ---- Client flags (32 bits) ------------------------------------------- */

#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES      (1u << 1)

/* ---- Transmission flags (16 bits) ------------------------------------- */

#define NBD_FLAG_HAS_FLAGS         (1u << 0)
#define NBD_FLAG_READ_ONLY         (1u << 1)
#define NBD_FLAG_SEND_FLUSH        (1u << 2)
#define NBD_FLAG_SEND_FUA          (1u << 3)
#define NBD_FLAG_ROTATIONAL        (1u << 4)
#define NBD_FLAG_SEND_TRIM         (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF           (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN    (1u << 8)
#define NBD_FLAG_SEND_RESIZE       (1u << 9)
#define NBD_FLAG_SEND_CACHE        (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO    (1u << 11)

/* ---- Option types ----------------------------------------------------- */

#define NBD_OPT_EXPORT_NAME       1u
#define NBD_OPT_ABORT             2u
#define NBD_OPT_LIST              3u
#define NBD_OPT_PEEK_EXPORT       4u
#define NBD_OPT_STARTTLS          5u
#define NBD_OPT_INFO              6u
#define NBD_OPT_GO                7u
#define NBD_OPT_STRUCTURED_REPLY  8u
#define NBD_OPT_LIST_META_CONTEXT 9u
#define NBD_OPT_SET_META_CONTEXT  10u
#define NBD_OPT_EXTENDED_HEADERS  11u

/* ---- Option reply types ----------------------------------------------- */

#define NBD_REP_ACK          1u
#define NBD_REP_SERVER       2u
#define NBD_REP_INFO         3u
#define NBD_REP_META_CONTEXT 4u

#define NBD_REP_FLAG_ERROR           (1u << 31)
#define NBD_REP_ERR_UNSUP            (NBD_REP_FLAG_ERROR | 1u)
#define NBD_REP_ERR_POLICY           (NBD_REP_FLAG_ERROR | 2u)
#define NBD_REP_ERR_INVALID          (NBD_REP_FLAG_ERROR | 3u)
#define NBD_REP_ERR_PLATFORM         (NBD_REP_FLAG_ERROR | 4u)
#define NBD_REP_ERR_TLS_REQD         (NBD_REP_FLAG_ERROR | 5u)
#define NBD_REP_ERR_UNKNOWN          (NBD_REP_FLAG_ERROR | 6u)
#define NBD_REP_ERR_SHUTDOWN         (NBD_REP_FLAG_ERROR | 7u)
#define NBD_REP_ERR_BLOCK_SIZE_REQD  (NBD_REP_FLAG_ERROR | 8u)
#define NBD_REP_ERR_TOO_BIG          (NBD_REP_FLAG_ERROR | 9u)
#define NBD_REP_ERR_EXT_HEADER_REQD  (NBD_REP_FLAG_ERROR | 10u)

/* ---- Information types (NBD_REP_INFO) --------------------------------- */

#define NBD_INFO_EXPORT      0u
#define NBD_INFO_NAME        1u
#define NBD_INFO_DESCRIPTION 2u
#define NBD_INFO_BLOCK_SIZE  3u

/* ---- Request types ---------------------------------------------------- */

#define NBD_CMD_READ         0u
#define NBD_CMD_WRITE        1u
#define NBD_CMD_DISC         2u
#define NBD_CMD_FLUSH        3u
#define NBD_CMD_TRIM         4u
#define NBD_CMD_CACHE        5u
#define NBD_CMD_WRITE_ZEROES 6u
#define NBD_CMD_BLOCK_STATUS 7u
#define NBD_CMD_RESIZE       8u

/* ---- Command flags ---------------------------------------------------- */

#define NBD_CMD_FLAG_FUA         (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE     (1u << 1)
#define NBD_CMD_FLAG_DF          (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE     (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO   (1u << 4)
#define NBD_CMD_FLAG_PAYLOAD_LEN (1u << 5)

/* ---- Structured replies ----------------------------------------------- */

#define NBD_REPLY_FLAG_DONE (1u << 0)

#define NBD_REPLY_TYPE_NONE         0u
#define NBD_REPLY_TYPE_OFFSET_DATA  1u
#define NBD_REPLY_TYPE_OFFSET_HOLE  2u
#define NBD_REPLY_TYPE_BLOCK_STATUS 5u
#define NBD_REPLY_TYPE_ERROR        ((1u << 15) | 1u)
#define NBD_REPLY_TYPE_ERROR_OFFSET ((1u << 15) | 2u)

/* ---- base:allocation status flags ------------------------------------- */

#define NBD_STATE_HOLE (1u << 0)
#define NBD_STATE_ZERO (1u << 1)

/* ---- qemu:dirty-bitmap:NAME status flags (QEMU's docs/interop/nbd.txt) - */

#define NBD_STATE_DIRTY (1u << 0)

/* ---- Error values ----------------------------------------------------- */

#define NBD_EPERM      1u
#define NBD_EIO        5u
#define NBD_ENOMEM     12u
#define NBD_EINVAL     22u
#define NBD_ENOSPC     28u
#define NBD_EOVERFLOW  75u
#define NBD_ENOTSUP    95u
#define NBD_ESHUTDOWN  108u

/* ---- Limits ----------------------------------------------------------- */

#define NBD_MAX_STRING 4096u              /* longest string the protocol allows */
#define NBD_DEFAULT_PORT 10809

/* ---- Wire structures -------------------------------------------------- */

#define NBD_PACKED __attribute__((packed))

/* S: initial greeting of (fixed) newstyle negotiation.
 * magic: NBD_MAGIC; opts_magic: NBD_OPTS_MAGIC; hs_flags: NBD_FLAG_FIXED_NEWSTYLE | ...
 */
struct nbd_greeting { uint64_t magic; uint64_t opts_magic; uint16_t hs_flags; } NBD_PACKED;
_Static_assert(sizeof(struct nbd_greeting) == 18, "greeting layout");

/* C: the client flags, the client's answer to the greeting.
 * flags: NBD_FLAG_C_FIXED_NEWSTYLE | ...
 */
struct nbd_client_flags { uint32_t flags; } NBD_PACKED;
_Static_assert(sizeof(struct nbd_client_flags) == 4, "client flags layout");

/* C: an option header, followed by @len bytes of data.
 * magic: NBD_OPTS_MAGIC.
 */
struct nbd_opt_header { uint64_t magic; uint32_t option; uint32_t len; } NBD_PACKED;
_Static_assert(sizeof(struct nbd_opt_header) == 16, "option header layout");

/* S: an option reply header, followed by @len bytes of data.
 * magic: NBD_REP_MAGIC.
 */
struct nbd_opt_reply { uint64_t magic; uint32_t option; uint32_t type; uint32_t len; } NBD_PACKED;
_Static_assert(sizeof(struct nbd_opt_reply) == 20, "option reply layout");

/* S: reply to NBD_OPT_EXPORT_NAME (the 124 zero bytes follow unless NO_ZEROES). */
struct nbd_export_name_reply { uint64_t size; uint16_t tx_flags; } NBD_PACKED;
_Static_assert(sizeof(struct nbd_export_name_reply) == 10, "export name reply layout");

/* NBD_REP_INFO payload NBD_INFO_EXPORT (info: NBD_INFO_EXPORT). */
struct nbd_info_export { uint16_t info; uint64_t size; uint16_t tx_flags; } NBD_PACKED;
_Static_assert(sizeof(struct nbd_info_export) == 12, "NBD_INFO_EXPORT layout");

/* Head of the other NBD_REP_INFO payloads (NAME, DESCRIPTION): the text follows.
 * info: NBD_INFO_NAME, NBD_INFO_DESCRIPTION.
 */
struct nbd_info_header { uint16_t info; } NBD_PACKED;
_Static_assert(sizeof(struct nbd_info_header) == 2, "NBD_REP_INFO header layout");

/* NBD_REP_SERVER payload head: the name (name_len bytes), then a description. */
struct nbd_rep_server { uint32_t name_len; } NBD_PACKED;
_Static_assert(sizeof(struct nbd_rep_server) == 4, "NBD_REP_SERVER layout");

/* NBD_REP_META_CONTEXT payload head: the context name follows.
 * context_id: 0 in LIST replies.
 */
struct nbd_rep_meta_context { uint32_t context_id; } NBD_PACKED;
_Static_assert(sizeof(struct nbd_rep_meta_context) == 4, "NBD_REP_META_CONTEXT layout");

/* NBD_REP_INFO payload NBD_INFO_BLOCK_SIZE (info: NBD_INFO_BLOCK_SIZE). */
struct nbd_info_block_size {
    uint16_t info; uint32_t minimum; uint32_t preferred; uint32_t maximum;
} NBD_PACKED;

/* C: a transmission request; a WRITE is followed by @len bytes.
 * magic: NBD_REQUEST_MAGIC.
 */
struct nbd_request {
    uint32_t magic; uint16_t flags; uint16_t type;
    uint64_t cookie; uint64_t offset; uint32_t len;
} NBD_PACKED;
_Static_assert(sizeof(struct nbd_request) == 28, "request layout");
_Static_assert(sizeof(struct nbd_info_block_size) == 14, "NBD_INFO_BLOCK_SIZE layout");

/* S: simple reply; a successful READ is followed by the data.
 * magic: NBD_SIMPLE_REPLY_MAGIC.
 */
struct nbd_simple_reply { uint32_t magic; uint32_t error; uint64_t cookie; } NBD_PACKED;
_Static_assert(sizeof(struct nbd_simple_reply) == 16, "simple reply layout");

/* S: structured reply chunk header, followed by @len bytes of payload.
 * magic: NBD_STRUCTURED_REPLY_MAGIC.
 */
struct nbd_structured_reply {
    uint32_t magic; uint16_t flags; uint16_t type;
    uint64_t cookie; uint32_t len;
} NBD_PACKED;
_Static_assert(sizeof(struct nbd_structured_reply) == 20, "structured reply layout");

/* Payload of NBD_REPLY_TYPE_OFFSET_DATA (the data follows). */
struct nbd_chunk_offset_data { uint64_t offset; } NBD_PACKED;
_Static_assert(sizeof(struct nbd_chunk_offset_data) == 8, "data chunk layout");

/* Payload of NBD_REPLY_TYPE_OFFSET_HOLE. */
struct nbd_chunk_offset_hole { uint64_t offset; uint32_t length; } NBD_PACKED;
_Static_assert(sizeof(struct nbd_chunk_offset_hole) == 12, "hole chunk layout");

/* Payload of NBD_REPLY_TYPE_ERROR (the message follows). */
struct nbd_chunk_error { uint32_t error; uint16_t msg_len; } NBD_PACKED;
_Static_assert(sizeof(struct nbd_chunk_error) == 6, "error chunk layout");

/* Payload of NBD_REPLY_TYPE_BLOCK_STATUS: a context id, then descriptors. */
struct nbd_chunk_block_status { uint32_t context_id; } NBD_PACKED;
_Static_assert(sizeof(struct nbd_chunk_block_status) == 4, "block status chunk layout");

/* One descriptor of a BLOCK_STATUS chunk. */
struct nbd_block_descriptor { uint32_t length; uint32_t status_flags; } NBD_PACKED;
_Static_assert(sizeof(struct nbd_block_descriptor) == 8, "block descriptor layout");

#endif /* NBD_PROTO_H */
