"""Put Silero VAD into a sluiceway model repository, with its context carried as implicit state.

The ONNX file ships in the `silero-vad` PyPI package (silero_vad/data/silero_vad.onnx). Install it
without its torch dependency (`pip install --no-deps silero-vad`); the file is located here
without importing the package.

The packaged graph takes `input` f32[B, 64 + 512] (64 samples of context, then 512 new ones at
16 kHz), `state` f32[2, B, 128] and `sr` (an int64 scalar), and returns `output` f32[B, 1] (the
speech probability) and `stateN`. Two small edits let the server carry everything between a
stream's chunks, so a client sends only its 512 new samples:
- `sr` becomes a constant 16000 (a scalar input has no batch dimension to batch along);
- the graph takes `chunk` f32[B, 512] and `context` f32[B, 64], concatenates them into `input`,
  and returns `context_out` (the chunk's last 64 samples): a second implicit state.
The recurrent `state` keeps its batch on axis 1 (config: sequence_state_batch_axis "state:1").

Usage: python examples/vad/prepare.py REPOSITORY   (writes REPOSITORY/silero_vad/)
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

HERE = Path(__file__).resolve().parent
MODEL_NAME = "silero_vad"
CHUNK, CONTEXT, RATE = 512, 64, 16000


def packaged_model() -> Path:
    """silero_vad/data/silero_vad.onnx of the installed package (not imported: it needs torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the silero-vad package is not installed (pip install --no-deps silero-vad)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "silero_vad.onnx"
        if path.is_file():
            return path
    raise FileNotFoundError("silero-vad is installed but has no data/silero_vad.onnx")


def with_carried_context(model: onnx.ModelProto) -> onnx.ModelProto:
    """The edits above, on a copy of the packaged graph."""
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    graph = edited.graph
    names = [i.name for i in graph.input]
    if names != ["input", "state", "sr"]:
        raise ValueError(f"unexpected Silero VAD inputs {names} (expected input, state, sr)")
    keep = [i for i in graph.input if i.name == "state"]
    del graph.input[:]
    graph.input.extend(
        [
            helper.make_tensor_value_info("chunk", TensorProto.FLOAT, ["batch", CHUNK]),
            *keep,
            helper.make_tensor_value_info("context", TensorProto.FLOAT, ["batch", CONTEXT]),
        ]
    )
    graph.initializer.extend(
        [
            helper.make_tensor("sr", TensorProto.INT64, [], [RATE]),
            helper.make_tensor("sluiceway_ctx_starts", TensorProto.INT64, [1], [CHUNK - CONTEXT]),
            helper.make_tensor("sluiceway_ctx_ends", TensorProto.INT64, [1], [CHUNK]),
            helper.make_tensor("sluiceway_ctx_axes", TensorProto.INT64, [1], [1]),
        ]
    )
    head = [
        helper.make_node("Concat", ["context", "chunk"], ["input"], axis=1, name="sluiceway_context_in"),
        helper.make_node(
            "Slice",
            ["chunk", "sluiceway_ctx_starts", "sluiceway_ctx_ends", "sluiceway_ctx_axes"],
            ["context_out"],
            name="sluiceway_context_out",
        ),
    ]
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*head, *nodes])
    graph.output.append(helper.make_tensor_value_info("context_out", TensorProto.FLOAT, ["batch", CONTEXT]))
    onnx.checker.check_model(edited)
    return edited


def prepare(repository: Path) -> Path:
    """REPOSITORY/silero_vad/{config.pbtxt, 1/model.onnx}; the model's directory."""
    target = repository / MODEL_NAME
    (target / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(with_carried_context(onnx.load(packaged_model())), target / "1" / "model.onnx")
    shutil.copyfile(HERE / "config.pbtxt", target / "config.pbtxt")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("repository", type=Path, help="the model repository to write silero_vad/ into")
    args = parser.parse_args(argv)
    try:
        print(prepare(args.repository))
    except (FileNotFoundError, ValueError) as err:
        print(f"prepare.py: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
