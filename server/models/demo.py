"""Two demo models, built from seeded random weights so that the server runs with no download.

`mlp` is a small tabular scorer (cheap: batching overhead dominates); `resnet` has ResNet-18's shape
and cost (compute dominates); `resnet_u8` is the same network taking UINT8 camera frames, with the
normalization inside the graph (a quarter of the bytes on the wire). All are built deterministically:
the same onnx version writes the same bytes, and a finished repository is reused from the cache.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper

from protos import model_config_pb2 as mc
from server.pids import named_pid, pid_alive

logger = logging.getLogger(__name__)

# Bump when a model or config below changes: a new version builds into a new directory.
DEMO_VERSION = 3
OPSET = 17
IR_VERSION = 8  # opset 17's IR version: loads on onnxruntime >= 1.13
MARKER = ".sluiceway-demo"
STAGING_PREFIX = ".demo-building-"  # + the builder's pid + "-" + mkdtemp's random part
# A build takes seconds. A staging directory younger than this is kept even when its pid looks
# dead: a cache shared between containers sees other pid namespaces' builders that way.
STALE_STAGING_S = 600.0


class _Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def he(self, shape: tuple[int, ...], fan_in: int, scale: float = 1.0) -> np.ndarray:
        # He initialisation keeps activations' variance roughly constant through ReLU layers.
        std = scale * np.sqrt(2.0 / fan_in)
        weights: np.ndarray = (self.rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)
        return weights

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def model(
        self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
    ) -> bytes:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sluiceway-demo"
        )
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        return bytes(model.SerializeToString())


def build_mlp() -> bytes:
    """features [N,64] -> Gemm 256 -> Relu -> Gemm 256 -> Relu -> Gemm 2 -> scores [N,2]."""
    g = _Graph(seed=1)
    x = "features"
    widths = [64, 256, 256, 2]
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        w = g.const(f"fc{i}.weight", g.he((fan_in, fan_out), fan_in))
        b = g.const(f"fc{i}.bias", np.zeros(fan_out, np.float32) + 0.01)
        last = i == len(widths) - 2
        x = g.node("Gemm", [x, w, b], "scores" if last else f"fc{i}")
        if not last:
            x = g.node("Relu", [x], f"relu{i}")
    return g.model(
        "mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 2])],
    )


def _conv(
    g: _Graph, x: str, name: str, c_in: int, c_out: int, k: int, stride: int, scale: float = 1.0
) -> str:
    w = g.const(f"{name}.weight", g.he((c_out, c_in, k, k), c_in * k * k, scale))
    b = g.const(f"{name}.bias", np.zeros(c_out, np.float32))
    pad = k // 2
    return g.node("Conv", [x, w, b], name, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)


# ImageNet's per-channel statistics, on pixel values scaled to [0, 1].
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def build_resnet() -> bytes:
    """ResNet-18's layout with batch norm folded into conv biases: image [N,3,224,224] -> logits [N,1000]."""
    g = _Graph(seed=2)
    _resnet_body(g, "image")
    return g.model(
        "resnet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
    )


def build_resnet_u8() -> bytes:
    """The same network (same weights) taking camera frames: frame UINT8 [N,224,224,3] (NHWC, 0-255)
    -> Cast, Transpose to NCHW, ImageNet normalization -> the resnet body -> logits [N,1000].

    A frame is 150 KB on the wire instead of 600 KB of FP32, and the normalization a client would
    otherwise do in Python runs inside the graph."""
    g = _Graph(seed=2)
    x = g.node("Cast", ["frame"], "frame.float", to=TensorProto.FLOAT)
    x = g.node("Transpose", [x], "frame.nchw", perm=[0, 3, 1, 2])
    scale = g.const("normalize.scale", (1.0 / (255.0 * IMAGENET_STD)).reshape(1, 3, 1, 1))
    shift = g.const("normalize.shift", (-IMAGENET_MEAN / IMAGENET_STD).reshape(1, 3, 1, 1))
    x = g.node("Add", [g.node("Mul", [x, scale], "normalize.mul"), shift], "normalized")
    _resnet_body(g, x)
    return g.model(
        "resnet_u8",
        [helper.make_tensor_value_info("frame", TensorProto.UINT8, ["batch", 224, 224, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
    )


def _resnet_body(g: _Graph, image: str) -> None:
    """From an NCHW FP32 image tensor named `image` to the output "logits"."""
    x = g.node("Relu", [_conv(g, image, "conv1", 3, 64, 7, 2)], "conv1.relu")
    x = g.node("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c_in = 64
    for stage, c_out in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            prefix = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            y = g.node("Relu", [_conv(g, x, f"{prefix}.conv1", c_in, c_out, 3, stride)], f"{prefix}.relu1")
            # Down-scaled residual branch: without batch norm, sums would otherwise double the variance.
            y = _conv(g, y, f"{prefix}.conv2", c_out, c_out, 3, 1, scale=0.5)
            shortcut = x
            if stride != 1 or c_in != c_out:
                shortcut = _conv(g, x, f"{prefix}.downsample", c_in, c_out, 1, stride)
            x = g.node("Relu", [g.node("Add", [y, shortcut], f"{prefix}.add")], f"{prefix}.relu2")
            c_in = c_out
    x = g.node("GlobalAveragePool", [x], "avgpool")
    x = g.node("Flatten", [x], "flatten", axis=1)
    w = g.const("fc.weight", g.he((512, 1000), 512, scale=0.5))
    b = g.const("fc.bias", np.zeros(1000, np.float32))
    g.node("Gemm", [x, w, b], "logits")


def _config(
    name: str,
    max_batch_size: int,
    inp: tuple[str, list[int]],
    out: tuple[str, list[int]],
    input_type: int = mc.TYPE_FP32,
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=max_batch_size)
    config.input.add(name=inp[0], data_type=input_type, dims=inp[1])
    config.output.add(name=out[0], data_type=mc.TYPE_FP32, dims=out[1])
    config.dynamic_batching.max_queue_delay_microseconds = 0
    config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    return config


def demo_configs() -> dict[str, mc.ModelConfig]:
    mlp = _config("mlp", 128, ("features", [64]), ("scores", [2]))
    mlp.dynamic_batching.default_queue_policy.max_queue_size = 1024
    # A run of this model takes ~17 µs on one thread; a second intra-op thread has nothing to share
    # and costs a wake-up per run (53 µs of CPU against 17 per batch-1 run here: BENCHMARKS.md §11).
    mlp.parameters["intra_op_thread_count"].string_value = "1"
    resnet = _config("resnet", 16, ("image", [3, 224, 224]), ("logits", [1000]))
    resnet_u8 = _config(
        "resnet_u8", 16, ("frame", [224, 224, 3]), ("logits", [1000]), input_type=mc.TYPE_UINT8
    )
    return {"mlp": mlp, "resnet": resnet, "resnet_u8": resnet_u8}


def _build_key() -> str:
    # The bytes depend on this module's version and on the onnx package that serialises them.
    digest = hashlib.sha256(f"{DEMO_VERSION}:{onnx.__version__}:{OPSET}:{IR_VERSION}".encode()).hexdigest()
    return f"v{DEMO_VERSION}-{digest[:12]}"


def _write(directory: Path) -> None:
    builders = {"mlp": build_mlp, "resnet": build_resnet, "resnet_u8": build_resnet_u8}
    for name, config in demo_configs().items():
        (directory / name / "1").mkdir(parents=True)
        text = f"# Demo model: built by server/models/demo.py (version {DEMO_VERSION}).\n"
        text += text_format.MessageToString(config)
        (directory / name / "config.pbtxt").write_text(text, encoding="utf-8")
        (directory / name / "1" / "model.onnx").write_bytes(builders[name]())


def remove_stale_staging(cache_dir: Path) -> None:
    """Remove the staging directories of builds whose process is gone. A start-up SIGTERM or SIGHUP
    landing in an import during a build ends the process with os._exit (start_signals.exit_now),
    past the build's own clean-up. Kept: this process's (a concurrent build on another thread)
    and those of builders still running, and any younger than STALE_STAGING_S. One named without a
    pid is from before pids were in the name: stale once old enough."""
    try:
        entries = list(cache_dir.glob(f"{STAGING_PREFIX}*"))
    except OSError:
        return
    for entry in entries:
        pid = named_pid(entry.name, 2)  # .demo-building-PID-RANDOM
        if pid == os.getpid() or (pid is not None and pid_alive(pid)) or _younger(entry, STALE_STAGING_S):
            continue
        shutil.rmtree(entry, ignore_errors=True)


def _younger(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:  # removed meanwhile (its build finished): nothing to do
        return True


def build_demo_repository(cache_dir: Path) -> Path:
    """The demo repository under `cache_dir`, built unless a complete one of this version is there."""
    key = _build_key()
    target = cache_dir / f"demo-repository-{key}"
    remove_stale_staging(cache_dir)
    if (target / MARKER).is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename into place: a concurrent start sees all of it or none.
    # The pid in the name tells a later build whether its builder still runs.
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=cache_dir))
    try:
        _write(staging)
        (staging / MARKER).write_text(key + "\n", encoding="utf-8")
        try:
            os.rename(staging, target)
            logger.info("built demo model repository at %s", target)
        except OSError:
            if not (target / MARKER).is_file():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
