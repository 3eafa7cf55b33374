"""A repository of tiny step models and ensembles over them (onnx.helper only, see server_process.py).

Step models (x, y FP32 [N, D]): add_one (y = x + 1), double (y = 2x), add (a, b -> y = a + b),
double_wait (double, waiting up to 2 s to fill a batch of 4), faulty (add_one, every run raises),
slow (add_one, every run held 0.5 s by fault injection). Ensembles: linear (2(x + 1)), dag
(3x + 1 and x + 1, its steps listed out of order), slow_then_add (slow, then add_one), batched
(double_wait), failing (add_one, then faulty), orphan (a step model not in the repository),
bad_map (an input_map key the step model does not have).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from tests.support.repositories import write_model

STEP = "max_batch_size: 8\ndynamic_batching { }\n"
WAIT = (
    "max_batch_size: 8\n"
    "dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 2000000 }\n"
)
FAULTY = STEP + 'parameters { key: "fault_raise_every" value: { string_value: "1" } }\n'
# Every run takes 0.5 s (a hang shorter than the watchdog's limit): slower than any test's deadline
# on any machine, where a heavy graph's run time would depend on the machine.
SLOW = (
    STEP
    + 'parameters { key: "fault_hang_every" value: { string_value: "1" } }\n'
    + 'parameters { key: "fault_hang_s" value: { string_value: "0.5" } }\n'
)


def _unary(path: Path, op: str, constant: float) -> Path:
    c = helper.make_tensor("c", TensorProto.FLOAT, [], [constant])
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "c"], ["y"])],
        op.lower(),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "D"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "D"])],
        [c],
    )
    return _save(graph, path)


def _add(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "add",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", "D"]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "D"])],
    )
    return _save(graph, path)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _tensors(kind: str, dims: int, *names: str) -> str:
    return "".join(f'{kind} {{ name: "{n}" data_type: TYPE_FP32 dims: [ {dims} ] }}\n' for n in names)


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = "".join(f'input_map {{ key: "{k}" value: "{v}" }} ' for k, v in inputs.items())
    maps += "".join(f'output_map {{ key: "{k}" value: "{v}" }} ' for k, v in outputs.items())
    return f'step {{ model_name: "{model}" model_version: -1 {maps}}}\n'


def ensemble(steps: list[str], inputs: tuple[str, ...] = ("IN",), outputs: tuple[str, ...] = ("OUT",),
             dims: int = 4) -> str:  # fmt: skip
    """An ensemble config.pbtxt over FP32 tensors of `dims` values."""
    return (
        'platform: "ensemble"\nmax_batch_size: 8\n'
        + _tensors("input", dims, *inputs)
        + _tensors("output", dims, *outputs)
        + "ensemble_scheduling {\n"
        + "".join(steps)
        + "}\n"
    )


ENSEMBLES = {
    "linear": ensemble(
        [_step("add_one", {"x": "IN"}, {"y": "PLUS"}), _step("double", {"x": "PLUS"}, {"y": "OUT"})]
    ),
    "dag": ensemble(
        [
            _step("add", {"a": "A", "b": "B"}, {"y": "OUT"}),
            _step("add_one", {"x": "IN"}, {"y": "A"}),
            _step("double", {"x": "IN"}, {"y": "B"}),
        ],
        outputs=("OUT", "A"),
    ),
    "slow_then_add": ensemble(
        [_step("slow", {"x": "IN"}, {"y": "T"}), _step("add_one", {"x": "T"}, {"y": "OUT"})], dims=1
    ),
    "batched": ensemble([_step("double_wait", {"x": "IN"}, {"y": "OUT"})]),
    "failing": ensemble(
        [_step("add_one", {"x": "IN"}, {"y": "T"}), _step("faulty", {"x": "T"}, {"y": "OUT"})]
    ),
    "labeled": ensemble([_step("double_labeled", {"x": "IN"}, {"y": "OUT"})]),
    # reshape on the ensemble's input and output: the step sees [2, 2], the client [4].
    "reshaped": ensemble([_step("pass22", {"x": "IN"}, {"y": "OUT"})]).replace(
        "dims: [ 4 ] }", "dims: [ 4 ] reshape: { shape: [ 2, 2 ] } }"
    ),
    "labeled_then_pass": ensemble(
        [_step("double_labeled", {"x": "IN"}, {"y": "T"}), _step("pass", {"x": "T"}, {"y": "OUT"})]
    ),
    # Ensembles of ensembles (named so that they sort before the ensembles they use).
    "a_nested": ensemble(
        [_step("b_nested", {"IN": "IN"}, {"OUT": "T"}), _step("double", {"x": "T"}, {"y": "OUT"})]
    ),
    "b_nested": ensemble([_step("labeled", {"IN": "IN"}, {"OUT": "OUT"})]),
    "orphan": ensemble([_step("absent", {"x": "IN"}, {"y": "OUT"})]),
    "bad_map": ensemble(
        [_step("add_one", {"x": "IN"}, {"y": "T"}), _step("double", {"z": "T"}, {"y": "OUT"})]
    ),
}


def ensemble_repository(repo: Path, files: Path) -> Path:
    """Write the step models and every ensemble of ENSEMBLES into `repo` (needs fault injection)."""
    add_one = _unary(files / "add_one.onnx", "Add", 1.0)
    double = _unary(files / "double.onnx", "Mul", 2.0)
    write_model(repo, "add_one", add_one, STEP)
    write_model(repo, "double", double, STEP)
    write_model(repo, "double_wait", double, WAIT)
    labeled = 'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] label_filename: "labels.txt" } ]\n'
    write_model(repo, "double_labeled", double, STEP + labeled)
    (repo / "double_labeled" / "labels.txt").write_text("zero\none\ntwo\nthree\n")
    for name, dims in (("pass", "4"), ("pass22", "2, 2")):
        (repo / name / "1").mkdir(parents=True)  # the identity backend needs no model file
        (repo / name / "config.pbtxt").write_text(
            'backend: "identity"\nmax_batch_size: 8\n'
            f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {dims} ] }} ]\n'
            f'output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {dims} ] }} ]\n'
        )
    write_model(repo, "faulty", add_one, FAULTY)
    write_model(repo, "add", _add(files / "add.onnx"), STEP)
    write_model(repo, "slow", add_one, SLOW)
    for name, config in ENSEMBLES.items():
        (repo / name / "1").mkdir(parents=True)  # an ensemble's version directory is empty
        (repo / name / "config.pbtxt").write_text(config)
    return repo
