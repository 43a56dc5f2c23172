"""Operating errors of the harness, with one base class.

A case that raises a ``BenchError`` is reported and skipped while the other
cases still run; anything else is a bug in the harness and is shown with its
traceback.
"""

from __future__ import annotations


class BenchError(Exception):
    """Base of every expected failure of a benchmark case."""


class ServerStartError(BenchError):
    """A server process under test did not come up.

    Attributes:
        argv: The command that was started.
        reason: What went wrong, in a few words.
        log_tail: The last lines the process wrote, to show why.
    """

    def __init__(self, argv: list[str], reason: str, log_tail: str) -> None:
        self.argv = argv
        self.reason = reason
        self.log_tail = log_tail
        super().__init__(f"{' '.join(argv)}: {reason}\n{log_tail}".rstrip())


class TargetError(BenchError):
    """A target answered set-up calls with an error, so nothing can be measured.

    Attributes:
        target: The host:port called.
        step: The set-up step that failed.
        detail: The gRPC status code and message.
    """

    def __init__(self, target: str, step: str, detail: str) -> None:
        self.target = target
        self.step = step
        self.detail = detail
        super().__init__(f"{target}: {step} failed: {detail}")


class LoadError(BenchError):
    """The load generator could not finish a run (callers stuck past every timeout)."""
