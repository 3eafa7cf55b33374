"""What the manager serves: a model's versions as the request path and the index see them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from batcher.dynamic import DynamicBatcher
from batcher.sequence import SequenceBatcher
from batcher.stats import ModelStats
from protos import model_config_pb2 as mc
from server.backends.instances import ModelInstance
from server.errors import InvalidRequest
from server.models.ensemble import EnsembleScheduler
from server.models.response_cache import ResponseCache
from server.observability.sampling import ModelSampler
from server.protocol.validate import Signature

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
LOADING = "LOADING"
# The reason of a model unloaded on request (RepositoryModelUnload): not ready, and by design.
UNLOADED = "unloaded"
MAX_VERSION_DIGITS = 19  # int64's largest, 9223372036854775807
MAX_VERSION = 2**63 - 1  # versions are int64 (model_version_policy, ModelVersion numbers)


@dataclass
class ModelVersion:
    """One servable version: everything a request needs after routing."""

    name: str
    version: int
    config: mc.ModelConfig
    signature: Signature
    backends: list[ModelInstance]  # the batcher's watchdog may replace one (see backends/instances.py)
    batcher: DynamicBatcher
    stats: ModelStats
    # The server's cache when the config enables response_cache; None once the version is retired.
    response_cache: ResponseCache | None = None
    sampler: ModelSampler | None = None  # when the version samples requests (observability/sampling.py)
    sequences: SequenceBatcher | None = None  # with sequence_batching (models/sequence_config.py)
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # output -> label_filename's
    ensemble: EnsembleScheduler | None = None  # platform "ensemble": its steps run the request
    devices: tuple[str, ...] = ()  # where each instance runs (`cpu`, `cuda:0`), as it started
    # config.pbtxt's `latest_frame_wins`, read once at load, not per stream message (latest_frame.py).
    latest_frame_wins: bool = False
    # What it was loaded from (repository.version_fingerprint): the poller keeps a version whose
    # fingerprint has not changed, rather than reloading every version for one added or removed.
    fingerprint: tuple[object, ...] = ()
    version_str: str = field(init=False)
    # dynamic_batching.preserve_ordering, read once: a stream looks at it per message (stream.py).
    preserve_ordering: bool = field(init=False)

    def __post_init__(self) -> None:
        self.version_str = str(self.version)
        self.preserve_ordering = self.config.dynamic_batching.preserve_ordering


@dataclass
class ModelEntry:
    """A model as the repository index shows it: its versions, or why it has none."""

    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    state: str = LOADING
    reason: str = ""
    # Newest version number first: the order requests without a version are routed in.
    order: list[int] = field(default_factory=list)
    # Not loaded by design (a lazy model, or one explicit mode was not asked to load): it does not
    # make the server unready (server/models/lazy.py, control.py).
    dormant: bool = False

    @property
    def ready_or_by_design(self) -> bool:
        """Ready, or not loaded on purpose (dormant, or unloaded on request): Triton's ServerReady
        passes over a model unloaded on request, and so does ours."""
        return self.state == READY or self.dormant or (self.state == UNAVAILABLE and self.reason == UNLOADED)

    @property
    def failed_or_waiting(self) -> bool:
        """Unavailable, and not by an unload on request: a failed load, or an ensemble waiting for
        its steps (EnsembleDependents.load_waiting loads such an ensemble again)."""
        return self.state == UNAVAILABLE and self.reason != UNLOADED


def version_number(version: str) -> int:
    """A request's `model_version` (not empty) as a number; INVALID_ARGUMENT naming it otherwise."""
    if len(version) > MAX_VERSION_DIGITS:
        # Triton's versions are int64; int() of a 4,301-digit string raises (Python's limit).
        raise InvalidRequest(
            f"model_version '{version[:MAX_VERSION_DIGITS]}...' ({len(version)} characters) is not a "
            f"version number (at most {MAX_VERSION_DIGITS} digits: versions are int64)"
        )
    if not (version.isascii() and version.isdigit()) or (version[0] == "0" and version != "0"):
        # int() would also take " 1", "+1", "01" and non-ASCII digits as version 1.
        raise InvalidRequest(
            f"model_version '{version}' is not a version number "
            "(ASCII decimal digits, no sign, spaces or leading zeros)"
        )
    number = int(version)
    if number > MAX_VERSION:
        # 19 digits can still pass int64: such a version was "not found" (ModelReady: not ready).
        raise InvalidRequest(
            f"model_version '{version}' is not a version number (at most {MAX_VERSION}: versions are int64)"
        )
    return number
