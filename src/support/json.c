/*
 * support/json.c - the cJSON helpers of cnerium/json.h. The only place besides the
 * response and request code that builds or reads cJSON trees for the library.
 */
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cnerium/json.h"

static const cJSON *
member(const cJSON *obj, const char *name)
{
    if (!obj || !name || !cJSON_IsObject(obj))
        return NULL;
    return cJSON_GetObjectItemCaseSensitive(obj, name);
}

const char *
cn_json_string_or(const cJSON *obj, const char *name, const char *fallback)
{
    const cJSON *m = member(obj, name);

    return cJSON_IsString(m) && m->valuestring ? m->valuestring : fallback;
}

int
cn_json_int_or(const cJSON *obj, const char *name, int fallback)
{
    const cJSON *m = member(obj, name);
    double v;

    if (!cJSON_IsNumber(m))
        return fallback;
    v = m->valuedouble;
    if (!isfinite(v) || v != floor(v) || v < (double)INT_MIN || v > (double)INT_MAX)
        return fallback;
    return (int)v;
}

bool
cn_json_bool_or(const cJSON *obj, const char *name, bool fallback)
{
    const cJSON *m = member(obj, name);

    return cJSON_IsBool(m) ? cJSON_IsTrue(m) : fallback;
}

cJSON *
cn_json_object(const char *name, ...)
{
    cJSON *obj = cJSON_CreateObject();
    va_list ap;
    int failed = obj == NULL;

    va_start(ap, name);
    for (const char *n = name; n; n = va_arg(ap, const char *)) {
        cJSON *v = va_arg(ap, cJSON *);
        /* Keep consuming the list after a failure so every value is freed. */
        if (failed || !v || !cJSON_AddItemToObject(obj, n, v)) {
            failed = 1;
            cJSON_Delete(v);
        }
    }
    va_end(ap);
    if (failed) {
        cJSON_Delete(obj);
        return NULL;
    }
    return obj;
}

char *
cn_json_print(const cJSON *json, size_t *len)
{
    char *s = cJSON_PrintUnformatted(json);

    if (s && len)
        *len = strlen(s);
    return s;
}
