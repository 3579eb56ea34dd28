#!/usr/bin/env python3
"""Redis's own cost per processor event, measured apart from the rest of the box (issue 6).

`capture` runs the batching processor (`--journal`) once over the lifecycle mix while `redis-cli monitor` records
what it sends: the scripts it loads and every batch call (`EVALSHA` of `BatchApplyScript`). `replay` sends those
calls again, in order, to a fresh redis-server configured like the benchmark's (AOF on, `appendfsync everysec`),
from this script alone, and reports Redis's CPU time, its `EVALSHA` time and the commands the scripts ran, per
event, plus a digest of the state the replay left (so two script versions can be checked for the same result).

With `--callgrind` the replay runs redis-server under valgrind's callgrind and reports *instructions* per event
instead of time: slow (about a minute for 22,000 events) but the same from run to run on a shared, noisy box,
which is what comparing two versions of a script needs. Debian's redis-server has no symbols, so callgrind gives
totals, not functions; `--variants FILE` isolates the parts: every function `name(source) -> source` in FILE is a
variant of the captured scripts (e.g. the batch script with its event functions returning at once), replayed
after the captured ones in each round.

    .bench/venv/bin/python Benchmarks/redis_replay.py capture [--bin .bench/bin] [--events 22000]
    .bench/venv/bin/python Benchmarks/redis_replay.py replay [--rounds 3] [--callgrind] [--aof no] [--variants FILE]

`scripts/bench` builds `.bench/bin` and `.bench/venv`; the capture goes to `.bench/replay/`.
"""
import argparse
import glob
import hashlib
import importlib.util
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MONITOR_LINE = re.compile(r'^\d+\.\d+ \[\d+ ([^\]]+)\] (.*)$')
QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "a": b"\a", "b": b"\b", '"': b'"', "\\": b"\\"}
BATCH_SCRIPT_START = "local counts = {}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_server(directory, aof="yes", prefix=()):
    """A redis-server configured like the benchmark's, on a free port; returns (process, port)."""
    port = free_port()
    conf = os.path.join(directory, "redis.conf")
    with open(conf, "w") as f:
        f.write(f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {directory}\nsave \"\"\n"
                f"appendonly {aof}\nappendfsync everysec\nloglevel warning\n")
    proc = subprocess.Popen(list(prefix) + ["redis-server", conf], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port, 120)
    return proc, port


def mosquitto_server(directory, extra=""):
    """A mosquitto configured like the benchmark's (persistence, no queue limit, TCP_NODELAY) on a free port, with
    `extra` configuration lines; returns (process, port)."""
    port = free_port()
    conf = os.path.join(directory, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                f"persistence_location {directory}/\nmax_queued_messages 0\nset_tcp_nodelay true\n" + extra
                + ("user root\n" if os.getuid() == 0 else ""))
    proc = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def capture(args):
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="capture-", dir=args.out)
    redis, redis_port = redis_server(work)
    broker, mqtt_port = mosquitto_server(work)
    monitor = subprocess.Popen(["redis-cli", "-p", str(redis_port), "monitor"],
                               stdout=open(os.path.join(args.out, "monitor.txt"), "w"))
    time.sleep(0.3)
    load = os.path.join(work, "lifecycle.load")
    subprocess.run([os.path.join(args.bin, "opsbus-bench"), "gen", "--kind", "lifecycle", "--events",
                    str(args.events), "--size", "400", "--jobs", "1000", "--out", load], check=True)
    events = sum(1 for _ in open(load))
    processor = subprocess.Popen(
        [os.path.join(args.bin, "opsbus"), "processor", "--client-id", "replay-capture",
         "--mqtt-url", f"mqtt://127.0.0.1:{mqtt_port}", "--redis-url", f"redis://127.0.0.1:{redis_port}",
         "--journal", os.path.join(work, "journal")], env={**os.environ, "OPSBUS_LOG_LEVEL": "error"})
    time.sleep(2)
    subprocess.run([os.path.join(args.bin, "mqtt_pub"), "-p", str(mqtt_port), "-f", load, "-n", str(events),
                    "-q", "1", "-w", "2000"], check=True, stdout=subprocess.DEVNULL)
    applied = 0
    deadline = time.time() + 120
    while applied < events and time.time() < deadline:
        out = subprocess.run(["redis-cli", "-p", str(redis_port), "hget", "opsbus:stats", "events_received"],
                             capture_output=True, text=True).stdout.strip()
        applied = int(out or 0)
        time.sleep(0.1)
    time.sleep(0.5)
    for proc in (processor, monitor, broker, redis):
        proc.terminate()
        proc.wait()
    shutil.rmtree(work, ignore_errors=True)
    print(f"captured the processor's calls for {applied} of {events} events in {args.out}/monitor.txt")


def unescape(text):
    """A `redis-cli monitor` argument (sdscatrepr quoting) as bytes."""
    raw = text.encode()
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C:  # backslash
            kind = chr(raw[i + 1])
            if kind == "x":
                out.append(int(raw[i + 2:i + 4], 16))
                i += 4
            else:
                out += ESCAPES[kind]
                i += 2
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def captured(directory):
    """(scripts by SHA1, the batch calls in order, events in them, calls by kind)."""
    scripts, calls = {}, []
    for line in open(os.path.join(directory, "monitor.txt"), encoding="utf-8", errors="surrogateescape"):
        m = MONITOR_LINE.match(line.rstrip("\n"))
        if not m or m.group(1) == "lua":  # commands run by scripts are the replay's to run
            continue
        argv = [unescape(a) for a in QUOTED.findall(m.group(2))]
        if len(argv) > 2 and argv[0].upper() == b"SCRIPT" and argv[1].upper() == b"LOAD":
            scripts[hashlib.sha1(argv[2]).hexdigest()] = argv[2].decode()
        elif argv and argv[0].upper() == b"EVALSHA":
            calls.append(argv)
    batch = [c for c in calls if scripts.get(c[1].decode(), "").startswith(BATCH_SCRIPT_START)]
    events, kinds = 0, {}
    for call in batch:
        arguments = call[3 + int(call[2]):]
        # Where the calls start: after the count, and since session 10 after the batch's constants too.
        start = re.search(r"local key_at, arg_at = \d+, (\d+)", scripts[call[1].decode()])
        at = int(start.group(1)) - 1 if start else 1
        for _ in range(int(arguments[0])):
            kind = arguments[at].decode()
            label = f"j:{arguments[at + 4].decode()}" if kind == "j" else kind
            kinds[label] = kinds.get(label, 0) + 1
            events += kind in ("j", "e")
            at += 3 + int(arguments[at + 2])
    return scripts, batch, events, kinds


def state_digest(r):
    """The keys and their contents (stream entries without their ids, which are times), hashed."""
    digest = hashlib.sha1()
    for key in sorted(r.keys("*")):
        kind = r.type(key)
        if kind == b"hash":
            value = sorted(r.hgetall(key).items())
        elif kind == b"set":
            value = sorted(r.smembers(key))
        elif kind == b"zset":
            value = r.zrange(key, 0, -1, withscores=True)
        elif kind == b"list":
            value = r.lrange(key, 0, -1)
        elif kind == b"stream":
            value = [sorted(fields.items()) for _, fields in r.xrange(key)]
        else:
            value = r.get(key)
        digest.update(key + b"|" + kind + b"|" + repr(value).encode())
    return f"{r.dbsize()} keys, {digest.hexdigest()[:12]}"


def replay_once(scripts, calls, events, transform, args):
    import redis as redispy  # from .bench/venv
    work = tempfile.mkdtemp(prefix="replay-")
    prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/callgrind.out"] if args.callgrind else []
    proc, port = redis_server(work, aof=args.aof, prefix=prefix)
    try:
        r = redispy.Redis(port=port)
        sha = {old.encode(): r.script_load(transform(source)).encode() for old, source in scripts.items()}
        if prefix:
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        errors = 0
        cpu0 = cpu_seconds(proc.pid)
        # Two calls in flight, like the processor's two writers.
        for start in range(0, len(calls), 2):
            pipe = r.pipeline(transaction=False)
            for call in calls[start:start + 2]:
                pipe.execute_command(call[0], sha[call[1]], *call[2:])
            errors += sum(isinstance(x, Exception) for x in pipe.execute(raise_on_error=False))
        cpu = cpu_seconds(proc.pid) - cpu0
        instructions = None
        if prefix:
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
            dump = sorted(glob.glob(f"{work}/callgrind.out.*"))[0]
            instructions = next(int(line.split()[1]) for line in open(dump) if line.startswith("summary:"))
        stats = r.info("commandstats")
        evalsha_us = stats["cmdstat_evalsha"]["usec"]
        commands = sum(v["calls"] for k, v in stats.items()
                       if k not in ("cmdstat_evalsha", "cmdstat_script|load", "cmdstat_info", "cmdstat_ping"))
        digest = state_digest(r)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    return dict(cpu_us=cpu * 1e6 / events, evalsha_us=evalsha_us / events, commands=commands / events,
                instructions=instructions / events if instructions else None, errors=errors, state=digest)


def replay(args):
    scripts, calls, events, kinds = captured(args.out)
    if not calls:
        raise SystemExit(f"no batch calls in {args.out}/monitor.txt: run `capture` first")
    print(f"{len(calls)} batch calls, {events} events; calls by kind: "
          + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    variants = {"captured": lambda source: source}
    if args.variants:
        spec = importlib.util.spec_from_file_location("variants", args.variants)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        variants.update({name: fn for name, fn in vars(module).items()
                         if callable(fn) and not name.startswith("_") and fn.__module__ == "variants"})
    results = {name: [] for name in variants}
    for round_ in range(1, args.rounds + 1):
        for name, transform in variants.items():
            result = replay_once(scripts, calls, events, transform, args)
            results[name].append(result)
            figure = (f"{result['instructions'] / 1000:7.1f} k instructions/ev" if result["instructions"]
                      else f"redis-server CPU {result['cpu_us']:6.1f} µs/ev, EVALSHA {result['evalsha_us']:6.1f} µs/ev")
            print(f"round {round_} {name:16s} {figure}, {result['commands']:.2f} commands/ev, "
                  f"errors {result['errors']}, state {result['state']}", flush=True)
    key = "instructions" if args.callgrind else "cpu_us"
    for name, runs in results.items():
        values = [r[key] for r in runs]
        shown = f"{statistics.median(values) / 1000:.1f} k instructions/ev" if args.callgrind \
            else f"{statistics.median(values):.1f} µs/ev of redis-server CPU"
        print(f"{name:16s} median {shown} ({len(values)} rounds)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("capture", help="run the batching processor once and record its batch calls")
    c.add_argument("--bin", default=os.path.join(ROOT, ".bench", "bin"), help="opsbus, opsbus-bench, mqtt_pub")
    c.add_argument("--events", type=int, default=22000, help="lifecycle mix events (default 22000)")
    r = sub.add_parser("replay", help="replay the recorded batch calls against a fresh redis-server")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--callgrind", action="store_true", help="count instructions under valgrind's callgrind")
    r.add_argument("--aof", choices=("yes", "no"), default="yes", help="appendonly (default yes, as benchmarked)")
    r.add_argument("--variants", help="Python file of functions script_source -> script_source to compare")
    for p in (c, r):
        p.add_argument("--out", default=os.path.join(ROOT, ".bench", "replay"), help="capture directory")
    args = parser.parse_args()
    if args.command == "capture":
        capture(args)
    else:
        if args.callgrind and not shutil.which("valgrind"):
            raise SystemExit("--callgrind needs valgrind (Debian: apt-get install valgrind)")
        replay(args)


if __name__ == "__main__":
    sys.exit(main())
