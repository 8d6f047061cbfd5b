// librabbitmq 0.11 (Debian's librabbitmq-dev) installs its headers at the top of /usr/include;
// newer releases move them to rabbitmq-c/.
#if __has_include(<rabbitmq-c/amqp.h>)
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/framing.h>
#include <rabbitmq-c/tcp_socket.h>
#else
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#endif

// amqp_login is variadic (its SASL arguments), which Swift cannot call: this fixes them to PLAIN.
static inline amqp_rpc_reply_t spout_amqp_login_plain(amqp_connection_state_t state, char const *vhost, int frame_max,
                                                     int heartbeat, char const *user, char const *password) {
    return amqp_login(state, vhost, 0, frame_max, heartbeat, AMQP_SASL_METHOD_PLAIN, user, password);
}

// issue 15: TLS (amqps://). librabbitmq's own checks run after the handshake (our client
// certificate already sent) and its host name check knows DNS names only, not the IP
// addresses a certificate may list; spout turns them off and lets OpenSSL verify the chain
// and the host during the handshake. The callback keeps the first verification error in the
// context's slot 0 (a long the caller owns), since librabbitmq frees the SSL before returning.
#if __has_include(<rabbitmq-c/ssl_socket.h>)
#include <rabbitmq-c/ssl_socket.h>
#else
#include <amqp_ssl_socket.h>
#endif
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

static int spout_amqp_verify_callback(int ok, X509_STORE_CTX *store) {
    if (!ok) {
        SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
        long *first = ssl ? SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), 0) : NULL;
        if (first && *first == 0) *first = X509_STORE_CTX_get_error(store);
    }
    return ok;
}

// A key with a passphrase would make OpenSSL ask on the terminal: refuse it instead.
static int spout_amqp_no_password(char *buffer, int size, int writing, void *data) { return 0; }

// 0, or which file failed: 1 the CA file, 2 the system's CAs, 3 the certificate, 4 the key.
static inline int spout_amqp_tls_configure(amqp_socket_t *socket, const char *host, const char *ca, const char *cert,
                                           const char *key, int insecure, long *verify_error) {
    SSL_CTX *ctx = amqp_ssl_socket_get_context(socket);
    amqp_ssl_socket_set_verify_peer(socket, 0);
    amqp_ssl_socket_set_verify_hostname(socket, 0);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_default_passwd_cb(ctx, spout_amqp_no_password);
    if (ca) {
        if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) return 1;
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1 && !insecure) {
        return 2;
    }
    if (cert && SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) return 3;
    if (key && SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) return 4;
    if (insecure) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        return 0;
    }
    X509_VERIFY_PARAM *param = SSL_CTX_get0_param(ctx);
    unsigned char address[16];
    if (inet_pton(AF_INET, host, address) == 1 || inet_pton(AF_INET6, host, address) == 1) {
        X509_VERIFY_PARAM_set1_ip_asc(param, host);
    } else {
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        X509_VERIFY_PARAM_set1_host(param, host, 0);
    }
    SSL_CTX_set_ex_data(ctx, 0, verify_error);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, spout_amqp_verify_callback);
    return 0;
}

// After the handshake: the slot is the caller's no longer.
static inline void spout_amqp_tls_forget(amqp_socket_t *socket) {
    SSL_CTX_set_ex_data(amqp_ssl_socket_get_context(socket), 0, NULL);
}

// What this thread's OpenSSL error queue says about a failed handshake (the queue is
// cleared): 1 the server requires a client certificate, 2 it refused the handshake, 3 it
// refused our client certificate, 4 it does not speak TLS, 0 something else; `text`: the
// first reason, for the message.
static inline int spout_amqp_tls_failure(const char **text) {
    int kind = 0;
    unsigned long error;
    *text = NULL;
    while ((error = ERR_get_error()) != 0) {
        if (!*text) *text = ERR_reason_error_string(error);
        if (kind) continue;
        switch (ERR_GET_REASON(error)) {
        case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED: kind = 1; break;
        case SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE: kind = 2; break;
        case SSL_R_TLSV1_ALERT_UNKNOWN_CA: case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE: case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
        case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE: case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED: case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
            kind = 3; break;
        case SSL_R_WRONG_VERSION_NUMBER: case SSL_R_PACKET_LENGTH_TOO_LONG: case SSL_R_UNKNOWN_PROTOCOL: kind = 4; break;
        default: break;
        }
    }
    return kind;
}
