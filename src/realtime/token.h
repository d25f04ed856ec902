/*
 * realtime/token.h - the access tokens of the WebSocket endpoint: JSON Web Tokens (RFC
 * 7519) signed with HMAC-SHA256 (alg "HS256", RFC 7518 3.2) under the secret given with
 * --realtime-secret.
 *
 * A pure function over bytes: no global state, no allocation that outlives the call, no
 * abort on any input (it is a fuzz target). Runs in the broadcaster, for every upgrade.
 *
 * What a token must be, checked in this order:
 *   - at most CN_TOKEN_MAX bytes: three base64url parts (RFC 4648 5, no padding, unused
 *     bits zero) joined by '.';
 *   - header: a JSON object whose "alg" is exactly "HS256" ("none" and every other
 *     algorithm are refused) and without "crit";
 *   - signature: 32 bytes, equal (compared in constant time) to HMAC-SHA256(secret,
 *     header "." payload);
 *   - payload: a JSON object with "exp" (a number, seconds since 1970) later than now,
 *     "nbf" (optional) not later than now, "rooms" an array of room names (1..128
 *     printable ASCII bytes without '"' and '\\'; "*" for every room, at most
 *     CN_TOKEN_ROOMS_MAX entries), and "all" (optional, a boolean): true lets the client
 *     receive the events sent to every client.
 */
#ifndef CN_REALTIME_TOKEN_H
#define CN_REALTIME_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#include "realtime/event.h"

#define CN_TOKEN_MAX 4096
#define CN_TOKEN_ROOMS_MAX 32

/* What a valid token grants. */
typedef struct cn_token_claims {
    int64_t exp;  /* seconds since 1970; the client is served until then */
    int all;      /* events sent to every client */
    int any_room; /* "*" in rooms */
    unsigned nrooms;
    char rooms[CN_TOKEN_ROOMS_MAX][CN_EVENT_ROOM_MAX + 1];
} cn_token_claims_t;

/* Why a token was refused (results of cn__token_verify; only this module returns them). */
enum {
    CN_TOKEN_EFORMAT = -1,  /* not three strict base64url parts of JSON objects */
    CN_TOKEN_ETOOBIG = -2,  /* longer than CN_TOKEN_MAX */
    CN_TOKEN_EALG = -3,     /* alg is not "HS256", or crit is present */
    CN_TOKEN_ESIG = -4,     /* the signature does not match */
    CN_TOKEN_EEXPIRED = -5, /* exp is not later than now, or nbf is later */
    CN_TOKEN_ECLAIMS = -6,  /* exp, rooms or all missing or of the wrong form */
};

/* Verifies token (len bytes, need not be NUL-terminated) under secret (secret_len > 0
 * bytes) at time now (seconds since 1970). Returns 0 and *out, or one of the
 * CN_TOKEN_E* codes (*out untouched). */
int cn__token_verify(const char *token, size_t len, const uint8_t *secret, size_t secret_len,
                     int64_t now, cn_token_claims_t *out);

/* A static description of a cn__token_verify result. Never NULL. */
const char *cn__token_strerror(int rc);

/* 1 when claims allow room (NULL: the events sent to every client), else 0. */
int cn__token_allows(const cn_token_claims_t *claims, const char *room);

#endif
