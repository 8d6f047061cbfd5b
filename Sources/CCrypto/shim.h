// OpenSSL's libcrypto (Debian's libssl-dev) for HMAC-SHA256, the Standard Webhooks signature
// of the HTTP sink. Headers only: no logic.
#include <openssl/evp.h>
#include <openssl/hmac.h>
