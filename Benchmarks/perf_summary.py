#!/usr/bin/env python3
"""Summarises a `perf record -e cpu-clock -g` profile of one opsbus process (run.py --profile writes them).

Per thread: its share of the samples, what it is (the most frequent outermost function of ours on its stacks), and where its
time goes: kernel time by system call (the frame under do_syscall_64) and user time by library. Then the hottest
functions. `cpu-clock` is a software timer, so it works on virtual machines without hardware counters (perf stat
says "not supported" here); samples are CPU time, not wall time: a thread that waits is not sampled.

    Benchmarks/perf_summary.py .bench/profile-bridge-1.data [--top 20]
"""
import argparse
import collections
import re
import subprocess
import sys

OURS = re.compile(r"\$s\d*OpsBus")


def samples(path):
    out = subprocess.run(["perf", "script", "-i", path, "-F", "tid,ip,sym,dso"], capture_output=True, text=True,
                         check=True).stdout
    current = None
    for line in out.splitlines():
        if re.match(r"^\s*\d+\s*$", line):
            if current:
                yield current
            current = (int(line), [])
        elif line.strip() and current is not None:
            parts = line.strip().split(" ", 1)
            frame = parts[1] if len(parts) > 1 else ""
            m = re.match(r"(.*) \(([^)]*)\)$", frame)
            current[1].append((m.group(1), m.group(2).split("/")[-1]) if m else (frame, "?"))
    if current:
        yield current


def demangle(names):
    if not names:
        return {}
    try:
        out = subprocess.run(["swift", "demangle", "--simplified", "--compact"], input="\n".join(names),
                             capture_output=True, text=True, timeout=60).stdout.splitlines()
        return {n: d[:120] for n, d in zip(names, out)}
    except (OSError, subprocess.SubprocessError):
        return {n: n[:120] for n in names}


def category(frames):
    leaf_symbol, leaf_dso = frames[0]
    if "kernel" not in leaf_dso:
        return "user: " + leaf_dso
    names = [symbol for symbol, _ in frames]
    if "do_syscall_64" in names:
        index = names.index("do_syscall_64")
        call = names[index - 1] if index > 0 else "?"
        for symbol in names[:index]:
            if symbol.startswith(("tcp_sendmsg", "unix_stream_sendmsg", "tcp_recvmsg", "unix_stream_read",
                                  "ext4_buffered_write_iter", "filemap_read", "ext4_sync_file")):
                call += " / " + symbol
                break
        return "kernel: " + call
    if any(symbol in ("asm_exc_page_fault", "exc_page_fault") for symbol in names):
        return "kernel: page fault"
    return "kernel: other (interrupts, scheduling)"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    total = 0
    by_thread = collections.Counter()
    categories = collections.defaultdict(collections.Counter)
    ours = collections.defaultdict(collections.Counter)
    self_time = collections.Counter()
    for tid, frames in samples(args.data):
        if not frames:
            continue
        total += 1
        by_thread[tid] += 1
        categories[tid][category(frames)] += 1
        for symbol, _ in reversed(frames):  # the outermost function of ours: what the thread runs
            if OURS.match(symbol) and "Thread" not in symbol and "closure" not in symbol:
                ours[tid][symbol] += 1
                break
        self_time[frames[0][0]] += 1
    if total == 0:
        sys.exit("no samples")
    threads = [tid for tid, n in by_thread.most_common() if n / total >= 0.01]
    names = demangle(sorted({ours[t].most_common(1)[0][0] for t in threads if ours[t]}
                            | {s for s, _ in self_time.most_common(args.top) if s.startswith("$s")}))
    print(f"{args.data}: {total} samples")
    for tid in threads:
        label = names.get(ours[tid].most_common(1)[0][0], "?") if ours[tid] else "(no opsbus frame)"
        print(f"\nthread {tid}: {100 * by_thread[tid] / total:.1f} % of the samples; mostly in {label}")
        for name, n in categories[tid].most_common(8):
            if n / total >= 0.005:
                print(f"  {100 * n / total:5.1f} %  {name}")
    print(f"\nhottest functions (self time, all threads):")
    for symbol, n in self_time.most_common(args.top):
        print(f"  {100 * n / total:5.1f} %  {names.get(symbol, symbol)[:120]}")


if __name__ == "__main__":
    main()
