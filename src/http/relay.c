/*
 * http/relay.c - a request passed on in pieces (see relay.h).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "http/relay.h"

/* Body bytes a near side drops for a far side that is gone before it closes the
 * connection instead (a client still uploading what nobody will read). */
#define DROP_MAX ((size_t)1 << 20)

/* One direction's bytes: [start, start + len) of data. */
typedef struct window {
    uint8_t *data;
    size_t start, len, cap;
} window_t;

enum { HEAD_NONE = 0, HEAD_READY, HEAD_FAILED, HEAD_TAKEN };

struct cn_relay {
    pthread_mutex_t mu;
    int refs;
    int64_t body_length;
    size_t dropped;

    window_t in;       /* the request body, near -> far */
    int in_end;
    window_t out;      /* the answer's body, far -> near */
    int head_state;
    cn_response_t head; /* HEAD_READY: the head; HEAD_FAILED: the whole answer */
    int64_t out_length;
    int out_end;       /* the far side is done */
    int out_error;     /* and its answer broke off */

    int near_gone, far_gone;
    cn_relay_near_t near;
    int near_waits;    /* the near side got CN_RELAY_WAIT and has not been woken since */
    int near_parked;   /* and parked */
    int near_kicked;   /* woken before it could park */
    int far_waits;     /* the far side got CN_RELAY_WAIT and has not been woken since */
    cn_relay_wake_cb far_wake;
    void *far_ctx;
    void *far_tag;
};

static void
relay_free(cn_relay_t *r)
{
    cn_response_free(&r->head);
    free(r->in.data);
    free(r->out.data);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

void
cn__relay_unref(cn_relay_t *r)
{
    int last;

    pthread_mutex_lock(&r->mu);
    last = --r->refs == 0;
    pthread_mutex_unlock(&r->mu);
    if (last)
        relay_free(r);
}

cn_relay_t *
cn__relay_new(int64_t body_length, const cn_relay_near_t *near)
{
    cn_relay_t *r = calloc(1, sizeof(*r));

    if (!r)
        return NULL;
    pthread_mutex_init(&r->mu, NULL);
    r->refs = 2;
    r->body_length = body_length;
    r->in_end = body_length == 0;
    r->out_length = -1;
    r->near = *near;
    return r;
}

void
cn__relay_bind_far(cn_relay_t *r, cn_relay_wake_cb wake, void *ctx, void *tag)
{
    pthread_mutex_lock(&r->mu);
    r->far_wake = wake;
    r->far_ctx = ctx;
    r->far_tag = tag;
    pthread_mutex_unlock(&r->mu);
}

void *
cn__relay_far_tag(cn_relay_t *r)
{
    void *tag;

    pthread_mutex_lock(&r->mu);
    tag = r->far_tag;
    pthread_mutex_unlock(&r->mu);
    return tag;
}

int64_t
cn__relay_body_length(const cn_relay_t *r)
{
    return r->body_length;
}

/* Room for n more bytes at the end of w (which holds at most limit bytes, plus one
 * piece when it had room): 0, or -ENOMEM. */
static int
window_reserve(window_t *w, size_t n)
{
    if (w->start && w->start + w->len + n > w->cap) {
        memmove(w->data, w->data + w->start, w->len);
        w->start = 0;
    }
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 16 * 1024;
        uint8_t *d;
        while (cap < w->len + n)
            cap *= 2;
        if (!(d = realloc(w->data, cap)))
            return -ENOMEM;
        w->data = d;
        w->cap = cap;
    }
    return 0;
}

static size_t
window_take(window_t *w, void *buf, size_t max)
{
    size_t n = w->len < max ? w->len : max;

    memcpy(buf, w->data + w->start, n);
    w->start += n;
    w->len -= n;
    if (!w->len)
        w->start = 0;
    return n;
}

/* ---- waking (called with the lock held; they return what to do once it is let go) ---- */

/* The far side moved: the near side may go on. Returns 1 when the caller must unpark it
 * (after unlocking). */
static int
wake_near(cn_relay_t *r)
{
    if (!r->near_waits || r->near_gone)
        return 0;
    r->near_waits = 0;
    if (r->near_parked) {
        r->near_parked = 0;
        return 1;
    }
    r->near_kicked = 1;
    return 0;
}

/* The near side moved: the far side may go on. Returns 1 (with a reference taken for the
 * callee) when the caller must call the far side's wake (after unlocking). */
static int
wake_far(cn_relay_t *r, int always)
{
    if (r->far_gone || !r->far_wake || (!r->far_waits && !always))
        return 0;
    r->far_waits = 0;
    r->refs++;
    return 1;
}

static void
unlock_and_wake(cn_relay_t *r, int near, int far)
{
    cn_relay_wake_cb wake = r->far_wake;
    void *ctx = r->far_ctx;
    cn_relay_near_t n = r->near;

    pthread_mutex_unlock(&r->mu);
    if (near)
        n.unpark(n.arg);
    if (far)
        wake(ctx, r);
}

/* ---- the near side ---- */

ssize_t
cn__relay_send(cn_relay_t *r, const void *p, size_t n)
{
    size_t take;
    int far;

    pthread_mutex_lock(&r->mu);
    if (r->far_gone) {
        r->dropped += n;
        pthread_mutex_unlock(&r->mu);
        return r->dropped > DROP_MAX ? CN_RELAY_BROKEN : (ssize_t)n;
    }
    take = r->in.len >= CN_RELAY_WINDOW ? 0 : CN_RELAY_WINDOW - r->in.len;
    if (take > n)
        take = n;
    if (take && window_reserve(&r->in, take)) {
        pthread_mutex_unlock(&r->mu);
        return CN_RELAY_BROKEN;
    }
    memcpy(r->in.data + r->in.start + r->in.len, p, take);
    r->in.len += take;
    if (take < n)
        r->near_waits = 1;
    far = take && wake_far(r, 0);
    unlock_and_wake(r, 0, far);
    return (ssize_t)take;
}

void
cn__relay_send_end(cn_relay_t *r)
{
    int far;

    pthread_mutex_lock(&r->mu);
    r->in_end = 1;
    far = wake_far(r, 0);
    unlock_and_wake(r, 0, far);
}

int
cn__relay_head(cn_relay_t *r, cn_response_t *head, int64_t *length)
{
    int rc;

    pthread_mutex_lock(&r->mu);
    switch (r->head_state) {
    case HEAD_NONE:
        if (!r->out_end) {
            r->near_waits = 1;
            rc = CN_RELAY_WAIT;
            break;
        }
        /* Gone without a word. */
        *head = cn_problem(502, "The upstream closed the connection without an answer");
        r->head_state = HEAD_TAKEN;
        rc = 2;
        break;
    case HEAD_READY:
    case HEAD_FAILED:
        *head = r->head;
        *length = r->out_length;
        memset(&r->head, 0, sizeof(r->head));
        rc = r->head_state == HEAD_READY ? 1 : 2;
        r->head_state = HEAD_TAKEN;
        break;
    default:
        rc = CN_RELAY_BROKEN;
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

ssize_t
cn__relay_recv(cn_relay_t *r, void *buf, size_t max)
{
    ssize_t rc;
    int far = 0;

    pthread_mutex_lock(&r->mu);
    if (r->out.len) {
        rc = (ssize_t)window_take(&r->out, buf, max);
        far = wake_far(r, 0);
    } else if (r->out_end) {
        rc = r->out_error ? CN_RELAY_BROKEN : CN_RELAY_END;
    } else {
        r->near_waits = 1;
        rc = CN_RELAY_WAIT;
    }
    unlock_and_wake(r, 0, far);
    return rc;
}

int
cn__relay_park(cn_relay_t *r)
{
    int parked = 0;

    pthread_mutex_lock(&r->mu);
    if (r->near_kicked || !r->near_waits) {
        r->near_kicked = 0;
    } else {
        r->near.park(r->near.arg);
        r->near_parked = parked = 1;
    }
    pthread_mutex_unlock(&r->mu);
    return parked;
}

int
cn__relay_far_alive(cn_relay_t *r)
{
    int alive;

    pthread_mutex_lock(&r->mu);
    alive = !r->far_gone;
    pthread_mutex_unlock(&r->mu);
    return alive;
}

void
cn__relay_near_close(cn_relay_t *r)
{
    int far;

    pthread_mutex_lock(&r->mu);
    r->near_gone = 1;
    r->near_waits = r->near_parked = 0;
    far = wake_far(r, 1);
    unlock_and_wake(r, 0, far);
    cn__relay_unref(r);
}

/* ---- the far side ---- */

ssize_t
cn__relay_take(cn_relay_t *r, void *buf, size_t max)
{
    ssize_t rc;
    int near = 0;

    pthread_mutex_lock(&r->mu);
    if (r->near_gone) {
        rc = CN_RELAY_BROKEN;
    } else if (r->in.len) {
        rc = (ssize_t)window_take(&r->in, buf, max);
        near = wake_near(r);
    } else if (r->in_end) {
        rc = 0;
    } else {
        r->far_waits = 1;
        rc = CN_RELAY_WAIT;
    }
    unlock_and_wake(r, near, 0);
    return rc;
}

int
cn__relay_set_head(cn_relay_t *r, cn_response_t *head, int64_t length)
{
    int near = 0, rc = 0;

    pthread_mutex_lock(&r->mu);
    if (r->near_gone || r->head_state != HEAD_NONE) {
        rc = CN_RELAY_BROKEN;
    } else {
        r->head = *head;
        memset(head, 0, sizeof(*head));
        r->out_length = length;
        r->head_state = HEAD_READY;
        near = wake_near(r);
    }
    unlock_and_wake(r, near, 0);
    cn_response_free(head);
    return rc;
}

int
cn__relay_put(cn_relay_t *r, const void *p, size_t n)
{
    int near = 0, rc = 0;

    pthread_mutex_lock(&r->mu);
    if (r->near_gone) {
        rc = CN_RELAY_BROKEN;
    } else if (r->out.len >= CN_RELAY_WINDOW) {
        r->far_waits = 1;
        rc = CN_RELAY_WAIT;
    } else if (window_reserve(&r->out, n)) {
        rc = CN_RELAY_BROKEN;
    } else {
        memcpy(r->out.data + r->out.start + r->out.len, p, n);
        r->out.len += n;
        near = n && wake_near(r);
    }
    unlock_and_wake(r, near, 0);
    return rc;
}

void
cn__relay_fail(cn_relay_t *r, cn_response_t *res)
{
    int near = 0;

    pthread_mutex_lock(&r->mu);
    if (!r->near_gone && r->head_state == HEAD_NONE) {
        r->head = *res;
        memset(res, 0, sizeof(*res));
        r->head_state = HEAD_FAILED;
        near = wake_near(r);
    }
    unlock_and_wake(r, near, 0);
    cn_response_free(res);
}

int
cn__relay_near_gone(cn_relay_t *r)
{
    int gone;

    pthread_mutex_lock(&r->mu);
    gone = r->near_gone;
    pthread_mutex_unlock(&r->mu);
    return gone;
}

void
cn__relay_far_close(cn_relay_t *r, int error)
{
    int near;

    pthread_mutex_lock(&r->mu);
    r->far_gone = 1;
    r->out_end = 1;
    r->out_error = error != 0 || r->head_state == HEAD_NONE;
    /* What is still in the request window will never be read. */
    r->in.len = r->in.start = 0;
    near = wake_near(r);
    unlock_and_wake(r, near, 0);
    cn__relay_unref(r);
}
