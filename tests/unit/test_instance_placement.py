"""Where a model's instances go, as Triton places them, with fake lists of visible GPUs
(server/backends/instance_groups.py): KIND_GPU on every visible GPU, KIND_AUTO resolved, a GPU that
is not visible refused, the groups ModelConfig shows, and GPU accelerators kept off CPU instances."""

from __future__ import annotations

from pathlib import Path

import pytest

from protos import model_config_pb2 as mc
from server.backends.instance_groups import InstanceSlot, instance_slots, plan_instances, served_groups
from server.backends.instances import factory_for
from server.backends.provider_choice import providers_for
from server.models.config import ConfigError, parse_config, validate_config
from server.models.version_loader import fill_defaults
from server.settings import ServerSettings
from server.workers import worker_environment

CPU, GPU = mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_GPU
TRT = 'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" } ] } }'


def _parse(text: str) -> mc.ModelConfig:
    return parse_config(f'name: "m"\n{text}', "models/m/config.pbtxt")


def _devices(text: str, gpus: list[int]) -> list[int | None]:
    return [slot.device_id for slot in instance_slots(_parse(text), gpus=gpus)[0]]


def test_a_gpu_group_without_gpus_makes_count_on_every_visible_gpu() -> None:
    # It had put all of them on GPU 0.
    assert _devices("instance_group [ { count: 2 kind: KIND_GPU } ]", [0, 1, 2]) == [0, 0, 1, 1, 2, 2]
    assert _devices("instance_group [ { count: 2 kind: KIND_GPU gpus: [ 1 ] } ]", [0, 1]) == [1, 1]


def test_kind_auto_is_a_gpu_group_where_gpus_are_visible_else_a_cpu_one() -> None:
    auto = "instance_group [ { count: 2 kind: KIND_AUTO } ]"
    assert _devices(auto, [0, 1]) == [0, 0, 1, 1]  # it had made 2 CPU instances
    assert _devices(auto, []) == [None, None]
    assert _devices("instance_group [ { kind: KIND_AUTO gpus: [ 1 ] } ]", [0, 1]) == [1]
    slots, notes = instance_slots(_parse("instance_group [ { kind: KIND_AUTO gpus: [ 3 ] } ]"), gpus=[0, 1])
    # Triton: a listed GPU not present makes it KIND_CPU, and a KIND_CPU group's count is then 2.
    assert [s.device_id for s in slots] == [None, None]
    assert notes == ["instance_group 'm_0' KIND_AUTO gpus [3] (not all visible: KIND_CPU, 2 instances)"]


def test_a_gpu_that_is_not_visible_is_refused_naming_the_group_and_the_visible_ids() -> None:
    config = _parse('instance_group [ { name: "g" kind: KIND_GPU gpus: [ 0, 7 ] } ]')
    with pytest.raises(ConfigError, match=r"instance_group 'g' KIND_GPU gpus \[0, 7\] names GPU 7.*\[0, 1\]"):
        instance_slots(config, gpus=[0, 1])
    # Without any GPU it runs on the CPU, said once in the load warning, as before.
    slots, notes = instance_slots(config, gpus=[])
    assert len(slots) == 2 and notes == [
        "instance_group 'g' KIND_GPU gpus [0, 7] (no GPU: 2 CPU instances, served as KIND_CPU)"
    ]


def test_count_on_every_visible_gpu_is_bounded() -> None:
    config = _parse("instance_group [ { count: 64 kind: KIND_GPU } ]")  # 64: within the config's check
    assert len(instance_slots(config, gpus=[0, 1, 2, 3])[0]) == 256
    with pytest.raises(ConfigError, match=r"makes 320 instances here \(5 visible GPUs\); at most 256"):
        instance_slots(config, gpus=[0, 1, 2, 3, 4])


def _served(text: str, devices: list[str], gpus: list[int]) -> list[tuple[str, int, int, list[int]]]:
    config = _parse(text)
    slots = instance_slots(config, gpus=gpus)[0]
    return [(g.name, g.kind, g.count, list(g.gpus)) for g in served_groups(config, slots, devices)]


def test_served_groups_show_where_the_instances_run() -> None:
    gpu = 'instance_group [ { name: "g" count: 2 kind: KIND_GPU gpus: [ 0, 1 ] } ]'
    assert _served(gpu, ["cuda:0", "cuda:0", "cuda:1", "cuda:1"], [0, 1]) == [("g", GPU, 2, [0, 1])]
    assert _served(gpu, ["cpu"] * 4, []) == [("g", CPU, 4, [])]  # the fallback: 4 CPU instances
    auto = 'instance_group [ { name: "a" count: 1 kind: KIND_AUTO } ]'
    assert _served(auto, ["cuda:0", "cuda:1"], [0, 1]) == [("a", GPU, 1, [0, 1])]  # gpus filled in
    assert _served(auto, ["cpu"], []) == [("a", CPU, 1, [])]
    mixed = 'instance_group [ { name: "g" kind: KIND_GPU }, { name: "c" count: 2 kind: KIND_CPU } ]'
    assert _served(mixed, ["cuda:0", "cpu", "cpu"], [0]) == [("g", GPU, 1, [0]), ("c", CPU, 2, [])]
    # A GPU whose provider did not start: its instances run on the CPU, and are shown so.
    assert _served(mixed, ["cpu", "cpu", "cpu"], [0]) == [("g", CPU, 1, []), ("c", CPU, 2, [])]


def test_a_gpu_accelerator_with_only_cpu_groups_loads_and_is_not_asked_for() -> None:
    config = _parse(f'instance_group [ {{ name: "c" count: 2 kind: KIND_CPU }} ]\n{TRT}')
    validate_config(config, "models/m/config.pbtxt")  # it had been refused
    plan = plan_instances(config, ["CPUExecutionProvider"], gpus=[0])
    assert [plan.providers_of(slot)[0][0] for slot in plan.slots] == ["CPUExecutionProvider"] * 2
    assert plan.unapplied == [
        "optimization.execution_accelerators.gpu_execution_accelerator ['tensorrt'] (unused: every "
        "instance is KIND_CPU, and GPU accelerators apply to GPU instances only)"
    ]


def test_a_cpu_group_beside_a_gpu_group_does_not_get_the_gpu_accelerator() -> None:
    config = _parse(
        f'instance_group [ {{ name: "g" kind: KIND_GPU }}, {{ name: "c" kind: KIND_CPU }} ]\n{TRT}'
    )
    assert [name for name, _ in providers_for(config, ["CPUExecutionProvider"], gpu_instance=False)] == [
        "CPUExecutionProvider"
    ]
    on_gpu = providers_for(config, ["CPUExecutionProvider"], device_id=0, gpu_instance=True)
    assert on_gpu[0][0] == "TensorrtExecutionProvider"
    plan = plan_instances(config, ["CPUExecutionProvider"], gpus=[0])
    # Without count: 1 per GPU for the GPU group, 2 for the CPU one (Triton's onnxruntime default).
    assert plan.slots == [InstanceSlot("g", 0, 0), InstanceSlot("c", None, 1), InstanceSlot("c", None, 1)]
    assert plan.cpu_providers is not None and plan.providers_of(plan.slots[1]) == plan.cpu_providers
    assert [name for name, _ in plan.cpu_providers] == ["CPUExecutionProvider"]


def test_a_config_without_instance_group_gets_one_instance_on_each_visible_gpu_as_triton() -> None:
    # It had run one CPU instance on a GPU machine unless --execution-providers named CUDA. The
    # group is named after the model, as Triton names the one it adds (it had been `m_0`).
    slots, notes = instance_slots(_parse(""), gpus=[0, 1], implicit_on_gpus=True)
    assert slots == [InstanceSlot("m", 0, 0), InstanceSlot("m", 1, 0)] and notes == []
    # Without a GPU, Triton's KIND_CPU count for onnxruntime: 2 (it had been 1).
    assert instance_slots(_parse(""), gpus=[], implicit_on_gpus=True)[0] == [InstanceSlot("m", None, 0)] * 2
    # The execution_providers setting given: it decides, on the CPU.
    assert instance_slots(_parse(""), gpus=[0, 1])[0] == [InstanceSlot("m", None, 0)] * 2


def test_the_implicit_gpu_instances_ask_for_cuda_on_their_own_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import server.backends.instance_groups as groups

    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(groups.ort, "get_available_providers", lambda: both)
    plan = plan_instances(_parse(""), ["CPUExecutionProvider"], gpus=[0, 1], implicit_on_gpus=True)
    asked = [plan.providers_of(slot)[0] for slot in plan.slots]
    assert [(name, opts["device_id"]) for name, opts in asked] == [
        ("CUDAExecutionProvider", "0"),
        ("CUDAExecutionProvider", "1"),
    ]
    config = _parse("")
    fill_defaults(config)  # what ModelConfig starts from: one KIND_CPU group
    shown = served_groups(config, plan.slots, ["cuda:0", "cuda:1"])
    assert [(g.name, g.kind, g.count, list(g.gpus)) for g in shown] == [("m", GPU, 1, [0, 1])]


def test_workers_get_the_execution_providers_setting_only_when_it_was_given(tmp_path: Path) -> None:
    # A worker handed the default as a variable would take it as given (and keep models on the CPU).
    plain = worker_environment(ServerSettings(workers=2), 8001, tmp_path)
    assert "SLUICEWAY_EXECUTION_PROVIDERS" not in plain
    named = ServerSettings(workers=2, execution_providers="CPUExecutionProvider")
    given = worker_environment(named, 8001, tmp_path)
    assert given["SLUICEWAY_EXECUTION_PROVIDERS"] == '["CPUExecutionProvider"]'


def test_factory_for_asks_triton_default_only_without_the_setting(tmp_path: Path) -> None:
    config = _parse("max_batch_size: 0")
    for settings, expected in (
        (ServerSettings(), [0, 1]),
        (ServerSettings(execution_providers="CPUExecutionProvider"), [None, None]),
    ):
        _, plan = factory_for(
            config, tmp_path / "1" / "model.onnx", settings, "m", faults=None, batch_axes=None, gpus=[0, 1]
        )
        assert [slot.device_id for slot in plan.slots] == expected


def _parameter(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}'


PADDED = f"max_batch_size: 16\ndynamic_batching {{ }}\n{_parameter('gpu_batch_padding', 'true')}"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (f"instance_group [ {{ kind: KIND_GPU }} ]\n{TRT}", "the instances run on TensorRT"),
        ("instance_group [ { kind: KIND_CPU } ]", "every instance runs on the CPU"),
        (
            f"instance_group [ {{ kind: KIND_GPU }} ]\n{_parameter('io_binding', 'false')}",
            "io_binding is off",
        ),
        ("instance_group [ { kind: KIND_GPU } ]", None),  # a CUDA instance: padded, nothing to say
        ("instance_group [ { kind: KIND_GPU }, { kind: KIND_CPU } ]", None),  # the GPU one pads
    ],
)
def test_padding_keys_no_instance_applies_are_named_on_a_gpu_machine(
    text: str, why: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tester's finding: on a GPU machine, `gpu_batch_padding` set for a model whose instances
    run on TensorRT or the CPU (or without IO binding) was silently unused."""
    import server.backends.instance_groups as groups

    every = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(groups.ort, "get_available_providers", lambda: every)
    plan = plan_instances(_parse(f"{PADDED}\n{text}"), ["CPUExecutionProvider"], gpus=[0])
    notes = [n for n in plan.unapplied if "gpu_batch_padding" in n]
    if why is None:
        assert notes == []
        return
    (note,) = notes
    assert (
        note.startswith("parameters ['gpu_batch_padding'] (padding a CUDA instance's batches; ")
        and why in note
    )
