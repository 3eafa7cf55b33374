"""`sluiceway-loadtest` / `python -m loadtest`: sweep load against one or more KServe v2 servers.

    sluiceway-loadtest --spawn-server --concurrency 1,4,16 --out out/
    sluiceway-loadtest --target 127.0.0.1:8001 --model mlp --rate 200,400,800 --deadline-ms 50
    sluiceway-loadtest --spawn-server --model resnet --streams 2 --fps 15
    sluiceway-loadtest --compare a=127.0.0.1:8001,b=127.0.0.1:9001/mlp --concurrency 4 --rounds 3
    sluiceway-loadtest crosscheck --model mlp --concurrency 1,16
    sluiceway-loadtest report out/results.json
    sluiceway-loadtest soak --duration-s 60 --out out/soak
    sluiceway-loadtest realtime --spawn-server --preset vad --streams 50,100,250

Steps run in the order closed, open, stream; see README.md "Load testing" for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from loadtest import ending
from loadtest.channels import add_arguments as add_security_arguments
from loadtest.channels import security_from
from loadtest.scenario import (
    DEFAULT_ADDRESS,
    Scenario,
    Step,
    Target,
    describe_deadline,
    is_loopback,
    parse_levels,
    parse_target,
    parse_targets,
)
from loadtest.server import DEFAULT_CACHE_DIR, SpawnedServer
from loadtest.shapes import parse_shapes

SPAWN = "spawn"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluiceway-loadtest",
        description="Closed-loop, open-loop and streaming load against KServe v2 gRPC servers.",
        epilog="Subcommands: 'crosscheck' (against perf_analyzer), 'report RESULTS.json' (redraw), "
        "'soak' (mixed traffic with faults for a set time, then reconciled), 'realtime' (paced streams).",
    )
    where = parser.add_argument_group("targets")
    where.add_argument("--target", default=DEFAULT_ADDRESS, help="host:port of a running server")
    where.add_argument(
        "--spawn-server", action="store_true", help="start sluiceway (demo models) for the run"
    )
    where.add_argument(
        "--compare",
        help="name=host:port[/model],... : the same scenario against each, interleaved; ratios to the "
        "first ('spawn' as the address means the --spawn-server one)",
    )
    where.add_argument("--model", default="mlp")
    where.add_argument("--server-arg", action="append", default=[], help="extra flag for the spawned server")
    where.add_argument(
        "--server-metrics",
        metavar="URL",
        help="the first target's server's Prometheus /metrics (every target at its address reads it), "
        "e.g. http://127.0.0.1:8002/metrics: server-side figures in the report (a spawned server's is "
        "found by itself)",
    )
    where.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="spawned server's cache")
    where.add_argument("--allow-remote", action="store_true", help="allow targets off this machine")
    load = parser.add_argument_group("load")
    load.add_argument("--concurrency", help="closed loop: concurrent requests per step, e.g. 1,4,16,64")
    load.add_argument("--rate", help="open loop: requests/s per step, e.g. 200,400,800")
    load.add_argument("--arrival", choices=("poisson", "constant"), default="poisson")
    load.add_argument("--streams", help="streaming: concurrent ModelStreamInfer calls per step, e.g. 1,4")
    load.add_argument("--fps", type=float, default=30.0, help="frames/s of each stream")
    load.add_argument("--source", choices=("auto", "random", "video", "sensor"), default="auto")
    load.add_argument(
        "--deadline-ms", type=float, help="per-request deadline (gRPC deadline + timeout); default none"
    )
    load.add_argument("--batch-size", type=int, default=1, help="rows per request (the -1 batch dim)")
    load.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    load.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME=D1,D2,...",
        help="an input's dims after the batch dim (as perf_analyzer's --shape); its -1 dims are 1 otherwise",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--processes", type=int, default=1, help="client worker processes")
    run.add_argument(
        "--connections",
        type=int,
        default=1,
        help="connections each process opens to a target (at most one a user or stream), its load spread "
        "over them: `serve --workers N` spreads connections, not requests, over its workers",
    )
    run.add_argument("--duration-s", type=float, default=5.0, help="measured seconds per step")
    run.add_argument("--warmup-s", type=float, default=1.0, help="unmeasured seconds before each step")
    run.add_argument("--rounds", type=int, default=1, help="repeat each step, alternating targets")
    run.add_argument("--max-requests", type=int, default=1_000_000, help="bound per step and target")
    run.add_argument("--max-in-flight", type=int, default=1024, help="per process (open) or stream")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", type=Path, help="write results.json, report.html and PNGs here")
    run.add_argument(
        "--no-plots",
        action="store_true",
        help="with --out: no PNGs (report.html has the table only; 'report RESULTS.json' draws them later)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar or per-round lines (stderr)")
    add_security_arguments(parser)
    return parser


def steps_from(args: argparse.Namespace) -> tuple[Step, ...]:
    steps: list[Step] = []
    for mode, text in (("closed", args.concurrency), ("open", args.rate), ("stream", args.streams)):
        if text:
            levels = parse_levels(text)
            if mode != "open" and any(level != int(level) for level in levels):
                raise ValueError(f"--{'concurrency' if mode == 'closed' else 'streams'} takes whole numbers")
            steps.extend(Step(mode, level) for level in levels)  # type: ignore[arg-type]
    return tuple(steps) or (Step("closed", 1.0),)


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{flag} expects NAME=VALUE, got {item!r}")
        pairs[name] = value
    return pairs


def scenario_from(args: argparse.Namespace, targets: tuple[Target, ...]) -> Scenario:
    positive = {
        "--processes": args.processes,
        "--rounds": args.rounds,
        "--batch-size": args.batch_size,
        "--connections": args.connections,
    }
    for flag, value in positive.items():
        if value < 1:
            raise ValueError(f"{flag} must be >= 1")
    if args.duration_s <= 0 or args.warmup_s < 0 or args.fps <= 0:
        raise ValueError("--duration-s and --fps must be > 0, --warmup-s >= 0")
    if args.deadline_ms is not None and args.deadline_ms <= 0:
        raise ValueError("--deadline-ms must be > 0")
    return Scenario(
        targets=targets,
        steps=steps_from(args),
        duration_s=args.duration_s,
        warmup_s=args.warmup_s,
        rounds=args.rounds,
        processes=args.processes,
        batch_size=args.batch_size,
        deadline_ms=args.deadline_ms,
        arrival=args.arrival,
        fps=args.fps,
        source=args.source,
        max_requests=args.max_requests,
        max_in_flight=args.max_in_flight,
        seed=args.seed,
        input_files=_pairs(args.input, "--input"),
        shapes=parse_shapes(args.shape),
        security=security_from(args),
        connections=args.connections,
    )


def targets_from(
    args: argparse.Namespace, spawned: str | None, spawned_metrics: str | None = None
) -> tuple[Target, ...]:
    if args.compare:
        text = args.compare.replace(f"={SPAWN}", f"={spawned}") if spawned else args.compare
        targets = parse_targets(text, args.model)
    else:
        targets = (parse_target(spawned or args.target, args.model),)
    given = getattr(args, "server_metrics", None)
    first = targets[0].address
    targets = tuple(
        dataclasses.replace(t, metrics_url=spawned_metrics)
        if spawned and t.address == spawned and spawned_metrics
        else dataclasses.replace(t, metrics_url=given)
        if given and t.address == first  # the first target's server: its other models too
        else t
        for t in targets
    )
    for target in targets:
        if not args.allow_remote and not is_loopback(target.address):
            raise ValueError(f"target {target.address} is not on this machine (use --allow-remote)")
    return targets


@contextlib.contextmanager
def maybe_spawn(args: argparse.Namespace) -> Iterator[SpawnedServer | None]:
    if not args.spawn_server:
        yield None
        return
    with SpawnedServer(args.cache_dir, args.server_arg) as server:
        yield server


def step_line(entry: dict[str, Any]) -> str:
    lat = entry["latency_us"]

    def ms(key: str) -> str:
        return "-" if lat[key] is None else f"{lat[key] / 1000:.2f}"

    errors = sum(entry["errors"].values())
    batch = entry["server"]["avg_batch_size"]
    return (
        f"{entry['target']:>12} {entry['step']['label']:<16} offered {entry['offered_rps']:8.1f}/s "
        f"thr {entry['throughput_rps']:8.1f}/s good {entry['goodput_rps']:8.1f}/s "
        f"p50 {ms('p50')} p99 {ms('p99')} p99.9 {ms('p99_9')} ms err {errors} "
        f"batch {'-' if batch is None else f'{batch:.2f}'} cpu {entry['client_cpu']['percent_of_core']}% "
        f"lag p99 {_ms_or_dash(entry['client_lag_us']['p99'])} ms"
        + _from_send_text(entry.get("latency_from_send_us"))
        + (
            f" late {entry['late_ok']} reject p50 {_ms_or_dash(entry['reject_us']['p50'])} ms"
            if errors or entry["late_ok"]
            else ""
        )
        + _server_metrics_text(entry["server"].get("metrics"))
    )


def _from_send_text(sent: dict[str, float | None] | None) -> str:
    """perf_analyzer's figure: unary latency from the send (the client's lag left out)."""
    return "" if not sent else f" from send p50 {_ms_or_dash(sent['p50'])} ms"


def _server_metrics_text(metrics: dict[str, float] | None) -> str:
    """The server's own view from /metrics: deadline misses, CPU and cost per inference."""
    if not metrics:
        return ""
    misses = sum(metrics.get(f"deadline_{k}", 0.0) for k in ("shed", "expired", "late"))
    text = f" | server misses {misses:.0f}"
    if "gauge_cpu_us_per_inference" in metrics:
        text += f" cpu {metrics['gauge_cpu_us_per_inference']:.0f} us/inf"
    if "gauge_cost_per_million_inferences" in metrics:
        text += f" cost {metrics['gauge_cost_per_million_inferences']:.4f}/M"
    return text


def _ms_or_dash(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:.2f}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from loadtest.progress import Progress
    from loadtest.results import summarize
    from loadtest.runner import LoadWorkerFailed, RunRecord, run_scenario
    from loadtest.start import START_MARGIN_S, TargetUnreachable

    with maybe_spawn(args) as spawned:
        address, metrics_url = (spawned.address, spawned.metrics_url) if spawned else (None, None)
        scenario = scenario_from(args, targets_from(args, address, metrics_url))
        runs = len(scenario.steps) * scenario.rounds * len(scenario.targets)
        per_run_s = START_MARGIN_S + scenario.warmup_s + scenario.duration_s
        with Progress(runs * per_run_s, quiet=args.quiet) as progress:
            done: list[RunRecord] = []

            def on_record(record: RunRecord) -> None:
                done.append(record)
                entry = summarize(scenario, [record], scenario.batch_size)["results"][0]
                progress.finished(f"r{record.round} " + step_line(entry))

            started = time.monotonic()
            try:
                records = run_scenario(scenario, progress.tick, on_record)
            except (KeyboardInterrupt, LoadWorkerFailed, TargetUnreachable) as exc:
                if not done:
                    raise
                # Ctrl-C (or SIGTERM), a worker that died, a target gone after some steps: theirs are
                # kept (every step had been lost).
                results = summarize(scenario, done, scenario.batch_size)
                results["wall_s"] = round(time.monotonic() - started, 2)
                results["interrupted"] = True
                if not isinstance(exc, KeyboardInterrupt):
                    results["stopped_by"] = _stopped_by(exc)
                return results
        results = summarize(scenario, records, scenario.batch_size)
        results["wall_s"] = round(time.monotonic() - started, 2)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["crosscheck"]:
        from loadtest.crosscheck import main as crosscheck_main

        return crosscheck_main(argv[1:])
    if argv[:1] == ["report"]:
        return _report(argv[1:])
    if argv[:1] == ["soak"]:
        from loadtest.soak import main as soak_main

        return soak_main(argv[1:])
    if argv[:1] == ["realtime"]:
        from loadtest.realtime import main as realtime_main

        return realtime_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.out is not None and args.out.exists() and not args.out.is_dir():  # before the run, not after
        print(f"sluiceway-loadtest: --out {args.out} is not a folder", file=sys.stderr)
        return 2
    if args.out is not None:
        try:  # a folder it cannot make or write ended in a traceback after the run, its results lost
            args.out.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=args.out).close()
        except OSError as err:
            print(
                f"sluiceway-loadtest: --out {args.out}: cannot write there ({err.strerror or err})",
                file=sys.stderr,
            )
            return 2
    # SIGTERM (timeout, a CI cancel) as Ctrl-C: the spawned server is stopped on the way out; it
    # had been left running, adopted by init, for good.
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        results = run(args)
    except KeyboardInterrupt:
        print("sluiceway-loadtest: interrupted before any step was measured", file=sys.stderr)
        return 130
    except RuntimeError as exc:  # a load worker or the target gone before any step was measured
        stopped = _stopped_by(exc)
        print(f"sluiceway-loadtest: {stopped['message']}; no step was measured", file=sys.stderr)
        return ending.exit_status({"stopped_by": stopped})
    except ValueError as exc:
        print(f"sluiceway-loadtest: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:  # metadata of a target: unreachable, unknown model...
        print(f"sluiceway-loadtest: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    for entry in results["results"]:  # the summary table stays on stdout even with --quiet
        print(step_line(entry))
    print(describe_deadline(results["deadline_sent"]), file=sys.stderr)
    for entry in results["results"]:  # why requests failed: the first message of each status
        for code, message in entry.get("error_messages", {}).items():
            where = f"{entry['target']} {entry['step']['label']}"
            print(f"{where}: {code} x{entry['errors'][code]}, e.g. {message}", file=sys.stderr)
    if args.out:
        from loadtest.report import write_all

        for path in write_all(results, args.out, plots=not args.no_plots):
            print(f"wrote {path}", file=sys.stderr)
    for line in ending.lines(results):
        print(line, file=sys.stderr)
    return ending.exit_status(results)


def _stopped_by(exc: BaseException) -> dict[str, str]:
    """results["stopped_by"] for a run a worker or the target ended; the worker's traceback, where
    it sent one, goes to stderr."""
    from loadtest.runner import LoadWorkerFailed
    from loadtest.start import TargetUnreachable

    if isinstance(exc, LoadWorkerFailed) and exc.detail:
        print(exc.detail, file=sys.stderr)
    kind = ending.TARGET_UNREACHABLE if isinstance(exc, TargetUnreachable) else ending.LOAD_WORKER
    return ending.stopped_by(kind, str(exc))


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sluiceway-loadtest report", description="redraw a report")
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, help="folder (default: beside results.json)")
    args = parser.parse_args(argv)
    from loadtest.report import write_all

    results = json.loads(args.results.read_text())
    for path in write_all(results, args.out or args.results.parent):
        print(f"wrote {path}", file=sys.stderr)
    return 0
