"""gather pinned where mutation testing (scripts/mutation.sh) found it untested."""

from __future__ import annotations

import numpy as np
import pytest

from batcher.scatter import gather


def test_gather_without_requests_says_what_it_needs() -> None:
    with pytest.raises(
        ValueError, match=r"^gather needs one row count per request, and at least one request$"
    ):
        gather([], [])


def test_gathered_inputs_keep_the_first_requests_order() -> None:
    a = {"a": np.zeros((1, 2), np.float32), "b": np.ones((1, 2), np.float32)}
    b = {"b": np.ones((1, 2), np.float32), "a": np.zeros((1, 2), np.float32)}
    inputs, offsets = gather([a, b], [1, 1])
    assert list(inputs) == ["a", "b"] and offsets == [0, 1, 2]
