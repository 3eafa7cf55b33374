"""Server CPU per /metrics scrape: an idle server (demo models) scraped N times, its idle CPU over
the same time taken off. The cost of metrics that the hot path never pays.

    .venv/bin/python -m loadtest.scrape_cost [--scrapes 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from loadtest import proc
from loadtest.cpu_per_request import _start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.scrape_cost", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    process, _, url = _start(Path("."))
    try:
        if url is None:
            raise RuntimeError("the server printed no metrics line")
        for _ in range(args.repeats):
            idle_for = threading.Event()
            c0, t0 = proc.cpu_s(process.pid), time.monotonic()
            idle_for.wait(5.0)  # idle CPU per second, to take off
            idle = (proc.cpu_s(process.pid) - c0) / (time.monotonic() - t0)
            c0, t0 = proc.cpu_s(process.pid), time.monotonic()
            size = 0
            for _ in range(args.scrapes):
                with urllib.request.urlopen(url, timeout=30) as response:
                    size = len(response.read())
            spent = proc.cpu_s(process.pid) - c0 - idle * (time.monotonic() - t0)
            print(f"{spent / args.scrapes * 1e3:.2f} ms server CPU per scrape ({size} bytes)")
    finally:
        process.terminate()
        process.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
