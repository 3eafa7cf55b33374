"""The execution providers one instance of a model asks onnxruntime for, from its config (Triton's
execution_accelerators and instance groups) and the server's defaults."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from protos import model_config_pb2 as mc
from server.backends.onnxruntime_backend import CPU, CUDA, OPENVINO, TENSORRT, Provider
from server.models.config import ConfigError
from server.models.config_backend import backend_parameters, tensorrt_options


def providers_for(
    config: mc.ModelConfig,
    default_providers: Sequence[str | tuple[str, Mapping[str, str]]],
    *,
    device_id: int | None = None,
    gpu_instance: bool | None = None,
) -> list[Provider]:
    """Execution providers for one instance of `config`, most preferred first; CPU always last.

    Order of precedence: the config's execution_accelerators, then a KIND_GPU instance group
    (CUDA), then the server's defaults. `device_id` defaults to the first GPU the groups name.
    `gpu_instance`: True for an instance on a GPU (CUDA when nothing else is named), False for a
    CPU instance (as in Triton, the GPU accelerators do not apply to it), None for either (the
    implicit group's, or a GPU group's without a GPU: CUDA where a group is KIND_GPU).
    """
    if device_id is None:
        gpus = [g for group in config.instance_group for g in group.gpus]
        device_id = gpus[0] if gpus else 0
    device = {"device_id": str(device_id)}
    cuda = {**device, **backend_parameters(config, has_gpu=True).cuda}  # Triton's deprecated CUDA keys
    accel = config.optimization.execution_accelerators
    chosen: list[Provider] = []
    # TensorRT first (it hands the nodes it cannot build to CUDA), then one CUDA provider with every
    # `cuda` entry's parameters, in whichever order the entries come: a `cuda` entry after a
    # `tensorrt` one had been dropped (its use_tf32 off ignored), one before it put CUDA first.
    trt: dict[str, str] | None = None
    cuda_asked = False
    for entry in accel.gpu_execution_accelerator if gpu_instance is not False else ():
        params = dict(entry.parameters)
        if entry.name == "tensorrt":
            trt = {**(trt or device), **tensorrt_options(params, f"model '{config.name}'")}
        elif entry.name == "cuda":
            cuda, cuda_asked = {**cuda, **params}, True
        else:
            raise ConfigError(
                f"model '{config.name}': gpu_execution_accelerator '{entry.name}' is not supported"
            )
    if trt is not None:
        chosen.append((TENSORRT, trt))
    if trt is not None or cuda_asked:
        chosen.append((CUDA, dict(cuda)))
    for entry in accel.cpu_execution_accelerator:
        if entry.name != "openvino":
            raise ConfigError(
                f"model '{config.name}': cpu_execution_accelerator '{entry.name}' is not supported"
            )
        chosen.append((OPENVINO, dict(entry.parameters)))
    gpu_group = any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in config.instance_group)
    if not chosen and (gpu_instance or (gpu_instance is None and gpu_group)):
        chosen.append((CUDA, dict(cuda)))
    if not chosen:
        for item in default_providers:
            name, opts = (item, {}) if isinstance(item, str) else (item[0], dict(item[1]))
            chosen.append((name, opts))
    unique: list[Provider] = []
    for name, opts in chosen:
        if name != CPU and all(name != seen for seen, _ in unique):
            unique.append((name, opts))
    cpu_opts = next((opts for name, opts in chosen if name == CPU), {})
    return [*unique, (CPU, cpu_opts)]
