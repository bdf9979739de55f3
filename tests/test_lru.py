"""The LRU index as a plain class: tables of operations, no event loop."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from edge.lru import LRUIndex, pinned_keys


def run(capacity: int, ops: list[tuple]) -> tuple[LRUIndex, list[list[int]]]:
    """Apply ("ins", key, size) / ("touch", key) / ("pin"|"unpin"|"acq"|"rel"|"rm", key) /
    ("room", need) and collect the victims of each "room"."""
    idx = LRUIndex(capacity)
    evicted: list[list[int]] = []
    for op in ops:
        kind = op[0]
        if kind == "ins":
            idx.insert(op[1], op[2])
        elif kind == "pins":
            idx.insert(op[1], op[2], pinned=True)
        elif kind == "touch":
            idx.touch(op[1])
        elif kind == "pin":
            idx.pin(op[1])
        elif kind == "unpin":
            idx.unpin(op[1])
        elif kind == "acq":
            idx.acquire(op[1])
        elif kind == "rel":
            idx.release(op[1])
        elif kind == "rm":
            idx.remove(op[1])
        elif kind == "room":
            victims, _ = idx.make_room(op[1])
            evicted.append([k for k, _ in victims])
    return idx, evicted


CASES = [
    # (name, capacity, ops, expected victims per "room", expected LRU-first order afterwards)
    ("fits, nothing evicted", 100, [("ins", 1, 40), ("ins", 2, 40), ("room", 20)], [[]], [1, 2]),
    ("oldest goes first", 100, [("ins", 1, 40), ("ins", 2, 40), ("room", 30)], [[1]], [2]),
    (
        "touch refreshes",
        100,
        [("ins", 1, 40), ("ins", 2, 40), ("touch", 1), ("room", 30)],
        [[2]],
        [1],
    ),
    (
        "evicts as many as needed",
        100,
        [("ins", 1, 30), ("ins", 2, 30), ("ins", 3, 30), ("room", 70)],
        [[1, 2]],
        [3],
    ),
    (
        "pinned never evicted",
        100,
        [("pins", 1, 50), ("ins", 2, 40), ("room", 50)],
        [[2]],
        [],
    ),
    (
        "pin later protects",
        100,
        [("ins", 1, 50), ("ins", 2, 40), ("pin", 1), ("room", 50)],
        [[2]],
        [],
    ),
    (
        "unpin returns as most recent",
        100,
        [("pins", 1, 30), ("ins", 2, 30), ("unpin", 1), ("ins", 3, 30), ("room", 40)],
        [[2]],
        [1, 3],
    ),
    (
        "an entry with a reader is skipped",
        100,
        [("ins", 1, 40), ("ins", 2, 40), ("acq", 1), ("room", 30)],
        [[2]],
        [1],
    ),
    (
        "released reader can be evicted",
        100,
        [("ins", 1, 40), ("ins", 2, 40), ("acq", 1), ("rel", 1), ("room", 30)],
        [[1]],
        [2],
    ),
    ("removed entries free bytes", 100, [("ins", 1, 60), ("rm", 1), ("room", 90)], [[]], []),
    (
        "re-insert replaces size",
        100,
        [("ins", 1, 60), ("ins", 1, 10), ("ins", 2, 10), ("room", 80)],
        [[]],
        [1, 2],
    ),
]


@pytest.mark.parametrize(
    ("name", "capacity", "ops", "victims", "order"), CASES, ids=[c[0] for c in CASES]
)
def test_lru_table(name, capacity, ops, victims, order):
    idx, evicted = run(capacity, ops)
    assert evicted == victims
    assert list(idx.keys_lru_first()) == order
    assert idx.used == sum(idx.size_of(k) or 0 for k in list(idx._slot))


PIN_CASES = [
    # (name, ops, pinned keys after them, in slot order)
    ("none", [("ins", 1, 10), ("ins", 2, 10)], []),
    ("inserted pinned", [("pins", 1, 10), ("ins", 2, 10), ("pins", 3, 10)], [1, 3]),
    (
        "pinned later, unpinned",
        [("ins", 1, 10), ("ins", 2, 10), ("pin", 2), ("pin", 1), ("unpin", 2)],
        [1],
    ),
    ("a removed pin frees its slot", [("pins", 1, 10), ("rm", 1)], []),
    ("a reused slot is not pinned", [("pins", 1, 10), ("rm", 1), ("ins", 2, 10)], []),
    ("a reused slot pinned again", [("pins", 1, 10), ("rm", 1), ("pins", 2, 10)], [2]),
    ("the largest key", [("pins", 2**64 - 1, 10), ("pins", 0, 10)], [2**64 - 1, 0]),
]


@pytest.mark.parametrize("name, ops, pinned", PIN_CASES, ids=[c[0] for c in PIN_CASES])
def test_pinned_keys_of_a_snapshot(name, ops, pinned):
    idx, _ = run(1000, ops)
    snapshot = idx.pinned_snapshot()
    assert pinned_keys(snapshot) == pinned
    assert sorted(pinned) == sorted(k for k in idx._slot if idx.is_pinned(k))
    # A snapshot is a copy: later changes to the index do not reach it.
    for k in pinned:
        idx.unpin(k)
    assert pinned_keys(snapshot) == pinned


def test_make_room_work_is_bounded():
    idx = LRUIndex(1000)
    for k in range(100):
        idx.insert(k, 10)
    for k in range(100):
        idx.acquire(k)  # everything in use: nothing can go
    victims, fits = idx.make_room(500, max_scan=8)
    assert victims == [] and not fits
    idx.release(99)
    idx.release(98)
    # Entries in use were rotated to the head; the scan stays bounded either way.
    victims, fits = idx.make_room(20, max_scan=200)
    assert sorted(k for k, _ in victims) == [98, 99] and fits


def test_random_operations_keep_accounting_consistent():
    rng = random.Random(7)
    idx = LRUIndex(10_000)
    live: dict[int, int] = {}
    for _ in range(5000):
        k = rng.randrange(300)
        r = rng.random()
        if r < 0.5:
            size = rng.randrange(1, 400)
            victims, fits = idx.make_room(size)
            for vk, vs in victims:
                assert live.pop(vk) == vs
            if fits:
                live.pop(k, None)
                idx.insert(k, size)
                live[k] = size
        elif r < 0.8:
            assert idx.touch(k) == (k in live)
        else:
            assert idx.remove(k) == live.pop(k, None)
        assert idx.used == sum(live.values())
        assert idx.used <= idx.capacity
    assert sorted(idx.keys_lru_first()) == sorted(live)


def test_index_costs_under_200_bytes_per_object_at_one_million():
    n = 1_000_000
    rng = random.Random(1)
    keys = [rng.getrandbits(64) for _ in range(n)]  # allocated before tracing starts
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        idx = LRUIndex(1 << 50)
        for k in keys:
            idx.insert(k, 2 * 1024 * 1024)
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(idx) == n
    per_object = used / n
    # The key ints the caller made are shared with the index dict, so count them too.
    per_object += 36
    assert per_object < 200, f"{per_object:.0f} bytes per object"
