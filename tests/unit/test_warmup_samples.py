"""A `model_warmup` sample that cannot run is named at load by its field, not in onnxruntime's
words ("Required inputs (['features']) are missing from input feed (['nope'])")."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from protos import model_config_pb2 as mc
from server.models.warmup import check_sample

CONFIG = """
name: "m" max_batch_size: 8
input [ { name: "features" data_type: TYPE_FP32 dims: [ 4 ] } ]
model_warmup [ { name: "w" batch_size: %d
  inputs { key: "%s" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } } ]
"""


def sample_of(batch_size: int, name: str) -> tuple[mc.ModelConfig, mc.ModelWarmup]:
    config = text_format.Parse(CONFIG % (batch_size, name), mc.ModelConfig())
    return config, config.model_warmup[0]


@pytest.mark.parametrize(
    ("batch_size", "name", "said"),
    [
        (1, "nope", r"sample 'w': inputs \['nope'\] are not inputs of the model \(\['features'\]\)"),
        (9, "features", "sample 'w': batch_size 9 is past max_batch_size 8"),
    ],
)
def test_a_sample_that_cannot_run_is_named(batch_size: int, name: str, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        check_sample(*sample_of(batch_size, name), 1 << 20)
    check_sample(*sample_of(8, "features"), 1 << 20)  # the largest batch is fine


def test_a_sample_is_bounded_by_its_count_and_its_bytes() -> None:
    """A client's config with count 1e9 held its load until a restart; dims of a billion elements
    would be allocated before the first run."""
    config, sample = sample_of(8, "features")
    sample.count = 1001
    with pytest.raises(ValueError, match="sample 'w': count 1001 is past the limit 1000"):
        check_sample(config, sample, 1 << 20)
    sample.count = 1000
    check_sample(config, sample, 8 * 4 * 4)  # 8 rows of 4 FP32: 128 bytes
    with pytest.raises(ValueError, match=r"inputs of more than 127 bytes \(max_message_bytes\)"):
        check_sample(config, sample, 127)
    sample.inputs["features"].dims[:] = [-1]
    with pytest.raises(ValueError, match=r"input 'features': dims \[-1\] must be fixed"):
        check_sample(config, sample, 1 << 20)
