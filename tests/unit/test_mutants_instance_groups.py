"""What the mutation run of server/backends/instance_groups.py found untested: the refusal's full text,
a later group's index on its slots, the load warning's instance_group notes, the groups ModelConfig
shows when instances ran elsewhere than planned, the providers each instance asks for, the load
log line `describe`, the setting's start-up note, the TensorRT engine cache folder and the padding
notes. Without a GPU: the visible GPUs and onnxruntime's providers are faked."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import onnxruntime as ort
import pytest

from protos import model_config_pb2 as mc
from server.backends.instance_groups import (
    InstanceSlot,
    _engine_cache,
    _unused_padding,
    asks_providers,
    describe,
    instance_device,
    instance_slots,
    plan_instances,
    served_groups,
    setting_note,
    usable_providers,
)
from server.models.config import ConfigError, parse_config
from server.models.version_loader import fill_defaults

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
OPENVINO, AZURE = "OpenVINOExecutionProvider", "AzureExecutionProvider"
KIND_CPU, KIND_GPU = mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_GPU
TRT_ACCEL = 'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" } ] } }'
PADDED = (
    'max_batch_size: 16\ndynamic_batching { }\nparameters { key: "gpu_batch_padding" '
    'value { string_value: "true" } }'
)


def _parse(text: str) -> mc.ModelConfig:
    return parse_config(f'name: "m"\n{text}', "models/m/config.pbtxt")


def _available(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """This onnxruntime build's providers, as a GPU build (or a CPU-only one) lists them."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(names))


def _names(providers: list[tuple[str, dict[str, str]]] | None) -> list[str]:
    return [name for name, _ in providers or []]


# instance_slots and its refusal


def test_a_gpu_that_is_not_visible_is_refused_with_the_whole_reason() -> None:
    """The refusal names the group, its gpus, the hidden GPU, the visible ones and who decides."""
    config = _parse('instance_group [ { name: "g" kind: KIND_GPU gpus: [ 0, 7 ] } ]')
    with pytest.raises(ConfigError) as err:
        instance_slots(config, gpus=[0, 1])
    assert str(err.value) == (
        "model 'm': instance_group 'g' KIND_GPU gpus [0, 7] names GPU 7, which is not visible here "
        "(visible GPUs: [0, 1]; CUDA_VISIBLE_DEVICES and the driver decide)"
    )


def test_a_later_gpu_groups_instances_carry_its_index() -> None:
    """Each instance on a GPU knows its group's place in instance_group (not 0 for the second)."""
    config = _parse(
        'instance_group [ { name: "c" count: 1 kind: KIND_CPU }, '
        '{ name: "g" count: 2 kind: KIND_GPU gpus: [ 1 ] } ]'
    )
    slots, notes = instance_slots(config, gpus=[0, 1])
    assert slots == [InstanceSlot("c", None, 0), InstanceSlot("g", 1, 1), InstanceSlot("g", 1, 1)]
    assert notes == []


def test_a_gpu_group_listing_no_gpus_on_a_cpu_machine_is_noted_without_a_gpus_list() -> None:
    """No `gpus` in the config: the note names none (not `gpus []`), and its count of CPU instances."""
    slots, notes = instance_slots(_parse("instance_group [ { count: 3 kind: KIND_GPU } ]"), gpus=[])
    assert [s.device_id for s in slots] == [None, None, None]
    assert notes == ["instance_group 'm_0' KIND_GPU (no GPU: 3 CPU instances, served as KIND_CPU)"]


def test_kind_auto_without_gpus_on_a_cpu_machine_is_kind_cpu_without_a_note() -> None:
    """KIND_AUTO listing no GPU, no GPU visible: Triton's KIND_CPU, count instances, nothing to warn."""
    for kind in ("KIND_AUTO", "KIND_CPU"):
        slots, notes = instance_slots(_parse(f"instance_group [ {{ count: 2 kind: {kind} }} ]"), gpus=[])
        assert slots == [InstanceSlot("m_0", None, 0)] * 2 and notes == []


def test_kind_auto_listing_gpus_on_a_machine_without_any_says_no_gpu() -> None:
    """KIND_AUTO with `gpus` and no GPU at all: 'no GPU' (not 'not all visible'), count CPU instances."""
    config = _parse("instance_group [ { kind: KIND_AUTO count: 2 gpus: [ 1 ] } ]")
    slots, notes = instance_slots(config, gpus=[])
    assert [s.device_id for s in slots] == [None, None]
    assert notes == ["instance_group 'm_0' KIND_AUTO gpus [1] (no GPU: KIND_CPU, 2 instances)"]


# served_groups


def _shown(config: mc.ModelConfig, slots: list[InstanceSlot], devices: list[str]) -> list[tuple]:
    return [(g.name, g.kind, g.count, list(g.gpus)) for g in served_groups(config, slots, devices)]


def test_a_gpu_group_with_one_gpu_fallen_back_is_shown_as_planned() -> None:
    """Some instances on their GPU: the group shows its planned gpus and its own count per GPU."""
    config = _parse('instance_group [ { name: "g" kind: KIND_GPU gpus: [ 0, 1 ] } ]')
    slots = instance_slots(config, gpus=[0, 1])[0]
    assert _shown(config, slots, ["cuda:0", "cpu"]) == [("g", KIND_GPU, 1, [0, 1])]


def test_the_implicit_instance_the_setting_put_on_a_gpu_is_shown_on_that_gpu() -> None:
    """The implicit CPU slot running on cuda:0 (setting CUDA): KIND_GPU, gpus [0], one instance,
    the group named after the model as Triton's."""
    config = _parse("")
    slots = instance_slots(config, gpus=[0], implicit_gpu_provider=True)[0]
    assert slots == [InstanceSlot("m", None, 0)]  # Triton's GPU count, not its CPU one (2)
    fill_defaults(config)
    assert _shown(config, slots, ["cuda:0"]) == [("m", KIND_GPU, 1, [0])]


def test_cpu_planned_instances_that_run_on_one_gpu_are_counted_on_it() -> None:
    """No slot planned on a GPU, both running on cuda:0: count is the instances per GPU (2)."""
    config = _parse('instance_group [ { name: "g" kind: KIND_GPU gpus: [ 0, 1 ] } ]')
    slots = instance_slots(config, gpus=[])[0]
    assert _shown(config, slots, ["cuda:0", "cuda:0"]) == [("g", KIND_GPU, 2, [0])]


def test_devices_for_fewer_instances_than_planned_are_not_an_error() -> None:
    """zip is not strict: the groups are shown from the devices given (a group without any: 1 CPU)."""
    config = _parse('instance_group [ { name: "g" kind: KIND_GPU }, { name: "c" count: 2 kind: KIND_CPU } ]')
    slots = instance_slots(config, gpus=[0])[0]
    assert _shown(config, slots, ["cuda:0"]) == [("g", KIND_GPU, 1, [0]), ("c", KIND_CPU, 1, [])]


# providers


def test_usable_providers_keep_the_available_ones_without_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    """An available CUDA is kept and not named missing; only the absent TensorRT is."""
    _available(monkeypatch, CUDA, CPU)
    cuda = (CUDA, {"device_id": "0"})
    assert usable_providers([cuda, (CPU, {})]) == ([cuda, (CPU, {})], [])
    assert usable_providers([(TRT, {}), cuda, (CPU, {})]) == (
        [cuda, (CPU, {})],
        [f"execution providers ['{TRT}'] (not in this onnxruntime build: CPU instead)"],
    )


def test_only_accelerators_or_a_gpu_group_choose_the_providers() -> None:
    """A KIND_CPU group leaves them to the setting; a KIND_GPU group or an accelerator chooses."""
    assert not asks_providers(_parse("instance_group [ { kind: KIND_CPU } ]"))
    assert not asks_providers(_parse("instance_group [ { kind: KIND_AUTO } ]"))
    assert asks_providers(_parse("instance_group [ { kind: KIND_CPU }, { kind: KIND_GPU } ]"))
    assert asks_providers(_parse(TRT_ACCEL))


def test_the_setting_note_reads_names_from_tuples_and_says_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """(name, options) entries count by name; with only the CPU left the note says 'run on CPU'."""
    _available(monkeypatch, CPU)
    assert setting_note([(CPU, {"intra_op_num_threads": "1"})]) is None
    assert setting_note([(CUDA, {"device_id": "0"}), CPU]) == (
        "the execution_providers setting (--execution-providers, SLUICEWAY_EXECUTION_PROVIDERS) "
        f"names ['{CUDA}'], not in this onnxruntime build: models whose config names no provider "
        "run on CPU instead"
    )


def test_the_setting_note_lists_every_provider_run_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    """The providers kept (CPU aside) are named, comma separated."""
    _available(monkeypatch, CUDA, AZURE, CPU)
    assert setting_note([TRT, CUDA, AZURE, CPU]) == (
        "the execution_providers setting (--execution-providers, SLUICEWAY_EXECUTION_PROVIDERS) "
        f"names ['{TRT}'], not in this onnxruntime build: models whose config names no provider "
        f"run on {CUDA}, {AZURE} instead"
    )


def test_a_cpu_group_beside_a_gpu_group_asks_the_cpu_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    """With TensorRT and CUDA in the build, the GPU slot asks them and the KIND_CPU slot the CPU only."""
    _available(monkeypatch, TRT, CUDA, CPU)
    config = _parse(
        f'instance_group [ {{ name: "g" kind: KIND_GPU }}, {{ name: "c" kind: KIND_CPU }} ]\n{TRT_ACCEL}'
    )
    plan = plan_instances(config, [CPU], gpus=[0])
    assert plan.slots == [InstanceSlot("g", 0, 0), InstanceSlot("c", None, 1), InstanceSlot("c", None, 1)]
    assert _names(plan.providers_of(plan.slots[0])) == [TRT, CUDA, CPU]
    assert plan.providers_of(plan.slots[1]) == [(CPU, {})] == plan.cpu_providers
    assert _names(plan.providers) == [TRT, CUDA, CPU]


def test_the_implicit_instance_asks_the_config_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    """No instance_group: its CPU-placed instance asks TensorRT (the config's), not the CPU group's list."""
    _available(monkeypatch, TRT, CUDA, CPU)
    plan = plan_instances(_parse(TRT_ACCEL), [CPU], gpus=[])
    # No GPU visible: Triton's CPU count for onnxruntime, 2, named after the model.
    assert plan.slots == [InstanceSlot("m", None, 0)] * 2 and _names(plan.cpu_providers) == [CPU]
    assert _names(plan.providers_of(plan.slots[0])) == [TRT, CUDA, CPU]


def test_a_gpu_groups_instance_without_a_gpu_asks_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """A KIND_GPU group on a machine without a visible GPU still asks CUDA, not the CPU groups' list."""
    _available(monkeypatch, CUDA, CPU)
    plan = plan_instances(_parse("instance_group [ { kind: KIND_GPU } ]"), [CPU], gpus=[])
    assert plan.slots == [InstanceSlot("m_0", None, 0)] and _names(plan.cpu_providers) == [CPU]
    assert _names(plan.providers_of(plan.slots[0])) == [CUDA, CPU]


def test_a_cpu_group_gets_neither_the_accelerator_nor_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """KIND_CPU instances' providers skip the GPU accelerator and the GPU group's CUDA."""
    _available(monkeypatch, TRT, CUDA, CPU)
    plain = plan_instances(_parse("instance_group [ { kind: KIND_CPU } ]"), [CPU], gpus=[0])
    assert plain.cpu_providers == [(CPU, {})]
    accelerated = plan_instances(
        _parse(f"instance_group [ {{ kind: KIND_CPU }} ]\n{TRT_ACCEL}"), [CPU], gpus=[0]
    )
    assert accelerated.cpu_providers == [(CPU, {})]
    assert accelerated.providers_of(accelerated.slots[0]) == [(CPU, {})]


# instance_device and describe


def test_instance_device_reads_the_sessions_device_else_cpu() -> None:
    """A session's `device` as it is; an object without one runs on the CPU ('cpu')."""
    assert instance_device(SimpleNamespace(device="cuda:1")) == "cuda:1"
    assert instance_device(object()) == "cpu"


def test_describe_without_sessions_counts_each_group_per_device() -> None:
    """The planned devices: 'g x2 (cuda:0)', one line part per group and device, in order."""
    slots = [InstanceSlot("g", 0), InstanceSlot("g", 0), InstanceSlot("g", 1), InstanceSlot("c", None, 1)]
    assert describe(slots) == "g x2 (cuda:0), g x1 (cuda:1), c x1 (cpu)"


def test_describe_reads_where_and_how_each_session_runs() -> None:
    """IO binding, CUDA graphs, padded batches and a shared session are said; a fallen back GPU says cpu."""
    padded = SimpleNamespace(device="cuda:0", io=SimpleNamespace(mode="bound", padded=True))
    graphs = SimpleNamespace(device="cuda:0", io=SimpleNamespace(mode="fixed"), hosted=True)
    fallen = SimpleNamespace(device="cpu")  # no io, no hosted: a plain CPU session
    slots = [InstanceSlot("g", 0)] * 3
    assert describe(slots, [padded, graphs, fallen]) == (
        "g x1 (cuda:0, IO binding, padded batches), "
        "g x1 (cuda:0, IO binding, CUDA graphs, shared session), g x1 (cpu)"
    )


def test_describe_with_fewer_sessions_than_slots_uses_the_plan_for_the_rest() -> None:
    """Sessions made so far: the later slots are described from their planned device."""
    slots = [InstanceSlot("g", 0), InstanceSlot("g", 0), InstanceSlot("c", None, 1)]
    assert describe(slots, [SimpleNamespace(device="cuda:0")]) == "g x2 (cuda:0), c x1 (cpu)"


def test_describe_of_a_cpu_session_in_plain_mode() -> None:
    """A session whose IO runs plain batches adds nothing to its device."""
    plain = SimpleNamespace(device="cpu", io=SimpleNamespace(mode="plain", padded=False), hosted=False)
    assert describe([InstanceSlot("c", None)], [plain]) == "c x1 (cpu)"


# the engine cache folder


def test_the_engine_cache_folder_is_made_with_its_parents(tmp_path: Path) -> None:
    """TensorRT among the providers: <root>/<model>/<version> is made, parents too, and returned."""
    cache = tmp_path / "tensorrt" / "m" / "1"
    assert _engine_cache(cache, [(TRT, {}), (CPU, {})]) == (cache, []) and cache.is_dir()


def test_an_existing_engine_cache_folder_is_used(tmp_path: Path) -> None:
    """A restart finds its folder there: it is used, not refused."""
    assert _engine_cache(tmp_path, [(TRT, {})]) == (tmp_path, [])


def test_an_engine_cache_folder_that_cannot_be_made_is_noted(tmp_path: Path) -> None:
    """A file in the way: no cache, and the load warning says the engines are rebuilt."""
    (tmp_path / "file").write_text("")
    cache = tmp_path / "file" / "1"
    assert _engine_cache(cache, [(TRT, {})]) == (
        None,
        [f"TensorRT engine cache (cannot make {cache}: Not a directory; engines are rebuilt)"],
    )
    assert _engine_cache(tmp_path / "x", [(CUDA, {}), (CPU, {})]) == (None, [])
    assert not (tmp_path / "x").exists()


def test_the_plan_puts_the_engine_cache_on_every_tensorrt_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GPU slot, planned providers and a CPU instance the setting gives TensorRT: all use the cache."""
    _available(monkeypatch, TRT, CUDA, CPU)
    config = _parse(
        f'instance_group [ {{ name: "g" kind: KIND_GPU }}, {{ name: "c" kind: KIND_CPU }} ]\n{TRT_ACCEL}'
    )
    cache = tmp_path / "tensorrt" / "m" / "1"
    plan = plan_instances(config, [TRT, CPU], engine_cache=cache, gpus=[0])
    assert plan.engine_cache == cache and cache.is_dir() and plan.unapplied == []
    assert plan.defaults == (TRT, CPU)
    for providers in (plan.providers_of(plan.slots[0]), plan.providers, plan.cpu_providers):
        assert providers is not None and providers[0][0] == TRT
        assert providers[0][1]["trt_engine_cache_path"] == str(cache)
        assert providers[0][1]["trt_engine_cache_enable"] == "1"


def test_no_engine_cache_when_every_instance_is_a_cpu_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KIND_CPU only: TensorRT does not run, so no folder is made despite the accelerator."""
    _available(monkeypatch, TRT, CUDA, CPU)
    cache = tmp_path / "tensorrt" / "m" / "1"
    config = _parse(f"instance_group [ {{ kind: KIND_CPU }} ]\n{TRT_ACCEL}")
    plan = plan_instances(config, [CPU], engine_cache=cache, gpus=[0])
    assert plan.engine_cache is None and not cache.exists()


# plan_instances' notes


def test_the_plan_makes_no_implicit_gpu_instances_unless_asked() -> None:
    """implicit_on_gpus defaults to False: without instance_group, the setting's CPU instances (2,
    Triton's onnxruntime count) on a GPU machine."""
    assert plan_instances(_parse(""), [CPU], gpus=[0]).slots == [InstanceSlot("m", None, 0)] * 2


def test_missing_gpu_and_cpu_accelerators_are_named_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU group and a CPU group: the one note names the GPU accelerator's and the CPU one's provider."""
    _available(monkeypatch, CPU)
    config = _parse(
        "instance_group [ { kind: KIND_GPU }, { kind: KIND_CPU } ]\n"
        'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "cuda" } ] '
        'cpu_execution_accelerator [ { name: "openvino" } ] } }'
    )
    assert plan_instances(config, [CPU], gpus=[]).unapplied == [
        f"execution providers ['{CUDA}', '{OPENVINO}'] (not in this onnxruntime build: CPU instead)",
        "instance_group 'm_0' KIND_GPU (no GPU: 1 CPU instances, served as KIND_CPU)",
    ]


def test_cpu_groups_missing_openvino_and_an_unused_gpu_accelerator_are_both_noted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every instance KIND_CPU: the missing CPU accelerator's note stays beside the unused GPU one."""
    _available(monkeypatch, CPU)
    config = _parse(
        "instance_group [ { kind: KIND_CPU } ]\n"
        'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" } ] '
        'cpu_execution_accelerator [ { name: "openvino" } ] } }'
    )
    assert plan_instances(config, [CPU], gpus=[0]).unapplied == [
        f"execution providers ['{OPENVINO}'] (not in this onnxruntime build: CPU instead)",
        "optimization.execution_accelerators.gpu_execution_accelerator ['tensorrt'] (unused: every "
        "instance is KIND_CPU, and GPU accelerators apply to GPU instances only)",
    ]


def test_a_gpu_group_with_its_accelerator_has_nothing_to_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT on a GPU group, in a GPU build: no 'unused GPU accelerator' note."""
    _available(monkeypatch, TRT, CUDA, CPU)
    config = _parse(f"instance_group [ {{ kind: KIND_GPU }} ]\n{TRT_ACCEL}")
    assert plan_instances(config, [CPU], gpus=[0]).unapplied == []


def test_cuda_graphs_of_the_implicit_instance_the_setting_puts_on_cuda_are_not_warned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The setting names CUDA: the implicit instance runs on CUDA, so graphs are not 'unused'."""
    _available(monkeypatch, CUDA, CPU)
    config = _parse(
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        "optimization { cuda { graphs: true } }"
    )
    plan = plan_instances(config, [CUDA, CPU], gpus=[0])
    # On CUDA: Triton's GPU count, one instance (the CPU count, 2, where the setting names the CPU).
    assert plan.slots == [InstanceSlot("m", None, 0)] and _names(plan.providers) == [CUDA, CPU]
    assert plan.unapplied == []


# _unused_padding


def test_padding_keys_without_a_gpu_are_not_this_notes() -> None:
    """No visible GPU: backend_parameters says so, not the padding note."""
    assert _unused_padding(_parse(PADDED), False, False, CPU, None) == []
    assert _unused_padding(_parse("max_batch_size: 16\ndynamic_batching { }"), True, False, CPU, None) == []


@pytest.mark.parametrize(
    ("on_gpu", "first", "io_binding", "why"),
    [
        (False, CPU, None, "every instance runs on the CPU"),
        (True, TRT, None, "the instances run on TensorRT, whose engines hold a profile of batch sizes"),
        (True, CUDA, False, "io_binding is off: batches go through session.run"),
    ],
)
def test_the_padding_note_says_why_no_instance_pads(
    on_gpu: bool, first: str, io_binding: bool | None, why: str
) -> None:
    """The whole note an operator reads, for each reason no instance pads its batches."""
    assert _unused_padding(_parse(PADDED), True, on_gpu, first, io_binding) == [
        f"parameters ['gpu_batch_padding'] (padding a CUDA instance's batches; {why})"
    ]
