"""Model repository scanning: layout, version policies, one bad model among good ones."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from onnx import TensorProto, helper

from server.models.config import ConfigError
from server.models.repository import (
    ModelNotFoundInRepository,
    ModelSource,
    load_model_source,
    scan_repository,
)


def _onnx_bytes() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _model(
    root: Path,
    name: str,
    config: str | None = None,
    versions: tuple[int, ...] = (1,),
    filename: str = "model.onnx",
) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    if config is not None:
        (directory / "config.pbtxt").write_text(config)
    for version in versions:
        (directory / str(version)).mkdir()
        (directory / str(version) / filename).write_bytes(_onnx_bytes())
    return directory


def test_scan_keeps_good_models_and_reports_bad_ones(tmp_path: Path) -> None:
    _model(tmp_path, "good", 'name: "good" max_batch_size: 4')
    _model(tmp_path, "bad_config", "sequence_batcher { }")
    _model(tmp_path, "no_versions", "", versions=())
    missing = _model(tmp_path, "missing_file", "", versions=())
    (missing / "1").mkdir()
    (tmp_path / "README.md").write_text("not a model")
    (tmp_path / ".hidden").mkdir()

    models, errors = scan_repository(tmp_path)

    assert list(models) == ["good"]
    source = models["good"]
    assert isinstance(source, ModelSource)
    assert source.config.max_batch_size == 4
    assert source.directory == tmp_path / "good"
    assert source.versions == {1: tmp_path / "good" / "1" / "model.onnx"}
    assert sorted(errors) == ["bad_config", "missing_file", "no_versions"]
    assert "config.pbtxt:1:1: unsupported field 'sequence_batcher'" in errors["bad_config"]
    assert "no version directories" in errors["no_versions"]
    assert "version 1 has no model file model.onnx" in errors["missing_file"]


def test_a_model_file_that_is_none_says_what_it_is(tmp_path: Path) -> None:
    """A FIFO, a directory and a dangling link had all read "has no model file"; an empty file had
    been read by completion as a graph with no inputs ("input 'x' is not in the ONNX model")."""
    for name in ("fifo", "folder", "dangling", "empty"):
        (tmp_path / name / "1").mkdir(parents=True)
    os.mkfifo(tmp_path / "fifo" / "1" / "model.onnx")
    (tmp_path / "folder" / "1" / "model.onnx").mkdir()
    (tmp_path / "dangling" / "1" / "model.onnx").symlink_to(tmp_path / "nowhere.onnx")
    (tmp_path / "empty" / "1" / "model.onnx").write_bytes(b"")
    _, errors = scan_repository(tmp_path)
    assert "version 1 has model.onnx, not a regular file (a FIFO" in errors["fifo"]
    assert "version 1 has a directory model.onnx without model.onnx in it" in errors["folder"]
    assert "version 1 has a dangling symlink as its model file model.onnx (to " in errors["dangling"]
    assert "version 1's model.onnx is empty (0 bytes)" in errors["empty"]


def test_version_directories_past_int64_are_not_versions(tmp_path: Path) -> None:
    _model(tmp_path, "big", versions=(9223372036854775807, 9223372036854775808))
    assert list(load_model_source(tmp_path, "big").versions) == [9223372036854775807]


def test_model_without_config_takes_directory_name(tmp_path: Path) -> None:
    _model(tmp_path, "plain")
    source = load_model_source(tmp_path, "plain")
    assert source.config.name == "plain"
    assert not source.config.input  # completed later, from the ONNX graph
    assert list(source.versions) == [1]


def test_config_name_must_match_directory(tmp_path: Path) -> None:
    _model(tmp_path, "a", 'name: "b"')
    with pytest.raises(ConfigError, match="name 'b' differs from the directory name 'a'"):
        load_model_source(tmp_path, "a")


def test_invalid_config_is_rejected_at_scan(tmp_path: Path) -> None:
    _model(tmp_path, "a", 'platform: "tensorflow_savedmodel"')
    with pytest.raises(ConfigError, match="platform 'tensorflow_savedmodel'"):
        load_model_source(tmp_path, "a")


@pytest.mark.parametrize("name", ["absent", "../etc", ".", "", "a/b"])
def test_unknown_or_unsafe_names_are_not_found(tmp_path: Path, name: str) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    with pytest.raises(ModelNotFoundInRepository):
        load_model_source(tmp_path / "a", name)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("", [10]),
        ("version_policy { latest { num_versions: 2 } }", [3, 10]),
        ("version_policy { latest { num_versions: 9 } }", [1, 3, 10]),
        ("version_policy { all { } }", [1, 3, 10]),
        ("version_policy { specific { versions: [ 3, 1 ] } }", [1, 3]),
    ],
)
def test_version_policies(tmp_path: Path, policy: str, expected: list[int]) -> None:
    directory = _model(tmp_path, "m", policy, versions=(1, 3, 10))
    (directory / "latest").mkdir()  # non-numeric: ignored
    (directory / "020").mkdir()  # leading zero: ignored, as in Triton
    source = load_model_source(tmp_path, "m")
    assert sorted(source.versions) == expected
    assert all(path == directory / str(v) / "model.onnx" for v, path in source.versions.items())


def test_a_specific_version_missing_on_disk_leaves_the_others_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As Triton (a warning, the listed versions that are there load); it failed the whole model."""
    _model(tmp_path, "m", "version_policy { specific { versions: [ 1, 7 ] } }", versions=(1,))
    assert list(load_model_source(tmp_path, "m").versions) == [1]
    assert "versions [7] not found on disk; serving 1" in caplog.text
    _model(tmp_path, "n", "version_policy { specific { versions: [ 2 ] } }", versions=(1,))
    with pytest.raises(ConfigError, match=r"versions \[2\] not found on disk .* no other is listed"):
        load_model_source(tmp_path, "n")


def test_unselected_version_may_lack_a_model_file(tmp_path: Path) -> None:
    directory = _model(tmp_path, "m", versions=(2,))
    (directory / "1").mkdir()  # older version, empty: not selected by latest-1
    assert list(load_model_source(tmp_path, "m").versions) == [2]


def test_default_model_filename(tmp_path: Path) -> None:
    _model(tmp_path, "m", 'default_model_filename: "net.onnx"', filename="net.onnx")
    assert load_model_source(tmp_path, "m").versions[1].name == "net.onnx"


def test_model_onnx_directory_with_external_data(tmp_path: Path) -> None:
    directory = _model(tmp_path, "m", versions=())
    (directory / "1" / "model.onnx").mkdir(parents=True)
    (directory / "1" / "model.onnx" / "model.onnx").write_bytes(_onnx_bytes())
    assert load_model_source(tmp_path, "m").versions[1] == directory / "1" / "model.onnx" / "model.onnx"


def test_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot list"):
        scan_repository(tmp_path / "nope")


def test_a_config_file_named_in_another_case_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `Config.pbtxt` was ignored without a word: the model served as its graph alone says.
    _model(tmp_path, "m")
    (tmp_path / "m" / "Config.pbtxt").write_text("max_batch_size: 8\n")
    with caplog.at_level(logging.WARNING):
        source = load_model_source(tmp_path, "m")
    assert source.config.max_batch_size == 0  # not read, as in Triton (names are case-sensitive)
    assert "Config.pbtxt is not config.pbtxt (names are case-sensitive)" in caplog.text


def test_a_folder_whose_name_is_not_utf8_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder named by bytes that are not UTF-8 (Python holds them as surrogates) had stopped the
    server at start: UnicodeEncodeError setting the config's name. A model's name is a protobuf
    string, so no client could name it: skipped, said once, the other models served."""
    _model(tmp_path, "good")
    bad = os.fsencode(tmp_path) + b"/caf\xff"
    _model(Path(os.fsdecode(bad)).parent, os.fsdecode(b"caf\xff"))
    with caplog.at_level(logging.WARNING, logger="server.models.repository"):
        models, errors = scan_repository(tmp_path)
    assert list(models) == ["good"] and errors == {}
    assert "its name is not UTF-8" in caplog.text and "caf\ufffd" in caplog.text
