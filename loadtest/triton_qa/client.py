"""The test process of a Triton QA run: runs named unittest cases of one Triton test file.

    python client.py MODULE RESULT_JSON EXCLUDED_JSON SPEC [SPEC ...]

cwd is the suite's folder (qa/L0_x, with qa/common beside it). SPEC is `Class` (every test of the
class) or `Class.test_name`. EXCLUDED_JSON maps `Class.test_name` to the reason it is not run; those
are reported as `excluded` without running. Every tritonclient.grpc.InferenceServerClient built for
a URL ending in `:8001` (Triton's files hard-code that port) is pointed at 127.0.0.1:$QA_SERVER_PORT;
nothing else of Triton's files changes. Outcomes are written to RESULT_JSON after every test, so a
run cut short by its timeout still reports what finished.
"""

from __future__ import annotations

import json
import os
import sys
import time
import unittest
from pathlib import Path
from typing import Any


def redirect_port_8001(port: str) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as aioclient

    for cls in (grpcclient.InferenceServerClient, aioclient.InferenceServerClient):
        original_init = cls.__init__

        def redirected_init(
            self: Any, url: str, *args: Any, _init: Any = original_init, **kwargs: Any
        ) -> None:
            if url.rpartition(":")[2] == "8001":
                url = f"127.0.0.1:{port}"
            _init(self, url, *args, **kwargs)

        cls.__init__ = redirected_init


def grpc_only(module: Any) -> None:
    """Make infer_util's helpers (infer_exact, infer_zero, infer_shape_tensor) leave out HTTP.

    They try HTTP on :8000 by default (`use_http=True`) whatever $USE_HTTP says; sluiceway serves
    gRPC only, so each test runs its gRPC and gRPC-stream configurations: the gRPC-only subset."""
    for name, function in list(vars(module).items()):
        if not callable(function) or "use_http" not in getattr(function, "__code__", _NO_CODE).co_varnames:
            continue

        def without_http(*args: Any, _function: Any = function, **kwargs: Any) -> Any:
            kwargs["use_http"] = False
            return _function(*args, **kwargs)

        setattr(module, name, without_http)


_NO_CODE = (lambda: None).__code__
# test_util's per-backend gates. Some tests (infer_reshape_test) take no $BACKENDS and try every
# backend these gates allow; sluiceway has none of these three.
OTHER_BACKENDS = ("validate_for_trt_model", "validate_for_libtorch_model", "validate_for_openvino_model")


def onnx_only(module: Any) -> None:
    """Close test_util's gates for TensorRT plans, libtorch and OpenVINO: the ONNX (and ensemble) subset."""
    for name in OTHER_BACKENDS:
        setattr(module, name, lambda *args, **kwargs: False)


def cause(text: str) -> str:
    """The assertion's message: the last non-empty line of a traceback, without unittest's wrapper."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last.replace("AssertionError: False is not true : ", "").replace("False is not true : ", "")


def selected(module: Any, specs: list[str]) -> list[str]:
    loader = unittest.defaultTestLoader
    names: list[str] = []
    for spec in specs:
        cls_name, _, test = spec.partition(".")
        cls = getattr(module, cls_name)
        names += [spec] if test else [f"{cls_name}.{t}" for t in loader.getTestCaseNames(cls)]
    return names


def main(argv: list[str]) -> int:
    module_name, result_path, excluded_path, *specs = argv
    result_file = Path(result_path)
    excluded: dict[str, str] = json.loads(Path(excluded_path).read_text())
    redirect_port_8001(os.environ["QA_SERVER_PORT"])
    sys.path.insert(0, os.getcwd())
    sys.path.insert(1, str(Path.cwd().parent / "common"))
    if os.environ.get("USE_HTTP") == "0":
        grpc_only(__import__("infer_util"))
    onnx_only(__import__("test_util"))
    module = __import__(module_name)
    outcomes: list[dict[str, object]] = []
    for name in selected(module, specs):
        if name in excluded:
            outcomes.append({"test": name, "status": "excluded", "seconds": 0.0, "message": excluded[name]})
            continue
        suite = unittest.defaultTestLoader.loadTestsFromName(name, module)
        start = time.monotonic()
        print(f"=== {name}", flush=True)
        result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
        if result.errors:
            status, message = "error", cause(result.errors[0][1])
        elif result.failures:
            status, message = "fail", cause(result.failures[0][1])
        elif result.skipped:
            status, message = "skipped", result.skipped[0][1]
        elif result.testsRun == 1:
            status, message = "pass", ""
        else:
            status, message = "error", f"{result.testsRun} tests ran"
        seconds = round(time.monotonic() - start, 2)
        outcomes.append({"test": name, "status": status, "seconds": seconds, "message": message})
        result_file.write_text(json.dumps(outcomes))
    result_file.write_text(json.dumps(outcomes))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
