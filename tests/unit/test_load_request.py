"""RepositoryModelLoad parameters: `config` and `file:` applied when valid, refused by name."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from protos import grpc_service_pb2 as pb
from server.errors import InvalidRequest
from server.models.load_request import parse_load_parameters, write_model_directory

Param = pb.ModelRepositoryParameter


def test_config_json_becomes_the_model_config() -> None:
    got = parse_load_parameters(
        "m", {"config": Param(string_param='{"max_batch_size": 4, "backend": "onnxruntime"}')}
    )
    assert got.config is not None and got.config.max_batch_size == 4 and not got.files


def test_files_are_parsed_with_their_version_directory() -> None:
    got = parse_load_parameters(
        "m", {"config": Param(string_param="{}"), "file:1/model.onnx": Param(bytes_param=b"onnx")}
    )
    assert got.files == {PurePosixPath("1/model.onnx"): b"onnx"}


@pytest.mark.parametrize(
    ("parameters", "words"),
    [
        ({"config": Param(string_param="{not json")}, "parameters['config'] is not a JSON ModelConfig"),
        ({"config": Param(string_param='{"no_such_field": 1}')}, "parameters['config'] is not a JSON"),
        ({"config": Param(string_param='{"name": "other"}')}, "names model 'other'"),
        ({"config": Param(bool_param=True)}, "must be a string_param"),
        ({"file:1/model.onnx": Param(bytes_param=b"x")}, "need the 'config' parameter"),
        ({"config": Param(string_param="{}"), "file:1/x": Param(string_param="x")}, "must be a bytes_param"),
        ({"config": Param(string_param="{}"), "file:../1/x": Param(bytes_param=b"x")}, "relative path"),
        ({"config": Param(string_param="{}"), "file:1/../../x": Param(bytes_param=b"x")}, "relative path"),
        ({"config": Param(string_param="{}"), "file:/etc/x": Param(bytes_param=b"x")}, "relative path"),
        ({"config": Param(string_param="{}"), "file:model.onnx": Param(bytes_param=b"x")}, "relative path"),
        ({"config": Param(string_param="{}"), "file:1\\x": Param(bytes_param=b"x")}, "relative path"),
        (
            {"config": Param(string_param="{}"), "file:v1/x": Param(bytes_param=b"x")},
            "not a version directory",
        ),
        (
            {"config": Param(string_param="{}"), "file:01/x": Param(bytes_param=b"x")},
            "not a version directory",
        ),
        ({"shadow": Param(string_param="x")}, "parameter 'shadow' is not supported"),
    ],
)
def test_bad_parameters_are_refused_by_name(parameters: dict[str, Param], words: str) -> None:
    with pytest.raises(
        InvalidRequest, match=words.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
    ):
        parse_load_parameters("m", parameters)


def test_files_are_written_inside_a_new_directory(tmp_path: Path) -> None:
    root = write_model_directory(tmp_path, "m", {PurePosixPath("1/model.onnx"): b"abc"})
    assert root.parent == tmp_path
    assert (root / "m" / "1" / "model.onnx").read_bytes() == b"abc"
