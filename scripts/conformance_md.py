"""Fill CONFORMANCE.md's table, failures and exclusions from a triton_qa run's results.json.

    .venv/bin/python scripts/conformance_md.py RESULTS_DIR [CONFORMANCE.md]

The failures' causes are written by hand in CAUSES (test -> why it fails); a failing test without
one is listed with the harness's message, so nothing is left out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TEMPLATE = """# Conformance: Triton's own QA suites against sluiceway

Triton's QA tests (the Python tests under `qa/` of
[triton-inference-server/server](https://github.com/triton-inference-server/server)), run unmodified
against sluiceway over gRPC, with the ONNX models Triton's own generators make and the
repositories each suite's `test.sh` lays out. How the harness works, and the three run-time
adjustments it makes (port, gRPC only, ONNX only), is in
[loadtest/triton_qa/README.md](loadtest/triton_qa/README.md).

## Command

```bash
{command}
```

- **Triton commit:** `{commit}` (2026-08-19), from a git mirror of
  triton-inference-server/server.
- **Machine:** the 2-core development machine, 2026-11-30: 330 s wall for the whole script (venv
  update, model generation and every suite), exit 0.
- **Server:** this checkout (`python -m server serve`, one server per run as test.sh starts them).

## Results

{table}

**Counted** is every test that does not need a Triton-only test hook, HTTP, a GPU, or a backend
other than ONNX and the built-in `identity`; **pass %** is pass / counted. The target was 90%.

For comparison, the issue reported 62 of 156 tests passing against main before this work (same
suites, gRPC only, with its own selection).

## Remaining failures

{failures}

## Exclusions

Each excluded test is reported by the run, with this reason, and not counted.

| suite | tests | reason |
|---|---|---|
{exclusions}

## Not run

- **Suites:** only the eight above. Triton's `qa/` has many more (L0_lifecycle, L0_model_config,
  L0_implicit_state on its own, L0_trt_*, L0_python_*, ...); they are not wired into the harness yet.
- **Trials:** L0_infer and L0_infer_variable run their `cpu` target only (the `gpu` target needs a
  GPU). L0_sequence_batcher runs test.sh's NO_DELAY_TESTS on models0/1/2/4/v, with explicit and
  with implicit state; its delay tests are excluded (above) and reported once, not per trial.
- **Test-level C++ programs:** L0_input_validation's `input_byte_size_test` and
  `tensor_size_test` (C++ against Triton's in-process API) and L0_batcher's `queue_timeout_test.py`
  and C++ `instance_queue_test` are outside the Python suites run here.
"""

CAUSES = {
    "BatcherTest.test_multi_batch_different_shape_allow_ragged": "test.sh's var_models holds"
    " custom_zero_1_float32 (identity backend) with `allow_ragged_batch` and onnx_zero_1_float32 with"
    " `batch_output` BATCH_SCATTER_WITH_INPUT_SHAPE: the built-in identity backend refuses ragged inputs"
    " and `batch_output` is not built (both refused by name at load).",
    "SequenceBatcherRequestTimeoutTest.test_request_timeout": "custom_sequence_int32_timeout is an"
    " identity model with `sequence_batching`, which the built-in identity backend refuses; the test"
    " also expects Triton's sequence backlog (a sequence waiting for a slot times out there).",
    "SequenceBatcherRequestTimeoutTest.test_send_request_after_timeout": "as above, and it expects"
    ' Triton\'s text "timeout of the corresponding sequence has been expired".',
}


def main(argv: list[str]) -> int:
    results = Path(argv[0])
    target = Path(argv[1]) if len(argv) > 1 else Path("CONFORMANCE.md")
    command = (
        argv[2]
        if len(argv) > 2
        else "bash scripts/triton_qa.sh /path/to/triton-inference-server/server --out /tmp/qa"
    )
    report = json.loads((results / "results.json").read_text())
    outcomes = report["outcomes"]
    table = (results / "summary.md").read_text().strip()
    failures = []
    for o in outcomes:
        if o["status"] in ("pass", "excluded", "skipped"):
            continue
        cause = CAUSES.get(o["test"], f"(no cause written yet) {o['message']}")
        failures.append(f"- **{o['suite']} {o['test']}** ({o['status']}, run `{o['run']}`): {cause}")
    grouped: dict[tuple[str, str], set[str]] = {}
    for o in outcomes:
        if o["status"] == "excluded":
            grouped.setdefault((o["suite"], o["message"]), set()).add(o["test"].split(".", 1)[-1])
    rows = [
        f"| {suite} | {', '.join(f'`{t}`' for t in sorted(tests))} | {reason} |"
        for (suite, reason), tests in grouped.items()
    ]
    text = TEMPLATE.format(
        commit=report["triton_commit"],
        command=command,
        table=table,
        failures="\n".join(failures) or "None.",
        exclusions="\n".join(rows),
    )
    target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
