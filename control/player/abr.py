"""Buffer-based rate adaptation for the reference player: Netflix's BBA.

Huang, Johari, McKeown, Trunnell, Watson: "A Buffer-Based Approach to Rate Adaptation:
Evidence from a Large Video Streaming Service", SIGCOMM 2014. The rate is chosen from the
buffer's occupancy alone, not from a throughput estimate (which is noisy and, when wrong,
stalls the player): below a *reservoir* of seconds the lowest rate is used; across the
*cushion* above it the rate map f(B) rises linearly from the lowest to the highest rate; above
``reservoir + cushion`` the highest.

BBA-0 (section 4 of the paper) with its hysteresis: the rate stays where it is while f(B)
lies between the next lower and the next higher rate; it moves up only when f(B) reaches the
next higher rate (to the highest rate below f(B)), down only when f(B) falls to the next lower
one (to the lowest rate above f(B)). So a buffer hovering around one level does not make the
player switch back and forth.

Startup. A plain BBA-0 plays the lowest rate until the buffer passes the reservoir, which on
a fast network wastes the first minute. As BBA-2 does (section 6), while the player is in its
startup phase it steps up one rate whenever the last segment's download added more than
``startup_gain`` (0.875) of its own duration to the buffer, i.e. it arrived at least 8 times
faster than it plays; startup ends as soon as f(B) asks for more than startup chose, or
the buffer shrinks (the network is no longer ahead), and BBA-0 rules from then on.

Pure: numbers in, an index out; table-tested without an event loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Final

__all__ = ["AbrConfig", "Bba", "Decision"]

STARTUP_GAIN: Final = 0.875  # BBA-2: a download 8x faster than real time adds 7/8 of a segment


@dataclass(frozen=True, slots=True)
class AbrConfig:
    """Seconds of buffered media. ``max_buffer`` is where the player stops downloading."""

    reservoir: float = 5.0
    cushion: float = 15.0
    max_buffer: float = 30.0
    startup: bool = True

    def __post_init__(self) -> None:
        for name in ("reservoir", "cushion", "max_buffer"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value!r}")
        if self.cushion <= 0:
            raise ValueError("cushion must be > 0 seconds")
        if self.max_buffer < self.reservoir + self.cushion:
            raise ValueError(
                f"max_buffer ({self.max_buffer:g} s) must be at least reservoir + cushion"
                f" ({self.reservoir + self.cushion:g} s): above the cushion BBA plays the top rate"
            )


@dataclass(frozen=True, slots=True)
class Decision:
    index: int  # into the rates, lowest first
    startup: bool  # still in the startup phase after this decision
    reason: str  # reservoir | upper | up | down | hold | startup-up | startup-hold


class Bba:
    """BBA-0 (with BBA-2's startup) over ``rates`` in bits per second."""

    def __init__(self, rates: Sequence[int], config: AbrConfig | None = None) -> None:
        if not rates or any(r <= 0 for r in rates):
            raise ValueError("rates must be a non-empty list of positive bit rates")
        if any(a >= b for a, b in pairwise(rates)):
            raise ValueError("rates must be strictly increasing, lowest first")
        self.rates = tuple(rates)
        self.config = config or AbrConfig()

    def rate_map(self, buffer_s: float) -> float:
        """f(B): R_min up to the reservoir, linear across the cushion, R_max above it."""
        c = self.config
        lo, hi = self.rates[0], self.rates[-1]
        if buffer_s <= c.reservoir:
            return float(lo)
        if buffer_s >= c.reservoir + c.cushion:
            return float(hi)
        return lo + (hi - lo) * (buffer_s - c.reservoir) / c.cushion

    def first(self) -> Decision:
        """The first segment: the lowest rate (nothing is buffered)."""
        return Decision(0, self.config.startup, "reservoir")

    def choose(
        self,
        buffer_s: float,
        prev: int,
        *,
        startup: bool = False,
        gained_s: float | None = None,
        segment_s: float | None = None,
    ) -> Decision:
        """The next segment's rate index, from the buffer level (seconds), the previous index
        and, in startup, the buffer the last download gained (``gained_s``, negative when the
        buffer shrank) against that segment's duration (``segment_s``)."""
        if not 0 <= prev < len(self.rates):
            raise ValueError(f"prev must index the rates, not {prev!r}")
        steady = self._bba0(buffer_s, prev)
        if startup and gained_s is not None and segment_s is not None and segment_s > 0:
            if gained_s < 0 or steady.index > prev:
                # The buffer shrank, or the map asks for more than startup chose: BBA-0 rules.
                return steady
            if gained_s > STARTUP_GAIN * segment_s:
                return Decision(min(prev + 1, len(self.rates) - 1), True, "startup-up")
            return Decision(prev, True, "startup-hold")
        return steady

    def _bba0(self, buffer_s: float, prev: int) -> Decision:
        c = self.config
        top = len(self.rates) - 1
        if buffer_s <= c.reservoir:
            return Decision(0, False, "reservoir")
        if buffer_s >= c.reservoir + c.cushion:
            return Decision(top, False, "upper")
        f = self.rate_map(buffer_s)
        plus = self.rates[min(prev + 1, top)]
        minus = self.rates[max(prev - 1, 0)]
        if f >= plus and prev < top:
            # Up: the highest rate strictly below f(B) (at least one step).
            i = max(i for i, r in enumerate(self.rates) if r < f or i == prev + 1)
            return Decision(max(i, prev + 1), False, "up")
        if f <= minus and prev > 0:
            # Down: the lowest rate strictly above f(B) (at least one step).
            i = min(i for i, r in enumerate(self.rates) if r > f or i == prev - 1)
            return Decision(min(i, prev - 1), False, "down")
        return Decision(prev, False, "hold")
