/*
 * json.h - the small, strict JSON of the control socket (json.c): a parser
 * for one object per line whose members are kept flat (nested values are
 * checked and skipped), and a bounded writer.  Shared by the server
 * (control.c, control-ops.c) and the client, qednbd-ctl.
 */
#ifndef JSON_H
#define JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_MEMBERS 16     /* members of the top-level object we keep */
#define JSON_MAX_DEPTH 16       /* nesting the parser accepts */

enum json_type { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT };

/** One member of the top-level object. */
struct json_member {
    const char *key;            /* decoded, NUL-terminated, in the arena */
    enum json_type type;
    const char *str;            /* JSON_STRING: decoded (never holds a NUL byte) */
    bool b;                     /* JSON_BOOL */
    bool is_uint;               /* JSON_NUMBER written as digits only, fitting u64 */
    uint64_t u;                 /* its value */
};

struct json_obj {
    struct json_member m[JSON_MAX_MEMBERS];
    size_t n;
};

/**
 * json_parse_object - parse @len bytes at @text as exactly one JSON object
 * (surrounding white space allowed).  Strings are decoded into @arena
 * (@arena_len bytes; @len + 1 always suffices).  Strict: RFC 8259 syntax,
 * valid UTF-8, no NUL in strings, no duplicate keys, at most
 * JSON_MAX_MEMBERS members and JSON_MAX_DEPTH levels.  Returns 0, or
 * -EINVAL with a message in @err.
 */
int json_parse_object(const char *text, size_t len, struct json_obj *o, char *arena,
                      size_t arena_len, char *err, size_t errlen);

/** json_get - the member called @key of @o, or NULL. */
const struct json_member *json_get(const struct json_obj *o, const char *key);

/**
 * A growing output buffer that never exceeds @max bytes: once it would,
 * @overflow is set and further writes are dropped.
 */
struct jbuf {
    char *p;
    size_t len, cap, max;
    bool overflow;
};

/** jb_raw - append @n bytes as they are.  jb_cstr: a C string as it is. */
void jb_raw(struct jbuf *b, const char *s, size_t n);
void jb_cstr(struct jbuf *b, const char *s);

/** jb_str - append @s as a JSON string (quoted, escaped; invalid UTF-8 becomes U+FFFD). */
void jb_str(struct jbuf *b, const char *s);

/** jb_u64 - append a number.  jb_key - append "@key": (after a comma unless @first). */
void jb_u64(struct jbuf *b, uint64_t v);
void jb_key(struct jbuf *b, const char *key, bool first);

/** jb_free - free the buffer's memory. */
void jb_free(struct jbuf *b);

#endif /* JSON_H */
