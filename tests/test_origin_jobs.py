"""The origin's persistent job queue: leases, retries, crashes and concurrent workers.

Lease expiry is driven by an injected clock, never by sleeping; only the tests that involve
real processes (a SIGKILLed worker, two claiming processes) use the real clock, and they
synchronise through files polled against a deadline.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from origin.jobs import (
    SCHEMA_VERSION,
    Job,
    JobQueue,
    JobQueueError,
    PermanentJobError,
    cli,
    default_worker_name,
    format_jobs,
    run_worker,
)
from tests.conftest import subprocess_env

T0 = 1_700_000_000.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "jobs.sqlite3"


@pytest.fixture
def open_queue(db: Path, clock: Clock) -> Iterator[Callable[..., JobQueue]]:
    """Factory for JobQueue instances on the test's file (fake clock unless given)."""
    opened: list[JobQueue] = []

    def make(**kw: Any) -> JobQueue:
        kw.setdefault("clock", clock)
        q = JobQueue(db, **kw)
        opened.append(q)
        return q

    yield make
    for q in opened:
        q.close()


@pytest.fixture
def queue(open_queue: Callable[..., JobQueue]) -> JobQueue:
    return open_queue()


async def until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)


def state(queue: JobQueue, job_id: int) -> Job:
    job = queue.get(job_id)
    assert job is not None
    return job


# -- the queue ------------------------------------------------------------------------------


def test_round_trip(queue: JobQueue, clock: Clock) -> None:
    job = queue.enqueue("ingest", {"title": "title1", "source": "s3://in/title1.mov"})
    assert (job.state, job.attempts, job.max_attempts) == ("queued", 0, 3)
    assert job.payload == {"title": "title1", "source": "s3://in/title1.mov"}
    assert job.created == job.updated == T0

    clock.advance(5)
    claimed = queue.claim("w1")
    assert claimed is not None and claimed.id == job.id
    assert (claimed.state, claimed.attempts, claimed.lease_owner) == ("running", 1, "w1")
    assert claimed.lease_expires == T0 + 5 + 60
    assert claimed == queue.get(job.id)
    assert queue.claim("w2") is None

    assert queue.complete(job.id, "w1", {"renditions": ["1080p", "720p"]})
    done = state(queue, job.id)
    assert done.state == "done" and done.result == {"renditions": ["1080p", "720p"]}
    assert done.progress == 1.0 and done.lease_expires is None and done.error is None
    assert queue.claim("w2") is None
    assert not queue.complete(job.id, "w1"), "completing twice is refused"
    assert queue.get(12345) is None


def test_fifo(queue: JobQueue, clock: Clock) -> None:
    ids = []
    for i in range(5):
        ids.append(queue.enqueue("ingest", {"n": i}).id)
        clock.advance(1)
    claimed = [queue.claim("w") for _ in range(5)]
    assert [j.id for j in claimed if j is not None] == ids
    assert queue.claim("w") is None


def test_kinds_filter(queue: JobQueue) -> None:
    ingest = queue.enqueue("ingest", {})
    thumb = queue.enqueue("thumbnail", {})
    assert queue.claim("w", kinds=[]) is None
    assert queue.claim("w", kinds=["package"]) is None
    got = queue.claim("w", kinds=["thumbnail", "package"])
    assert got is not None and got.id == thumb.id
    # A bare string is one kind, not a sequence of one-letter kinds.
    got = queue.claim("w", kinds="ingest")
    assert got is not None and got.id == ingest.id


def test_dedupe_key(queue: JobQueue) -> None:
    first = queue.enqueue("ingest", {"title": "t1"}, dedupe_key="ingest:t1")
    again = queue.enqueue("ingest", {"title": "t1", "other": 1}, dedupe_key="ingest:t1")
    assert again == first, "an active job with the key is returned, not a new one"
    other = queue.enqueue("ingest", {"title": "t2"}, dedupe_key="ingest:t2")
    assert other.id != first.id
    plain = [queue.enqueue("ingest", {"title": "t1"}) for _ in range(2)]
    assert plain[0].id != plain[1].id, "no key, no deduplication"

    claimed = queue.claim("w")
    assert claimed is not None and claimed.id == first.id
    assert queue.enqueue("ingest", {}, dedupe_key="ingest:t1").id == first.id, "running counts"
    assert queue.complete(first.id, "w")
    fresh = queue.enqueue("ingest", {"title": "t1"}, dedupe_key="ingest:t1")
    assert fresh.id not in (first.id, other.id, *(p.id for p in plain))
    assert fresh.state == "queued"


def test_payload_must_be_json(queue: JobQueue) -> None:
    with pytest.raises(TypeError):
        queue.enqueue("ingest", {"when": object()})
    assert queue.list() == []


def test_dead_worker_job_is_picked_up_again(queue: JobQueue, clock: Clock) -> None:
    job = queue.enqueue("ingest", {"title": "t1"})
    assert queue.claim("doomed") is not None
    clock.advance(59)
    assert queue.claim("rescuer") is None, "the lease still holds"
    clock.advance(1)  # the doomed worker never heartbeat: its lease runs out
    again = queue.claim("rescuer")
    assert again is not None and again.id == job.id
    assert (again.attempts, again.lease_owner, again.lost_leases) == (2, "rescuer", 1)

    before = state(queue, job.id)
    # The doomed worker comes back (it was only frozen): everything it says is refused.
    assert not queue.heartbeat(job.id, "doomed", 0.9, "late")
    assert not queue.complete(job.id, "doomed", {"by": "doomed"})
    assert not queue.fail(job.id, "doomed", "late failure")
    assert state(queue, job.id) == before

    assert queue.heartbeat(job.id, "rescuer", 0.5, "encoding")
    assert queue.complete(job.id, "rescuer", {"by": "rescuer"})
    done = state(queue, job.id)
    assert (done.state, done.attempts, done.result) == ("done", 2, {"by": "rescuer"})


def test_heartbeat_extends_lease_and_records_progress(queue: JobQueue, clock: Clock) -> None:
    job = queue.enqueue("ingest", {})
    assert queue.claim("w") is not None
    for _ in range(5):
        clock.advance(50)
        assert queue.heartbeat(job.id, "w", 0.25, "encoding 1080p")
        assert queue.claim("other") is None
    j = state(queue, job.id)
    assert j.lease_expires == clock.now + 60
    assert (j.progress, j.note) == (0.25, "encoding 1080p")
    # None leaves the previous value; nonsense progress is clamped or ignored.
    assert queue.heartbeat(job.id, "w", 7.0)
    assert (state(queue, job.id).progress, state(queue, job.id).note) == (1.0, "encoding 1080p")
    assert queue.heartbeat(job.id, "w", float("nan"), "packaging")
    assert (state(queue, job.id).progress, state(queue, job.id).note) == (1.0, "packaging")


def test_slow_owner_may_finish_if_nobody_reclaimed(queue: JobQueue, clock: Clock) -> None:
    job = queue.enqueue("ingest", {})
    assert queue.claim("slow") is not None
    clock.advance(600)
    # Lease expired but no one took the job over: the work is not wasted.
    assert queue.heartbeat(job.id, "slow")
    clock.advance(600)
    assert queue.complete(job.id, "slow", {"ok": True})
    assert state(queue, job.id).state == "done"


def test_workers_dying_every_time_fails_the_job(
    open_queue: Callable[..., JobQueue], clock: Clock
) -> None:
    queue = open_queue(max_attempts=2)
    poison = queue.enqueue("ingest", {"title": "poison"})
    fine = queue.enqueue("ingest", {"title": "fine"})
    for n in (1, 2):
        got = queue.claim(f"w{n}")
        assert got is not None and (got.id, got.attempts) == (poison.id, n)
        clock.advance(61)
    # Instead of handing the poison job out a third time, it fails and the next job comes.
    got = queue.claim("w3")
    assert got is not None and got.id == fine.id
    failed = state(queue, poison.id)
    assert failed.state == "failed" and failed.attempts == 2
    assert failed.error is not None and "worker died 2 times" in failed.error
    assert "gave up after 2 of 2 attempts" in failed.error


def test_fail_retry_then_give_up(queue: JobQueue, clock: Clock) -> None:
    job = queue.enqueue("ingest", {})
    for attempt in (1, 2):
        assert queue.claim("w") is not None
        assert queue.fail(job.id, "w", f"ffmpeg exited 1 (try {attempt})")
        j = state(queue, job.id)
        assert (j.state, j.attempts, j.lease_owner) == ("queued", attempt, None)
        assert j.error == f"ffmpeg exited 1 (try {attempt})"
    assert queue.claim("w") is not None
    assert queue.fail(job.id, "w", "ffmpeg exited 1")
    j = state(queue, job.id)
    assert (j.state, j.attempts) == ("failed", 3)
    assert j.error == "ffmpeg exited 1 (attempt 3 of 3; giving up)"
    assert queue.claim("w") is None
    assert not queue.fail(job.id, "w", "again"), "a failed job cannot fail twice"


def test_fail_without_retry(queue: JobQueue) -> None:
    job = queue.enqueue("ingest", {}, max_attempts=5)
    assert queue.claim("w") is not None
    assert queue.fail(job.id, "w", "source is not a video", retry=False)
    j = state(queue, job.id)
    assert (j.state, j.attempts, j.error) == ("failed", 1, "source is not a video")


def test_failure_after_lost_leases_mentions_both(
    open_queue: Callable[..., JobQueue], clock: Clock
) -> None:
    queue = open_queue(max_attempts=2)
    job = queue.enqueue("ingest", {})
    assert queue.claim("a") is not None
    assert queue.fail(job.id, "a", "RuntimeError: boom")
    assert queue.claim("b") is not None
    clock.advance(61)
    assert queue.claim("c") is None
    j = state(queue, job.id)
    assert j.state == "failed" and j.error is not None
    assert "worker died 1 time " in j.error and "earlier error: RuntimeError: boom" in j.error


def test_cancel(queue: JobQueue) -> None:
    queued = queue.enqueue("ingest", {})
    running = queue.enqueue("ingest", {})
    finished = queue.enqueue("ingest", {})
    assert queue.cancel(queued.id)
    assert (c := queue.claim("w")) is not None and c.id == running.id
    assert (c := queue.claim("w")) is not None and c.id == finished.id
    assert queue.complete(finished.id, "w")

    assert queue.cancel(running.id)
    assert not queue.heartbeat(running.id, "w"), "the worker learns it must stop"
    assert not queue.complete(running.id, "w")
    assert not queue.cancel(finished.id) and not queue.cancel(queued.id)
    assert not queue.cancel(999)
    states = {j.id: j.state for j in queue.list()}
    assert states == {queued.id: "cancelled", running.id: "cancelled", finished.id: "done"}
    assert queue.claim("w") is None


def test_list(queue: JobQueue) -> None:
    jobs = [queue.enqueue("ingest", {"n": i}) for i in range(5)]
    assert queue.claim("w") is not None
    assert [j.id for j in queue.list()] == [j.id for j in reversed(jobs)], "newest first"
    assert [j.id for j in queue.list(limit=2)] == [jobs[4].id, jobs[3].id]
    assert [j.id for j in queue.list(["running"])] == [jobs[0].id]
    assert len(queue.list(["queued", "running"])) == 5
    assert queue.list(["done"]) == []
    with pytest.raises(ValueError, match="unknown job state"):
        queue.list(["finished"])


def test_persists_and_versions_schema(db: Path, clock: Clock) -> None:
    with JobQueue(db, clock=clock) as q:
        job = q.enqueue("ingest", {"title": "t1"}, dedupe_key="k")
        assert q.claim("w") is not None
    with JobQueue(db, clock=clock) as q:
        again = q.get(job.id)
        assert again is not None and (again.state, again.lease_owner) == ("running", "w")
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        con.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
        con.commit()
    finally:
        con.close()
    with pytest.raises(JobQueueError, match="newer"):
        JobQueue(db, clock=clock)


def test_rejects_bad_settings(db: Path) -> None:
    with pytest.raises(ValueError):
        JobQueue(db, lease_seconds=0)
    with pytest.raises(ValueError):
        JobQueue(db, max_attempts=0)


def test_worker_names_are_unique() -> None:
    names = {default_worker_name("ingest") for _ in range(100)}
    assert len(names) == 100 and all(n.startswith("ingest@") for n in names)


# -- several instances and processes on one file ---------------------------------------------

CLAIMER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from origin.jobs import JobQueue

    db, name, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    q = JobQueue(Path(db))
    (go.parent / f"ready-{name}").touch()
    deadline = time.monotonic() + 20
    while not go.exists():  # start together with the others
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.005)
    while (job := q.claim(name)) is not None:
        print(job.id, flush=True)
        time.sleep(0.002)  # the "work", so claimers interleave
        assert q.complete(job.id, name, {"by": name})
    q.close()
    """
)


def test_two_instances_in_one_process_never_share_a_job(
    open_queue: Callable[..., JobQueue],
) -> None:
    a, b = open_queue(), open_queue()
    ids = {a.enqueue("ingest", {"n": i}).id for i in range(10)}
    got: list[int] = []
    for i in range(10):
        q, name = (a, "a") if i % 2 else (b, "b")
        job = q.claim(name)
        assert job is not None
        got.append(job.id)
    assert sorted(got) == sorted(ids) and a.claim("a") is None and b.claim("b") is None


@pytest.mark.slow
def test_concurrent_processes_and_threads_claim_each_job_once(db: Path, tmp_path: Path) -> None:
    n = 200
    with JobQueue(db) as q:
        ids = {q.enqueue("ingest", {"n": i}).id for i in range(n)}
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(db), f"proc{i}", str(go)],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    claimed: dict[str, list[int]] = {}

    go_event = threading.Event()

    def in_process(name: str) -> None:
        # Two more claimers in this process, each with its own JobQueue (connection).
        with JobQueue(db) as mine:
            got = claimed.setdefault(name, [])
            assert go_event.wait(30)
            while (job := mine.claim(name)) is not None:
                got.append(job.id)
                time.sleep(0.002)
                assert mine.complete(job.id, name, {"by": name})

    try:
        threads = [threading.Thread(target=in_process, args=(f"thread{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        # Everyone opens the database first, then all start claiming at once.
        deadline = time.monotonic() + 20
        while not all((tmp_path / f"ready-proc{i}").exists() for i in range(2)):
            assert time.monotonic() < deadline, "claimer processes did not start"
            assert all(p.poll() is None for p in procs), "a claimer process exited early"
            time.sleep(0.01)
        go.touch()
        go_event.set()
        for t in threads:
            t.join(timeout=30)
            assert not t.is_alive()
        for i, p in enumerate(procs):
            out, err = p.communicate(timeout=30)
            assert p.returncode == 0, err
            claimed[f"proc{i}"] = [int(line) for line in out.split()]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
    assert claimed["proc0"] or claimed["proc1"], "another process took part"
    everything = [i for got in claimed.values() for i in got]
    assert sorted(everything) == sorted(ids), "every job claimed exactly once"
    with JobQueue(db) as q:
        jobs = q.list(limit=n)
        assert len(jobs) == n
        for j in jobs:
            assert (j.state, j.attempts) == ("done", 1)
            assert j.result is not None and j.id in claimed[j.result["by"]]


# -- run_worker --------------------------------------------------------------------------------


async def test_worker_runs_jobs_and_records_progress(queue: JobQueue) -> None:
    job = queue.enqueue("ingest", {"title": "t1"})
    seen: list[Job] = []

    async def ingest(j: Job, progress: Callable[[float, str | None], None]) -> dict[str, Any]:
        seen.append(j)
        progress(0.5, "encoding 720p")
        await until(lambda: state(queue, j.id).progress == 0.5, what="progress written")
        assert state(queue, j.id).note == "encoding 720p"
        return {"renditions": 4}

    assert await run_worker(queue, "w", {"ingest": ingest}, once=True) == 1
    assert [j.id for j in seen] == [job.id] and seen[0].state == "running"
    done = state(queue, job.id)
    assert (done.state, done.result, done.note) == ("done", {"renditions": 4}, "encoding 720p")
    assert await run_worker(queue, "w", {"ingest": ingest}, once=True) == 0, "nothing left"


async def test_worker_only_takes_kinds_it_handles(queue: JobQueue) -> None:
    other = queue.enqueue("thumbnail", {})

    async def ingest(j: Job, progress: Callable[[float, str | None], None]) -> None:
        raise AssertionError("not an ingest job")

    assert await run_worker(queue, "w", {"ingest": ingest}, once=True) == 0
    assert state(queue, other.id).state == "queued"


async def test_handler_exception_retries_then_fails(queue: JobQueue) -> None:
    job = queue.enqueue("ingest", {"title": "t1"})
    calls = 0

    async def broken(j: Job, progress: Callable[[float, str | None], None]) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError(f"ffmpeg exited 1 on try {calls}")

    for attempt in (1, 2):
        assert await run_worker(queue, "w", {"ingest": broken}, once=True) == 1
        j = state(queue, job.id)
        assert (j.state, j.attempts) == ("queued", attempt)
        assert j.error == f"RuntimeError: ffmpeg exited 1 on try {attempt}"
    assert await run_worker(queue, "w", {"ingest": broken}, once=True) == 1
    j = state(queue, job.id)
    assert (j.state, j.attempts) == ("failed", 3)
    assert j.error is not None and j.error.startswith("RuntimeError: ffmpeg exited 1 on try 3")
    assert await run_worker(queue, "w", {"ingest": broken}, once=True) == 0
    assert calls == 3


async def test_permanent_error_and_unstorable_result_fail_at_once(queue: JobQueue) -> None:
    bad_input = queue.enqueue("probe", {})
    bad_result = queue.enqueue("weird", {})

    async def probe(j: Job, progress: Callable[[float, str | None], None]) -> None:
        raise PermanentJobError("source has no video stream")

    async def weird(j: Job, progress: Callable[[float, str | None], None]) -> dict[str, Any]:
        return {"x": object()}

    handlers = {"probe": probe, "weird": weird}
    assert await run_worker(queue, "w", handlers, once=True) == 1
    assert await run_worker(queue, "w", handlers, once=True) == 1
    j = state(queue, bad_input.id)
    assert (j.state, j.attempts, j.error) == ("failed", 1, "source has no video stream")
    j = state(queue, bad_result.id)
    assert j.state == "failed" and j.error is not None and "not storable" in j.error


async def test_heartbeat_timer_keeps_a_long_handler_leased(
    open_queue: Callable[..., JobQueue],
) -> None:
    # Real clock and a short lease: the handler outlives several leases without reporting.
    queue = open_queue(clock=time.time, lease_seconds=0.6)
    thief = open_queue(clock=time.time, lease_seconds=0.6)
    job = queue.enqueue("ingest", {})

    async def long(j: Job, progress: Callable[[float, str | None], None]) -> dict[str, Any]:
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            assert thief.claim("thief") is None, "the lease must not expire"
            await asyncio.sleep(0.05)
        return {"ok": True}

    assert await run_worker(queue, "w", {"ingest": long}, once=True) == 1
    j = state(queue, job.id)
    assert (j.state, j.attempts, j.lease_owner) == ("done", 1, "w")


async def test_lost_lease_cancels_the_handler(
    open_queue: Callable[..., JobQueue], clock: Clock
) -> None:
    # Fake clock, short lease: heartbeats tick every 0.1 s of real time, but the lease only
    # expires when the test moves the clock.
    queue = open_queue(lease_seconds=0.3)
    job = queue.enqueue("ingest", {})
    started = asyncio.Event()
    outcome: list[str] = []

    async def stuck(j: Job, progress: Callable[[float, str | None], None]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    worker = asyncio.create_task(run_worker(queue, "slow", {"ingest": stuck}, once=True))
    await asyncio.wait_for(started.wait(), 10)
    clock.advance(1.0)
    taken = queue.claim("rescuer")
    assert taken is not None and (taken.id, taken.attempts) == (job.id, 2)
    assert await asyncio.wait_for(worker, 10) == 0, "a job lost to another worker is not counted"
    assert outcome == ["cancelled"]
    j = state(queue, job.id)
    assert (j.state, j.lease_owner, j.attempts) == ("running", "rescuer", 2)


async def test_cancelling_a_job_stops_its_handler(
    open_queue: Callable[..., JobQueue],
) -> None:
    queue = open_queue(lease_seconds=0.3)
    job = queue.enqueue("ingest", {})
    started = asyncio.Event()

    async def stuck(j: Job, progress: Callable[[float, str | None], None]) -> None:
        started.set()
        await asyncio.Event().wait()

    worker = asyncio.create_task(run_worker(queue, "w", {"ingest": stuck}, once=True))
    await asyncio.wait_for(started.wait(), 10)
    assert queue.cancel(job.id)
    assert await asyncio.wait_for(worker, 10) == 0
    assert state(queue, job.id).state == "cancelled"


async def test_cancelled_worker_leaves_the_job_for_others(queue: JobQueue, clock: Clock) -> None:
    job = queue.enqueue("ingest", {})
    started = asyncio.Event()

    async def stuck(j: Job, progress: Callable[[float, str | None], None]) -> None:
        started.set()
        await asyncio.Event().wait()

    worker = asyncio.create_task(run_worker(queue, "w1", {"ingest": stuck}))
    await asyncio.wait_for(started.wait(), 10)
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker
    j = state(queue, job.id)
    assert (j.state, j.lease_owner) == ("running", "w1"), "not failed, not completed"

    async def fine(j: Job, progress: Callable[[float, str | None], None]) -> dict[str, Any]:
        return {"ok": True}

    assert await run_worker(queue, "w2", {"ingest": fine}, once=True) == 0, "lease still held"
    clock.advance(61)
    assert await run_worker(queue, "w2", {"ingest": fine}, once=True) == 1
    j = state(queue, job.id)
    assert (j.state, j.attempts, j.lease_owner) == ("done", 2, "w2")


async def test_stop_event_ends_an_idle_worker(queue: JobQueue) -> None:
    stop = asyncio.Event()

    async def fine(j: Job, progress: Callable[[float, str | None], None]) -> None:
        return None

    worker = asyncio.create_task(
        run_worker(queue, "w", {"ingest": fine}, poll_interval=0.01, stop=stop)
    )
    queue.enqueue("ingest", {})
    await until(lambda: queue.list(["done"]) != [], what="the job to be done")
    stop.set()
    assert await asyncio.wait_for(worker, 10) == 1


# -- a worker process killed mid-job -------------------------------------------------------

DOOMED = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from origin.jobs import JobQueue, run_worker

    db, started = Path(sys.argv[1]), Path(sys.argv[2])

    async def handler(job, progress):
        progress(0.1, "started")
        started.touch()
        await asyncio.Event().wait()  # hangs until the test kills the process

    queue = JobQueue(db, lease_seconds=1.0)
    asyncio.run(run_worker(queue, "doomed", {"ingest": handler}, poll_interval=0.05))
    """
)


@pytest.mark.slow
async def test_sigkilled_worker_job_is_finished_by_another(db: Path, tmp_path: Path) -> None:
    queue = JobQueue(db, lease_seconds=1.0)
    try:
        job = queue.enqueue("ingest", {"title": "t1"})
        started = tmp_path / "started"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            DOOMED,
            str(db),
            str(started),
            env=subprocess_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await until(
                lambda: started.exists() or proc.returncode is not None,
                timeout=20,
                what="the doomed worker to start its job",
            )
            assert proc.returncode is None, "the worker process exited early"
            j = state(queue, job.id)
            assert (j.state, j.lease_owner, j.attempts) == ("running", "doomed", 1)
            os.kill(proc.pid, signal.SIGKILL)
            assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGKILL
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            assert proc.stderr is not None
            await proc.stderr.read()

        stop = asyncio.Event()

        async def handler(j: Job, progress: Callable[[float, str | None], None]) -> dict[str, Any]:
            stop.set()
            return {"rescued": True}

        # The rescuer polls; it gets the job once the dead worker's 1 s lease runs out.
        processed = await asyncio.wait_for(
            run_worker(queue, "rescuer", {"ingest": handler}, poll_interval=0.05, stop=stop), 20
        )
        assert processed == 1
        j = state(queue, job.id)
        assert (j.state, j.attempts, j.lease_owner) == ("done", 2, "rescuer")
        assert j.result == {"rescued": True} and j.lost_leases == 1
    finally:
        queue.close()


# -- the listing -----------------------------------------------------------------------------


def test_format_jobs(queue: JobQueue, clock: Clock) -> None:
    assert format_jobs([], clock.now) == "no jobs"
    done = queue.enqueue("ingest", {"title": "big-buck-bunny"})
    running = queue.enqueue("ingest", {"title": "sintel"})
    failed = queue.enqueue("ingest", {"title": "tears"}, max_attempts=1)
    queue.enqueue("thumbnail", {})
    cancelled = queue.enqueue("ingest", {"title": "x"})
    clock.advance(3 * 3600 + 5)
    for _ in (done, running, failed):
        assert queue.claim("w1", kinds=["ingest"]) is not None
    assert queue.heartbeat(done.id, "w1", 0.9, "publishing")
    assert queue.complete(done.id, "w1")
    assert queue.heartbeat(running.id, "w1", 0.42, "encoding 720p")
    assert queue.fail(failed.id, "w1", "ffmpeg: moov atom not found\n" + "x" * 200)
    assert queue.cancel(cancelled.id)

    text = format_jobs(queue.list(), clock.now)
    lines = text.splitlines()
    assert len(lines) == 6 and lines[0].split()[:4] == ["ID", "KIND", "TITLE", "STATE"]
    for word in ("queued", "running", "done", "failed", "cancelled"):
        assert word in text
    row = next(line for line in lines if "sintel" in line)
    assert "42%" in row and "encoding 720p" in row and "3h" in row and "1/3" in row
    row = next(line for line in lines if "big-buck-bunny" in line)
    assert "done" in row and "publishing" not in row  # the last step's note is over
    row = next(line for line in lines if "tears" in line)
    assert "ffmpeg: moov atom not found" in row and row.endswith("…") and len(row) < 200
    # Two minutes on, the running job's lease is long gone: say so.
    later = format_jobs(queue.list(), clock.now + 120).splitlines()
    row = next(line for line in later if "sintel" in line)
    assert "lease expired 1m ago (w1 died?)" in row


def test_cli_lists_jobs(db: Path, clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--db", str(db)]) == 2
    assert "no job database" in capsys.readouterr().err
    assert not db.exists(), "listing does not create a database"
    with JobQueue(db, clock=clock) as q:
        q.enqueue("ingest", {"title": "sintel"})
        j = q.enqueue("ingest", {"title": "tears"})
        assert q.claim("w", kinds=["ingest"]) is not None
        q.cancel(j.id)
    out = io.StringIO()
    assert cli(["--db", str(db)], out=out) == 0
    assert "sintel" in out.getvalue() and "running" in out.getvalue()
    assert "cancelled" in out.getvalue()
    out = io.StringIO()
    assert cli(["--db", str(db), "--state", "cancelled"], out=out) == 0
    assert "tears" in out.getvalue() and "sintel" not in out.getvalue()
