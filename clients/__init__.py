"""Python SDK and command-line tools for stockd.

``EdgeClient`` (async) and ``EdgeClientSync`` (blocking) call a site's edge
agent; ``HubClient`` (async) calls the hub. Every refusal is a
``StockdError``. The ``stockctl`` command lives in ``clients.cli``.
"""

from clients.edge import EdgeClient
from clients.edge_sync import EdgeClientSync
from clients.errors import StockdError
from clients.hub import HubClient

__all__ = ["EdgeClient", "EdgeClientSync", "HubClient", "StockdError"]
