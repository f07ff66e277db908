#!/usr/bin/env python3
"""Where a bench-order run's time went, from its operator and kwok runner logs.

Usage: order-steps.py <log prefix> [window]   (the prefix of <prefix>-runner.log and
<prefix>-operator-1.log). Migration k starts when k-window has expanded (planner::order::WINDOW),
so one slot of the sliding window is: executor k-window ends -> its status says AwaitingRollout
-> Job k is created -> executor k starts -> executor k ends. Prints each step's median and p90.
"""
import datetime
import re
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def ts(text):
    return datetime.datetime.fromisoformat(text.rstrip("Z")).timestamp()


def lines(path):
    with open(path, errors="replace") as f:
        for line in f:
            yield ANSI.sub("", line)


def main():
    prefix = sys.argv[1]
    window = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    start, end, job, done = {}, {}, {}, {}
    for line in lines(prefix + "-runner.log"):
        m = re.match(r"(\S+)\s+INFO (running executor|executor finished) pod=m(\d+)-", line)
        if m:
            (start if m.group(2) == "running executor" else end)[int(m.group(3))] = ts(m.group(1))
    for line in lines(prefix + "-operator-1.log"):
        m = re.match(r"(\S+)\s+INFO .*started Job migration=m(\d+) .*phase=expand", line)
        if m:
            job.setdefault(int(m.group(2)), ts(m.group(1)))
        m = re.match(r"(\S+)\s+INFO .*phase changed migration=m(\d+) .*AwaitingRollout", line)
        if m:
            done.setdefault(int(m.group(2)), ts(m.group(1)))
    ks = [k for k in start if k >= window and k in job and k in end
          and k - window in end and k - window in done]
    if not ks:
        print("order steps: no complete slot found in the logs")
        return
    steps = [
        ("executor ends -> status AwaitingRollout", lambda k: done[k - window] - end[k - window]),
        ("status -> next Job created", lambda k: job[k] - done[k - window]),
        ("Job created -> executor starts", lambda k: start[k] - job[k]),
        ("executor runs", lambda k: end[k] - start[k]),
    ]
    for name, f in steps:
        xs = sorted(f(k) for k in ks)
        print(f"order steps: {name}: median {xs[len(xs) // 2]:.2f} s, p90 {xs[int(len(xs) * 0.9)]:.2f} s")


main()
