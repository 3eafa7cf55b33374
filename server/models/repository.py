"""The model repository on disk, laid out as Triton lays it out.

    <root>/<model>/config.pbtxt            optional: without it everything comes from the ONNX graph
    <root>/<model>/<version>/model.onnx    or config.default_model_filename

Scanning reads configs and lists files; it loads no model. One bad model never stops the others.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from protos import model_config_pb2 as mc
from server import triton_text
from server.models.config import IDENTITY, ConfigError, load_config_file, validate_config
from server.models.ensemble_config import ENSEMBLE_PLATFORM
from server.models.versions import MAX_VERSION, MAX_VERSION_DIGITS

log = logging.getLogger(__name__)

CONFIG_FILENAME = "config.pbtxt"
DEFAULT_MODEL_FILENAME = "model.onnx"


class ModelNotFoundInRepository(Exception):
    """No directory of that name under the repository root."""


# The `where` of a model loaded with RepositoryModelLoad's `config`, not its config.pbtxt.
OVERRIDE_WHERE = "RepositoryModelLoad parameters['config']"


@dataclass(frozen=True)
class ModelSource:
    """One model as found on disk: its parsed (not yet completed) config and its selected versions."""

    name: str
    directory: Path
    config: mc.ModelConfig
    # version -> model file (the version directory where none is needed: ensembles, identity models),
    # only the versions the version_policy selects
    versions: dict[int, Path]
    # Where `config` came from, for errors: the config.pbtxt, or RepositoryModelLoad's `config`.
    where: str


def version_fingerprint(source: ModelSource, number: int) -> tuple[object, ...]:
    """What loading version `number` of `source` reads, as (config, then each file's path, size and
    modification time): the files of its version directory and those beside the config (labels,
    drift references). Equal fingerprints: the same version would load (a file rewritten in
    place within the clock's resolution, same size, is the one miss). The config counts by its
    content, not its file's time: one rewritten with the same text (a configmap or git-sync
    refresh) had reloaded every version and reset the operator's rollout changes."""
    model_file = source.versions[number]
    version_dir = source.directory / str(number)
    files: list[tuple[str, int, int]] = []
    for root, deep in ((source.directory, False), (version_dir, True)):
        for path in sorted(root.rglob("*") if deep else root.iterdir()):
            if not deep and path.name == CONFIG_FILENAME:
                continue  # its content is `config` below
            if path.is_file():
                stat = path.stat()
                files.append((str(path.relative_to(source.directory)), stat.st_size, stat.st_mtime_ns))
    config = source.config.SerializeToString(deterministic=True)
    return (config, str(model_file), tuple(files))


def _is_valid_name(name: str) -> bool:
    # Names come from clients (RepositoryModelLoad): never let one leave the repository root.
    return bool(name) and not name.startswith(".") and "/" not in name and "\\" not in name and _utf8(name)


def _utf8(name: str) -> bool:
    """A folder name that is UTF-8 (Python shows other bytes as surrogates): a model's name is a
    protobuf string. One that was not had stopped the server at start (UnicodeEncodeError)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _version_dirs(directory: Path) -> dict[int, Path]:
    # As in Triton: only numeric names count, and names starting with "0" are ignored; so are
    # numbers past int64 (versions are int64: 9223372036854775808 was served).
    found: dict[int, Path] = {}
    for child in directory.iterdir():
        name = child.name
        numeric = name.isascii() and name.isdigit() and not name.startswith("0")
        if child.is_dir() and numeric and len(name) <= MAX_VERSION_DIGITS and int(name) <= MAX_VERSION:
            found[int(name)] = child
    return found


def _select_versions(config: mc.ModelConfig, on_disk: dict[int, Path], source: str) -> list[int]:
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return sorted(on_disk)
    if choice == "specific":
        wanted = sorted(set(policy.specific.versions))
        missing = [v for v in wanted if v not in on_disk]
        present = [v for v in wanted if v in on_disk]
        where = f"{source}: version_policy.specific.versions {missing} not found on disk"
        if missing and not present:
            raise ConfigError(f"{where} (versions present: {sorted(on_disk)}), and no other is listed")
        if missing:  # as Triton: the listed versions that are there serve
            log.warning("%s; serving %s", where, ", ".join(map(str, present)))
        return present
    count = policy.latest.num_versions if choice == "latest" else 1
    return sorted(on_disk)[-count:]


def _why_no_model_file(path: Path) -> str:
    """Why `path` is not a model file, in words (a FIFO, a directory and a dangling link had all
    read "has no model file")."""
    if path.is_symlink() and not path.exists():
        return f"has a dangling symlink as its model file {path.name} (to {os.readlink(path)})"
    if path.is_dir():
        return f"has a directory {path.name} without {DEFAULT_MODEL_FILENAME} in it"
    if path.exists():
        return f"has {path.name}, not a regular file (a FIFO, a socket or a device)"
    return f"has no model file {path.name}"


def _model_file(version_dir: Path, filename: str) -> Path | None:
    path = version_dir / filename
    if path.is_file():
        return path
    # Triton also accepts model.onnx as a directory holding model.onnx and its external weights.
    if path.is_dir() and (path / DEFAULT_MODEL_FILENAME).is_file():
        return path / DEFAULT_MODEL_FILENAME
    return None


def load_model_source(root: Path, name: str, override: mc.ModelConfig | None = None) -> ModelSource:
    """Read one model's config and versions. Raises ModelNotFoundInRepository or ConfigError.
    `override`: RepositoryModelLoad's `config`, used instead of config.pbtxt."""
    directory = root / name
    if not _is_valid_name(name) or not directory.is_dir():
        raise ModelNotFoundInRepository(triton_text.not_in_repository(name))
    config_path = directory / CONFIG_FILENAME
    source = str(config_path)
    if override is not None:
        source = OVERRIDE_WHERE
        config = mc.ModelConfig()
        config.CopyFrom(override)
    elif config_path.exists():
        config = load_config_file(config_path)
    else:
        source = str(directory)
        config = mc.ModelConfig()
        for near in sorted(p.name for p in directory.iterdir() if p.name.lower() == CONFIG_FILENAME):
            log.warning("%s: %s is not %s (names are case-sensitive): completed from the graph alone",
                        directory, near, CONFIG_FILENAME)  # fmt: skip
    if config.name and config.name != name:
        raise ConfigError(f"{source}: name '{config.name}' differs from the directory name '{name}'")
    config.name = name
    validate_config(config, source)
    try:
        on_disk = _version_dirs(directory)
    except OSError as err:
        raise ConfigError(f"{directory}: cannot list versions: {err}") from err  # errors.load_failure
    if not on_disk:
        raise ConfigError(f"{directory}: no version directories (expected e.g. {directory / '1'})")
    filename = config.default_model_filename or DEFAULT_MODEL_FILENAME
    versions: dict[int, Path] = {}
    for version in _select_versions(config, on_disk, source):
        if config.platform == ENSEMBLE_PLATFORM or config.backend == IDENTITY:
            # No model file: the directory may be empty (it stands for the version).
            versions[version] = on_disk[version]
            continue
        model_file = _model_file(on_disk[version], filename)
        if model_file is None:
            why = _why_no_model_file(on_disk[version] / filename)
            raise ConfigError(f"{directory}: version {version} {why}")
        if model_file.stat().st_size == 0:  # read by onnxruntime as a graph of nothing
            raise ConfigError(f"{directory}: version {version}'s {filename} is empty (0 bytes)")
        versions[version] = model_file
    # Without a config.pbtxt, errors name the model's directory: the path of a file that is not there
    # had read as if the fault were in it.
    where = source
    return ModelSource(name=name, directory=directory, config=config, versions=versions, where=where)


def scan_repository(root: Path) -> tuple[dict[str, ModelSource], dict[str, str]]:
    """Every model under `root`, and an error message per model that could not be read."""
    models: dict[str, ModelSource] = {}
    errors: dict[str, str] = {}
    try:
        children = sorted(root.iterdir())
    except OSError as err:
        raise ConfigError(f"model repository {root}: cannot list: {err}") from None
    for child in children:
        if child.is_dir() and not _utf8(child.name):
            shown = child.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            log.warning("model repository %s: folder %r skipped: its name is not UTF-8", root, shown)
        if not child.is_dir() or not _is_valid_name(child.name):
            continue
        try:
            models[child.name] = load_model_source(root, child.name)
        except (ConfigError, ModelNotFoundInRepository, OSError) as err:
            errors[child.name] = str(err)  # the caller logs it, once
    return models, errors
