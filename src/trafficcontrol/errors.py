"""The error tree of TrafficControl.

Every error we raise on purpose derives from one root, so callers can catch ours
without catching Python's own bugs::

    TrafficControlError
    ├── ConfigError            bad settings or an unusable backend (at start, never mid-run)
    ├── BacklogError           a submitted backlog (file or CLI) was refused; nothing applied
    ├── UnknownTaskError       a task id that is not in the state
    ├── StoreError             the journal could not be read or written
    │   ├── CorruptJournalError  a journal row failed validation
    │   └── FencedError          a write refused: the writer's lease is not the current one
    ├── AgentError             an agent could not be started or crashed in our adapter
    └── WorkspaceError         a git worktree could not be created or removed

"Retryable" is an attribute, not a family: whoever classifies a failure reads
``error.retryable`` instead of testing the class.
"""

from __future__ import annotations


class TrafficControlError(Exception):
    """Root of every error TrafficControl raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable


class ConfigError(TrafficControlError):
    """Settings are invalid or a configured backend cannot run here."""


class BacklogError(TrafficControlError):
    """A submission was refused as a whole; ``problems`` lists every reason found."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class UnknownTaskError(TrafficControlError):
    """A task id that the state does not know."""


class StoreError(TrafficControlError):
    """The journal could not be read or written."""

    retryable = True


class CorruptJournalError(StoreError):
    """A journal row could not be decoded; names the row."""

    retryable = False


class FencedError(StoreError):
    """A write was refused because its fence (lease epoch) is not the shard's current,
    unexpired lease: another instance leads now, or the lease ran out. The writer must
    step down; retrying cannot succeed."""

    retryable = False


class AgentError(TrafficControlError):
    """An agent could not be started, or our adapter failed around it."""


class WorkspaceError(TrafficControlError):
    """A workspace (git worktree) could not be prepared or removed."""
