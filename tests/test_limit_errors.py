"""Reading the provider's limits: HTTP 429s, Claude Code's texts, rate-limit headers.

Inputs are shaped like the real ones (the API's headers, the CLI's result texts as
users have reported them); bad values must be ignored, never raised.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest

from trafficcontrol.adapters.agents.limit_errors import (
    MAX_MESSAGE_CHARS,
    limit_hit_from_http,
    limit_hit_from_result,
    limit_hit_from_text,
    rate_limit_headers,
    shorten,
)
from trafficcontrol.domain.model import LimitHit

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()
"""Tuesday noon UTC: 13:00 in Berlin, 08:00 in New York, 07:00 in Chicago."""
RFC_RESET = "2026-03-10T12:01:00Z"
RFC_RESET_AT = NOW + 60


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except ZoneInfoNotFoundError:
        pytest.skip(f"no time zone data for {name} here")


def at(year: int, month: int, day: int, hour: int, minute: int, tz: ZoneInfo) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=tz).timestamp()


# -- limit_hit_from_http -------------------------------------------------------------------
@pytest.mark.parametrize("status", [200, 400, 500, 529])
def test_only_429_is_a_limit(status: int) -> None:
    headers = {"anthropic-ratelimit-unified-reset": "1900000000", "retry-after": "30"}
    assert limit_hit_from_http(status, headers, "nope", NOW) is None


def test_unified_headers_give_the_window_and_the_reset() -> None:
    headers = {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": "1900000000",
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
        "anthropic-ratelimit-tokens-remaining": "0",
        "retry-after": "3600",
    }
    hit = limit_hit_from_http(429, headers, "usage limit reached", NOW)
    assert hit == LimitHit(
        window="five_hour",
        resets_at=1_900_000_000.0,
        retry_after_s=3600.0,
        status=429,
        message="usage limit reached",
    )


def test_header_names_are_matched_whatever_their_case() -> None:
    headers = {
        "Anthropic-RateLimit-Unified-Reset": "1900000000",
        "Anthropic-RateLimit-Unified-Representative-Claim": "Seven_Day_Opus",
        "Retry-After": "5",
    }
    hit = limit_hit_from_http(429, headers, "m", NOW)
    assert hit is not None
    assert (hit.window, hit.resets_at, hit.retry_after_s) == ("seven_day_opus", 1.9e9, 5.0)


def test_the_exhausted_api_window_names_the_limit_and_its_reset() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": RFC_RESET,
        "anthropic-ratelimit-tokens-limit": "10000",
        "anthropic-ratelimit-tokens-remaining": "9000",
        "anthropic-ratelimit-tokens-reset": "2026-03-10T12:00:30Z",
    }
    hit = limit_hit_from_http(429, headers, "m", NOW)
    assert hit is not None
    assert (hit.window, hit.resets_at, hit.retry_after_s) == ("requests", RFC_RESET_AT, None)


def test_several_exhausted_windows_reset_when_the_last_one_does() -> None:
    headers = {
        "anthropic-ratelimit-output-tokens-remaining": "0",
        "anthropic-ratelimit-output-tokens-reset": "2026-03-10T12:00:10Z",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": RFC_RESET,
    }
    hit = limit_hit_from_http(429, headers, "m", NOW)
    assert hit is not None
    assert (hit.window, hit.resets_at) == ("tokens", RFC_RESET_AT)


def test_without_an_exhausted_window_the_latest_reset_counts_and_the_window_is_unsaid() -> None:
    headers = {
        "anthropic-ratelimit-tokens-remaining": "5",
        "anthropic-ratelimit-tokens-reset": "2026-03-10T12:00:10Z",
        "anthropic-ratelimit-requests-reset": RFC_RESET,
    }
    hit = limit_hit_from_http(429, headers, "m", NOW)
    assert hit is not None
    assert (hit.window, hit.resets_at) == (None, RFC_RESET_AT)


def test_retry_after_alone_gives_the_reset_from_now() -> None:
    hit = limit_hit_from_http(429, {"retry-after": "42"}, "m", NOW)
    assert hit is not None
    assert (hit.window, hit.resets_at, hit.retry_after_s) == (None, NOW + 42, 42.0)


def test_retry_after_ms_wins_over_retry_after() -> None:
    hit = limit_hit_from_http(429, {"retry-after-ms": "1500", "retry-after": "9"}, "m", NOW)
    assert hit is not None and hit.retry_after_s == 1.5


def test_retry_after_as_an_http_date() -> None:
    headers = {"retry-after": "Tue, 10 Mar 2026 12:02:00 GMT"}
    hit = limit_hit_from_http(429, headers, "m", NOW)
    assert hit is not None
    assert (hit.retry_after_s, hit.resets_at) == (120.0, NOW + 120)


def test_a_small_reset_number_is_seconds_from_now_and_a_naive_time_is_utc() -> None:
    relative = limit_hit_from_http(429, {"anthropic-ratelimit-unified-reset": "90"}, "m", NOW)
    naive = {"anthropic-ratelimit-tokens-reset": "2026-03-10T12:01:00"}
    assert relative is not None and relative.resets_at == NOW + 90
    hit = limit_hit_from_http(429, naive, "m", NOW)
    assert hit is not None and hit.resets_at == RFC_RESET_AT


def test_garbage_headers_are_ignored_never_raised() -> None:
    headers = {
        "anthropic-ratelimit-unified-reset": "soon",
        "anthropic-ratelimit-unified-representative-claim": "five hours; DROP TABLE" + "x" * 50,
        "anthropic-ratelimit-tokens-remaining": "zero",
        "anthropic-ratelimit-tokens-reset": "2026-13-45T99:99:99Z",
        "anthropic-ratelimit-requests-remaining": "nan",
        "anthropic-ratelimit-requests-reset": "-5",
        "anthropic-ratelimit-input-tokens-remaining": "inf",
        "anthropic-ratelimit-output-tokens-reset": "",
        "retry-after": "-3",
        "retry-after-ms": "never",
    }
    hit = limit_hit_from_http(429, headers, "m", NOW)
    assert hit == LimitHit(status=429, message="m")


@pytest.mark.parametrize("value", ["not a date", "Tue, 99 Foo 2026 99:99:99 GMT", "1e400"])
def test_an_unreadable_retry_after_is_ignored(value: str) -> None:
    hit = limit_hit_from_http(429, {"retry-after": value}, "m", NOW)
    assert hit is not None and (hit.retry_after_s, hit.resets_at) == (None, None)


def test_a_retry_after_date_in_the_past_means_now() -> None:
    hit = limit_hit_from_http(429, {"retry-after": "Mon, 09 Mar 2026 12:00:00 GMT"}, "m", NOW)
    assert hit is not None and hit.retry_after_s == 0.0


def test_the_message_is_flattened_and_shortened() -> None:
    hit = limit_hit_from_http(429, {}, "line one\n  line two " + "x" * 1000, NOW)
    assert hit is not None
    assert hit.message.startswith("line one line two x")
    assert len(hit.message) == MAX_MESSAGE_CHARS and hit.message.endswith("…")
    assert shorten("short") == "short"


# -- limit_hit_from_text -------------------------------------------------------------------
def test_the_epoch_after_a_pipe_is_the_reset() -> None:
    hit = limit_hit_from_text("Claude AI usage limit reached|1764000000", NOW)
    assert hit == LimitHit(
        resets_at=1_764_000_000.0, message="Claude AI usage limit reached|1764000000"
    )


def test_an_epoch_in_milliseconds_is_read_too() -> None:
    hit = limit_hit_from_text("Claude AI usage limit reached|1764000000123", NOW)
    assert hit is not None and hit.resets_at == pytest.approx(1_764_000_000.123)


def test_a_clock_time_in_a_named_zone_is_its_next_occurrence() -> None:
    berlin = zone("Europe/Berlin")  # 13:00 local at NOW
    hit = limit_hit_from_text("You've hit your session limit · resets 3pm (Europe/Berlin)", NOW)
    assert hit is not None
    assert (hit.window, hit.resets_at, hit.status) == (
        "five_hour",
        at(2026, 3, 10, 15, 0, berlin),
        None,
    )


def test_a_clock_time_long_past_today_is_tomorrows() -> None:
    berlin = zone("Europe/Berlin")
    hit = limit_hit_from_text("You've hit your limit · resets 11am (Europe/Berlin)", NOW)
    assert hit is not None and hit.resets_at == at(2026, 3, 11, 11, 0, berlin)


def test_a_clock_time_just_past_is_todays() -> None:
    berlin = zone("Europe/Berlin")
    hit = limit_hit_from_text("You've hit your limit · resets 12:30pm (Europe/Berlin)", NOW)
    assert hit is not None and hit.resets_at == at(2026, 3, 10, 12, 30, berlin)


def test_a_date_and_time_is_read_in_this_year_or_the_next() -> None:
    new_york = zone("America/New_York")
    may = limit_hit_from_text("You've hit your limit · resets May 5 at 9pm (America/New_York)", NOW)
    jan = limit_hit_from_text("You've hit your weekly limit · resets Jan 2, 9am (UTC)", NOW)
    assert may is not None and may.resets_at == at(2026, 5, 5, 21, 0, new_york)
    assert jan is not None and jan.window == "seven_day"
    assert jan.resets_at == datetime(2027, 1, 2, 9, 0, tzinfo=UTC).timestamp()


def test_the_older_sentence_form_with_a_zone() -> None:
    chicago = zone("America/Chicago")
    text = "Claude usage limit reached. Your limit will reset at 9am (America/Chicago)."
    hit = limit_hit_from_text(text, NOW)
    assert hit is not None and hit.resets_at == at(2026, 3, 10, 9, 0, chicago)


def test_a_time_without_a_zone_is_read_in_the_local_zone() -> None:
    plus_two = timezone(timedelta(hours=2))  # 14:00 local at NOW
    hit = limit_hit_from_text("usage limit reached … resets at 5:00 PM", NOW, local_tz=plus_two)
    hit_24h = limit_hit_from_text("usage limit reached, resets at 17:00", NOW, local_tz=plus_two)
    expected = datetime(2026, 3, 10, 17, 0, tzinfo=plus_two).timestamp()
    assert hit is not None and hit.resets_at == expected
    assert hit_24h is not None and hit_24h.resets_at == expected


def test_a_time_without_a_zone_defaults_to_this_process_zone() -> None:
    hit = limit_hit_from_text("usage limit reached, resets at 17:00", NOW)
    assert hit is not None and hit.resets_at is not None
    assert NOW - 3600 <= hit.resets_at <= NOW + 86_400


def test_an_rfc_3339_reset_in_the_text_and_a_429() -> None:
    text = "API Error: Request rejected (429) · usage limit reached, resets at 2030-03-17T17:46:40Z"
    hit = limit_hit_from_text(text, NOW)
    assert hit is not None and (hit.resets_at, hit.status) == (1_900_000_000.0, 429)


@pytest.mark.parametrize(
    ("text", "window"),
    [
        ("You’ve hit your limit for Claude messages.", None),  # a curly apostrophe
        ("You've hit your Opus limit · resets Oct 9, 11am (UTC)", "seven_day_opus"),
        ("Sonnet weekly limit reached", "seven_day_sonnet"),
        ("5-hour limit reached ∙ resets 8pm (UTC)", "five_hour"),
        ("Weekly limit reached", "seven_day"),
        ("This request would exceed your account's rate limit. Please try again later.", None),
        ('API Error: 429 {"type":"error","error":{"type":"rate_limit_error"}}', None),
    ],
)
def test_limit_texts_and_their_windows(text: str, window: str | None) -> None:
    hit = limit_hit_from_text(text, NOW)
    assert hit is not None and hit.window == window


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Context limit reached · /compact or /clear to continue",
        "Prompt is too long",
        "API Error: 500 internal server error",
        "Reached maximum number of turns (3)",
    ],
)
def test_other_failures_are_not_limits(text: str) -> None:
    assert limit_hit_from_text(text, NOW) is None


@pytest.mark.parametrize(
    "text",
    [
        "You've hit your limit · resets 3pm (Mars/Olympus_Mons)",  # unknown zone
        "You've hit your limit · resets 3pm (America)",  # a directory, not a zone
        "You've hit your limit · resets 13pm (UTC)",
        "You've hit your limit · resets 25:00 (UTC)",
        "You've hit your limit · resets 7 (UTC)",  # a bare number is not a time
        "You've hit your limit · resets Feb 30 at 5pm (UTC)",
        "You've hit your limit · resets Foo 3 at 5pm (UTC)",
        "You've hit your limit · resets soon",
        "You've hit your limit",
    ],
)
def test_an_unreadable_reset_leaves_resets_at_unknown(text: str) -> None:
    hit = limit_hit_from_text(text, NOW)
    assert hit is not None and hit.resets_at is None


# -- limit_hit_from_result -----------------------------------------------------------------
def test_a_429_result_is_a_limit_even_when_its_text_says_nothing() -> None:
    hit = limit_hit_from_result(429, "Claude Code failed: something", NOW)
    assert hit == LimitHit(status=429, message="Claude Code failed: something")


def test_a_429_result_keeps_what_its_text_says() -> None:
    hit = limit_hit_from_result(429, "You've hit your session limit · resets 2pm (UTC)", NOW)
    assert hit is not None
    assert (hit.status, hit.window, hit.resets_at) == (429, "five_hour", NOW + 7200)


def test_other_results_are_limits_only_by_their_text() -> None:
    assert limit_hit_from_result(500, "API Error: 500 boom", NOW) is None
    assert limit_hit_from_result(None, "Claude Code ended without a result", NOW) is None
    hit = limit_hit_from_result(None, "Claude AI usage limit reached|1764000000", NOW)
    assert hit is not None and (hit.status, hit.resets_at) == (None, 1_764_000_000.0)


# -- rate_limit_headers --------------------------------------------------------------------
def test_every_api_window_with_limit_and_remaining_is_read() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": RFC_RESET,
        "anthropic-ratelimit-tokens-limit": "10000",
        "anthropic-ratelimit-tokens-remaining": "2500",
        "anthropic-ratelimit-tokens-reset": RFC_RESET,
        "anthropic-ratelimit-input-tokens-limit": "8000",
        "anthropic-ratelimit-input-tokens-remaining": "0",
        "Anthropic-RateLimit-Output-Tokens-Limit": "2000",
        "Anthropic-RateLimit-Output-Tokens-Remaining": "2000",
        "anthropic-ratelimit-output-tokens-reset": "30",
    }
    assert rate_limit_headers(headers, NOW) == [
        ("tokens", 0.75, RFC_RESET_AT),
        ("input_tokens", 1.0, None),
        ("output_tokens", 0.0, NOW + 30),
        ("requests", pytest.approx(0.02), RFC_RESET_AT),
    ]


def test_unreadable_windows_are_left_out() -> None:
    headers: dict[str, str] = {
        "anthropic-ratelimit-requests-limit": "0",  # no limit to be a fraction of
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-tokens-limit": "abc",
        "anthropic-ratelimit-tokens-remaining": "5",
        "anthropic-ratelimit-input-tokens-limit": "100",
        "anthropic-ratelimit-input-tokens-remaining": "-1",
        "anthropic-ratelimit-output-tokens-limit": "100",
        "anthropic-ratelimit-output-tokens-remaining": "150",  # more than the limit: 0 used
        "anthropic-ratelimit-output-tokens-reset": "garbage",
    }
    assert rate_limit_headers(headers, NOW) == [("output_tokens", 0.0, None)]
    assert rate_limit_headers({}, NOW) == []


def test_values_that_are_not_strings_are_ignored() -> None:
    odd: dict[str, object] = {
        "anthropic-ratelimit-tokens-limit": 100,
        "anthropic-ratelimit-tokens-remaining": b"5",
        "anthropic-ratelimit-unified-reset": None,
    }
    assert rate_limit_headers(odd, NOW) == []  # type: ignore[arg-type]
    assert limit_hit_from_http(429, odd, "m", NOW) == LimitHit(status=429, message="m")  # type: ignore[arg-type]
