"""`sluiceway optimize` given a file that is not a model or data it cannot use: one line naming the
file and what is wrong with it, never a traceback or numpy's words for another problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.optimize.data import InputSpec, OptimizeError, input_specs, load_batches
from server.optimize.report import speed_rows
from server.optimize.validate import Validation


@pytest.mark.parametrize(
    ("content", "said"),
    [(b"garbage\x08\x01", "not a readable ONNX model"), (b"", "an empty graph: is the file empty?")],
)
def test_a_file_that_is_not_a_model_is_named(tmp_path: Path, content: bytes, said: str) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(content)
    with pytest.raises(OptimizeError, match=said):
        input_specs(path)


def test_nan_in_the_data_is_named_with_its_input(tmp_path: Path) -> None:
    """NaN gave a table of nan and 0 figures and "REFUSED: accuracy drop 1", never saying NaN."""
    x = np.ones((4, 3), np.float32)
    x[1, 2] = np.nan
    np.save(tmp_path / "v.npy", x)
    spec = InputSpec("x", (None, 3), np.dtype(np.float32))
    with pytest.raises(OptimizeError, match=r"v\.npy: input 'x' holds 1 NaN or infinite values"):
        load_batches(tmp_path, [spec], batch_size=8, max_rows=64)


def test_a_file_that_is_not_a_numpy_array_says_so(tmp_path: Path) -> None:
    """A text file named .npy read "pickled (object) data", which it was not."""
    (tmp_path / "v.npy").write_text("1 2 3\n")
    spec = InputSpec("x", (None, 3), np.dtype(np.float32))
    with pytest.raises(OptimizeError, match=r"v\.npy: not a numpy \.npy array file"):
        load_batches(tmp_path, [spec], batch_size=8, max_rows=64)
    (tmp_path / "v.npy").unlink()
    (tmp_path / "w.npz").write_text("x\n")
    with pytest.raises(OptimizeError, match=r"w\.npz: not a numpy \.npz archive file"):
        load_batches(tmp_path, [spec], batch_size=8, max_rows=64)


def test_a_larger_model_is_reported_larger() -> None:
    """An optimized model 1.45x the original's size read "0.69x smaller"."""
    for original, optimized, said in ((1000, 1450, "1.45x larger"), (2000, 1000, "2.00x smaller")):
        validation = Validation(1, [], [], original, optimized, "cosine", 0.0)
        assert speed_rows(validation)[-1][3] == said
