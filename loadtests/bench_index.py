"""Memory and speed of the edge's LRU index against plain LRUs, at a million objects.

Run by hand: ``.venv/bin/python loadtests/bench_index.py [--objects N]``. Prints, for each
index, the bytes of Python memory per cached object (tracemalloc, the key ints included) and
the cost of insert-with-eviction and touch. The target from the edge issue: at most 200 bytes
per cached object at 1M objects. Peers: an OrderedDict LRU (what most Python code writes) and
cachetools.LRUCache with a byte-sized ``getsizeof`` (the library the project depends on).
``--quick``: 200,000 objects (a few seconds; the figure per object is about 10% higher than at
1M). ``--json FILE`` writes the figures as rows (loadtests/results.py).
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cachetools
from results import Row, measured, write_rows

from edge.lru import LRUIndex

SLICE = 2 * 1024 * 1024


class OrderedDictLRU:
    """The textbook byte-bounded LRU."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.d: OrderedDict[int, int] = OrderedDict()

    def insert(self, key: int, size: int) -> None:
        while self.used + size > self.capacity and self.d:
            _, s = self.d.popitem(last=False)
            self.used -= s
        self.d[key] = size
        self.used += size

    def touch(self, key: int) -> None:
        self.d.move_to_end(key)


class CachetoolsLRU:
    def __init__(self, capacity: int) -> None:
        self.c: cachetools.LRUCache[int, int] = cachetools.LRUCache(capacity, getsizeof=lambda v: v)

    def insert(self, key: int, size: int) -> None:
        self.c[key] = size

    def touch(self, key: int) -> None:
        self.c[key]


class EdgeLRU:
    def __init__(self, capacity: int) -> None:
        self.i = LRUIndex(capacity)

    def insert(self, key: int, size: int) -> None:
        self.i.make_room(size)
        self.i.insert(key, size)

    def touch(self, key: int) -> None:
        self.i.touch(key)


def measure(
    name: str, make: Callable[[int], object], keys: list[int]
) -> tuple[str, float, float, float]:
    n = len(keys)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    idx = make(n * SLICE)
    for i, k in enumerate(keys):
        # Real slices differ in size (last slices, small objects): one int object each.
        idx.insert(k, SLICE - (i % 4096))  # type: ignore[attr-defined]
    mem = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    per_object = mem / n + sys.getsizeof(keys[0])  # the key ints live in the caller's list too
    del idx
    gc.collect()

    # Speed, untraced: fill to capacity, then inserts that each evict one, and touches.
    idx = make(n * SLICE)
    for k in keys:
        idx.insert(k, SLICE)  # type: ignore[attr-defined]
    rng = random.Random(2)
    sample = [keys[rng.randrange(n)] for _ in range(200_000)]
    t = time.perf_counter()
    for k in sample:
        idx.touch(k)  # type: ignore[attr-defined]
    touch_ns = (time.perf_counter() - t) / len(sample) * 1e9
    fresh = [rng.getrandbits(64) for _ in range(200_000)]
    t = time.perf_counter()
    for k in fresh:
        idx.insert(k, SLICE)  # type: ignore[attr-defined]
    insert_ns = (time.perf_counter() - t) / len(fresh) * 1e9
    return name, per_object, insert_ns, touch_ns


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=None, help="cached objects (1,000,000)")
    ap.add_argument("--quick", action="store_true", help="200,000 objects")
    ap.add_argument("--json", type=Path, metavar="FILE", help="write the figures as rows here")
    args = ap.parse_args()
    if args.objects is None:
        args.objects = 200_000 if args.quick else 1_000_000
    rng = random.Random(1)
    keys = [rng.getrandbits(64) for _ in range(args.objects)]
    rows = [
        measure("edge LRUIndex", EdgeLRU, keys),
        measure("OrderedDict LRU", OrderedDictLRU, keys),
        measure("cachetools.LRUCache", CachetoolsLRU, keys),
    ]
    print(f"{args.objects:,} cached objects (2 MiB slices), Python {sys.version.split()[0]}\n")
    print(f"{'index':22} {'bytes/object':>13} {'insert+evict ns':>16} {'touch ns':>9}")
    for name, per, ins, touch in rows:
        print(f"{name:22} {per:13.0f} {ins:16.0f} {touch:9.0f}")
    edge = rows[0][1]
    print(
        f"\nedge index memory vs OrderedDict: {edge / rows[1][1]:.2f}x, "
        f"vs cachetools: {edge / rows[2][1]:.2f}x; target <= 200 bytes/object: "
        f"{'ok' if edge <= 200 else 'MISSED'}"
    )
    if args.json:
        write_rows(args.json, json_rows(rows, args.objects))
    return 0 if edge <= 200 else 2


def json_rows(rows: list[tuple[str, float, float, float]], objects: int) -> list[Row]:
    (_, per, ins, touch), (peer, p_per, p_ins, p_touch) = rows[0], rows[1]
    at = f"at {objects:,} objects"
    return [
        measured("index", f"memory {at}", per, "B/object", peer=peer, peer_value=p_per,
                 target="<= 200 B/object", met=per <= 200),
        measured("index", "insert+evict", ins, "ns", peer=peer, peer_value=p_ins),
        measured("index", "touch", touch, "ns", peer=peer, peer_value=p_touch),
    ]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
