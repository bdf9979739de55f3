"""The origin's persistent job queue: jobs that survive crashes.

Ingest jobs (a source video turned into an ABR ladder) take minutes and run in worker
processes that may die at any point. The queue keeps every job in SQLite; a worker
*claims* a job by taking a time-limited lease on it and keeps the lease alive with
heartbeats. A worker that dies stops heartbeating, its lease expires, and the next
``claim`` by any worker hands the job out again (a message that is never acknowledged
is redelivered). A job whose workers keep dying is given up after ``max_attempts``.

    queue = JobQueue(Path("/srv/origin/jobs.sqlite3"))
    queue.enqueue("ingest", {"title": "title1", "source": "..."}, dedupe_key="ingest:title1")
    await run_worker(queue, default_worker_name("ingest"), {"ingest": ingest_handler})

Several processes may open the same file at once (each with its own ``JobQueue``);
every state change is one ``BEGIN IMMEDIATE`` transaction, so two workers can never
claim the same job. The file must be on a local filesystem (WAL needs shared memory).

States: queued -> running -> done | failed | cancelled; running -> queued when an
attempt fails and attempts remain. ``python -m origin.jobs --db FILE`` lists jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import builtins
import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

log = logging.getLogger("origin.jobs")

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
ACTIVE_STATES = (QUEUED, RUNNING)

DEFAULT_DB_PATH = Path("var/origin/jobs.sqlite")  # as origin/config.py's JobsConfig

# Stored error texts are for people reading `jobs` output and logs, not for tracebacks.
_MAX_ERROR_CHARS = 4000

# Each entry upgrades the schema by one version; never edit a released entry, append a new
# one. Statements are run one by one inside the caller's transaction (executescript would
# commit it first, letting two processes race through the same migration).
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            payload TEXT NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            lost_leases INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_expires REAL,
            progress REAL,
            note TEXT,
            error TEXT,
            result TEXT,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            dedupe_key TEXT
        )
        """,
        "CREATE INDEX jobs_by_state ON jobs (state, id)",
        # Enforces "one active job per dedupe key" even if a future code path forgets to
        # look first; finished jobs keep their key for the record without blocking new ones.
        """
        CREATE UNIQUE INDEX jobs_active_dedupe ON jobs (dedupe_key)
            WHERE dedupe_key IS NOT NULL AND state IN ('queued', 'running')
        """,
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_COLUMNS = (
    "id, kind, payload, state, attempts, max_attempts, lost_leases, lease_owner, "
    "lease_expires, progress, note, error, result, created, updated, dedupe_key"
)


class JobQueueError(Exception):
    """The job database cannot be used (e.g. written by a newer version of this code)."""


class PermanentJobError(Exception):
    """Raised by a handler for a job that cannot succeed (bad input): fail without retrying."""


@dataclass(frozen=True)
class Job:
    """A snapshot of one job row; the database is the truth, re-read with ``get``."""

    id: int
    kind: str
    payload: dict[str, Any]
    state: str
    attempts: int
    max_attempts: int
    lease_owner: str | None
    lease_expires: float | None
    progress: float | None
    note: str | None
    error: str | None
    result: dict[str, Any] | None
    created: float
    updated: float
    dedupe_key: str | None
    # How many attempts ended because the lease expired (the worker died or hung).
    lost_leases: int = 0

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def _job(row: sqlite3.Row | tuple[Any, ...]) -> Job:
    (
        id_,
        kind,
        payload,
        state,
        attempts,
        max_attempts,
        lost_leases,
        lease_owner,
        lease_expires,
        progress,
        note,
        error,
        result,
        created,
        updated,
        dedupe_key,
    ) = row
    return Job(
        id=id_,
        kind=kind,
        payload=json.loads(payload),
        state=state,
        attempts=attempts,
        max_attempts=max_attempts,
        lost_leases=lost_leases,
        lease_owner=lease_owner,
        lease_expires=lease_expires,
        progress=progress,
        note=note,
        error=error,
        result=None if result is None else json.loads(result),
        created=created,
        updated=updated,
        dedupe_key=dedupe_key,
    )


def _clip(text: str, limit: int = _MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def default_worker_name(prefix: str = "worker") -> str:
    """A name unique to this process: leases are owned by name, so two live workers must
    never share one (a restarted worker under the same name could finish its dead
    predecessor's attempt)."""
    return f"{prefix}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobQueue:
    """A persistent job queue in one SQLite file; one connection per instance.

    Methods are thread-safe (one lock around the connection) so ``run_worker`` can keep
    database waits off the event loop. ``clock`` is injectable so tests move lease expiry
    without sleeping.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        clock: Callable[[], float] = time.time,
        lease_seconds: float = 60.0,
        max_attempts: int = 3,
        busy_timeout: float = 30.0,
    ) -> None:
        if not lease_seconds > 0:
            raise ValueError("lease_seconds must be positive")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.path = Path(path)
        self.lease_seconds = float(lease_seconds)
        self.max_attempts = max_attempts
        self._clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; every write below opens its own
        # BEGIN IMMEDIATE so the write lock is taken up front (no read-then-upgrade
        # deadlocks between processes). The timeout is SQLite's busy handler.
        self._db = sqlite3.connect(
            self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                # Still correct with a rollback journal, only readers and writers block
                # each other more; happens on filesystems without shared memory.
                log.warning("job database %s: journal_mode is %s, not wal", self.path, mode)
            # FULL: a job enqueued or completed must survive a power cut, not only a crash;
            # the queue writes little, so the extra fsync is cheap.
            self._db.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            current = 0 if row is None else int(row[0])
            if current > SCHEMA_VERSION:
                raise JobQueueError(
                    f"{self.path}: job database schema version {current} is newer than "
                    f"this code understands ({SCHEMA_VERSION}); upgrade before using it"
                )
            for statements in _MIGRATIONS[current:]:
                for statement in statements:
                    db.execute(statement)
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif current != SCHEMA_VERSION:
                db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    @staticmethod
    def _select(db: sqlite3.Connection, job_id: int) -> Job | None:
        row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    # -- producers --------------------------------------------------------------------------

    def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        dedupe_key: str | None = None,
        max_attempts: int | None = None,
    ) -> Job:
        """Add a job; with ``dedupe_key``, an active (queued or running) job with the same
        key is returned instead, so re-submitting an ingest does not run it twice."""
        attempts = self.max_attempts if max_attempts is None else max_attempts
        if attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        body = json.dumps(dict(payload), sort_keys=True)  # TypeError before touching the db
        with self._tx() as db:
            if dedupe_key is not None:
                row = db.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE dedupe_key = ? "
                    "AND state IN ('queued', 'running')",
                    (dedupe_key,),
                ).fetchone()
                if row is not None:
                    return _job(row)
            now = self._clock()
            cur = db.execute(
                "INSERT INTO jobs (kind, payload, state, max_attempts, created, updated, "
                "dedupe_key) VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                (kind, body, attempts, now, now, dedupe_key),
            )
            assert cur.lastrowid is not None
            job = self._select(db, cur.lastrowid)
            assert job is not None
            return job

    def cancel(self, job_id: int) -> bool:
        """Stop a queued or running job; a running one's worker learns at its next
        heartbeat and abandons the handler. False if the job had already finished."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'cancelled', lease_expires = NULL, updated = ? "
                "WHERE id = ? AND state IN ('queued', 'running')",
                (self._clock(), job_id),
            )
            return cur.rowcount == 1

    # -- workers ----------------------------------------------------------------------------

    def claim(self, worker: str, kinds: Sequence[str] | None = None) -> Job | None:
        """Lease the oldest claimable job to ``worker``: a queued one, or a running one whose
        lease expired (its worker died). None if there is nothing to do."""
        if isinstance(kinds, str):  # a bare "ingest" is a Sequence[str] of letters
            kinds = (kinds,)
        if kinds is not None and not kinds:
            return None
        kind_clause = ""
        if kinds is not None:
            kind_clause = f" AND kind IN ({', '.join('?' * len(kinds))})"
        with self._tx() as db:
            now = self._clock()
            while True:
                row = db.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE (state = 'queued' OR "
                    f"(state = 'running' AND lease_expires <= ?)){kind_clause} "
                    "ORDER BY id LIMIT 1",
                    (now, *(kinds or ())),
                ).fetchone()
                if row is None:
                    return None
                job = _job(row)
                lost = job.lost_leases
                if job.state == RUNNING:
                    lost += 1
                    if job.attempts >= job.max_attempts:
                        # Handing it out again could crash yet another worker (a source that
                        # kills ffmpeg, say): give up and look for the next job instead.
                        error = (
                            f"worker died {lost} {'time' if lost == 1 else 'times'} (lease "
                            f"expired; last owner {job.lease_owner}); gave up after "
                            f"{job.attempts} of {job.max_attempts} attempts"
                        )
                        if job.error:
                            error += f"; earlier error: {job.error}"
                        db.execute(
                            "UPDATE jobs SET state = 'failed', lost_leases = ?, error = ?, "
                            "lease_expires = NULL, updated = ? WHERE id = ?",
                            (lost, _clip(error), now, job.id),
                        )
                        log.warning("job %d given up: %s", job.id, error)
                        continue
                    log.warning(
                        "job %d: lease of %s expired, handing it to %s (attempt %d of %d)",
                        job.id,
                        job.lease_owner,
                        worker,
                        job.attempts + 1,
                        job.max_attempts,
                    )
                expires = now + self.lease_seconds
                # Progress and note describe one attempt; a new attempt starts from zero.
                db.execute(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1, "
                    "lost_leases = ?, lease_owner = ?, lease_expires = ?, progress = NULL, "
                    "note = NULL, updated = ? WHERE id = ?",
                    (lost, worker, expires, now, job.id),
                )
                return dataclasses.replace(
                    job,
                    state=RUNNING,
                    attempts=job.attempts + 1,
                    lost_leases=lost,
                    lease_owner=worker,
                    lease_expires=expires,
                    progress=None,
                    note=None,
                    updated=now,
                )

    # Ownership is "running and leased to this worker", not "lease unexpired": a worker
    # that was merely slow may still heartbeat or finish if nobody has re-claimed the job
    # meanwhile, which saves redoing the work; once another worker claims it, the owner
    # changes and every late call from the old one is refused.

    def heartbeat(
        self,
        job_id: int,
        worker: str,
        progress: float | None = None,
        note: str | None = None,
    ) -> bool:
        """Extend the lease (and record progress/note when given). False if ``worker`` no
        longer owns the job: stop working on it."""
        if progress is not None:
            progress = min(1.0, max(0.0, progress)) if math.isfinite(progress) else None
        with self._tx() as db:
            now = self._clock()
            cur = db.execute(
                "UPDATE jobs SET lease_expires = ?, updated = ?, "
                "progress = COALESCE(?, progress), note = COALESCE(?, note) "
                "WHERE id = ? AND state = 'running' AND lease_owner = ?",
                (now + self.lease_seconds, now, progress, note, job_id, worker),
            )
            return cur.rowcount == 1

    def complete(self, job_id: int, worker: str, result: Mapping[str, Any] | None = None) -> bool:
        """Mark the job done. False (and nothing changed) if ``worker`` lost it."""
        body = None if result is None else json.dumps(dict(result), sort_keys=True)
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'done', result = ?, progress = 1.0, "
                "lease_expires = NULL, updated = ? "
                "WHERE id = ? AND state = 'running' AND lease_owner = ?",
                (body, self._clock(), job_id, worker),
            )
            return cur.rowcount == 1

    def fail(self, job_id: int, worker: str, error: str, *, retry: bool = True) -> bool:
        """End this attempt with ``error``: back to queued if ``retry`` and attempts remain,
        else failed. False (and nothing changed) if ``worker`` lost the job."""
        with self._tx() as db:
            job = self._select(db, job_id)
            if job is None or job.state != RUNNING or job.lease_owner != worker:
                return False
            now = self._clock()
            if retry and job.attempts < job.max_attempts:
                db.execute(
                    "UPDATE jobs SET state = 'queued', error = ?, lease_owner = NULL, "
                    "lease_expires = NULL, updated = ? WHERE id = ?",
                    (_clip(error), now, job_id),
                )
            else:
                if retry:
                    error = f"{error} (attempt {job.attempts} of {job.max_attempts}; giving up)"
                db.execute(
                    "UPDATE jobs SET state = 'failed', error = ?, lease_expires = NULL, "
                    "updated = ? WHERE id = ?",
                    (_clip(error), now, job_id),
                )
            return True

    # -- reading ----------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            return self._select(self._db, job_id)

    def list(self, states: Sequence[str] | None = None, limit: int = 100) -> builtins.list[Job]:
        """The newest ``limit`` jobs (newest first), optionally only in ``states``."""
        if isinstance(states, str):
            states = (states,)
        unknown = sorted(set(states or ()) - set(STATES))
        if unknown:
            raise ValueError(f"unknown job state(s) {unknown}; states are {', '.join(STATES)}")
        where = ""
        if states is not None:
            where = f" WHERE state IN ({', '.join('?' * len(states))})"
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs{where} ORDER BY id DESC LIMIT ?",
                (*(states or ()), limit),
            ).fetchall()
        return [_job(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the worker loop ------------------------------------------------------------------------

Progress = Callable[[float, str | None], None]
Handler = Callable[[Job, Progress], Awaitable[dict[str, Any] | None]]

_T = TypeVar("_T")


async def run_worker(
    queue: JobQueue,
    worker: str,
    handlers: Mapping[str, Handler],
    *,
    poll_interval: float = 1.0,
    stop: asyncio.Event | None = None,
    once: bool = False,
) -> int:
    """Claim and run jobs of the kinds in ``handlers`` until ``stop`` is set; return how
    many jobs were run to an outcome (done, failed or requeued for another attempt).

    A handler gets the job and ``progress(fraction, note)``; its return value is the job's
    result. An exception fails the attempt (``PermanentJobError``: no retry). Setting
    ``stop`` lets the current job finish; cancelling the task abandons it, leaving it
    leased so that it is re-run elsewhere once the lease expires (a worker that is killed
    leaves the same state behind, so there is one recovery path, not two). ``once``: run
    at most one job, and return at once if there is none.

    ``worker`` must be unique among live workers (see ``default_worker_name``).
    """
    if not handlers:
        raise ValueError("run_worker needs at least one handler")
    kinds = tuple(handlers)
    stop = stop if stop is not None else asyncio.Event()
    me = asyncio.current_task()
    # Database calls go to a thread of their own: a busy database (another process holding
    # the write lock) must not freeze the handler, and handlers that fill the default
    # executor must not delay heartbeats.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"jobs-db-{worker}")
    loop = asyncio.get_running_loop()

    async def db(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return await loop.run_in_executor(executor, functools.partial(fn, *args, **kwargs))

    processed = 0
    try:
        while not stop.is_set():
            if me is not None and me.cancelling():
                # A handler that swallowed our cancellation let us get this far.
                raise asyncio.CancelledError
            try:
                job = await db(queue.claim, worker, kinds)
            except sqlite3.OperationalError as exc:  # e.g. locked for longer than busy_timeout
                log.warning("worker %s: cannot claim a job: %s", worker, exc)
                job = None
            if job is None:
                if once:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll_interval)
                continue
            if await _run_job(queue, worker, job, handlers[job.kind], db):
                processed += 1
            if once:
                break
    finally:
        # Don't wait: a call still in the thread (a claim interrupted by cancellation)
        # finishes on its own, and its effect is covered by lease expiry.
        executor.shutdown(wait=False)
    return processed


async def _run_job(
    queue: JobQueue,
    worker: str,
    job: Job,
    handler: Handler,
    db: Callable[..., Awaitable[Any]],
) -> bool:
    """Run one claimed job; True if it reached an outcome, False if the lease was lost."""
    log.info("worker %s: job %d (%s) attempt %d", worker, job.id, job.kind, job.attempts)
    # The progress callback only records the latest value and wakes the heartbeat task,
    # which writes it: handlers can report as often as they like without touching the
    # database, and bursts of reports collapse into one write.
    latest: list[tuple[float | None, str | None]] = [(None, None)]
    wake = asyncio.Event()
    lost = False

    def progress(fraction: float, note: str | None = None) -> None:
        latest[0] = (fraction, note)
        wake.set()

    async def call() -> dict[str, Any] | None:
        return await handler(job, progress)

    work = asyncio.create_task(call(), name=f"job-{job.id}")

    async def heartbeats() -> None:
        nonlocal lost
        # Three beats per lease: one late or failed beat does not lose the lease.
        interval = max(queue.lease_seconds / 3, 0.01)
        # A floor between writes so a chatty handler cannot monopolise the write lock.
        min_gap = min(0.25, interval / 4)
        loop = asyncio.get_running_loop()
        due = loop.time() + interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), max(0.0, due - loop.time()))
            wake.clear()
            fraction, note = latest[0]
            latest[0] = (None, None)
            try:
                owned = await db(queue.heartbeat, job.id, worker, fraction, note)
            except sqlite3.OperationalError as exc:
                # Transient (locked); the lease has slack for the next beat to succeed.
                log.warning("worker %s: heartbeat for job %d failed: %s", worker, job.id, exc)
                if latest[0] == (None, None):
                    latest[0] = (fraction, note)
                owned = True
            if not owned:
                lost = True
                work.cancel()
                return
            due = loop.time() + interval
            await asyncio.sleep(min_gap)

    beat = asyncio.create_task(heartbeats(), name=f"job-{job.id}-heartbeat")
    try:
        try:
            result = await work
        finally:
            await _stop_task(beat)
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if me is not None and me.cancelling():
            log.warning(
                "worker %s cancelled during job %d; it will be re-run when its lease expires",
                worker,
                job.id,
            )
            raise
        if lost:
            log.warning("worker %s lost the lease on job %d; abandoned it", worker, job.id)
            return False
        # The handler raised CancelledError without anyone cancelling it: a failure.
        await _fail(db, queue, worker, job, "handler was cancelled", retry=True)
        return True
    except PermanentJobError as exc:
        await _fail(db, queue, worker, job, str(exc) or type(exc).__name__, retry=False)
        return True
    except Exception as exc:
        log.exception("worker %s: job %d attempt %d failed", worker, job.id, job.attempts)
        await _fail(db, queue, worker, job, f"{type(exc).__name__}: {exc}", retry=True)
        return True
    try:
        done = await db(queue.complete, job.id, worker, result)
    except (TypeError, ValueError) as exc:  # the result is not JSON
        await _fail(db, queue, worker, job, f"handler result is not storable: {exc}", retry=False)
        return True
    if not done:
        log.warning("worker %s finished job %d after losing its lease", worker, job.id)
        return False
    log.info("worker %s: job %d done", worker, job.id)
    return True


async def _fail(
    db: Callable[..., Awaitable[Any]],
    queue: JobQueue,
    worker: str,
    job: Job,
    error: str,
    *,
    retry: bool,
) -> None:
    if not await db(queue.fail, job.id, worker, error, retry=retry):
        log.warning("worker %s: job %d failed after its lease was lost: %s", worker, job.id, error)


async def _stop_task(task: asyncio.Task[Any]) -> None:
    task.cancel()
    # wait() rather than await: do not turn the helper's own end into our exception.
    await asyncio.wait([task])
    if not task.cancelled() and task.exception() is not None:
        log.error("job heartbeat task failed", exc_info=task.exception())


# -- `jobs` listing -------------------------------------------------------------------------


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _cell(text: str, width: int) -> str:
    text = " ".join(text.split())  # one line per job, whatever the error looked like
    return text if len(text) <= width else text[: width - 1] + "…"


def format_jobs(jobs: Sequence[Job], now: float) -> str:
    """A table for people: one line per job, in the order given."""
    if not jobs:
        return "no jobs"
    header = ("ID", "KIND", "TITLE", "STATE", "TRIES", "PROGRESS", "AGE", "NOTE")
    rows = [header]
    for j in jobs:
        title = j.payload.get("title")
        if j.state == FAILED:
            detail = j.error or ""
        elif j.state == RUNNING and j.lease_expires is not None and j.lease_expires <= now:
            detail = f"lease expired {_age(now - j.lease_expires)} ago ({j.lease_owner} died?)"
        elif j.state == RUNNING:
            detail = f"{j.lease_owner}: {j.note}" if j.note else str(j.lease_owner)
        elif j.state == QUEUED and j.error:
            detail = f"retrying after: {j.error}"
        elif j.state == DONE:
            detail = ""  # its note names the last step it ran ("publishing"), long over
        else:
            detail = j.note or ""
        rows.append(
            (
                str(j.id),
                _cell(j.kind, 12),
                _cell("" if title is None else str(title), 24),
                j.state,
                f"{j.attempts}/{j.max_attempts}",
                "-" if j.progress is None else f"{j.progress * 100:.0f}%",
                _age(now - j.created),
                _cell(detail, 60),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def cli(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """``jobs``: list jobs and their states (for ``python -m origin jobs``)."""
    out = out if out is not None else sys.stdout
    parser = argparse.ArgumentParser(prog="python -m origin jobs", description=cli.__doc__)
    parser.add_argument(
        "--db", type=Path, default=DEFAULT_DB_PATH, help=f"job database (default {DEFAULT_DB_PATH})"
    )
    parser.add_argument(
        "--state", action="append", choices=STATES, help="only jobs in this state (repeatable)"
    )
    parser.add_argument("--limit", type=int, default=100, help="newest N jobs (default 100)")
    args = parser.parse_args(argv)
    if not args.db.exists():
        # Listing must not create an empty database somewhere by mistake.
        print(f"error: no job database at {args.db}", file=sys.stderr)
        return 2
    try:
        with JobQueue(args.db) as queue:
            jobs = queue.list(args.state, limit=args.limit)
    except (sqlite3.Error, JobQueueError) as exc:
        print(f"error: {args.db}: {exc}", file=sys.stderr)
        return 2
    print(format_jobs(jobs, time.time()), file=out)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
