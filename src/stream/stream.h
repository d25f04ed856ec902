/*
 * stream/stream.h - event streams (cnerium/stream.h): what a request buffers with
 * cn_stream_append, and the names the store and the encoder check.
 *
 * Appends are buffered in the request like events (realtime/event.h) and travel inside
 * its record (store/format.h: CN_PERSIST_PUT_STREAMS); the persister checks the expected
 * versions and writes them to LMDB in the record's transaction (store/store.h).
 */
#ifndef CN_STREAM_STREAM_H
#define CN_STREAM_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "cnerium/stream.h"
#include "store/format.h"

typedef struct cn_append {
    char *stream; /* owned */
    char *type;   /* owned */
    char *data;   /* owned JSON text */
    size_t data_len;
    int64_t expected;
    char *rooms[CN_APPEND_ROOMS_MAX]; /* owned */
    unsigned nrooms;
    struct cn_append *next;
} cn_append_t;

/* Frees a list. Accepts NULL. */
void cn__appends_free(cn_append_t *list);

/* 1 when the n bytes at s are a stream id: 1..CN_STREAM_ID_MAX bytes 0x20..0x7e. */
int cn__stream_id_valid(const char *s, size_t n);

/* 1 when the n bytes at s are an event type: 1..CN_STREAM_TYPE_MAX of [A-Za-z0-9._-]. */
int cn__stream_type_valid(const char *s, size_t n);

/* 1 when e is an expected version cnerium/stream.h defines. */
int cn__stream_expected_valid(int64_t e);

/* 1 when the append's expectation holds for a stream at version current (0: absent). */
int cn__stream_expected_holds(int64_t expected, uint64_t current);

/* A stream's current version (0: absent) in *version, as a store sees it; 0 or an error. */
typedef int (*cn_stream_version_cb)(const char *stream, size_t len, uint64_t *version,
                                    void *arg);

/* Decodes a whole encoded list of appends and checks every expected version against
 * the store (version) and against the list's own earlier appends to the same stream.
 * Both stores decide with it. Returns 0, CN_ECONFLICT, CN_ECORRUPT, or version's
 * error. Writes nothing. */
int cn__appends_check(const uint8_t *list, size_t len, cn_stream_version_cb version, void *arg);

#endif
