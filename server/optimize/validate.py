"""The original and the optimized model side by side: outputs on the same inputs, speed, size.

Accuracy drop, the figure `--max-accuracy-drop` bounds, is one number in [0, 1]:
- `top1`: the share of validation rows whose arg-max class differs between the two models (top-1
  disagreement), over every 2-D output [N, classes];
- `cosine`: the larger of 1 - the smallest cosine similarity between a row of the original's
  output and the same row of the optimized one, and the largest relative error: the largest
  |b_i - a_i| (a row's difference, flattened) over the RMS row norm of the original's output,
  sqrt(mean_i |a_i|^2) over the validation rows; over every output, capped at 1. Cosine alone is
  blind to scale: an output of one value a row only shows its sign, and a model whose outputs all
  halved (FP16 conversion clamping large weights) scored a drop of 0 and was published. The error
  is judged against the output's typical size, not the row's own: a row's |1 - |b_i| / |a_i||
  made a score of 0.059 that became 0.088 a drop of 0.50, an error of 4% of a typical score.
An optimized output that holds NaN or infinity where the original's does not is a drop of 1.
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
    max_relative_error: float = 0.0  # the largest row error over the RMS row norm, capped at 1
    nonfinite_rows: int = 0  # rows where the optimized output holds NaN/inf and the original's not


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


def _row_norms(a: np.ndarray) -> np.ndarray:
    norms: np.ndarray = np.linalg.norm(a.reshape(len(a), -1).astype(np.float64), axis=1)
    return norms


def _nonfinite_rows(a: np.ndarray) -> np.ndarray:
    bad: np.ndarray = ~np.all(np.isfinite(a.reshape(len(a), -1)), axis=1)
    return bad


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
    max_error: float = 0.0  # the largest row norm of the difference
    square_norms: float = 0.0  # the original's row norms squared, summed (for the RMS)
    unequal: float = 0.0  # strings or booleans: 1 when a row differs
    nonfinite: int = 0

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
            self.unequal = max(self.unequal, float(1.0 - same.min(initial=1.0)))
            self.rows += len(a)
            self.classifier = False
            return
        if _nonfinite_rows(a).any():  # the inputs' fault or the model's: nothing to compare against
            raise OptimizeError(
                f"the original model's output '{name}' holds NaN or infinity on "
                f"{int(_nonfinite_rows(a).sum())} validation rows: nothing to compare against "
                "(check the validation inputs)"
            )
        self.rows += len(a)
        self.classifier = self.classifier and a.ndim == 2 and a.shape[1] >= 2
        if self.classifier:  # a NaN row's arg-max is its first NaN: a disagreement, as served
            self.agree += int(np.sum(a.argmax(axis=1) == b.argmax(axis=1)))
        bad = _nonfinite_rows(b)
        self.nonfinite += int(bad.sum())
        a, b = a[~bad], b[~bad]  # the other figures over the rows that are numbers
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        self.abs_sum += float(diff.sum())
        self.elements += diff.size
        self.cosines.append(_cosines(a, b))
        if a.size:
            self.max_error = max(self.max_error, float(_row_norms(diff).max(initial=0.0)))
            self.square_norms += float(np.sum(_row_norms(a) ** 2))

    def relative_error(self) -> float:
        """The largest row error over the RMS row norm of the original's output, capped at 1."""
        finite_rows = self.rows - self.nonfinite
        rms = float(np.sqrt(self.square_norms / finite_rows)) if finite_rows else 0.0
        error = self.max_error / rms if rms > 0 else (1.0 if self.max_error > 0 else 0.0)
        return min(1.0, max(error, self.unequal))

    def result(self, name: str) -> OutputComparison:
        cos = np.concatenate(self.cosines) if self.cosines else np.ones(1)
        return OutputComparison(
            name=name,
            max_abs=self.max_abs,
            mean_abs=self.abs_sum / self.elements if self.elements else 0.0,
            min_cosine=float(cos.min(initial=1.0)),
            mean_cosine=float(cos.mean()) if cos.size else 1.0,
            top1_agreement=self.agree / self.rows if self.classifier and self.rows else None,
            max_relative_error=self.relative_error(),
            nonfinite_rows=self.nonfinite,
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
    if any(o.nonfinite_rows for o in outputs):
        return 1.0
    if measure == "top1":
        return max(1.0 - o.top1_agreement for o in outputs if o.top1_agreement is not None)
    return max(min(1.0, max(0.0, 1.0 - o.min_cosine, o.max_relative_error)) for o in outputs)


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
