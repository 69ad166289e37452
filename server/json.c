/*
 * json.c - a small strict JSON parser for one object (its members kept
 * flat, nested values checked and skipped) and a bounded JSON writer, for
 * the control socket.  Why our own: the protocol needs one flat object
 * per line; a library (json-c, jansson) would be a new dependency for the
 * server and the client, and bounding what a client can make it allocate
 * is simpler here, where nothing is allocated: strings are decoded into
 * the caller's arena, which is never larger than the line.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

struct parser {
    const unsigned char *p, *end;
    char *arena;
    size_t arena_left;
    char *err;
    size_t errlen;
};

static int fail(struct parser *ps, const char *msg)
{
    snprintf(ps->err, ps->errlen, "malformed JSON: %s", msg);
    return -EINVAL;
}

static void skip_ws(struct parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' ||
                               *ps->p == '\r'))
        ps->p++;
}

/* Length of the valid UTF-8 sequence at @s (@n bytes left), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len;
    uint32_t cp, min;

    if (s[0] < 0x80)
        return 1;
    if ((s[0] & 0xe0) == 0xc0) { len = 2; cp = s[0] & 0x1f; min = 0x80; }
    else if ((s[0] & 0xf0) == 0xe0) { len = 3; cp = s[0] & 0x0f; min = 0x800; }
    else if ((s[0] & 0xf8) == 0xf0) { len = 4; cp = s[0] & 0x07; min = 0x10000; }
    else return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static bool put_byte(struct parser *ps, char **out, unsigned char ch)
{
    if (!ps->arena_left)
        return false;
    *(*out)++ = (char)ch;
    ps->arena_left--;
    return true;
}

/* Encode code point @cp as UTF-8 into the arena. */
static bool put_cp(struct parser *ps, char **out, uint32_t cp)
{
    if (cp < 0x80)
        return put_byte(ps, out, (unsigned char)cp);
    if (cp < 0x800)
        return put_byte(ps, out, (unsigned char)(0xc0 | cp >> 6)) &&
               put_byte(ps, out, (unsigned char)(0x80 | (cp & 0x3f)));
    if (cp < 0x10000)
        return put_byte(ps, out, (unsigned char)(0xe0 | cp >> 12)) &&
               put_byte(ps, out, (unsigned char)(0x80 | ((cp >> 6) & 0x3f))) &&
               put_byte(ps, out, (unsigned char)(0x80 | (cp & 0x3f)));
    return put_byte(ps, out, (unsigned char)(0xf0 | cp >> 18)) &&
           put_byte(ps, out, (unsigned char)(0x80 | ((cp >> 12) & 0x3f))) &&
           put_byte(ps, out, (unsigned char)(0x80 | ((cp >> 6) & 0x3f))) &&
           put_byte(ps, out, (unsigned char)(0x80 | (cp & 0x3f)));
}

static int hex4(struct parser *ps, uint32_t *v)
{
    *v = 0;
    if (ps->end - ps->p < 4)
        return fail(ps, "truncated \\u escape");
    for (int i = 0; i < 4; i++) {
        unsigned char ch = *ps->p++;
        unsigned d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                   : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : 16;
        if (d == 16)
            return fail(ps, "bad \\u escape");
        *v = *v << 4 | d;
    }
    return 0;
}

/* The escape after a backslash, as a code point. */
static int escape(struct parser *ps, uint32_t *cp)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *k;
    uint32_t lo;

    if (ps->p >= ps->end)
        return fail(ps, "truncated escape");
    k = *ps->p ? strchr(from, *ps->p) : NULL;
    if (k) {
        ps->p++;
        *cp = (unsigned char)to[k - from];
        return 0;
    }
    if (*ps->p++ != 'u')
        return fail(ps, "unknown escape");
    if (hex4(ps, cp) < 0)
        return -EINVAL;
    if (*cp >= 0xdc00 && *cp <= 0xdfff)
        return fail(ps, "lone low surrogate");
    if (*cp >= 0xd800 && *cp <= 0xdbff) {
        if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u')
            return fail(ps, "lone high surrogate");
        ps->p += 2;
        if (hex4(ps, &lo) < 0)
            return -EINVAL;
        if (lo < 0xdc00 || lo > 0xdfff)
            return fail(ps, "bad surrogate pair");
        *cp = 0x10000 + ((*cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    if (*cp == 0)
        return fail(ps, "NUL in a string");
    return 0;
}

/* A string (at its opening quote); decoded into the arena when @out is set. */
static int string(struct parser *ps, const char **out)
{
    char *w = ps->arena, *start = ps->arena;

    ps->p++;
    for (;;) {
        size_t n;
        uint32_t cp;

        if (ps->p >= ps->end)
            return fail(ps, "unterminated string");
        if (*ps->p == '"')
            break;
        if (*ps->p < 0x20)
            return fail(ps, "control character in a string");
        if (*ps->p == '\\') {
            ps->p++;
            if (escape(ps, &cp) < 0)
                return -EINVAL;
            if (!put_cp(ps, &w, cp))
                return fail(ps, "string too long");
            continue;
        }
        n = utf8_len(ps->p, (size_t)(ps->end - ps->p));
        if (!n)
            return fail(ps, "invalid UTF-8");
        for (size_t i = 0; i < n; i++)
            if (!put_byte(ps, &w, ps->p[i]))
                return fail(ps, "string too long");
        ps->p += n;
    }
    ps->p++;
    if (!put_byte(ps, &w, 0))
        return fail(ps, "string too long");
    if (out)
        *out = start;
    else
        ps->arena_left += (size_t)(w - start);      /* not kept: give the room back */
    ps->arena = out ? w : start;
    return 0;
}

/* A number, RFC 8259 grammar; *@is_uint and *@u for plain digits that fit. */
static int number(struct parser *ps, bool *is_uint, uint64_t *u)
{
    const unsigned char *s = ps->p;
    bool plain = true, ovf = false;
    uint64_t v = 0;

    if (ps->p < ps->end && *ps->p == '-') {
        ps->p++;
        plain = false;
    }
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
        return fail(ps, "bad number");
    if (*ps->p == '0' && ps->p + 1 < ps->end && ps->p[1] >= '0' && ps->p[1] <= '9')
        return fail(ps, "leading zero");
    for (; ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9'; ps->p++) {
        unsigned d = *ps->p - '0';
        if (v > (UINT64_MAX - d) / 10)
            ovf = true;
        v = v * 10 + d;
    }
    if (ps->p < ps->end && *ps->p == '.') {
        plain = false;
        if (++ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
            return fail(ps, "bad fraction");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        plain = false;
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-'))
            ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
            return fail(ps, "bad exponent");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            ps->p++;
    }
    (void)s;
    *is_uint = plain && !ovf;
    *u = v;
    return 0;
}

static int literal(struct parser *ps, const char *word)
{
    size_t n = strlen(word);

    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return fail(ps, "unexpected character");
    ps->p += n;
    return 0;
}

static int value(struct parser *ps, struct json_member *m, int depth);

/* An array or object (at its bracket), checked and skipped. */
static int container(struct parser *ps, int depth)
{
    bool obj = *ps->p == '{';
    char close = obj ? '}' : ']';

    if (depth >= JSON_MAX_DEPTH)
        return fail(ps, "nested too deep");
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        return 0;
    }
    for (;;) {
        skip_ws(ps);
        if (obj) {
            if (ps->p >= ps->end || *ps->p != '"')
                return fail(ps, "expected a key");
            if (string(ps, NULL) < 0)
                return -EINVAL;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p++ != ':')
                return fail(ps, "expected ':'");
        }
        if (value(ps, NULL, depth + 1) < 0)
            return -EINVAL;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            return 0;
        }
        return fail(ps, obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

/* Any value; kept in @m when set (a member of the top-level object). */
static int value(struct parser *ps, struct json_member *m, int depth)
{
    struct json_member dummy;

    if (!m)
        m = &dummy;
    skip_ws(ps);
    if (ps->p >= ps->end)
        return fail(ps, "expected a value");
    switch (*ps->p) {
    case '"': m->type = JSON_STRING; return string(ps, m == &dummy ? NULL : &m->str);
    case '{': m->type = JSON_OBJECT; return container(ps, depth);
    case '[': m->type = JSON_ARRAY; return container(ps, depth);
    case 't': m->type = JSON_BOOL; m->b = true; return literal(ps, "true");
    case 'f': m->type = JSON_BOOL; m->b = false; return literal(ps, "false");
    case 'n': m->type = JSON_NULL; return literal(ps, "null");
    default: m->type = JSON_NUMBER; return number(ps, &m->is_uint, &m->u);
    }
}

/* One "key": value member of the top-level object into @o. */
static int member(struct parser *ps, struct json_obj *o)
{
    struct json_member *m;
    const char *key;

    if (ps->p >= ps->end || *ps->p != '"')
        return fail(ps, "expected a key");
    if (string(ps, &key) < 0)
        return -EINVAL;
    if (json_get(o, key))
        return fail(ps, "duplicate key");
    if (o->n == JSON_MAX_MEMBERS)
        return fail(ps, "too many members");
    m = &o->m[o->n++];
    memset(m, 0, sizeof(*m));
    m->key = key;
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p++ != ':')
        return fail(ps, "expected ':'");
    return value(ps, m, 1);
}

int json_parse_object(const char *text, size_t len, struct json_obj *o, char *arena,
                      size_t arena_len, char *err, size_t errlen)
{
    struct parser ps = { (const unsigned char *)text, (const unsigned char *)text + len,
                         arena, arena_len, err, errlen };

    o->n = 0;
    skip_ws(&ps);
    if (ps.p >= ps.end || *ps.p != '{')
        return fail(&ps, "expected an object");
    ps.p++;
    skip_ws(&ps);
    if (ps.p < ps.end && *ps.p == '}') {
        ps.p++;
    } else {
        for (;;) {
            skip_ws(&ps);
            if (member(&ps, o) < 0)
                return -EINVAL;
            skip_ws(&ps);
            if (ps.p < ps.end && *ps.p == ',') {
                ps.p++;
                continue;
            }
            if (ps.p < ps.end && *ps.p == '}') {
                ps.p++;
                break;
            }
            return fail(&ps, "expected ',' or '}'");
        }
    }
    skip_ws(&ps);
    if (ps.p != ps.end)
        return fail(&ps, "trailing characters after the object");
    return 0;
}

const struct json_member *json_get(const struct json_obj *o, const char *key)
{
    for (size_t i = 0; i < o->n; i++)
        if (strcmp(o->m[i].key, key) == 0)
            return &o->m[i];
    return NULL;
}

/* ---- Writer ---------------------------------------------------------------- */

void jb_raw(struct jbuf *b, const char *s, size_t n)
{
    if (b->overflow || n == 0)
        return;
    if (b->len + n > b->max) {
        b->overflow = true;
        return;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *p;
        while (cap < b->len + n)
            cap *= 2;
        p = realloc(b->p, cap);
        if (!p) {
            b->overflow = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

void jb_cstr(struct jbuf *b, const char *s)
{
    jb_raw(b, s, strlen(s));
}

void jb_str(struct jbuf *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t left = strlen(s);
    char esc[8];

    jb_raw(b, "\"", 1);
    while (left) {
        size_t n = utf8_len(p, left);
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            jb_raw(b, esc, 2);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof(esc), "\\u%04x", *p);
            jb_raw(b, esc, 6);
        } else if (n) {
            jb_raw(b, (const char *)p, n);
            p += n - 1;
            left -= n - 1;
        } else {
            jb_cstr(b, "\\ufffd");
        }
        p++;
        left--;
    }
    jb_raw(b, "\"", 1);
}

void jb_u64(struct jbuf *b, uint64_t v)
{
    char num[24];

    jb_raw(b, num, (size_t)snprintf(num, sizeof(num), "%llu", (unsigned long long)v));
}

void jb_key(struct jbuf *b, const char *key, bool first)
{
    if (!first)
        jb_raw(b, ",", 1);
    jb_str(b, key);
    jb_raw(b, ":", 1);
}

void jb_free(struct jbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}
