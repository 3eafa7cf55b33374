"""Fault injection: an onnxruntime instance that fails on purpose, for tests and drills.

A model switches it on with `parameters` of its config.pbtxt, and only on a server started with
`allow_fault_injection` (otherwise the model fails to load, naming the setting):

- `fault_raise_every: "N"`: every N-th run of each instance raises (its requests get INTERNAL).
- `fault_hang_every: "N"`: every N-th run of each instance hangs for `fault_hang_s` (default 3600)
  before running normally: past the watchdog's limit (`run_timeout_s`) the batch fails and the
  instance is replaced; a hang shorter than the limit is a slow run.
- `fault_load_error: "true"`: the model fails to load, as with a broken model file.
- `fault_load_gate: "/abs/path/fifo"`: the version's load waits, before its first instance, until a
  writer opens that named pipe (FIFO) and closes it: a load held for exactly as long as a test or
  drill wants, released by `open(path, "wb").close()`, timing nothing. A load waiting there cannot
  be cancelled (a thread blocked in open): release it before stopping the server.
- `fault_run_gate: "/abs/path/fifo"`: each run waits likewise before it runs (a run in flight for
  as long as the test wants: a request queued behind it stays queued); past `run_timeout_s` the
  watchdog fails it as any stuck run, its thread still waiting there.
- `fault_replace_gate: "/abs/path/fifo"`: a replacement of a stuck instance waits likewise before
  its new session (the instance's next batches wait for it, as for a slow replacement).
- `fault_versions: "2,3"`: only these versions get the faults above (default: every version), so
  one version of a model can fail or be slow while the others serve (rollout tests and drills).

Deterministic, no randomness: runs are counted per instance on the event loop thread, from 1, in
the order the batcher starts them; a replaced instance counts from 1 again. Where one run is due
both to hang and to raise, it hangs first. A hung run waits on an event that `abandon`/`close` sets,
so the thread the watchdog abandons is released at once (a real stuck run is not).

The fault backend is not RunsBlocking on purpose: the batcher then never runs it inline on the
event loop thread, where a hang could not be watched; every run goes through its executor.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import threading
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from batcher.types import Tensors
from protos import model_config_pb2 as mc
from server.models.config import FAULT_PARAMETERS, ConfigError
from server.whole_numbers import whole_number

RAISE_EVERY = "fault_raise_every"
HANG_EVERY = "fault_hang_every"
HANG_S = "fault_hang_s"
LOAD_ERROR = "fault_load_error"
LOAD_GATE = "fault_load_gate"
RUN_GATE = "fault_run_gate"
REPLACE_GATE = "fault_replace_gate"
VERSIONS = "fault_versions"
_BOOLEANS = {"true": True, "false": False}
DEFAULT_HANG_S = 3600.0  # "for ever": a hung run ends when its instance is abandoned or closed

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """Raised on purpose by a fault-injected run. Unmapped on purpose: the caller gets INTERNAL
    with the generic message, the details go to the log, as for any backend error."""


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """What a model's `fault_*` parameters ask for (0: never)."""

    raise_every: int = 0
    hang_every: int = 0
    hang_s: float = DEFAULT_HANG_S
    load_error: bool = False
    load_gate: str = ""  # a FIFO's absolute path ("": none)
    run_gate: str = ""  # likewise
    replace_gate: str = ""  # likewise

    @classmethod
    def from_config(
        cls, config: mc.ModelConfig, source: str, *, allowed: bool, version: int | None = None
    ) -> FaultSpec | None:
        """None when the config asks for no fault (for `version`, when given); ConfigError naming
        the parameter (or the server setting, when faults are not allowed) when it asks wrongly."""
        asked = sorted(FAULT_PARAMETERS & set(config.parameters))
        if not asked:
            return None
        if not allowed:
            raise ConfigError(
                f"{source}: parameters {asked} inject faults, which this server does not allow "
                "(setting allow_fault_injection: --allow-fault-injection or "
                "SLUICEWAY_ALLOW_FAULT_INJECTION=true)"
            )
        values = {key: config.parameters[key].string_value.strip() for key in asked}
        spec = cls(
            raise_every=_count(values, RAISE_EVERY, source),
            hang_every=_count(values, HANG_EVERY, source),
            hang_s=_seconds(values, HANG_S, source),
            load_error=_boolean(values, LOAD_ERROR, source),
            load_gate=_fifo(values, LOAD_GATE, source),
            run_gate=_fifo(values, RUN_GATE, source),
            replace_gate=_fifo(values, REPLACE_GATE, source),
        )
        versions = _versions(values, source)
        return spec if version is None or version in versions else None


def _count(values: dict[str, str], key: str, source: str) -> int:
    value = values.get(key, "0")
    number = whole_number(value, 2**63 - 1)
    if number is None:
        raise ConfigError(
            f"{source}: parameters '{key}' must be a whole number of runs (0: never), got '{value[:100]}'"
        )
    return number


def _versions(values: dict[str, str], source: str) -> set[int] | range:
    text = values.get(VERSIONS)
    if text is None:
        return range(0, 2**63)  # every version
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isascii() and p.isdigit() for p in parts):
        raise ConfigError(
            f"{source}: parameters '{VERSIONS}' must be version numbers such as '2,3', got '{text}'"
        )
    return {int(p) for p in parts}


def _seconds(values: dict[str, str], key: str, source: str) -> float:
    value = values.get(key, str(DEFAULT_HANG_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{source}: parameters '{key}' must be a positive number of seconds, got '{value}'")
    return seconds


def _boolean(values: dict[str, str], key: str, source: str) -> bool:
    value = values.get(key, "false")
    if value.lower() not in _BOOLEANS:
        raise ConfigError(f"{source}: parameters '{key}' must be 'true' or 'false', got '{value}'")
    return _BOOLEANS[value.lower()]


def _fifo(values: dict[str, str], key: str, source: str) -> str:
    path = values.get(key, "")
    if not path:
        return ""
    try:
        is_fifo = os.path.isabs(path) and stat.S_ISFIFO(os.stat(path).st_mode)
    except (OSError, ValueError):
        is_fifo = False
    if not is_fifo:
        raise ConfigError(f"{source}: parameters '{key}' must be the absolute path of a named pipe (FIFO)")
    return path


def wait_at_gate(what: str, path: str, parameter: str = LOAD_GATE) -> None:
    """Block (in a loader or run thread) until a writer opens the FIFO at `path` and closes it; the
    line tells whoever holds the gate that `what` waits there."""
    log.info("%s held until %s is opened and closed (%s)", what, path, parameter)
    with open(path, "rb") as gate:  # open blocks until a writer opens the pipe
        gate.read()  # then read until that writer closes it


class Session(Protocol):
    """An instance with its own executor and a blocking run (onnxruntime's, the identity backend's)."""

    @property
    def executor(self) -> Executor: ...

    async def run(self, inputs: Tensors) -> Tensors: ...

    def run_blocking(self, inputs: Tensors, *, log_failure: bool = True) -> Tensors: ...

    def close(self) -> None: ...

    def abandon(self) -> None: ...


class FaultBackend:
    """An instance (onnxruntime or identity) whose runs raise or hang as its FaultSpec says."""

    def __init__(self, inner: Session, spec: FaultSpec) -> None:
        self._inner = inner
        self._spec = spec
        self._runs = 0
        self._released = threading.Event()  # set by abandon/close: a hung run ends

    @property
    def inner(self) -> Session:
        return self._inner

    @property
    def runs(self) -> int:
        """Runs started on this instance (the count faults are due by)."""
        return self._runs

    async def run(self, inputs: Tensors) -> Tensors:
        self._runs += 1  # on the event loop thread: the order the batcher starts runs in
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._inner.executor, self._run, self._runs, inputs)

    def _run(self, number: int, inputs: Tensors) -> Tensors:
        spec = self._spec
        if spec.run_gate:
            wait_at_gate(f"run {number}", spec.run_gate, RUN_GATE)
        if spec.hang_every and number % spec.hang_every == 0 and self._released.wait(spec.hang_s):
            raise InjectedFault(f"run {number} hung on purpose ({HANG_EVERY}) and its instance was abandoned")
        if spec.raise_every and number % spec.raise_every == 0:
            raise InjectedFault(f"run {number} raised on purpose ({RAISE_EVERY}={spec.raise_every})")
        return self._inner.run_blocking(inputs)

    def abandon(self) -> None:
        self._released.set()
        self._inner.abandon()

    def close(self) -> None:
        self._released.set()
        self._inner.close()
