/*
 * mem.c - the memory connections make the server hold, and its two caps.
 *
 * Accounting.  Every byte a connection causes the server to hold is charged
 * to it with conn_mem_charge() when it is allocated (or taken from a free
 * list) and given back with conn_mem_release() when it is freed (or returned
 * to a free list): request structs, READ buffers (the allocation, whatever
 * the reply puts on the wire: a hole chunk is 32 bytes, its buffer may be
 * 32 MiB), WRITE payload buffers, BLOCK_STATUS extent arrays, reply chunk
 * headers, the read-ahead buffer, the TLS record buffer and the copies of
 * queued handshake replies.  The sum is c->mem_held; over all connections,
 * srv.mem_held.  Nothing else may change those two numbers.
 *
 * Caps.  SRV_CONN_MAX_MEMORY per connection, srv.max_memory (--max-memory)
 * over all of them.  A request is admitted (conn_mem_admit) only once its
 * worst-case cost, known from its header, fits under both; until then the
 * connection stops reading (backpressure) and is resumed when memory is
 * given back.  Buffers that only make reading faster (read-ahead) are
 * taken only when they fit (conn_mem_try); when they do not, the
 * connection reads without them.  Requests within the protocol's limits are
 * never refused or dropped for memory: they wait.
 *
 * Why this cannot deadlock.  Memory is given back without the server
 * reading anything: the library always completes a request, a reply is
 * freed once the socket has taken it (that depends only on that
 * connection's client reading), and a closing connection frees everything.
 * So a waiting connection waits for some client to read its replies -- the
 * backpressure we want, and a client that never reads holds at most its own
 * connection's cap.  Two rules keep a waiting connection from waiting for
 * nothing:
 *   - a connection with no request in flight always passes its own cap (a
 *     request costs at most SRV_MAX_PAYLOAD plus bookkeeping, which is below
 *     the cap anyway);
 *   - when no request is in flight on any connection (srv.nreqs == 0),
 *     nothing would ever be given back, so the request is admitted whatever
 *     the global count says.  Only buffers that never wait (TLS records,
 *     handshake replies) can fill the global cap then, and only by their
 *     fixed per-connection sizes; with the minimum --max-memory this takes
 *     hundreds of such connections.
 * The one cycle the server cannot break is inside a client: one that blocks
 * writing a request on connection B while it leaves the replies on
 * connection A unread waits for itself once A's replies fill the global
 * cap.  NBD clients read and write each connection independently (libnbd,
 * QEMU), as they must with any server that applies backpressure.
 *
 * Worst case (README "Limits and memory"): srv.mem_held + srv.mem_tables
 * stays under --max-memory plus the buffers that never wait: 16 KiB per TLS
 * connection and the replies of one option per negotiating connection (a
 * negotiating client whose socket is full gets no further option read:
 * net/input.c, hs_output_blocked).  What it does not hold is stated next to it
 * there: free lists (protocol/req-mem.c, net/input.c), the option payload being read (at most
 * 64 KiB per negotiating connection), GnuTLS's own session state and struct
 * conn.
 *
 * Threads (--threads).  A connection lives on one thread, so c->mem_held
 * and the per-connection cap need nothing.  The server-wide counts
 * (srv.mem_held, srv.nreqs, srv.mem_waiters) are shared by every thread:
 * atomics, no lock.  An admission that checks the global cap takes its
 * bytes with a compare-and-swap on srv.mem_held (mem_take), so two threads
 * can never both pass the check with the last bytes: the cap holds exactly
 * across threads.  Waiting and waking across threads: a connection marks
 * itself waiting (srv.mem_waiters, its thread's mem_waiters) and then
 * checks once more at the end of its turn; a thread that gives memory
 * back reads srv.mem_waiters after its release.  Both are sequentially
 * consistent, so one of the two always sees the other (no lost wake-up);
 * the releasing thread wakes the other threads' waiters through their
 * inboxes (turn.c, threads_mem_wake_others).  The "nothing in flight
 * anywhere: admit" rule reads srv.nreqs before the request counts itself,
 * so with N threads up to N such requests can pass it at the same moment
 * (one per thread, as one passes it with one thread).  The design in
 * contrib/bench/README.md takes credit in chunks instead, for machines
 * with many cores; the plain atomics are one shared line per charge.
 *
 * The images' tables.  The L1 tables and the L2 caches of the library are
 * bounded per image at open (qed_table_memory_max); exports.c reserves that
 * bound out of --max-memory (srv.mem_tables) and the connections share the
 * rest, so --max-memory covers both.
 */
#include "config.h"

#include <assert.h>

#include "conn.h"

/* The global cap: --max-memory, or the default when it was not given (the
 * fuzz target and the tests set no value). */
static uint64_t mem_cap(void)
{
    uint64_t cap = srv.max_memory ? srv.max_memory : SRV_MAX_MEMORY_DEFAULT;

    /* exports.c (reserve_table_memory) refused to start unless the images'
     * tables leave at least one connection's cap. */
    return cap > srv.mem_tables ? cap - srv.mem_tables : 0;
}

/* Raise srv.mem_peak to @held if it is lower. */
static void mem_peak_update(uint64_t held)
{
    uint64_t peak = SRV_LOAD(srv.mem_peak);

    while (held > peak && !__atomic_compare_exchange_n(&srv.mem_peak, &peak, held, true,
                                                       __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
}

void conn_mem_charge(struct conn *c, size_t n)
{
    c->mem_held += n;
    mem_peak_update(__atomic_add_fetch(&srv.mem_held, n, __ATOMIC_SEQ_CST));
}

/* Take @n bytes of the global count if they fit under the cap (or nothing
 * is in flight anywhere: the no-deadlock rule above): one compare-and-swap,
 * so the check and the charge are one step for every thread. */
static bool mem_take(size_t n, bool any)
{
    uint64_t held = __atomic_load_n(&srv.mem_held, __ATOMIC_SEQ_CST);
    uint64_t cap = mem_cap();

    do {
        if (!any && held + n > cap)
            return false;
    } while (!__atomic_compare_exchange_n(&srv.mem_held, &held, held + n, true,
                                          __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    mem_peak_update(held + n);
    return true;
}

void conn_mem_release(struct conn *c, size_t n)
{
    uint64_t before = __atomic_fetch_sub(&srv.mem_held, n, __ATOMIC_SEQ_CST);

    assert(c->mem_held >= n && before >= n);
    (void)before;
    c->mem_held -= n;
    /* Someone waits: those that now fit go on at the end of the loop turn.
     * Why not here: this runs from anywhere (a reply written, a request
     * freed, a connection closing), and a walk over the waiters on every
     * release would cost O(connections) per reply under pressure; at the
     * end of the turn it is one walk per turn. */
    if (n && __atomic_load_n(&srv.mem_waiters, __ATOMIC_SEQ_CST)) {
        srv_self->mem_released = true;     /* the other threads' waiters too */
        conn_mem_wake();
    }
}

bool conn_mem_fits(const struct conn *c, size_t cost)
{
    bool conn_ok = c->inflight == 0 || c->mem_held + cost <= SRV_CONN_MAX_MEMORY;
    bool srv_ok = __atomic_load_n(&srv.nreqs, __ATOMIC_SEQ_CST) == 0 ||
                  __atomic_load_n(&srv.mem_held, __ATOMIC_SEQ_CST) + cost <= mem_cap();

    return conn_ok && srv_ok;
}

bool conn_mem_try(struct conn *c, size_t n)
{
    if (c->mem_held + n > SRV_CONN_MAX_MEMORY || !mem_take(n, false))
        return false;
    c->mem_held += n;
    return true;
}

bool conn_mem_admit(struct conn *c, size_t cost)
{
    bool conn_ok = c->inflight == 0 || c->mem_held + cost <= SRV_CONN_MAX_MEMORY;

    if (conn_ok && mem_take(cost, __atomic_load_n(&srv.nreqs, __ATOMIC_SEQ_CST) == 0)) {
        c->mem_held += cost;
        conn_mem_unwait(c);
        return true;
    }
    if (!c->mem_wait) {
        c->mem_wait = true;
        __atomic_add_fetch(&srv.mem_waiters, 1, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&srv_self->mem_waiters, 1, __ATOMIC_SEQ_CST);
        SRV_ADD(srv.mem_waits, 1);
        conn_log(c, SRV_LOG_DEBUG,
                 "waiting for memory: a request of %zu bytes, %zu held here, %llu in all",
                 cost, c->mem_held, (unsigned long long)SRV_LOAD(srv.mem_held));
        /* Look again at the end of this turn: memory given back by another
         * thread before it could see this waiter is then found. */
        if (srv.nthreads > 1)
            conn_mem_wake();
    }
    c->mem_wait_cost = cost;
    return false;
}

void conn_mem_unwait(struct conn *c)
{
    if (!c->mem_wait)
        return;
    c->mem_wait = false;
    assert(SRV_LOAD(srv.mem_waiters) > 0);
    __atomic_sub_fetch(&srv.mem_waiters, 1, __ATOMIC_SEQ_CST);
    __atomic_sub_fetch(&srv_self->mem_waiters, 1, __ATOMIC_SEQ_CST);
}
