"""Model configuration: parse `config.pbtxt`, validate it, map it to the batching policy.

Fields that parse but that sluiceway does not support are errors that name the field. Completing a
config from its ONNX graph (Triton's auto-complete) is server/models/onnx_completion.py.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from google.protobuf import text_format

from batcher.types import BatchingPolicy
from protos import model_config_pb2 as mc
from protos.regular_files import FileTooLarge, NotRegularFile, read_regular_file
from server.models.config_backend import (
    ORT_PARAMETERS,
    backend_parameters,
    validate_instance_groups,
    validate_metric_tags,
    validate_optimization,
)
from server.models.config_bounds import check_bounds
from server.models.config_cuda import validate_cuda_accelerators
from server.models.config_errors import ConfigError as ConfigError
from server.models.config_fields import unhandled_fields
from server.models.config_queue import (
    allow_override,
    level_policies,
    timeout_action,
    validate_priority_policies,
)
from server.models.config_tensors import check_tensor
from server.models.ensemble_config import ENSEMBLE_PLATFORM, check_ensemble
from server.models.ragged_config import check_ragged, ragged_plan
from server.models.traffic import TRAFFIC_PARAMETERS

logger = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
IDENTITY = "identity"  # Triton's test backend, built in: server/backends/identity_backend.py
# Model-level `parameters`: those the onnxruntime backend reads (Triton's names), and ours.
IDLE_DISPATCH = "idle_dispatch"  # "true"/"false": overrides the server's --idle-dispatch
RUN_TIMEOUT = "run_timeout_s"  # seconds: overrides the server's --run-timeout-s (the watchdog)
# "true"/"false": on a stream, a newer frame drops the older one still queued (protocol/latest_frame.py)
LATEST_FRAME_WINS = "latest_frame_wins"
# "true": the config's word that the graph's rows are independent, where the load reads an op that
# mixes them (server/backends/onnx_row_mixing.py); then requests are batched together as configured.
ROWS_INDEPENDENT = "rows_independent"
# Fault injection (server/backends/fault_backend.py), refused unless allow_fault_injection is set.
FAULT_PARAMETERS = frozenset(
    {
        "fault_raise_every",
        "fault_hang_every",
        "fault_hang_s",
        "fault_load_error",
        "fault_load_gate",
        "fault_run_gate",
        "fault_replace_gate",
        "fault_versions",
    }
)
# Prediction sampling and drift (server/observability/sampling.py checks their values).
SAMPLE_RATIO, SAMPLE_WHAT, DRIFT_REFERENCE = "sample_ratio", "sample_what", "drift_reference"
SAMPLING_PARAMETERS = frozenset({SAMPLE_RATIO, SAMPLE_WHAT, DRIFT_REFERENCE})
SUPPORTED_PARAMETERS = (
    frozenset(
        {IDLE_DISPATCH, RUN_TIMEOUT}
        | {LATEST_FRAME_WINS, ROWS_INDEPENDENT}
        | {"sequence_state_batch_axis"}  # models/sequence_config.py
        | {"lazy_load", "pinned"}  # cold starts: parsed in server/models/lazy.py
    )
    | FAULT_PARAMETERS
    | SAMPLING_PARAMETERS
    | TRAFFIC_PARAMETERS  # rollout: server/models/traffic.py
    | frozenset(ORT_PARAMETERS)  # the onnxruntime backend's (server/models/config_backend.py)
)
_BOOLEANS = {"true": True, "false": False}
DEFAULT_MAX_BATCH_SIZE = 64


_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')


def parse_config(text: str, source: str) -> mc.ModelConfig:
    """Parse config.pbtxt text; `source` (usually the file path) prefixes every error."""
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        line, column = err.GetLine(), err.GetColumn()
        where = f"{source}:{line}:{column}" if line is not None else source
        # ParseError's text starts with its own "line:col : "; keep only the reason.
        reason = re.sub(r"^\d+:\d+ : ", "", str(err))
        missing = _NO_FIELD.search(reason)
        if missing:
            message, field = missing.groups()
            raise ConfigError(
                f"{where}: unsupported field '{field}' ({message} has no such field in Triton's "
                "model configuration schema: misspelt, or from a newer Triton; remove it)"
            ) from None
        raise ConfigError(f"{where}: {reason}") from None
    return config


# A config.pbtxt is text of kilobytes (labels, warm-up data and states are files of their own);
# one past this is refused unread, as one that is no regular file: a FIFO had blocked the read
# (the repository frozen for good, SIGTERM no longer heard) and a link to /dev/zero grew without end.
MAX_CONFIG_FILE_BYTES = 4 << 20


def load_config_file(path: Path) -> mc.ModelConfig:
    """Read and parse one config.pbtxt (a regular file of at most MAX_CONFIG_FILE_BYTES; a
    symlink is followed, as Triton does)."""
    try:
        data = read_regular_file(path, MAX_CONFIG_FILE_BYTES)
        # A byte-order mark (some editors write one) is not text; newlines read as text mode reads them.
        text = data.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    except NotRegularFile as err:
        raise ConfigError(f"{path}: {err} (a config.pbtxt must be one)") from None
    except FileTooLarge as err:
        raise ConfigError(f"{path}: {err} (a config is text of kilobytes)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from err  # its errno: errors.load_failure
    return parse_config(text, str(path))


def check_platform(config: mc.ModelConfig, source: str) -> None:
    if config.backend == IDENTITY and (config.platform or config.runtime):
        field = "platform" if config.platform else "runtime"
        raise ConfigError(f"{source}: {field} '{getattr(config, field)}' cannot go with backend '{IDENTITY}'")
    if config.backend == IDENTITY:
        return
    if config.platform not in ("", PLATFORM, ENSEMBLE_PLATFORM):
        raise ConfigError(
            f"{source}: platform '{config.platform}' is not supported "
            f"(only '{PLATFORM}' and '{ENSEMBLE_PLATFORM}')"
        )
    if config.backend not in ("", BACKEND):
        raise ConfigError(
            f"{source}: backend '{config.backend}' is not supported (only '{BACKEND}' and '{IDENTITY}')"
        )
    if config.runtime not in ("", BACKEND):
        raise ConfigError(f"{source}: runtime '{config.runtime}' is not supported")


def validate_config(config: mc.ModelConfig, source: str) -> None:
    """Reject configs that parse but ask for what sluiceway does not do. Every message names the field."""
    check_platform(config, source)
    check_ensemble(config, source)  # ensemble_scheduling only with platform "ensemble" (ensemble_config.py)
    unhandled = unhandled_fields(config)
    if unhandled:
        raise ConfigError(
            f"{source}: {unhandled[0]} is not supported"
            + (f" (nor {', '.join(unhandled[1:])})" if len(unhandled) > 1 else "")
        )
    if config.max_batch_size < 0:
        raise ConfigError(f"{source}: max_batch_size {config.max_batch_size} is negative")
    name = config.default_model_filename
    if "/" in name or "\\" in name or "\0" in name or name in (".", ".."):
        # A path would load a file from anywhere (and a client's RepositoryModelLoad can set it).
        raise ConfigError(
            f"{source}: default_model_filename '{name[:200]}' must be a file name in the version "
            "directory (no '/', '\\', '.' or '..')"
        )
    check_ragged(config, source)  # allow_ragged_batch and batch_input (ragged_config.py)
    for kind, tensors in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        for tensor in tensors:
            check_tensor(kind, tensor, source)
            if tensor.name in seen:
                raise ConfigError(f"{source}: {kind} '{tensor.name}' is listed twice")
            seen.add(tensor.name)
    check_bounds(config, source)  # values no request could be served with (config_bounds.py)
    validate_instance_groups(config, source)
    validate_metric_tags(config, source)
    _validate_version_policy(config, source)
    validate_optimization(config, source)
    validate_cuda_accelerators(config, source)  # the `cuda` accelerator's keys (config_cuda.py)
    # The identity backend ignores parameters it does not read, as Triton's (named at load).
    unknown = sorted(set(config.parameters) - SUPPORTED_PARAMETERS)
    if unknown and config.backend != IDENTITY:
        raise ConfigError(
            f"{source}: parameters {unknown} are not supported (known: {sorted(SUPPORTED_PARAMETERS)})"
        )
    if config.backend != IDENTITY:
        backend_parameters(config, has_gpu=True)  # the onnxruntime backend's values, each checked
    if IDLE_DISPATCH in config.parameters:
        _idle_dispatch(config, source, default=False)
    if LATEST_FRAME_WINS in config.parameters:
        latest_frame_wins(config, source)
    if ROWS_INDEPENDENT in config.parameters:
        bool_parameter(config, ROWS_INDEPENDENT, source)
    if config.HasField("dynamic_batching"):
        _validate_dynamic_batching(config, source)


def validate_response_cache(config: mc.ModelConfig, source: str, cache_bytes: int) -> None:
    """A model enabling response_cache needs the server's cache (`response_cache_bytes` > 0)."""
    if config.response_cache.enable and cache_bytes <= 0:
        raise ConfigError(
            f"{source}: response_cache is enabled but the server has no response cache "
            "(response_cache_bytes is 0: set SLUICEWAY_RESPONSE_CACHE_BYTES or --response-cache-bytes "
            "above 0, or set response_cache { enable: false })"
        )


def _validate_version_policy(config: mc.ModelConfig, source: str) -> None:
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "latest" and policy.latest.num_versions < 1:
        raise ConfigError(f"{source}: version_policy.latest.num_versions must be at least 1")
    if choice == "specific":
        if not policy.specific.versions:
            raise ConfigError(f"{source}: version_policy.specific.versions is empty")
        if any(v < 1 for v in policy.specific.versions):
            raise ConfigError(
                f"{source}: version_policy.specific.versions {list(policy.specific.versions)} "
                "must be positive"
            )


def _validate_dynamic_batching(config: mc.ModelConfig, source: str) -> None:
    db = config.dynamic_batching
    where = f"{source}: dynamic_batching"
    if config.max_batch_size == 0 and config.input:
        # With inputs listed, max_batch_size 0 is a promise that the model has no batch dimension.
        raise ConfigError(f"{where} needs max_batch_size > 0")
    for size in db.preferred_batch_size:
        if size < 1:
            raise ConfigError(f"{where}.preferred_batch_size {size} must be positive")
        if config.max_batch_size > 0 and size > config.max_batch_size:
            raise ConfigError(
                f"{where}.preferred_batch_size {size} exceeds max_batch_size {config.max_batch_size}"
            )
    if db.priority_levels == 0 and db.default_priority_level != 0:
        raise ConfigError(
            f"{where}.default_priority_level {db.default_priority_level} given without priority_levels"
        )
    if db.default_priority_level > db.priority_levels:
        raise ConfigError(
            f"{where}.default_priority_level {db.default_priority_level} exceeds "
            f"priority_levels {db.priority_levels}"
        )
    if db.priority_levels > 0 and db.default_priority_level == 0:
        # Triton refuses it too; served, unlabelled requests took level 1, the highest.
        raise ConfigError(
            f"{where}.default_priority_level must be in range [1, {db.priority_levels}] "
            f"(priority_levels is {db.priority_levels})"
        )
    validate_priority_policies(db, where)
    # preserve_ordering matters to streams only (a unary call has one answer): the stream session
    # (server/protocol/stream.py) sends such a model's answers in request order. Triton refuses
    # what would reorder them: several priority levels, or requests a DELAY timeout moves back.
    if db.preserve_ordering and db.priority_levels > 1:
        raise ConfigError(f"{where}: only one priority level is allowed when preserve_ordering is true")
    policies = [db.default_queue_policy, *db.priority_queue_policy.values()]
    delays = any(
        q.timeout_action == mc.ModelQueuePolicy.DELAY and q.default_timeout_microseconds for q in policies
    )
    if db.preserve_ordering and delays:  # as Triton: a DELAY with no timeout never moves anything
        raise ConfigError(
            f"{where}: a queue policy cannot have timeout_action DELAY when preserve_ordering is true"
        )


# --- batching policy ------------------------------------------------------------------------------


def dynamic_batching_enabled(config: mc.ModelConfig) -> bool:
    """Whether requests may share a batch; without it each request runs alone (any number of rows)."""
    return config.max_batch_size > 0 and config.HasField("dynamic_batching")


def requests_share_runs(config: mc.ModelConfig) -> bool:
    """Whether one run may hold rows of several requests (of several sequences, with sequence
    batching): a batch of more than one row, formed by a batcher."""
    return config.max_batch_size > 1 and (
        config.HasField("dynamic_batching") or config.HasField("sequence_batching")
    )


def bool_parameter(config: mc.ModelConfig, key: str, source: str, *, default: bool = False) -> bool:
    """The config's `parameters` entry `key` as 'true' or 'false' (any case), `default` when absent;
    ConfigError names the parameter otherwise."""
    if key not in config.parameters:
        return default
    value = config.parameters[key].string_value
    if value.lower() not in _BOOLEANS:
        raise ConfigError(f"{source}: parameters '{key}' must be 'true' or 'false', got '{value[:32]}'")
    return _BOOLEANS[value.lower()]


def _idle_dispatch(config: mc.ModelConfig, source: str, *, default: bool) -> bool:
    return bool_parameter(config, IDLE_DISPATCH, source, default=default)


def latest_frame_wins(config: mc.ModelConfig, source: str) -> bool:
    """The model's `latest_frame_wins` parameter (default false); ConfigError names it if not a bool."""
    wins = bool_parameter(config, LATEST_FRAME_WINS, source)
    kind = _no_frames_dropped(config)
    if wins and kind:
        raise ConfigError(f"{source}: parameters '{LATEST_FRAME_WINS}' is not supported for {kind}")
    return wins


def _no_frames_dropped(config: mc.ModelConfig) -> str:
    """Why latest-frame-wins cannot apply to `config`'s model ("" where it can): it was silently
    ignored for these, every frame computed."""
    if config.HasField("sequence_batching"):
        return "sequence models (each frame carries the sequence's state: none may be dropped)"
    if config.platform == ENSEMBLE_PLATFORM:
        return "ensembles (their steps are queued in their own models)"
    return ""


def batching_policy(
    config: mc.ModelConfig,
    *,
    default_max_queue_size: int,
    max_batches_in_flight: int,
    idle_dispatch: bool = False,
) -> BatchingPolicy:
    """The batcher's policy for a completed, validated config. The queue is always bounded.

    `idle_dispatch` is the server's default; the model's `idle_dispatch` parameter overrides it."""
    if not dynamic_batching_enabled(config):
        return BatchingPolicy(
            max_batch_size=config.max_batch_size,
            preferred_batch_sizes=(),
            max_queue_delay_s=0.0,
            max_queue_size=default_max_queue_size,
            max_batches_in_flight=max_batches_in_flight,
            ragged=ragged_plan(config),
        )
    db = config.dynamic_batching
    queue = db.default_queue_policy  # see server/models/config_queue.py
    return BatchingPolicy(
        max_batch_size=config.max_batch_size,
        preferred_batch_sizes=tuple(sorted(set(db.preferred_batch_size))),
        max_queue_delay_s=db.max_queue_delay_microseconds / 1e6,
        idle_dispatch=_idle_dispatch(config, f"model '{config.name}'", default=idle_dispatch),
        max_queue_size=queue.max_queue_size or default_max_queue_size,
        priority_levels=db.priority_levels or 1,
        default_priority=db.default_priority_level or 1,
        default_timeout_s=(queue.default_timeout_microseconds / 1e6) or None,
        timeout_action=timeout_action(queue),
        allow_timeout_override=allow_override(queue),
        max_batches_in_flight=max_batches_in_flight,
        level_policies=level_policies(db, default_max_queue_size),
        ragged=ragged_plan(config),
    )
