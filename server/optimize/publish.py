"""Publishing: the optimized model becomes the next version directory of the model in a Triton-layout
repository, beside the original; the version_policy is checked so the command can say whether the
new version will be served.

A model not yet in the repository gets the original as version 1 (a version to compare with and roll
back to) and the optimized one as version 2, with the source's config.pbtxt copied (name set), the
files it names beside it, and what named the source's versions rewritten.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from protos import model_config_pb2 as mc
from server.models.config import DRIFT_REFERENCE, ConfigError, load_config_file
from server.models.model_files import model_file, read_model_file
from server.models.repository import (
    CONFIG_FILENAME,
    DEFAULT_MODEL_FILENAME,
    ModelNotFoundInRepository,
    load_model_source,
)
from server.observability.sampling import MAX_REFERENCE_BYTES, check_reference, load_reference
from server.optimize.data import OptimizeError

TRAFFIC_PREFIX = "traffic_"  # the rollout's config parameters (server/models/traffic.py)
NEW_MODEL_VERSION = 2  # a new model: the original is version 1, the optimized one version 2


@dataclass(frozen=True)
class Source:
    """The model to optimize: its file, and the config.pbtxt beside it when it came from a model dir."""

    model_file: Path
    config_file: Path | None


@dataclass(frozen=True)
class Published:
    version: int
    directory: Path
    wrote_original: bool  # the model was new to the repository: the original went in as version 1
    served: bool  # whether the version_policy serves the new version
    note: str  # what the version_policy serves, or why the new version will not be served
    loads: bool = True  # False: the model does not load from the repository (note says why)


def _numeric_versions(model_dir: Path) -> list[int]:
    # Triton's rule, as the server applies it: numeric names not starting with "0".
    if not model_dir.is_dir():
        return []
    return sorted(
        int(c.name)
        for c in model_dir.iterdir()
        if c.is_dir() and c.name.isdigit() and not c.name.startswith("0")
    )


def resolve_source(path: Path, version: int | None = None) -> Source:
    """MODEL.onnx, a directory holding model.onnx, or a Triton model directory (`version`, or its newest
    served version)."""
    path = path.resolve()  # the quantization pre-processing runs in another working directory
    if path.is_file():
        return Source(path, None)
    if not path.is_dir():
        raise OptimizeError(f"{path}: no such model file or directory")
    config = path / CONFIG_FILENAME
    if not _numeric_versions(path) and (path / DEFAULT_MODEL_FILENAME).is_file():
        return Source(path / DEFAULT_MODEL_FILENAME, config if config.is_file() else None)
    config_file = config if config.is_file() else None
    if version is not None:  # any version on disk, served or not
        model_file = path / str(version) / _model_filename(path)
        if version not in _numeric_versions(path) or not model_file.is_file():
            raise OptimizeError(f"{path}: no version {version} with {model_file.name} in it")
        return Source(model_file, config_file)
    try:
        found = load_model_source(path.parent, path.name)
    except (ConfigError, ModelNotFoundInRepository) as err:
        raise OptimizeError(f"{path}: {err}") from None
    return Source(found.versions[max(found.versions)], config_file)


def _check_name(name: str) -> None:
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise OptimizeError(f"--model '{name}': a model name is one directory name, not starting with '.'")


def _model_filename(model_dir: Path) -> str:
    config = model_dir / CONFIG_FILENAME
    if config.is_file():
        try:
            return load_config_file(config).default_model_filename or DEFAULT_MODEL_FILENAME
        except ConfigError as err:
            raise OptimizeError(str(err)) from None
    return DEFAULT_MODEL_FILENAME


def external_files(model_file: Path) -> list[str]:
    """The files beside `model_file` holding its external weights (relative names)."""
    import onnx

    try:
        model = onnx.load(str(model_file), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError, OSError, ...
        raise OptimizeError(f"{model_file}: not a readable ONNX model: {err}") from None
    names: set[str] = set()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            names.update(e.value for e in tensor.external_data if e.key == "location")
    return sorted(names)


def _write_version(model_dir: Path, version: int, model_file: Path, filename: str) -> Path:
    """Copy into a hidden staging directory, then rename into place: a server scanning the repository
    meanwhile sees the whole version or none of it. External weight files go with the model (only
    model.onnx had: the version failed to load, "External data path does not exist")."""
    target = model_dir / str(version)
    staging = Path(tempfile.mkdtemp(prefix=".publishing-", dir=model_dir))
    try:
        shutil.copyfile(model_file, staging / filename)
        for name in external_files(model_file):
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model_file.parent / name, staging / name)
        if target.exists():
            raise OptimizeError(f"{target} appeared while publishing (another publish?): not overwritten")
        staging.chmod(0o755)  # mkdtemp makes it private; a server may run as another user
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _new_config(config_file: Path, name: str) -> mc.ModelConfig:
    """The source's config for a model new to the repository: its name set, and what named the
    source's versions rewritten (the new model has 1 and 2, and did not load): the traffic policy
    left out, a `specific` version_policy made to serve the published version."""
    try:
        config = load_config_file(config_file)
    except ConfigError as err:
        raise OptimizeError(str(err)) from None
    config.name = name
    for key in [k for k in config.parameters if k.startswith(TRAFFIC_PREFIX)]:
        del config.parameters[key]
    if config.version_policy.WhichOneof("policy_choice") == "specific":
        config.version_policy.specific.ClearField("versions")
        config.version_policy.specific.versions.append(NEW_MODEL_VERSION)
    return config


@dataclass(frozen=True)
class ModelDirFile:
    """A file the config names, read from the source's model directory, to write beside the copy."""

    name: str  # relative to the model directory
    data: bytes


def _reference(config_file: Path, config: mc.ModelConfig, serving: mc.ModelConfig) -> ModelDirFile | None:
    """The drift_reference file, read and checked as a load reads and checks it (against `serving`,
    the config as the server completes it), before anything is written: the new model had failed to
    load without it, or with a reference that did not fit. It is kept under its path inside the
    model directory, and the copy's config names it so: an absolute name (inside the source's
    directory) had been written there again, over the source's own file."""
    if DRIFT_REFERENCE not in config.parameters:
        return None
    name = config.parameters[DRIFT_REFERENCE].string_value
    where = f"{config_file}: parameters '{DRIFT_REFERENCE}' '{name}'"
    source_dir = config_file.parent
    try:
        relative = model_file(source_dir, name, where).relative_to(source_dir.resolve()).as_posix()
        data = read_model_file(source_dir, name, where, MAX_REFERENCE_BYTES)
        check_reference(serving, load_reference(io.BytesIO(data), str(config_file), name), where)
    except ConfigError as err:
        raise OptimizeError(f"{err}; nothing was published") from None
    config.parameters[DRIFT_REFERENCE].string_value = relative
    return ModelDirFile(relative, data)


def _data_files(config_file: Path, config: mc.ModelConfig) -> list[ModelDirFile]:
    """The warm-up and initial-state files `config` names, read from the source model's directory
    (checked as a load checks them; the server reads them from the same places): a published model
    had been written without them, and failed its load ("input_data_file 'feat' cannot be read")."""
    named = {
        f"warmup/{spec.input_data_file}": f"model_warmup '{sample.name}' input '{name}' input_data_file"
        for sample in config.model_warmup
        for name, spec in sample.inputs.items()
        if spec.WhichOneof("input_data_type") == "input_data_file"
    }
    for state in config.sequence_batching.state:
        for initial in state.initial_state:
            if initial.WhichOneof("state_data") == "data_file":
                named[f"initial_state/{initial.data_file}"] = (
                    f"state '{state.input_name}' initial_state.data_file"
                )
    files = []
    for relative, field in named.items():
        where = f"{config_file}: {field} '{relative}'"
        try:
            files.append(
                ModelDirFile(
                    relative, read_model_file(config_file.parent, relative, where, MAX_REFERENCE_BYTES)
                )
            )
        except ConfigError as err:
            raise OptimizeError(f"{err}; nothing was published") from None
    return files


def _copy_config(
    config_file: Path, config: mc.ModelConfig, files: list[ModelDirFile], model_dir: Path
) -> None:
    """Write `config`, and the label files, drift reference, warm-up and initial-state files it
    names (the model had failed to load without them)."""
    for output in config.output:
        label = output.label_filename
        if label and (config_file.parent / label).is_file() and not (model_dir / label).exists():
            shutil.copyfile(config_file.parent / label, model_dir / label)
    for file in files:
        target = model_dir / file.name  # relative, inside the model directory (checked on reading)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.data)
    text = f"# Copied by sluiceway optimize from {config_file}\n" + text_format.MessageToString(config)
    (model_dir / CONFIG_FILENAME).write_text(text, encoding="utf-8")


def check_signature(config: mc.ModelConfig | None, model_file: Path, what: str) -> None:
    """`model_file` as the server will read it under `config`: inputs, outputs, types and dims must
    agree. An unrelated model had been published beside a config it did not match, and the whole
    model went UNAVAILABLE at the next load."""
    if config is None:
        return
    from server.backends.onnx_inspect import inspect_onnx
    from server.backends.onnxruntime_backend import BackendLoadError
    from server.models.onnx_completion import complete_from_onnx

    try:
        inputs, outputs = inspect_onnx(model_file)
        complete_from_onnx(config, inputs, outputs, source=f"{what} against {config.name}'s config")
    except (ConfigError, BackendLoadError) as err:
        raise OptimizeError(f"{err}; nothing was published") from None


@dataclass(frozen=True)
class PolicyNote:
    loads: bool  # whether the model loads from the repository
    served: bool  # whether its version_policy serves the version asked about
    note: str  # what it serves, or why it does not load


def policy_note(repository: Path, name: str, version: int) -> PolicyNote:
    """Whether the model loads and its version_policy serves `version`, and a sentence saying what
    it serves (or why it does not load)."""
    try:
        found = load_model_source(repository, name)
    except (ConfigError, ModelNotFoundInRepository) as err:
        return PolicyNote(False, False, f"the model does not load from the repository: {err}")
    served = sorted(found.versions)
    if version in served:
        return PolicyNote(True, True, f"its version_policy serves versions {served}")
    config = repository / name / CONFIG_FILENAME
    return PolicyNote(
        True,
        False,
        f"its version_policy serves versions {served}, not {version}: edit {config} "
        f"(e.g. version_policy {{ latest {{ num_versions: 2 }} }}) to serve it",
    )


def _check_policy(config: mc.ModelConfig | None, versions: list[int], where: Path) -> None:
    """The version_policy against the versions the model will have once published: a `specific`
    one that names none of them leaves the model unable to load, so nothing is written (`latest`
    and `all` always serve one)."""
    if config is None or config.version_policy.WhichOneof("policy_choice") != "specific":
        return
    wanted = sorted(set(config.version_policy.specific.versions))
    if not set(wanted) & set(versions):
        raise OptimizeError(
            f"{where}: version_policy.specific.versions {wanted} names none of the versions the model "
            f"would have once published ({versions}), so it would not load; nothing was published"
        )


def serving_config(repository: Path, name: str, source: Source) -> mc.ModelConfig:
    """The config the server will serve `name` under once published, completed from the source's
    graph as a load completes it (a config that says nothing of batching gets the dynamic batcher):
    the repository's config, else the source's as it is copied, else the graph's alone."""
    from server.backends.onnx_inspect import inspect_onnx
    from server.backends.onnxruntime_backend import BackendLoadError
    from server.models.onnx_completion import complete_from_onnx

    _check_name(name)
    existing = repository / name / CONFIG_FILENAME
    config: mc.ModelConfig | None = None
    if _numeric_versions(repository / name) or existing.exists():
        try:
            config = load_config_file(existing) if existing.is_file() else None
        except ConfigError as err:
            raise OptimizeError(str(err)) from None
    elif source.config_file is not None:
        config = _new_config(source.config_file, name)
    config = config if config is not None else mc.ModelConfig(name=name)
    try:
        inputs, outputs = inspect_onnx(source.model_file)
        return complete_from_onnx(config, inputs, outputs, source=str(existing))
    except (ConfigError, BackendLoadError):
        return config  # a model that does not match its config: publishing refuses it, saying why


def publish(
    repository: Path, name: str, source: Source, optimized: Path, serving: mc.ModelConfig
) -> Published:
    """Write `optimized` as the next version of `name` in `repository`; `serving` is the config the
    server will serve it under (`serving_config`), that a copied drift reference must fit."""
    _check_name(name)
    if not repository.is_dir():
        raise OptimizeError(f"--repository {repository}: not a directory")
    model_dir = repository / name
    existing = model_dir / CONFIG_FILENAME
    on_disk = _numeric_versions(model_dir)
    new_model = not on_disk
    copied, files = None, []
    if new_model and source.config_file is not None and not existing.exists():
        copied = _new_config(source.config_file, name)
        reference = _reference(source.config_file, copied, serving)
        files = [*([] if reference is None else [reference]), *_data_files(source.config_file, copied)]
    try:
        config = (
            copied if copied is not None else (load_config_file(existing) if existing.is_file() else None)
        )
    except ConfigError as err:
        raise OptimizeError(str(err)) from None
    check_signature(config, optimized, "the optimized model")  # before anything is written
    if new_model:
        check_signature(config, source.model_file, "the original")
    planned = [1, NEW_MODEL_VERSION] if new_model else [*on_disk, max(on_disk) + 1]
    _check_policy(config, planned, existing)
    model_dir.mkdir(exist_ok=True)
    wrote_original = False
    if new_model:
        if copied is not None and source.config_file is not None:
            _copy_config(source.config_file, copied, files, model_dir)
        _write_version(model_dir, 1, source.model_file, _model_filename(model_dir))
        wrote_original = True
    version = max(_numeric_versions(model_dir)) + 1
    directory = _write_version(model_dir, version, optimized, _model_filename(model_dir))
    policy = policy_note(repository, name, version)
    return Published(version, directory, wrote_original, policy.served, policy.note, policy.loads)
