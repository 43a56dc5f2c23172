"""JetStream stream names, subject helpers and idempotent stream set-up.

Edges publish ledger events on ``stockd.events.<site>``; the hub publishes
commands to edges on ``stockd.commands.<site>``; anything neither side can
apply goes to ``stockd.deadletter.<kind>``. Keeping every name here means a
rename is one change, and validating site ids here means a site id can never
smuggle NATS wildcards (``*``, ``>``) or token separators (``.``) into a
subject.
"""

from __future__ import annotations

import re
from typing import Final

from nats.js import JetStreamManager
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamInfo
from nats.js.errors import BadRequestError

from server.domain.limits import ID_LENGTH_MAX, MESSAGE_BYTES_MAX
from server.domain.model import SiteId

SUBJECT_ROOT: Final = "stockd"

EVENTS_STREAM: Final = "STOCKD_EVENTS"
EVENTS_SUBJECT_PREFIX: Final = f"{SUBJECT_ROOT}.events"
EVENTS_SUBJECTS: Final = f"{EVENTS_SUBJECT_PREFIX}.>"

COMMANDS_STREAM: Final = "STOCKD_COMMANDS"
COMMANDS_SUBJECT_PREFIX: Final = f"{SUBJECT_ROOT}.commands"
COMMANDS_SUBJECTS: Final = f"{COMMANDS_SUBJECT_PREFIX}.>"

DEADLETTER_STREAM: Final = "STOCKD_DEADLETTER"
DEADLETTER_SUBJECT_PREFIX: Final = f"{SUBJECT_ROOT}.deadletter"
DEADLETTER_SUBJECTS: Final = f"{DEADLETTER_SUBJECT_PREFIX}.>"

# stream name -> the subjects it captures; ensure_streams creates exactly these.
STREAM_SUBJECTS: Final[dict[str, str]] = {
    EVENTS_STREAM: EVENTS_SUBJECTS,
    COMMANDS_STREAM: COMMANDS_SUBJECTS,
    DEADLETTER_STREAM: DEADLETTER_SUBJECTS,
}

DUPLICATE_WINDOW_SECONDS_DEFAULT: Final = 120.0
REPLICAS_MAX: Final = 5  # JetStream's own cap on stream replicas.

# JetStream answers a create for an existing name whose config differs with
# this code ("stream name already in use with a different configuration").
_STREAM_NAME_IN_USE_ERR_CODE: Final = 10058

# One NATS subject token: no '.', no wildcards, no whitespace.
_TOKEN_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]+")


def _check_token(value: str, what: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if len(value) > ID_LENGTH_MAX:
        raise ValueError(f"{what} is longer than {ID_LENGTH_MAX} characters: {value!r}")
    if _TOKEN_PATTERN.fullmatch(value) is None:
        raise ValueError(f"{what} must be 1-{ID_LENGTH_MAX} of [A-Za-z0-9_-], got {value!r}")


def check_site_id(site_id: str) -> None:
    """Reject site ids that are not a single safe NATS subject token.

    Raises:
        ValueError: empty, longer than ``ID_LENGTH_MAX`` or outside ``[A-Za-z0-9_-]``.
    """
    _check_token(site_id, "site id")


def events_subject(site_id: str) -> str:
    """Subject an edge publishes its ledger events on."""
    check_site_id(site_id)
    return f"{EVENTS_SUBJECT_PREFIX}.{site_id}"


def commands_subject(site_id: str) -> str:
    """Subject the hub publishes commands for one edge on."""
    check_site_id(site_id)
    return f"{COMMANDS_SUBJECT_PREFIX}.{site_id}"


def deadletter_subject(kind: str) -> str:
    """Subject for messages of one kind that could not be applied."""
    _check_token(kind, "dead-letter kind")
    return f"{DEADLETTER_SUBJECT_PREFIX}.{kind}"


def site_from_subject(subject: str) -> SiteId | None:
    """The site an events or commands subject belongs to, else None.

    Tokens after the site are allowed (room for per-site sub-subjects); a
    dead-letter subject or a malformed site token gives None rather than an
    error, because the caller is routing a message it did not produce.
    """
    tokens = subject.split(".")
    if len(tokens) < 3:
        return None
    prefix = f"{tokens[0]}.{tokens[1]}"
    if prefix not in (EVENTS_SUBJECT_PREFIX, COMMANDS_SUBJECT_PREFIX):
        return None
    site = tokens[2]
    try:
        check_site_id(site)
    except ValueError:
        return None
    return SiteId(site)


def stream_config(
    name: str,
    *,
    replicas: int = 1,
    duplicate_window_seconds: float = DUPLICATE_WINDOW_SECONDS_DEFAULT,
    max_age_seconds: float | None = None,
) -> StreamConfig:
    """The config stockd wants for one of its streams.

    File storage so acknowledged messages survive a restart; no max age by
    default because an event must not expire before the hub applied it;
    discard old only matters if someone later adds a size limit.
    """
    if name not in STREAM_SUBJECTS:
        raise ValueError(f"unknown stockd stream {name!r}")
    if not 1 <= replicas <= REPLICAS_MAX:
        raise ValueError(f"replicas must be 1-{REPLICAS_MAX}, got {replicas}")
    if duplicate_window_seconds <= 0:
        raise ValueError(f"duplicate window must be positive, got {duplicate_window_seconds}")
    if max_age_seconds is not None and max_age_seconds < duplicate_window_seconds:
        # JetStream rejects a dedup window longer than the max age.
        raise ValueError(
            f"max age {max_age_seconds}s is shorter than the duplicate window "
            f"{duplicate_window_seconds}s"
        )
    return StreamConfig(
        name=name,
        subjects=[STREAM_SUBJECTS[name]],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        discard=DiscardPolicy.OLD,
        duplicate_window=duplicate_window_seconds,
        max_age=max_age_seconds if max_age_seconds is not None else 0,
        max_msg_size=MESSAGE_BYTES_MAX,
    )


async def ensure_streams(
    js: JetStreamManager,
    replicas: int = 1,
    duplicate_window_seconds: float = DUPLICATE_WINDOW_SECONDS_DEFAULT,
    *,
    max_age_seconds: float | None = None,
) -> dict[str, StreamInfo]:
    """Create the three stockd streams, or bring existing ones to this config.

    Idempotent, so every process can call it at start-up without ordering
    between hub and edges. A create with an identical config succeeds on the
    server; a differing one is answered "name already in use" and becomes an
    update. Changes JetStream cannot apply in place (e.g. storage type) raise.

    Returns:
        The resulting stream info, keyed by stream name.
    """
    infos: dict[str, StreamInfo] = {}
    for name in STREAM_SUBJECTS:
        config = stream_config(
            name,
            replicas=replicas,
            duplicate_window_seconds=duplicate_window_seconds,
            max_age_seconds=max_age_seconds,
        )
        try:
            infos[name] = await js.add_stream(config)
        except BadRequestError as error:
            if error.err_code != _STREAM_NAME_IN_USE_ERR_CODE:
                raise
            infos[name] = await js.update_stream(config)
    return infos
