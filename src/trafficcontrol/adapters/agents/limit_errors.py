"""What a provider says about its limits, read at the adapter boundary.

Design notes
------------
- **Evidence, not control flow.** These functions turn a refusal (HTTP 429 and its
  headers, or Claude Code's result text) into a :class:`LimitHit`, any failed HTTP
  exchange into :class:`FailureEvidence` (:func:`http_failure`), and a response's
  ``anthropic-ratelimit-*`` headers into window figures. The orchestrator decides what
  to do with them; nothing here retries or waits.
- **Never raise on provider input.** Headers and texts come from outside: a value that
  does not parse is ignored, never an error, so a malformed header cannot turn a
  refusal into a crash. What cannot be read stays ``None`` (unknown is not zero).
- **Time is an argument.** ``now`` is passed in; relative values (``retry-after``,
  small reset numbers) become epoch seconds against it. A clock time without a date
  in Claude Code's text ("resets 3pm") is its next occurrence, except that a time up
  to :data:`_PAST_SLACK_S` ago counts as today's (the reset just passed while the
  message travelled; waiting a day for it would be far worse than one early retry).
- Rejected: trusting ``retry-after`` before the reset headers. It is the client's
  back-off hint and often shorter than the window's real reset.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from email.utils import parsedate_to_datetime
from zoneinfo import ZoneInfo

import msgspec

from trafficcontrol.domain.model import FailureEvidence, LimitHit

MAX_MESSAGE_CHARS = 300
"""Provider messages are kept this short (with an ellipsis) in a ``LimitHit``."""
RATE_LIMIT_STATUS = 429

_HEADER_PREFIX = "anthropic-ratelimit-"
_HEADER_WINDOWS = ("tokens", "input-tokens", "output-tokens", "requests")
"""The API's per-minute windows, in the order a refusal is attributed to them."""
_EPOCH_FLOOR = 1_000_000_000.0
"""A reset number below this is seconds from now, not an epoch (2001-09-09)."""
_PAST_SLACK_S = 3600.0
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")

_LIMIT_TEXT = re.compile(
    r"usage limit (?:reached|exceeded)"
    r"|(?:hit|reached) your (?:\w+ )?(?:usage )?limit"
    r"|(?:session|weekly|daily|5-hour|five-hour|opus|sonnet) limit (?:reached|exceeded)"
    r"|rate[_ ]limit(?:_error| reached| exceeded)"
    r"|exceed your (?:\S+ )?rate limit"
    r"|api error:?\s*(?:request rejected\s*)?\(?429\b",
    re.IGNORECASE,
)
_EPOCH_SUFFIX = re.compile(r"\|\s*(\d{9,13})\b")
_RESET_ISO = re.compile(
    r"\breset(?:s)?(?: at)?\s+"
    r"(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)",
    re.IGNORECASE,
)
_RESET_CLOCK = re.compile(
    r"\breset(?:s)?(?: at)?\s+"
    r"(?:(?P<month>[a-z]{3})[a-z]*\.?\s+(?P<day>\d{1,2})(?:st|nd|rd|th)?,?\s+(?:at\s+)?)?"
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?\s*(?P<ampm>[ap]\.?m\.?)?"
    r"(?:\s*\((?P<zone>[A-Za-z_]+(?:/[A-Za-z0-9_+\-]+)*)\))?",
    re.IGNORECASE,
)
_TEXT_WINDOWS = (
    (re.compile(r"\bopus\b", re.IGNORECASE), "seven_day_opus"),
    (re.compile(r"\bsonnet\b", re.IGNORECASE), "seven_day_sonnet"),
    (re.compile(r"\bweekly\b|\b7-day\b", re.IGNORECASE), "seven_day"),
    (re.compile(r"\bsession\b|\b5-hour\b|\bfive-hour\b", re.IGNORECASE), "five_hour"),
)
_CLAIM = re.compile(r"[a-z0-9_]{1,40}")


def limit_hit_from_http(
    status: int, headers: Mapping[str, str], message: str, now: float
) -> LimitHit | None:
    """The limit behind an HTTP refusal; None unless ``status`` is 429.

    ``resets_at`` comes from ``anthropic-ratelimit-unified-reset``, else the reset of
    the exhausted ``anthropic-ratelimit-*`` window(s), else ``retry-after`` from ``now``.
    ``window`` is the unified representative claim (``five_hour`` …), else the API
    window whose ``remaining`` is 0 (``tokens``, ``requests`` …), else None.
    """
    if status != RATE_LIMIT_STATUS:
        return None
    lower = _lowered(headers)
    retry_after = _retry_after(lower, now)
    window = _claim(lower.get(_HEADER_PREFIX + "unified-representative-claim"))
    exhausted = [
        name
        for name in _HEADER_WINDOWS
        if _number(lower.get(f"{_HEADER_PREFIX}{name}-remaining")) == 0
    ]
    if window is None and exhausted:
        window = _window_name(exhausted[0])
    resets_at = _reset_time(lower.get(_HEADER_PREFIX + "unified-reset"), now)
    if resets_at is None:
        candidates = [
            t
            for name in (exhausted or _HEADER_WINDOWS)
            if (t := _reset_time(lower.get(f"{_HEADER_PREFIX}{name}-reset"), now)) is not None
        ]
        resets_at = max(candidates, default=None)
    if resets_at is None and retry_after is not None:
        resets_at = now + retry_after
    return LimitHit(
        window=window,
        resets_at=resets_at,
        retry_after_s=retry_after,
        status=status,
        message=shorten(message),
    )


def http_failure(
    status: int | None,
    headers: Mapping[str, str],
    now: float,
    *,
    error_type: str | None = None,
    exception: str | None = None,
) -> FailureEvidence:
    """The evidence of a failed HTTP exchange: ``status`` (None or a 2xx when the error
    came inside a started stream, which is recorded as no status), the provider's
    ``error_type``, the ``exception`` class name, ``x-should-retry`` and ``retry-after``
    (seconds, from ``retry-after-ms`` or ``retry-after`` against ``now``)."""
    lower = _lowered(headers)
    should_retry = {"true": True, "false": False}.get(lower.get("x-should-retry", "").lower())
    return FailureEvidence(
        http_status=status if status is not None and status >= 300 else None,
        error_type=error_type,
        exception=exception,
        should_retry=should_retry,
        retry_after_s=_retry_after(lower, now),
    )


def limit_hit_from_text(
    text: str, now: float, *, local_tz: tzinfo | None = None
) -> LimitHit | None:
    """The limit behind one of Claude Code's refusal texts; None when ``text`` is not one.

    Reads "Claude AI usage limit reached|1764000000" (an epoch), "… resets at
    2030-03-17T17:46:40Z" (RFC 3339, as the API's own messages put it), and "You've hit your
    session limit · resets 3pm (Europe/Berlin)" / "… resets May 5 at 9pm (…)" /
    "… will reset at 5:00 PM" (a clock time, in the named zone or else ``local_tz``,
    which defaults to this process's zone). An unreadable time leaves ``resets_at``
    None; an unknown zone name too (guessing a zone would be wrong by hours).
    """
    if not text or not _LIMIT_TEXT.search(text):
        return None
    return LimitHit(
        window=_text_window(text),
        resets_at=_text_reset(text, now, local_tz),
        status=RATE_LIMIT_STATUS if re.search(r"\b429\b", text) else None,
        message=shorten(text),
    )


def limit_hit_from_result(status: int | None, text: str, now: float) -> LimitHit | None:
    """The limit behind a failed agent run that reports an HTTP status and a text (Claude
    Code's ``api_error_status`` and result): a 429, or a text that reads as a limit."""
    hit = limit_hit_from_text(text, now)
    if status != RATE_LIMIT_STATUS:
        return hit
    if hit is None:
        return LimitHit(status=status, message=shorten(text))
    return msgspec.structs.replace(hit, status=status)


def rate_limit_headers(
    headers: Mapping[str, str], now: float
) -> list[tuple[str, float, float | None]]:
    """``(window, utilization, resets_at)`` for each ``anthropic-ratelimit-{tokens,
    input-tokens,output-tokens,requests}-*`` window with a readable limit and remaining.

    ``utilization`` is ``1 - remaining/limit`` in [0, 1]; window names use underscores
    (``input_tokens``). Unreadable windows are left out.
    """
    lower = _lowered(headers)
    figures: list[tuple[str, float, float | None]] = []
    for name in _HEADER_WINDOWS:
        limit = _number(lower.get(f"{_HEADER_PREFIX}{name}-limit"))
        remaining = _number(lower.get(f"{_HEADER_PREFIX}{name}-remaining"))
        if limit is None or remaining is None or limit <= 0 or remaining < 0:
            continue
        utilization = min(1.0, max(0.0, 1.0 - remaining / limit))
        resets_at = _reset_time(lower.get(f"{_HEADER_PREFIX}{name}-reset"), now)
        figures.append((_window_name(name), utilization, resets_at))
    return figures


def shorten(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(message.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


# -- headers ------------------------------------------------------------------------------
def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        if isinstance(name, str) and isinstance(value, str):
            lowered[name.lower()] = value.strip()
    return lowered


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _window_name(header_window: str) -> str:
    return header_window.replace("-", "_")


def _claim(value: str | None) -> str | None:
    """The representative claim, if it looks like a window type (it is echoed in logs)."""
    if value is None:
        return None
    claim = value.lower()
    return claim if _CLAIM.fullmatch(claim) else None


def _retry_after(headers: Mapping[str, str], now: float) -> float | None:
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None and millis >= 0:
        return millis / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return seconds if seconds >= 0 else None
    try:  # the HTTP-date form
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _reset_time(value: str | None, now: float) -> float | None:
    """Epoch seconds of a reset header: epoch seconds, seconds from now, or RFC 3339."""
    if not value:
        return None
    number = _number(value)
    if number is not None:
        if number < 0:
            return None
        return number if number >= _EPOCH_FLOOR else now + number
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return when.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


# -- Claude Code's texts -------------------------------------------------------------------
def _text_window(text: str) -> str | None:
    for pattern, window in _TEXT_WINDOWS:
        if pattern.search(text):
            return window
    return None


def _text_reset(text: str, now: float, local_tz: tzinfo | None) -> float | None:
    if match := _EPOCH_SUFFIX.search(text):
        epoch = float(match.group(1))
        return epoch / 1000.0 if epoch >= 1e12 else epoch
    if match := _RESET_ISO.search(text):
        return _reset_time(match.group(1), now)
    match = _RESET_CLOCK.search(text)
    if match is None:
        return None
    try:
        return _clock_reset(match, now, local_tz)
    except (ValueError, KeyError, OverflowError, OSError):
        return None  # an impossible date or time, or a zone name this machine lacks


def _clock_reset(match: re.Match[str], now: float, local_tz: tzinfo | None) -> float | None:
    hour, minute = int(match["hour"]), int(match["minute"] or 0)
    ampm = (match["ampm"] or "").replace(".", "").lower()
    if ampm:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    elif match["minute"] is None:
        return None  # a bare number ("resets 3") is not a time
    zone: tzinfo
    if match["zone"]:
        zone = UTC if match["zone"].upper() == "UTC" else ZoneInfo(match["zone"])
    else:
        zone = local_tz or datetime.fromtimestamp(now).astimezone().tzinfo or UTC
    today = datetime.fromtimestamp(now, zone)
    earliest = now - _PAST_SLACK_S
    if match["month"]:
        month_name = match["month"].lower()
        if month_name not in _MONTHS:
            return None
        month, day = _MONTHS.index(month_name) + 1, int(match["day"])
        for year in (today.year, today.year + 1):
            dated = datetime(year, month, day, hour, minute, tzinfo=zone).timestamp()
            if dated >= earliest:
                return dated
        return None
    at = today.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if at.timestamp() < earliest:
        at = datetime.combine(at.date() + timedelta(days=1), at.time(), tzinfo=zone)
    return at.timestamp()
