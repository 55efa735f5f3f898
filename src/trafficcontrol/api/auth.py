"""The dashboard's token: created once per state home, required on every route but
``/healthz``.

Design note. One bearer token per home, in ``<home>/http.token`` (0600, created with
``O_EXCL`` so two starts never race to different tokens). A client shows it as
``Authorization: Bearer …`` (scripts, Prometheus' ``authorization`` block), or a
browser opens ``/?token=…`` once: the answer sets an ``HttpOnly``, ``SameSite=Strict``
cookie and redirects to the same URL without the token, so it stays out of the
address bar, the history and the page source. Comparison is constant-time. The
middleware is plain ASGI (no session machinery) so that it also guards the SSE stream.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from trafficcontrol.errors import ConfigError

TOKEN_FILE = "http.token"
COOKIE = "tc_token"
OPEN_PATHS = frozenset({"/healthz"})
"""Served without the token: liveness must answer a probe that holds no secret."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def token_path(home: Path) -> Path:
    return home / TOKEN_FILE


def load_or_create_token(home: Path) -> tuple[str, bool]:
    """(the home's token, whether it was created now). Raises ``ConfigError`` when the
    file is unreadable, empty, or readable by others."""
    path = token_path(home)
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_token(home), False
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(token + "\n")
        file.flush()
        os.fsync(file.fileno())
    return token, True


def read_token(home: Path) -> str:
    path = token_path(home)
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no token yet (tc run --http or tc serve creates it)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the token: {exc}") from exc
    if mode & 0o077:
        raise ConfigError(
            f"{path}: readable by others (mode {mode:o}); run chmod 600 on it, or delete it"
            " for a new token"
        )
    if len(text) < 16 or not text.isprintable() or " " in text:
        raise ConfigError(f"{path}: not a token (delete the file for a new one)")
    return text


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, auth: bool) -> None:
    """Refuse to serve without a token anywhere but on a loopback address."""
    if not auth and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host} without a token: anyone who reaches that address"
            " could cancel and submit work (set [http] auth = true, or bind to 127.0.0.1)"
        )


class TokenAuth:
    """ASGI middleware: 401 unless the request carries the token (module notes)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self._token = token.encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._token is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        offered = dict(query).get("token")
        if offered is not None and self._matches(offered):
            await self._set_cookie_and_redirect(scope, query, send)
            return
        if self._matches(self._presented(scope)):
            await self.app(scope, receive, send)
            return
        await _unauthorized(scope, send)

    def _matches(self, offered: str | None) -> bool:
        return (
            offered is not None
            and self._token is not None
            and hmac.compare_digest(offered.encode("utf-8", "replace"), self._token)
        )

    @staticmethod
    def _presented(scope: Scope) -> str | None:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header: str = bytes(value).decode("latin-1")
                scheme, _, credential = header.partition(" ")
                if scheme.lower() == "bearer":
                    return credential.strip()
            elif name == b"cookie":
                cookie: SimpleCookie = SimpleCookie()
                try:
                    cookie.load(value.decode("latin-1"))
                except Exception:  # a malformed Cookie header is simply no token
                    continue
                if COOKIE in cookie:
                    return str(cookie[COOKIE].value)
        return None

    async def _set_cookie_and_redirect(
        self, scope: Scope, query: list[tuple[str, str]], send: Send
    ) -> None:
        assert self._token is not None
        rest = urlencode([(k, v) for k, v in query if k != "token"])
        location = scope["path"] + (f"?{rest}" if rest else "")
        cookie = f"{COOKIE}={self._token.decode()}; Path=/; HttpOnly; SameSite=Strict"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location.encode("latin-1")),
                    (b"set-cookie", cookie.encode("latin-1")),
                    (b"cache-control", b"no-store"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})


async def _unauthorized(scope: Scope, send: Send) -> None:
    accept = dict(scope.get("headers", ())).get(b"accept", b"")
    if b"text/html" in accept:
        body = (
            b"<!doctype html><title>tc: token needed</title><h1>401: token needed</h1>"
            b"<p>Open the address <code>tc run --http</code> printed, or add"
            b" <code>?token=</code> and the token <code>tc http token</code> shows.</p>"
        )
        kind = b"text/html; charset=utf-8"
    else:
        body = json.dumps(
            {"error": "unauthorized", "message": "missing or wrong token (tc http token)"}
        ).encode()
        kind = b"application/json"
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", kind),
                (b"www-authenticate", b'Bearer realm="trafficcontrol"'),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
