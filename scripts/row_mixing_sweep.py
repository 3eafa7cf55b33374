"""Row mixing sweep: onnx's own backend node tests (and its pytorch-converted models) made batched
(scripts/row_mixing_cases.py), each served asking for max_batch_size 8 and a 20 ms queue delay, with
four one-row requests sent at once so that they coalesce, each answer compared with onnxruntime's
answer to that request alone. A model that mixes its batch's rows must be refused a batched load; one
that loads batched must answer each request as alone.

    .venv/bin/python scripts/row_mixing_sweep.py --out DIR [--port P] [--limit N] [--only NAME ...]
        [--corpus custom|counts] [--declare-outputs]

`--corpus custom`: scripts/custom_op_cases.py's graphs with ops outside ONNX's domain instead
(onnxruntime's fused, quantized and transformer ops, ai.onnx.ml's); `--corpus counts`:
scripts/size_count_cases.py's graphs that use the batch's size as a shape, a size, a count, an axis
or a value, their outputs' shapes as written. `--declare-outputs`: each output's shape declared as
optimizers save them (else cleared, so the server infers them, or as written for counts).

Writes DIR/repository, DIR/server.log, DIR/results.csv (a line per case) and DIR/summary.md. Exits 1
if a case answered WRONG with status OK or INTERNAL, or lost the server; 2 if the sweep could not run;
else 0. The server is this tree's, on 127.0.0.1:P (metrics on P+1), always stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TextIO

import numpy as np
import onnx
import onnxruntime as ort
import tritonclient.grpc as tg
from custom_op_cases import custom_sources, declared
from row_mixing_cases import Case, Request, Skipped, build_cases, difference, same, sources, write_repository
from size_count_cases import count_cases
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

REPO_ROOT = Path(__file__).resolve().parents[1]
READY = "sluiceway ready on"
MAX_RESTARTS = 3  # a server that dies more often than this ends the sweep
FAILING = ("WRONG_OK", "INTERNAL", "server_lost")


@dataclass(frozen=True)
class Answer:
    """The server's answer to one request: a status, and the outputs when it is OK."""

    status: str
    outputs: tuple[np.ndarray | None, ...] = ()
    message: str = ""


@dataclass(frozen=True)
class Row:
    """One case's line of results.csv; `outcome` is the class the summary counts."""

    case: str
    ops: str
    outcome: str  # skipped, refused, right, WRONG_OK, INTERNAL, error, server_lost
    oracle_mixes: bool | None = None
    oracle_detail: str = ""
    max_batch_size: int | None = None
    exec_count: int | None = None
    inference_count: int | None = None
    coalesced: bool | None = None
    statuses: str = ""
    seconds: float | None = None
    detail: str = ""


class Server:
    """This tree's `python -m server serve` on 127.0.0.1, in a process group of its own (so stopping
    it stops whatever it started), its output appended to a log file by a thread of ours."""

    def __init__(self, repository: Path, port: int, log: Path) -> None:
        self.command = [
            sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--model-repository",
            str(repository), "--port", str(port), "--metrics-port", str(port + 1),
            "--model-control-mode", "explicit", "--default-max-batch-size", "8",
        ]  # fmt: skip
        self.address = f"127.0.0.1:{port}"
        self.log = log
        self.process: subprocess.Popen[str] | None = None
        self.pump: threading.Thread | None = None
        self.ready = False  # its ready line was seen

    def start(self, timeout_s: float = 120.0) -> None:
        """Start it and wait for its ready line (RuntimeError with the log's tail if none comes)."""
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.process = subprocess.Popen(
            self.command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
        woke = threading.Event()  # the ready line, or the end of the output
        self.ready = False
        self.pump = threading.Thread(target=self._copy, args=(self.process.stdout, woke), daemon=True)
        self.pump.start()
        if not woke.wait(timeout_s) or not self.ready:
            self.stop()
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"the server did not start on {self.address}:\n{tail}")

    def _copy(self, stream: TextIO | None, woke: threading.Event) -> None:
        """Drain the server's output into the log (so it never blocks on a full pipe)."""
        with self.log.open("a") as log:
            log.write(f"==== {' '.join(self.command)}\n")
            for line in stream or ():
                log.write(line)
                log.flush()
                if READY in line:
                    self.ready = True
                    woke.set()
        woke.set()  # it ended before its ready line: start() fails

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM to its group, SIGKILL after `grace_s`."""
        if self.process is None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            if self.process.poll() is not None:
                break
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(wait_s)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        if self.pump is not None:
            self.pump.join(10)


class Senders:
    """One client per concurrent request, and one for loads, statistics and unloads."""

    def __init__(self, address: str, count: int) -> None:
        self.control = tg.InferenceServerClient(address)
        self.clients = [tg.InferenceServerClient(address) for _ in range(count)]
        self.pool = ThreadPoolExecutor(count, thread_name_prefix="sweep-request")

    def close(self) -> None:
        self.pool.shutdown(wait=True)  # each call is bounded by its client_timeout
        for client in [self.control, *self.clients]:
            client.close()


def run_case(senders: Senders, case: Case, timeout_s: float) -> Row:
    """Load the case's model, send its requests together, judge the answers, unload it."""
    started = time.monotonic()
    deadline = started + timeout_s
    row = Row(case.name, "|".join(case.ops), "refused", case.oracle_mixes, case.oracle_detail)
    try:
        senders.control.load_model(case.name, client_timeout=timeout_s)
    except InferenceServerException as err:
        status = str(err.status()).replace("StatusCode.", "")  # UNAVAILABLE: gone, or shutting down
        outcome = {"UNAVAILABLE": "server_lost", "DEADLINE_EXCEEDED": "error"}.get(status, "refused")
        return replace(row, outcome=outcome, detail=_one_line(f"{err.status()} {err.message()}"))
    try:
        row = _served(senders, case, row, deadline)
    except InferenceServerException as err:
        row = replace(row, outcome="error", detail=_one_line(f"{err.status()} {err.message()}"))
    finally:
        try:
            senders.control.unload_model(case.name, client_timeout=30)
        except InferenceServerException as err:
            row = replace(row, detail=row.detail + _one_line(f" unload: {err.status()} {err.message()}"))
    return replace(row, seconds=round(time.monotonic() - started, 2))


def _served(senders: Senders, case: Case, row: Row, deadline: float) -> Row:
    """The row of a loaded model: its batching, the answers, and its statistics."""
    config = senders.control.get_model_config(case.name, as_json=True, client_timeout=30)["config"]
    batch = int(config.get("max_batch_size", 0))
    dims = {i["name"]: [int(d) for d in i.get("dims", [])] for i in config.get("input", [])}
    answers = infer_together(senders, case, dims, batch > 0, deadline)
    stats = senders.control.get_inference_statistics(case.name, as_json=True, client_timeout=30)
    model = stats["model_stats"][0]
    runs, rows = int(model.get("execution_count", 0)), int(model.get("inference_count", 0))
    outcome, detail = judge(case.requests, case.outputs, answers)
    statuses = ",".join(a.status for a in answers)
    return replace(
        row, outcome=outcome, max_batch_size=batch, exec_count=runs, inference_count=rows,
        coalesced=runs < rows, statuses=statuses, detail=detail,
    )  # fmt: skip


def infer_together(
    senders: Senders, case: Case, dims: dict[str, list[int]], batched: bool, deadline: float
) -> list[Answer]:
    """Send every request of the case at once (behind a barrier), so that the server can merge them."""
    barrier = threading.Barrier(len(case.requests), timeout=5)
    outputs = [tg.InferRequestedOutput(name) for name in case.outputs]

    def one(client: tg.InferenceServerClient, request: Request) -> Answer:
        inputs = []
        for name, row in request.feeds.items():
            data = fitted(row, dims.get(name), batched)
            inputs.append(tg.InferInput(name, list(data.shape), np_to_triton_dtype(data.dtype)))
            inputs[-1].set_data_from_numpy(data)
        with contextlib.suppress(threading.BrokenBarrierError):  # a mate failed to build its request
            barrier.wait()
        try:
            left = max(0.1, deadline - time.monotonic())
            result = client.infer(case.name, inputs, outputs=outputs, client_timeout=left)
        except InferenceServerException as err:
            return Answer(str(err.status()).replace("StatusCode.", ""), (), _one_line(str(err.message())))
        return Answer("OK", tuple(result.as_numpy(name) for name in case.outputs))

    futures = [senders.pool.submit(one, c, r) for c, r in zip(senders.clients, case.requests, strict=True)]
    done, _ = wait(futures, timeout=max(0.0, deadline - time.monotonic()) + 5)
    return [f.result() if f in done else Answer("TIMEOUT", (), "no answer in time") for f in futures]


def fitted(row: np.ndarray, dims: list[int] | None, batched: bool) -> np.ndarray:
    """The row in the shape the served config asks for: [1, *dims] when batched. Only an equal-sized
    reshape, for an `[N]` input that the server completes to dims [1] (Triton's convention)."""
    if dims is None:
        return row
    want = [1, *dims] if batched else dims
    if len(want) == row.ndim and all(w in (-1, r) for w, r in zip(want, row.shape, strict=True)):
        return row
    if -1 in want or int(np.prod(want)) != row.size:
        return row  # the server says what is wrong with it
    return row.reshape(want)


def judge(requests: Sequence[Request], names: Sequence[str], answers: Sequence[Answer]) -> tuple[str, str]:
    """(outcome, detail): WRONG_OK if an OK answer differs from its request's answer alone, else
    INTERNAL if one was INTERNAL, else error for another failure, else right."""
    wrong = []
    for k, (request, answer) in enumerate(zip(requests, answers, strict=True)):
        if answer.status != "OK":
            continue
        for name, got, want in zip(names, answer.outputs, request.expected, strict=True):
            if got is None or not same(got, want):
                wrong.append(f"request {k} {name}: " + ("missing" if got is None else difference(got, want)))
    failed = [a for a in answers if a.status != "OK"]
    detail = _one_line("; ".join(wrong[:2]) + (f" {failed[0].status}: {failed[0].message}" if failed else ""))
    if wrong:
        return "WRONG_OK", detail
    if any(a.status == "INTERNAL" for a in answers):
        return "INTERNAL", detail
    return ("error" if failed else "right"), detail


def sweep(server: Server, cases: Sequence[Case], timeout_s: float) -> list[Row]:
    """Every case in turn; a server lost on a case is started again, at most MAX_RESTARTS times."""
    rows: list[Row] = []
    restarts = 0
    senders = Senders(server.address, max((len(c.requests) for c in cases), default=1))
    try:
        for index, case in enumerate(cases):
            row = run_case(senders, case, timeout_s)
            if row.outcome == "server_lost" or not server.alive():
                row = replace(row, outcome="server_lost", detail="the server died or stopped; " + row.detail)
                restarts += 1
            if row.outcome in FAILING:
                print(f"{row.outcome}: {case.name} ({row.ops}) {row.detail[:200]}", flush=True)
            rows.append(row)
            if row.outcome == "server_lost" and (restarts > MAX_RESTARTS or not _restarted(server)):
                print(f"stopped after {index + 1} of {len(cases)} cases: the server was lost", flush=True)
                break
            if (index + 1) % 100 == 0:
                print(f"{index + 1} of {len(cases)} cases", flush=True)
    finally:
        senders.close()
    return rows


def _restarted(server: Server) -> bool:
    """Start the server again once it died or stopped serving; False (and why) if it does not come up."""
    server.stop()
    try:
        server.start()
    except RuntimeError as err:
        print(err, file=sys.stderr)
        return False
    return True


def write_results(rows: Sequence[Row], path: Path) -> None:
    """results.csv: one line per case, Row's fields as columns (an unknown value empty)."""
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([f.name for f in fields(Row)])
        for row in rows:
            writer.writerow(["" if v is None else v for v in asdict(row).values()])


def summary(rows: Sequence[Row], seconds: float) -> str:
    """summary.md: the counts, why cases were skipped, and the failing cases by op."""
    tested = [r for r in rows if r.outcome != "skipped"]
    count = Counter(r.outcome for r in rows)
    batched = [r for r in tested if (r.max_batch_size or 0) > 0]
    coalesced = sum(bool(r.coalesced) for r in batched)
    lines = [
        "# Row mixing sweep",
        "",
        f"onnx {onnx.__version__}, onnxruntime {ort.__version__}: {len(rows)} cases, {seconds:.0f} s.",
        "",
        "| | count |",
        "|---|---|",
        f"| cases tested | {len(tested)} |",
        f"| skipped (the protocol or onnxruntime cannot run them) | {count['skipped']} |",
        f"| refused at load | {count['refused']} |",
        f"| loaded batched | {len(batched)} |",
        f"| batched and coalesced (execution_count < inference_count) | {coalesced} |",
        f"| loaded unbatched | {sum(r.max_batch_size == 0 for r in tested)} |",
        f"| answered right | {count['right']} |",
        f"| WRONG with status OK | {count['WRONG_OK']} |",
        f"| INTERNAL | {count['INTERNAL']} |",
        f"| other errors (another status, no answer in time) | {count['error']} |",
        f"| server lost (died, or stopped serving) | {count['server_lost']} |",
        f"| onnxruntime's merged run mixes the rows (oracle) | {sum(bool(r.oracle_mixes) for r in tested)} |",
        "",
    ]  # fmt: skip
    reasons = Counter(r.detail.split(":")[0] for r in rows if r.outcome == "skipped")
    if reasons:
        lines += ["## Skipped", "", "| reason | cases |", "|---|---|"]
        lines += [f"| {reason} | {n} |" for reason, n in reasons.most_common()] + [""]
    return "\n".join(lines + failures_by_op(rows))


def failures_by_op(rows: Sequence[Row]) -> list[str]:
    """The table of failing cases, one line per op set (a multi-op graph's ops joined by '|')."""
    failing: defaultdict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if row.outcome in (*FAILING, "error"):
            failing[row.ops].append(row)
    lines = ["## Wrong, INTERNAL or failed, by op", ""]
    if not failing:
        return [*lines, "None.", ""]
    lines += ["| op | WRONG_OK | INTERNAL | other | cases |", "|---|---|---|---|---|"]
    for ops, group in sorted(failing.items(), key=lambda item: (-len(item[1]), item[0])):
        n = Counter(r.outcome for r in group)
        other = len(group) - n["WRONG_OK"] - n["INTERNAL"]
        names = ", ".join(f"`{r.case}` ({r.outcome})" for r in group)
        lines.append(f"| {ops} | {n['WRONG_OK']} | {n['INTERNAL']} | {other} | {names} |")
    return [*lines, ""]


def free_ports() -> int:
    """A port P of 127.0.0.1 with P+1 free too, as the OS hands them out: a fixed default collides
    with other servers on a shared machine."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            with contextlib.suppress(OSError, OverflowError):  # OverflowError: past 65535
                second.bind(("127.0.0.1", port + 1))
                return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:400]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="folder for the repository and results")
    parser.add_argument("--port", type=int, default=0, help="gRPC port, metrics on the next (default: free)")
    parser.add_argument("--limit", type=int, help="a short run: this many cases, every k-th of the corpus")
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME",
                        help="these cases (with --limit, besides the sampled ones)")  # fmt: skip
    parser.add_argument("--timeout-s", type=float, default=60.0, help="per model: load and answers")
    parser.add_argument("--corpus", choices=("onnx", "custom", "counts"), default="onnx",
                        help="onnx's node tests, other domains' ops, or the batch's size used")  # fmt: skip
    parser.add_argument("--declare-outputs", action="store_true", help="outputs' shapes declared")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM ends the sweep through its finally blocks, so that its server is stopped too.
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        if args.corpus == "counts":
            built = count_cases(args.limit, args.only)
        else:
            built = build_cases(
                custom_sources() if args.corpus == "custom" else sources(), args.limit, args.only
            )
    except ValueError as err:  # a name in --only that this onnx does not have
        print(err, file=sys.stderr)
        return 2
    cases = [declared(c) if args.declare_outputs else c for c in built if isinstance(c, Case)]
    write_repository(cases, args.out / "repository")
    print(f"{len(cases)} cases built, {len(built) - len(cases)} skipped; serving them", flush=True)
    rows: list[Row] = []
    server: Server | None = None
    try:
        if cases:
            server = Server(args.out / "repository", args.port or free_ports(), args.out / "server.log")
            server.start()
            rows = sweep(server, cases, args.timeout_s)
    except RuntimeError as err:  # no server, or no free ports
        print(err, file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
    rows += [
        Row(s.name, "|".join(s.ops), "skipped", detail=s.reason) for s in built if isinstance(s, Skipped)
    ]
    write_results(rows, args.out / "results.csv")
    text = summary(rows, time.monotonic() - started)
    (args.out / "summary.md").write_text(text)
    print(text)
    return 1 if any(r.outcome in FAILING for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
