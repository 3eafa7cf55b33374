"""Server settings: explicit data, from the command line or SLUICEWAY_* environment variables.

Validated once at start-up; a bad value stops the server with a message naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "sluiceway"


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLUICEWAY_", protected_namespaces=(), extra="forbid")

    host: str = "127.0.0.1"
    # 0 picks a free port (tests); the bound port is reported by the running server.
    port: int = Field(default=8001, ge=0, le=65535)
    # None: serve the built-in demo models, built locally into cache_dir.
    model_repository: Path | None = None
    cache_dir: Path = Field(default_factory=_default_cache_dir)

    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Default queue bound for models whose config sets no max_queue_size (we always bound).
    max_queue_size: int = Field(default=1024, ge=1)
    # Batches one model instance may run at once.
    max_batches_in_flight: int = Field(default=1, ge=1, le=2)
    # max_batch_size given to batchable models that have no config.pbtxt.
    default_max_batch_size: int = Field(default=64, ge=0)
    # Requests one ModelStreamInfer call may have in flight before the server stops reading it.
    stream_max_in_flight: int = Field(default=256, ge=1)
    # Concurrent RPCs the server accepts (streams included) before answering RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = Field(default=4096, ge=1)
    # Server-wide response cache shared by models with `response_cache { enable: true }`: bytes of
    # cached outputs plus keys (LRU). 0: no cache, and such models fail to load.
    response_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0)

    # onnxruntime session options; 0 threads lets onnxruntime choose.
    intra_op_threads: int = Field(default=0, ge=0)
    inter_op_threads: int = Field(default=1, ge=0)
    allow_spinning: bool = False
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    # Triton's dynamic batcher waits up to max_queue_delay for a batch to grow even when an instance
    # is free; with idle dispatch a free instance takes what is queued now (a model's
    # `idle_dispatch` parameter overrides this).
    idle_dispatch: bool = False
    # Batches whose recent runs took at most this long run on the event loop thread instead of
    # the instance's executor (0 disables): cheaper than a thread hop for tiny models.
    inline_run_max_us: int = Field(default=300, ge=0, le=5000)

    # Server processes sharing the port (SO_REUSEPORT); the parent holds the port and spawns them.
    workers: int = Field(default=1, ge=1, le=64)
    # Set by the parent in its workers only: bind with SO_REUSEPORT to share the parent's port.
    reuse_port: bool = False

    # Seconds to finish in-flight work on SIGTERM/SIGINT before failing what is left.
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # uvloop measured 3-16% more mlp throughput than asyncio with grpc.aio here (BENCHMARKS.md).
    use_uvloop: bool = True
