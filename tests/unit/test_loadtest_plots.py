"""The report's plots for every kind of entry, drawn once here; `--no-plots` leaves them out.

The load-test runs against real servers (tests/integration/test_loadtest*.py) draw plots only where
they check them (matplotlib costs ~1 CPU s a run): the shapes the others produced (closed, open and
stream steps, two targets, a step with no successful answer) are drawn here from the same summary.
"""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.report import PLOTS, write_all
from loadtest.results import summarize
from loadtest.runner import RunRecord, ServerTotals
from loadtest.scenario import Scenario, Step, Target
from loadtest.stats import Recorder

WINDOW = (10.0, 20.0)
A, B = Target("a", "127.0.0.1:1", "mlp"), Target("b", "127.0.0.1:2", "mlp")
STEPS = (Step("closed", 1), Step("closed", 4), Step("open", 100), Step("stream", 2))
PNG = b"\x89PNG\r\n\x1a\n"


def _record(index: int, step: Step, target: Target, refused: bool) -> RunRecord:
    recorder = Recorder(WINDOW, deadline_s=0.05)
    for i in range(200):
        scheduled = 10.0 + i * 0.04
        if refused:
            recorder.record(scheduled, scheduled + 0.001, "INVALID_ARGUMENT", sent=scheduled, message="no")
        else:
            recorder.sending(scheduled, scheduled + 1e-4)
            recorder.record(scheduled, scheduled + 0.001 * (1 + i % 30), "OK", sent=scheduled)
    server = None if refused else ServerTotals(200, 100, 200, 4_000_000)
    return RunRecord(index, step, target, 0, recorder.counts(cpu_s=0.5), 10.0, 1, server)


def _results() -> dict[str, object]:
    records = [
        _record(index, step, target, refused=target is B and step.mode == "stream")
        for index, step in enumerate(STEPS)
        for target in (A, B)
    ]
    return summarize(Scenario(targets=(A, B), steps=STEPS), records)


def test_plots_of_every_kind_of_entry_and_none_when_not_asked(tmp_path: Path) -> None:
    results = _results()
    entries = results["results"]
    assert isinstance(entries, list)
    assert any(e["ok"] == 0 and not e["cdf"] for e in entries)  # the refused step: nothing to plot
    drawn = write_all(results, tmp_path / "drawn")
    assert [p.name for p in drawn] == ["results.json", *PLOTS, "report.html"]
    for name in PLOTS:
        assert (tmp_path / "drawn" / name).read_bytes()[:8] == PNG, name
    assert (tmp_path / "drawn" / "report.html").read_text().count("data:image/png;base64,") == 3

    bare = write_all(results, tmp_path / "bare", plots=False)
    assert [p.name for p in bare] == ["results.json", "report.html"]
    assert not list((tmp_path / "bare").glob("*.png"))
    page = (tmp_path / "bare" / "report.html").read_text()
    assert "data:image/png" not in page and "<td>a</td>" in page  # the table without figures
    saved = (tmp_path / "bare" / "results.json").read_text()
    assert saved == (tmp_path / "drawn" / "results.json").read_text()
    assert json.loads(saved) == json.loads(json.dumps(results))
