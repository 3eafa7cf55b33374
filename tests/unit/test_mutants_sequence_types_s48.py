"""batcher/sequence_types.py: survivors of the 2026-12-05 mutation run (s48): the retired-sequence
answer names its sequence."""

from __future__ import annotations

from batcher.sequence_types import SequenceRetired, retired


def test_a_retired_sequences_answer_names_its_id_as_messages_do() -> None:
    """The client learns which of its sequences must start again: the id, a string one quoted (as
    `sid_text` writes it), not "None"."""
    err = retired("m", "abc", "it was unloaded")
    assert isinstance(err, SequenceRetired)
    assert str(err).startswith("sequence 'abc' of model 'm' ended while this request waited for its turn: ")
    assert "sequence 7 of model 'm'" in str(retired("m", 7, "why"))
