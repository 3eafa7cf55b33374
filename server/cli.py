"""`sluiceway serve`: command-line flags over SLUICEWAY_* settings."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError
from pydantic_settings.exceptions import SettingsError

from server.malloc_arenas import bound_malloc_arenas
from server.observability.logs import JsonFormatter, configure_logging
from server.runtime_check import quiet_telemetry
from server.settings import ServerSettings, unknown_variables
from server.start_signals import default_sigterm


def _parser(only_serve: bool = False) -> argparse.ArgumentParser:
    """The CLI's parser; `only_serve` leaves out the other commands, whose flags come from modules
    a server does not need (the top view's client, the rollout and optimize commands): a test run
    starts some 280 servers, and those imports were ~0.03 s of each start's CPU."""
    parser = argparse.ArgumentParser(
        prog="sluiceway", description="ONNX inference over the KServe v2 gRPC API"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model repository (default: the demo models)")
    serve.add_argument("--model-repository", help="Triton-layout repository (default: built-in demo models)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", help="port to bind (default 8001; 0 picks a free one)")
    serve.add_argument("--cache-dir", help="where demo models are built (default ~/.cache/sluiceway)")
    serve.add_argument("--max-queue-size", help="default queue bound per model")
    serve.add_argument("--max-message-bytes", help="largest gRPC message (default 64 MiB)")
    serve.add_argument(
        "--response-cache-bytes",
        help="response cache size for models that enable response_cache (default 64 MiB; 0: none)",
    )
    serve.add_argument("--intra-op-threads", help="onnxruntime intra-op threads (0: its default)")
    serve.add_argument("--execution-providers", help="comma-separated onnxruntime providers, in order")
    serve.add_argument(
        "--idle-dispatch",
        action=argparse.BooleanOptionalAction,
        help="a free instance takes what is queued now instead of waiting max_queue_delay (default off)",
    )
    serve.add_argument(
        "--load-model",
        action="append",
        help="model loaded at start with --model-control-mode explicit (repeatable; '*': all)",
    )
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    serve.add_argument("--workers", help="server processes sharing the port (default 1)")
    _add_remaining_settings(serve)
    if only_serve:
        return parser
    commands.add_parser("build-demo", help="build the demo model repository and print its path")
    from server.optimize.cli import add_parser as add_optimize  # argparse only: a cheap import

    add_optimize(commands)
    from server.observability.drift_args import add_drift_parser

    add_drift_parser(commands)
    from server.observability.top import add_top_parser

    add_top_parser(commands)
    from server.admin.cli import add_rollout_parser

    add_rollout_parser(commands)
    return parser


# Settings that are not flags: set by the server for its own worker processes.
_INTERNAL = frozenset(
    {"reuse_port", "worker_index", "rollout_share_dir", "session_host", "session_host_threads"}
)


def _add_remaining_settings(serve: argparse.ArgumentParser) -> None:
    """A flag for every setting not declared above, so every setting is a flag and a variable."""
    declared = {action.dest for action in serve._actions}
    for name, field in ServerSettings.model_fields.items():
        if name in declared or name in _INTERNAL:
            continue
        flag = "--" + name.replace("_", "-")
        text = f"SLUICEWAY_{name.upper()} (default {field.get_default(call_default_factory=True)})"
        if field.annotation is bool:
            serve.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        else:
            # The text as given, numbers too: the settings check it and name the field (argparse's
            # int() and float() had taken "0.1_0" as 0.1).
            serve.add_argument(flag, help=text)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Settings from SLUICEWAY_* variables, overridden by the flags that were given."""
    overrides = {key: value for key, value in vars(args).items() if key != "command" and value is not None}
    return ServerSettings(**overrides)


def _unusable_paths(settings: ServerSettings) -> str | None:
    """The first path setting this machine cannot use, named ("'field': why"), else None."""
    repo, cache = settings.model_repository, settings.cache_dir
    try:
        if repo is not None and not repo.is_dir():
            why = "is not a directory" if repo.exists() else "does not exist"
            return f"'model_repository': {repo} {why}"
        if repo is not None:
            # Listed before the port opens: one the server's user cannot list (a volume with the
            # wrong fsGroup) had printed "listening", then ended in a 46-line traceback.
            with os.scandir(repo) as entries:
                next(entries, None)
    except OSError as err:
        return f"'model_repository': {repo}: cannot list it: {err.strerror or err}"
    try:
        if cache.exists() and not cache.is_dir():
            return f"'cache_dir': {cache} is not a directory"
    except OSError as err:  # a parent it cannot search (HOME another user's: `sudo -u` without -H)
        return f"'cache_dir': {cache}: {err.strerror or err} (set --cache-dir or SLUICEWAY_CACHE_DIR)"
    samples = settings.sample_dir
    if samples is not None:  # found at the first write otherwise, and those samples were lost
        try:
            samples.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            return f"'sample_dir': {samples}: {err.strerror or err}"
    return None


def _demo_repository(settings: ServerSettings) -> Path:
    from server.models.demo import build_demo_repository

    return build_demo_repository(settings.cache_dir / "demo")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line's exit code. A Ctrl-C before `serve` has its handlers (exit 130, one line)
    is server/__main__.py's: it knows the signal came, whatever an import made of it."""
    words = list(sys.argv[1:] if argv is None else argv)
    # `serve ...` parses the same with the serve command alone (there are no top-level flags).
    args = _parser(only_serve=words[:1] == ["serve"]).parse_args(words)
    if args.command != "serve":  # SIGTERM ends a start-up of `serve` cleanly, the rest by default
        default_sigterm()
    quiet_telemetry(os.environ)  # before any command imports onnxruntime
    if args.command == "optimize":
        from server.optimize.cli import run as run_optimize

        return run_optimize(args)
    if args.command == "top":
        from server.observability.top import run_top

        return run_top(args)
    if args.command == "rollout":
        from server.admin.cli import run_rollout

        return run_rollout(args)
    if args.command == "drift":
        from server.observability.drift_cli import run_drift

        return run_drift(args)
    # A setting's or start-up's failure: one line, JSON when the logs are (a log pipeline reading
    # JSON lines had choked on these plain ones).
    json_lines = (
        getattr(args, "log_format", None) or os.environ.get("SLUICEWAY_LOG_FORMAT", "")
    ).lower() == "json"

    def fail(message: str) -> None:
        print(fatal_line(message, json_lines), file=sys.stderr)

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        for line in setting_errors(exc):
            fail(line)
        return 2
    except SettingsError as exc:  # a SLUICEWAY_* variable pydantic-settings cannot read
        fail(f"sluiceway: invalid setting: {exc}")
        return 2
    problem = _unusable_paths(settings)  # here, not in the settings: those also check manifests
    if problem is not None:
        fail(f"sluiceway: invalid setting {problem}")
        return 2
    bound_malloc_arenas(settings.malloc_arena_max)  # before any thread: arenas made after it count
    json_lines = settings.log_format == "json"
    configure_logging(settings.log_level, settings.log_format, settings.worker_index)  # text or JSON
    if settings.worker_index is None:  # the parent says it once for all the workers
        for line in unknown_variables(os.environ):
            logging.getLogger(__name__).warning(line)
    else:
        from server.workers import die_with_parent

        die_with_parent()
    if args.command == "build-demo":
        print(_demo_repository(settings))
        return 0
    if settings.tracing:  # OpenTelemetry's own reading of a bad one had ended in a traceback
        from server.observability.tracing_env import tracing_env_problem

        problem = tracing_env_problem(settings.tracing_exporter, os.environ)
        if problem is not None:
            fail(problem)
            return 2
    from server.runtime_check import ensure_runtime

    # One onnxruntime wheel, not both (they overwrite each other); worker processes load the libraries.
    problem = ensure_runtime(preload=settings.workers <= 1)
    if problem is not None:
        fail(f"sluiceway: {problem}")
        return 2
    repository = settings.model_repository
    if repository is None:
        try:  # built here (the server finds it built) so a cache_dir it cannot write is one line
            repository = _demo_repository(settings)
        except OSError as err:
            where = settings.cache_dir / "demo"
            fail(f"sluiceway: invalid setting 'cache_dir': cannot build the demo models in {where}: "
                 f"{err.strerror or err}")  # fmt: skip
            return 2
    from server.app import serve
    from server.bind_failure import PortInUse, TlsRefused

    if settings.workers > 1:
        from server.workers import run_workers

        try:
            return run_workers(settings, repository)
        except OSError as exc:
            fail(f"sluiceway: cannot listen on {settings.host}:{settings.port}: {exc}")
            return 1
    try:
        if settings.use_uvloop:
            import uvloop

            uvloop.run(serve(settings))
        else:
            asyncio.run(serve(settings))
    except PortInUse as exc:
        fail(f"sluiceway: {exc}")
        return 2 if isinstance(exc, TlsRefused) else 1
    exit_now()


def setting_errors(exc: ValidationError) -> list[str]:
    """One line an error, naming its setting; a rule over several settings (no location of its
    own, its message names them) had printed `invalid setting '':`."""
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        about = f"setting '{field}'" if field else "settings"
        lines.append(f"sluiceway: invalid {about}: {error['msg']}{_got(error.get('input'), error['msg'])}")
    return lines


def _got(value: object, message: str) -> str:
    """The value refused, when the message does not show it: Kubernetes' service links set
    SLUICEWAY_PORT=tcp://10.96.12.34:8001 (a Service named sluiceway), refused as "Input should be
    a valid integer" with nothing to say where it came from."""
    # Shown already: quoted whole, or (a long value, which a message cuts) its start. A bare "0"
    # within "greater than 0", or 'tex' within "'text' or 'json'", is no showing (testers, s55).
    text = str(value)
    shown = f"'{text}'" in message or (len(text) > 40 and text[:40] in message)
    if not isinstance(value, (str, int, float)) or isinstance(value, bool) or shown:
        return ""
    return f" (got {text[:80]!r}{'...' if len(text) > 80 else ''})"


def fatal_line(message: str, json_lines: bool) -> str:
    """`message` as the server's logs write an ERROR line: plain, or one JSON object."""
    if not json_lines:
        return message
    record = logging.makeLogRecord({"name": "sluiceway", "levelname": "ERROR", "levelno": logging.ERROR})
    record.msg = message.removeprefix("sluiceway: ")
    return JsonFormatter().format(record)


def exit_now() -> NoReturn:
    """The drain is over: every answer sent or given up, samples and spans written, the metrics
    endpoint closed; the logs are flushed here. Exit without Python's teardown: it joined a model
    run still in a worker thread (a single slow onnxruntime node cannot be interrupted; the process
    outlived its grace, 9 s for a grace of 3), and an idle server spent 1.5-2 s in it (onnxruntime's
    and grpc's objects) after a 0.06 s drain."""
    main = threading.main_thread()
    if any(t.is_alive() and not t.daemon and t is not main for t in threading.enumerate()):
        logging.getLogger(__name__).warning("exiting with a model run still in progress (abandoned)")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
