"""Same-run A/B through perf_analyzer: the server at an earlier commit (a temporary git worktree,
run with this venv) against the working tree's, demo models, rounds interleaved (the order
flipped each round, so a drift of the machine hits both alike); the ratio is taken per round.

    .venv/bin/python -m loadtest.ab_perf_analyzer REF [--model mlp] [--concurrency 16] [--rounds 6]
        [--streaming] [--interval-ms 3000]

loadtest/ab_commit.sh does the same with this harness's closed loop; this one drives NVIDIA's
client (unary or --streaming). Each run accepts any stability (a noisy machine rarely gives
perf_analyzer's 10%): the spread of the per-round ratios is the figure's error.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from loadtest.perf_analyzer_path import find_perf_analyzer
from loadtest.perf_analyzer_table import run_perf_analyzer
from loadtest.server import REPO_ROOT, SpawnedServer


@contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """`ref` checked out in a temporary git worktree, removed on the way out."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "a"
        subprocess.run(
            ["git", "-C", str(REPO_ROOT), "worktree", "add", "-q", "--detach", str(tree), ref], check=True
        )
        try:
            yield tree
        finally:
            subprocess.run(
                ["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(tree)], check=False
            )


def summary(ratios: Sequence[float]) -> str:
    """The median of the per-round ratios and their range."""
    return f"median {statistics.median(ratios):.3f} (rounds {min(ratios):.2f}-{max(ratios):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref", help="the commit to compare the working tree with (A)")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--streaming", action="store_true")
    parser.add_argument("--interval-ms", type=int, default=3000)
    parser.add_argument("--perf-analyzer", type=Path)
    args = parser.parse_args()
    tool = find_perf_analyzer(args.perf_analyzer)
    rounds = min(args.rounds, 50)  # bounded: each round is two perf_analyzer runs
    with ExitStack() as stack:
        tree = stack.enter_context(worktree(args.ref))
        ports = {
            f"a_{args.ref}": stack.enter_context(SpawnedServer(cwd=tree)).port,
            "b_worktree": stack.enter_context(SpawnedServer()).port,
        }
        ratios = []
        for r in range(rounds):
            order = list(ports.items()) if r % 2 == 0 else list(reversed(ports.items()))
            rate = {}
            for name, port in order:
                row = run_perf_analyzer(
                    tool, port, args.model, args.concurrency, args.streaming, args.interval_ms,
                    max_trials=3, stability_percentage=1000,
                )  # fmt: skip
                rate[name] = float(row["Inferences/Second"])
            a, b = rate[f"a_{args.ref}"], rate["b_worktree"]
            ratios.append(b / a)
            print(f"round {r}: A {a:.0f} inf/s, B {b:.0f} inf/s, B/A {ratios[-1]:.3f}", flush=True)
    mode = "--streaming" if args.streaming else "unary"
    print(f"{args.model} {mode} at {args.concurrency} in flight, B/A: {summary(ratios)}")


if __name__ == "__main__":
    main()
