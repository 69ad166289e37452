/*
 * qed-img - create, inspect, check, map and grow QED images and manage their
 * dirty bitmaps, in the command style of qemu-img.
 *
 *   qed-img create [-c CLUSTER] [-t TABLE] [-b BACKING [-F raw|qed]] FILE [SIZE]
 *   qed-img info [--json] [-U] FILE
 *   qed-img check [-r] [-U] FILE
 *   qed-img map [--json] [-U] FILE
 *   qed-img resize FILE [+]SIZE
 *   qed-img bitmap (--merge SOURCE | --add | --remove | --clear | --enable |
 *                   --disable)... [-b SOURCE_FILE [-F qed]] [-g GRANULARITY]
 *                  [--disabled] FILE BITMAP
 *
 * main.c holds the help text and the dispatcher; each sub-command lives in
 * the file named after it (create.c, info.c, check.c, map.c, resize.c,
 * bitmap.c), and
 * qed-img.h lists what they share (tool.c, view.c).
 *
 * Everything goes through libqed: the image is opened with an I/O engine on
 * the default libev loop and the synchronous wrappers run that loop until
 * each request completes.  Errors go to stderr, prefixed with "qed-img: ",
 * and make the tool exit with status 1 (check has its own exit codes).
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "qed-img.h"

void usage(FILE *f)
{
    fputs("Usage: " PROG " COMMAND [OPTIONS] ...\n"
          "\n"
          "Create, inspect, check, map and grow QED (QEMU Enhanced Disk) images,\n"
          "and manage their persistent dirty bitmaps.\n"
          "\n"
          "Commands:\n"
          "  create [-c CLUSTER] [-t TABLE] [-b BACKING [-F raw|qed]] FILE [SIZE]\n"
          "        Create FILE.  CLUSTER is the cluster size (power of two in\n"
          "        [4K, 64M], default 64K); TABLE the table size in clusters (power\n"
          "        of two in [1, 16], default 4).  BACKING is stored as given and\n"
          "        resolved relative to FILE's directory; without -F its format is\n"
          "        probed.  SIZE defaults to the backing file's size.\n"
          "  info [--json] [-U] FILE\n"
          "        Show size, cluster size, table size, backing file, dirty flag,\n"
          "        allocated bytes and the dirty bitmaps.\n"
          "  check [-r] [-U] FILE\n"
          "        Check the metadata; -r repairs.  Exit status: 0 clean,\n"
          "        2 corruption, 3 leaked clusters only, 1 the check failed.\n"
          "  map [--json] [-U] FILE\n"
          "        List the extents as data, zero or hole; --json prints the\n"
          "        format of `qemu-img map --output=json`.\n"
          "  resize FILE [+]SIZE\n"
          "        Grow FILE to SIZE (or by +SIZE).  Shrinking is refused.\n"
          "  bitmap (--merge SOURCE | --add | --remove | --clear | --enable |\n"
          "          --disable)... [-b SOURCE_FILE [-F qed]] [-g GRANULARITY]\n"
          "         [--disabled] FILE BITMAP\n"
          "        Change the dirty bitmap BITMAP of FILE; the actions run in the\n"
          "        order given.  --add makes it (granularity -g, default 64K;\n"
          "        --disabled: not recording), --merge SOURCE ORs bitmap SOURCE\n"
          "        (of SOURCE_FILE with -b) into it.\n"
          "\n"
          "Options:\n"
          "  -U, --force-share   open without taking the image lock (read-only\n"
          "                      commands only; the image may be in use)\n"
          "  --backing-dir=DIR   (info, check, map, resize, bitmap) allow backing files\n"
          "                      only under DIR, symlinks and \"..\" resolved,\n"
          "                      along the whole chain\n"
          "  --no-backing        (info, check, map, resize, bitmap) refuse an image that\n"
          "                      has a backing file\n"
          "  -h, --help          show this help\n"
          "  -V, --version       show the version\n"
          "\n"
          "SIZE takes an optional suffix K, M, G, T, P or E (powers of 1024);\n"
          "a plain number is bytes.\n",
          f);
}

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {
        { "create", cmd_create }, { "info", cmd_info },     { "check", cmd_check },
        { "map", cmd_map },       { "resize", cmd_resize }, { "bitmap", cmd_bitmap },
    };
    int ret = -1;

    qed_set_log(log_to_stderr, NULL, QED_LOG_WARN);

    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "-V") == 0 || strcmp(argv[1], "--version") == 0) {
        printf(PROG " (" PACKAGE_NAME ") " PACKAGE_VERSION "\n");
        return 0;
    }
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        if (strcmp(argv[1], cmds[i].name) == 0) {
            /* Each command parses its own options from argv + 1; its argv[0]
             * becomes "qed-img COMMAND" so getopt's messages say who speaks. */
            char self[64];
            snprintf(self, sizeof(self), PROG " %s", cmds[i].name);
            argv[1] = self;
            ret = cmds[i].fn(argc - 1, argv + 1);
            break;
        }
    }
    if (ret < 0) {
        errmsg("unknown command '%s' (try '" PROG " --help')", argv[1]);
        return 1;
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        errmsg("error writing the output: %s", strerror(errno));
        return 1;
    }
    return ret;
}

