"""A scripted stand-in for the Anthropic Messages API, for real clients in tests.

The real Claude Code CLI (through claude-agent-sdk) and the real ``anthropic``
client talk to it over HTTP exactly as they would to the provider, so tests
exercise their real retry, streaming and fallback code instead of mocks.

Design notes:

- **A script, not a model.** Each ``POST /v1/messages`` answers with the next
  :class:`Turn` of the test's script (text, or tool calls plus declared usage);
  when the script is exhausted it answers :data:`DONE_TEXT`, so an agent loop
  always terminates. A turn is consumed only when it was delivered in full: a
  fault or a cut connection leaves it for the client's retry. The books (turns
  left, window tokens) are settled before the last byte of an answer goes out,
  so a test may assert on them as soon as its client call has returned.
- **Both wire shapes.** ``"stream": true`` gets SSE (chunked HTTP/1.1, so
  keep-alive works as with the real API); anything else gets one JSON message —
  the CLI falls back to ``stream: false`` after a cut stream.
- **Lenient input.** Unknown roles, blocks and fields in a request are recorded,
  never refused: the CLI sends things (``role: "system"`` messages, betas) the
  public API documents loosely. Other paths answer harmlessly (``/api/hello``
  200, anything else a 404 JSON error).
- **Faults are a queue.** :meth:`ProviderServer.add_fault` queues a
  :class:`Fault` that hits the next N matching requests (optionally one model,
  optionally after letting some through). Kinds, one branch each in ``_Handler``:

  - ``STATUS`` (:meth:`Fault.http`): an HTTP error status (429/500/529/...) with
    an Anthropic-shaped body and headers such as ``retry-after``/``x-should-retry``.
  - ``STALL`` (:meth:`Fault.stall`): hold the request, sending nothing, until
    :meth:`ProviderServer.release` or shutdown, then serve it normally. With
    ``mid_stream=True`` the headers and the first ``after_events`` events go out
    first, so a client sees a stream that opened and went silent.
  - ``SSE_ERROR`` (:meth:`Fault.sse_error`): a 200 stream whose ``after_events``
    first events are sent, then ``event: error`` (``{"type": "error", "error":
    {...}}``), then the end of the stream — how the real API reports overload
    once a stream has started. A non-streaming request gets the error type's
    HTTP status instead (it cannot fail mid-body).
  - ``DROP`` (:meth:`Fault.drop`): the connection is closed (FIN, not RST: the
    client reads every byte sent before the close, so the cut is deterministic)
    in the middle of the header block when ``after_bytes`` is 0, else after
    ``after_bytes`` bytes of the body (chunk framing included).
  - ``MALFORMED`` (:meth:`Fault.malformed`): a 200 whose body is not valid JSON
    (non-streaming) or whose first SSE ``data:`` line is broken JSON (streaming).

  ``STATUS``, ``MALFORMED``, a plain ``STALL`` and a ``DROP`` before the headers
  act before the hidden limit is checked and before any turn is taken; the
  in-stream ones (``SSE_ERROR``, ``STALL(mid_stream=True)``, a ``DROP`` after
  body bytes) come after that check (a request the hidden limit refuses uses
  one of their ``times`` up), stream part of the next turn, and give it back
  unless it was delivered in full.
- **A hidden usage limit.** :meth:`ProviderServer.set_hidden_limit` plays a
  provider whose window allows N tokens the client is not told of up front:
  every delivered response adds its input + output tokens to the window's
  counter, successful responses carry ``anthropic-ratelimit-tokens-*`` headers,
  and once the counter has reached N every message request is refused with 429
  (``rate_limit_error``, the reset in ``retry-after``,
  ``anthropic-ratelimit-unified-reset`` and ``anthropic-ratelimit-tokens-reset``,
  ``x-should-retry: false``) until :meth:`ProviderServer.new_window`. Times come
  from the test; only ``retry-after`` reads the clock. Queued faults act first.
- **Everything is recorded** (method, path, query, headers with secrets
  redacted, JSON body) so tests assert on what the client really sent. Waiting
  is on a condition variable (:meth:`ProviderServer.wait_for`), never a sleep.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType, TracebackType
from typing import Any
from urllib.parse import urlsplit

DONE_TEXT = "done"
"""What the server answers once the script is exhausted."""

REDACTED = "<redacted>"
TEST_API_KEY = "test-key"
"""The key tests give clients; the server accepts any."""
_SECRET_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie"})


# -- the script ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TurnUsage:
    """Tokens one response declares (what the real API reports per call)."""

    input_tokens: int = 10
    output_tokens: int = 5
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0

    def as_api(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_tokens,
            "cache_creation_input_tokens": self.cache_creation_tokens,
        }


@dataclass(frozen=True, slots=True)
class ToolUse:
    """One ``tool_use`` block the model 'decides' to emit."""

    name: str
    input: Mapping[str, Any]
    id: str = field(default_factory=lambda: f"toolu_{uuid.uuid4().hex[:24]}")


@dataclass(frozen=True, slots=True)
class Turn:
    """One assistant response: optional text, then zero or more tool calls."""

    text: str | None = None
    tool_uses: tuple[ToolUse, ...] = ()
    usage: TurnUsage = TurnUsage()

    @property
    def stop_reason(self) -> str:
        return "tool_use" if self.tool_uses else "end_turn"

    def content(self) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if self.text is not None:
            blocks.append({"type": "text", "text": self.text})
        blocks.extend(
            {"type": "tool_use", "id": t.id, "name": t.name, "input": dict(t.input)}
            for t in self.tool_uses
        )
        return blocks


def text(reply: str, *, usage: TurnUsage | None = None) -> Turn:
    """A turn that answers with text and ends the agent's loop."""
    return Turn(text=reply, usage=usage or TurnUsage())


def tool(
    name: str,
    input: Mapping[str, Any],
    *more: ToolUse,
    usage: TurnUsage | None = None,
    preamble: str | None = None,
) -> Turn:
    """A turn that calls ``name`` with ``input`` (and any ``more`` tools)."""
    return Turn(text=preamble, tool_uses=(ToolUse(name, input), *more), usage=usage or TurnUsage())


_DONE_TURN = text(DONE_TEXT)


# -- faults ----------------------------------------------------------------------------
class FaultKind(StrEnum):
    STATUS = "status"
    """Answer with an HTTP error status and an Anthropic-shaped error body."""
    STALL = "stall"
    """Hold the request (optionally mid-stream) until ``release()`` or shutdown, then
    serve the turn normally."""
    SSE_ERROR = "sse_error"
    """A 200 stream that carries an ``error`` event after some events."""
    DROP = "drop"
    """Close the connection mid-headers or mid-body."""
    MALFORMED = "malformed"
    """A 200 whose body (or SSE data line) is not valid JSON."""


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_ERROR_STATUSES = {error_type: status for status, error_type in _ERROR_TYPES.items()}
MALFORMED_BODY = b'{"type": "message", "content": [{"type": "text", "te'
"""What a ``MALFORMED`` fault sends: JSON cut short."""


@dataclass(frozen=True, slots=True)
class Fault:
    """Something going wrong for the next ``times`` matching requests."""

    kind: FaultKind
    times: int = 1
    model: str | None = None
    """Only requests for exactly this model (None: any)."""
    after: int = 0
    """Let this many matching requests through untouched first."""
    status: int = 500
    headers: Mapping[str, str] = field(default_factory=dict)
    message: str = "injected fault"
    error_type: str | None = None
    """The error body's ``type`` (None: the one the real API uses for ``status``)."""
    after_events: int = 0
    """``SSE_ERROR`` and a mid-stream ``STALL``: SSE events sent before it strikes."""
    after_bytes: int = 0
    """``DROP``: body bytes sent before the close (0: close mid-headers)."""
    mid_stream: bool = False
    """``STALL``: send the headers and ``after_events`` events before holding."""

    @property
    def in_response(self) -> bool:
        """Strikes once the response has started (after a turn was taken)."""
        match self.kind:
            case FaultKind.SSE_ERROR:
                return True
            case FaultKind.STALL:
                return self.mid_stream
            case FaultKind.DROP:
                return self.after_bytes > 0
            case _:
                return False

    @staticmethod
    def http(
        status: int,
        *,
        times: int = 1,
        model: str | None = None,
        after: int = 0,
        retry_after: float | None = None,
        should_retry: bool | None = None,
        error_type: str | None = None,
    ) -> Fault:
        """An HTTP error ``status``, with ``retry-after`` / ``x-should-retry`` when given."""
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        if should_retry is not None:
            headers["x-should-retry"] = "true" if should_retry else "false"
        return Fault(
            FaultKind.STATUS,
            times=times,
            model=model,
            after=after,
            status=status,
            headers=headers,
            error_type=error_type,
        )

    @staticmethod
    def stall(
        *,
        times: int = 1,
        model: str | None = None,
        after: int = 0,
        mid_stream: bool = False,
        after_events: int = 2,
    ) -> Fault:
        """Hold the request until ``release()``; with ``mid_stream`` after the headers and
        ``after_events`` events (by default ``message_start`` and a ``ping``)."""
        return Fault(
            FaultKind.STALL,
            times=times,
            model=model,
            after=after,
            mid_stream=mid_stream,
            after_events=after_events if mid_stream else 0,
        )

    @staticmethod
    def sse_error(
        error_type: str = "overloaded_error",
        *,
        after_events: int = 1,
        times: int = 1,
        model: str | None = None,
        after: int = 0,
        message: str = "injected fault",
    ) -> Fault:
        """A 200 stream that sends ``after_events`` events, then an ``error`` event."""
        return Fault(
            FaultKind.SSE_ERROR,
            times=times,
            model=model,
            after=after,
            status=_ERROR_STATUSES.get(error_type, 500),
            error_type=error_type,
            after_events=after_events,
            message=message,
        )

    @staticmethod
    def drop(
        *, after_bytes: int = 0, times: int = 1, model: str | None = None, after: int = 0
    ) -> Fault:
        """Close the connection mid-headers (``after_bytes=0``) or after that many body
        bytes."""
        return Fault(FaultKind.DROP, times=times, model=model, after=after, after_bytes=after_bytes)

    @staticmethod
    def malformed(*, times: int = 1, model: str | None = None, after: int = 0) -> Fault:
        """A 200 whose body is not valid JSON (a broken SSE data line when streaming)."""
        return Fault(FaultKind.MALFORMED, times=times, model=model, after=after)


@dataclass(slots=True)
class _PendingFault:
    fault: Fault
    skip: int
    remaining: int


# -- recording -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    """Path without the query string (``/v1/messages`` for ``/v1/messages?beta=true``)."""
    query: str
    headers: Mapping[str, str]
    """Lower-cased names; credentials replaced by :data:`REDACTED`."""
    body: Any
    """The parsed JSON body, or None (no body or not JSON)."""

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True

    def user_texts(self) -> list[str]:
        """Every text the request carries in ``user`` messages, in order."""
        texts: list[str] = []
        messages = self.body.get("messages", []) if isinstance(self.body, dict) else []
        for message in messages:
            if not isinstance(message, dict) or message.get("role") != "user":
                continue
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts.extend(
                    b["text"]
                    for b in content
                    if isinstance(b, dict) and b.get("type") == "text" and "text" in b
                )
        return texts


# -- the server ------------------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    provider: ProviderServer


class ProviderServer:
    """The scripted provider, on 127.0.0.1 with an ephemeral port, in a thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._lock = threading.Condition()
        self._turns: deque[Turn] = deque()
        self._faults: list[_PendingFault] = []
        self._requests: list[RecordedRequest] = []
        self._stalled = 0
        self.response_headers: dict[str, str] = {}
        """Sent with every answered request (e.g. the provider's rate-limit headers)."""
        self._release_generation = 0
        self._stopping = False
        self._hidden_limit: int | None = None
        self._resets_at = 0.0
        self._window_tokens = 0
        self._limit_hits = 0
        self._httpd = _Server((host, 0), _Handler)
        self._httpd.provider = self
        self._thread: threading.Thread | None = None
        port = self._httpd.server_address[1]
        self.url = f"http://{host}:{port}"

    # lifecycle
    def start(self) -> ProviderServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            # shutdown() waits up to one poll interval; the default 0.5 s per test adds up.
            kwargs={"poll_interval": 0.02},
            name="provider-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release stalled requests, stop serving, close the socket. Idempotent."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self) -> ProviderServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # scripting
    def script(self, *turns: Turn | str) -> None:
        """Replace the remaining script; a plain string is a text turn."""
        with self._lock:
            self._turns = deque(text(t) if isinstance(t, str) else t for t in turns)

    @property
    def turns(self) -> list[Turn]:
        """The turns not yet delivered."""
        with self._lock:
            return list(self._turns)

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(_PendingFault(fault, skip=fault.after, remaining=fault.times))

    def clear_faults(self) -> None:
        """Forget every queued fault (an outage ends)."""
        with self._lock:
            self._faults.clear()

    def set_hidden_limit(self, tokens: int, *, resets_at: float) -> None:
        """Refuse message requests with 429 once the window's counter reaches ``tokens``
        (input + output of every delivered response); the window resets at ``resets_at``
        (epoch seconds). The counter is kept: :meth:`new_window` zeroes it."""
        with self._lock:
            self._hidden_limit = tokens
            self._resets_at = resets_at
            self._lock.notify_all()

    def new_window(self, resets_at: float) -> None:
        """A fresh window: the counter starts again at zero; the next reset is ``resets_at``."""
        with self._lock:
            self._window_tokens = 0
            self._resets_at = resets_at
            self._lock.notify_all()

    def release(self) -> None:
        """Let every currently stalled request go on."""
        with self._lock:
            self._release_generation += 1
            self._lock.notify_all()

    # observing
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def message_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/messages"]

    @property
    def window_tokens(self) -> int:
        """Input + output tokens delivered in the current window."""
        with self._lock:
            return self._window_tokens

    @property
    def limit_hits(self) -> int:
        """How many requests the hidden limit refused with 429."""
        with self._lock:
            return self._limit_hits

    @property
    def stalled(self) -> int:
        """How many requests have been stalled so far."""
        with self._lock:
            return self._stalled

    def wait_for(self, predicate: Callable[[ProviderServer], bool], timeout: float) -> None:
        """Block until ``predicate(self)`` holds (re-checked on every request)."""
        with self._lock:
            if not self._lock.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError(f"provider: condition not met within {timeout}s")

    # used by the handler
    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()

    def _take_fault(self, model: str | None) -> Fault | None:
        with self._lock:
            for pending in self._faults:
                fault = pending.fault
                if pending.remaining == 0 or fault.model not in (None, model):
                    continue
                if pending.skip > 0:
                    pending.skip -= 1
                    continue
                pending.remaining -= 1
                return fault
            return None

    def _stall(self) -> bool:
        """Wait for a release; False when the server is stopping instead."""
        with self._lock:
            self._stalled += 1
            generation = self._release_generation
            self._lock.notify_all()
            self._lock.wait_for(lambda: self._stopping or self._release_generation > generation)
            return not self._stopping

    def _admit(self) -> tuple[str | None, dict[str, str]]:
        """(the refusal's message, the 429's headers) when the hidden limit is reached;
        else (None, the headers a successful answer carries)."""
        with self._lock:
            headers = dict(self.response_headers)
            limit = self._hidden_limit
            if limit is None:
                return None, headers
            reset = datetime.fromtimestamp(self._resets_at, UTC).isoformat().replace("+00:00", "Z")
            remaining = max(0, limit - self._window_tokens)
            headers |= {
                "anthropic-ratelimit-tokens-limit": str(limit),
                "anthropic-ratelimit-tokens-remaining": str(remaining),
                "anthropic-ratelimit-tokens-reset": reset,
            }
            if self._window_tokens < limit:
                return None, headers
            self._limit_hits += 1
            self._lock.notify_all()
            resets_at = self._resets_at
        headers |= {
            "retry-after": str(max(0, math.ceil(resets_at - time.time()))),
            "anthropic-ratelimit-unified-reset": str(int(resets_at)),
            "x-should-retry": "false",
        }
        return f"usage limit reached, resets at {reset}", headers

    def _delivered(self, turn: Turn, *, undo: bool = False) -> None:
        """Count ``turn``'s tokens in the window (``undo``: take them out again)."""
        tokens = turn.usage.input_tokens + turn.usage.output_tokens
        with self._lock:
            self._window_tokens += -tokens if undo else tokens
            self._lock.notify_all()

    def _take_turn(self) -> Turn:
        with self._lock:
            return self._turns.popleft() if self._turns else _DONE_TURN

    def _give_back(self, turn: Turn) -> None:
        """A turn whose delivery failed goes back to the front for the retry."""
        if turn is _DONE_TURN:
            return
        with self._lock:
            self._turns.appendleft(turn)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean; requests are recorded instead

    # -- routing
    def do_HEAD(self) -> None:
        self._record(None)
        self._send_json(200 if self._path == "/api/hello" else 404, {}, body=False)

    def do_GET(self) -> None:
        self._record(None)
        if self._path == "/api/hello":
            self._send_json(200, {})
        else:
            self._send_error(404, f"no route for GET {self._path}")

    def do_POST(self) -> None:
        raw = self._read_body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self._record(body)
        if self._path == "/v1/messages":
            if not isinstance(body, dict):
                self._send_error(400, "request body is not a JSON object")
            else:
                self._messages(body)
        elif self._path == "/v1/messages/count_tokens":
            self._send_json(200, {"input_tokens": max(1, len(raw) // 4)})
        else:
            self._send_error(404, f"no route for POST {self._path}")

    @property
    def _path(self) -> str:
        return urlsplit(self.path).path

    def _record(self, body: Any) -> None:
        headers = {
            k.lower(): (REDACTED if k.lower() in _SECRET_HEADERS else v)
            for k, v in self.headers.items()
        }
        self.server.provider._record(
            RecordedRequest(
                method=self.command,
                path=self._path,
                query=urlsplit(self.path).query,
                headers=MappingProxyType(headers),
                body=body,
            )
        )

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()  # the blank line after the last chunk
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    # -- the Messages API
    def _messages(self, body: dict[str, Any]) -> None:
        provider = self.server.provider
        model = str(body.get("model") or "claude-test")
        stream = body.get("stream") is True
        fault = provider._take_fault(model)
        if fault is not None and not fault.in_response:
            if not self._apply_fault(fault, stream=stream):
                return
            fault = None
        refusal, headers = provider._admit()
        if refusal is not None:
            self._send_error(429, refusal, headers)
            return
        turn = provider._take_turn()
        held = True
        if fault is not None and fault.kind is not FaultKind.STALL:
            # Never delivered: back for the retry before the client can see the failure.
            provider._give_back(turn)
            held = False
        delivered = False
        try:
            respond = self._stream if stream else self._answer
            delivered = respond(turn, model, headers, fault)
        except OSError:  # the client went away (cancelled, timed out)
            self.close_connection = True
        if held and not delivered:
            provider._give_back(turn)

    def _apply_fault(self, fault: Fault, *, stream: bool) -> bool:
        """Act out a fault that strikes before the response; True when the request
        should then be served normally."""
        match fault.kind:
            case FaultKind.STATUS:
                self._send_error(fault.status, fault.message, fault.headers, fault.error_type)
            case FaultKind.STALL:
                if self.server.provider._stall():
                    return True
                self.close_connection = True  # shutting down: drop the connection
            case FaultKind.DROP:  # half a header block, then the close
                self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
                self._drop()
            case FaultKind.MALFORMED if stream:
                self._send_head(200, "text/event-stream", {}, length=None)
                broken = b"event: message_start\ndata: " + MALFORMED_BODY + b"\n\n"
                self._write_chunks([broken])
                self._write(_LAST_CHUNK)
            case FaultKind.MALFORMED:
                self._send_head(200, "application/json", {}, length=len(MALFORMED_BODY))
                self.wfile.write(MALFORMED_BODY)
            case _:
                raise AssertionError(f"{fault.kind} strikes in the response")
        return False

    def _stream(
        self, turn: Turn, model: str, headers: Mapping[str, str], fault: Fault | None
    ) -> bool:
        """Stream ``turn`` as SSE, acting out an in-response ``fault``; True when the
        turn was delivered in full."""
        self._send_head(200, "text/event-stream", headers, length=None)
        events = [_sse(event) for event in _sse_events(turn, model)]
        if fault is None:
            self._write_chunks(events)
            self._finish(turn, _LAST_CHUNK)
            return True
        match fault.kind:
            case FaultKind.SSE_ERROR:
                error = {"type": "error", "error": _error(fault)}
                self._write_chunks([*events[: fault.after_events], _sse(error)])
                self._write(_LAST_CHUNK)
                return False
            case FaultKind.STALL:
                self._write_chunks(events[: fault.after_events])
                if not self.server.provider._stall():
                    self.close_connection = True
                    return False
                self._write_chunks(events[fault.after_events :])
                self._finish(turn, _LAST_CHUNK)
                return True
            case FaultKind.DROP:
                self._write((b"".join(map(_chunk, events)) + _LAST_CHUNK)[: fault.after_bytes])
                self._drop()
                return False
            case _:
                raise AssertionError(f"{fault.kind} strikes before the response")

    def _answer(
        self, turn: Turn, model: str, headers: Mapping[str, str], fault: Fault | None
    ) -> bool:
        """Answer ``turn`` as one JSON message, acting out an in-response ``fault``; True
        when the turn was delivered in full."""
        encoded = json.dumps(_message(turn, model)).encode()
        if fault is not None and fault.kind is FaultKind.SSE_ERROR:
            self._send_error(fault.status, fault.message, error_type=fault.error_type)
            return False
        self._send_head(200, "application/json", headers, length=len(encoded))
        if fault is None:
            self._finish(turn, encoded)
            return True
        match fault.kind:
            case FaultKind.STALL:
                self.wfile.flush()
                if not self.server.provider._stall():
                    self.close_connection = True
                    return False
                self._finish(turn, encoded)
                return True
            case FaultKind.DROP:
                self._write(encoded[: fault.after_bytes])
                self._drop()
                return False
            case _:
                raise AssertionError(f"{fault.kind} strikes before the response")

    def _finish(self, turn: Turn, last: bytes) -> None:
        """Send the ``last`` bytes of a delivered answer, counted as delivered first: a
        client must never see the end of an answer before the server's books do."""
        provider = self.server.provider
        provider._delivered(turn)
        try:
            self._write(last)
        except OSError:
            provider._delivered(turn, undo=True)
            raise

    # -- plumbing
    def _send_head(
        self, status: int, content_type: str, headers: Mapping[str, str], *, length: int | None
    ) -> None:
        """Status line and headers; ``length`` None means a chunked body."""
        self.send_response(status)
        self.send_header("content-type", content_type)
        if length is None:
            self.send_header("cache-control", "no-cache")
            self.send_header("transfer-encoding", "chunked")
        else:
            self.send_header("content-length", str(length))
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:24]}")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def _write_chunks(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            self._write(_chunk(payload))

    def _drop(self) -> None:
        """Close the connection now, whatever was sent (FIN: see the module notes)."""
        self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def _send_json(
        self,
        status: int,
        data: Any,
        headers: Mapping[str, str] | None = None,
        *,
        body: bool = True,
    ) -> None:
        encoded = json.dumps(data).encode()
        self._send_head(status, "application/json", headers or {}, length=len(encoded))
        if body:
            self.wfile.write(encoded)
        self.wfile.flush()

    def _send_error(
        self,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
        error_type: str | None = None,
    ) -> None:
        error = {"type": error_type or _ERROR_TYPES.get(status, "api_error"), "message": message}
        self._send_json(status, {"type": "error", "error": error}, headers)


_LAST_CHUNK = b"0\r\n\r\n"


def _chunk(payload: bytes) -> bytes:
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


def _sse(event: Mapping[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def _error(fault: Fault) -> dict[str, str]:
    error_type = fault.error_type or _ERROR_TYPES.get(fault.status, "api_error")
    return {"type": error_type, "message": fault.message}


def _message(turn: Turn, model: str) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": turn.content(),
        "stop_reason": turn.stop_reason,
        "stop_sequence": None,
        "usage": turn.usage.as_api(),
    }


def _sse_events(turn: Turn, model: str) -> Iterator[dict[str, Any]]:
    """The SSE events of ``turn``, shaped like the real API's (the event name is ``type``)."""
    start = _message(turn, model)
    start.update(content=[], stop_reason=None)
    # The real API reports input and cache tokens up front and the output count
    # at the end (cumulatively, in message_delta); clients sum accordingly.
    start["usage"] = {**turn.usage.as_api(), "output_tokens": 0}
    yield {"type": "message_start", "message": start}
    yield {"type": "ping"}
    for index, block in enumerate(turn.content()):
        opening: dict[str, Any]
        if block["type"] == "text":
            opening = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": block["text"]}]
        else:
            opening = {**block, "input": {}}
            arguments = json.dumps(block["input"])
            half = len(arguments) // 2  # two deltas: a real stream splits the JSON anywhere
            deltas = [
                {"type": "input_json_delta", "partial_json": part}
                for part in (arguments[:half], arguments[half:])
            ]
        yield {"type": "content_block_start", "index": index, "content_block": opening}
        for delta in deltas:
            yield {"type": "content_block_delta", "index": index, "delta": delta}
        yield {"type": "content_block_stop", "index": index}
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": turn.stop_reason, "stop_sequence": None},
        "usage": turn.usage.as_api(),
    }
    yield {"type": "message_stop"}
