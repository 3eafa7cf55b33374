"""Which instances a model's instance_group list asks for, as Triton counts them.

Triton makes `count` instances per group, and for a GPU group `count` per listed GPU (`gpus`
empty: every visible GPU); KIND_AUTO is KIND_GPU where a GPU is visible (and every GPU it lists
is), else KIND_CPU; a listed GPU that is not visible is refused. A group without `count` gets
Triton's default once its kind is resolved (config_backend.default_instance_count: 2 on the CPU
for onnxruntime). Each instance carries its group's name (Triton's default: `<model>_<index>`, and
the model's name for the group a config without instance_group gets) and its device, for the load
log. Without a GPU, GPU groups' instances run on the CPU, with one line in the model's load
warning; ModelConfig then shows them as the KIND_CPU instances they are (served_groups). A GPU
accelerator applies to GPU instances only. The providers get the GPU defaults the config implies
(TensorRT engine cache and profile, CUDA graphs: server/backends/tensorrt_options.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from protos import model_config_pb2 as mc
from server.backends.gpu_devices import visible_gpus
from server.backends.onnxruntime_backend import CPU, CUDA, TENSORRT, Provider
from server.backends.provider_choice import providers_for
from server.backends.tensorrt_options import cuda_field_notes, gpu_provider_options
from server.models.config_backend import (
    MAX_INSTANCES,
    PADDING_KEYS,
    backend_parameters,
    default_instance_count,
    paddable,
)
from server.models.config_errors import ConfigError

_GPU, _AUTO = mc.ModelInstanceGroup.KIND_GPU, mc.ModelInstanceGroup.KIND_AUTO


@dataclass(frozen=True)
class InstanceSlot:
    group: str  # the instance group's name
    device_id: int | None  # the GPU for a GPU instance, else None
    index: int = 0  # the group's place in instance_group (0 for the implicit one)


def _group_gpus(
    config: mc.ModelConfig, group: mc.ModelInstanceGroup, name: str, gpus: Sequence[int]
) -> list[int]:
    """The GPUs a group's instances go on (empty: the CPU), given the visible `gpus`."""
    listed = list(group.gpus)
    hidden = [g for g in listed if g not in gpus]
    if group.kind == _AUTO:
        return [] if not gpus or hidden else listed or list(gpus)
    if group.kind != _GPU or not gpus:
        return []
    if hidden:  # Triton refuses a GPU it cannot see
        raise ConfigError(
            f"model '{config.name}': instance_group '{name}' KIND_GPU gpus {listed} names GPU "
            f"{hidden[0]}, which is not visible here (visible GPUs: {list(gpus)}; CUDA_VISIBLE_DEVICES "
            "and the driver decide)"
        )
    return listed or list(gpus)


def instance_slots(
    config: mc.ModelConfig,
    *,
    gpus: Sequence[int],
    implicit_on_gpus: bool = False,
    implicit_gpu_provider: bool = False,
) -> tuple[list[InstanceSlot], list[str]]:
    """The instances to make, in order, and what of the groups cannot apply here. `gpus`: the
    GPU ids visible to this process (gpu_devices.visible_gpus; empty: none). `implicit_on_gpus`:
    a config without instance_group gets Triton's default, one instance on each visible GPU (else
    its CPU count); False where the execution_providers setting was given, which then decides:
    `implicit_gpu_provider` (its first provider, or the config's accelerator, CUDA or TensorRT, a
    GPU visible) makes it Triton's GPU count, 1, else the CPU count. Either way that group is
    named after the model, as Triton's."""
    if not config.instance_group:
        if implicit_on_gpus and gpus:
            return [InstanceSlot(config.name, gpu, 0) for gpu in gpus], []
        n = default_instance_count(config, on_cpu=not implicit_gpu_provider)
        return [InstanceSlot(config.name, None, 0) for _ in range(n)], []
    slots: list[InstanceSlot] = []
    unapplied: list[str] = []
    for index, group in enumerate(config.instance_group):
        name = group.name or f"{config.name}_{index}"
        on = _group_gpus(config, group, name, gpus)
        # Triton's default count follows the resolved kind: a KIND_GPU group run without a GPU
        # keeps its per-GPU 1, a KIND_AUTO one on the CPU is a CPU group.
        count = group.count or default_instance_count(config, on_cpu=not on and group.kind != _GPU)
        if on:
            slots.extend(InstanceSlot(name, gpu, index) for gpu in on for _ in range(count))
            continue
        listed = f" gpus {list(group.gpus)}" if group.gpus else ""
        if group.kind == _GPU:  # `count` per listed GPU, as it would have run with them
            n = count * max(len(group.gpus), 1)
            unapplied.append(
                f"instance_group '{name}' KIND_GPU{listed} (no GPU: {n} CPU instances, served as KIND_CPU)"
            )
        else:
            n = count
            if group.kind == _AUTO and group.gpus:
                why = "not all visible" if gpus else "no GPU"
                unapplied.append(
                    f"instance_group '{name}' KIND_AUTO{listed} ({why}: KIND_CPU, {n} instances)"
                )
        slots.extend(InstanceSlot(name, None, index) for _ in range(n))
    # `count` on every visible GPU, or KIND_AUTO's CPU default: the config's own check saw 1 each.
    if len(slots) > MAX_INSTANCES:
        raise ConfigError(
            f"model '{config.name}': instance_group makes {len(slots)} instances here ({len(gpus)} visible "
            f"GPUs); at most {MAX_INSTANCES} per model"
        )
    return slots, unapplied


def served_groups(
    config: mc.ModelConfig, slots: Sequence[InstanceSlot], devices: Sequence[str]
) -> list[mc.ModelInstanceGroup]:
    """The instance groups ModelConfig shows: each as its instances actually run (`devices`, the
    slots' `cpu` / `cuda:N`), as Triton's served config is: KIND_AUTO resolved, a GPU group's
    `gpus` filled in, and a GPU group whose instances all run on the CPU (no GPU, or no CUDA
    provider) shown as KIND_CPU with its instance count, since tools read ModelConfig to learn
    where a model runs. `config` has its groups filled in (the implicit one too)."""
    served: list[mc.ModelInstanceGroup] = []
    for index, group in enumerate(config.instance_group):
        mine = [(slot, device) for slot, device in zip(slots, devices, strict=False) if slot.index == index]
        on_gpu = sorted({int(d.split(":")[1]) for _, d in mine if d.startswith("cuda:")})
        shown = mc.ModelInstanceGroup()
        shown.CopyFrom(group)
        del shown.gpus[:]
        if not on_gpu:
            shown.kind = mc.ModelInstanceGroup.KIND_CPU
            shown.count = max(len(mine), 1)
        else:
            planned = sorted({s.device_id for s, _ in mine if s.device_id is not None})
            shown.kind = _GPU
            shown.gpus.extend(planned or on_gpu)
            shown.count = max(group.count, 1) if planned else max(len(mine) // len(on_gpu), 1)
        served.append(shown)
    return served


def usable_providers(providers: Sequence[Provider]) -> tuple[list[Provider], list[str]]:
    """`providers` without those this onnxruntime build lacks (CPU always stays), and a note for
    the model's one load warning, rather than a warning from every instance."""
    available = set(ort.get_available_providers())
    kept = [(name, opts) for name, opts in providers if name in available or name == CPU]
    missing = [name for name, _ in providers if name not in available and name != CPU]
    note = [f"execution providers {missing} (not in this onnxruntime build: CPU instead)"] if missing else []
    return kept, note


def asks_providers(config: mc.ModelConfig) -> bool:
    """Whether `config` chooses its providers (an accelerator, a KIND_GPU group); else the server's
    `execution_providers` setting does (providers_for)."""
    accel = config.optimization.execution_accelerators
    chosen = accel.gpu_execution_accelerator or accel.cpu_execution_accelerator
    return bool(chosen) or any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in config.instance_group)


def setting_note(defaults: Sequence[str | tuple[str, dict[str, str]]]) -> str | None:
    """The one start-up warning for the `execution_providers` setting's providers this build
    lacks; None when it has them all. Said once for the server, where each model's load warning
    had blamed its own config.pbtxt (which named no provider) for the server-wide setting."""
    names = [item if isinstance(item, str) else item[0] for item in defaults]
    kept, _ = usable_providers([(name, {}) for name in names])
    missing = [name for name in names if name not in {k for k, _ in kept}]
    if not missing:
        return None
    instead = [name for name, _ in kept if name != CPU] or ["CPU"]
    return (
        f"the execution_providers setting (--execution-providers, SLUICEWAY_EXECUTION_PROVIDERS) "
        f"names {missing}, not in this onnxruntime build: models whose config names no provider "
        f"run on {', '.join(instead)} instead"
    )


def instance_device(session: object) -> str:
    """Where an instance runs: an onnxruntime session's device (`cpu`, `cuda:0`), else `cpu`."""
    return str(getattr(session, "device", "cpu"))


_IO_LABELS = {"bound": ", IO binding", "fixed": ", IO binding, CUDA graphs"}


def describe(slots: list[InstanceSlot], sessions: Sequence[object] | None = None) -> str:
    """For the load log: 'group x2 (cuda:0, IO binding), other x1 (cpu)'. `sessions`: the slots'
    instances, for where each actually runs (a GPU instance whose provider did not start runs on
    the CPU) and how it runs its batches (server/backends/io_binding.py)."""
    counts: dict[tuple[str, str], int] = {}
    for i, slot in enumerate(slots):
        label = "cpu" if slot.device_id is None else f"cuda:{slot.device_id}"
        if sessions is not None and i < len(sessions):
            io = getattr(sessions[i], "io", None)
            label = instance_device(sessions[i]) + _IO_LABELS.get(getattr(io, "mode", ""), "")
            label += ", padded batches" if getattr(io, "padded", False) else ""
            label += ", shared session" if getattr(sessions[i], "hosted", False) else ""
        counts[(slot.group, label)] = counts.get((slot.group, label), 0) + 1
    return ", ".join(f"{group} x{n} ({label})" for (group, label), n in counts.items())


@dataclass(frozen=True)
class InstancePlan:
    """A model version's instances: slots in order, providers (per device) and what is warned."""

    slots: list[InstanceSlot]
    providers: list[Provider]  # for a GPU group's instance without a GPU, or the implicit group's
    unapplied: list[str]  # for the model's one load warning (config_fields.warn_unapplied)
    config: mc.ModelConfig
    defaults: tuple[str | tuple[str, dict[str, str]], ...]
    engine_cache: Path | None = None  # TensorRT's engines (tensorrt_options.py), when it runs
    cpu_providers: list[Provider] | None = None  # a KIND_CPU (or CPU-resolved KIND_AUTO) instance's

    def providers_of(self, slot: InstanceSlot) -> list[Provider]:
        if slot.device_id is None:
            cpu = self.cpu_providers is not None and cpu_group(self.config, slot)
            return self.cpu_providers if cpu and self.cpu_providers is not None else self.providers
        chosen = providers_for(self.config, self.defaults, device_id=slot.device_id, gpu_instance=True)
        return gpu_provider_options(self.config, usable_providers(chosen)[0], engine_cache=self.engine_cache)


def cpu_group(config: mc.ModelConfig, slot: InstanceSlot) -> bool:
    """Whether `slot` (not on a GPU) is of a listed group that is not KIND_GPU: a CPU instance,
    which the GPU accelerators do not apply to (Triton's onnxruntime backend)."""
    groups = config.instance_group
    return slot.index < len(groups) and groups[slot.index].kind != _GPU


def _engine_cache(directory: Path | None, providers: Sequence[Provider]) -> tuple[Path | None, list[str]]:
    """The engine cache directory, made, when TensorRT is among `providers`; else None (and why)."""
    if directory is None or all(name != TENSORRT for name, _ in providers):
        return None, []
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return None, [f"TensorRT engine cache (cannot make {directory}: {err.strerror}; engines are rebuilt)"]
    return directory, []


def _unused_gpu_accelerators(config: mc.ModelConfig) -> list[str]:
    names = [entry.name for entry in config.optimization.execution_accelerators.gpu_execution_accelerator]
    return [
        f"optimization.execution_accelerators.gpu_execution_accelerator {names} (unused: every "
        "instance is KIND_CPU, and GPU accelerators apply to GPU instances only)"
    ] * bool(names)


def _unused_padding(
    config: mc.ModelConfig, visible: bool, on_gpu: bool, first: str, io_binding: bool | None
) -> list[str]:
    """The padding keys a config sets where a GPU is visible and its batches are plain rows, yet no
    instance pads them (batch_padding.py pads CUDA instances' batches bound through IO binding;
    `io_binding`: the parameter as backend_parameters read it). Without a GPU, or without such
    batches, backend_parameters says so."""
    keys = sorted(k for k in PADDING_KEYS if k in config.parameters)
    if not (keys and visible and paddable(config)):
        return []
    if not on_gpu:
        why = "every instance runs on the CPU"
    elif first == TENSORRT:
        why = "the instances run on TensorRT, whose engines hold a profile of batch sizes"
    elif io_binding is False:
        why = "io_binding is off: batches go through session.run"
    else:
        return []
    return [f"parameters {keys} (padding a CUDA instance's batches; {why})"]


def plan_instances(
    config: mc.ModelConfig,
    defaults: Sequence[str | tuple[str, dict[str, str]]],
    *,
    engine_cache: Path | None = None,
    gpus: Sequence[int] | None = None,
    implicit_on_gpus: bool = False,
) -> InstancePlan:
    """The instances of `config` on this machine (`defaults`: the server's execution providers;
    `engine_cache`: this version's directory for TensorRT engines, made only if TensorRT runs;
    `gpus`: the visible GPU ids, found here when None; `implicit_on_gpus`: instance_slots')."""
    visible = visible_gpus(ort.get_available_providers()) if gpus is None else tuple(gpus)
    # The implicit group's, and a GPU group's instances without a GPU: all the config names.
    named, named_cpu = providers_for(config, defaults), providers_for(config, defaults, gpu_instance=False)
    providers, cpu_providers = usable_providers(named)[0], usable_providers(named_cpu)[0]
    gpu_provider = bool(visible) and providers[0][0] in (CUDA, TENSORRT)
    slots, groups = instance_slots(
        config, gpus=visible, implicit_on_gpus=implicit_on_gpus, implicit_gpu_provider=gpu_provider
    )
    cpu = [cpu_group(config, s) for s in slots if s.device_id is None]
    on_gpus = any(s.device_id is not None for s in slots)
    elsewhere = on_gpus or not all(cpu)
    # Missing providers the setting names are the server's to say, once (setting_note), not this model's.
    asked: list[Provider] = list(named) if elsewhere and asks_providers(config) else []
    if any(cpu) and config.optimization.execution_accelerators.cpu_execution_accelerator:
        asked += named_cpu
    unapplied = usable_providers(list(dict(asked).items()))[1]
    if not elsewhere and config.instance_group:
        unapplied += _unused_gpu_accelerators(config)
    params = backend_parameters(config, has_gpu=bool(visible))
    unapplied += groups + list(params.unapplied)
    cache, cache_notes = _engine_cache(engine_cache, providers if elsewhere else [])
    on_gpu = on_gpus or (elsewhere and providers[0][0] in (CUDA, TENSORRT))
    unapplied += cache_notes + cuda_field_notes(config, on_gpu)
    unapplied += _unused_padding(
        config, bool(visible), on_gpu, providers[0][0], params.options.get("io_binding")
    )
    tuned = gpu_provider_options(config, providers, engine_cache=cache)
    cpu_tuned = gpu_provider_options(config, cpu_providers, engine_cache=cache)
    return InstancePlan(slots, tuned, unapplied, config, tuple(defaults), cache, cpu_tuned)
