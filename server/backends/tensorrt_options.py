"""GPU provider options a model's config implies beyond its accelerator parameters: the TensorRT
engine cache, optimization profiles and CUDA graphs. Pure functions of the config (tested without a
GPU); server/backends/instance_groups.py applies them to the providers an instance asks for.

- Engine and timing caches in a directory per model version (the server's cache directory, not the
  repository: a repository may be read-only, and in poll mode a write under a model's directory
  would reload it), so a restart loads the engines TensorRT built instead of building them again.
- One optimization profile from the config: batch 1 to max_batch_size, optimised for the largest
  preferred batch size (else max_batch_size), with the inputs' fixed dims (after `reshape`). A
  model whose other dims vary, or with inputs the config does not list (sequence state, ragged and
  batch inputs), gets none: TensorRT then builds for the shapes it meets.
- CUDA graphs (`optimization.cuda.graphs: true`) where onnxruntime can replay them: every shape fixed
  (max_batch_size 0, no variable dims), fixed-size types, every input fed each run.
The config's own accelerator parameters always win over these defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from batcher.types import Array
from protos import model_config_pb2 as mc
from server import datatypes
from server.backends.onnxruntime_backend import CPU, CUDA, TENSORRT, Provider
from server.models.config_cuda import ort_cuda_values

_PROFILE_KEYS = ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")
_ODD_TYPES = {mc.TYPE_STRING: "string", mc.TYPE_BF16: "BF16"}


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimization profile: each input's model shape at min, opt and max batch."""

    batch_sizes: tuple[int, int, int]  # (min, opt, max)
    dims: dict[str, tuple[int, ...]]  # model dims after the batch dimension

    def options(self) -> dict[str, str]:
        return {
            key: ",".join(f"{name}:{'x'.join(map(str, (batch, *dims)))}" for name, dims in self.dims.items())
            for key, batch in zip(_PROFILE_KEYS, self.batch_sizes, strict=True)
        }


def _model_dims(tensor: mc.ModelInput | mc.ModelOutput) -> tuple[int, ...]:
    return tuple(tensor.reshape.shape) if tensor.HasField("reshape") else tuple(tensor.dims)


def _unlisted_inputs(config: mc.ModelConfig) -> str | None:
    """Why the graph may take inputs the config does not list with fixed dims, or None."""
    if config.HasField("sequence_batching"):
        return "sequence_batching feeds state and control inputs"
    if config.batch_input:
        return "batch_input tensors are made per batch"
    ragged = [t.name for t in config.input if t.allow_ragged_batch]
    return f"input '{ragged[0]}' is ragged" if ragged else None


def profile(config: mc.ModelConfig) -> tuple[Profile | None, str]:
    """The config's optimization profile, or None and why not ("" when the model needs none)."""
    if config.max_batch_size <= 0:
        return None, ""  # no batch dimension: TensorRT builds for the config's fixed shapes
    unlisted = _unlisted_inputs(config)
    if unlisted is not None:
        return None, unlisted
    dims: dict[str, tuple[int, ...]] = {}
    for tensor in config.input:
        shape = _model_dims(tensor)
        if any(d < 0 for d in shape):
            return None, f"input '{tensor.name}' has variable dims {list(shape)}"
        if any(c in tensor.name for c in ",:"):
            return None, f"input name '{tensor.name}' cannot be written in a profile (',' or ':')"
        dims[tensor.name] = shape
    top = config.max_batch_size
    preferred = [p for p in config.dynamic_batching.preferred_batch_size if 0 < p <= top]
    return Profile((1, max(preferred, default=top), top), dims), ""


def graph_blockers(config: mc.ModelConfig) -> list[str]:
    """Every reason onnxruntime cannot replay CUDA graphs of this model (for each kind of reason,
    the first tensor it applies to); empty when it can."""
    why: list[str] = []
    if config.max_batch_size > 0:
        why.append(
            f"it batches (max_batch_size {config.max_batch_size}): the batch dimension varies, and "
            "onnxruntime's CUDA graphs replay fixed shapes"
        )
    unlisted = _unlisted_inputs(config)
    if unlisted is not None:
        why.append(unlisted)
    tensors = [("input", t) for t in config.input] + [("output", t) for t in config.output]
    variable = [(kind, t) for kind, t in tensors if any(d < 0 for d in _model_dims(t))]
    if variable:
        kind, tensor = variable[0]
        why.append(f"{kind} '{tensor.name}' has variable dims {list(_model_dims(tensor))}")
    odd = [(kind, t) for kind, t in tensors if t.data_type in _ODD_TYPES]
    if odd:
        kind, tensor = odd[0]
        why.append(
            f"{kind} '{tensor.name}' is {_ODD_TYPES[tensor.data_type]}, which is not kept in a device buffer"
        )
    optional = [t.name for t in config.input if t.optional]
    if optional:
        why.append(f"input '{optional[0]}' is optional: a graph needs every input each run")
    return why


def graph_blocker(config: mc.ModelConfig) -> str | None:
    """Why onnxruntime cannot replay CUDA graphs of this model (every reason), or None when it can."""
    return "; ".join(graph_blockers(config)) or None


def cuda_field_notes(config: mc.ModelConfig, on_gpu: bool) -> list[str]:
    """For the model's one load warning: the optimization.cuda fields that do not apply here."""
    cuda = config.optimization.cuda
    notes: list[str] = []
    if cuda.graphs:
        # Off a GPU the model's own blockers are named too: a GPU instance alone would not be enough.
        where = [] if on_gpu else ["no CUDA or TensorRT instance: it runs on the CPU"]
        why = where + graph_blockers(config)
        if why:
            notes.append(f"optimization.cuda.graphs (CUDA graphs not used: {'; '.join(why)})")
    for field, what in (
        ("busy_wait_events", "the TensorRT backend's event polling"),
        ("output_copy_stream", "the TensorRT backend's separate output copy stream"),
    ):
        if getattr(cuda, field):
            notes.append(f"optimization.cuda.{field} ({what}; onnxruntime has none)")
    if cuda.graph_spec:
        notes.append("optimization.cuda.graph_spec (per-shape graphs of the TensorRT backend; not built)")
    return notes


def engine_cache_dir(root: Path, model: str, version: str) -> Path:
    """Where a model version's TensorRT engines and timing cache live: `<root>/<model>/<version>`."""
    return root / model / version


def gpu_provider_options(
    config: mc.ModelConfig, providers: Sequence[Provider], *, engine_cache: Path | None
) -> list[Provider]:
    """`providers` with the defaults the config implies added to the TensorRT and CUDA entries
    (`engine_cache`: the directory for engines, None for none); the config's own keys win."""
    graphs = config.optimization.cuda.graphs and graph_blocker(config) is None
    found, _ = profile(config)
    first = providers[0][0] if providers else CPU
    out: list[Provider] = []
    for name, opts in providers:
        options = dict(opts)
        if name == TENSORRT:
            defaults: dict[str, str] = {}
            if engine_cache is not None and "trt_engine_cache_enable" not in options:
                defaults = {"trt_engine_cache_enable": "1", "trt_engine_cache_path": str(engine_cache)}
                defaults |= {"trt_timing_cache_enable": "1", "trt_timing_cache_path": str(engine_cache)}
            if found is not None and not any(key in options for key in _PROFILE_KEYS):
                defaults |= found.options()
            if graphs:
                defaults["trt_cuda_graph_enable"] = "1"
            options = {**defaults, **options}
        elif name == CUDA:
            # Triton's numbers and boolean spellings in onnxruntime's form (config_cuda.py).
            options = ort_cuda_values(options)
            if name == first and graphs:  # not behind TensorRT: its nodes are not all CUDA's
                options = {"enable_cuda_graph": "1", **options}
        out.append((name, options))
    return out


def engine_build_feeds(config: mc.ModelConfig) -> list[dict[str, Array]]:
    """Zero batches (wire shapes) that make TensorRT build its engines before the model is ready:
    one per distinct batch size of the profile (min, opt, max), or one run of a model without a
    batch dimension; none when the shapes are not known ahead (see `profile`)."""
    if config.max_batch_size > 0:
        found, _ = profile(config)
        sizes = sorted(set(found.batch_sizes)) if found is not None else []
    else:
        fixed = _unlisted_inputs(config) is None and all(d >= 0 for t in config.input for d in t.dims)
        sizes = [0] if fixed else []
    if any(t.data_type == mc.TYPE_STRING for t in config.input):
        return []  # TensorRT takes no strings: such a model's engines cover other nodes only
    feeds: list[dict[str, Array]] = []
    for size in sizes:
        lead = (size,) if size else ()
        feeds.append(
            {
                t.name: np.zeros((*lead, *t.dims), dtype=datatypes.BY_CONFIG[t.data_type].numpy)
                for t in config.input
            }
        )
    return feeds
