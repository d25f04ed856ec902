/*
 * bench/bare_mhd.c - libmicrohttpd alone, no Cnerium: the baseline that Cnerium's own
 * GET /health is measured against.
 *
 *   bare_mhd [--port N] [--threads T]        (port 0 = a free port; default 0 and 4)
 *
 * Answers GET /health with {"ok":true,"service":"bare"} (application/json), anything else
 * with a small JSON 404/405, using the daemon flags src/http/mhd.c uses: an internal
 * thread pool on poll(), a listening socket bound here on 127.0.0.1, and the response
 * queued on the access handler's second call (0.9.75 sends a response queued on the first
 * call with "Connection: close"). Prints "listening on http://127.0.0.1:PORT" and exits
 * 0 on SIGTERM or SIGINT.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

static const char health_body[] = "{\"ok\":true,\"service\":\"bare\"}";
static const char not_found_body[] = "{\"error\":\"Not Found\"}";
static const char not_allowed_body[] = "{\"error\":\"Method Not Allowed\"}";

static int marker; /* *con_cls after the first call */

static enum MHD_Result
reply(struct MHD_Connection *conn, unsigned status, const char *body, size_t len)
{
    struct MHD_Response *r;
    enum MHD_Result ok;

    /* A response per request, as the adapter builds one per request. */
    r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    if (MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json") !=
        MHD_YES) {
        MHD_destroy_response(r);
        return MHD_NO;
    }
    ok = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result
access_cb(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
          const char *version, const char *upload_data, size_t *upload_data_size,
          void **con_cls)
{
    (void)cls;
    (void)version;
    (void)upload_data;
    if (!*con_cls) {
        *con_cls = &marker; /* first call: headers only; answer on a later call */
        return MHD_YES;
    }
    if (*upload_data_size) {
        *upload_data_size = 0; /* a body is read and dropped */
        return MHD_YES;
    }
    if (strcmp(url, "/health"))
        return reply(conn, MHD_HTTP_NOT_FOUND, not_found_body, sizeof(not_found_body) - 1);
    if (strcmp(method, MHD_HTTP_METHOD_GET))
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, not_allowed_body,
                     sizeof(not_allowed_body) - 1);
    return reply(conn, MHD_HTTP_OK, health_body, sizeof(health_body) - 1);
}

static int
parse_uint(const char *s, unsigned long max, unsigned long *out)
{
    char *e;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &e, 10);
    if (e == s || *e || errno || v > max)
        return -1;
    *out = v;
    return 0;
}

int
main(int argc, char **argv)
{
    unsigned long port = 0, threads = 4;
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t alen = sizeof(a);
    struct MHD_Daemon *d;
    sigset_t set;
    int fd, one = 1, sig = 0;

    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && !strcmp(argv[i], "--port")) {
            if (parse_uint(argv[++i], 65535, &port))
                goto usage;
        } else if (i + 1 < argc && !strcmp(argv[i], "--threads")) {
            if (parse_uint(argv[++i], 256, &threads) || !threads)
                goto usage;
        } else {
            goto usage;
        }
    }

    /* Signals are taken by sigwait below; MHD's threads inherit the mask. */
    if (sigemptyset(&set) || sigaddset(&set, SIGTERM) || sigaddset(&set, SIGINT) ||
        sigaddset(&set, SIGPIPE) || pthread_sigmask(SIG_BLOCK, &set, NULL)) {
        perror("bare_mhd: sigmask");
        return 1;
    }

    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
        bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 1024) ||
        getsockname(fd, (struct sockaddr *)&a, &alen)) {
        perror("bare_mhd: listen");
        return 1;
    }

    d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ITC |
                             MHD_USE_ERROR_LOG,
                         0, NULL, NULL, access_cb, NULL,
                         MHD_OPTION_LISTEN_SOCKET, fd,
                         MHD_OPTION_THREAD_POOL_SIZE, threads > 1 ? (unsigned)threads : 0u,
                         MHD_OPTION_CONNECTION_TIMEOUT, 30u,
                         MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)16 * 1024,
                         MHD_OPTION_CONNECTION_LIMIT, 4096u,
                         MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "bare_mhd: MHD_start_daemon failed\n");
        close(fd);
        return 1;
    }
    printf("listening on http://127.0.0.1:%u\n", (unsigned)ntohs(a.sin_port));
    if (fflush(stdout))
        perror("bare_mhd: stdout");

    if (sigdelset(&set, SIGPIPE))
        perror("bare_mhd: sigdelset");
    while (sig != SIGTERM && sig != SIGINT) {
        int rc = sigwait(&set, &sig);
        if (rc) {
            fprintf(stderr, "bare_mhd: sigwait: %s\n", strerror(rc));
            break;
        }
    }
    MHD_stop_daemon(d);
    close(fd);
    return 0;

usage:
    fprintf(stderr, "usage: bare_mhd [--port N] [--threads T]   (port 0 = a free port)\n");
    return 2;
}
