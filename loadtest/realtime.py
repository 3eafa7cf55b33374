"""`sluiceway-loadtest realtime`: N real-time streams (sensors, microphones, cameras), each sending
one chunk every 1/rate seconds, open loop; per-stream latency, dropped chunks, and how many
streams kept real time. See loadtest/realtime_worker.py for the schedule and the definitions.

    sluiceway-loadtest realtime --spawn-server --preset vad --streams 50,100,250
    sluiceway-loadtest realtime --spawn-server --preset camera --streams 2,4,8
    sluiceway-loadtest realtime --target 127.0.0.1:8001 --model mlp --rate 100 --streams 16,64

Presets: `vad` (model silero_vad, 31.25 chunks/s of 512 samples, one sequence per stream:
sequence_id / sequence_start / sequence_end), `camera` (resnet_u8, 15 frames/s, the
latest_frame_wins request parameter). Any model works: its inputs come from ModelMetadata.
Bounded: every step lasts warmup + duration + at most drain seconds. No gRPC deadline is sent
(the server takes a stream's as each chunk's): a stream still open `--drain-s` after the window is
cancelled, its unanswered chunks counted NO_ANSWER. Streams the server refuses (its stream limits)
count their chunks as errors with the server's status; the first message of each is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from loadtest import channels, ending, inputs
from loadtest.proc import cpu_s, load_average
from loadtest.realtime_worker import ProcessResult, RealtimePlan, StreamResult, worker_main
from loadtest.scenario import Scenario, Target, is_loopback, parse_levels, split_evenly
from loadtest.server import DEFAULT_CACHE_DIR, SpawnedServer
from loadtest.shapes import InputMismatch, parse_shapes
from loadtest.start import START_MARGIN_S, TargetUnreachable, receive, send_start, wait_connected
from loadtest.stats import latency_summary, merge_histograms
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

PRESETS: dict[str, dict[str, Any]] = {
    "vad": {"model": "silero_vad", "rate": 31.25, "sequence": True, "latest_frame_wins": False},
    "camera": {"model": "resnet_u8", "rate": 15.0, "sequence": False, "latest_frame_wins": True},
}


@dataclass
class StepResult:
    streams: int
    rate: float
    offered_per_s: float
    computed_per_s: float
    dropped: int
    errors: dict[str, int]
    error_messages: dict[str, str]  # the server's first message with each status
    real_time_streams: int
    latency_us: dict[str, float | None]  # computed chunks, all streams
    worst_stream_p99_us: float | None
    median_stream_p99_us: float | None
    client_lag_p99_us: float
    client_cpu_cores: float
    server_batch_rows: float | None  # mean rows per backend run in the window
    # The server process's CPU over the measurement window (None: its process id is unknown).
    server_cpu_cores: float | None
    server_cpu_us_per_chunk: float | None  # ... over the chunks computed in the window
    per_stream: list[dict[str, Any]]
    deadline_sent: str = "none"  # no gRPC deadline on the streams, no timeout parameter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluiceway-loadtest realtime", description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:8001")
    parser.add_argument("--spawn-server", action="store_true", help="start sluiceway for the run")
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for the spawned server")
    parser.add_argument(
        "--server-pid", type=int, help="the target's process (this machine): report its CPU per chunk"
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--preset", choices=sorted(PRESETS))
    parser.add_argument("--model", help="default: the preset's, else mlp")
    parser.add_argument("--rate", type=float, help="chunks/s of each stream (default: the preset's, else 30)")
    parser.add_argument("--streams", required=True, help="concurrent streams per step, e.g. 50,100,250")
    parser.add_argument(
        "--sequence", action="store_true", help="one sequence per stream (sequence_* parameters)"
    )
    parser.add_argument("--latest-frame-wins", action="store_true", help="send latest_frame_wins: true")
    parser.add_argument("--shape", action="append", default=[], metavar="NAME=D1,D2,...")
    parser.add_argument("--source", choices=inputs.SOURCES, default="auto")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--drain-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, help="write realtime.json (with every stream's figures) here")
    channels.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _measure(args)
    except InputMismatch as exc:  # a --shape the model's inputs cannot take, before any load
        print(f"sluiceway-loadtest realtime: {exc}", file=sys.stderr)
        return 2
    except TargetUnreachable as exc:  # had ended in a traceback, exit status 1
        print(f"sluiceway-loadtest realtime: {exc}; no step was measured", file=sys.stderr)
        return ending.EXIT_UNREACHABLE
    except grpc.RpcError as exc:  # the target's metadata: an unknown model, a refused token...
        print(f"sluiceway-loadtest realtime: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


def _measure(args: argparse.Namespace) -> int:
    """Every level of --streams in turn, a table row each; realtime.json into --out."""
    preset = PRESETS.get(args.preset or "", {})
    model = args.model or preset.get("model", "mlp")
    rate = args.rate or preset.get("rate", 30.0)
    sequence = args.sequence or preset.get("sequence", False)
    wins = args.latest_frame_wins or preset.get("latest_frame_wins", False)
    security = channels.security_from(args)
    shapes = parse_shapes(args.shape)  # before a server is spawned
    with _server(args) as (address, server_pid):
        if not is_loopback(address):
            raise SystemExit(f"--target {address} is not this machine: real-time load stays on 127.0.0.1")
        target = Target("sluiceway", address, model)
        scenario = Scenario((target,), (), source=args.source, shapes=shapes, security=security)
        payloads = inputs.payloads_for(target, scenario, "stream")
        print(
            f"{model}: {rate:g} chunks/s per stream, {len(payloads[0])} bytes per chunk, "
            f"sequence={sequence}, latest_frame_wins={wins}; deadline sent: none (streams cancelled "
            f"{args.drain_s:g} s after the window); load average {load_average()}",
            flush=True,
        )
        print(_HEADER, flush=True)
        results = []
        for level in parse_levels(args.streams):
            step = run_step(args, target, int(level), rate, payloads, sequence, wins, security, server_pid)
            results.append(step)
            print(_row(step), flush=True)
            for code, message in step.error_messages.items():  # why: refused streams, say
                print(f"{step.streams} streams: {code} x{step.errors[code]}, e.g. {message}", file=sys.stderr)
        print(f"load average after: {load_average()}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "realtime.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


@contextlib.contextmanager
def _server(args: argparse.Namespace) -> Iterator[tuple[str, int | None]]:
    """The target's address and, when known, its process id."""
    if not args.spawn_server:
        yield args.target, args.server_pid
        return
    with SpawnedServer(args.cache_dir, args.server_arg) as server:
        assert server.process is not None
        yield server.address, server.process.pid


def run_step(
    args: argparse.Namespace,
    target: Target,
    streams: int,
    rate: float,
    payloads: tuple[bytes, ...],
    sequence: bool,
    wins: bool,
    security: Any,
    server_pid: int | None = None,
) -> StepResult:
    ctx = multiprocessing.get_context("spawn")
    # A placeholder: once every process has started and connected, they start together
    # (loadtest/start.py). A fixed 3 s ahead had been ~2 s of waiting a step.
    start_at = time.monotonic() + START_MARGIN_S
    shares = split_evenly(streams, args.processes)
    sequence_base = (int(time.time()) % 100_000) * 10_000  # fresh ids per step: no stale sequences
    conns, procs, first = [], [], 0
    for share in shares:
        plan = RealtimePlan(
            target.address, share, first, rate, payloads, start_at, args.warmup_s, args.duration_s,
            args.drain_s, sequence, sequence_base, wins, security=security,
        )  # fmt: skip
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker_main, args=(child,), daemon=True)
        proc.start()
        parent.send(plan)
        conns.append(parent)
        procs.append(proc)
        first += share
    try:
        wait_connected(conns)
    except BaseException:
        for conn in conns:  # the others wait for a start: None ends them
            with contextlib.suppress(OSError):
                conn.send(None)
        raise
    before = _server_rows(target, security)
    start_at = send_start(conns)
    window = start_at + args.warmup_s, start_at + args.warmup_s + args.duration_s
    server_cpu_s = None if server_pid is None else _window_cpu_s(server_pid, *window)
    bound = start_at + args.warmup_s + args.duration_s + args.drain_s + 30.0
    parts: list[ProcessResult] = []
    for index, conn in enumerate(conns):
        if not conn.poll(max(1.0, bound - time.monotonic())):
            raise RuntimeError("a real-time client process did not finish in time")
        kind, value = receive(conn, index)
        if kind != "ok":
            raise RuntimeError(f"a real-time client process failed:\n{value}")
        parts.append(value)
    after = _server_rows(target, security)
    for proc in procs:
        proc.join(10)
    return summarize(streams, rate, args.duration_s, parts, before, after, server_cpu_s)


def _window_cpu_s(pid: int, begin: float, end: float) -> float:
    """CPU seconds process `pid` spends between two time.monotonic() moments, waited for here (the
    clients run in their own processes meanwhile, on the same schedule)."""
    time.sleep(max(0.0, begin - time.monotonic()))
    start = cpu_s(pid)
    time.sleep(max(0.0, end - time.monotonic()))
    return cpu_s(pid) - start


def summarize(
    streams: int,
    rate: float,
    duration_s: float,
    parts: list[ProcessResult],
    before: tuple[int, int] | None,
    after: tuple[int, int] | None,
    server_cpu_s: float | None = None,
) -> StepResult:
    per_stream: list[StreamResult] = [s for p in parts for s in p.streams]
    errors: dict[str, int] = {}
    messages: dict[str, str] = {}
    for s in per_stream:
        for code, n in s.errors.items():
            errors[code] = errors.get(code, 0) + n
        for code, message in s.messages.items():
            messages.setdefault(code, message)
    p99s = [s.p99_us for s in per_stream if s.p99_us is not None]
    rows = None
    if before and after and after[1] > before[1]:
        rows = (after[0] - before[0]) / (after[1] - before[1])
    computed = sum(s.computed for s in per_stream)
    per_chunk = None if server_cpu_s is None or not computed else server_cpu_s / computed * 1e6
    return StepResult(
        streams=streams,
        rate=rate,
        offered_per_s=sum(s.scheduled for s in per_stream) / duration_s,
        computed_per_s=computed / duration_s,
        dropped=sum(s.dropped for s in per_stream),
        errors=errors,
        error_messages={code: messages[code] for code in sorted(errors) if code in messages},
        real_time_streams=sum(s.real_time for s in per_stream),
        latency_us=latency_summary(merge_histograms(p.histogram for p in parts)),
        worst_stream_p99_us=max(p99s) if p99s else None,
        median_stream_p99_us=statistics.median(p99s) if p99s else None,
        client_lag_p99_us=max((p.lag_p99_us for p in parts), default=0.0),
        client_cpu_cores=sum(p.cpu_s for p in parts) / duration_s,
        server_batch_rows=rows,
        server_cpu_cores=None if server_cpu_s is None else server_cpu_s / duration_s,
        server_cpu_us_per_chunk=per_chunk,
        per_stream=[{**asdict(s), "real_time": s.real_time} for s in per_stream],
    )


def _server_rows(target: Target, security: Any) -> tuple[int, int] | None:
    """(inference_count, execution_count) of the model: the server's mean batch size over a step."""
    try:
        with channels.channel(target.address, security) as chan:
            stub = pb_grpc.GRPCInferenceServiceStub(chan)  # type: ignore[no-untyped-call]
            stats = stub.ModelStatistics(
                pb.ModelStatisticsRequest(name=target.model), timeout=5, metadata=channels.metadata(security)
            )
    except grpc.RpcError:
        return None
    return (
        sum(m.inference_count for m in stats.model_stats),
        sum(m.execution_count for m in stats.model_stats),
    )


_HEADER = (
    "| streams | chunks/s offered | computed/s | dropped | errors | streams in real time | p50 ms | p99 ms "
    "| worst stream p99 ms | client lag p99 ms | client CPU cores | server rows/run "
    "| server CPU cores | server CPU µs/chunk |\n"
    "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.1f}"


def _row(r: StepResult) -> str:
    errors = ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items())) or "0"
    rows = "-" if r.server_batch_rows is None else f"{r.server_batch_rows:.1f}"
    cores = "-" if r.server_cpu_cores is None else f"{r.server_cpu_cores:.2f}"
    per_chunk = "-" if r.server_cpu_us_per_chunk is None else f"{r.server_cpu_us_per_chunk:.0f}"
    return (
        f"| {r.streams} | {r.offered_per_s:.0f} | {r.computed_per_s:.0f} | {r.dropped} | {errors} "
        f"| {r.real_time_streams}/{r.streams} | {_ms(r.latency_us['p50'])} | {_ms(r.latency_us['p99'])} "
        f"| {_ms(r.worst_stream_p99_us)} | {r.client_lag_p99_us / 1000:.1f} | {r.client_cpu_cores:.2f} "
        f"| {rows} | {cores} | {per_chunk} |"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
