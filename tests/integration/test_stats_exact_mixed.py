"""ModelStatistics and /metrics after known traffic, every figure exact, as a Triton user reads them
with tritonclient: successes of client batch sizes 1-3, requests refused for their inputs, one
refused for its deadline, one cancelled during its run, response-cache hits and misses; a version
that took nothing; the all-versions listing; unknown names. Triton's reference: a success counts
in `success`, `queue`, the compute times and `inference_count` (its rows); a run that completed
counts in `execution_count` and `batch_stats`, whatever became of its requests; a cancel counts
in /metrics' `CANCELED` reason and not in `fail`; a cache hit counts in `success`, `queue` and
`cache_hit` only. /metrics shows the same counts, and its durations are the same ns in µs.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.support.metrics_page import metrics_lines
from tests.support.server_process import ServerProcess

RUN_MS = 300  # each run of `counted` sleeps this long: a cancel or a short deadline lands inside it
_IDENTITY = """
name: "{name}"
backend: "identity"
max_batch_size: 8
version_policy {{ all {{ }} }}
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
dynamic_batching {{ }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
parameters {{ key: "execute_delay_ms" value: {{ string_value: "{delay}" }} }}
{extra}"""


# Its answers hold more strings than the server encodes on the event loop (ENCODE_OFF_LOOP_STRINGS).
_STRINGS = """
backend: "identity"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "y" data_type: TYPE_STRING dims: [ -1 ] } ]
"""
MANY_STRINGS = 262_144  # the most a request may hold: its answer takes a while to encode


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("stats-exact")
    for name, delay, extra, versions in (
        ("counted", RUN_MS, "", (1, 2)),
        ("cached", 1, "response_cache { enable: true }", (1,)),
    ):
        for version in versions:
            (repo / name / str(version)).mkdir(parents=True)  # the identity backend needs no file
        (repo / name / "config.pbtxt").write_text(_IDENTITY.format(name=name, delay=delay, extra=extra))
    (repo / "strings" / "1").mkdir(parents=True)
    (repo / "strings" / "config.pbtxt").write_text(_STRINGS)
    with ServerProcess("--model-repository", str(repo)) as running:
        yield running


@pytest.fixture
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.address) as opened:
        yield opened


def _x(rows: int, value: float = 1.0, width: int = 4) -> list[triton.InferInput]:
    tensor = triton.InferInput("x", [rows, width], "FP32")
    tensor.set_data_from_numpy(np.full((rows, width), value, np.float32))
    return [tensor]


def _status(call: Callable[[], object]) -> str:
    try:
        call()
    except InferenceServerException as exc:
        return str(exc.status())
    return "OK"


def _until(condition: Callable[[], bool], what: str, within_s: float = 60.0) -> None:
    """Wait for `condition`, re-read at most every 20 ms, failing after `within_s` seconds."""
    end = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < end, f"not within {within_s} s: {what}"
        time.sleep(0.02)


def _metrics(server: ServerProcess, model: str, version: str) -> dict[str, float]:
    """`model` `version`'s nv_* samples, keyed by name (and `reason` for the failures)."""
    figures: dict[str, float] = {}
    for line in metrics_lines(server):
        if not line.startswith("nv_") or f'model="{model}"' not in line or f'version="{version}"' not in line:
            continue
        name, value = line.split("{", 1)[0], float(line.rsplit(" ", 1)[1])
        if name == "nv_inference_request_failure":
            name += "." + line.split('reason="', 1)[1].split('"', 1)[0]
        figures[name] = value
    return figures


def _in_flight(server: ServerProcess, model: str) -> float:
    prefix = f'sluiceway_batches_in_flight{{model="{model}",version="1"}}'
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_lines(server) if line.startswith(prefix))


def _counts(stats: dict) -> dict[str, int]:  # type: ignore[type-arg]
    return {k: int(v.get("count", 0)) for k, v in stats["inference_stats"].items()}


def _batch_stats(stats: dict) -> dict[int, int]:  # type: ignore[type-arg]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def _one(client: triton.InferenceServerClient, model: str, version: str) -> dict:  # type: ignore[type-arg]
    (stats,) = client.get_inference_statistics(model, version, as_json=True)["model_stats"]
    return stats  # type: ignore[no-any-return]


def test_every_figure_is_exact_after_known_traffic(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    started_ms = time.time_ns() // 1_000_000
    answers: queue.Queue[str] = queue.Queue()

    def answered(result: object, error: InferenceServerException | None) -> None:
        answers.put("OK" if error is None else str(error.status()))

    outcomes = [
        _status(lambda r=rows: client.infer("counted", _x(r), model_version="1")) for rows in (1, 2, 3)
    ]
    outcomes.append(_status(lambda: client.infer("counted", _x(1, width=5), model_version="1")))  # shape
    outcomes.append(_status(lambda: client.infer("counted", _x(9), model_version="1")))  # rows > 8
    # A request whose 50 ms `timeout` cannot be met behind a running 300 ms run: refused or expired.
    client.async_infer("counted", _x(1), answered, model_version="1")
    _until(lambda: _in_flight(server, "counted") == 1, "the first run started")
    outcomes.append(_status(lambda: client.infer("counted", _x(1), model_version="1", timeout=50_000)))
    outcomes.append(answers.get(timeout=60))
    # One cancelled by its caller while its run computes it: the run completes all the same.
    call = client.async_infer("counted", _x(1), answered, model_version="1")
    _until(lambda: _in_flight(server, "counted") == 1, "the cancelled request's run started")
    call.cancel()
    outcomes.append(answers.get(timeout=60))
    _until(lambda: int(_one(client, "counted", "1").get("execution_count", 0)) == 5, "the fifth run ended")

    ok, invalid, cancelled = "OK", "StatusCode.INVALID_ARGUMENT", "StatusCode.CANCELLED"
    assert outcomes[:5] == [ok, ok, ok, invalid, invalid]
    assert outcomes[5] in ("StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED"), outcomes
    assert outcomes[6:] == [ok, cancelled]
    stats = _one(client, "counted", "1")
    expected = {
        "success": 4,
        "fail": 3,
        "queue": 4,
        "compute_input": 4,
        "compute_infer": 4,
        "compute_output": 4,
    }
    assert _counts(stats) == {**expected, "cache_hit": 0, "cache_miss": 0}
    assert (int(stats["inference_count"]), int(stats["execution_count"])) == (1 + 2 + 3 + 1, 5)
    assert _batch_stats(stats) == {1: 3, 2: 1, 3: 1}  # the cancelled request's run is a run
    figures = stats["inference_stats"]
    ns = {k: int(v.get("ns", 0)) for k, v in figures.items()}
    assert ns["compute_infer"] >= 4 * RUN_MS * 1_000_000  # each success charged its run's sleep
    assert ns["success"] >= ns["compute_infer"] and ns["compute_input"] > 0 and ns["compute_output"] > 0
    assert started_ms <= int(stats["last_inference"]) <= time.time_ns() // 1_000_000

    page = _metrics(server, "counted", "1")
    assert page["nv_inference_request_success"] == 4
    failures = {
        k.split(".", 1)[1]: v for k, v in page.items() if k.startswith("nv_inference_request_failure.")
    }
    assert failures == {"REJECTED": 1, "CANCELED": 1, "BACKEND": 0, "OTHER": 2}
    assert sum(v for k, v in failures.items() if k != "CANCELED") == _counts(stats)["fail"]
    assert (page["nv_inference_count"], page["nv_inference_exec_count"]) == (7, 5)
    fields = {"request": "success", "queue": "queue", "compute_input": "compute_input"}
    fields.update({"compute_infer": "compute_infer", "compute_output": "compute_output"})
    for name, field in fields.items():
        assert page[f"nv_inference_{name}_duration_us"] == ns[field] // 1000  # whole us, as Triton's

    # Version 2 took nothing; the unnamed version lists both; unknown names are refused.
    idle = _one(client, "counted", "2")
    assert set(_counts(idle).values()) == {0} and _batch_stats(idle) == {}
    assert (int(idle.get("inference_count", 0)), int(idle.get("last_inference", 0))) == (0, 0)
    listed = client.get_inference_statistics("counted", as_json=True)["model_stats"]
    assert sorted((m["name"], m["version"]) for m in listed) == [("counted", "1"), ("counted", "2")]
    assert set(_metrics(server, "counted", "2").values()) == {0}
    for model, version in (("counted", "3"), ("nope", ""), ("nope", "1")):
        assert _status(lambda m=model, v=version: client.get_inference_statistics(m, v)) == invalid


def test_cache_hits_count_as_successes_and_nothing_else(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    for value in (1.0, 2.0, 1.0, 1.0, 2.0):  # two misses, then three hits
        client.infer("cached", _x(2, value))
    assert _status(lambda: client.infer("cached", _x(1, width=3))) == "StatusCode.INVALID_ARGUMENT"
    stats = _one(client, "cached", "1")
    assert _counts(stats) == {"success": 5, "fail": 1, "queue": 5, "compute_input": 2, "compute_infer": 2,
                              "compute_output": 2, "cache_hit": 3, "cache_miss": 2}  # fmt: skip
    assert (int(stats["inference_count"]), int(stats["execution_count"])) == (4, 2)
    assert _batch_stats(stats) == {2: 2}
    ns = {k: int(v.get("ns", 0)) for k, v in stats["inference_stats"].items()}
    assert ns["cache_hit"] > 0 and ns["cache_miss"] > 0
    page = _metrics(server, "cached", "1")
    assert (page["nv_inference_request_success"], page["nv_inference_request_failure.OTHER"]) == (5, 1)
    assert (page["nv_inference_count"], page["nv_inference_exec_count"]) == (4, 2)
    assert (page["nv_cache_num_hits_per_model"], page["nv_cache_num_misses_per_model"]) == (3, 2)
    assert page["nv_cache_hit_duration_per_model"] == ns["cache_hit"] // 1000
    assert page["nv_cache_miss_duration_per_model"] == ns["cache_miss"] // 1000


def test_a_request_computed_then_cancelled_while_its_answer_is_encoded_is_a_success(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    """Its run answered it (queue, compute, inference_count): a success, as one whose caller went
    once it was computed (README, Statistics). Cancelled while its many strings were encoded off
    the event loop, it had counted CANCELED: 6 of 6 such cancels left queue 7 beside success 1."""
    strings = triton.InferInput("x", [MANY_STRINGS], "BYTES")
    strings.set_data_from_numpy(np.array([b"ab"] * MANY_STRINGS, dtype=object))
    answers: queue.Queue[str] = queue.Queue()
    cancelled = 0
    for _ in range(10):  # a cancel that lands after the answer was sent tests nothing: again
        runs = int(_one(client, "strings", "1").get("execution_count", 0))
        call = client.async_infer(
            "strings",
            [strings],
            lambda result, error: answers.put("OK" if error is None else str(error.status())),
        )
        _until(
            lambda r=runs: int(_one(client, "strings", "1").get("execution_count", 0)) > r, "its run ended"
        )
        call.cancel()
        cancelled += answers.get(timeout=60) == "StatusCode.CANCELLED"
        if cancelled == 2:
            break
    assert cancelled == 2
    stats = _one(client, "strings", "1")
    counts = _counts(stats)
    runs = int(stats["execution_count"])
    assert counts["success"] == counts["queue"] == counts["compute_infer"] == runs, (counts, runs)
    assert (
        counts["fail"] == 0 and _metrics(server, "strings", "1")["nv_inference_request_failure.CANCELED"] == 0
    )
