"""RepositoryModelLoad's parameters, as Triton defines them: applied, or refused by name.

- `config` (string): a JSON ModelConfig used instead of the repository's config.pbtxt.
- `file:<version>/<path>` (bytes): model files sent in the request; Triton requires `config` with
  them. They are written into a private model directory (never the repository), each path checked
  to stay inside it, and bounded in count and bytes.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from google.protobuf import json_format

from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server.errors import FilesNoSpace, FilesNotStored, InvalidRequest
from server.models.versions import MAX_VERSION, MAX_VERSION_DIGITS
from server.pids import named_pid, pid_alive

log = logging.getLogger(__name__)

CONFIG = "config"
FILE_PREFIX = "file:"
MAX_FILES = 64
MAX_PATH_PARTS = 8
MAX_PART_BYTES = 255  # a file name's limit on Linux file systems (NAME_MAX)
MAX_FILE_BYTES_TOTAL = 2 * 1024 * 1024 * 1024  # the gRPC message limit usually binds first
# The `config` JSON, parsed on the event loop (protobuf's json_format: ~0.6 s a MiB; 17 MB of
# parameters held every other call 6.6 s). A real config is a few KB.
MAX_CONFIG_JSON_BYTES = 256 * 1024


@dataclass
class LoadOverride:
    """A RepositoryModelLoad's parsed parameters (config and files both optional)."""

    config: mc.ModelConfig | None = None
    files: dict[PurePosixPath, bytes] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.config is None and not self.files


def parse_load_parameters(name: str, parameters: dict[str, pb.ModelRepositoryParameter]) -> LoadOverride:
    """Check and parse the parameters; InvalidRequest names the parameter at fault."""
    override = LoadOverride()
    total = 0
    for key in sorted(parameters):
        value = parameters[key]
        kind = value.WhichOneof("parameter_choice")
        if key == CONFIG:
            if kind != "string_param":
                raise InvalidRequest(
                    f"parameters['config'] must be a string_param (JSON ModelConfig), got {kind}"
                )
            override.config = _config(name, value.string_param)
        elif key.startswith(FILE_PREFIX):
            if kind != "bytes_param":
                raise InvalidRequest(
                    f"parameters['{key[:80]}'] must be a bytes_param (the file's contents), got {kind}"
                )
            if len(override.files) >= MAX_FILES:
                raise InvalidRequest(f"RepositoryModelLoad carries more than {MAX_FILES} file: parameters")
            total += len(value.bytes_param)
            if total > MAX_FILE_BYTES_TOTAL:
                raise InvalidRequest(f"file: parameters hold more than {MAX_FILE_BYTES_TOTAL} bytes in all")
            override.files[_file_path(key)] = value.bytes_param
        else:
            raise InvalidRequest(
                f"RepositoryModelLoad parameter '{key[:80]}' is not supported "
                "(supported: 'config', 'file:<version>/<name>')"
            )
    if override.files and override.config is None:
        raise InvalidRequest("file: parameters need the 'config' parameter too (as in Triton)")
    return override


def _config(name: str, text: str) -> mc.ModelConfig:
    # Past the bound in characters it is past it in bytes: not encoded (a copy) to say so.
    size = len(text) if len(text) > MAX_CONFIG_JSON_BYTES else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_CONFIG_JSON_BYTES:
        raise InvalidRequest(
            f"parameters['config'] is at least {size} bytes; at most {MAX_CONFIG_JSON_BYTES} bytes of JSON "
            "(the server's bound)"
        )
    config = mc.ModelConfig()
    try:
        json_format.Parse(text, config)
    except json_format.ParseError as exc:
        raise InvalidRequest(f"parameters['config'] is not a JSON ModelConfig: {str(exc)[:300]}") from None
    if config.name and config.name != name:
        raise InvalidRequest(f"parameters['config'] names model '{config.name[:80]}', not '{name}'")
    return config


def _file_path(key: str) -> PurePosixPath:
    """`file:<version>/<path>` as a relative path that cannot leave the model directory."""
    text = key[len(FILE_PREFIX) :]
    shown = key[:120]
    path = PurePosixPath(text)
    parts = path.parts
    if (
        not text
        or "\\" in text
        or "\0" in text
        or path.is_absolute()
        or len(parts) < 2
        or len(parts) > MAX_PATH_PARTS
        or any(part in ("", ".", "..") or part.startswith(".") for part in parts)
        or any(len(part.encode("utf-8", "surrogatepass")) > MAX_PART_BYTES for part in parts)
    ):
        raise InvalidRequest(
            f"parameters['{shown}']: expected 'file:<version>/<name>' (a relative path without "
            f"'..', '.' parts, '\\\\' or NUL, at most {MAX_PATH_PARTS} parts of at most "
            f"{MAX_PART_BYTES} bytes each)"
        )
    version = parts[0]
    is_number = version.isascii() and version.isdigit() and len(version) <= MAX_VERSION_DIGITS
    if not is_number or version[0] == "0" or int(version) > MAX_VERSION:
        raise InvalidRequest(
            f"parameters['{shown}']: '{version[:20]}' is not a version directory (1, 2, ... up to "
            "2**63-1: versions are int64)"
        )
    return path


def write_model_directory(parent: Path, name: str, files: dict[PurePosixPath, bytes]) -> Path:
    """Write the files into a new directory under `parent`; returns the root holding `<name>/`.
    The disk's refusal (full, read-only) is the caller's status naming it, and one log line; it
    had been INTERNAL with a traceback."""
    try:
        return _write_files(parent, name, files)
    except OSError as err:
        log.error("cannot store the files sent to load model %s under %s: %s", name, parent, err)
        no_space = err.errno in (errno.ENOSPC, errno.EDQUOT)
        kind = FilesNoSpace if no_space else FilesNotStored
        why = err.strerror or type(err).__name__
        raise kind(f"the server cannot store the files sent with model '{name}': {why}") from None


def _write_files(parent: Path, name: str, files: dict[PurePosixPath, bytes]) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    # The pid in the name: a server that died (OOM, SIGKILL) leaves it, and the next one removes it.
    root = Path(tempfile.mkdtemp(prefix=f"load-{os.getpid()}-", dir=parent))
    directory = (root / name).resolve()
    try:
        for relative, data in files.items():
            target = (directory / relative).resolve()
            if not target.is_relative_to(directory):  # checked above; symlinks cannot appear in a new dir
                raise InvalidRequest(f"parameters['file:{relative}'] leaves the model directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root


UNLOAD_DEPENDENTS = "unload_dependents"


def check_unload_parameters(parameters: dict[str, pb.ModelRepositoryParameter]) -> bool:
    """RepositoryModelUnload's parameters: whether `unload_dependents` is true (tritonclient always
    sends it). Any other parameter is refused, naming it, rather than ignored."""
    dependents = False
    for key in sorted(parameters):
        value = parameters[key]
        kind = value.WhichOneof("parameter_choice")
        if key != UNLOAD_DEPENDENTS:
            raise InvalidRequest(
                f"RepositoryModelUnload parameter '{key[:80]}' is not supported "
                f"(supported: '{UNLOAD_DEPENDENTS}')"
            )
        if kind != "bool_param":
            raise InvalidRequest(f"parameters['{UNLOAD_DEPENDENTS}'] must be a bool_param, got {kind}")
        dependents = value.bool_param
    return dependents


def remove_dead_uploads(parent: Path) -> list[Path]:
    """Remove the upload directories of servers that are gone (`load-<pid>-*`; one without a pid
    is from before names carried it); what was removed. A crashed server's had stayed for good."""
    removed: list[Path] = []
    try:
        found = [entry for entry in parent.iterdir() if entry.is_dir() and entry.name.startswith("load-")]
    except OSError:
        return removed
    for upload in found:
        pid = named_pid(upload.name, 1)
        if pid is None or not pid_alive(pid):
            shutil.rmtree(upload, ignore_errors=True)
            removed.append(upload)
    return removed
