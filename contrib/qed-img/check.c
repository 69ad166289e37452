/*
 * check.c - qed-img check: check an image's metadata (and with -r repair
 * it), reporting in qemu-img check's words and exit statuses.
 */
#include "config.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "qed-img.h"

/* Check @path once; read-write with @repair.  Returns 0, or -1 when the check could not run. */
static int check_once(const char *path, bool repair, bool no_lock, struct qed_check_result *res)
{
    struct tool_image t;
    int r, ret = 0;

    memset(res, 0, sizeof(*res));
    if (tool_open(&t, path, !repair, no_lock && !repair, repair) < 0)
        return -1;
    r = qed_check(t.img, repair, res);
    if (r < 0) {
        errmsg("Check failed: %s", strerror(-r));
        ret = -1;
    }
    if (tool_close(&t) < 0)
        ret = -1;
    return ret;
}

static void print_check(const struct qed_check_result *r)
{
    if (!r->corruptions && !r->leaks && !r->check_errors) {
        printf("No errors were found on the image.\n");
    } else {
        if (r->corruptions)
            printf("\n%" PRIu64 " errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image may corrupt it.\n",
                   r->corruptions);
        if (r->leaks)
            printf("\n%" PRIu64 " leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n",
                   r->leaks);
        if (r->check_errors)
            printf("\n%" PRIu64 " internal errors have occurred during the check.\n",
                   r->check_errors);
    }
    if (r->total_clusters && r->allocated_clusters)
        printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, "
               "%0.2f%% compressed clusters\n",
               r->allocated_clusters, r->total_clusters,
               100.0 * (double)r->allocated_clusters / (double)r->total_clusters,
               100.0 * (double)r->fragmented_clusters / (double)r->allocated_clusters, 0.0);
    if (r->image_end_offset)
        printf("Image end offset: %" PRIu64 "\n", r->image_end_offset);
}

/* Problems repaired: at least @fixed, and at least those of @before no longer found. */
static uint64_t repaired_count(uint64_t before, uint64_t found, uint64_t fixed)
{
    uint64_t remaining = found > fixed ? found - fixed : 0;
    uint64_t gone = before > remaining ? before - remaining : 0;

    return gone > fixed ? gone : fixed;
}

/* check's own option: -r (ctx: the bool it sets). */
static int check_option(int c, const char *arg, void *ctx)
{
    (void)arg;
    if (c != 'r')
        return 1;
    *(bool *)ctx = true;
    return -1;
}

/* Parse check's options.  Returns -1 to go on, or the exit status to return at once. */
static int check_parse_args(int argc, char **argv, bool *repair, bool *no_lock,
                            const char **path)
{
    static const struct option longopts[] = {
        { "repair", no_argument, NULL, 'r' }, { "force-share", no_argument, NULL, 'U' },
        COMMON_LONGOPTS, { NULL, 0, NULL, 0 },
    };
    int r = parse_options(argc, argv, "rUh", longopts, no_lock, check_option, repair);

    if (r >= 0)
        return r;
    /* qemu-img spells it "-r all" or "-r leaks"; take those words too. */
    if (*repair && argc - optind == 2 &&
        (strcmp(argv[optind], "all") == 0 || strcmp(argv[optind], "leaks") == 0))
        optind++;
    if (argc - optind != 1) {
        errmsg("usage: check [-r] [-U] FILE");
        return 1;
    }
    if (*repair && *no_lock) {
        errmsg("-U cannot be used with -r: repairing needs the image lock");
        return 1;
    }
    *path = argv[optind];
    return -1;
}

/*
 * The repair pass of `check -r`, after the read-only look found @before:
 * repair, say what was repaired, and check again.  *@final receives the
 * result to report.  Returns 0, or -1 when a pass could not run.
 */
static int check_repair(const char *path, const struct qed_check_result *before,
                        struct qed_check_result *final)
{
    struct qed_check_result after;
    uint64_t fixed_corruptions, fixed_leaks;

    if (check_once(path, true, false, &after) < 0)
        return -1;
    *final = after;
    /* Count what was repaired both ways: what this pass reports fixing, and
     * what vanished since the read-only look (a NEED_CHECK image was
     * already repaired by the read-write open, before qed_check ran). */
    fixed_corruptions = repaired_count(before->corruptions, after.corruptions,
                                       after.corruptions_fixed);
    fixed_leaks = repaired_count(before->leaks, after.leaks, after.leaks_fixed);
    if (fixed_corruptions || fixed_leaks) {
        printf("The following inconsistencies were found and repaired:\n\n"
               "    %" PRIu64 " leaked clusters\n"
               "    %" PRIu64 " corruptions\n\n"
               "Double checking the fixed image now...\n",
               fixed_leaks, fixed_corruptions);
        fflush(stdout);
        if (check_once(path, false, false, final) < 0)
            return -1;
    }
    return 0;
}

int cmd_check(int argc, char **argv)
{
    struct qed_check_result before, final;
    bool repair = false, no_lock = false;
    const char *path;
    int r;

    r = check_parse_args(argc, argv, &repair, &no_lock, &path);
    if (r >= 0)
        return r;

    /* Look first without writing: a read-write open of a NEED_CHECK image
     * (and, as -r asks, of a clean image with invalid entries) repairs it
     * inside qed_open, so only this read-only pass sees (and can report)
     * what was wrong before any repair. */
    if (repair)
        /* The repair pass below logs each problem again; say it once. */
        qed_set_log(log_to_stderr, NULL, QED_LOG_ERROR);
    r = check_once(path, false, no_lock, &before);
    qed_set_log(log_to_stderr, NULL, QED_LOG_WARN);
    if (r < 0)
        return 1;

    if (!repair)
        final = before;
    else if (check_repair(path, &before, &final) < 0)
        return 1;
    print_check(&final);
    if (final.check_errors) {
        errmsg("Check failed");
        return 1;
    }
    if (final.corruptions)
        return 2;
    if (final.leaks)
        return 3;
    return 0;
}
