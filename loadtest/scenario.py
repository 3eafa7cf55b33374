"""What a load test does, as plain data: targets, steps, and the plan one worker process runs.

Everything here is picklable (plans cross a spawn boundary) and free of grpc and numpy, so a
worker process imports little before it starts sending.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["closed", "open", "stream"]
Arrival = Literal["poisson", "constant"]

DEFAULT_ADDRESS = "127.0.0.1:8001"
# How long answers may keep coming after a window closes when no deadline is asked: then the calls
# still unanswered are cancelled (NO_ANSWER). No gRPC deadline is sent for it (perf_analyzer sends
# none); a hidden 10 s one had gone out with every request.
DRAIN_S = 10.0


@dataclass(frozen=True)
class Target:
    """A server under test: just an address and the model name it serves (peers plug in the same way)."""

    name: str
    address: str
    model: str
    # A sluiceway server's /metrics: server-side figures in the report (None: ModelStatistics only).
    metrics_url: str | None = None


@dataclass(frozen=True)
class Step:
    """One point of a sweep: a concurrency (closed), a rate in requests/s (open) or a stream count."""

    mode: Mode
    level: float

    @property
    def label(self) -> str:
        if self.mode == "closed":
            return f"closed c={self.level:g}"
        if self.mode == "open":
            return f"open {self.level:g}/s"
        return f"stream n={self.level:g}"


@dataclass(frozen=True)
class Security:
    """How to reach every target: TLS material (PEM bytes, read once by the coordinator so workers
    need no file access) and a bearer token. All empty: plaintext, no token."""

    tls: bool = False  # TLS even without a CA file (the system's trusted roots)
    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None
    token: str | None = field(default=None, repr=False)

    def describe(self) -> dict[str, bool]:
        """What results.json records: which protections were on, never the secrets."""
        return {
            "tls": self.tls or self.root_certificates is not None or self.certificate_chain is not None,
            "mutual_tls": self.certificate_chain is not None,
            "token": self.token is not None,
        }


PLAINTEXT = Security()


@dataclass(frozen=True)
class Scenario:
    """The whole run: the same steps against every target, `rounds` times, targets interleaved."""

    targets: tuple[Target, ...]
    steps: tuple[Step, ...]
    duration_s: float = 5.0
    warmup_s: float = 1.0
    rounds: int = 1
    processes: int = 1
    batch_size: int = 1
    deadline_ms: float | None = None
    arrival: Arrival = "poisson"
    fps: float = 30.0
    source: str = "auto"
    max_requests: int = 1_000_000
    max_in_flight: int = 1024
    seed: int = 0
    input_files: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    security: Security = PLAINTEXT
    # Connections each load process opens to a target, its users, streams or requests spread over
    # them: under `serve --workers N` the kernel spreads connections, not requests, over the workers.
    connections: int = 1


@dataclass(frozen=True)
class WorkerPlan:
    """One worker process's share of one step against one target.

    `start_at` is a time.monotonic() value: CLOCK_MONOTONIC is system-wide on Linux, so every
    worker starts its share at the same instant. Requests scheduled in
    [start_at + warmup_s, start_at + warmup_s + duration_s) are measured.
    """

    address: str
    mode: Mode
    # closed: concurrent requests; stream: streams; open: unused.
    concurrency: int
    # open: requests/s of this process; stream: frames/s of each stream.
    rate: float
    arrival: Arrival
    # Constant arrivals: this process's offset, so P processes interleave into one even sequence.
    phase_s: float
    payloads: tuple[bytes, ...]
    deadline_s: float | None
    start_at: float
    warmup_s: float
    duration_s: float
    drain_s: float
    max_requests: int
    max_in_flight: int
    seed: int
    security: Security = PLAINTEXT
    connections: int = 1  # connections to the target (closed-loop user i on connection i mod this)

    @property
    def window(self) -> tuple[float, float]:
        begin = self.start_at + self.warmup_s
        return begin, begin + self.duration_s


def parse_levels(text: str) -> tuple[float, ...]:
    """'1,4,16' -> (1.0, 4.0, 16.0); every level must be > 0."""
    levels = tuple(float(part) for part in text.split(",") if part.strip())
    if not levels or any(level <= 0 for level in levels):
        raise ValueError(f"expected a comma-separated list of positive numbers, got {text!r}")
    return levels


def parse_target(text: str, default_model: str, default_name: str = "sluiceway") -> Target:
    """'name=host:port[/model]' or 'host:port[/model]'."""
    name, _, rest = text.rpartition("=")
    address, _, model = rest.partition("/")
    if ":" not in address:
        raise ValueError(f"target {text!r}: expected host:port")
    return Target(name=name or default_name, address=address, model=model or default_model)


def parse_targets(text: str, default_model: str) -> tuple[Target, ...]:
    """'a=127.0.0.1:8001,b=127.0.0.1:9001/mlp' -> targets, names unique."""
    targets = tuple(
        parse_target(part.strip(), default_model, f"t{i}") for i, part in enumerate(text.split(",")) if part
    )
    names = [t.name for t in targets]
    if not targets or len(set(names)) != len(names):
        raise ValueError(f"--compare needs distinct target names, got {names}")
    return targets


def is_loopback(address: str) -> bool:
    """Whether host:port names this machine (load must never leave it unless asked)."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


def split_evenly(total: int, parts: int) -> list[int]:
    """total split into at most `parts` positive shares differing by at most one."""
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def drain_s_for(deadline_s: float | None) -> float:
    """Seconds answers may keep coming after a window closes, before the calls are cancelled."""
    return deadline_s + 1.0 if deadline_s else DRAIN_S


def deadline_sent(scenario: Scenario) -> dict[str, float | None]:
    """What went out with each request (results.json, the report): the gRPC deadline and the
    `timeout` parameter, both None unless --deadline-ms; and when unanswered calls were cancelled."""
    deadline_ms = scenario.deadline_ms or None
    return {
        "grpc_deadline_ms": deadline_ms,
        "timeout_parameter_us": None if deadline_ms is None else deadline_ms * 1000,
        "unanswered_cancelled_after_s": drain_s_for(None if deadline_ms is None else deadline_ms / 1000),
    }


def describe_deadline(sent: dict[str, float | None]) -> str:
    """One line for the terminal and report.html."""
    after_s = sent["unanswered_cancelled_after_s"]
    after = f"calls unanswered {after_s:g} s after a window are cancelled (NO_ANSWER)"
    if sent["grpc_deadline_ms"] is None:
        return f"deadline sent: none (no gRPC deadline, no timeout parameter); {after}"
    return f"deadline sent: {sent['grpc_deadline_ms']:g} ms (gRPC deadline and timeout parameter); {after}"
