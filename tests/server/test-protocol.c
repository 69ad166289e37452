/*
 * test-protocol.c - protocol tests of server/qednbd, driven by libnbd and by
 * a small raw-socket client for what libnbd will not send (malformed or
 * over-limit input).
 *
 * Every test runs in its own process (Criterion), with its own temporary
 * directory and its own servers: `qednbd -s` on a socketpair (libnbd gets
 * the socket with nbd_connect_socket; hs/connect_command uses
 * nbd_connect_command), or `qednbd -u SOCKET` for tests that need several
 * connections or a signal.  Every server must exit 0 at the end (checked in
 * teardown), and dies with the test if the test times out.  Images are made
 * by `qemu-img create -f qed`.
 */
#include "config.h"

#include <criterion/criterion.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <libnbd.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../server/protocol/nbd-proto.h"

#define MiB (1024u * 1024u)
#define IO_TIMEOUT_MS 10000

static char tmpdir[64];          /* /tmp/qednbd-proto.XXXXXX */
static char qednbd[PATH_MAX];
static pid_t server_pid = -1;
static char sock_path[96];       /* fits in sun_path */

/* Criterion 2.4 itself leaks one allocation at exit: keep LeakSanitizer (in
 * a --enable-sanitizers build) from failing this binary for it.  Leaks in
 * the server still fail the tests that check its exit status. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:libcriterion.so\n";
}

/* ---- Fixture ------------------------------------------------------------- */

static void find_qednbd(void)
{
    const char *top = getenv("top_builddir");
    char exe[PATH_MAX - 64];
    ssize_t n;

    if (top) {
        snprintf(qednbd, sizeof(qednbd), "%s/server/qednbd", top);
        return;
    }
    /* Fallback: this binary lives in <build>/tests/server/. */
    n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    cr_assert(n > 0);
    exe[n] = '\0';
    *strrchr(exe, '/') = '\0';
    snprintf(qednbd, sizeof(qednbd), "%s/../../server/qednbd", exe);
}

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/qednbd-proto.XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
    find_qednbd();
    cr_assert_eq(access(qednbd, X_OK), 0, "qednbd not found at %s", qednbd);
    snprintf(sock_path, sizeof(sock_path), "%s/sock", tmpdir);
    /* A write to a server that has hung up must fail with EPIPE (which
     * raw_write_or_gone takes as the disconnect), not kill the test. */
    signal(SIGPIPE, SIG_IGN);
}

/* SIGTERM the server and reap it; a server still alive after 15 s is
 * killed and reported as failing (-1). */
static int stop_server(void)
{
    int st = -1;

    if (server_pid <= 0)
        return st;
    kill(server_pid, SIGTERM);
    for (int i = 0; i < 1500; i++) {
        if (waitpid(server_pid, &st, WNOHANG) == server_pid) {
            server_pid = -1;
            return st;
        }
        usleep(10000);
    }
    fprintf(stderr, "qednbd (pid %d) ignored SIGTERM for 15 s: killing it\n", (int)server_pid);
    kill(server_pid, SIGKILL);
    waitpid(server_pid, &st, 0);
    server_pid = -1;
    return -1;
}

/* In a forked child, before exec: die with the test process, so a server
 * stuck in a bug cannot outlive a test that timed out. */
static void die_with_parent(void)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
}

/* Servers run with -s on a socketpair, by spawn_stdio(). */
#define MAX_STDIO 64
static pid_t stdio_pid[MAX_STDIO];
static int nstdio;
static pid_t last_stdio = -1;

/* Wait up to @ms for @pid; true when reaped. */
static bool wait_exit(pid_t pid, int ms, int *st)
{
    for (int k = 0; k < ms / 10; k++) {
        if (waitpid(pid, st, WNOHANG) == pid)
            return true;
        usleep(10000);
    }
    return false;
}

/* Reap stdio server @pid: it exits by itself once its client has gone; if
 * it has not after 2 s (a test that failed half-way keeps its socket),
 * SIGTERM it, and SIGKILL it after 15 s more.  Returns the exit status, or
 * -1 when it had to be killed. */
static int reap_stdio(pid_t pid)
{
    int st = -1;

    for (int i = 0; i < nstdio; i++) {
        if (stdio_pid[i] != pid)
            continue;
        stdio_pid[i] = -1;
        if (wait_exit(pid, 2000, &st))
            return st;
        kill(pid, SIGTERM);
        if (wait_exit(pid, 15000, &st))
            return st;
        fprintf(stderr, "qednbd -s (pid %d) ignored SIGTERM for 15 s: killing it\n", (int)pid);
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        return -1;
    }
    return st;
}

static void teardown(void)
{
    char cmd[PATH_MAX + 16];
    int bad = 0;

    stop_server();
    /* Every stdio server must have exited 0 once its client was gone
     * (in a sanitizer build, a leak or an error makes that fail). */
    for (int i = 0; i < nstdio; i++) {
        if (stdio_pid[i] <= 0)
            continue;
        int st = reap_stdio(stdio_pid[i]);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            bad++;
    }
    nstdio = 0;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", tmpdir);
    cr_assert_eq(bad, 0, "%d stdio server(s) did not exit 0", bad);
}

TestSuite(hs, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(tx, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(srv, .init = setup, .fini = teardown, .timeout = 120);

/* ---- Helpers ------------------------------------------------------------- */

/* Make tmpdir/NAME as a QED image of SIZE ("64M"), optionally over BACKING. */
static const char *mkimage(const char *name, const char *size, const char *backing)
{
    static char paths[4][PATH_MAX];
    static int next;
    char *p = paths[next++ % 4];
    char cmd[3 * PATH_MAX];

    snprintf(p, PATH_MAX, "%s/%s", tmpdir, name);
    if (backing)
        snprintf(cmd, sizeof(cmd), "qemu-img create -q -f qed -b '%s' -F qed '%s' %s", backing,
                 p, size);
    else
        snprintf(cmd, sizeof(cmd), "qemu-img create -q -f qed '%s' %s", p, size);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    return p;
}

/* Write @len bytes of @byte at @off into @img with qemu-io (before serving). */
static void qemu_io_write(const char *img, uint64_t off, uint64_t len, int byte)
{
    char cmd[2 * PATH_MAX];

    snprintf(cmd, sizeof(cmd), "qemu-io -f qed -c 'write -P %d %llu %llu' '%s' >/dev/null", byte,
             (unsigned long long)off, (unsigned long long)len, img);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
}

/* argv for qednbd: the binary, then NULL-terminated extra arguments. */
static void build_argv(char **argv, size_t max, va_list ap)
{
    size_t n = 0;
    char *a;

    argv[n++] = qednbd;
    while ((a = va_arg(ap, char *)) != NULL) {
        cr_assert(n + 1 < max);
        argv[n++] = a;
    }
    argv[n] = NULL;
}

/* Run @argv (a qednbd -s command line) on a socketpair; returns our end. */
static int spawn_stdio(char **argv)
{
    int sv[2];
    pid_t pid;

    cr_assert(nstdio < MAX_STDIO);
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        die_with_parent();
        dup2(sv[1], 0);
        dup2(sv[1], 1);
        execv(qednbd, argv);
        _exit(127);
    }
    close(sv[1]);
    stdio_pid[nstdio++] = pid;
    last_stdio = pid;
    return sv[0];
}

/* Close @h; when it was served by spawn_stdio, wait for that server to
 * exit (it must release the image lock before the next one opens it) and
 * check that it exited 0. */
static void nbd_done(struct nbd_handle *h)
{
    pid_t pid = (pid_t)nbd_get_private_data(h);

    nbd_close(h);
    if (pid > 0) {
        int st = reap_stdio(pid);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "qednbd -s exited with status 0x%x",
                  st);
    }
}

/* libnbd handle connected to `qednbd -s ARGS...` (NULL-terminated). */
static struct nbd_handle *nbd_stdio_cfg(bool opt_mode, int structured, ...)
    __attribute__((sentinel));
static struct nbd_handle *nbd_stdio_cfg(bool opt_mode, int structured, ...)
{
    char *argv[32];
    va_list ap;
    struct nbd_handle *h = nbd_create();

    cr_assert_not_null(h);
    va_start(ap, structured);
    build_argv(argv, 32, ap);
    va_end(ap);
    cr_assert_eq(nbd_set_opt_mode(h, opt_mode), 0);
    cr_assert_eq(nbd_set_request_structured_replies(h, structured), 0);
    cr_assert_eq(nbd_add_meta_context(h, "base:allocation"), 0);
    cr_assert_eq(nbd_add_meta_context(h, "qemu:allocation-depth"), 0);
    /* Our own spawn (not nbd_connect_command) so that teardown can check the
     * server's exit status; hs/connect_command covers nbd_connect_command. */
    cr_assert_eq(nbd_connect_socket(h, spawn_stdio(argv)), 0, "connect: %s",
                 nbd_get_error());
    nbd_set_private_data(h, (uintptr_t)last_stdio);
    return h;
}
#define nbd_stdio(...) nbd_stdio_cfg(false, true, "-s", __VA_ARGS__, NULL)

/* Start `qednbd -u SOCK ARGS...` in the background and wait for the socket. */
static void start_server(const char *first, ...) __attribute__((sentinel));
static void start_server(const char *first, ...)
{
    char *argv[32];
    size_t n = 0;
    va_list ap;
    const char *a;

    argv[n++] = qednbd;
    argv[n++] = "-u";
    argv[n++] = sock_path;
    argv[n++] = (char *)first;
    va_start(ap, first);
    while ((a = va_arg(ap, const char *)) != NULL)
        argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;

    server_pid = fork();
    cr_assert(server_pid >= 0);
    if (server_pid == 0) {
        die_with_parent();
        execv(qednbd, argv);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) {
        struct stat st;
        int status;
        if (stat(sock_path, &st) == 0)
            return;
        if (waitpid(server_pid, &status, WNOHANG) == server_pid) {
            server_pid = -1;
            cr_assert_fail("qednbd exited early with status 0x%x", status);
        }
        usleep(10000);
    }
    cr_assert_fail("qednbd did not create %s", sock_path);
}

static struct nbd_handle *nbd_unix(const char *export)
{
    struct nbd_handle *h = nbd_create();

    cr_assert_not_null(h);
    cr_assert_eq(nbd_set_export_name(h, export), 0);
    cr_assert_eq(nbd_add_meta_context(h, "base:allocation"), 0);
    /* The socket file appears at bind(), a moment before listen(): a client
     * that is quick enough sees ECONNREFUSED, so retry that (bounded). */
    for (int i = 0; nbd_connect_unix(h, sock_path) != 0; i++) {
        cr_assert(nbd_get_errno() == ECONNREFUSED && i < 100, "connect: %s", nbd_get_error());
        nbd_close(h);
        usleep(10000);
        h = nbd_create();
        cr_assert_not_null(h);
        cr_assert_eq(nbd_set_export_name(h, export), 0);
        cr_assert_eq(nbd_add_meta_context(h, "base:allocation"), 0);
    }
    return h;
}

/* ---- Raw client ------------------------------------------------------------ */

/* Read exactly @n bytes; returns 0, or -1 on EOF/error/timeout. */
static int raw_read(int fd, void *buf, size_t n)
{
    uint8_t *p = buf;

    while (n) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        int r = poll(&pfd, 1, IO_TIMEOUT_MS);
        ssize_t k;

        if (r <= 0)
            return -1;
        k = read(fd, p, n);
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Write all of @buf.  Returns false when the server had already closed the
 * connection (EPIPE or ECONNRESET: with SIGPIPE ignored, see setup()), true
 * when everything went; any other error fails the test.  A test that expects
 * a disconnect and writes more than the server reads first must send through
 * this: the server may rightly hang up before the last byte is written. */
static bool raw_write_or_gone(int fd, const void *buf, size_t n)
{
    const uint8_t *p = buf;

    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && (errno == EPIPE || errno == ECONNRESET))
            return false;
        cr_assert(k > 0, "write to server: %s", strerror(errno));
        p += k;
        n -= (size_t)k;
    }
    return true;
}

/* Write all of @buf to a server that must not disconnect. */
static void raw_write(int fd, const void *buf, size_t n)
{
    cr_assert(raw_write_or_gone(fd, buf, n), "write to server: %s (the server disconnected)",
              strerror(errno));
}

/* True when the server closes the connection within the timeout. */
static bool raw_closed(int fd)
{
    char buf[4096];

    for (;;) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        if (poll(&pfd, 1, IO_TIMEOUT_MS) <= 0)
            return false;
        ssize_t k = read(fd, buf, sizeof(buf));
        if (k == 0 || (k < 0 && errno == ECONNRESET))
            return true;
        if (k < 0)
            return false;
        /* Any pending replies are drained first. */
    }
}

/* Spawn `qednbd -s ARGS...` on a socketpair; returns our end. */
static int raw_spawn(const char *first, ...) __attribute__((sentinel));
static int raw_spawn(const char *first, ...)
{
    char *argv[32];
    size_t n = 0;
    va_list ap;
    const char *a;

    argv[n++] = qednbd;
    argv[n++] = "-s";
    argv[n++] = (char *)first;
    va_start(ap, first);
    while ((a = va_arg(ap, const char *)) != NULL)
        argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;
    return spawn_stdio(argv);
}

static int raw_unix(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    cr_assert(fd >= 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

/* Read the greeting and send @cflags. */
static void raw_greet(int fd, uint32_t cflags)
{
    struct nbd_greeting g;

    cr_assert_eq(raw_read(fd, &g, sizeof(g)), 0, "no greeting");
    cr_assert_eq(be64toh(g.magic), NBD_MAGIC);
    cr_assert_eq(be64toh(g.opts_magic), NBD_OPTS_MAGIC);
    cr_assert_eq(be16toh(g.hs_flags), NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    cflags = htobe32(cflags);
    raw_write(fd, &cflags, 4);
}

static void raw_send_opt(int fd, uint32_t opt, const void *data, uint32_t len)
{
    struct nbd_opt_header h = { htobe64(NBD_OPTS_MAGIC), htobe32(opt), htobe32(len) };

    raw_write(fd, &h, sizeof(h));
    if (len)
        raw_write(fd, data, len);
}

/* raw_send_opt for an option the server is expected to hang up on: the
 * header's length field says @hdr_len, @len bytes of @data follow.  The
 * server may close before all is written; that is the disconnect the caller
 * then checks with raw_closed(), so it is not an error here. */
static void raw_send_opt_to_be_refused(int fd, uint32_t opt, const void *data, uint32_t len,
                                       uint32_t hdr_len)
{
    struct nbd_opt_header h = { htobe64(NBD_OPTS_MAGIC), htobe32(opt), htobe32(hdr_len) };

    if (raw_write_or_gone(fd, &h, sizeof(h)) && len)
        raw_write_or_gone(fd, data, len);
}

/* Read one option reply; the payload (up to @max bytes kept) goes to @buf.
 * Returns the reply type; fails the test on EOF. */
static uint32_t raw_opt_reply(int fd, uint32_t opt, void *buf, size_t max, uint32_t *len)
{
    struct nbd_opt_reply r;
    uint8_t junk[512];

    cr_assert_eq(raw_read(fd, &r, sizeof(r)), 0, "no option reply");
    cr_assert_eq(be64toh(r.magic), NBD_REP_MAGIC);
    cr_assert_eq(be32toh(r.option), opt);
    uint32_t n = be32toh(r.len);
    if (len)
        *len = n;
    for (uint32_t got = 0; got < n;) {
        uint32_t k = n - got;
        if (got < max) {
            if (k > max - got)
                k = (uint32_t)(max - got);
            cr_assert_eq(raw_read(fd, (uint8_t *)buf + got, k), 0);
        } else {
            if (k > sizeof(junk))
                k = sizeof(junk);
            cr_assert_eq(raw_read(fd, junk, k), 0);
        }
        got += k;
    }
    return be32toh(r.type);
}

/* LIST must still work: proves the stream is in step. */
static void raw_expect_list_works(int fd)
{
    uint32_t t;

    raw_send_opt(fd, NBD_OPT_LIST, NULL, 0);
    while ((t = raw_opt_reply(fd, NBD_OPT_LIST, NULL, 0, NULL)) == NBD_REP_SERVER)
        ;
    cr_assert_eq(t, NBD_REP_ACK);
}

/* GO on @name; returns the NBD_REP type that ended it, fills size/flags. */
static uint32_t raw_go(int fd, const char *name, uint64_t *size, uint16_t *flags)
{
    size_t n = strlen(name);
    uint8_t buf[4 + 256 + 2];
    uint32_t be = htobe32((uint32_t)n), t;

    memcpy(buf, &be, 4);
    memcpy(buf + 4, name, n);
    memset(buf + 4 + n, 0, 2);
    raw_send_opt(fd, NBD_OPT_GO, buf, (uint32_t)(6 + n));
    for (;;) {
        uint8_t info[64];
        uint32_t len;
        t = raw_opt_reply(fd, NBD_OPT_GO, info, sizeof(info), &len);
        if (t != NBD_REP_INFO)
            return t;
        uint16_t it;
        memcpy(&it, info, 2);
        if (be16toh(it) == NBD_INFO_EXPORT) {
            struct nbd_info_export ie;
            cr_assert_eq(len, 12);
            memcpy(&ie, info, sizeof(ie));
            if (size)
                *size = be64toh(ie.size);
            if (flags)
                *flags = be16toh(ie.tx_flags);
        }
    }
}

/* Handshake to transmission with simple replies (optionally structured). */
static int raw_tx(const char *img, bool structured, bool read_only)
{
    int fd = read_only ? raw_spawn("-r", img, NULL) : raw_spawn(img, NULL);

    raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    if (structured) {
        raw_send_opt(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
        cr_assert_eq(raw_opt_reply(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0, NULL), NBD_REP_ACK);
    }
    cr_assert_eq(raw_go(fd, "", NULL, NULL), NBD_REP_ACK);
    return fd;
}

static void raw_request(int fd, uint16_t flags, uint16_t type, uint64_t cookie, uint64_t off,
                        uint32_t len)
{
    struct nbd_request r = { htobe32(NBD_REQUEST_MAGIC), htobe16(flags), htobe16(type),
                             htobe64(cookie), htobe64(off), htobe32(len) };
    raw_write(fd, &r, sizeof(r));
}

/* Read a simple reply; returns its error, checks the cookie. */
static uint32_t raw_simple_reply(int fd, uint64_t cookie)
{
    struct nbd_simple_reply r;

    cr_assert_eq(raw_read(fd, &r, sizeof(r)), 0, "no reply");
    cr_assert_eq(be32toh(r.magic), NBD_SIMPLE_REPLY_MAGIC);
    cr_assert_eq(be64toh(r.cookie), cookie);
    return be32toh(r.error);
}

/* A 4 KiB read at 0 answered correctly: the stream is in step. */
static void raw_expect_read_works(int fd)
{
    uint8_t buf[4096];

    raw_request(fd, 0, NBD_CMD_READ, 0x77, 0, sizeof(buf));
    cr_assert_eq(raw_simple_reply(fd, 0x77), 0);
    cr_assert_eq(raw_read(fd, buf, sizeof(buf)), 0);
}

/* ==== Handshake ============================================================ */

Test(hs, connect_command)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    struct nbd_handle *h = nbd_create();
    char *argv[] = { qednbd, "-s", (char *)img, NULL };
    uint8_t buf[512];

    /* libnbd runs the server itself: stdout must carry nothing but NBD. */
    cr_assert_not_null(h);
    cr_assert_eq(nbd_connect_command(h, argv), 0, "%s", nbd_get_error());
    cr_assert_eq(nbd_get_size(h), 16 * MiB);
    cr_assert_eq(nbd_pread(h, buf, sizeof(buf), 0, 0), 0, "%s", nbd_get_error());
    cr_assert_eq(nbd_shutdown(h, 0), 0);
    nbd_done(h);
}

Test(hs, go_flags_and_block_sizes)
{
    const char *img = mkimage("a.qed", "64M", NULL);
    struct nbd_handle *h = nbd_stdio(img);

    cr_assert_eq(nbd_get_size(h), 64 * MiB);
    cr_assert_eq(nbd_is_read_only(h), 0);
    cr_assert_eq(nbd_can_flush(h), 1);
    cr_assert_eq(nbd_can_fua(h), 1);
    cr_assert_eq(nbd_can_trim(h), 1);
    cr_assert_eq(nbd_can_zero(h), 1);
    cr_assert_eq(nbd_can_fast_zero(h), 1);
    cr_assert_eq(nbd_can_df(h), 1);
    cr_assert_eq(nbd_can_multi_conn(h), 1);
    cr_assert_eq(nbd_can_cache(h), 1);
    cr_assert_eq(nbd_is_rotational(h), 0);
    cr_assert_eq(nbd_get_structured_replies_negotiated(h), 1);
    cr_assert_eq(nbd_can_meta_context(h, "base:allocation"), 1);
    cr_assert_eq(nbd_can_meta_context(h, "qemu:allocation-depth"), 1);
    cr_assert_eq(nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM), 1);
    cr_assert_eq(nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED), 65536);
    cr_assert_eq(nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM), 32 * MiB);
    nbd_done(h);
}

Test(hs, preferred_block_is_cluster_size)
{
    char cmd[2 * PATH_MAX];
    struct nbd_handle *h;

    snprintf(cmd, sizeof(cmd), "qemu-img create -q -f qed -o cluster_size=16384 '%s/c.qed' 16M",
             tmpdir);
    cr_assert_eq(system(cmd), 0);
    snprintf(cmd, sizeof(cmd), "%s/c.qed", tmpdir);
    h = nbd_stdio(cmd);
    cr_assert_eq(nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED), 16384);
    nbd_done(h);
}

Test(hs, no_df_without_structured_replies)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    struct nbd_handle *h = nbd_stdio_cfg(false, false, "-s", img, NULL);

    cr_assert_eq(nbd_get_structured_replies_negotiated(h), 0);
    cr_assert_eq(nbd_can_df(h), 0);
    cr_assert_eq(nbd_can_multi_conn(h), 1);
    nbd_done(h);
}

Test(hs, read_only_flag)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    struct nbd_handle *h = nbd_stdio_cfg(false, true, "-s", "-r", img, NULL);

    cr_assert_eq(nbd_is_read_only(h), 1);
    nbd_done(h);
}

Test(hs, info_name_description)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    struct nbd_handle *h =
        nbd_stdio_cfg(true, true, "-s", "-x", "disk", "-D", "my description", img, NULL);
    char *s;

    cr_assert_eq(nbd_set_full_info(h, true), 0);
    cr_assert_eq(nbd_set_export_name(h, "disk"), 0);
    cr_assert_eq(nbd_opt_info(h), 0, "%s", nbd_get_error());
    cr_assert_eq(nbd_get_size(h), 16 * MiB);
    s = nbd_get_canonical_export_name(h);
    cr_assert_str_eq(s, "disk");
    free(s);
    s = nbd_get_export_description(h);
    cr_assert_not_null(s, "%s", nbd_get_error());
    cr_assert_str_eq(s, "my description");
    free(s);
    /* The empty name is the default export; its canonical name is "disk". */
    cr_assert_eq(nbd_set_export_name(h, ""), 0);
    cr_assert_eq(nbd_opt_info(h), 0, "%s", nbd_get_error());
    s = nbd_get_canonical_export_name(h);
    cr_assert_str_eq(s, "disk");
    free(s);
    cr_assert_eq(nbd_opt_go(h), 0, "%s", nbd_get_error());
    cr_assert_eq(nbd_aio_is_ready(h), 1);
    nbd_done(h);
}

static int collect_list(void *opaque, const char *name, const char *desc)
{
    char *acc = opaque;
    strcat(acc, name);
    strcat(acc, "=");
    strcat(acc, desc);
    strcat(acc, ";");
    return 0;
}

Test(hs, list_exports)
{
    const char *a = mkimage("a.qed", "16M", NULL);
    const char *b = mkimage("b.qed", "32M", NULL);
    char ea[PATH_MAX + 8], eb[PATH_MAX + 8], acc[256] = "";
    struct nbd_handle *h;

    snprintf(ea, sizeof(ea), "one=%s", a);
    snprintf(eb, sizeof(eb), "two=%s", b);
    h = nbd_stdio_cfg(true, true, "-s", "-e", ea, "-e", eb, "-D", "d", NULL);
    cr_assert_eq(nbd_opt_list(h, (nbd_list_callback){ .callback = collect_list, .user_data = acc }),
                 2, "%s", nbd_get_error());
    cr_assert_str_eq(acc, "one=d;two=d;");
    /* Each export is reachable by name, with its own size. */
    cr_assert_eq(nbd_set_export_name(h, "two"), 0);
    cr_assert_eq(nbd_opt_info(h), 0);
    cr_assert_eq(nbd_get_size(h), 32 * MiB);
    cr_assert_eq(nbd_set_export_name(h, "one"), 0);
    cr_assert_eq(nbd_opt_go(h), 0);
    cr_assert_eq(nbd_get_size(h), 16 * MiB);
    nbd_done(h);
}

Test(hs, go_unknown_export_then_known)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    struct nbd_handle *h = nbd_stdio_cfg(true, true, "-s", "-x", "disk", img, NULL);

    cr_assert_eq(nbd_set_export_name(h, "nope"), 0);
    cr_assert_eq(nbd_opt_go(h), -1, "GO on an unknown export succeeded");
    cr_assert_eq(nbd_set_export_name(h, "disk"), 0);
    cr_assert_eq(nbd_opt_go(h), 0, "%s", nbd_get_error());
    cr_assert_eq(nbd_get_size(h), 16 * MiB);
    nbd_done(h);
}

static int collect_ctx(void *opaque, const char *name)
{
    strcat((char *)opaque, name);
    strcat((char *)opaque, ";");
    return 0;
}

static char *list_ctx(struct nbd_handle *h, const char *q1, const char *q2)
{
    static char acc[512];

    acc[0] = '\0';
    cr_assert_eq(nbd_clear_meta_contexts(h), 0);
    if (q1)
        cr_assert_eq(nbd_add_meta_context(h, q1), 0);
    if (q2)
        cr_assert_eq(nbd_add_meta_context(h, q2), 0);
    cr_assert(nbd_opt_list_meta_context(
                  h, (nbd_context_callback){ .callback = collect_ctx, .user_data = acc }) >= 0,
              "%s", nbd_get_error());
    return acc;
}

Test(hs, list_meta_context_queries)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    struct nbd_handle *h = nbd_stdio_cfg(true, true, "-s", img, NULL);

    cr_assert_str_eq(list_ctx(h, NULL, NULL), "base:allocation;qemu:allocation-depth;");
    cr_assert_str_eq(list_ctx(h, "base:", NULL), "base:allocation;");
    cr_assert_str_eq(list_ctx(h, "qemu:", NULL), "qemu:allocation-depth;");
    cr_assert_str_eq(list_ctx(h, "qemu:allocation-depth", NULL), "qemu:allocation-depth;");
    cr_assert_str_eq(list_ctx(h, "x-foo:bar", NULL), "");
    cr_assert_str_eq(list_ctx(h, "base:nothing", "base:allocation"), "base:allocation;");
    nbd_done(h);
}

/* Raw: SET_META_CONTEXT payload for export "" and the given queries. */
static uint32_t build_meta(uint8_t *buf, const char **q, uint32_t nq)
{
    uint32_t n = 0, be;

    be = htobe32(0);
    memcpy(buf + n, &be, 4), n += 4;
    be = htobe32(nq);
    memcpy(buf + n, &be, 4), n += 4;
    for (uint32_t i = 0; i < nq; i++) {
        uint32_t l = (uint32_t)strlen(q[i]);
        be = htobe32(l);
        memcpy(buf + n, &be, 4), n += 4;
        memcpy(buf + n, q[i], l), n += l;
    }
    return n;
}

Test(hs, set_meta_context_rules)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_spawn(img, NULL);
    uint8_t buf[256], rep[64];
    const char *q[] = { "base:", "qemu:allocation-depth", "x-other:thing" };
    uint32_t n, t, len;

    raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    /* Before structured replies: ERR_INVALID. */
    n = build_meta(buf, q, 3);
    raw_send_opt(fd, NBD_OPT_SET_META_CONTEXT, buf, n);
    cr_assert_eq(raw_opt_reply(fd, NBD_OPT_SET_META_CONTEXT, NULL, 0, NULL), NBD_REP_ERR_INVALID);

    raw_send_opt(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
    cr_assert_eq(raw_opt_reply(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0, NULL), NBD_REP_ACK);
    /* "base:" is ignored by SET, unknown namespaces too: only the depth context. */
    raw_send_opt(fd, NBD_OPT_SET_META_CONTEXT, buf, n);
    t = raw_opt_reply(fd, NBD_OPT_SET_META_CONTEXT, rep, sizeof(rep), &len);
    cr_assert_eq(t, NBD_REP_META_CONTEXT);
    cr_assert_eq(len, 4 + strlen("qemu:allocation-depth"));
    cr_assert_eq(memcmp(rep + 4, "qemu:allocation-depth", len - 4), 0);
    cr_assert_eq(raw_opt_reply(fd, NBD_OPT_SET_META_CONTEXT, NULL, 0, NULL), NBD_REP_ACK);

    /* A query running past the payload: ERR_INVALID. */
    n = build_meta(buf, q, 1);
    raw_send_opt(fd, NBD_OPT_SET_META_CONTEXT, buf, n - 2);
    cr_assert_eq(raw_opt_reply(fd, NBD_OPT_SET_META_CONTEXT, NULL, 0, NULL), NBD_REP_ERR_INVALID);
    /* A query without a colon: ERR_INVALID. */
    const char *bad[] = { "nocolon" };
    n = build_meta(buf, bad, 1);
    raw_send_opt(fd, NBD_OPT_SET_META_CONTEXT, buf, n);
    cr_assert_eq(raw_opt_reply(fd, NBD_OPT_SET_META_CONTEXT, NULL, 0, NULL), NBD_REP_ERR_INVALID);
    raw_expect_list_works(fd);
    close(fd);
}

Test(hs, abort_libnbd)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    struct nbd_handle *h = nbd_stdio_cfg(true, true, "-s", img, NULL);

    cr_assert_eq(nbd_opt_abort(h), 0, "%s", nbd_get_error());
    cr_assert_eq(nbd_aio_is_closed(h), 1);
    nbd_done(h);
}

Test(hs, abort_raw_acks_then_closes)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_spawn(img, NULL);

    raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    raw_send_opt(fd, NBD_OPT_ABORT, "x", 1);   /* data is ignored */
    cr_assert_eq(raw_opt_reply(fd, NBD_OPT_ABORT, NULL, 0, NULL), NBD_REP_ACK);
    cr_assert(raw_closed(fd));
    close(fd);
}

Test(hs, unknown_option_then_next_parsed)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_spawn(img, NULL);
    char msg[128] = "";

    raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    raw_send_opt(fd, 0x1234, "some data", 9);
    cr_assert_eq(raw_opt_reply(fd, 0x1234, msg, sizeof(msg) - 1, NULL), NBD_REP_ERR_UNSUP);
    cr_assert(strlen(msg) > 0, "error replies carry a message");
    raw_send_opt(fd, NBD_OPT_EXTENDED_HEADERS, NULL, 0);
    cr_assert_eq(raw_opt_reply(fd, NBD_OPT_EXTENDED_HEADERS, NULL, 0, NULL), NBD_REP_ERR_UNSUP);
    raw_expect_list_works(fd);
    cr_assert_eq(raw_go(fd, "", NULL, NULL), NBD_REP_ACK);
    raw_expect_read_works(fd);
    close(fd);
}

Test(hs, starttls_is_policy_error)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_spawn(img, NULL);

    raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    raw_send_opt(fd, NBD_OPT_STARTTLS, NULL, 0);
    cr_assert_eq(raw_opt_reply(fd, NBD_OPT_STARTTLS, NULL, 0, NULL), NBD_REP_ERR_POLICY);
    raw_send_opt(fd, NBD_OPT_STARTTLS, "x", 1);
    cr_assert_eq(raw_opt_reply(fd, NBD_OPT_STARTTLS, NULL, 0, NULL), NBD_REP_ERR_INVALID);
    raw_expect_list_works(fd);
    close(fd);
}

Test(hs, options_with_forbidden_data)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_spawn(img, NULL);

    raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    raw_send_opt(fd, NBD_OPT_LIST, "x", 1);
    cr_assert_eq(raw_opt_reply(fd, NBD_OPT_LIST, NULL, 0, NULL), NBD_REP_ERR_INVALID);
    raw_send_opt(fd, NBD_OPT_STRUCTURED_REPLY, "xy", 2);
    cr_assert_eq(raw_opt_reply(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0, NULL), NBD_REP_ERR_INVALID);
    raw_expect_list_works(fd);
    close(fd);
}

Test(hs, malformed_go)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_spawn(img, NULL);
    uint8_t buf[16] = { 0, 0, 0, 100 };  /* name length 100 in a 10-byte payload */

    raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    raw_send_opt(fd, NBD_OPT_GO, buf, 10);
    cr_assert_eq(raw_opt_reply(fd, NBD_OPT_GO, NULL, 0, NULL), NBD_REP_ERR_INVALID);
    /* Odd number of info-request bytes. */
    memset(buf, 0, sizeof(buf));
    buf[5] = 1;     /* 1 request announced, none sent */
    raw_send_opt(fd, NBD_OPT_GO, buf, 6);
    cr_assert_eq(raw_opt_reply(fd, NBD_OPT_GO, NULL, 0, NULL), NBD_REP_ERR_INVALID);
    cr_assert_eq(raw_go(fd, "", NULL, NULL), NBD_REP_ACK);
    raw_expect_read_works(fd);
    close(fd);
}

Test(hs, overlong_name_in_go)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_spawn(img, NULL);
    uint32_t nlen = 5000;
    uint8_t *buf = calloc(1, 4 + nlen + 2);
    uint32_t be = htobe32(nlen);

    memcpy(buf, &be, 4);
    memset(buf + 4, 'a', nlen);
    raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    raw_send_opt(fd, NBD_OPT_GO, buf, 4 + nlen + 2);
    cr_assert_eq(raw_opt_reply(fd, NBD_OPT_GO, NULL, 0, NULL), NBD_REP_ERR_INVALID);
    raw_send_opt(fd, NBD_OPT_INFO, buf, 4 + nlen + 2);
    cr_assert_eq(raw_opt_reply(fd, NBD_OPT_INFO, NULL, 0, NULL), NBD_REP_ERR_INVALID);
    cr_assert_eq(raw_go(fd, "", NULL, NULL), NBD_REP_ACK);
    free(buf);
    close(fd);
}

Test(hs, overlong_export_name_disconnects)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_spawn(img, NULL);
    char name[5000];

    memset(name, 'n', sizeof(name));
    raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    /* The server hangs up on the header: the name may not all go out. */
    raw_send_opt_to_be_refused(fd, NBD_OPT_EXPORT_NAME, name, sizeof(name), sizeof(name));
    cr_assert(raw_closed(fd));
    close(fd);
}

Test(hs, option_payload_too_big)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_spawn(img, NULL);
    size_t n = 200 * 1024;
    uint8_t *junk = calloc(1, n);

    raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    raw_send_opt(fd, 0x4242, junk, (uint32_t)n);
    cr_assert_eq(raw_opt_reply(fd, 0x4242, NULL, 0, NULL), NBD_REP_ERR_TOO_BIG);
    raw_expect_list_works(fd);
    free(junk);
    close(fd);
}

/* Up to 1 MiB, an over-long option is drained and refused; past it (up to
 * the 4 GiB the length field allows) the server hangs up at once, long
 * before the handshake timeout, instead of reading it all. */
Test(hs, option_payload_at_drain_limit)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_spawn(img, NULL);
    uint8_t *junk = calloc(1, MiB);

    raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    raw_send_opt(fd, NBD_OPT_GO, junk, MiB);
    cr_assert_eq(raw_opt_reply(fd, NBD_OPT_GO, NULL, 0, NULL), NBD_REP_ERR_TOO_BIG);
    raw_expect_list_works(fd);
    free(junk);
    close(fd);
}

static void huge_option_case(uint32_t hdr_len)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_spawn("--handshake-timeout=60", img, NULL);
    size_t n = 2 * MiB;
    uint8_t *junk = calloc(1, n);
    time_t t0 = time(NULL);

    raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    raw_send_opt_to_be_refused(fd, NBD_OPT_LIST, junk, (uint32_t)(n < hdr_len ? n : hdr_len),
                               hdr_len);
    cr_assert(raw_closed(fd), "no hang-up on an option of %u bytes", hdr_len);
    cr_assert(time(NULL) - t0 <= 5, "the hang-up took %lld s",
              (long long)(time(NULL) - t0));
    free(junk);
    close(fd);
}

Test(hs, huge_option_hangs_up)
{
    huge_option_case(0xffffffffu);
}

Test(hs, option_over_drain_limit_hangs_up)
{
    huge_option_case(MiB + 1);
}

Test(hs, too_many_options)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_spawn(img, NULL);

    raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    for (int i = 0; i < 32; i++)
        raw_expect_list_works(fd);
    raw_send_opt(fd, NBD_OPT_LIST, NULL, 0);
    cr_assert(raw_closed(fd), "33rd option was accepted");
    close(fd);
}

Test(hs, unknown_client_flags_close)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_spawn(img, NULL);

    raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE | 0x4);
    cr_assert(raw_closed(fd));
    close(fd);
}

Test(hs, bad_option_magic_closes)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_spawn(img, NULL);
    struct nbd_opt_header h = { htobe64(0x1122334455667788ull), htobe32(NBD_OPT_LIST), 0 };

    raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    raw_write(fd, &h, sizeof(h));
    cr_assert(raw_closed(fd));
    close(fd);
}

Test(hs, export_name_unknown_closes)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_spawn("-x", "disk", img, NULL);

    raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    raw_send_opt(fd, NBD_OPT_EXPORT_NAME, "other", 5);
    cr_assert(raw_closed(fd));
    close(fd);
}

static void export_name_case(bool no_zeroes)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_spawn("-x", "disk", img, NULL);
    struct nbd_export_name_reply r;
    uint8_t zeroes[124];

    raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE | (no_zeroes ? NBD_FLAG_C_NO_ZEROES : 0));
    raw_send_opt(fd, NBD_OPT_EXPORT_NAME, "disk", 4);
    cr_assert_eq(raw_read(fd, &r, sizeof(r)), 0);
    cr_assert_eq(be64toh(r.size), 16 * MiB);
    uint16_t f = be16toh(r.tx_flags);
    cr_assert(f & NBD_FLAG_HAS_FLAGS);
    cr_assert(f & NBD_FLAG_SEND_FLUSH);
    cr_assert_eq(f & NBD_FLAG_SEND_DF, 0, "DF without structured replies");
    if (!no_zeroes) {
        cr_assert_eq(raw_read(fd, zeroes, sizeof(zeroes)), 0);
        for (size_t i = 0; i < sizeof(zeroes); i++)
            cr_assert_eq(zeroes[i], 0);
    }
    raw_expect_read_works(fd);
    raw_request(fd, 0, NBD_CMD_DISC, 1, 0, 0);
    cr_assert(raw_closed(fd));
    close(fd);
}

Test(hs, export_name_no_zeroes)
{
    export_name_case(true);
}

Test(hs, export_name_with_zeroes)
{
    export_name_case(false);
}

Test(hs, handshake_timeout)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_spawn("--handshake-timeout=1", img, NULL);
    struct nbd_greeting g;
    time_t t0 = time(NULL);

    cr_assert_eq(raw_read(fd, &g, sizeof(g)), 0);
    /* Say nothing: the server must hang up after about a second. */
    cr_assert(raw_closed(fd));
    cr_assert(time(NULL) - t0 <= 5);
    close(fd);
}

Test(hs, max_connections_refused_politely)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    struct nbd_handle *h1, *h2;
    int fd;
    char buf[512];

    start_server("--max-connections=1", img, NULL);
    h1 = nbd_unix("");
    /* The second client gets the greeting, then ERR_SHUTDOWN for its options. */
    fd = raw_unix();
    raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    raw_send_opt(fd, NBD_OPT_LIST, NULL, 0);
    cr_assert_eq(raw_opt_reply(fd, NBD_OPT_LIST, NULL, 0, NULL), NBD_REP_ERR_SHUTDOWN);
    raw_send_opt(fd, NBD_OPT_ABORT, NULL, 0);
    cr_assert_eq(raw_opt_reply(fd, NBD_OPT_ABORT, NULL, 0, NULL), NBD_REP_ACK);
    close(fd);
    h2 = nbd_create();
    cr_assert_neq(nbd_connect_unix(h2, sock_path), 0, "second client was served");
    nbd_done(h2);
    /* The first one is unaffected; once it leaves, a new client is served. */
    cr_assert_eq(nbd_pread(h1, buf, sizeof(buf), 0, 0), 0);
    cr_assert_eq(nbd_shutdown(h1, 0), 0);
    nbd_done(h1);
    for (int i = 0; i < 100; i++) {
        h2 = nbd_create();
        if (nbd_connect_unix(h2, sock_path) == 0)
            break;
        nbd_done(h2);
        h2 = NULL;
        usleep(20000);
    }
    cr_assert_not_null(h2, "server did not free the slot");
    nbd_done(h2);
    cr_assert_eq(stop_server(), 0);
}

/* ==== Transmission =========================================================== */

static bool all_bytes(const uint8_t *p, size_t n, uint8_t v)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != v)
            return false;
    return true;
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(seed * 131 + i * 7 + (i >> 9));
}

static void rw_roundtrip(bool structured)
{
    const char *img = mkimage("a.qed", "64M", NULL);
    struct nbd_handle *h = nbd_stdio_cfg(false, structured, "-s", img, NULL);
    size_t n = 3 * MiB + 777;
    uint8_t *w = malloc(n), *r = malloc(n);

    fill(w, n, 1);
    cr_assert_eq(nbd_get_structured_replies_negotiated(h), structured);
    cr_assert_eq(nbd_pwrite(h, w, n, 5 * MiB + 123, 0), 0, "%s", nbd_get_error());
    cr_assert_eq(nbd_pread(h, r, n, 5 * MiB + 123, 0), 0, "%s", nbd_get_error());
    cr_assert_eq(memcmp(w, r, n), 0);
    /* Unwritten areas read as zeros. */
    cr_assert_eq(nbd_pread(h, r, 65536, 0, 0), 0);
    for (size_t i = 0; i < 65536; i++)
        cr_assert_eq(r[i], 0);
    /* The last byte of the export. */
    cr_assert_eq(nbd_pwrite(h, "Z", 1, 64 * MiB - 1, 0), 0);
    cr_assert_eq(nbd_pread(h, r, 1, 64 * MiB - 1, 0), 0);
    cr_assert_eq(r[0], 'Z');
    free(w);
    free(r);
    nbd_done(h);
}

Test(tx, read_write_simple_replies)
{
    rw_roundtrip(false);
}

Test(tx, read_write_structured_replies)
{
    rw_roundtrip(true);
}

Test(tx, data_persists_across_servers)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    struct nbd_handle *h = nbd_stdio(img);
    uint8_t w[8192], r[8192];

    fill(w, sizeof(w), 9);
    cr_assert_eq(nbd_pwrite(h, w, sizeof(w), 4096, LIBNBD_CMD_FLAG_FUA), 0);
    cr_assert_eq(nbd_shutdown(h, 0), 0);
    nbd_done(h);
    h = nbd_stdio(img);
    cr_assert_eq(nbd_pread(h, r, sizeof(r), 4096, 0), 0);
    cr_assert_eq(memcmp(w, r, sizeof(w)), 0);
    nbd_done(h);
}

Test(tx, out_of_range_errors)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    struct nbd_handle *h = nbd_stdio(img);
    uint8_t buf[4096] = { 0 };

    cr_assert_eq(nbd_set_strict_mode(h, 0), 0);
    cr_assert_eq(nbd_pread(h, buf, sizeof(buf), 16 * MiB - 100, 0), -1);
    cr_assert_eq(nbd_get_errno(), EINVAL);
    cr_assert_eq(nbd_pread(h, buf, 1, UINT64_MAX - 10, 0), -1);
    cr_assert_eq(nbd_get_errno(), EINVAL);
    cr_assert_eq(nbd_pwrite(h, buf, sizeof(buf), 16 * MiB - 100, 0), -1);
    cr_assert_eq(nbd_get_errno(), ENOSPC);
    cr_assert_eq(nbd_zero(h, 8192, 16 * MiB, 0), -1);
    cr_assert_eq(nbd_get_errno(), ENOSPC);
    cr_assert_eq(nbd_trim(h, 8192, 16 * MiB - 4096, 0), -1);
    cr_assert_eq(nbd_get_errno(), EINVAL);
    cr_assert_eq(nbd_cache(h, 8192, 16 * MiB - 4096, 0), -1);
    cr_assert_eq(nbd_get_errno(), EINVAL);
    /* The connection is still fine. */
    cr_assert_eq(nbd_pread(h, buf, sizeof(buf), 0, 0), 0);
    nbd_done(h);
}

Test(tx, read_only_export_refuses_writes)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    struct nbd_handle *h = nbd_stdio_cfg(false, true, "-s", "-r", img, NULL);
    uint8_t buf[4096] = { 1 };

    cr_assert_eq(nbd_set_strict_mode(h, 0), 0);
    cr_assert_eq(nbd_pwrite(h, buf, sizeof(buf), 0, 0), -1);
    cr_assert_eq(nbd_get_errno(), EPERM);
    cr_assert_eq(nbd_zero(h, 4096, 0, 0), -1);
    cr_assert_eq(nbd_get_errno(), EPERM);
    cr_assert_eq(nbd_trim(h, 4096, 0, 0), -1);
    cr_assert_eq(nbd_get_errno(), EPERM);
    cr_assert_eq(nbd_pread(h, buf, sizeof(buf), 0, 0), 0);
    cr_assert_eq(buf[0], 0, "a refused write changed the data");
    cr_assert_eq(nbd_flush(h, 0), 0);
    nbd_done(h);
}

Test(tx, rejected_write_payload_is_skipped)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_tx(img, false, true);
    uint8_t payload[100000];

    memset(payload, 0x55, sizeof(payload));
    raw_request(fd, 0, NBD_CMD_WRITE, 1, 0, sizeof(payload));
    raw_write(fd, payload, sizeof(payload));
    cr_assert_eq(raw_simple_reply(fd, 1), NBD_EPERM);
    /* Past the end, with a payload: ENOSPC, payload dropped, still in step. */
    close(fd);
    cr_assert_eq(reap_stdio(last_stdio), 0);
    fd = raw_tx(img, false, false);
    raw_request(fd, 0, NBD_CMD_WRITE, 2, 16 * MiB - 10, 4096);
    raw_write(fd, payload, 4096);
    cr_assert_eq(raw_simple_reply(fd, 2), NBD_ENOSPC);
    raw_request(fd, 0x80, NBD_CMD_WRITE, 3, 0, 4096);   /* unknown flag */
    raw_write(fd, payload, 4096);
    cr_assert_eq(raw_simple_reply(fd, 3), NBD_EINVAL);
    raw_expect_read_works(fd);
    close(fd);
}

Test(tx, unknown_command)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_tx(img, false, false);

    raw_request(fd, 0, 42, 5, 0, 4096);
    cr_assert_eq(raw_simple_reply(fd, 5), NBD_EINVAL);
    raw_request(fd, 0, NBD_CMD_RESIZE, 6, 0, 0);
    cr_assert_eq(raw_simple_reply(fd, 6), NBD_EINVAL);
    raw_expect_read_works(fd);
    close(fd);
}

Test(tx, unknown_and_misplaced_flags)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_tx(img, false, false);

    raw_request(fd, 0x40, NBD_CMD_READ, 1, 0, 512);
    cr_assert_eq(raw_simple_reply(fd, 1), NBD_EINVAL);
    /* DF without structured replies. */
    raw_request(fd, NBD_CMD_FLAG_DF, NBD_CMD_READ, 2, 0, 512);
    cr_assert_eq(raw_simple_reply(fd, 2), NBD_EINVAL);
    /* NO_HOLE is for WRITE_ZEROES only. */
    raw_request(fd, NBD_CMD_FLAG_NO_HOLE, NBD_CMD_TRIM, 3, 0, 512);
    cr_assert_eq(raw_simple_reply(fd, 3), NBD_EINVAL);
    raw_request(fd, NBD_CMD_FLAG_REQ_ONE, NBD_CMD_FLUSH, 4, 0, 0);
    cr_assert_eq(raw_simple_reply(fd, 4), NBD_EINVAL);
    /* FLUSH with an offset. */
    raw_request(fd, 0, NBD_CMD_FLUSH, 5, 4096, 0);
    cr_assert_eq(raw_simple_reply(fd, 5), NBD_EINVAL);
    /* FUA is valid on every command. */
    raw_request(fd, NBD_CMD_FLAG_FUA, NBD_CMD_FLUSH, 6, 0, 0);
    cr_assert_eq(raw_simple_reply(fd, 6), 0);
    raw_expect_read_works(fd);
    close(fd);
}

Test(tx, unknown_flag_libnbd)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    struct nbd_handle *h = nbd_stdio(img);
    uint8_t buf[512];

    cr_assert_eq(nbd_set_strict_mode(h, 0), 0);
    cr_assert_eq(nbd_pread(h, buf, sizeof(buf), 0, LIBNBD_CMD_FLAG_REQ_ONE), -1);
    cr_assert_eq(nbd_get_errno(), EINVAL);
    cr_assert_eq(nbd_pread(h, buf, sizeof(buf), 0, 0), 0);
    nbd_done(h);
}

Test(tx, oversized_write_disconnects)
{
    const char *img = mkimage("a.qed", "64M", NULL);
    int fd = raw_tx(img, false, false);

    raw_request(fd, 0, NBD_CMD_WRITE, 1, 0, 32 * MiB + 1);
    cr_assert(raw_closed(fd));
    close(fd);
}

Test(tx, bad_request_magic_disconnects)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_tx(img, false, false);
    uint8_t junk[28];

    memset(junk, 0xee, sizeof(junk));
    raw_write(fd, junk, sizeof(junk));
    cr_assert(raw_closed(fd));
    close(fd);
}

Test(tx, zero_length_requests)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    struct nbd_handle *h = nbd_stdio(img);
    uint8_t buf[1];

    cr_assert_eq(nbd_set_strict_mode(h, 0), 0);
    cr_assert_eq(nbd_pread(h, buf, 0, 4096, 0), 0, "%s", nbd_get_error());
    cr_assert_eq(nbd_pwrite(h, buf, 0, 4096, 0), 0, "%s", nbd_get_error());
    cr_assert_eq(nbd_trim(h, 0, 4096, 0), 0, "%s", nbd_get_error());
    cr_assert_eq(nbd_zero(h, 0, 4096, 0), 0, "%s", nbd_get_error());
    cr_assert_eq(nbd_cache(h, 0, 4096, 0), 0, "%s", nbd_get_error());
    cr_assert_eq(nbd_pread(h, buf, 0, 16 * MiB, 0), 0, "%s", nbd_get_error());
    nbd_done(h);

    /* The same with simple replies, raw. */
    int fd = raw_tx(img, false, false);
    raw_request(fd, 0, NBD_CMD_READ, 1, 0, 0);
    cr_assert_eq(raw_simple_reply(fd, 1), 0);
    raw_request(fd, 0, NBD_CMD_WRITE, 2, 0, 0);
    cr_assert_eq(raw_simple_reply(fd, 2), 0);
    raw_expect_read_works(fd);
    close(fd);
}

/* Read one structured chunk header; returns type, fills flags/len. */
static uint16_t raw_chunk(int fd, uint64_t cookie, uint16_t *flags, uint32_t *len)
{
    struct nbd_structured_reply r;

    cr_assert_eq(raw_read(fd, &r, sizeof(r)), 0, "no chunk");
    cr_assert_eq(be32toh(r.magic), NBD_STRUCTURED_REPLY_MAGIC);
    cr_assert_eq(be64toh(r.cookie), cookie);
    *flags = be16toh(r.flags);
    *len = be32toh(r.len);
    return be16toh(r.type);
}

static uint32_t raw_error_chunk(int fd, uint64_t cookie)
{
    uint16_t fl;
    uint32_t len;
    uint8_t buf[512];
    struct nbd_chunk_error ce;

    cr_assert_eq(raw_chunk(fd, cookie, &fl, &len), NBD_REPLY_TYPE_ERROR);
    cr_assert(fl & NBD_REPLY_FLAG_DONE);
    cr_assert(len >= 6 && len <= sizeof(buf));
    cr_assert_eq(raw_read(fd, buf, len), 0);
    memcpy(&ce, buf, sizeof(ce));
    cr_assert_eq(be16toh(ce.msg_len), len - 6);
    return be32toh(ce.error);
}

Test(tx, huge_read_refused)
{
    const char *img = mkimage("a.qed", "128M", NULL);
    int fd = raw_tx(img, false, false);

    raw_request(fd, 0, NBD_CMD_READ, 1, 0, 64 * MiB);
    cr_assert_eq(raw_simple_reply(fd, 1), NBD_EINVAL);
    raw_expect_read_works(fd);
    close(fd);
    cr_assert_eq(reap_stdio(last_stdio), 0);

    fd = raw_tx(img, true, false);
    raw_request(fd, NBD_CMD_FLAG_DF, NBD_CMD_READ, 2, 0, 64 * MiB);
    cr_assert_eq(raw_error_chunk(fd, 2), NBD_EOVERFLOW);
    raw_request(fd, 0, NBD_CMD_READ, 3, 0, 64 * MiB);
    cr_assert_eq(raw_error_chunk(fd, 3), NBD_EOVERFLOW);
    /* Structured replies: out-of-range errors come as error chunks too. */
    raw_request(fd, 0, NBD_CMD_READ, 4, 128 * MiB, 1);
    cr_assert_eq(raw_error_chunk(fd, 4), NBD_EINVAL);
    close(fd);
}

Test(tx, flush_and_fua)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    struct nbd_handle *h = nbd_stdio(img);
    uint8_t w[65536], r[65536];

    fill(w, sizeof(w), 3);
    cr_assert_eq(nbd_pwrite(h, w, sizeof(w), 0, LIBNBD_CMD_FLAG_FUA), 0, "%s", nbd_get_error());
    cr_assert_eq(nbd_zero(h, 4096, 8192, LIBNBD_CMD_FLAG_FUA), 0, "%s", nbd_get_error());
    cr_assert_eq(nbd_trim(h, 65536, 1 * MiB, LIBNBD_CMD_FLAG_FUA), 0, "%s", nbd_get_error());
    cr_assert_eq(nbd_flush(h, 0), 0, "%s", nbd_get_error());
    memset(w + 8192, 0, 4096);
    cr_assert_eq(nbd_pread(h, r, sizeof(r), 0, 0), 0);
    cr_assert_eq(memcmp(w, r, sizeof(w)), 0);
    nbd_done(h);
}

struct ext_acc {
    char text[1024];
};

static int collect_extents(void *opaque, const char *ctx, uint64_t off, uint32_t *e, size_t n,
                           int *err)
{
    struct ext_acc *a = opaque;
    size_t used = strlen(a->text);

    (void)off;
    (void)err;
    used += (size_t)snprintf(a->text + used, sizeof(a->text) - used, "%s:",
                             strcmp(ctx, "base:allocation") == 0 ? "b" : "d");
    for (size_t i = 0; i + 1 < n; i += 2)
        used += (size_t)snprintf(a->text + used, sizeof(a->text) - used, "%u/%u,", e[i],
                                 e[i + 1]);
    snprintf(a->text + used, sizeof(a->text) - used, ";");
    return 0;
}

static const char *block_status(struct nbd_handle *h, uint64_t len, uint64_t off, uint32_t flags)
{
    static struct ext_acc a;

    memset(&a, 0, sizeof(a));
    cr_assert_eq(nbd_block_status(h, len, off,
                                  (nbd_extent_callback){ .callback = collect_extents,
                                                         .user_data = &a },
                                  flags),
                 0, "%s", nbd_get_error());
    return a.text;
}

/* Context chunk order is not fixed by the spec: accept either order. */
static void assert_bs(const char *got, const char *base, const char *depth)
{
    char a[1024], b[1024];

    snprintf(a, sizeof(a), "%s%s", base, depth);
    snprintf(b, sizeof(b), "%s%s", depth, base);
    cr_assert(strcmp(got, a) == 0 || strcmp(got, b) == 0, "block status %s, expected %s", got, a);
}

Test(tx, block_status_base_and_depth)
{
    const char *img = mkimage("a.qed", "4M", NULL);
    struct nbd_handle *h;
    uint8_t w[65536];

    qemu_io_write(img, 1 * MiB, 65536, 0x11);
    h = nbd_stdio(img);
    /* Fresh areas: hole+zero, depth 0; written cluster: data, depth 1. */
    assert_bs(block_status(h, 4 * MiB, 0, 0), "b:1048576/3,65536/0,3080192/3,;",
              "d:1048576/0,65536/1,3080192/0,;");
    /* REQ_ONE: one extent per context, within the request. */
    assert_bs(block_status(h, 4096, 1 * MiB + 4096, LIBNBD_CMD_FLAG_REQ_ONE), "b:4096/0,;",
              "d:4096/1,;");
    assert_bs(block_status(h, 2 * MiB, 0, LIBNBD_CMD_FLAG_REQ_ONE), "b:1048576/3,;",
              "d:1048576/0,;");
    /* A write through the server shows up at once. */
    fill(w, sizeof(w), 5);
    cr_assert_eq(nbd_pwrite(h, w, sizeof(w), 0, 0), 0);
    assert_bs(block_status(h, 131072, 0, 0), "b:65536/0,65536/3,;", "d:65536/1,65536/0,;");
    /* Unaligned start and length. */
    assert_bs(block_status(h, 1000, 65000, 0), "b:536/0,464/3,;", "d:536/1,464/0,;");
    nbd_done(h);
}

Test(tx, block_status_backing_depth)
{
    const char *base = mkimage("base.qed", "2M", NULL);
    const char *top;
    struct nbd_handle *h;

    qemu_io_write(base, 0, 65536, 0x22);
    top = mkimage("top.qed", "2M", base);
    qemu_io_write(top, 65536, 65536, 0x33);
    h = nbd_stdio(top);
    assert_bs(block_status(h, 2 * MiB, 0, 0), "b:131072/0,1966080/3,;",
              "d:65536/2,65536/1,1966080/0,;");
    nbd_done(h);
}

Test(tx, block_status_errors)
{
    const char *img = mkimage("a.qed", "4M", NULL);
    struct nbd_handle *h = nbd_stdio(img);
    struct ext_acc a = { "" };

    cr_assert_eq(nbd_set_strict_mode(h, 0), 0);
    cr_assert_eq(nbd_block_status(h, 8192, 4 * MiB - 4096,
                                  (nbd_extent_callback){ .callback = collect_extents,
                                                         .user_data = &a },
                                  0),
                 -1);
    cr_assert_eq(nbd_get_errno(), EINVAL);
    nbd_done(h);

    /* Without a negotiated context, BLOCK_STATUS is EINVAL. */
    h = nbd_create();
    cr_assert_eq(nbd_set_strict_mode(h, 0), 0);
    char *argv[] = { qednbd, "-s", (char *)img, NULL };
    cr_assert_eq(nbd_connect_command(h, argv), 0);
    cr_assert_eq(nbd_block_status(h, 4096, 0,
                                  (nbd_extent_callback){ .callback = collect_extents,
                                                         .user_data = &a },
                                  0),
                 -1);
    cr_assert_eq(nbd_get_errno(), EINVAL);
    nbd_done(h);
}

struct chunks {
    unsigned data, holes;
    uint64_t data_bytes, hole_bytes;
};

static int count_chunk(void *opaque, const void *buf, size_t count, uint64_t off,
                       unsigned status, int *err)
{
    struct chunks *c = opaque;

    (void)buf;
    (void)off;
    (void)err;
    if (status == LIBNBD_READ_DATA) {
        c->data++;
        c->data_bytes += count;
    } else if (status == LIBNBD_READ_HOLE) {
        c->holes++;
        c->hole_bytes += count;
    }
    return 0;
}

Test(tx, structured_read_sends_holes)
{
    const char *img = mkimage("a.qed", "4M", NULL);
    struct nbd_handle *h;
    uint8_t *buf = malloc(2 * MiB);
    struct chunks c = { 0 };

    qemu_io_write(img, 1 * MiB, 65536, 0x44);
    h = nbd_stdio(img);
    cr_assert_eq(nbd_pread_structured(h, buf, 2 * MiB, 0,
                                      (nbd_chunk_callback){ .callback = count_chunk,
                                                            .user_data = &c },
                                      0),
                 0, "%s", nbd_get_error());
    cr_assert_eq(c.data, 1);
    cr_assert_eq(c.data_bytes, 65536);
    cr_assert_eq(c.holes, 2);
    cr_assert_eq(c.hole_bytes, 2 * MiB - 65536);
    for (size_t i = 0; i < 2 * MiB; i++)
        cr_assert_eq(buf[i], i >= MiB && i < MiB + 65536 ? 0x44 : 0, "byte %zu", i);

    /* DF: exactly one data chunk, zeros included. */
    memset(&c, 0, sizeof(c));
    cr_assert_eq(nbd_pread_structured(h, buf, 2 * MiB, 0,
                                      (nbd_chunk_callback){ .callback = count_chunk,
                                                            .user_data = &c },
                                      LIBNBD_CMD_FLAG_DF),
                 0, "%s", nbd_get_error());
    cr_assert_eq(c.data, 1);
    cr_assert_eq(c.holes, 0);
    cr_assert_eq(c.data_bytes, 2 * MiB);
    cr_assert_eq(buf[MiB], 0x44);
    free(buf);
    nbd_done(h);
}

Test(tx, write_zeroes_flags)
{
    const char *img = mkimage("a.qed", "4M", NULL);
    struct nbd_handle *h = nbd_stdio(img);
    uint8_t w[131072], r[131072];

    fill(w, sizeof(w), 7);
    cr_assert_eq(nbd_pwrite(h, w, sizeof(w), 0, 0), 0);
    /* Fast zero over allocated data needs data writes (the library writes
     * zeros into allocated clusters): ENOTSUP at once, nothing changed. */
    cr_assert_eq(nbd_zero(h, 65536, 0, LIBNBD_CMD_FLAG_FAST_ZERO), -1,
                 "fast zero of data succeeded");
    cr_assert_eq(nbd_get_errno(), ENOTSUP, "fast zero failed with %s", nbd_get_error());
    cr_assert_eq(nbd_zero(h, 1000, 70000, LIBNBD_CMD_FLAG_FAST_ZERO), -1);
    cr_assert_eq(nbd_get_errno(), ENOTSUP);
    cr_assert_eq(nbd_pread(h, r, sizeof(r), 0, 0), 0);
    cr_assert_eq(memcmp(w, r, sizeof(r)), 0, "a refused fast zero changed data");
    /* Fast zero of unallocated clusters needs no data write: succeeds. */
    cr_assert_eq(nbd_zero(h, 1 * MiB, 2 * MiB, LIBNBD_CMD_FLAG_FAST_ZERO), 0, "%s",
                 nbd_get_error());
    /* NO_HOLE: zeros, still allocated (data). */
    cr_assert_eq(nbd_zero(h, 65536, 0, LIBNBD_CMD_FLAG_NO_HOLE), 0, "%s", nbd_get_error());
    cr_assert_eq(nbd_pread(h, r, sizeof(r), 0, 0), 0);
    memset(w, 0, 65536);
    cr_assert_eq(memcmp(w, r, sizeof(r)), 0);
    /* Plain zero of an unaligned range inside data. */
    cr_assert_eq(nbd_zero(h, 1000, 70000, 0), 0, "%s", nbd_get_error());
    memset(w + 70000 - 0, 0, 1000);
    cr_assert_eq(nbd_pread(h, r, sizeof(r), 0, 0), 0);
    cr_assert_eq(memcmp(w, r, sizeof(r)), 0);
    nbd_done(h);
}

Test(tx, trim_and_cache)
{
    const char *img = mkimage("a.qed", "4M", NULL);
    struct nbd_handle *h = nbd_stdio(img);
    uint8_t w[131072], r[131072];

    fill(w, sizeof(w), 8);
    cr_assert_eq(nbd_pwrite(h, w, sizeof(w), 0, 0), 0);
    cr_assert_eq(nbd_cache(h, 131072, 0, 0), 0, "%s", nbd_get_error());
    cr_assert_eq(nbd_trim(h, 65536, 65536, 0), 0, "%s", nbd_get_error());
    /* The untrimmed part is intact; the trimmed part reads as zeros or old data. */
    cr_assert_eq(nbd_pread(h, r, sizeof(r), 0, 0), 0);
    cr_assert_eq(memcmp(w, r, 65536), 0);
    bool zeros = true, old = memcmp(w + 65536, r + 65536, 65536) == 0;
    for (size_t i = 65536; i < sizeof(r); i++)
        zeros &= r[i] == 0;
    cr_assert(zeros || old, "trimmed range reads as neither zeros nor old data");
    nbd_done(h);
}

/* ---- Many requests in flight on several connections ------------------------ */

#define IC_CONNS 4
#define IC_INFLIGHT 64
#define IC_OPS 1500
#define IC_REGION (8 * MiB)
#define IC_SECTOR 512u

struct ic_thread;

struct ic_op {
    struct ic_thread *t;
    uint64_t off;
    uint32_t len;
    bool write;
    uint8_t *buf;
    bool used;
};

struct ic_thread {
    pthread_t tid;
    int idx;
    struct nbd_handle *h;
    uint8_t *shadow;            /* this connection's region */
    uint8_t *busy;              /* per sector: 0 free, 'r' reads in flight count, 'w' write */
    uint16_t *readers;
    struct ic_op ops[IC_INFLIGHT];
    unsigned inflight, issued, done;
    unsigned mismatches, errors;
    unsigned seed;
};

static int ic_done(void *opaque, int *err)
{
    struct ic_op *op = opaque;
    struct ic_thread *t = op->t;
    uint64_t rel = op->off - (uint64_t)t->idx * IC_REGION;
    uint64_t s0 = rel / IC_SECTOR, s1 = (rel + op->len + IC_SECTOR - 1) / IC_SECTOR;

    if (*err)
        t->errors++;
    else if (!op->write && memcmp(op->buf, t->shadow + rel, op->len) != 0)
        t->mismatches++;
    for (uint64_t s = s0; s < s1; s++) {
        if (op->write)
            t->busy[s] = 0;
        else
            t->readers[s]--;
    }
    free(op->buf);
    op->used = false;
    t->inflight--;
    t->done++;
    return 1;
}

/* Issue one random request that overlaps no in-flight write (and a write
 * overlaps nothing in flight), so the shadow is exact. */
static bool ic_issue(struct ic_thread *t)
{
    struct ic_op *op = NULL;

    for (int i = 0; i < IC_INFLIGHT; i++)
        if (!t->ops[i].used) {
            op = &t->ops[i];
            break;
        }
    if (!op)
        return false;
    for (int attempt = 0; attempt < 8; attempt++) {
        bool write = rand_r(&t->seed) % 100 < 60;
        uint32_t len = (1 + rand_r(&t->seed) % 128) * IC_SECTOR;
        uint64_t rel = (uint64_t)(rand_r(&t->seed) % ((IC_REGION - len) / IC_SECTOR)) * IC_SECTOR;
        uint64_t s0 = rel / IC_SECTOR, s1 = (rel + len) / IC_SECTOR;
        bool ok = true;

        if (rand_r(&t->seed) % 4 == 0) {
            /* Some unaligned requests too: minimum block size is 1. */
            rel += rand_r(&t->seed) % 300;
            len -= rand_r(&t->seed) % 300;
            s0 = rel / IC_SECTOR;
            s1 = (rel + len + IC_SECTOR - 1) / IC_SECTOR;
        }
        for (uint64_t s = s0; s < s1 && ok; s++)
            ok = !t->busy[s] && (!write || !t->readers[s]);
        if (!ok)
            continue;
        op->t = t;
        op->off = (uint64_t)t->idx * IC_REGION + rel;
        op->len = len;
        op->write = write;
        op->used = true;
        op->buf = malloc(len);
        cr_assert_not_null(op->buf);
        for (uint64_t s = s0; s < s1; s++) {
            if (write)
                t->busy[s] = 1;
            else
                t->readers[s]++;
        }
        nbd_completion_callback cb = { .callback = ic_done, .user_data = op };
        int64_t r;
        if (write) {
            for (uint32_t i = 0; i < len; i++)
                t->shadow[rel + i] = (uint8_t)rand_r(&t->seed);
            memcpy(op->buf, t->shadow + rel, len);
            r = nbd_aio_pwrite(t->h, op->buf, len, op->off, cb,
                               rand_r(&t->seed) % 8 == 0 ? LIBNBD_CMD_FLAG_FUA : 0);
        } else {
            r = nbd_aio_pread(t->h, op->buf, len, op->off, cb, 0);
        }
        if (r < 0) {
            t->errors++;
            return false;
        }
        t->inflight++;
        t->issued++;
        return true;
    }
    return false;
}

static void *ic_run(void *arg)
{
    struct ic_thread *t = arg;
    unsigned max_seen = 0;

    while (t->done < IC_OPS && !t->errors) {
        while (t->issued < IC_OPS && t->inflight < IC_INFLIGHT && ic_issue(t))
            ;
        if (t->inflight > max_seen)
            max_seen = t->inflight;
        if (nbd_poll(t->h, IO_TIMEOUT_MS) <= 0) {
            t->errors++;
            break;
        }
    }
    if (max_seen < IC_INFLIGHT / 2)
        fprintf(stderr, "conn %d: only %u requests were in flight at once\n", t->idx, max_seen);
    return NULL;
}

Test(srv, integrity_many_in_flight_many_connections, .timeout = 240)
{
    const char *img = mkimage("a.qed", "32M", NULL);
    static struct ic_thread th[IC_CONNS];
    uint8_t *all = malloc(IC_CONNS * IC_REGION);
    struct nbd_handle *h;

    start_server(img, NULL);
    for (int i = 0; i < IC_CONNS; i++) {
        th[i].idx = i;
        th[i].seed = 1234u + (unsigned)i;
        th[i].h = nbd_unix("");
        th[i].shadow = calloc(1, IC_REGION);
        th[i].busy = calloc(1, IC_REGION / IC_SECTOR);
        th[i].readers = calloc(IC_REGION / IC_SECTOR, sizeof(uint16_t));
        cr_assert_eq(nbd_can_multi_conn(th[i].h), 1);
    }
    for (int i = 0; i < IC_CONNS; i++)
        cr_assert_eq(pthread_create(&th[i].tid, NULL, ic_run, &th[i]), 0);
    for (int i = 0; i < IC_CONNS; i++)
        pthread_join(th[i].tid, NULL);
    for (int i = 0; i < IC_CONNS; i++) {
        cr_assert_eq(th[i].errors, 0, "conn %d: %u errors (%s)", i, th[i].errors,
                     nbd_get_error());
        cr_assert_eq(th[i].mismatches, 0, "conn %d: %u reads did not match the shadow", i,
                     th[i].mismatches);
        cr_assert_eq(th[i].done, IC_OPS);
    }
    /* A flush on one connection covers the writes of all (CAN_MULTI_CONN). */
    cr_assert_eq(nbd_flush(th[0].h, 0), 0);
    for (int i = 0; i < IC_CONNS; i++) {
        cr_assert_eq(nbd_shutdown(th[i].h, 0), 0);
        nbd_done(th[i].h);
    }
    /* Read everything back on a fresh connection. */
    h = nbd_unix("");
    for (uint64_t off = 0; off < IC_CONNS * IC_REGION; off += 4 * MiB)
        cr_assert_eq(nbd_pread(h, all + off, 4 * MiB, off, 0), 0);
    for (int i = 0; i < IC_CONNS; i++)
        cr_assert_eq(memcmp(all + (size_t)i * IC_REGION, th[i].shadow, IC_REGION), 0,
                     "region %d differs after reconnect", i);
    nbd_done(h);
    cr_assert_eq(stop_server(), 0, "server did not exit 0 on SIGTERM");

    /* The image is clean for QEMU, and holds the same data. */
    char cmd[2 * PATH_MAX], raw[PATH_MAX];
    snprintf(cmd, sizeof(cmd), "qemu-img check -q '%s'", img);
    cr_assert_eq(system(cmd), 0, "qemu-img check failed");
    snprintf(raw, sizeof(raw), "%s/shadow.raw", tmpdir);
    FILE *f = fopen(raw, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < IC_CONNS; i++)
        cr_assert_eq(fwrite(th[i].shadow, 1, IC_REGION, f), IC_REGION);
    fclose(f);
    snprintf(cmd, sizeof(cmd), "qemu-img compare -q -f qed -F raw '%s' '%s'", img, raw);
    cr_assert_eq(system(cmd), 0, "qemu-img compare found a difference");
    free(all);
}

/* Point the L2 entry of guest cluster 0 of @img (written before) past the
 * end of the file: a corrupt entry the library must fail with EIO. */
static void corrupt_first_cluster(const char *img)
{
    int fd = open(img, O_RDWR);
    uint8_t h[64];
    uint64_t l1_off, l2_off, bad;
    uint32_t cluster;

    cr_assert(fd >= 0);
    cr_assert_eq(pread(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
    memcpy(&cluster, h + 4, 4);
    memcpy(&l1_off, h + 40, 8);
    cluster = le32toh(cluster);
    l1_off = le64toh(l1_off);
    cr_assert_eq(pread(fd, &l2_off, 8, (off_t)l1_off), 8);
    l2_off = le64toh(l2_off);
    cr_assert(l2_off != 0, "no L2 table for cluster 0");
    bad = htole64((uint64_t)cluster * 1000000);
    cr_assert_eq(pwrite(fd, &bad, 8, (off_t)l2_off), 8);
    close(fd);
}

Test(tx, io_error_is_eio_and_stream_stays_in_step)
{
    const char *img = mkimage("a.qed", "4M", NULL);
    uint8_t buf[4096];
    int fd;

    qemu_io_write(img, 0, 65536, 0x61);
    qemu_io_write(img, 65536, 65536, 0x62);
    corrupt_first_cluster(img);

    /* Simple replies: the error goes in the header, and no data follows. */
    fd = raw_spawn("-r", img, NULL);
    raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    cr_assert_eq(raw_go(fd, "", NULL, NULL), NBD_REP_ACK);
    raw_request(fd, 0, NBD_CMD_READ, 1, 0, sizeof(buf));
    cr_assert_eq(raw_simple_reply(fd, 1), NBD_EIO);
    raw_request(fd, 0, NBD_CMD_READ, 2, 65536, sizeof(buf));
    cr_assert_eq(raw_simple_reply(fd, 2), 0);
    cr_assert_eq(raw_read(fd, buf, sizeof(buf)), 0);
    cr_assert(all_bytes(buf, sizeof(buf), 0x62));
    close(fd);
    cr_assert_eq(reap_stdio(last_stdio), 0);

    /* Structured replies (libnbd): EIO too; other clusters still readable. */
    struct nbd_handle *h = nbd_stdio_cfg(false, true, "-s", "-r", img, NULL);
    cr_assert_eq(nbd_pread(h, buf, sizeof(buf), 0, 0), -1);
    cr_assert_eq(nbd_get_errno(), EIO, "%s", nbd_get_error());
    cr_assert_eq(nbd_pread(h, buf, sizeof(buf), 65536, 0), 0);
    cr_assert(all_bytes(buf, sizeof(buf), 0x62));
    nbd_done(h);
}

/* Resident memory of @pid in KiB, from /proc. */
static long rss_kib(pid_t pid)
{
    char path[64], line[256];
    long kib = -1;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

Test(tx, backpressure_bounds_memory_and_resumes)
{
    const char *img = mkimage("a.qed", "64M", NULL);
    enum { N = 300 };
    static uint8_t seen[N];
    uint8_t *buf = malloc(MiB);
    int fd;

    qemu_io_write(img, 0, 8 * MiB, 0x3c);
    fd = raw_tx(img, false, false);
    /* 300 MiB of replies asked for, none read yet.  One write: the server
     * stops reading, and many small writes could fill the socket's send
     * buffer with per-message overhead and block us. */
    static struct nbd_request reqs[N];
    for (uint64_t k = 0; k < N; k++)
        reqs[k] = (struct nbd_request){ htobe32(NBD_REQUEST_MAGIC), 0, htobe16(NBD_CMD_READ),
                                        htobe64(k), htobe64((k % 60) * MiB), htobe32(MiB) };
    raw_write(fd, reqs, sizeof(reqs));
    usleep(500000);
    long rss = rss_kib(last_stdio);
    cr_assert(rss > 0);
    cr_assert(rss < 200 * 1024, "server holds %ld KiB: it kept reading requests", rss);
    /* Now read everything: the server must resume and answer all of them. */
    for (int i = 0; i < N; i++) {
        struct nbd_simple_reply r;
        cr_assert_eq(raw_read(fd, &r, sizeof(r)), 0, "reply %d missing", i);
        cr_assert_eq(be32toh(r.magic), NBD_SIMPLE_REPLY_MAGIC);
        cr_assert_eq(be32toh(r.error), 0);
        uint64_t k = be64toh(r.cookie);
        cr_assert(k < N && !seen[k], "bad or repeated cookie %llu", (unsigned long long)k);
        seen[k] = 1;
        cr_assert_eq(raw_read(fd, buf, MiB), 0);
        uint8_t want = (k % 60) < 8 ? 0x3c : 0;
        cr_assert(buf[0] == want && buf[MiB - 1] == want && all_bytes(buf, MiB, want),
                  "data of cookie %llu", (unsigned long long)k);
    }
    raw_expect_read_works(fd);
    free(buf);
    close(fd);
}

/* ==== Server lifetime ========================================================= */

Test(srv, client_vanishes_mid_request)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    uint8_t half[65536] = { 0 };
    struct nbd_handle *h;
    char buf[4096];

    start_server(img, NULL);
    for (int i = 0; i < 5; i++) {
        int fd = raw_unix();
        raw_greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
        cr_assert_eq(raw_go(fd, "", NULL, NULL), NBD_REP_ACK);
        /* Several reads in flight, then a write cut in the middle of its payload. */
        for (int k = 0; k < 8; k++)
            raw_request(fd, 0, NBD_CMD_READ, (uint64_t)k, (uint64_t)k * MiB, 1 * MiB);
        raw_request(fd, 0, NBD_CMD_WRITE, 99, 0, 1 * MiB);
        raw_write(fd, half, sizeof(half));
        close(fd);
    }
    /* Another client is still served. */
    h = nbd_unix("");
    cr_assert_eq(nbd_pread(h, buf, sizeof(buf), 0, 0), 0);
    for (size_t i = 0; i < sizeof(buf); i++)
        cr_assert_eq(buf[i], 0, "a cut-off write reached the image");
    nbd_done(h);
    cr_assert_eq(stop_server(), 0);
}

Test(srv, disc_answers_in_flight_requests)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    int fd = raw_tx(img, false, false);
    uint8_t data[4096];

    memset(data, 0x5a, sizeof(data));
    raw_request(fd, 0, NBD_CMD_WRITE, 1, 8192, sizeof(data));
    raw_write(fd, data, sizeof(data));
    raw_request(fd, 0, NBD_CMD_DISC, 2, 0, 0);
    cr_assert_eq(raw_simple_reply(fd, 1), 0);
    cr_assert(raw_closed(fd));
    close(fd);
    int st = reap_stdio(last_stdio);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "stdio server status 0x%x", st);

    struct nbd_handle *h = nbd_stdio(img);
    uint8_t r[4096];
    cr_assert_eq(nbd_pread(h, r, sizeof(r), 8192, 0), 0);
    cr_assert_eq(memcmp(r, data, sizeof(r)), 0);
    nbd_done(h);
}

Test(srv, sigterm_with_clients_exits_clean)
{
    const char *img = mkimage("a.qed", "16M", NULL);
    struct nbd_handle *h;
    uint8_t w[65536];
    char cmd[2 * PATH_MAX];
    int st;

    start_server(img, NULL);
    h = nbd_unix("");
    fill(w, sizeof(w), 2);
    cr_assert_eq(nbd_pwrite(h, w, sizeof(w), 0, 0), 0);
    /* The image is marked dirty while served; after SIGTERM it must be clean. */
    kill(server_pid, SIGTERM);
    waitpid(server_pid, &st, 0);
    server_pid = -1;
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status 0x%x", st);
    nbd_done(h);
    cr_assert_neq(access(sock_path, F_OK), 0, "socket left behind");
    snprintf(cmd, sizeof(cmd), "qemu-img check -q '%s'", img);
    cr_assert_eq(system(cmd), 0);
    snprintf(cmd, sizeof(cmd),
             "qemu-io -f qed -c 'read -P 0 65536 65536' '%s' | grep -q 'read 65536'", img);
    cr_assert_eq(system(cmd), 0);
}

static int run_qednbd(const char *a1, const char *a2, const char *a3)
{
    char cmd[4 * PATH_MAX];

    snprintf(cmd, sizeof(cmd), "'%s' %s %s %s </dev/null >/dev/null 2>&1", qednbd, a1, a2 ? a2 : "",
             a3 ? a3 : "");
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(srv, bad_image_or_option_exits_1_without_socket)
{
    char bogus[PATH_MAX + 8], uopt[PATH_MAX + 8];
    const char *img = mkimage("a.qed", "16M", NULL);
    FILE *f;

    snprintf(bogus, sizeof(bogus), "%s/bogus.qed", tmpdir);
    f = fopen(bogus, "w");
    fputs("this is not a QED image, just some text that is long enough", f);
    fclose(f);
    snprintf(uopt, sizeof(uopt), "-u %s", sock_path);
    cr_assert_eq(run_qednbd(uopt, bogus, NULL), 1);
    cr_assert_neq(access(sock_path, F_OK), 0, "socket created for a bad image");
    cr_assert_eq(run_qednbd(uopt, "/nonexistent/x.qed", NULL), 1);
    cr_assert_eq(run_qednbd(uopt, "--no-such-option", img), 1);
    cr_assert_eq(run_qednbd(uopt, "--aio=bogus", img), 1);
    cr_assert_eq(run_qednbd(uopt, "--max-connections=0", img), 1);
    cr_assert_eq(run_qednbd("-p 99999", img, NULL), 1);
    cr_assert_eq(run_qednbd(uopt, "-e noequals", NULL), 1);
    cr_assert_eq(run_qednbd(uopt, img, img), 1);
    cr_assert_neq(access(sock_path, F_OK), 0, "socket created for a bad option");
    cr_assert_eq(run_qednbd("--help", NULL, NULL), 0);
    cr_assert_eq(run_qednbd("--version", NULL, NULL), 0);
}

Test(srv, two_exports_over_unix_socket)
{
    const char *a = mkimage("a.qed", "16M", NULL);
    const char *b = mkimage("b.qed", "8M", NULL);
    char ea[PATH_MAX + 8], eb[PATH_MAX + 8];
    struct nbd_handle *ha, *hb;
    uint8_t buf[512];

    snprintf(ea, sizeof(ea), "a=%s", a);
    snprintf(eb, sizeof(eb), "b=%s", b);
    start_server("-e", ea, "-e", eb, NULL);
    ha = nbd_unix("a");
    hb = nbd_unix("b");
    cr_assert_eq(nbd_get_size(ha), 16 * MiB);
    cr_assert_eq(nbd_get_size(hb), 8 * MiB);
    memset(buf, 'b', sizeof(buf));
    cr_assert_eq(nbd_pwrite(hb, buf, sizeof(buf), 0, 0), 0);
    cr_assert_eq(nbd_pread(ha, buf, sizeof(buf), 0, 0), 0);
    cr_assert_eq(buf[0], 0, "exports share data");
    nbd_done(ha);
    nbd_done(hb);
    cr_assert_eq(stop_server(), 0);
}
