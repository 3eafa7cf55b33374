"""`--no-plots` into a folder an earlier, plotted run wrote: the earlier run's PNGs are removed
(they had stayed beside the new results.json), and only the names the harness draws."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.report import PLOTS, write_all

RESULTS = {"created": "now", "scenario": {}, "targets": [], "results": []}


def test_no_plots_removes_the_plots_an_earlier_run_drew_and_nothing_else(tmp_path: Path) -> None:
    for name in PLOTS:
        (tmp_path / name).write_bytes(b"\x89PNG earlier run")
    (tmp_path / "mine.png").write_bytes(b"\x89PNG not the harness's")
    (tmp_path / "notes.txt").write_text("kept")
    written = write_all(RESULTS, tmp_path, plots=False)
    assert sorted(p.name for p in written) == ["report.html", "results.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mine.png",
        "notes.txt",
        "report.html",
        "results.json",
    ]
    assert json.loads((tmp_path / "results.json").read_text())["created"] == "now"
    assert "<img" not in (tmp_path / "report.html").read_text()


def test_no_plots_into_a_fresh_folder_writes_the_two_files(tmp_path: Path) -> None:
    out = tmp_path / "new"
    written = write_all(RESULTS, out, plots=False)
    assert (
        sorted(p.name for p in out.iterdir())
        == sorted(p.name for p in written)
        == ["report.html", "results.json"]
    )
