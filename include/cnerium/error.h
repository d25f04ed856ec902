/*
 * cnerium/error.h - error codes shared by every module.
 *
 * Functions that can fail return int: 0 on success, a negative errno for system errors
 * (-ENOMEM, -EIO, ...), or one of the CN_E* codes below, which live in a reserved range
 * that no errno value reaches. cn_strerror() describes either kind.
 */
#ifndef CNERIUM_ERROR_H
#define CNERIUM_ERROR_H

enum {
    CN_ERR_BASE = -30000,
    CN_ENOTFOUND = CN_ERR_BASE,   /* no such record, route or value */
    CN_EINVAL_KEY,                /* Idempotency-Key malformed */
    CN_EMISSING_KEY,              /* Idempotency-Key header absent */
    CN_EMULTIPLE_KEYS,            /* more than one Idempotency-Key header */
    CN_ECORRUPT,                  /* stored bytes failed validation */
    CN_EVERSION,                  /* stored bytes use an unknown format version */
    CN_ETOOBIG,                   /* a value exceeds a configured or format limit */
    CN_ECONFIG,                   /* invalid configuration */
    CN_ESTORE,                    /* the storage engine reported an error */
    CN_EMETHOD,                   /* the path exists but not for this method */
    CN_ELOST,                     /* an in-flight claim was lost (lease expired, freed) */
    CN_EMAPFULL,                  /* the store's map size is reached (LMDB MDB_MAP_FULL) */
    CN_ECONFLICT,                 /* a stream's expected version did not hold */
    CN_ESTATE,                    /* the object is not in a state that allows this */
    CN_ERR_LAST
};

/* Returns a static, human-readable description of err (a CN_E* code or a negative
 * errno). Never NULL. */
const char *cn_strerror(int err);

#endif
