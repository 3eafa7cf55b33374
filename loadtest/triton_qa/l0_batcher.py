"""Run Triton's own dynamic-batcher QA test (qa/L0_batcher/batcher_test.py) against sluiceway over gRPC.

A measurement, not a gate: it always exits 0 once it has a table. Nothing of Triton's is kept in this
repository: the QA files are extracted at run time from a Triton server checkout or git mirror that the
caller provides (see README.md), models are generated with Triton's own qa/common/gen_qa_models.py,
and the repositories are built with the same edits qa/L0_batcher/test.sh makes. Each test case runs
against a freshly started server (the tests read cumulative model statistics), all on 127.0.0.1.

    .venv/bin/python loadtest/triton_qa/l0_batcher.py --triton /path/to/triton-server [options]

The test process is started through this file (`_client` mode), which points every
tritonclient.grpc.InferenceServerClient that the QA code builds for "<host>:8001" at the server's
real port, then runs one BatcherTest case with unittest and writes its outcome as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import unittest
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MODEL = "onnx_float32_float32_float32"
READY = re.compile(r"sluiceway ready on ([0-9.]+):(\d+)")

# qa/L0_batcher/test.sh: NO_DELAY_TESTS run on the fixed-shape and on the variable-shape repository.
NO_DELAY_TESTS = (
    "test_static_batch_preferred",
    "test_static_batch_lt_any_preferred",
    "test_static_batch_not_preferred",
    "test_static_batch_gt_max_preferred",
    "test_multi_batch_not_preferred",
    "test_multi_batch_gt_max_preferred",
    "test_multi_batch_sum_gt_max_preferred",
    "test_multi_same_output0",
    "test_multi_same_output1",
    "test_multi_different_outputs",
    "test_multi_different_output_order",
)
# DIFFERENT_SHAPE_TESTS, variable-shape repository only (allow_ragged is excluded below).
DIFFERENT_SHAPE_TESTS = (
    "test_multi_batch_not_preferred_different_shape",
    "test_multi_batch_preferred_different_shape",
    "test_multi_batch_different_shape",
)
# Tests that test.sh runs with TRITONSERVER_DELAY_SCHEDULER=N: Triton's scheduler then waits until N
# requests are queued before it forms the first batch. sluiceway has no such hook; the tests assert the
# variable is set in their own environment, so they only run (informationally) with --include-delay.
DELAY_TESTS = {
    "test_multi_batch_delayed_sum_gt_max_preferred": 2,
    "test_multi_batch_use_biggest_preferred": 6,
    "test_multi_batch_use_best_preferred": 3,
    "test_multi_batch_delayed_use_max_batch": 3,
}
DELAY_VARIABLE_ONLY_TESTS = {"test_multi_batch_delayed_preferred_different_shape": 4}
PREFERRED_BATCH_ONLY_TESTS = {
    "test_preferred_batch_only_aligned": 4,
    "test_preferred_batch_only_unaligned": 5,
    "test_preferred_batch_only_use_biggest_preferred": 7,
    "test_preferred_batch_only_use_no_preferred_size": 3,
}
DELAY_ALL = {**DELAY_TESTS, **DELAY_VARIABLE_ONLY_TESTS, **PREFERRED_BATCH_ONLY_TESTS}
CUSTOM_BACKEND = "needs Triton's C++ 'identity' backend (custom_zero_1_float32)"
EXCLUDED = {
    "test_multi_batch_different_shape_allow_ragged": CUSTOM_BACKEND
    + " and ragged batching with batch_output BATCH_SCATTER_WITH_INPUT_SHAPE",
    "test_max_queue_delay_only_default": CUSTOM_BACKEND + " with execute_delay_ms=100",
    "test_max_queue_delay_only_non_default": CUSTOM_BACKEND + " with execute_delay_ms=100",
    "test_multi_batch_preserve_ordering": CUSTOM_BACKEND
    + " (2 instances, instance_wise_delay_multiplier), TRITONSERVER_DELAY_SCHEDULER=12 and server"
    " --trace-file timestamps checked by verify_timestamps.py",
    **{
        name: f"needs TRITONSERVER_DELAY_SCHEDULER={n} (Triton scheduler test hook)"
        for name, n in DELAY_ALL.items()
    },
}
REPOSITORY = {
    "FIXED": "models",
    "VARIABLE": "var_models",
    "PREFERRED_BATCH_ONLY": "preferred_batch_only_models",
}


@dataclass(frozen=True)
class Case:
    test: str
    batcher_type: str  # FIXED, VARIABLE or PREFERRED_BATCH_ONLY, as test.sh names its logs
    delay: int | None = None  # TRITONSERVER_DELAY_SCHEDULER that test.sh sets for it


@dataclass
class Outcome:
    test: str
    batcher_type: str
    status: str  # pass, fail, error, skipped, timeout, server-failed
    seconds: float
    message: str


def cases(include_delay: bool) -> list[Case]:
    """The runs test.sh makes, in its order, less the excluded ones unless include_delay."""
    out: list[Case] = []
    for batcher_type in ("FIXED", "VARIABLE"):
        out += [Case(t, batcher_type) for t in NO_DELAY_TESTS]
        if include_delay:
            out += [Case(t, batcher_type, n) for t, n in DELAY_TESTS.items()]
    out += [Case(t, "VARIABLE") for t in DIFFERENT_SHAPE_TESTS]
    if include_delay:
        out += [Case(t, "VARIABLE", n) for t, n in DELAY_VARIABLE_ONLY_TESTS.items()]
        out += [Case(t, "PREFERRED_BATCH_ONLY", n) for t, n in PREFERRED_BATCH_ONLY_TESTS.items()]
    return out


def run_logged(cmd: list[str], cwd: Path, log: Path, timeout_s: float) -> None:
    with log.open("w") as f:
        subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s, check=True)


def extract_qa(triton: Path, rev: str, dest: Path) -> str:
    """Copy qa/common and qa/L0_batcher out of a Triton git mirror (bare or not) or a plain checkout."""
    parts = ["qa/common", "qa/L0_batcher"]
    probe = subprocess.run(
        ["git", "--git-dir", str(triton), "rev-parse", rev], capture_output=True, text=True, timeout=60
    )
    if probe.returncode != 0 and (triton / ".git").exists():
        triton = triton / ".git"
        probe = subprocess.run(
            ["git", "--git-dir", str(triton), "rev-parse", rev], capture_output=True, text=True, timeout=60
        )
    if probe.returncode == 0:
        commit = probe.stdout.strip()
        archive = subprocess.run(
            ["git", "--git-dir", str(triton), "archive", "--format=tar", commit, *parts],
            capture_output=True,
            timeout=300,
            check=True,
        )
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(dest, filter="data")
        return commit
    if not (triton / "qa" / "L0_batcher" / "batcher_test.py").is_file():
        raise SystemExit(f"{triton}: neither a git repository nor a Triton checkout with qa/L0_batcher")
    for part in parts:
        shutil.copytree(triton / part, dest / part)
    return "working tree (not a git repository)"


def generate_models(qa: Path, gen: Path, timeout_s: float) -> None:
    """Triton's own generator, ONNX branch: fixed- and variable-shape sets, as gen_qa_model_repository."""
    common = qa / "common"
    py = sys.executable
    run_logged(
        [py, "gen_qa_models.py", "--onnx", f"--models_dir={gen / 'qa_model_repository'}"],
        common,
        gen / "gen_fixed.log",
        timeout_s,
    )
    run_logged(
        [
            py,
            "gen_qa_models.py",
            "--onnx",
            "--variable",
            f"--models_dir={gen / 'qa_variable_model_repository'}",
        ],
        common,
        gen / "gen_variable.log",
        timeout_s,
    )


def add_model(source: Path, repository: Path, dynamic_batching: str, variable: bool) -> None:
    """cp -r the model, then test.sh's sed edits and its appended dynamic_batching block."""
    target = repository / source.name
    shutil.copytree(source, target)
    config = target / "config.pbtxt"
    text = config.read_text()
    text = re.sub(r"(?m)^max_batch_size:.*$", "max_batch_size: 8", text)
    text = re.sub(r"(?m)^version_policy:.*$", "version_policy: { specific { versions: [1] }}", text)
    text += f"\n{dynamic_batching}\n"
    if variable:  # test.sh: sed -i "s/16/-1/g" var_models/*/config.pbtxt
        text = text.replace("16", "-1")
    config.write_text(text)


def build_repositories(gen: Path, work: Path) -> dict[str, Path]:
    delayed = "dynamic_batching { preferred_batch_size: [ 2, 6 ], max_queue_delay_microseconds: 10000000 }"
    repos = {kind: work / name for kind, name in REPOSITORY.items()}
    for repo in repos.values():
        repo.mkdir()
    add_model(gen / "qa_model_repository" / MODEL, repos["FIXED"], delayed, variable=False)
    add_model(gen / "qa_variable_model_repository" / MODEL, repos["VARIABLE"], delayed, variable=True)
    add_model(
        gen / "qa_model_repository" / MODEL,
        repos["PREFERRED_BATCH_ONLY"],
        "dynamic_batching { preferred_batch_size: [ 4, 6 ] }",
        variable=False,
    )
    return repos


class Server:
    """One `python -m server serve` on 127.0.0.1 and a free port, in a process group of its own."""

    def __init__(self, src: Path, repository: Path, log: Path, extra: list[str], env: dict[str, str]) -> None:
        self.log = log
        self._log_file = log.open("w")
        cmd = [sys.executable, "-m", "server", "serve", "--model-repository", str(repository)]
        cmd += ["--host", "127.0.0.1", "--port", "0", *extra]
        self.proc = subprocess.Popen(
            cmd, cwd=src, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def wait_ready(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = READY.search(self.log.read_text(errors="replace"))
            if match:
                return int(match.group(2))
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout_s:.0f} s: {self.tail()}")

    def tail(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self._log_file.close()


def client_env(case: Case, port: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("TRITONSERVER_DELAY_SCHEDULER", "PYTHONPATH"):
        env.pop(name, None)
    env.update(
        BACKENDS="onnx",  # _trials: the ONNX models only
        USE_GRPC="1",
        USE_HTTP="0",  # batcher_test picks HTTP when both are on (its default)
        TEST_SYSTEM_SHARED_MEMORY="0",
        TEST_CUDA_SHARED_MEMORY="0",
        SERVER_LAUNCH_MODE="dynamo",  # infer_util/shm_util then skip `import tritonclient.http`
        TRITONSERVER_IPADDR="127.0.0.1",
        BATCHER_TYPE=case.batcher_type,
        L0_BATCHER_PORT=str(port),
    )
    if case.delay is not None:
        env["TRITONSERVER_DELAY_SCHEDULER"] = str(case.delay)
    return env


def first_line_of_cause(text: str) -> str:
    """The assertion's message: the last non-empty line of a traceback, without the wrapper text."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last.replace("AssertionError: False is not true : ", "").replace("False is not true : ", "")


def run_case(case: Case, repos: dict[str, Path], qa: Path, logs: Path, args: argparse.Namespace) -> Outcome:
    stem = f"{case.test}.{case.batcher_type}"
    server_env = dict(os.environ)
    if case.delay is not None:  # what test.sh exports; sluiceway ignores it
        server_env["TRITONSERVER_DELAY_SCHEDULER"] = str(case.delay)
    start = time.monotonic()
    server = Server(
        args.server_src, repos[case.batcher_type], logs / f"{stem}.server.log", args.server_arg, server_env
    )
    try:
        try:
            port = server.wait_ready(args.start_timeout)
        except RuntimeError as exc:
            return Outcome(case.test, case.batcher_type, "server-failed", time.monotonic() - start, str(exc))
        result_file = logs / f"{stem}.result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "_client", case.test, str(result_file)]
        with (logs / f"{stem}.client.log").open("w") as client_log:
            try:
                subprocess.run(
                    cmd,
                    cwd=qa / "L0_batcher",
                    env=client_env(case, port),
                    stdout=client_log,
                    stderr=subprocess.STDOUT,
                    timeout=args.test_timeout,
                )
            except subprocess.TimeoutExpired:
                message = f"no result after {args.test_timeout:.0f} s"
                return Outcome(case.test, case.batcher_type, "timeout", time.monotonic() - start, message)
        if not result_file.exists():
            message = "client wrote no result; see " + str(logs / f"{stem}.client.log")
            return Outcome(case.test, case.batcher_type, "error", time.monotonic() - start, message)
        result = json.loads(result_file.read_text())
        seconds = time.monotonic() - start
        return Outcome(case.test, case.batcher_type, result["status"], seconds, result["message"])
    finally:
        server.stop()


def client_main(test: str, result_file: Path) -> int:
    """In the test process (cwd qa/L0_batcher): redirect :8001 clients, run one BatcherTest case."""
    import tritonclient.grpc as grpcclient

    target = f"127.0.0.1:{os.environ['L0_BATCHER_PORT']}"
    cls = grpcclient.InferenceServerClient
    original_init = cls.__init__

    def redirected_init(self: Any, url: str, *args: Any, **kwargs: Any) -> None:
        if url.rpartition(":")[2] == "8001":
            url = target
        original_init(self, url, *args, **kwargs)

    cls.__init__ = redirected_init
    sys.path.insert(0, os.getcwd())
    import batcher_test

    suite = unittest.defaultTestLoader.loadTestsFromName(f"BatcherTest.{test}", batcher_test)
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    if result.errors:
        status, message = "error", first_line_of_cause(result.errors[0][1])
    elif result.failures:
        status, message = "fail", first_line_of_cause(result.failures[0][1])
    elif result.skipped:
        status, message = "skipped", result.skipped[0][1]
    elif result.testsRun == 1:
        status, message = "pass", ""
    else:
        status, message = "error", f"{result.testsRun} tests ran"
    result_file.write_text(json.dumps({"status": status, "message": message}))
    return 0


def free_port_check() -> None:
    with socket.socket() as s:  # fail early when loopback is unusable
        s.bind(("127.0.0.1", 0))


def print_table(outcomes: list[Outcome], excluded: dict[str, str], width: int) -> str:
    lines = [f"{'test':<52} {'type':<20} {'result':<13} {'s':>5}  cause"]
    for o in outcomes:
        cause = o.message if len(o.message) <= width else o.message[: width - 3] + "..."
        lines.append(f"{o.test:<52} {o.batcher_type:<20} {o.status:<13} {o.seconds:5.1f}  {cause}")
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    order = ["pass", "fail", "error", "skipped", "timeout", "server-failed"]
    totals = ", ".join(f"{k} {counts.get(k, 0)}" for k in order)
    lines.append(f"total {len(outcomes)} runs: {totals}; {len(excluded)} tests excluded (see README.md)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_client"]:
        return client_main(argv[1], Path(argv[2]))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--triton",
        type=Path,
        default=os.environ.get("TRITON_SERVER_REPO"),
        help="triton-inference-server/server: git mirror (bare is fine) or checkout (env TRITON_SERVER_REPO)",
    )
    parser.add_argument("--rev", default="HEAD", help="revision to extract when --triton is a git repository")
    parser.add_argument("--work", type=Path, help="scratch directory (default: a new temporary one, removed)")
    parser.add_argument(
        "--out", type=Path, help="where results.json, results.txt and logs/ go (default: --work)"
    )
    parser.add_argument(
        "--server-src", type=Path, default=ROOT, help="directory to run `python -m server serve` from"
    )
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra `serve` argument (repeatable)"
    )
    parser.add_argument("--tests", help="comma-separated test names to keep (default: every selected one)")
    parser.add_argument(
        "--types", default="FIXED,VARIABLE,PREFERRED_BATCH_ONLY", help="batcher types to keep"
    )
    parser.add_argument(
        "--include-delay",
        action="store_true",
        help="also run the TRITONSERVER_DELAY_SCHEDULER tests (informational: sluiceway has no such hook)",
    )
    parser.add_argument("--test-timeout", type=float, default=150.0, help="seconds per test case")
    parser.add_argument(
        "--start-timeout", type=float, default=60.0, help="seconds for the server to be ready"
    )
    parser.add_argument("--gen-timeout", type=float, default=300.0, help="seconds per model-generator run")
    parser.add_argument("--list", action="store_true", help="print the selected and excluded tests and exit")
    args = parser.parse_args(argv)

    selected = cases(args.include_delay)
    if args.tests:
        keep = set(args.tests.split(","))
        unknown = keep - {c.test for c in cases(True)} - set(EXCLUDED)
        if unknown:
            parser.error(f"unknown tests: {', '.join(sorted(unknown))}")
        selected = [c for c in selected if c.test in keep]
    types = set(args.types.split(","))
    selected = [c for c in selected if c.batcher_type in types]
    excluded = {t: r for t, r in EXCLUDED.items() if not (args.include_delay and t in DELAY_ALL)}
    if args.list:
        for c in selected:
            delay = f" (TRITONSERVER_DELAY_SCHEDULER={c.delay}, not honoured)" if c.delay is not None else ""
            print(f"run      {c.test} [{c.batcher_type}]{delay}")
        for test, reason in excluded.items():
            print(f"excluded {test}: {reason}")
        return 0
    if args.triton is None:
        parser.error("--triton (or TRITON_SERVER_REPO) is required")

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # run the finally blocks
    free_port_check()
    work = args.work or Path(tempfile.mkdtemp(prefix="l0_batcher."))
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or work
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        qa_root = work / "triton"
        if qa_root.exists():
            shutil.rmtree(qa_root)
        qa_root.mkdir()
        commit = extract_qa(args.triton.resolve(), args.rev, qa_root)
        qa = qa_root / "qa"
        gen = work / "gen"
        if gen.exists():
            shutil.rmtree(gen)
        gen.mkdir()
        generate_models(qa, gen, args.gen_timeout)
        repos_dir = work / "repositories"
        if repos_dir.exists():
            shutil.rmtree(repos_dir)
        repos_dir.mkdir()
        repos = build_repositories(gen, repos_dir)
        print(f"triton qa from {args.triton} @ {commit}; {len(selected)} runs; logs in {logs}", flush=True)
        outcomes: list[Outcome] = []
        for case in selected:
            outcome = run_case(case, repos, qa, logs, args)
            outcomes.append(outcome)
            print(
                f"  {outcome.status:<13} {case.test} [{case.batcher_type}] {outcome.seconds:.1f} s",
                flush=True,
            )
        table = print_table(outcomes, excluded, 100)
        print(table)
        (out / "results.txt").write_text(table + "\n")
        report = {
            "triton_commit": commit,
            "server_src": str(args.server_src.resolve()),
            "outcomes": [asdict(o) for o in outcomes],
            "excluded": excluded,
        }
        (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    finally:
        if args.work is None and args.out is not None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
