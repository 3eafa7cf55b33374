"""Batches run through onnxruntime's IO binding: one copy to the device per batch, none per request.

`session.run` copies every input to the instance's device and every output back on each call;
with IO binding the batch's gathered inputs are bound once (staged in a pinned host buffer on
CUDA, see pinned.py), the outputs are bound to the instance's device, and they are read back once,
as the batch's arrays the batcher then scatters by rows. Three ways to run a batch:

- `plain`: `session.run` (the CPU default: there IO binding copies nothing less and costs about
  15 us a run more, measured on the demo MLP with scripts/io_binding_ab.py);
- `bound`: a fresh binding per run (the CUDA/TensorRT default; on the CPU with the model parameter
  `io_binding: "true"`, so that the same path runs and is tested without a GPU);
- `fixed`: persistent input and output buffers bound once, updated in place, for CUDA graphs,
  which replay the addresses they captured. Only for models whose every shape is fixed.

Models with string tensors always run `plain`: onnxruntime binds only fixed-size tensors. Asked for
with `io_binding: "true"`, the model's load warning names those tensors (string_binding_notes).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import onnxruntime as ort

from batcher.types import Array
from protos import model_config_pb2 as mc
from server import datatypes
from server.backends.batch_padding import PaddedRunner, Padding, batch_major, batch_rows, pad
from server.backends.bf16 import BF16, from_ort_value, to_ort_value
from server.backends.cudart import CudaUnavailable, load_cudart
from server.backends.gather_buffers import gather_staging
from server.backends.pinned import PinnedStaging, spec_of, staged_shape
from server.models.config_backend import parse_bool
from server.models.onnx_completion import OnnxTensor

CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# Provider options that turn CUDA graphs on (CUDA provider, TensorRT provider).
GRAPH_OPTIONS = ("enable_cuda_graph", "trt_cuda_graph_enable")
Mode = Literal["plain", "bound", "fixed"]
GRAPH_ID = "gpu_graph_id"  # onnxruntime's run option naming the CUDA graph a run captures or replays
# Pinned buffers per instance: its executor's runs in flight (1-2) and one run inline, with room.
MAX_RUNS = 4

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Device:
    """Where an instance runs: `cpu`, or `cuda` with the GPU's index."""

    kind: str
    index: int = 0

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"{self.kind}:{self.index}"


CPU_DEVICE = Device("cpu")


def session_device(providers: Sequence[str], options: Mapping[str, Mapping[str, str]]) -> Device:
    """The device of a session whose providers (get_providers, preferred first) and their options
    (get_provider_options) are these: the first provider's GPU for CUDA or TensorRT, else the CPU."""
    first = providers[0] if providers else ""
    if first not in CUDA_PROVIDERS:
        return CPU_DEVICE
    return Device("cuda", int(options.get(first, {}).get("device_id", "0") or 0))


def graphs_enabled(providers: Sequence[str], options: Mapping[str, Mapping[str, str]]) -> bool:
    """Whether the session's first provider captures CUDA graphs (a flag onnxruntime reads as 1/0)."""
    first = providers[0] if providers else ""
    opts = options.get(first, {})
    return first in CUDA_PROVIDERS and any(
        opts.get(key, "0").strip().lower() in ("1", "true") for key in GRAPH_OPTIONS
    )


def fixed_shapes(tensors: Sequence[OnnxTensor]) -> bool:
    """Whether every tensor has a known, fixed shape (no symbolic or unknown dimension)."""
    return all(isinstance(d, int) and d >= 0 for t in tensors for d in t.shape)


def io_mode(
    device: Device, requested: bool | None, *, graphs: bool, fixed: bool, strings: bool, bf16: bool
) -> Mode:
    """How an instance runs its batches; ValueError when CUDA graphs are on but cannot be served."""
    if graphs:
        if not fixed or strings or bf16:
            raise ValueError(
                "CUDA graphs replay fixed shapes and addresses: every input and output needs a fixed "
                "shape and a fixed-size type (turn enable_cuda_graph / trt_cuda_graph_enable off)"
            )
        return "fixed"
    if strings:
        return "plain"
    if requested is None:
        return "plain" if device.kind == "cpu" else "bound"
    return "bound" if requested else "plain"


def string_binding_notes(
    config: mc.ModelConfig, inputs: Sequence[OnnxTensor], outputs: Sequence[OnnxTensor]
) -> list[str]:
    """For the model's one load warning (config_fields.warn_unapplied): `io_binding: "true"` asked
    of a model with string tensors, whose batches run `plain` all the same (io_mode)."""
    asked = config.parameters["io_binding"].string_value if "io_binding" in config.parameters else ""
    if not parse_bool(asked):
        return []
    named = [
        f"{kind} '{tensor.name}'"
        for kind, tensors in (("input", inputs), ("output", outputs))
        for tensor in tensors
        if tensor.type == "tensor(string)"
    ]
    if not named:
        return []
    return [
        f"parameters 'io_binding' ({', '.join(named)} {'is a string' if len(named) == 1 else 'are strings'} "
        "(BYTES), which onnxruntime does not bind: batches run through session.run)"
    ]


class Runner(Protocol):
    def run(self, feed: Mapping[str, Array], run_options: ort.RunOptions) -> list[Array]: ...


class BoundRunner:
    """A fresh binding per batch (bindings are not thread-safe; an instance may run two at once).
    What can be decided once is decided here: a small model's run takes ~20 us, the same order as
    the Python around a binding."""

    def __init__(
        self,
        session: ort.InferenceSession,
        output_names: Sequence[str],
        device: Device,
        *,
        bf16_outputs: frozenset[str] = frozenset(),
        staging: PinnedStaging | None = None,
    ) -> None:
        self._session = session
        self._staging = staging
        # BF16 outputs are read back through the CPU: bf16.py copies them out by pointer.
        self._outputs = [
            (name, "cpu", 0)
            if device.kind == "cpu" or name in bf16_outputs
            else (name, device.kind, device.index)
            for name in output_names
        ]
        self._bf16_outputs = [name in bf16_outputs for name in output_names]

    def run(self, feed: Mapping[str, Array], run_options: ort.RunOptions) -> list[Array]:
        return self.run_padded(feed, run_options, None)

    def run_padded(
        self, feed: Mapping[str, Array], run_options: ort.RunOptions, pad_to: int | None
    ) -> list[Array]:
        """`pad_to`: every input grown to that many rows by repeating its last row, in the pinned
        copy where the batch is staged (one copy), else here (batch_padding.pad). A batch not yet
        gathered (batcher Gathered) is gathered into the pinned copy: its one host copy."""
        dtypes = {name: spec_of(feed, name)[1] for name in feed}
        bf16 = [name for name, dtype in dtypes.items() if dtype == BF16]
        if pad_to is not None and bf16:  # BF16 inputs are bound as OrtValues, not staged: padded first
            feed, pad_to = pad(feed, batch_rows(feed) or 0, pad_to), None
        binding = self._session.io_binding()
        kept = [to_ort_value(feed[name]) for name in bf16]  # BF16 inputs' OrtValues, alive until the run ends
        for name, value in zip(bf16, kept, strict=True):
            binding.bind_ortvalue_input(name, value)
        plain = [name for name in dtypes if name not in bf16]
        staged = nullcontext(None) if self._staging is None else self._staging.stage(feed, pad_to, plain)
        with staged as pointers:
            if pointers is None and pad_to is not None:  # not staged (no staging, too large, busy)
                feed = pad(feed, batch_rows(feed) or 0, pad_to)
                pad_to = None
            for name in plain:
                if pointers is None:  # not staged (see pinned.py): onnxruntime reads the gathered array
                    binding.bind_cpu_input(name, np.ascontiguousarray(feed[name]))  # no copy when contiguous
                else:  # the pinned copy: onnxruntime copies it to the device by DMA
                    shape = list(staged_shape(spec_of(feed, name)[0], pad_to))
                    binding.bind_input(name, "cpu", 0, dtypes[name].type, shape, pointers[name])
            return self._run(binding, run_options)

    def _run(self, binding: ort.IOBinding, run_options: ort.RunOptions) -> list[Array]:
        for name, kind, index in self._outputs:
            binding.bind_output(name, kind, index)
        self._session.run_with_iobinding(binding, run_options)
        # One read per output per batch: a CPU output's array views its OrtValue (kept alive by
        # it), a device output is copied to the host here, once, before the batcher scatters it.
        values = binding.get_outputs()
        return [
            from_ort_value(value) if bf16 else value.numpy()
            for value, bf16 in zip(values, self._bf16_outputs, strict=True)
        ]


class FixedRunner:
    """Inputs and outputs in buffers allocated once on the device and bound once: each batch is
    copied into the same input addresses (OrtValue.update_inplace), as CUDA graph replay needs.
    One run at a time: the buffers are shared."""

    def __init__(
        self,
        session: ort.InferenceSession,
        inputs: Sequence[OnnxTensor],
        outputs: Sequence[OnnxTensor],
        device: Device,
    ) -> None:
        if not (fixed_shapes(inputs) and fixed_shapes(outputs)):
            raise ValueError("fixed buffers need every input and output shape fixed")
        self._session = session
        self._lock = threading.Lock()
        self._binding = session.io_binding()
        self._inputs: dict[str, tuple[ort.OrtValue, tuple[int, ...]]] = {}
        self._outputs: list[ort.OrtValue] = []
        for tensor in inputs:
            shape = _dims(tensor)  # fixed: checked by io_mode
            value = _allocate(tensor, device)
            self._binding.bind_ortvalue_input(tensor.name, value)
            self._inputs[tensor.name] = (value, shape)
        for tensor in outputs:
            value = _allocate(tensor, device)
            self._binding.bind_ortvalue_output(tensor.name, value)
            self._outputs.append(value)

    def run(self, feed: Mapping[str, Array], run_options: ort.RunOptions) -> list[Array]:
        if set(feed) != set(self._inputs):
            raise ValueError(
                f"a model run with CUDA graphs takes every input each run: got {sorted(feed)}, "
                f"expected {sorted(self._inputs)}"
            )
        with self._lock:
            for name, array in feed.items():
                value, shape = self._inputs[name]
                if array.shape != shape:  # validation makes this unreachable for a fixed-shape model
                    raise ValueError(
                        f"input '{name}' has shape {list(array.shape)}, the graph's is {list(shape)}"
                    )
                value.update_inplace(np.require(array, requirements="C"))
            self._session.run_with_iobinding(self._binding, run_options)
            # Copies: the next run overwrites these buffers while the batcher scatters this one.
            return [_copy_out(value) for value in self._outputs]


def _allocate(tensor: OnnxTensor, device: Device) -> ort.OrtValue:
    dtype = datatypes.BY_ONNX[tensor.type].numpy
    return ort.OrtValue.ortvalue_from_shape_and_type(
        list(_dims(tensor)), dtype.type, device.kind, device.index
    )


def _dims(tensor: OnnxTensor) -> tuple[int, ...]:
    return tuple(d for d in tensor.shape if isinstance(d, int))  # all of them, once fixed_shapes holds


def _copy_out(value: ort.OrtValue) -> Array:
    array: Array = np.asarray(value.numpy())  # a device value: already a new host array
    return array.copy() if value.device_name().lower() == "cpu" else array


@dataclass(frozen=True)
class InstanceIo:
    """How one instance runs its batches: its device, the mode, and the runner (None: plain)."""

    device: Device
    mode: Mode
    runner: Runner | None
    staging: PinnedStaging | None = None  # pinned on CUDA; plain memory for session.run's batches
    padded: bool = False  # batches padded to a steady size (batch_padding.py)


def instance_io(
    session: ort.InferenceSession,
    inputs: Sequence[OnnxTensor],
    outputs: Sequence[OnnxTensor],
    requested: bool | None,
    padding: Padding | None = None,
) -> InstanceIo:
    """The IO of a new session, from what it actually runs on (`requested`: the model's
    `io_binding` parameter, None when unset); ValueError when its CUDA graphs cannot be served.
    `padding`: on the CUDA provider, batches padded to a steady size where the graph's first
    dimensions are its batch (batch_padding.py)."""
    providers, options = session.get_providers(), session.get_provider_options()
    device = session_device(providers, options)
    types = [t.type for t in (*inputs, *outputs)]
    mode = io_mode(
        device,
        requested,
        graphs=graphs_enabled(providers, options),
        fixed=fixed_shapes(inputs) and fixed_shapes(outputs),
        strings="tensor(string)" in types,
        bf16="tensor(bfloat16)" in types,
    )
    if mode == "plain":  # its largest batches gathered into reused buffers (gather_buffers.py)
        return InstanceIo(device, mode, None, gather_staging(MAX_RUNS))
    if mode == "fixed":
        return InstanceIo(device, mode, FixedRunner(session, inputs, outputs, device))
    staging = _staging() if device.kind == "cuda" else None
    bf16 = frozenset(t.name for t in outputs if t.type == "tensor(bfloat16)")
    runner: Runner = BoundRunner(
        session, [t.name for t in outputs], device, bf16_outputs=bf16, staging=staging
    )
    if padding is not None and providers[0] == "CUDAExecutionProvider" and batch_major(inputs, outputs):
        return InstanceIo(device, mode, PaddedRunner(runner, padding), staging, padded=True)
    return InstanceIo(device, mode, runner, staging)


def prepare_run_options(mode: Mode, run_options: ort.RunOptions) -> None:
    """Name the CUDA graph each bound run uses: 0 (onnxruntime's default) for fixed buffers, -1 (no
    capture) otherwise. onnxruntime's Python run_with_iobinding looks the entry up on every run, and
    an absent entry costs a C++ exception: ~50 us a run, measured, more than a small model's run."""
    if mode != "plain":
        run_options.add_run_config_entry(GRAPH_ID, "0" if mode == "fixed" else "-1")


def _staging() -> PinnedStaging | None:
    """Pinned buffers for a CUDA instance, or None (inputs bound unstaged) without a runtime."""
    try:
        return PinnedStaging(load_cudart(), MAX_RUNS)
    except CudaUnavailable as err:
        log.warning("no pinned staging of inputs: %s", err)
        return None
