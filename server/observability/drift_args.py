"""The `sluiceway drift` subcommand's flags (argparse only: cheap to import with the CLI)."""

from __future__ import annotations

from typing import Any


def add_drift_parser(commands: Any) -> None:
    """The `drift` subcommand on `sluiceway`'s subparsers (run by drift_cli.run_drift)."""
    drift = commands.add_parser("drift", help="drift of a model's sampled requests: a table and a plot")
    drift.add_argument("model", help="model name")
    drift.add_argument("--version", help="model version (default: the highest sampled)")
    drift.add_argument("--sample-dir", help="where samples are written (default: cache_dir/samples)")
    drift.add_argument("--cache-dir", help="the server's cache_dir (default ~/.cache/sluiceway)")
    drift.add_argument(
        "--load",
        help="which load of the version: 'newest' (default: a reload starts a new reference), 'all', "
        "or a load's id",
    )
    drift.add_argument("--reference", help="reference window: .npz with in:<name>/out:<name> arrays")
    drift.add_argument("--drift-reference-samples", type=int, help="reference rows (default 1000)")
    drift.add_argument("--drift-window-samples", type=int, help="recent window rows (default 1000)")
    drift.add_argument("--out", help="plot file (default: drift.png in the version's sample folder)")
