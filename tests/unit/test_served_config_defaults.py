"""The defaults Triton's NormalizeModelConfig writes into the config it serves (core's
model_config_utils.cc), as ModelConfig shows them here: max_batch_size as the one preferred size
of dynamic batching and of the `oldest` sequence strategy where none is given, the sequence idle
default (1 s), input and output pinned memory on. A value the file gives is kept."""

from __future__ import annotations

from protos import model_config_pb2 as mc
from server.models.config import parse_config
from server.models.version_loader import fill_defaults


def _filled(text: str) -> mc.ModelConfig:
    config = parse_config(f'name: "m"\n{text}', "models/m/config.pbtxt")
    fill_defaults(config)
    return config


def test_dynamic_batching_without_preferred_sizes_shows_max_batch_size() -> None:
    plain = _filled("max_batch_size: 8\ndynamic_batching { }")
    assert list(plain.dynamic_batching.preferred_batch_size) == [8]
    given = _filled("max_batch_size: 8\ndynamic_batching { preferred_batch_size: [ 2, 4 ] }")
    assert list(given.dynamic_batching.preferred_batch_size) == [2, 4]
    # Without a batch dimension there is no size to prefer; without dynamic_batching none is added.
    assert not _filled("max_batch_size: 0\ndynamic_batching { }").dynamic_batching.preferred_batch_size
    assert not _filled("max_batch_size: 8").HasField("dynamic_batching")


def test_sequence_batching_shows_the_idle_default_and_the_oldest_preferred_size() -> None:
    oldest = _filled("max_batch_size: 4\nsequence_batching { oldest { max_candidate_sequences: 4 } }")
    assert oldest.sequence_batching.max_sequence_idle_microseconds == 1_000_000
    assert list(oldest.sequence_batching.oldest.preferred_batch_size) == [4]
    direct = _filled(
        "max_batch_size: 4\nsequence_batching { max_sequence_idle_microseconds: 5000 direct { } }"
    )
    assert direct.sequence_batching.max_sequence_idle_microseconds == 5000
    assert not direct.sequence_batching.HasField("oldest")
    assert not _filled("max_batch_size: 4").HasField("sequence_batching")


def test_pinned_memory_is_shown_on_unless_the_file_says_otherwise() -> None:
    plain = _filled("max_batch_size: 4").optimization
    assert plain.input_pinned_memory.enable and plain.output_pinned_memory.enable
    off = _filled("optimization { input_pinned_memory { enable: false } }").optimization
    assert off.HasField("input_pinned_memory") and not off.input_pinned_memory.enable
    assert off.output_pinned_memory.enable
