/* Shared helpers for the C baselines and load tools of the opsbus benchmarks (scripts/bench builds them). */
#ifndef OPSBUS_BENCH_COMMON_H
#define OPSBUS_BENCH_COMMON_H
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

static inline double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static inline double now_real(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static inline double cpu_self(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
}

/* One message of a load file: "qos<TAB>topic<TAB>payload\n" lines written by `opsbus-bench gen`. */
typedef struct {
    int qos;
    char *topic;
    char *payload;
    int payload_len;
} message_t;

typedef struct {
    message_t *items;
    size_t count;
} load_t;

__attribute__((unused)) static load_t load_file(const char *path) {
    load_t load = {0};
    FILE *f = fopen(path, "r");
    if (!f) { perror(path); exit(2); }
    size_t cap = 1024;
    load.items = malloc(cap * sizeof(message_t));
    char *line = NULL;
    size_t linecap = 0;
    ssize_t n;
    while ((n = getline(&line, &linecap, f)) > 0) {
        if (line[n - 1] == '\n') line[--n] = 0;
        char *t1 = strchr(line, '\t');
        if (!t1) continue;
        char *t2 = strchr(t1 + 1, '\t');
        if (!t2) continue;
        *t1 = 0; *t2 = 0;
        if (load.count == cap) { cap *= 2; load.items = realloc(load.items, cap * sizeof(message_t)); }
        message_t *m = &load.items[load.count++];
        m->qos = atoi(line);
        m->topic = strdup(t1 + 1);
        m->payload_len = (int)(n - (t2 + 1 - line));
        m->payload = malloc(m->payload_len + 1);
        memcpy(m->payload, t2 + 1, m->payload_len + 1);
    }
    free(line);
    fclose(f);
    if (load.count == 0) { fprintf(stderr, "%s: no messages\n", path); exit(2); }
    return load;
}
#endif
