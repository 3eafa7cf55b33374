"""Server settings: explicit data, from the command line or SLUICEWAY_* environment variables.

Validated once at start-up; a bad value stops the server with a message naming the field.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from server.security.tls import check_ca_file, check_key_pair, read_pem
from server.security.tokens import load_tokens
from server.settings_rules import GRPC_INT_MAX, check_host, check_ports, parse_grpc_args, stream_cap

# A list of names: from a variable, "a,b" or JSON '["a", "b"]' (see ServerSettings._names).
Names = Annotated[tuple[str, ...], NoDecode]


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "sluiceway"


# grpc core takes these as C ints (milliseconds for times): larger values failed at start with an
# OverflowError traceback inside grpc instead of an invalid-setting message.
_GRPC_INT_MAX = GRPC_INT_MAX
MAX_WORKERS = 64  # server processes of `serve --workers` (also `top --workers`)
_GRPC_MAX_S = 2_000_000.0  # about 23 days, below 2**31 ms
# onnxruntime threads per session: 100,000 grew memory by 70 MB/s and never became ready.
_MAX_THREADS = 256


class ServerSettings(BaseSettings):
    # allow_inf_nan off: `inf` had passed every `ge=0` bound (a grace, a timeout, a price) and
    # failed later (time.sleep's OverflowError) or meant "never" where 0 is the documented never.
    model_config = SettingsConfigDict(
        env_prefix="SLUICEWAY_", protected_namespaces=(), extra="forbid", allow_inf_nan=False
    )

    host: str = "127.0.0.1"
    # 0 picks a free port (tests); the bound port is reported by the running server.
    port: int = Field(default=8001, ge=0, le=65535)
    # None: serve the built-in demo models, built locally into cache_dir.
    model_repository: Path | None = None
    cache_dir: Path = Field(default_factory=_default_cache_dir)

    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=_GRPC_INT_MAX)
    # Default queue bound for models whose config sets no max_queue_size (we always bound).
    max_queue_size: int = Field(default=1024, ge=1)
    # Batches one model instance may run at once.
    max_batches_in_flight: int = Field(default=1, ge=1, le=2)
    # max_batch_size given to batchable models that have no config.pbtxt.
    default_max_batch_size: int = Field(default=64, ge=0)
    # Requests one ModelStreamInfer call may have in flight before the server stops reading it.
    stream_max_in_flight: int = Field(default=256, ge=1)
    # Raw tensor bytes one ModelStreamInfer call may hold in requests read and answers not yet
    # written before the server stops reading it (one larger frame is still read alone).
    stream_max_held_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    # Concurrent RPCs the server accepts (streams included) before answering RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = Field(default=4096, ge=1, le=_GRPC_INT_MAX)
    # Open ModelStreamInfer calls: in all (below max_concurrent_rpcs: settings_rules.stream_cap),
    # per connection (a peer address with its port) and per peer host.
    max_streams: int = Field(default=2048, ge=1)
    max_streams_per_connection: int = Field(default=128, ge=1)
    max_streams_per_peer: int = Field(default=1024, ge=1)
    # A stream that has read nothing and has nothing in flight for this long is ended
    # (DEADLINE_EXCEEDED), and one whose client has read no answer and sent nothing for this long
    # has its call ended (its reader died); 0: never.
    stream_idle_timeout_s: float = Field(default=120.0, ge=0)
    # A call of one request message (every method but ModelStreamInfer) whose message has not come
    # this long after the call began is ended (DEADLINE_EXCEEDED); 0: never. And a peer host's calls
    # waiting for theirs over 1 s, beyond this many, are ended (RESOURCE_EXHAUSTED), oldest first:
    # calls that never send one held every max_concurrent_rpcs slot (message_wait.py).
    request_message_timeout_s: float = Field(default=30.0, ge=0)
    max_calls_awaiting_message_per_peer: int = Field(default=64, ge=1)
    # While the event loop runs this late and grpc core holds calls no handler has taken yet,
    # stream readers wait a tick (stream_pace_tick_ms) before each read, so new calls get turns
    # (server/protocol/loop_pace.py); 0: off.
    stream_pace_lag_ms: float = Field(default=2.0, ge=0, le=1000)
    stream_pace_tick_ms: float = Field(default=5.0, gt=0, le=1000)
    # Input bytes held by queued requests, per model version and in all; beyond either a request
    # is refused at once (RESOURCE_EXHAUSTED naming the limit).
    max_queued_bytes_per_model: int = Field(default=512 * 1024 * 1024, ge=1)
    max_queued_bytes: int = Field(default=2 * 1024 * 1024 * 1024, ge=1)
    # HTTP/2 keepalive: the server pings a connection idle this long and drops it when no ack
    # comes within keepalive_timeout_s; clients may ping no more often than min_client_ping_s
    # while the server sends them nothing, and not at all on a connection without calls (gRPC's
    # default); after two strikes they get GOAWAY "too_many_pings". max_connection_age_s > 0 sends GOAWAY to
    # connections that old (clients reconnect, e.g. to rebalance), and calls still running
    # max_connection_age_grace_s later are cancelled; 0: connections never age out.
    keepalive_time_s: float = Field(default=60.0, gt=0, le=_GRPC_MAX_S)
    keepalive_timeout_s: float = Field(default=20.0, gt=0, le=_GRPC_MAX_S)
    min_client_ping_s: float = Field(default=5.0, ge=0, le=_GRPC_MAX_S)
    max_connection_age_s: float = Field(default=0.0, ge=0, le=_GRPC_MAX_S)
    max_connection_age_grace_s: float = Field(default=30.0, ge=0, le=_GRPC_MAX_S)
    # Stateful sequences (README "Stateful sequences"), per model version: live sequences, and the
    # bytes of implicit state they hold; beyond either a new sequence is refused (RESOURCE_EXHAUSTED).
    max_sequences: int = Field(default=4096, ge=1)
    max_sequence_state_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    # Server-wide response cache shared by models with `response_cache { enable: true }`: bytes of
    # cached outputs plus keys (LRU). 0: no cache, and such models fail to load.
    response_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0)

    # Extra grpc core channel arguments for the server, "name=int,name=int" (e.g.
    # "grpc.http2.lookahead_bytes=4194304"): HTTP/2 window and buffer tuning for large messages
    # (BENCHMARKS.md section 12 has what was measured).
    grpc_server_args: str | None = None

    # System shared memory (README "Shared memory"): clients on this host register POSIX shm
    # objects and pass tensors through them. Off by default, as Triton's --allow-client-shm: the
    # server reads and writes what a client registers. Bounded: regions mapped at once (those
    # unregistered while a request still uses them included) and their bytes. Under `workers` > 1
    # the regions are the server's (a registration through one worker is every worker's).
    allow_client_shm: bool = False
    max_shm_regions: int = Field(default=256, ge=1)
    max_shm_bytes: int = Field(default=4 * 1024 * 1024 * 1024, ge=1)

    # onnxruntime session options; 0 threads lets onnxruntime choose.
    intra_op_threads: int = Field(default=0, ge=0, le=_MAX_THREADS)
    inter_op_threads: int = Field(default=1, ge=0, le=_MAX_THREADS)
    allow_spinning: bool = False
    # glibc malloc arenas, set before any thread starts (server/malloc_arenas.py); 0: glibc's own.
    malloc_arena_max: int = Field(default=2, ge=0, le=1024)
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    execution_providers: Names = ("CPUExecutionProvider",)
    # Triton's dynamic batcher waits up to max_queue_delay for a batch to grow even when an instance
    # is free; with idle dispatch a free instance takes what is queued now (a model's
    # `idle_dispatch` parameter overrides this).
    idle_dispatch: bool = False
    # Batches whose recent runs took at most this long run on the event loop thread instead of
    # the instance's executor (0 disables): cheaper than a thread hop for tiny models.
    inline_run_max_us: int = Field(default=300, ge=0, le=5000)
    # Watchdog: a batch run taking longer than this fails its requests (UNAVAILABLE) and its
    # instance gets a fresh session and executor (the stuck thread is abandoned); 0 disables. A
    # model's `run_timeout_s` parameter overrides it.
    run_timeout_s: float = Field(default=30.0, ge=0)
    # Lets models inject faults with their `fault_*` parameters (tests and drills only); without
    # it such a model fails to load, so a production repository cannot switch faults on by accident.
    allow_fault_injection: bool = False

    # -- tracing
    # OpenTelemetry traces (README "Tracing and logs"): off by default, and then free. Spans go to
    # `tracing_exporter`: "auto" is OTEL_TRACES_EXPORTER when set, else OTLP when an
    # OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set, else the console (stderr). A request continues
    # the W3C traceparent of its call's metadata; new traces are sampled at this ratio.
    tracing: bool = False
    tracing_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    tracing_exporter: Literal["auto", "otlp", "console", "none"] = "auto"
    # Log lines as text, or one JSON object a line (time, level, logger, message, request fields).
    log_format: Literal["text", "json"] = "text"

    # -- sampling and drift (README "Prediction sampling and drift")
    # Fraction of each model's requests sampled (a model's `sample_ratio` parameter wins; 0: only
    # models that ask) and what is kept (`sample_what`), written under sample_dir/<model>/<version>/
    # (None: cache_dir/samples) within sample_max_bytes (oldest files removed). The writer's queue
    # holds at most sample_queue_size samples and sample_queue_bytes; beyond, samples are dropped
    # and counted. Drift: the first drift_reference_samples sampled rows after a load (or a model's
    # `drift_reference` file) against the latest drift_window_samples rows.
    sample_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    sample_what: Literal["outputs", "inputs_and_outputs"] = "outputs"
    sample_dir: Path | None = None
    sample_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    sample_queue_size: int = Field(default=1024, ge=1)
    sample_queue_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    drift_reference_samples: int = Field(default=1000, ge=1)
    drift_window_samples: int = Field(default=1000, ge=1)

    # -- metrics
    # Prometheus text on http://metrics_host:metrics_port/metrics (README "Metrics"); 0 picks a free
    # port. With `workers` N, worker i (from 0) serves metrics_port + i (each a free port when 0).
    metrics: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=8002, ge=0, le=65535)
    # Triton's GPU gauges (nv_gpu_*, nv_energy_consumption) on that page where NVML finds GPUs
    # (server/observability/gpu_usage.py); False: left off, as Triton's --allow-gpu-metrics=false.
    # They are read every metrics_interval_ms (Triton's --metrics-interval-ms), a scrape showing
    # the last reading.
    gpu_metrics: bool = True
    metrics_interval_ms: int = Field(default=2000, ge=10, le=3_600_000)
    # Prices (any currency) for sluiceway_cost_per_million_inferences: a CPU core hour, a GPU hour.
    cost_per_core_hour: float | None = Field(default=None, ge=0)
    cost_per_gpu_hour: float | None = Field(default=None, ge=0)

    # Server processes sharing the port (SO_REUSEPORT); the parent holds the port and spawns them.
    workers: int = Field(default=1, ge=1, le=MAX_WORKERS)
    # Set by the parent in its workers only: bind with SO_REUSEPORT to share the parent's port.
    reuse_port: bool = False
    # Set by the parent in its workers only: this worker's number (0..workers-1), in its log lines.
    worker_index: int | None = Field(default=None, ge=0)
    # Set by the parent in its workers only: the private directory (0700) where a worker's automatic
    # rollback is written for the others to follow (server/models/rollout_share.py), and the system
    # shared-memory registrations every worker sees (server/protocol/shm_book.py).
    rollout_share_dir: Path | None = None
    # With `workers` > 1: the onnxruntime sessions of GPU instances ("gpu") or of every instance
    # ("all") live in one session host process that runs the workers' batches together
    # (server/backends/session_host.py): one CUDA context, batches merged up to max_batch_size.
    shared_sessions: Literal["off", "gpu", "all"] = "off"
    # Set by the parent in its workers only: the session host's Unix socket.
    session_host: Path | None = None
    # Set by the parent in its workers only: the intra_op_threads of the session host's sessions,
    # the ones given (0: onnxruntime's choice), not the share of the cores each worker's own get.
    session_host_threads: int = Field(default=0, ge=0)

    # -- repository control and cold starts (README "Repository control", "Cold starts")
    # Triton's modes: none loads every model at start and refuses load/unload RPCs; explicit loads
    # only `load_model` ("*": all) and RepositoryModelLoad/Unload; poll also reloads what changes
    # on disk, checked by file events grouped over repository_poll_secs.
    model_control_mode: Literal["none", "explicit", "poll"] = "none"
    load_model: Names = ()
    repository_poll_secs: float = Field(default=15.0, gt=0, le=3600)
    # Models' resident bytes (files + onnxruntime arena after warm-up); beyond it, loading evicts
    # the least recently used lazy model. 0: no budget.
    model_memory_budget_mb: int = Field(default=0, ge=0)

    # Seconds to finish in-flight work on SIGTERM/SIGINT before failing what is left.
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # uvloop measured 3-16% more mlp throughput than asyncio with grpc.aio here (BENCHMARKS.md).
    use_uvloop: bool = True

    # -- security
    # TLS: the server's PEM certificate chain and private key (both or neither). With a client CA,
    # clients must present a certificate it signed (mutual TLS). Read once, at start-up.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = Field(default=None, validate_default=True)  # checked against the cert
    tls_client_ca_file: Path | None = None
    # Bearer-token auth: a file of `<scope> <token>` lines (scopes: inference, admin); None: no auth.
    # A file rather than a flag or variable holding tokens keeps them out of `ps` and shell history.
    auth_tokens_file: Path | None = None
    # Server reflection (grpcurl, grpcui); with auth on it needs a token, like inference RPCs.
    reflection: bool = True

    @field_validator("*", mode="before")
    @classmethod
    def _not_empty(cls, value: object, info: ValidationInfo) -> object:
        # An empty flag or variable (a manifest's `value: ""`) had meant Path("") = the current
        # directory for paths (every folder served as a failed model) and grpc's raw error for a
        # host: every setting refuses it; unset it for the default.
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty (leave the flag or SLUICEWAY_* variable out for the default)")
        # Python's and pydantic's number parsing take digit separators: "0.1_0" was 0.1, "1_0" 10.
        if isinstance(value, str) and "_" in value and info.field_name in _NUMBERS:
            raise ValueError(f"must be a plain number, without '_': got {value!r}")
        # " 0.5" and " 48001 " had passed (pydantic strips them), where the sample_ratio parameter
        # refuses spaces: a number setting is its digits alone.
        if isinstance(value, str) and value != value.strip() and info.field_name in _NUMBERS:
            raise ValueError(f"must be a plain number, without spaces around it: got {value!r}")
        return value

    @field_validator("execution_providers", "load_model", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        # SLUICEWAY_LOAD_MODEL=mlp was refused (pydantic-settings reads a list variable as JSON
        # only): a string is now comma-separated names, or a JSON list when it starts with "[".
        if isinstance(value, str):
            if not value.lstrip().startswith("["):
                return tuple(name.strip() for name in value.split(",") if name.strip())
            value = json.loads(value)
        if isinstance(value, (list, tuple)) and any(isinstance(n, str) and not n.strip() for n in value):
            # `--load-model ''` or '[""]' had started a server that loaded nothing ("no such model").
            raise ValueError(f"an empty name in {list(value)!r}: every name must be given")
        return value

    @field_validator("execution_providers", mode="after")
    @classmethod
    def _providers(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        import onnxruntime  # here: only the server's settings need it, not every import of this module

        known = set(onnxruntime.get_all_providers())  # every name onnxruntime knows, built in or not
        if not names:  # " , " or "[]": onnxruntime would pick for itself, unasked
            raise ValueError("must not be empty: it names no execution provider (e.g. CPUExecutionProvider)")
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"{unknown}: not onnxruntime execution providers (e.g. CPUExecutionProvider)")
        return names

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, level: object) -> object:
        # `--log-level debug` was refused: logging's own names are upper case, people type either.
        return level.upper() if isinstance(level, str) else level

    @field_validator("grpc_server_args", mode="after")
    @classmethod
    def _grpc_args(cls, text: str | None) -> str | None:
        parse_grpc_args(text or "")
        return text

    @model_validator(mode="after")
    def _across(self) -> ServerSettings:
        check_ports(self.port, self.metrics, self.metrics_port, self.workers)
        given = "max_streams" in self.model_fields_set
        self.max_streams = stream_cap(self.max_streams, self.max_concurrent_rpcs, given)
        return self

    @field_validator("host", "metrics_host", mode="after")
    @classmethod
    def _host(cls, host: str) -> str:
        return check_host(host)

    @model_validator(mode="after")
    def _one_repository_state(self) -> ServerSettings:
        if self.workers > 1 and self.model_control_mode == "explicit":
            # A load or unload by RPC reached the one worker its connection landed on: ModelReady
            # and answers then depended on the connection (9 of 16 saw the model).
            raise ValueError(
                "model_control_mode 'explicit' needs workers=1: a load or unload by RPC would reach "
                "one worker process only (poll mode reloads every worker from the repository)"
            )
        if self.shared_sessions != "off" and self.workers == 1 and self.session_host is None:
            raise ValueError(
                f"shared_sessions '{self.shared_sessions}' needs workers > 1: it shares sessions "
                "between worker processes (one process holds its own already)"
            )
        return self

    @field_validator("load_model", mode="after")
    @classmethod
    def _load_model(cls, names: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if names and info.data.get("model_control_mode") != "explicit":
            # Triton's rule: anywhere else every model is loaded, so the flag would mean nothing.
            raise ValueError("load_model requires model_control_mode 'explicit'")
        if "*" in names and len(names) > 1:
            raise ValueError("load_model '*' (every model) must be the only load_model")
        return names

    @field_validator("tls_cert_file", mode="after")
    @classmethod
    def _tls_cert(cls, cert: Path | None) -> Path | None:
        if cert is not None:
            read_pem(cert)
        return cert

    @field_validator("tls_key_file", mode="after")
    @classmethod
    def _tls_pair(cls, key: Path | None, info: ValidationInfo) -> Path | None:
        if "tls_cert_file" not in info.data:  # the certificate's own error is reported
            return key
        cert = info.data["tls_cert_file"]
        if (cert is None) != (key is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        if cert is not None and key is not None:
            check_key_pair(cert, key)
        return key

    @field_validator("tls_client_ca_file", mode="after")
    @classmethod
    def _client_ca(cls, ca: Path | None, info: ValidationInfo) -> Path | None:
        if ca is not None:
            if info.data.get("tls_cert_file", "refused") is None:  # a refused one has its own line
                raise ValueError("mutual TLS needs the server's own tls_cert_file and tls_key_file")
            check_ca_file(ca)
        return ca

    @field_validator("auth_tokens_file", mode="after")
    @classmethod
    def _tokens(cls, path: Path | None) -> Path | None:
        if path is not None:
            load_tokens(path)  # the server reads it again when it starts; this only checks it
        return path


# The settings that are numbers (their text is checked before pydantic parses it).
_NUMBER_TYPES = (int, float, int | None, float | None)
_NUMBERS = frozenset(
    name for name, field in ServerSettings.model_fields.items() if field.annotation in _NUMBER_TYPES
)


# SLUICEWAY_* variables that are not settings: the scripts' and tests' own, and the client's token.
NOT_SETTINGS = frozenset(
    {"SLUICEWAY_ARGS", "SLUICEWAY_INSTALLER", "SLUICEWAY_PERF_ANALYZER", "SLUICEWAY_SLOW",
     "SLUICEWAY_TEST_FULL", "SLUICEWAY_TEST_ONCE", "SLUICEWAY_TEST_SHARE", "SLUICEWAY_TEST_WORKERS",
     "SLUICEWAY_TEST_ZYGOTE", "SLUICEWAY_TOKEN"}
)  # fmt: skip


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per SLUICEWAY_* variable that names no setting, with the closest one: pydantic-
    settings passes over them, so a typo in a manifest (SLUICEWAY_SHUTDOWN_GRACE) went unnoticed."""
    prefix = "SLUICEWAY_"
    known = {f"{prefix}{name.upper()}" for name in ServerSettings.model_fields}
    lines = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(prefix) or upper in known or upper in NOT_SETTINGS:
            continue
        close = difflib.get_close_matches(upper, sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        lines.append(f"environment variable {name} is not a setting and is ignored{hint}")
    return lines
