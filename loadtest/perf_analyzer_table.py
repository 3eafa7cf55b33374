"""Run NVIDIA's perf_analyzer against a fresh sluiceway server; print a markdown table.

    .venv/bin/python -m loadtest.perf_analyzer_table --models mlp,resnet --concurrency 1,2,4,8,16,32

Starts `sluiceway serve` on a free 127.0.0.1 port with the demo models, runs perf_analyzer (unary
and --streaming) for each model and concurrency, and prints infer/s, p50 and p99 per row. Every
run is bounded by perf_analyzer's own measurement window and a timeout.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from loadtest.perf_analyzer_path import PerfAnalyzerMissing, find_perf_analyzer
from loadtest.proc import Spawned
from loadtest.server import SpawnedServer
from loadtest.stall_view import group_members, rss_bytes, stall_view

REPO_ROOT = Path(__file__).resolve().parents[1]


def start_server(cache_dir: Path, extra: list[str]) -> tuple[subprocess.Popen[str], int]:
    server = SpawnedServer(cache_dir, extra).start()
    assert server.process is not None
    return server.process, server.port


def run_perf_analyzer(
    tool: Path,
    port: int,
    model: str,
    concurrency: int,
    streaming: bool,
    interval_ms: int,
    max_trials: int = 5,
    stability_percentage: int = 20,
    extra: Sequence[str] = (),
    limit_s: float = 300.0,
    env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """One perf_analyzer run on 127.0.0.1:port (`extra`: more of its flags, `env`: variables for
    it); its CSV row (Inferences/Second, p50 latency...), in at most `limit_s`: past it the tool is
    stopped with anything it started (its own process group; the wheel's console script runs the
    binary as a child, which a stopped script had left running). Before the stop, what it was
    waiting on (loadtest/stall_view.py) is printed to stderr and is the error's second line."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.csv"
        command = [
            str(tool), "-m", model, "-u", f"127.0.0.1:{port}", "-i", "grpc",
            "--concurrency-range", str(concurrency), "--measurement-interval", str(interval_ms),
            "--max-trials", str(max_trials), "--stability-percentage", str(stability_percentage),
            "-f", str(report), *extra,
        ]  # fmt: skip
        if streaming:
            command.append("--streaming")
        # A process group, not a session of its own: perf_analyzer in a new session ran on without
        # end here. Spawned, not forked (loadtest/proc.py: gRPC's fork handlers).
        run = Spawned(command, env)
        code, why = _waited(run, limit_s, memory_cap())
        said = run.output
        if code is None:
            view = stall_view(run.pid, port)  # before the stop: what it was waiting on
            run.stop()
            print(f"perf_analyzer {why} at {concurrency} in flight: {view}", file=sys.stderr)
            written = _report_row(report)
            if written is not None:  # its measurement is whole; its teardown was what hung
                written[STOPPED] = f"perf_analyzer {why} after writing its report and was stopped"
                return written
            last = _last_line(run.output)
            where = f" (its last line: {last[:120]})" if last else " (it printed nothing)"
            raise RuntimeError(f"perf_analyzer {why} and was stopped{where}\n{view}")
        if code != 0 or not report.exists():
            first = f"perf_analyzer exit {code}: {_last_line(said)[:200]}"
            raise RuntimeError(f"{first}\n{said[-2000:]}")
        (row,) = list(csv.DictReader(report.open()))
        return row


# The key a returned row has when perf_analyzer wrote its report and then did not exit: its
# threads are stopped at the end (each waiting for its call in progress, and the records of the
# point freed), which a reviewer caught going on past 40 s with the report written at 12.7 s.
STOPPED = "stopped"


def _report_row(report: Path) -> dict[str, str] | None:
    """The report's one row when perf_analyzer wrote it whole, else None."""
    try:
        rows = list(csv.DictReader(report.open()))
    except OSError:
        return None
    whole = len(rows) == 1 and all(value not in (None, "") for value in rows[0].values())
    return rows[0] if whole and "Inferences/Second" in rows[0] else None


def memory_cap(cgroup_limit: Path = Path("/sys/fs/cgroup/memory.max")) -> int:
    """Half the machine's memory, or of this cgroup's limit where that is less: perf_analyzer keeps
    every request's inputs over the wire (a point of 602 KB requests held 1.7-5.1 GB here), and one
    whose main thread fell behind grew ~0.25-0.5 GB/s until stopped (loadtest/stall_view.py); past
    this it is stopped before the machine (or the container) runs out."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = cgroup_limit.read_text().strip()
        physical = min(physical, int(limit)) if limit.isdigit() else physical  # "max": none
    except OSError:
        pass
    return physical // 2


def _waited(run: Spawned, limit_s: float, cap: int) -> tuple[int | None, str]:
    """Its exit code, or None and why it is to be stopped: past `limit_s`, or its processes'
    memory past `cap` bytes (looked at each second)."""
    deadline = time.monotonic() + limit_s
    while (left := deadline - time.monotonic()) > 0:
        code = run.wait(min(1.0, left))
        if code is not None:
            return code, ""
        held = sum(rss_bytes(pid) for pid in group_members(run.pid))
        if held > cap:
            return None, f"held {held / 2**30:.1f} GiB, past half the machine's memory,"
    return None, f"ran past {limit_s:.0f} s"


def _last_line(said: str | None) -> str:
    lines = [line.strip() for line in (said or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,resnet")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32")
    parser.add_argument("--interval-ms", type=int, default=3000)
    parser.add_argument("--perf-analyzer", type=Path, help="default: as crosscheck finds it")
    parser.add_argument("--cache-dir", type=Path, default=REPO_ROOT / ".cache")
    parser.add_argument("--no-streaming", action="store_true")
    parser.add_argument("server_args", nargs="*", help="extra arguments for sluiceway serve (after --)")
    args = parser.parse_args(argv)
    try:  # before a server is started
        args.perf_analyzer = find_perf_analyzer(args.perf_analyzer)
    except PerfAnalyzerMissing as exc:
        print(f"perf_analyzer_table: {exc}", file=sys.stderr)
        return 2
    process, port = start_server(args.cache_dir, args.server_args)
    try:
        print(
            "| model | mode | concurrency | infer/s | p50 ms | p99 ms | server queue us | server compute us |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        modes = [False] if args.no_streaming else [False, True]
        for model in args.models.split(","):
            for streaming in modes:
                for concurrency in (int(c) for c in args.concurrency.split(",")):
                    row = run_perf_analyzer(
                        args.perf_analyzer, port, model, concurrency, streaming, args.interval_ms
                    )
                    compute = sum(
                        int(row[k])
                        for k in ("Server Compute Input", "Server Compute Infer", "Server Compute Output")
                    )
                    print(
                        f"| {model} | {'stream' if streaming else 'unary'} | {concurrency} "
                        f"| {float(row['Inferences/Second']):.0f} | {int(row['p50 latency']) / 1000:.2f} "
                        f"| {int(row['p99 latency']) / 1000:.2f} | {row['Server Queue']} | {compute} |",
                        flush=True,
                    )
    finally:
        process.terminate()
        process.wait(30)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
