/* Minimal libmosquitto publisher: the broker's own publish rate, and the load generator of the opsbus scenarios.
 * mqtt_pub -p PORT -f LOADFILE [-n COUNT] [-q QOS|-1] [-w WINDOW] [-i INFLIGHT] [-r RATE] [-c CLIENTID]
 * Publishes COUNT messages (cycling over the file) with at most WINDOW unacknowledged at once (QoS 1; QoS 0:
 * not yet written), libmosquitto's in-flight limit INFLIGHT (opsbus's MQTTClient uses 20), at RATE msgs/s
 * (0 = as fast as possible). Prints one JSON line. */
#include "common.h"
#include <mosquitto.h>
#include <pthread.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static long outstanding = 0, completed = 0;
static int connected = 0, waiting = 0;

static void on_connect(struct mosquitto *m, void *u, int rc) {
    (void)m; (void)u;
    pthread_mutex_lock(&lock);
    connected = rc == 0 ? 1 : -1;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
}

static void on_publish(struct mosquitto *m, void *u, int mid) {
    (void)m; (void)u; (void)mid;
    pthread_mutex_lock(&lock);
    outstanding--;
    completed++;
    if (waiting) pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
}

int main(int argc, char **argv) {
    int port = 1883, qos_override = -1, window = 2000, inflight = 20, opt;
    long count = -1;
    double rate = 0;
    const char *file = NULL, *client_id = NULL;
    while ((opt = getopt(argc, argv, "p:f:n:q:w:i:r:c:")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'f': file = optarg; break;
        case 'n': count = atol(optarg); break;
        case 'q': qos_override = atoi(optarg); break;
        case 'w': window = atoi(optarg); break;
        case 'i': inflight = atoi(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'c': client_id = optarg; break;
        default: fprintf(stderr, "usage: mqtt_pub -p PORT -f FILE [-n N] [-q QOS] [-w W] [-i I] [-r RATE]\n"); return 2;
        }
    }
    if (!file) { fprintf(stderr, "mqtt_pub: -f FILE required\n"); return 2; }
    load_t load = load_file(file);
    if (count < 0) count = (long)load.count;
    mosquitto_lib_init();
    struct mosquitto *m = mosquitto_new(client_id, true, NULL);
    mosquitto_int_option(m, MOSQ_OPT_SEND_MAXIMUM, inflight);
    mosquitto_max_inflight_messages_set(m, inflight);
    mosquitto_connect_callback_set(m, on_connect);
    mosquitto_publish_callback_set(m, on_publish);
    if (mosquitto_connect(m, "127.0.0.1", port, 60) != MOSQ_ERR_SUCCESS) { fprintf(stderr, "connect failed\n"); return 1; }
    if (mosquitto_loop_start(m) != MOSQ_ERR_SUCCESS) { fprintf(stderr, "loop_start failed\n"); return 1; }
    pthread_mutex_lock(&lock);
    while (connected == 0) pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    if (connected < 0) { fprintf(stderr, "connect refused\n"); return 1; }

    double cpu0 = cpu_self(), t0 = now_mono();
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    long interval_ns = rate > 0 ? (long)(1e9 / rate) : 0;
    for (long i = 0; i < count; i++) {
        message_t *msg = &load.items[i % load.count];
        if (interval_ns) {
            next.tv_nsec += interval_ns;
            while (next.tv_nsec >= 1000000000L) { next.tv_nsec -= 1000000000L; next.tv_sec++; }
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        }
        pthread_mutex_lock(&lock);
        while (outstanding >= window) { waiting = 1; pthread_cond_wait(&cond, &lock); waiting = 0; }
        outstanding++;
        pthread_mutex_unlock(&lock);
        int qos = qos_override >= 0 ? qos_override : msg->qos;
        int rc = mosquitto_publish(m, NULL, msg->topic, msg->payload_len, msg->payload, qos, false);
        if (rc != MOSQ_ERR_SUCCESS) { fprintf(stderr, "publish: %s\n", mosquitto_strerror(rc)); return 1; }
    }
    pthread_mutex_lock(&lock);
    while (outstanding > 0) { waiting = 1; pthread_cond_wait(&cond, &lock); waiting = 0; }
    pthread_mutex_unlock(&lock);
    double seconds = now_mono() - t0, cpu = cpu_self() - cpu0;
    printf("{\"events\":%ld,\"seconds\":%.6f,\"rate\":%.1f,\"cpu_us_per_event\":%.3f,\"end_realtime\":%.6f}\n", count,
           seconds, count / seconds, cpu * 1e6 / count, now_real());
    fflush(stdout);
    mosquitto_disconnect(m);
    mosquitto_loop_stop(m, false);
    mosquitto_destroy(m);
    mosquitto_lib_cleanup();
    return 0;
}
