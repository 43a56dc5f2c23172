"""Every limit in one place (TIGER_STYLE: a limit on everything).

Changing a limit is a product decision; tests import these names so a change
here is a change everywhere.
"""

from typing import Final

# Identifiers.
ID_LENGTH_MAX: Final = 64
REQUEST_ID_LENGTH_MAX: Final = 128
UNIT_LENGTH_MAX: Final = 32
TEXT_LENGTH_MAX: Final = 1024

# Quantities are integers in base units. The per-line cap keeps every sum the
# ledger forms far inside SQLite's signed 64-bit INTEGER.
QUANTITY_MAX: Final = 10**12
ON_HAND_MAX: Final = 10**15
BASE_UNITS_PER_UNIT_MAX: Final = 10**6
UNITS_PER_ITEM_MAX: Final = 16

# Requests.
LINES_PER_REQUEST_MAX: Final = 500
SKUS_PER_QUERY_MAX: Final = 1000
PAGE_SIZE_DEFAULT: Final = 100
PAGE_SIZE_MAX: Final = 1000
MESSAGE_BYTES_MAX: Final = 4 * 1024 * 1024

# Reservations.
TTL_SECONDS_DEFAULT: Final = 900
TTL_SECONDS_MAX: Final = 7 * 24 * 3600
EXPIRIES_PER_SWEEP_MAX: Final = 2000

# Group commit.
COMMANDS_PER_BATCH_MAX: Final = 512
WRITE_QUEUE_MAX: Final = 20_000
REQUEST_CACHE_ENTRIES_MAX: Final = 200_000
REQUEST_RETENTION_SECONDS_DEFAULT: Final = 72 * 3600

# Watchers.
WATCHERS_MAX: Final = 256
WATCH_QUEUE_MAX: Final = 1024

# Shutdown.
SHUTDOWN_GRACE_SECONDS: Final = 10.0
