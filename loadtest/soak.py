"""`sluiceway-loadtest soak`: mixed traffic with faults, cancellations, reloads and hostile
requests against a spawned server for a set time, then the books must balance.

    sluiceway-loadtest soak --duration-s 60 --out out/soak
    sluiceway-loadtest soak --short          # the CI mode: 10 s

It builds a repository (the demo mlp and resnet_u8, plus mlp copies that raise every 50th run
and hang every 50th run), starts `sluiceway serve --allow-fault-injection --run-timeout-s 2` on a
free 127.0.0.1 port and runs every loop of soak_traffic.py and soak_hostile.py at once. At the
end it reconciles each traffic class (sent == ok + errors by status + cancelled by the client,
nothing unanswered, every stream id answered exactly once, INTERNAL only from injected faults,
hostile requests refused with their client-error status), checks that the faults, reloads and
cancellations happened, that the server's RSS grew less than the bound from after the warm-up to
the end, that it still answers, and that it exits 0 on SIGTERM. Prints a table and the checks,
writes summary.json (--out); exits 1 naming every failed check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import grpc

from loadtest.server import DEFAULT_CACHE_DIR, SpawnedServer
from loadtest.soak_hostile import HOSTILE, hostile_loop
from loadtest.soak_hostile import rules as hostile_rules
from loadtest.soak_report import LOAD, WATCHDOG, Check, ClassTally, Rule, checks_text, failed, reconcile
from loadtest.soak_report import summary as summarize
from loadtest.soak_report import table as tally_table
from loadtest.soak_traffic import STUB, Books, Plan, mlp_request, traffic, unary

FAULTY = """max_batch_size: 8
dynamic_batching {{ }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
parameters {{ key: "{key}" value: {{ string_value: "{every}" }} }}
"""
DRAIN_BOUND_S = 90.0  # loops must end this long after the window (every call has a 20 s deadline)
# Server log lines counted during the soak (the watchdog's and the faults' own lines).
WATCHED = ("past run_timeout_s", "replaced (new session and executor)", "raised on purpose", "Traceback")
RULES: dict[str, Rule] = {
    "unary_mlp": Rule(),
    "unary_resnet_u8": Rule(),
    "stream_mlp": Rule(),
    "fault_raise": Rule(allowed=LOAD | {"INTERNAL"}, fault=True),
    "stream_fault_raise": Rule(allowed=LOAD | {"INTERNAL"}, fault=True),
    "fault_hang": Rule(allowed=LOAD | {WATCHDOG}),
    "cancel_unary": Rule(),
    "cancel_stream": Rule(),
    "cancel_channel": Rule(),
    "reload": Rule(allowed=frozenset()),
    **hostile_rules(),
}


@dataclass(slots=True)
class Outcome:
    """What one soak saw, besides the books."""

    books: Books = field(default_factory=Books)
    seconds: float = 0.0
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds into the soak, MB)
    rss_start_mb: float = 0.0
    checks: list[Check] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluiceway-loadtest soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=60.0, help="seconds of traffic (default 60)")
    parser.add_argument("--short", action="store_true", help="CI mode: 10 s of traffic, 2 s warm-up")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="RSS is first read this far in")
    parser.add_argument("--max-rss-growth-mb", type=float, default=200.0, help="bound on RSS growth")
    parser.add_argument("--run-timeout-s", type=float, default=2.0, help="the server's watchdog limit")
    parser.add_argument("--raise-every", type=int, default=50, help="mlp_raises: every N-th run raises")
    parser.add_argument("--hang-every", type=int, default=20, help="mlp_hangs: every N-th run hangs")
    parser.add_argument("--unary-clients", type=int, default=4, help="closed-loop mlp clients")
    parser.add_argument("--streams", type=int, default=3, help="concurrent mlp streams")
    parser.add_argument("--stream-rate", type=float, default=100.0, help="frames/s of each stream")
    parser.add_argument("--cancel-rate", type=float, default=50.0, help="cancellations per second")
    parser.add_argument(
        "--reload-every-s",
        type=float,
        default=2.0,
        help="RepositoryModelLoad(mlp) period; 0: no reloads, the server in its default control mode "
        "(so --server-arg=--workers works)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="demo model cache")
    parser.add_argument("--out", type=Path, help="write summary.json here")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra flag for the spawned server (repeatable)"
    )
    return parser


def demo_repository(cache_dir: Path) -> Path:
    """`sluiceway build-demo` in a child process (loadtest never imports server/)."""
    env = {**os.environ, "SLUICEWAY_CACHE_DIR": str(cache_dir)}
    built = subprocess.run(
        [sys.executable, "-m", "server", "build-demo"], env=env, check=True, capture_output=True, text=True
    )
    return Path(built.stdout.strip().splitlines()[-1])


def build_repository(root: Path, cache_dir: Path, raise_every: int, hang_every: int) -> Path:
    """mlp and resnet_u8 as the demo has them, mlp_raises and mlp_hangs as fault-injected copies."""
    demo = demo_repository(cache_dir)
    repo = root / "repository"
    models = {
        "mlp": ("mlp", (demo / "mlp" / "config.pbtxt").read_text()),
        "resnet_u8": ("resnet_u8", (demo / "resnet_u8" / "config.pbtxt").read_text()),
        "mlp_raises": ("mlp", FAULTY.format(key="fault_raise_every", every=raise_every)),
        "mlp_hangs": ("mlp", FAULTY.format(key="fault_hang_every", every=hang_every)),
    }
    for name, (source, config) in models.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(config)
        (repo / name / "1" / "model.onnx").symlink_to(demo / source / "1" / "model.onnx")
    return repo


def rss_mb(pid: int) -> float:
    """The process's resident set (VmRSS) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def sample_rss(pid: int, outcome: Outcome, start: float, end: float) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < end:
        outcome.rss_mb.append((round(loop.time() - start, 1), round(rss_mb(pid), 1)))
        await asyncio.sleep(min(1.0, max(0.0, end - loop.time())))  # pacing: one sample a second


async def drive(address: str, pid: int, args: argparse.Namespace, plan: Plan) -> Outcome:
    """Every loop for the window, then the drain, the final request and the RSS reading."""
    outcome = Outcome()
    for name in RULES:  # every class in the books from the start, in this order
        outcome.books.of(name)
    loop = asyncio.get_running_loop()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = STUB(channel)
        start = loop.time()
        end = start + args.duration_s
        tasks = traffic(address, stub, outcome.books, plan, end)
        tasks.append(
            asyncio.create_task(hostile_loop(channel, stub, outcome.books, plan.hostile_pause_s, end))
        )
        sampler = asyncio.create_task(sample_rss(pid, outcome, start, end))
        done, pending = await asyncio.wait(tasks, timeout=args.duration_s + DRAIN_BOUND_S)
        for task in pending:
            task.cancel()
        await sampler
        outcome.seconds = loop.time() - start
        crashed = [f"{type(t.exception()).__name__}: {t.exception()}" for t in done if t.exception()]
        outcome.checks += [
            Check("every traffic loop ended in time", not pending, f"{len(pending)} still running"),
            Check("no traffic loop failed", not crashed, "; ".join(crashed[:3])),
        ]
        final = ClassTally()
        await unary(stub, final, mlp_request("mlp", 2, "final"), 2)
        answer = "OK" if final.ok else str(final.as_dict()["errors"] or final.as_dict())
        outcome.checks.append(Check("the server answers after the soak", final.ok == 1, answer))
    warm = [mb for t, mb in outcome.rss_mb if t >= args.warmup_s] or [mb for _, mb in outcome.rss_mb[-1:]]
    outcome.rss_start_mb = warm[0]
    outcome.rss_mb.append((round(outcome.seconds, 1), round(rss_mb(pid), 1)))
    return outcome


def exercised(books: Books, seen: dict[str, int], reloads: bool = True) -> list[Check]:
    """The soak tested what it claims: faults were injected and survived, reloads (unless turned
    off) and cancels happened."""
    t = books.tallies
    hangs, timeouts = t["fault_hang"].errors[WATCHDOG], seen.get("past run_timeout_s", 0)
    raises = t["fault_raise"].errors["INTERNAL"] + t["stream_fault_raise"].errors["INTERNAL"]
    cancelled = sum(t[name].cancelled for name in ("cancel_unary", "cancel_stream", "cancel_channel"))
    idle = [name for name, tally in t.items() if tally.sent == 0 and (reloads or name != "reload")]
    return [
        Check("every traffic class and hostile kind sent requests", not idle, ", ".join(idle)),
        Check("injected raises answered INTERNAL", raises > 0, f"{raises} answers"),
        Check(
            "the watchdog fired and answered UNAVAILABLE",
            hangs > 0 and seen.get("replaced (new session and executor)", 0) > 0,
            f"{hangs} answers, {timeouts} timeouts logged",
        ),
        *([Check("mlp reloaded", t["reload"].ok > 0, f"{t['reload'].ok} reloads")] if reloads else []),
        Check("calls cancelled by the client", cancelled > 0, f"{cancelled} cancelled"),
    ]


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    """One soak: the summary (JSON-able), with `passed` and every check."""
    if args.short:
        args.duration_s, args.warmup_s = 10.0, 2.0
    if not 0 <= args.warmup_s < args.duration_s:
        raise ValueError("--warmup-s must be >= 0 and shorter than --duration-s")
    if args.reload_every_s < 0:
        raise ValueError("--reload-every-s must be >= 0 (0: no reloads)")
    plan = Plan(
        unary_mlp=args.unary_clients,
        streams=args.streams,
        stream_rate_hz=args.stream_rate,
        cancel_rate_hz=args.cancel_rate,
        reload_every_s=args.reload_every_s,
        raise_every=args.raise_every,
        hang_every=args.hang_every,
        seed=args.seed,
    )
    with TemporaryDirectory(prefix="sluiceway-soak-") as tmp:
        repo = build_repository(Path(tmp), args.cache_dir, args.raise_every, args.hang_every)
        flags = [
            "--model-repository",
            str(repo),
            "--allow-fault-injection",
            "--run-timeout-s",
            str(args.run_timeout_s),
            # The reloads are RPCs; without them the default mode loads every model at start.
            *(("--model-control-mode", "explicit", "--load-model", "*") if args.reload_every_s > 0 else ()),
            *args.server_arg,
        ]
        server = SpawnedServer(args.cache_dir, flags, watch=WATCHED).start()
        try:
            assert server.process is not None
            outcome = asyncio.run(drive(server.address, server.process.pid, args, plan))
        finally:
            server.stop()
        code = server.process.returncode
    tallies = outcome.books.tallies
    growth = outcome.rss_mb[-1][1] - outcome.rss_start_mb
    checks = [
        *reconcile(tallies, RULES),
        *outcome.checks,
        *exercised(outcome.books, dict(server.seen), reloads=args.reload_every_s > 0),
        Check(
            f"server RSS growth <= {args.max_rss_growth_mb:g} MB",
            growth <= args.max_rss_growth_mb,
            f"{outcome.rss_start_mb:.1f} -> {outcome.rss_mb[-1][1]:.1f} MB",
        ),
        Check("the server exits 0 on SIGTERM", code == 0, f"exit code {code}"),
    ]
    extra = {
        "command": "sluiceway-loadtest soak " + " ".join(args.argv),
        "duration_s": round(outcome.seconds, 1),
        "server_flags": flags[2:],
        "faults": {"raise_every": args.raise_every, "hang_every": args.hang_every},
        "plan": {f: getattr(plan, f) for f in plan.__dataclass_fields__},
        "rss_mb": {"start": outcome.rss_start_mb, "end": outcome.rss_mb[-1][1], "growth": round(growth, 1),
                   "peak": max(mb for _, mb in outcome.rss_mb), "samples": outcome.rss_mb},
        "server_log": dict(server.seen),
        "server_exit_code": code,
    }  # fmt: skip
    normal = {name: t for name, t in tallies.items() if not name.startswith(HOSTILE)}
    hostile = {name.removeprefix(HOSTILE): t for name, t in tallies.items() if name.startswith(HOSTILE)}
    return summarize(normal, hostile, checks, extra, outcome.seconds)


def report(result: dict[str, Any], books_seconds: float) -> str:
    """The text table: traffic classes, hostile kinds, RSS, then every check."""
    normal = {name: _tally(entry) for name, entry in result["classes"].items()}
    hostile = {name: _tally(entry) for name, entry in result["hostile"].items()}
    rss = result["rss_mb"]
    checks = [Check(c["name"], c["passed"], c["detail"]) for c in result["checks"]]
    return "\n\n".join(
        [
            tally_table(normal, books_seconds),
            tally_table(hostile, books_seconds),
            f"server RSS {rss['start']} MB after warm-up -> {rss['end']} MB at the end "
            f"(peak {rss['peak']} MB); log lines: {result['server_log']}",
            checks_text(checks),
        ]
    )


def _tally(entry: dict[str, Any]) -> ClassTally:
    tally = ClassTally(entry["sent"], entry["ok"], cancelled=entry["cancelled_by_client"])
    tally.slowest_s = entry["slowest_s"]
    tally.errors.update(entry["errors"])
    tally.unanswered, tally.duplicates, tally.unknown_ids = (
        entry["unanswered"], entry["duplicates"], entry["unknown_ids"],
    )  # fmt: skip
    return tally


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        result = run_soak(args)
    except ValueError as exc:
        print(f"sluiceway-loadtest soak: {exc}", file=sys.stderr)
        return 2
    print(report(result, result["duration_s"]))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out / 'summary.json'}", file=sys.stderr)
    bad = failed(Check(c["name"], c["passed"], c["detail"]) for c in result["checks"])
    for check in bad:
        print(f"sluiceway-loadtest soak: FAILED: {check.name} ({check.detail})", file=sys.stderr)
    return 1 if bad else 0
