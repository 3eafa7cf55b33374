"""The GPU check's findings as Markdown and JSON: one row per measured point, and a summary per model
and provider against the targets of issue 15 (served resnet at the most in flight >= 0.8 of raw
onnxruntime's best batch; the batching gain; resnet_u8's p99 at 16 in flight under 20 ms).

A dry run (CPU) says so in its title, its banner and every row's provider: its figures are never
GPU figures. So does a GPU run whose GPU provider did not start (onnxruntime fell back to the CPU
provider: a tester's stand-in `nvidia-smi` once had such CPU figures titled "GPU check", the
summary's served/raw above the issue's target): its title and a banner name the provider.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RAW = "raw onnxruntime"
SERVED = "served"
# perf_analyzer against the same server (loadtest/gpu_perf_analyzer.py): the outside check, and with
# system shared memory the served rate without the tensors' transport.
PA_WIRE = "served, perf_analyzer"
PA_SHM = "served, perf_analyzer, system shm"
PA_CUDA = "served, perf_analyzer, CUDA shm"
DRY_BANNER = (
    "**CPU DRY RUN: not GPU figures.** The same code path as on a GPU (repository copy with KIND_GPU "
    "groups and the accelerators, raw onnxruntime, the server under sluiceway-loadtest), on the CPU "
    "provider with tiny durations and levels; it checks the script, not the hardware."
)


@dataclass(frozen=True)
class Row:
    """One measured (or skipped) point: rows/s with batch size and latency where they apply."""

    model: str
    provider: str
    measure: str  # RAW, SERVED, PA_WIRE, PA_SHM or PA_CUDA
    level: int  # rows per run (raw) or requests in flight (served)
    rows_s: float | None = None
    avg_batch: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    note: str = ""

    @property
    def level_label(self) -> str:
        return f"batch {self.level}" if self.measure == RAW else f"{self.level} in flight"


@dataclass
class Report:
    dry: bool
    context: list[str] = field(default_factory=list)  # bullet lines: machine, versions, method
    rows: list[Row] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # server warnings worth reading (fallbacks)

    @property
    def not_gpu(self) -> list[str]:
        """GPU providers whose rows ran on the CPU provider (none in a dry run: all of it is CPU)."""
        return [] if self.dry else fell_back(self.rows)


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _cell(text: str) -> str:
    """Free text (a note, a tool's line) as one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or not bottom else top / bottom


def summary_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per model and provider: raw best batch, served at the most in flight, their ratio, the
    batching gain (most over fewest in flight) and p99 at the middle level."""
    out: list[dict[str, Any]] = []
    keys = list(dict.fromkeys((r.model, r.provider) for r in rows))
    for model, provider in keys:
        raw = [r for r in rows if (r.model, r.provider, r.measure) == (model, provider, RAW)]
        served = sorted(
            (r for r in rows if (r.model, r.provider, r.measure) == (model, provider, SERVED)),
            key=lambda r: r.level,
        )
        measured_raw = [r for r in raw if r.rows_s is not None]
        best = max(measured_raw, key=lambda r: r.rows_s or 0.0, default=None)
        most = served[-1] if served else None
        fewest = served[0] if served else None
        middle = served[len(served) // 2] if served else None
        out.append(
            {
                "model": model,
                "provider": provider,
                "raw_best_rows_s": best.rows_s if best else None,
                "raw_best_batch": best.level if best else None,
                "served_most_in_flight": most.level if most else None,
                "served_rows_s": most.rows_s if most else None,
                "served_over_raw_best": _ratio(most.rows_s if most else None, best.rows_s if best else None),
                "batching_gain": _ratio(most.rows_s if most else None, fewest.rows_s if fewest else None),
                "p99_level": middle.level if middle else None,
                "p99_ms": middle.p99_ms if middle else None,
                # A fallback or a skipped point stays in sight here, not only in the rows below.
                "notes": "; ".join(dict.fromkeys(r.note for r in (*raw, *served) if r.note)),
            }
        )
    return out


def transport_rows(rows: Sequence[Row], dry: bool = False) -> list[dict[str, Any]]:
    """Per model, provider and level perf_analyzer measured: its rates over the wire, with system
    shared memory and (resnet on a GPU) CUDA shared memory, system shm over the wire, and each shared
    memory's rate against raw onnxruntime's best batch."""
    out: list[dict[str, Any]] = []
    fell = [] if dry else fell_back(rows)  # a GPU provider that did not start: its figures are the CPU's
    points = list(
        dict.fromkeys((r.model, r.provider, r.level) for r in rows if r.measure in (PA_WIRE, PA_SHM, PA_CUDA))
    )
    for model, provider, level in points:
        found = {
            r.measure: r.rows_s for r in rows if (r.model, r.provider, r.level) == (model, provider, level)
        }
        raw = [
            r.rows_s for r in rows if (r.model, r.provider, r.measure) == (model, provider, RAW) and r.rows_s
        ]
        wire, shm, cuda = found.get(PA_WIRE), found.get(PA_SHM), found.get(PA_CUDA)
        best = max(raw, default=None)
        out.append(
            {
                "model": model,
                "provider": f"{provider} ({NOT_STARTED})" if provider in fell else provider,
                "in_flight": level,
                "wire_rows_s": wire,
                "shm_rows_s": shm,
                "shm_over_wire": _ratio(shm, wire),
                "shm_over_raw_best": _ratio(shm, best),
                "cuda_rows_s": cuda,
                "cuda_over_raw_best": _ratio(cuda, best),
            }
        )
    return out


NOT_STARTED = "the provider did not start: CPU figures"
OUT_OF_TIME = "skipped: time budget spent"  # a point the run's budget no longer held
FELL_BACK = "ran on CPUExecutionProvider"  # a raw row's note where the asked provider did not start


def fell_back(rows: Sequence[Row]) -> list[str]:
    """The providers (GPU ones: not the CPU series) some of whose raw rows ran on the CPU provider."""
    fell = (r.provider for r in rows if r.provider != "CPU" and r.note.startswith(FELL_BACK))
    return list(dict.fromkeys(fell))


def markdown(report: Report) -> str:
    title = "GPU check: CPU DRY RUN (not GPU figures)" if report.dry else "GPU check"
    not_gpu = report.not_gpu
    if not_gpu:
        title = f"GPU check: {', '.join(not_gpu)} DID NOT START (those rows are not GPU figures)"
    lines = [f"# {title}", ""]
    if report.dry:
        lines += [DRY_BANNER, ""]
    if not_gpu:
        lines += [
            f"**{', '.join(not_gpu)}: the provider did not start; its rows ran on the CPU provider and "
            "are CPU figures, not GPU ones** (see each row's note and the server warnings).",
            "",
        ]
    lines += [f"- {item}" for item in report.context] + [""]
    lines += [
        "## Summary",
        "",
        "| model | provider | raw best rows/s (batch) | served rows/s (in flight) | served / raw best "
        "| batching gain (most / 1 in flight) | p99 ms (in flight) | notes |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for s in summary_rows(report.rows):
        lines.append(
            f"| {s['model']} | {s['provider']} | {_num(s['raw_best_rows_s'])} ({s['raw_best_batch'] or '-'}) "
            f"| {_num(s['served_rows_s'])} ({s['served_most_in_flight'] or '-'}) "
            f"| {_num(s['served_over_raw_best'], 2)} | {_num(s['batching_gain'], 2)} "
            f"| {_num(s['p99_ms'], 2)} ({s['p99_level'] or '-'}) | {_cell(s['notes'])} |"
        )
    transport = transport_rows(report.rows, report.dry)
    if transport:
        cuda = any(r.measure == PA_CUDA for r in report.rows)  # tried on a GPU run only
        lines += [
            "",
            "## Transport: perf_analyzer over the wire and with shared memory",
            "",
            "| model | provider | in flight | wire rows/s | shm rows/s | shm / wire | shm / raw best "
            + ("| CUDA shm rows/s | CUDA shm / raw best |" if cuda else "|"),
            "|---|---|---|---:|---:|---:|---:|" + ("---:|---:|" if cuda else ""),
        ]
        lines += [
            f"| {t['model']} | {t['provider']} | {t['in_flight']} | {_num(t['wire_rows_s'])} "
            f"| {_num(t['shm_rows_s'])} | {_num(t['shm_over_wire'], 2)} | {_num(t['shm_over_raw_best'], 2)} |"
            + (f" {_num(t['cuda_rows_s'])} | {_num(t['cuda_over_raw_best'], 2)} |" if cuda else "")
            for t in transport
        ]
    lines += [
        "",
        "## Measurements",
        "",
        "| model | provider | measure | level | rows/s | avg batch | p50 ms | p99 ms | note |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in report.rows:
        note = r.note
        if r.provider in not_gpu and r.measure != RAW:  # raw rows say it already (FELL_BACK)
            note = "; ".join(n for n in (note, NOT_STARTED) if n)
        lines.append(
            f"| {r.model} | {r.provider} | {r.measure} | {r.level_label} | {_num(r.rows_s)} "
            f"| {_num(r.avg_batch, 2)} | {_num(r.p50_ms, 2)} | {_num(r.p99_ms, 2)} | {_cell(note)} |"
        )
    if report.log:
        lines += ["", "## Server warnings", "", "```", *report.log, "```"]
    return "\n".join(lines) + "\n"


def write(report: Report, target: Path) -> tuple[Path, Path]:
    """`target`: a .md file, or a folder to hold gpu_check.md; the JSON lies beside it."""
    md = target if target.suffix == ".md" else target / "gpu_check.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(markdown(report), encoding="utf-8")
    data = {
        "dry": report.dry,
        "not_gpu": report.not_gpu,  # GPU providers that did not start
        "context": report.context,
        "rows": [asdict(r) for r in report.rows],
        "summary": summary_rows(report.rows),
        "transport": transport_rows(report.rows, report.dry),
        "server_warnings": report.log,
    }
    js = md.with_suffix(".json")
    js.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return md, js
