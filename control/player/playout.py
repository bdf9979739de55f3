"""The reference player's simulated playout clock and its QoE counters.

Pure: the caller passes the (monotonic) time of every event, so tests drive it with numbers.
Downloads are real; the playout is simulated: media plays at ``speed`` media seconds per wall
second while something is buffered, so ``--speed 20`` plays a minute of video in three
seconds with the same buffer dynamics, scaled. When the playhead reaches the end of what is
buffered before the end of the title, playback stalls (a rebuffer) from the instant the buffer
ran dry (computed, not sampled) until ``resume_s`` media seconds are buffered again.

All durations reported are WALL seconds (startup time, rebuffer time), so a run at a high
speed reports what it really waited; positions and buffer levels are MEDIA seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Playout"]

EPS = 1e-6


@dataclass
class Playout:
    start: float  # media position playback starts from (seconds)
    end: float  # media position where it ends (the title's end, or --duration)
    t0: float  # wall time the play was asked for (startup time counts from here)
    speed: float = 1.0
    resume_s: float = 4.0  # media seconds buffered before (re)starting
    position: float = field(init=False)
    buffered: float = field(init=False)  # contiguous media buffered up to here
    playing: bool = field(default=False, init=False)
    started_at: float | None = field(default=None, init=False)
    stalled_at: float | None = field(default=None, init=False)
    finished_at: float | None = field(default=None, init=False)
    rebuffers: int = field(default=0, init=False)
    rebuffer_s: float = field(default=0.0, init=False)
    _t: float = field(init=False)

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError("speed must be > 0")
        if self.end < self.start:
            raise ValueError("end must not be before start")
        self.position = self.start
        self.buffered = self.start
        self._t = self.t0

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def startup_s(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.t0

    def advance(self, now: float) -> None:
        """Move the playhead to wall time ``now`` (never backwards)."""
        now = max(now, self._t)
        if self.playing:
            pos = self.position + (now - self._t) * self.speed
            limit = min(self.buffered, self.end)
            if pos >= limit - EPS:
                dry = self._t + (limit - self.position) / self.speed  # when it ran out
                self.position = limit
                self.playing = False
                if limit >= self.end - EPS:
                    self.finished_at = dry
                else:
                    self.stalled_at = dry
                    self.rebuffers += 1
            else:
                self.position = pos
        self._t = now

    def level(self, now: float) -> float:
        """Media seconds buffered ahead of the playhead at ``now``."""
        self.advance(now)
        return max(0.0, self.buffered - self.position)

    def add(self, until: float, now: float) -> None:
        """Media up to ``until`` is buffered as of ``now``; (re)start if enough is."""
        self.advance(now)
        self.buffered = max(self.buffered, min(until, self.end))
        if self.playing or self.finished:
            return
        ahead = self.buffered - self.position
        if ahead >= min(self.resume_s, self.end - self.position) - EPS and ahead > EPS:
            self.playing = True
            if self.started_at is None:
                self.started_at = now
            if self.stalled_at is not None:
                self.rebuffer_s += now - self.stalled_at
                self.stalled_at = None

    def until_position(self, target: float, now: float) -> float | None:
        """Wall seconds until the playhead reaches ``target`` if nothing changes (None when it
        is not moving, or will stall before)."""
        self.advance(now)
        if self.position >= target - EPS:
            return 0.0
        if not self.playing or target > self.buffered + EPS:
            return None
        return (target - self.position) / self.speed
