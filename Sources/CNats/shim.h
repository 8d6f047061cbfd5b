#include <nats/nats.h>
// The NATS sink runs its publishing connection in libnats' external event-loop mode and
// polls it with epoll, which Swift's Glibc module does not expose.
#include <sys/epoll.h>
