"""Which instances a model's instance_group list asks for, as Triton counts them.

Triton makes `count` instances per group, and for a GPU group `count` per listed GPU (`gpus`
empty: every GPU). Each instance carries its group's name (Triton's default: `<model>_<index>`)
and its device, for the load log. Without a GPU, GPU groups' instances run on the CPU, with one
line in the model's load warning. The providers get the GPU defaults the config implies (TensorRT
engine cache and profile, CUDA graphs: server/backends/tensorrt_options.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from protos import model_config_pb2 as mc
from server.backends.onnxruntime_backend import CPU, CUDA, TENSORRT, Provider
from server.backends.provider_choice import providers_for
from server.backends.tensorrt_options import cuda_field_notes, gpu_provider_options
from server.models.config_backend import backend_parameters


def gpu_available() -> bool:
    """Whether this onnxruntime build can run CUDA (a CPU build cannot; a GPU build may still
    find no device, which the instance's own load warning then says)."""
    return "CUDAExecutionProvider" in ort.get_available_providers()


@dataclass(frozen=True)
class InstanceSlot:
    group: str  # the instance group's name
    device_id: int | None  # the GPU for a GPU instance, else None


def instance_slots(config: mc.ModelConfig, *, has_gpu: bool) -> tuple[list[InstanceSlot], list[str]]:
    """The instances to make, in order, and what of the groups cannot apply here."""
    slots: list[InstanceSlot] = []
    unapplied: list[str] = []
    for index, group in enumerate(config.instance_group):
        name = group.name or f"{config.name}_{index}"
        count = max(group.count, 1)
        gpus = list(group.gpus) or [0]
        if group.kind == mc.ModelInstanceGroup.KIND_GPU and not has_gpu:
            unapplied.append(
                f"instance_group '{name}' KIND_GPU gpus {gpus} (no GPU: {count * len(gpus)} CPU instances)"
            )
            slots.extend(InstanceSlot(name, None) for _ in gpus for _ in range(count))
        elif group.kind == mc.ModelInstanceGroup.KIND_GPU:
            slots.extend(InstanceSlot(name, gpu) for gpu in gpus for _ in range(count))
        else:
            slots.extend(InstanceSlot(name, None) for _ in range(count))
    return slots or [InstanceSlot(f"{config.name}_0", None)], unapplied


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
        counts[(slot.group, label)] = counts.get((slot.group, label), 0) + 1
    return ", ".join(f"{group} x{n} ({label})" for (group, label), n in counts.items())


@dataclass(frozen=True)
class InstancePlan:
    """A model version's instances: slots in order, providers (per device) and what is warned."""

    slots: list[InstanceSlot]
    providers: list[Provider]  # for a CPU instance; a GPU one's name its device
    unapplied: list[str]  # for the model's one load warning (config_fields.warn_unapplied)
    config: mc.ModelConfig
    defaults: tuple[str | tuple[str, dict[str, str]], ...]
    engine_cache: Path | None = None  # TensorRT's engines (tensorrt_options.py), when it runs

    def providers_of(self, slot: InstanceSlot) -> list[Provider]:
        if slot.device_id is None:
            return self.providers
        chosen = usable_providers(providers_for(self.config, self.defaults, device_id=slot.device_id))[0]
        return gpu_provider_options(self.config, chosen, engine_cache=self.engine_cache)


def _engine_cache(directory: Path | None, providers: Sequence[Provider]) -> tuple[Path | None, list[str]]:
    """The engine cache directory, made, when TensorRT is among `providers`; else None (and why)."""
    if directory is None or all(name != TENSORRT for name, _ in providers):
        return None, []
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return None, [f"TensorRT engine cache (cannot make {directory}: {err.strerror}; engines are rebuilt)"]
    return directory, []


def plan_instances(
    config: mc.ModelConfig,
    defaults: Sequence[str | tuple[str, dict[str, str]]],
    *,
    engine_cache: Path | None = None,
) -> InstancePlan:
    """The instances of `config` on this machine (`defaults`: the server's execution providers;
    `engine_cache`: this version's directory for TensorRT engines, made only if TensorRT runs)."""
    has_gpu = gpu_available()
    providers, missing = usable_providers(providers_for(config, defaults))
    # Missing providers the setting names are the server's to say, once (setting_note), not this model's.
    unapplied = missing if asks_providers(config) else []
    slots, groups = instance_slots(config, has_gpu=has_gpu)
    unapplied += groups + list(backend_parameters(config, has_gpu=has_gpu).unapplied)
    cache, cache_notes = _engine_cache(engine_cache, providers)
    on_gpu = any(s.device_id is not None for s in slots) or providers[0][0] in (CUDA, TENSORRT)
    unapplied += cache_notes + cuda_field_notes(config, on_gpu)
    tuned = gpu_provider_options(config, providers, engine_cache=cache)
    return InstancePlan(slots, tuned, unapplied, config, tuple(defaults), cache)
