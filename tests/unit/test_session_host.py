"""The session host's merging (server/backends/session_host.py): which waiting batches one run
takes, and that each batch gets its own rows back; the shared segments batches cross in."""

from __future__ import annotations

import asyncio
import pickle
import socket
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from batcher.errors import InstanceClosed, RunTimedOut
from batcher.watchdog import ExpiredUnrun, Watchdog, _start_signal, _unless_expired
from server.backends.batch_padding import Padding, ShapeChanges, StickySize
from server.backends.host_process import PREFIX, remove_stale_host_dirs
from server.backends.host_wire import Segment, SegmentMaps, TensorPlace, read_arrays
from server.backends.hosted_session import GROW_AFTER, HostedSession, Job, Moved, OpenRequest
from server.backends.onnxruntime_backend import OrtOptions
from server.backends.session_host import SessionHost
from server.errors import ModelRefusedInput


def _double(path: Path) -> Path:
    """x FP32 [N, D] -> y FP32 [N, D] = 2 x (D free, so per-row shapes can differ)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "D"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "D"])],
        [numpy_helper.from_array(np.float32(2.0), "k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _session(tmp_path: Path, max_rows: int) -> HostedSession:
    path = _double(tmp_path / "double.onnx")
    providers = (("CPUExecutionProvider", {}),)
    request = OpenRequest(str(path), OrtOptions(intra_op_threads=1), providers, "double", 0, max_rows)
    return HostedSession(request, start=False)  # batches taken and run by the test


def _take(session: HostedSession) -> list | None:
    """One run's batches, as a runner takes them, the run then counted as ended (not run here)."""
    taken = session._take()
    if taken is not None:
        session._finished()
    return taken


def _rows(n: int, d: int = 4, start: float = 0.0) -> dict[str, np.ndarray]:
    return {"x": (np.arange(n * d, dtype=np.float32) + start).reshape(n, d)}


def test_a_run_takes_the_waiting_batches_in_order_up_to_max_batch_size(tmp_path: Path) -> None:
    session = _session(tmp_path, max_rows=8)
    jobs = [session.submit(_rows(n)) for n in (3, 4, 5, 1)]
    first = _take(session)
    second = _take(session)
    assert first is not None and [j.rows for j in first] == [3, 4]  # 3 + 4 + 5 > 8
    assert second is not None and [j.rows for j in second] == [5, 1]
    assert [*first, *second] == jobs
    session.close()


def test_batches_of_other_per_row_shapes_or_types_are_not_merged(tmp_path: Path) -> None:
    session = _session(tmp_path, max_rows=64)
    session.submit(_rows(2, d=4))
    session.submit(_rows(2, d=4))
    session.submit(_rows(2, d=5))  # other columns: its own run, and the one after it waits its turn
    session.submit({"x": np.zeros((2, 5), np.float64)})
    taken = [_take(session) for _ in range(3)]
    assert [[j.rows for j in t] for t in taken if t] == [[2, 2], [2], [2]]
    session.close()


def test_without_max_batch_size_each_batch_runs_alone(tmp_path: Path) -> None:
    session = _session(tmp_path, max_rows=0)
    for n in (1, 1, 1):
        session.submit(_rows(n))
    assert [len(t or []) for t in (_take(session), _take(session), _take(session))] == [1, 1, 1]
    session.close()


def test_a_merged_run_gives_each_batch_its_own_rows(tmp_path: Path) -> None:
    session = _session(tmp_path, max_rows=16)
    inputs = [_rows(n, start=100.0 * i) for i, n in enumerate((3, 1, 5))]
    jobs = [session.submit(x) for x in inputs]
    taken = _take(session)
    assert taken == jobs
    session._run(taken)
    for job, x in zip(jobs, inputs, strict=True):
        assert job.done.is_set() and job.error is None and job.outputs is not None
        np.testing.assert_array_equal(job.outputs["y"], 2 * x["x"])
    assert (session.runs, session.rows, session.merged) == (1, 9, 1)
    session.close()


def test_a_merged_run_that_fails_fails_every_batch_in_it(tmp_path: Path) -> None:
    session = _session(tmp_path, max_rows=16)
    jobs = [session.submit({"x": np.zeros((2, 3), np.float64)}) for _ in range(2)]  # not FP32
    taken = _take(session)
    assert taken == jobs
    session._run(taken)
    for job in jobs:
        assert isinstance(job.error, ModelRefusedInput), job.error
        assert "double" in str(job.error)
    session.close()


def test_a_closed_session_takes_no_batch(tmp_path: Path) -> None:
    session = _session(tmp_path, max_rows=16)
    session.close()
    with pytest.raises(InstanceClosed, match="'double': its version was retired"):
        session.submit(_rows(1))
    assert _take(session) is None


def test_a_segment_carries_arrays_between_two_mappings(tmp_path: Path) -> None:
    writer = Segment(tmp_path / "seg", 4096, create=True)
    place = TensorPlace("x", 256, (2, 3), np.dtype(np.int32).str)
    writer.array(place)[...] = np.arange(6, dtype=np.int32).reshape(2, 3)
    reader = Segment.attach(tmp_path / "seg", 4096)
    np.testing.assert_array_equal(read_arrays(reader, [place])["x"], np.arange(6).reshape(2, 3))
    with pytest.raises(ValueError, match="'y' lies past the end"):
        reader.array(TensorPlace("y", 4000, (100,), np.dtype(np.float32).str))
    reader.close()
    writer.close()


def test_an_open_request_pickles_with_its_padding_count_fresh() -> None:
    changes = ShapeChanges()
    changes.add()
    padding = Padding(max_rows=64, changes=changes)
    request = OpenRequest("m.onnx", OrtOptions(padding=padding), (), "m", 0, 64)
    copy = pickle.loads(pickle.dumps(request))
    assert copy.options.padding is not None and copy.options.padding.max_rows == 64
    assert copy.options.padding.changes.count == 0  # the host counts its own
    assert copy.key() == request.key()  # the same key in every worker, whatever their counts


def test_a_padded_session_cuts_its_runs_at_the_size_it_pads_to(tmp_path: Path) -> None:
    """Runs of 40 waiting rows padded to 64 ran 24 copies; cut at 32, every row run is a real one."""
    session = _session(tmp_path, max_rows=64)
    session._sticky = StickySize(64)  # as a CUDA convolution model's (a CPU session never pads)
    session._sticky.current = 32
    for _ in range(5):
        session.submit(_rows(8))
    first = _take(session)
    assert first is not None and sum(j.rows for j in first) == 32  # 8 rows left for the next run
    assert [j.rows for j in _take(session) or []] == [8]  # all that waits fits: taken, no limit
    session.close()


def test_a_padded_session_grows_only_once_the_load_has_outgrown_its_size(tmp_path: Path) -> None:
    session = _session(tmp_path, max_rows=64)
    session._sticky = StickySize(64)
    session._sticky.current = 16
    sizes = []
    for _ in range(GROW_AFTER):
        jobs = [session.submit(_rows(8)) for _ in range(4)]  # 32 rows wait, the size holds 16
        taken = _take(session)
        assert taken is not None
        sizes.append(sum(j.rows for j in taken))
        session._jobs.clear()  # the rest: not this test's
        assert all(job in jobs for job in taken)
    assert sizes == [16] * (GROW_AFTER - 1) + [32]  # the 32nd run in a row may take them all
    session.close()


def _host_request(tmp_path: Path, fingerprint: str = "v1", max_rows: int = 8) -> OpenRequest:
    path = tmp_path / "double.onnx"
    if not path.exists():
        _double(path)
    cpu = (("CPUExecutionProvider", {}),)
    return OpenRequest(str(path), OrtOptions(intra_op_threads=1), cpu, "d", 0, max_rows, fingerprint)


def test_an_abandoned_session_is_made_afresh_for_the_workers_still_using_it(tmp_path: Path) -> None:
    """Worker A's watchdog abandons the shared session with a run stuck in it; worker B's next run
    gets a fresh one. A late abandon that finds the session idle (not the stuck one) leaves it."""
    host = SessionHost()
    request = _host_request(tmp_path)
    opened = [host._answer(("open", request), {}) for _ in range(3)]  # workers A, B and C
    key = opened[0][1]
    old = host._slots[key].session
    assert old is not None and host._slots[key].users == 3
    stuck_at = time.monotonic() - 1.0
    old._starts.append(stuck_at)  # a run in progress there since a second ago: the stuck one
    host._answer(("abandon", key, stuck_at + 0.001), {})  # A's watchdog (it heard the start later)
    assert host._slots[key].session is None and host._slots[key].users == 2
    assert old._abandoned and old._closed
    fresh = host._session(key)  # B's next run
    assert fresh is not old
    np.testing.assert_array_equal(fresh.run(_rows(2))["y"], 2 * _rows(2)["x"])
    host._answer(("open", request), {})  # A's replacement attaches to it
    fresh._starts.append(time.monotonic())  # a healthy run of the fresh session, begun since
    host._answer(("abandon", key, stuck_at + 0.001), {})  # C's watchdog, late: about the old run
    assert host._slots[key].session is fresh and host._slots[key].users == 2
    fresh._starts.clear()
    host._answer(("close", key), {})
    host._answer(("close", key), {})  # the last user: closed and gone
    assert key not in host._slots and fresh._closed
    with pytest.raises(InstanceClosed, match="retired"):  # a late run: to the version serving now
        host._session(key)


def test_a_session_made_after_its_last_worker_closed_the_slot_is_not_kept(tmp_path: Path) -> None:
    """A replacement's fresh session, made while the last other user closed the slot: it had been
    handed out, its runs all INTERNAL, its thread and onnxruntime session never closed."""
    host = SessionHost()
    request = _host_request(tmp_path)
    key = host._answer(("open", request), {})[1]
    slot = host._slots[key]
    host._answer(("abandon", key, time.monotonic()), {})  # idle: not abandoned; its only user goes
    assert key not in host._slots
    with pytest.raises(InstanceClosed):
        host._made(key, slot)
    assert slot.session is None


def test_a_reload_of_a_changed_version_opens_a_session_of_its_own(tmp_path: Path) -> None:
    """The reload's instances open while the old ones still hold theirs: with the key of the path
    alone, the new load met the old session and the old weights went on being served."""
    host = SessionHost()
    old = host._answer(("open", _host_request(tmp_path, "v1")), {})[1]
    new = host._answer(("open", _host_request(tmp_path, "v2")), {})[1]
    fewer_rows = host._answer(("open", _host_request(tmp_path, "v2", max_rows=0)), {})[1]
    assert len({old, new, fewer_rows}) == 3
    sessions = {id(host._slots[key].session) for key in (old, new, fewer_rows)}
    assert len(sessions) == 3
    assert host._slots[fewer_rows].session is not None and host._slots[fewer_rows].session.max_rows == 0
    _close_sessions(host)


def _close_sessions(host: SessionHost) -> None:
    """Each session the host still holds closed: its runner thread ends with the test (threads left
    running at the interpreter's exit had crashed mutmut's stats run: tests/MUTANTS.md)."""
    for slot in host._slots.values():
        if slot.session is not None:
            slot.session.close()


def _gather(path: Path) -> Path:
    """idx INT64 [N] -> out FP32 [N, 2], rows of a 10-row table: an index past it is refused."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["out"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.arange(20, dtype=np.float32).reshape(10, 2), "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_a_merged_run_refused_for_one_batch_refuses_that_batch_only(tmp_path: Path) -> None:
    """Several workers' batches in one run, one with an index past the table: the merged run is
    refused, and each batch runs alone, so only the one at fault is refused (its worker's batcher
    then halves it). It had refused every batch of the run: other clients' good requests failed."""
    cpu = (("CPUExecutionProvider", {}),)
    path = _gather(tmp_path / "gather.onnx")
    session = HostedSession(OpenRequest(str(path), OrtOptions(), cpu, "g", 0, 16), start=False)
    good = session.submit({"idx": np.array([1, 2], np.int64)})
    bad = session.submit({"idx": np.array([99], np.int64)})
    later = session.submit({"idx": np.array([3], np.int64)})
    taken = session._take()
    assert taken == [good, bad, later]
    session._run(taken)
    assert good.error is None and good.outputs is not None
    np.testing.assert_array_equal(good.outputs["out"], [[2, 3], [4, 5]])
    assert isinstance(bad.error, ModelRefusedInput) and bad.outputs is None
    assert later.error is None and later.outputs is not None
    np.testing.assert_array_equal(later.outputs["out"], [[6, 7]])
    session.close()


def test_the_batches_of_a_run_an_abandon_stopped_are_answered_as_timed_out(tmp_path: Path) -> None:
    """onnxruntime's "terminate flag" failure of the other workers' batches in the stuck run had
    reached their callers as INTERNAL; then "its version was retired", though none was. They were in
    the run that passed run_timeout_s: RunTimedOut, saying so."""
    session = _session(tmp_path, max_rows=16)
    session.submit(_rows(1))
    taken = session._take()  # the run in progress (taken before the abandon)
    assert taken is not None
    running = [Job(_rows(1), 1), *taken]

    def terminated(feed: object) -> None:  # what a run in progress at the abandon raises
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Exiting due to terminate flag being set to true.")

    session.abandon()
    session.backend.run_blocking = terminated  # type: ignore[method-assign, assignment]
    session._run(running)
    for job in running:
        assert isinstance(job.error, RunTimedOut), job.error
        assert "passed run_timeout_s and was stopped" in str(job.error)


def test_a_batch_whose_turn_comes_past_its_start_by_is_left_unrun(tmp_path: Path) -> None:
    """Queued behind other workers' runs, a batch past its deadlines is answered ExpiredUnrun (its
    batcher answers DEADLINE_EXCEEDED), never computed; the others run."""
    session = _session(tmp_path, max_rows=16)
    late = session.submit(_rows(2), start_by=time.monotonic() - 0.001)
    timely = session.submit(_rows(3), start_by=time.monotonic() + 60)
    open_ended = session.submit(_rows(1))
    taken = _take(session)
    assert taken == [timely, open_ended]
    assert late.done.is_set() and isinstance(late.error, ExpiredUnrun) and late.outputs is None
    assert session.expired == 1
    session.close()


def test_the_batcher_hands_a_queueing_backend_its_start_by_on_the_monotonic_clock() -> None:
    """The batcher's clock may be another (a test's); the time handed on is time.monotonic's."""
    seen: list[float | None] = []
    told: list[object] = []

    class Queueing:
        executor = None

        def run_blocking(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            raise AssertionError("run_blocking_before is the one called")

        def run_blocking_before(
            self, inputs: dict[str, np.ndarray], start_by: float | None, started: object = None
        ) -> dict[str, np.ndarray]:
            seen.append(start_by)
            told.append(started)
            return dict(inputs)

    before = time.monotonic()
    signal = object()
    outputs, _ = _unless_expired(lambda: 1000.0, 1000.5, Queueing(), _rows(1), signal)  # type: ignore[arg-type]
    assert seen[0] is not None and before + 0.5 <= seen[0] <= time.monotonic() + 0.5
    assert set(outputs) == {"x"} and told == [signal]  # the watchdog's start signal, handed on
    _unless_expired(lambda: 1000.0, None, Queueing(), _rows(1))  # no deadline: still its path
    assert seen[1] is None
    with pytest.raises(ExpiredUnrun):
        _unless_expired(lambda: 1001.0, 1000.5, Queueing(), _rows(1))


def test_a_second_runner_starts_early_only_with_a_full_run(tmp_path: Path) -> None:
    """On a GPU a second runner gathers the next run while one runs on the device, but only a full
    one: started with what had arrived, it would be small, and so would the one after it."""
    session = _session(tmp_path, max_rows=8)
    session._runners = 2  # as on a GPU
    session.submit(_rows(3))
    assert session._may_start()  # nothing runs: any batch starts
    first = session._take()
    assert first is not None and [j.rows for j in first] == [3]
    session.submit(_rows(4))
    assert not session._may_start()  # 4 of 8 rows wait while a run is in progress: they wait more
    session.submit(_rows(4))
    assert session._may_start()  # a full run of 8: gathered now, beside the run in progress
    second = session._take()
    assert second is not None and [j.rows for j in second] == [4, 4]
    session.submit(_rows(8))
    assert not session._may_start()  # two runs in progress: a third waits whatever it holds
    session._finished()
    assert session._may_start()
    session._finished()
    session.close()


def test_folders_of_hosts_gone_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    """A parent killed by SIGKILL left its host's folder (and the workers' segments) in /dev/shm."""
    gone, live, starting = (tmp_path / f"{PREFIX}{name}" for name in ("gone", "live", "starting"))
    for folder in (gone, live, starting):
        folder.mkdir()
    (gone / "seg-1-a-0").write_bytes(b"x" * 10)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(gone / "host.sock"))  # bound, then closed: nothing listens there
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(live / "host.sock"))
    listening.listen(1)
    try:
        assert remove_stale_host_dirs((str(tmp_path),)) == [gone]
    finally:
        listening.close()
    assert live.is_dir() and starting.is_dir() and not gone.exists()


def _batch_sum(path: Path) -> Path:
    """x FP32 [N, 2] -> s FP32 [1, 2], the sum over the batch: outputs that do not follow the rows."""
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1)],
        "batch_sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 2])],
        [axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_outputs_that_do_not_follow_the_rows_are_never_cut_across_workers(tmp_path: Path) -> None:
    """A merged run of a batch-sum model had handed one worker's request a sum holding another
    worker's rows (a tester's): each batch runs alone, and the session merges no more."""
    cpu = (("CPUExecutionProvider", {}),)
    path = _batch_sum(tmp_path / "sum.onnx")
    session = HostedSession(OpenRequest(str(path), OrtOptions(), cpu, "sum", 0, 16), start=False)
    mine = session.submit({"x": np.array([[1, 2], [3, 4]], np.float32)})
    theirs = session.submit({"x": np.array([[1000, 2000]], np.float32)})
    taken = session._take()
    assert taken == [mine, theirs]
    session._run(taken)
    assert mine.outputs is not None and theirs.outputs is not None
    np.testing.assert_array_equal(mine.outputs["s"], [[4, 6]])  # its own rows only
    np.testing.assert_array_equal(theirs.outputs["s"], [[1000, 2000]])
    assert session.max_rows == 0  # from now on each batch alone
    session.close()


def test_the_watchdog_times_a_queued_run_from_its_start_not_its_wait() -> None:
    """A batch waiting its turn in the session host behind other workers' runs had tripped its
    worker's watchdog (88 of 540 requests failed at run_timeout_s 0.05 in a tester's run)."""

    async def scenario() -> str:
        watchdog = Watchdog(0.05, None, "m")
        run: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        began = asyncio.Event()
        watched = asyncio.ensure_future(watchdog.watch(run, began))
        await asyncio.sleep(0.2)  # waiting for its turn: four limits pass, untimed
        assert not watched.done()
        began.set()
        run.set_result("answered")
        return await watched

    assert asyncio.run(scenario()) == "answered"

    async def stuck() -> None:
        watchdog = Watchdog(0.05, None, "m")
        run: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        began = asyncio.Event()
        began.set()  # started at once, then never ends: the limit applies
        await watchdog.watch(run, began)

    with pytest.raises(RunTimedOut):
        asyncio.run(stuck())


def test_batches_waiting_in_an_abandoned_session_run_in_the_fresh_one(tmp_path: Path) -> None:
    """They had been answered "its version was retired" (a tester's: the same version, no reload),
    though none of theirs was at fault: they move, and the host runs them in the slot's fresh one."""
    session = _session(tmp_path, max_rows=16)
    waiting = session.submit(_rows(2))
    session.abandon()
    assert isinstance(waiting.error, Moved) and waiting.done.is_set()
    with pytest.raises(Moved):
        session.submit(_rows(1))  # one submitted as it was abandoned: moves too
    host = SessionHost()
    request = _host_request(tmp_path)
    key = host._answer(("open", request), {})[1]
    first = host._slots[key].session
    assert first is not None
    segment = Segment(tmp_path / "seg", 4096, create=True)
    place = TensorPlace("x", 0, (2, 4), np.dtype(np.float32).str)
    segment.array(place)[...] = _rows(2)["x"]
    runs = iter([Moved(), None])

    def moved_once(arrays: dict[str, np.ndarray], start_by: object = None, on_start: object = None) -> dict:
        if next(runs) is not None:  # the first session abandoned while this batch waited in it
            host._slots[key].session = None
            raise Moved()
        return {"y": 2 * arrays["x"]}

    first.run = moved_once  # type: ignore[method-assign, assignment]
    reply = host._answer(("run", key, str(segment.path), segment.size, [place], None), SegmentMaps())
    assert reply[0] == "ok"
    np.testing.assert_array_equal(reply[1]["y"], 2 * _rows(2)["x"])  # run by the fresh session
    assert host._slots[key].session is not first
    segment.close()
    first.close()
    _close_sessions(host)


def test_a_start_told_after_the_loop_closed_does_not_fail_the_run() -> None:
    """At a stop, a run still queued in the host starts after the event loop has closed: its
    answer went to nobody, but the callback had raised into the executor thread."""
    loop = asyncio.new_event_loop()

    class Queueing:
        def run_blocking_before(self, inputs: object, start_by: object, started: object = None) -> None:
            raise AssertionError

    _began, started = _start_signal(loop, Queueing())  # type: ignore[arg-type]
    loop.close()
    assert started is not None
    started()  # no RuntimeError("Event loop is closed")


def test_a_batch_still_waiting_when_its_start_by_passes_is_answered_then(tmp_path: Path) -> None:
    """Behind another worker's run of seconds, a batch past its deadlines had been answered unrun
    only when its turn came (a tester's: DEADLINE_EXCEEDED 2.9 s late); now at its start_by. A
    batch a run took before then runs on. (No runner here: the test takes the batches.)"""
    session = _session(tmp_path, max_rows=16)
    said: list[object] = []

    def run(start_by: float) -> None:
        try:
            said.append(session.run(_rows(2), start_by=start_by))
        except ExpiredUnrun as err:
            said.append(err)

    waiting = threading.Thread(target=run, args=(time.monotonic() + 0.2,), daemon=True)
    waiting.start()
    waiting.join(30)  # no run ever takes it: answered at its start_by, not never
    assert not waiting.is_alive() and isinstance(said.pop(), ExpiredUnrun)
    assert session.expired == 1 and not session._jobs

    # A run takes the next batch before its start_by (far off: however slow this machine, no
    # race with it), which is then brought to pass while it runs.
    job = session.submit(_rows(2), start_by=time.monotonic() + 60.0)
    assert session._take() == [job]
    job.start_by = time.monotonic() + 0.05

    def wait_for_it() -> None:
        session._wait(job)  # what session.run does after submitting
        said.append(job.error or job.outputs)

    taken_in_time = threading.Thread(target=wait_for_it, daemon=True)
    taken_in_time.start()
    while time.monotonic() < job.start_by + 0.1:  # its start_by passes while it runs
        time.sleep(0.01)
    job.outputs = {"y": np.zeros((2, 4), np.float32)}
    job.done.set()
    session._finished()
    taken_in_time.join(30)
    assert not taken_in_time.is_alive() and list(said.pop()) == ["y"]  # (a dict of outputs)
    assert session.expired == 1
    session.close()


def test_serve_ends_once_its_listener_is_closed(tmp_path: Path) -> None:
    """No more workers can connect: the accept loop ends (it had died with EBADF, a traceback a
    test run reported as an unhandled thread exception)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "host.sock"))
    listener.listen()
    listener.close()
    assert SessionHost().serve(listener) is None
