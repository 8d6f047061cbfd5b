// Linux system calls the delivery engine and the sinks wait with (epoll, timerfd, eventfd),
// which Swift's Glibc module does not expose. Headers only: no logic, no library.
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
