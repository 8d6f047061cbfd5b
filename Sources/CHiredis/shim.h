#include <hiredis/hiredis.h>
// The Redis sink's wakeup holds a timerfd, which Swift's Glibc module does not expose.
#include <sys/timerfd.h>
