/*
 * fuzz_wal_recovery - WAL recovery (store/wal.c cn__wal_recover) over whole segment
 * files, with the persister's decoding of every frame it replays (store/format.c).
 *
 * Input: byte 0 holds options, the rest is the log: one segment file, or two (the bytes
 * split in half) when bit 1 is set. Each file is padded with zeros to the segment size.
 * With bit 0 set, the chain of frames at the start of each segment is re-encoded with
 * correct LSNs and CRCs (and each DATA payload's record CRC fixed), so the fuzzer's
 * bytes reach the payload decoders; bits 2-3 pick the tail window.
 *
 * Properties: recovery returns 0 or CN_ECORRUPT, never an I/O error; CN_ECORRUPT
 * modifies nothing; after a success the segment holding the end of the log is all
 * zeros from end_lsn on, nothing before it changed, and recovering again finds the same
 * end and frames with nothing to cut.
 */
#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cnerium/error.h"
#include "fuzz.h"
#include "store/format.h"
#include "store/wal.h"
#include "support/bytes.h"
#include "support/crc32c.h"

#define MAX_SEGMENTS 2

static char dir[256];

static void
remove_dir(void)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char path[512];

    if (!d)
        return;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static void
make_dir(void)
{
    const char *base = getenv("TMPDIR");

    if (access("/dev/shm", W_OK) == 0)
        base = "/dev/shm"; /* recovery fdatasyncs what it cuts: keep that off the disk */
    else if (!base || !*base)
        base = "/tmp";
    snprintf(dir, sizeof(dir), "%s/cnerium-fuzz-wal-XXXXXX", base);
    FUZZ_CHECK(mkdtemp(dir));
    atexit(remove_dir);
}

/* Recomputes the CRC of the record inside a WAL DATA payload, when its lengths fit. */
static void
fix_record_crc(uint8_t *pl, size_t len)
{
    uint8_t *put = pl + CN_PERSIST_WAL_HEADER;
    size_t kl, rl;

    if (len < CN_PERSIST_WAL_HEADER + CN_PERSIST_PUT_HEADER)
        return;
    kl = cn__get_le16(put + 2);
    rl = cn__get_le32(put + 4);
    if (rl >= 4 && CN_PERSIST_WAL_HEADER + CN_PERSIST_PUT_HEADER + kl + rl <= len) {
        uint8_t *rb = put + CN_PERSIST_PUT_HEADER + kl;
        cn__put_le32(rb + rl - 4, cn__crc32c(0, rb, rl - 4));
    }
}

/* Re-encodes the frames that start the segment: every header with the magic becomes a
 * valid frame at its position; the first one without it ends the chain. */
static void
fix_frames(uint8_t *seg, size_t size, uint64_t start)
{
    size_t off = 0;

    while (off + 2 * CN_WAL_FRAME_HEADER <= size && !memcmp(seg + off, "CNWF", 4)) {
        size_t room = size - off - 2 * CN_WAL_FRAME_HEADER; /* the SEAL space kept free */
        size_t len = cn__get_le32(seg + off + 4);
        uint8_t type = seg[off + 20] == CN_WAL_SEAL ? CN_WAL_SEAL : CN_WAL_DATA;

        if (type == CN_WAL_SEAL)
            len = 0;
        if (len > room)
            len = room;
        if (type == CN_WAL_DATA)
            fix_record_crc(seg + off + CN_WAL_FRAME_HEADER, len);
        cn__wal_frame_encode(seg + off, start + off, type, seg + off + CN_WAL_FRAME_HEADER, len);
        if (type == CN_WAL_SEAL)
            break;
        off += cn__wal_frame_size(len);
    }
}

typedef struct replay {
    uint64_t frames;
    uint64_t log_size;
} replay_t;

/* What the persister does with a replayed frame, minus LMDB. */
static int
on_frame(const cn_wal_frame_t *f, void *arg)
{
    replay_t *r = arg;
    cn_wal_payload_t h;
    cn_persist_record_t pr;
    cn_record_t rec;

    FUZZ_CHECK(f->type == CN_WAL_DATA);
    FUZZ_CHECK(f->lsn % 8 == 0 && f->lsn < r->log_size && f->len < r->log_size);
    r->frames++;
    if (cn__format_wal_payload_decode(f->payload, f->len, &h) ||
        cn__persist_record_decode(h.put, h.len, &pr))
        return 0;
    if (pr.rec)
        (void)cn__record_decode(pr.rec, pr.reclen, &rec);
    if (pr.events) {
        const uint8_t *cur, *end = pr.events + pr.events_len;
        cn_event_view_t ev;
        long count = cn__events_begin(pr.events, pr.events_len, &cur);
        for (long i = 0; i < count && !cn__events_next(&cur, end, &ev); i++)
            ;
    }
    return 0;
}

static void
segment_path(char *out, size_t cap, uint64_t start)
{
    FUZZ_CHECK(cn__wal_segment_path(out, cap, dir, start) == 0);
}

static void
write_file(const char *path, const uint8_t *bytes, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

    FUZZ_CHECK(fd >= 0);
    FUZZ_CHECK(write(fd, bytes, len) == (ssize_t)len);
    close(fd);
}

static void
read_file(const char *path, uint8_t *bytes, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    FUZZ_CHECK(fd >= 0);
    FUZZ_CHECK(read(fd, bytes, len) == (ssize_t)len);
    close(fd);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint64_t windows[] = {0, 64, 512, 65536};
    char path[512];
    size_t nseg, part, seg_size, total;
    uint64_t window;
    uint8_t *log, *after;
    cn_wal_recovery_t rep, rep2;
    replay_t rp = {0}, rp2 = {0};
    int rc;

    if (size < 1)
        return 0;
    if (!dir[0])
        make_dir();
    nseg = (data[0] & 2) ? 2 : 1;
    window = windows[(data[0] >> 2) & 3];
    part = (size - 1 + nseg - 1) / nseg;
    /* Room for the bytes, rounded to 8, and a SEAL. */
    seg_size = ((part + 7) & ~(size_t)7) + 2 * CN_WAL_FRAME_HEADER;
    total = nseg * seg_size;
    log = calloc(1, total);
    after = malloc(total);
    FUZZ_CHECK(log && after);
    for (size_t i = 0; i < nseg; i++) {
        size_t from = i * part, n = from < size - 1 ? size - 1 - from : 0;
        memcpy(log + i * seg_size, data + 1 + from, n < part ? n : part);
        if (data[0] & 1)
            fix_frames(log + i * seg_size, seg_size, i * seg_size);
    }
    for (size_t i = 0; i < MAX_SEGMENTS; i++) {
        segment_path(path, sizeof(path), i * seg_size);
        if (i < nseg)
            write_file(path, log + i * seg_size, seg_size);
        else
            unlink(path);
    }

    rp.log_size = total;
    rc = cn__wal_recover(dir, seg_size, 0, window, on_frame, &rp, &rep);
    for (size_t i = 0; i < nseg; i++) {
        segment_path(path, sizeof(path), i * seg_size);
        read_file(path, after + i * seg_size, seg_size);
    }
    if (rc) {
        if (rc != CN_ECORRUPT)
            fprintf(stderr, "recovery failed: %s: %s\n", cn_strerror(rc), rep.message);
        FUZZ_CHECK(rc == CN_ECORRUPT);
        FUZZ_CHECK(rep.message[0]);
        FUZZ_CHECK(!memcmp(after, log, total));
        goto out;
    }
    FUZZ_CHECK(rep.frames == rp.frames);
    FUZZ_CHECK(rep.end_lsn <= total && rep.end_lsn % 8 == 0);
    FUZZ_CHECK(!memcmp(after, log, rep.end_lsn));
    if (rep.end_lsn < total) {
        size_t seg_end = (rep.end_lsn / seg_size + 1) * seg_size;
        for (size_t i = rep.end_lsn; i < seg_end; i++)
            FUZZ_CHECK(after[i] == 0);
    }
    FUZZ_CHECK((rep.cut_bytes != 0) == (memcmp(after, log, total) != 0));

    /* Again: the log is clean now, and the same. */
    rp2.log_size = total;
    memcpy(log, after, total);
    rc = cn__wal_recover(dir, seg_size, 0, window, on_frame, &rp2, &rep2);
    FUZZ_CHECK(rc == 0);
    FUZZ_CHECK(rep2.end_lsn == rep.end_lsn && rep2.frames == rep.frames);
    FUZZ_CHECK(rp2.frames == rp.frames && rep2.cut_bytes == 0);
    for (size_t i = 0; i < nseg; i++) {
        segment_path(path, sizeof(path), i * seg_size);
        read_file(path, after + i * seg_size, seg_size);
    }
    FUZZ_CHECK(!memcmp(after, log, total));
out:
    free(log);
    free(after);
    return 0;
}
