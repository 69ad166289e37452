/*
 * tls.c - GnuTLS credentials and non-blocking server sessions.
 *
 * Credentials are loaded once at start-up, before any client can connect:
 *   X.509 (--tls-certificates=DIR): DIR/server-cert.pem and DIR/server-key.pem
 *     (required), DIR/ca-cert.pem (required with --tls-verify-peer, loaded
 *     when present), DIR/ca-crl.pem (loaded when present) -- the layout
 *     qemu-nbd and nbdkit read;
 *   PSK (--tls-psk=FILE): the "identity:hexkey" lines psktool writes.
 *
 * Sessions move bytes through our own pull/push functions (read/writev on
 * the connection's descriptors) rather than GnuTLS's default send/recv, so
 * that --stdio pipes work as well as sockets, and every error number is
 * handed back to GnuTLS explicitly.  The descriptors are non-blocking and
 * the session is created with GNUTLS_NONBLOCK: nothing here ever waits.
 */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "tls.h"

/* Priority strings: GnuTLS's defaults, plus the PSK key exchanges (which
 * NORMAL leaves out) when serving pre-shared keys.  TLS 1.2 and 1.3 are in
 * NORMAL; older versions are not, as the NBD spec asks. */
#define PRIORITY_X509 "NORMAL"
#define PRIORITY_PSK "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK"

static struct {
    enum tls_mode mode;
    bool verify_peer;
    gnutls_certificate_credentials_t x509;
    gnutls_psk_server_credentials_t psk;
    gnutls_priority_t prio;
} g;

struct tls_session {
    gnutls_session_t s;
    int rfd, wfd;
    int last;               /* last GnuTLS error */
    char errbuf[256];
};

static int set_err(char *err, size_t errlen, int ret, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int set_err(char *err, size_t errlen, int ret, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return ret;
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static int load_x509(const struct tls_config *cfg, char *err, size_t errlen)
{
    char ca[4096], crl[4096], cert[4096], key[4096];
    int r;

    if ((size_t)snprintf(ca, sizeof(ca), "%s/ca-cert.pem", cfg->cert_dir) >= sizeof(ca) ||
        (size_t)snprintf(crl, sizeof(crl), "%s/ca-crl.pem", cfg->cert_dir) >= sizeof(crl) ||
        (size_t)snprintf(cert, sizeof(cert), "%s/server-cert.pem", cfg->cert_dir) >= sizeof(cert) ||
        (size_t)snprintf(key, sizeof(key), "%s/server-key.pem", cfg->cert_dir) >= sizeof(key))
        return set_err(err, errlen, -ENAMETOOLONG, "--tls-certificates: path too long");
    if (!file_exists(cert) || !file_exists(key))
        return set_err(err, errlen, -ENOENT,
                       "--tls-certificates=%s: %s and %s are both needed", cfg->cert_dir,
                       "server-cert.pem", "server-key.pem");
    if (cfg->verify_peer && !file_exists(ca))
        return set_err(err, errlen, -ENOENT,
                       "--tls-verify-peer needs %s, the CA that signs client certificates", ca);

    r = gnutls_certificate_allocate_credentials(&g.x509);
    if (r < 0)
        return set_err(err, errlen, -ENOMEM, "GnuTLS: %s", gnutls_strerror(r));
    if (file_exists(ca)) {
        r = gnutls_certificate_set_x509_trust_file(g.x509, ca, GNUTLS_X509_FMT_PEM);
        if (r < 0)
            return set_err(err, errlen, -EINVAL, "%s: %s", ca, gnutls_strerror(r));
        if (r == 0)
            return set_err(err, errlen, -EINVAL, "%s: no certificate in the file", ca);
    }
    if (file_exists(crl)) {
        r = gnutls_certificate_set_x509_crl_file(g.x509, crl, GNUTLS_X509_FMT_PEM);
        if (r < 0)
            return set_err(err, errlen, -EINVAL, "%s: %s", crl, gnutls_strerror(r));
    }
    r = gnutls_certificate_set_x509_key_file(g.x509, cert, key, GNUTLS_X509_FMT_PEM);
    if (r < 0)
        return set_err(err, errlen, -EINVAL, "%s / %s: %s", cert, key, gnutls_strerror(r));
    /* Only used by DHE key exchanges, which NORMAL may pick with TLS 1.2. */
    r = gnutls_certificate_set_known_dh_params(g.x509, GNUTLS_SEC_PARAM_MEDIUM);
    if (r < 0)
        return set_err(err, errlen, -EINVAL, "GnuTLS DH parameters: %s", gnutls_strerror(r));
    return 0;
}

static int load_psk(const struct tls_config *cfg, char *err, size_t errlen)
{
    FILE *f;
    char line[1024];
    int r, n = 0;

    /* GnuTLS reads the file at each handshake; check it once here so that a
     * typo is an error at start-up, not a failed handshake later. */
    f = fopen(cfg->psk_file, "re");
    if (!f)
        return set_err(err, errlen, -errno, "--tls-psk=%s: %s", cfg->psk_file, strerror(errno));
    while (fgets(line, sizeof(line), f)) {
        char *colon = strchr(line, ':');
        if (line[0] == '\n' || line[0] == '#')
            continue;
        if (!colon || colon == line || colon[1] == '\n' || colon[1] == '\0') {
            fclose(f);
            return set_err(err, errlen, -EINVAL,
                           "--tls-psk=%s: line %d is not IDENTITY:HEXKEY (psktool's format)",
                           cfg->psk_file, n + 1);
        }
        n++;
    }
    fclose(f);
    if (n == 0)
        return set_err(err, errlen, -EINVAL, "--tls-psk=%s: no key in the file", cfg->psk_file);

    r = gnutls_psk_allocate_server_credentials(&g.psk);
    if (r < 0)
        return set_err(err, errlen, -ENOMEM, "GnuTLS: %s", gnutls_strerror(r));
    r = gnutls_psk_set_server_credentials_file(g.psk, cfg->psk_file);
    if (r < 0)
        return set_err(err, errlen, -EINVAL, "%s: %s", cfg->psk_file, gnutls_strerror(r));
    r = gnutls_psk_set_server_known_dh_params(g.psk, GNUTLS_SEC_PARAM_MEDIUM);
    if (r < 0)
        return set_err(err, errlen, -EINVAL, "GnuTLS DH parameters: %s", gnutls_strerror(r));
    return 0;
}

int tls_setup(const struct tls_config *cfg, char *err, size_t errlen)
{
    const char *prio, *errpos = NULL;
    int r;

    if (cfg->mode == TLS_OFF)
        return 0;
    if (!!cfg->cert_dir == !!cfg->psk_file)
        return set_err(err, errlen, -EINVAL,
                       "--tls=%s needs exactly one of --tls-certificates=DIR and --tls-psk=FILE",
                       cfg->mode == TLS_ON ? "on" : "require");
    if (cfg->verify_peer && !cfg->cert_dir)
        return set_err(err, errlen, -EINVAL, "--tls-verify-peer needs --tls-certificates");
    r = cfg->cert_dir ? load_x509(cfg, err, errlen) : load_psk(cfg, err, errlen);
    if (r < 0) {
        tls_cleanup();
        return r;
    }
    prio = cfg->priority ? cfg->priority : cfg->psk_file ? PRIORITY_PSK : PRIORITY_X509;
    r = gnutls_priority_init(&g.prio, prio, &errpos);
    if (r < 0) {
        set_err(err, errlen, -EINVAL, "TLS priority string '%s': %s%s%s", prio,
                gnutls_strerror(r), errpos ? " at " : "", errpos ? errpos : "");
        tls_cleanup();
        return -EINVAL;
    }
    g.verify_peer = cfg->verify_peer;
    g.mode = cfg->mode;
    return 0;
}

enum tls_mode tls_mode(void)
{
    return g.mode;
}

void tls_cleanup(void)
{
    if (g.x509)
        gnutls_certificate_free_credentials(g.x509);
    if (g.psk)
        gnutls_psk_free_server_credentials(g.psk);
    if (g.prio)
        gnutls_priority_deinit(g.prio);
    memset(&g, 0, sizeof(g));
}

/* ---- Transport: our descriptors, never blocking ----------------------------- */

static ssize_t pull(gnutls_transport_ptr_t p, void *buf, size_t len)
{
    struct tls_session *t = p;
    ssize_t r = read(t->rfd, buf, len);

    if (r < 0)
        gnutls_transport_set_errno(t->s, errno);
    return r;
}

static ssize_t vec_push(gnutls_transport_ptr_t p, const giovec_t *iov, int iovcnt)
{
    struct tls_session *t = p;
    /* giovec_t has struct iovec's layout (GnuTLS defines it that way). */
    ssize_t r = writev(t->wfd, (const struct iovec *)iov, iovcnt);

    if (r < 0)
        gnutls_transport_set_errno(t->s, errno);
    return r;
}

static int pull_timeout(gnutls_transport_ptr_t p, unsigned int ms)
{
    struct tls_session *t = p;
    struct pollfd pfd = { .fd = t->rfd, .events = POLLIN };
    int r;

    /* GnuTLS asks "is there data within ms?".  The loop does the waiting:
     * answer for now, whatever ms says. */
    (void)ms;
    r = poll(&pfd, 1, 0);

    if (r < 0)
        gnutls_transport_set_errno(t->s, errno);
    return r;
}

_Static_assert(sizeof(giovec_t) == sizeof(struct iovec), "giovec_t is struct iovec");

int tls_session_new(int rfd, int wfd, struct tls_session **out, char *err, size_t errlen)
{
    struct tls_session *t;
    int r;

    if (g.mode == TLS_OFF)
        return set_err(err, errlen, -EINVAL, "TLS is not configured");
    t = calloc(1, sizeof(*t));
    if (!t)
        return set_err(err, errlen, -ENOMEM, "out of memory");
    t->rfd = rfd;
    t->wfd = wfd;
    r = gnutls_init(&t->s, GNUTLS_SERVER | GNUTLS_NONBLOCK);
    if (r < 0) {
        free(t);
        return set_err(err, errlen, -ENOMEM, "gnutls_init: %s", gnutls_strerror(r));
    }
    r = gnutls_priority_set(t->s, g.prio);
    if (r >= 0) {
        if (g.x509)
            r = gnutls_credentials_set(t->s, GNUTLS_CRD_CERTIFICATE, g.x509);
        else
            r = gnutls_credentials_set(t->s, GNUTLS_CRD_PSK, g.psk);
    }
    if (r < 0) {
        set_err(err, errlen, -EINVAL, "GnuTLS session set-up: %s", gnutls_strerror(r));
        gnutls_deinit(t->s);
        free(t);
        return -EINVAL;
    }
    if (g.x509 && g.verify_peer) {
        /* The handshake itself fails unless the client presents a
         * certificate that verifies against ca-cert.pem (no host name to
         * match: NULL). */
        gnutls_certificate_server_set_request(t->s, GNUTLS_CERT_REQUIRE);
        gnutls_session_set_verify_cert(t->s, NULL, 0);
    }
    /* The connection's handshake timer bounds the whole negotiation, TLS
     * included; GnuTLS's own timeout would need a blocking clock. */
    gnutls_handshake_set_timeout(t->s, 0);
    gnutls_transport_set_ptr(t->s, t);
    gnutls_transport_set_pull_function(t->s, pull);
    gnutls_transport_set_pull_timeout_function(t->s, pull_timeout);
    gnutls_transport_set_vec_push_function(t->s, vec_push);
    *out = t;
    return 0;
}

/* Record a fatal error: its text (with the alert, if one came) for the log. */
static int fail(struct tls_session *t, int r, const char *what)
{
    t->last = r;
    if (r == GNUTLS_E_FATAL_ALERT_RECEIVED || r == GNUTLS_E_WARNING_ALERT_RECEIVED)
        snprintf(t->errbuf, sizeof(t->errbuf), "%s: %s (alert: %s)", what, gnutls_strerror(r),
                 gnutls_alert_get_name(gnutls_alert_get(t->s)));
    else
        snprintf(t->errbuf, sizeof(t->errbuf), "%s: %s", what, gnutls_strerror(r));
    if (r == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
        gnutls_datum_t d;
        unsigned st = gnutls_session_get_verify_cert_status(t->s);
        if (gnutls_certificate_verification_status_print(st, GNUTLS_CRT_X509, &d, 0) >= 0) {
            size_t used = strlen(t->errbuf);
            snprintf(t->errbuf + used, sizeof(t->errbuf) - used, " (%s)", d.data);
            gnutls_free(d.data);
        }
    }
    return -EPROTO;
}

int tls_session_handshake(struct tls_session *t)
{
    for (int i = 0; i < 16; i++) {
        int r = gnutls_handshake(t->s);
        if (r == GNUTLS_E_SUCCESS)
            return 0;
        if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
            return -EAGAIN;
        if (gnutls_error_is_fatal(r))
            return fail(t, r, "TLS handshake");
        /* A warning alert: the handshake goes on. */
    }
    return fail(t, GNUTLS_E_INTERNAL_ERROR, "TLS handshake: too many warning alerts");
}

ssize_t tls_session_recv(struct tls_session *t, void *buf, size_t len)
{
    for (;;) {
        ssize_t r = gnutls_record_recv(t->s, buf, len);
        if (r >= 0)
            return r;
        if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
            return -EAGAIN;
        if (r == GNUTLS_E_PREMATURE_TERMINATION)
            return 0;   /* closed without close_notify: an end of stream all the same */
        if (r == GNUTLS_E_REHANDSHAKE)
            return fail(t, (int)r, "TLS read (the client asked to renegotiate; qednbd does not)");
        if (gnutls_error_is_fatal((int)r))
            return fail(t, (int)r, "TLS read");
        /* Non-fatal (a warning alert, say): read again. */
    }
}

ssize_t tls_session_send(struct tls_session *t, const void *buf, size_t len)
{
    ssize_t r = gnutls_record_send(t->s, buf, len);

    if (r >= 0)
        return r;
    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
        return -EAGAIN;
    return fail(t, (int)r, "TLS write");
}

size_t tls_session_pending(struct tls_session *t)
{
    return gnutls_record_check_pending(t->s);
}

bool tls_session_wants_write(struct tls_session *t)
{
    return gnutls_record_get_direction(t->s) == 1;
}

const char *tls_session_error(const struct tls_session *t)
{
    return t->errbuf[0] ? t->errbuf : "no error";
}

const char *tls_session_describe(struct tls_session *t, char *buf, size_t len)
{
    char *desc = gnutls_session_get_desc(t->s);
    size_t used;

    snprintf(buf, len, "%s", desc ? desc : "TLS");
    gnutls_free(desc);
    used = strlen(buf);
    if (gnutls_auth_get_type(t->s) == GNUTLS_CRD_PSK) {
        const char *user = gnutls_psk_server_get_username(t->s);
        snprintf(buf + used, len - used, ", PSK identity \"%s\"", user ? user : "?");
    } else {
        unsigned n = 0;
        const gnutls_datum_t *peers = gnutls_certificate_get_peers(t->s, &n);
        gnutls_x509_crt_t crt;
        gnutls_datum_t dn;

        if (!peers || n == 0) {
            snprintf(buf + used, len - used, ", no client certificate");
        } else if (gnutls_x509_crt_init(&crt) >= 0) {
            if (gnutls_x509_crt_import(crt, &peers[0], GNUTLS_X509_FMT_DER) >= 0 &&
                gnutls_x509_crt_get_dn3(crt, &dn, 0) >= 0) {
                snprintf(buf + used, len - used, ", client \"%s\"", dn.data);
                gnutls_free(dn.data);
            }
            gnutls_x509_crt_deinit(crt);
        }
    }
    return buf;
}

void tls_session_bye(struct tls_session *t)
{
    /* One try: a close_notify is a courtesy, and we never wait for it. */
    gnutls_bye(t->s, GNUTLS_SHUT_WR);
}

void tls_session_free(struct tls_session *t)
{
    if (!t)
        return;
    gnutls_deinit(t->s);
    free(t);
}
