/*
 * cnerium/cnerium.h - umbrella header: include this one.
 *
 * Cnerium is a reliability layer for C HTTP backends: selected POST routes become
 * durable, so a client that retries after a timeout gets the stored result of its
 * operation instead of running it twice. See README.md.
 */
#ifndef CNERIUM_H
#define CNERIUM_H

#define CNERIUM_VERSION "0.1.0"

#include "app.h"
#include "config.h"
#include "error.h"
#include "json.h"
#include "realtime.h"
#include "request.h"
#include "response.h"
#include "stream.h"

#endif
