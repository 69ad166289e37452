/*
 * resize.c - qed-img resize: grow an image to a size, or by +SIZE
 * (shrinking is refused: QED images only grow).
 */
#include "config.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "qed-img.h"

int cmd_resize(int argc, char **argv)
{
    static const struct option longopts[] = {
        COMMON_LONGOPTS,
        { NULL, 0, NULL, 0 },
    };
    struct tool_image t;
    struct qed_info info;
    const char *path, *arg;
    uint64_t size, cur, want;
    bool relative = false;
    int r, ret = 1;

    /* "+" stops option parsing at the first non-option, so "-1G" is not an option. */
    r = parse_options(argc, argv, "+h", longopts, NULL, NULL, NULL);
    if (r >= 0)
        return r;
    if (argc - optind != 2) {
        errmsg("usage: resize FILE [+]SIZE");
        return 1;
    }
    path = argv[optind];
    arg = argv[optind + 1];
    if (arg[0] == '-') {
        errmsg("shrinking is not supported: QED images can only grow (asked for %s)", arg);
        return 1;
    }
    if (arg[0] == '+') {
        relative = true;
        arg++;
    }
    if (parse_size_arg("image size", arg, &size) < 0)
        return 1;
    if (tool_open(&t, path, false, false, false) < 0)
        return 1;
    qed_get_info(t.img, &info);
    cur = info.size;
    if (relative) {
        if (size > UINT64_MAX - cur) {
            errmsg("new size of '%s' overflows: %" PRIu64 " + %" PRIu64, path, cur, size);
            goto out;
        }
        want = cur + size;
    } else {
        want = size;
    }
    if (want < cur) {
        errmsg("shrinking is not supported: '%s' is %" PRIu64 " bytes, asked for %" PRIu64,
               path, cur, want);
        goto out;
    }
    if (want > info.max_size) {
        errmsg("size %" PRIu64 " is too large for '%s': the maximum for cluster size %u "
               "and table size %u is %" PRIu64 " bytes",
               want, path, info.cluster_size, info.table_size, info.max_size);
        goto out;
    }
    r = qed_sync_resize(t.img, want);
    if (r < 0) {
        errmsg("cannot resize '%s' to %" PRIu64 " bytes: %s", path, want, strerror(-r));
        goto out;
    }
    ret = 0;
out:
    if (tool_close(&t) < 0)
        ret = 1;
    if (ret == 0)
        printf("Image resized.\n");
    return ret;
}
