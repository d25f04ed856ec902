/*
 * realtime/event.c - buffering events in a request (cn_emit) and handing them on once
 * their record is durable. Until the broadcaster exists, publishing counts and logs.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cnerium/json.h"
#include "cnerium/realtime.h"
#include "http/request_internal.h"
#include "realtime/event.h"
#include "support/log.h"

static atomic_uint_fast64_t published;

int
cn_emit(cn_request_t *req, const char *type, cJSON *payload)
{
    cn_event_t *ev;

    if (!req || !type || !*type) {
        cJSON_Delete(payload);
        return -EINVAL;
    }
    ev = calloc(1, sizeof(*ev));
    if (ev) {
        ev->type = strdup(type);
        ev->payload = payload ? cn_json_print(payload, &ev->payload_len) : strdup("null");
        if (!payload && ev->payload)
            ev->payload_len = 4;
    }
    cJSON_Delete(payload);
    if (!ev || !ev->type || !ev->payload) {
        cn__events_free(ev);
        return -ENOMEM;
    }
    if (!req->events_tail)
        req->events_tail = &req->events;
    *req->events_tail = ev;
    req->events_tail = &ev->next;
    return 0;
}

void
cn__events_free(cn_event_t *list)
{
    while (list) {
        cn_event_t *next = list->next;
        free(list->type);
        free(list->payload);
        free(list);
        list = next;
    }
}

void
cn__events_publish(cn_event_t *list)
{
    for (cn_event_t *e = list; e; e = e->next) {
        atomic_fetch_add(&published, 1);
        cn_log_debug("event %s %.*s", e->type, (int)e->payload_len, e->payload);
    }
    cn__events_free(list);
}

uint64_t
cn__events_published(void)
{
    return atomic_load(&published);
}
