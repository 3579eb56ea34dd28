#!/usr/bin/env python3
"""Runs the opsbus benchmark scenarios side by side with their limits and baselines (scripts/bench calls this).

Every scenario runs `--runs` times (≥ 3) on servers of its own: a fresh mosquitto per run (so no durable session
of an earlier run queues messages behind the next), one redis-server flushed between runs. The figure of a run is
a rate (events/s) or a latency; the table shows the median and the spread (min–max) of the runs, the limit or
baseline measured in the same invocation, their ratio, and CPU µs per event of the opsbus process (user + sys from
/proc/<pid>/stat over the run, divided by the events). Each run is also one JSON line in .bench/results-<ts>.jsonl.

The soak (bridge + batching processor at a steady rate for 10 minutes, RSS every 10 s) runs on servers of its own
in the background of the other scenarios, so that the whole run fits in 15 minutes (`--soak-alone`: after them).
"""
import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, ".bench")
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu(pid):
    """user + sys seconds of a live process (its threads included)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def proc_rss_mib(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE / 1048576
    except (FileNotFoundError, ProcessLookupError):
        return None


def wait_port(port, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class Servers:
    """Our own mosquitto and redis-server on free loopback ports, configured like OpsBusLocalServers does."""

    SCRIPT_CALLS = ("evalsha", "eval", "script", "info", "xlen", "config", "ping", "flushall", "select", "client")

    def script_commands(self):
        """Calls of the commands scripts run, from `INFO commandstats` (the script calls and the benchmark's own
        commands left out, but for its `HGET` of the processor's count, 100 per second, a fraction of a percent)."""
        stats = self.redis.info("commandstats")
        return sum(v["calls"] for k, v in stats.items()
                   if k.startswith("cmdstat_") and k[len("cmdstat_"):].split("|")[0] not in self.SCRIPT_CALLS)

    def __init__(self, work):
        self.work = work
        self.redis_port = free_port()
        rdir = os.path.join(work, "redis")
        os.makedirs(rdir, exist_ok=True)
        with open(os.path.join(rdir, "redis.conf"), "w") as f:
            f.write(f"port {self.redis_port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {rdir}\n"
                    "save \"\"\nappendonly yes\nappendfsync everysec\nloglevel warning\n")
        self.redis_proc = subprocess.Popen(["redis-server", os.path.join(rdir, "redis.conf")],
                                           stdout=open(os.path.join(rdir, "log"), "w"), stderr=subprocess.STDOUT)
        if not wait_port(self.redis_port):
            raise SystemExit("redis-server did not start")
        import redis  # redis-py, from .bench/venv (imported here so that --help works without it)
        self.redis = redis.Redis(host="127.0.0.1", port=self.redis_port)
        self.mqtt_proc = None
        self.mqtt_port = None
        self.mqtt_log = None

    def fresh_broker(self):
        """A new mosquitto with an empty persistence directory (persistence on, max_queued_messages 0), configured
        like the tests' and deploy/'s (`set_tcp_nodelay true`: without it Nagle holds small packets on loopback for
        tens of milliseconds, BENCHMARKS.md)."""
        self.stop_broker()
        self.redis.flushall()
        self.mqtt_port = free_port()
        mdir = tempfile.mkdtemp(prefix="mosquitto-", dir=self.work)
        self.mqtt_log = os.path.join(mdir, "mosquitto.log")
        lines = [f"listener {self.mqtt_port} 127.0.0.1", "allow_anonymous true", "persistence true",
                 f"persistence_location {mdir}/", "autosave_interval 1", "max_queued_messages 0",
                 f"max_queued_bytes {512 * 1024 * 1024}", "max_inflight_messages 20", "set_tcp_nodelay true",
                 f"log_dest file {self.mqtt_log}", "log_type error", "log_type warning", "log_type subscribe"]
        if os.getuid() == 0:
            lines.append("user root")
        conf = os.path.join(mdir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.mqtt_proc = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
        if not wait_port(self.mqtt_port):
            raise SystemExit("mosquitto did not start")
        self.mqtt_dir = mdir

    def wait_subscribed(self, client_id, seconds=15):
        """Waits until the broker logged a subscription of `client_id` (log_type subscribe)."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                with open(self.mqtt_log) as f:
                    if any(f" {client_id} " in line for line in f):
                        time.sleep(0.15)  # the SUBACK is on its way
                        return True
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{client_id} did not subscribe within {seconds}s")

    def stop_broker(self):
        if self.mqtt_proc:
            self.mqtt_proc.terminate()
            try:
                self.mqtt_proc.wait(5)
            except subprocess.TimeoutExpired:
                self.mqtt_proc.kill()
            shutil.rmtree(self.mqtt_dir, ignore_errors=True)
            self.mqtt_proc = None

    def close(self):
        self.stop_broker()
        self.redis_proc.terminate()
        self.redis_proc.wait(10)

    @property
    def mqtt_url(self):
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def redis_url(self):
        return f"redis://127.0.0.1:{self.redis_port}"


# The processor runs of the processor scenario, by the name `--processor-variants` takes: (consumer kind, instances).
PROCESSOR_VARIANTS = {"single": ("opsbus-processor", 1), "batch1": ("opsbus-processor-batch1", 1),
                      "batch": ("opsbus-processor-batch", 1), "x2": ("opsbus-processor-batch", 2),
                      "x4": ("opsbus-processor-batch", 4)}


class Bench:
    def __init__(self, args):
        self.args = args
        self.bin = args.bin
        self.work = tempfile.mkdtemp(prefix="opsbus-bench-")
        self.servers = Servers(self.work)
        self.results = []      # every run
        self.rows = []         # table rows
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        os.makedirs(BENCH, exist_ok=True)
        self.jsonl_path = os.path.join(BENCH, f"results-{stamp}.jsonl")
        self.jsonl = open(self.jsonl_path, "w")
        self.files = {}
        self.children = []
        self.profiles = []     # perf data files written with --profile

    # --- helpers ---------------------------------------------------------------------------------------------

    def tool(self, name):
        return os.path.join(self.bin, name)

    def measured_pid(self, proc):
        """The process whose CPU and memory count: under --profile, perf's child (the opsbus process)."""
        if self.args.profile and os.path.basename(proc.args[0]) == "perf":
            try:
                with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                    return int(f.read().split()[0])
            except (OSError, IndexError, ValueError):
                pass
        return proc.pid

    def profiled(self, argv, name):
        """`argv` under `perf record -e cpu-clock -g` with --profile (summarised at the end of the run)."""
        if not self.args.profile:
            return argv
        path = os.path.join(BENCH, f"profile-{name}-{len(self.profiles) + 1}.data")
        self.profiles.append(path)
        return ["perf", "record", "-q", "-e", "cpu-clock", "-F", "2999", "-g", "-o", path, "--"] + argv

    def load_file(self, kind, events, size=400):
        key = (kind, events, size)
        if key not in self.files:
            path = os.path.join(self.work, f"{kind}-{events}-{size}.load")
            subprocess.run([self.tool("opsbus-bench"), "gen", "--kind", kind, "--events", str(events), "--size",
                            str(size), "--jobs", "1000", "--out", path], check=True)
            self.files[key] = path
        return self.files[key]

    def record(self, scenario, run, **figures):
        entry = {"scenario": scenario, "run": run, "time": datetime.now(timezone.utc).isoformat(), **figures}
        self.results.append(entry)
        self.jsonl.write(json.dumps(entry) + "\n")
        self.jsonl.flush()
        shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in figures.items()}
        log(f"{scenario} #{run}: {shown}")
        return entry

    def spawn(self, argv, env=None, log_name=None):
        out = open(os.path.join(self.work, log_name or "child.log"), "a")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.children.append(proc)
        return proc

    def stop(self, proc, timeout=15):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.children:
            self.children.remove(proc)

    def run_json(self, argv, timeout=600):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({out.returncode}): {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def wait_until(self, predicate, timeout, poll=0.02):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return time.time()
            time.sleep(poll)
        return None

    def row(self, scenario, values, baseline_name=None, baseline=None, cpu=None, unit="ev/s", higher_better=True,
            note=""):
        self.rows.append(dict(scenario=scenario, values=values, baseline_name=baseline_name, baseline=baseline,
                              cpu=cpu, unit=unit, higher_better=higher_better, note=note))

    # --- consumers -------------------------------------------------------------------------------------------

    def start_consumer(self, kind, events, instances=1, route="jobs/#=events:jobs", filter_="jobs/#"):
        """Starts the consumer under test, waits for its subscription, returns (procs, done-predicate, cpu-pids)."""
        s = self.servers
        procs = []
        if kind == "c-sub":
            proc = subprocess.Popen([self.tool("mqtt_sub"), "-p", str(s.mqtt_port), "-t", filter_, "-n", str(events),
                                     "-c", "bench-c-sub"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    text=True)
            s.wait_subscribed("bench-c-sub")
            return [proc], (lambda: proc.poll() is not None)
        if kind == "opsbus-bridge":
            journal = tempfile.mkdtemp(prefix="journal-", dir=self.work)
            proc = self.spawn(self.profiled([self.tool("opsbus"), "bridge", "--route", route, "--journal", journal,
                                             "--client-id", "bench-bridge", "--mqtt-url", s.mqtt_url,
                                             "--redis-url", s.redis_url], "bridge"),
                              env={"OPSBUS_LOG_LEVEL": "warning"}, log_name="bridge.log")
            s.wait_subscribed("bench-bridge")
            stream = route.split("=", 1)[1].split(";")[0]
            return [proc], (lambda: s.redis.xlen(stream) >= events)
        if kind == "python-bridge":
            proc = self.spawn([sys.executable, os.path.join(ROOT, "Benchmarks", "baselines", "python_bridge.py"),
                               "--mqtt-port", str(s.mqtt_port), "--redis-port", str(s.redis_port),
                               "--client-id", "bench-pybridge", "--filter", filter_], log_name="pybridge.log")
            s.wait_subscribed("bench-pybridge")
            return [proc], (lambda: s.redis.xlen("events:jobs") >= events)
        if kind in ("opsbus-processor", "opsbus-processor-batch", "opsbus-processor-batch1"):
            for n in range(1, instances + 1):
                client = f"bench-proc-{n}"
                argv = [self.tool("opsbus"), "processor", "--client-id", client, "--mqtt-url", s.mqtt_url,
                        "--redis-url", s.redis_url]
                if kind.startswith("opsbus-processor-batch"):
                    argv += ["--journal", tempfile.mkdtemp(prefix="processor-journal-", dir=self.work)]
                if kind == "opsbus-processor-batch1":
                    argv += ["--batch-writers", "1"]
                if instances > 1:
                    argv += ["--group", "bench", "--instance", str(n)]
                procs.append(self.spawn(self.profiled(argv, kind), env={"OPSBUS_LOG_LEVEL": "error"},
                                        log_name="processor.log"))
            for n in range(1, instances + 1):
                s.wait_subscribed(f"bench-proc-{n}")

            def done():
                value = s.redis.hget("opsbus:stats", "events_received")
                return value is not None and int(value) >= events
            return procs, done
        raise ValueError(kind)

    def delivery_run(self, scenario, run, consumer, load, events, instances=1, timeout=300, **extra):
        """C publisher at QoS 1 as fast as it goes while `consumer` takes the messages; rate = events / (time from
        the first publish to the last event delivered: received, in the stream, or applied)."""
        s = self.servers
        s.fresh_broker()
        procs, done = self.start_consumer(consumer, events, instances=instances)
        pids = [self.measured_pid(p) for p in procs]
        cpu0 = {pid: proc_cpu(pid) for pid in pids}
        servers0 = (proc_cpu(s.mqtt_proc.pid), proc_cpu(s.redis_proc.pid))
        calls0 = s.script_commands()
        rss_peak = 0.0
        t0 = time.time()
        pub = subprocess.Popen([self.tool("mqtt_pub"), "-p", str(s.mqtt_port), "-f", load, "-n", str(events),
                                "-q", "1", "-w", "2000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        finished = None
        deadline = t0 + timeout
        last_rss_check = 0
        while time.time() < deadline:
            if done():
                finished = time.time()
                break
            if time.time() - last_rss_check > 0.5:
                last_rss_check = time.time()
                rss_peak = max(rss_peak, sum(proc_rss_mib(pid) or 0 for pid in pids))
            time.sleep(0.01)
        cpu1 = {pid: proc_cpu(pid) for pid in pids}
        servers1 = (proc_cpu(s.mqtt_proc.pid), proc_cpu(s.redis_proc.pid))
        extra["broker_cpu_us_per_event"] = (servers1[0] - servers0[0]) * 1e6 / events
        extra["redis_cpu_us_per_event"] = (servers1[1] - servers0[1]) * 1e6 / events
        # Commands run inside scripts (every command but the script calls themselves), per event: what the state
        # scripts cost in Redis, counted rather than timed, so it compares across runs on a noisy box.
        extra["redis_commands_per_event"] = (s.script_commands() - calls0) / events
        rss = sum(proc_rss_mib(pid) or 0 for pid in pids)
        pub_out, pub_err = pub.communicate(timeout=120)
        if consumer == "c-sub":
            sub_result = json.loads(procs[0].communicate(timeout=10)[0].strip().splitlines()[-1])
            finished = sub_result["end_realtime"]
            cpu_us = sub_result["cpu_us_per_event"]
            rss = None
        else:
            for p in procs:
                self.stop(p)
            cpu_us = None
            if finished is not None and all(cpu0[p] is not None and cpu1[p] is not None for p in cpu0):
                cpu_us = sum(cpu1[p] - cpu0[p] for p in cpu0) * 1e6 / events
        if finished is None:
            return self.record(scenario, run, consumer=consumer, events=events, rate=None, error="timeout", **extra)
        pub_result = json.loads(pub_out.strip().splitlines()[-1]) if pub_out.strip() else {}
        seconds = finished - t0
        return self.record(scenario, run, consumer=consumer, events=events, instances=instances, seconds=seconds,
                           rate=events / seconds, cpu_us_per_event=cpu_us, rss_mib=rss,
                           rss_peak_mib=max(rss_peak, rss or 0) or None,
                           publisher_rate=pub_result.get("rate"), **extra)

    # --- scenarios -------------------------------------------------------------------------------------------

    def repeat(self, scenario, fn):
        runs = [fn(run) for run in range(1, self.args.runs + 1)]
        return runs

    @staticmethod
    def figures(runs, key="rate"):
        return [r[key] for r in runs if r.get(key) is not None]

    def scenario_redis(self):
        n = self.args.events // 2
        # bridge: one script call per event (the bridge before session 6); bridge-batch: one per 100 (the bridge now)
        for mode in ("xadd", "bridge", "bridge-batch", "processor"):
            runs = self.repeat(f"redis {mode}", lambda run: self.record(
                f"redis pipeline {mode}", run, **self.run_json([self.tool("redis_pipe"), "-p",
                                                                 str(self.servers.redis_port), "-m", mode,
                                                                 "-n", str(n), "-b", "100"])))
            self.redis_rates = getattr(self, "redis_rates", {})
            self.redis_rates[mode] = statistics.median(self.figures(runs))
            how = "100 events per call" if mode == "bridge-batch" else "pipeline 100"
            self.row(f"Redis own rate: {mode} (C hiredis, {how}, 1 conn)", self.figures(runs),
                     cpu=statistics.median(self.figures(runs, "cpu_us_per_event")), note="limit")
            self.servers.redis.flushall()

    def scenario_publisher(self):
        s = self.servers
        n = self.args.events
        load = self.load_file("bridge", min(n, 100_000))
        baselines = {}
        for qos in (0, 1):
            def c_run(run, qos=qos):
                s.fresh_broker()
                return self.record(f"C publisher QoS {qos}", run, **self.run_json(
                    [self.tool("mqtt_pub"), "-p", str(s.mqtt_port), "-f", load, "-n", str(n), "-q", str(qos),
                     "-w", "2000", "-i", "20"]))
            runs = self.repeat("c-pub", c_run)
            baselines[qos] = statistics.median(self.figures(runs))
            self.row(f"C publisher (libmosquitto) QoS {qos}", self.figures(runs),
                     cpu=statistics.median(self.figures(runs, "cpu_us_per_event")), note="limit")
        for label, qos, spool in (("QoS 0", 0, "none"), ("QoS 1", 1, "none"),
                                  ("QoS 1 + spool, durability never", 1, "never"),
                                  ("QoS 1 + spool, durability always", 1, "always")):
            def o_run(run, qos=qos, spool=spool):
                # fdatasync per event: a tenth of the events keeps the run short (rates, not totals, compare)
                n = self.args.events // 10 if spool == "always" else self.args.events
                s.fresh_broker()
                spool_dir = tempfile.mkdtemp(prefix="spool-", dir=self.work)
                result = self.run_json(self.profiled(
                    [self.tool("opsbus-bench"), "publish", "--mqtt-url", s.mqtt_url, "--events", str(n), "--qos",
                     str(qos), "--spool", spool, "--dir", spool_dir, "--concurrency", "64"],
                    f"publisher-qos{qos}-spool-{spool}"))
                shutil.rmtree(spool_dir, ignore_errors=True)
                return self.record(f"opsbus publisher {label}", run, **result)
            runs = self.repeat(label, o_run)
            self.row(f"opsbus publisher {label} (64 tasks)", self.figures(runs), "C publisher QoS %d" % qos,
                     baselines[qos], cpu=statistics.median(self.figures(runs, "cpu_us_per_event")))

    def scenario_bridge(self, events=None, size=400, label=None, python=True):
        n = events or self.args.events
        load = self.load_file("bridge", n, size)
        label = label or f"bridge jobs/# {size} B"
        c = self.repeat("c", lambda run: self.delivery_run(f"{label}: C subscriber", run, "c-sub", load, n,
                                                            size=size))
        limit = statistics.median(self.figures(c))
        self.row(f"{label}, {n} ev: C subscriber QoS 1 (broker delivery)", self.figures(c),
                 cpu=statistics.median(self.figures(c, "cpu_us_per_event")), note="limit")
        o = self.repeat("o", lambda run: self.delivery_run(f"{label}: opsbus bridge", run, "opsbus-bridge", load, n,
                                                            size=size))
        o_cpu = statistics.median(self.figures(o, "cpu_us_per_event") or [float("nan")])
        self.row(f"{label}, {n} ev: opsbus bridge", self.figures(o), "C subscriber", limit, cpu=o_cpu,
                 note=f"RSS {statistics.median(self.figures(o, 'rss_peak_mib') or [0]):.0f} MiB; "
                      f"redis-server {statistics.median(self.figures(o, 'redis_cpu_us_per_event') or [0]):.0f} µs/ev")
        if python:
            # Half the events: it is a third as fast, and its rate is steady long before that.
            pn = n // 2
            pload = self.load_file("bridge", pn, size)
            p = self.repeat("p", lambda run: self.delivery_run(f"{label}: Python bridge", run, "python-bridge", pload,
                                                                pn, size=size))
            p_cpu = statistics.median(self.figures(p, "cpu_us_per_event") or [float("nan")])
            self.row(f"{label}, {n} ev: Python bridge (paho + redis-py)", self.figures(p), "C subscriber", limit,
                     cpu=p_cpu, note="baseline")
            self.row(f"{label}: CPU µs/event opsbus ÷ Python", [o_cpu], "Python bridge", p_cpu, unit="µs/ev",
                     higher_better=False, note="target ≤ 0.1")
        return o

    def scenario_processor(self):
        n = self.args.processor_events
        load = self.load_file("lifecycle", n)
        events = sum(1 for _ in open(load))
        c = self.repeat("c", lambda run: self.delivery_run("processor mix: C subscriber", run, "c-sub", load, events))
        limit = statistics.median(self.figures(c))
        self.row(f"processor mix, {events} ev: C subscriber QoS 1", self.figures(c),
                 cpu=statistics.median(self.figures(c, "cpu_us_per_event")), note="limit")
        # One event at a time (no journal), for comparison, on half the events (it is the slowest); batching behind
        # a journal (--journal) with one writer, then with the default two writers per instance.
        half = self.load_file("lifecycle", n // 2)
        half_events = sum(1 for _ in open(half))
        names = {"opsbus-processor": ("", "one event at a time"),
                 "opsbus-processor-batch1": (" batch1", "--journal --batch-writers 1"),
                 "opsbus-processor-batch": (" batch", "--journal (batches, 2 writers)")}
        chosen = self.args.processor_variants.split(",") if self.args.processor_variants else list(PROCESSOR_VARIANTS)
        for kind, instances in (PROCESSOR_VARIANTS[name] for name in PROCESSOR_VARIANTS if name in chosen):
            label = f"processor x{instances}" + names[kind][0]
            run_load, run_events = (half, half_events) if kind == "opsbus-processor" else (load, events)
            o = self.repeat("o", lambda run: self.delivery_run(label, run, kind, run_load, run_events,
                                                                instances=instances))
            name = f"opsbus processor ×{instances}, {names[kind][1]}"
            self.row(f"processor mix: {name}", self.figures(o), "C subscriber", limit,
                     cpu=statistics.median(self.figures(o, "cpu_us_per_event") or [float("nan")]),
                     note=f"RSS {statistics.median(self.figures(o, 'rss_peak_mib') or [0]):.0f} MiB total; "
                          f"redis-server {statistics.median(self.figures(o, 'redis_cpu_us_per_event') or [0]):.0f} "
                          f"µs/ev and {statistics.median(self.figures(o, 'redis_commands_per_event') or [0]):.1f} "
                          f"commands/ev, mosquitto {statistics.median(self.figures(o, 'broker_cpu_us_per_event') or [0]):.0f}")

    def scenario_latency(self):
        # 5,000/s is the offered rate; 1,000/s is one the processor sustains on this box, so that row shows
        # the latency without queueing in the broker.
        for rate in (5000, 1000):
            self.latency_at(rate)

    def latency_at(self, rate):
        s = self.servers
        n = int(rate * self.args.latency_seconds)
        load = self.load_file("lifecycle", n)
        # The broker alone first (`latency -m`: a C subscriber instead of the processor and Redis), the same
        # publisher and rate: the floor this machine puts under the end-to-end figures, stalls included.
        for broker_only in (True, False):
            p50, p99, p999 = [], [], []
            for run in range(1, self.args.runs + 1):
                s.fresh_broker()
                procs = [] if broker_only else self.start_consumer("opsbus-processor-batch", n)[0]
                cpu0 = proc_cpu(procs[0].pid) if procs else 0
                out = os.path.join(self.work, f"latency-{run}.txt")
                result = self.run_json([self.tool("latency"), "-p", str(s.mqtt_port), "-P", str(s.redis_port),
                                        "-f", load, "-r", str(rate), "-o", out] + (["-m"] if broker_only else []))
                cpu = proc_cpu(procs[0].pid) - cpu0 if procs else 0
                for p in procs:
                    self.stop(p)
                h = self.run_json([self.tool("opsbus-bench"), "hdr", out])
                self.record(f"latency {rate}/s" + (" broker only" if broker_only else ""), run, **result, **h,
                            cpu_us_per_event=cpu * 1e6 / max(1, result["matched"]))
                p50.append(h["p50_us"] / 1000)
                p99.append(h["p99_us"] / 1000)
                p999.append(h["p999_us"] / 1000)
                os.remove(out)
            if broker_only:
                name = f"latency publish→C subscriber (broker only) @{rate}/s"
                self.row(f"{name}: p50", p50, unit="ms", higher_better=False, note="baseline")
                self.row(f"{name}: p99", p99, unit="ms", higher_better=False, note="baseline")
                self.row(f"{name}: p99.9", p999, unit="ms", higher_better=False, note="baseline")
                continue
            name = f"latency publish→Redis state (processor --journal) @{rate}/s"
            self.row(f"{name}: p50", p50, "target", 1.0, unit="ms", higher_better=False)
            self.row(f"{name}: p99", p99, "target", 5.0, unit="ms", higher_better=False)
            self.row(f"{name}: p99.9", p999, unit="ms", higher_better=False)

    def scenario_sizes(self):
        for size, n in ((200, self.args.events // 2), (2048, self.args.events // 4), (65536, self.args.events // 20)):
            self.scenario_bridge(events=n, size=size, label=f"payload {size} B", python=False)

    def scenario_cost(self):
        points = [10_000, 100_000] + ([1_000_000] if self.args.million else [])
        for n in points:
            load = self.load_file("bridge", n)
            runs = 1 if n >= 1_000_000 else self.args.runs
            o = [self.delivery_run(f"cost curve bridge {n}", run, "opsbus-bridge", load, n)
                 for run in range(1, runs + 1)]
            self.row(f"cost curve: opsbus bridge, {n} events", self.figures(o),
                     cpu=statistics.median(self.figures(o, "cpu_us_per_event") or [float("nan")]),
                     note=f"{runs} run(s)")

    def scenario_soak(self):
        """The soak on its own, after the other scenarios (`--soak-alone`)."""
        soak = Soak(self, self.args.soak_minutes, self.args.soak_rate)
        soak.start()
        soak.finish()

    def scenario_micro(self):
        """ordo-one/benchmark micro benchmarks (time and allocations per operation) of the hot pure code."""
        out = subprocess.run(["swift", "package", "--disable-sandbox", "benchmark", "--target", "Micro",
                              "--no-progress", "--format", "markdown"], cwd=os.path.join(ROOT, "Benchmarks"),
                             capture_output=True, text=True, timeout=1200)
        with open(os.path.join(BENCH, "build.log"), "a") as f:
            f.write(out.stderr)
        if out.returncode != 0:
            raise RuntimeError(f"swift package benchmark failed ({out.returncode}): {out.stderr[-500:]}")
        with open(os.path.join(BENCH, "micro-latest.md"), "w") as f:
            f.write(out.stdout)
        self.micro = out.stdout

    # --- output ----------------------------------------------------------------------------------------------

    def table(self):
        def fmt(v, unit):
            if v is None or v != v:
                return "–"
            if unit == "ev/s":
                return f"{v:,.0f}"
            return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
        lines = ["| scenario | opsbus / figure (median, min–max) | limit / baseline (same run) | ratio | CPU µs/event | note |",
                 "|---|---|---|---|---|---|"]
        for r in self.rows:
            vals = [v for v in r["values"] if v is not None]
            if vals:
                med = statistics.median(vals)
                spread = f" ({fmt(min(vals), r['unit'])}–{fmt(max(vals), r['unit'])})" if len(vals) > 1 else ""
                figure = f"{fmt(med, r['unit'])} {r['unit']}{spread}"
            else:
                med, figure = None, "failed"
            base = f"{r['baseline_name']}: {fmt(r['baseline'], r['unit'])}" if r["baseline"] is not None else ""
            ratio = f"{med / r['baseline']:.2f}" if med is not None and r["baseline"] else ""
            cpu = fmt(r["cpu"], "µs") if r["cpu"] is not None else ""
            lines.append(f"| {r['scenario']} | {figure} | {base} | {ratio} | {cpu} | {r['note']} |")
        return "\n".join(lines)

    def close(self):
        for p in list(self.children):
            self.stop(p, 5)
        self.servers.close()
        if getattr(self, "soak_servers", None):
            self.soak_servers.close()
        self.jsonl.close()
        shutil.rmtree(self.work, ignore_errors=True)


class Soak:
    """Bridge + batching processor under a steady offered load for `minutes`, on servers of its own, with RSS
    sampled every 10 s. By default it runs in the background of the other scenarios: the issue's 10-minute soak and
    every other scenario fit in its 15-minute budget only side by side on this 2-core box. Its figures (RSS growth,
    CPU per event) do not depend on the foreground; the foreground's depend on it, most the processor's, which needs
    both cores (BENCHMARKS.md gives the measured effect). `--soak-alone` runs it after everything else instead."""

    def __init__(self, bench, minutes, rate):
        self.bench, self.minutes, self.rate = bench, minutes, rate
        self.samples = []
        self.lock = threading.Lock()

    def start(self):
        b = self.bench
        self.servers = Servers(tempfile.mkdtemp(prefix="soak-", dir=b.work))
        b.soak_servers = self.servers
        s = self.servers
        load = b.load_file("lifecycle", int(self.rate * self.minutes * 60))
        self.events = sum(1 for _ in open(load))
        s.fresh_broker()
        journal = tempfile.mkdtemp(prefix="journal-", dir=s.work)
        self.bridge = b.spawn([b.tool("opsbus"), "bridge", "--route", "jobs/#=events:jobs", "--journal", journal,
                               "--client-id", "soak-bridge", "--mqtt-url", s.mqtt_url, "--redis-url", s.redis_url],
                              env={"OPSBUS_LOG_LEVEL": "warning"}, log_name="soak.log")
        self.processor = b.spawn([b.tool("opsbus"), "processor", "--client-id", "soak-proc", "--mqtt-url",
                                  s.mqtt_url, "--redis-url", s.redis_url, "--journal",
                                  tempfile.mkdtemp(prefix="processor-journal-", dir=s.work)],
                                 env={"OPSBUS_LOG_LEVEL": "error"}, log_name="soak.log")
        s.wait_subscribed("soak-bridge")
        s.wait_subscribed("soak-proc")
        # Warm-up: a burst at full speed first, so that the allocators' high-water marks (full batches, as when
        # the box is busy and the services fall behind) are reached before the steady-start sample; growth after
        # that is what a leak would show, not the first busy minute of the foreground.
        self.burst = 10_000 if not b.args.quick else 2_000
        burst_load = b.load_file("lifecycle", self.burst)
        self.burst = sum(1 for _ in open(burst_load))
        subprocess.run([b.tool("mqtt_pub"), "-p", str(s.mqtt_port), "-f", burst_load, "-n", str(self.burst), "-q", "1",
                        "-w", "2000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=120)
        if (b.wait_until(lambda: s.redis.xlen("events:jobs") >= self.burst, 120) is None or
                b.wait_until(lambda: int(s.redis.hget("opsbus:stats", "events_received") or 0) >= self.burst, 120)
                is None):
            raise RuntimeError("the soak's warm-up burst was not taken in")
        self.publisher = subprocess.Popen([b.tool("mqtt_pub"), "-p", str(s.mqtt_port), "-f", load, "-n",
                                           str(self.events), "-r", str(self.rate)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        b.children.append(self.publisher)
        self.t0 = time.time()
        self.cpu0 = (proc_cpu(self.bridge.pid), proc_cpu(self.processor.pid))
        self.sampler = threading.Thread(target=self.sample, daemon=True)
        self.sampler.start()
        log(f"soak started: {self.minutes} min at {self.rate}/s ({self.events} events), bridge + processor --journal")

    def sample(self):
        while self.publisher.poll() is None:
            time.sleep(10 - ((time.time() - self.t0) % 10))
            point = (round(time.time() - self.t0), proc_rss_mib(self.bridge.pid), proc_rss_mib(self.processor.pid))
            if point[1] is None or point[2] is None:
                return
            with self.lock:
                self.samples.append(point)
            if point[0] % 60 == 0:
                log(f"soak t={point[0]}s bridge RSS {point[1]:.1f} MiB, processor {point[2]:.1f} MiB")

    def finish(self):
        b, s, n = self.bench, self.servers, self.events
        if self.publisher.poll() is None:
            log(f"waiting for the soak to end ({self.minutes * 60 - (time.time() - self.t0):.0f} s left)")
        self.publisher.wait()
        self.sampler.join()
        total = n + self.burst
        caught_up = (b.wait_until(lambda: s.redis.xlen("events:jobs") >= total, 60) is not None and
                     b.wait_until(lambda: int(s.redis.hget("opsbus:stats", "events_received") or 0) >= total, 120)
                     is not None)
        cpu1 = (proc_cpu(self.bridge.pid), proc_cpu(self.processor.pid))
        for p in (self.bridge, self.processor):
            b.stop(p)
        s.close()
        samples = self.samples
        if not caught_up or len(samples) < 2:
            raise RuntimeError(f"the soak did not complete: caught up {caught_up}, {len(samples)} RSS samples")

        def growth(index):
            # steady state: from the first sample after the first minute (or the first sample) to the last
            base = next((x for x in samples if x[0] >= 60), samples[0])[index]
            return (samples[-1][index] - base) / base * 100, base, samples[-1][index], max(x[index] for x in samples)
        bridge, processor = growth(1), growth(2)
        cpu = [(cpu1[i] - self.cpu0[i]) * 1e6 / n for i in (0, 1)]
        b.record("soak", 1, minutes=self.minutes, rate=self.rate, events=n, warmup_burst=self.burst, samples=samples,
                 bridge_growth_pct=bridge[0], processor_growth_pct=processor[0], bridge_rss_max=bridge[3],
                 processor_rss_max=processor[3], bridge_cpu_us_per_event=cpu[0], processor_cpu_us_per_event=cpu[1],
                 background=not b.args.soak_alone)
        where = "alone" if b.args.soak_alone else "in the background"
        for name, g, c in (("bridge", bridge, cpu[0]), ("processor", processor, cpu[1])):
            b.row(f"soak {self.minutes:g} min @{self.rate}/s ({n} ev, {where}): {name} RSS MiB (steady start→end)",
                  [g[2]], "steady start", g[1], cpu=c, unit="MiB", higher_better=False,
                  note=f"growth {g[0]:+.1f} %, max {g[3]:.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bin", required=True, help="folder with opsbus, opsbus-bench and the C tools")
    parser.add_argument("--quick", action="store_true", help="fewer events, a 1-minute soak, no 10^6 point")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (at least 3)")
    parser.add_argument("--soak-minutes", type=float, help="soak length (default 10, --quick 1)")
    parser.add_argument("--soak-rate", type=int, help="soak offered rate, events/s (default 250 in the background, "
                                                      "1000 with --soak-alone)")
    parser.add_argument("--soak-alone", action="store_true",
                        help="run the soak after the other scenarios instead of in their background (slower)")
    parser.add_argument("--only", default="", help="comma-separated scenarios: micro,redis,publisher,bridge,"
                                                    "processor,latency,sizes,cost,soak")
    parser.add_argument("--no-micro", action="store_true", help="skip the ordo-one micro benchmarks")
    parser.add_argument("--processor-variants", default="",
                        help="comma-separated processor runs (default all): single (one event at a time), batch1 "
                             "(--journal, 1 writer), batch (--journal, 2 writers), x2, x4 (instances); e.g. `batch` "
                             "for a quick A/B of two builds")
    parser.add_argument("--profile", action="store_true",
                        help="run each opsbus process under `perf record -e cpu-clock -g` and print a summary per "
                             "profile (Benchmarks/perf_summary.py); the sampling slows the profiled process a little")
    parser.add_argument("--million", action=argparse.BooleanOptionalAction, default=None,
                        help="the 10^6-event cost point (default: on, off with --quick)")
    args = parser.parse_args()
    unknown = set(filter(None, args.processor_variants.split(","))) - set(PROCESSOR_VARIANTS)
    if unknown:
        parser.error(f"--processor-variants: unknown {', '.join(sorted(unknown))} "
                     f"(known: {', '.join(PROCESSOR_VARIANTS)})")
    args.events = 10_000 if args.quick else 50_000
    args.processor_events = 5_500 if args.quick else 22_000
    args.latency_seconds = 4 if args.quick else 6
    if args.soak_minutes is None:
        args.soak_minutes = 1 if args.quick else 10
    if args.soak_rate is None:
        args.soak_rate = 1000 if args.soak_alone else 250
    if args.million is None:
        args.million = not args.quick
    args.runs = max(3, args.runs)
    if args.profile and not shutil.which("perf"):
        raise SystemExit("--profile needs perf (Debian: apt-get install linux-perf)")
    # The micro benchmarks go first: building their harness is the part least disturbed by the soak's warm-up.
    order = ["micro", "redis", "publisher", "bridge", "processor", "latency", "sizes", "cost"]
    chosen = [s for s in order if (not args.only or s in args.only.split(",")) and not (s == "micro" and args.no_micro)]
    with_soak = not args.only or "soak" in args.only.split(",")
    bench = Bench(args)
    started = time.time()
    durations = []

    def run(name, step):
        log(f"scenario {name}")
        t0 = time.time()
        try:
            step()
        except Exception as error:  # keep going: one broken scenario must not lose the others' figures
            log(f"scenario {name} FAILED: {error!r}")
            bench.row(f"{name}: FAILED ({type(error).__name__}: {str(error)[:80]})", [])
        durations.append((name, time.time() - t0))
        bench.record("duration", 1, step=name, seconds=durations[-1][1])

    try:
        soak = None
        if with_soak and not args.soak_alone:
            soak = Soak(bench, args.soak_minutes, args.soak_rate)
            run("soak (start)", soak.start)
        for name in chosen:
            run(name, getattr(bench, f"scenario_{name}"))
        if soak is not None and getattr(soak, "publisher", None) is not None:
            run("soak (end)", soak.finish)
        elif with_soak:
            run("soak", bench.scenario_soak)
    finally:
        bench.close()
    soak_note = "" if not with_soak else (
        f", soak {args.soak_minutes:g} min @{args.soak_rate}/s " + ("alone" if args.soak_alone else "in the background"))
    print()
    print(f"opsbus benchmarks, {platform.node()}, {os.cpu_count()} CPUs, {'quick' if args.quick else 'full'} run, "
          f"{args.runs} runs per scenario{soak_note}, {time.time() - started:.0f} s")
    print("time per step: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in durations))
    print()
    print(bench.table())
    print()
    if getattr(bench, "micro", None):
        print("micro benchmarks (ordo-one/benchmark; also in .bench/micro-latest.md):")
        print(bench.micro)
    for path in bench.profiles:
        summary = subprocess.run([sys.executable, os.path.join(ROOT, "Benchmarks", "perf_summary.py"), path],
                                 capture_output=True, text=True)
        with open(path.replace(".data", ".txt"), "w") as f:
            f.write(summary.stdout + summary.stderr)
        print(summary.stdout + summary.stderr)
    print(f"JSON lines: {bench.jsonl_path}")
    with open(bench.jsonl_path.replace(".jsonl", ".md"), "w") as f:
        f.write(bench.table() + "\n")

if __name__ == "__main__":
    main()
