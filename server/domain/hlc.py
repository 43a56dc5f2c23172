"""Hybrid logical clock: timestamps that never go backwards even when the wall
clock does, yet stay close to real time (Kulkarni et al., 2014).

Packed as `physical_ms << 16 | logical` so one int64 orders events across
sites and survives storage as a plain integer.
"""

from __future__ import annotations

from dataclasses import dataclass

LOGICAL_BITS = 16
LOGICAL_MAX = (1 << LOGICAL_BITS) - 1


def pack(physical_ms: int, logical: int) -> int:
    assert 0 <= logical <= LOGICAL_MAX
    return (physical_ms << LOGICAL_BITS) | logical


def physical_ms(hlc: int) -> int:
    return hlc >> LOGICAL_BITS


@dataclass(slots=True)
class HybridClock:
    """Issues monotonic HLC values from wall-clock readings passed in."""

    last: int = 0

    def tick(self, wall_ms: int) -> int:
        """Returns a timestamp above every one issued or observed before."""
        last_physical = physical_ms(self.last)
        if wall_ms > last_physical:
            self.last = pack(wall_ms, 0)
        elif (self.last & LOGICAL_MAX) < LOGICAL_MAX:
            self.last += 1
        else:
            self.last = pack(last_physical + 1, 0)
        return self.last

    def observe(self, remote: int, wall_ms: int) -> int:
        """Merges a timestamp received from another site, then ticks."""
        if remote > self.last:
            self.last = remote
        return self.tick(wall_ms)
