"""Opaque page tokens bound to the query that issued them (AIP-158)."""

from __future__ import annotations

import base64
import hashlib
import json

from server.domain import limits
from server.domain.errors import FieldViolation, InvalidPageToken, Violations

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def page_size(requested: int, path: str = "page_size") -> int:
    """Applies the default and the cap; negative sizes are bad input."""
    if requested < 0:
        violations = Violations()
        violations.add(path, "must not be negative")
        violations.raise_if_any()
    if requested == 0:
        return limits.PAGE_SIZE_DEFAULT
    return min(requested, limits.PAGE_SIZE_MAX)


def _query_digest(query: object) -> str:
    return hashlib.sha256(json.dumps(query, sort_keys=True, default=str).encode()).hexdigest()[:16]


def encode(position: object, query: object) -> str:
    body = json.dumps({"p": position, "q": _query_digest(query)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode(token: str, query: object, path: str = "page_token") -> object:
    """Returns the position, or None for an empty token; rejects foreign tokens."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if body["q"] != _query_digest(query):
            raise ValueError("token belongs to another query")
        position = body["p"]
        for value in position if isinstance(position, list) else [position]:
            if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
                raise ValueError("position out of range")
        return position
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidPageToken(
            f"invalid page token: {error}",
            violations=[
                FieldViolation(path, "malformed or issued for another query",
                               "ERROR_REASON_INVALID_PAGE_TOKEN")
            ],
        ) from None
