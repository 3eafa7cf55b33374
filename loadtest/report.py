"""results.json, three PNG plots and an HTML page that shows them with a table of every step.

Plots are drawn from the results document alone, so `python -m loadtest report results.json`
can redraw them later. matplotlib runs on the Agg backend (no display needed).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtest.scenario import describe_deadline

PLOTS = {
    "latency_vs_throughput.png": "Latency vs throughput",
    "goodput_vs_offered.png": "Goodput vs offered load",
    "latency_cdf.png": "Latency CDF",
}


def write_all(results: dict[str, Any], out_dir: Path, plots: bool = True) -> list[Path]:
    """results.json, the PNGs (unless `plots` is False: matplotlib takes ~1 CPU s) and report.html
    in out_dir; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    pngs = write_plots(results, out_dir) if plots else _remove_plots(out_dir)
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(results, pngs))
    return [json_path, *pngs, html_path]


def _remove_plots(out_dir: Path) -> list[Path]:
    """The PNGs an earlier, plotted run left in out_dir (only the names this harness draws): beside
    the new results.json they showed the other run's figures."""
    for name in PLOTS:
        (out_dir / name).unlink(missing_ok=True)
    return []


def _series(results: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(target, mode) -> entries ordered by level: one line per target and load kind."""
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for entry in results["results"]:
        series.setdefault((entry["target"], entry["step"]["mode"]), []).append(entry)
    for entries in series.values():
        entries.sort(key=lambda e: e["step"]["level"])
    return series


def write_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    series = _series(results)
    # One colour per target and load kind in every plot; line style tells p50 from p99.
    palette = plt.get_cmap("tab10")
    colour = {key: palette(i % 10) for i, key in enumerate(series)}
    paths: list[Path] = []
    names = iter(PLOTS)

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for (target, mode), entries in series.items():
        xs = [e["throughput_rps"] for e in entries]
        for key, style in (("p50", "-o"), ("p99", "--^")):
            ys = [_ms(e["latency_us"][key]) for e in entries]
            ax.plot(xs, ys, style, color=colour[target, mode], label=f"{target} {mode} {key}")
    _finish(ax, "throughput (requests/s)", "latency (ms)", log_y=True)
    _plain_ticks(ax.yaxis, FormatStrFormatter)
    paths.append(_save(fig, out_dir / next(names), plt))

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    top = 0.0
    for (target, mode), entries in series.items():
        xs = [e["offered_rps"] for e in entries]
        goodput = [e["goodput_rps"] for e in entries]
        throughput = [e["throughput_rps"] for e in entries]
        ax.plot(xs, goodput, "-o", color=colour[target, mode], label=f"{target} {mode} goodput")
        ax.plot(xs, throughput, ":", color=colour[target, mode], label=f"{target} {mode} throughput")
        top = max([top, *xs])
    ax.plot([0, top], [0, top], color="grey", linewidth=0.8, label="goodput = offered")
    _finish(ax, "offered load (requests/s)", "requests/s", log_y=False)
    paths.append(_save(fig, out_dir / next(names), plt))

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for entry in results["results"]:
        if entry["cdf"]:
            xs = [_ms(v) for v, _ in entry["cdf"]]
            ax.step(
                xs,
                [p for _, p in entry["cdf"]],
                where="post",
                label=f"{entry['target']} {entry['step']['label']}",
            )
    ax.set_xscale("log")
    _plain_ticks(ax.xaxis, FormatStrFormatter)
    _finish(ax, "latency (ms)", "% of answers at or below", log_y=False)
    paths.append(_save(fig, out_dir / next(names), plt))
    return paths


def _plain_ticks(axis: Any, formatter: Any) -> None:
    """2, 3, 5 rather than 2x10^0 on log axes."""
    axis.set_major_formatter(formatter("%g"))
    axis.set_minor_formatter(formatter("%g"))


def _ms(value: float | None) -> float:
    return float("nan") if value is None else value / 1000.0


def _finish(ax: Any, xlabel: str, ylabel: str, log_y: bool) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="x-small")


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], object]], ...] = (
    ("target", lambda e: e["target"]),
    ("step", lambda e: e["step"]["label"]),
    ("rounds", lambda e: e["rounds"]),
    ("offered/s", lambda e: _num(e["offered_rps"])),
    ("throughput/s", lambda e: _num(e["throughput_rps"])),
    ("goodput/s", lambda e: _num(e["goodput_rps"])),
    ("p50 ms", lambda e: _num(_ms(e["latency_us"]["p50"]), 2)),
    ("p90 ms", lambda e: _num(_ms(e["latency_us"]["p90"]), 2)),
    ("p99 ms", lambda e: _num(_ms(e["latency_us"]["p99"]), 2)),
    ("p99.9 ms", lambda e: _num(_ms(e["latency_us"]["p99_9"]), 2)),
    ("errors", lambda e: ", ".join(f"{k}: {v}" for k, v in e["errors"].items())),
    ("server avg batch", lambda e: _num(e["server"]["avg_batch_size"], 2)),
    ("server queue us", lambda e: _num(e["server"]["avg_queue_us"])),
    ("client CPU %", lambda e: _num(e["client_cpu"]["percent_of_core"])),
    ("client CPU s", lambda e: _num(e["client_cpu"]["seconds"], 2)),
    ("throughput ratio", lambda e: _num(e["ratios"].get("throughput_rps"), 3)),
    ("p99 ratio", lambda e: _num(e["ratios"].get("p99"), 3)),
)


def _num(value: float | None, digits: int = 1) -> str:
    """Blank for missing figures (e.g. statistics a peer does not serve)."""
    if value is None or value != value:
        return ""
    return f"{value:,.{digits}f}"


def render_html(results: dict[str, Any], pngs: list[Path]) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in COLUMNS)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell(e)))}</td>" for _, cell in COLUMNS) + "</tr>"
        for e in results["results"]
    )
    figures = "".join(
        f'<figure><a href="{png.name}"><img alt="{html.escape(PLOTS.get(png.name, png.name))}" '
        f'src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}"></a>'
        f"<figcaption>{html.escape(PLOTS.get(png.name, png.name))} ({png.name})</figcaption></figure>"
        for png in pngs
    )
    scenario = html.escape(json.dumps(results["scenario"], indent=1))
    targets = ", ".join(f"{t['name']} = {t['address']} / {t['model']}" for t in results["targets"])
    sent = html.escape(describe_deadline(results["deadline_sent"])) if "deadline_sent" in results else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>sluiceway load test</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 700px; }}
</style></head><body>
<h1>sluiceway load test</h1>
<p>{html.escape(results["created"])} &mdash; targets: {html.escape(targets)}</p>
<p>Latency counts from each request's scheduled send time; goodput is successful answers within
the deadline per second; ratios are against the first target on the same step.</p>
<p>{sent}</p>
<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>
<div>{figures}</div>
<details><summary>scenario</summary><pre>{scenario}</pre></details>
</body></html>
"""
