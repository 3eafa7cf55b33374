"""One line per target and step of a harness run's results.json, for the summaries the loadtest
scripts print (idle_dispatch.sh, instance_defaults.sh):

    python -m loadtest.result_lines RESULTS.json LABEL
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _ms(us: float | None) -> str:
    return "      -" if us is None else f"{us / 1e3:7.2f}"  # None: no request succeeded


def result_line(label: str, entry: dict[str, Any]) -> str:
    """`label target at level: req/s, p50, p99, goodput, errors` for one entry of results.json."""
    lat = entry["latency_us"]
    return (
        f"{label:>18} {entry['target']:>14} at {entry['step']['level']:>4g}: "
        f"{entry['throughput_rps']:8.1f} req/s  p50 {_ms(lat['p50'])} ms  p99 {_ms(lat['p99'])} ms"
        f"  goodput {entry.get('goodput_rps') or 0:8.1f}/s  errors {entry['errors']}"
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m loadtest.result_lines RESULTS.json LABEL", file=sys.stderr)
        return 2
    results = json.loads(Path(args[0]).read_text())["results"]
    for entry in results:
        print(result_line(args[1], entry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
