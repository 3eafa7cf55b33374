"""`sluiceway drift --reference FILE` is checked against the sampled files: a misnamed array had
been ignored silently (that tensor scored against its first sampled rows), a misshapen one scored,
and an unreadable file exited 1 as if rows were still missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.cli import main

ROWS = 40  # rows a chunk; 4 chunks: 80 reference rows, 80 recent


def samples(directory: Path, variable: bool = False) -> None:
    """Four chunks of a model with input x [rows, 3] (or variable widths) and output y [rows, 2]."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(4):
        width = 3 + (i % 2 if variable else 0)
        arrays = {
            "in:x": rng.standard_normal((ROWS, width)).astype(np.float32),
            "out:y": rng.standard_normal((ROWS, 2)).astype(np.float32),
            "rows": np.array([ROWS]),
            "time_ns": np.array([i]),
            "load_ns": np.array([7]),
        }
        if variable:
            arrays["variable"] = np.array(["in:x"])
        np.savez(directory / f"samples-{i:020d}-1-000001.npz", **arrays)


def drift(tmp_path: Path, reference: Path) -> int:
    argv = ["drift", "m", "--sample-dir", str(tmp_path), "--reference", str(reference),
            "--drift-reference-samples", "80", "--drift-window-samples", "80",
            "--out", str(tmp_path / "plot.png")]  # fmt: skip
    return main(argv)


@pytest.mark.parametrize(
    ("arrays", "named"),
    [
        ({"out:Y": np.zeros((50, 2), np.float32)}, "'out:Y' names no numeric tensor"),
        ({"out:y": np.zeros((50, 1), np.float32)},
         "'out:y' is shaped [50, 1], but the sampled rows of 'out:y' are [rows, 2]"),
        ({"in:x": np.zeros(50, np.float32)},
         "'in:x' is shaped [50], but the sampled rows of 'in:x' are [rows, 3]"),
        # Strings for a numeric output had been passed over: scored against its first rows.
        ({"out:y": np.full((50, 2), "a")}, "the array 'out:y' holds <U1 values, not numbers"),
    ],
)  # fmt: skip
def test_a_reference_that_does_not_fit_the_samples_exits_2_naming_the_array(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arrays: dict[str, np.ndarray], named: str
) -> None:
    samples(tmp_path / "m" / "1")
    reference = tmp_path / "ref.npz"
    np.savez(reference, **arrays)
    assert drift(tmp_path, reference) == 2
    err = capsys.readouterr().err
    assert named in err and "'in:x'" in err if "names no" in named else named in err, err


def test_an_unreadable_reference_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples(tmp_path / "m" / "1")
    reference = tmp_path / "ref.npz"
    reference.write_bytes(b"junk")  # numpy had offered to unpickle it
    assert drift(tmp_path, reference) == 2
    err = capsys.readouterr().err
    # The flag, not the config's parameter; and no advice to unpickle a junk file.
    assert err.startswith(f"sluiceway: --reference: cannot read {reference}: not an .npz archive"), err
    assert "pickle" not in err and "drift_reference" not in err, err


def test_a_reference_that_fits_replaces_the_first_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """y's reference shifted by 5: y drifts against it (its own first rows would not); a variable
    width input's reference is taken at any width."""
    pytest.importorskip("matplotlib")
    samples(tmp_path / "m" / "1", variable=True)
    reference = tmp_path / "ref.npz"
    rng = np.random.default_rng(9)
    shifted = (rng.standard_normal((80, 2)) + 5).astype(np.float32)
    np.savez(reference, **{"out:y": shifted, "in:x": rng.standard_normal((80, 7)).astype(np.float32)})
    assert drift(tmp_path, reference) == 0
    table = capsys.readouterr().out
    rows = [line.replace("│", " ").split() for line in table.splitlines()]
    drifted = [row[:3] for row in rows if row and row[-1] == "DRIFT"]
    assert drifted == [["output", "y", "0"], ["output", "y", "1"]], table
    assert "2 of 3 series drifted" in table, table
