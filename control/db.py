"""The data-access layer: one async interface over SQLite and PostgreSQL.

SQLite (WAL) is the embedded default; PostgreSQL (psycopg 3 with a connection pool) is for
several control-plane instances behind a load balancer. Callers write one SQL dialect:

* ``?`` placeholders (translated to ``%s`` for psycopg; a literal ``%`` is escaped for it);
* portable types only: TEXT, INTEGER, BIGINT, DOUBLE PRECISION; booleans are INTEGER 0/1,
  times are unix seconds in DOUBLE PRECISION, ids are TEXT made by the application;
* ``INSERT ... ON CONFLICT (...) DO UPDATE SET x = excluded.x`` and ``RETURNING``, which
  both engines support (SQLite since 3.35);
* rows come back as dicts keyed by column name.

Concurrency. A transaction that must not race another one for the same account serialises
by *writing* a row first (``UPDATE accounts SET version = version + 1 WHERE id = ?``): that
takes the row lock in PostgreSQL (READ COMMITTED) and SQLite transactions are serialised
anyway (``BEGIN IMMEDIATE`` on one writer connection). This replaces ``SELECT ... FOR
UPDATE``, which SQLite lacks.

SQLite runs on the event loop: statements take tens of microseconds, cheaper than a thread
hop. Reads use their own connection, so they see only committed data while a write
transaction is open; writes share one connection behind an asyncio lock. Several processes
may open the same file (WAL); a writer waits up to ``busy_timeout`` for another.
``synchronous=NORMAL`` in WAL mode loses nothing when a process is killed; a power cut may
lose the last commits (``connect(..., sqlite_synchronous="FULL")`` trades write latency for
that; deployments where it matters run PostgreSQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "Database",
    "DatabaseError",
    "IntegrityError",
    "Migration",
    "Tx",
    "UnavailableError",
    "connect",
    "split_statements",
]

Row = dict[str, Any]
Params = Sequence[Any]

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL
)
"""


class DatabaseError(Exception):
    """A database failure the caller cannot fix by changing its input."""


class IntegrityError(DatabaseError):
    """A unique, foreign-key or check constraint refused the write."""


class UnavailableError(DatabaseError):
    """The database cannot be reached (connection refused, pool exhausted, locked too long)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str  # statements separated by ';' at the end of a line


def split_statements(sql: str) -> list[str]:
    """Statements of a migration: split at ';' ending a line (no ';' inside our literals)."""
    parts = re.split(r";[ \t]*(?:\n|\Z)", sql)
    return [p.strip() for p in parts if p.strip() and not _only_comments(p)]


def _only_comments(text: str) -> bool:
    return all(not ln.strip() or ln.strip().startswith("--") for ln in text.splitlines())


class Tx(Protocol):
    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...
    async def execute(self, sql: str, params: Params = ()) -> int: ...
    async def executemany(self, sql: str, rows: Iterable[Params]) -> None: ...


class Database(Protocol):
    dialect: str

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...
    async def execute(self, sql: str, params: Params = ()) -> int: ...
    async def executemany(self, sql: str, rows: Iterable[Params]) -> None: ...
    def transaction(self) -> Any: ...  # async context manager yielding a Tx
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


# -- SQLite ---------------------------------------------------------------------------------


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        with _sqlite_errors():
            row: Row | None = self._conn.execute(sql, params).fetchone()
            return row

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        with _sqlite_errors():
            return self._conn.execute(sql, params).fetchall()

    async def execute(self, sql: str, params: Params = ()) -> int:
        with _sqlite_errors():
            return self._conn.execute(sql, params).rowcount

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        with _sqlite_errors():
            self._conn.executemany(sql, rows)


class _sqlite_errors:
    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if isinstance(exc, sqlite3.IntegrityError):
            raise IntegrityError(str(exc)) from exc
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            raise UnavailableError(f"sqlite: {exc}") from exc
        if isinstance(exc, sqlite3.Error):
            raise DatabaseError(f"sqlite: {exc}") from exc


_CACHE_KIB = 32 * 1024  # per connection (a worker holds two)


class _Batch:
    """Transactions sharing one COMMIT (SqliteDatabase.transaction)."""

    __slots__ = ("done", "error", "members")

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.error: DatabaseError | None = None
        self.members = 0


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, path: Path, *, synchronous: str = "NORMAL", busy_timeout_ms: int = 5000):
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UnavailableError(
                f"sqlite: cannot create the directory {path.parent}: {exc.strerror}"
            ) from None
        # The writer never waits inside SQLite: with busy_timeout 0, BEGIN IMMEDIATE fails
        # at once when another process writes, and `_begin` retries with asyncio.sleep, so
        # the event loop keeps serving reads meanwhile (a blocking wait cost 12% of each
        # loop's time with 2 workers in bench_control). Readers never wait on writers in WAL.
        self._busy_s = busy_timeout_ms / 1000
        self._writer = self._open(synchronous, busy_timeout_ms)
        self._reader = self._open(synchronous, busy_timeout_ms)
        # Only after opening: switching a new file to WAL takes a lock another process may
        # hold for a moment (two workers starting together), and that wait is fine.
        self._writer.execute("PRAGMA busy_timeout = 0")
        self._lock = asyncio.Lock()
        self._read = _SqliteTx(self._reader)
        self._write = _SqliteTx(self._writer)
        self._batch: _Batch | None = None  # the open group commit, see `transaction`
        self._committer: asyncio.Task[None] | None = None
        # Counters for tests and benchmarks: transactions committed, and the COMMITs that
        # carried them (fewer under load: group commit).
        self.transactions = 0
        self.commits = 0

    def _open(self, synchronous: str, busy_timeout_ms: int) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.row_factory = _dict_row
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            # A larger page cache: with the default 2 MB, a lookup of one of 100k accounts
            # missed into a pread() per B-tree page (an 83 us session lookup, 28 us with the
            # pages at hand). No memory map (mmap_size): while another connection writes, as
            # the mix's heartbeats do, every read starts by finding the database changed, and
            # with the map the same lookup took 177 us against 62 us without it.
            conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        except sqlite3.Error as exc:
            raise UnavailableError(f"sqlite: cannot open {self.path}: {exc}") from exc
        return conn

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        return await self._read.fetchone(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._read.fetchall(sql, params)

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """A write transaction, committed by the time the ``async with`` block is left.

        Group commit: the transactions of one process run one at a time (one writer
        connection), each inside a SAVEPOINT of a shared BEGIN IMMEDIATE ... COMMIT that stays
        open until the event loop's next iteration, so that the requests under way at the same moment
        share one commit (a progress heartbeat's transaction cost 334 us alone, 134 us in a
        group of 16: the commit writes the WAL and takes the file lock other processes wait
        for). A transaction that raises is rolled back to its savepoint only; the caller is
        answered after the COMMIT, so nothing is acknowledged before it is durable (a failed
        COMMIT fails every member)."""
        async with self._lock:
            batch = self._batch
            if batch is None:
                await self._begin()
                batch = self._batch = _Batch()
                self._start_committer(batch)
            conn = self._writer
            with _sqlite_errors():
                conn.execute("SAVEPOINT tx")
            try:
                yield self._write
            except BaseException:
                self._undo(batch)
                raise
            try:
                with _sqlite_errors():
                    conn.execute("RELEASE tx")
            except DatabaseError:
                self._undo(batch)
                raise
            batch.members += 1
            self.transactions += 1
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error

    def _undo(self, batch: _Batch) -> None:
        """Roll back the failed member's savepoint; if SQLite rolled the whole transaction back
        (it does on some I/O errors), the batch is lost: its members get an error."""
        conn = self._writer
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK TO tx")
                conn.execute("RELEASE tx")
                return
            except sqlite3.Error:
                pass
        self._finish(batch, DatabaseError("sqlite: the transaction was rolled back"))

    async def _commit_soon(self, batch: _Batch) -> None:
        # Runs on the loop's next iteration: the requests handled in this one have joined the
        # batch by then. Waiting longer would hold SQLite's write lock, which other processes
        # are polling for, to no one's benefit.
        async with self._lock:
            if self._batch is batch:
                self._finish(batch, None)

    def _start_committer(self, batch: _Batch) -> None:
        task = asyncio.get_running_loop().create_task(self._commit_soon(batch))
        task.add_done_callback(functools.partial(self._committer_done, batch))
        self._committer = task

    def _committer_done(self, batch: _Batch, task: asyncio.Task[None]) -> None:
        """A committer cancelled before it committed (a shutdown cancelling tasks before
        close(), perhaps before the task even started) must not strand its batch's members."""
        if self._batch is not batch:
            return
        if self._lock.locked():  # a transaction body is under way: commit after it
            self._start_committer(batch)
        else:
            self._finish(batch, None)

    def _finish(self, batch: _Batch, error: DatabaseError | None) -> None:
        """COMMIT (or, with ``error``, ROLLBACK) the open batch and wake its members."""
        self._batch = None
        conn = self._writer
        if error is None:
            try:
                with _sqlite_errors():
                    conn.execute("COMMIT")
                self.commits += 1
            except DatabaseError as exc:
                error = exc
        if error is not None and conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        batch.error = error
        batch.done.set()

    async def _begin(self) -> None:
        """BEGIN IMMEDIATE, waiting for another process's write off the event loop, up to
        busy_timeout (then UnavailableError: a 503 with Retry-After)."""
        # Short polls: another worker holds the lock for a commit's time (well under a
        # millisecond); a long sleep would leave this one idle after the lock is free.
        delay, waited = 0.0002, 0.0
        while True:
            try:
                self._writer.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise DatabaseError(f"sqlite: {exc}") from exc
                if waited >= self._busy_s:
                    raise UnavailableError(f"sqlite: {exc} (waited {waited:.1f} s)") from exc
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.002)

    async def ping(self) -> None:
        await self.fetchone("SELECT 1 AS one")

    async def close(self) -> None:
        async with self._lock:
            if self._batch is not None:
                self._finish(self._batch, None)
            self._reader.close()
            self._writer.close()


# -- PostgreSQL ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def to_pyformat(sql: str) -> str:
    """'?' placeholders to psycopg's '%s' (a literal '%' becomes '%%')."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PgTx:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        async with _pg_errors():
            cur = await self._conn.execute(to_pyformat(sql), params)
            row: Row | None = await cur.fetchone()
            return row

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with _pg_errors():
            cur = await self._conn.execute(to_pyformat(sql), params)
            rows: list[Row] = await cur.fetchall()
            return rows

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with _pg_errors():
            cur = await self._conn.execute(to_pyformat(sql), params)
            return int(cur.rowcount)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        async with _pg_errors(), self._conn.cursor() as cur:
            await cur.executemany(to_pyformat(sql), list(rows))


class _pg_errors:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        import psycopg
        import psycopg_pool

        if isinstance(exc, psycopg.IntegrityError):
            raise IntegrityError(str(exc).splitlines()[0]) from exc
        if isinstance(exc, psycopg_pool.PoolTimeout | psycopg.OperationalError):
            raise UnavailableError(f"postgresql: {str(exc).splitlines()[0]}") from exc
        if isinstance(exc, psycopg.Error):
            raise DatabaseError(f"postgresql: {str(exc).splitlines()[0]}") from exc


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(
        cls, url: str, *, pool_min: int, pool_max: int, timeout: float = 10.0
    ) -> PostgresDatabase:
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        pool = AsyncConnectionPool(
            url,
            min_size=pool_min,
            max_size=pool_max,
            kwargs={"autocommit": True, "row_factory": dict_row},
            open=False,
            timeout=timeout,
            name="control",
        )
        try:
            async with _pg_errors():
                await pool.open(wait=True, timeout=timeout)
        except UnavailableError as exc:
            await pool.close()
            # The pool only says it timed out; one direct attempt tells why (refused,
            # unknown host, authentication, no such database).
            raise UnavailableError(f"postgresql: {await _why_unreachable(url) or exc}") from None
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[_PgTx]:
        async with _pg_errors(), self._pool.connection() as conn:
            yield _PgTx(conn)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        async with self._conn() as tx:
            return await tx.fetchone(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._conn() as tx:
            return await tx.fetchall(sql, params)

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self._conn() as tx:
            return await tx.execute(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with _pg_errors(), self._pool.connection() as conn, conn.transaction():
            yield _PgTx(conn)

    async def ping(self) -> None:
        await self.fetchone("SELECT 1 AS one")

    async def close(self) -> None:
        await self._pool.close()


async def _why_unreachable(url: str) -> str | None:
    import psycopg

    try:
        conn = await psycopg.AsyncConnection.connect(url, connect_timeout=3)
    except psycopg.Error as exc:
        return " ".join(str(exc).split())[:300]
    await conn.close()
    return None


# -- opening and migrating ------------------------------------------------------------------


def sqlite_path(url: str) -> Path:
    """sqlite:///relative/path or sqlite:////absolute/path."""
    if not url.startswith("sqlite:///"):
        raise DatabaseError(f"not a sqlite URL: {url!r}")
    rest = url[len("sqlite:///") :]
    if not rest or rest == ":memory:":
        raise DatabaseError("sqlite URL needs a file path (several connections share it)")
    return Path(rest)


async def connect(
    url: str, *, pool_min: int = 1, pool_max: int = 10, sqlite_synchronous: str = "NORMAL"
) -> Database:
    if url.startswith("sqlite:"):
        return SqliteDatabase(sqlite_path(url), synchronous=sqlite_synchronous)
    if url.startswith(("postgresql://", "postgres://")):
        return await PostgresDatabase.open(url, pool_min=pool_min, pool_max=pool_max)
    raise DatabaseError(f"unsupported database URL scheme: {url.split(':', 1)[0]!r}")


async def migrate(db: Database, migrations: Sequence[Migration], now: float) -> list[int]:
    """Apply the migrations not applied yet, in order, in one transaction; return their versions.

    Concurrent starts of several instances are safe: PostgreSQL takes an advisory lock for the
    transaction, SQLite's BEGIN IMMEDIATE excludes other writers. A database migrated by a
    newer program (a version this program does not know) is refused rather than used.
    """
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError("migration versions must be unique and increasing")
    known = max(versions, default=0)
    async with db.transaction() as tx:
        if db.dialect == "postgresql":
            await tx.fetchone("SELECT pg_advisory_xact_lock(7431902) AS locked")
        await tx.execute(_MIGRATIONS_TABLE)
        rows = await tx.fetchall("SELECT version FROM schema_migrations")
        applied = {int(r["version"]) for r in rows}
        newest = max(applied, default=0)
        if newest > known:
            raise DatabaseError(
                f"database schema version {newest} is newer than this program's ({known}); "
                "run the newer release or restore a backup"
            )
        done = []
        for m in migrations:
            if m.version in applied:
                continue
            for statement in split_statements(m.sql):
                await tx.execute(statement)
            await tx.execute(
                "INSERT INTO schema_migrations(version, name, applied_at) VALUES (?, ?, ?)",
                (m.version, m.name, now),
            )
            done.append(m.version)
    return done


async def schema_version(db: Database) -> int:
    try:
        row = await db.fetchone("SELECT MAX(version) AS v FROM schema_migrations")
    except DatabaseError:
        return 0
    return int(row["v"]) if row and row["v"] is not None else 0
