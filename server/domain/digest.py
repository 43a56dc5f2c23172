"""The balance digest the edge publishes and the hub recomputes (drift detection).

One formula in one place: a line per non-empty SKU, sorted, hashed with SHA-256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def balance_digest(rows: Iterable[tuple[str, tuple[int, ...]]]) -> tuple[int, bytes]:
    """(number of non-empty SKUs, digest) over (sku, balance fields) rows."""
    lines = [
        f"{sku}|{'|'.join(str(value) for value in fields)}\n"
        for sku, fields in sorted(rows)
        if any(fields)
    ]
    return len(lines), hashlib.sha256("".join(lines).encode()).digest()
