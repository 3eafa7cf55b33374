"""L0_sequence_batcher: Triton's sequence-batcher test (qa/L0_sequence_batcher/sequence_batcher_test.py).

As its test.sh runs it with BACKENDS=onnx: five model trials, a fresh server per test (the tests
read cumulative statistics), each a repository test.sh lays out from the generated sequence models:

    models0  the nobatch models, `count: 4` instances        NO_BATCHING=1 MODEL_INSTANCES=4 FIXED
    models1  max_batch_size 4, `count: 1`                     NO_BATCHING=0 MODEL_INSTANCES=1 FIXED
    models2  max_batch_size 2, `count: 2`                     NO_BATCHING=0 MODEL_INSTANCES=2 FIXED
    models4  max_batch_size 1, `count: 4`                     NO_BATCHING=0 MODEL_INSTANCES=4 FIXED
    modelsv  variable-shape models, max_batch_size 4, count 1 NO_BATCHING=0 MODEL_INSTANCES=1 VARIABLE

Each holds onnx_{,nobatch_}sequence_{int32,bool} plus, with ENSEMBLES=1, the ensembles
simple_/sequence_/fan_onnx_*sequence_int32 and their identity-backend `nop_*` steps (test.sh turns
the nop models' KIND_CPU into KIND_GPU; that edit is kept). test.sh runs with IMPLICIT_STATE=0;
qa/L0_implicit_state/test.sh runs the same test.sh again with IMPLICIT_STATE=1 and ENSEMBLES=0
(implicit-state models, dtypes object/int32/bool): both are here, the second as runs `*-implicit`.
INITIAL_STATE_FILE/INITIAL_STATE_ZERO stay 0 as in both callers. Once per invocation test.sh also
runs SequenceBatcherRequestTimeoutTest on its own identity-backend model; it is run once here.

Left out, each with its reason in EXCLUDED: the DELAY_TESTS and QUEUE_DELAY_TESTS (they need
Triton's TRITONSERVER_DELAY_SCHEDULER / TRITONSERVER_BACKLOG_DELAY_SCHEDULER hooks, and assert
that the variables are set), test_ragged_batch_allowed (custom backend, run by test.sh only when
BACKENDS has `custom`) and SequenceBatcherPreserveOrderingTest (Python backend, only with `python`).
Nothing is left out for time: the whole matrix (7 tests x 5 trials x 2 state modes, plus the
timeout pair) is run.
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

from loadtest.triton_qa.harness import copy_models
from loadtest.triton_qa.suite_types import Builder, Run, Step, Suite, nop_version_dirs, sed

NO_DELAY_TESTS = [
    "test_simple_sequence",
    "test_length1_sequence",
    "test_batch_size",
    "test_no_sequence_start",
    "test_no_sequence_start2",
    "test_no_sequence_end",
    "test_no_correlation_id",
]
DELAY_TESTS = [
    "test_backlog_fill",
    "test_backlog_fill_no_end",
    "test_backlog_same_correlation_id",
    "test_backlog_same_correlation_id_no_end",
    "test_backlog_sequence_timeout",
    "test_half_batch",
    "test_skip_batch",
    "test_full_batch",
    "test_ragged_batch",
    "test_backlog",
]
QUEUE_DELAY_TESTS = [
    "test_queue_delay_no_min_util",
    "test_queue_delay_half_min_util",
    "test_queue_delay_full_min_util",
]
HOOK = "TRITONSERVER_DELAY_SCHEDULER / TRITONSERVER_BACKLOG_DELAY_SCHEDULER (Triton scheduler test hooks)"
EXCLUDED = {
    **{f"SequenceBatcherTest.{t}": f"{HOOK}; asserts they are set" for t in DELAY_TESTS},
    **{f"SequenceBatcherTest.{t}": f"{HOOK}, on test.sh's queue_delay_models" for t in QUEUE_DELAY_TESTS},
    "SequenceBatcherTest.test_ragged_batch_allowed": "Triton's custom backend (custom_sequence_int32);"
    " test.sh runs it only when BACKENDS has custom, with TRITONSERVER_DELAY_SCHEDULER=12",
    "SequenceBatcherPreserveOrderingTest.test_sequence_with_preserve_ordering": "Triton's Python backend"
    " (qa/python_models/sequence_py); test.sh runs it only when BACKENDS has python",
    "SequenceBatcherPreserveOrderingTest.test_sequence_without_preserve_ordering": "Triton's Python backend"
    " (qa/python_models/sequence_py); test.sh runs it only when BACKENDS has python",
}

# trial -> (max_batch_size written by test.sh, or None to keep the nobatch models' 0; instance count)
TRIALS: dict[str, tuple[int | None, int]] = {
    "0": (None, 4),
    "1": (4, 1),
    "2": (2, 2),
    "4": (1, 4),
    "v": (4, 1),
}
ENSEMBLE_ROOT = "qa_ensemble_model_repository"


def _sources(implicit: bool) -> tuple[str, str]:
    """test.sh's FIXED_MODEL_REPOSITORY and VAR_MODEL_REPOSITORY."""
    if implicit:
        return "qa_sequence_implicit_model_repository", "qa_variable_sequence_implicit_model_repository"
    return "qa_sequence_model_repository", "qa_variable_sequence_model_repository"


def build_trial(trial: str, implicit: bool, gen: Path, qa: Path, repo: Path) -> None:
    """models<trial>: test.sh's copies and sed edits (get_datatype, then the ensembles for onnx)."""
    fixed, variable = _sources(implicit)
    source = variable if trial == "v" else fixed
    kind = "onnx_nobatch" if trial == "0" else "onnx"
    dtypes = ["object", "int32", "bool"] if implicit else ["int32", "bool"]
    ensembles = not implicit  # qa/L0_implicit_state/test.sh exports ENSEMBLES=0
    names = [name for dtype in dtypes for name in copy_models(gen / source, repo, f"{kind}_sequence_{dtype}")]
    if ensembles:
        for dtype in (d for d in dtypes if d != "bool"):  # no ensembles are generated for bool
            names += copy_models(gen / ENSEMBLE_ROOT / source, repo, f"*_{kind}_sequence_{dtype}")
    max_batch, count = TRIALS[trial]
    for name in names:
        config = repo / name / "config.pbtxt"
        if max_batch is not None:
            sed(config, r"^max_batch_size:.*", f"max_batch_size: {max_batch}")
        sed(config, r"kind: KIND_GPU", f"kind: KIND_GPU\ncount: {count}")
        sed(config, r"kind: KIND_CPU", f"kind: KIND_CPU\ncount: {count}")
    if ensembles:  # every trial takes the nop models of the fixed-shape ensembles
        for nop in copy_models(gen / ENSEMBLE_ROOT / fixed, repo, "nop_*"):
            sed(repo / nop / "config.pbtxt", r"kind: KIND_CPU", "kind: KIND_GPU")
        nop_version_dirs(repo)


def build_request_timeout(gen: Path, qa: Path, repo: Path) -> None:
    """request_timeout_models: the suite's own identity-backend model and an empty version 1."""
    name = "custom_sequence_int32_timeout"
    shutil.copytree(qa / "L0_sequence_batcher" / "request_timeout_models" / name, repo / name)
    (repo / name / "1").mkdir(exist_ok=True)


def _env(trial: str, implicit: bool) -> dict[str, str]:
    """What test.sh (or L0_implicit_state's test.sh) exports for a trial."""
    return {
        "BACKENDS": "onnx",
        "ENSEMBLES": "0" if implicit else "1",
        "IMPLICIT_STATE": "1" if implicit else "0",
        "INITIAL_STATE_FILE": "0",
        "INITIAL_STATE_ZERO": "0",
        "USE_SINGLE_BUFFER": "0",
        "NO_BATCHING": "1" if trial == "0" else "0",
        "MODEL_INSTANCES": "1" if trial == "v" else str(TRIALS[trial][1]),
        "BATCHER_TYPE": "VARIABLE" if trial == "v" else "FIXED",
    }


def sequence_suite() -> Suite:
    repositories: dict[str, Builder] = {
        f"models{trial}{'-implicit' if implicit else ''}": partial(build_trial, trial, implicit)
        for implicit in (False, True)
        for trial in TRIALS
    }
    repositories["request_timeout_models"] = build_request_timeout
    runs = [
        Run(
            key,
            key,
            [Step([f"SequenceBatcherTest.{t}"]) for t in NO_DELAY_TESTS],
            env=_env(trial, implicit),
            per_test_server=True,
        )
        for implicit in (False, True)
        for trial in TRIALS
        for key in [f"models{trial}{'-implicit' if implicit else ''}"]
    ]
    runs.append(
        Run(
            "timeout",
            "request_timeout_models",
            [Step(["SequenceBatcherRequestTimeoutTest"])],
            env=_env("1", False),
        )
    )
    # The excluded tests, each reported once (test.sh runs the delay tests in every trial).
    runs.append(
        Run(
            "excluded",
            "models1",
            [Step([name]) for name in EXCLUDED],
            env=_env("1", False),
            per_test_server=True,
        )
    )
    generated = [
        *_sources(False),
        *_sources(True),
        f"{ENSEMBLE_ROOT}/qa_sequence_model_repository",
        f"{ENSEMBLE_ROOT}/qa_variable_sequence_model_repository",
    ]
    return Suite(
        name="L0_sequence_batcher",
        module="sequence_batcher_test",
        generated=generated,
        repositories=repositories,
        runs=runs,
        excluded=EXCLUDED,
    )
