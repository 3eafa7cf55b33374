"""The rollout's pure parts: the traffic policy's parsing, weighted and sticky picking, the
rollback verdict over windows with a fake clock, and the shadow comparison."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from google.protobuf import text_format

from batcher.stats import LATENCY_BOUNDS_NS, Histogram
from protos import model_config_pb2 as mc
from server.models.config import ConfigError
from server.models.rollback import Figures, RollbackMonitor, decide, quantile_s
from server.models.shadow import ShadowFigures, compare
from server.models.traffic import RollbackThresholds, Slices, parse_policy, parse_weights, pick, point_of


def config(**params: str) -> mc.ModelConfig:
    text = "\n".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()
    )
    return text_format.Parse(text, mc.ModelConfig())


def test_no_traffic_parameters_is_no_policy() -> None:
    assert parse_policy(config(run_timeout_s="3"), "m", [1, 2]) is None


def test_a_full_policy_parses() -> None:
    policy = parse_policy(
        config(
            traffic_weights="1:90, 2:10",
            traffic_sticky_key="user_id",
            shadow_version="3",
            shadow_fraction="0.25",
            shadow_timeout_ms="50",
            rollback_window_s="10",
            rollback_min_requests="20",
        ),
        "m",
        [1, 2, 3],
    )
    assert policy is not None
    assert dict(policy.weights) == {1: 90, 2: 10} and policy.sticky_key == "user_id"
    assert policy.shadow is not None and policy.shadow.version == 3 and policy.shadow.fraction == 0.25
    assert policy.shadow.timeout_s == pytest.approx(0.05)
    assert policy.rollback == RollbackThresholds(window_s=10, min_requests=20)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"traffic_weights": "1=90"}, "traffic_weights"),
        ({"traffic_weights": "1:0,2:0"}, "traffic_weights"),
        ({"traffic_weights": "1:50,1:50"}, "traffic_weights"),
        ({"traffic_weights": "1:50,4:50"}, "traffic_weights"),  # version 4 is not served
        ({"shadow_version": "9"}, "shadow_version"),
        ({"shadow_version": "2", "shadow_fraction": "1.5"}, "shadow_fraction"),
        ({"shadow_fraction": "0.5"}, "shadow_fraction"),  # without shadow_version
        ({"rollback_min_requests": "0"}, "rollback_min_requests"),
        ({"rollback_window_s": "nan"}, "rollback_window_s"),
        ({"rollback_error_margin": "-1"}, "rollback_error_margin"),
        # Digit separators: float() and int() had read these as 10 and 2000.
        ({"rollback_min_requests": "1_0"}, "rollback_min_requests"),
        ({"rollback_latency_floor_ms": "2_000"}, "rollback_latency_floor_ms"),
        ({"traffic_weights": "1:9_0,2:10"}, "traffic_weights"),
    ],
)
def test_bad_policies_name_the_parameter(params: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=f"'{named}'"):
        parse_policy(config(**params), "models/m/config.pbtxt", [1, 2])


def test_weights_syntax() -> None:
    assert parse_weights("3:1") == {3: 1}
    with pytest.raises(ValueError, match="VERSION:WEIGHT"):
        parse_weights("a:1")


def test_points_are_stable_and_uniform() -> None:
    assert point_of("user-42") == point_of("user-42")
    assert point_of("user-42") != point_of("user-42", b"shadow:")
    points = [point_of(f"req-{i}") for i in range(4000)]
    assert all(0 <= p < 1 for p in points)
    assert abs(np.mean(points) - 0.5) < 0.02


def test_pick_slices_by_weight_in_version_order() -> None:
    weights = {2: 10, 1: 90}
    assert pick(weights, 0.0) == 1 and pick(weights, 0.899) == 1
    assert pick(weights, 0.9) == 2 and pick(weights, 0.99999) == 2
    assert pick({1: 0, 2: 5}, 0.0) == 2
    with pytest.raises(ValueError):
        pick({1: 0}, 0.5)


def test_a_weighted_split_is_within_five_sigma() -> None:
    n, p = 2000, 0.2
    chosen = [pick({1: 80, 2: 20}, point_of(f"request-{i}")) for i in range(n)]
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(chosen.count(2) - n * p) <= 5 * sigma


def test_a_ramp_moves_only_the_keys_of_the_slice_that_changed_hands() -> None:
    keys = [f"user-{i}" for i in range(1000)]
    before = {k: Slices.of({1: 90, 2: 10}).pick_key(k) for k in keys}
    after = {k: Slices.of({1: 80, 2: 20}).pick_key(k) for k in keys}
    assert all(after[k] == 2 for k in keys if before[k] == 2)  # canary users stay on the canary
    moved = sum(before[k] != after[k] for k in keys)
    assert 60 <= moved <= 140, moved  # 10% of the keys: the share that changed hands (5 sigma)


def test_a_ramp_between_two_versions_leaves_a_third_ones_keys_mostly_in_place() -> None:
    """Slices laid end to end in version order moved every key of version 2 when version 1 gave 10
    to version 3 (217 of 1,000 keys moved where 100 changed hands)."""
    keys = [f"user-{i}" for i in range(4000)]
    before = {k: Slices.of({1: 80, 2: 10, 3: 10}).pick_key(k) for k in keys}
    after = {k: Slices.of({1: 70, 2: 10, 3: 20}).pick_key(k) for k in keys}
    on_two = [k for k in keys if before[k] == 2]
    assert sum(after[k] == 2 for k in on_two) >= 0.8 * len(on_two)  # measured 92%
    assert all(after[k] == 3 for k in keys if before[k] == 3)  # the version that grew keeps its keys
    assert not [k for k in keys if before[k] != 1 and after[k] == 1]  # none moves to the one that shrank
    moved = sum(before[k] != after[k] for k in keys)
    assert moved <= 0.14 * len(keys), moved  # 10% changed hands; end to end moved 21.7%
    counts = Counter(after.values())
    assert abs(counts[3] - 800) <= 5 * math.sqrt(4000 * 0.2 * 0.8), counts


def latency(ms: float, count: int) -> tuple[int, ...]:
    h = Histogram(LATENCY_BOUNDS_NS)
    for _ in range(count):
        h.observe(int(ms * 1e6))
    return tuple(h.counts)


T = RollbackThresholds(window_s=10, min_requests=50, error_margin=0.05, latency_margin=1.0)


def test_quantiles_are_bucket_upper_bounds() -> None:
    counts = latency(0.4, 99)
    assert quantile_s(counts, 0.5) == pytest.approx(0.0005)
    assert quantile_s((0,) * len(counts), 0.5) is None
    assert quantile_s(latency(5000, 3), 0.99) == math.inf


def test_decide_errors_latency_and_too_few_requests() -> None:
    stable = Figures(ok=200, errors=2, latency=latency(0.4, 200))
    assert decide(stable, Figures(100, 1, latency(0.4, 100)), T) is None
    failing = decide(stable, Figures(80, 20, latency(0.4, 80)), T)
    assert failing is not None and "error rate 20.0%" in failing
    slow = decide(stable, Figures(100, 0, latency(40, 100)), T)
    assert slow is not None and "p99" in slow
    assert decide(stable, Figures(30, 20, latency(40, 30)), T) is not None  # 50 requests: enough
    assert decide(stable, Figures(20, 20, latency(40, 20)), T) is None  # 40: too few to judge


def test_the_monitor_judges_each_window_on_its_own_figures() -> None:
    now = 1000.0
    start = {1: Figures(500, 0, latency(0.4, 500)), 2: Figures(500, 400, latency(0.4, 500))}
    monitor = RollbackMonitor(10, now, start)  # version 2's bad past is before the window
    assert not monitor.due(now + 9.9) and monitor.due(now + 10)
    healthy = {
        1: Figures(600, 0, tuple(a + b for a, b in zip(start[1].latency, latency(0.4, 100), strict=True))),
        2: Figures(600, 400, tuple(a + b for a, b in zip(start[2].latency, latency(0.4, 100), strict=True))),
    }
    report = monitor.close(now + 10, healthy, stable=1, candidates=[2], thresholds=T)
    assert report.verdicts == {} and report.figures[2] == Figures(100, 0, latency(0.4, 100))
    failing = {1: Figures(700, 0, healthy[1].latency), 2: Figures(650, 460, healthy[2].latency)}
    failing[1] = Figures(
        700, 0, tuple(a + b for a, b in zip(healthy[1].latency, latency(0.4, 100), strict=True))
    )
    failing[2] = Figures(
        650, 460, tuple(a + b for a, b in zip(healthy[2].latency, latency(0.4, 50), strict=True))
    )
    report = monitor.close(now + 20, failing, stable=1, candidates=[2], thresholds=T)
    assert list(report.verdicts) == [2] and "error rate 54.5%" in report.verdicts[2]
    assert monitor.close(now + 30, failing, stable=1, candidates=[2], thresholds=None).verdicts == {}


def test_a_candidate_that_misses_its_deadlines_is_judged_slow() -> None:
    """A canary too slow for its callers' deadlines had no successes, so no p99: never rolled back."""
    stable = Figures(ok=200, errors=0, latency=latency(0.4, 200))
    never_in_time = Figures(ok=0, errors=0, latency=(), missed=150)
    verdict = decide(stable, never_in_time, T)
    assert verdict is not None and "p99 latency <= inf" in verdict
    assert decide(stable, Figures(199, 0, latency(0.4, 199), missed=1), T) is None  # under 1%
    both = Figures(ok=100, errors=0, latency=latency(0.4, 100), missed=100)  # the callers' deadlines
    assert decide(both, never_in_time, T) is None  # inf against inf: no worse than the stable
    assert never_in_time.error_rate == 0.0 and never_in_time.requests == 150


def test_a_window_where_a_versions_figures_change_source_judges_it_not() -> None:
    """A shadow-only candidate given weight mid-window: its copies' count minus its requests' went
    negative (n=-319 in the log), and the window skipped it."""
    start = {1: Figures(500, 0, latency(0.4, 500)), 2: Figures(400, 0, latency(0.4, 400), 0, "shadow")}
    monitor = RollbackMonitor(10, 0.0, start)
    now = {1: Figures(600, 0, latency(0.4, 600)), 2: Figures(80, 20, latency(0.4, 80))}  # requests
    report = monitor.close(10.0, now, stable=1, candidates=[2], thresholds=T)
    assert set(report.figures) == {1} and report.verdicts == {}
    later = {1: Figures(700, 0, latency(0.4, 700)), 2: Figures(160, 120, latency(0.4, 160))}
    report = monitor.close(20.0, later, stable=1, candidates=[2], thresholds=T)  # same source now
    assert report.figures[2].requests == 180 and list(report.verdicts) == [2]


def test_shadow_comparison_records_diff_and_argmax() -> None:
    figures = ShadowFigures()
    stable = {"y": np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)}
    shadow = {"y": np.array([[0.2, 0.7], [0.3, 0.6]], np.float32)}
    compare(stable, shadow, figures)
    assert figures.max_abs_diff == pytest.approx(0.5)
    assert (figures.argmax_rows, figures.argmax_agree) == (2, 1)
    compare(stable, {"y": np.zeros((3, 2), np.float32)}, figures)
    assert figures.max_abs_diff == math.inf


def test_every_admin_rpc_needs_the_admin_scope() -> None:
    from protos import admin_pb2 as apb
    from server.security.auth import check, required_scope
    from server.security.tokens import Scope, parse_tokens

    table = parse_tokens("inference infer-0123456789abcdef\nadmin admin-0123456789abcdef\n")
    service = apb.DESCRIPTOR.services_by_name["Admin"]
    assert {m.name for m in service.methods} == {"RolloutStatus", "SetWeights", "Promote", "Rollback"}
    for method in service.methods:
        name = f"/{service.full_name}/{method.name}"
        assert required_scope(name) == Scope.ADMIN
        refused = check(table, name, [("authorization", "Bearer infer-0123456789abcdef")])
        assert refused is not None and refused[0].name == "PERMISSION_DENIED"
        assert check(table, name, [("authorization", "Bearer admin-0123456789abcdef")]) is None


def test_fault_versions_limit_faults_to_those_versions() -> None:
    from server.backends.fault_backend import FaultSpec

    faulty = config(fault_raise_every="2", fault_versions="2,3")
    assert FaultSpec.from_config(faulty, "m", allowed=True, version=1) is None
    spec = FaultSpec.from_config(faulty, "m", allowed=True, version=3)
    assert spec is not None and spec.raise_every == 2
    assert FaultSpec.from_config(config(fault_raise_every="2"), "m", allowed=True, version=7) is not None
    with pytest.raises(ConfigError, match="'fault_versions'"):
        FaultSpec.from_config(
            config(fault_raise_every="2", fault_versions="two"), "m", allowed=True, version=1
        )


def test_the_rollout_rolls_a_failing_candidate_back_when_its_window_ends() -> None:
    from types import SimpleNamespace

    from protos import grpc_service_pb2 as pb
    from server.models.rollout import Rollout

    cfg = config(traffic_weights="1:50,2:50", rollback_window_s="10", rollback_min_requests="20")
    versions = {v: fake_version(cfg, v) for v in (1, 2)}
    entry = SimpleNamespace(name="m", versions=versions, order=[2, 1])
    now = [100.0]
    rollout = Rollout(clock=lambda: now[0], wall=lambda: 0.0)
    routed = {rollout.route(entry, pb.ModelInferRequest(id=f"r{i}")) for i in range(100)}
    assert routed == {1, 2}
    for _ in range(30):
        versions[1].stats.record_success(300_000)
        versions[2].stats.record_success(300_000)
        versions[2].stats.record_failure(300_000, "BACKEND")
    now[0] += 9.9
    rollout.route(entry, pb.ModelInferRequest(id="x"))
    assert rollout.state(entry).weights == {1: 50, 2: 50}  # the window has not ended
    now[0] += 0.1
    rollout.route(entry, pb.ModelInferRequest(id="x"))
    state = rollout.state(entry)
    assert state.weights == {1: 50, 2: 0} and state.events[0].trigger == "auto"
    assert {rollout.route(entry, pb.ModelInferRequest(id=f"r{i}")) for i in range(100)} == {1}
    assert list(rollout.rollback_counts()) == [({"model": "m", "version": "2", "trigger": "auto"}, 1)]


def _entry(**params: str) -> object:
    from types import SimpleNamespace

    cfg = config(**params)
    versions = {v: fake_version(cfg, v) for v in (1, 2, 3)}
    return SimpleNamespace(name="m", versions=versions, order=[3, 2, 1])


def test_without_a_policy_the_newest_version_cannot_be_rolled_back() -> None:
    """It was answered OK, counted and logged, and kept taking every request."""
    from server.errors import RolloutRefused
    from server.models.rollout import Rollout

    rollout, entry = Rollout(), _entry()
    with pytest.raises(RolloutRefused, match="only version"):
        rollout.roll_back(entry, 3, "")  # type: ignore[arg-type]
    rollout.roll_back(entry, 2, "")  # type: ignore[arg-type]  # takes nothing: a no-op
    rollout.roll_back(entry, None, "")  # type: ignore[arg-type]  # no candidates: a no-op
    state = rollout.state(entry)  # type: ignore[arg-type]
    assert not state.events and not state.rolled_back and list(rollout.rollback_counts()) == []


def test_a_rollback_of_a_version_already_out_of_traffic_counts_nothing() -> None:
    from server.models.rollout import Rollout

    rollout, entry = Rollout(), _entry(traffic_weights="1:0,2:80,3:20")
    rollout.roll_back(entry, 3, "bad")  # type: ignore[arg-type]
    rollout.roll_back(entry, 3, "again")  # type: ignore[arg-type]
    rollout.roll_back(entry, 1, "never served")  # type: ignore[arg-type]
    state = rollout.state(entry)  # type: ignore[arg-type]
    assert state.weights == {1: 0, 2: 80, 3: 0}
    assert [e.reason for e in state.events] == ["bad"]
    assert list(rollout.rollback_counts()) == [({"model": "m", "version": "3", "trigger": "manual"}, 1)]


def test_an_evicted_models_rollback_holds_on_its_next_load_and_an_unload_forgets_it() -> None:
    """A lazy model evicted by the budget and loaded again by a request came back at its config's
    weights: a rolled-back canary returned by itself. An unloaded model's shadow series stayed."""
    from types import SimpleNamespace

    from server.models.rollout import Rollout

    params = {"traffic_weights": "1:50,2:50", "shadow_version": "3", "shadow_fraction": "1"}
    rollout, entry = Rollout(), _entry(**params)
    rollout.roll_back(entry, 2, "bad canary")  # type: ignore[arg-type]
    rollout.roll_back(entry, 3, "bad shadow")  # type: ignore[arg-type]
    assert [name for name, _, _ in rollout.gauge_values()]  # the shadow's series
    rollout.hold("m")
    reloaded = SimpleNamespace(**vars(_entry(**params)))  # the same versions and policy, anew
    state = rollout.state(reloaded)  # type: ignore[arg-type]
    assert state.entry is reloaded and state.weights == {1: 50, 2: 0}
    assert state.shadow is not None and state.shadow.policy.fraction == 0
    assert state.rolled_back == {2, 3} and [e.reason for e in state.events] == ["bad canary", "bad shadow"]
    assert state.source == "rollback"

    changed = _entry(traffic_weights="1:10,2:90")  # a new policy: the config's applies
    rollout.hold("m")
    assert rollout.state(changed).weights == {1: 10, 2: 90}  # type: ignore[arg-type]

    rollout.forget("m")  # unloaded
    assert list(rollout.gauge_values()) == []
    assert rollout.state(_entry(**params)).weights == {1: 50, 2: 50}  # type: ignore[arg-type]


def fake_version(cfg: object, version: int) -> object:
    """A served version as Rollout reads it (its files: its number)."""
    from types import SimpleNamespace

    from batcher.stats import ModelStats

    return SimpleNamespace(config=cfg, stats=ModelStats(), name="m", version=version, fingerprint=(version,))
