"""A model's traffic policy (our config extension): weights across versions, the sticky routing
key, the shadow candidate and the rollback thresholds, all as `parameters` of its config.pbtxt.

    parameters { key: "traffic_weights"    value: { string_value: "1:90,2:10" } }
    parameters { key: "traffic_sticky_key" value: { string_value: "user_id" } }
    parameters { key: "shadow_version"     value: { string_value: "3" } }
    parameters { key: "shadow_fraction"    value: { string_value: "0.05" } }
    parameters { key: "rollback_window_s"  value: { string_value: "30" } }

Routing is a pure function of a key: a stable hash (blake2b, not Python's salted hash()) maps the
key to a point in [0, 1), and the versions own consecutive slices of that interval in version
order, sized by weight. The same key lands on the same version while the weights stand, and a
ramp (90/10 -> 80/20) moves only the keys of the slice that changed hands.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from protos import model_config_pb2 as mc
from server.models.config_errors import ConfigError

WEIGHTS = "traffic_weights"
STICKY_KEY = "traffic_sticky_key"
SHADOW_VERSION = "shadow_version"
SHADOW_FRACTION = "shadow_fraction"
SHADOW_TIMEOUT_MS = "shadow_timeout_ms"
SHADOW_MAX_QUEUE = "shadow_max_queue"
SHADOW_MAX_IN_FLIGHT = "shadow_max_in_flight"
ROLLBACK_WINDOW_S = "rollback_window_s"
ROLLBACK_MIN_REQUESTS = "rollback_min_requests"
ROLLBACK_ERROR_MARGIN = "rollback_error_margin"
ROLLBACK_LATENCY_MARGIN = "rollback_latency_margin"
ROLLBACK_LATENCY_FLOOR_MS = "rollback_latency_floor_ms"
ROLLBACK_PARAMETERS = frozenset(
    {
        ROLLBACK_WINDOW_S,
        ROLLBACK_MIN_REQUESTS,
        ROLLBACK_ERROR_MARGIN,
        ROLLBACK_LATENCY_MARGIN,
        ROLLBACK_LATENCY_FLOOR_MS,
    }
)
SHADOW_PARAMETERS = frozenset(
    {SHADOW_VERSION, SHADOW_FRACTION, SHADOW_TIMEOUT_MS, SHADOW_MAX_QUEUE, SHADOW_MAX_IN_FLIGHT}
)
TRAFFIC_PARAMETERS = frozenset({WEIGHTS, STICKY_KEY}) | SHADOW_PARAMETERS | ROLLBACK_PARAMETERS
MAX_WEIGHT = 1_000_000  # weights are relative; a bound keeps the sums exact and small


@dataclass(frozen=True, slots=True)
class RollbackThresholds:
    """When a candidate is rolled back: over a window of `window_s` seconds in which it and the
    stable version each answered at least `min_requests`, its error rate exceeds the stable's by
    more than `error_margin` (absolute, 0.05 = 5 points), or its p99 latency exceeds the stable's
    by more than `latency_margin` (relative, 1.0 = twice as slow) and by more than
    `latency_floor_s` (absolute: sub-millisecond p99s of identical versions differ by buckets of
    noise, and one window of 2 ms against 0.5 ms rolled a healthy canary back)."""

    window_s: float = 30.0
    min_requests: int = 100
    error_margin: float = 0.05
    latency_margin: float = 1.0
    latency_floor_s: float = 0.005


@dataclass(frozen=True, slots=True)
class ShadowPolicy:
    version: int
    fraction: float  # of the requests routed by the policy (not those naming a version)
    timeout_s: float = 0.1  # a shadow request's deadline: late ones are dropped, never waited for
    max_queue: int = 0  # submitted only while the candidate's queue holds at most this many
    max_in_flight: int = 16  # shadow requests pending at once, per model


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    weights: Mapping[int, int]  # version -> relative weight (absent: 0)
    sticky_key: str = ""  # request parameter holding the routing key ("": the request id)
    shadow: ShadowPolicy | None = None
    rollback: RollbackThresholds | None = None  # None: no automatic rollback


def has_policy(config: mc.ModelConfig) -> bool:
    return any(key in TRAFFIC_PARAMETERS for key in config.parameters)


def parse_policy(config: mc.ModelConfig, source: str, served: Iterable[int]) -> TrafficPolicy | None:
    """The config's traffic policy (None: it has none), checked against the served versions;
    ConfigError naming the parameter otherwise."""
    params = {
        k: config.parameters[k].string_value.strip() for k in config.parameters if k in TRAFFIC_PARAMETERS
    }
    if not params:
        return None
    served_set = set(served)
    where = f"{source}: parameters '{{}}'"
    if WEIGHTS in params:
        try:
            weights = parse_weights(params[WEIGHTS])
        except ValueError as exc:
            raise ConfigError(f"{where.format(WEIGHTS)} {exc}") from None
    else:
        weights = {max(served_set): 1} if served_set else {}
    _check_served(weights, served_set, where.format(WEIGHTS))
    shadow = _shadow(params, served_set, where)
    stable = max(sorted(weights), key=lambda v: weights[v]) if weights else None  # ModelRollout.stable's
    if shadow is not None and shadow.version == stable:
        # Its own answers are never mirrored to it: the policy would do nothing, silently.
        raise ConfigError(
            f"{where.format(SHADOW_VERSION)} names version {stable}, the stable version (the most "
            f"weight in '{WEIGHTS}', or the newest without it): a version is never shadowed by its "
            "own requests; name a candidate version"
        )
    rollback = None
    if ROLLBACK_PARAMETERS & set(params):
        d = RollbackThresholds()
        rollback = RollbackThresholds(
            window_s=_number(params, ROLLBACK_WINDOW_S, d.window_s, where, low=0.0),
            min_requests=int(
                _number(params, ROLLBACK_MIN_REQUESTS, d.min_requests, where, low=1, whole=True, zero=True)
            ),
            error_margin=_number(params, ROLLBACK_ERROR_MARGIN, d.error_margin, where, low=0.0, zero=True),
            latency_margin=_number(
                params, ROLLBACK_LATENCY_MARGIN, d.latency_margin, where, low=0.0, zero=True
            ),
            latency_floor_s=_number(
                params, ROLLBACK_LATENCY_FLOOR_MS, d.latency_floor_s * 1000, where, low=0.0, zero=True
            )
            / 1000,
        )
    return TrafficPolicy(weights, params.get(STICKY_KEY, ""), shadow, rollback)


def parse_weights(text: str) -> dict[int, int]:
    """ "1:90,2:10" -> {1: 90, 2: 10}; ValueError saying what is wrong."""
    weights: dict[int, int] = {}
    for part in text.split(","):
        version, sep, weight = part.strip().partition(":")
        version, weight = version.strip(), weight.strip()
        if (
            not sep
            or not (version.isascii() and version.isdigit())
            or not (weight.isascii() and weight.isdigit())
        ):
            raise ValueError(f"must be VERSION:WEIGHT pairs such as '1:90,2:10', got '{part.strip()}'")
        if int(version) >= 2**63:  # versions are int64: the request had failed in protobuf
            raise ValueError(f"names version {version}, out of range (0 to 2**63-1)")
        if int(version) in weights:
            raise ValueError(f"names version {int(version)} twice")
        if int(weight) > MAX_WEIGHT:
            raise ValueError(f"gives version {int(version)} weight {int(weight)}, above {MAX_WEIGHT}")
        weights[int(version)] = int(weight)
    if not any(weights.values()):
        raise ValueError("gives every version weight 0: at least one needs a positive weight")
    return weights


def format_weights(weights: Mapping[int, int]) -> str:
    return ",".join(f"{v}:{w}" for v, w in sorted(weights.items()))


def _check_served(versions: Iterable[int], served: set[int], where: str) -> None:
    missing = sorted(set(versions) - served)
    if missing:
        raise ConfigError(
            f"{where} names versions {missing} that are not served (served: {sorted(served)}; "
            "the version_policy must serve every version the traffic policy routes to)"
        )


def _shadow(params: dict[str, str], served: set[int], where: str) -> ShadowPolicy | None:
    if SHADOW_VERSION not in params:
        others = sorted(SHADOW_PARAMETERS & set(params))
        if others:
            raise ConfigError(
                f"{where.format(others[0])} needs '{SHADOW_VERSION}' (the version to mirror to)"
            )
        return None
    text = params[SHADOW_VERSION]
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"{where.format(SHADOW_VERSION)} must be a version number, got '{text}'")
    _check_served([int(text)], served, where.format(SHADOW_VERSION))
    d = ShadowPolicy(int(text), 0.0)
    fraction = _number(params, SHADOW_FRACTION, 0.0, where, low=0.0, zero=True)
    if fraction > 1:
        raise ConfigError(f"{where.format(SHADOW_FRACTION)} must be between 0 and 1, got {fraction:g}")
    return ShadowPolicy(
        version=int(text),
        fraction=fraction,
        timeout_s=_number(params, SHADOW_TIMEOUT_MS, d.timeout_s * 1000, where, low=0.0) / 1000,
        max_queue=int(_number(params, SHADOW_MAX_QUEUE, d.max_queue, where, low=0, whole=True, zero=True)),
        max_in_flight=int(
            _number(params, SHADOW_MAX_IN_FLIGHT, d.max_in_flight, where, low=1, whole=True, zero=True)
        ),
    )


def _number(
    params: dict[str, str],
    key: str,
    default: float,
    where: str,
    *,
    low: float,
    whole: bool = False,
    zero: bool = False,
) -> float:
    """The parameter as a finite number above `low` (or equal to it where `zero`)."""
    text = params.get(key)
    if text is None:
        return default
    try:
        value = float(text) if not whole else float(int(text))
    except ValueError:
        value = math.nan
    if "_" in text or not text.isascii():  # float(), int() read '1_0', fullwidth '10' as 10: refused
        value = math.nan
    ok = math.isfinite(value) and (value > low or (zero and value == low))
    if not ok:
        kind = "a whole number" if whole else "a number"
        bound = f">= {low:g}" if zero else f"> {low:g}"
        raise ConfigError(f"{where.format(key)} must be {kind} {bound}, got '{text}'")
    return value


# -- routing --------------------------------------------------------------------------------


def point_of(key: str, salt: bytes = b"") -> float:
    """A stable point in [0, 1) for `key` (the same in every process and run)."""
    digest = hashlib.blake2b(salt + key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True, slots=True)
class Slices:
    """Weights as slices of [0, 1) in version order, computed once per change of weights:
    `bounds[i]` is where the slice of `versions[i]` ends. Versions of weight 0 own none. A request
    without a key takes the slice holding a random point; one with a key, `pick_key`."""

    bounds: tuple[float, ...]
    versions: tuple[int, ...]
    weights: tuple[int, ...] = ()
    salts: tuple[bytes, ...] = ()  # per version, what its key hashes start with (made once)

    @classmethod
    def of(cls, weights: Mapping[int, int]) -> Slices:
        total = sum(w for w in weights.values() if w > 0)
        if total <= 0:
            raise ValueError("no version has a positive weight")
        bounds, versions, running = [], [], 0
        for version in sorted(weights):
            if weights[version] > 0:
                running += weights[version]
                bounds.append(running / total)
                versions.append(version)
        bounds[-1] = math.inf  # a point rounded up to 1.0 still lands in the last slice
        salts = tuple(b"v%d:" % v for v in versions)
        return cls(tuple(bounds), tuple(versions), tuple(weights[v] for v in versions), salts)

    def pick(self, point: float) -> int:
        """The version whose slice holds `point`."""
        return self.versions[bisect_right(self.bounds, point)]

    def pick_key(self, key: str) -> int:
        """The version for a routing key, by weighted rendezvous hashing: each version scores the
        key -ln(u)/weight (u: the key's point for that version) and the lowest wins. A key moves
        only to a version whose weight grew or away from one whose weight shrank: slices laid end
        to end moved every key of a version whose weight had not changed when an earlier one's
        did (a 80/10/10 -> 70/10/20 ramp moved all of version 2's users)."""
        data = key.encode("utf-8", "surrogatepass")
        best, best_score = self.versions[0], math.inf
        for version, weight, salt in zip(self.versions, self.weights, self.salts, strict=True):
            digest = hashlib.blake2b(salt + data, digest_size=8).digest()
            u = (int.from_bytes(digest, "big") + 0.5) / 2.0**64  # in (0, 1): log-safe
            score = -math.log(u) / weight
            if score < best_score:
                best, best_score = version, score
        return best


def pick(weights: Mapping[int, int], point: float) -> int:
    """The version whose slice of [0, 1) holds `point` (see Slices)."""
    return Slices.of(weights).pick(point)
