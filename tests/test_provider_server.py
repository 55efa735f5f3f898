"""The scripted provider, checked with the real ``anthropic`` client."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import anthropic
import httpx2
import pytest

from tests.provider.server import (
    DONE_TEXT,
    REDACTED,
    TEST_API_KEY,
    Fault,
    ProviderServer,
    TurnUsage,
    text,
    tool,
)

# Registers ``provider`` for this module (importing the fixture by name trips ruff's F811).
pytest_plugins = ["tests.provider.fixtures"]

PROMPT: list[anthropic.types.MessageParam] = [{"role": "user", "content": "write the file"}]


@pytest.fixture
def client(provider: ProviderServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=provider.url, api_key=TEST_API_KEY, max_retries=0) as c:
        yield c


def test_stream_delivers_tool_use_then_text_with_declared_usage(
    provider: ProviderServer, client: anthropic.Anthropic
) -> None:
    provider.script(
        tool(
            "Write",
            {"file_path": "hello.txt", "content": 'hi "there"\n'},
            usage=TurnUsage(100, 20, 30, 40),
            preamble="Writing it.",
        ),
        text("all done", usage=TurnUsage(7, 3)),
    )
    with client.messages.stream(model="claude-test", max_tokens=64, messages=PROMPT) as s:
        first = s.get_final_message()
    with client.messages.stream(model="claude-test", max_tokens=64, messages=PROMPT) as s:
        second = s.get_final_message()

    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["text", "tool_use"]
    call = first.content[1]
    assert isinstance(call, anthropic.types.ToolUseBlock)
    assert (call.name, call.input) == (
        "Write",
        {"file_path": "hello.txt", "content": 'hi "there"\n'},
    )
    usage = first.usage
    assert (usage.input_tokens, usage.output_tokens) == (100, 20)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (30, 40)
    assert second.stop_reason == "end_turn"
    assert [b.text for b in second.content if b.type == "text"] == ["all done"]
    assert provider.turns == []


def test_non_streaming_answer_and_done_after_the_script(
    provider: ProviderServer, client: anthropic.Anthropic
) -> None:
    provider.script("only turn")
    replies = [
        client.messages.create(model="claude-test", max_tokens=8, messages=PROMPT) for _ in range(2)
    ]
    texts = [b.text for r in replies for b in r.content if b.type == "text"]
    assert texts == ["only turn", DONE_TEXT]
    assert replies[0].model == "claude-test"


def test_requests_are_recorded_with_secrets_redacted_and_odd_content_accepted(
    provider: ProviderServer, client: anthropic.Anthropic
) -> None:
    odd = [
        {"role": "system", "content": "an unknown role, as the CLI sends"},
        {"role": "user", "content": [{"type": "mystery", "x": 1}, {"type": "text", "text": "hi"}]},
    ]
    client.messages.create(
        model="claude-test",
        max_tokens=8,
        messages=odd,  # type: ignore[arg-type]
        extra_query={"beta": "true"},
    )
    (recorded,) = provider.message_requests
    assert (recorded.method, recorded.path, recorded.query) == ("POST", "/v1/messages", "beta=true")
    assert recorded.model == "claude-test"
    assert recorded.user_texts() == ["hi"]
    credentials = {k: v for k, v in recorded.headers.items() if k in ("x-api-key", "authorization")}
    assert credentials and set(credentials.values()) == {REDACTED}
    assert TEST_API_KEY not in json.dumps(dict(recorded.headers))


def test_429_is_retried_by_the_client_and_the_turn_kept_for_the_retry(
    provider: ProviderServer,
) -> None:
    provider.script("after the retry")
    provider.add_fault(Fault.http(429, retry_after=0))
    with anthropic.Anthropic(base_url=provider.url, api_key=TEST_API_KEY, max_retries=1) as c:
        reply = c.messages.create(model="claude-test", max_tokens=8, messages=PROMPT)
    assert [b.text for b in reply.content if b.type == "text"] == ["after the retry"]
    retries = [r.headers["x-stainless-retry-count"] for r in provider.message_requests]
    assert retries == ["0", "1"]


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, anthropic.RateLimitError),
        (500, anthropic.InternalServerError),
        (529, anthropic.OverloadedError),
        (400, anthropic.BadRequestError),
    ],
)
def test_status_faults_map_to_the_clients_errors(
    provider: ProviderServer, client: anthropic.Anthropic, status: int, error: type[Exception]
) -> None:
    provider.add_fault(Fault.http(status, model="claude-bad"))
    with pytest.raises(error):
        client.messages.create(model="claude-bad", max_tokens=8, messages=PROMPT)
    # The fault was for one model and one request: others and the next one go through.
    client.messages.create(model="claude-good", max_tokens=8, messages=PROMPT)
    client.messages.create(model="claude-bad", max_tokens=8, messages=PROMPT)


def test_x_should_retry_false_stops_the_clients_retries(provider: ProviderServer) -> None:
    provider.add_fault(Fault.http(500, times=5, retry_after=0, should_retry=False))
    with (
        anthropic.Anthropic(base_url=provider.url, api_key=TEST_API_KEY, max_retries=3) as c,
        pytest.raises(anthropic.InternalServerError),
    ):
        c.messages.create(model="claude-test", max_tokens=8, messages=PROMPT)
    assert len(provider.message_requests) == 1


def test_fault_after_lets_the_first_requests_through(
    provider: ProviderServer, client: anthropic.Anthropic
) -> None:
    provider.add_fault(Fault.http(529, after=1))
    client.messages.create(model="claude-test", max_tokens=8, messages=PROMPT)
    with pytest.raises(anthropic.OverloadedError):
        client.messages.create(model="claude-test", max_tokens=8, messages=PROMPT)


def test_a_stalled_request_waits_for_release(
    provider: ProviderServer, client: anthropic.Anthropic
) -> None:
    provider.script("released")
    provider.add_fault(Fault.stall())
    replies: list[anthropic.types.Message] = []
    caller = threading.Thread(
        target=lambda: replies.append(
            client.messages.create(model="claude-test", max_tokens=8, messages=PROMPT)
        )
    )
    caller.start()
    provider.wait_for(lambda p: p.stalled == 1, timeout=10)
    assert replies == [] and provider.turns != []  # held, and the turn not yet taken
    provider.release()
    caller.join(timeout=10)
    assert [b.text for r in replies for b in r.content if b.type == "text"] == ["released"]


def test_stop_releases_a_stalled_request_and_is_idempotent() -> None:
    server = ProviderServer().start()
    server.add_fault(Fault.stall())
    failures: list[BaseException] = []

    def call() -> None:
        try:
            with anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0) as c:
                c.messages.create(model="claude-test", max_tokens=8, messages=PROMPT)
        except anthropic.APIConnectionError as e:
            failures.append(e)

    caller = threading.Thread(target=call)
    caller.start()
    server.wait_for(lambda p: p.stalled == 1, timeout=10)
    server.stop()
    server.stop()
    caller.join(timeout=10)
    assert not caller.is_alive()
    assert len(failures) == 1


def test_other_paths_answer_harmlessly(provider: ProviderServer) -> None:
    with urllib.request.urlopen(f"{provider.url}/api/hello") as hello:
        assert hello.status == 200
    head = urllib.request.Request(f"{provider.url}/api/hello", method="HEAD")
    with urllib.request.urlopen(head) as reply:
        assert reply.status == 200
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{provider.url}/v1/models")
    assert missing.value.code == 404
    assert json.loads(missing.value.read())["type"] == "error"
    missing.value.close()
    assert [(r.method, r.path) for r in provider.requests] == [
        ("GET", "/api/hello"),
        ("HEAD", "/api/hello"),
        ("GET", "/v1/models"),
    ]


# -- the other fault kinds -------------------------------------------------------------------
def stream_text(client: anthropic.Anthropic, model: str = "claude-test") -> str:
    with client.messages.stream(model=model, max_tokens=8, messages=PROMPT) as s:
        message = s.get_final_message()
    return "".join(b.text for b in message.content if b.type == "text")


def test_an_sse_error_arrives_mid_stream_and_the_turn_is_kept(
    provider: ProviderServer, client: anthropic.Anthropic
) -> None:
    provider.script("after the error")
    provider.add_fault(Fault.sse_error("overloaded_error", after_events=1))
    events: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as failed,
        client.messages.stream(model="claude-test", max_tokens=8, messages=PROMPT) as s,
    ):
        events.extend(event.type for event in s)

    assert events == ["message_start"]  # the stream had started (ping is not an event)
    assert (failed.value.status_code, failed.value.type) == (200, "overloaded_error")
    assert stream_text(client) == "after the error"


def test_an_sse_error_on_a_non_streaming_request_is_its_status(
    provider: ProviderServer, client: anthropic.Anthropic
) -> None:
    provider.add_fault(Fault.sse_error("overloaded_error"))
    with pytest.raises(anthropic.OverloadedError):
        client.messages.create(model="claude-test", max_tokens=8, messages=PROMPT)


@pytest.mark.parametrize("stream", [True, False])
def test_a_drop_before_the_headers_is_a_connection_error(
    provider: ProviderServer, client: anthropic.Anthropic, stream: bool
) -> None:
    provider.script("after the drop")
    provider.add_fault(Fault.drop())
    with pytest.raises(anthropic.APIConnectionError) as failed:
        if stream:
            stream_text(client)
        else:
            client.messages.create(model="claude-test", max_tokens=8, messages=PROMPT)
    assert isinstance(failed.value.__cause__, httpx2.RemoteProtocolError)
    assert stream_text(client) == "after the drop"


def test_a_drop_mid_stream_cuts_the_body_after_its_bytes(
    provider: ProviderServer, client: anthropic.Anthropic
) -> None:
    provider.script("after the drop")
    provider.add_fault(Fault.drop(after_bytes=500))
    events: list[str] = []
    with (
        pytest.raises(httpx2.RemoteProtocolError),
        client.messages.stream(model="claude-test", max_tokens=8, messages=PROMPT) as s,
    ):
        events.extend(event.type for event in s)
    # What came before the cut was delivered; the end never came.
    assert events[0] == "message_start" and "message_stop" not in events
    assert stream_text(client) == "after the drop"


def test_a_drop_mid_body_of_a_non_streaming_answer(
    provider: ProviderServer, client: anthropic.Anthropic
) -> None:
    provider.add_fault(Fault.drop(after_bytes=10))
    with pytest.raises(anthropic.APIConnectionError):
        client.messages.create(model="claude-test", max_tokens=8, messages=PROMPT)


@pytest.mark.parametrize("stream", [True, False])
def test_a_malformed_body_does_not_parse(
    provider: ProviderServer, client: anthropic.Anthropic, stream: bool
) -> None:
    provider.script("after the garbage")
    provider.add_fault(Fault.malformed())
    with pytest.raises(json.JSONDecodeError):
        if stream:
            stream_text(client)
        else:
            client.messages.create(model="claude-test", max_tokens=8, messages=PROMPT)
    assert stream_text(client) == "after the garbage"


def test_a_stream_stalled_mid_way_opens_then_holds_until_release(
    provider: ProviderServer, client: anthropic.Anthropic
) -> None:
    provider.script("released")
    provider.add_fault(Fault.stall(mid_stream=True, after_events=1))
    opened = threading.Event()
    events: list[str] = []

    def call() -> None:
        with client.messages.stream(model="claude-test", max_tokens=8, messages=PROMPT) as s:
            opened.set()  # the headers are in
            events.extend(event.type for event in s)

    caller = threading.Thread(target=call)
    caller.start()
    assert opened.wait(timeout=10)
    provider.wait_for(lambda p: p.stalled == 1, timeout=10)
    assert provider.turns == []  # taken, being delivered
    provider.release()
    caller.join(timeout=10)

    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert [r.stream for r in provider.message_requests] == [True]


def test_fault_kinds_respect_model_and_after(
    provider: ProviderServer, client: anthropic.Anthropic
) -> None:
    provider.add_fault(Fault.malformed(model="claude-bad", after=1, times=2))
    assert stream_text(client, "claude-good") == DONE_TEXT
    assert stream_text(client, "claude-bad") == DONE_TEXT  # let through: after=1
    for _ in range(2):
        with pytest.raises(json.JSONDecodeError):
            stream_text(client, "claude-bad")
    assert stream_text(client, "claude-bad") == DONE_TEXT
