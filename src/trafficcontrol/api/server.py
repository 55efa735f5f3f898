"""uvicorn on the caller's event loop, on a socket bound before anything else starts.

Design note. Binding first (``bind``) turns "port in use" or "no such address" into
our error before recovery or any agent starts, and lets ``--http 127.0.0.1:0`` pick a
free port that we can print. uvicorn's own signal handling is left out: the
process's owner (``tc run``'s SIGINT/SIGTERM handlers, ``tc serve``'s) decides when
to stop, and then ``stop()`` ends the open streams and waits a bounded time.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn

from trafficcontrol.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def parse_listen(value: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT``; raises ``ConfigError`` naming the value."""
    text = value.strip()
    host, port_text = DEFAULT_HOST, text
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"--http {value!r}: expected [HOST]:PORT")
        host, port_text = inner, rest[1:]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--http {value!r}: the port must be a number from 0 to 65535")
    if not host:
        raise ConfigError(f"--http {value!r}: the host is empty")
    return host, int(port_text)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; raises ``ConfigError`` saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"http: cannot resolve {host!r}: {exc.strerror}") from exc
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"http: cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


class HttpServer:
    """One ASGI app served on a pre-bound socket, inside the running loop."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        self.socket = sock
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    async def start(self) -> None:
        """Serve from now on; returns once the socket accepts requests. Not through
        ``uvicorn.Server.serve``: that installs signal handlers (module notes)."""
        server = self._server
        server.config.load()
        server.lifespan = server.config.lifespan_class(server.config)
        await server.startup(sockets=[self.socket])
        if server.should_exit:
            raise ConfigError(f"http: the server did not start on {self.url}")
        self._task = asyncio.create_task(server.main_loop(), name="http")

    async def stop(self) -> None:
        """End the open streams, then the server, within a bounded time."""
        if self._task is None:
            return
        server, task, self._task = self._server, self._task, None
        server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout=5)
        except TimeoutError:
            server.force_exit = True
        try:
            await asyncio.wait_for(server.shutdown(sockets=[self.socket]), timeout=5)
        except TimeoutError:
            server.force_exit = True
        finally:
            self.socket.close()
