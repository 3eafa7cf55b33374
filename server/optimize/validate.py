"""The original and the optimized model side by side: outputs on the same inputs, speed, size.

Accuracy drop, the figure `--max-accuracy-drop` bounds, is one number in [0, 1]:
- `top1`: the share of validation rows whose arg-max class differs between the two models (top-1
  disagreement), over every 2-D output [N, classes];
- `cosine`: the larger of 1 - the smallest cosine similarity between a row of the original's
  output and the same row of the optimized one, and the largest relative change of a row's norm
  (|1 - |b| / |a||), over every output (rows flattened), capped at 1. Cosine alone is blind to
  scale: an output of one value a row only shows its sign, and a model whose outputs all halved
  (FP16 conversion clamping large weights) scored a drop of 0 and was published.
`auto` picks `top1` when every output is 2-D with at least 2 columns (a classifier), else `cosine`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from server.optimize.data import Batch, InputSpec, OptimizeError, repeat_rows

Measure = Literal["auto", "top1", "cosine"]


@dataclass(frozen=True)
class OutputComparison:
    name: str
    max_abs: float
    mean_abs: float
    min_cosine: float
    mean_cosine: float
    top1_agreement: float | None  # None: not a 2-D [N, classes] output
    max_norm_change: float = 0.0  # the largest |1 - |optimized row| / |original row||, capped at 1


@dataclass(frozen=True)
class SpeedRow:
    batch: int
    original_ms: float  # median latency of one run
    optimized_ms: float
    repetitions: int

    @property
    def speedup(self) -> float:
        return self.original_ms / self.optimized_ms if self.optimized_ms > 0 else float("inf")


@dataclass(frozen=True)
class Validation:
    rows: int
    outputs: list[OutputComparison]
    speed: list[SpeedRow]
    original_bytes: int
    optimized_bytes: int
    measure: Literal["top1", "cosine"]
    accuracy_drop: float


def session(path: Path, threads: int = 0) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own untyped errors
        raise OptimizeError(f"onnxruntime cannot load {path.name}: {err}") from None


def _run(sess: object, batch: Batch) -> list[np.ndarray]:
    try:
        outputs: list[np.ndarray] = sess.run(None, batch)  # type: ignore[attr-defined]
    except Exception as err:  # onnxruntime's own untyped errors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OptimizeError(
            f"onnxruntime failed to run the model on the validation inputs: {first} (generated "
            "inputs may be out of the model's range, e.g. token ids past a vocabulary: pass "
            "--validation-data)"
        ) from None
    return outputs


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    # Two zero rows are the same row; one zero row against another is no similarity at all.
    same_zero = (norms == 0) & np.all(a == b, axis=1)
    cos: np.ndarray = np.where(
        norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(same_zero, 1.0, 0.0)
    )
    return cos


def _norm_changes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|1 - |b| / |a|| per row, capped at 1 (a zero row against a non-zero one: 1)."""
    na = np.linalg.norm(a.reshape(len(a), -1).astype(np.float64), axis=1)
    nb = np.linalg.norm(b.reshape(len(b), -1).astype(np.float64), axis=1)
    change = np.abs(1.0 - nb / np.where(na > 0, na, 1.0))
    change = np.where(na > 0, change, np.where(nb > 0, 1.0, 0.0))
    return np.minimum(np.nan_to_num(change, nan=1.0), 1.0)


@dataclass
class _Tally:
    """Differences for one output, added up batch by batch (batches may differ in non-batch shape)."""

    max_abs: float = 0.0
    abs_sum: float = 0.0
    elements: int = 0
    cosines: list[np.ndarray] = field(default_factory=list)
    agree: int = 0
    rows: int = 0
    classifier: bool = True
    norm_change: float = 0.0

    def add(self, name: str, original: np.ndarray, optimized: np.ndarray) -> None:
        if original.shape != optimized.shape:
            raise OptimizeError(
                f"output '{name}': shape {optimized.shape} differs from the original's {original.shape}"
            )
        a = original.reshape(1, -1) if original.ndim == 0 else original
        b = optimized.reshape(1, -1) if optimized.ndim == 0 else optimized
        if a.dtype.kind in "OSUb":  # strings or booleans: rows equal or not (float math failed)
            same = np.all(a.reshape(len(a), -1) == b.reshape(len(b), -1), axis=1).astype(np.float64)
            self.cosines.append(same)
            self.norm_change = max(self.norm_change, float(1.0 - same.min(initial=1.0)))
            self.rows += len(a)
            self.classifier = False
            return
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        self.abs_sum += float(diff.sum())
        self.elements += diff.size
        self.cosines.append(_cosines(a, b))
        if a.size:
            self.norm_change = max(self.norm_change, float(_norm_changes(a, b).max(initial=0.0)))
        self.rows += len(a)
        self.classifier = self.classifier and a.ndim == 2 and a.shape[1] >= 2
        if self.classifier:
            self.agree += int(np.sum(a.argmax(axis=1) == b.argmax(axis=1)))

    def result(self, name: str) -> OutputComparison:
        cos = np.concatenate(self.cosines) if self.cosines else np.ones(1)
        return OutputComparison(
            name=name,
            max_abs=self.max_abs,
            mean_abs=self.abs_sum / self.elements if self.elements else 0.0,
            min_cosine=float(cos.min()),
            mean_cosine=float(cos.mean()),
            top1_agreement=self.agree / self.rows if self.classifier and self.rows else None,
            max_norm_change=self.norm_change,
        )


def compare_outputs(original: Path, optimized: Path, batches: list[Batch]) -> list[OutputComparison]:
    """Both models on every batch; differences per output over all rows."""
    from tqdm import tqdm

    first, second = session(original), session(optimized)
    names = [o.name for o in first.get_outputs()]  # type: ignore[attr-defined]
    tallies = {name: _Tally() for name in names}
    for batch in tqdm(batches, desc="validating", unit="batch", disable=None, leave=False):
        for name, a, b in zip(names, _run(first, batch), _run(second, batch), strict=True):
            tallies[name].add(name, np.asarray(a), np.asarray(b))
    return [tally.result(name) for name, tally in tallies.items()]


def resolve_measure(measure: Measure, outputs: Sequence[OutputComparison]) -> Literal["top1", "cosine"]:
    if measure == "auto":
        return "top1" if outputs and all(o.top1_agreement is not None for o in outputs) else "cosine"
    if measure == "top1" and not any(o.top1_agreement is not None for o in outputs):
        raise OptimizeError("--accuracy-measure top1 needs a 2-D [N, classes] output; use cosine")
    return measure


def accuracy_drop(measure: Literal["top1", "cosine"], outputs: Sequence[OutputComparison]) -> float:
    """The figure --max-accuracy-drop bounds (module docstring); the worst over the outputs."""
    if measure == "top1":
        return max(1.0 - o.top1_agreement for o in outputs if o.top1_agreement is not None)
    return max(min(1.0, max(0.0, 1.0 - o.min_cosine, o.max_norm_change)) for o in outputs)


def _median_ms(sess: object, batch: Batch, repetitions: int, budget_s: float) -> tuple[float, int]:
    _run(sess, batch)  # warm-up: first runs allocate
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < repetitions and (not times or time.perf_counter() < deadline):
        start = time.perf_counter()
        _run(sess, batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, len(times)


def measure_speed(
    original: Path,
    optimized: Path,
    specs: list[InputSpec],
    sample: Batch,
    batch_sizes: Sequence[int],
    repetitions: int,
    budget_s: float,
) -> list[SpeedRow]:
    """Median latency per batch size, at most `repetitions` runs or `budget_s` seconds per model and size
    (at least one run). A model whose first dimension is fixed is measured at that size only."""
    from tqdm import tqdm

    fixed = {s.dims[0] for s in specs if not s.batched and s.dims and s.dims[0] is not None}
    sizes = sorted(fixed) if fixed else list(batch_sizes)
    first, second = session(original), session(optimized)
    rows = []
    for size in tqdm(sizes, desc="timing", unit="batch size", disable=None, leave=False):
        batch = repeat_rows(sample, size) if not fixed else sample
        a_ms, a_n = _median_ms(first, batch, repetitions, budget_s)
        b_ms, b_n = _median_ms(second, batch, repetitions, budget_s)
        rows.append(SpeedRow(batch=size, original_ms=a_ms, optimized_ms=b_ms, repetitions=min(a_n, b_n)))
    return rows
