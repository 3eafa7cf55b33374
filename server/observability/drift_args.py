"""The `sluiceway drift` subcommand's flags (argparse only: cheap to import with the CLI)."""

from __future__ import annotations

import argparse
import re
from typing import Any

LOAD_WORDS = ("newest", "all")


def load_choice(text: str) -> str:
    """`--load`'s value: 'newest', 'all' or a load's id (digits); a usage error (exit 2) otherwise
    ("" had been taken as newest, and a bad id exited 1 like a folder without samples)."""
    if text in LOAD_WORDS or re.fullmatch(r"[0-9]+", text):
        return text
    raise argparse.ArgumentTypeError(f"must be 'newest', 'all' or a load's id (digits), got '{text}'")


def add_drift_parser(commands: Any) -> None:
    """The `drift` subcommand on `sluiceway`'s subparsers (run by drift_cli.run_drift)."""
    drift = commands.add_parser("drift", help="drift of a model's sampled requests: a table and a plot")
    drift.add_argument("model", help="model name")
    drift.add_argument("--version", help="model version (default: the highest sampled)")
    drift.add_argument("--sample-dir", help="where samples are written (default: cache_dir/samples)")
    drift.add_argument("--cache-dir", help="the server's cache_dir (default ~/.cache/sluiceway)")
    drift.add_argument(
        "--load",
        type=load_choice,
        help="which load of the version: 'newest' (default: a reload starts a new reference), 'all', "
        "or a load's id",
    )
    drift.add_argument("--reference", help="reference window: .npz with in:<name>/out:<name> arrays")
    drift.add_argument("--drift-reference-samples", type=int, help="reference rows (default 1000)")
    drift.add_argument("--drift-window-samples", type=int, help="recent window rows (default 1000)")
    drift.add_argument("--out", help="plot file (default: drift.png in the version's sample folder)")
