"""Answers of many strings that the server has at once, through a real server with tritonclient:
a response-cache hit of 70,000 strings, and all the classes of a wide output. Both are now made and
encoded in a thread (tests/unit/test_classes_off_loop.py says where); here, that they still answer
exactly, and that the statistics count the hit once."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as triton

from server.protocol.answer_checks import ENCODE_OFF_LOOP_STRINGS
from tests.support.server_process import ServerProcess

STRINGS = ENCODE_OFF_LOOP_STRINGS + 4_464  # 70,000
WIDE = ENCODE_OFF_LOOP_STRINGS // 2 + 1  # two rows of all its classes: past the bound
_CONFIGS = {
    "strings": """
backend: "identity"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "y" data_type: TYPE_STRING dims: [ -1 ] } ]
response_cache { enable: true }
""",
    "wide": f"""
backend: "identity"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {WIDE} ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {WIDE} ] }} ]
""",
}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[triton.InferenceServerClient]:
    repo = tmp_path_factory.mktemp("many-strings")
    for name, config in _CONFIGS.items():
        (repo / name / "1").mkdir(parents=True)  # the identity backend needs no file
        (repo / name / "config.pbtxt").write_text(config)
    with (
        ServerProcess("--model-repository", str(repo)) as server,
        triton.InferenceServerClient(server.address) as opened,
    ):
        yield opened


def test_a_cache_hit_of_many_strings_answers_them_all_and_counts_once(
    client: triton.InferenceServerClient,
) -> None:
    words = np.array([f"w{i}".encode() for i in range(STRINGS)], dtype=object)
    x = triton.InferInput("x", [STRINGS], "BYTES")
    x.set_data_from_numpy(words)
    answers = [client.infer("strings", [x]).as_numpy("y") for _ in range(2)]  # a miss, then a hit
    for answer in answers:
        assert answer is not None and answer.tolist() == words.tolist()
    stats = client.get_inference_statistics("strings").model_stats[0].inference_stats
    assert (stats.success.count, stats.cache_miss.count, stats.cache_hit.count) == (2, 1, 1)


@pytest.mark.parametrize("k", [3, WIDE])
def test_every_class_of_a_wide_output_comes_back_in_order(
    client: triton.InferenceServerClient, k: int
) -> None:
    values = np.stack([np.arange(WIDE, dtype=np.float32), -np.arange(WIDE, dtype=np.float32)])
    x = triton.InferInput("x", [2, WIDE], "FP32")
    x.set_data_from_numpy(values)
    got = client.infer("wide", [x], outputs=[triton.InferRequestedOutput("y", class_count=k)]).as_numpy("y")
    assert got is not None and got.shape == (2, k)
    first = [f"{WIDE - 1 - i:.6f}:{WIDE - 1 - i}".encode() for i in range(k)]  # largest first
    second = [f"{-float(i):.6f}:{i}".encode() for i in range(k)]  # 0, -1, -2, ...
    assert got[0].tolist() == first and got[1].tolist() == second
