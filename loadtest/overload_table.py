"""The overload table: goodput against the peak, late successes, error latency, memory.

    python -m loadtest.overload_table PEAK_RESULTS.json OPEN_RESULTS.json MEMORY.txt [FEASIBLE.json]

PEAK: a closed-loop run of one target (its throughput is the peak); OPEN: the open-loop
--compare run at a multiple of it; MEMORY: lines "target before|after KiB" (loadtest/overload.sh);
FEASIBLE: a closed-loop sweep of one target with the deadline: the deadline-feasible peak is the
best throughput among its steps whose p99 latency is within the deadline.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:.2f}"


def _memory(path: Path) -> dict[tuple[str, str], int]:
    table: dict[tuple[str, str], int] = {}
    for line in path.read_text().splitlines():
        name, label, kib = line.split()
        table[name, label] = int(kib)
    return table


def feasible_peak(doc: dict[str, Any], deadline_ms: float) -> tuple[float, str] | None:
    """(throughput, step label) of the best step whose p99 is within the deadline; None if none is."""
    within = [
        e
        for e in doc["results"]
        if e["latency_us"]["p99"] is not None and e["latency_us"]["p99"] <= deadline_ms * 1000
    ]
    if not within:
        return None
    best = max(within, key=lambda e: e["throughput_rps"])
    return best["throughput_rps"], best["step"]["label"]


def table(
    peak_doc: dict[str, Any],
    open_doc: dict[str, Any],
    memory: dict[tuple[str, str], int],
    feasible_doc: dict[str, Any] | None = None,
) -> str:
    peak = peak_doc["results"][0]["throughput_rps"]
    deadline_ms = open_doc["scenario"]["deadline_ms"]
    feasible = None if feasible_doc is None else feasible_peak(feasible_doc, deadline_ms)
    lines = [
        f"peak (closed loop, {peak_doc['results'][0]['step']['label']}): {peak:.1f} req/s; "
        f"deadline {deadline_ms} ms",
        "deadline-feasible peak (closed loop, p99 within the deadline): "
        + ("-" if feasible is None else f"{feasible[0]:.1f} req/s at {feasible[1]}"),
        "",
        "| server | offered/s | goodput/s | goodput / peak | goodput / feasible peak | late OK | errors "
        "| error answer p50 / p99 ms | computed rows/s | unused computed % | memory MiB before -> after |",
        "|---|---:|---:|---:|---:|---:|---|---|---:|---:|---|",
    ]
    for e in open_doc["results"]:
        seconds = e["duration_s"]
        computed = e["server"].get("computed_rows")
        ok_rows = e["throughput_rps"] * seconds
        unused = "-" if not computed else f"{100.0 * max(0.0, computed - ok_rows) / computed:.1f}"
        errors = ", ".join(f"{code} {n}" for code, n in e["errors"].items()) or "none"
        before, after = memory.get((e["target"], "before")), memory.get((e["target"], "after"))
        mem = "-" if before is None or after is None else f"{before / 1024:.0f} -> {after / 1024:.0f}"
        of_feasible = "-" if feasible is None else f"{e['goodput_rps'] / feasible[0]:.2f}"
        lines.append(
            f"| {e['target']} | {e['offered_rps']:.0f} | {e['goodput_rps']:.1f} | "
            f"{e['goodput_rps'] / peak:.2f} | {of_feasible} | {e['late_ok']} | {errors} | "
            f"{_ms(e['reject_us']['p50'])} / {_ms(e['reject_us']['p99'])} | "
            f"{'-' if computed is None else f'{computed / seconds:.1f}'} | {unused} | {mem} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    peak_path, open_path, memory_path, *rest = (Path(a) for a in argv)
    feasible = json.loads(rest[0].read_text()) if rest else None
    print(
        table(
            json.loads(peak_path.read_text()),
            json.loads(open_path.read_text()),
            _memory(memory_path),
            feasible,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
