/*
 * reliability/fingerprint.c - SHA-256 and the request fingerprint (wraps libcrypto; no
 * OpenSSL type leaves this file).
 *
 * OpenSSL 3 looks an algorithm up (a locked fetch) every time EVP_sha256() is used
 * implicitly, and every EVP_MD_CTX is a heap object: the digest is fetched once, and
 * each thread keeps one context (freed when the thread ends).
 */
#include <errno.h>
#include <pthread.h>

#include <openssl/evp.h>

#include "reliability/fingerprint.h"
#include "support/bytes.h"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static EVP_MD *sha256_md;
static pthread_key_t ctx_key;

static void
free_ctx(void *ctx)
{
    EVP_MD_CTX_free(ctx);
}

static void
init(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (pthread_key_create(&ctx_key, free_ctx))
        sha256_md = NULL; /* every digest then fails with -EIO, loudly */
}

/* This thread's context, ready for a SHA-256 digest, or NULL. */
static EVP_MD_CTX *
sha256_ctx(void)
{
    EVP_MD_CTX *ctx;

    pthread_once(&once, init);
    if (!sha256_md)
        return NULL;
    ctx = pthread_getspecific(ctx_key);
    if (!ctx) {
        if (!(ctx = EVP_MD_CTX_new()))
            return NULL;
        if (pthread_setspecific(ctx_key, ctx)) {
            EVP_MD_CTX_free(ctx);
            return NULL;
        }
    }
    return EVP_DigestInit_ex2(ctx, sha256_md, NULL) ? ctx : NULL;
}

int
cn__fingerprint(const char *query, size_t qlen, const void *body, size_t blen,
                uint8_t out[CN_SHA256_LEN])
{
    return cn__fingerprint_target(NULL, 0, query, qlen, body, blen, out);
}

int
cn__fingerprint_target(const char *target, size_t tlen, const char *query, size_t qlen,
                       const void *body, size_t blen, uint8_t out[CN_SHA256_LEN])
{
    EVP_MD_CTX *ctx = sha256_ctx();
    unsigned char len[8];
    unsigned int outlen = 0;
    int ok = 1;

    if (!ctx)
        return -EIO;
    if (tlen) {
        cn__put_be64(len, tlen);
        ok = EVP_DigestUpdate(ctx, len, 8) && EVP_DigestUpdate(ctx, target, tlen);
    }
    cn__put_be64(len, qlen);
    ok = ok && EVP_DigestUpdate(ctx, len, 8) && EVP_DigestUpdate(ctx, query, qlen);
    cn__put_be64(len, blen);
    ok = ok && EVP_DigestUpdate(ctx, len, 8) && EVP_DigestUpdate(ctx, body, blen) &&
         EVP_DigestFinal_ex(ctx, out, &outlen) && outlen == CN_SHA256_LEN;
    return ok ? 0 : -EIO;
}

int
cn__sha256(const void *data, size_t len, uint8_t out[CN_SHA256_LEN])
{
    EVP_MD_CTX *ctx = sha256_ctx();
    unsigned int outlen = 0;

    if (!ctx || !EVP_DigestUpdate(ctx, data, len) || !EVP_DigestFinal_ex(ctx, out, &outlen) ||
        outlen != CN_SHA256_LEN)
        return -EIO;
    return 0;
}

void
cn__hex(const uint8_t *bytes, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * len] = '\0';
}
