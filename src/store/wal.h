/*
 * store/wal.h - the write-ahead log: preallocated segment files of CRC-checked frames.
 *
 * Directory: <data_dir>/wal/. A segment file is named by the LSN of its first byte,
 * "%016" PRIx64 ".wal", and is exactly `segment_size` bytes, zero-filled when created
 * (overwriting written blocks syncs faster than appending: no size change per sync).
 * An LSN is a byte position in the whole log: segment start + offset in the segment.
 * Segment n+1 starts at segment n's start + segment_size.
 *
 * Frame (integers little-endian), starting at an 8-byte aligned offset:
 *   0   4  magic "CNWF"
 *   4   4  payload length
 *   8   8  LSN of this frame (its own position: stale or misplaced bytes never match)
 *   16  4  CRC-32C of the frame header with this field zeroed, then the payload
 *   20  1  type: CN_WAL_DATA, CN_WAL_SEAL or CN_WAL_PAD
 *   21  3  batch offset: (LSN - LSN of the first frame of its write) / 8, 24 bits; 0 for
 *          a frame written alone and for every SEAL
 *   24  .. payload, then zero padding to a multiple of 8
 *
 * The batch offset is what lets recovery tell a torn last write from damage in the
 * middle: after a crash only the last write may be torn, and every valid frame after a
 * tear must then belong to that same write (its batch starts at or before the tear).
 * A valid frame of a later write after a bad frame means the bad frame was synced and
 * then damaged: corruption, not a torn tail.
 *
 * A PAD frame (payload all zeros, covered by the CRC like any payload) fills the rest of
 * the last block of a write that must end on a block boundary (O_DIRECT writes: each
 * batch starts at a fresh CN_WAL_BLOCK, so no write ever touches a block holding frames
 * of an earlier write). It carries its write's batch offset and is skipped by replay.
 *
 * A segment ends with a SEAL frame (no payload) when the writer moves on to the next
 * one; the last CN_WAL_FRAME_HEADER bytes of every segment are reserved for it. After
 * the last valid frame of the log there are zeros (or a torn frame, after a crash).
 *
 * Not thread-safe; one writer (the persister) per directory.
 */
#ifndef CN_STORE_WAL_H
#define CN_STORE_WAL_H

#include <stddef.h>
#include <stdint.h>

#define CN_WAL_FRAME_HEADER 24
#define CN_WAL_DATA 1
#define CN_WAL_SEAL 2
#define CN_WAL_PAD 3
/* The block that O_DIRECT writes are aligned to (offsets, lengths, buffers). */
#define CN_WAL_BLOCK 4096u
#define CN_WAL_PAYLOAD_MAX (64u * 1024 * 1024)
/* A frame sits at most this many bytes after the start of its write. */
#define CN_WAL_BATCH_SPAN_MAX ((((uint64_t)1 << 24) - 1) * 8)

/* Bytes a frame with a payload of len bytes takes (header + payload + padding). */
size_t cn__wal_frame_size(size_t len);

/* Writes one frame at lsn into out (cn__wal_frame_size(len) bytes), as a write of its
 * own (batch offset 0). len must be at most CN_WAL_PAYLOAD_MAX and a SEAL has no payload
 * (both asserted). */
void cn__wal_frame_encode(uint8_t *out, uint64_t lsn, uint8_t type, const void *payload,
                          size_t len);

/* The same for a DATA frame that is part of a write starting at batch_lsn (asserted:
 * batch_lsn <= lsn, lsn - batch_lsn a multiple of 8 and at most CN_WAL_BATCH_SPAN_MAX). */
void cn__wal_frame_encode_batch(uint8_t *out, uint64_t lsn, uint64_t batch_lsn,
                                const void *payload, size_t len);

/* Writes a PAD frame of size bytes (at least CN_WAL_FRAME_HEADER, a multiple of 8) at lsn
 * into out, as part of the write starting at batch_lsn (same rules as above). */
void cn__wal_frame_encode_pad(uint8_t *out, uint64_t lsn, uint64_t batch_lsn, size_t size);

typedef struct cn_wal_frame {
    uint64_t lsn;
    uint64_t batch_lsn; /* where the write that carried this frame started */
    uint8_t type;
    const uint8_t *payload; /* borrowed from the buffer given to decode */
    uint32_t len;
} cn_wal_frame_t;

/* Decodes the frame at the start of buf (avail bytes) that must sit at expect_lsn.
 * Returns 0 with *f and *consumed (its frame size); CN_ENOTFOUND when the header is all
 * zeros (the end of the written log); CN_ECORRUPT for anything else that is not a valid
 * frame at expect_lsn (bad magic, CRC, LSN, type, non-zero padding bytes or PAD payload,
 * a batch offset reaching below LSN 0, a SEAL with a payload or a batch offset, a length
 * over CN_WAL_PAYLOAD_MAX, or truncated by avail, including
 * avail < CN_WAL_FRAME_HEADER). *f and *consumed are written only on success. */
int cn__wal_frame_decode(const uint8_t *buf, size_t avail, uint64_t expect_lsn,
                         cn_wal_frame_t *f, size_t *consumed);

/* Writes the path of the segment starting at start into out. Returns 0, or -ENAMETOOLONG
 * when it does not fit in cap bytes. */
int cn__wal_segment_path(char *out, size_t cap, const char *dir, uint64_t start);

/* Creates dir (and missing parents) if missing, fsyncing the parent of each directory it
 * creates. Returns 0 or a negative errno (-ENOTDIR when a file is in the way). */
int cn__wal_mkdir(const char *dir);

/* Creates the segment starting at start: written with zeros to segment_size bytes,
 * fsync'd, and the directory fsync'd. It is built under "<name>.tmp" and renamed into
 * place, so a crash never leaves a short segment under a segment name. An existing file
 * of the right size is kept as it is (the directory is fsync'd again); one of another
 * size is CN_ECORRUPT and left alone. start must be a multiple of segment_size, and
 * segment_size a multiple of 8 of at least 2 * CN_WAL_FRAME_HEADER (-EINVAL otherwise;
 * the same rule holds for every segment_size below). dir must exist. Returns an fd open
 * for reading and writing (O_CLOEXEC), or a negative errno. */
int cn__wal_segment_open(const char *dir, uint64_t start, uint64_t segment_size);

typedef int (*cn_wal_frame_cb)(const cn_wal_frame_t *f, void *arg);

typedef struct cn_wal_recovery {
    uint64_t end_lsn;   /* where the next frame goes */
    uint64_t frames;    /* DATA frames passed to the callback */
    uint64_t cut_bytes; /* torn or corrupt bytes cut from the tail (0 when clean) */
    uint64_t cut_lsn;   /* where the cut started, when cut_bytes > 0 */
    char message[512];  /* what happened, for the log (empty when clean) */
} cn_wal_recovery_t;

/* Replays the log: calls cb(frame, arg) for every DATA frame with lsn >= from_lsn, in
 * order (PAD frames are validated and skipped), across all segments in dir (segments wholly below from_lsn are skipped; frames
 * below from_lsn in the first segment read are validated but not passed). f->payload is
 * valid only during the call. cb may be NULL (validate and count only). dir must exist.
 * Files not named like segments (temp files included) are ignored.
 *
 * The end of the log is where the frames of the last segment stop: a zeroed header, or a
 * torn or corrupt frame. Only the last write may be torn: a crash can persist that
 * write's pages in any order, so valid frames after a tear are part of the torn tail when
 * they belong to the same write (their batch starts at or before the tear) and lie within
 * tail_window bytes of it (the most the writer puts in one write, its batch limit). Any
 * other valid frame (right magic, CRC, and LSN equal to its position) at an 8-byte aligned
 * offset after the tear is damage in the middle, not an end: a write that was synced and
 * then damaged, with later writes after it. Otherwise every non-zero byte after the end (a
 * torn frame, or stray bytes after a zeroed header) is a torn tail: it is cut (zeroed and
 * fdatasync'd), reported in out (cut_lsn, cut_bytes, message), never passed to cb, so the
 * segment past end_lsn is all zeros afterwards. Segments after a segment without a SEAL
 * are allowed only when entirely zero (created but never written); they are left as they
 * are and the log ends in the unsealed segment.
 *
 * Damage in the middle of the log returns CN_ECORRUPT with out->message saying where,
 * having applied only what came before it, and modifies nothing: a corrupt frame followed
 * by a valid frame, a non-last segment that does not end with a SEAL (followed by a
 * segment that is not all zeros), a missing segment in the sequence (the log may only
 * start at a segment boundary at or above from_lsn, never further up), a missing segment
 * that holds from_lsn when from_lsn > 0 is not a segment boundary (the store applied
 * frames from it, so it must still be there), a segment of the
 * wrong size or at a position that is not a multiple of segment_size, a DATA frame that
 * runs into the space reserved for the SEAL, or a log that ends below from_lsn (frames
 * the store applied are missing; writing there would put new frames below them).
 *
 * cb returning non-zero stops the replay with that value (end_lsn is then the end of that
 * frame, which frames counts). With no segment at or above from_lsn (and from_lsn 0 or a
 * segment boundary), end_lsn is from_lsn rounded up to a segment boundary (a new log
 * starts at 0), so nothing is ever written
 * below an LSN the store has already applied. A SEAL ends its segment: end_lsn moves on to
 * the next segment's start. Returns 0 or an error (a negative errno for I/O failures,
 * with out->message set). */
int cn__wal_recover(const char *dir, uint64_t segment_size, uint64_t from_lsn,
                    uint64_t tail_window, cn_wal_frame_cb cb, void *arg,
                    cn_wal_recovery_t *out);

/* Makes dir a log that ends at lsn (8-aligned) with nothing in it to replay: for a copy
 * of a store that has applied everything below lsn and no log of its own (a backup).
 * The segment holding lsn, unless lsn is a segment boundary, is created with one PAD
 * frame from its start up to lsn; recovery then validates it, replays nothing and the
 * log goes on at lsn. Returns 0, -EEXIST when dir holds that segment already (never
 * written over), or another error. */
int cn__wal_restore_point(const char *dir, uint64_t segment_size, uint64_t lsn);

/* Deletes segments that end at or below lsn (every frame in them is applied and
 * checkpointed), oldest first, then fsyncs dir. Files not named like segments are left
 * alone. Sets *removed (also on failure: how many went). Returns 0 or a negative errno. */
int cn__wal_remove_below(const char *dir, uint64_t segment_size, uint64_t lsn,
                         size_t *removed);

#endif
