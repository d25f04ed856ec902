/*
 * tests/unit/test_key.c - cn__key_parse: the Idempotency-Key header value, bare or as a
 * structured-field string, 1..255 bytes of printable ASCII.
 */
#include <string.h>

#include "cnerium/error.h"
#include "reliability/key.h"
#include "unit.h"

#define SENTINEL 0xA5

/* Parses the len bytes of value; on success checks the key equals want. */
static void
expect_key(const char *value, size_t len, const char *want)
{
    char out[CN_KEY_MAX + 1];
    size_t outlen = 9999;
    const char *why = NULL;
    int rc = cn__key_parse(value, len, out, &outlen, &why);

    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(outlen, strlen(want));
    CU_ASSERT_EQUAL(out[outlen], '\0');
    CU_ASSERT_EQUAL(memcmp(out, want, strlen(want) + 1), 0);
}

static void
expect_ok(const char *value, const char *want)
{
    expect_key(value, strlen(value), want);
}

/* Expects a rejection: CN_EINVAL_KEY, a non-empty reason, out and outlen untouched. */
static void
expect_reject_n(const char *value, size_t len)
{
    unsigned char out[CN_KEY_MAX + 1], pristine[CN_KEY_MAX + 1];
    size_t outlen = 4242;
    const char *why = NULL;
    int rc;

    memset(out, SENTINEL, sizeof(out));
    memset(pristine, SENTINEL, sizeof(pristine));
    rc = cn__key_parse(value, len, (char *)out, &outlen, &why);
    CU_ASSERT_EQUAL(rc, CN_EINVAL_KEY);
    CU_ASSERT_PTR_NOT_NULL_FATAL(why);
    CU_ASSERT(why[0] != '\0');
    CU_ASSERT_EQUAL(outlen, 4242);
    CU_ASSERT_EQUAL(memcmp(out, pristine, sizeof(out)), 0);
}

static void
expect_reject(const char *value)
{
    expect_reject_n(value, strlen(value));
}

static void
test_bare_token(void)
{
    expect_ok("order-123", "order-123");
    expect_ok("a", "a");
    /* Every printable ASCII byte is allowed in a bare key except the ones that would
     * make it look quoted; a few representative ones. */
    expect_ok("A-z_0.9~:/+=", "A-z_0.9~:/+=");
}

static void
test_quoted_same_key(void)
{
    char a[CN_KEY_MAX + 1], b[CN_KEY_MAX + 1];
    size_t alen = 0, blen = 0;
    const char *why = NULL;

    expect_ok("\"order-123\"", "order-123");
    CU_ASSERT_EQUAL_FATAL(cn__key_parse("order-123", 9, a, &alen, &why), 0);
    CU_ASSERT_EQUAL_FATAL(cn__key_parse("\"order-123\"", 11, b, &blen, &why), 0);
    CU_ASSERT_EQUAL(alen, blen);
    CU_ASSERT_STRING_EQUAL(a, b);
}

static void
test_quoted_escapes(void)
{
    expect_ok("\"a\\\"b\"", "a\"b");
    expect_ok("\"a\\\\b\"", "a\\b");
    expect_ok("\"\\\\\\\"\"", "\\\"");
    /* A quoted key may contain a space: it is printable ASCII. */
    expect_ok("\"order 123\"", "order 123");
}

static void
test_surrounding_whitespace(void)
{
    expect_ok("  order-123", "order-123");
    expect_ok("order-123 \t ", "order-123");
    expect_ok("\t order-123\t", "order-123");
    expect_ok(" \t\"order-123\"\t ", "order-123");
}

static void
test_len_not_nul(void)
{
    /* Only len bytes are read: the value need not be NUL-terminated there. */
    expect_key("order-123XYZ", 9, "order-123");
    expect_key("\"k\"junk", 3, "k");
}

static void
test_empty_rejected(void)
{
    expect_reject("");
    expect_reject("   ");
    expect_reject("\t \t");
    expect_reject("\"\"");
    expect_reject("  \"\"  ");
}

static void
test_length_limits(void)
{
    char v[600];

    /* Bare: 255 accepted, 256 rejected. */
    memset(v, 'k', CN_KEY_MAX);
    v[CN_KEY_MAX] = '\0';
    expect_ok(v, v);
    memset(v, 'k', CN_KEY_MAX + 1);
    v[CN_KEY_MAX + 1] = '\0';
    expect_reject(v);

    /* Quoted, measured after unquoting: 255 plain bytes (257 on the wire). */
    {
        char want[CN_KEY_MAX + 1];
        memset(want, 'q', CN_KEY_MAX);
        want[CN_KEY_MAX] = '\0';
        snprintf(v, sizeof(v), "\"%s\"", want);
        expect_ok(v, want);
        snprintf(v, sizeof(v), "\"%sq\"", want);
        expect_reject(v);
    }

    /* Quoted with escapes: 250 + 5 escaped backslashes = 255 bytes after unquoting, 262
     * on the wire; accepted. One more escape = 256: rejected. */
    {
        char want[CN_KEY_MAX + 1];
        size_t o = 0, w = 0;

        v[o++] = '"';
        for (int i = 0; i < 250; i++)
            v[o++] = want[w++] = 'e';
        for (int i = 0; i < 5; i++) {
            v[o++] = '\\';
            v[o++] = '\\';
            want[w++] = '\\';
        }
        v[o++] = '"';
        v[o] = '\0';
        want[w] = '\0';
        CU_ASSERT_EQUAL(w, CN_KEY_MAX);
        expect_ok(v, want);

        o--; /* over the closing quote */
        v[o++] = '\\';
        v[o++] = '"';
        v[o++] = '"';
        v[o] = '\0';
        expect_reject(v);
    }
}

static void
test_control_and_non_ascii(void)
{
    expect_reject("a\001b");
    expect_reject("a\177b");
    expect_reject("a\tb");
    expect_reject("a\rb");
    expect_reject("a\nb");
    expect_reject("caf\xc3\xa9");
    expect_reject("\xc3");
    expect_reject_n("a\0b", 3);
    /* The same bytes inside quotes. */
    expect_reject("\"a\001b\"");
    expect_reject("\"a\177b\"");
    expect_reject("\"a\tb\"");
    expect_reject("\"caf\xc3\xa9\"");
    expect_reject_n("\"a\0b\"", 5);
}

static void
test_malformed_quoted(void)
{
    expect_reject("\"order-123"); /* unterminated */
    expect_reject("\"");          /* a lone quote */
    expect_reject("\"abc\\\"");   /* the only closing quote is escaped */
    expect_reject("\"abc\\");     /* backslash at the very end */
    expect_reject("\"a\\nb\"");   /* only \" and \\ are escapes */
    expect_reject("\"a\\tb\"");
    expect_reject("\"a\\x41\"");
    expect_reject("\"abc\"x"); /* junk after the closing quote */
    expect_reject("\"abc\" x");
    expect_reject("\"abc\"\"def\"");
    expect_reject("\"abc\";a=1"); /* sf parameters are not part of a key */
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"bare token", test_bare_token},
        {"quoted form names the same key", test_quoted_same_key},
        {"escapes inside quotes", test_quoted_escapes},
        {"surrounding spaces and tabs ignored", test_surrounding_whitespace},
        {"only len bytes are read", test_len_not_nul},
        {"empty values rejected", test_empty_rejected},
        {"255 bytes accepted, 256 rejected", test_length_limits},
        {"control and non-ASCII bytes rejected", test_control_and_non_ascii},
        {"malformed quoted strings rejected", test_malformed_quoted},
        {NULL, NULL},
    };

    return unit_run("key", tests);
}
