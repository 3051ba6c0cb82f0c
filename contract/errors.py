"""The one exception tree of Cairn.

::

    CairnError
    +-- ConfigError      a configuration value is missing or out of bounds (names the key)
    +-- CodecError       a batch cannot be encoded or decoded
    +-- SignatureError   a batch signature does not verify
    +-- AuthError        a token is missing, malformed, expired or not allowed
    +-- PayloadError     a device payload cannot be turned into readings (has a ``reason``)

Every error builds its message in ``__init__`` and keeps the facts as attributes, so that
CLIs print one line and services count by ``reason``.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "CairnError",
    "CodecError",
    "ConfigError",
    "PayloadError",
    "SignatureError",
]


class CairnError(Exception):
    """Base of every error Cairn raises on purpose."""


class ConfigError(CairnError):
    """A configuration key has a missing, malformed or out-of-bounds value."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config key {key!r}: {problem}")


class CodecError(CairnError):
    """A batch cannot be encoded or decoded."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"batch codec: {problem}")


class SignatureError(CairnError):
    """A batch signature is missing or does not verify."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"batch signature: {problem}")


class AuthError(CairnError):
    """A bearer token is missing, malformed, expired or not allowed."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)


class PayloadError(CairnError):
    """A device payload cannot be turned into readings.

    ``reason`` is a short stable slug (``bad-json``, ``bad-topic``...) used as a counter key.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")
