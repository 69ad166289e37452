/*
 * main.c - qednbd: serve QED images over NBD from one libev loop.
 *
 * Start-up order: parse every option, load the TLS credentials, open every
 * image (the library checks them and takes their locks), and only then open
 * the listening socket, so a bad option, a bad image or an image in use
 * exits 1 before any client could connect.
 *
 * Daemon mode (--fork).  Why fork first, before the loop, the I/O engine
 * and the images: a fork keeps only the calling thread (the I/O thread pool
 * would be lost) and the epoll set and io_uring are not meant to be shared
 * with a parent.  So the parent forks at once and waits on a pipe; the
 * child does the whole start-up, and once it listens (pidfile written) it
 * detaches from the terminal and writes one byte to the pipe.  The parent
 * exits 0 on that byte, and 1 if the pipe closes without it (the child
 * failed, and said why on the terminal it still had).  The OFD image locks
 * are taken by the child, so they live as long as the server.
 *
 * Shutdown: SIGINT/SIGTERM stop accepting, let the requests in flight finish
 * and their replies go out (at most SHUTDOWN_GRACE seconds), then leave the
 * loop; qed_close then flushes each image and clears NEED_CHECK.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stddef.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <ev.h>

#include "nbd-proto.h"
#include "qednbd.h"
#include "tls.h"

#define SHUTDOWN_GRACE 10.0     /* seconds for in-flight requests at shutdown */
#define MAX_LISTEN 8
#define ACCEPT_BUDGET 16        /* clients accepted per listen event */
#define ACCEPT_PAUSE 0.5        /* seconds without accepting when out of descriptors */

struct server srv;

static struct {
    const char *port;
    const char *bind;
    const char *unix_path;
    const char *export_name;
    bool read_only;
    bool force_share;       /* -U: no image lock (read-only exports only) */
    bool repair;            /* --repair: zero invalid entries of clean images at open */
    enum qed_aio_backend aio_kind;
    unsigned l2_cache;
    bool fork;
    const char *pidfile;
    int log_target;         /* -1: not given */
    const char *log_file;
    bool tls_given;
    struct tls_config tls;
    const char *backing_dir;    /* --backing-dir: confine backing files */
    bool no_backing;            /* --no-backing: refuse images with one */
    unsigned lock_wait;         /* --lock-wait: seconds to wait for a held image lock */
} opt = {
    .aio_kind = QED_AIO_AUTO,
    .log_target = -1,
    .lock_wait = 5,
};

static int listen_fds[MAX_LISTEN];
static ev_io listen_w[MAX_LISTEN];
static int nlisten;
static bool unix_created;
static ev_signal sigint_w, sigterm_w, sighup_w, sigusr1_w;
static int activation_n;        /* sockets passed by socket activation, checked before forking */
static int ready_fd = -1;       /* --fork: the pipe to the waiting parent */
static int pidfile_fd = -1;
static char notify_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static ev_timer grace_w;
static char listen_desc[512];
static ev_timer accept_pause_w;     /* runs while the listeners are paused */
static bool accept_paused;          /* listeners stopped by accept_pause() */
static double accept_starved_since; /* start of the episode of failed accepts, or 0 */

static void lib_log(enum qed_log_level level, const char *msg, void *opaque)
{
    (void)opaque;
    /* qed_set_log already filters by our verbosity: map to a level that prints. */
    switch (level) {
    case QED_LOG_ERROR: srv_log(SRV_LOG_ERROR, "libqed error: %s", msg); break;
    case QED_LOG_WARN: srv_log(SRV_LOG_WARN, "libqed: %s", msg); break;
    case QED_LOG_INFO: srv_log(SRV_LOG_INFO, "libqed: %s", msg); break;
    default: srv_log(SRV_LOG_DEBUG, "libqed: %s", msg); break;
    }
}

struct export *srv_find_export(const char *name, size_t len)
{
    if (len == 0 && srv.nexports)
        return &srv.exports[0];
    for (size_t i = 0; i < srv.nexports; i++)
        if (strlen(srv.exports[i].name) == len && memcmp(srv.exports[i].name, name, len) == 0)
            return &srv.exports[i];
    return NULL;
}

/* ---- Command line ------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: qednbd [OPTIONS] IMAGE                      serve IMAGE as the default export\n"
            "       qednbd [OPTIONS] -e NAME=IMAGE [-e ...]     serve several named exports\n"
            "  -p, --port PORT            TCP port, default 10809\n"
            "  -b, --bind ADDR            address to listen on (IPv4 or IPv6), default 127.0.0.1;\n"
            "                             0.0.0.0 or :: for every interface\n"
            "  -u, --unix PATH            listen on a Unix socket instead of TCP\n"
            "  -s, --stdio                serve a single client on stdin/stdout, then exit\n"
            "  -e, --export NAME=IMAGE    add a named export (repeatable)\n"
            "  -x, --export-name NAME     name of the export in the single-IMAGE form\n"
            "  -r, --read-only            every export read-only\n"
            "  -U, --force-share          with -r: take no image lock, so an image that QEMU\n"
            "                             has open for writing can be served (reads may then\n"
            "                             see data change underneath)\n"
            "      --repair               zero the invalid table entries of an image marked\n"
            "                             clean before serving it (those clusters then read\n"
            "                             as zeros); without it such an image is refused\n"
            "  -D, --description TEXT     description of every export (NBD_INFO_DESCRIPTION)\n"
            "      --aio=uring|threads    file I/O backend (default: uring, else threads)\n"
            "      --l2-cache=N           L2 tables cached per image (default: 64 and at\n"
            "                             most 32 MiB of them, at least one table)\n"
            "      --max-connections=N    default 100; extra clients are refused politely\n"
            "      --max-memory=SIZE      memory the images' tables and all connections\n"
            "                             may hold (default 1G for the connections plus\n"
            "                             the tables; at least 65M); past it clients wait\n"
            "      --handshake-timeout=S  default 10; clients slower to negotiate (TLS\n"
            "                             included) are dropped\n"
            "      --lock-wait=SECONDS    an image locked by another process: wait this long\n"
            "                             for the lock before failing (default 5; 0: at once)\n"
            "Backing files (default: followed anywhere, as QEMU does; see SECURITY in qednbd(8)):\n"
            "      --backing-dir=DIR      allow backing files only under DIR, symlinks and\n"
            "                             \"..\" resolved, along the whole chain\n"
            "      --no-backing           refuse images that have a backing file\n"
            "TLS:\n"
            "      --tls=off|on|require   off: no TLS (default without credentials); on: TLS\n"
            "                             optional; require: TLS before anything else (the\n"
            "                             default when credentials are given)\n"
            "      --tls-certificates=DIR X.509: DIR/server-cert.pem, DIR/server-key.pem and\n"
            "                             DIR/ca-cert.pem (when present; needed to verify clients)\n"
            "      --tls-verify-peer      clients must present a certificate signed by the CA\n"
            "      --tls-psk=FILE         pre-shared keys, in psktool's IDENTITY:HEXKEY format\n"
            "      --tls-priority=STRING  GnuTLS priority string (default NORMAL, plus PSK\n"
            "                             key exchanges with --tls-psk)\n"
            "Service:\n"
            "      --fork                 run in the background once the socket listens\n"
            "      --pidfile=FILE         write the server's pid to FILE (locked while running)\n"
            "      --log=stderr|syslog    where messages go (default: stderr; syslog with --fork)\n"
            "      --log-file=FILE        append messages to FILE; SIGHUP reopens it\n"
            "Other:\n"
            "  -v, --verbose              log connections and options (-vv: every request)\n"
            "  -h, --help                 this help\n"
            "  -V, --version              print the version\n"
            "Signals: SIGINT/SIGTERM stop cleanly, SIGHUP reopens the log file, SIGUSR1 logs\n"
            "the statistics.  Exports are fixed at start-up: there is no runtime change.\n"
            "See qednbd(8).\n");
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    srv_vdie(fmt, ap);
    va_end(ap);
    exit(1);
}

/* @path made absolute (a daemon changes directory to /).  Never freed. */
static const char *absolute(const char *path)
{
    char cwd[4096];
    char *abs;

    if (path[0] == '/')
        return path;
    if (!getcwd(cwd, sizeof(cwd)))
        die("getcwd: %s", strerror(errno));
    if (asprintf(&abs, "%s/%s", cwd, path) < 0)
        die("out of memory");
    return abs;
}

static unsigned long parse_num(const char *s, const char *what, unsigned long min,
                               unsigned long max)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || end == s || *end || *s == '-' || v < min || v > max)
        die("invalid %s '%s' (expected a number in [%lu, %lu])", what, s, min, max);
    return v;
}

static void add_export(const char *name, const char *path)
{
    struct export *e;

    if (strlen(name) > NBD_MAX_STRING)
        die("export name longer than %u bytes", NBD_MAX_STRING);
    if (!*path)
        die("empty image path for export '%s'", name);
    for (size_t i = 0; i < srv.nexports; i++)
        if (strcmp(srv.exports[i].name, name) == 0)
            die("export name '%s' given twice", name);
    e = realloc(srv.exports, (srv.nexports + 1) * sizeof(*e));
    if (!e)
        die("out of memory");
    srv.exports = e;
    e = &srv.exports[srv.nexports++];
    memset(e, 0, sizeof(*e));
    e->name = strdup(name);
    e->path = strdup(path);
    if (!e->name || !e->path)
        die("out of memory");
}

enum {
    OPT_AIO = 256, OPT_L2_CACHE, OPT_MAX_CONNS, OPT_HS_TIMEOUT, OPT_FORK, OPT_PIDFILE,
    OPT_LOG, OPT_LOG_FILE, OPT_TLS, OPT_TLS_CERTS, OPT_TLS_PSK, OPT_TLS_VERIFY,
    OPT_TLS_PRIORITY,
    OPT_REPAIR, OPT_MAX_MEMORY,
    OPT_BACKING_DIR = 400, OPT_NO_BACKING, OPT_LOCK_WAIT, /* own range: fewer merge clashes */
};

static void parse_args(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "port", required_argument, NULL, 'p' },
        { "bind", required_argument, NULL, 'b' },
        { "unix", required_argument, NULL, 'u' },
        { "stdio", no_argument, NULL, 's' },
        { "export", required_argument, NULL, 'e' },
        { "export-name", required_argument, NULL, 'x' },
        { "read-only", no_argument, NULL, 'r' },
        { "force-share", no_argument, NULL, 'U' },
        { "repair", no_argument, NULL, OPT_REPAIR },
        { "fork", no_argument, NULL, OPT_FORK },
        { "pidfile", required_argument, NULL, OPT_PIDFILE },
        { "log", required_argument, NULL, OPT_LOG },
        { "log-file", required_argument, NULL, OPT_LOG_FILE },
        { "tls", required_argument, NULL, OPT_TLS },
        { "tls-certificates", required_argument, NULL, OPT_TLS_CERTS },
        { "tls-psk", required_argument, NULL, OPT_TLS_PSK },
        { "tls-verify-peer", no_argument, NULL, OPT_TLS_VERIFY },
        { "tls-priority", required_argument, NULL, OPT_TLS_PRIORITY },
        { "description", required_argument, NULL, 'D' },
        { "aio", required_argument, NULL, OPT_AIO },
        { "l2-cache", required_argument, NULL, OPT_L2_CACHE },
        { "max-connections", required_argument, NULL, OPT_MAX_CONNS },
        { "max-memory", required_argument, NULL, OPT_MAX_MEMORY },
        { "handshake-timeout", required_argument, NULL, OPT_HS_TIMEOUT },
        { "backing-dir", required_argument, NULL, OPT_BACKING_DIR },
        { "no-backing", no_argument, NULL, OPT_NO_BACKING },
        { "lock-wait", required_argument, NULL, OPT_LOCK_WAIT },
        { "verbose", no_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    int ch;
    char *s;

    srv.max_conns = 100;
    srv.hs_timeout = 10;
    while ((ch = getopt_long(argc, argv, "p:b:u:se:x:rUD:vhV", longopts, NULL)) != -1) {
        switch (ch) {
        case 'p':
            parse_num(optarg, "port", 0, 65535);
            opt.port = optarg;
            break;
        case 'b':
            opt.bind = optarg;
            break;
        case 'u':
            if (!*optarg || strlen(optarg) >= sizeof(((struct sockaddr_un *)0)->sun_path))
                die("Unix socket path '%s' is empty or too long", optarg);
            opt.unix_path = optarg;
            break;
        case 's':
            srv.stdio = true;
            break;
        case 'e':
            s = strchr(optarg, '=');
            if (!s)
                die("-e expects NAME=IMAGE, got '%s'", optarg);
            *s = '\0';
            add_export(optarg, s + 1);
            break;
        case 'x':
            opt.export_name = optarg;
            break;
        case 'r':
            opt.read_only = true;
            break;
        case 'U':
            opt.force_share = true;
            break;
        case OPT_REPAIR:
            opt.repair = true;
            break;
        case OPT_FORK:
            opt.fork = true;
            break;
        case OPT_PIDFILE:
            if (!*optarg)
                die("--pidfile: empty file name");
            opt.pidfile = optarg;
            break;
        case OPT_LOG:
            if (strcmp(optarg, "stderr") == 0)
                opt.log_target = SRV_LOG_TO_STDERR;
            else if (strcmp(optarg, "syslog") == 0)
                opt.log_target = SRV_LOG_TO_SYSLOG;
            else
                die("invalid --log '%s' (expected stderr or syslog; --log-file=FILE for a file)",
                    optarg);
            break;
        case OPT_LOG_FILE:
            if (!*optarg)
                die("--log-file: empty file name");
            opt.log_file = optarg;
            break;
        case OPT_TLS:
            if (strcmp(optarg, "off") == 0)
                opt.tls.mode = TLS_OFF;
            else if (strcmp(optarg, "on") == 0)
                opt.tls.mode = TLS_ON;
            else if (strcmp(optarg, "require") == 0)
                opt.tls.mode = TLS_REQUIRE;
            else
                die("invalid --tls '%s' (expected off, on or require)", optarg);
            opt.tls_given = true;
            break;
        case OPT_TLS_CERTS:
            opt.tls.cert_dir = optarg;
            break;
        case OPT_TLS_PSK:
            opt.tls.psk_file = optarg;
            break;
        case OPT_TLS_VERIFY:
            opt.tls.verify_peer = true;
            break;
        case OPT_TLS_PRIORITY:
            opt.tls.priority = optarg;
            break;
        case 'D':
            if (strlen(optarg) > NBD_MAX_STRING)
                die("description longer than %u bytes", NBD_MAX_STRING);
            srv.description = optarg;
            break;
        case OPT_AIO:
            if (strcmp(optarg, "uring") == 0)
                opt.aio_kind = QED_AIO_URING;
            else if (strcmp(optarg, "threads") == 0)
                opt.aio_kind = QED_AIO_THREADS;
            else
                die("invalid --aio '%s' (expected uring or threads)", optarg);
            break;
        case OPT_L2_CACHE:
            opt.l2_cache = (unsigned)parse_num(optarg, "--l2-cache", 1, 1u << 20);
            break;
        case OPT_MAX_CONNS:
            srv.max_conns = (unsigned)parse_num(optarg, "--max-connections", 1, 1u << 20);
            break;
        case OPT_MAX_MEMORY:
            if (qed_parse_size(optarg, &srv.max_memory) < 0 ||
                srv.max_memory < SRV_MAX_MEMORY_MIN)
                die("invalid --max-memory '%s' (expected a size of at least %lluM, "
                    "like 512M or 2G)", optarg,
                    (unsigned long long)(SRV_MAX_MEMORY_MIN >> 20));
            break;
        case OPT_HS_TIMEOUT:
            srv.hs_timeout = (double)parse_num(optarg, "--handshake-timeout", 1, 86400);
            break;
        case OPT_BACKING_DIR: {
            struct stat st;
            if (stat(optarg, &st) < 0)
                die("--backing-dir %s: %s", optarg, strerror(errno));
            if (!S_ISDIR(st.st_mode))
                die("--backing-dir %s: not a directory", optarg);
            opt.backing_dir = optarg;
            break;
        }
        case OPT_NO_BACKING:
            opt.no_backing = true;
            break;
        case OPT_LOCK_WAIT:
            opt.lock_wait = (unsigned)parse_num(optarg, "--lock-wait", 0, 3600);
            break;
        case 'v':
            srv.verbose++;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case 'V':
            printf("qednbd %s\n", PACKAGE_VERSION);
            exit(0);
        default:
            usage(stderr);
            exit(1);
        }
    }

    if (optind < argc) {
        if (srv.nexports)
            die("give either IMAGE or -e NAME=IMAGE, not both");
        if (argc - optind > 1)
            die("too many arguments: one IMAGE (use -e NAME=IMAGE for several exports)");
        add_export(opt.export_name ? opt.export_name : "", argv[optind]);
    } else if (!srv.nexports) {
        usage(stderr);
        die("no image given");
    } else if (opt.export_name) {
        die("-x applies to the single-IMAGE form; use -e NAME=IMAGE");
    }
    if (srv.stdio && (opt.unix_path || opt.port || opt.bind))
        die("--stdio cannot be combined with --unix, --port or --bind");
    if (opt.unix_path && (opt.port || opt.bind))
        die("--unix cannot be combined with --port or --bind");
    if (opt.force_share && !opt.read_only)
        die("--force-share needs --read-only: a writer must hold the image lock");
    if (opt.repair && opt.read_only)
        die("--repair contradicts --read-only: a read-only export never writes the image");
    if (opt.fork && srv.stdio)
        die("--fork cannot be combined with --stdio");
    if (opt.log_file && opt.log_target >= 0)
        die("give either --log or --log-file, not both");

    /* TLS: credentials alone mean "require"; a mode without them is an error. */
    if (opt.tls.cert_dir && opt.tls.psk_file)
        die("give either --tls-certificates or --tls-psk, not both");
    if (!opt.tls_given && (opt.tls.cert_dir || opt.tls.psk_file))
        opt.tls.mode = TLS_REQUIRE;
    if (opt.tls.mode == TLS_OFF && (opt.tls.cert_dir || opt.tls.psk_file || opt.tls.verify_peer))
        die("--tls=off contradicts --tls-certificates, --tls-psk and --tls-verify-peer");
    if (opt.tls.mode != TLS_OFF && !opt.tls.cert_dir && !opt.tls.psk_file)
        die("--tls=%s needs --tls-certificates=DIR or --tls-psk=FILE",
            opt.tls.mode == TLS_ON ? "on" : "require");
    if (opt.tls.verify_peer && !opt.tls.cert_dir)
        die("--tls-verify-peer needs --tls-certificates=DIR (it checks X.509 certificates)");

    /* The daemon runs in /: every path used after start-up must be absolute.
     * (Images are opened before, so their paths may stay relative.) */
    if (opt.pidfile)
        opt.pidfile = absolute(opt.pidfile);
    if (opt.log_file)
        opt.log_file = absolute(opt.log_file);
    if (opt.tls.psk_file)
        opt.tls.psk_file = absolute(opt.tls.psk_file);  /* GnuTLS rereads it per handshake */
    if (opt.tls.cert_dir)
        opt.tls.cert_dir = absolute(opt.tls.cert_dir);
    if (opt.unix_path && opt.fork) {
        opt.unix_path = absolute(opt.unix_path);
        if (strlen(opt.unix_path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
            die("Unix socket path '%s' is too long once made absolute (needed with --fork)",
                opt.unix_path);
    }
}

/* ---- Images ---------------------------------------------------------------- */

/*
 * The images' tables share --max-memory with the clients: their most (each
 * L1 table and the bound of each L2 cache) is fixed at open, so it is
 * reserved here and the clients get the rest.  Why reserve rather than
 * count what the caches hold now: a cache grows without asking the server,
 * so only its bound makes the sum a bound.  A geometry whose tables leave
 * less than one connection's cap for the clients is refused at start-up
 * (64 MiB clusters with table size 16 need 2 GiB), with what it needs.
 * Without --max-memory the default is 1 GiB for the clients plus the tables.
 */
static void reserve_table_memory(void)
{
    uint64_t cap;

    /* Without --max-memory the clients keep the default for themselves and
     * the tables come on top: serving many images needs no option. */
    if (!srv.max_memory)
        srv.max_memory = SRV_MAX_MEMORY_DEFAULT + srv.mem_tables;
    cap = srv.max_memory;
    if (srv.mem_tables > cap || cap - srv.mem_tables < SRV_CONN_MAX_MEMORY)
        die("--max-memory=%lluM is too small for these images: their tables (L1 tables and "
            "L2 caches) need %lluM, and clients need at least %lluM more.  Raise --max-memory "
            "to at least %lluM%s", (unsigned long long)(cap >> 20),
            (unsigned long long)((srv.mem_tables + (1u << 20) - 1) >> 20),
            (unsigned long long)(SRV_CONN_MAX_MEMORY >> 20),
            (unsigned long long)((srv.mem_tables + SRV_CONN_MAX_MEMORY + (1u << 20) - 1) >> 20),
            opt.l2_cache ? " or lower --l2-cache" : "");
}

static void open_images(void)
{
    for (size_t i = 0; i < srv.nexports; i++) {
        struct export *e = &srv.exports[i];
        struct qed_open_opts oo = {
            .read_only = opt.read_only,
            .no_lock = opt.force_share,
            .l2_cache_tables = opt.l2_cache,
            .repair_corrupt = opt.repair,
            .backing_dir = opt.backing_dir,
            .no_backing = opt.no_backing,
            .lock_wait_ms = opt.lock_wait * 1000u,
        };
        struct qed_info info;
        char err[512] = "";
        int r;

        for (size_t j = 0; j < i; j++)
            if (strcmp(srv.exports[j].path, e->path) == 0)
                die("image '%s' is given for two exports ('%s' and '%s')", e->path,
                    srv.exports[j].name, e->name);
        r = qed_open(srv.aio, e->path, &oo, &e->img, err, sizeof(err));
        if (r == -EBUSY)
            die("cannot serve '%s': it is in use (%s).  Stop the other user (QEMU, qemu-img, "
                "qemu-io or another qednbd) first%s", e->path, err[0] ? err : strerror(-r),
                opt.read_only ? ", or add --force-share to serve it read-only without a lock "
                                "(reads may then see the data change)"
                              : "; if it only reads the image, --read-only can share it");
        if (r == -EUCLEAN)
            die("cannot serve '%s' read-write: %s.  Serve it with --read-only, or with --repair "
                "to zero the entries at start-up", e->path, err);
        if (r < 0)
            die("cannot open '%s': %s", e->path, err[0] ? err : strerror(-r));
        qed_get_info(e->img, &info);
        e->alloc_at_open = info.file_size;
        e->size = qed_size(e->img);
        e->read_only = qed_is_read_only(e->img);
        e->pref_block = qed_cluster_size(e->img);
        if (e->pref_block > SRV_MAX_PREFERRED)
            e->pref_block = SRV_MAX_PREFERRED;
        if (e->pref_block < 512)
            e->pref_block = 512;
        srv.mem_tables += qed_table_memory_max(e->img);
    }
    reserve_table_memory();
}

static void close_images(int *status)
{
    for (size_t i = 0; i < srv.nexports; i++) {
        struct export *e = &srv.exports[i];
        if (!e->img)
            continue;
        /* Why here, after the loop: qed_close runs the loop itself to finish
         * what is in flight, then flushes and clears NEED_CHECK. */
        int r = qed_close(e->img);
        e->img = NULL;
        if (r < 0) {
            srv_log(SRV_LOG_ERROR, "closing '%s': %s", e->path, strerror(-r));
            *status = 1;
        }
    }
}

/* ---- Listening ------------------------------------------------------------ */

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        die("fcntl(O_NONBLOCK): %s", strerror(errno));
}

static void peer_name(const struct sockaddr_storage *ss, socklen_t len, char *buf, size_t n)
{
    char host[INET6_ADDRSTRLEN + 1], port[16];

    if (ss->ss_family == AF_UNIX) {
        snprintf(buf, n, "unix socket");
        return;
    }
    if (getnameinfo((const struct sockaddr *)ss, len, host, sizeof(host), port, sizeof(port),
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(buf, n, "?");
        return;
    }
    snprintf(buf, n, ss->ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
}

/* End a pause of accept_pause(): start the listeners' watchers again.
 * (Nothing to do when not paused; stop_listening ends a pause for good.) */
static void accept_resume(void)
{
    if (!accept_paused)
        return;
    accept_paused = false;
    ev_timer_stop(srv.loop, &accept_pause_w);
    for (int i = 0; i < nlisten; i++)
        ev_io_start(srv.loop, &listen_w[i]);
}

static void on_accept_pause_end(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    accept_resume();
}

/*
 * accept4 failed with @err, which leaves the client in the backlog (out of
 * descriptors or kernel memory).  Why stop the listeners: the socket stays
 * readable, so the loop would call accept4 again at once, burn a core and
 * log each failure.  Like nginx and nbdkit, stop accepting for ACCEPT_PAUSE
 * seconds (or until a connection closes and frees a descriptor: see
 * srv_conn_gone), and log once per episode, not per attempt: the episode
 * ends at the next accept4 that succeeds.
 */
static void accept_pause(int err)
{
    struct rlimit rl = { 0, 0 };

    if (accept_starved_since == 0) {
        accept_starved_since = ev_now(srv.loop);
        getrlimit(RLIMIT_NOFILE, &rl);
        srv_log(SRV_LOG_ERROR,
                "accept on %s: %s; not accepting new connections until a connection closes "
                "(retrying every %.1f s; %u clients connected, descriptor limit %llu: raise it "
                "with ulimit -n or LimitNOFILE=, or lower --max-connections)",
                listen_desc, strerror(err), ACCEPT_PAUSE, srv.nconns + srv.nrefused,
                (unsigned long long)rl.rlim_cur);
    }
    for (int i = 0; i < nlisten; i++)
        ev_io_stop(srv.loop, &listen_w[i]);
    accept_paused = true;
    ev_timer_init(&accept_pause_w, on_accept_pause_end, ACCEPT_PAUSE, 0.);
    ev_timer_start(srv.loop, &accept_pause_w);
}

/* An accept4 worked (or found the backlog empty): a pause episode is over. */
static void accept_episode_end(void)
{
    if (accept_starved_since == 0)
        return;
    srv_log(SRV_LOG_NOTICE, "accepting connections again after %.1f s",
            ev_now(srv.loop) - accept_starved_since);
    accept_starved_since = 0;
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    for (int i = 0; i < ACCEPT_BUDGET; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        char peer[128];
        int fd = accept4(w->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                accept_pause(errno);
            else if (errno == EAGAIN || errno == EWOULDBLOCK)
                accept_episode_end();   /* nobody left waiting */
            else if (errno != EINTR && errno != ECONNABORTED)
                srv_log(SRV_LOG_ERROR, "accept: %s", strerror(errno));
            return;
        }
        accept_episode_end();
        peer_name(&ss, sl, peer, sizeof(peer));
        if (ss.ss_family != AF_UNIX) {
            int one = 1;
            /* The spec asks both ends to disable Nagle. */
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        if (srv.nconns >= srv.max_conns) {
            srv.conns_refused++;
            /* Refuse politely (see handshake.c), but do not let refused
             * clients pile up either: past a second allowance, just close. */
            if (srv.nrefused >= srv.max_conns) {
                srv_log(SRV_LOG_INFO, "connection from %s dropped: over the limit", peer);
                close(fd);
                continue;
            }
            conn_new(fd, fd, true, peer);
        } else {
            conn_new(fd, fd, false, peer);
        }
    }
}

static void add_listener(int fd)
{
    if (nlisten == MAX_LISTEN)
        die("too many listening sockets");
    listen_fds[nlisten] = fd;
    ev_io_init(&listen_w[nlisten], on_accept, fd, EV_READ);
    ev_io_start(srv.loop, &listen_w[nlisten]);
    nlisten++;
}

/* Is @sa a loopback address (or not a network address at all)? */
static bool is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return true;
}

/* The rule: a network-facing socket without TLS deserves a warning. */
static void warn_if_exposed(const struct sockaddr *sa, const char *name)
{
    if (is_loopback(sa) || tls_mode() == TLS_REQUIRE)
        return;
    if (tls_mode() == TLS_OFF)
        srv_log(SRV_LOG_WARN,
                "listening on %s, a non-loopback address, without TLS: anyone who can reach "
                "it can use the exports, and the data travels in clear (use --tls=require with "
                "--tls-certificates or --tls-psk)", name);
    else
        srv_log(SRV_LOG_WARN,
                "listening on %s, a non-loopback address, with --tls=on: clients may still "
                "connect without TLS (use --tls=require)", name);
}

static void listen_unix(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct stat st;
    int fd;

    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", opt.unix_path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    if (lstat(opt.unix_path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            die("'%s' exists and is not a socket", opt.unix_path);
        /* Someone still answering there is a live server, not a leftover:
         * never pull its socket from under it. */
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            die("another server is listening on '%s'", opt.unix_path);
        unlink(opt.unix_path);  /* a stale socket from an earlier run */
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        die("bind '%s': %s", opt.unix_path, strerror(errno));
    unix_created = true;
    if (listen(fd, 128) < 0)
        die("listen '%s': %s", opt.unix_path, strerror(errno));
    set_nonblock(fd);
    add_listener(fd);
    snprintf(listen_desc, sizeof(listen_desc), "unix:%s", opt.unix_path);
}

static void listen_tcp(void)
{
    const char *port = opt.port ? opt.port : "10809";
    char host[256];
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV,
    };
    struct addrinfo *res;
    int r;

    /* Accept "[::1]" as well as "::1". */
    snprintf(host, sizeof(host), "%s", opt.bind ? opt.bind : "127.0.0.1");
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = '\0';
    }
    r = getaddrinfo(host, port, &hints, &res);
    if (r != 0)
        die("invalid bind address '%s' or port '%s': %s", host, port, gai_strerror(r));
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        int one = 1;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        char name[160];

        if (fd < 0)
            die("socket: %s", strerror(errno));
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
            die("bind %s port %s: %s", host, port, strerror(errno));
        if (listen(fd, 128) < 0)
            die("listen: %s", strerror(errno));
        set_nonblock(fd);
        add_listener(fd);
        /* Report the real port (useful with -p 0). */
        getsockname(fd, (struct sockaddr *)&ss, &sl);
        peer_name(&ss, sl, name, sizeof(name));
        warn_if_exposed((struct sockaddr *)&ss, name);
        snprintf(listen_desc + strlen(listen_desc), sizeof(listen_desc) - strlen(listen_desc),
                 "%s%s", listen_desc[0] ? " " : "", name);
        break;  /* a numeric host gives one address */
    }
    freeaddrinfo(res);
}

/*
 * Socket activation (systemd's protocol, also used by nbdinfo/nbdcopy
 * "[ CMD ]"): when LISTEN_PID is our pid, the LISTEN_FDS sockets from fd 3 on
 * are already listening.  Checked before --fork (the child has another pid);
 * sets activation_n.
 */
static void check_activation(void)
{
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    char *end;
    long n;

    if (!pid || !fds || strtol(pid, &end, 10) != (long)getpid() || *end)
        return;
    n = strtol(fds, &end, 10);
    if (*end || n < 1 || n > MAX_LISTEN)
        die("invalid LISTEN_FDS '%s'", fds);
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    for (int fd = 3; fd < 3 + n; fd++) {
        int listening = 0, type = 0;
        socklen_t l1 = sizeof(listening), l2 = sizeof(type);

        /* Refuse anything but a listening stream socket: serving on some
         * other descriptor would hang every client. */
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &l1) < 0 ||
            getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l2) < 0 || !listening ||
            type != SOCK_STREAM)
            die("fd %d passed by socket activation (LISTEN_FDS=%ld) is not a listening "
                "stream socket", fd, n);
        fcntl(fd, F_SETFD, FD_CLOEXEC);     /* now, so that no child of ours inherits them */
    }
    activation_n = (int)n;
}

/* Take the activated sockets (check_activation found activation_n of them). */
static bool listen_activation(void)
{
    if (!activation_n)
        return false;
    for (int fd = 3; fd < 3 + activation_n; fd++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        char name[160];

        set_nonblock(fd);
        add_listener(fd);
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
            peer_name(&ss, sl, name, sizeof(name));
            warn_if_exposed((struct sockaddr *)&ss, name);
        }
    }
    snprintf(listen_desc, sizeof(listen_desc), "%d socket(s) passed by socket activation",
             activation_n);
    return true;
}

static void stop_listening(void)
{
    ev_timer_stop(srv.loop, &accept_pause_w);
    accept_paused = false;
    for (int i = 0; i < nlisten; i++) {
        ev_io_stop(srv.loop, &listen_w[i]);
        close(listen_fds[i]);
    }
    nlisten = 0;
    if (unix_created) {
        unlink(opt.unix_path);
        unix_created = false;
    }
}

/* ---- Service: fork, pidfile, sd_notify ------------------------------------------- */

/* --fork: the parent waits here until the child serves, and never returns. */
static void daemon_fork(void)
{
    int p[2], st;
    pid_t pid;
    ssize_t r;
    char b;

    if (pipe2(p, O_CLOEXEC) < 0)
        die("pipe: %s", strerror(errno));
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        close(p[0]);
        ready_fd = p[1];
        /* A session of its own: no terminal, no SIGHUP from the shell. */
        if (setsid() < 0)
            die("setsid: %s", strerror(errno));
        return;
    }
    close(p[1]);
    do
        r = read(p[0], &b, 1);
    while (r < 0 && errno == EINTR);
    if (r == 1)
        _exit(0);
    /* The child exited before it served; it said why on stderr. */
    if (waitpid(pid, &st, 0) == pid && WIFSIGNALED(st))
        fprintf(stderr, "qednbd: the server (pid %ld) was killed by signal %d while starting\n",
                (long)pid, WTERMSIG(st));
    else
        fprintf(stderr, "qednbd: the server did not start\n");
    _exit(1);
}

/* --fork: start-up is over; detach and let the parent go. */
static void daemon_ready(void)
{
    if (ready_fd < 0)
        return;
    if (chdir("/") < 0)
        srv_log(SRV_LOG_WARN, "chdir /: %s", strerror(errno));
    srv_log_detach_stderr();
    /* Why the byte comes last: the parent's exit tells scripts and systemd
     * (Type=forking) that the server serves; everything must be ready. */
    if (write(ready_fd, "1", 1) != 1)
        srv_log(SRV_LOG_WARN, "telling the parent we are ready: %s", strerror(errno));
    close(ready_fd);
    ready_fd = -1;
}

/*
 * --pidfile: the file is locked (flock) for as long as we run, so a second
 * server given the same pidfile refuses to start instead of overwriting it.
 */
static void write_pidfile(void)
{
    char buf[32], old[32] = "";
    int fd, n;

    if (!opt.pidfile)
        return;
    fd = open(opt.pidfile, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY, 0644);
    if (fd < 0)
        die("--pidfile %s: %s", opt.pidfile, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        ssize_t r = pread(fd, old, sizeof(old) - 1, 0);
        old[r > 0 ? r : 0] = '\0';
        old[strcspn(old, "\n")] = '\0';
        if (e == EWOULDBLOCK)
            die("--pidfile %s is held by another running server (pid %s)", opt.pidfile,
                old[0] ? old : "?");
        die("--pidfile %s: lock: %s", opt.pidfile, strerror(e));
    }
    n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)n, 0) != n)
        die("--pidfile %s: write: %s", opt.pidfile, strerror(errno));
    pidfile_fd = fd;
}

static void remove_pidfile(void)
{
    if (pidfile_fd < 0)
        return;
    /* Unlink while still holding the lock: a new server cannot have taken it. */
    unlink(opt.pidfile);
    close(pidfile_fd);
    pidfile_fd = -1;
}

/* systemd's readiness protocol (Type=notify): one datagram to $NOTIFY_SOCKET. */
static void notify(const char *msg)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    size_t len = strlen(notify_path);
    int fd;

    if (!len)
        return;
    memcpy(sa.sun_path, notify_path, len);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0';     /* abstract namespace */
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa,
               (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0)
        srv_log(SRV_LOG_WARN, "NOTIFY_SOCKET %s: %s", notify_path, strerror(errno));
    close(fd);
}

static void take_notify_socket(void)
{
    const char *p = getenv("NOTIFY_SOCKET");

    if (p && (p[0] == '/' || p[0] == '@') && strlen(p) < sizeof(notify_path))
        snprintf(notify_path, sizeof(notify_path), "%s", p);
    unsetenv("NOTIFY_SOCKET");
}

/* ---- Shutdown ---------------------------------------------------------------- */

void srv_conn_gone(void)
{
    /* Why resume now: a closed connection freed a descriptor, and the
     * clients waiting in the backlog need not wait for the pause to end. */
    accept_resume();
    if ((srv.stdio || srv.shutting_down) && !srv.conns)
        ev_break(srv.loop, EVBREAK_ALL);
}

static void on_grace(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    srv_log(SRV_LOG_ERROR, "requests still in flight after %.0f s: closing the connections",
            SHUTDOWN_GRACE);
    while (srv.conns)
        conn_abort(srv.conns);
    ev_break(srv.loop, EVBREAK_ALL);
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    struct conn *c, *next;

    (void)revents;
    if (srv.shutting_down) {
        srv_log(SRV_LOG_ERROR, "second signal: closing the connections now");
        on_grace(loop, &grace_w, 0);
        return;
    }
    srv_log(SRV_LOG_NOTICE, "signal %d: shutting down", w->signum);
    srv.shutting_down = true;
    notify("STOPPING=1");
    stop_listening();
    for (c = conn_next(NULL); c; c = next) {
        next = conn_next(c);
        conn_shutdown(c);
    }
    if (!srv.conns) {
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    ev_timer_start(loop, &grace_w);
}

/* SIGHUP: reopen the log.  Exports are not reloaded: there is no runtime change. */
static void on_sighup(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    srv_log(SRV_LOG_NOTICE, "SIGHUP: reopening the log (exports are fixed at start-up; "
            "restart qednbd to change them)");
    srv_log_reopen();
}

static void on_sigusr1(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    stats_print();
}

/* ---- main ------------------------------------------------------------------- */

static void describe_exports(char *buf, size_t n)
{
    size_t used = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < srv.nexports && used < n; i++) {
        const struct export *e = &srv.exports[i];
        used += (size_t)snprintf(buf + used, n - used, "%s\"%s\" = %s (%llu bytes, %s)",
                                 i ? ", " : "", e->name, e->path, (unsigned long long)e->size,
                                 e->read_only ? "read-only" : "read-write");
    }
}

int main(int argc, char **argv)
{
    char exports_desc[2048];
    int status = 0;
    int r;

    char err[1024];

    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    /* A write past RLIMIT_FSIZE must fail with EFBIG (reported as ENOSPC),
     * not kill the server. */
    signal(SIGXFSZ, SIG_IGN);

    if (opt.log_file)
        r = srv_log_open(SRV_LOG_TO_FILE, opt.log_file, err, sizeof(err));
    else if (opt.log_target == SRV_LOG_TO_SYSLOG || (opt.log_target < 0 && opt.fork))
        r = srv_log_open(SRV_LOG_TO_SYSLOG, NULL, err, sizeof(err));
    else
        r = 0;
    if (r < 0)
        die("%s", err);
    /* Both read our own pid and environment: before --fork changes the pid. */
    if (!srv.stdio && !opt.unix_path && !opt.port && !opt.bind)
        check_activation();
    take_notify_socket();
    if (opt.fork)
        daemon_fork();

    /* The pidfile first: its lock keeps a second server with the same
     * pidfile from touching anything (a Unix socket path, say). */
    write_pidfile();
    atexit(remove_pidfile);

    r = tls_setup(&opt.tls, err, sizeof(err));
    if (r < 0)
        die("TLS: %s", err);

    srv.loop = ev_default_loop(EVFLAG_AUTO);
    if (!srv.loop)
        die("cannot create the event loop");
    srv.start_time = ev_time();
    ev_timer_init(&grace_w, on_grace, SHUTDOWN_GRACE, 0.);
    /* Signals first: a SIGHUP or SIGUSR1 sent as soon as the socket answers
     * must find its handler, not the default action (which kills). */
    ev_signal_init(&sigint_w, on_signal, SIGINT);
    ev_signal_start(srv.loop, &sigint_w);
    ev_signal_init(&sigterm_w, on_signal, SIGTERM);
    ev_signal_start(srv.loop, &sigterm_w);
    ev_signal_init(&sighup_w, on_sighup, SIGHUP);
    ev_signal_start(srv.loop, &sighup_w);
    ev_signal_init(&sigusr1_w, on_sigusr1, SIGUSR1);
    ev_signal_start(srv.loop, &sigusr1_w);
    qed_set_log(lib_log, NULL, srv.verbose >= 2 ? QED_LOG_DEBUG
                               : srv.verbose ? QED_LOG_INFO : QED_LOG_WARN);
    r = qed_aio_new(srv.loop, opt.aio_kind, &srv.aio);
    if (r < 0)
        die("cannot set up the %s I/O backend: %s",
            opt.aio_kind == QED_AIO_URING ? "io_uring" :
            opt.aio_kind == QED_AIO_THREADS ? "thread-pool" : "file", strerror(-r));
    srv_log(SRV_LOG_INFO, "I/O backend: %s", qed_aio_backend_name(srv.aio));

    open_images();
    describe_exports(exports_desc, sizeof(exports_desc));

    if (srv.stdio) {
        /* Nothing but the protocol may go to stdout: every log goes to stderr. */
        set_nonblock(0);
        set_nonblock(1);
        srv_log(SRV_LOG_INFO, "serving one client on stdin/stdout: %s", exports_desc);
        if (!conn_new(0, 1, false, "stdio")) {
            close_images(&status);
            qed_aio_free(srv.aio);
            remove_pidfile();
            return 1;
        }
    } else {
        if (opt.unix_path)
            listen_unix();
        else if (opt.port || opt.bind || !listen_activation())
            listen_tcp();
        srv_log(SRV_LOG_NOTICE, "listening on %s%s, serving %s", listen_desc,
                tls_mode() == TLS_REQUIRE ? " (TLS required)" :
                tls_mode() == TLS_ON ? " (TLS optional)" : "", exports_desc);
        daemon_ready();
    }
    {
        /* With --fork the main pid is ours, not the one systemd started. */
        char msg[64];
        snprintf(msg, sizeof(msg), "READY=1\nMAINPID=%ld", (long)getpid());
        notify(msg);
    }

    ev_run(srv.loop, 0);

    /* Leaving: stop our own watchers before qed_close runs the loop again. */
    ev_signal_stop(srv.loop, &sigint_w);
    ev_signal_stop(srv.loop, &sigterm_w);
    ev_signal_stop(srv.loop, &sighup_w);
    ev_signal_stop(srv.loop, &sigusr1_w);
    ev_timer_stop(srv.loop, &grace_w);
    /* Stopping the watchers restored the default action (terminate): a
     * second Ctrl-C during the final flush would kill us before the images
     * are closed and NEED_CHECK cleared.  Ignore them until we are done. */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    stop_listening();
    while (srv.conns)
        conn_abort(srv.conns);
    close_images(&status);
    qed_aio_free(srv.aio);
    for (size_t i = 0; i < srv.nexports; i++) {
        free(srv.exports[i].name);
        free(srv.exports[i].path);
    }
    free(srv.exports);
    tls_cleanup();
    remove_pidfile();
    srv_log(SRV_LOG_INFO, "exit %d", status);
    return status;
}
