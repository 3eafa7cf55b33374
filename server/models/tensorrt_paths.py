"""The TensorRT accelerator's path parameters, kept where a config may point: the model's directory
or the server's cache directory.

Four of them name files TensorRT reads, loads or writes: `trt_extra_plugin_lib_paths` (shared
libraries it loads into the server's process, ';'-separated), `int8_calibration_table_name` (read),
and `trt_engine_cache_path`, `trt_timing_cache_path`, `trt_ep_context_file_path` (written). A
config can come from a client (RepositoryModelLoad's `config` parameter), and a tester had them
accepted pointing anywhere the server could read or write, where every other file a config names
is kept inside the model's directory (model_files.py). Each path must now be an absolute one
inside the model's directory or the server's cache directory (where the engines go by default,
tensorrt_options.engine_cache_dir); a relative one is refused too, since onnxruntime resolves it
against the server's working directory, not the model's. The calibration table's name (a file in
the engine cache directory, as onnxruntime reads it) and `trt_engine_cache_prefix` are names and
may hold no path separator.
"""

from __future__ import annotations

from pathlib import Path

from protos import model_config_pb2 as mc
from server.models.config_errors import ConfigError

PATH_KEYS = (
    "trt_extra_plugin_lib_paths",
    "trt_engine_cache_path",
    "trt_timing_cache_path",
    "trt_ep_context_file_path",
)
NAME_KEYS = ("trt_engine_cache_prefix", "int8_calibration_table_name", "trt_int8_calibration_table_name")
LIST_KEYS = frozenset({"trt_extra_plugin_lib_paths"})  # ';'-separated paths


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(root.resolve()) for root in roots)


def check_tensorrt_paths(config: mc.ModelConfig, model_dir: Path, cache_dir: Path, source: str) -> None:
    """ConfigError naming the key and value of a TensorRT path parameter outside `model_dir` and
    `cache_dir` (or relative), or of a name parameter that is a path."""
    roots = (model_dir, cache_dir)
    for entry in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if entry.name != "tensorrt":
            continue
        for key in NAME_KEYS:
            name = entry.parameters.get(key, "")
            if "/" in name or "\\" in name or "\0" in name or name in (".", ".."):
                raise ConfigError(
                    f"{source}: tensorrt accelerator parameter '{key}' value '{name[:200]}' is a file "
                    "name: it may hold no path separator"
                )
        for key in PATH_KEYS:
            if key not in entry.parameters:
                continue
            value = entry.parameters[key]
            paths = value.split(";") if key in LIST_KEYS else [value]
            for text in (p.strip() for p in paths):
                if not text and key in LIST_KEYS:
                    continue
                if "\0" in text or not Path(text).is_absolute() or not _inside(Path(text), roots):
                    raise ConfigError(
                        f"{source}: tensorrt accelerator parameter '{key}' path '{text[:200]}' must be an "
                        "absolute path inside the model's directory or the server's cache directory"
                    )
