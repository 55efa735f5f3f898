"""Session rotation: a worker whose context passes the threshold hands off to a fresh one. Pure.

Design note. A worker's context is what the model saw on its latest turn: input +
cache read + cache write tokens of the attempt's newest ``TurnUsageReported`` (Claude
Code reports them exactly per turn; the fold keeps them in ``AttemptRecord``). Past
about half of a window, long contexts degrade (``domain.context``), so when a running
attempt's context reaches ``rotate_at`` (the delegate threshold, 45%) of its model's
window, ``decide`` stops it with ``StopReason.ROTATE`` — journaled first, like every
stop. The shell then asks the stopped session, for one turn and without tools, for a
handoff summary (``HANDOFF_PROMPT``); the attempt ends interrupted with that summary in
``AttemptFinished.handoff``. Its task's next attempt does not resume the session
(``interrupts.resumable``): it starts a fresh one in the same worktree
(``interrupts.continues``), with the task's (or the step's) prompt and the summary
under ``HANDOFF_HEADING`` — never the old transcript. When the agent gave no summary
(it failed, timed out, or the orchestrator died meanwhile) an extractive one is made
from the session's log (``extracted_handoff``).

Invariants: an attempt is rotated at most once (its stop reason is set by the fold, and
``decide`` only stops attempts without one); only backends in ``backends`` rotate (they
can be asked for a handoff); a session whose first turn was already past the threshold
is never rotated (a fresh session would start as full: rotating it would loop); a task
rotates at most ``max_rotations`` times. Utilisation per session is ``context_peak /
window``; the delegation rate is rotated sessions over sessions (``rotation_stats``).

Rejected alternatives: resuming the session after the handoff (the history is exactly
what has to go); letting the agent compact itself (Claude Code's own auto-compaction
happens near the end of the window, far past where quality drops, and leaves no
record); the orchestrator writing the summary from the transcript with another model
(a second model call on the loop's side; the worker knows best what it was doing).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from trafficcontrol.domain.capacity.families import model_family
from trafficcontrol.domain.context import Category, Entry, Thresholds, extractive_summary
from trafficcontrol.domain.model import AttemptId, Outcome, StopReason
from trafficcontrol.domain.records import AttemptRecord
from trafficcontrol.domain.state import State

HANDOFF_PROMPT = (
    "Your context is full. Write a handoff for a fresh session continuing this work: "
    "what is done, what is left, decisions made, open problems, files touched. "
    "Plain text, at most 300 words."
)
"""What a rotated session is asked, for one turn, without tools."""
HANDOFF_HEADING = "# Handoff from the previous session"
EXTRACTED_NOTE = "(The previous session wrote no handoff; these are its last messages, shortened.)"
_EXTRACT_LAST = 8
"""Messages an extracted handoff keeps (the newest)."""


class RotationConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When a worker's session is rotated (the ``[context]`` settings section)."""

    window_tokens: int = 200_000
    """A model's context window, in tokens (utilisation is a fraction of it)."""
    family_windows: dict[str, int] = msgspec.field(default_factory=dict)
    """Windows per model family (``opus``, ``sonnet``, ``haiku``) over ``window_tokens``."""
    rotate_at: float | None = Thresholds().delegate
    """Rotate a session whose context reaches this fraction of its window (None: never)."""
    backends: tuple[str, ...] = ("claude",)
    """Backends whose sessions can be rotated (they can be asked for a handoff)."""
    max_rotations: int = 8
    """Rotations of one task at most; past them its sessions run on as they are."""
    handoff_timeout_s: float = 120.0
    """How long the handoff turn may take before the log's extract is used instead."""

    def __post_init__(self) -> None:
        windows = [self.window_tokens, *self.family_windows.values()]
        if min(windows) <= 0:
            raise ValueError("context window sizes must be > 0")
        if self.rotate_at is not None and not 0 < self.rotate_at <= 1:
            raise ValueError("context.rotate_at must be in (0, 1]")
        if self.max_rotations < 0 or self.handoff_timeout_s <= 0:
            raise ValueError("context.max_rotations must be >= 0, handoff_timeout_s > 0")

    def window_for(self, model: str | None) -> int:
        return self.family_windows.get(model_family(model).value, self.window_tokens)


def rotation_due(state: State, attempt: AttemptRecord, config: RotationConfig) -> bool:
    """Whether ``attempt`` (running) should be rotated now (see the module invariants)."""
    if config.rotate_at is None or attempt.stop_reason is not None:
        return False
    if attempt.backend not in config.backends or attempt.context_start is None:
        return False
    limit = config.rotate_at * config.window_for(attempt.model)
    if attempt.context_tokens < limit or session_start(state, attempt) >= limit:
        return False
    task = state.tasks[attempt.task_id]
    rotated = sum(1 for a in task.attempts if state.attempts[a].stop_reason is StopReason.ROTATE)
    return rotated < config.max_rotations


def session_start(state: State, attempt: AttemptRecord) -> int:
    """The context of the session's first turn: that of the attempt the resumes of
    ``attempt`` go back to, when it reported one (else ``attempt``'s own)."""
    start = attempt.context_start or 0
    origin = attempt
    while origin.resume_of is not None:
        origin = state.attempts[origin.resume_of]
        if origin.context_start is not None:
            start = origin.context_start
    return start


def rotation_stops(state: State, config: RotationConfig) -> list[AttemptId]:
    """Running attempts to stop for rotation, in id order. O(running agents)."""
    if config.rotate_at is None:
        return []
    return sorted(
        attempt_id
        for attempt_id, attempt in state.running.items()
        if attempt_id not in state.stops_wanted and rotation_due(state, attempt, config)
    )


def rotation_error(tokens: int, window: int) -> str:
    """The rotated attempt's error: why it ended."""
    return f"rotated: context {tokens} tokens ({tokens / window:.0%} of window)"


def with_handoff(prompt: str, summary: str) -> str:
    """The prompt of the fresh session that continues a rotated one."""
    return f"{prompt}\n\n{HANDOFF_HEADING}\n{summary.strip()}"


def extracted_handoff(texts: Sequence[str], files: Sequence[str] = ()) -> str | None:
    """A handoff made from a session's last assistant ``texts`` (first sentences, via
    ``context.extractive_summary``) and the ``files`` it wrote; None when both are empty."""
    kept = [t for t in texts if t.strip()][-_EXTRACT_LAST:]
    entries = [
        Entry(id=f"message {i}", category=Category.HISTORY, text=t, tokens=0)
        for i, t in enumerate(kept, start=1)
    ]
    lines = [EXTRACTED_NOTE] if entries or files else []
    if entries:
        lines.append(extractive_summary(entries))
    if files:
        lines.append("Files touched: " + ", ".join(dict.fromkeys(files)))
    return "\n".join(lines) or None


class SessionUse(msgspec.Struct, frozen=True, kw_only=True):
    attempt_id: AttemptId
    peak_tokens: int
    window_tokens: int
    utilisation: float
    """Peak context over the window."""
    rotated: bool


class RotationStats(msgspec.Struct, frozen=True, kw_only=True):
    sessions: int
    """Attempts that reported their context (one session each)."""
    rotations: int
    delegation_rate: float
    """Rotated sessions over sessions (0 when there are none)."""
    peak_utilisation: float
    mean_utilisation: float
    by_session: list[SessionUse]


def rotation_stats(state: State, config: RotationConfig) -> RotationStats:
    """Utilisation per session and the delegation rate, from the folded attempts."""
    uses = [
        SessionUse(
            attempt_id=a.id,
            peak_tokens=a.context_peak,
            window_tokens=(window := config.window_for(a.model)),
            utilisation=a.context_peak / window,
            rotated=a.stop_reason is StopReason.ROTATE and a.outcome is Outcome.INTERRUPTED,
        )
        for a in state.attempts.values()
        if a.context_start is not None
    ]
    rotations = sum(u.rotated for u in uses)
    n = len(uses)
    return RotationStats(
        sessions=n,
        rotations=rotations,
        delegation_rate=rotations / n if n else 0.0,
        peak_utilisation=max((u.utilisation for u in uses), default=0.0),
        mean_utilisation=sum(u.utilisation for u in uses) / n if n else 0.0,
        by_session=uses,
    )
