"""`sluiceway drift MODEL`: the drift table of a model's sampled files, and a plot of it.

Reads `<sample_dir>/<model>/<version>/samples-*.npz` of one load of the version (`--load`: the
newest by default, an id, or all) oldest first into a `DriftMonitor`: the first
`drift_reference_samples` rows (or `--reference FILE`) are the reference, the latest
`drift_window_samples` rows the recent window, as in the server, where a reload starts a new
reference (unless files were rotated away meanwhile: keep a reference file for that). Files
written before chunks carried their load (no `load_ns`) count as one load, id 0. Prints one row
per series and writes a PNG of the series that drifted most (matplotlib, from the `loadtest` or `test` extra).
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from server.models.config import ConfigError
from server.observability.drift import OUTPUT, PSI_THRESHOLD, DriftMonitor, DriftRow, Series, score_all
from server.observability.sample_layout import LOAD_KEY, VARIABLE_KEY
from server.observability.sampling import load_reference
from server.observability.sampling_writer import FILE_GLOB
from server.settings import ServerSettings

PLOTTED = 12  # series in the plot
NEWEST, ALL = "newest", "all"  # --load's words; else a load's id
UNKNOWN_LOAD = 0  # the load of files written before chunks named theirs
NUMERIC = "biuf"  # numpy kinds drift scores (a --reference array of another kind is refused)


class DriftError(Exception):
    """Nothing to score; the message says what is missing."""


class UsageError(DriftError):
    """A flag or name that waiting will not mend: exit 2."""


class ReferenceMisfit(UsageError):
    """`--reference` unreadable, or not shaped as the sampled tensors: a usage error (exit 2)."""


class NotSampled(UsageError):
    """The model, version or load named has no samples here: a usage error (exit 2); it had exited
    1, which says "not yet enough rows, wait", for a typo that waiting never mends."""


class NothingToScore(DriftError):
    """The sampled tensors are none that drift scores (BYTES): more samples will not help."""


EXIT_NOT_YET, EXIT_USAGE, EXIT_NOTHING_TO_SCORE = 1, 2, 3
MAX_LOADS_LISTED = 5  # loads a line names (the newest); the rest are counted


def run_drift(args: argparse.Namespace) -> int:
    """Print the table and write the plot; 1 when there are not yet enough rows, 3 when the files
    hold no tensor drift scores, 2 on a bad setting, a model, version or load with no samples, or a
    `--reference` that does not fit."""
    names = ("sample_dir", "cache_dir", "drift_reference_samples", "drift_window_samples")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    try:
        settings = ServerSettings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            print(f"sluiceway: invalid setting '{error['loc'][0]}': {error['msg']}", file=sys.stderr)
        return 2
    root = settings.sample_dir or settings.cache_dir / "samples"
    try:
        directory = version_dir(root, args.model, args.version)
        files, scored = files_of_load(directory, args.load or NEWEST)
        reference = None if args.reference is None else reference_for(Path(args.reference), files)
        windows = settings.drift_reference_samples, settings.drift_window_samples
        monitor = monitor_of(files, *windows, reference)
        series = [s for s in monitor.series() if s.reference.size and s.recent.size]
        if files and not series and not monitor.scorable():
            # "not enough sampled rows yet" had sent the operator to wait for rows that never count.
            raise NothingToScore(
                f"{directory}: nothing to score: no numeric tensor in the sampled files (BYTES "
                "tensors are not scored for drift), so more samples will not change that"
            )
        if not series:
            raise DriftError(
                f"{directory}: not enough sampled rows yet (a full reference window of "
                f"{settings.drift_reference_samples} rows, then recent rows)"
            )
    except DriftError as exc:
        print(f"sluiceway: {exc}", file=sys.stderr)
        if isinstance(exc, UsageError):
            return EXIT_USAGE
        return EXIT_NOTHING_TO_SCORE if isinstance(exc, NothingToScore) else EXIT_NOT_YET
    rows = score_all(series)
    print(scored)
    print_table(f"{args.model} version {directory.name}", rows)
    out = Path(args.out) if args.out else directory / "drift.png"
    try:
        plot(series, rows, out)
    except ImportError:
        print(
            "sluiceway: no plot: matplotlib is not installed (pip install -e '.[loadtest]')", file=sys.stderr
        )
        return 0
    except OSError as err:  # a read-only sample directory: one line, not matplotlib's traceback
        print(f"sluiceway: no plot: cannot write {out}: {err.strerror or err} (--out FILE)", file=sys.stderr)
        return 1
    print(f"plot: {out}")
    return 0


def reference_for(path: Path, files: list[Path]) -> dict[str, Any]:
    """`--reference`'s arrays, each a numeric tensor of the sampled files shaped [rows, *its shape
    past the rows] (any widths for a variable-length one). The server checks its `drift_reference`
    against the config; this command has no config, and had taken a misnamed array silently (that
    tensor scored against its first sampled rows) and a misshapen one into a pooled series."""
    try:
        reference = load_reference(path, "--reference", str(path), where="--reference")
    except ConfigError as exc:
        raise ReferenceMisfit(str(exc)) from None
    sampled = _sampled_shapes(files)
    if not sampled:
        return reference  # no rows yet: said below
    variable = _variable(files)
    for key, array in reference.items():
        if key not in sampled:
            names = ", ".join(f"'{k}'" for k in sorted(sampled))
            raise ReferenceMisfit(
                f"--reference {path}: the array '{key}' names no numeric tensor of the sampled files "
                f"(they hold {names})"
            )
        if array.dtype.kind not in NUMERIC:  # strings or objects: it had been passed over silently
            raise ReferenceMisfit(
                f"--reference {path}: the array '{key}' holds {array.dtype} values, not numbers"
            )
        wanted = sampled[key]
        fits = array.ndim == len(wanted) + 1 and (key in variable or array.shape[1:] == wanted)
        if not fits:
            shape = "[" + ", ".join(["rows", *("*" if key in variable else str(d) for d in wanted)]) + "]"
            raise ReferenceMisfit(
                f"--reference {path}: the array '{key}' is shaped {list(array.shape)}, but the sampled "
                f"rows of '{key}' are {shape}"
            )
    return reference


def _sampled_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Each numeric tensor's shape past the rows, as the newest readable file holds it."""
    for path in reversed(files):
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = ((k, data[k]) for k in data.files if k.startswith(("in:", "out:")))  # each read once
                return {key: tuple(array.shape[1:]) for key, array in arrays if array.dtype.kind in NUMERIC}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            continue  # said when it is fed
    return {}


def version_dir(root: Path, model: str, version: str | None) -> Path:
    """The sampled folder of a model version (the highest when None)."""
    model_dir = root / model
    if version is not None:
        directory = model_dir / version
        if not directory.is_dir():
            raise NotSampled(f"{directory}: no samples of model '{model}' version {version}")
        return directory
    versions = sorted((p for p in model_dir.glob("*") if p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        raise NotSampled(f"{model_dir}: no samples of model '{model}'")
    return versions[-1]


def monitor_from_files(
    directory: Path,
    reference_rows: int,
    window_rows: int,
    reference: dict[str, Any] | None = None,
    load: str = NEWEST,
) -> DriftMonitor:
    """A monitor fed with the sample files of one load (`load`: NEWEST, ALL or an id) of a version."""
    return monitor_of(files_of_load(directory, load)[0], reference_rows, window_rows, reference)


def files_of_load(directory: Path, load: str) -> tuple[list[Path], str]:
    """The sample files of `load` (NEWEST, ALL or a load's id), oldest first, and a line saying
    which load they are and which others the folder holds. Each reload starts the server's drift
    reference anew, so files of two loads scored together had compared the new weights with the
    old load's rows."""
    found = [(path, load_of(path)) for path in sorted(directory.glob(FILE_GLOB), key=lambda p: p.name)]
    readable = [(path, load_id) for path, load_id in found if load_id is not None]
    loads = sorted({load_id for _, load_id in readable})
    if load == ALL:
        every = [path for path, _ in readable]
        return every, f"scoring all {len(loads)} loads' files together: {_ids(loads)}"
    if load == NEWEST:
        chosen = loads[-1] if loads else UNKNOWN_LOAD
    else:
        if not re.fullmatch(r"[0-9]+", load):  # int() also took "1_0", " 7", "-3"
            raise UsageError(f"--load must be '{NEWEST}', '{ALL}' or a load's id, got '{load}'")
        chosen = int(load)
        if chosen not in loads:
            found_ids = _ids(loads) or "none"
            raise NotSampled(f"{directory}: no samples of load {chosen}; loads found: {found_ids}")
    others = [load_id for load_id in loads if load_id != chosen]
    line = f"scoring load {chosen} ({_when(chosen)})"
    if others:
        line += f"; other loads in this folder (--load ID or --load all): {_ids(others)}"
    return [path for path, load_id in readable if load_id == chosen], line


def load_of(path: Path) -> int | None:
    """The id of the load that wrote a sample file (UNKNOWN_LOAD before chunks named it); None
    when the file is gone (rotated away) or not a readable sample file (said on stderr)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return int(data[LOAD_KEY][0]) if LOAD_KEY in data.files else UNKNOWN_LOAD
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError, IndexError, zipfile.BadZipFile) as err:
        # Not a sample file any more (truncated, corrupt): skipped, named; it had ended the
        # command in a BadZipFile traceback.
        print(f"sluiceway: skipping {path.name}: not a readable sample file ({err})", file=sys.stderr)
        return None


def monitor_of(
    files: list[Path], reference_rows: int, window_rows: int, reference: dict[str, Any] | None = None
) -> DriftMonitor:
    """A monitor fed with these sample files, in order; the tensors the files say the server pooled
    as variable-length are pooled here too (the gauges and this command had disagreed)."""
    monitor = DriftMonitor(reference_rows, window_rows, reference, _variable(files))
    for path in files:
        try:
            with np.load(path, allow_pickle=False) as data:
                inputs = {k[3:]: data[k] for k in data.files if k.startswith("in:")}
                outputs = {k[4:]: data[k] for k in data.files if k.startswith("out:")}
        except FileNotFoundError:
            continue  # removed by rotation meanwhile
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            print(f"sluiceway: skipping {path.name}: not a readable sample file ({err})", file=sys.stderr)
            continue
        monitor.feed(inputs or None, outputs)
    return monitor


def _variable(files: list[Path]) -> frozenset[str]:
    """The variable-length tensors the files name (VARIABLE_KEY; an .npz reads only that array)."""
    found: set[str] = set()
    for path in files:
        try:
            with np.load(path, allow_pickle=False) as data:
                if VARIABLE_KEY in data.files:
                    found.update(str(key) for key in data[VARIABLE_KEY].tolist())
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            continue  # said when it is fed
    return frozenset(found)


def _ids(loads: list[int], most: int = MAX_LOADS_LISTED) -> str:
    """The newest `most` of `loads` (ascending), newest last, and how many older ones are not
    named: eviction churn had listed ~150 loads on one line."""
    shown = loads[-most:] if most > 0 else []
    text = ", ".join(f"{load_id} ({_when(load_id)})" for load_id in shown)
    left = len(loads) - len(shown)
    return f"{text} and {left} older" if left and text else text


def _when(load_id: int) -> str:
    """A load id (time_ns when the version loaded) as a UTC time, for people."""
    if load_id == UNKNOWN_LOAD:
        return "files without a load id"
    return datetime.fromtimestamp(load_id / 1e9, tz=timezone.utc).strftime("loaded %Y-%m-%d %H:%M:%S UTC")


def _label(row: DriftRow | Series) -> str:
    return row.tensor if not row.feature else f"{row.tensor}[{row.feature}]"


def print_table(title: str, rows: list[DriftRow]) -> None:
    header = ("kind", "tensor", "feature", "PSI", "KS", "KS limit", "n_reference", "n_recent", "drifted")
    cells = [
        (
            r.kind,
            r.tensor,
            r.feature,
            f"{r.psi:.4f}",
            f"{r.ks:.4f}",
            f"{r.ks_threshold:.4f}",
            str(r.n_reference),
            str(r.n_recent),
            "DRIFT" if r.drifted else "ok",
        )
        for r in rows
    ]
    drifted = sum(r.drifted for r in rows)
    footer = f"{drifted} of {len(rows)} series drifted (PSI > {PSI_THRESHOLD} or KS above its limit)"
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
        print(title)
        for line in (header, *cells):
            print("  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)))
        print(footer)
        return
    table = Table(title=title)
    for name in header:
        table.add_column(name, justify="right" if name not in ("kind", "tensor", "drifted") else "left")
    for line in cells:
        table.add_row(*line, style="bold red" if line[-1] == "DRIFT" else None)
    console = Console()
    console.print(table)
    console.print(footer)


def plot(series: list[Series], rows: list[DriftRow], out: Path) -> None:
    """Reference and recent histograms: outputs, then the series with the highest PSI (ImportError
    without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Outputs first (what the model answers), then the series with the highest PSI.
    ranked = sorted(zip(series, rows, strict=True), key=lambda p: (p[1].kind != OUTPUT, -p[1].psi))[:PLOTTED]
    columns = min(4, len(ranked))
    lines = -(-len(ranked) // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4 * columns, 3 * lines), squeeze=False)
    for ax in axes.ravel()[len(ranked) :]:
        ax.set_visible(False)
    for ax, (s, row) in zip(axes.ravel(), ranked, strict=False):
        mark = " DRIFT" if row.drifted else ""
        ax.set_title(f"{s.kind} {_label(s)}\nPSI {row.psi:.3f} KS {row.ks:.3f}{mark}", fontsize=9)
        reference, recent = _finite(s.reference), _finite(s.recent)
        bins = _bins(np.concatenate([reference, recent]))
        if bins is None:  # nothing finite, or a range histogram edges cannot split
            ax.text(0.5, 0.5, "no finite range to plot", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.hist(reference, bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(recent, bins=bins, density=True, alpha=0.5, label="recent")
        ax.legend(fontsize=7)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    plt.close(figure)


def _finite(values: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Finite values as float64: NaN and infinities have no bin, and edges computed in float32 near
    its largest value overflowed ("Too many bins for data range", a traceback after the table)."""
    wide = np.asarray(values, dtype=np.float64)
    return wide[np.isfinite(wide)]


def _bins(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64] | None:
    if values.size == 0:
        return None
    try:
        return np.histogram_bin_edges(values, bins=30)
    except ValueError:
        return None
