"""Bearer-token authentication: the principal recorded as actor on every entry.

Roles and TLS arrive with the security issue; today a token maps to a
principal name. With no tokens configured the agent runs open (and says so at
start-up), which suits a laptop demo, never a site.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from typing import Any

from server.domain.errors import Unauthenticated

ANONYMOUS = "anonymous"


class Authenticator:
    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._tokens = dict(tokens)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def principal(self, metadata: Iterable[tuple[str, str | bytes]] | Any) -> str:
        """Returns the principal for the call's `authorization` header."""
        if not self._tokens:
            return ANONYMOUS
        header = ""
        for key, value in metadata or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode(errors="replace")
                break
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("missing bearer token (metadata 'authorization: Bearer ...')")
        for known, principal in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.strip().encode()):
                return principal
        raise Unauthenticated("unknown bearer token")
