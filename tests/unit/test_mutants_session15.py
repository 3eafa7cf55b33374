"""The fifteenth session's pure modules: poll mode's load retries (server/models/load_retry.py), the
rollback verdict's windows (server/models/rollback.py), the traffic policy
(server/models/traffic.py), config bounds (server/models/config_bounds.py) and a stream's answer
order (server/protocol/stream_order.py): the cases mutation testing found untested
(tests/MUTANTS.md, "Run of 2026-12-01 (sixteenth session)")."""

from __future__ import annotations

import asyncio
import hashlib
import math
from types import SimpleNamespace
from typing import cast

import pytest
from google.protobuf import text_format

from batcher.stats import LATENCY_BOUNDS_NS
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server.models.config_bounds import check_bounds
from server.models.config_errors import ConfigError
from server.models.load_retry import LoadRetries, os_failure
from server.models.rollback import Figures, RollbackMonitor, decide, quantile_s
from server.models.traffic import (
    MAX_WEIGHT,
    RollbackThresholds,
    ShadowPolicy,
    Slices,
    format_weights,
    has_policy,
    parse_policy,
    parse_weights,
    point_of,
)
from server.models.versions import ModelVersion
from server.protocol.stream_order import StreamOrder
from tests.unit.test_rollout_policy import T, config, latency

# -- load_retry ---------------------------------------------------------------------------------


def _chain(depth: int, last: BaseException) -> BaseException:
    """`depth` ValueErrors, each raised while handling the next, the innermost being `last`."""
    error = last
    for i in range(depth):
        try:
            raise error
        except BaseException:  # wrapping whatever the chain holds
            try:
                raise ValueError(f"wrapper {i}") from None
            except ValueError as wrapper:
                error = wrapper
    return error


def test_an_os_error_deeper_than_the_chain_depth_is_not_followed() -> None:
    assert os_failure(_chain(7, OSError("disk"))) is True  # 8th in the chain: still seen
    assert os_failure(_chain(8, OSError("disk"))) is False  # 9th: past the depth followed
    assert os_failure(_chain(12, ValueError("bad model"))) is False  # a long chain of the files' errors


def test_the_backoff_exponent_stops_at_32_doublings() -> None:
    retries = LoadRetries(first_s=1.0, max_s=float("inf"))
    delays = [retries.failed("m", now=0.0).delay_s for _ in range(40)]
    assert delays[32] == 2.0**32 and delays[-1] == 2.0**32


def test_forget_drops_a_pending_retry_and_takes_models_that_never_failed() -> None:
    retries = LoadRetries(first_s=1.0)
    retries.failed("m", now=0.0)
    retries.forget("m")  # it loaded after all, or left the repository
    assert retries.due(100.0) == set() and retries.failures("m") == 0
    retries.forget("never-failed")  # no KeyError
    assert retries.due(100.0) == set()


# -- rollback -----------------------------------------------------------------------------------


def test_a_window_subtracts_every_cumulative_figure() -> None:
    later = Figures(ok=10, errors=4, latency=(3, 2, 1), missed=5, refused=(2, 2))
    earlier = Figures(ok=4, errors=1, latency=(1, 1, 0), missed=2, refused=(1, 0))
    assert later.minus(earlier) == Figures(6, 3, (2, 1, 1), 3, "requests", (1, 2))
    # A version read before any histogram existed: its later counts are the window's own.
    assert later.minus(Figures()) == Figures(10, 4, (3, 2, 1), 5, "requests", (2, 2))


def test_readings_of_different_bucket_layouts_are_refused_not_truncated() -> None:
    with pytest.raises(ValueError):
        Figures(latency=(1, 2, 3)).minus(Figures(latency=(1, 2)))


def test_a_candidate_without_any_latency_reads_inf_not_inf_ms() -> None:
    stable = Figures(ok=200, errors=0, latency=latency(0.4, 200))
    verdict = decide(stable, Figures(missed=150), T)
    assert verdict is not None and verdict.startswith("p99 latency <= inf vs the stable version's <= 0.5 ms")


def test_a_window_report_says_how_long_the_window_was() -> None:
    start = {1: Figures(5, 0, latency(0.4, 5))}
    monitor = RollbackMonitor(10, 1000.0, start)
    assert monitor.close(1012.5, start, stable=1, candidates=[], thresholds=T).seconds == 12.5
    assert monitor.close(1020.0, start, stable=1, candidates=[], thresholds=T).seconds == 7.5


def _one_bucket(index: int, count: int) -> tuple[int, ...]:
    """Latency counts with `count` in bucket `index` of LATENCY_BOUNDS_NS (and the one above all)."""
    counts = [0] * (len(LATENCY_BOUNDS_NS) + 1)
    counts[index] = count
    return tuple(counts)


MS = {bound / 1e6: i for i, bound in enumerate(LATENCY_BOUNDS_NS)}  # bucket index by its bound in ms


def test_refusals_are_charged_from_the_bucket_whose_times_all_exceed_the_stable_p99() -> None:
    refused = tuple(range(1, len(LATENCY_BOUNDS_NS) + 2))  # bucket i holds i + 1 refusals
    mine = Figures(7, 2, _one_bucket(MS[1.0], 7), missed=3, source="shadow", refused=refused)
    # Stable p99 <= 1 ms: buckets above 1 ms (from the one ending at 2 ms) are charged, 1 ms's own not.
    extra = sum(refused[MS[1.0] + 1 :])
    assert mine.charged(LATENCY_BOUNDS_NS[MS[1.0]] / 1e9) == Figures(
        7, 2, mine.latency, 3 + extra, "shadow", refused
    )
    # The lowest p99 there is: every bucket but the first (times up to 50 us) is charged.
    assert mine.charged(LATENCY_BOUNDS_NS[0] / 1e9).missed == 3 + sum(refused[1:])
    assert mine.charged(None) is mine and mine.charged(math.inf) is mine  # no p99: nothing charged


def test_a_quantile_is_the_upper_bound_of_the_bucket_where_its_rank_is_reached() -> None:
    counts = _one_bucket(MS[1.0], 1)
    counts = tuple(c + (1 if i == MS[2.0] else 0) for i, c in enumerate(counts))  # 1 ms and 2 ms
    assert quantile_s(counts, 0.5) == 0.001  # rank 1: the first bucket holding one
    assert quantile_s(counts, 1.0) == 0.002  # rank 2, reached exactly in the 2 ms bucket
    assert Figures().quantile_s(0.5) is None  # no latency, no misses: nothing to say
    above_all = Figures(ok=10, latency=_one_bucket(len(LATENCY_BOUNDS_NS), 10))
    assert above_all.quantile_s(0.5) == math.inf  # successes above every bound stay there


def test_exactly_min_requests_on_each_side_is_judged() -> None:
    stable = Figures(50, 0, _one_bucket(MS[1.0], 50))
    assert decide(stable, Figures(40, 10, _one_bucket(MS[1.0], 40)), T) is not None


def test_an_error_rate_exactly_at_the_margin_is_not_rolled_back() -> None:
    stable = Figures(100, 0, _one_bucket(MS[1.0], 100))
    assert decide(stable, Figures(95, 5, _one_bucket(MS[1.0], 95)), T) is None  # 5% = 0 + 0.05
    assert decide(stable, Figures(94, 6, _one_bucket(MS[1.0], 94)), T) is not None


def _p99_verdict(stable_ms: float, candidate_ms: float, floor_s: float) -> str | None:
    t = RollbackThresholds(window_s=10, min_requests=50, latency_margin=1.0, latency_floor_s=floor_s)
    stable = Figures(100, 0, _one_bucket(MS[stable_ms], 100))
    return decide(stable, Figures(100, 0, _one_bucket(MS[candidate_ms], 100)), t)


def test_a_p99_is_judged_against_both_the_relative_margin_and_the_floor() -> None:
    assert _p99_verdict(1.0, 2.0, 0.0) is None  # exactly twice as slow: not more than the margin
    assert _p99_verdict(2.0, 3.0, 0.0) is None  # slower, within the margin
    assert _p99_verdict(2.0, 5.0, 0.0) is not None  # 2.5 times: past the margin
    assert _p99_verdict(2.0, 5.0, 0.005) is None  # 3 ms slower: under the 5 ms floor
    assert _p99_verdict(2.0, 5.0, 0.005 - 0.002) is None  # exactly the floor: not more
    assert _p99_verdict(2.0, 10.0, 0.005) == (
        "p99 latency <= 10 ms vs the stable version's <= 2 ms "
        "(rollback_latency_margin 1, rollback_latency_floor_ms 5)"
    )


# -- traffic: weights ---------------------------------------------------------------------------


def test_has_policy_looks_for_traffic_parameters_only() -> None:
    assert has_policy(config(run_timeout_s="3", traffic_sticky_key="user_id")) is True
    assert has_policy(config(run_timeout_s="3")) is False
    assert has_policy(config()) is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1:x", "must be VERSION:WEIGHT pairs such as '1:90,2:10', got '1:x'"),
        ("1:", "must be VERSION:WEIGHT pairs such as '1:90,2:10', got '1:'"),
        ("1:5, 1:6", "names version 1 twice"),
        ("1:0,2:0", "gives every version weight 0: at least one needs a positive weight"),
        ("1:1000001", "gives version 1 weight 1000001, above 1000000"),
    ],
)
def test_weights_refusals_say_exactly_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_weights(text)
    assert str(refused.value) == message


def test_the_largest_weight_is_accepted_and_weights_format_in_version_order() -> None:
    assert parse_weights("1:1000000") == {1: MAX_WEIGHT}
    assert format_weights({2: 10, 1: 90}) == "1:90,2:10"


def test_weights_naming_unserved_versions_say_what_is_served() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_policy(config(traffic_weights="1:50,4:50"), "m", [1, 2])
    assert str(refused.value) == (
        "m: parameters 'traffic_weights' names versions [4] that are not served (served: [1, 2]; "
        "the version_policy must serve every version the traffic policy routes to)"
    )


# -- traffic: shadow and numeric parameters -----------------------------------------------------


def _shadow(**params: str) -> ShadowPolicy:
    policy = parse_policy(config(traffic_weights="1:100", shadow_version="2", **params), "m", [1, 2])
    assert policy is not None and policy.shadow is not None
    return policy.shadow


def _refusal(**params: str) -> str:
    with pytest.raises(ConfigError) as refused:
        parse_policy(config(**params), "m", [1, 2])
    return str(refused.value)


def test_shadow_defaults() -> None:
    assert _shadow() == ShadowPolicy(version=2, fraction=0.0, timeout_s=0.1, max_queue=0, max_in_flight=16)


def test_every_shadow_parameter_is_read() -> None:
    shadow = _shadow(
        shadow_fraction="0", shadow_timeout_ms="0.5", shadow_max_queue="3", shadow_max_in_flight="1"
    )
    assert shadow == ShadowPolicy(version=2, fraction=0.0, timeout_s=0.0005, max_queue=3, max_in_flight=1)
    assert _shadow(shadow_max_queue="0", shadow_max_in_flight="4").max_queue == 0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"traffic_weights": "1:100", "shadow_version": "two"},
            "m: parameters 'shadow_version' must be a version number, got 'two'",
        ),
        (
            {"traffic_weights": "1:100", "shadow_version": "2", "shadow_fraction": "-0.1"},
            "m: parameters 'shadow_fraction' must be a number >= 0, got '-0.1'",
        ),
        (
            {"traffic_weights": "1:100", "shadow_version": "2", "shadow_timeout_ms": "0"},
            "m: parameters 'shadow_timeout_ms' must be a number > 0, got '0'",
        ),
        (
            {"traffic_weights": "1:100", "shadow_version": "2", "shadow_max_queue": "-1"},
            "m: parameters 'shadow_max_queue' must be a whole number >= 0, got '-1'",
        ),
        (
            {"traffic_weights": "1:100", "shadow_version": "2", "shadow_max_queue": "2.5"},
            "m: parameters 'shadow_max_queue' must be a whole number >= 0, got '2.5'",
        ),
        (
            {"traffic_weights": "1:100", "shadow_version": "2", "shadow_max_in_flight": "0"},
            "m: parameters 'shadow_max_in_flight' must be a whole number >= 1, got '0'",
        ),
        (
            {"traffic_weights": "1:100", "shadow_version": "2", "shadow_max_in_flight": "1.5"},
            "m: parameters 'shadow_max_in_flight' must be a whole number >= 1, got '1.5'",
        ),
        ({"rollback_window_s": "0"}, "m: parameters 'rollback_window_s' must be a number > 0, got '0'"),
        ({"rollback_window_s": "soon"}, "m: parameters 'rollback_window_s' must be a number > 0, got 'soon'"),
        (
            {"rollback_min_requests": "2.5"},
            "m: parameters 'rollback_min_requests' must be a whole number >= 1, got '2.5'",
        ),
    ],
)
def test_numeric_refusals_name_the_parameter_kind_and_bound(params: dict[str, str], message: str) -> None:
    assert _refusal(**params) == message


# -- traffic: routing ---------------------------------------------------------------------------


def test_a_keys_point_is_its_unsalted_blake2b_hash() -> None:
    digest = hashlib.blake2b(b"user-42", digest_size=8).digest()
    assert point_of("user-42") == int.from_bytes(digest, "big") / 2.0**64


def test_a_key_with_a_lone_surrogate_still_has_a_point() -> None:
    """A key Python holds but UTF-8 cannot encode strictly (a lone surrogate) is routed, not failed."""
    point = point_of("user-\ud800")
    assert 0 <= point < 1 and point == point_of("user-\ud800")
    assert Slices.of({1: 1, 2: 1}).pick_key("user-\ud800") in (1, 2)


def test_one_is_accepted_where_at_least_one_is_needed() -> None:
    """`shadow_max_in_flight: "1"` and `rollback_min_requests: "1"` were refused as "must be a whole
    number > 1": their bound of 1 excluded 1 itself."""
    assert _shadow(shadow_max_in_flight="1").max_in_flight == 1
    policy = parse_policy(config(rollback_min_requests="1"), "m", [1, 2])
    assert policy is not None and policy.rollback is not None and policy.rollback.min_requests == 1
    assert _refusal(rollback_min_requests="0") == (
        "m: parameters 'rollback_min_requests' must be a whole number >= 1, got '0'"
    )


# -- stream_order -------------------------------------------------------------------------------


def _served(name: str, version: int, preserve_ordering: bool = False) -> ModelVersion:
    served = SimpleNamespace(name=name, version=version, preserve_ordering=preserve_ordering)
    return cast(ModelVersion, served)


def _frame(name: str, version: str = "") -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name=name, model_version=version)


def test_only_ordered_requests_and_ordering_models_take_a_place() -> None:
    order = StreamOrder()
    assert order.place(_frame("x"), None, ordered=False) == (None, None)  # an unknown model keeps no order
    assert order.place(_frame("m"), _served("m", 1), ordered=False) == (None, None)
    after, done = order.place(_frame("m"), _served("m", 1), ordered=True)
    assert after is None and isinstance(done, asyncio.Event) and not done.is_set()
    after, done = order.place(_frame("p"), _served("p", 1, preserve_ordering=True), ordered=False)
    assert after is None and done is not None


def test_each_answer_waits_for_the_one_before_it_of_the_same_version_only() -> None:
    order = StreamOrder()
    _, first = order.place(_frame("p"), _served("p", 1, True), ordered=False)
    after_first, second = order.place(_frame("p"), _served("p", 1, True), ordered=False)
    assert after_first is first and second is not first
    assert order.place(_frame("p"), _served("p", 2, True), ordered=False)[0] is None  # another version
    assert order.place(_frame("n"), _served("n", 1, True), ordered=False)[0] is None  # another model
    assert order.place(_frame("p"), _served("p", 1, True), ordered=False)[0] is second
    assert order.place(_frame("p"), _served("p", 1), ordered=False) == (None, None)  # unordered


def test_latest_frame_wins_frames_chain_by_model_and_version_as_requested() -> None:
    order = StreamOrder()
    _, first = order.place(_frame("m"), None, ordered=True)  # waiting for its lazy model's load
    assert order.place(_frame("m"), _served("m", 1), ordered=True)[0] is first  # read once loaded
    assert order.place(_frame("m", "1"), _served("m", 1), ordered=True)[0] is None  # another chain
    assert order.place(_frame("n"), None, ordered=True)[0] is None  # another model


# -- traffic: policy defaults and slices --------------------------------------------------------


def test_without_weights_the_newest_served_version_takes_all_and_none_served_routes_nowhere() -> None:
    policy = parse_policy(config(rollback_window_s="5"), "m", [1, 2])
    assert policy is not None and dict(policy.weights) == {2: 1}
    empty = parse_policy(config(rollback_window_s="5"), "m", [])  # before any version loaded
    assert empty is not None and dict(empty.weights) == {}


def test_slices_end_where_each_versions_running_share_ends() -> None:
    slices = Slices.of({3: 2, 1: 1, 2: 1, 4: 0})
    assert (slices.bounds, slices.versions, slices.weights) == ((0.25, 0.5, math.inf), (1, 2, 3), (1, 1, 2))
    single = Slices.of({1: 1})
    assert (single.bounds, single.versions) == ((math.inf,), (1,))
    with pytest.raises(ValueError) as refused:
        Slices.of({1: 0, 2: 0})
    assert str(refused.value) == "no version has a positive weight"


def _rendezvous(weights: dict[int, int], key: str) -> int:
    """pick_key's documented rule, written out: per version, u from blake2b of b"v<version>:" and
    the key; the lowest -ln(u)/weight wins."""
    scores = {}
    for version, weight in weights.items():
        digest = hashlib.blake2b(b"v%d:" % version + key.encode(), digest_size=8).digest()
        scores[version] = -math.log((int.from_bytes(digest, "big") + 0.5) / 2.0**64) / weight
    return min(scores, key=lambda v: scores[v])


def test_a_sticky_key_lands_where_the_rendezvous_rule_says_in_every_release() -> None:
    """Routing keys must land on the same version across restarts and releases (sticky users)."""
    weights = {1: 70, 2: 10, 3: 20}
    slices = Slices.of(weights)
    keys = [f"user-{i}" for i in range(200)]
    assert [slices.pick_key(k) for k in keys] == [_rendezvous(weights, k) for k in keys]


def test_rollback_parameters_are_read_down_to_their_bounds() -> None:
    policy = parse_policy(
        config(
            rollback_window_s="0.5",
            rollback_error_margin="0",
            rollback_latency_margin="0",
            rollback_latency_floor_ms="0",
        ),
        "m",
        [1],
    )
    assert policy is not None and policy.rollback == RollbackThresholds(0.5, 100, 0.0, 0.0, 0.0)
    policy = parse_policy(
        config(rollback_error_margin="0.5", rollback_latency_margin="0.5", rollback_latency_floor_ms="2"),
        "m",
        [1],
    )
    assert policy is not None and policy.rollback == RollbackThresholds(30.0, 100, 0.5, 0.5, 0.002)
    assert _refusal(rollback_latency_margin="-1") == (
        "m: parameters 'rollback_latency_margin' must be a number >= 0, got '-1'"
    )
    assert _refusal(rollback_latency_floor_ms="-1") == (
        "m: parameters 'rollback_latency_floor_ms' must be a number >= 0, got '-1'"
    )


def test_weights_alone_set_no_sticky_key_and_no_rollback() -> None:
    policy = parse_policy(config(traffic_weights="1:90,2:10"), "m", [1, 2])
    assert policy is not None and (policy.sticky_key, policy.shadow, policy.rollback) == ("", None, None)


def test_shadowing_the_stable_version_is_refused_in_one_sentence() -> None:
    assert _refusal(traffic_weights="1:100", shadow_version="1") == (
        "m: parameters 'shadow_version' names version 1, the stable version (the most weight in "
        "'traffic_weights', or the newest without it): a version is never shadowed by its own requests; "
        "name a candidate version"
    )


# -- config_bounds ------------------------------------------------------------------------------


def _bounds_config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def _bounds_refusal(text: str) -> str:
    with pytest.raises(ConfigError) as refused:
        check_bounds(_bounds_config(text), "m/config.pbtxt")
    return str(refused.value)


def test_a_batch_of_one_still_has_a_batch_dimension() -> None:
    dims = ", ".join(["1"] * 32)
    assert _bounds_refusal(f'max_batch_size: 1 input {{ name: "x" dims: [{dims}] }}') == (
        f"m/config.pbtxt: input 'x': dims [{dims}] has 32 dimensions; "
        "at most 31 (one more is the batch dimension)"
    )
    many = ", ".join(["1"] * 33)
    assert _bounds_refusal(f'max_batch_size: 0 input {{ name: "x" dims: [{many}] }}') == (
        f"m/config.pbtxt: input 'x': dims [{many}] has 33 dimensions; at most 32"
    )


def test_outputs_and_reshapes_are_bounded_and_named_too() -> None:
    big = 2**41
    assert _bounds_refusal(f'max_batch_size: 4 output {{ name: "y" dims: [{big}] }}').startswith(
        f"m/config.pbtxt: output 'y': dims [{big}]: its fixed dimensions multiply past"
    )
    dims = ", ".join(["1"] * 32)
    reshaped = f'max_batch_size: 4 input {{ name: "x" dims: [4] reshape {{ shape: [{dims}] }} }}'
    assert "input 'x': reshape.shape" in _bounds_refusal(reshaped)
    assert "has 32 dimensions; at most 31" in _bounds_refusal(reshaped)


def test_a_zero_dimension_does_not_hide_the_others_product() -> None:
    assert "multiply past" in _bounds_refusal(f'max_batch_size: 0 input {{ name: "x" dims: [0, {2**41}] }}')


def test_a_queue_delay_refusal_names_its_source_and_field() -> None:
    late = 3_600_000_001
    assert _bounds_refusal(f"dynamic_batching {{ max_queue_delay_microseconds: {late} }}") == (
        f"m/config.pbtxt: dynamic_batching.max_queue_delay_microseconds {late} exceeds 3600000000 "
        "(one hour): a request without batch mates would wait that long"
    )
    direct = f"sequence_batching {{ direct {{ max_queue_delay_microseconds: {late} }} }}"
    assert "m/config.pbtxt: sequence_batching.direct.max_queue_delay_microseconds" in _bounds_refusal(direct)
