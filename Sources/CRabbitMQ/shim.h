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
