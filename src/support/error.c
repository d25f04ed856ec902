/*
 * support/error.c - cn_strerror for our codes and errno values.
 */
#include <string.h>

#include "cnerium/error.h"

const char *
cn_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
    case CN_ENOTFOUND:
        return "not found";
    case CN_EINVAL_KEY:
        return "invalid Idempotency-Key";
    case CN_EMISSING_KEY:
        return "missing Idempotency-Key";
    case CN_EMULTIPLE_KEYS:
        return "more than one Idempotency-Key header";
    case CN_ECORRUPT:
        return "stored data is corrupt";
    case CN_EVERSION:
        return "stored data has an unknown format version";
    case CN_ETOOBIG:
        return "value too large";
    case CN_ECONFIG:
        return "invalid configuration";
    case CN_ESTORE:
        return "storage engine error";
    case CN_EMETHOD:
        return "method not allowed";
    case CN_ELOST:
        return "in-flight claim lost";
    case CN_EMAPFULL:
        return "the store's map is full (LMDB MDB_MAP_FULL)";
    case CN_ECONFLICT:
        return "a stream's expected version did not hold";
    case CN_ESTATE:
        return "not in a state that allows this";
    default:
        break;
    }
    if (err < 0 && err > CN_ERR_BASE)
        return strerror(-err);
    return "unknown error";
}
