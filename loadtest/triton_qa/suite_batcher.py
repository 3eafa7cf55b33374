"""L0_batcher: Triton's dynamic-batcher test (qa/L0_batcher/batcher_test.py), as its test.sh runs it.

The tests read cumulative model statistics, so each runs against a fresh server (test.sh starts one
per test too). Repositories: the ONNX `onnx_float32_float32_float32` with test.sh's edits
(`max_batch_size: 8`, version 1 only, preferred sizes [2, 6] and a 10 s queue delay), its
variable-shape twin (test.sh's `s/16/-1/g`), and the preferred-batch-only repository.
"""

from __future__ import annotations

import re
import shutil
from functools import partial
from pathlib import Path

from loadtest.triton_qa.suite_types import Run, Step, Suite

MODEL = "onnx_float32_float32_float32"
DELAYED = "dynamic_batching { preferred_batch_size: [ 2, 6 ], max_queue_delay_microseconds: 10000000 }"
# qa/L0_batcher/test.sh: NO_DELAY_TESTS on the fixed- and the variable-shape repository.
NO_DELAY_TESTS = [
    "test_static_batch_preferred",
    "test_static_batch_lt_any_preferred",
    "test_static_batch_not_preferred",
    "test_static_batch_gt_max_preferred",
    "test_multi_batch_not_preferred",
    "test_multi_batch_gt_max_preferred",
    "test_multi_batch_sum_gt_max_preferred",
    "test_multi_same_output0",
    "test_multi_same_output1",
    "test_multi_different_outputs",
    "test_multi_different_output_order",
]
RAGGED_TEST = "test_multi_batch_different_shape_allow_ragged"  # its trials include the identity backend
DIFFERENT_SHAPE_TESTS = [  # variable-shape repository only
    "test_multi_batch_not_preferred_different_shape",
    "test_multi_batch_preferred_different_shape",
    "test_multi_batch_different_shape",
]
# Run by test.sh with TRITONSERVER_DELAY_SCHEDULER=N: Triton's scheduler then holds the first batch
# until N requests are queued. The tests assert the variable is set; sluiceway has no such hook.
DELAY_TESTS = {
    "test_multi_batch_delayed_sum_gt_max_preferred": 2,
    "test_multi_batch_use_biggest_preferred": 6,
    "test_multi_batch_use_best_preferred": 3,
    "test_multi_batch_delayed_use_max_batch": 3,
    "test_multi_batch_delayed_preferred_different_shape": 4,
    "test_preferred_batch_only_aligned": 4,
    "test_preferred_batch_only_unaligned": 5,
    "test_preferred_batch_only_use_biggest_preferred": 7,
    "test_preferred_batch_only_use_no_preferred_size": 3,
}
IDENTITY = "Triton's identity backend model custom_zero_1_float32"
EXCLUDED = {
    "BatcherTest.test_multi_batch_preserve_ordering": "TRITONSERVER_DELAY_SCHEDULER=12 (Triton test hook)"
    " and server --trace-file timestamps checked by verify_timestamps.py",
    **{
        f"BatcherTest.{t}": f"TRITONSERVER_DELAY_SCHEDULER={n} (Triton scheduler test hook)"
        for t, n in DELAY_TESTS.items()
    },
}


def add_model(
    dynamic_batching: str, variable: bool, source_name: str, gen: Path, qa: Path, repo: Path
) -> None:
    """cp -r the model, then test.sh's sed edits and its appended dynamic_batching block."""
    target = repo / MODEL
    shutil.copytree(gen / source_name / MODEL, target)
    config = target / "config.pbtxt"
    text = config.read_text()
    text = re.sub(r"(?m)^max_batch_size:.*$", "max_batch_size: 8", text)
    text = re.sub(r"(?m)^version_policy:.*$", "version_policy: { specific { versions: [1] }}", text)
    text += f"\n{dynamic_batching}\n"
    if variable:  # test.sh: sed -i "s/16/-1/g" var_models/*/config.pbtxt
        text = text.replace("16", "-1")
    config.write_text(text)


MAX_QUEUE_DELAY_ONLY_TESTS = ["test_max_queue_delay_only_default", "test_max_queue_delay_only_non_default"]


def add_custom_model(gen: Path, qa: Path, repo: Path) -> None:
    """test.sh's custom_models: the identity-backend custom_zero_1_float32 with dims [-1],
    max_batch_size 100, no queue delay and a 100 ms execution. (test.sh's later sed meant to set
    a 20 ms delay for the _non_default test matches nothing, so both tests run with this config.)"""
    target = repo / "custom_zero_1_float32"
    shutil.copytree(qa / "custom_models" / "custom_zero_1_float32", target)
    (target / "1").mkdir(exist_ok=True)
    config = target / "config.pbtxt"
    text = re.sub(r"dims:.*\[.*\]", "dims: [ -1 ]", config.read_text())
    text = re.sub(r"max_batch_size:.*", "max_batch_size: 100", text)
    text += "\ndynamic_batching { max_queue_delay_microseconds: 0}\ninstance_group [ { kind: KIND_GPU } ]\n"
    text += 'parameters [\n{ key: "execute_delay_ms"; value: { string_value: "100" }}\n]\n'
    config.write_text(text)


def add_ragged_models(gen: Path, qa: Path, repo: Path) -> None:
    """test.sh's allow-ragged models in var_models: the identity custom_zero_1_float32 and the ONNX
    onnx_zero_1_float32 (batch_output BATCH_SCATTER_WITH_INPUT_SHAPE), both allow_ragged_batch."""
    ragged = 'name: "INPUT0"\nallow_ragged_batch: true'
    delayed = "dynamic_batching { preferred_batch_size: [ 2, 6 ], max_queue_delay_microseconds: 10000000 }"
    custom = repo / "custom_zero_1_float32"
    shutil.copytree(qa / "custom_models" / "custom_zero_1_float32", custom)
    (custom / "1").mkdir(exist_ok=True)
    text = (custom / "config.pbtxt").read_text() + "\ninstance_group [ { kind: KIND_GPU count: 1 }]\n"
    text = re.sub(r"(?m)^max_batch_size:.*", "max_batch_size: 8", text)
    text = re.sub(r"dims:.*\[.*\]", "dims: [ -1 ]", text)
    text = re.sub(r'name:.*"INPUT0"', ragged, text)
    text = re.sub(r"(?m)^version_policy:.*", "version_policy: { specific { versions: [1] }}", text)
    (custom / "config.pbtxt").write_text(text + delayed + "\n")
    onnx = repo / "onnx_zero_1_float32"
    shutil.copytree(gen / "qa_identity_model_repository" / "onnx_nobatch_zero_1_float32", onnx)
    text = (onnx / "config.pbtxt").read_text().replace("nobatch_", "")
    text = re.sub(r"(?m)^max_batch_size:.*", "max_batch_size: 8", text).replace('name: "INPUT0"', ragged)
    scatter = 'target_name: "OUTPUT0" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "INPUT0"'
    text += f"\nbatch_output [{{{scatter} }}]\n"
    (onnx / "config.pbtxt").write_text(text + delayed + "\n")


def build_var_models(gen: Path, qa: Path, repo: Path) -> None:
    add_model(DELAYED, True, "qa_variable_model_repository", gen, qa, repo)
    add_ragged_models(gen, qa, repo)


def batcher_suite() -> Suite:
    def tests(names: list[str]) -> list[Step]:
        return [Step([f"BatcherTest.{t}"]) for t in names]

    excluded_steps = tests([name.split(".", 1)[1] for name in EXCLUDED])
    runs = [
        Run(
            "FIXED",
            "models",
            tests(NO_DELAY_TESTS),
            env={"BACKENDS": "onnx", "BATCHER_TYPE": "FIXED"},
            per_test_server=True,
        ),
        Run(
            "VARIABLE",
            "var_models",
            tests([*NO_DELAY_TESTS, *DIFFERENT_SHAPE_TESTS, RAGGED_TEST]) + excluded_steps,
            env={"BACKENDS": "onnx", "BATCHER_TYPE": "VARIABLE"},
            per_test_server=True,
        ),
    ]
    runs.append(
        Run(
            "MAX_QUEUE_DELAY_ONLY",
            "custom_models",
            tests(MAX_QUEUE_DELAY_ONLY_TESTS),
            env={"BACKENDS": "onnx", "BATCHER_TYPE": "FIXED"},
            per_test_server=True,
        )
    )
    return Suite(
        name="L0_batcher",
        module="batcher_test",
        generated=["qa_model_repository", "qa_variable_model_repository", "qa_identity_model_repository"],
        repositories={
            "models": partial(add_model, DELAYED, False, "qa_model_repository"),
            "var_models": build_var_models,
            "custom_models": add_custom_model,
        },
        extra_parts=["qa/custom_models"],
        runs=runs,
        excluded=EXCLUDED,
    )
