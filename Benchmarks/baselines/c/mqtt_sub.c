/* Minimal libmosquitto subscriber: durable session (clean_session false, fixed client id), QoS 1, counts messages.
 * The broker's own QoS 1 delivery rate, the limit the opsbus bridge and processor are compared with.
 * mqtt_sub -p PORT -t FILTER -n COUNT [-c CLIENTID]; prints "ready" on stderr once subscribed, then one JSON line
 * when COUNT messages arrived: first/last arrival (CLOCK_REALTIME) and its own CPU per message. */
#include "common.h"
#include <mosquitto.h>
#include <unistd.h>

static long target = 0, received = 0;
static double first = 0, last = 0, cpu0 = 0;
static const char *filter = "jobs/#";

static void on_connect(struct mosquitto *m, void *u, int rc) {
    (void)u;
    if (rc != 0) { fprintf(stderr, "connect refused %d\n", rc); exit(1); }
    mosquitto_subscribe(m, NULL, filter, 1);
}

static void on_subscribe(struct mosquitto *m, void *u, int mid, int n, const int *granted) {
    (void)m; (void)u; (void)mid; (void)n; (void)granted;
    fprintf(stderr, "ready\n");
    cpu0 = cpu_self();
}

static void on_message(struct mosquitto *m, void *u, const struct mosquitto_message *msg) {
    (void)u; (void)msg;
    if (received == 0) first = now_real();
    received++;
    if (received >= target) {
        last = now_real();
        mosquitto_disconnect(m);
    }
}

int main(int argc, char **argv) {
    int port = 1883, opt;
    const char *client_id = "bench-c-sub";
    while ((opt = getopt(argc, argv, "p:t:n:c:")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 't': filter = optarg; break;
        case 'n': target = atol(optarg); break;
        case 'c': client_id = optarg; break;
        default: fprintf(stderr, "usage: mqtt_sub -p PORT -t FILTER -n COUNT\n"); return 2;
        }
    }
    mosquitto_lib_init();
    struct mosquitto *m = mosquitto_new(client_id, false, NULL);
    mosquitto_max_inflight_messages_set(m, 20);
    mosquitto_connect_callback_set(m, on_connect);
    mosquitto_subscribe_callback_set(m, on_subscribe);
    mosquitto_message_callback_set(m, on_message);
    if (mosquitto_connect(m, "127.0.0.1", port, 60) != MOSQ_ERR_SUCCESS) { fprintf(stderr, "connect failed\n"); return 1; }
    mosquitto_loop_forever(m, -1, 1);
    double cpu = cpu_self() - cpu0;
    printf("{\"received\":%ld,\"first_realtime\":%.6f,\"end_realtime\":%.6f,\"cpu_us_per_event\":%.3f}\n", received,
           first, last, received ? cpu * 1e6 / received : 0);
    mosquitto_destroy(m);
    mosquitto_lib_cleanup();
    return 0;
}
