/*
 * tests/unit/test_commits.c - the commit times of recent event batches (shm/commits.h):
 * the persister publishes (first seq, last seq, commit time) per batch, the broadcaster
 * looks a seq up.
 *
 *   - an empty ring knows no seq;
 *   - both ends of each of the last CN_SHM_COMMITS - 1 batches are found with their
 *     batch's time, one batch older is not, nor a seq past the last batch; wrap-around
 *     a few times;
 *   - one-event batches and big batches mixed;
 *   - a writer process publishing 2,000,000 batches into a shared mapping while this
 *     process looks seqs up: every answer is the time of the batch that holds the seq
 *     (each batch's time is a function of its range, so a torn entry would show), and
 *     some lookups succeed. Bounded in time; the child is reaped or killed by its PID.
 */
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shm/commits.h"
#include "unit.h"

#define BATCH 5u
#define WRITER_BATCHES 2000000u
#define CHILD_BOUND_MS 30000u

/* Batch i (from 0) of BATCH events: seqs i*BATCH+1 .. (i+1)*BATCH, time f(i). */
static uint64_t
batch_ns(uint64_t i)
{
    return i * 7919u + 13u;
}

static void
test_empty(void)
{
    cn_shm_commits_t c;
    uint64_t ns = 99;

    memset(&c, 0, sizeof(c));
    CU_ASSERT_EQUAL(cn__shm_commit_lookup(&c, 0, &ns), -1);
    CU_ASSERT_EQUAL(cn__shm_commit_lookup(&c, 1, &ns), -1);
    CU_ASSERT_EQUAL(ns, 99);
}

static void
test_window(void)
{
    static cn_shm_commits_t c;
    uint64_t ns;

    memset(&c, 0, sizeof(c));
    for (uint64_t i = 0; i < 3 * CN_SHM_COMMITS + 3; i++) {
        cn__shm_commit_publish(&c, i * BATCH + 1, (i + 1) * BATCH, batch_ns(i));
        uint64_t oldest = i + 1 > CN_SHM_COMMITS - 1 ? i + 1 - (CN_SHM_COMMITS - 1) : 0;
        for (uint64_t b = oldest; b <= i; b++) {
            for (uint64_t s = b * BATCH + 1; s <= (b + 1) * BATCH; s += BATCH - 1) {
                ns = 0;
                if (cn__shm_commit_lookup(&c, s, &ns) || ns != batch_ns(b)) {
                    CU_FAIL("a seq of a recent batch not found, or with another time");
                    return;
                }
            }
        }
        CU_ASSERT_EQUAL(cn__shm_commit_lookup(&c, (i + 1) * BATCH + 1, &ns), -1);
        if (oldest)
            CU_ASSERT_EQUAL(cn__shm_commit_lookup(&c, oldest * BATCH, &ns), -1);
    }
}

static void
test_mixed_sizes(void)
{
    static cn_shm_commits_t c;
    uint64_t first = 1, ns;

    memset(&c, 0, sizeof(c));
    for (uint64_t i = 0; i < 3 * CN_SHM_COMMITS; i++) {
        uint64_t n = i % 3 == 0 ? 1 : 1000 + i;
        cn__shm_commit_publish(&c, first, first + n - 1, 1000000 + i);
        CU_ASSERT_EQUAL(cn__shm_commit_lookup(&c, first, &ns), 0);
        CU_ASSERT_EQUAL(ns, 1000000 + i);
        CU_ASSERT_EQUAL(cn__shm_commit_lookup(&c, first + n - 1, &ns), 0);
        CU_ASSERT_EQUAL(ns, 1000000 + i);
        if (i) {
            CU_ASSERT_EQUAL(cn__shm_commit_lookup(&c, first - 1, &ns), 0);
            CU_ASSERT_EQUAL(ns, 1000000 + i - 1);
        }
        first += n;
    }
}

static void
test_concurrent_writer(void)
{
    cn_shm_commits_t *c = mmap(NULL, sizeof(*c), PROT_READ | PROT_WRITE,
                               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    uint64_t found = 0, lookups = 0, bad = 0, end = unit_now_ms() + CHILD_BOUND_MS;
    pid_t pid;
    int status = 0;

    CU_ASSERT_FATAL(c != MAP_FAILED);
    memset(c, 0, sizeof(*c));
    pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0) {
        for (uint64_t i = 0; i < WRITER_BATCHES; i++)
            cn__shm_commit_publish(c, i * BATCH + 1, (i + 1) * BATCH, batch_ns(i));
        _exit(0);
    }
    while (unit_now_ms() < end) {
        uint64_t n = atomic_load(&c->next), ns;
        int done = n >= WRITER_BATCHES; /* one more pass over the final ring */
        /* A seq in one of the newest batches, and one a little older. */
        for (uint64_t back = 0; back < 2 * CN_SHM_COMMITS; back += 7) {
            if (back >= n)
                break;
            uint64_t b = n - 1 - back, s = b * BATCH + 1 + (lookups % BATCH);
            lookups++;
            if (!cn__shm_commit_lookup(c, s, &ns)) {
                found++;
                if (ns != batch_ns((s - 1) / BATCH))
                    bad++;
            }
        }
        if (done)
            break;
    }
    CU_ASSERT_EQUAL(unit_reap_within(pid, CHILD_BOUND_MS, &status), 0);
    CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT(found > 0);
    CU_ASSERT(lookups > 0);
    munmap(c, sizeof(*c));
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"empty ring", test_empty},
        {"the last batches, wrap-around", test_window},
        {"one-event and big batches", test_mixed_sizes},
        {"a writer process and a reader, no torn entry", test_concurrent_writer},
        {NULL, NULL},
    };
    return unit_run("commits", tests);
}
