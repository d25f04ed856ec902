/*
 * tests/unit/test_relay.c - a request passed on in pieces: each window holds its bound
 * and its writer is told to wait; the waiting side is woken exactly when the other side
 * moves (parked, or kicked before it could park); a head, a failure, a far side gone
 * without a word, a near side gone; bytes for a far side that is gone are dropped up to a
 * bound; two threads pushing 8 MiB through and back, byte for byte (run under TSan too).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "http/relay.h"
#include "unit.h"

typedef struct near_fake {
    int parks, unparks;
} near_fake_t;

static void
fake_park(void *arg)
{
    ((near_fake_t *)arg)->parks++;
}

static void
fake_unpark(void *arg)
{
    ((near_fake_t *)arg)->unparks++;
}

typedef struct far_fake {
    int wakes;
} far_fake_t;

static void
fake_wake(void *ctx, cn_relay_t *r)
{
    ((far_fake_t *)ctx)->wakes++;
    cn__relay_unref(r);
}

static cn_relay_t *
relay(int64_t length, near_fake_t *n, far_fake_t *f)
{
    cn_relay_near_t near = {fake_park, fake_unpark, n};
    cn_relay_t *r = cn__relay_new(length, &near);

    if (r)
        cn__relay_bind_far(r, fake_wake, f, f);
    return r;
}

static void
test_body_window(void)
{
    near_fake_t n = {0};
    far_fake_t f = {0};
    cn_relay_t *r = relay(-1, &n, &f);
    static char big[3 * CN_RELAY_WINDOW], out[CN_RELAY_WINDOW];
    ssize_t got;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_PTR_EQUAL(cn__relay_far_tag(r), &f);
    CU_ASSERT_EQUAL(cn__relay_body_length(r), -1);
    memset(big, 'b', sizeof(big));
    /* Nothing yet: the far side waits, and is woken by the first bytes. */
    CU_ASSERT_EQUAL(cn__relay_take(r, out, sizeof(out)), CN_RELAY_WAIT);
    CU_ASSERT_EQUAL(cn__relay_send(r, big, 10), 10);
    CU_ASSERT_EQUAL(f.wakes, 1);
    CU_ASSERT_EQUAL(cn__relay_take(r, out, sizeof(out)), 10);
    /* The window takes what fits; the rest waits. No wake: the far side did not ask. */
    CU_ASSERT_EQUAL(cn__relay_send(r, big, sizeof(big)), (ssize_t)CN_RELAY_WINDOW);
    CU_ASSERT_EQUAL(f.wakes, 1);
    CU_ASSERT_EQUAL(cn__relay_send(r, big, 1), 0);
    CU_ASSERT_EQUAL(cn__relay_park(r), 1);
    CU_ASSERT_EQUAL(n.parks, 1);
    /* The far side reads: the parked near side is unparked, once. */
    CU_ASSERT_EQUAL(cn__relay_take(r, out, 100), 100);
    CU_ASSERT_EQUAL(n.unparks, 1);
    CU_ASSERT_EQUAL(cn__relay_take(r, out, 100), 100);
    CU_ASSERT_EQUAL(n.unparks, 1);
    /* Woken before it could park: park returns 0 (try again) without parking. */
    CU_ASSERT_EQUAL(cn__relay_send(r, big, sizeof(big)), 200);
    CU_ASSERT_EQUAL(cn__relay_take(r, out, 50), 50);
    CU_ASSERT_EQUAL(cn__relay_park(r), 0);
    CU_ASSERT_EQUAL(n.parks, 1);
    CU_ASSERT_EQUAL(n.unparks, 1);
    /* The end comes after the bytes. */
    CU_ASSERT_EQUAL(cn__relay_send(r, big, 50), 50);
    cn__relay_send_end(r);
    got = 0;
    for (ssize_t k; (k = cn__relay_take(r, out, sizeof(out))) > 0;)
        got += k;
    CU_ASSERT_EQUAL(got, (ssize_t)CN_RELAY_WINDOW);
    CU_ASSERT_EQUAL(cn__relay_take(r, out, sizeof(out)), 0);
    cn__relay_near_close(r);
    cn__relay_far_close(r, 0);
}

static void
test_answer(void)
{
    near_fake_t n = {0};
    far_fake_t f = {0};
    cn_relay_t *r = relay(0, &n, &f);
    cn_response_t head = {0}, h;
    int64_t length = 0;
    static char piece[CN_RELAY_WINDOW / 2], buf[CN_RELAY_WINDOW * 2];
    char out[8];

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    /* No body: the far side reads its end at once. */
    CU_ASSERT_EQUAL(cn__relay_take(r, out, sizeof(out)), 0);
    CU_ASSERT_EQUAL(cn__relay_head(r, &head, &length), CN_RELAY_WAIT);
    CU_ASSERT_EQUAL(cn__relay_park(r), 1);
    h = cn_raw_response(206, "text/plain", NULL, 0);
    CU_ASSERT_EQUAL(cn_response_add_header(&h, "X-A", "1"), 0);
    CU_ASSERT_EQUAL(cn__relay_set_head(r, &h, 3 * sizeof(piece)), 0);
    CU_ASSERT_EQUAL(n.unparks, 1);
    CU_ASSERT_EQUAL(cn__relay_head(r, &head, &length), 1);
    CU_ASSERT_EQUAL(head.status, 206);
    CU_ASSERT_STRING_EQUAL(head.headers[0].name, "X-A");
    CU_ASSERT_EQUAL(length, (int64_t)(3 * sizeof(piece)));
    cn_response_free(&head);
    CU_ASSERT_EQUAL(cn__relay_head(r, &head, &length), CN_RELAY_BROKEN);
    /* Pieces go in whole while the window has room, then the far side waits. */
    memset(piece, 'p', sizeof(piece));
    CU_ASSERT_EQUAL(cn__relay_put(r, piece, sizeof(piece)), 0);
    CU_ASSERT_EQUAL(cn__relay_put(r, piece, sizeof(piece)), 0);
    CU_ASSERT_EQUAL(cn__relay_put(r, piece, sizeof(piece)), CN_RELAY_WAIT);
    CU_ASSERT_EQUAL(f.wakes, 0);
    CU_ASSERT_EQUAL(cn__relay_recv(r, buf, 10), 10);
    CU_ASSERT_EQUAL(f.wakes, 1);
    CU_ASSERT_EQUAL(cn__relay_put(r, piece, sizeof(piece)), 0);
    CU_ASSERT_EQUAL(cn__relay_recv(r, buf, sizeof(buf)), (ssize_t)(3 * sizeof(piece) - 10));
    CU_ASSERT_EQUAL(cn__relay_recv(r, buf, sizeof(buf)), CN_RELAY_WAIT);
    CU_ASSERT_EQUAL(cn__relay_park(r), 1);
    cn__relay_far_close(r, 0);
    CU_ASSERT_EQUAL(n.unparks, 2);
    CU_ASSERT_EQUAL(cn__relay_recv(r, buf, sizeof(buf)), CN_RELAY_END);
    cn__relay_near_close(r);
}

static void
test_failures(void)
{
    near_fake_t n = {0};
    far_fake_t f = {0};
    cn_relay_t *r = relay(5, &n, &f);
    cn_response_t head = {0}, p;
    int64_t length;
    char buf[16];

    /* A failure before the head is the whole answer. */
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    p = cn_problem(504, "late");
    cn__relay_fail(r, &p);
    cn__relay_far_close(r, 1);
    CU_ASSERT_EQUAL(cn__relay_head(r, &head, &length), 2);
    CU_ASSERT_EQUAL(head.status, 504);
    cn_response_free(&head);
    cn__relay_near_close(r);

    /* A far side gone without a word: 502. After a head, the body breaks off. */
    r = relay(0, &n, &f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    cn__relay_far_close(r, 0);
    CU_ASSERT_EQUAL(cn__relay_head(r, &head, &length), 2);
    CU_ASSERT_EQUAL(head.status, 502);
    cn_response_free(&head);
    cn__relay_near_close(r);
    r = relay(0, &n, &f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    p = cn_raw_response(200, NULL, NULL, 0);
    CU_ASSERT_EQUAL(cn__relay_set_head(r, &p, -1), 0);
    CU_ASSERT_EQUAL(cn__relay_put(r, "abc", 3), 0);
    cn__relay_far_close(r, 1);
    CU_ASSERT_EQUAL(cn__relay_head(r, &head, &length), 1);
    cn_response_free(&head);
    CU_ASSERT_EQUAL(cn__relay_recv(r, buf, sizeof(buf)), 3);
    CU_ASSERT_EQUAL(cn__relay_recv(r, buf, sizeof(buf)), CN_RELAY_BROKEN);
    cn__relay_near_close(r);
}

static void
test_one_side_gone(void)
{
    near_fake_t n = {0};
    far_fake_t f = {0};
    cn_relay_t *r = relay(-1, &n, &f);
    static char chunk[64 * 1024];
    cn_response_t p;
    ssize_t rc = 0;
    size_t sent = 0;

    /* The far side answered and left: the rest of the body is dropped, up to a bound. */
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    cn__relay_far_close(r, 0);
    CU_ASSERT_FALSE(cn__relay_far_alive(r));
    while (sent < (4u << 20) && (rc = cn__relay_send(r, chunk, sizeof(chunk))) > 0)
        sent += (size_t)rc;
    CU_ASSERT_EQUAL(rc, CN_RELAY_BROKEN);
    CU_ASSERT(sent >= (1u << 20) && sent < (4u << 20));
    cn__relay_near_close(r);

    /* The near side left: the far side is woken even though it did not ask, and every
     * call tells it to stop. */
    r = relay(-1, &n, &f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    f.wakes = 0;
    cn__relay_near_close(r);
    CU_ASSERT_EQUAL(f.wakes, 1);
    CU_ASSERT_TRUE(cn__relay_near_gone(r));
    CU_ASSERT_EQUAL(cn__relay_take(r, chunk, 10), CN_RELAY_BROKEN);
    CU_ASSERT_EQUAL(cn__relay_put(r, "x", 1), CN_RELAY_BROKEN);
    p = cn_raw_response(200, NULL, "x", 1);
    CU_ASSERT_EQUAL(cn__relay_set_head(r, &p, 1), CN_RELAY_BROKEN);
    CU_ASSERT_EQUAL(p.status, 0); /* consumed all the same */
    cn__relay_far_close(r, 1);
    CU_ASSERT_EQUAL(n.unparks, 0);
}

/* ---- two threads ---- */

#define FLOW_BYTES ((size_t)8 << 20)

typedef struct side {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int parked, woken;
} side_t;

static side_t near_side = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
static side_t far_side = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};

static void
thread_park(void *arg)
{
    side_t *s = arg;

    pthread_mutex_lock(&s->mu);
    s->parked = 1;
    pthread_mutex_unlock(&s->mu);
}

static void
thread_unpark(void *arg)
{
    side_t *s = arg;

    pthread_mutex_lock(&s->mu);
    s->parked = 0;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->mu);
}

/* Waits (bounded) until the near side s is unparked, or the far side s is woken (which
 * is then cleared); 0, or -1 after 30 s. */
static int
side_wait(side_t *s, int far)
{
    uint64_t deadline = unit_now_ms() + 30000;
    int rc = 0;

    pthread_mutex_lock(&s->mu);
    while ((far ? !s->woken : s->parked) && !rc) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&s->cond, &s->mu, &ts);
        if (unit_now_ms() > deadline)
            rc = -1;
    }
    if (far)
        s->woken = 0;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static void
thread_wake(void *ctx, cn_relay_t *r)
{
    side_t *s = ctx;

    pthread_mutex_lock(&s->mu);
    s->woken = 1;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->mu);
    cn__relay_unref(r);
}

static uint8_t
byte_at(size_t i)
{
    return (uint8_t)(i * 131 + (i >> 13));
}

/* The far side: echoes the body back as the answer, in pieces of odd sizes. */
static void *
far_main(void *arg)
{
    cn_relay_t *r = arg;
    static char buf[7919];
    cn_response_t head = cn_raw_response(200, NULL, NULL, 0);
    int failed = cn__relay_set_head(r, &head, (int64_t)FLOW_BYTES);

    while (!failed) {
        ssize_t n = cn__relay_take(r, buf, sizeof(buf));
        if (n == 0)
            break;
        if (n == CN_RELAY_WAIT) {
            failed = side_wait(&far_side, 1);
            continue;
        }
        if (n < 0) {
            failed = 1;
            break;
        }
        for (;;) {
            int rc = cn__relay_put(r, buf, (size_t)n);
            if (rc == 0)
                break;
            if (rc != CN_RELAY_WAIT || side_wait(&far_side, 1)) {
                failed = 1;
                break;
            }
        }
    }
    cn__relay_far_close(r, failed);
    return NULL;
}

static void
test_threads(void)
{
    cn_relay_near_t near = {thread_park, thread_unpark, &near_side};
    cn_relay_t *r = cn__relay_new((int64_t)FLOW_BYTES, &near);
    static uint8_t out[10007], in[4099];
    size_t sent = 0, got = 0, bad = 0;
    cn_response_t head = {0};
    int64_t length = 0;
    pthread_t t;
    int rc, ended = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    cn__relay_bind_far(r, thread_wake, &far_side, NULL);
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, far_main, r), 0);
    while ((rc = cn__relay_head(r, &head, &length)) == CN_RELAY_WAIT)
        if (cn__relay_park(r) && side_wait(&near_side, 0))
            break;
    CU_ASSERT_EQUAL(rc, 1);
    cn_response_free(&head);
    /* The near side sends and reads in turns, as a connection would: never both at once
     * waiting. */
    while (!ended) {
        int moved = 0;
        if (sent < FLOW_BYTES) {
            size_t n = FLOW_BYTES - sent < sizeof(out) ? FLOW_BYTES - sent : sizeof(out);
            ssize_t k;
            for (size_t i = 0; i < n; i++)
                out[i] = byte_at(sent + i);
            k = cn__relay_send(r, out, n);
            CU_ASSERT_FATAL(k >= 0);
            sent += (size_t)k;
            moved |= k > 0;
            if (sent == FLOW_BYTES)
                cn__relay_send_end(r);
        }
        for (;;) {
            ssize_t k = cn__relay_recv(r, in, sizeof(in));
            if (k == CN_RELAY_WAIT)
                break;
            if (k < 0) {
                CU_ASSERT_EQUAL(k, CN_RELAY_END);
                ended = 1;
                break;
            }
            for (ssize_t i = 0; i < k; i++)
                bad += in[i] != byte_at(got + (size_t)i);
            got += (size_t)k;
            moved = 1;
        }
        if (!moved && !ended && cn__relay_park(r) && side_wait(&near_side, 0)) {
            CU_FAIL("the near side was never woken");
            break;
        }
    }
    pthread_join(t, NULL);
    CU_ASSERT_EQUAL(got, FLOW_BYTES);
    CU_ASSERT_EQUAL(bad, 0);
    cn__relay_near_close(r);
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"body window, park and kick", test_body_window},
        {"head and answer window", test_answer},
        {"failure, silence, broken answer", test_failures},
        {"one side gone", test_one_side_gone},
        {"two threads, 8 MiB there and back", test_threads},
        {NULL, NULL},
    };
    return unit_run("relay", tests);
}
