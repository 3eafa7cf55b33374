"""Triton's instance_group defaults (its model_config_utils.cc: NormalizeInstanceGroup and
SetDefaultInstanceCount): a group without `count` gets 2 instances when it is KIND_CPU under the
onnxruntime backend (KIND_AUTO counted once resolved), else 1; the group added to a config without
instance_group is named after the model. Sluiceway had made 1 and named it `<model>_0`."""

from __future__ import annotations

import pytest

from protos import model_config_pb2 as mc
from server.backends.instance_groups import InstanceSlot, instance_slots, plan_instances
from server.backends.onnxruntime_backend import CPU, CUDA
from server.models.config import ConfigError, parse_config, validate_instance_groups
from server.models.config_backend import default_instance_count


def _parse(text: str) -> mc.ModelConfig:
    return parse_config(f'name: "m"\n{text}', "models/m/config.pbtxt")


def _slots(text: str, gpus: list[int]) -> list[InstanceSlot]:
    return instance_slots(_parse(text), gpus=gpus)[0]


@pytest.mark.parametrize(
    ("backend", "on_cpu", "expected"),
    [("", True, 2), ("onnxruntime", True, 2), ("identity", True, 1), ("", False, 1), ("identity", False, 1)],
)
def test_the_default_count_is_two_for_onnxruntime_on_the_cpu_only(
    backend: str, on_cpu: bool, expected: int
) -> None:
    config = mc.ModelConfig(name="m", backend=backend)
    assert default_instance_count(config, on_cpu=on_cpu) == expected


def test_a_cpu_group_without_count_gets_two_and_a_given_count_is_kept() -> None:
    assert _slots("instance_group [ { kind: KIND_CPU } ]", []) == [InstanceSlot("m_0", None, 0)] * 2
    assert _slots("instance_group [ { kind: KIND_CPU } ]", [0]) == [InstanceSlot("m_0", None, 0)] * 2
    assert _slots("instance_group [ { count: 1 kind: KIND_CPU } ]", []) == [InstanceSlot("m_0", None, 0)]
    assert _slots("instance_group [ { count: 3 kind: KIND_CPU } ]", []) == [InstanceSlot("m_0", None, 0)] * 3


def test_kind_auto_without_count_counts_as_the_kind_it_resolves_to() -> None:
    auto = 'instance_group [ { name: "a" kind: KIND_AUTO } ]'
    assert _slots(auto, []) == [InstanceSlot("a", None, 0)] * 2  # KIND_CPU: 2
    assert _slots(auto, [0, 1]) == [InstanceSlot("a", 0, 0), InstanceSlot("a", 1, 0)]  # KIND_GPU: 1 per GPU


def test_a_gpu_group_without_count_keeps_one_per_listed_gpu_when_run_on_the_cpu() -> None:
    # Triton refuses KIND_GPU without a GPU; sluiceway runs it on the CPU as it would have run on GPUs.
    slots, notes = instance_slots(_parse("instance_group [ { kind: KIND_GPU gpus: [ 0, 1 ] } ]"), gpus=[])
    assert slots == [InstanceSlot("m_0", None, 0)] * 2
    assert notes == [
        "instance_group 'm_0' KIND_GPU gpus [0, 1] (no GPU: 2 CPU instances, served as KIND_CPU)"
    ]
    assert _slots("instance_group [ { kind: KIND_GPU } ]", []) == [InstanceSlot("m_0", None, 0)]


def test_the_identity_backend_keeps_one_instance_per_group_as_triton_does() -> None:
    identity = 'backend: "identity"\n'
    assert _slots(identity, []) == [InstanceSlot("m", None, 0)]
    assert _slots(identity + "instance_group [ { kind: KIND_CPU } ]", []) == [InstanceSlot("m_0", None, 0)]


def test_a_config_without_instance_group_gets_a_group_named_after_the_model() -> None:
    assert _slots("", []) == [InstanceSlot("m", None, 0)] * 2
    slots = instance_slots(_parse(""), gpus=[0, 1], implicit_on_gpus=True)[0]
    assert slots == [InstanceSlot("m", 0, 0), InstanceSlot("m", 1, 0)]
    # The setting's providers decide: a GPU provider with a GPU visible is Triton's GPU count.
    assert instance_slots(_parse(""), gpus=[0], implicit_gpu_provider=True)[0] == [InstanceSlot("m", None, 0)]


def test_the_implicit_group_on_the_settings_cuda_is_one_instance_only_where_cuda_can_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import server.backends.instance_groups as groups

    monkeypatch.setattr(groups.ort, "get_available_providers", lambda: [CUDA, CPU])
    assert len(plan_instances(_parse(""), [CUDA, CPU], gpus=[0]).slots) == 1
    assert len(plan_instances(_parse(""), [CUDA, CPU], gpus=[]).slots) == 2  # no GPU: the CPU runs it
    assert len(plan_instances(_parse(""), [CPU], gpus=[0]).slots) == 2
    monkeypatch.setattr(groups.ort, "get_available_providers", lambda: [CPU])  # a CPU-only build
    assert len(plan_instances(_parse(""), [CUDA, CPU], gpus=[0]).slots) == 2


def test_the_configs_bound_counts_cpu_groups_without_count_as_two() -> None:
    def groups(n: int, group: str) -> mc.ModelConfig:
        return _parse("instance_group [ " + ", ".join([group] * n) + " ]")

    validate_instance_groups(groups(128, "{ kind: KIND_CPU }"), "c.pbtxt")  # 256 instances
    with pytest.raises(ConfigError, match=r"asks for 258 instances .*at most 256"):
        validate_instance_groups(groups(129, "{ kind: KIND_CPU }"), "c.pbtxt")
    validate_instance_groups(groups(256, "{ count: 1 kind: KIND_CPU }"), "c.pbtxt")
    validate_instance_groups(groups(256, "{ kind: KIND_GPU }"), "c.pbtxt")  # 1 per GPU
    # KIND_AUTO is bounded where its kind is known: at 2 each on a machine without a GPU.
    with pytest.raises(ConfigError, match=r"makes 258 instances here \(0 visible GPUs\); at most 256"):
        instance_slots(groups(129, "{ kind: KIND_AUTO }"), gpus=[])
