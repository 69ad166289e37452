/*
 * main.c - qednbd: serve QED images over NBD from libev loops (one per
 * --threads; threads.c).  This
 * file holds the command line and the start-up order; the exports are in
 * exports.c, the service side (fork, pidfile, signals) in daemon.c, the
 * network in net/ and the NBD protocol in protocol/.
 *
 * Start-up order: parse every option, load the TLS credentials, open every
 * image (the library checks them and takes their locks), and only then open
 * the listening socket, so a bad option, a bad image or an image in use
 * exits 1 before any client could connect.
 *
 * The command line is parsed without modifying argv (ps shows it as given).
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <ev.h>

#include "conn.h"
#include "control.h"
#include "daemon.h"
#include "exports.h"
#include "listen.h"
#include "nbd-proto.h"
#include "qednbd.h"
#include "threads.h"
#include "tls.h"

struct server srv;

#define UNIX_PATH_MAX sizeof(((struct sockaddr_un *)0)->sun_path)

/* The options, as given (paths made absolute where the daemon needs it). */
static struct {
    const char *port;
    const char *bind;
    const char *unix_path;
    const char *export_name;
    bool read_only;
    bool force_share;       /* -U: no image lock (read-only exports only) */
    bool repair;            /* --repair: zero invalid entries of clean images at open */
    enum qed_aio_backend aio_kind;
    enum qed_cache_mode cache;  /* --cache */
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
    enum qed_reserve reserve;   /* --reserve: fallocate partly written new clusters */
    const char *control;        /* --control: the control socket's path */
    unsigned control_timeout;   /* --control-timeout: seconds a control client may idle */
    unsigned threads;           /* --threads; 0: threads_default() */
} opt = {
    .aio_kind = QED_AIO_AUTO,
    .log_target = -1,
    .lock_wait = 5,
    .control_timeout = CTL_DEFAULT_TIMEOUT,
};

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
            "      --aio=uring|threads    file I/O backend (default: uring, else threads);\n"
            "                             both serve every --cache mode\n"
            "      --cache=MODE           writeback (default: page cache, flushes honoured),\n"
            "                             none (O_DIRECT, flushes honoured; not on tmpfs),\n"
            "                             unsafe (page cache, FLUSH and FUA acknowledged\n"
            "                             without being done: NOTHING is durable until a\n"
            "                             clean shutdown; a crash can lose or corrupt data)\n"
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
            "      --threads=N            loop threads (default: the usable CPUs, at most 8);\n"
            "                             connections are spread over them, each image\n"
            "                             is run by one of them\n"
            "      --reserve=auto|on|off  reserve (fallocate) new clusters that are written\n"
            "                             in part, so that overwrites never fail with ENOSPC\n"
            "                             (default auto: on ext4 and XFS, not on tmpfs)\n"
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
            "      --control=PATH         control socket (mode 0600): statistics and dirty\n"
            "                             bitmaps at run time, one JSON object per line\n"
            "                             (see qednbd-ctl(1))\n"
            "      --control-timeout=S    drop control clients idle this long (default 60)\n"
            "Other:\n"
            "  -v, --verbose              log connections and options (-vv: every request)\n"
            "  -h, --help                 this help\n"
            "  -V, --version              print the version\n"
            "Signals: SIGINT/SIGTERM stop cleanly, SIGHUP reopens the log file, SIGUSR1 logs\n"
            "the statistics.  Exports are fixed at start-up: there is no runtime change.\n"
            "See qednbd(8).\n");
}

#define die srv_die

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

/* Long options without a short letter. */
enum {
    OPT_AIO = 256, OPT_CACHE, OPT_L2_CACHE, OPT_MAX_CONNS, OPT_HS_TIMEOUT, OPT_FORK, OPT_PIDFILE,
    OPT_LOG, OPT_LOG_FILE, OPT_TLS, OPT_TLS_CERTS, OPT_TLS_PSK, OPT_TLS_VERIFY,
    OPT_TLS_PRIORITY,
    OPT_REPAIR, OPT_MAX_MEMORY,
    OPT_BACKING_DIR = 400, OPT_NO_BACKING, OPT_LOCK_WAIT,
    OPT_RESERVE = 420, /* own range: fewer merge clashes */
    OPT_CONTROL = 460, OPT_CONTROL_TIMEOUT,
    OPT_THREADS = 440,
};

static const struct option longopts[] = {
    /* Where to listen */
    { "port", required_argument, NULL, 'p' },
    { "bind", required_argument, NULL, 'b' },
    { "unix", required_argument, NULL, 'u' },
    { "stdio", no_argument, NULL, 's' },
    /* Exports and images */
    { "export", required_argument, NULL, 'e' },
    { "export-name", required_argument, NULL, 'x' },
    { "read-only", no_argument, NULL, 'r' },
    { "force-share", no_argument, NULL, 'U' },
    { "repair", no_argument, NULL, OPT_REPAIR },
    { "description", required_argument, NULL, 'D' },
    { "aio", required_argument, NULL, OPT_AIO },
    { "cache", required_argument, NULL, OPT_CACHE },
    { "l2-cache", required_argument, NULL, OPT_L2_CACHE },
    { "backing-dir", required_argument, NULL, OPT_BACKING_DIR },
    { "no-backing", no_argument, NULL, OPT_NO_BACKING },
    { "lock-wait", required_argument, NULL, OPT_LOCK_WAIT },
    { "reserve", required_argument, NULL, OPT_RESERVE },
    { "threads", required_argument, NULL, OPT_THREADS },
    /* Limits */
    { "max-connections", required_argument, NULL, OPT_MAX_CONNS },
    { "max-memory", required_argument, NULL, OPT_MAX_MEMORY },
    { "handshake-timeout", required_argument, NULL, OPT_HS_TIMEOUT },
    /* TLS */
    { "tls", required_argument, NULL, OPT_TLS },
    { "tls-certificates", required_argument, NULL, OPT_TLS_CERTS },
    { "tls-psk", required_argument, NULL, OPT_TLS_PSK },
    { "tls-verify-peer", no_argument, NULL, OPT_TLS_VERIFY },
    { "tls-priority", required_argument, NULL, OPT_TLS_PRIORITY },
    /* Service */
    { "fork", no_argument, NULL, OPT_FORK },
    { "pidfile", required_argument, NULL, OPT_PIDFILE },
    { "log", required_argument, NULL, OPT_LOG },
    { "log-file", required_argument, NULL, OPT_LOG_FILE },
    { "control", required_argument, NULL, OPT_CONTROL },
    { "control-timeout", required_argument, NULL, OPT_CONTROL_TIMEOUT },
    /* Other */
    { "verbose", no_argument, NULL, 'v' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
};

/* The index of @arg in the NULL-terminated @names, or -1. */
static int parse_choice(const char *arg, const char *const *names)
{
    for (int i = 0; names[i]; i++)
        if (strcmp(arg, names[i]) == 0)
            return i;
    return -1;
}

/* -e NAME=IMAGE: the name is copied out, argv stays as given. */
static void opt_export(const char *arg)
{
    const char *eq = strchr(arg, '=');

    if (!eq)
        die("-e expects NAME=IMAGE, got '%s'", arg);
    exports_add(arg, (size_t)(eq - arg), eq + 1);
}

/* Options of listening and the exports.  Returns false if @ch is not one. */
static bool parse_serve_opt(int ch, const char *arg)
{
    switch (ch) {
    case 'p':
        parse_num(arg, "port", 0, 65535);
        opt.port = arg;
        break;
    case 'b': opt.bind = arg; break;
    case 'u':
        if (!*arg || strlen(arg) >= UNIX_PATH_MAX)
            die("Unix socket path '%s' is empty or too long", arg);
        opt.unix_path = arg;
        break;
    case 's': srv.stdio = true; break;
    case 'e': opt_export(arg); break;
    case 'x': opt.export_name = arg; break;
    case 'r': opt.read_only = true; break;
    case 'U': opt.force_share = true; break;
    case OPT_REPAIR: opt.repair = true; break;
    case 'D':
        if (strlen(arg) > NBD_MAX_STRING)
            die("description longer than %u bytes", NBD_MAX_STRING);
        srv.description = arg;
        break;
    default: return false;
    }
    return true;
}

/* Options of the images and the limits.  Returns false if @ch is not one. */
static bool parse_image_opt(int ch, const char *arg)
{
    struct stat st;

    switch (ch) {
    case OPT_AIO: {
        static const char *const names[] = { "uring", "threads", NULL };
        static const enum qed_aio_backend kinds[] = { QED_AIO_URING, QED_AIO_THREADS };
        int i = parse_choice(arg, names);
        if (i < 0)
            die("invalid --aio '%s' (expected uring or threads)", arg);
        opt.aio_kind = kinds[i];
        break;
    }
    case OPT_CACHE: {
        static const char *const names[] = { "writeback", "none", "unsafe", NULL };
        static const enum qed_cache_mode modes[] = { QED_CACHE_WRITEBACK, QED_CACHE_NONE,
                                                     QED_CACHE_UNSAFE };
        int i = parse_choice(arg, names);
        if (i < 0)
            die("invalid --cache '%s' (expected writeback, none or unsafe)", arg);
        opt.cache = modes[i];
        break;
    }
    case OPT_L2_CACHE: opt.l2_cache = (unsigned)parse_num(arg, "--l2-cache", 1, 1u << 20); break;
    case OPT_MAX_CONNS:
        srv.max_conns = (unsigned)parse_num(arg, "--max-connections", 1, 1u << 20);
        break;
    case OPT_MAX_MEMORY:
        if (qed_parse_size(arg, &srv.max_memory) < 0 || srv.max_memory < SRV_MAX_MEMORY_MIN)
            die("invalid --max-memory '%s' (expected a size of at least %lluM, "
                "like 512M or 2G)", arg, (unsigned long long)(SRV_MAX_MEMORY_MIN >> 20));
        break;
    case OPT_HS_TIMEOUT:
        srv.hs_timeout = (double)parse_num(arg, "--handshake-timeout", 1, 86400);
        break;
    case OPT_BACKING_DIR:
        if (stat(arg, &st) < 0)
            die("--backing-dir %s: %s", arg, strerror(errno));
        if (!S_ISDIR(st.st_mode))
            die("--backing-dir %s: not a directory", arg);
        opt.backing_dir = arg;
        break;
    case OPT_NO_BACKING: opt.no_backing = true; break;
    case OPT_THREADS:
        opt.threads = (unsigned)parse_num(arg, "--threads", 1, SRV_MAX_THREADS);
        break;
    case OPT_LOCK_WAIT: opt.lock_wait = (unsigned)parse_num(arg, "--lock-wait", 0, 3600); break;
    case OPT_RESERVE:
        if (strcmp(arg, "auto") == 0)
            opt.reserve = QED_RESERVE_AUTO;
        else if (strcmp(arg, "on") == 0)
            opt.reserve = QED_RESERVE_ON;
        else if (strcmp(arg, "off") == 0)
            opt.reserve = QED_RESERVE_OFF;
        else
            die("--reserve: expected auto, on or off, not '%s'", arg);
        break;
    default: return false;
    }
    return true;
}

/* TLS options.  Returns false if @ch is not one. */
static bool parse_tls_opt(int ch, const char *arg)
{
    switch (ch) {
    case OPT_TLS: {
        /* In the order of enum tls_mode. */
        static const char *const names[] = { "off", "on", "require", NULL };
        int i = parse_choice(arg, names);
        if (i < 0)
            die("invalid --tls '%s' (expected off, on or require)", arg);
        opt.tls.mode = (enum tls_mode)i;
        opt.tls_given = true;
        break;
    }
    case OPT_TLS_CERTS: opt.tls.cert_dir = arg; break;
    case OPT_TLS_PSK: opt.tls.psk_file = arg; break;
    case OPT_TLS_VERIFY: opt.tls.verify_peer = true; break;
    case OPT_TLS_PRIORITY: opt.tls.priority = arg; break;
    default: return false;
    }
    return true;
}

/* Service options (fork, pidfile, log) and the others.  Returns false if @ch is not one. */
static bool parse_service_opt(int ch, const char *arg)
{
    switch (ch) {
    case OPT_FORK: opt.fork = true; break;
    case OPT_PIDFILE:
        if (!*arg)
            die("--pidfile: empty file name");
        opt.pidfile = arg;
        break;
    case OPT_LOG: {
        /* In the order of enum srv_log_target. */
        static const char *const names[] = { "stderr", "syslog", NULL };
        opt.log_target = parse_choice(arg, names);
        if (opt.log_target < 0)
            die("invalid --log '%s' (expected stderr or syslog; --log-file=FILE for a file)",
                arg);
        break;
    }
    case OPT_LOG_FILE:
        if (!*arg)
            die("--log-file: empty file name");
        opt.log_file = arg;
        break;
    case OPT_CONTROL:
        if (!*arg)
            die("--control: empty path");
        opt.control = arg;
        break;
    case OPT_CONTROL_TIMEOUT:
        opt.control_timeout = (unsigned)parse_num(arg, "--control-timeout", 1, 86400);
        break;
    case 'v': srv.verbose++; break;
    case 'h': usage(stdout); exit(0);
    case 'V': printf("qednbd %s\n", PACKAGE_VERSION); exit(0);
    default: return false;
    }
    return true;
}

/* The operands: one IMAGE, or none with -e. */
static void check_operands(int argc, char **argv)
{
    if (optind < argc) {
        const char *name = opt.export_name ? opt.export_name : "";
        if (srv.nexports)
            die("give either IMAGE or -e NAME=IMAGE, not both");
        if (argc - optind > 1)
            die("too many arguments: one IMAGE (use -e NAME=IMAGE for several exports)");
        exports_add(name, strlen(name), argv[optind]);
    } else if (!srv.nexports) {
        usage(stderr);
        die("no image given");
    } else if (opt.export_name) {
        die("-x applies to the single-IMAGE form; use -e NAME=IMAGE");
    }
}

/* Options that contradict each other. */
static void check_combinations(void)
{
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
    if (srv.stdio && opt.threads > 1)
        die("--stdio serves one client: --threads=%u has nothing to spread", opt.threads);
}

/* TLS: credentials alone mean "require"; a mode without them is an error. */
static void check_tls(void)
{
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
}

/* The daemon runs in /: every path used after start-up must be absolute.
 * (Images are opened before, so their paths may stay relative.) */
static void make_paths_absolute(void)
{
    if (opt.pidfile)
        opt.pidfile = absolute(opt.pidfile);
    if (opt.log_file)
        opt.log_file = absolute(opt.log_file);
    if (opt.tls.psk_file)
        opt.tls.psk_file = absolute(opt.tls.psk_file);  /* GnuTLS rereads it per handshake */
    if (opt.tls.cert_dir)
        opt.tls.cert_dir = absolute(opt.tls.cert_dir);
    if (opt.control && opt.fork)
        opt.control = absolute(opt.control);
    if (opt.unix_path && opt.fork) {
        opt.unix_path = absolute(opt.unix_path);
        if (strlen(opt.unix_path) >= UNIX_PATH_MAX)
            die("Unix socket path '%s' is too long once made absolute (needed with --fork)",
                opt.unix_path);
    }
}

static void parse_args(int argc, char **argv)
{
    int ch;

    srv.max_conns = 100;
    srv.hs_timeout = 10;
    while ((ch = getopt_long(argc, argv, "p:b:u:se:x:rUD:vhV", longopts, NULL)) != -1) {
        if (!parse_serve_opt(ch, optarg) && !parse_image_opt(ch, optarg) &&
            !parse_tls_opt(ch, optarg) && !parse_service_opt(ch, optarg)) {
            usage(stderr);
            exit(1);
        }
    }
    check_operands(argc, argv);
    check_combinations();
    check_tls();
    make_paths_absolute();
}

/* ---- main ------------------------------------------------------------------- */

/* Where the log goes, from --log and --log-file (syslog by default with --fork). */
static void open_log(void)
{
    char err[1024];
    int r = 0;

    if (opt.log_file)
        r = srv_log_open(SRV_LOG_TO_FILE, opt.log_file, err, sizeof(err));
    else if (opt.log_target == SRV_LOG_TO_SYSLOG || (opt.log_target < 0 && opt.fork))
        r = srv_log_open(SRV_LOG_TO_SYSLOG, NULL, err, sizeof(err));
    if (r < 0)
        die("%s", err);
}

/* The event loops (one per thread), the signal handlers, the library's
 * log and the I/O engines. */
static void start_loop(void)
{
    unsigned n = srv.stdio ? 1 : opt.threads ? opt.threads : threads_default();
    int r;

    qed_set_log(lib_log, NULL, srv.verbose >= 2 ? QED_LOG_DEBUG
                               : srv.verbose ? QED_LOG_INFO : QED_LOG_WARN);
    /* Why a fixed mmap threshold with several threads: glibc raises it (up
     * to 32 MiB) after a large buffer is freed, and then keeps up to twice
     * that free in each thread's arena, so N arenas held tens of MiB past
     * the README's memory bound.  Fixed, buffers over 4 MiB (never pooled:
     * req-mem.c) go back to the kernel when freed, and arenas trim at
     * glibc's default 128 KiB. */
    if (n > 1)
        mallopt(M_MMAP_THRESHOLD, 4 << 20);
    r = threads_init(n, opt.aio_kind);
    if (r == -ENOMEM)
        die("cannot create the event loops");
    if (r < 0)
        die("cannot set up the %s I/O backend: %s",
            opt.aio_kind == QED_AIO_URING ? "io_uring" :
            opt.aio_kind == QED_AIO_THREADS ? "thread-pool" : "file", strerror(-r));
    srv.start_time = ev_time();
    /* Signals first: a SIGHUP or SIGUSR1 sent as soon as the socket answers
     * must find its handler, not the default action (which kills). */
    daemon_signals_start();
    srv_log(SRV_LOG_INFO, "I/O backend: %s, %u loop thread%s",
            qed_aio_backend_name(srv_self->aio), n, n == 1 ? "" : "s");
}

/* Start serving: the one stdio client, or the listening sockets.  Returns
 * 0, or -1 when the stdio client could not be set up. */
static int start_serving(const char *exports_desc, int activation_n)
{
    char msg[64];

    if (srv.stdio) {
        /* Nothing but the protocol may go to stdout: every log goes to stderr. */
        net_set_nonblock(0);
        net_set_nonblock(1);
        srv_log(SRV_LOG_INFO, "serving one client on stdin/stdout: %s", exports_desc);
        if (!conn_new(0, 1, false, "stdio"))
            return -1;
    } else {
        if (opt.unix_path)
            listen_unix(opt.unix_path);
        else if (opt.port || opt.bind || !listen_activation(activation_n))
            listen_tcp(opt.bind, opt.port);
        srv_log(SRV_LOG_NOTICE, "listening on %s%s, serving %s", listen_describe(),
                tls_mode() == TLS_REQUIRE ? " (TLS required)" :
                tls_mode() == TLS_ON ? " (TLS optional)" : "", exports_desc);
        daemon_ready();
    }
    /* With --fork the main pid is ours, not the one systemd started. */
    snprintf(msg, sizeof(msg), "READY=1\nMAINPID=%ld", (long)getpid());
    daemon_notify(msg);
    return 0;
}

int main(int argc, char **argv)
{
    char exports_desc[2048];
    char err[1024];
    int activation_n = 0;
    int status = 0;
    struct qed_open_opts oo = { 0 };

    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    /* A write past RLIMIT_FSIZE must fail with EFBIG (reported as ENOSPC),
     * not kill the server. */
    signal(SIGXFSZ, SIG_IGN);
    open_log();
    /* Both read our own pid and environment: before --fork changes the pid. */
    if (!srv.stdio && !opt.unix_path && !opt.port && !opt.bind)
        activation_n = daemon_check_activation();
    daemon_take_notify_socket();
    if (opt.fork)
        daemon_fork();

    /* The pidfile first: its lock keeps a second server with the same
     * pidfile from touching anything (a Unix socket path, say). */
    daemon_write_pidfile(opt.pidfile);
    atexit(daemon_remove_pidfile);
    if (tls_setup(&opt.tls, err, sizeof(err)) < 0)
        die("TLS: %s", err);
    start_loop();

    oo.read_only = opt.read_only;
    oo.no_lock = opt.force_share;
    oo.l2_cache_tables = opt.l2_cache;
    oo.repair_corrupt = opt.repair;
    oo.backing_dir = opt.backing_dir;
    oo.no_backing = opt.no_backing;
    oo.lock_wait_ms = opt.lock_wait * 1000u;
    oo.cache = opt.cache;
    oo.reserve = opt.reserve;
    exports_open(&oo);
    exports_describe(exports_desc, sizeof(exports_desc));
    /* Before the NBD socket: ready (and --fork's parent gone) means both answer. */
    if (opt.control)
        control_listen(opt.control, opt.control_timeout);
    if (start_serving(exports_desc, activation_n) < 0) {
        control_stop();
        threads_stop(&status);
        qed_aio_free(srv_self->aio);
        daemon_remove_pidfile();
        return 1;
    }
    threads_start();

    ev_run(srv_self->loop, 0);

    /* Leaving: stop our own watchers before qed_close runs the loop again. */
    daemon_signals_stop();
    stop_listening();
    /* Before the threads close their images: no bitmap change while closing. */
    control_stop();
    while (srv_self->conns)
        conn_abort(srv_self->conns);
    /* The other threads close their images and leave; then thread 0's. */
    threads_stop(&status);
    qed_aio_free(srv_self->aio);
    exports_free();
    tls_cleanup();
    daemon_remove_pidfile();
    srv_log(SRV_LOG_INFO, "exit %d", status);
    return status;
}
