/*
 * store/commit.c - the synchronous committer: one LMDB transaction per record, synced
 * before the callback runs. Thread-safe (LMDB serializes the writers).
 */
#include <errno.h>
#include <stdlib.h>

#include "store/commit.h"

struct cn_committer {
    cn_store_t *store;
};

int
cn__committer_new_sync(cn_store_t *store, cn_committer_t **out)
{
    cn_committer_t *c = calloc(1, sizeof(*c));

    if (!c)
        return -ENOMEM;
    c->store = store;
    *out = c;
    return 0;
}

void
cn__committer_free(cn_committer_t *c)
{
    free(c);
}

int
cn__committer_submit(cn_committer_t *c, const cn_store_put_t *item, cn_commit_done_cb done,
                     void *arg)
{
    done(cn__store_put(c->store, item, 1), arg);
    return 0;
}
