/*
 * tests/unit/test_utf8.c - cn__utf8_valid: strict UTF-8 (RFC 3629), the check every
 * request body declared as JSON passes before a handler sees it.
 */
#include <string.h>

#include "support/utf8.h"
#include "unit.h"

static int
valid(const char *s)
{
    return cn__utf8_valid(s, strlen(s));
}

static void
test_ascii_and_empty(void)
{
    CU_ASSERT_EQUAL(cn__utf8_valid(NULL, 0), 1);
    CU_ASSERT_EQUAL(valid(""), 1);
    CU_ASSERT_EQUAL(valid("{\"product_id\":\"p1\",\"quantity\":1}"), 1);
    /* U+0000 is a code point: valid UTF-8 (JSON escapes it; callers check NULs). */
    CU_ASSERT_EQUAL(cn__utf8_valid("a\0b", 3), 1);
    CU_ASSERT_EQUAL(valid("\x7f"), 1);
}

static void
test_well_formed_multibyte(void)
{
    CU_ASSERT_EQUAL(valid("caf\xc3\xa9"), 1);             /* U+00E9 */
    CU_ASSERT_EQUAL(valid("\xc2\x80"), 1);                /* U+0080, smallest 2-byte */
    CU_ASSERT_EQUAL(valid("\xdf\xbf"), 1);                /* U+07FF */
    CU_ASSERT_EQUAL(valid("\xe0\xa0\x80"), 1);            /* U+0800, smallest 3-byte */
    CU_ASSERT_EQUAL(valid("\xe2\x82\xac"), 1);            /* U+20AC euro */
    CU_ASSERT_EQUAL(valid("\xed\x9f\xbf"), 1);            /* U+D7FF, below surrogates */
    CU_ASSERT_EQUAL(valid("\xee\x80\x80"), 1);            /* U+E000, above surrogates */
    CU_ASSERT_EQUAL(valid("\xef\xbf\xbf"), 1);            /* U+FFFF */
    CU_ASSERT_EQUAL(valid("\xf0\x90\x80\x80"), 1);        /* U+10000 */
    CU_ASSERT_EQUAL(valid("\xf0\x9f\x98\x80"), 1);        /* U+1F600 */
    CU_ASSERT_EQUAL(valid("\xf4\x8f\xbf\xbf"), 1);        /* U+10FFFF, the last */
}

static void
test_the_reported_body(void)
{
    static const char body[] = "{\"product_id\":\"\xff\xfe\x80\",\"quantity\":1}";

    CU_ASSERT_EQUAL(cn__utf8_valid(body, sizeof(body) - 1), 0);
}

static void
test_invalid_bytes(void)
{
    CU_ASSERT_EQUAL(valid("\x80"), 0);         /* lone continuation */
    CU_ASSERT_EQUAL(valid("a\xbf"), 0);
    CU_ASSERT_EQUAL(valid("\xc0\x80"), 0);     /* overlong NUL */
    CU_ASSERT_EQUAL(valid("\xc1\xbf"), 0);     /* overlong */
    CU_ASSERT_EQUAL(valid("\xe0\x80\x80"), 0); /* overlong 3-byte */
    CU_ASSERT_EQUAL(valid("\xe0\x9f\xbf"), 0); /* overlong U+07FF */
    CU_ASSERT_EQUAL(valid("\xf0\x80\x80\x80"), 0); /* overlong 4-byte */
    CU_ASSERT_EQUAL(valid("\xf0\x8f\xbf\xbf"), 0); /* overlong U+FFFF */
    CU_ASSERT_EQUAL(valid("\xed\xa0\x80"), 0); /* U+D800 */
    CU_ASSERT_EQUAL(valid("\xed\xbf\xbf"), 0); /* U+DFFF */
    CU_ASSERT_EQUAL(valid("\xed\xa0\xbd\xed\xb8\x80"), 0); /* CESU-8 surrogate pair */
    CU_ASSERT_EQUAL(valid("\xf4\x90\x80\x80"), 0); /* U+110000 */
    CU_ASSERT_EQUAL(valid("\xf5\x80\x80\x80"), 0);
    CU_ASSERT_EQUAL(valid("\xf8\x88\x80\x80\x80"), 0); /* 5-byte form */
    CU_ASSERT_EQUAL(valid("\xfe"), 0);
    CU_ASSERT_EQUAL(valid("\xff"), 0);
    CU_ASSERT_EQUAL(valid("\xc3\x28"), 0);     /* bad continuation */
    CU_ASSERT_EQUAL(valid("\xe2\x28\xa1"), 0);
    CU_ASSERT_EQUAL(valid("\xe2\x82\x28"), 0);
    CU_ASSERT_EQUAL(valid("\xf0\x9f\x98\x28"), 0);
}

static void
test_truncated_sequences(void)
{
    /* Each a valid sequence cut short, also when the cut is the end of the buffer. */
    CU_ASSERT_EQUAL(valid("\xc3"), 0);
    CU_ASSERT_EQUAL(valid("\xe2\x82"), 0);
    CU_ASSERT_EQUAL(valid("\xf0\x9f\x98"), 0);
    CU_ASSERT_EQUAL(cn__utf8_valid("caf\xc3\xa9", 4), 0);
    CU_ASSERT_EQUAL(cn__utf8_valid("caf\xc3\xa9", 5), 1);
}

static void
test_long_ascii_runs_then_bad_byte(void)
{
    /* The word-at-a-time ASCII path must still look at every byte position. */
    char buf[64];

    for (size_t pos = 0; pos < sizeof(buf); pos++) {
        memset(buf, 'a', sizeof(buf));
        buf[pos] = (char)0xff;
        CU_ASSERT_EQUAL(cn__utf8_valid(buf, sizeof(buf)), 0);
        buf[pos] = 'a';
        CU_ASSERT_EQUAL(cn__utf8_valid(buf, sizeof(buf)), 1);
    }
    for (size_t pos = 0; pos + 2 <= sizeof(buf); pos++) {
        memset(buf, 'a', sizeof(buf));
        buf[pos] = (char)0xc3;
        buf[pos + 1] = (char)0xa9;
        CU_ASSERT_EQUAL(cn__utf8_valid(buf, sizeof(buf)), 1);
        CU_ASSERT_EQUAL(cn__utf8_valid(buf, pos + 1), 0); /* cut inside */
    }
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"ASCII and empty input", test_ascii_and_empty},
        {"well-formed multibyte sequences", test_well_formed_multibyte},
        {"the body from the report is refused", test_the_reported_body},
        {"overlongs, surrogates, out of range, stray bytes", test_invalid_bytes},
        {"truncated sequences", test_truncated_sequences},
        {"ASCII fast path checks every position", test_long_ascii_runs_then_bad_byte},
        {NULL, NULL},
    };

    return unit_run("utf8", tests);
}
