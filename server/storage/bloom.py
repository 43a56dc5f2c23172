"""A Bloom filter of request ids, so a brand-new request skips the database.

Nearly every request_id is new; asking SQLite "seen before?" for each would add
a thread hop per batch. The filter answers "definitely new" for almost all of
them and sends only possible repeats to the database.
"""

from __future__ import annotations

import math


class BloomFilter:
    def __init__(self, capacity: int, false_positive_rate: float = 0.01) -> None:
        assert capacity > 0
        assert 0 < false_positive_rate < 1
        bits = math.ceil(-capacity * math.log(false_positive_rate) / (math.log(2) ** 2))
        self._bits = bytearray((bits + 7) // 8)
        self._size = len(self._bits) * 8
        self._hashes = max(1, round(bits / capacity * math.log(2)))
        self.count = 0

    def _positions(self, key: str) -> list[int]:
        # Python's own string hash is enough: the filter lives in one process
        # and is rebuilt from the database at start, so per-process hash
        # randomisation does no harm, and it costs far less than a digest.
        first = hash(key)
        second = hash((key, 0x9E3779B9)) | 1
        size = self._size
        return [(first + index * second) % size for index in range(self._hashes)]

    def add(self, key: str) -> None:
        for position in self._positions(key):
            self._bits[position >> 3] |= 1 << (position & 7)
        self.count += 1

    def __contains__(self, key: str) -> bool:
        return all(
            self._bits[position >> 3] & (1 << (position & 7)) for position in self._positions(key)
        )
