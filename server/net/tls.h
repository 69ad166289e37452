/*
 * tls.h - TLS for qednbd, on GnuTLS: the server-wide credentials (X.509
 * certificates or pre-shared keys) and one non-blocking session per
 * connection.  Only net/ (conn.c, input.c, output.c) drives sessions; the
 * protocol reads the mode (tls_mode) for its policy; main.c loads the
 * credentials.
 *
 * Every I/O function here is non-blocking: it returns -EAGAIN when the
 * socket is not ready, and tls_session_wants_write() then tells which
 * direction to wait for (a TLS read may need to write, and the other way
 * round).  Fatal errors return another negative errno, and
 * tls_session_error() gives GnuTLS's explanation for the log.
 */
#ifndef QEDNBD_TLS_H
#define QEDNBD_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/** The --tls modes: NOTLS, SELECTIVETLS (every export TLS-optional), FORCEDTLS. */
enum tls_mode {
    TLS_OFF = 0,    /* STARTTLS gets ERR_POLICY */
    TLS_ON,         /* STARTTLS accepted; plaintext clients too */
    TLS_REQUIRE,    /* every option but STARTTLS and ABORT gets ERR_TLS_REQD */
};

/** Server-wide TLS settings, from the command line. */
struct tls_config {
    enum tls_mode mode;
    const char *cert_dir;   /* --tls-certificates: ca-cert.pem, server-cert.pem, server-key.pem */
    const char *psk_file;   /* --tls-psk: psktool's "identity:hexkey" lines */
    bool verify_peer;       /* --tls-verify-peer: clients must present a certificate the CA signed */
    const char *priority;   /* --tls-priority, or NULL for GnuTLS's defaults */
};

/**
 * tls_setup - load the credentials @cfg names.  Returns 0, or a negative
 * errno with the cause (file, GnuTLS message) in @err.  With TLS_OFF it
 * does nothing.
 */
int tls_setup(const struct tls_config *cfg, char *err, size_t errlen);

/** tls_mode - the mode in force (TLS_OFF until tls_setup succeeded). */
enum tls_mode tls_mode(void);

/** tls_cleanup - free the credentials (no session may remain). */
void tls_cleanup(void);

struct tls_session;

/**
 * tls_session_new - a server session that will read @rfd and write @wfd
 * (the same socket, or stdin/stdout).  Nothing is sent until
 * tls_session_handshake.  Returns 0 or a negative errno (@err says why).
 */
int tls_session_new(int rfd, int wfd, struct tls_session **out, char *err, size_t errlen);

/**
 * tls_session_handshake - advance the handshake.  Returns 0 when it is
 * complete, -EAGAIN to be called again when the socket is ready in the
 * direction tls_session_wants_write() gives, another negative errno when
 * it failed (tls_session_error() says why).
 */
int tls_session_handshake(struct tls_session *s);

/**
 * tls_session_recv - read decrypted bytes.  Returns the count (> 0), 0 at
 * the end of the stream, -EAGAIN, or another negative errno.
 */
ssize_t tls_session_recv(struct tls_session *s, void *buf, size_t len);

/**
 * tls_session_send - encrypt and send @len bytes (at most one record).
 * Returns the count sent, -EAGAIN (call again later with the very same
 * @buf and @len: GnuTLS keeps the record half-written), or another
 * negative errno.
 */
ssize_t tls_session_send(struct tls_session *s, const void *buf, size_t len);

/** tls_session_pending - decrypted bytes buffered inside GnuTLS, readable without I/O. */
size_t tls_session_pending(struct tls_session *s);

/** tls_session_wants_write - after -EAGAIN: true to wait for writable, false for readable. */
bool tls_session_wants_write(struct tls_session *s);

/** tls_session_error - GnuTLS's message for the last failure of @s. */
const char *tls_session_error(const struct tls_session *s);

/**
 * tls_session_describe - "TLS1.3 ... , PSK identity alice" or the client
 * certificate's DN, for the log, into @buf.
 */
const char *tls_session_describe(struct tls_session *s, char *buf, size_t len);

/** tls_session_bye - best-effort close_notify (never blocks), before closing the socket. */
void tls_session_bye(struct tls_session *s);

/** tls_session_free - free the session (the sockets are not closed). */
void tls_session_free(struct tls_session *s);

#endif /* QEDNBD_TLS_H */
