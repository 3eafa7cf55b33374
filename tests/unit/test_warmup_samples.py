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
        check_sample(*sample_of(batch_size, name))
    check_sample(*sample_of(8, "features"))  # the largest batch is fine
