"""Long fuzz runs of the decode-and-validate target (tests/support/fuzz_target.py), for
scripts/fuzz.sh: `python -m tests.support.fuzz_main SECONDS [bytes|structured]`.

- With atheris (coverage-guided, libFuzzer): `bytes` feeds raw bytes to the target, starting from
  a corpus of near-valid requests; `structured` lets atheris drive the near-valid request strategy
  (hypothesis' `fuzz_one_input`), which keeps every input a well-formed request. Crashing inputs
  are written to .cache/fuzz/.
- Without atheris: hypothesis runs the same two targets again and again until the time is up.

Exits 1 with the failing input on the first failure, 0 when the time ran out without one.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

OUT = Path(".cache/fuzz")


def _targets() -> tuple[Callable[[bytes], None], Callable[..., None]]:
    """(bytes target, structured hypothesis test), importing the server's modules now (atheris
    instruments what is imported inside its `instrument_imports` block)."""
    from tests.support.fuzz_target import check_bytes, check_request, fuzz_models
    from tests.support.request_strategies import near_valid_requests

    models = fuzz_models()

    def raw(data: bytes) -> None:
        check_bytes(data, models)

    @given(data=st.data())
    def structured(data: st.DataObject) -> None:
        model = models[data.draw(st.sampled_from(sorted(models)))]
        request = data.draw(near_valid_requests(model.signature, max_faults=3))
        check_request(request, model)
        check_bytes(request.SerializeToString(), models)

    return raw, structured


def _seed_corpus() -> Path:
    """A corpus of serialized near-valid requests (no faults), so atheris starts past the parser."""
    from server.protocol.validate import Signature
    from tests.support.fuzz_target import fuzz_configs
    from tests.support.request_strategies import near_valid_requests

    corpus = OUT / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    signatures = [Signature.from_config(c) for c in fuzz_configs()]

    @settings(max_examples=200, database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def write_seed(data: st.DataObject) -> None:
        request = data.draw(near_valid_requests(data.draw(st.sampled_from(signatures)), max_faults=0))
        payload = request.SerializeToString()
        (corpus / f"seed-{hashlib.sha1(payload).hexdigest()}").write_bytes(payload)

    write_seed()
    return corpus


def run_atheris(seconds: int, mode: str) -> int:
    import atheris

    with atheris.instrument_imports(include=["server", "protos", "batcher"]):
        raw, structured = _targets()
    target = raw if mode == "bytes" else structured.hypothesis.fuzz_one_input  # type: ignore[attr-defined]
    args = [sys.argv[0], f"-max_total_time={seconds}", "-timeout=20", "-rss_limit_mb=4096",
            f"-artifact_prefix={OUT}/"]  # fmt: skip
    if mode == "bytes":
        args.append(str(_seed_corpus()))
    atheris.Setup(args, target)
    atheris.Fuzz()  # exits the process: 0 at the time limit, 1 with a crash (and its input saved)
    return 0


def run_hypothesis(seconds: int, mode: str) -> int:
    raw, structured = _targets()

    @settings(max_examples=2000, database=None)
    @given(data=st.binary(max_size=1024))
    def raw_test(data: bytes) -> None:
        raw(data)

    test = raw_test if mode == "bytes" else settings(max_examples=500, database=None)(structured)
    end = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < end:
        test()  # raises with the falsifying example on failure
        rounds += 1
    print(f"hypothesis: {rounds} rounds of the {mode} target in {seconds} s, no failure")
    return 0


def main(argv: list[str]) -> int:
    seconds = int(argv[1]) if len(argv) > 1 else 600
    mode = argv[2] if len(argv) > 2 else "bytes"
    if mode not in ("bytes", "structured"):
        sys.exit(f"mode must be bytes or structured, got {mode!r}")
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed: fuzzing with hypothesis instead")
        return run_hypothesis(seconds, mode)
    return run_atheris(seconds, mode)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
