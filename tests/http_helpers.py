"""A real ``tc run --http`` (or ``tc serve``) process and a client for it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.cli_helpers import TC

DASHBOARD = re.compile(r"dashboard: (http://[^/\s]+)/")


@dataclass
class Served:
    """One serving ``tc`` process: its base URL, token, and what it printed so far."""

    process: subprocess.Popen[str]
    url: str
    token: str
    home: Path
    stderr: list[str] = field(default_factory=list)

    def client(self, *, token: str | None = "") -> httpx.Client:
        """A client sending the token (``token=None``: none; a string: that one)."""
        shown = self.token if token == "" else token
        headers = {} if shown is None else {"Authorization": f"Bearer {shown}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        with self.client() as client:
            return client.get(path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        with self.client() as client:
            return client.post(path, **kw)


@contextmanager
def served(home: Path, *args: str, command: str = "run", timeout_s: float = 60) -> Iterator[Served]:
    """``tc run --http 127.0.0.1:0 --forever --no-live`` (or ``tc serve``) on ``home``
    until the block ends; then SIGTERM and wait."""
    env = {**os.environ, "TC_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    argv = (
        [*TC, "run", "--http", "127.0.0.1:0", "--forever", "--no-live", *args]
        if command == "run"
        else [*TC, "serve", "--http", "127.0.0.1:0", *args]
    )
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    lines: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            match = DASHBOARD.search(line)
            if match and not url:
                url.append(match.group(1))
                found.set()
        found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not found.wait(timeout_s) or not url:
            process.kill()
            raise AssertionError(f"tc {command} printed no dashboard address:\n{''.join(lines)}")
        token_file = home / "http.token"
        token = token_file.read_text().strip() if token_file.exists() else ""
        yield Served(process, url[0], token, home, lines)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=10)
        process.stderr.close()
