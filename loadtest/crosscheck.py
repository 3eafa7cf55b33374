"""Our closed loop vs NVIDIA's perf_analyzer at the same concurrency on the same server.

    python -m loadtest.crosscheck --model mlp --concurrency 1,16
    sluiceway-loadtest crosscheck --target 127.0.0.1:8001 --concurrency 4 --rounds 3

For each concurrency the two clients take turns (ours, perf_analyzer, ours, ...) for `--rounds`
rounds, so drift on a busy machine hits both alike; it prints each one's infer/s and the ratio,
and exits 1 when they differ by more than `--tolerance` (default 15%). perf_analyzer is
`--perf-analyzer`, else $SLUICEWAY_PERF_ANALYZER, else ../shared/tools/perf_analyzer, else the one
on PATH; none runnable is one line and exit 2, before anything is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from loadtest.perf_analyzer_path import ENV_VAR, PerfAnalyzerMissing, find_perf_analyzer
from loadtest.perf_analyzer_table import run_perf_analyzer
from loadtest.results import summarize
from loadtest.runner import run_scenario
from loadtest.scenario import Scenario, Step, Target, is_loopback, parse_levels
from loadtest.server import DEFAULT_CACHE_DIR, SpawnedServer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluiceway-loadtest crosscheck", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--target", help="host:port of a running server (default: spawn one)")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--duration-s", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1, help="our client's worker processes")
    parser.add_argument("--tolerance", type=float, default=0.15)
    parser.add_argument(
        "--perf-analyzer",
        type=Path,
        help=f"the tool (default: ${ENV_VAR}, else ../shared/tools/perf_analyzer, else on PATH)",
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    return parser


@contextlib.contextmanager
def _server(args: argparse.Namespace) -> Iterator[str]:
    if args.target:
        yield args.target
        return
    with SpawnedServer(args.cache_dir) as server:
        yield server.address


def ours(address: str, model: str, concurrency: int, args: argparse.Namespace) -> float:
    """Requests/s (batch 1: infer/s) of one closed-loop run of our harness."""
    scenario = Scenario(
        targets=(Target("sluiceway", address, model),),
        steps=(Step("closed", float(concurrency)),),
        duration_s=args.duration_s,
        warmup_s=args.warmup_s,
        processes=args.processes,
    )
    entry = summarize(scenario, run_scenario(scenario))["results"][0]
    if entry["errors"]:
        raise RuntimeError(f"our run had errors: {entry['errors']}")
    return float(entry["throughput_rps"])


def theirs(address: str, model: str, concurrency: int, args: argparse.Namespace) -> float:
    """Inferences/Second of one perf_analyzer run with a window as long as ours."""
    port = int(address.rsplit(":", 1)[1])
    row = run_perf_analyzer(
        args.perf_analyzer,
        port,
        model,
        concurrency,
        streaming=False,
        interval_ms=int(args.duration_s * 1000),
        # Accept its first windows as they are: rounds, not its stability rule, handle noise here.
        max_trials=3,
        stability_percentage=999,
    )
    return float(row["Inferences/Second"])


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    levels = [int(level) for level in parse_levels(args.concurrency)]
    if args.target and not is_loopback(args.target):
        raise SystemExit("crosscheck: the target must be on this machine (perf_analyzer runs here)")
    try:  # before a server is spawned or anything measured
        args.perf_analyzer = find_perf_analyzer(args.perf_analyzer)
    except PerfAnalyzerMissing as exc:
        print(f"sluiceway-loadtest crosscheck: {exc}", file=sys.stderr)
        return 2
    failed = False
    with _server(args) as address:
        print(f"crosscheck on {address}, model {args.model}, {args.rounds} rounds of {args.duration_s:g} s")
        print("| concurrency | sluiceway-loadtest infer/s | perf_analyzer infer/s | ratio | per round |")
        print("|---:|---:|---:|---:|---|")
        for concurrency in levels:
            mine: list[float] = []
            pa: list[float] = []
            for _ in range(args.rounds):
                mine.append(ours(address, args.model, concurrency, args))
                pa.append(theirs(address, args.model, concurrency, args))
            a, b = sum(mine) / len(mine), sum(pa) / len(pa)
            ratio = a / b if b else float("inf")
            ok = abs(ratio - 1.0) <= args.tolerance
            failed |= not ok
            rounds = "; ".join(f"{x:.0f} vs {y:.0f}" for x, y in zip(mine, pa, strict=True))
            print(
                f"| {concurrency} | {a:.1f} | {b:.1f} | {ratio:.3f}{'' if ok else ' FAIL'} | {rounds} |",
                flush=True,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
