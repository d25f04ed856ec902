/*
 * http/listen.c - TCP listening sockets for IPv4 and IPv6 literal or named hosts.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cnerium/error.h"
#include "http/listen.h"

int
cn__listen_tcp(const char *host, uint16_t port, int *fd_out, uint16_t *bound_port)
{
    struct addrinfo hints = {0}, *res = NULL, *ai;
    char service[8];
    int rc, err = -EADDRNOTAVAIL, one = 1;

    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(service, sizeof(service), "%u", (unsigned)port);
    if ((rc = getaddrinfo(host, service, &hints, &res)))
        return rc == EAI_SYSTEM ? -errno : CN_ECONFIG;
    for (ai = res; ai; ai = ai->ai_next) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                        ai->ai_protocol);
        if (fd < 0) {
            err = -errno;
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ai->ai_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 1024) ||
            getsockname(fd, (struct sockaddr *)&ss, &sl)) {
            err = -errno;
            close(fd);
            continue;
        }
        *bound_port = ntohs(ss.ss_family == AF_INET6
                                ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                : ((struct sockaddr_in *)&ss)->sin_port);
        *fd_out = fd;
        freeaddrinfo(res);
        return 0;
    }
    freeaddrinfo(res);
    return err;
}
