"""The slice store's pins file: written off the event loop, read back by a restarted store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from edge.store import LAYOUT_FILE, PINS_FILE, ObjectMeta, SliceStore, slice_key

MiB = 1024 * 1024
META = ObjectMeta(size=4 * 40, etag='"e"', last_modified=0, content_type="video/mp4")


def store_on(tmp_path: Path) -> SliceStore:
    store = SliceStore([(tmp_path / "d0", 64 * MiB), (tmp_path / "d1", 64 * MiB)], slice_size=40)
    store.rebuild()
    return store


def insert(store: SliceStore, path: str, index: int, *, pinned: bool) -> None:
    w = store.begin_insert(path, index, 40, META, pinned=pinned)
    assert w is not None
    w.write(bytes(40))
    assert store.commit(w)


async def test_async_flush_writes_the_pins_a_restart_reads(tmp_path: Path) -> None:
    store = store_on(tmp_path)
    for i in range(200):
        insert(store, f"/v/t{i % 7}/seg.m4s", i, pinned=i % 3 == 0)
    store.set_pinned("/v/t1/seg.m4s", 1, True)  # pinned after insertion
    store.set_pinned("/v/t0/seg.m4s", 0, False)  # and released
    want = {slice_key(f"/v/t{i % 7}/seg.m4s", i) for i in range(200) if i % 3 == 0}
    want = (want | {slice_key("/v/t1/seg.m4s", 1)}) - {slice_key("/v/t0/seg.m4s", 0)}

    await asyncio.gather(store.flush_pins_async(), store.flush_pins_async())
    assert not any(d.pins_dirty for d in store.disks)
    on_disk = set()
    for d in store.disks:
        lines = (d.root / PINS_FILE).read_text().splitlines()
        assert all(len(line) == 16 for line in lines)
        on_disk |= {int(line, 16) for line in lines}
    assert on_disk == want
    pinned_bytes = store.pinned_bytes
    store.close()

    again = store_on(tmp_path)
    assert again.pinned_bytes == pinned_bytes
    assert {k for d in again.disks for k in d.index._slot if d.index.is_pinned(k)} == want
    again.close()


async def test_a_clean_store_does_not_rewrite_its_pins(tmp_path: Path) -> None:
    store = store_on(tmp_path)
    insert(store, "/v/t/seg.m4s", 0, pinned=True)
    await store.flush_pins_async()
    files = [d.root / PINS_FILE for d in store.disks if (d.root / PINS_FILE).exists()]
    assert len(files) == 1
    files[0].unlink()
    await store.flush_pins_async()  # nothing changed since: nothing written
    assert not files[0].exists()
    store.close()


def test_slices_cut_at_another_slice_size_are_swept(tmp_path: Path) -> None:
    store = store_on(tmp_path)
    for i in range(20):
        insert(store, "/v/t/seg.m4s", i, pinned=i < 5)
    store.flush_pins()
    store.close()

    same = store_on(tmp_path)  # the same size: everything kept, pins too
    assert same.objects == 20 and same.pinned_bytes > 0
    same.close()

    other = SliceStore([(tmp_path / "d0", 64 * MiB), (tmp_path / "d1", 64 * MiB)], slice_size=64)
    assert other.rebuild() == (0, 20)
    assert other.objects == 0 and other.pinned_bytes == 0
    for d in other.disks:
        assert json.loads((d.root / LAYOUT_FILE).read_text()) == {"slice_size": 64}
        assert not (d.root / PINS_FILE).exists()
    other.close()


@pytest.mark.parametrize(
    "record, kept",
    [
        (None, True),  # a cache from before the record: cut at the configured size
        ('{"slice_size": 40}', True),
        ('{"slice_size": 41}', False),
        ('{"slice_size": "40"}', False),  # unreadable: nothing says how slices were cut
        ("{not json", False),
        ("[]", False),
    ],
)
def test_the_layout_record(tmp_path: Path, record: str | None, kept: bool) -> None:
    store = store_on(tmp_path)
    for i in range(6):
        insert(store, "/v/t/seg.m4s", i, pinned=False)
    store.close()
    for d in store.disks:
        if record is None:
            (d.root / LAYOUT_FILE).unlink()
        else:
            (d.root / LAYOUT_FILE).write_text(record)
    again = store_on(tmp_path)
    assert again.objects == (6 if kept else 0)
    for d in again.disks:
        assert json.loads((d.root / LAYOUT_FILE).read_text()) == {"slice_size": 40}
    again.close()
