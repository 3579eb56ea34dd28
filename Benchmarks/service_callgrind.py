#!/usr/bin/env python3
"""An opsbus service's own CPU per event, counted in instructions by valgrind's callgrind (issue 6).

Timing the processor or the bridge on a shared 2-core box moves by tens of percent from one minute to the next;
instructions do not. This starts a mosquitto and a redis-server configured like the benchmark's, runs
`opsbus processor --journal` (or `opsbus bridge --journal`) under callgrind, publishes the scenario's load with the
C publisher at QoS 1, and when every event is in Redis dumps the counts and prints:

- instructions per event of the whole service process (all its threads: libmosquitto's network thread, the journal,
  the writers), counted from the moment the service subscribed;
- the functions with the most instructions, inclusive and self (`callgrind_annotate`), so a change to the Swift
  code can be weighed before the noisy timed benchmark.

`--service publisher` runs the benchmark's in-process publisher (`opsbus-bench publish`, QoS 1, 64 tasks) under
callgrind from connect to drained instead.

Callgrind counts user-space instructions only: the system calls (socket reads and writes, the journal's writes,
futex wake-ups) are not in the figure, and they are a large part of a timed run's CPU. Under valgrind the service
runs many times slower than the broker feeds it, so its batches differ from a timed run's. Compare versions with
this tool, not this tool with `scripts/bench`.

valgrind 3.19 (Debian 12) crashes on the shared Swift runtime of Swift 6.3 once a program starts its async main,
and cannot read the DWARF 5 of its binaries: the script builds opsbus with the Swift runtime linked in
(`--static-swift-stdlib`, in `Benchmarks/.build-static`, a few minutes the first time) and runs a copy without
debug information (the symbols stay).

    .bench/venv/bin/python Benchmarks/service_callgrind.py [--service processor|bridge|publisher] [--events 22000]
                                                            [--bin .bench/bin] [--top 40]

`scripts/bench` builds `.bench/bin` (the C publisher, `opsbus-bench gen`); the callgrind output goes to
`.bench/callgrind/`.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "Benchmarks"))
from redis_replay import mosquitto_server, redis_server  # noqa: E402


def redis_cli(port, *argv):
    return subprocess.run(["redis-cli", "-p", str(port), *argv], capture_output=True, text=True).stdout.strip()


def wait_for(predicate, seconds, what, process):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise SystemExit(f"the service exited ({process.returncode}) while waiting for {what}")
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def static_build(product="opsbus"):
    """opsbus (or opsbus-bench) built in release mode with the Swift runtime linked in: valgrind 3.19 crashes on the shared
    libdispatch of Swift 6.3 as soon as a program starts its async main, and runs the static one."""
    package = os.path.join(ROOT, "Benchmarks")
    # The static Foundation links libcurl (FoundationNetworking); Debian's -dev package has the static link's files.
    if subprocess.run(["dpkg-query", "-W", "-f=${Status}", "libcurl4-openssl-dev"], capture_output=True,
                      text=True).stdout.find("install ok installed") < 0:
        raise SystemExit("the static build needs libcurl4-openssl-dev (apt-get install libcurl4-openssl-dev)")
    argv = ["swift", "build", "-c", "release", "--product", product, "--static-swift-stdlib",
            "--scratch-path", os.path.join(package, ".build-static")]
    subprocess.run(argv, cwd=package, check=True, stdout=subprocess.DEVNULL)
    path = subprocess.run(argv + ["--show-bin-path"], cwd=package, check=True, capture_output=True,
                          text=True).stdout.strip()
    return os.path.join(path, product)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--service", choices=("processor", "bridge", "publisher"), default="processor",
                        help="processor or bridge (--journal), or publisher: the benchmark's in-process publisher "
                             "(`opsbus-bench publish`, QoS 1, 64 tasks, --spool as given)")
    parser.add_argument("--spool", choices=("none", "never", "always"), default="none",
                        help="publisher: its spool durability, or none (default none)")
    parser.add_argument("--events", type=int, default=22000, help="events to publish (default 22000)")
    parser.add_argument("--bin", default=os.path.join(ROOT, ".bench", "bin"), help="opsbus, opsbus-bench, mqtt_pub")
    parser.add_argument("--top", type=int, default=40, help="functions to list (default 40)")
    parser.add_argument("--out", default=os.path.join(ROOT, ".bench", "callgrind"), help="where the dump goes")
    parser.add_argument("--writers", type=int, help="processor --batch-writers (default: the processor's)")
    parser.add_argument("--opsbus", help="the opsbus binary (default: a build with the Swift runtime linked in, "
                                         "made by this script in Benchmarks/.build-static)")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("needs valgrind (Debian: apt-get install valgrind)")
    os.makedirs(args.out, exist_ok=True)
    if args.service == "publisher":
        return publisher(args)
    binary = args.opsbus or static_build()
    work = tempfile.mkdtemp(prefix=f"{args.service}-", dir=args.out)
    redis, redis_port = redis_server(work)
    broker_log = os.path.join(work, "mosquitto.log")
    broker, mqtt_port = mosquitto_server(work, f"max_queued_bytes 536870912\nlog_dest file {broker_log}\n"
                                               "log_type subscribe\n")
    kind = "lifecycle" if args.service == "processor" else "bridge"
    load = os.path.join(work, f"{kind}.load")
    subprocess.run([os.path.join(args.bin, "opsbus-bench"), "gen", "--kind", kind, "--events", str(args.events),
                    "--size", "400", "--jobs", "1000", "--out", load], check=True)
    events = sum(1 for _ in open(load))
    dump = os.path.join(args.out, f"callgrind.{args.service}.out")
    client = f"callgrind-{args.service}"
    # valgrind 3.19 (Debian 12) cannot read the DWARF 5 of Swift 6 binaries: a copy without it keeps the symbols.
    stripped = os.path.join(work, "opsbus")
    subprocess.run(["objcopy", "--strip-debug", binary, stripped], check=True)
    argv = [stripped, args.service, "--client-id", client,
            "--mqtt-url", f"mqtt://127.0.0.1:{mqtt_port}", "--redis-url", f"redis://127.0.0.1:{redis_port}",
            "--journal", os.path.join(work, "journal")]
    if args.service == "bridge":
        argv += ["--route", "jobs/#=events:jobs"]
    if args.writers:
        argv += ["--batch-writers", str(args.writers)]
    service = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}", "--"] + argv,
                               env={**os.environ, "OPSBUS_LOG_LEVEL": "error"},
                               stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "valgrind.log"), "w"))
    try:
        wait_for(lambda: os.path.exists(broker_log) and f" {client} " in open(broker_log).read(), 180,
                 "the service's subscription", service)
        time.sleep(1)
        subprocess.run(["callgrind_control", "-z", str(service.pid)], check=True, capture_output=True)
        started = time.time()
        subprocess.run([os.path.join(args.bin, "mqtt_pub"), "-p", str(mqtt_port), "-f", load, "-n", str(events),
                        "-q", "1", "-w", "2000"], check=True, stdout=subprocess.DEVNULL)
        if args.service == "processor":
            done = lambda: int(redis_cli(redis_port, "hget", "opsbus:stats", "events_received") or 0) >= events
        else:
            done = lambda: int(redis_cli(redis_port, "xlen", "events:jobs") or 0) >= events
        wait_for(done, 1800, "every event in Redis", service)
        elapsed = time.time() - started
        for name in os.listdir(args.out):
            if name.startswith(os.path.basename(dump) + "."):
                os.remove(os.path.join(args.out, name))
        subprocess.run(["callgrind_control", "-d", str(service.pid)], check=True, capture_output=True)
        dumps = sorted(n for n in os.listdir(args.out) if n.startswith(os.path.basename(dump) + "."))
        path = os.path.join(args.out, dumps[-1])
    finally:
        for proc in (service, broker, redis):
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    report(args, path, events, elapsed)


def publisher(args):
    """The benchmark's publisher scenario under callgrind, from connect to drained (QoS 1, 64 tasks)."""
    binary = static_build("opsbus-bench")
    work = tempfile.mkdtemp(prefix="publisher-", dir=args.out)
    broker, mqtt_port = mosquitto_server(work)
    stripped = os.path.join(work, "opsbus-bench")
    subprocess.run(["objcopy", "--strip-debug", binary, stripped], check=True)
    dump = os.path.join(args.out, f"callgrind.publisher.out")
    started = time.time()
    try:
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}", "--", stripped, "publish",
                        "--mqtt-url", f"mqtt://127.0.0.1:{mqtt_port}", "--events", str(args.events), "--qos", "1",
                        "--spool", args.spool, "--dir", os.path.join(work, "spool"), "--concurrency", "64"],
                       check=True, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "valgrind.log"), "w"))
    finally:
        broker.terminate()
        broker.wait()
        shutil.rmtree(work, ignore_errors=True)
    report(args, dump, args.events, time.time() - started)


def report(args, path, events, elapsed):
    instructions = next(int(line.split()[1]) for line in open(path) if line.startswith("summary:"))
    print(f"{args.service}: {events} events in {elapsed:.0f} s under callgrind: "
          f"{instructions / events / 1000:.1f} k instructions per event (dump: {path})")
    for inclusive in ("yes", "no"):
        out = subprocess.run(["callgrind_annotate", f"--inclusive={inclusive}", f"--threshold=100", path],
                             capture_output=True, text=True).stdout
        if shutil.which("swift"):  # Swift's symbol names, readable
            out = subprocess.run(["swift", "demangle", "--simplified"], input=out, capture_output=True,
                                 text=True).stdout or out
        lines = [line for line in out.splitlines() if line.strip() and line.lstrip()[0].isdigit()]
        print(f"\ntop {args.top} functions, {'inclusive' if inclusive == 'yes' else 'self'} "
              f"(k instructions per event, share):")
        for line in lines[1:args.top + 1]:
            count, _, rest = line.strip().partition(" ")
            value = int(count.replace(",", ""))
            name = rest.strip()
            name = name[name.find(")") + 1:].strip() if name.startswith("(") else name
            print(f"  {value / events / 1000:8.2f}  {value / instructions * 100:5.1f} %  {name[:150]}")


if __name__ == "__main__":
    sys.exit(main())
