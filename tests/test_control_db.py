"""The data-access layer on both backends: migrations, transactions, errors, placeholders."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from control import db as dbmod
from control.db import Migration, connect, migrate, schema_version, split_statements, to_pyformat
from control.schema import MIGRATIONS

M1 = Migration(1, "one", "CREATE TABLE t (id TEXT PRIMARY KEY, n BIGINT NOT NULL DEFAULT 0);\n")
M2 = Migration(2, "two", "ALTER TABLE t ADD COLUMN note TEXT;\nCREATE INDEX t_n ON t(n)")


@pytest.fixture
async def database(control_db_url: str) -> AsyncIterator[dbmod.Database]:
    d = await connect(control_db_url, pool_min=1, pool_max=4)
    try:
        yield d
    finally:
        await d.close()


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("A;\nB;\n", ["A", "B"]),
        ("A;  \n\n-- only a comment;\nB", ["A", "B"]),
        ("CREATE TABLE x (a TEXT) ;\n", ["CREATE TABLE x (a TEXT)"]),
        ("", []),
        ("A; B", ["A; B"]),  # ';' inside a line is not a separator
    ],
)
def test_split_statements(sql: str, expected: list[str]) -> None:
    assert split_statements(sql) == expected


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT ? , ?", "SELECT %s , %s"),
        ("SELECT '%' || ?", "SELECT '%%' || %s"),
        ("SELECT 1", "SELECT 1"),
    ],
)
def test_placeholders_for_psycopg(sql: str, expected: str) -> None:
    assert to_pyformat(sql) == expected


async def test_migrations_apply_once_in_order(database: dbmod.Database) -> None:
    assert await schema_version(database) == 0
    assert await migrate(database, [M1], now=1.0) == [1]
    assert await migrate(database, [M1, M2], now=2.0) == [2]
    assert await migrate(database, [M1, M2], now=3.0) == []
    assert await schema_version(database) == 2
    await database.execute("INSERT INTO t(id, n, note) VALUES (?, ?, ?)", ("a", 1, "x"))
    assert await database.fetchone("SELECT id, n, note FROM t") == {"id": "a", "n": 1, "note": "x"}


async def test_a_newer_database_is_refused(database: dbmod.Database) -> None:
    await migrate(database, [M1, M2], now=1.0)
    with pytest.raises(dbmod.DatabaseError, match="newer than this program"):
        await migrate(database, [M1], now=2.0)


async def test_a_failed_migration_leaves_nothing_behind(database: dbmod.Database) -> None:
    bad = Migration(2, "bad", "CREATE TABLE u (a TEXT);\nTHIS IS NOT SQL;\n")
    await migrate(database, [M1], now=1.0)
    with pytest.raises(dbmod.DatabaseError):
        await migrate(database, [M1, bad], now=2.0)
    assert await schema_version(database) == 1
    with pytest.raises(dbmod.DatabaseError):
        await database.fetchone("SELECT a FROM u")


async def test_concurrent_migrations_apply_once(control_db_url: str) -> None:
    dbs = [await connect(control_db_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(d, MIGRATIONS, now=1.0) for d in dbs))
        assert sorted(len(r) for r in results) == [0, 0, len(MIGRATIONS)]
    finally:
        for d in dbs:
            await d.close()


async def test_transaction_commits_or_rolls_back(database: dbmod.Database) -> None:
    await migrate(database, [M1], now=1.0)
    async with database.transaction() as tx:
        await tx.execute("INSERT INTO t(id) VALUES (?)", ("a",))
        assert (await tx.fetchone("SELECT COUNT(*) AS c FROM t"))["c"] == 1
    with pytest.raises(RuntimeError):
        async with database.transaction() as tx:
            await tx.execute("INSERT INTO t(id) VALUES (?)", ("b",))
            raise RuntimeError("boom")
    rows = await database.fetchall("SELECT id FROM t ORDER BY id")
    assert rows == [{"id": "a"}]


async def test_unique_violation_is_an_integrity_error(database: dbmod.Database) -> None:
    await migrate(database, [M1], now=1.0)
    await database.execute("INSERT INTO t(id) VALUES (?)", ("a",))
    with pytest.raises(dbmod.IntegrityError):
        await database.execute("INSERT INTO t(id) VALUES (?)", ("a",))
    # The connection is usable afterwards (PostgreSQL aborts only that statement).
    assert await database.execute("UPDATE t SET n = n + 1 WHERE id = ?", ("a",)) == 1


async def test_upsert_and_returning_are_portable(database: dbmod.Database) -> None:
    await migrate(database, [M1], now=1.0)
    for n in (1, 2):
        await database.execute(
            "INSERT INTO t(id, n) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET n = excluded.n",
            ("a", n),
        )
    async with database.transaction() as tx:
        row = await tx.fetchone("UPDATE t SET n = n + 10 WHERE id = ? RETURNING n", ("a",))
    assert row == {"n": 12}


@pytest.mark.parametrize(
    "value", ["'; DROP TABLE t; --", "Robert'); DROP TABLE t;--", "日本語 ✓", "%s %% ? ?"]
)
async def test_parameters_are_bound_never_interpolated(
    database: dbmod.Database, value: str
) -> None:
    await migrate(database, [M1], now=1.0)
    await database.execute("INSERT INTO t(id) VALUES (?)", (value,))
    assert await database.fetchone("SELECT id FROM t WHERE id = ?", (value,)) == {"id": value}


async def test_per_row_serialisation_counts_exactly(database: dbmod.Database) -> None:
    """The pattern stores use for caps: bump the row first, then read and decide."""
    await migrate(database, [M1, M2], now=1.0)
    await database.execute("INSERT INTO t(id, n) VALUES ('cap', 0)")
    created = 0

    async def take() -> None:
        nonlocal created
        async with database.transaction() as tx:
            await tx.execute("UPDATE t SET note = 'x' WHERE id = 'cap'")
            row = await tx.fetchone("SELECT n FROM t WHERE id = 'cap'")
            assert row is not None
            if row["n"] < 5:
                await tx.execute("UPDATE t SET n = n + 1 WHERE id = 'cap'")
                created += 1

    await asyncio.gather(*(take() for _ in range(20)))
    assert created == 5
    assert (await database.fetchone("SELECT n FROM t WHERE id = 'cap'")) == {"n": 5}


async def test_unsupported_urls_are_refused() -> None:
    with pytest.raises(dbmod.DatabaseError, match="unsupported"):
        await connect("mysql://localhost/x")
    with pytest.raises(dbmod.DatabaseError, match="file path"):
        await connect("sqlite:///:memory:")


async def test_unreachable_postgresql_is_unavailable() -> None:
    with pytest.raises(dbmod.UnavailableError):
        await dbmod.PostgresDatabase.open(
            "postgresql://postgres@127.0.0.1:1/none?connect_timeout=1",
            pool_min=1,
            pool_max=1,
            timeout=0.5,
        )


async def test_sqlite_waits_for_another_writer_without_blocking_the_loop(tmp_path) -> None:
    """Two processes' worth of connections on one file: while one holds the write lock, the
    other's transaction waits off the event loop (reads keep being answered), then runs."""
    url = f"sqlite:///{tmp_path}/shared.db"
    one, two = await connect(url), await connect(url)
    try:
        await migrate(one, [M1], now=1.0)
        holding, release = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            async with one.transaction() as tx:
                await tx.execute("INSERT INTO t(id) VALUES ('first')")
                holding.set()
                await release.wait()

        holder = asyncio.create_task(hold())
        await holding.wait()
        writer = asyncio.create_task(two.execute("INSERT INTO t(id) VALUES ('second')"))
        for _ in range(3):
            await asyncio.sleep(0)  # let the writer try, fail to lock, and wait
        # The loop is free while `writer` waits: a read on the same database answers.
        assert await two.fetchone("SELECT COUNT(*) AS n FROM t") == {"n": 0}
        assert not writer.done()
        release.set()
        await holder
        assert await asyncio.wait_for(writer, 10) == 1
        rows = await two.fetchall("SELECT id FROM t ORDER BY id")
        assert rows == [{"id": "first"}, {"id": "second"}]
    finally:
        await one.close()
        await two.close()


async def test_sqlite_gives_up_on_a_write_lock_held_too_long(tmp_path) -> None:
    path = tmp_path / "held.db"
    one = dbmod.SqliteDatabase(path)
    two = dbmod.SqliteDatabase(path, busy_timeout_ms=50)
    try:
        await migrate(one, [M1], now=1.0)
        async with one.transaction():
            with pytest.raises(dbmod.UnavailableError, match="locked"):
                await two.execute("INSERT INTO t(id) VALUES ('x')")
        assert await two.execute("INSERT INTO t(id) VALUES ('x')") == 1
    finally:
        await one.close()
        await two.close()


# -- SQLite group commit ----------------------------------------------------------------------


async def _sqlite_t(tmp_path) -> dbmod.SqliteDatabase:
    d = dbmod.SqliteDatabase(tmp_path / "group.db")
    await migrate(d, [M1], now=1.0)
    d.transactions = d.commits = 0
    return d


def _committed_ids(path) -> list[str]:
    """What another process would read: a fresh connection sees committed rows only."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return sorted(r[0] for r in conn.execute("SELECT id FROM t"))
    finally:
        conn.close()


async def test_sqlite_concurrent_transactions_share_commits(tmp_path) -> None:
    d = await _sqlite_t(tmp_path)
    try:

        async def write(i: int) -> None:
            async with d.transaction() as tx:
                await tx.execute("INSERT INTO t(id, n) VALUES (?, ?)", (f"r{i:02d}", i))
            # Acknowledged means committed: another connection sees the row already.
            assert f"r{i:02d}" in _committed_ids(tmp_path / "group.db")

        await asyncio.gather(*(write(i) for i in range(20)))
        assert d.transactions == 20
        assert 1 <= d.commits < 20  # one COMMIT carried several transactions
        assert _committed_ids(tmp_path / "group.db") == [f"r{i:02d}" for i in range(20)]
    finally:
        await d.close()


async def test_sqlite_a_failing_member_is_rolled_back_alone(tmp_path) -> None:
    d = await _sqlite_t(tmp_path)
    try:

        async def write(i: int) -> None:
            async with d.transaction() as tx:
                await tx.execute("INSERT INTO t(id, n) VALUES (?, ?)", (f"r{i}", i))
                if i == 2:
                    raise RuntimeError("the handler failed after writing")

        async def duplicate() -> None:
            async with d.transaction() as tx:
                await tx.execute("INSERT INTO t(id, n) VALUES ('dup', 0)")
                await tx.execute("INSERT INTO t(id, n) VALUES ('dup', 1)")

        results = await asyncio.gather(
            *(write(i) for i in range(5)), duplicate(), return_exceptions=True
        )
        assert isinstance(results[2], RuntimeError)
        assert isinstance(results[5], dbmod.IntegrityError)
        assert [r for i, r in enumerate(results) if i not in (2, 5)] == [None] * 4
        # Neither the failed member's row nor the half of 'duplicate' that worked remains.
        assert _committed_ids(tmp_path / "group.db") == ["r0", "r1", "r3", "r4"]
        assert d.transactions == 4
    finally:
        await d.close()


async def test_sqlite_close_commits_an_open_batch(tmp_path) -> None:
    d = await _sqlite_t(tmp_path)
    try:

        async def write() -> None:
            async with d.transaction() as tx:
                await tx.execute("INSERT INTO t(id) VALUES ('last')")

        member = asyncio.create_task(write())
        while d.transactions == 0:  # the body ran; its COMMIT has not happened yet
            await asyncio.sleep(0)
        assert d.commits == 0
    finally:
        await d.close()
    await asyncio.wait_for(member, 5)
    assert d.commits == 1
    assert _committed_ids(tmp_path / "group.db") == ["last"]


async def test_sqlite_a_cancelled_committer_does_not_strand_its_batch(tmp_path) -> None:
    """A shutdown may cancel the committing task before close(): its members still finish."""
    d = await _sqlite_t(tmp_path)
    try:

        async def write(i: int) -> None:
            async with d.transaction() as tx:
                await tx.execute("INSERT INTO t(id) VALUES (?)", (f"r{i}",))

        members = [asyncio.create_task(write(i)) for i in range(3)]
        while d.transactions < 3:
            await asyncio.sleep(0)
        assert d._committer is not None
        d._committer.cancel()
        await asyncio.wait_for(asyncio.gather(*members), 5)
        assert d.commits == 1
        assert _committed_ids(tmp_path / "group.db") == ["r0", "r1", "r2"]
    finally:
        await d.close()
