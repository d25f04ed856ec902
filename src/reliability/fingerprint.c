/*
 * reliability/fingerprint.c - SHA-256 and the request fingerprint (wraps libcrypto; no
 * OpenSSL type leaves this file).
 */
#include <errno.h>

#include <openssl/evp.h>

#include "reliability/fingerprint.h"

static void
be64(uint64_t v, unsigned char out[8])
{
    for (int i = 7; i >= 0; i--) {
        out[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

int
cn__fingerprint(const char *query, size_t qlen, const void *body, size_t blen,
                uint8_t out[CN_SHA256_LEN])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char len[8];
    unsigned int outlen = 0;
    int ok;

    if (!ctx)
        return -ENOMEM;
    be64(qlen, len);
    ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) && EVP_DigestUpdate(ctx, len, 8) &&
         EVP_DigestUpdate(ctx, query, qlen);
    be64(blen, len);
    ok = ok && EVP_DigestUpdate(ctx, len, 8) && EVP_DigestUpdate(ctx, body, blen) &&
         EVP_DigestFinal_ex(ctx, out, &outlen) && outlen == CN_SHA256_LEN;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : -EIO;
}

int
cn__sha256(const void *data, size_t len, uint8_t out[CN_SHA256_LEN])
{
    unsigned int outlen = 0;

    if (!EVP_Digest(data, len, out, &outlen, EVP_sha256(), NULL) || outlen != CN_SHA256_LEN)
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
