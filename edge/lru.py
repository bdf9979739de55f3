"""A byte-bounded LRU index over 64-bit object keys.

The edge keeps one entry per cached slice. At a million slices per disk the
index must stay small (the target is under 200 bytes per entry), so instead of
an OrderedDict of Python objects it keeps the doubly linked recency list in
flat ``array`` columns indexed by slot number; the only per-entry Python
objects are the dict's key and slot ints.

Pinned entries (proactive fill) live outside the recency list, so eviction
never has to skip over them. Entries with readers are skipped and given a
second chance at the head (an object being read is never evicted under its
reader), and each ``make_room`` call scans a bounded number of entries so the
work per insert stays bounded.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

_NIL = -1
_PINNED = 1
_PINNED_BYTE = bytes([_PINNED])  # flags hold _PINNED or 0


class LRUIndex:
    """Recency order and byte accounting; knows nothing about files."""

    __slots__ = (
        "_flags",
        "_free",
        "_head",
        "_keys",
        "_next",
        "_prev",
        "_readers",
        "_sizes",
        "_slot",
        "_tail",
        "capacity",
        "pinned_bytes",
        "used",
    )

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self.used = 0
        self.pinned_bytes = 0
        self._slot: dict[int, int] = {}
        self._keys = array("Q")
        self._sizes = array("Q")
        self._prev = array("i")
        self._next = array("i")
        self._flags = array("B")
        self._free = array("i")
        self._readers: dict[int, int] = {}
        self._head = _NIL  # most recently used
        self._tail = _NIL  # least recently used

    # -- queries -----------------------------------------------------------

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, key: int) -> bool:
        return key in self._slot

    def size_of(self, key: int) -> int | None:
        slot = self._slot.get(key)
        return None if slot is None else self._sizes[slot]

    def is_pinned(self, key: int) -> bool:
        slot = self._slot.get(key)
        return slot is not None and bool(self._flags[slot] & _PINNED)

    def pinned_snapshot(self) -> tuple[bytes, bytes]:
        """Copies of the slot flags and keys, for ``pinned_keys`` to read off the event loop.

        Two memcpys (about 1 ms at a million slots), where walking the index in Python takes
        most of a second; a free slot's flags are 0, so a pinned flag marks a live entry.
        """
        return bytes(self._flags), self._keys.tobytes()

    def keys_lru_first(self) -> Iterator[int]:
        """Unpinned keys from least to most recently used (for tests and stats)."""
        slot = self._tail
        while slot != _NIL:
            yield self._keys[slot]
            slot = self._prev[slot]

    # -- list plumbing -----------------------------------------------------

    def _unlink(self, slot: int) -> None:
        p, n = self._prev[slot], self._next[slot]
        if p == _NIL:
            self._head = n
        else:
            self._next[p] = n
        if n == _NIL:
            self._tail = p
        else:
            self._prev[n] = p
        self._prev[slot] = self._next[slot] = _NIL

    def _push_head(self, slot: int) -> None:
        self._prev[slot] = _NIL
        self._next[slot] = self._head
        if self._head != _NIL:
            self._prev[self._head] = slot
        self._head = slot
        if self._tail == _NIL:
            self._tail = slot

    # -- mutations ---------------------------------------------------------

    def touch(self, key: int) -> bool:
        """Mark ``key`` most recently used; False if absent."""
        slot = self._slot.get(key)
        if slot is None:
            return False
        if not self._flags[slot] & _PINNED and self._head != slot:
            self._unlink(slot)
            self._push_head(slot)
        return True

    def insert(self, key: int, size: int, *, pinned: bool = False) -> None:
        """Add or replace ``key``. Call ``make_room`` first to respect capacity."""
        if size < 0:
            raise ValueError("size must be >= 0")
        if key in self._slot:
            self.remove(key)
        if self._free:
            slot = self._free.pop()
            self._keys[slot] = key
            self._sizes[slot] = size
            self._flags[slot] = 0
        else:
            slot = len(self._keys)
            self._keys.append(key)
            self._sizes.append(size)
            self._prev.append(_NIL)
            self._next.append(_NIL)
            self._flags.append(0)
        self._slot[key] = slot
        self.used += size
        if pinned:
            self._flags[slot] = _PINNED
            self.pinned_bytes += size
        else:
            self._push_head(slot)

    def remove(self, key: int) -> int | None:
        """Forget ``key``; returns its size, or None if it was absent."""
        slot = self._slot.pop(key, None)
        if slot is None:
            return None
        size = self._sizes[slot]
        if self._flags[slot] & _PINNED:
            self.pinned_bytes -= size
        else:
            self._unlink(slot)
        self._flags[slot] = 0
        self.used -= size
        self._free.append(slot)
        return size

    def pin(self, key: int) -> bool:
        """Protect ``key`` from eviction until ``unpin``; False if absent."""
        slot = self._slot.get(key)
        if slot is None:
            return False
        if not self._flags[slot] & _PINNED:
            self._unlink(slot)
            self._flags[slot] = _PINNED
            self.pinned_bytes += self._sizes[slot]
        return True

    def unpin(self, key: int) -> bool:
        """Return ``key`` to ordinary LRU content, as most recently used."""
        slot = self._slot.get(key)
        if slot is None:
            return False
        if self._flags[slot] & _PINNED:
            self._flags[slot] = 0
            self.pinned_bytes -= self._sizes[slot]
            self._push_head(slot)
        return True

    def acquire(self, key: int) -> None:
        """Register a reader: the entry will not be evicted until ``release``."""
        self._readers[key] = self._readers.get(key, 0) + 1

    def release(self, key: int) -> None:
        n = self._readers.get(key, 0) - 1
        if n > 0:
            self._readers[key] = n
        else:
            self._readers.pop(key, None)

    def readers(self, key: int) -> int:
        return self._readers.get(key, 0)

    def make_room(self, need: int, *, max_scan: int = 64) -> tuple[list[tuple[int, int]], bool]:
        """Evict least recently used entries until ``need`` more bytes fit.

        Returns ``(victims, fits)``: the (key, size) pairs removed from the index
        (the caller deletes their files) and whether ``need`` now fits. At most
        ``max_scan`` entries are examined, so an insert never does unbounded work;
        entries with readers are skipped and moved to the head (second chance).
        """
        victims: list[tuple[int, int]] = []
        scanned = 0
        while self.used + need > self.capacity and self._tail != _NIL and scanned < max_scan:
            scanned += 1
            slot = self._tail
            key = self._keys[slot]
            if key in self._readers:
                self._unlink(slot)
                self._push_head(slot)
                continue
            size = self._sizes[slot]
            self.remove(key)
            victims.append((key, size))
        return victims, self.used + need <= self.capacity


def pinned_keys(snapshot: tuple[bytes, bytes]) -> list[int]:
    """The pinned keys of a ``LRUIndex.pinned_snapshot``, in slot order."""
    flags, raw = snapshot
    keys = array("Q")
    keys.frombytes(raw)
    out: list[int] = []
    i = flags.find(_PINNED_BYTE)
    while i >= 0:
        out.append(keys[i])
        i = flags.find(_PINNED_BYTE, i + 1)
    return out
