"""A variable-length tensor's drift is one pooled series counted in rows; a drift reference must
name the model's tensors in their shapes (it had been taken silently, misnamed or misshapen)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from protos import model_config_pb2 as mc
from server.models.config import ConfigError
from server.observability.drift import INPUT, POOLED, DriftMonitor, ks_threshold
from server.observability.sampling import SamplePolicy, sample_policy
from server.observability.sampling_writer import save_npz
from server.settings import ServerSettings

REQUESTS, ROWS = 100, 4  # 400 rows: 200 the reference, 200 the recent window


def token_rows(rng: np.random.Generator, width: int) -> np.ndarray:
    """Rows of token ids correlated within a row (one draw a row), the same distribution always."""
    return (rng.integers(0, 1000, (ROWS, 1)) + rng.integers(0, 3, (ROWS, width))).astype(np.int64)


def fed(seed: int, widths: tuple[int, ...], monitor: DriftMonitor | None = None) -> DriftMonitor:
    """`monitor` (default one of 200 rows a window) fed as the writer feeds it: a request at a time."""
    rng = np.random.default_rng(seed)
    monitor = monitor or DriftMonitor(reference_rows=200, window_rows=200)
    for i in range(REQUESTS):
        ids = token_rows(rng, widths[i % len(widths)])
        monitor.feed({"ids": ids}, {"y": ids.mean(1, keepdims=True)})
    return monitor


def test_a_variable_length_input_is_pooled_with_windows_and_ks_in_rows() -> None:
    """[N, S] with S 8 or 12 had been one column "0" of values: a reference of ~2,000 values, a
    window of the last 200 values (~20 rows), KS sized by values; 40 of 40 runs drifted."""
    monitor = fed(0, (8, 12))
    (row,) = [r for r in monitor.rows() if r.kind == INPUT]
    assert row.feature == POOLED
    assert row.n_reference == 100 * 8 + 100 * 12  # 50 requests of each width: 200 rows
    assert row.n_recent == 100 * 8 + 100 * 12  # the last 200 rows, not the last 200 values
    assert row.ks_threshold == ks_threshold(200, 200, tests=2)  # sized by rows
    inputs = [[r for r in fed(seed, (8, 12)).rows() if r.kind == INPUT] for seed in range(40)]
    assert sum(r.ks > r.ks_threshold for rows in inputs for r in rows) <= 2  # it had been 38 of 40
    assert sum(r.drifted for rows in inputs for r in rows) <= 6  # PSI's noise at 200 rows: 2 of 40


def test_a_declared_variable_length_input_is_pooled_from_its_first_rows() -> None:
    """A -1 dim (SamplePolicy.variable) pools the tensor before a second width is seen, so its
    series keeps one name; a fixed-width tensor keeps its columns."""
    declared = DriftMonitor(reference_rows=200, window_rows=200, variable=frozenset({"in:ids"}))
    assert {r.feature for r in fed(1, (8,), declared).rows() if r.kind == INPUT} == {POOLED}
    assert {r.feature for r in fed(1, (8,)).rows() if r.kind == INPUT} == {str(c) for c in range(8)}


def test_a_pooled_window_keeps_its_last_rows_across_chunks() -> None:
    monitor = DriftMonitor(reference_rows=10, window_rows=5, variable=frozenset({"out:y"}))
    monitor.feed(None, {"y": np.zeros((10, 3))})
    for width in (2, 4, 3):  # 3 + 3 + 3 rows; the window is the last 5: 2 of width 4, 3 of width 3
        monitor.feed(None, {"y": np.full((3, width), float(width))})
    (series,) = monitor.series()
    assert series.rows == (10, 5) and series.recent.tolist() == [4.0] * 8 + [3.0] * 9


def model(dims: tuple[int, ...] = (4,), max_batch_size: int = 8) -> mc.ModelConfig:
    config = mc.ModelConfig(name="m", max_batch_size=max_batch_size)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[4])
    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=list(dims))
    config.parameters["drift_reference"].string_value = "ref.npz"
    return config


def policy_of(tmp_path: Path, config: mc.ModelConfig, **arrays: np.ndarray) -> SamplePolicy:
    with open(tmp_path / "ref.npz", "wb") as file:
        save_npz(file, arrays)
    return sample_policy(config, tmp_path, ServerSettings(cache_dir=tmp_path))


def test_a_reference_naming_no_tensor_of_the_model_is_refused(tmp_path: Path) -> None:
    """'out:Y' for the output 'y' had loaded, 'y' then taking its reference from sampled rows."""
    message = r"'drift_reference' 'ref\.npz': the array 'out:Y' names no output of the model \(outputs: 'y'\)"
    with pytest.raises(ConfigError, match=message):
        policy_of(tmp_path, model(), **{"out:Y": np.zeros((300, 4), np.float32)})
    with pytest.raises(ConfigError, match=r"the array 'in:z' names no input of the model \(inputs: 'x'\)"):
        policy_of(tmp_path, model(), **{"in:z": np.zeros((300, 4), np.float32)})


def test_a_reference_of_another_shape_is_refused(tmp_path: Path) -> None:
    """A [300, 1] reference of a [N, 4] output had loaded as a pooled series, 1 column against 4."""
    wrong = r"the array 'out:y' is shaped \[300, 1\], but the output 'y' is \[rows, 4\] \(-1: any size\)"
    with pytest.raises(ConfigError, match=wrong):
        policy_of(tmp_path, model(), **{"out:y": np.zeros((300, 1), np.float32)})
    with pytest.raises(ConfigError, match=r"is shaped \[\], but the output 'y' is \[rows, 4\]"):
        policy_of(tmp_path, model(), **{"out:y": np.float32(1)})


def test_a_reference_that_fits_is_taken_and_a_minus_one_dim_is_variable(tmp_path: Path) -> None:
    policy = policy_of(tmp_path, model(dims=(-1,)), **{"out:y": np.zeros((300, 7), np.float32)})
    assert policy.variable == frozenset({"out:y"})
    # Without batching the first dim is the rows: a [3, 4] output's reference is [rows, 4].
    unbatched = policy_of(tmp_path, model(dims=(3, 4), max_batch_size=0), **{"out:y": np.zeros((9, 4))})
    assert unbatched.variable == frozenset()


def test_the_command_pools_what_the_server_pooled_as_variable_length(tmp_path: Path) -> None:
    """A `-1` tensor sampled at one width: the server pools it (its config says -1), and
    `sluiceway drift` (no config) had scored its 6 columns, "drifted" where the gauges were not.
    The chunk files now say which tensors the server pools, and the command pools them too."""
    from server.observability.drift_cli import monitor_of
    from server.observability.sample_layout import chunk_arrays

    rng = np.random.default_rng(7)
    files = []
    for i in range(4):
        sample = SimpleNamespace(
            inputs={"x": rng.standard_normal((30, 6)).astype(np.float32)},
            outputs={"y": rng.standard_normal((30, 2)).astype(np.float32)},
            time_ns=i,
        )
        arrays = chunk_arrays([sample], 1, frozenset({"in:x"}))  # type: ignore[list-item]
        files.append(tmp_path / f"samples-{i:020d}-1-000001.npz")
        np.savez(files[-1], **arrays)
    monitor = monitor_of(files, reference_rows=60, window_rows=60)
    features = {(s.tensor, s.feature) for s in monitor.series()}
    assert features == {("x", "*"), ("y", "0"), ("y", "1")}
