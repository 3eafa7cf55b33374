"""The CORRID control input a sequence id fills (batcher/sequence_types.py `corrid_input`)."""

from __future__ import annotations

import numpy as np
import pytest

from batcher.sequence_types import SequenceError, corrid_input


@pytest.mark.parametrize("sid", ["a\x00", "\x00", "\x00\x00", "x\x00y\x00"])
def test_a_string_id_keeps_every_byte_nuls_too(sid: str) -> None:
    corrid = corrid_input("corrid", np.dtype(object), sid, (2, 1))
    assert corrid.dtype == object and corrid.shape == (2, 1)
    assert corrid.ravel().tolist() == [sid.encode()] * 2


def test_an_integer_id_fills_an_integer_corrid_and_a_string_id_is_refused_there() -> None:
    assert corrid_input("corrid", np.dtype(np.uint64), 7, (1,)).tolist() == [7]
    with pytest.raises(SequenceError, match="CONTROL_SEQUENCE_CORRID"):
        corrid_input("corrid", np.dtype(np.uint64), "a", (1,))
