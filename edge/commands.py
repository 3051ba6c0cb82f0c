"""Commands from the hub on the edge's own command subject (``cairn.command.<tenant>.<edge>``).

The forwarder's NATS connection subscribes to the subject (``Forwarder.command_handler``) and
hands each message to :meth:`EdgeCommands.handle`. A command is a JWT the hub signed with the
key the edge already trusts for device tokens (``[[http]].keys``, pinned algorithm, ``kid``),
with audience :data:`COMMAND_AUDIENCE`, this edge's ``tenant`` and ``edge``, and an unexpired
``exp`` (with ``[[http]].leeway_s``). Anything else is refused, counted
(``commands-rejected``) and logged at most once a minute per reason; it never stops the edge.

The one command today, ``device-revocations``, carries the tenant's revoked device tokens. The
edge writes them as ``jti <id>`` lines into a *managed block* of each ``[[http]].revoked_file``::

    # BEGIN cairn-hub device revocations (written by cairn-edge; edits inside are replaced)
    # issued_us 1764380000000000
    jti 6f1c...  # device pump-1, until 2026-12-28T00:00:00Z
    # END cairn-hub device revocations

Lines outside the block (the site admin's own ``jti``/``device`` entries) are kept as they
are. The file is replaced atomically (written, fsynced, renamed), and the HTTP source re-reads
it within ``revocation_poll_s``. A list older than the one applied (``issued_us``, also read
back from the file after a restart) is ignored, so a replayed message cannot un-revoke; an
unchanged list does not rewrite the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from nats.aio.msg import Msg

from contract.fileio import write_atomic
from edge.config import EdgeConfig
from edge.sources.devtokens import JwtRefusedError, VerificationKey, load_key, verify_jwt
from edge.stats import EdgeStats

__all__ = [
    "BLOCK_BEGIN",
    "BLOCK_END",
    "COMMAND_AUDIENCE",
    "CommandError",
    "EdgeCommands",
    "replace_block",
]

_log = logging.getLogger(__name__)

COMMAND_AUDIENCE: Final = "cairn-edge-command"
"""``aud`` of the hub's commands (``hub.devrevocations.COMMAND_AUDIENCE``)."""
DEVICE_REVOCATIONS: Final = "device-revocations"
BLOCK_BEGIN: Final = (
    "# BEGIN cairn-hub device revocations (written by cairn-edge; edits inside are replaced)"
)
BLOCK_END: Final = "# END cairn-hub device revocations"
_ISSUED: Final = "# issued_us "
_MAX_COMMAND_BYTES: Final = 8 * 1024 * 1024
_LOG_EVERY_S: Final = 60.0


_COMMAND_REASONS: Final = {
    "malformed": "malformed",
    "unknown-key": "unknown-key",
    "expired": "expired",
}
"""The :class:`JwtRefusedError` reasons counted by name (``commands-rejected-<reason>``); every
other refusal of the signed token is ``bad-signature``."""


class CommandError(Exception):
    """A command message the edge does not act on: ``reason`` is the counter's slug."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def _iso(seconds: int) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    except (OverflowError, OSError, ValueError):
        return "?"


def _block(issued_us: int, revoked: Iterable[tuple[str, str | None, int]]) -> list[str]:
    lines = [BLOCK_BEGIN, f"{_ISSUED}{issued_us}"]
    for jti, device, until_s in revoked:
        note = f"device {device}, " if device else ""
        lines.append(f"jti {jti}  # {note}until {_iso(until_s)}")
    lines.append(BLOCK_END)
    return lines


def replace_block(text: str, block: list[str]) -> str:
    """``text`` with its managed block replaced by ``block`` (appended if there is none; a
    block without its end line runs to the end of the file)."""
    lines = text.splitlines()
    try:
        start = lines.index(BLOCK_BEGIN)
    except ValueError:
        return "\n".join([*lines, *block]) + "\n"
    try:
        end = lines.index(BLOCK_END, start)
    except ValueError:
        end = len(lines) - 1
    return "\n".join([*lines[:start], *block, *lines[end + 1 :]]) + "\n"


def _managed(text: str) -> tuple[int, list[str]]:
    """``(issued_us, jti lines)`` of the managed block in ``text`` (``(0, [])`` if none)."""
    lines = text.splitlines()
    if BLOCK_BEGIN not in lines:
        return 0, []
    start = lines.index(BLOCK_BEGIN) + 1
    issued = 0
    entries: list[str] = []
    for line in lines[start:]:
        if line == BLOCK_END:
            break
        if line.startswith(_ISSUED):
            with contextlib.suppress(ValueError):
                issued = int(line[len(_ISSUED) :])
        elif line.startswith("jti "):
            entries.append(line.split("#", 1)[0].strip())
    return issued, entries


def _write_keeping_mode(path: Path, text: str) -> None:
    """Replace ``path`` atomically, keeping its mode (the site admin's config file)."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    write_atomic(path, text.encode(), mode)


class EdgeCommands:
    """Verifies the hub's commands and carries them out (see the module docstring)."""

    def __init__(self, config: EdgeConfig, stats: EdgeStats) -> None:
        self.tenant = config.edge.tenant
        self.edge = config.edge.id
        self._stats = stats
        keys: dict[str, VerificationKey] = {}
        files: list[Path] = []
        self.issuer = ""
        self.leeway_s = 0.0
        for index, http in enumerate(config.http):
            for k in http.keys:
                keys.setdefault(k.kid, load_key(k.kid, k.file, f"http[{index}].keys"))
            path = http.revoked_path
            if path is not None and path.resolve() not in files:
                files.append(path.resolve())
            self.issuer = self.issuer or http.issuer
            self.leeway_s = max(self.leeway_s, float(http.leeway_s))
        self._keys = keys
        self.files: tuple[Path, ...] = tuple(files)
        self.issued_us = 0
        self._entries: list[str] | None = None
        self._logged: dict[str, float] = {}
        for path in self.files:
            with contextlib.suppress(OSError):
                issued, entries = _managed(path.read_text(encoding="utf-8", errors="replace"))
                if issued > self.issued_us:
                    self.issued_us, self._entries = issued, entries
        if keys and not files:
            _log.warning(
                "the hub's device-token revocations cannot be applied: no [[http]] section"
                " has a revoked_file"
            )

    @property
    def enabled(self) -> bool:
        """Whether there is a key to verify commands with and a file to apply them to."""
        return bool(self._keys) and bool(self.files)

    async def handle(self, msg: Msg) -> None:
        """One message on the command subject (never raises)."""
        try:
            claims = self.verify(msg.data)
            if claims["cmd"] != DEVICE_REVOCATIONS:
                self._reject(CommandError("unknown-command", f"command {claims['cmd']!r}"))
                return
            await asyncio.to_thread(self.apply_revocations, claims)
        except CommandError as exc:
            self._reject(exc)
        except Exception as exc:  # a full disk, a vanished folder: logged, the next list retries
            self._reject(CommandError("apply-failed", f"{type(exc).__name__}: {exc}"))

    def _reject(self, exc: CommandError) -> None:
        self._stats.count("commands-rejected")
        self._stats.count(f"commands-rejected-{exc.reason}")
        now = time.monotonic()
        if now - self._logged.get(exc.reason, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._logged[exc.reason] = now
            _log.warning("ignored a command from the hub: %s", exc)

    def verify(self, data: bytes) -> dict[str, Any]:
        """The claims of a command the hub signed for this edge; :class:`CommandError` else."""
        if len(data) > _MAX_COMMAND_BYTES:
            raise CommandError("too-large", f"{len(data)} bytes")
        try:
            claims, _ = verify_jwt(
                data.decode("ascii"),
                self._keys,
                audience=COMMAND_AUDIENCE,
                issuer=self.issuer,
                leeway_s=self.leeway_s,
                require=["exp", "iat", "aud", "cmd", "tenant", "edge"],
            )
        except UnicodeDecodeError as exc:
            raise CommandError("malformed", "not a signed command") from exc
        except JwtRefusedError as exc:
            reason = _COMMAND_REASONS.get(exc.reason, "bad-signature")
            raise CommandError(reason, f"not a valid command: {exc.detail}") from exc
        if claims.get("tenant") != self.tenant or claims.get("edge") != self.edge:
            raise CommandError("wrong-edge", "the command is for another edge")
        if not isinstance(claims.get("cmd"), str):
            raise CommandError("malformed", "cmd is not a string")
        return claims

    def apply_revocations(self, claims: dict[str, Any]) -> bool:
        """Write the list into every revoked_file; ``False`` if it was older or unchanged."""
        issued = claims.get("issued_us")
        revoked = claims.get("revoked")
        if type(issued) is not int or not isinstance(revoked, list):
            raise CommandError("malformed", "issued_us or revoked missing")
        rows: list[tuple[str, str | None, int]] = []
        for item in revoked:
            if (
                not isinstance(item, list)
                or len(item) != 3
                or not isinstance(item[0], str)
                or not item[0]
                or not item[0].isprintable()
                or " " in item[0]
                or "#" in item[0]
                or not (item[1] is None or isinstance(item[1], str))
                or type(item[2]) is not int
            ):
                raise CommandError("malformed", f"bad revocation entry {str(item)[:80]}")
            device = item[1] if item[1] is None or item[1].isprintable() else None
            rows.append((item[0], device, item[2]))
        if issued < self.issued_us:
            raise CommandError("stale", "older than the list already applied")
        block = _block(issued, rows)
        entries = [line.split("#", 1)[0].strip() for line in block if line.startswith("jti ")]
        self.issued_us = issued
        if entries == self._entries:
            return False
        for path in self.files:
            text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
            _write_keeping_mode(path, replace_block(text, block))
        self._entries = entries
        self._stats.count("device-revocations-applied")
        _log.info(
            "applied the hub's device-token revocations: %d tokens revoked (%s)",
            len(entries),
            ", ".join(str(p) for p in self.files),
        )
        return True
