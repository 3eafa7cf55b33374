"""Run Triton's own QA suites (ONNX, gRPC only) against sluiceway and summarise them per suite.

    .venv/bin/python -m loadtest.triton_qa.qa --triton /path/to/triton-server [--suites L0_infer,...]

A measurement, not a gate: it exits 0 once it has a table. Triton's files are extracted at run time
from the checkout or git mirror given (nothing of Triton's is kept here), its generators make the
models, each suite's repositories are laid out as its test.sh lays them out (suites.py), and a
sluiceway server is started per run on 127.0.0.1 and a free port. Results: results.txt (every test),
summary.md (the per-suite table), results.json, and logs/ in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from loadtest.triton_qa import harness
from loadtest.triton_qa.harness import Outcome, Server
from loadtest.triton_qa.suite_types import Run, Suite
from loadtest.triton_qa.suites import SUITES

ROOT = Path(__file__).resolve().parents[2]
STATUSES = ["pass", "fail", "error", "skipped", "timeout", "server-failed"]
SERVER_VERSION = (
    "0.1.0"  # what ServerMetadataTest compares with $TRITON_SERVER_VERSION (set in Triton's image)
)


def run_one(
    suite: Suite, run: Run, repo: Path, qa: Path, logs: Path, args: argparse.Namespace
) -> list[Outcome]:
    """One run: a server (or one per test), its steps' tests, their outcomes."""
    excluded_file = logs / f"{suite.name}.excluded.json"
    excluded_file.write_text(json.dumps(suite.excluded))
    env = {"TRITON_SERVER_VERSION": SERVER_VERSION, **run.env}
    groups = [[step] for step in run.steps] if run.per_test_server else [run.steps]
    outcomes: list[Outcome] = []
    for index, steps in enumerate(groups):
        if run.per_test_server and steps[0].specs[0] in suite.excluded:
            name = steps[0].specs[0]
            outcomes.append(Outcome(suite.name, run.label, name, "excluded", 0.0, suite.excluded[name]))
            continue
        stem = f"{suite.name}.{run.label}" + (f".{index}" if run.per_test_server else "")
        server_args = ["--metrics-port", "0", *run.server_args, *args.server_arg]
        server = Server(args.server_src, repo, logs / f"{stem}.server.log", server_args, dict(os.environ))
        start = time.monotonic()
        try:
            try:
                port = server.wait_ready(args.start_timeout)
            except RuntimeError as exc:
                specs = [s for step in steps for s in step.specs]
                outcomes += [
                    Outcome(suite.name, run.label, s, "server-failed", time.monotonic() - start, str(exc))
                    for s in specs
                ]
                continue
            for number, step in enumerate(steps):
                if step.before is not None:
                    step.before(repo)
                    time.sleep(step.settle_s)  # test.sh's sleep: the repository poll picks the edit up
                result = logs / f"{stem}.{number}.result.json"
                got = harness.run_client(
                    qa / suite.name,
                    suite.module,
                    step.specs,
                    excluded_file,
                    port,
                    env,
                    result,
                    logs / f"{stem}.{number}.client.log",
                    args.test_timeout,
                )
                if isinstance(got, str):
                    outcomes += [Outcome(suite.name, run.label, s, "timeout", 0.0, got) for s in step.specs]
                    continue
                outcomes += [
                    Outcome(
                        suite.name,
                        run.label,
                        str(o["test"]),
                        str(o["status"]),
                        float(o["seconds"]),  # type: ignore[arg-type]
                        str(o["message"]),
                    )
                    for o in got
                ]
        finally:
            server.stop()
    return outcomes


def summary(outcomes: list[Outcome], suites: list[Suite]) -> str:
    """The per-suite Markdown table: counted tests (all but the excluded) and how they ended."""
    columns = ["suite", "tests", "excluded", "counted", *STATUSES, "pass %"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    totals = dict.fromkeys(["tests", "excluded", "counted", *STATUSES], 0)
    for suite in suites:
        mine = [o for o in outcomes if o.suite == suite.name]
        row = {s: sum(o.status == s for o in mine) for s in STATUSES}
        row["tests"] = len(mine)
        row["excluded"] = sum(o.status == "excluded" for o in mine)
        row["counted"] = row["tests"] - row["excluded"]
        for key in totals:
            totals[key] += row[key]
        share = f"{100 * row['pass'] / row['counted']:.0f}" if row["counted"] else "-"
        cells = [str(row[k]) for k in ["tests", "excluded", "counted", *STATUSES]]
        lines.append(f"| {suite.name} | " + " | ".join(cells) + f" | {share} |")
    share = f"{100 * totals['pass'] / totals['counted']:.1f}" if totals["counted"] else "-"
    cells = [str(totals[k]) for k in ["tests", "excluded", "counted", *STATUSES]]
    lines.append("| **all** | " + " | ".join(cells) + f" | **{share}** |")
    return "\n".join(lines)


def table(outcomes: list[Outcome], width: int = 110) -> str:
    lines = [f"{'suite':<20} {'run':<9} {'test':<62} {'result':<13} {'s':>6}  cause"]
    for o in outcomes:
        cause = o.message if len(o.message) <= width else o.message[: width - 3] + "..."
        lines.append(f"{o.suite:<20} {o.run:<9} {o.test:<62} {o.status:<13} {o.seconds:6.1f}  {cause}")
    return "\n".join(lines)


def prepare(args: argparse.Namespace, suites: list[Suite], work: Path) -> tuple[str, Path, dict[str, Path]]:
    """Extract Triton's files, generate the models, lay out every suite's repositories."""
    qa_root = work / "triton"
    shutil.rmtree(qa_root, ignore_errors=True)
    qa_root.mkdir()
    parts = ["qa/common", *sorted({p for s in suites for p in [f"qa/{s.name}", *s.extra_parts]})]
    commit = harness.extract_qa(args.triton.resolve(), args.rev, parts, qa_root)
    qa = qa_root / "qa"
    gen = work / "gen"
    gen.mkdir(exist_ok=True)
    for name in dict.fromkeys(g for s in suites for g in s.generated):
        print(f"generating {name} ...", flush=True)
        harness.generate(qa / "common", gen, name, args.gen_timeout)
    repos_root = work / "repositories"
    shutil.rmtree(repos_root, ignore_errors=True)
    repos: dict[str, Path] = {}
    for suite in suites:
        for key, build in suite.repositories.items():
            repo = repos_root / suite.name / key
            repo.mkdir(parents=True)
            build(gen, qa, repo)
            repos[f"{suite.name}/{key}"] = repo
    return commit, qa, repos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--triton", type=Path, default=os.environ.get("TRITON_SERVER_REPO"))
    parser.add_argument("--rev", default="HEAD", help="revision to extract when --triton is a git repository")
    parser.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated, of {', '.join(SUITES)}")
    parser.add_argument("--work", type=Path, help="scratch folder (kept; generated models are reused)")
    parser.add_argument("--out", type=Path, help="results folder (default: --work)")
    parser.add_argument("--server-src", type=Path, default=ROOT, help="where to run `python -m server serve`")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `serve` argument")
    parser.add_argument("--test-timeout", type=float, default=900.0, help="seconds per client process")
    parser.add_argument("--start-timeout", type=float, default=180.0, help="seconds for a server to be ready")
    parser.add_argument("--gen-timeout", type=float, default=900.0, help="seconds per generator run")
    parser.add_argument("--list", action="store_true", help="print suites, runs and exclusions, then exit")
    args = parser.parse_args(argv)
    names = args.suites.split(",")
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        parser.error(f"unknown suites: {', '.join(unknown)}")
    suites = [SUITES[n] for n in names]
    if args.list:
        for suite in suites:
            for run in suite.runs:
                specs = " ".join(s for step in run.steps for s in step.specs)
                print(f"{suite.name} [{run.label}] {run.repository}: {specs}")
            for test, reason in suite.excluded.items():
                print(f"  excluded {test}: {reason}")
        return 0
    if args.triton is None:
        parser.error("--triton (or TRITON_SERVER_REPO) is required")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # run the finally blocks
    work = args.work or Path(tempfile.mkdtemp(prefix="triton_qa."))
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or work
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    commit, qa, repos = prepare(args, suites, work)
    print(f"Triton QA from {args.triton} @ {commit}; logs in {logs}", flush=True)
    outcomes: list[Outcome] = []
    for suite in suites:
        for run in suite.runs:
            got = run_one(suite, run, repos[f"{suite.name}/{run.repository}"], qa, logs, args)
            outcomes += got
            counts = {s: sum(o.status == s for o in got) for s in ["pass", "fail", "error", "excluded"]}
            print(f"  {suite.name} [{run.label}]: {counts}", flush=True)
    text = table(outcomes)
    short = summary(outcomes, suites)
    print(text + "\n\n" + short)
    (out / "results.txt").write_text(text + "\n")
    (out / "summary.md").write_text(short + "\n")
    report = {"triton_commit": commit, "suites": names, "outcomes": [asdict(o) for o in outcomes]}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
