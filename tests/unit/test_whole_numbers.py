"""Whole numbers from text (server/whole_numbers.py), and the config checks that read them: "²"
and 5,000 digits had been ValueErrors nobody caught (a server that did not start, INTERNAL for a
RepositoryModelLoad config), U+0665 a 5."""

from __future__ import annotations

import pytest

from protos import model_config_pb2 as mc
from server.backends.gpu_devices import visible_ids
from server.models.config import ConfigError, parse_config, validate_config
from server.models.config_backend import validate_instance_groups
from server.models.config_cuda import cuda_options
from server.whole_numbers import whole_number

ARABIC_FIVE = "\u0665"


@pytest.mark.parametrize(
    ("text", "limit", "number"),
    [
        ("5", 9, 5),
        (" 12 ", 99, 12),
        ("007", 9, 7),
        ("18446744073709551615", 2**64 - 1, 2**64 - 1),
        ("18446744073709551616", 2**64 - 1, None),
        ("²", 9, None),
        (ARABIC_FIVE, 9, None),
        ("9" * 5000, 2**64 - 1, None),
        ("-1", 9, None),
        ("+1", 9, None),
        ("", 9, None),
        ("1_0", 99, None),
        ("10", 9, None),
    ],
)
def test_whole_numbers_are_ascii_digits_within_the_limit(text: str, limit: int, number: int | None) -> None:
    assert whole_number(text, limit) == number


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("gpu_mem_limit", "²"),
        ("gpu_mem_limit", "9" * 5000),
        ("gpu_mem_limit", ARABIC_FIVE),
        ("cudnn_conv_algo_search", "²"),
        ("cudnn_conv_algo_search", "0" * 5000 + "1" * 5000),
        ("sdpa_kernel", "³"),
    ],
)
def test_cuda_values_int_cannot_read_are_refused_naming_them(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"cuda accelerator parameter '{key}' value"):
        cuda_options({key: value}, "model 'm'")


@pytest.mark.parametrize("value", ["²", "9" * 5000, ARABIC_FIVE])
def test_tensorrt_workspace_bytes_are_an_unsigned_64_bit_count(value: str) -> None:
    text = (
        'name: "m"\ninstance_group [ { kind: KIND_GPU } ]\n'
        "optimization { execution_accelerators { gpu_execution_accelerator [ "
        f'{{ name: "tensorrt" parameters {{ key: "max_workspace_size_bytes" value: "{value}" }} }} ] }} }}\n'
    )
    with pytest.raises(ConfigError, match="max_workspace_size_bytes"):
        validate_config(parse_config(text, "models/m/config.pbtxt"), "models/m/config.pbtxt")


def test_cuda_visible_devices_takes_ascii_indices_only() -> None:
    assert visible_ids("²", 4) == ()
    assert visible_ids("9" * 5000, 4) == ()
    assert visible_ids("1," + "\u0663", 4) == (0,)  # read up to the first invalid entry


@pytest.mark.parametrize("kind", [9, -3])
def test_an_instance_group_kind_outside_the_enum_is_refused(kind: int) -> None:
    config = mc.ModelConfig(name="m")
    group = config.instance_group.add(count=2)
    group.kind = kind  # type: ignore[assignment]  # proto3 keeps a number its enum lacks
    with pytest.raises(ConfigError, match=rf"instance_group\[0\]: kind {kind} is not a kind"):
        validate_instance_groups(config, "model 'm'")
