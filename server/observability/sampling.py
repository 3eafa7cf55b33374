"""Prediction sampling: a configurable fraction of each model's requests, to rotating local files.

Per model version, `sample_ratio` of the requests (the model's parameter, else the server's
setting) are sampled, deterministically: request n is sampled when floor(n * ratio) grows, in
exact integer arithmetic on the ratio's decimal value (0.25: every 4th request, 0.1 every 10th; a
float credit had sampled 99 of 1000 at 0.1, the 11th, 21st, ...). `sample_what` says whether the inputs
are kept too ("inputs_and_outputs") or only the outputs ("outputs"). The request path only calls
`ModelSampler.offer`, which appends references to the writer's bounded queue
(sampling_writer.py) or counts a drop; the writer's thread feeds each version's drift monitor
(drift.py) and writes the files. `SamplingRegistry.gauge_values` exports the counts (kept across a
version's loads, sample_counts.py) and the drift scores for the metrics endpoint.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt
from numpy.lib.npyio import NpzFile

from protos import model_config_pb2 as mc
from server.models.config import DRIFT_REFERENCE, SAMPLE_RATIO, SAMPLE_WHAT, ConfigError
from server.models.model_files import read_model_file
from server.observability.drift import DriftMonitor
from server.observability.metrics_page import series_labels
from server.observability.sample_counts import SampleCounts, SampleTotals
from server.observability.sample_layout import stored_bytes
from server.observability.sampling_writer import Sample, SampleWriter
from server.settings import ServerSettings

# A drift reference window, on disk and unpacked (a reference of 1000 rows of 256 float64 features
# is 2 MiB).
MAX_REFERENCE_BYTES = 256 * 1024 * 1024
# The ratio's denominator at most: every decimal of up to 12 places is exact, the credit stays a
# small int.
MAX_RATIO_DENOMINATOR = 10**12
DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")  # sample_ratio's spelling
OUTPUTS = "outputs"
INPUTS_AND_OUTPUTS = "inputs_and_outputs"
SAMPLE_WHATS = (OUTPUTS, INPUTS_AND_OUTPUTS)
AnyArray = npt.NDArray[np.generic]
Gauge = tuple[str, dict[str, str], float]
# The kind and HELP of each name gauge_values yields (server/observability/metrics.py's Catalog).
METRICS = {
    "sluiceway_samples_written_total": ("counter", "Sampled requests written to the sample store"),
    "sluiceway_samples_dropped_total": (
        "counter",
        "Sampled requests dropped: the writer's queue was full, or one sample is over sample_max_bytes",
    ),
    "sluiceway_samples_lost_total": ("counter", "Sampled requests lost: their file could not be written"),
    "sluiceway_drift_psi": ("gauge", "Population stability index of a feature against its reference"),
    "sluiceway_drift_ks": ("gauge", "Kolmogorov-Smirnov statistic of a feature against its reference"),
    "sluiceway_drift_drifted": ("gauge", "1 when a feature's drift passes the model's threshold, else 0"),
}


@dataclass(frozen=True)
class SamplePolicy:
    """A model's sampling terms, settled when it loads (ratio 0: not sampled)."""

    ratio: float = 0.0
    with_inputs: bool = False
    reference: Mapping[str, AnyArray] | None = None  # from the model's drift_reference file
    variable: frozenset[str] = frozenset()  # "in:<name>" / "out:<name>" of variable-length tensors
    tags: Mapping[str, str] = field(default_factory=dict)  # the config's metric_tags: labels `_<key>`


def ratio_fraction(ratio: float) -> tuple[int, int]:
    """The ratio as (numerator, denominator) of the decimal it was written as: 0.1 is 1/10, not
    the binary float just below it (whose credit reached 1.0 one request late)."""
    exact = Fraction(repr(ratio)).limit_denominator(MAX_RATIO_DENOMINATOR)
    return exact.numerator, exact.denominator


def sample_policy(
    config: mc.ModelConfig, model_dir: Path, settings: ServerSettings, source: str | None = None
) -> SamplePolicy:
    """The model's sampling parameters over the server's settings; ConfigError names the field and
    `source`, where the config came from (default the model's config.pbtxt; a RepositoryModelLoad
    `config` had been named as the file it replaced).

    Reads the drift_reference file, so call it off the event loop."""
    source = source or str(model_dir / "config.pbtxt")
    params = config.parameters
    ratio = settings.sample_ratio
    if SAMPLE_RATIO in params:
        text = params[SAMPLE_RATIO].string_value
        # A decimal number only: float() also took "0.1_0" (as 0.1), " 1", "inf".
        ratio = float(text) if DECIMAL.fullmatch(text) else -1.0
        if not 0.0 <= ratio <= 1.0:  # also refuses nan
            raise ConfigError(
                f"{source}: parameters '{SAMPLE_RATIO}' must be a number in [0, 1], got '{text}'"
            )
    what = params[SAMPLE_WHAT].string_value if SAMPLE_WHAT in params else settings.sample_what
    if what not in SAMPLE_WHATS:
        raise ConfigError(
            f"{source}: parameters '{SAMPLE_WHAT}' must be one of {list(SAMPLE_WHATS)}, got '{what}'"
        )
    reference = None
    if DRIFT_REFERENCE in params:
        name = params[DRIFT_REFERENCE].string_value
        where = f"{source}: parameters '{DRIFT_REFERENCE}' '{name}'"
        # Read once, bounded, then parsed from memory: a compressed .npz unpacks 1000:1.
        raw = read_model_file(model_dir, name, where, MAX_REFERENCE_BYTES)
        reference = load_reference(io.BytesIO(raw), source, name)
        check_reference(config, reference, where)
    shapes = tensor_shapes(config)
    variable = frozenset(key for key, (shape, _) in shapes.items() if -1 in shape)
    return SamplePolicy(
        ratio=ratio,
        with_inputs=what == INPUTS_AND_OUTPUTS,
        reference=reference,
        variable=variable,
        tags=dict(config.metric_tags),
    )


def tensor_shapes(config: mc.ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[int, ...] | None]]:
    """Each tensor's shape past the rows, keyed as in a sample file ("in:<name>" / "out:<name>"):
    its dims, and its `reshape` (the model's side) when it has one. Without batching the first dim
    is the rows (a sample's rows are its first axis)."""
    skip = 0 if config.max_batch_size > 0 else 1
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...] | None]] = {}
    for prefix, tensors in (("in:", config.input), ("out:", config.output)):
        for tensor in tensors:
            reshape = tuple(tensor.reshape.shape)[skip:] if tensor.HasField("reshape") else None
            shapes[prefix + tensor.name] = tuple(tensor.dims)[skip:], reshape
    return shapes


def check_reference(config: mc.ModelConfig, reference: Mapping[str, AnyArray], where: str) -> None:
    """ConfigError unless every reference array is a tensor of the model, shaped [rows, *its shape]
    (-1: any size): a misnamed key had been ignored (that tensor's reference taken from the first
    sampled rows instead), and a [rows, 1] reference of a [rows, 4] output pooled 1 column against 4."""
    shapes = tensor_shapes(config)
    for key, array in reference.items():
        kind, _, name = key.partition(":")
        side = "input" if kind == "in" else "output"
        if key not in shapes:
            known = ", ".join(repr(k.partition(":")[2]) for k in shapes if k.startswith(kind + ":"))
            raise ConfigError(
                f"{where}: the array '{key}' names no {side} of the model ({side}s: {known or 'none'})"
            )
        wanted = [s for s in shapes[key] if s is not None]
        if array.ndim == 0 or not any(_fits(array.shape[1:], s) for s in wanted):
            rows = " or ".join("[" + ", ".join(["rows", *map(str, s)]) + "]" for s in wanted)
            raise ConfigError(
                f"{where}: the array '{key}' is shaped {list(array.shape)}, but the {side} '{name}' "
                f"is {rows} (-1: any size)"
            )


def _fits(shape: tuple[int, ...], wanted: tuple[int, ...]) -> bool:
    return len(shape) == len(wanted) and all(w in (-1, d) for d, w in zip(shape, wanted, strict=True))


def load_reference(
    file: Path | IO[bytes], source: str, name: str | None = None, where: str | None = None
) -> dict[str, AnyArray]:
    """A reference window: an .npz with "in:<name>" / "out:<name>" arrays (a sample file's layout),
    at most MAX_REFERENCE_BYTES unpacked (checked on the archive's sizes before any is read);
    `name`: what the errors call it (default the path); `where`: the errors' prefix (default the
    config's parameter)."""
    called = name if name is not None else str(file)
    where = where if where is not None else f"{source}: parameters '{DRIFT_REFERENCE}'"
    try:
        data = np.load(file, allow_pickle=False)
        if not isinstance(data, NpzFile):
            raise ValueError("not an .npz archive")
        with data:
            members = data.zip.infolist() if data.zip is not None else []
            unpacked = sum(int(member.file_size) for member in members)
            if unpacked > MAX_REFERENCE_BYTES:
                raise ConfigError(
                    f"{where}: {called} unpacks to {unpacked} bytes, past the limit {MAX_REFERENCE_BYTES}"
                )
            arrays = {key: data[key] for key in data.files if key.startswith(("in:", "out:"))}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        # numpy reads any file that is not an array as a pickle, and refuses it with advice to
        # load it unsafely: not what a junk file needs said.
        why = "not an .npz archive of arrays" if "pickle" in str(exc) else str(exc)
        raise ConfigError(f"{where}: cannot read {called}: {why}") from None
    if not arrays:
        raise ConfigError(f"{where}: {called} has no 'in:' or 'out:' arrays")
    return arrays


class ModelSampler:
    """One model version's sampling: which requests, the drop count, its drift monitor."""

    def __init__(
        self,
        name: str,
        version: int,
        policy: SamplePolicy,
        writer: SampleWriter,
        monitor: DriftMonitor,
        load_ns: int = 0,
        counts: SampleCounts | None = None,
    ) -> None:
        self.name = name
        self.version = str(version)
        # Its series' labels, the config's metric_tags with them: the version's other series
        # carry them, and the drift series had not (a join on `_team` lost them).
        self.labels = series_labels(name, self.version, policy.tags)
        # The version's counts across its loads (sample_counts.py): a retired sampler's chunks
        # written later still count where /metrics reads.
        self.counts = counts if counts is not None else SampleCounts(self.labels)
        # This load's id, in each chunk it writes: a reload starts a new drift reference, and
        # `sluiceway drift` scores the newest load's files (they had shared the old load's).
        self.load_ns = load_ns
        # Integer credit: n * numerator mod denominator; each wrap samples one request.
        self._numerator, self._denominator = ratio_fraction(policy.ratio)
        self._with_inputs = policy.with_inputs
        self._writer = writer
        self._monitor = monitor
        self._credit = 0
        self.offered = 0  # sampled requests offered to the writer by this load

    @property
    def directory(self) -> Path:
        return Path(self.name) / self.version

    @property
    def monitor(self) -> DriftMonitor:
        return self._monitor

    @property
    def dropped(self) -> int:
        """The version's sampled requests refused because the writer's queue was full (event loop)."""
        return self.counts.dropped

    @property
    def written(self) -> int:
        """... written to files (writer thread)."""
        return self.counts.written

    @property
    def lost_samples(self) -> int:
        """... whose file could not be written: disk full, permissions (writer thread)."""
        return self.counts.lost

    def wrote(self, samples: int) -> None:
        self.counts.written += samples

    def lost(self, samples: int) -> None:
        self.counts.lost += samples

    def offer(self, inputs: Mapping[str, AnyArray], outputs: Mapping[str, AnyArray]) -> None:
        """Called on the request path with a request's tensors: sample it or not; never blocks."""
        self._credit += self._numerator
        if self._credit < self._denominator:
            return
        self._credit -= self._denominator
        kept_inputs = inputs if self._with_inputs else None
        # Real sizes: an object array's nbytes is 8 a BYTES value, so 1 MiB values had passed the
        # queue's and the chunks' bounds as 8 bytes.
        nbytes = sum(stored_bytes(a) for a in outputs.values())
        if kept_inputs is not None:
            nbytes += sum(stored_bytes(a) for a in kept_inputs.values())
        self.offered += 1
        if not self._writer.put(Sample(self, kept_inputs, outputs, time.time_ns(), nbytes)):
            self.counts.dropped += 1


class SamplingRegistry:
    """The server's samplers (one per sampled model version) and their one writer thread."""

    def __init__(self, settings: ServerSettings) -> None:
        self._settings = settings
        self.root = settings.sample_dir or settings.cache_dir / "samples"
        self._writer: SampleWriter | None = None  # started with the first sampled model
        self._samplers: dict[tuple[str, str], ModelSampler] = {}
        self._totals = SampleTotals()  # the counters on /metrics, across loads
        self._lock = threading.Lock()

    def sampler_for(self, name: str, version: int, policy: SamplePolicy) -> ModelSampler | None:
        """The sampler of a version that was just loaded (replacing an earlier one), or None."""
        if policy.ratio <= 0.0:
            return None
        settings = self._settings
        with self._lock:
            if self._writer is None:
                self._writer = SampleWriter(
                    self.root,
                    settings.sample_max_bytes,
                    settings.sample_queue_size,
                    settings.sample_queue_bytes,
                )
            monitor = DriftMonitor(
                settings.drift_reference_samples,
                settings.drift_window_samples,
                policy.reference,
                policy.variable,
            )
            # The load's id: its wall-clock time, above the load it replaces (a clock step back
            # or two loads within one tick must not make the older look newer).
            replaced = self._samplers.get((name, str(version)))
            load_ns = time.time_ns() if replaced is None else max(time.time_ns(), replaced.load_ns + 1)
            labels = series_labels(name, str(version), policy.tags)
            counts = self._totals.loaded(name, str(version), labels)
            sampler = ModelSampler(name, version, policy, self._writer, monitor, load_ns, counts)
            self._samplers[(name, sampler.version)] = sampler
        # Its folder now, not at its first chunk: `sluiceway drift` tells a version not yet
        # sampled (exit 1, wait) from a name that is not sampled at all (exit 2).
        with contextlib.suppress(OSError):  # the writer says why when it cannot write there
            (self.root / name / sampler.version).mkdir(parents=True, exist_ok=True)
        return sampler

    def retire(self, sampler: ModelSampler | None) -> None:
        """Forget a retired version's sampler (unless a reload has replaced it already)."""
        if sampler is None:
            return
        with self._lock:
            if self._samplers.get((sampler.name, sampler.version)) is sampler:
                del self._samplers[(sampler.name, sampler.version)]
                self._totals.retired(sampler.name, sampler.version)

    def forget(self, name: str) -> None:
        """`name` left the server's index: its counters go (a later model of that name starts
        at 0, as a name never known)."""
        with self._lock:
            self._totals.forget(name)

    def sampler(self, name: str, version: str) -> ModelSampler | None:
        with self._lock:
            return self._samplers.get((name, version))

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every sample offered so far is written and fed to its monitor (off the loop)."""
        writer = self._writer
        return True if writer is None else writer.flush(timeout_s)

    def close(self, timeout_s: float) -> None:
        """Write what is queued (within the timeout) and stop the writer thread (off the loop)."""
        if self._writer is not None:
            self._writer.close(timeout_s)

    def gauge_values(self) -> Iterator[Gauge]:
        """(metric, labels, value) for the metrics endpoint: sample counts and drift scores."""
        with self._lock:
            samplers = list(self._samplers.values())
            records = self._totals.records()
        for counts in records:  # loaded versions and unloaded ones alike (sample_counts.py)
            labels = counts.labels
            yield "sluiceway_samples_written_total", labels, float(counts.written)
            yield "sluiceway_samples_dropped_total", labels, float(counts.dropped)
            yield "sluiceway_samples_lost_total", labels, float(counts.lost)
        for sampler in samplers:
            labels = sampler.labels
            for row in sampler.monitor.rows():
                series = {**labels, "kind": row.kind, "tensor": row.tensor, "feature": row.feature}
                yield "sluiceway_drift_psi", series, row.psi
                yield "sluiceway_drift_ks", series, row.ks
                yield "sluiceway_drift_drifted", series, 1.0 if row.drifted else 0.0
