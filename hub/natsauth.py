"""The NATS server's authorization, kept by the hub: each edge may speak only for itself.

An edge's Ed25519 identity key is its NATS nkey (:mod:`contract.nkeyid`). The hub writes a
nats-server ``authorization { users = [...] }`` file (``nats.authorization_file``, mode 0600)
that the server's config ``include``\\ s:

- one nkey user per enrolled, unrevoked edge of an enabled tenant, with
  :func:`contract.names.edge_permissions`: publish its telemetry and status subjects and clock
  requests, subscribe to its command subject and its own reply inboxes. A key retired by a
  rotation may still log in for ``nats.retired_key_login_s`` (a running edge reconnects with
  its new key meanwhile);
- the hub's own nkey user (:func:`hub_nkey_seed`, key file ``state_dir/nats-hub.pem``) with
  :func:`hub_permissions`: what ingest, the status listener and the command publisher need;
- optionally the operator's own entries (``nats.extra_users_file``), copied as they are.

:class:`AuthorizationManager` rewrites the file when the registry changes (this process's
changes at once, other processes' within the registry's ``poll_s``) or a retired key's login
grace ends, and only when the text changed; it then makes the server reload
(:class:`NatsReloader`: SIGHUP to the pid in ``nats.pid_file``). On reload nats-server closes
the connections of users that are no longer listed, so a revoked edge is cut off within a
fraction of a second and its reconnects are refused. A reload that fails (no pid file, no
such process) is counted, logged and tried again until it works. (A reload also drops the
connections that are logging in at that moment; they reconnect at once.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from contract.fileio import write_atomic
from contract.names import (
    CLOCK_SUBJECT,
    CONSUMER_NAME,
    STATUS_SUBJECTS,
    STREAM_NAME,
    edge_permissions,
)
from contract.nkeyid import nkey_public, nkey_seed
from contract.signing import load_or_create_key, public_key_bytes
from hub.config import HubConfig
from hub.registry import Registry

__all__ = [
    "HUB_INBOX_PREFIX",
    "HUB_KEY_FILE",
    "AuthorizationManager",
    "NatsReloader",
    "NatsUser",
    "authorization_manager",
    "edge_users",
    "hub_nkey_public",
    "hub_nkey_seed",
    "hub_permissions",
    "render_authorization",
]

_log = logging.getLogger(__name__)

HUB_KEY_FILE: Final = "nats-hub.pem"
"""The hub's NATS identity key (Ed25519, PEM, 0600) in ``state_dir``."""
HUB_INBOX_PREFIX: Final = "_INBOX.cairn-hub"
"""The hub's reply inboxes (JetStream API answers, pulled batches): its user may subscribe to
these and to no edge's inboxes."""
_FILE_MODE: Final = 0o600
_LOG_EVERY_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class NatsUser:
    """One nkey user of the authorization."""

    nkey: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False
    """May publish one reply to the reply subject of each request it received."""
    comment: str = ""


def hub_nkey_seed(state_dir: Path) -> bytes:
    """The hub's NATS nkey seed (``SU...``); its key is made (0600, atomically) on first use."""
    return nkey_seed(load_or_create_key(state_dir / HUB_KEY_FILE))


def hub_nkey_public(state_dir: Path) -> str:
    """The hub's NATS user public key (``U...``)."""
    return nkey_public(public_key_bytes(load_or_create_key(state_dir / HUB_KEY_FILE)))


def hub_permissions() -> dict[str, list[str]]:
    """What the hub's NATS user may do, and no more:

    - publish: commands to every edge; the JetStream API of the telemetry stream and its
      consumers (stream create/update/info, consumer create/info, pull requests) and acks of
      its messages; replies to requests it received (``allow_responses``: clock answers);
    - subscribe: clock requests, the edges' status documents, its own reply inboxes."""
    js = "$JS.API"
    return {
        "publish": [
            "cairn.command.>",
            f"{js}.INFO",
            f"{js}.STREAM.*.{STREAM_NAME}",
            f"{js}.CONSUMER.*.{STREAM_NAME}",
            f"{js}.CONSUMER.*.{STREAM_NAME}.>",
            f"{js}.CONSUMER.*.*.{STREAM_NAME}.>",
            f"$JS.ACK.{STREAM_NAME}.{CONSUMER_NAME}.>",
        ],
        "subscribe": [CLOCK_SUBJECT, STATUS_SUBJECTS, f"{HUB_INBOX_PREFIX}.>"],
    }


def _hub_user(nkey: str) -> NatsUser:
    perms = hub_permissions()
    return NatsUser(
        nkey,
        tuple(perms["publish"]),
        tuple(perms["subscribe"]),
        allow_responses=True,
        comment="hub",
    )


def edge_users(
    registry: Registry, login_grace_s: float, now_us: int | None = None
) -> tuple[list[NatsUser], int | None]:
    """The users of the edges that may log in now, and when (µs) that changes by itself (a
    retired key's login grace ending; ``None`` if never)."""
    now = time.time_ns() // 1000 if now_us is None else now_us
    grace_us = int(login_grace_s * 1_000_000)
    users: list[NatsUser] = []
    next_change: int | None = None
    active = {(t, e) for t, e, _key in registry.active_edges()}
    for record in registry.edges():
        if (record.tenant, record.edge) not in active:
            continue  # revoked, or its tenant is disabled
        perms = edge_permissions(record.tenant, record.edge)
        for key in record.keys:
            if key.revoked_us is not None:
                continue
            if key.retired_us is not None:
                ends = key.retired_us + grace_us
                if ends <= now:
                    continue
                next_change = ends if next_change is None else min(next_change, ends)
            users.append(
                NatsUser(
                    nkey_public(key.public_key),
                    tuple(perms["publish"]),
                    tuple(perms["subscribe"]),
                    comment=f"{record.tenant}.{record.edge}"
                    + (" (retired key)" if key.retired_us is not None else ""),
                )
            )
    return users, next_change


def _quoted(items: Sequence[str]) -> str:
    # JSON strings are nats-server strings; quoting keeps "$JS..." from being a variable.
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def render_authorization(users: Sequence[NatsUser], extra: str = "") -> str:
    """The text of the authorization file (an ``authorization`` block of nkey users)."""
    lines = [
        "# Written by cairn-hub from its registry of edges; do not edit (it is rewritten).",
        "authorization {",
        "  users = [",
    ]
    for user in users:
        if user.comment:
            lines.append(f"    # {user.comment}")
        allow_responses = ", allow_responses: true" if user.allow_responses else ""
        lines.append(
            f"    {{ nkey: {json.dumps(user.nkey)}, permissions: {{"
            f" publish: {{ allow: {_quoted(user.publish)} }},"
            f" subscribe: {{ allow: {_quoted(user.subscribe)} }}{allow_responses} }} }}"
        )
    if extra.strip():
        lines.append("    # from nats.extra_users_file")
        lines.extend(f"    {line}" for line in extra.strip().splitlines())
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


class _ReloadFailed(Exception):  # noqa: N818 - a control-flow signal
    def __init__(self, reason: str, problem: str) -> None:
        self.reason = reason
        self.problem = problem
        super().__init__(problem)


class NatsReloader:
    """Makes the nats-server whose pid is in ``pid_file`` reload its config (SIGHUP)."""

    def __init__(self, pid_file: Path | None) -> None:
        self.pid_file = pid_file
        self.reloads = 0
        self.errors: Counter[str] = Counter()
        self.last_error: str | None = None
        self._logged: dict[str, float] = {}

    def reload(self) -> bool:
        """Signal the server; ``False`` (counted and logged) if that was not possible."""
        if self.pid_file is None:
            return True  # nothing to signal: the operator reloads the server
        try:
            pid = self._pid(self.pid_file)
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                raise _ReloadFailed(
                    "no-process", f"no process {pid} (from {self.pid_file})"
                ) from None
            except OSError as exc:
                raise _ReloadFailed(
                    "signal-failed", f"cannot signal process {pid}: {exc}"
                ) from None
        except _ReloadFailed as failed:
            self._failed(failed.reason, failed.problem)
            return False
        self.reloads += 1
        self.last_error = None
        return True

    @staticmethod
    def _pid(pid_file: Path) -> int:
        try:
            text = pid_file.read_text().strip()
        except FileNotFoundError:
            raise _ReloadFailed("no-pid-file", f"{pid_file} does not exist") from None
        except OSError as exc:
            raise _ReloadFailed("no-pid-file", f"cannot read {pid_file}: {exc}") from None
        if not text.isdigit() or int(text) <= 1:
            raise _ReloadFailed("bad-pid-file", f"{pid_file} holds {text[:40]!r}, not a pid")
        return int(text)

    def _failed(self, reason: str, problem: str) -> None:
        self.errors[reason] += 1
        self.last_error = problem
        now = time.monotonic()
        if now - self._logged.get(reason, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._logged[reason] = now
            _log.warning("cannot make nats-server reload its authorization: %s", problem)


class AuthorizationManager:
    """Keeps ``path`` equal to the authorization the registry implies, and the server reloaded."""

    def __init__(
        self,
        registry: Registry,
        path: Path,
        hub_nkey: str,
        *,
        reloader: NatsReloader | None = None,
        login_grace_s: float = 600.0,
        extra_users_file: Path | None = None,
        poll_s: float = 0.25,
    ) -> None:
        self._registry = registry
        self.path = path
        self.hub_nkey = hub_nkey
        self.reloader = reloader or NatsReloader(None)
        self.login_grace_s = login_grace_s
        self.extra_users_file = extra_users_file
        self.poll_s = poll_s
        self.writes = 0
        self.edge_users = 0
        self.errors: Counter[str] = Counter()
        self._reload_pending = False
        self._dirty = True
        self._next_change_us: int | None = None
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        registry.add_listener(self._on_change)

    def as_dict(self) -> dict[str, Any]:
        return {
            "nats_authorization_writes": self.writes,
            "nats_authorization_edge_users": self.edge_users,
            "nats_reloads": self.reloader.reloads,
            "nats_reload_errors": dict(sorted(self.reloader.errors.items())),
            "nats_authorization_errors": dict(sorted(self.errors.items())),
            "nats_reload_pending": self._reload_pending,
        }

    def render(self) -> str:
        """The authorization text as of now (records when it next changes by itself)."""
        users, self._next_change_us = edge_users(self._registry, self.login_grace_s)
        self.edge_users = len(users)
        extra = ""
        if self.extra_users_file is not None:
            extra = self.extra_users_file.read_text(encoding="utf-8")
        return render_authorization([_hub_user(self.hub_nkey), *users], extra)

    def sync(self, *, reload: bool = True) -> bool:
        """Write the file if its text changed, then reload the server (also when an earlier
        reload failed); ``True`` if the file was written. Thread-safe.

        Call it with ``reload=False`` just before the server starts, so that the server finds
        the file and is not sent a needless reload right after its start: nats-server drops
        the connections that are still logging in when it reloads (they reconnect)."""
        with self._lock:
            text = self.render()
            try:
                current: str | None = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                current = None
            written = text != current
            if written:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                write_atomic(self.path, text.encode(), mode=_FILE_MODE)
                self.writes += 1
                self._reload_pending = self._reload_pending or reload
                _log.info(
                    "wrote the NATS authorization (%d edge users) to %s", self.edge_users, self.path
                )
            elif current is not None and self.path.stat().st_mode & 0o777 != _FILE_MODE:
                self.path.chmod(_FILE_MODE)
            if reload and self._reload_pending and self.reloader.reload():
                self._reload_pending = False
            return written

    def _on_change(self) -> None:
        self._dirty = True
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                loop.call_soon_threadsafe(self._wake.set)

    def _due_s(self) -> float | None:
        """Seconds until a retired key's login grace ends (``None``: none pending)."""
        if self._next_change_us is None:
            return None
        return (self._next_change_us - time.time_ns() // 1000) / 1_000_000

    async def run(self) -> None:
        """Keep the file and the server current until cancelled."""
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                self._wake.clear()
                try:
                    # Other processes' commits: the registry calls _on_change if there are any.
                    await asyncio.to_thread(self._registry.refresh)
                    due = self._due_s()
                    if self._dirty or self._reload_pending or (due is not None and due <= 0):
                        self._dirty = False
                        await asyncio.to_thread(self.sync)
                except Exception as exc:  # the registry or the disk: logged, tried again
                    self._dirty = True
                    self.errors[type(exc).__name__] += 1
                    _log.warning("cannot update the NATS authorization: %s", exc)
                wait = self.poll_s
                due = self._due_s()
                if due is not None:
                    wait = min(wait, max(0.0, due))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
        finally:
            self._loop = None


def authorization_manager(config: HubConfig, registry: Registry) -> AuthorizationManager:
    """The manager ``[nats]`` describes: the file ``authorization_path``, the hub's own user,
    the server reloaded through ``pid_file`` (none: the file is only written)."""
    nats = config.nats
    return AuthorizationManager(
        registry,
        config.authorization_path,
        hub_nkey_public(config.hub.state_dir),
        reloader=NatsReloader(Path(nats.pid_file) if nats.pid_file else None),
        login_grace_s=nats.retired_key_login_s,
        extra_users_file=Path(nats.extra_users_file) if nats.extra_users_file else None,
    )
