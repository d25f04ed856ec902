/*
 * store/uring.c - the persister's io_uring (the only file that includes liburing.h).
 *
 * Each write-and-sync pair is two SQEs joined by IOSQE_IO_LINK. Its write's completion
 * is remembered (a short or failed write cancels the fdatasync) and the pair is reported
 * once, when the fdatasync's completion arrives.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <liburing.h>

#include "store/uring.h"

#define WRITE_BIT (1ull << 63) /* user_data of a pair's write SQE */

struct cn_uring {
    struct io_uring ring;
    size_t write_len;   /* the length of the pair in flight (one at a time) */
    uint64_t pair_tag;  /* its tag */
    int write_res;      /* its write's result, once seen */
};

int
cn__uring_open(unsigned entries, cn_uring_t **out)
{
    cn_uring_t *u = calloc(1, sizeof(*u));
    int rc;

    if (!u)
        return -ENOMEM;
    if ((rc = io_uring_queue_init(entries, &u->ring, 0)) < 0) {
        free(u);
        return rc;
    }
    *out = u;
    return 0;
}

void
cn__uring_close(cn_uring_t *u)
{
    if (!u)
        return;
    io_uring_queue_exit(&u->ring);
    free(u);
}

int
cn__uring_write_sync(cn_uring_t *u, int fd, const void *buf, size_t len, uint64_t offset,
                     uint64_t tag)
{
    struct io_uring_sqe *w, *s;

    if (io_uring_sq_space_left(&u->ring) < 2)
        return -EBUSY;
    w = io_uring_get_sqe(&u->ring);
    s = io_uring_get_sqe(&u->ring);
    io_uring_prep_write(w, fd, buf, (unsigned)len, offset);
    io_uring_sqe_set_data64(w, tag | WRITE_BIT);
    w->flags |= IOSQE_IO_LINK;
    io_uring_prep_fsync(s, fd, IORING_FSYNC_DATASYNC);
    io_uring_sqe_set_data64(s, tag);
    u->write_len = len;
    u->pair_tag = tag;
    u->write_res = 0;
    return 0;
}

int
cn__uring_read(cn_uring_t *u, int fd, void *buf, size_t len, uint64_t tag)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);

    if (!sqe)
        return -EBUSY;
    io_uring_prep_read(sqe, fd, buf, (unsigned)len, 0);
    io_uring_sqe_set_data64(sqe, tag);
    return 0;
}

int
cn__uring_wait(cn_uring_t *u, int timeout_ms, uint64_t *tag, int *res)
{
    for (;;) {
        struct io_uring_cqe *cqe;
        struct __kernel_timespec ts = {timeout_ms / 1000, (long long)(timeout_ms % 1000) * 1000000};
        uint64_t data;
        int rc, r;

        rc = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, timeout_ms < 0 ? NULL : &ts,
                                              NULL);
        if (rc == -ETIME || rc == -EAGAIN)
            return 0;
        if (rc == -EINTR)
            continue;
        if (rc < 0)
            return rc;
        if (!cqe)
            return 0; /* woken without a completion: a timeout by another name */
        data = io_uring_cqe_get_data64(cqe);
        r = cqe->res;
        io_uring_cqe_seen(&u->ring, cqe);
        if (data & WRITE_BIT) {
            /* The write half of a pair: keep its result for the fdatasync's report. */
            u->write_res = r < 0 ? r : (size_t)r != u->write_len ? -EIO : 0;
            continue;
        }
        *tag = data;
        if (data == u->pair_tag) {
            if (u->write_res)
                r = u->write_res; /* the write failed or was short: that is the error */
            else if (r > 0)
                r = 0;
            u->write_res = 0;
        }
        *res = r;
        return 1;
    }
}
