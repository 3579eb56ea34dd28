/* Redis's own rate for the opsbus command mix, on one connection with a pipeline (hiredis).
 * redis_pipe -p PORT -m xadd|bridge|processor -n COUNT [-b BATCH] [-s PAYLOAD_BYTES]
 *   xadd       XADD events:bench MAXLEN ~ 1000000 * topic … payload … (the bridge's entry, no script)
 *   bridge     EVALSHA of a script like the bridge's before session 6, one call per event: dedup SET NX EX + XADD
 *   bridge-batch  one EVALSHA per BATCH events of a script like the bridge's appendBatch: per event a dedup ZSCORE,
 *              XADD and ZADD, the stats HINCRBY once per call (the pipeline then holds one call)
 *   processor  EVALSHA of a script like the processor's job script: seen-set SADD, HSET of the job hash,
 *              RPUSH+LTRIM of the timeline, status index SREM/SADD, plus the stats HINCRBYs
 * Prints one JSON line. */
#include "common.h"
#include <hiredis/hiredis.h>
#include <unistd.h>

static const char *bridge_lua =
    "if redis.call('SET', KEYS[2], '1', 'NX', 'EX', 86400) then "
    "return redis.call('XADD', KEYS[1], 'MAXLEN', '~', 1000000, '*', 'topic', ARGV[1], 'payload', ARGV[2], "
    "'event_id', ARGV[3], 'event_type', 'job.progress', 'qos', '1', 'retain', '0', 'received_at', ARGV[4], "
    "'bridge', 'bench') end return false";

static const char *bridge_batch_lua =
    "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 "
    "local results, n = {}, 0 "
    "for i = 1, #ARGV, 4 do "
    "  n = n + 1 "
    "  if redis.call('ZSCORE', KEYS[2], ARGV[i]) then results[n] = '' else "
    "    results[n] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', 1000000, '*', 'topic', ARGV[i + 1], "
    "      'payload', ARGV[i + 2], 'event_id', ARGV[i], 'event_type', 'job.progress', 'qos', '1', 'retain', '0', "
    "      'received_at', ARGV[i + 3], 'bridge', 'bench') "
    "    redis.call('ZADD', KEYS[2], now, ARGV[i]) end "
    "end "
    "redis.call('HINCRBY', KEYS[3], 'bridge_entries', n) "
    "return results";

static const char *processor_lua =
    "if redis.call('SADD', KEYS[3], ARGV[1]) == 0 then return 0 end "
    "redis.call('EXPIRE', KEYS[3], 86400) "
    "redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated_at', ARGV[3], 'progress', ARGV[4], 'worker_id', 'gpu-1') "
    "redis.call('RPUSH', KEYS[2], ARGV[5]) redis.call('LTRIM', KEYS[2], -200, -1) "
    "redis.call('SREM', KEYS[4], ARGV[6]) redis.call('SADD', KEYS[5], ARGV[6]) "
    "redis.call('HINCRBY', KEYS[6], 'events_received', 1) redis.call('HINCRBY', KEYS[6], 'type:job.progress', 1) "
    "return 1";

int main(int argc, char **argv) {
    int port = 6379, batch = 100, size = 400, opt;
    long count = 100000;
    const char *mode = "xadd";
    while ((opt = getopt(argc, argv, "p:m:n:b:s:")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'm': mode = optarg; break;
        case 'n': count = atol(optarg); break;
        case 'b': batch = atoi(optarg); break;
        case 's': size = atoi(optarg); break;
        default: fprintf(stderr, "usage: redis_pipe -p PORT -m MODE -n N [-b BATCH]\n"); return 2;
        }
    }
    redisContext *c = redisConnect("127.0.0.1", port);
    if (!c || c->err) { fprintf(stderr, "redis connect failed\n"); return 1; }
    char *payload = malloc(size + 1);
    memset(payload, 'x', size);
    payload[size] = 0;
    char sha[64] = {0};
    int batched = strcmp(mode, "bridge-batch") == 0;
    const char *script = strcmp(mode, "bridge") == 0 ? bridge_lua
                       : batched                     ? bridge_batch_lua
                       : strcmp(mode, "processor") == 0 ? processor_lua : NULL;
    if (script) {
        redisReply *r = redisCommand(c, "SCRIPT LOAD %s", script);
        if (!r || r->type != REDIS_REPLY_STRING) { fprintf(stderr, "script load failed\n"); return 1; }
        snprintf(sha, sizeof sha, "%s", r->str);
        freeReplyObject(r);
    }
    char topic[128], id[64], key1[128], key2[128], key3[128];
    /* bridge-batch: argv of one call, 6 fixed + 4 per event; the strings live in `text` until the call is sent. */
    const char **args = malloc(sizeof(char *) * (6 + 4 * (size_t)batch));
    size_t *lens = malloc(sizeof(size_t) * (6 + 4 * (size_t)batch));
    char *text = malloc((size_t)batch * 256);
    double cpu0 = cpu_self(), t0 = now_mono();
    for (long done = 0; done < count;) {
        long n = count - done < batch ? count - done : batch;
        if (batched) {
            int a = 0;
            char *next = text;
            args[a] = "EVALSHA"; lens[a++] = 7;
            args[a] = sha; lens[a++] = strlen(sha);
            args[a] = "3"; lens[a++] = 1;
            args[a] = "events:bench"; lens[a++] = 12;
            args[a] = "bridge:dedup:events:bench"; lens[a++] = 25;
            args[a] = "opsbus:stats"; lens[a++] = 12;
            for (long i = 0; i < n; i++) {
                long k = done + i;
                args[a] = next; lens[a++] = (size_t)sprintf(next, "e:evt-%d-%ld", getpid(), k); next += lens[a - 1] + 1;
                args[a] = next; lens[a++] = (size_t)sprintf(next, "jobs/job-%ld/progress", k % 1000); next += lens[a - 1] + 1;
                args[a] = payload; lens[a++] = (size_t)size;
                args[a] = "2026-11-29T00:00:00.000Z"; lens[a++] = 24;
            }
            redisAppendCommandArgv(c, a, args, lens);
            redisReply *r;
            if (redisGetReply(c, (void **)&r) != REDIS_OK) { fprintf(stderr, "redis error\n"); return 1; }
            if (r->type != REDIS_REPLY_ARRAY || (long)r->elements != n) {
                fprintf(stderr, "redis: %s\n", r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
                return 1;
            }
            freeReplyObject(r);
            done += n;
            continue;
        }
        for (long i = 0; i < n; i++) {
            long k = done + i;
            snprintf(topic, sizeof topic, "jobs/job-%ld/progress", k % 1000);
            snprintf(id, sizeof id, "evt-%d-%ld", getpid(), k);
            if (!script) {
                redisAppendCommand(c, "XADD events:bench MAXLEN ~ 1000000 * topic %s payload %b event_id %s "
                                      "event_type job.progress qos 1 retain 0 received_at 2026-11-29T00:00:00.000Z bridge bench",
                                   topic, payload, (size_t)size, id);
            } else if (strcmp(mode, "bridge") == 0) {
                snprintf(key1, sizeof key1, "bridge:dedup:{events:bench}:%s", id);
                redisAppendCommand(c, "EVALSHA %s 2 events:bench %s %s %b %s 2026-11-29T00:00:00.000Z", sha, key1,
                                   topic, payload, (size_t)size, id);
            } else {
                snprintf(key1, sizeof key1, "job:{job-%ld}", k % 1000);
                snprintf(key2, sizeof key2, "job:{job-%ld}:timeline", k % 1000);
                snprintf(key3, sizeof key3, "job:{job-%ld}:seen", k % 1000);
                redisAppendCommand(c, "EVALSHA %s 6 %s %s %s jobs:status:queued jobs:status:running opsbus:stats "
                                      "%s running 2026-11-29T00:00:00.000Z 42 %b job-%ld",
                                   sha, key1, key2, key3, id, payload, (size_t)size, k % 1000);
            }
        }
        for (long i = 0; i < n; i++) {
            redisReply *r;
            if (redisGetReply(c, (void **)&r) != REDIS_OK) { fprintf(stderr, "redis error\n"); return 1; }
            if (r->type == REDIS_REPLY_ERROR) { fprintf(stderr, "redis: %s\n", r->str); return 1; }
            freeReplyObject(r);
        }
        done += n;
    }
    double seconds = now_mono() - t0, cpu = cpu_self() - cpu0;
    printf("{\"mode\":\"%s\",\"events\":%ld,\"seconds\":%.6f,\"rate\":%.1f,\"cpu_us_per_event\":%.3f}\n", mode, count,
           seconds, count / seconds, cpu * 1e6 / count);
    redisFree(c);
    return 0;
}
