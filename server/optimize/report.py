"""The optimize report: a table on the terminal (rich when installed, plain text otherwise), and a
Markdown and an HTML file with a latency plot (matplotlib when installed)."""

from __future__ import annotations

import html
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from server.optimize.validate import Validation


@dataclass(frozen=True)
class Summary:
    """What was done, to what, and with what verdict."""

    model: str
    source: str
    recipe: str
    validation_inputs: str
    max_accuracy_drop: float | None
    verdict: str  # one sentence: published as version N, refused (and why), or not published


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def _ms(value: float) -> str:
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def accuracy_rows(validation: Validation) -> list[list[str]]:
    rows = [
        [
            "output",
            "max abs diff",
            "mean abs diff",
            "min cosine",
            "mean cosine",
            "max rel. error",
            "top-1 agreement",
        ]
    ]
    for o in validation.outputs:
        top1 = None if o.top1_agreement is None else 100 * o.top1_agreement
        rows.append(
            [
                o.name,
                _fmt(o.max_abs),
                _fmt(o.mean_abs),
                f"{o.min_cosine:.5f}",
                f"{o.mean_cosine:.5f}",
                f"{o.max_relative_error:.5f}",
                "-" if top1 is None else f"{top1:.1f}%",
            ]
        )
    return rows


def speed_rows(validation: Validation) -> list[list[str]]:
    rows = [["batch", "original ms", "optimized ms", "speed-up", "runs"]]
    for s in validation.speed:
        rows.append(
            [str(s.batch), _ms(s.original_ms), _ms(s.optimized_ms), f"{s.speedup:.2f}x", str(s.repetitions)]
        )
    rows.append(
        [
            "size",
            _mb(validation.original_bytes),
            _mb(validation.optimized_bytes),
            size_change(validation.original_bytes, validation.optimized_bytes),
            "",
        ]
    )
    return rows


def size_change(original: int, optimized: int) -> str:
    """ "2.00x smaller", or "1.45x larger" (a larger model had read "0.69x smaller")."""
    if optimized > original:
        return f"{optimized / max(original, 1):.2f}x larger"
    return f"{original / max(optimized, 1):.2f}x smaller"


def drop_line(validation: Validation, limit: float | None) -> str:
    what = (
        "top-1 disagreement"
        if validation.measure == "top1"
        else "1 - min cosine, or the largest row error over the output's RMS row norm"
    )
    bound = "no limit" if limit is None else f"limit {limit:.4g}"
    line = f"accuracy drop ({what}) over {validation.rows} rows: {validation.accuracy_drop:.4g} ({bound})"
    for o in validation.outputs:
        if o.nonfinite_rows:
            line += (
                f"; the optimized model's output '{o.name}' holds NaN or infinity in {o.nonfinite_rows} rows"
            )
    return line


def print_table(summary: Summary, validation: Validation, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table
    except ImportError:
        _print_plain(summary, validation, out)
        return
    console = Console(file=out, highlight=False, width=None if out.isatty() else 120)
    console.print(f"[bold]{escape(summary.model)}[/bold]: {escape(summary.recipe)}")
    for rows, title in ((accuracy_rows(validation), "accuracy"), (speed_rows(validation), "speed and size")):
        table = Table(title=title, title_justify="left")
        for header in rows[0]:
            table.add_column(header, justify="left" if header in ("output", "batch") else "right")
        for row in rows[1:]:
            table.add_row(*row)
        console.print(table)
    console.print(drop_line(validation, summary.max_accuracy_drop), soft_wrap=True)
    console.print(summary.verdict, soft_wrap=True, markup=False)


def _print_plain(summary: Summary, validation: Validation, out: TextIO) -> None:
    print(f"{summary.model}: {summary.recipe}", file=out)
    for rows in (accuracy_rows(validation), speed_rows(validation)):
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)), file=out)
        print(file=out)
    print(drop_line(validation, summary.max_accuracy_drop), file=out)
    print(summary.verdict, file=out)


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def plot(validation: Validation, path: Path) -> bool:
    """Latency by batch size, original vs optimized; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = [str(s.batch) for s in validation.speed]
    positions = range(len(labels))
    figure, axes = plt.subplots(figsize=(6, 3.5))
    try:
        axes.bar(
            [p - 0.2 for p in positions], [s.original_ms for s in validation.speed], 0.4, label="original"
        )
        axes.bar(
            [p + 0.2 for p in positions], [s.optimized_ms for s in validation.speed], 0.4, label="optimized"
        )
        axes.set_xticks(list(positions), labels)
        axes.set_xlabel("batch size")
        axes.set_ylabel("median latency (ms)")
        axes.set_yscale("log")
        axes.legend()
        figure.tight_layout()
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)
    return True


def write_reports(summary: Summary, validation: Validation, directory: Path) -> list[Path]:
    """report.md, report.html and latency.png (when matplotlib is there) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    image = directory / "latency.png"
    has_plot = plot(validation, image)
    facts = [
        f"- model: `{summary.model}` from `{summary.source}`",
        f"- recipe: {summary.recipe}",
        f"- validation inputs: {summary.validation_inputs}",
        f"- {drop_line(validation, summary.max_accuracy_drop)}",
        f"- verdict: {summary.verdict}",
    ]
    markdown = [f"# sluiceway optimize: {summary.model}", "", *facts, "", "## Accuracy", ""]
    markdown += [_markdown_table(accuracy_rows(validation)), "", "## Speed (onnxruntime, CPU) and size", ""]
    markdown += [_markdown_table(speed_rows(validation)), ""]
    if has_plot:
        markdown += [f"![latency by batch size]({image.name})", ""]
    md_path = directory / "report.md"
    md_path.write_text("\n".join(markdown), encoding="utf-8")
    html_path = directory / "report.html"
    html_path.write_text(_html(summary, validation, image.name if has_plot else None), encoding="utf-8")
    return [md_path, html_path] + ([image] if has_plot else [])


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(summary: Summary, validation: Validation, image: str | None) -> str:
    items = [
        f"model <code>{html.escape(summary.model)}</code> from <code>{html.escape(summary.source)}</code>",
        f"recipe: {html.escape(summary.recipe)}",
        f"validation inputs: {html.escape(summary.validation_inputs)}",
        html.escape(drop_line(validation, summary.max_accuracy_drop)),
        f"verdict: {html.escape(summary.verdict)}",
    ]
    style = "table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 8px;text-align:right}"
    name = html.escape(summary.model)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>optimize {name}</title>",
        f"<style>{style}</style></head><body><h1>sluiceway optimize: {name}</h1>",
        "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>",
        "<h2>Accuracy</h2>" + _html_table(accuracy_rows(validation)),
        "<h2>Speed (onnxruntime, CPU) and size</h2>" + _html_table(speed_rows(validation)),
    ]
    if image:
        parts.append(f"<p><img src='{html.escape(image)}' alt='latency by batch size'></p>")
    parts.append("</body></html>\n")
    return "".join(parts)
