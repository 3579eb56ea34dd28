#!/usr/bin/env python3
"""The MQTT → Redis Streams bridge a user would otherwise write (the baseline of the opsbus bridge scenario).

paho-mqtt 2.x + redis-py: subscribes at QoS 1 with a durable session, collects messages, writes each batch with one
pipelined XADD per message (the same entry fields as opsbus bridge: topic, payload, event_id, event_type,
session_id, seq, qos, retain, received_at, bridge), and only then PUBACKs them (manual_ack=True + client.ack), so a
crash before the write leaves them with the broker. No dedup script: it does less than opsbus bridge does.

python_bridge.py --mqtt-port P --redis-port R [--filter jobs/#] [--stream events:jobs] [--client-id ID]
Runs until SIGTERM/SIGINT.
"""
import argparse
import json
import signal
import threading
import time
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
import redis


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mqtt-port", type=int, required=True)
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--filter", default="jobs/#")
    parser.add_argument("--stream", default="events:jobs")
    parser.add_argument("--client-id", default="python-bridge")
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()

    r = redis.Redis(host="127.0.0.1", port=args.redis_port)
    pending = []
    cond = threading.Condition()
    stop = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe(args.filter, qos=1)

    def on_message(client, userdata, message):
        with cond:
            pending.append(message)
            cond.notify()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id, clean_session=False,
                         manual_ack=True)
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", args.mqtt_port, keepalive=60)
    client.loop_start()

    def writer():
        while not stop.is_set():
            with cond:
                while not pending and not stop.is_set():
                    cond.wait(0.1)
                batch = pending[: args.batch]
                del pending[: args.batch]
            if not batch:
                continue
            pipe = r.pipeline(transaction=False)
            received_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            for message in batch:
                fields = {"topic": message.topic, "payload": message.payload}
                try:
                    envelope = json.loads(message.payload)
                    for key in ("event_id", "event_type", "session_id", "seq"):
                        if key in envelope:
                            fields[key] = str(envelope[key])
                except ValueError:
                    pass
                fields.update({"qos": str(message.qos), "retain": "1" if message.retain else "0",
                               "received_at": received_at, "bridge": args.client_id})
                pipe.xadd(args.stream, fields, maxlen=1_000_000, approximate=True)
            while True:
                try:
                    pipe.execute()
                    break
                except redis.RedisError:
                    time.sleep(0.1)
            for message in batch:
                client.ack(message.mid, message.qos)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(0.5)
    thread.join(2)
    client.loop_stop()
    client.disconnect()


if __name__ == "__main__":
    main()
