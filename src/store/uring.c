/*
 * store/uring.c - the persister's io_uring (the only file that includes liburing.h).
 *
 * Each write-and-sync pair is two SQEs joined by IOSQE_IO_LINK. Its write's completion
 * is remembered (a short or failed write cancels the fdatasync) and the pair is reported
 * once, when the fdatasync's completion arrives. A synced write (RWF_DSYNC, for an
 * O_DIRECT file) is one SQE: its completion is the report; up to DSYNC_MAX of them may
 * be in flight, each remembered with its length so a short one reads as -EIO.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include <liburing.h>

#include "store/uring.h"

#define WRITE_BIT (1ull << 63) /* user_data of a pair's write SQE */
#define DSYNC_MAX 4

struct cn_uring {
    struct io_uring ring;
    size_t write_len;   /* the length of the pair in flight (one at a time) */
    uint64_t pair_tag;  /* its tag */
    int write_res;      /* its write's result, once seen */

    struct {
        uint64_t tag;
        size_t len;
        int used;
    } dsync[DSYNC_MAX];  /* synced writes in flight */
    int file;            /* the registered file (fixed file 0), or -1 */
    const uint8_t *rbuf; /* the registered buffer (fixed buffer 0), or NULL */
    size_t rlen;
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
    u->file = -1;
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
cn__uring_register_file(cn_uring_t *u, int fd)
{
    int rc;

    if (u->file >= 0 && (rc = io_uring_register_files_update(&u->ring, 0, &fd, 1)) == 1) {
        u->file = fd;
        return 0;
    }
    if (u->file >= 0) {
        io_uring_unregister_files(&u->ring);
        u->file = -1;
    }
    if ((rc = io_uring_register_files(&u->ring, &fd, 1)) < 0)
        return rc;
    u->file = fd;
    return 0;
}

int
cn__uring_register_buffer(cn_uring_t *u, void *buf, size_t len)
{
    struct iovec iov = {buf, len};
    int rc;

    if (u->rbuf) {
        io_uring_unregister_buffers(&u->ring);
        u->rbuf = NULL;
    }
    if ((rc = io_uring_register_buffers(&u->ring, &iov, 1)) < 0)
        return rc;
    u->rbuf = buf;
    u->rlen = len;
    return 0;
}

/* Queues one RWF_DSYNC write: on fd, or on the registered file and from the registered
 * buffer when fixed. */
static int
write_dsync(cn_uring_t *u, int fixed, int fd, const void *buf, size_t len, uint64_t offset,
            uint64_t tag)
{
    const uint8_t *b = buf;
    struct io_uring_sqe *sqe;
    int slot;

    if (fixed && (u->file < 0 || !u->rbuf || b < u->rbuf || len > u->rlen ||
                  (size_t)(b - u->rbuf) > u->rlen - len))
        return -EINVAL;
    for (slot = 0; slot < DSYNC_MAX && u->dsync[slot].used; slot++)
        ;
    if (slot == DSYNC_MAX || tag & WRITE_BIT || !(sqe = io_uring_get_sqe(&u->ring)))
        return -EBUSY;
    if (fixed) {
        io_uring_prep_write_fixed(sqe, 0, buf, (unsigned)len, offset, 0);
        sqe->flags |= IOSQE_FIXED_FILE;
    } else {
        io_uring_prep_write(sqe, fd, buf, (unsigned)len, offset);
    }
    sqe->rw_flags = RWF_DSYNC;
    io_uring_sqe_set_data64(sqe, tag);
    u->dsync[slot].tag = tag;
    u->dsync[slot].len = len;
    u->dsync[slot].used = 1;
    return 0;
}

int
cn__uring_write_dsync(cn_uring_t *u, int fd, const void *buf, size_t len, uint64_t offset,
                      uint64_t tag)
{
    return write_dsync(u, 0, fd, buf, len, offset, tag);
}

int
cn__uring_write_dsync_fixed(cn_uring_t *u, const void *buf, size_t len, uint64_t offset,
                            uint64_t tag)
{
    return write_dsync(u, 1, -1, buf, len, offset, tag);
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

/* When tag is a synced write in flight: forgets it, turns *res into 0 or a negative errno
 * (a short write is -EIO) and returns 1. */
static int
dsync_done(cn_uring_t *u, uint64_t tag, int *res)
{
    for (int i = 0; i < DSYNC_MAX; i++) {
        if (u->dsync[i].used && u->dsync[i].tag == tag) {
            u->dsync[i].used = 0;
            if (*res >= 0)
                *res = (size_t)*res == u->dsync[i].len ? 0 : -EIO;
            return 1;
        }
    }
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
        if (!dsync_done(u, data, &r) && data == u->pair_tag) {
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
