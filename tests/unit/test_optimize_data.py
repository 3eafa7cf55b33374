"""`sluiceway optimize` given a file that is not a model: one line and exit 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.optimize.data import OptimizeError, input_specs


@pytest.mark.parametrize(
    ("content", "said"),
    [(b"garbage\x08\x01", "not a readable ONNX model"), (b"", "an empty graph: is the file empty?")],
)
def test_a_file_that_is_not_a_model_is_named(tmp_path: Path, content: bytes, said: str) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(content)
    with pytest.raises(OptimizeError, match=said):
        input_specs(path)
