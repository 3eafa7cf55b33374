"""Build the optimized model with the libraries: onnxruntime.quantization (INT8 dynamic or static, per
tensor or per channel), onnxconverter-common (FP16), onnxruntime's offline graph optimization.

Every file is written under the caller's work directory (a temporary one, removed afterwards).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from server.optimize.data import Batch, OptimizeError

if TYPE_CHECKING:
    import onnx

    from protos import model_config_pb2 as mc

logger = logging.getLogger(__name__)

Int8Mode = Literal["dynamic", "static"]
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
_PREPROCESS_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Recipe:
    """What to do to the model; with neither int8 nor fp16 only the offline graph optimization runs."""

    int8: Int8Mode | None = None
    per_channel: bool = False
    # Static INT8 activations: uint8 (U8S8) is onnxruntime's fast path on x86 CPUs without VNNI (AVX2:
    # 1.9x the FP32 resnet at batch 8 here, where int8 activations (S8S8) ran no faster than FP32).
    activations: Literal["uint8", "int8"] = "uint8"
    fp16: bool = False
    offline_optimize: bool = True
    # Dynamic INT8: whether the model's config has the server quantize per row (serves_per_row), and
    # the rows of a validation batch (the model is measured per batch of that many when not).
    per_row: bool = False
    batch_rows: int = 8

    def describe(self) -> str:
        parts = []
        if self.int8:
            parts.append(f"INT8 {self.int8}" + (" per-channel" if self.per_channel else " per-tensor"))
            if self.int8 == "static":
                parts.append(f"{self.activations} activations (QDQ)")
            elif self.per_row:  # what a server that batches requests runs (row_quantization.py)
                parts.append("activations quantized per row, as a batching server runs them")
            else:
                parts.append(
                    "activations quantized per batch, as this config serves them (no dynamic_batching "
                    "or sequence_batching, or dynamic_quantization per_batch): measured on batches "
                    f"of {self.batch_rows} rows"
                )
        if self.fp16:
            parts.append("FP16 (FP32 inputs and outputs kept)")
        if self.offline_optimize:
            parts.append("offline-optimized graph")
        return ", ".join(parts) or "no step"


def preprocess(source: Path, workdir: Path) -> Path:
    """quant_pre_process in a child process inside `workdir`; retried with symbolic shape inference
    skipped when it fails; the unprocessed model when both fail (pre-processing only helps)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH")])),
    }
    # Symbolic shape inference needs sympy: without it, go straight to the second attempt.
    attempts = (False, True) if importlib.util.find_spec("sympy") is not None else (True,)
    for skip_symbolic in attempts:
        scratch = workdir / ("preprocess-skip-symbolic" if skip_symbolic else "preprocess")
        scratch.mkdir()
        output = scratch / "preprocessed.onnx"
        command = [sys.executable, "-m", "server.optimize.preprocess", str(source), str(output)]
        if skip_symbolic:
            command.append("--skip-symbolic-shape")
        done = subprocess.run(
            command,
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
            timeout=_PREPROCESS_TIMEOUT_S,
            check=False,
        )
        if done.returncode == 0 and output.is_file():
            return output
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        logger.warning(
            "quantization pre-processing failed%s: %s",
            " with symbolic shape inference skipped"
            if skip_symbolic
            else "; retrying without symbolic shape inference",
            last,
        )
    logger.warning("quantizing the model without pre-processing")
    return source


class _Calibration:
    """onnxruntime's CalibrationDataReader over prepared batches, with a progress bar."""

    def __init__(self, batches: list[Batch]) -> None:
        from tqdm import tqdm

        self._progress = tqdm(total=len(batches), desc="calibrating", unit="batch", disable=None, leave=False)
        self._batches: Iterator[Batch] = iter(batches)

    def get_next(self) -> Batch | None:
        batch = next(self._batches, None)
        if batch is None:
            self._progress.close()
        else:
            self._progress.update(1)
        return batch


def quantize_int8(source: Path, output: Path, recipe: Recipe, calibration: list[Batch] | None) -> None:
    """INT8 weights (dynamic: activations quantized at run time; static: QDQ with calibrated ranges)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if recipe.int8 == "dynamic":
        quantize_dynamic(source, output, per_channel=recipe.per_channel, weight_type=QuantType.QInt8)
        return
    if not calibration:
        raise OptimizeError("static INT8 needs calibration inputs")
    reader = _Calibration(calibration)
    assert isinstance(reader, CalibrationDataReader)  # a structural match (__subclasshook__)
    quantize_static(
        source,
        output,
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=recipe.per_channel,
        activation_type=QuantType.QUInt8 if recipe.activations == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )


def serves_per_row(config: mc.ModelConfig) -> bool:
    """Whether the server runs a dynamically quantized model under `config` (completed) per row: the
    backend's own rule (server/models/config_backend.py)."""
    from server.models.config import ConfigError
    from server.models.config_backend import backend_parameters

    try:
        return bool(backend_parameters(config, has_gpu=False).options.get("row_quantization"))
    except ConfigError as err:
        raise OptimizeError(str(err)) from None


def as_served_batched(model_file: Path, workdir: Path) -> Path:
    """The model as a server that batches requests runs it: its dynamic quantization made per row
    at load (server/backends/row_quantization.py), so that validation measures what is served. The
    model is published as it is written."""
    import onnx

    from server.backends.row_quantization import make_per_row

    model = onnx.load(str(model_file))
    if not make_per_row(model).per_row:
        return model_file
    served = workdir / "as-served.onnx"
    onnx.save(model, str(served))
    return served


def convert_fp16(source: Path, output: Path) -> None:
    """FP16 weights and compute; inputs and outputs stay FP32, so the model's config still fits."""
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise OptimizeError("--fp16 needs onnxconverter-common: pip install 'sluiceway[optimize]'") from None
    model = onnx.load(str(source))
    _outputs_read_apart(model)
    with warnings.catch_warnings(record=True) as caught:  # one warning per weight out of FP16's range
        warnings.simplefilter("always", UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    truncated = sum("truncated" in str(w.message) for w in caught)
    if truncated:
        logger.warning("FP16: %d weight values outside FP16's range were clamped", truncated)
    onnx.save(converted, str(output))


def _outputs_read_apart(model: onnx.ModelProto) -> None:
    """Give each graph output that another node also reads an Identity of its own to be made by.
    onnxconverter-common's keep_io_types casts such an output back to FP32 for the graph but left
    the FP16 tensor its readers take under the output's name, and onnxruntime refused the result
    ("Type (tensor(float16)) of output arg ... does not match expected type (tensor(float))"): every
    model whose output is also read inside, a stateful model's `state_out = Identity(y)` among them."""
    import onnx

    graph = model.graph
    read = {name for node in graph.node for name in node.input}
    for output in graph.output:
        made_by = [i for i, node in enumerate(graph.node) if output.name in node.output]
        if output.name not in read or not made_by:  # read apart already, or a graph input passed on
            continue
        inner = f"{output.name}__sluiceway_fp16"
        for node in graph.node:
            node.output[:] = [inner if name == output.name else name for name in node.output]
            node.input[:] = [inner if name == output.name else name for name in node.input]
        graph.node.insert(made_by[0] + 1, onnx.helper.make_node("Identity", [inner], [output.name]))


def offline_optimize(source: Path, output: Path) -> None:
    """onnxruntime's graph optimizations (up to 'extended': fusions that hold on any CPU) saved to a file,
    so a server does less work when it loads the model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(output)
    options.log_severity_level = 3
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


# Ops that only a quantized model holds.
_QUANTIZED_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul"}
    | {"MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "QGemm"}
)


# Ops that onnxruntime's own graph optimization writes (sluiceway optimize without --int8/--fp16 saves
# them): its quantizer cannot infer their types and fails with a message about a weight's scale.
_GRAPH_OPTIMIZER_OPS = frozenset({"FusedConv", "FusedGemm", "FusedMatMul", "NchwcConv", "NchwcMaxPool"})
_START_OVER = "start from the original model (for a model directory: --source-version N)"


def refuse_optimized(model_path: Path, int8: bool) -> None:
    """Quantizing or converting a model that is already INT8 or FP16 compounds the loss, and INT8 of a
    graph onnxruntime fused fails inside the quantizer: refuse, and say how to start from the original."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    op_types = {node.op_type for node in model.graph.node}
    ops = sorted(op_types & _QUANTIZED_OPS)
    fp16 = any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    if ops or fp16:
        what = f"{', '.join(ops)} nodes" if ops else "FP16 weights"
        raise OptimizeError(f"{model_path} is already optimized ({what}): {_START_OVER}")
    fused = sorted(op_types & _GRAPH_OPTIMIZER_OPS)
    if int8 and fused:
        raise OptimizeError(
            f"{model_path} was saved by onnxruntime's graph optimization ({', '.join(fused)} nodes), "
            f"which its INT8 quantizer cannot read: {_START_OVER}"
        )


def refuse_unquantized(model_path: Path, recipe: Recipe) -> None:
    """INT8 that quantized no operator (an Add+Relu model) would publish the same model as a new
    version, reported as INT8: refuse, naming the operators the model has."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    op_types = {node.op_type for node in model.graph.node}
    if not op_types & _QUANTIZED_OPS:
        raise OptimizeError(
            f"INT8 {recipe.int8} quantized no operator of the model (its operators: "
            f"{', '.join(sorted(op_types)) or 'none'}); onnxruntime quantizes MatMul, Gemm, Conv and a few "
            "others: nothing to publish"
        )


def build(source: Path, workdir: Path, recipe: Recipe, calibration: list[Batch] | None) -> Path:
    """The optimized model file (under `workdir`) for `recipe`; OptimizeError when a library fails."""
    try:
        return _build(source, workdir, recipe, calibration)
    except OptimizeError:
        raise
    except Exception as err:  # onnxruntime and the converters raise untyped or their own errors
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OptimizeError(f"{recipe.describe()} of {source.name} failed: {message}") from err


def _build(source: Path, workdir: Path, recipe: Recipe, calibration: list[Batch] | None) -> Path:
    current = source = self_contained(source, workdir)
    if recipe.int8:
        prepared = preprocess(current, workdir)
        current = workdir / "int8.onnx"
        quantize_int8(prepared, current, recipe, calibration)
        refuse_unquantized(current, recipe)
    if recipe.fp16:
        fp16 = workdir / "fp16.onnx"
        convert_fp16(current, fp16)
        current = fp16
    if recipe.offline_optimize:
        optimized = workdir / "optimized.onnx"
        offline_optimize(current, optimized)
        current = optimized
    refuse_unchanged(source, current, recipe)
    return current


def refuse_unchanged(source: Path, built: Path, recipe: Recipe) -> None:
    """A recipe that changed nothing (no step, or a graph the offline optimization left as it was)
    would publish the same model as a new version: refuse, as INT8 that quantized nothing is."""
    if built == source:
        raise OptimizeError(
            "--no-offline-optimize without --int8 or --fp16 changes nothing: nothing to publish"
        )
    if _graph_key(source) == _graph_key(built):
        raise OptimizeError(
            f"{recipe.describe()} left the model as it was (the same nodes and weights as the "
            "source's): nothing to publish"
        )


def _graph_key(model_file: Path) -> list[bytes]:
    """What a model computes: its nodes and weights (not shapes the optimizer may have annotated)."""
    import onnx

    graph = onnx.load(str(model_file)).graph
    parts = [*graph.node, *graph.initializer, *graph.input, *graph.output]
    return [part.SerializeToString(deterministic=True) for part in parts]


INLINE_MAX_BYTES = 1 << 30  # protobuf's 2 GiB message limit, with room to spare


def model_bytes(model_file: Path) -> int:
    """The model file and its external weight files, in bytes (the header alone said 0.00 MB)."""
    from server.optimize.publish import external_files

    return model_file.stat().st_size + sum(
        (model_file.parent / name).stat().st_size for name in external_files(model_file)
    )


def self_contained(source: Path, workdir: Path) -> Path:
    """`source`, or for a model with external weights a copy in `workdir` that carries them (inline,
    or beside it when large): the steps write their models into `workdir`, where a model naming
    "model.onnx.data" found none ("External data path does not exist")."""
    from server.optimize.publish import external_files

    if not external_files(source):
        return source
    import onnx

    model = onnx.load(str(source))  # with its weights
    copy = workdir / "source.onnx"
    large = model_bytes(source) > INLINE_MAX_BYTES
    onnx.save(model, str(copy), save_as_external_data=large, location="source.onnx.data")
    return copy
