"""Every server setting is a flag of `sluiceway serve` as well as a SLUICEWAY_* variable."""

from __future__ import annotations

import pytest

from server.cli import _parser, settings_from_args
from server.settings import ServerSettings


def test_every_setting_but_the_internal_ones_is_a_flag() -> None:
    """worker_index had been a flag, undocumented: set by hand, it silenced the unknown-variable
    warning and tied the process to its parent."""
    serve = _parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    flags = {action.dest for action in serve._actions}
    internal = {"reuse_port", "worker_index", "rollout_share_dir", "session_host", "session_host_threads"}
    assert set(ServerSettings.model_fields) - flags == internal


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["--shutdown-grace-s", "2.5"], "shutdown_grace_s", 2.5),
        (["--max-concurrent-rpcs", "10"], "max_concurrent_rpcs", 10),
        (["--no-use-uvloop"], "use_uvloop", False),
        (["--allow-spinning"], "allow_spinning", True),
        (["--graph-optimization-level", "basic"], "graph_optimization_level", "basic"),
        (["--inline-run-max-us", "0"], "inline_run_max_us", 0),
    ],
)
def test_flags_that_were_missing_set_their_setting(argv: list[str], field: str, value: object) -> None:
    settings = settings_from_args(_parser().parse_args(["serve", *argv]))
    assert getattr(settings, field) == value
