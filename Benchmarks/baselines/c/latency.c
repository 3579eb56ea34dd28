/* End-to-end latency publish → Redis state, at a fixed offered rate.
 * latency -p MQTT_PORT -P REDIS_PORT -f LOADFILE -r RATE -o LATENCIES [-n COUNT] [-m]
 * -m: the broker alone, the baseline: a C subscriber (QoS 1) stands in for the processor and Redis, and each
 * delivery is matched instead of each timeline RPUSH. Same publisher, rate and matching.
 * A publisher thread sends the load file's messages (its QoS per message) at RATE/s and stamps each send time. The
 * main thread listens for Redis keyspace notifications on job:{<id>}:timeline (the processor's job script RPUSHes
 * one timeline entry per applied event, in the same atomic script call that writes the job hash), and matches
 * each notification to the job's oldest unmatched event. Writes one latency in µs per line to LATENCIES and
 * prints one JSON line. One processor instance keeps a job's events in order, so the matching is exact. */
#include "common.h"
#include <hiredis/hiredis.h>
#include <mosquitto.h>
#include <pthread.h>
#include <unistd.h>

typedef struct { char *id; long *events; int n, cap, cursor; } job_t;

static load_t load;
static int64_t *sent_at;         /* per event, CLOCK_MONOTONIC ns; 0 = not sent yet */
static long count;
static double rate = 5000;
static int mqtt_port = 1883;
static volatile int publishing_done = 0;
static job_t *jobs;
static size_t njobs, table_size;
static long *table;              /* open addressing: index into jobs, -1 empty */

static unsigned long hash_str(const char *s, size_t n) {
    unsigned long h = 1469598103934665603UL;
    for (size_t i = 0; i < n; i++) { h ^= (unsigned char)s[i]; h *= 1099511628211UL; }
    return h;
}

static long find_job(const char *id, size_t n, int create) {
    unsigned long h = hash_str(id, n) % table_size;
    while (table[h] >= 0) {
        job_t *j = &jobs[table[h]];
        if (strlen(j->id) == n && memcmp(j->id, id, n) == 0) return table[h];
        h = (h + 1) % table_size;
    }
    if (!create) return -1;
    jobs[njobs].id = strndup(id, n);
    table[h] = (long)njobs;
    return (long)njobs++;
}

static void *publisher(void *arg) {
    (void)arg;
    struct mosquitto *m = mosquitto_new(NULL, true, NULL);
    mosquitto_max_inflight_messages_set(m, 20);
    mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);   /* as opsbus's clients do; Nagle would hold small packets */
    if (mosquitto_connect(m, "127.0.0.1", mqtt_port, 60) != MOSQ_ERR_SUCCESS) { fprintf(stderr, "connect failed\n"); exit(1); }
    mosquitto_loop_start(m);
    usleep(200000);
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    long interval = (long)(1e9 / rate);
    for (long i = 0; i < count; i++) {
        next.tv_nsec += interval;
        while (next.tv_nsec >= 1000000000L) { next.tv_nsec -= 1000000000L; next.tv_sec++; }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        message_t *msg = &load.items[i];
        __atomic_store_n(&sent_at[i], (int64_t)(now_mono() * 1e9), __ATOMIC_RELEASE);
        mosquitto_publish(m, NULL, msg->topic, msg->payload_len, msg->payload, msg->qos, false);
    }
    publishing_done = 1;
    sleep(1);
    mosquitto_disconnect(m);
    mosquitto_loop_stop(m, false);
    return NULL;
}

/* Matches one arrival (a job id) to the job's oldest unmatched event; writes its latency. */
static FILE *out_file;
static long matched, unmatched;
static pthread_mutex_t match_lock = PTHREAD_MUTEX_INITIALIZER;
static void arrived(const char *id, size_t n, double at) {
    pthread_mutex_lock(&match_lock);
    long k = find_job(id, n, 0);
    if (k >= 0 && jobs[k].cursor < jobs[k].n) {
        long e = jobs[k].events[jobs[k].cursor++];
        int64_t s = __atomic_load_n(&sent_at[e], __ATOMIC_ACQUIRE);
        if (s > 0) { fprintf(out_file, "%ld\n", (long)((at * 1e9 - (double)s) / 1e3)); matched++; }
    } else {
        unmatched++;
    }
    pthread_mutex_unlock(&match_lock);
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg) {
    (void)m; (void)obj;
    double at = now_mono();
    const char *a = strchr(msg->topic, '/'), *b = a ? strchr(a + 1, '/') : NULL;
    if (a && b) arrived(a + 1, b - a - 1, at);
}

int main(int argc, char **argv) {
    int redis_port = 6379, opt, broker_only = 0;
    const char *file = NULL, *out = "latencies.txt";
    count = -1;
    while ((opt = getopt(argc, argv, "p:P:f:r:o:n:m")) != -1) {
        switch (opt) {
        case 'p': mqtt_port = atoi(optarg); break;
        case 'P': redis_port = atoi(optarg); break;
        case 'f': file = optarg; break;
        case 'r': rate = atof(optarg); break;
        case 'o': out = optarg; break;
        case 'n': count = atol(optarg); break;
        case 'm': broker_only = 1; break;
        default: fprintf(stderr, "usage: latency -p MQTT -P REDIS -f FILE -r RATE -o OUT\n"); return 2;
        }
    }
    if (!file) { fprintf(stderr, "latency: -f FILE required\n"); return 2; }
    load = load_file(file);
    if (count < 0 || count > (long)load.count) count = (long)load.count;
    sent_at = calloc(count, sizeof(int64_t));
    table_size = count * 2 + 1;
    table = malloc(table_size * sizeof(long));
    for (size_t i = 0; i < table_size; i++) table[i] = -1;
    jobs = calloc(count, sizeof(job_t));
    for (long i = 0; i < count; i++) {
        const char *t = load.items[i].topic;           /* jobs/<id>/<type> */
        const char *a = strchr(t, '/'), *b = a ? strchr(a + 1, '/') : NULL;
        if (!a || !b) continue;
        job_t *j = &jobs[find_job(a + 1, b - a - 1, 1)];
        if (j->n == j->cap) { j->cap = j->cap ? j->cap * 2 : 16; j->events = realloc(j->events, j->cap * sizeof(long)); }
        j->events[j->n++] = i;
    }
    out_file = fopen(out, "w");
    if (broker_only) {
        struct mosquitto *sub = mosquitto_new("bench-latency-sub", true, NULL);
        mosquitto_int_option(sub, MOSQ_OPT_TCP_NODELAY, 1);
        mosquitto_message_callback_set(sub, on_message);
        if (mosquitto_connect(sub, "127.0.0.1", mqtt_port, 60) != MOSQ_ERR_SUCCESS) { fprintf(stderr, "connect failed\n"); return 1; }
        mosquitto_subscribe(sub, NULL, "jobs/#", 1);
        mosquitto_loop_start(sub);
        usleep(300000);
        pthread_t thread;
        pthread_create(&thread, NULL, publisher, NULL);
        pthread_join(thread, NULL);
        for (int i = 0; i < 100 && matched < count; i++) usleep(100000);
        mosquitto_disconnect(sub);
        mosquitto_loop_stop(sub, false);
        fclose(out_file);
        printf("{\"sent\":%ld,\"matched\":%ld,\"unmatched\":%ld,\"rate\":%.1f}\n", count, matched, unmatched, rate);
        return 0;
    }
    redisContext *c = redisConnect("127.0.0.1", redis_port);
    if (!c || c->err) { fprintf(stderr, "redis connect failed\n"); return 1; }
    freeReplyObject(redisCommand(c, "CONFIG SET notify-keyspace-events Kl"));
    redisReply *r = redisCommand(c, "PSUBSCRIBE __keyspace@0__:job:*:timeline");
    freeReplyObject(r);
    struct timeval tv = {0, 200000};
    redisSetTimeout(c, tv);
    pthread_t thread;
    pthread_create(&thread, NULL, publisher, NULL);
    double done_at = 0;
    while (matched < count) {
        if (redisGetReply(c, (void **)&r) != REDIS_OK) {
            if (publishing_done) {
                if (done_at == 0) done_at = now_mono();
                else if (now_mono() - done_at > 10) break;   /* give up on the missing ones */
            }
            c->err = 0;
            continue;
        }
        double at = now_mono();
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 4 && strcmp(r->element[3]->str, "rpush") == 0) {
            const char *ch = r->element[2]->str;      /* __keyspace@0__:job:{<id>}:timeline */
            const char *a = strchr(ch, '{'), *b = a ? strchr(a, '}') : NULL;
            if (a && b) arrived(a + 1, b - a - 1, at); else unmatched++;
        }
        freeReplyObject(r);
    }
    fclose(out_file);
    pthread_join(thread, NULL);
    printf("{\"sent\":%ld,\"matched\":%ld,\"unmatched\":%ld,\"rate\":%.1f}\n", count, matched, unmatched, rate);
    return 0;
}
