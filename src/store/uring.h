/*
 * store/uring.h - the persister's io_uring (wraps liburing; no io_uring type leaves
 * uring.c).
 *
 * Three kinds of work: a batch write linked to an fdatasync of the same file (one write
 * SQE and one fsync SQE: buffered ext4 writes are punted to kernel workers, so one SQE
 * per batch beats a chain of small ones); a synced write (RWF_DSYNC) to an O_DIRECT
 * file, whose completion is its durability, optionally through a registered file and
 * buffer; and a read of an eventfd, so one wait covers "a batch is on disk" and "a worker
 * has records".
 */
#ifndef CN_STORE_URING_H
#define CN_STORE_URING_H

#include <stddef.h>
#include <stdint.h>

typedef struct cn_uring cn_uring_t;

/* Returns 0 and *out, or a negative errno (e.g. -ENOSYS or -EPERM where io_uring is not
 * allowed: the caller falls back to plain pwrite + fdatasync). */
int cn__uring_open(unsigned entries, cn_uring_t **out);

void cn__uring_close(cn_uring_t *u);

/* Queues a write of len bytes at offset of fd and an fdatasync of fd linked after it.
 * Its completion is reported once, with tag, when the fdatasync finished (or the write
 * failed): res 0, or a negative errno (a short write is -EIO). */
int cn__uring_write_sync(cn_uring_t *u, int fd, const void *buf, size_t len, uint64_t offset,
                         uint64_t tag);

/* Queues one write of len bytes at offset of fd with RWF_DSYNC: for an O_DIRECT fd its
 * completion means the bytes are durable (the kernel flushes or uses FUA), no fdatasync
 * needed. Up to 4 may be in flight. Each is reported once with tag: res 0, or a negative
 * errno (a short write is -EIO). Returns 0, or -EBUSY when the ring or the in-flight
 * table is full (or tag has its top bit set). */
int cn__uring_write_dsync(cn_uring_t *u, int fd, const void *buf, size_t len, uint64_t offset,
                          uint64_t tag);

/* The same on the registered file, from the registered buffer (buf + len must lie in
 * it): -EINVAL when either is not registered or buf is outside. */
int cn__uring_write_dsync_fixed(cn_uring_t *u, const void *buf, size_t len, uint64_t offset,
                                uint64_t tag);

/* Registers fd as the ring's fixed file, replacing the one registered before (after a
 * segment roll: the ring holds a reference to the old file until then, so a write through
 * it still goes there). fd stays owned by the caller. Returns 0 or a negative errno
 * (nothing is registered then). */
int cn__uring_register_file(cn_uring_t *u, int fd);

/* Registers [buf, buf + len) as the ring's fixed buffer (replacing one registered before,
 * which must have no write in flight); pinned, so len counts against RLIMIT_MEMLOCK.
 * The memory stays owned by the caller and must outlive the ring or a new registration.
 * Returns 0 or a negative errno (nothing is registered then). */
int cn__uring_register_buffer(cn_uring_t *u, void *buf, size_t len);

/* Queues a read of up to len bytes of fd (an eventfd's counter, a signalfd's siginfo)
 * into buf; reported with tag and the byte count (or a negative errno) as res. */
int cn__uring_read(cn_uring_t *u, int fd, void *buf, size_t len, uint64_t tag);

/* Submits what is queued and waits up to timeout_ms (-1: no limit) for one completion.
 * Returns 1 with *tag and *res, 0 on timeout, or a negative errno. */
int cn__uring_wait(cn_uring_t *u, int timeout_ms, uint64_t *tag, int *res);

#endif
