"""Hypothesis settings profiles for the property tests and the fuzz target, chosen by
HYPOTHESIS_PROFILE (default `ci`):

- `ci`: bounded, so the whole property and fuzz set stays well under a minute on 2 cores.
- `dev`: a few times more examples, for a local run after touching the codec or the batcher.
- `long`: many examples, for scripts/fuzz.sh (which bounds it by time).

A test that needs fewer examples takes a share of the loaded profile's (`settings().max_examples`),
so each profile bounds every test. No deadline: on a busy 2-core machine a slow example is no bug.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from tests.support.gpu import gpu_skip_reason
from tests.support.share import deselect_other_shares

# Near-valid request strategies filter some draws; on a busy machine hypothesis' health checks
# then fail a run that found nothing wrong, so they are off: the examples' count bounds each test.
_COMMON = settings(
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
settings.register_profile("ci", _COMMON, max_examples=100)
settings.register_profile("dev", _COMMON, max_examples=500)
settings.register_profile("long", _COMMON, max_examples=20_000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# Test files that keep a worker busy ~8 s or more (`--durations`, 2026-12-01), longest first. xdist
# hands out whole files (--dist loadfile), by default those with the most tests first, so these few-
# test files came last and the other worker idled while they ran. They go first (scripts/
# test_phases.sh turns xdist's reordering off); the other files keep pytest-randomly's order.
LONG_FILES = (
    "tests/triton/test_perf_analyzer.py",
    "tests/integration/test_extras_resolve.py",
    "tests/integration/test_gpu_check.py",
    "tests/integration/test_rollout.py",
    "tests/integration/test_repository_control.py",
    "tests/integration/test_hostile_clients.py",
    "tests/integration/test_soak.py",
    "tests/integration/test_loadtest_realtime.py",
    "tests/integration/test_faults.py",
    "tests/integration/test_security.py",
    "tests/integration/test_optimize.py",
    "tests/integration/test_readme_claims.py",
    "tests/triton/test_tritonclient.py",
    "tests/integration/test_failover_kill.py",
)


def long_files_first(items: list[pytest.Item]) -> None:
    """Stable: within a file, and among the other files, the order is left as it was."""
    rank = {name: place for place, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Only this Python's share of the files when the test command shares them out
    (tests/support/share.py), long files first (after pytest-randomly's shuffle, which runs before
    this hook). Tests marked `gpu` are skipped unless this machine has onnxruntime-gpu and an NVIDIA
    GPU (tests/support/gpu.py); the probe runs only when such a test was collected."""
    deselect_other_shares(config, items)
    long_files_first(items)
    marked = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not marked:
        return
    reason = gpu_skip_reason()
    if reason is None:
        return
    for item in marked:
        item.add_marker(pytest.mark.skip(reason=reason))
