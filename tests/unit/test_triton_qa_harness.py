"""The Triton QA harness (loadtest/triton_qa/) on a stand-in QA tree: which tests run, which are
reported excluded, how outcomes and the per-suite table are made. The real suites need Triton's
sources (scripts/triton_qa.sh, CONFORMANCE.md); this checks the harness's own logic in CI."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.triton_qa import harness
from loadtest.triton_qa.harness import Outcome
from loadtest.triton_qa.qa import summary
from loadtest.triton_qa.suite_types import Run, Step, Suite
from loadtest.triton_qa.suites import SUITES

FAKE_TEST = """
import unittest

import infer_util as iu
import test_util as tu
import tritonclient.grpc as grpcclient


class FakeTest(unittest.TestCase):
    def test_pass(self):
        self.assertEqual(iu.infer(), "grpc only")

    def test_fail(self):
        self.assertTrue(False, "the reason")

    def test_redirected(self):
        client = grpcclient.InferenceServerClient("localhost:8001")
        self.assertTrue(client._channel._channel.target().endswith(b"127.0.0.1:65000"))

    def test_gates(self):
        self.assertFalse(tu.validate_for_libtorch_model())
        self.assertTrue(tu.validate_for_onnx_model())

    def test_left_out(self):
        raise RuntimeError("must not run")
"""
FAKE_INFER_UTIL = """
def infer(use_http=True):
    return "http too" if use_http else "grpc only"
"""
FAKE_TEST_UTIL = """
def validate_for_libtorch_model(*args):
    return True


def validate_for_onnx_model(*args):
    return True
"""


def _fake_qa(root: Path) -> Path:
    (root / "common").mkdir(parents=True)
    (root / "L0_fake").mkdir()
    (root / "L0_fake" / "fake_test.py").write_text(FAKE_TEST)
    (root / "common" / "infer_util.py").write_text(FAKE_INFER_UTIL)
    (root / "common" / "test_util.py").write_text(FAKE_TEST_UTIL)
    return root


def test_client_runs_the_selected_tests_grpc_only_and_reports_exclusions(tmp_path: Path) -> None:
    qa = _fake_qa(tmp_path / "qa")
    excluded = tmp_path / "excluded.json"
    excluded.write_text(json.dumps({"FakeTest.test_left_out": "a Triton-only hook"}))
    got = harness.run_client(
        qa / "L0_fake",
        "fake_test",
        ["FakeTest"],
        excluded,
        65000,  # nothing listens: the redirect is checked on the channel's target only
        {},
        tmp_path / "result.json",
        tmp_path / "client.log",
        120,
    )
    assert isinstance(got, list), got
    status = {str(o["test"]): (o["status"], o["message"]) for o in got}
    assert status == {
        "FakeTest.test_fail": ("fail", "the reason"),
        "FakeTest.test_gates": ("pass", ""),
        "FakeTest.test_left_out": ("excluded", "a Triton-only hook"),
        "FakeTest.test_pass": ("pass", ""),
        "FakeTest.test_redirected": ("pass", ""),
    }


def test_summary_counts_every_test_and_leaves_excluded_ones_out_of_the_share() -> None:
    suite = Suite("L0_fake", "fake_test", [], {}, [Run("cpu", "models", [Step(["FakeTest"])])], {})
    outcomes = [
        Outcome("L0_fake", "cpu", f"FakeTest.t{i}", status, 0.0, "")
        for i, status in enumerate(["pass", "pass", "pass", "fail", "excluded", "error"])
    ]
    table = summary(outcomes, [suite])
    assert "| L0_fake | 6 | 1 | 5 | 3 | 1 | 1 | 0 | 0 | 0 | 60 |" in table
    assert "| **all** | 6 | 1 | 5 | 3 | 1 | 1 | 0 | 0 | 0 | **60.0** |" in table


def test_every_exclusion_has_a_reason_and_names_a_test_of_a_run() -> None:
    for suite in SUITES.values():
        for test, reason in suite.excluded.items():
            assert len(reason) > 20, (suite.name, test)
            cls = test.split(".", 1)[0]
            specs = [spec for run in suite.runs for step in run.steps for spec in step.specs]
            assert any(spec in (cls, test) for spec in specs), (suite.name, test)


def test_the_generators_opset_is_one_onnxruntime_loads() -> None:
    import onnx

    opset = harness.newest_loadable_opset()
    assert 13 <= opset <= onnx.defs.onnx_opset_version()
