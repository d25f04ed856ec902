/*
 * cnerium/json.h - small helpers around cJSON in the spirit of the seed's
 * support::string_or / int_or / object.
 *
 * Getters borrow: returned strings belong to the JSON value passed in. Builders return a
 * new cJSON tree that the caller owns (free with cJSON_Delete) unless it is handed to a
 * function documented as consuming it (cn_created, cn_emit, ...).
 */
#ifndef CNERIUM_JSON_H
#define CNERIUM_JSON_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

/* The string member `name` of object `obj`, or `fallback` when obj is NULL, not an
 * object, has no such member, or the member is not a string. Borrowed from obj. */
const char *cn_json_string_or(const cJSON *obj, const char *name, const char *fallback);

/* The integer member `name`, or `fallback` when absent, not a number, not integral, or
 * outside the range of int. */
int cn_json_int_or(const cJSON *obj, const char *name, int fallback);

/* The boolean member `name`, or `fallback` when absent or not a boolean. */
bool cn_json_bool_or(const cJSON *obj, const char *name, bool fallback);

/* Builds an object from a NULL-terminated list of (name, value) pairs; each value is
 * consumed. Example:
 *   cn_json_object("ok", cJSON_CreateTrue(), "id", cJSON_CreateString(id), NULL)
 * Returns NULL on allocation failure (every value is freed in that case too). */
cJSON *cn_json_object(const char *name, ...);

/* Serializes json without whitespace. Returns a malloc'd string (caller frees) and its
 * length in *len when len is not NULL, or NULL on allocation failure. json is borrowed. */
char *cn_json_print(const cJSON *json, size_t *len);

#endif
