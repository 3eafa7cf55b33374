"""CPU seconds a `sluiceway serve` process has used when it prints its ready line, for one or
more source trees, alternated ROUNDS times (BENCHMARKS.md, "Server start-up CPU").

    .venv/bin/python scripts/start_cpu.py TREE[,TREE...] [ROUNDS] -- [serve flags...]

Each tree is started with PYTHONPATH set to it and that tree as the working directory, on free
localhost ports, and stopped with SIGTERM once ready. The test suite starts a server ~140 times a
Python (tests/support/server_process.py), and for a small repository nearly all of a start's CPU is
imports, so this is the figure that sets much of the test command's time.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

READY = "sluiceway ready on"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process `pid` so far (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_cpu(tree: str, flags: list[str]) -> float:
    """One start of `tree`'s server: its CPU seconds at the ready line."""
    env = {**os.environ, "PYTHONPATH": tree}
    command = [sys.executable, "-m", "server", "serve", "--port", "0", "--metrics-port", "0", *flags]
    process = subprocess.Popen(
        command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if READY in line:
                return cpu_seconds(process.pid)
        raise RuntimeError(f"{tree}: the server exited before it was ready")
    finally:
        process.terminate()
        process.wait(60)


def main(argv: list[str]) -> int:
    if "--" in argv:
        split = argv.index("--")
        argv, flags = argv[:split], argv[split + 1 :]
    else:
        flags = []
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    trees = argv[0].split(",")
    rounds = int(argv[1]) if len(argv) > 1 else 5
    seen: dict[str, list[float]] = {tree: [] for tree in trees}
    for _ in range(rounds):  # alternated, so a change in the machine's load touches every tree
        for tree in trees:
            seen[tree].append(start_cpu(tree, flags))
    for tree, values in seen.items():
        print(f"{tree}: median {statistics.median(values):.3f} s CPU at ready; all {sorted(values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
