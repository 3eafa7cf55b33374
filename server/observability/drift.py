"""Drift: compare a recent window of sampled tensors with a reference window, per output and feature.

A `DriftMonitor` watches one model version. Each tensor becomes one or more series of numbers:
a 2-D tensor [rows, features] with at most `MAX_FEATURES` columns gives one series per column
(tabular inputs, scores); a 1-D tensor gives one series (feature ""); anything else (images,
wide logits) gives one pooled series of at most `MAX_FEATURES` evenly strided values per row
(feature "*"), as does a variable-length tensor (a -1 dim; its widths differ between requests). The
first `reference_rows` rows seen (or a reference file) are the reference; the rows after them fill a
sliding window of the latest `window_rows` rows.

Each series is scored with the population stability index (PSI, quantile bins from the reference)
and the two-sample Kolmogorov-Smirnov statistic, numpy only. A series has drifted when
PSI > `PSI_THRESHOLD` (0.2: the usual "significant shift"; 0.1-0.2 is moderate) or KS exceeds its
critical value, `c * sqrt((n + m) / (n * m))`. The KS tests of one version share one false-alarm
rate, alpha = 0.05 (Bonferroni: each of its k series is tested at 0.05 / k, c = sqrt(-ln(0.05 /
(2k)) / 2), 1.358 for one): tested alone at 0.05, about one series in twenty of a model with many
features was flagged with nothing changed. A pooled series counts rows, not values, as its sample
sizes: the values of one row (an image's pixels) are not independent draws.

Fed by the sample writer's thread; scored on demand (a metrics scrape, the CLI), cached until new
rows arrive. Thread-safe.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]

PSI_THRESHOLD = 0.2
PSI_BINS = 10
KS_ALPHA = 0.05  # the false-alarm rate of one version's KS tests together
MAX_FEATURES = 256
MIN_RECENT_ROWS = 20  # fewer recent rows than this: not scored yet
_EPS = 1e-4  # floor of a bin's share in PSI, so empty bins do not divide by zero
INPUT, OUTPUT = "input", "output"
POOLED = "*"


def psi(reference: Floats, recent: Floats, bins: int = PSI_BINS) -> float:
    """Population stability index of `recent` against `reference`, over the reference's quantile bins."""
    # Right-closed bins between the reference's deciles, plus one below its minimum and one above
    # its maximum: a constant reference still tells values below, equal and above apart.
    quantiles = np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:])
    edges = np.unique(np.concatenate([[np.nextafter(reference.min(), -np.inf)], quantiles]))
    expected = np.bincount(np.searchsorted(edges, reference, side="left"), minlength=edges.size + 1)
    actual = np.bincount(np.searchsorted(edges, recent, side="left"), minlength=edges.size + 1)
    e = np.clip(expected / reference.size, _EPS, None)
    a = np.clip(actual / recent.size, _EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistic(reference: Floats, recent: Floats) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(reference), np.sort(recent)
    values = np.concatenate([a, b])
    gap = (
        np.searchsorted(a, values, side="right") / a.size - np.searchsorted(b, values, side="right") / b.size
    )
    return float(np.max(np.abs(gap)))


def ks_threshold(n: int, m: int, tests: int = 1) -> float:
    """KS critical value for samples of n and m independent values, one of `tests` tests that
    together keep a false-alarm rate of KS_ALPHA (asymptotic: c(a) = sqrt(-ln(a / 2) / 2))."""
    c = math.sqrt(-math.log(KS_ALPHA / (2 * max(1, tests))) / 2)
    return c * math.sqrt((n + m) / (n * m))


@dataclass(frozen=True)
class DriftRow:
    """One series' scores: the drift table's row and the metrics' labels."""

    kind: str  # INPUT or OUTPUT
    tensor: str
    feature: str  # column index, "" for a 1-D tensor, "*" for a pooled one
    psi: float
    ks: float
    ks_threshold: float
    n_reference: int  # values (rows for a column series)
    n_recent: int

    @property
    def drifted(self) -> bool:
        return self.psi > PSI_THRESHOLD or self.ks > self.ks_threshold


@dataclass(frozen=True)
class Series:
    """The values one row of the table is scored on (also what the CLI plots)."""

    kind: str
    tensor: str
    feature: str
    reference: Floats
    recent: Floats
    rows: tuple[int, int] | None = None  # a pooled series' rows (reference, recent): its KS sizes


def numeric(array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    """BF16 (ml_dtypes, numpy kind 'V') widened to FP32, exactly; any other array as it is. Drift had
    skipped BF16 tensors, and sample files stored them as raw 2-byte voids."""
    if array.dtype.kind == "V" and array.dtype.name == "bfloat16":
        return array.astype(np.float32)
    return array


def _matrix(array: npt.NDArray[np.generic]) -> tuple[Floats, bool] | None:
    """[rows, k] float64 values to watch and whether they are pooled; None for non-numeric tensors."""
    array = numeric(array)
    if array.dtype.kind not in "biuf" or array.size == 0:
        return None
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim == 1:
        return array.astype(np.float64).reshape(-1, 1), False
    if array.ndim == 2 and array.shape[1] <= MAX_FEATURES:
        return array.astype(np.float64), False
    flat = array.reshape(array.shape[0], -1)
    stride = -(-flat.shape[1] // MAX_FEATURES)
    return flat[:, ::stride].astype(np.float64), True


class _Tensor:
    """One tensor's reference rows (kept) and recent rows (a sliding window), as [rows, k] chunks
    (k differs between chunks of a variable-length tensor)."""

    def __init__(self, kind: str, name: str, ndim: int, pooled: bool) -> None:
        self.kind, self.name, self.ndim, self.pooled = kind, name, ndim, pooled
        self.reference: list[Floats] = []
        self.reference_rows = 0
        self.reference_fixed = False  # from a file: never filled from samples
        self.recent: deque[Floats] = deque()
        self.recent_rows = 0

    def add(self, rows: Floats, reference_rows: int, window_rows: int) -> None:
        if not self.reference_fixed and self.reference_rows < reference_rows:
            take = rows[: reference_rows - self.reference_rows]
            self.reference.append(take)
            self.reference_rows += take.shape[0]
            rows = rows[take.shape[0] :]
        if rows.shape[0] == 0:
            return
        self.recent.append(rows)
        self.recent_rows += rows.shape[0]
        while self.recent_rows - self.recent[0].shape[0] >= window_rows:
            self.recent_rows -= self.recent.popleft().shape[0]

    def series(self, window_rows: int) -> Iterator[Series]:
        if not self.reference or not self.recent:
            return
        recent = _last_rows(list(self.recent), window_rows)
        widths = {chunk.shape[1] for chunk in (*self.reference, *recent)}
        if self.pooled or len(widths) > 1:
            # Pooled by rows: a variable-length tensor's columns are no features (column 0 of
            # 8-long and 12-long rows mixed), and its windows count requests' rows, not values.
            rows = (sum(c.shape[0] for c in self.reference), sum(c.shape[0] for c in recent))
            yield Series(self.kind, self.name, POOLED, _pool(self.reference), _pool(recent), rows)
            return
        ref, last = np.concatenate(self.reference), np.concatenate(recent)
        for column in range(ref.shape[1]):
            feature = "" if self.ndim == 1 else str(column)
            yield Series(self.kind, self.name, feature, _finite(ref[:, column]), _finite(last[:, column]))


def _last_rows(chunks: list[Floats], rows: int) -> list[Floats]:
    """The chunks' last `rows` rows, as chunks (the first one cut)."""
    kept: list[Floats] = []
    for chunk in reversed(chunks):
        if rows <= 0:
            break
        kept.append(chunk[-rows:])
        rows -= kept[-1].shape[0]
    return kept[::-1]


def _pool(chunks: list[Floats]) -> Floats:
    return _finite(np.concatenate([chunk.ravel() for chunk in chunks]))


def _finite(values: Floats) -> Floats:
    return values[np.isfinite(values)]


class DriftMonitor:
    """Reference and recent windows for every tensor of one model version."""

    def __init__(
        self,
        reference_rows: int,
        window_rows: int,
        reference: Mapping[str, npt.NDArray[np.generic]] | None = None,
        variable: frozenset[str] = frozenset(),
    ) -> None:
        """`reference`: arrays keyed "in:<name>" / "out:<name>" (a sample file's layout) that
        replace the first `reference_rows` sampled rows for those tensors. `variable`: the keys
        of tensors whose shape past the rows varies (a -1 dim): pooled from their first rows (a
        tensor whose widths differ between requests is pooled when they do)."""
        self.reference_rows = reference_rows
        self.window_rows = window_rows
        self.variable = variable
        self._tensors: dict[tuple[str, str], _Tensor] = {}
        self._lock = threading.Lock()
        self._generation = 0  # bumped by every feed; scores are cached per generation
        self._scored: tuple[int, list[DriftRow]] = (-1, [])
        for key, array in (reference or {}).items():
            kind, _, name = key.partition(":")
            tensor = self._tensor(INPUT if kind == "in" else OUTPUT, name, array)
            if tensor is not None:
                matrix = _matrix(array)
                assert matrix is not None
                tensor.reference, tensor.reference_rows = [matrix[0]], matrix[0].shape[0]
                tensor.reference_fixed = True

    def _tensor(self, kind: str, name: str, array: npt.NDArray[np.generic]) -> _Tensor | None:
        tensor = self._tensors.get((kind, name))
        if tensor is None:
            matrix = _matrix(array)
            if matrix is None:
                return None
            pooled = matrix[1] or f"{'in' if kind == INPUT else 'out'}:{name}" in self.variable
            tensor = self._tensors[(kind, name)] = _Tensor(kind, name, array.ndim, pooled)
        return tensor

    def feed(
        self,
        inputs: Mapping[str, npt.NDArray[np.generic]] | None,
        outputs: Mapping[str, npt.NDArray[np.generic]],
    ) -> None:
        """Add one chunk of sampled rows (inputs may be None: outputs-only sampling)."""
        with self._lock:
            for kind, tensors in ((INPUT, inputs or {}), (OUTPUT, outputs)):
                for name, array in tensors.items():
                    tensor = self._tensor(kind, name, array)
                    matrix = None if tensor is None else _matrix(array)
                    if tensor is not None and matrix is not None:
                        tensor.add(matrix[0], self.reference_rows, self.window_rows)
            self._generation += 1

    def scorable(self) -> bool:
        """Whether any numeric tensor was seen (BYTES and empty tensors are not scored)."""
        with self._lock:
            return bool(self._tensors)

    def series(self) -> list[Series]:
        """The values each row is scored on: tensors with a full reference and enough recent rows."""
        with self._lock:
            ready = [
                t
                for t in self._tensors.values()
                if (t.reference_fixed or t.reference_rows >= self.reference_rows)
                and t.recent_rows >= min(MIN_RECENT_ROWS, self.window_rows)
            ]
            return [s for t in ready for s in t.series(self.window_rows)]

    def rows(self) -> list[DriftRow]:
        """PSI and KS per series (cached until the next feed)."""
        generation = self._generation
        if self._scored[0] == generation:
            return self._scored[1]
        rows = score_all(self.series())
        self._scored = (generation, rows)
        return rows


def score_all(series: list[Series]) -> list[DriftRow]:
    """Every series with values on both sides, each tested as one of them all (ks_threshold)."""
    scored = [s for s in series if s.reference.size and s.recent.size]  # all-NaN ones have none
    return [score(s, tests=len(scored)) for s in scored]


def score(series: Series, tests: int = 1) -> DriftRow:
    n, m = series.reference.size, series.recent.size
    sizes = (n, m) if series.rows is None else (min(n, series.rows[0]), min(m, series.rows[1]))
    return DriftRow(
        kind=series.kind,
        tensor=series.tensor,
        feature=series.feature,
        psi=psi(series.reference, series.recent),
        ks=ks_statistic(series.reference, series.recent),
        ks_threshold=ks_threshold(*sizes, tests=tests),
        n_reference=n,
        n_recent=m,
    )
