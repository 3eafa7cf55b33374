"""`sluiceway optimize`: the subcommand's flags and the steps in order.

Importing this module is cheap (argparse only): server/cli.py adds the subcommand from it, and the
heavy libraries load only when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protos import model_config_pb2 as mc
    from server.optimize.data import InputSpec
    from server.optimize.publish import Source
    from server.optimize.validate import Validation

EXIT_REFUSED = 1
EXIT_USAGE = 2
DATA_BATCH = 8  # rows per calibration and validation batch


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': comma-separated positive integers") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"'{text}': comma-separated positive integers")
    return sizes


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `optimize` subcommand and its flags."""
    p = commands.add_parser(
        "optimize",
        help="INT8/FP16 version of a model, checked against the original, published as its next version",
        description="Quantize (INT8 dynamic or static) or convert (FP16) an ONNX model, compare it with the "
        "original (accuracy, speed at several batch sizes, size), and publish it as the next version of "
        "--model in --repository unless the accuracy drop exceeds --max-accuracy-drop. Exit 0: done; "
        "1: refused; 2: bad input.",
    )
    p.add_argument("source", type=Path, help="MODEL.onnx, or a model directory (its newest version)")
    p.add_argument("--source-version", type=int, help="version to start from (default: the newest served)")
    p.add_argument("--repository", type=Path, required=True, help="Triton-layout repository to publish into")
    p.add_argument("--model", required=True, help="model name in the repository")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--int8", choices=("dynamic", "static"), help="INT8 quantization (static: calibrated)")
    kind.add_argument(
        "--fp16", action="store_true", help="FP16 weights and compute (FP32 inputs/outputs kept)"
    )
    p.add_argument("--per-channel", action="store_true", help="INT8 weights quantized per output channel")
    p.add_argument(
        "--int8-activations",
        choices=("uint8", "int8"),
        default=None,  # unset, so that naming it without --int8 static is refused (uint8 applies)
        help="static INT8 activation type (default uint8: the fast path on x86 CPUs)",
    )
    p.add_argument("--calibration-data", type=Path, help="dir of .npy/.npz inputs for --int8 static")
    p.add_argument("--validation-data", type=Path, help="dir of .npy/.npz inputs to compare the models on")
    p.add_argument("--calibration-rows", type=int, default=64, help="rows used for calibration (default 64)")
    p.add_argument("--validation-rows", type=int, default=64, help="rows compared (default 64)")
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.01,
        help="refuse to publish past this drop (default 0.01; negative: no limit). Classifiers: top-1 "
        "disagreement rate; otherwise the larger of 1 - min cosine similarity and the largest row error "
        "over the output's RMS row norm (see --accuracy-measure)",
    )
    p.add_argument(
        "--accuracy-measure",
        choices=("auto", "top1", "cosine"),
        default="auto",
        help="auto: top1 when every output is [N, classes], else cosine",
    )
    p.add_argument("--batch-sizes", type=_batch_sizes, default=[1, 8, 32], help="timed batch sizes (1,8,32)")
    p.add_argument("--repetitions", type=int, default=20, help="most timed runs per model and size (20)")
    p.add_argument("--time-budget-s", type=float, default=3.0, help="most seconds per model and size (3)")
    p.add_argument(
        "--offline-optimize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="save onnxruntime's optimized graph (default on; off for a model served on another provider)",
    )
    p.add_argument("--publish", action=argparse.BooleanOptionalAction, default=True, help="write the version")
    p.add_argument(
        "--report-dir", type=Path, help="where report.md/.html go (default ./optimize-reports/...)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for generated inputs")


def _check(args: argparse.Namespace) -> str | None:
    if args.per_channel and not args.int8:
        return "--per-channel applies to --int8"
    if args.calibration_data is not None and args.int8 != "static":
        return "--calibration-data applies to --int8 static"
    # Only static INT8 calibrates activations; with dynamic the flag would be silently ignored.
    if args.int8_activations is not None and args.int8 != "static":
        return "--int8-activations applies to --int8 static"
    # NaN compares false with every drop, so it had passed any result; inf is no documented "no limit".
    if not math.isfinite(args.max_accuracy_drop):
        return f"--max-accuracy-drop {args.max_accuracy_drop}: a finite number (negative: no limit)"
    if args.calibration_rows < 1 or args.validation_rows < 1 or args.repetitions < 1:
        return "--calibration-rows, --validation-rows and --repetitions must be at least 1"
    return None


def _slug(args: argparse.Namespace) -> str:
    parts = [args.model]
    if args.int8:
        parts += ["int8", args.int8] + (["per-channel"] if args.per_channel else [])
    parts += ["fp16"] if args.fp16 else []
    return "-".join(parts)


def run(args: argparse.Namespace) -> int:
    """Run the command; the exit status."""
    from server.optimize.data import OptimizeError

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="sluiceway optimize: %(levelname)s: %(message)s")
    problem = _check(args)
    if problem:
        print(f"sluiceway optimize: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _run(args)
    except OptimizeError as err:
        print(f"sluiceway optimize: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # a folder it cannot write, a full disk: the message, not a traceback
        print(f"sluiceway optimize: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    from server.optimize import data, publish, quantize, report

    source = publish.resolve_source(args.source, args.source_version)
    reports = args.report_dir or default_report_dir(args)
    try:  # before anything is published: an unwritable folder had failed after it, saying "refused"
        reports.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=reports):
            pass
    except OSError as err:
        raise data.OptimizeError(
            f"--report-dir {reports}: cannot write there ({err.strerror or err})"
        ) from None
    specs = data.input_specs(source.model_file)
    if args.int8 or args.fp16:
        quantize.refuse_optimized(source.model_file, int8=bool(args.int8))
    serving = publish.serving_config(args.repository, args.model, source)
    # Validation batches no larger than the server takes (a request past max_batch_size is refused).
    rows = min(DATA_BATCH, serving.max_batch_size) if serving.max_batch_size > 0 else DATA_BATCH
    recipe = quantize.Recipe(
        int8=args.int8,
        per_channel=args.per_channel,
        activations=args.int8_activations or "uint8",
        fp16=args.fp16,
        offline_optimize=args.offline_optimize,
        per_row=args.int8 == "dynamic" and quantize.serves_per_row(serving),
        batch_rows=rows,
    )
    limit = args.max_accuracy_drop if args.max_accuracy_drop >= 0 else None
    with tempfile.TemporaryDirectory(prefix="sluiceway-optimize-") as scratch:
        calibration = None
        if args.int8 == "static":
            calibration = data.obtain_batches(
                args.calibration_data, specs, purpose="calibration", rows=args.calibration_rows,
                batch_size=DATA_BATCH, seed=args.seed,
            )  # fmt: skip
        optimized = quantize.build(source.model_file, Path(scratch), recipe, calibration)
        # Measured as the config serves it: dynamic quantization per row where the server batches
        # requests, else per batch, on batches it may serve (the file is published as built).
        measured = quantize.as_served_batched(optimized, Path(scratch)) if recipe.per_row else optimized
        result = _validate(args, source.model_file, measured, specs, optimized, rows)
        code, verdict = _decide(args, limit, result, source, optimized, serving)
    inputs = str(args.validation_data) if args.validation_data else "generated from metadata"
    summary = report.Summary(args.model, str(source.model_file), recipe.describe(), inputs, limit, verdict)
    report.print_table(summary, result)
    written = report.write_reports(summary, result, reports)
    print("report: " + ", ".join(str(p) for p in written))
    return code


def default_report_dir(args: argparse.Namespace) -> Path:
    """./optimize-reports/<slug>, unless that is inside the repository: a server then took the
    folder for a model without versions (UNAVAILABLE, ServerReady false). Then beside it."""
    default = Path("optimize-reports") / _slug(args)
    repository = getattr(args, "repository", None)
    if repository is not None:
        root = Path(repository).resolve()
        if default.resolve().is_relative_to(root):
            return root.parent / "optimize-reports" / _slug(args)
    return default


def _validate(
    args: argparse.Namespace,
    original: Path,
    optimized: Path,
    specs: list[InputSpec],
    published: Path,
    batch_rows: int,
) -> Validation:
    """Outputs compared on the validation inputs (batches of `batch_rows`), speed, and the size of the
    file `published`."""
    from server.optimize import data, validate
    from server.optimize.quantize import model_bytes

    batches = data.obtain_batches(
        args.validation_data, specs, purpose="validation", rows=args.validation_rows,
        batch_size=batch_rows, seed=args.seed + 1,
    )  # fmt: skip
    outputs = validate.compare_outputs(original, optimized, batches)
    measure = validate.resolve_measure(args.accuracy_measure, outputs)
    speed = validate.measure_speed(
        original, optimized, specs, batches[0], args.batch_sizes, args.repetitions, args.time_budget_s
    )
    return validate.Validation(
        rows=sum(len(next(iter(b.values()))) for b in batches),
        outputs=outputs,
        speed=speed,
        original_bytes=model_bytes(original),
        optimized_bytes=model_bytes(published),
        measure=measure,
        accuracy_drop=validate.accuracy_drop(measure, outputs),
    )


def _decide(
    args: argparse.Namespace,
    limit: float | None,
    result: Validation,
    source: Source,
    optimized: Path,
    serving: mc.ModelConfig,
) -> tuple[int, str]:
    """Refuse, skip or publish (under `serving`, the config the server will serve it under); the
    exit status, and the sentence that says what happened."""
    from server.optimize.publish import publish

    drop = result.accuracy_drop
    if limit is not None and drop > limit:
        return EXIT_REFUSED, (
            f"REFUSED: accuracy drop {drop:.4g} exceeds --max-accuracy-drop {limit:.4g} by "
            f"{drop - limit:.4g}; nothing was published"
        )
    if not args.publish:
        return 0, "not published (--no-publish)"
    done = publish(args.repository, args.model, source, optimized, serving)
    verdict = f"published as version {done.version} at {done.directory}"
    if done.wrote_original:
        verdict += " (the original went in as version 1)"
    if not done.loads:  # a safety net: the checks before writing had let it through
        return EXIT_USAGE, f"{verdict}, but {done.note}: fix the model before serving it"
    return 0, verdict + f"; {done.note}. A running server loads it on RepositoryModelLoad or a restart."
