"""onnxruntime's thread pools: one per session (the server's way) against the process-wide pools.

    .venv/bin/python -m loadtest.ort_thread_pools MODEL.onnx --sessions 20 --runs 200 --gap-ms 5

Each mode runs in a process of its own (the global pools are made once, before any session): it
makes `--sessions` sessions of the model, runs each once, and counts the threads they added (the
global pools are made before the count: one pool for the process); then
runs one session `--runs` times with `--gap-ms` between runs (a lightly loaded server) and reports
the process's CPU seconds for them. The per-session pools are the server's settings (intra-op
threads onnxruntime's default, no spinning); the global pools (`set_global_thread_pool_sizes`,
`use_per_session_threads = False`) take no spinning setting from Python, so their threads spin.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MODES = ("per-session", "global")


def measure(model: str, mode: str, sessions: int, runs: int, gap_s: float) -> dict[str, float]:
    import numpy as np
    import onnxruntime as ort

    if mode == "global":
        from onnxruntime.capi import _pybind_state

        _pybind_state.set_global_thread_pool_sizes(os.cpu_count() or 1, 1)
    threads_before = len(os.listdir("/proc/self/task"))
    made = []
    for _ in range(sessions):
        options = ort.SessionOptions()
        if mode == "global":
            options.use_per_session_threads = False
        else:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        feed = {
            i.name: np.ones([d if isinstance(d, int) else 64 for d in i.shape], np.float32)
            for i in session.get_inputs()
        }
        session.run(None, feed)
        made.append((session, feed))
    threads = len(os.listdir("/proc/self/task")) - threads_before
    session, feed = made[0]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0 = usage.ru_utime + usage.ru_stime, time.perf_counter()
    for _ in range(runs):
        session.run(None, feed)
        time.sleep(gap_s)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    return {"threads_added": threads, "cpu_s": round(cpu, 3), "wall_s": round(time.perf_counter() - wall0, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=5.0)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one mode, in this process
    args = parser.parse_args(argv)
    if not 1 <= args.sessions <= 500 or not 1 <= args.runs <= 100_000 or not 0 <= args.gap_ms <= 1000:
        parser.error("--sessions 1-500, --runs 1-100000, --gap-ms 0-1000")
    if args.mode:
        print(json.dumps(measure(args.model, args.mode, args.sessions, args.runs, args.gap_ms / 1e3)))
        return 0
    print("| pools | threads added by the sessions | CPU s for the runs | wall s |")
    print("|---|---|---|---|")
    for mode in MODES:
        sizes = ["--sessions", str(args.sessions), "--runs", str(args.runs), "--gap-ms", str(args.gap_ms)]
        command = [sys.executable, "-m", "loadtest.ort_thread_pools", args.model, "--mode", mode, *sizes]
        out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(f"| {mode} | {row['threads_added']} | {row['cpu_s']} | {row['wall_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
