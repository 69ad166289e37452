/*
 * size.c - sizes written by people ("64K", "10G"), for the tools and the
 * server's options.  No I/O.
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "qed.h"

int qed_parse_size(const char *s, uint64_t *out)
{
    static const char suffixes[] = "KMGTPE";
    uint64_t v = 0;
    const char *p = s;
    unsigned shift = 0;

    if (*p < '0' || *p > '9')
        return -EINVAL;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
    }
    if (*p) {
        const char *sfx = strchr(suffixes, *p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p);
        if (!sfx || p[1] != '\0')
            return -EINVAL;
        shift = 10u * (unsigned)(sfx - suffixes + 1);
    }
    if (shift && v > (UINT64_MAX >> shift))
        return -ERANGE;
    *out = v << shift;
    return 0;
}
