/*
 * realtime/event.h - events buffered by a request until its record is durable.
 *
 * Until the broadcaster exists, a published event is counted and logged at debug level.
 */
#ifndef CN_REALTIME_EVENT_H
#define CN_REALTIME_EVENT_H

#include <stddef.h>
#include <stdint.h>

typedef struct cn_event {
    char *type;      /* owned */
    char *payload;   /* owned JSON text, "null" when none */
    size_t payload_len;
    struct cn_event *next;
} cn_event_t;

/* Frees a list. Accepts NULL. */
void cn__events_free(cn_event_t *list);

/* Publishes a list whose record is durable, and frees it. */
void cn__events_publish(cn_event_t *list);

/* Events published by this process since start (for tests). */
uint64_t cn__events_published(void);

#endif
