"""`model_warmup` on a sequence model (README "Stateful sequences", "Warm-up"): a sample naming only
the model's own inputs warms it, the server filling each state input with its initial state and
each control input as a one-request sequence. A tester's sample with only `x` failed the load in
onnxruntime's words ("Required inputs (['acc']) are missing from input feed (['x'])"), and one with
`x` and `acc` as "inputs ['acc'] are not inputs of the model"."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from batcher.types import Array, Tensors
from protos import model_config_pb2 as mc
from server.models.sequence_config import SequenceModel, sequence_model
from server.models.warmup import check_sample, warm_up
from tests.support import sequence_models as sm

X_ONLY = 'inputs { key: "x" value { data_type: TYPE_FP32 dims: [ %s ] random_data: true } }'
ACC = 'inputs { key: "acc" value { data_type: %s dims: [ %s ] input_data_file: "acc.bin" } }'


class OrtRecorder:
    """An instance running the graph in onnxruntime (so a feed it cannot take fails as at a load),
    keeping each feed."""

    def __init__(self, path: Path) -> None:
        self._session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.feeds: list[dict[str, Array]] = []

    async def run(self, inputs: Tensors) -> dict[str, Array]:
        self.feeds.append(dict(inputs))
        names = [o.name for o in self._session.get_outputs()]
        return dict(zip(names, self._session.run(None, dict(inputs)), strict=True))


def loaded(model: Path, text: str, directory: Path) -> tuple[mc.ModelConfig, SequenceModel, OrtRecorder]:
    config = text_format.Parse(text, mc.ModelConfig(name="m"))
    instance = OrtRecorder(model)
    session = instance._session
    seq = sequence_model(config, session.get_inputs(), session.get_outputs(), directory, "config.pbtxt")
    assert seq is not None
    return config, seq, instance


def warm(config: mc.ModelConfig, seq: SequenceModel, instance: OrtRecorder, directory: Path) -> None:
    asyncio.run(warm_up(config, [instance], directory, 1 << 20, seq))


def accumulator(tmp_path: Path, sample: str, batch_size: int = 3, initial_file: str = "") -> str:
    return (
        sm.accumulator_config(initial_file=initial_file)
        + 'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        + f'model_warmup {{ name: "w" batch_size: {batch_size} count: 2 {sample} }}\n'
    )


def test_a_sample_of_the_model_inputs_gets_the_initial_state(tmp_path: Path) -> None:
    model = sm.accumulator_model(tmp_path / "acc.onnx")
    config, seq, instance = loaded(model, accumulator(tmp_path, X_ONLY % "4"), tmp_path)
    warm(config, seq, instance, tmp_path)
    assert len(instance.feeds) == 2  # count 2: each run a fresh one-request sequence
    for feed in instance.feeds:
        assert sorted(feed) == ["acc", "x"]
        assert feed["acc"].dtype == np.float32 and feed["acc"].tolist() == [[0.0] * 4] * 3


def test_an_initial_state_data_file_feeds_the_warm_up(tmp_path: Path) -> None:
    (tmp_path / "initial_state").mkdir()
    (tmp_path / "initial_state" / "init.bin").write_bytes(np.array([10, 20, 30, 40], np.float32).tobytes())
    model = sm.accumulator_model(tmp_path / "acc.onnx")
    text = accumulator(tmp_path, X_ONLY % "4", batch_size=2, initial_file="init.bin")
    config, seq, instance = loaded(model, text, tmp_path)
    warm(config, seq, instance, tmp_path)
    assert instance.feeds[0]["acc"].tolist() == [[10, 20, 30, 40]] * 2


def test_a_sample_giving_the_state_input_is_used_as_given(tmp_path: Path) -> None:
    """As Triton, whose warm-up samples go to the instance directly: the state input's value."""
    (tmp_path / "warmup").mkdir()
    given = np.arange(8, dtype=np.float32).reshape(2, 4)
    (tmp_path / "warmup" / "acc.bin").write_bytes(given.tobytes())
    model = sm.accumulator_model(tmp_path / "acc.onnx")
    text = accumulator(tmp_path, X_ONLY % "4" + " " + ACC % ("TYPE_FP32", "4"), batch_size=2)
    config, seq, instance = loaded(model, text, tmp_path)
    warm(config, seq, instance, tmp_path)
    assert instance.feeds[0]["acc"].tolist() == given.tolist()


def test_control_inputs_get_a_one_request_sequence(tmp_path: Path) -> None:
    """START, END and READY their true values, CORRID 0 (no client sequence has it)."""
    model = sm.controls_model(tmp_path / "controls.onnx")
    text = (
        sm.CONTROLS_CONFIG
        + 'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        + f'model_warmup {{ name: "w" batch_size: 2 {X_ONLY % "1"} }}\n'
    )
    config, seq, instance = loaded(model, text, tmp_path)
    warm(config, seq, instance, tmp_path)
    feed = instance.feeds[0]
    assert feed["start"].dtype == np.int32 and feed["start"].tolist() == [[1], [1]]
    assert feed["end"].dtype == np.float32 and feed["end"].tolist() == [[2.5], [2.5]]
    assert feed["ready"].dtype == np.bool_ and feed["ready"].tolist() == [[True], [True]]
    assert feed["corrid"].dtype == np.uint64 and feed["corrid"].tolist() == [[0], [0]]


def test_a_state_batched_on_axis_1_is_fed_with_its_batch_there(tmp_path: Path) -> None:
    model = sm.accumulator_axis1_model(tmp_path / "axis1.onnx")
    text = (
        sm.AXIS1_CONFIG
        + 'input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
        + f'model_warmup {{ name: "w" batch_size: 5 {X_ONLY % "3"} }}\n'
    )
    config, seq, instance = loaded(model, text, tmp_path)
    warm(config, seq, instance, tmp_path)  # s f32[2, B, 3]: batch-first (5, 2, 3) failed in onnxruntime
    assert instance.feeds[0]["s"].shape == (2, 5, 3)


def test_a_model_without_a_batch_dimension_gets_the_state_as_is(tmp_path: Path) -> None:
    model = sm.accumulator_model(tmp_path / "acc.onnx")
    text = (
        sm.accumulator_config()
        .replace("max_batch_size: 8", "max_batch_size: 0")
        .replace("dims: [ 4 ]", "dims: [ 1, 4 ]")
        + 'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1, 4 ] } ]\n'
        + f'model_warmup {{ name: "w" batch_size: 1 {X_ONLY % "1, 4"} }}\n'
    )
    config, seq, instance = loaded(model, text, tmp_path)
    warm(config, seq, instance, tmp_path)
    assert instance.feeds[0]["acc"].shape == (1, 4)


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (
            ACC % ("TYPE_FP32", "3"),
            r"input 'acc' \(state input of sequence_batching\): dims \[3\] do not fit",
        ),
        (ACC % ("TYPE_INT32", "4"), r"input 'acc' \(state input .*\): data_type TYPE_INT32 is not the state"),
        (
            'inputs { key: "nope" value { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } }',
            r"inputs \['nope'\] are not inputs of the model \(\['x'\]; sequence_batching's state and "
            r"control inputs: \['acc'\]\)",
        ),
    ],
)
def test_a_sample_state_input_that_cannot_run_is_named(tmp_path: Path, extra: str, said: str) -> None:
    text = accumulator(tmp_path, X_ONLY % "4" + " " + extra)
    config = text_format.Parse(text, mc.ModelConfig(name="m"))
    with pytest.raises(ValueError, match=said):
        check_sample(config, config.model_warmup[0], 1 << 20)
