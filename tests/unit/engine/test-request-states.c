/*
 * test-request-states.c - the two state machines of lib/engine are declared
 * once each (request-states.h, group-commit-states.h): every state has a
 * non-empty name, unique within its machine and equal to its enum name
 * without the prefix, and a handler in the driver's table.
 */
#include "config.h"

#include <stdbool.h>
#include <string.h>

#include <criterion/criterion.h>

#include "qed-image.h"

/* The enum names, from the same lists the library is built from. */
static const char *const req_ids[] = {
#define QED_REQ_STATE(id, name, handler) [id] = #id,
#include "request-states.h"
#undef QED_REQ_STATE
};

static const char *const gc_ids[] = {
#define QED_GC_STATE(id, name, handler) #id,
#include "group-commit-states.h"
#undef QED_GC_STATE
};

#define N_GC (sizeof(gc_ids) / sizeof(gc_ids[0]))

/* Check states [0, n) of one machine through its name and handler lookups. */
static void check_machine(const char *machine, unsigned n, const char *const ids[],
                          const char *(*name)(unsigned), bool (*has_handler)(unsigned))
{
    cr_assert_gt(n, 0, "%s: no states", machine);
    for (unsigned s = 0; s < n; s++) {
        const char *nm = name(s);

        cr_assert_not_null(nm, "%s state %u (%s) has no name", machine, s, ids[s]);
        cr_assert_gt(strlen(nm), 0, "%s state %u (%s) has an empty name", machine, s, ids[s]);
        cr_assert(has_handler(s), "%s state %s has no handler", machine, nm);
        /* RS_START logs as START, GC_EXTEND as EXTEND. */
        cr_assert_str_eq(nm, ids[s] + 3, "%s state %s logs as %s", machine, ids[s], nm);
        for (unsigned t = 0; t < s; t++)
            cr_assert_str_neq(nm, name(t), "%s states %u and %u share the name %s", machine, t,
                              s, nm);
    }
    cr_assert_null(name(n), "%s: a name past the last state", machine);
    cr_assert_not(has_handler(n), "%s: a handler past the last state", machine);
}

Test(request_states, every_state_has_a_unique_name_and_a_handler)
{
    cr_assert_eq(sizeof(req_ids) / sizeof(req_ids[0]), QED_REQ_NSTATES);
    check_machine("request", QED_REQ_NSTATES, req_ids, qed_req_state_name,
                  qed_req_state_has_handler);
}

Test(request_states, every_group_commit_state_has_a_unique_name_and_a_handler)
{
    check_machine("group commit", N_GC, gc_ids, qed_gc_state_name, qed_gc_state_has_handler);
}

Test(request_states, the_first_state_is_zero)
{
    /* A request taken from the free list is zeroed before it starts. */
    cr_assert_eq(RS_START, 0);
    cr_assert_str_eq(qed_req_state_name(0), "START");
}
