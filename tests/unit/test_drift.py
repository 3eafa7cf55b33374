"""PSI and KS on known distributions, and the DriftMonitor's windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.observability.drift import (
    INPUT,
    OUTPUT,
    POOLED,
    PSI_THRESHOLD,
    DriftMonitor,
    ks_statistic,
    ks_threshold,
    psi,
)
from server.observability.drift_cli import monitor_from_files


def normal(seed: int, n: int, loc: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc, scale, n)


def test_the_same_distribution_scores_small() -> None:
    a, b = normal(1, 5000), normal(2, 5000)
    assert psi(a, b) < 0.02
    assert ks_statistic(a, b) < ks_threshold(a.size, b.size)


def test_a_shifted_distribution_scores_large() -> None:
    a, b = normal(1, 5000), normal(2, 5000, loc=1.0)
    assert psi(a, b) > PSI_THRESHOLD * 2
    assert ks_statistic(a, b) > 0.3  # Phi(0.5) - Phi(-0.5) = 0.38 for a shift of one sigma


def test_a_wider_distribution_is_seen_by_psi() -> None:
    a, b = normal(1, 5000), normal(2, 5000, scale=3.0)
    assert psi(a, b) > PSI_THRESHOLD


def test_ks_of_disjoint_samples_is_one_and_of_identical_samples_zero() -> None:
    a = np.arange(100, dtype=np.float64)
    assert ks_statistic(a, a + 1000) == 1.0
    assert ks_statistic(a, a.copy()) == 0.0
    assert psi(a, a.copy()) == 0.0


def test_psi_copes_with_ties_and_a_constant_reference() -> None:
    relu = np.maximum(normal(1, 2000), 0.0)  # half zeros: quantile edges repeat
    assert psi(relu, np.maximum(normal(2, 2000), 0.0)) < 0.05
    constant = np.zeros(100)
    assert psi(constant, constant) == 0.0
    assert psi(constant, np.ones(100)) > PSI_THRESHOLD
    assert psi(constant, -np.ones(100)) > PSI_THRESHOLD


def test_the_monitor_scores_each_feature_after_the_reference_fills() -> None:
    monitor = DriftMonitor(reference_rows=500, window_rows=300)
    rng = np.random.default_rng(0)
    shift = np.zeros(4, dtype=np.float32)
    shift[2] = 2.0  # only feature 2 moves
    for chunk in range(10):  # 500 reference rows, then 500 more (the window keeps the last 300)
        rows = rng.standard_normal((100, 4)).astype(np.float32) + (shift if chunk >= 5 else 0)
        if chunk == 4:
            assert monitor.rows() == []  # reference full, no recent rows yet
        monitor.feed({"x": rows}, {"y": rows[:, 2].copy()})
    table = {(r.kind, r.tensor, r.feature): r for r in monitor.rows()}
    assert set(table) == {(INPUT, "x", str(f)) for f in range(4)} | {(OUTPUT, "y", "")}
    assert [table[(INPUT, "x", str(f))].drifted for f in range(4)] == [False, False, True, False]
    assert table[(OUTPUT, "y", "")].drifted
    assert table[(INPUT, "x", "0")].n_reference == 500
    assert table[(INPUT, "x", "0")].n_recent == 300


def test_the_recent_window_slides_back_to_no_drift() -> None:
    # PSI's noise grows as the windows shrink (about bins * (1/n + 1/m)): windows of 1000 here.
    monitor = DriftMonitor(reference_rows=2000, window_rows=1000)
    rng = np.random.default_rng(0)
    monitor.feed(None, {"y": rng.standard_normal(2000)})
    monitor.feed(None, {"y": rng.standard_normal(1000) + 3})
    assert monitor.rows()[0].drifted
    monitor.feed(None, {"y": rng.standard_normal(1000)})  # the shifted rows slide out
    assert not monitor.rows()[0].drifted


def test_a_reference_file_replaces_the_first_rows() -> None:
    rng = np.random.default_rng(0)
    monitor = DriftMonitor(
        reference_rows=1000, window_rows=100, reference={"out:y": rng.standard_normal(400)}
    )
    monitor.feed(None, {"y": rng.standard_normal(100) + 2})  # recent at once, no reference to fill
    (row,) = monitor.rows()
    assert row.n_reference == 400 and row.n_recent == 100 and row.drifted


def test_images_and_wide_tensors_are_pooled_and_bytes_ignored() -> None:
    monitor = DriftMonitor(reference_rows=20, window_rows=20)
    rng = np.random.default_rng(0)
    for shift in (0.0, 0.0, 5.0, 5.0):
        image = rng.standard_normal((10, 3, 16, 16)).astype(np.float32) + shift
        wide = rng.standard_normal((10, 1000)) + shift
        names = np.array([b"a"] * 10, dtype=object)
        monitor.feed({"image": image, "name": names}, {"logits": wide})
    table = {(r.tensor, r.feature): r for r in monitor.rows()}
    assert set(table) == {("image", POOLED), ("logits", POOLED)}
    assert table[("logits", POOLED)].n_reference == 20 * 250  # 1000 columns strided by 4
    assert all(r.drifted for r in table.values())


def test_many_unchanged_features_raise_no_alarm_and_a_moved_one_still_does() -> None:
    """One version's KS tests share alpha 0.05: tested alone at 0.05 each, about 10 of 200
    unchanged features were flagged."""
    monitor = DriftMonitor(reference_rows=1000, window_rows=1000)
    rng = np.random.default_rng(7)
    monitor.feed({"x": rng.standard_normal((1000, 200))}, {})
    recent = rng.standard_normal((1000, 200))
    recent[:, 5] += 0.5  # one feature moves by half a sigma (KS about 0.2)
    monitor.feed({"x": recent}, {})
    rows = monitor.rows()
    assert len(rows) == 200
    assert [r.feature for r in rows if r.drifted] == ["5"]
    alone = [r for r in rows if r.ks > ks_threshold(r.n_reference, r.n_recent)]
    assert len(alone) > 3  # what a test at 0.05 per feature would have flagged
    assert ks_threshold(1000, 1000) == ks_threshold(1000, 1000, tests=1) > 1.35 * (2 / 1000) ** 0.5


def test_a_pooled_series_is_sized_by_rows_not_values() -> None:
    """An image's pixels are not independent draws: 100 images of 4,096 values were tested as
    409,600 values, and a brightness change too small to matter crossed that threshold."""
    monitor = DriftMonitor(reference_rows=100, window_rows=100)
    rng = np.random.default_rng(3)
    monitor.feed(None, {"img": rng.standard_normal((100, 1, 64, 64)).astype(np.float32)})
    monitor.feed(None, {"img": rng.standard_normal((100, 1, 64, 64)).astype(np.float32) + 0.05})
    (row,) = monitor.rows()
    assert row.feature == POOLED and row.n_reference == 100 * 256
    assert row.ks_threshold == ks_threshold(100, 100)
    assert not row.drifted


def test_the_drift_command_skips_a_corrupt_file_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One truncated .npz ended `sluiceway drift` in a BadZipFile traceback."""
    rng = np.random.default_rng(5)
    for i in range(3):
        np.savez(tmp_path / f"samples-{i:020d}-1-000001.npz", **{"out:y": rng.standard_normal(50)})
    (tmp_path / "samples-00000000000000000009-1-000001.npz").write_bytes(b"PK\x03\x04 truncated")
    monitor = monitor_from_files(tmp_path, reference_rows=100, window_rows=50)
    assert [r.tensor for r in monitor.rows()] == ["y"]
    assert "skipping samples-00000000000000000009-1-000001.npz" in capsys.readouterr().err


def test_the_plot_takes_extreme_and_non_finite_values(tmp_path: Path) -> None:
    """FP32's largest value, infinities and NaN in a sample: the table was printed, then the plot
    failed with numpy's "Too many bins for data range" and a traceback."""
    pytest.importorskip("matplotlib")
    from server.observability.drift import OUTPUT, DriftRow, Series
    from server.observability.drift_cli import plot

    extreme = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, np.finfo(np.float32).max], np.float32)
    nothing_finite = np.array([np.nan, np.inf], np.float32)
    series = [
        Series(OUTPUT, "y", "0", extreme, extreme),
        Series(OUTPUT, "z", "0", nothing_finite, nothing_finite),
    ]
    rows = [DriftRow(OUTPUT, "y", "0", 0.0, 0.0, 1.0, 6, 6), DriftRow(OUTPUT, "z", "0", 0.0, 0.0, 1.0, 2, 2)]
    plot(series, rows, tmp_path / "drift.png")
    assert (tmp_path / "drift.png").stat().st_size > 0
