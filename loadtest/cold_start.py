"""First-request latency of a fresh server: preloaded vs lazy (`lazy_load`) vs lazy with warm-up.

For each variant and repetition a new server starts on a repository holding one copy of the demo
model (a config variant of it), a connection is opened (ServerReady), then the first inference
request is timed, then a second one (warm). Variants are interleaved. Prints a markdown table: time
to the ready line, first request median and max, second request median, the model footprint the
server logged at its load, and the server's resident-set growth over the first request (for a lazy
model: what the load really added, against which the logged footprint can be checked), and with
`--then-rows 4,16` that growth after requests of those sizes too (the arena grows with the batch).
Bounded: at most 20 repetitions, every call has a deadline.

    .venv/bin/python -m loadtest.cold_start [--model resnet] [--repetitions 5]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clients import NO_RETRY, Client
from loadtest.server import DEFAULT_CACHE_DIR, REPO_ROOT, SpawnedServer

INPUTS = {"resnet": ("image", (1, 3, 224, 224)), "mlp": ("features", (1, 64))}
LAZY = 'parameters { key: "lazy_load" value { string_value: "true" } }\n'
WARMUP = """model_warmup [ {{
  name: "zeros" batch_size: 1 count: 1
  inputs {{ key: "{input}" value: {{ data_type: TYPE_FP32 dims: [ {dims} ] zero_data: true }} }}
}} ]
"""
VARIANTS = ("preloaded", "preloaded+warmup", "lazy", "lazy+warmup")
REQUEST_TIMEOUT_S = 120.0
_FOOTPRINT = re.compile(r"footprint ([\d.]+) MiB")


@dataclass
class Samples:
    ready_s: list[float] = field(default_factory=list)
    first_ms: list[float] = field(default_factory=list)
    second_ms: list[float] = field(default_factory=list)
    footprint_mib: list[float] = field(default_factory=list)  # as the server logged it at the load
    growth_mib: list[float] = field(default_factory=list)  # server RSS growth over the first request
    later_mib: list[float] = field(default_factory=list)  # ... and after the `then_rows` requests too


def demo_repository(cache_dir: Path) -> Path:
    """The built demo repository (built once), from `sluiceway build-demo` (no server import)."""
    env = {**os.environ, "SLUICEWAY_CACHE_DIR": str(cache_dir)}
    out = subprocess.run(
        [sys.executable, "-m", "server", "build-demo"],
        env=env, cwd=REPO_ROOT, check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return Path(out.stdout.strip().splitlines()[-1])


def write_variant(repo: Path, demo: Path, model: str, variant: str) -> None:
    directory = repo / model
    (directory / "1").mkdir(parents=True)
    (directory / "1" / "model.onnx").symlink_to(demo / model / "1" / "model.onnx")
    config = (demo / model / "config.pbtxt").read_text()
    if "warmup" in variant:
        name, shape = INPUTS[model]
        config += WARMUP.format(input=name, dims=", ".join(str(d) for d in shape[1:]))
    if variant.startswith("lazy"):
        config += LAZY
    (directory / "config.pbtxt").write_text(config)


def measure_once(
    repo: Path, model: str, cache_dir: Path, samples: Samples, then_rows: Sequence[int] = ()
) -> None:
    name, shape = INPUTS[model]
    data = {name: np.zeros(shape, dtype=np.float32)}
    started = time.perf_counter()
    with SpawnedServer(cache_dir, ["--model-repository", str(repo)]) as server:
        samples.ready_s.append(time.perf_counter() - started)
        assert server.process is not None
        with Client(server.address, retry=NO_RETRY) as client:
            client.server_ready(timeout_s=30)  # the connection is open before the clock starts
            before = rss_mib(server.process.pid)
            for into in (samples.first_ms, samples.second_ms):
                sent = time.perf_counter()
                client.infer(model, data, timeout_s=REQUEST_TIMEOUT_S)
                into.append((time.perf_counter() - sent) * 1000)
                if into is samples.first_ms:
                    samples.growth_mib.append(rss_mib(server.process.pid) - before)
            for rows in then_rows:  # larger batches grow onnxruntime's arena further
                client.infer(
                    model, {name: np.zeros((rows, *shape[1:]), np.float32)}, timeout_s=REQUEST_TIMEOUT_S
                )
            if then_rows:
                samples.later_mib.append(rss_mib(server.process.pid) - before)
        samples.footprint_mib += [float(m) for line in server.tail for m in _FOOTPRINT.findall(line)]


def rss_mib(pid: int) -> float:
    """A process's resident set in MiB (Linux /proc)."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(model: str, repetitions: int, cache_dir: Path, then_rows: Sequence[int] = ()) -> dict[str, Samples]:
    """Variants interleaved (one repetition of each in turn): a noisy spell hits them all alike."""
    demo = demo_repository(cache_dir)
    results = {variant: Samples() for variant in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="sluiceway-cold-") as tmp:
        repos = {variant: Path(tmp) / variant for variant in VARIANTS}
        for variant, repo in repos.items():
            write_variant(repo, demo, model, variant)
        for repetition in range(repetitions):
            for variant, repo in repos.items():
                measure_once(repo, model, cache_dir, results[variant], then_rows)
            print(f"repetition {repetition + 1}/{repetitions} done", file=sys.stderr)
    return results


def table(results: dict[str, Samples]) -> str:
    lines = [
        "| variant | time to ready (median) | first request median | first request max "
        "| second request median | footprint logged | server RSS growth over the first request "
        "| ... and after the --then-rows requests |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, s in results.items():
        lines.append(
            f"| {variant} | {statistics.median(s.ready_s):.2f} s | {statistics.median(s.first_ms):.0f} ms "
            f"| {max(s.first_ms):.0f} ms | {statistics.median(s.second_ms):.1f} ms "
            f"| {_median(s.footprint_mib):.1f} MiB | {_median(s.growth_mib):.1f} MiB "
            f"| {_median(s.later_mib):.1f} MiB |"
        )
    return "\n".join(lines)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.cold_start", description=__doc__)
    parser.add_argument("--model", choices=sorted(INPUTS), default="resnet")
    parser.add_argument("--repetitions", type=int, default=5, help="fresh servers per variant (1-20)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument(
        "--then-rows",
        default="",
        help="comma-separated batch sizes sent after the timed requests (e.g. 4,16)",
    )
    args = parser.parse_args(argv)
    then_rows = [int(r) for r in args.then_rows.split(",") if r.strip()]
    if any(not 1 <= r <= 64 for r in then_rows):
        parser.error("--then-rows: batch sizes 1 to 64")
    if not 1 <= args.repetitions <= 20:
        parser.error("--repetitions must be 1 to 20")
    before = os.getloadavg()[0]
    print(table(run(args.model, args.repetitions, args.cache_dir, then_rows)))
    print(f"\nload average (1 min): {before:.2f} before, {os.getloadavg()[0]:.2f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
