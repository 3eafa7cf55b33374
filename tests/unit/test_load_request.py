"""RepositoryModelLoad parameters: `config` and `file:` applied when valid, refused by name."""

from __future__ import annotations

import errno
from pathlib import Path, PurePosixPath

import grpc
import pytest

from protos import grpc_service_pb2 as pb
from server.errors import FilesNoSpace, FilesNotStored, InvalidRequest, status_for
from server.models import load_request
from server.models.load_request import parse_load_parameters, write_model_directory

Param = pb.ModelRepositoryParameter


def test_config_json_becomes_the_model_config() -> None:
    got = parse_load_parameters(
        "m", {"config": Param(string_param='{"max_batch_size": 4, "backend": "onnxruntime"}')}
    )
    assert got.config is not None and got.config.max_batch_size == 4 and not got.files


def test_a_config_past_its_bound_is_refused_before_it_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    # 17 MB of parameters in the JSON had held the event loop 6.6 s in json_format.Parse.
    parsed: list[str] = []
    monkeypatch.setattr(load_request.json_format, "Parse", lambda text, config: parsed.append(text))
    most = load_request.MAX_CONFIG_JSON_BYTES
    text = '{"max_batch_size": 4}'.ljust(most)  # JSON may end in spaces
    parse_load_parameters("m", {"config": Param(string_param=text)})
    assert parsed == [text]
    with pytest.raises(InvalidRequest) as refused:
        parse_load_parameters("m", {"config": Param(string_param=text + " ")})
    bound = "(the server's bound)"
    assert (
        str(refused.value)
        == f"parameters['config'] is at least {most + 1} bytes; at most {most} bytes of JSON {bound}"
    )
    euros = '{"max_batch_size": 4}'.ljust(most + 1 - 3000) + "€" * 1000  # fewer characters than bytes
    with pytest.raises(InvalidRequest, match=r"is at least 262145 bytes"):
        parse_load_parameters("m", {"config": Param(string_param=euros)})
    assert len(parsed) == 1  # neither parsed


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
        (  # past int64: it was loaded and served as version 9223372036854775808
            {"config": Param(string_param="{}"), "file:9223372036854775808/x": Param(bytes_param=b"x")},
            "versions are int64",
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


def test_a_folder_the_files_cannot_go_in_is_refused_naming_the_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "uploads").write_text("a file where the folder goes")  # as a read-only cache_dir
    with pytest.raises(FilesNotStored) as refused:
        write_model_directory(tmp_path / "uploads", "m", {PurePosixPath("1/model.onnx"): b"abc"})
    assert type(refused.value) is FilesNotStored
    assert str(refused.value).startswith("the server cannot store the files sent with model 'm': ")
    assert status_for(refused.value)[:2] == (grpc.StatusCode.FAILED_PRECONDITION, str(refused.value))
    (record,) = [r for r in caplog.records if r.name == "server.models.load_request"]
    assert "uploads" in record.getMessage()


def test_a_full_disk_is_resource_exhausted_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(FilesNoSpace, match=r"'m': No space left on device$") as refused:
        write_model_directory(tmp_path, "m", {PurePosixPath("1/model.onnx"): b"abc"})
    assert status_for(refused.value)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert list(tmp_path.iterdir()) == []  # the half-written directory is removed
