"""scripts/row_mixing_sweep.py's short mode against a real server: a sample of onnx's node tests made
batched, plus named ones. Ops that mix a batch's rows (tester I, session 55) are refused a batched
load, row-independent ones load batched and answer each request as alone, and the sweep exits 0."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.support.held_ports import held_ports

pytest.importorskip("onnx.backend.test.case.node", reason="this onnx ships without its node test generators")

# A real server and 4 requests that must coalesce: alone, as the others that time real servers.
pytestmark = [pytest.mark.serial, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parents[2]
LIMIT = 60
# Each loaded batched and mixed rows with status OK before c392e55; each must be refused now.
REFUSED = {
    "test_rms_normalization_2d_axis0": "RMSNormalization",
    "test_eyelike_without_dtype": "EyeLike",
    "test_maxpool_with_argmax_2d_precomputed_pads": "MaxPool",
    "test_bitwise_and_ui8_bcast_4v3d": "BitwiseAnd",
}
ROW_INDEPENDENT = ("test_relu", "test_add", "test_sigmoid", "test_maxpool_2d_default")


class Sweep:
    """One run of the sweep: its exit code, output and results.csv by case."""

    def __init__(self, out: Path, code: int, output: str) -> None:
        self.code = code
        self.output = output
        self.summary = (out / "summary.md").read_text() if (out / "summary.md").exists() else ""
        with (out / "results.csv").open(newline="") as results:
            self.rows = {row["case"]: row for row in csv.DictReader(results)}


def run_sweep(out: Path, arguments: Sequence[str] | None = None, timeout_s: float = 200.0) -> Sweep:
    """The script as a user runs it, on held localhost ports, with `arguments` (by default a short
    run of onnx's node tests); SIGTERM (which stops its server) if it outlives `timeout_s`."""
    short = ["--limit", str(LIMIT), "--only", *REFUSED, *ROW_INDEPENDENT]
    with held_ports(2) as port:
        command = [sys.executable, "scripts/row_mixing_sweep.py", "--out", str(out), "--port", str(port)]
        process = subprocess.Popen(
            [*command, *(short if arguments is None else arguments)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            output, _ = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
            try:
                output, _ = process.communicate(timeout=60)
            finally:
                process.kill()
            raise AssertionError(f"the sweep ran past {timeout_s:g} s:\n{output[-3000:]}") from None
    return Sweep(out, process.returncode, output)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sweep]:
    yield run_sweep(tmp_path_factory.mktemp("row-mixing-sweep"))


def test_short_mode_exits_zero_with_its_counts(sweep: Sweep) -> None:
    assert sweep.code == 0, sweep.output[-3000:]
    tested = [r for r in sweep.rows.values() if r["outcome"] != "skipped"]
    assert len(tested) == LIMIT + len(REFUSED) + len(ROW_INDEPENDENT), sweep.summary
    assert not [r for r in tested if r["outcome"] not in ("refused", "right")], sweep.summary
    assert "| WRONG with status OK | 0 |" in sweep.summary
    assert "| INTERNAL | 0 |" in sweep.summary
    # The requests did coalesce: otherwise the sweep would have shown nothing about batching.
    assert any(r["coalesced"] == "True" for r in tested), sweep.summary


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_mixing_ops_refused_at_load(sweep: Sweep, case: str) -> None:
    row = sweep.rows[case]
    assert row["outcome"] == "refused", row
    assert "mixes the rows of a batch" in row["detail"] and REFUSED[case] in row["detail"], row


@pytest.mark.parametrize("case", ROW_INDEPENDENT)
def test_row_independent_ops_batched_and_right(sweep: Sweep, case: str) -> None:
    row = sweep.rows[case]
    assert row["outcome"] == "right" and row["max_batch_size"] == "8", row
    assert row["statuses"] == "OK,OK,OK,OK", row
