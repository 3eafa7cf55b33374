"""Which instances a model's instance_group list asks for, as Triton counts them.

Triton makes `count` instances per group, and for a GPU group `count` per listed GPU (`gpus`
empty: every GPU). Each instance carries its group's name (Triton's default: `<model>_<index>`)
and its device, for the load log. Without a GPU, GPU groups' instances run on the CPU, with one
line in the model's load warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnxruntime as ort

from protos import model_config_pb2 as mc
from server.backends.onnxruntime_backend import CPU, Provider, providers_for
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


def describe(slots: list[InstanceSlot]) -> str:
    """For the load log: 'group x2 (GPU 0), other x1 (CPU)'."""
    counts: dict[tuple[str, int | None], int] = {}
    for slot in slots:
        counts[(slot.group, slot.device_id)] = counts.get((slot.group, slot.device_id), 0) + 1
    return ", ".join(
        f"{group} x{n} ({'CPU' if device is None else f'GPU {device}'})"
        for (group, device), n in counts.items()
    )


@dataclass(frozen=True)
class InstancePlan:
    """A model version's instances: slots in order, providers (per device) and what is warned."""

    slots: list[InstanceSlot]
    providers: list[Provider]  # for a CPU instance; a GPU one's name its device
    unapplied: list[str]  # for the model's one load warning (config_fields.warn_unapplied)
    config: mc.ModelConfig
    defaults: tuple[str | tuple[str, dict[str, str]], ...]

    def providers_of(self, slot: InstanceSlot) -> list[Provider]:
        if slot.device_id is None:
            return self.providers
        return usable_providers(providers_for(self.config, self.defaults, device_id=slot.device_id))[0]


def plan_instances(
    config: mc.ModelConfig, defaults: Sequence[str | tuple[str, dict[str, str]]]
) -> InstancePlan:
    """The instances of `config` on this machine (`defaults`: the server's execution providers)."""
    has_gpu = gpu_available()
    providers, unapplied = usable_providers(providers_for(config, defaults))
    slots, groups = instance_slots(config, has_gpu=has_gpu)
    unapplied += groups + list(backend_parameters(config, has_gpu=has_gpu).unapplied)
    return InstancePlan(slots, providers, unapplied, config, tuple(defaults))
