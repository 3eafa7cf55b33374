"""Which of Triton's QA suites run, on which repositories, and which of their tests are left out, and why.

Each suite mirrors its `qa/L0_x/test.sh`: the same generated models copied the same way with the same
config edits, for the CPU target and the ONNX backend, over gRPC only. A suite is a list of runs; a
run is one server on one repository and one or more steps (a step: test specs, and what test.sh does
to the repository before them). `EXCLUDED` says, per test, why it does not count: it needs a Triton
test hook, a GPU, HTTP, shared memory, or a backend other than ONNX (and `identity`, which sluiceway
builds in). Every other test counts, pass or fail.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from loadtest.triton_qa.harness import append_config, copy_models
from loadtest.triton_qa.suite_batcher import batcher_suite
from loadtest.triton_qa.suite_sequence import sequence_suite
from loadtest.triton_qa.suite_types import Run, Step, Suite, nop_version_dirs, sed

# ---------------------------------------------------------------- L0_infer (cpu target, ONNX)
ENSEMBLE_MODELS = [
    "wrong_label_int32_float32_float32",
    "label_override_int32_float32_float32",
    "mix_type_int32_float32_float32",
    "batch_to_nobatch_float32_float32_float32",
    "batch_to_nobatch_nobatch_float32_float32_float32",
    "nobatch_to_batch_float32_float32_float32",
    "nobatch_to_batch_nobatch_float32_float32_float32",
    "mix_nobatch_batch_float32_float32_float32",
]


def build_infer(gen: Path, qa: Path, repo: Path) -> None:
    copy_models(gen / "qa_model_repository", repo, "onnx*")
    for bf16 in repo.glob("onnx_*bf16*"):  # test.sh removes them for the cpu target
        shutil.rmtree(bf16)
    copy_models(gen / "qa_ensemble_model_repository/qa_model_repository", repo, "*onnx*")
    copy_models(gen / "qa_ensemble_model_repository/qa_model_repository", repo, "nop_*")
    nop_version_dirs(repo)
    for name in ENSEMBLE_MODELS:
        shutil.copytree(qa / "ensemble_models" / name, repo / name)
        (repo / name / "1").mkdir(exist_ok=True)
    for config in repo.glob("onnx*/config.pbtxt"):
        append_config(config.parent, "instance_group [ { kind: KIND_CPU }]")
    # custom_zero_1_float32 (identity backend) and its nobatch copy, as test.sh edits them.
    custom = repo / "custom_zero_1_float32"
    shutil.copytree(qa / "custom_models" / "custom_zero_1_float32", custom)
    (custom / "1").mkdir(exist_ok=True)
    append_config(custom, "instance_group [ { kind: KIND_CPU }]")
    nobatch = repo / "custom_nobatch_zero_1_float32"
    shutil.copytree(custom, nobatch)
    sed(custom / "config.pbtxt", r"max_batch_size: 1", "max_batch_size: 8")
    sed(custom / "config.pbtxt", r"dims: \[ 1 \]", "dims: [ -1 ]")
    sed(nobatch / "config.pbtxt", "custom_zero_1_float32", "custom_nobatch_zero_1_float32")
    sed(nobatch / "config.pbtxt", r"max_batch_size: 1", "max_batch_size: 0")
    sed(nobatch / "config.pbtxt", r"dims: \[ 1 \]", "dims: [ -1, -1 ]")


INFER = Suite(
    name="L0_infer",
    module="infer_test",
    generated=[
        "qa_model_repository",
        "qa_ensemble_model_repository/qa_model_repository",
    ],
    repositories={"models": build_infer},
    runs=[Run("cpu", "models", [Step(["InferTest"])], env={"BACKENDS": "onnx", "ENSEMBLES": "1"})],
    excluded={},
    extra_parts=["qa/ensemble_models", "qa/custom_models"],
)


# ---------------------------------------------------------------- L0_infer_variable
def build_infer_variable(gen: Path, qa: Path, repo: Path) -> None:
    copy_models(gen / "qa_variable_model_repository", repo)
    copy_models(gen / "qa_ensemble_model_repository/qa_variable_model_repository", repo)
    for bf16 in repo.glob("onnx_*bf16*"):
        shutil.rmtree(bf16)
    nop_version_dirs(repo)
    for config in repo.glob("onnx*/config.pbtxt"):
        append_config(config.parent, "instance_group [ { kind: KIND_CPU }]")


INFER_VARIABLE = Suite(
    name="L0_infer_variable",
    module="infer_variable_test",
    generated=["qa_variable_model_repository", "qa_ensemble_model_repository/qa_variable_model_repository"],
    repositories={"models": build_infer_variable},
    runs=[Run("cpu", "models", [Step(["InferVariableTest"])])],
    excluded={},
)


# ---------------------------------------------------------------- L0_infer_zero
def build_infer_zero(gen: Path, qa: Path, repo: Path) -> None:
    copy_models(gen / "qa_identity_model_repository", repo)
    copy_models(gen / "qa_ensemble_model_repository/qa_identity_model_repository", repo)
    for plan in repo.glob("plan_compatible*"):
        shutil.rmtree(plan)
    nop_version_dirs(repo)


INFER_ZERO = Suite(
    name="L0_infer_zero",
    module="infer_zero_test",
    generated=["qa_identity_model_repository", "qa_ensemble_model_repository/qa_identity_model_repository"],
    repositories={"models": build_infer_zero},
    runs=[Run("cpu", "models", [Step(["InferZeroTest"])], env={"BACKENDS": "onnx"})],
    excluded={},
)


# ---------------------------------------------------------------- L0_infer_reshape
RESHAPE_CUSTOM = [
    "nobatch_zero_3_float32",
    "nobatch_zero_4_float32",
    "zero_1_float32",
    "zero_2_float32",
    "zero_3_float32",
    "zero_4_float32",
    "nobatch_zero_1_int32",
    "nobatch_zero_2_int32",
    "nobatch_zero_3_int32",
    "zero_1_int32",
    "zero_2_int32",
    "zero_3_int32",
]


def build_infer_reshape(gen: Path, qa: Path, repo: Path) -> None:
    copy_models(gen / "qa_reshape_model_repository", repo)
    copy_models(gen / "qa_ensemble_model_repository/qa_reshape_model_repository", repo)
    for name in RESHAPE_CUSTOM:  # test.sh: identity-backend copies of the ONNX reshape models
        source, target = repo / f"onnx_{name}", repo / f"custom_{name}"
        if not source.is_dir():
            continue
        shutil.copytree(source, target)
        for version in target.iterdir():
            if version.is_dir():
                shutil.rmtree(version)
                version.mkdir()
        config = target / "config.pbtxt"
        sed(config, r"^platform:.*", 'backend: "identity"')
        sed(config, r"^name:.*", f'name: "custom_{name}"')
        append_config(target, "instance_group [ { kind: KIND_CPU }]")
    nop_version_dirs(repo)


INFER_RESHAPE = Suite(
    name="L0_infer_reshape",
    module="infer_reshape_test",
    generated=["qa_reshape_model_repository", "qa_ensemble_model_repository/qa_reshape_model_repository"],
    repositories={"models": build_infer_reshape},
    runs=[Run("cpu", "models", [Step(["InferReshapeTest"])])],
    excluded={},
)


# ---------------------------------------------------------------- L0_server_status
def build_server_status(gen: Path, qa: Path, repo: Path) -> None:
    copy_models(gen / "qa_model_repository", repo)


def server_status_edit(repo: Path) -> None:
    """test.sh between the two classes: versions 2 and 3 of onnx_int32_int32_int32 go away."""
    for version in ("2", "3"):
        shutil.rmtree(repo / "onnx_int32_int32_int32" / version, ignore_errors=True)


HTTP_LOOP = "loops over HTTP (localhost:8000) and gRPC in one test; sluiceway serves gRPC only"
SERVER_STATUS = Suite(
    name="L0_server_status",
    module="server_status_test",
    generated=["qa_model_repository"],
    repositories={"models": build_server_status},
    runs=[
        Run(
            "poll",
            "models",
            [Step(["ServerMetadataTest"]), Step(["ModelMetadataTest"], server_status_edit, settle_s=3.0)],
            server_args=["--model-control-mode", "poll", "--repository-poll-secs", "1"],
        )
    ],
    excluded={
        f"{cls}.{test}": HTTP_LOOP
        for cls, tests in {
            "ServerMetadataTest": [
                "test_basic",
                "test_unknown_model",
                "test_unknown_model_version",
                "test_model_latest_infer",
                "test_model_specific_infer",
            ],
            "ModelMetadataTest": [
                "test_model_versions_deleted",
                "test_model_versions_added",
                "test_infer_stats_no_model_version",
                "test_infer_stats_no_model",
            ],
        }.items()
        for test in tests
    },
)


# ---------------------------------------------------------------- L0_input_validation
def build_input_shape(gen: Path, qa: Path, repo: Path) -> None:
    copy_models(gen / "qa_model_repository", repo, "onnx_object_int32_int32")


def build_empty(gen: Path, qa: Path, repo: Path) -> None:
    """ModelNameValidationTest: an empty repository in explicit mode."""


PYTHON_BACKEND = "its models use Triton's Python backend (qa/L0_input_validation/models/*/1/model.py)"
INPUT_VALIDATION = Suite(
    name="L0_input_validation",
    module="input_validation_test",
    generated=["qa_model_repository"],
    repositories={"shape": build_input_shape, "empty": build_empty},
    runs=[
        Run(
            "shape",
            "shape",
            [Step(["InputValTest", "InputShapeTest"])],
            server_args=["--allow-client-shm"],
        ),
        Run(
            "names",
            "empty",
            [Step(["ModelNameValidationTest"])],
            server_args=["--model-control-mode", "explicit"],
        ),
    ],
    excluded={
        **{
            f"InputValTest.test_input_validation_{name}": PYTHON_BACKEND
            for name in ("required_empty", "optional_empty", "required_missing", "optional", "all_optional")
        },
        "InputShapeTest.test_input_shape_validation": "model pt_identity: Triton's PyTorch backend",
        "InputShapeTest.test_wrong_input_shape_tensor_size": "TensorRT plan models with shape tensors"
        " (plan_zero_1_float32_int32): Triton's TensorRT backend",
    },
)

SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        INFER,
        INFER_VARIABLE,
        INFER_ZERO,
        INFER_RESHAPE,
        SERVER_STATUS,
        INPUT_VALIDATION,
        batcher_suite(),
        sequence_suite(),
    )
}
