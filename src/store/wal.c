/*
 * store/wal.c - the write-ahead log: the frame codec, segment files (named, zero-filled,
 * created atomically) and recovery (replay, torn-tail cut, damage detection). Format and
 * contract in wal.h.
 *
 * Everything read from disk is untrusted: every length and position is checked before
 * use. I/O is plain pread/pwrite/fsync; the persister submits its own frame writes
 * (io_uring) and uses this file only to create segments and to recover at startup.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cnerium/error.h"
#include "store/wal.h"
#include "support/bytes.h"
#include "support/crc32c.h"
#include "support/log.h"

static const uint8_t magic[4] = {'C', 'N', 'W', 'F'};

/* Zeros are written in chunks of this size (segment creation and tail cuts). */
#define ZERO_CHUNK ((size_t)1 << 20)
/* Recovery reads segments this many bytes at a time (about an L2 cache). */
#define READ_CHUNK ((size_t)256 << 10)
/* "%016" PRIx64 ".wal" */
#define SEGMENT_NAME_LEN 20
/* Generous upper bound on segment_size; one frame may take a whole segment in memory. */
#define SEGMENT_SIZE_MAX ((uint64_t)1 << 40)

/* Recovery reads whole segments of zeros (the unwritten end of the log, segments created
 * ahead of use): it checks them 64 bytes at a time, which the compiler turns into vector
 * loads, rather than a byte at a time. */
static int
all_zero(const uint8_t *p, size_t len)
{
    size_t i = 0;

    for (; i + 64 <= len; i += 64) {
        uint64_t w[8];
        memcpy(w, p + i, sizeof(w));
        if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7])
            return 0;
    }
    for (; i < len; i++) {
        if (p[i])
            return 0;
    }
    return 1;
}

/* CRC-32C of the header with its CRC field zeroed, then the payload. */
static uint32_t
frame_crc(const uint8_t *frame, uint32_t len)
{
    uint8_t hdr[CN_WAL_FRAME_HEADER];

    memcpy(hdr, frame, sizeof(hdr));
    memset(hdr + 16, 0, 4);
    return cn__crc32c(cn__crc32c(0, hdr, sizeof(hdr)), frame + CN_WAL_FRAME_HEADER, len);
}

size_t
cn__wal_frame_size(size_t len)
{
    return CN_WAL_FRAME_HEADER + ((len + 7) & ~(size_t)7);
}

/* Encodes a frame whose write starts back * 8 bytes before it. */
static void
frame_encode(uint8_t *out, uint64_t lsn, uint32_t back, uint8_t type, const void *payload,
             size_t len)
{
    size_t size = cn__wal_frame_size(len);

    CN_ASSERT(len <= CN_WAL_PAYLOAD_MAX);
    CN_ASSERT(type == CN_WAL_DATA || type == CN_WAL_PAD ||
              (type == CN_WAL_SEAL && len == 0 && back == 0));
    CN_ASSERT(back < (1u << 24));
    memcpy(out, magic, 4);
    cn__put_le32(out + 4, (uint32_t)len);
    cn__put_le64(out + 8, lsn);
    memset(out + 16, 0, 4);
    out[20] = type;
    out[21] = (uint8_t)back;
    out[22] = (uint8_t)(back >> 8);
    out[23] = (uint8_t)(back >> 16);
    if (len && payload != out + CN_WAL_FRAME_HEADER)
        memcpy(out + CN_WAL_FRAME_HEADER, payload, len);
    memset(out + CN_WAL_FRAME_HEADER + len, 0, size - CN_WAL_FRAME_HEADER - len);
    cn__put_le32(out + 16, frame_crc(out, (uint32_t)len));
}

void
cn__wal_frame_encode(uint8_t *out, uint64_t lsn, uint8_t type, const void *payload,
                     size_t len)
{
    frame_encode(out, lsn, 0, type, payload, len);
}

void
cn__wal_frame_encode_batch(uint8_t *out, uint64_t lsn, uint64_t batch_lsn, const void *payload,
                           size_t len)
{
    CN_ASSERT(batch_lsn <= lsn && (lsn - batch_lsn) % 8 == 0 &&
              lsn - batch_lsn <= CN_WAL_BATCH_SPAN_MAX);
    frame_encode(out, lsn, (uint32_t)((lsn - batch_lsn) / 8), CN_WAL_DATA, payload, len);
}

void
cn__wal_frame_encode_pad(uint8_t *out, uint64_t lsn, uint64_t batch_lsn, size_t size)
{
    CN_ASSERT(size >= CN_WAL_FRAME_HEADER && size % 8 == 0);
    CN_ASSERT(batch_lsn <= lsn && (lsn - batch_lsn) % 8 == 0 &&
              lsn - batch_lsn <= CN_WAL_BATCH_SPAN_MAX);
    memset(out + CN_WAL_FRAME_HEADER, 0, size - CN_WAL_FRAME_HEADER);
    frame_encode(out, lsn, (uint32_t)((lsn - batch_lsn) / 8), CN_WAL_PAD,
                 out + CN_WAL_FRAME_HEADER, size - CN_WAL_FRAME_HEADER);
}

int
cn__wal_frame_decode(const uint8_t *buf, size_t avail, uint64_t expect_lsn,
                     cn_wal_frame_t *f, size_t *consumed)
{
    uint32_t len, back;
    uint8_t type;
    size_t size;

    if (avail < CN_WAL_FRAME_HEADER)
        return CN_ECORRUPT;
    if (all_zero(buf, CN_WAL_FRAME_HEADER))
        return CN_ENOTFOUND;
    if (memcmp(buf, magic, 4))
        return CN_ECORRUPT;
    len = cn__get_le32(buf + 4);
    type = buf[20];
    back = (uint32_t)buf[21] | (uint32_t)buf[22] << 8 | (uint32_t)buf[23] << 16;
    if (len > CN_WAL_PAYLOAD_MAX || cn__get_le64(buf + 8) != expect_lsn)
        return CN_ECORRUPT;
    if ((type != CN_WAL_DATA && type != CN_WAL_SEAL && type != CN_WAL_PAD) ||
        (type == CN_WAL_SEAL && (len || back)) ||
        (uint64_t)back * 8 > expect_lsn)
        return CN_ECORRUPT;
    /* len <= CN_WAL_PAYLOAD_MAX, so the size cannot wrap. */
    size = cn__wal_frame_size(len);
    if (size > avail)
        return CN_ECORRUPT;
    if (cn__get_le32(buf + 16) != frame_crc(buf, len))
        return CN_ECORRUPT;
    /* Padding is outside the CRC; it must still be exactly zero. A PAD carries nothing. */
    if (!all_zero(buf + CN_WAL_FRAME_HEADER + len, size - CN_WAL_FRAME_HEADER - len))
        return CN_ECORRUPT;
    if (type == CN_WAL_PAD && !all_zero(buf + CN_WAL_FRAME_HEADER, len))
        return CN_ECORRUPT;

    f->lsn = expect_lsn;
    f->batch_lsn = expect_lsn - (uint64_t)back * 8;
    f->type = type;
    f->payload = buf + CN_WAL_FRAME_HEADER;
    f->len = len;
    *consumed = size;
    return 0;
}

/* A segment holds at least one empty DATA frame and its SEAL, keeps frames 8-byte
 * aligned, and fits in memory (recovery reads it whole) and in an off_t. */
static int
valid_segment_size(uint64_t segment_size)
{
    return segment_size >= 2 * CN_WAL_FRAME_HEADER && segment_size % 8 == 0 &&
           segment_size <= SEGMENT_SIZE_MAX && (uint64_t)(size_t)segment_size == segment_size;
}

int
cn__wal_segment_path(char *out, size_t cap, const char *dir, uint64_t start)
{
    int n = snprintf(out, cap, "%s/%016" PRIx64 ".wal", dir, start);

    if (n < 0 || (size_t)n >= cap)
        return -ENAMETOOLONG;
    return 0;
}

/* Parses a segment file name; anything else (temp files, other files) is not one. */
static int
parse_segment_name(const char *name, uint64_t *start)
{
    uint64_t v = 0;

    if (strlen(name) != SEGMENT_NAME_LEN || strcmp(name + 16, ".wal") != 0)
        return 0;
    for (int i = 0; i < 16; i++) {
        char c = name[i];
        unsigned d;

        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else
            return 0;
        v = v << 4 | d;
    }
    *start = v;
    return 1;
}

static int
sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;

    if (fd < 0)
        return -errno;
    if (fsync(fd))
        rc = -errno;
    close(fd);
    return rc;
}

/* Creates one directory level; a new one is made durable by syncing its parent. */
static int
mkdir_one(const char *path)
{
    char parent[PATH_MAX];
    const char *slash;
    struct stat st;

    if (mkdir(path, 0755)) {
        if (errno != EEXIST)
            return -errno;
        if (stat(path, &st))
            return -errno;
        return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
    }
    slash = strrchr(path, '/');
    if (!slash) {
        strcpy(parent, ".");
    } else if (slash == path) {
        strcpy(parent, "/");
    } else {
        memcpy(parent, path, (size_t)(slash - path));
        parent[slash - path] = '\0';
    }
    return sync_dir(parent);
}

int
cn__wal_mkdir(const char *dir)
{
    char path[PATH_MAX];
    size_t n = strlen(dir);

    if (n == 0)
        return -EINVAL;
    if (n >= sizeof(path))
        return -ENAMETOOLONG;
    memcpy(path, dir, n + 1);
    while (n > 1 && path[n - 1] == '/')
        path[--n] = '\0';
    for (char *p = path + 1;; p++) {
        char c = *p;
        int rc;

        if (c != '/' && c != '\0')
            continue;
        if (c == '/' && p[-1] == '/')
            continue;
        *p = '\0';
        rc = mkdir_one(path);
        *p = c;
        if (rc)
            return rc;
        if (c == '\0')
            return 0;
    }
}

static int
pwrite_all(int fd, const uint8_t *buf, size_t len, uint64_t off)
{
    while (len) {
        ssize_t n = pwrite(fd, buf, len, (off_t)off);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        buf += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

/* Writes len zero bytes at off, in chunks of up to ZERO_CHUNK. */
static int
write_zeros(int fd, uint64_t off, uint64_t len)
{
    size_t chunk = len < ZERO_CHUNK ? (size_t)len : ZERO_CHUNK;
    uint8_t *zeros;
    int rc = 0;

    if (len == 0)
        return 0;
    if (!(zeros = calloc(1, chunk)))
        return -ENOMEM;
    while (len && !rc) {
        size_t n = len < chunk ? (size_t)len : chunk;

        rc = pwrite_all(fd, zeros, n, off);
        off += n;
        len -= n;
    }
    free(zeros);
    return rc;
}

int
cn__wal_segment_open(const char *dir, uint64_t start, uint64_t segment_size)
{
    char path[PATH_MAX], tmp[PATH_MAX];
    struct stat st;
    int fd, rc;

    if (!valid_segment_size(segment_size) || start % segment_size ||
        start > UINT64_MAX - segment_size)
        return -EINVAL;
    if ((rc = cn__wal_segment_path(path, sizeof(path), dir, start)))
        return rc;

    fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
        /* Created earlier: only ever renamed into place whole, so the size is right unless
         * someone else wrote it (or segment_size changed); never overwrite it then. */
        if (fstat(fd, &st)) {
            rc = -errno;
        } else if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != segment_size) {
            rc = CN_ECORRUPT;
        } else {
            /* The process that created it may have died before syncing the directory. */
            rc = sync_dir(dir);
        }
        if (rc) {
            close(fd);
            return rc;
        }
        return fd;
    }
    if (errno != ENOENT)
        return -errno;

    /* Build it under a temp name (not a segment name, so recovery ignores it) and rename
     * it into place once it is whole and synced: a crash never leaves a short segment. */
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    if ((rc = write_zeros(fd, 0, segment_size)))
        goto fail;
    if (fsync(fd) || rename(tmp, path)) {
        rc = -errno;
        goto fail;
    }
    if ((rc = sync_dir(dir))) {
        /* In place but maybe not durable; a retry finds it and syncs the directory. */
        close(fd);
        return rc;
    }
    return fd;

fail:
    close(fd);
    unlink(tmp);
    return rc;
}

static int
compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return (x > y) - (x < y);
}

/* Lists the starts of the segment files in dir, ascending, into a malloc'd array. */
static int
list_segments(const char *dir, uint64_t **out, size_t *count)
{
    uint64_t *starts = NULL, start;
    size_t n = 0, cap = 0;
    struct dirent *de;
    DIR *d = opendir(dir);
    int rc = 0;

    if (!d)
        return -errno;
    for (;;) {
        errno = 0;
        if (!(de = readdir(d))) {
            rc = errno ? -errno : 0;
            break;
        }
        if (!parse_segment_name(de->d_name, &start))
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            uint64_t *grown = realloc(starts, ncap * sizeof(*grown));

            if (!grown) {
                rc = -ENOMEM;
                break;
            }
            starts = grown;
            cap = ncap;
        }
        starts[n++] = start;
    }
    closedir(d);
    if (rc) {
        free(starts);
        return rc;
    }
    if (n)
        qsort(starts, n, sizeof(*starts), compare_u64);
    *out = starts;
    *count = n;
    return 0;
}

/* State of one recovery run. */
typedef struct recovery {
    const char *dir;
    uint64_t segment_size;
    uint64_t from_lsn;
    cn_wal_frame_cb cb;
    void *arg;
    cn_wal_recovery_t *out;
    uint8_t *buf; /* the window: bytes [base, base + have) of the segment being read */
    size_t cap;   /* READ_CHUNK, or more for a frame that does not fit in that */
    uint64_t tail_window;
} recovery_t;

static int report(cn_wal_recovery_t *out, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes what happened to out->message and returns rc. */
static int
report(cn_wal_recovery_t *out, int rc, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(out->message, sizeof(out->message), fmt, ap);
    va_end(ap);
    return rc;
}

/* A segment file open for reading, and the part of it in the recovery's window. */
typedef struct segment {
    int fd;
    uint64_t start;
    size_t base, have;
    char path[PATH_MAX];
} segment_t;

/* Opens the segment at start for reading; its file must be exactly segment_size bytes. */
static int
segment_open(recovery_t *r, uint64_t start, segment_t *seg)
{
    struct stat st;
    int rc = 0;

    seg->fd = -1;
    seg->start = start;
    seg->base = seg->have = 0;
    if ((rc = cn__wal_segment_path(seg->path, sizeof(seg->path), r->dir, start)))
        return report(r->out, rc, "segment %016" PRIx64 ".wal: path too long", start);
    if ((seg->fd = open(seg->path, O_RDONLY | O_CLOEXEC)) < 0) {
        rc = -errno;
        return report(r->out, rc, "opening %s: %s", seg->path, cn_strerror(rc));
    }
    if (fstat(seg->fd, &st)) {
        rc = -errno;
        report(r->out, rc, "stat %s: %s", seg->path, cn_strerror(rc));
    } else if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != r->segment_size) {
        rc = report(r->out, CN_ECORRUPT,
                    "segment %s is %" PRIu64 " bytes, not the segment size %" PRIu64,
                    seg->path, (uint64_t)st.st_size, r->segment_size);
    }
    if (rc) {
        close(seg->fd);
        seg->fd = -1;
    }
    return rc;
}

static void
segment_close(segment_t *seg)
{
    if (seg->fd >= 0)
        close(seg->fd);
    seg->fd = -1;
}

/* Reads len bytes at off of the open segment into dst. */
static int
segment_pread(recovery_t *r, segment_t *seg, uint8_t *dst, size_t len, uint64_t off)
{
    while (len) {
        ssize_t n = pread(seg->fd, dst, len, (off_t)off);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int rc = -errno;
            return report(r->out, rc, "reading %s: %s", seg->path, cn_strerror(rc));
        }
        if (n == 0)
            return report(r->out, CN_ECORRUPT, "segment %s shrank while being read", seg->path);
        dst += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

/* Makes bytes [from, to) of the segment (to <= segment_size) be in the window; they are
 * then at r->buf + (from - seg->base). The window moves forward only, a READ_CHUNK at a
 * time: frames are checked while their bytes are in the CPU cache, and the memory touched
 * stays small however large the segment (a fresh buffer of a whole segment costs a page
 * fault per page, which on some machines costs more than reading the log). */
static int
segment_window(recovery_t *r, segment_t *seg, size_t from, size_t to)
{
    size_t size = (size_t)r->segment_size, keep = 0, fill;
    int rc;

    if (from >= seg->base && to <= seg->base + seg->have)
        return 0;
    if (to - from > r->cap) {
        size_t cap = (to - from + READ_CHUNK - 1) / READ_CHUNK * READ_CHUNK;
        uint8_t *nb = realloc(r->buf, cap);

        if (!nb)
            return report(r->out, -ENOMEM, "no memory for a %zu-byte WAL frame", to - from);
        r->buf = nb;
        r->cap = cap;
    }
    if (from >= seg->base && from < seg->base + seg->have) {
        keep = seg->base + seg->have - from;
        memmove(r->buf, r->buf + (from - seg->base), keep);
    }
    seg->base = from;
    seg->have = keep;
    fill = size - from < r->cap ? size - from : r->cap;
    if ((rc = segment_pread(r, seg, r->buf + keep, fill - keep, from + keep)))
        return rc;
    seg->have = fill;
    return 0;
}

/* Makes the frame at off be in the window, as much of it as its header claims (at most
 * the rest of the segment), and sets *avail to the bytes of the segment from off that are
 * there: decoding it with them decides exactly as with the whole rest of the segment. */
static int
segment_frame(recovery_t *r, segment_t *seg, size_t off, size_t *avail)
{
    size_t size = (size_t)r->segment_size, to = off + CN_WAL_FRAME_HEADER;
    uint32_t claimed;
    int rc;

    if ((rc = segment_window(r, seg, off, to)))
        return rc;
    claimed = cn__get_le32(r->buf + (off - seg->base) + 4);
    if (claimed <= CN_WAL_PAYLOAD_MAX) {
        to = size - off < cn__wal_frame_size(claimed) ? size : off + cn__wal_frame_size(claimed);
        if ((rc = segment_window(r, seg, off, to)))
            return rc;
    }
    *avail = seg->base + seg->have - off;
    return 0;
}

/* Checks that the segment at start is all zeros, reading it through the window. */
static int
segment_zero(recovery_t *r, uint64_t start, int *zero)
{
    size_t size = (size_t)r->segment_size;
    segment_t seg;
    int rc;

    if ((rc = segment_open(r, start, &seg)))
        return rc;
    *zero = 1;
    for (size_t off = 0; off < size; off += seg.have) {
        if ((rc = segment_window(r, &seg, off, off + 1)))
            break;
        if (!all_zero(r->buf, seg.have)) {
            *zero = 0;
            break;
        }
    }
    segment_close(&seg);
    return rc;
}

/* Zeros [off, off + len) of the segment at start and syncs it. */
static int
cut(recovery_t *r, uint64_t start, uint64_t off, uint64_t len)
{
    char path[PATH_MAX];
    int fd, rc;

    if ((rc = cn__wal_segment_path(path, sizeof(path), r->dir, start)))
        return rc;
    if ((fd = open(path, O_RDWR | O_CLOEXEC)) < 0)
        return -errno;
    rc = write_zeros(fd, off, len);
    if (!rc && fdatasync(fd))
        rc = -errno;
    close(fd);
    return rc;
}

/* Segments after one that does not end with a SEAL may only be empty: created ahead of
 * use and never written. Anything else in them is damage. */
static int
check_unwritten(recovery_t *r, const uint64_t *starts, size_t i, size_t n, size_t p,
                int zeroed)
{
    int rc = 0, zero;

    for (size_t j = i + 1; j < n && !rc; j++) {
        if (starts[j] != starts[j - 1] + r->segment_size) {
            rc = report(r->out, CN_ECORRUPT,
                        "WAL segment %016" PRIx64 ".wal is missing (found %016" PRIx64
                        ".wal after %016" PRIx64 ".wal)",
                        starts[j - 1] + r->segment_size, starts[j], starts[j - 1]);
            break;
        }
        if ((rc = segment_zero(r, starts[j], &zero)))
            break;
        if (!zero)
            rc = report(r->out, CN_ECORRUPT,
                        "WAL segment %016" PRIx64 ".wal does not end with a SEAL (%s at LSN "
                        "%" PRIu64 ") but segment %016" PRIx64 ".wal after it holds data",
                        starts[i], zeroed ? "its frames stop" : "corrupt frame",
                        starts[i] + p, starts[j]);
    }
    return rc;
}

/* Reads the segment from p (where its frames stop) to its end, once: sets *end to one past
 * its last non-zero byte (p when there is none) and *later to the offset of the first
 * valid frame after p that is not part of a torn last write (0: none; it stops there).
 * Only the last write may be torn. A valid frame after the tear is part of that write
 * (its pages reached the disk in any order) when its write started at or before the tear
 * and it lies within tail_window bytes of it; any other valid frame means the bad bytes
 * were synced, then damaged, and later writes followed. */
static int
scan_tail(recovery_t *r, segment_t *seg, size_t p, size_t *end, size_t *later)
{
    size_t size = (size_t)r->segment_size, off = p, avail, consumed;
    cn_wal_frame_t f;
    int rc;

    *end = p;
    *later = 0;
    /* off stays 8-byte aligned (frames, windows and the segment are), so the magic of a
     * frame never straddles the end of the window. */
    while (off < size) {
        const uint8_t *w;
        size_t chunk;

        if ((rc = segment_window(r, seg, off, off + 1)))
            return rc;
        w = r->buf + (off - seg->base);
        chunk = seg->base + seg->have - off;
        if (all_zero(w, chunk)) {
            off += chunk;
            continue;
        }
        for (size_t k = chunk; k > 0; k--) {
            if (w[k - 1]) {
                *end = off + k;
                break;
            }
        }
        for (size_t q = off > p ? off : p + 8; q < off + chunk; q += 8) {
            if (q + CN_WAL_FRAME_HEADER > size)
                break;
            if (memcmp(r->buf + (q - seg->base), magic, 4))
                continue;
            /* This may move the window on to q; what is left of the chunk stays in it. */
            if ((rc = segment_frame(r, seg, q, &avail)))
                return rc;
            if (cn__wal_frame_decode(r->buf + (q - seg->base), avail, seg->start + q, &f,
                                     &consumed))
                continue;
            if (f.batch_lsn <= seg->start + p && q - p < r->tail_window)
                continue;
            *later = q;
            return 0;
        }
        off += chunk;
    }
    return 0;
}

/* The frames of the segment at starts[i] stop at offset p (zeroed: with a zeroed header;
 * otherwise a frame that does not decode), and no SEAL. That is the end of the log unless
 * a valid frame follows, in this segment or a later one (damage in the middle). Non-zero
 * bytes from p on are a torn tail, cut so that the log past its end is all zeros again:
 * stale bytes could otherwise read as a frame once new frames are written over part of
 * them. */
static int
finish_tail(recovery_t *r, segment_t *seg, const uint64_t *starts, size_t i, size_t n,
            size_t p, int zeroed)
{
    uint64_t start = starts[i];
    size_t end, q;
    int rc;

    if ((rc = scan_tail(r, seg, p, &end, &q)))
        return rc;
    if (q)
        return report(r->out, CN_ECORRUPT,
                      "WAL damaged in the middle: %s at offset %zu of segment %s (LSN "
                      "%" PRIu64 "), yet a valid frame of a later write follows at offset "
                      "%zu (LSN %" PRIu64 "); acknowledged records would be lost",
                      zeroed ? "a zeroed header" : "a corrupt frame", p, seg->path, start + p,
                      q, start + q);
    if ((rc = check_unwritten(r, starts, i, n, p, zeroed)))
        return rc;
    /* Nothing may be written below an LSN the store has already applied. */
    if (start + p < r->from_lsn)
        return report(r->out, CN_ECORRUPT,
                      "the WAL ends at LSN %" PRIu64 ", below from_lsn %" PRIu64
                      ": frames the store applied are missing",
                      start + p, r->from_lsn);

    r->out->end_lsn = start + p;
    if (end == p)
        return 0; /* clean: zeros from the end of the log to the end of the segment */
    if ((rc = cut(r, start, p, end - p)))
        return report(r->out, rc, "cutting the torn WAL tail at LSN %" PRIu64 ": %s",
                      start + p, cn_strerror(rc));
    r->out->cut_lsn = start + p;
    r->out->cut_bytes = end - p;
    report(r->out, 0,
           "WAL torn tail: cut %zu bytes at LSN %" PRIu64 " in segment %016" PRIx64
           ".wal (%s)",
           end - p, start + p, start,
           zeroed ? "stray bytes after a zeroed header" : "an incomplete or corrupt frame");
    return 0;
}

/* Replays the segment at starts[i]. Sets *sealed when it ends with a SEAL; otherwise the
 * log ends in it and the tail is handled. */
static int
replay_segment(recovery_t *r, const uint64_t *starts, size_t i, size_t n, int *sealed)
{
    uint64_t start = starts[i];
    size_t size = (size_t)r->segment_size, p = 0, avail, consumed;
    segment_t seg;
    cn_wal_frame_t f;
    int rc;

    *sealed = 0;
    if ((rc = segment_open(r, start, &seg)))
        return rc;
    for (;;) {
        /* p <= size - CN_WAL_FRAME_HEADER: every DATA frame ends before the SEAL space. */
        if ((rc = segment_frame(r, &seg, p, &avail)))
            goto out;
        if (cn__wal_frame_decode(r->buf + (p - seg.base), avail, start + p, &f, &consumed))
            break;
        if (f.type == CN_WAL_SEAL) {
            *sealed = 1;
            goto out;
        }
        if (consumed > size - CN_WAL_FRAME_HEADER - p) {
            rc = report(r->out, CN_ECORRUPT,
                        "WAL frame at LSN %" PRIu64 " in segment %016" PRIx64
                        ".wal runs into the space reserved for the SEAL",
                        f.lsn, start);
            goto out;
        }
        if (f.type == CN_WAL_DATA && f.lsn >= r->from_lsn) {
            r->out->frames++;
            if (r->cb && (rc = r->cb(&f, r->arg))) {
                r->out->end_lsn = f.lsn + consumed;
                goto out;
            }
        }
        p += consumed;
    }
    rc = finish_tail(r, &seg, starts, i, n, p,
                     all_zero(r->buf + (p - seg.base), CN_WAL_FRAME_HEADER));
out:
    segment_close(&seg);
    return rc;
}

int
cn__wal_recover(const char *dir, uint64_t segment_size, uint64_t from_lsn,
                uint64_t tail_window, cn_wal_frame_cb cb, void *arg, cn_wal_recovery_t *out)
{
    recovery_t r = {dir, segment_size, from_lsn, cb, arg, out, NULL, 0, tail_window};
    uint64_t *starts = NULL, first_max, rem;
    size_t n = 0, i;
    int rc, sealed = 0;

    memset(out, 0, sizeof(*out));
    if (!valid_segment_size(segment_size))
        return report(out, -EINVAL, "invalid WAL segment size %" PRIu64, segment_size);
    /* The segment boundary at or above from_lsn. */
    rem = from_lsn % segment_size;
    if (rem && from_lsn - rem > UINT64_MAX - segment_size)
        return report(out, -EOVERFLOW, "from_lsn %" PRIu64 " is at the end of the LSN space",
                      from_lsn);
    first_max = rem ? from_lsn - rem + segment_size : from_lsn;
    if ((rc = list_segments(dir, &starts, &n)))
        return report(out, rc, "listing WAL directory %s: %s", dir, cn_strerror(rc));

    /* Skip segments wholly below from_lsn (a start near UINT64_MAX has no end: kept). */
    for (i = 0; i < n; i++) {
        if (starts[i] > UINT64_MAX - segment_size || starts[i] + segment_size > from_lsn)
            break;
    }
    /* The store applied frames up to from_lsn: the segment holding it must be there
     * (checkpoints remove only segments that end at or below it). */
    if (rem && (i == n || starts[i] != from_lsn - rem)) {
        rc = report(out, CN_ECORRUPT,
                    "WAL segment %s/%016" PRIx64 ".wal is missing: it holds LSN %" PRIu64
                    ", the position the store has applied; acknowledged records may be lost",
                    dir, from_lsn - rem, from_lsn);
        goto done;
    }
    if (i == n) {
        out->end_lsn = first_max;
        goto done;
    }
    /* The log never skips a segment, except that it starts at first_max. */
    if (starts[i] > first_max) {
        rc = report(out, CN_ECORRUPT,
                    "WAL segment %016" PRIx64 ".wal is missing (the first segment at or "
                    "above LSN %" PRIu64 " is %016" PRIx64 ".wal)",
                    first_max, from_lsn, starts[i]);
        goto done;
    }
    r.cap = segment_size < READ_CHUNK ? (size_t)segment_size : READ_CHUNK;
    if (!(r.buf = malloc(r.cap))) {
        rc = report(out, -ENOMEM, "no memory to read the WAL");
        goto done;
    }
    for (size_t first = i; i < n; i++) {
        uint64_t start = starts[i];

        if (start % segment_size || start > UINT64_MAX - segment_size) {
            rc = report(out, CN_ECORRUPT,
                        "WAL segment %016" PRIx64 ".wal does not start at a multiple of the "
                        "segment size %" PRIu64,
                        start, segment_size);
            goto done;
        }
        if (i > first && start != starts[i - 1] + segment_size) {
            rc = report(out, CN_ECORRUPT,
                        "WAL segment %016" PRIx64 ".wal is missing (found %016" PRIx64
                        ".wal after %016" PRIx64 ".wal)",
                        starts[i - 1] + segment_size, start, starts[i - 1]);
            goto done;
        }
        if ((rc = replay_segment(&r, starts, i, n, &sealed)))
            goto done;
        if (!sealed)
            break; /* the log ends in this segment: end_lsn is set */
        /* A SEAL moves the log on to the next segment, which may not exist yet. Considered
         * segments end above from_lsn, so this never goes below it. */
        out->end_lsn = start + segment_size;
    }

done:
    free(r.buf);
    free(starts);
    return rc;
}

int
cn__wal_remove_below(const char *dir, uint64_t segment_size, uint64_t lsn, size_t *removed)
{
    char path[PATH_MAX];
    uint64_t *starts = NULL;
    size_t n = 0;
    int rc;

    *removed = 0;
    if (!valid_segment_size(segment_size))
        return -EINVAL;
    if ((rc = list_segments(dir, &starts, &n)))
        return rc;
    /* Oldest first, so a crash part way leaves a contiguous log. */
    for (size_t i = 0; i < n && !rc; i++) {
        if (starts[i] > UINT64_MAX - segment_size || starts[i] + segment_size > lsn)
            break;
        if ((rc = cn__wal_segment_path(path, sizeof(path), dir, starts[i])))
            break;
        if (unlink(path)) {
            if (errno != ENOENT)
                rc = -errno;
            continue;
        }
        (*removed)++;
    }
    if (*removed) {
        int src = sync_dir(dir);

        if (!rc)
            rc = src;
    }
    free(starts);
    return rc;
}

int
cn__wal_restore_point(const char *dir, uint64_t segment_size, uint64_t lsn)
{
    uint64_t start;
    size_t gap;
    uint8_t *frame;
    int fd, rc;

    if (!valid_segment_size(segment_size) || lsn % 8)
        return -EINVAL;
    if ((rc = cn__wal_mkdir(dir)))
        return rc;
    start = lsn - lsn % segment_size;
    if (lsn == start)
        return 0; /* a boundary: recovery starts a new log there from nothing */
    gap = (size_t)(lsn - start);
    if (gap < CN_WAL_FRAME_HEADER || gap > segment_size - CN_WAL_FRAME_HEADER ||
        gap - CN_WAL_FRAME_HEADER > CN_WAL_PAYLOAD_MAX)
        return -EINVAL;
    {
        /* Never over a log: the segment must be new. */
        char path[PATH_MAX];
        struct stat st;
        if ((rc = cn__wal_segment_path(path, sizeof(path), dir, start)))
            return rc;
        if (stat(path, &st) == 0)
            return -EEXIST;
    }
    if ((fd = cn__wal_segment_open(dir, start, segment_size)) < 0)
        return fd;
    if (!(frame = malloc(gap))) {
        close(fd);
        return -ENOMEM;
    }
    /* One PAD frame, a write of its own, from the segment's start up to lsn. */
    cn__wal_frame_encode_pad(frame, start, start, gap);
    rc = pwrite(fd, frame, gap, 0) == (ssize_t)gap ? 0 : errno ? -errno : -EIO;
    if (rc == 0 && fdatasync(fd))
        rc = -errno;
    free(frame);
    close(fd);
    return rc;
}
