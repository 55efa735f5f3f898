"""Failure classification: what happened -> what to do about it. Pure.

Design note. One ordered table of rules maps the evidence an adapter saw
(``FailureEvidence``: HTTP status, provider error type, exception class, exit code,
Claude Code's terminal reason, ``x-should-retry``, hung time, message) to a class:

- ``transient``: the provider or the network hiccuped — retry with backoff;
- ``limit``: a usage or rate limit — wait for the reset (capacity learns from it);
- ``permanent``: retrying cannot help (auth, invalid request, bad config) — fail now;
- ``task``: the agent ran and the work failed — retry with the failure as feedback,
  bounded by the task's ``max_attempts``;
- ``infrastructure``: our own store or network — degrade and retry.

The first rule whose every given field matches wins; a rule field lists alternatives
(any may match). User rules (config ``[[resilience.rules]]``) go before the defaults, so
they can override any of them. Evidence no rule matches is ``transient`` with a small
budget (``Classification.unknown``): an error we have not seen must neither fail a task
for good nor be retried forever. No evidence at all (a simulated failure, an adapter
that reports nothing) is ``task``: the attempt ran and did not succeed.
"""

from __future__ import annotations

import re
from enum import StrEnum

import msgspec

from trafficcontrol.domain.model import FailureEvidence


class FailureClass(StrEnum):
    TRANSIENT = "transient"
    LIMIT = "limit"
    PERMANENT = "permanent"
    TASK = "task"
    INFRASTRUCTURE = "infrastructure"


class FailureRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One row of the table: every field given must match (a list: any of its values)."""

    name: str
    failure_class: FailureClass = msgspec.field(name="class")
    http_status: list[int] | None = None
    error_type: list[str] | None = None
    exception: list[str] | None = None
    exit_code: list[int] | None = None
    terminal_reason: list[str] | None = None
    should_retry: bool | None = None
    hung: bool | None = None
    pattern: str | None = None
    """Regular expression searched in the message, case-insensitive."""

    def __post_init__(self) -> None:
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"rule {self.name!r}: bad pattern: {exc}") from exc

    def matches(self, evidence: FailureEvidence) -> bool:
        checks = (
            (self.http_status, evidence.http_status),
            (self.error_type, evidence.error_type),
            (self.exception, evidence.exception),
            (self.exit_code, evidence.exit_code),
            (self.terminal_reason, evidence.terminal_reason),
        )
        for wanted, seen in checks:
            if wanted is not None and seen not in wanted:
                return False
        if self.should_retry is not None and evidence.should_retry is not self.should_retry:
            return False
        if self.hung is not None and (evidence.idle_s is not None) is not self.hung:
            return False
        if self.pattern is not None:
            return re.search(self.pattern, evidence.message, re.IGNORECASE) is not None
        return True


_T, _L, _P, _K, _I = (
    FailureClass.TRANSIENT,
    FailureClass.LIMIT,
    FailureClass.PERMANENT,
    FailureClass.TASK,
    FailureClass.INFRASTRUCTURE,
)

DEFAULT_RULES: tuple[FailureRule, ...] = (
    FailureRule(name="provider limit", failure_class=_L, http_status=[429]),
    FailureRule(
        name="provider limit", failure_class=_L, error_type=["rate_limit_error", "rate_limit"]
    ),
    FailureRule(
        name="auth",
        failure_class=_P,
        http_status=[401, 403],
    ),
    FailureRule(
        name="auth",
        failure_class=_P,
        error_type=["authentication_error", "permission_error", "authentication_failed"],
    ),
    FailureRule(
        name="invalid request",
        failure_class=_P,
        http_status=[400, 404, 413, 422],
    ),
    FailureRule(
        name="invalid request",
        failure_class=_P,
        error_type=["invalid_request_error", "not_found_error", "request_too_large"],
    ),
    FailureRule(name="provider says do not retry", failure_class=_P, should_retry=False),
    FailureRule(name="bad config", failure_class=_P, exception=["ConfigError"]),
    FailureRule(name="overloaded", failure_class=_T, http_status=[529]),
    FailureRule(name="overloaded", failure_class=_T, error_type=["overloaded_error", "overloaded"]),
    FailureRule(name="server error", failure_class=_T, http_status=[500, 502, 503, 504]),
    FailureRule(name="server error", failure_class=_T, error_type=["api_error", "server_error"]),
    FailureRule(
        name="network",
        failure_class=_T,
        exception=[
            "APIConnectionError",
            "APITimeoutError",
            "ConnectError",
            "ConnectTimeout",
            "ReadTimeout",
            "ReadError",
            "RemoteProtocolError",
            "TransportError",
            "ConnectionResetError",
            "ConnectionRefusedError",
            "TimeoutError",
            "CLIConnectionError",
        ],
    ),
    FailureRule(name="hung", failure_class=_T, hung=True),
    FailureRule(
        name="malformed response",
        failure_class=_T,
        exception=["JSONDecodeError", "MessageParseError", "CLIJSONDecodeError", "DecodeError"],
    ),
    FailureRule(
        name="malformed response",
        failure_class=_T,
        pattern=r"malformed|invalid json|json parse error",
    ),
    FailureRule(name="store", failure_class=_I, exception=["StoreError"]),
    FailureRule(name="agent killed by a signal", failure_class=_T, exit_code=[-9, -15, 137, 143]),
    FailureRule(
        name="agent could not start",
        failure_class=_P,
        exception=["FileNotFoundError", "PermissionError"],
    ),
    FailureRule(
        name="agent exited non-zero",
        failure_class=_K,
        terminal_reason=["max_turns", "error_max_turns"],
    ),
)


class Classification(msgspec.Struct, frozen=True, kw_only=True):
    failure_class: FailureClass
    rule: str
    """The name of the rule that matched ("unknown", "no evidence" otherwise)."""
    unknown: bool = False
    """No rule matched: transient, but with the small unknown-error budget."""


def classify(
    evidence: FailureEvidence | None, rules: tuple[FailureRule, ...] = DEFAULT_RULES
) -> Classification:
    if evidence is None:
        return Classification(failure_class=FailureClass.TASK, rule="no evidence")
    for rule in rules:
        if rule.matches(evidence):
            return Classification(failure_class=rule.failure_class, rule=rule.name)
    api_error = evidence.http_status is not None or evidence.error_type is not None
    if evidence.exception is None and not api_error and evidence.idle_s is None:
        # The agent ran to its end and reported failure: the work failed.
        return Classification(failure_class=FailureClass.TASK, rule="agent reported failure")
    return Classification(failure_class=FailureClass.TRANSIENT, rule="unknown", unknown=True)
