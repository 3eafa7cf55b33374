"""Unary calls beside streams that saturate the server, with the stream pace off and on.

    .venv/bin/python -m loadtest.beside_streams --rounds 3 --out loadtest/results/beside-streams

Each round starts one server per setting (the demo models; `--stream-pace-lag-ms 0`, then the
server's default, or `--b-args`), loads it with open-loop streams (`--streams` x `--fps` frames/s
of the mlp, more than it can serve here) from one client process and, from a second process once
the streams run, with closed-loop unary mlp calls (`--concurrency`). It prints per setting the
unary calls' rate and p50/p99, the streams' rate, and the server's
`sluiceway_stream_reads_paced_total`, each round and as medians; ratios are B over A. The two
settings alternate within a round, so drift on the machine falls on both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from loadtest.server import DEFAULT_CACHE_DIR, SpawnedServer
from loadtest.server_metrics import MAX_PAGE_BYTES

PACED = "sluiceway_stream_reads_paced_total"


def _harness(address: str, out: Path, *load: str, duration_s: float) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "loadtest", "--target", address, "--model", "mlp", *load,
        "--duration-s", f"{duration_s:g}", "--warmup-s", "0", "--rounds", "1", "--quiet", "--no-plots",
        "--out", str(out),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def _result(out: Path) -> dict[str, float]:
    (row,) = json.loads((out / "results.json").read_text())["results"]
    return {
        "rate": row["throughput_ips"],
        "p50_ms": row["latency_us"]["p50"] / 1e3,
        "p99_ms": row["latency_us"]["p99"] / 1e3,
    }


def _paced(metrics_url: str | None) -> float:
    if metrics_url is None:
        return float("nan")
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:  # 127.0.0.1 only (SpawnedServer)
        for line in reply.read(MAX_PAGE_BYTES).decode(errors="replace").splitlines():
            if line.startswith(PACED):
                return float(line.split()[-1])
    return 0.0


def one_run(args: argparse.Namespace, flags: Sequence[str], out: Path) -> dict[str, float]:
    """One server with `flags`: streams for the whole run, unary calls in its middle."""
    with SpawnedServer(args.cache_dir, extra=flags) as server:
        streams = _harness(
            server.address, out / "streams", "--streams", str(args.streams), "--fps", f"{args.fps:g}",
            duration_s=args.unary_s + 2 * args.lead_s,
        )  # fmt: skip
        try:
            time.sleep(args.lead_s)  # the streams' load is up before the unary calls start
            unary = _harness(
                server.address, out / "unary", "--concurrency", str(args.concurrency), duration_s=args.unary_s
            )
            if unary.wait(args.unary_s + 120) != 0:
                raise RuntimeError("the unary run failed")
        finally:
            if streams.wait(args.unary_s + 2 * args.lead_s + 120) != 0:
                raise RuntimeError("the stream run failed")
        paced = _paced(server.metrics_url)
    unary_row, stream_row = _result(out / "unary"), _result(out / "streams")
    unary_row = {f"unary_{key}": value for key, value in unary_row.items()}
    return {**unary_row, "stream_rate": stream_row["rate"], "paced_reads": paced}


FIELDS = ("unary_rate", "unary_p50_ms", "unary_p99_ms", "stream_rate", "paced_reads")


def _line(name: str, row: dict[str, float]) -> str:
    return (
        f"{name:<10} unary {row['unary_rate']:8.1f}/s p50 {row['unary_p50_ms']:7.2f} ms "
        f"p99 {row['unary_p99_ms']:7.2f} ms | streams {row['stream_rate']:8.1f}/s | paced reads "
        f"{row['paced_reads']:.0f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.beside_streams", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=12)
    parser.add_argument("--fps", type=float, default=1000.0, help="frames/s of each stream")
    parser.add_argument("--concurrency", type=int, default=4, help="unary calls in flight")
    parser.add_argument("--unary-s", type=float, default=8.0, help="seconds of unary calls")
    parser.add_argument("--lead-s", type=float, default=3.0, help="streams alone before and after")
    parser.add_argument(
        "--a-args", default="--stream-pace-lag-ms 0", help="server A's flags (space-separated)"
    )
    parser.add_argument("--b-args", default="", help="server B's flags (default: the server's defaults)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/beside-streams"))
    args = parser.parse_args(argv)
    settings = {"A": args.a_args.split(), "B": args.b_args.split()}
    runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    for i in range(args.rounds):
        for name, flags in settings.items():
            row = one_run(args, flags, args.out / f"round{i}" / name)
            runs[name].append(row)
            print(_line(f"r{i} {name}", row), flush=True)
    medians = {
        name: {f: statistics.median(r[f] for r in rows) for f in FIELDS} for name, rows in runs.items()
    }
    for name, flags in settings.items():
        print(_line(f"median {name}", medians[name]), f"  flags: {' '.join(flags) or '(defaults)'}")
    a, b = medians["A"], medians["B"]
    print(
        f"B/A: unary rate {b['unary_rate'] / a['unary_rate']:.2f}, "
        f"unary p50 {b['unary_p50_ms'] / a['unary_p50_ms']:.2f}, "
        f"stream rate {b['stream_rate'] / a['stream_rate']:.3f}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(
        json.dumps({"flags": settings, "runs": runs, "medians": medians}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
