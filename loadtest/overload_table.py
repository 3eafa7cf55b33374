"""The overload table: goodput against the peak, late successes, error latency, memory.

    python -m loadtest.overload_table PEAK_RESULTS.json OPEN_RESULTS.json MEMORY.txt

PEAK: a closed-loop run of one target (its throughput is the peak); OPEN: the open-loop
--compare run at a multiple of it; MEMORY: lines "target before|after KiB" (loadtest/overload.sh).
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


def table(peak_doc: dict[str, Any], open_doc: dict[str, Any], memory: dict[tuple[str, str], int]) -> str:
    peak = peak_doc["results"][0]["throughput_rps"]
    deadline_ms = open_doc["scenario"]["deadline_ms"]
    lines = [
        f"peak (closed loop, {peak_doc['results'][0]['step']['label']}): {peak:.1f} req/s; "
        f"deadline {deadline_ms} ms",
        "",
        "| server | offered/s | goodput/s | goodput / peak | late OK | errors | error answer p50 / p99 ms "
        "| computed rows/s | unused computed % | memory MiB before -> after |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|---|",
    ]
    for e in open_doc["results"]:
        seconds = e["duration_s"]
        computed = e["server"].get("computed_rows")
        ok_rows = e["throughput_rps"] * seconds
        unused = "-" if not computed else f"{100.0 * max(0.0, computed - ok_rows) / computed:.1f}"
        errors = ", ".join(f"{code} {n}" for code, n in e["errors"].items()) or "none"
        before, after = memory.get((e["target"], "before")), memory.get((e["target"], "after"))
        mem = "-" if before is None or after is None else f"{before / 1024:.0f} -> {after / 1024:.0f}"
        lines.append(
            f"| {e['target']} | {e['offered_rps']:.0f} | {e['goodput_rps']:.1f} | "
            f"{e['goodput_rps'] / peak:.2f} | {e['late_ok']} | {errors} | "
            f"{_ms(e['reject_us']['p50'])} / {_ms(e['reject_us']['p99'])} | "
            f"{'-' if computed is None else f'{computed / seconds:.1f}'} | {unused} | {mem} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    peak_path, open_path, memory_path = (Path(a) for a in argv)
    print(table(json.loads(peak_path.read_text()), json.loads(open_path.read_text()), _memory(memory_path)))


if __name__ == "__main__":
    main(sys.argv[1:])
