"""SIGTERM during `sluiceway serve`'s start-up, at delays spread over its imports: how each start
ended (exit status, and whether anything but the one start-up line was written), for one or more
source trees (RELIABILITY.md, "Start-up signals inside an import").

    .venv/bin/python scripts/start_signals.py TREE[,TREE...] [TRIES] [PYTHON]

Try k of a tree sends SIGTERM 0.1 + (k mod 10) * 0.08 s after the start (the imports take ~0.7 s
here; a signal after them meets `serve`'s own handler: "served's drain"), with the demo
repository already built in TREE/.cache. PYTHON (default: this interpreter) runs `-m server serve`
with the tree as its working directory. A start that has not ended 60 s after its signal is killed
and counted as `hung`.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from pathlib import Path


def one_start(tree: Path, python: str, delay_s: float) -> tuple[str, str]:
    """One start sent SIGTERM after `delay_s`: its exit status (or 'hung') and its stderr."""
    flags = ["--port", "0", "--metrics-port", "0", "--cache-dir", str(tree / ".cache")]
    child = subprocess.Popen(
        [python, "-m", "server", "serve", *flags],
        cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(delay_s)
    child.send_signal(signal.SIGTERM)
    try:
        _, err = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()  # this start only: never a pattern match, which would hit other servers
        _, err = child.communicate()
        return "hung", err
    return str(child.returncode), err


def written(err: str) -> str:
    """What a start wrote besides the one start-up line."""
    extra = [line for line in err.splitlines() if "during start-up: exiting before serving" not in line]
    if not extra:
        return "line only"
    if "Traceback" in err or "panicked" in err:
        return "traceback"
    return "served's drain" if "shutting down" in err else "other output"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    trees = [Path(tree).resolve() for tree in argv[0].split(",")]
    tries = int(argv[1]) if len(argv) > 1 else 20
    python = argv[2] if len(argv) > 2 else sys.executable
    for tree in trees:
        seen: collections.Counter[tuple[str, str]] = collections.Counter()
        for k in range(tries):
            status, err = one_start(tree, python, 0.1 + (k % 10) * 0.08)
            seen[(status, written(err))] += 1
        figures = ", ".join(f"exit {status} {kind}: {n}" for (status, kind), n in sorted(seen.items()))
        print(f"{tree}: {tries} starts; {figures}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
