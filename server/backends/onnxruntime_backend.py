"""One ONNX model instance on onnxruntime, behind the batcher's Backend protocol.

`session.run` blocks (and releases the GIL), so it runs in a small executor owned by the instance,
never on the event loop. Execution providers are requested from the config; onnxruntime-gpu lists
CUDA/TensorRT as available even on a machine without a GPU, so what actually runs is read back from
the session and a missing provider costs one warning line, not a failed load.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from batcher.errors import InstanceClosed
from batcher.log_ration import Ration
from batcher.types import Array, Tensors
from protos import model_config_pb2 as mc
from server.backends.batch_padding import Padding, padding_for
from server.backends.bf16 import has_bf16, run_with_bf16, string_inputs_refusal
from server.backends.gather_buffers import run_gathered
from server.backends.int_division_guard import DivisionGuard, division_guard_for, session_source
from server.backends.io_binding import Device, InstanceIo, instance_io, prepare_run_options
from server.backends.ort_paths import NotUtf8Path, onnxruntime_path
from server.backends.prepared_graph import PreparedGraph
from server.backends.row_quantization import row_quantized
from server.backends.run_errors import is_onnxruntime_error, run_failure
from server.backends.session_facts import SessionFacts
from server.backends.strings import as_dict, decode_string_inputs, encode_strings
from server.models.config_backend import backend_parameters
from server.models.config_tensors import ReshapePlan
from server.models.onnx_completion import OnnxTensor

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"

Provider = tuple[str, dict[str, str]]  # (onnxruntime provider name, its provider options)

_GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# ReshapeFusion runs a Reshape's one computed entry as -1, unchecked; where requests batch, the
# row-mixing reading took the shape as checked (a tester, s67: a view by it batched wrong): turned off.
UNCHECKING_OPTIMIZERS = ("ReshapeFusion",)
_EXECUTION_MODES = {
    "sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
    "parallel": ort.ExecutionMode.ORT_PARALLEL,
}


class BackendLoadError(Exception):
    """The model file could not be turned into an onnxruntime session."""


@dataclass(frozen=True)
class OrtOptions:
    """Session settings shared by every model (from the server settings); a config may override some."""

    intra_op_threads: int = 0  # 0: onnxruntime picks (one per physical core)
    inter_op_threads: int = 0
    # Spinning keeps an idle worker busy-waiting for the next op: it steals the core from gRPC threads.
    allow_spinning: bool = False
    graph_optimization_level: str = "all"  # "disable" | "basic" | "extended" | "all"
    execution_mode: str = "sequential"  # "sequential" | "parallel"
    providers: tuple[str, ...] = (CPU,)
    provider_options: tuple[dict[str, str], ...] = ()  # empty, or one dict per provider
    session_attrs: tuple[tuple[str, bool], ...] = ()  # these four from the config (config_backend.py)
    session_entries: tuple[tuple[str, str], ...] = ()  # session config entries
    run_entries: tuple[tuple[str, str], ...] = ()  # run config entries, e.g. arena shrinkage
    io_binding: bool | None = None  # the `io_binding` parameter; None: on for CUDA/TensorRT (io_binding.py)
    # Integer Div/Mod guarded (int_division_guard.py): None/True guarded, False never (tests compare).
    int_division_guard: bool | None = None
    # Dynamic INT8 quantization made per row at load (row_quantization.py): set where requests batch.
    row_quantization: bool = False
    checked_reshapes: bool = False  # UNCHECKING_OPTIMIZERS off: set where requests batch
    padding: Padding | None = None  # CUDA instances pad batches to a steady size (batch_padding.py)

    def __post_init__(self) -> None:
        if self.graph_optimization_level not in _GRAPH_LEVELS:
            raise ValueError(
                f"graph_optimization_level '{self.graph_optimization_level}' is not one of "
                f"{sorted(_GRAPH_LEVELS)}"
            )
        if self.execution_mode not in _EXECUTION_MODES:
            raise ValueError(
                f"execution_mode '{self.execution_mode}' is not one of {sorted(_EXECUTION_MODES)}"
            )
        if self.provider_options and len(self.provider_options) != len(self.providers):
            raise ValueError("provider_options must be empty or hold one entry per provider")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("thread counts must not be negative")

    def default_providers(self) -> list[Provider]:
        options = self.provider_options or tuple({} for _ in self.providers)
        return [(name, dict(opts)) for name, opts in zip(self.providers, options, strict=True)]


def ort_options_for(config: mc.ModelConfig, base: OrtOptions) -> OrtOptions:
    """`base` with the config's overrides: optimization.graph.level (Triton's -1 basic, 1 extended,
    2 none) and the onnxruntime backend's parameters (checked in server/models/config_backend.py)."""
    params = backend_parameters(config, has_gpu=CUDA in ort.get_available_providers())
    changes: dict[str, Any] = dict(params.options)
    level = {-1: "basic", 1: "extended", 2: "disable"}.get(config.optimization.graph.level)
    if level is not None:
        changes["graph_optimization_level"] = level
    for name in ("session_attrs", "session_entries", "run_entries"):
        if getattr(params, name):
            changes[name] = getattr(params, name)
    return dataclasses.replace(base, **changes) if changes else base


def _session_options(options: OrtOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.graph_optimization_level = _GRAPH_LEVELS[options.graph_optimization_level]
    so.execution_mode = _EXECUTION_MODES[options.execution_mode]
    spin = "1" if options.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    for attr, flag in options.session_attrs:
        setattr(so, attr, flag)
    for key, value in options.session_entries:
        so.add_session_config_entry(key, value)
    return so


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class OrtBackend(SessionFacts):
    """One model instance. Construction loads the model and blocks: call it off the event loop."""

    def __init__(
        self,
        model_path: Path,
        options: OrtOptions,
        providers: Sequence[Provider],
        executor: ThreadPoolExecutor,
        *,
        model_name: str = "",
        reshape: ReshapePlan | None = None,
        prepared: PreparedGraph | None = None,  # another instance's outcome (prepared_graph.py)
        keep_prepared: bool = False,  # keep this one's outcome in `prepared` for the next
    ) -> None:
        self._name = model_name or model_path.parent.parent.name
        # A client's refused inputs logged at most once every 10 s by this instance (log_ration.py),
        # onnxruntime's refusals and the division guard's apart (one flood hides not the other).
        self._refusals, self._zero_divisors = Ration(), Ration()
        self.prepared: PreparedGraph | None = None
        self._keep_prepared = keep_prepared
        self._guard: DivisionGuard | None = None
        self._rewritten: bytes | None = None
        self._reshape = reshape  # config `reshape`s: wire shapes <-> the model's
        self._path = model_path
        self._executor = executor  # owned: one per instance, max_workers = batches in flight
        self._checked_reshapes = options.checked_reshapes
        try:
            session = self._guarded_session(options, providers, prepared)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._session: ort.InferenceSession | None = session  # None once closed
        self._active_providers = list(session.get_providers())
        self._inputs = [OnnxTensor(i.name, i.type, list(i.shape)) for i in session.get_inputs()]
        every = {o.name: OnnxTensor(o.name, o.type, list(o.shape)) for o in session.get_outputs()}
        flags: list[OnnxTensor] = [every.pop(name) for name in self._guard.flags] if self._guard else []
        self._outputs = list(every.values())  # the model's own: the guard's flags are the server's
        self._output_names = [o.name for o in self._outputs]
        self._run_names = [*self._output_names, *(f.name for f in flags)]  # what every run fetches
        self._string_inputs = frozenset(i.name for i in self._inputs if i.type == "tensor(string)")
        self._string_outputs = frozenset(o.name for o in self._outputs if o.type == "tensor(string)")
        # BF16 needs OrtValues in and out (server/backends/bf16.py); other models keep `run`.
        self._bf16 = has_bf16([t.type for t in (*self._inputs, *self._outputs)])
        if self._bf16 and self._string_inputs:
            executor.shutdown(wait=False)
            raise BackendLoadError(string_inputs_refusal(self._name, list(self._string_inputs)))
        try:  # batches through IO binding on a GPU (or when asked), else session.run
            padding = padding_for(options.padding, model_path)  # a convolution model's, by default
            self._io: InstanceIo = instance_io(
                session, self._inputs, [*self._outputs, *flags], options.io_binding, padding
            )
        except ValueError as err:
            executor.shutdown(wait=False)
            raise BackendLoadError(f"model '{self._name}': {err}") from None
        # Shared by this instance's runs: `abandon` sets its terminate flag to stop a stuck one.
        self._run_options = ort.RunOptions()
        for key, value in options.run_entries:
            self._run_options.add_run_config_entry(key, value)
        prepare_run_options(self._io.mode, self._run_options)

    def _guarded_session(
        self, options: OrtOptions, providers: Sequence[Provider], prepared: PreparedGraph | None
    ) -> ort.InferenceSession:
        """A session of the model, its integer divisions guarded against divisors onnxruntime traps
        on (int_division_guard.py) and, where requests batch, its dynamic quantization made per row
        (row_quantization.py); without either, with a WARNING, if its rewrite fails to load.
        `prepared`: what loaded for the load's first instance, used as it is."""
        if prepared is not None:
            self._guard, self._rewritten = prepared.guard, prepared.rewritten
            session = self._create_session(options, providers)
            self._release_bytes()
            return session
        rows = row_quantized(self._path, self._name) if options.row_quantization else None
        self._guard = division_guard_for(
            self._path, self._name, ort.__version__, options.int_division_guard, model_proto=rows
        )
        # What an unguarded session is made from: the per-row model's bytes, or None (the file).
        self._rewritten = rows.SerializeToString() if rows is not None else None
        if self._guard is None:
            return self._unguarded_session(options, providers)
        try:
            session = self._loaded(options, providers)
            self._release_bytes()
            return session
        except BackendLoadError as err:
            self._guard = None
            session = self._unguarded_session(options, providers)  # the model's own error, if it is its
            logger.warning(
                "model %s: integer Div/Mod left unguarded: the guarded graph does not load (%s); "
                "a request with a zero divisor or MIN / -1 will end this server (onnxruntime %s)",
                self._name,
                err,
                ort.__version__,
            )
            return session

    def _release_bytes(self) -> None:
        """The session holds its own copy of the model: drop this instance's."""
        if self._guard is not None:
            self._guard = dataclasses.replace(self._guard, model_bytes=b"")
        self._rewritten = None

    def _loaded(self, options: OrtOptions, providers: Sequence[Provider]) -> ort.InferenceSession:
        """A session of what this instance holds now (guarded bytes, else per-row bytes, else the
        file), kept for the load's other instances when asked (prepared_graph.py)."""
        session = self._create_session(options, providers)
        if self._keep_prepared:
            self.prepared = PreparedGraph(self._guard, None if self._guard else self._rewritten)
        return session

    def _unguarded_session(self, options: OrtOptions, providers: Sequence[Provider]) -> ort.InferenceSession:
        try:
            return self._loaded(options, providers)
        except BackendLoadError as err:
            if self._rewritten is None:
                raise  # the model's own error
            self._rewritten = None
            session = self._loaded(options, providers)  # the model's own error, if it is its
            logger.warning(
                "model %s: dynamic quantization left per batch: its per-row graph does not load (%s)",
                self._name,
                err,
            )
            return session
        finally:
            self._release_bytes()

    def _create_session(self, options: OrtOptions, providers: Sequence[Provider]) -> ort.InferenceSession:
        available = set(ort.get_available_providers())
        missing: dict[str, str] = {}
        usable: list[Provider] = []
        for name, opts in providers:
            if name in available:
                usable.append((name, dict(opts)))
            else:
                missing[name] = "not in this onnxruntime build"
        if all(name != CPU for name, _ in usable):
            usable.append((CPU, {}))
        so = _session_options(options)
        try:
            session = self._new_session(so, usable)
        except Exception as err:
            accelerated = [name for name, _ in usable if name != CPU]
            if not accelerated or isinstance(err, NotUtf8Path):  # (no provider reads it either)
                raise BackendLoadError(
                    f"model '{self._name}': cannot load {self._path}: {_first_line(err)}"
                ) from err
            for name in accelerated:
                missing[name] = f"failed to start: {_first_line(err)}"
            cpu = [(name, opts) for name, opts in usable if name == CPU]
            try:
                session = self._new_session(so, cpu)
            except Exception as cpu_err:
                raise BackendLoadError(
                    f"model '{self._name}': cannot load {self._path}: {_first_line(cpu_err)}"
                ) from cpu_err
        active = session.get_providers()
        for name, _ in providers:
            if name not in active and name not in missing:
                missing[name] = "onnxruntime could not start it, see its log"
        if missing:
            names = ", ".join(missing)
            reasons = "; ".join(f"{name}: {why}" for name, why in missing.items())
            verb = "is" if len(missing) == 1 else "are"
            logger.warning(
                "model %s: requested %s %s not available (%s); running on %s",
                self._name,
                names,
                verb,
                reasons,
                ", ".join(active),
            )
        return session

    def _new_session(self, so: ort.SessionOptions, providers: list[Provider]) -> ort.InferenceSession:
        with onnxruntime_path(self._path) as path:  # a UTF-8 one: onnxruntime takes no other
            source = session_source(self._guard, path, so, self._rewritten)  # the file, or rewritten bytes
            names, options = [name for name, _ in providers], [opts for _, opts in providers]
            off = list(UNCHECKING_OPTIMIZERS) if self._checked_reshapes else []
            return ort.InferenceSession(source, so, names, options, disabled_optimizers=off)

    @property
    def device(self) -> Device:
        """Where the session runs (`cpu`, `cuda:0`): what it actually started with."""
        return self._io.device

    @property
    def io(self) -> InstanceIo:
        return self._io

    async def run(self, inputs: Tensors) -> Tensors:
        """Run one batch in this instance's executor; BYTES tensors are object arrays of bytes.
        (The batcher calls `run_blocking` itself, inline or in `executor`, as its estimator says.)"""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_blocking, inputs)

    def run_blocking(self, inputs: Tensors, *, log_failure: bool = True) -> dict[str, Array]:
        """Run one batch on the calling thread (blocks while onnxruntime runs; releases the GIL).
        `log_failure`: log its failure as a batch's (not a load's zero run: first_run.py logs it)."""
        session, runner, staging = self._session, self._io.runner, self._io.staging  # held until the run ends
        if session is None:  # before any work on the inputs
            raise InstanceClosed.of(self._name)
        if self._reshape is not None:
            inputs = self._reshape.to_model(inputs)
        feed = decode_string_inputs(inputs, self._string_inputs)  # a Gathered batch: left for the runner
        try:
            if runner is not None:
                results = runner.run(feed, self._run_options)
            elif self._bf16:
                results = run_with_bf16(session, self._run_names, as_dict(feed), self._run_options)
            else:  # a large batch gathered into a reused buffer (gather_buffers.py)
                results = run_gathered(
                    staging, feed, lambda fed: session.run(self._run_names, fed, self._run_options)
                )
        except Exception as err:
            if not is_onnxruntime_error(err) or self._run_options.terminate:  # terminate: abandoned
                raise
            raise run_failure(self._name, err, log_failure, self._refusals) from err
        if self._guard is not None:  # its counts follow the model's outputs
            own = len(self._output_names)
            self._guard.check(self._name, results[own:], log_it=log_failure, ration=self._zero_divisors)
            results = results[:own]
        outputs = {
            name: encode_strings(value) if name in self._string_outputs else value
            for name, value in zip(self._output_names, results, strict=True)
        }
        return outputs if self._reshape is None else self._reshape.to_wire(outputs)

    def close(self) -> None:
        """Let go of the session and IO buffers (a running batch holds them until it ends; batches
        queued for its thread fail NotAccepting, to the version serving now: cancelled, they were
        UNAVAILABLE; an abandoned one's are cancelled). Until this, a retired instance's memory and
        threads stayed until a full GC (30 instances loaded and unloaded kept 30 threads)."""
        self._executor.shutdown(wait=False, cancel_futures=self._run_options.terminate)
        self._session = None
        held = self._refusals.flush() + self._zero_divisors.flush()
        if held:  # the rations' counts that no later line carried
            logger.warning(
                "model %s: %d more refused batches' lines not logged by its close", self._name, held
            )
        self._io = dataclasses.replace(self._io, runner=None, staging=None)

    def abandon(self) -> None:
        """A run outlived the watchdog: take no more batches and ask onnxruntime to end the runs in
        progress (RunOptions.terminate, checked between nodes: they fail, and nobody reads them).
        A thread stuck inside one node goes on until that node ends; it is not waited for."""
        self._run_options.terminate = True
        self.close()
