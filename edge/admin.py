"""The local admin API of the edge (for the TUI and tools): ``GET /api/v1/status``.

It listens on ``[admin].listen`` (loopback by default; ``""`` turns it off). With port 0 the
system picks a free port, which is written to ``<data_dir>/admin.port`` so tools can find it
(removed again on an orderly stop).

Status document::

    {"edge": "<id>", "tenant": "<tenant>",
     "buffer":    {BufferStats fields: batches_unsent, readings_unsent, batches_sent,
                   readings_sent, bytes_unsent, file_bytes, oldest_unsent_us, last_seq},
     "counters":  {"messages-received": n, "readings-accepted": n, "messages-rejected": n,
                   "redelivered-duplicate": n, "batches-committed": n, "readings-committed": n,
                   "commit-errors": n, "batches-forwarded": n, "readings-forwarded": n,
                   "publish-errors": n},
     "sources":   {"<name>": {"connected": bool, "messages": n, "accepted": n,
                              "rejected": {"<reason>": n}, "redelivered-duplicate": n}},
     "forwarder": {"connected": bool, "batches_sent": n, "readings_sent": n, "in_flight": n,
                   "last_error": str | null}}

Counters count since the edge process started; ``buffer`` is what the buffer file holds.
A BLE source's entry has more fields (adapter, per-device RSSI: see
:class:`edge.sources.ble.BleStats`), and so has an HTTP source's (listen address, responses by
status, WebSockets: see :class:`edge.sources.http.HttpStats`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from contract.errors import ConfigError
from edge.config import AdminSettings

__all__ = ["STATUS_PATH", "AdminServer"]

_log = logging.getLogger(__name__)

STATUS_PATH = "/api/v1/status"

StatusProvider = Callable[[], Awaitable[dict[str, Any]]]


class AdminServer:
    """The aiohttp app of the admin API; :meth:`start` binds, :meth:`stop` closes."""

    def __init__(
        self, settings: AdminSettings, status: StatusProvider, port_file: Path | None = None
    ) -> None:
        self._settings = settings
        self._status = status
        self._port_file = port_file
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        """The port listened on, once started."""

    def app(self) -> web.Application:
        """The aiohttp application (also usable with aiohttp's test client)."""
        app = web.Application()
        app.router.add_get(STATUS_PATH, self._get_status)
        return app

    async def start(self) -> str:
        """Bind and serve; returns the ``host:port`` listened on."""
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        host, port = self._settings.host, self._settings.port
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConfigError("admin.listen", f"cannot listen on {host}:{port}: {reason}") from exc
        self._runner = runner
        bound = runner.addresses[0]
        self.port = int(bound[1])
        if port == 0 and self._port_file is not None:
            tmp = self._port_file.with_name(self._port_file.name + ".tmp")
            tmp.write_text(f"{self.port}\n")
            tmp.replace(self._port_file)
        shown = f"[{host}]" if ":" in host else host
        return f"{shown}:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            if self._settings.port == 0 and self._port_file is not None:
                self._port_file.unlink(missing_ok=True)

    async def _get_status(self, _request: web.Request) -> web.Response:
        return web.json_response(await self._status())
