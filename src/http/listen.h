/*
 * http/listen.h - listening sockets, bound before any worker starts so that a busy port
 * fails at once.
 */
#ifndef CN_HTTP_LISTEN_H
#define CN_HTTP_LISTEN_H

#include <stdint.h>

/* Binds and listens on host:port (port 0 = any free port), non-blocking, close-on-exec.
 * Returns 0 with *fd and the bound port in *bound_port, or a negative errno (-EADDRINUSE,
 * -EADDRNOTAVAIL, ...) or CN_ECONFIG when host does not resolve. */
int cn__listen_tcp(const char *host, uint16_t port, int *fd, uint16_t *bound_port);

#endif
