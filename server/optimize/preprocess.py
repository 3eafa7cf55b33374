"""Child process entry: onnxruntime's quantization pre-processing (shape inference + optimization).

Run with its working directory set to a temporary one: on a shape-inference failure the
pre-processing can leave large files in the working directory (~90 MB for a ResNet-sized model).

    python -m server.optimize.preprocess INPUT OUTPUT [--skip-symbolic-shape]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.optimize.preprocess")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--skip-symbolic-shape", action="store_true")
    args = parser.parse_args(argv)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(args.input, args.output, skip_symbolic_shape=args.skip_symbolic_shape)
    return 0


if __name__ == "__main__":
    sys.exit(main())
