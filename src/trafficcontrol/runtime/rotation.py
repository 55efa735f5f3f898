"""Session rotation in the shell: the end of a rotated attempt and its handoff.

Design note. ``domain.rotation`` decides when a session is rotated; an attempt stopped
with ``StopReason.ROTATE`` is, once its agent is gone, asked for a handoff: the backend
(a ``SessionHandoff``) resumes the session for one turn without tools, bounded by
``handoff_timeout_s``; when that gives nothing the backend extracts one from the
attempt's log. The attempt then ends interrupted with the summary in
``AttemptFinished.handoff``. A second stop while the handoff runs (shutdown, cancel)
cuts it short: the log's extract is used. The next attempt of the task
(``interrupts.continues``) gets the rotated attempt's worktree and a fresh session
whose prompt carries the summary (``handoff_of``).

The pool keeps the bookkeeping of which stop is a rotation; the ``Rotator`` only does
the asking and waiting, so the pool's one-task-per-attempt loop stays free of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path

from trafficcontrol.domain.events import AttemptDispatched, AttemptFinished
from trafficcontrol.domain.model import Outcome
from trafficcontrol.domain.records import AttemptRecord
from trafficcontrol.domain.rotation import HANDOFF_PROMPT, RotationConfig, rotation_error
from trafficcontrol.errors import TrafficControlError
from trafficcontrol.ports import AgentBackend, AgentRequest, Clock, SessionHandoff
from trafficcontrol.runtime.reporter import InboxReporter

log = logging.getLogger(__name__)


class Rotator:
    """Ends rotated attempts with their handoff and finds it for their successor."""

    def __init__(
        self, *, backends: Mapping[str, AgentBackend], clock: Clock, config: RotationConfig
    ) -> None:
        self._backends = backends
        self._clock = clock
        self._config = config

    async def rotated(
        self,
        event: AttemptDispatched,
        attempt: AttemptRecord,
        request: AgentRequest | None,
        reporter: InboxReporter,
        *,
        cut: bool,
    ) -> AttemptFinished:
        """The end of an attempt stopped for rotation, with its handoff (module notes).
        ``cut``: it was stopped again, for another reason, before this began."""
        _uncancel()  # the stop is handled here: what follows must be able to wait
        attempt_id = event.attempt_id
        tokens, window = attempt.context_tokens, self._config.window_for(attempt.model)
        backend = self._backends[event.backend]
        summary: str | None = None
        if isinstance(backend, SessionHandoff):
            session_id = reporter.session_id
            if request is not None and session_id is not None and not cut:
                summary = await self._ask_handoff(backend, request, session_id, reporter)
            if summary is None:
                try:
                    summary = await asyncio.to_thread(
                        backend.handoff_from_log, Path(event.log_path)
                    )
                except asyncio.CancelledError:
                    _uncancel()
        log.info(
            "session_rotated attempt=%s context_tokens=%d window=%d handoff_chars=%d",
            attempt_id,
            tokens,
            window,
            len(summary or ""),
        )
        return AttemptFinished(
            at=self._clock.now(),
            attempt_id=attempt_id,
            outcome=Outcome.INTERRUPTED,
            error=rotation_error(tokens, window),
            session_id=reporter.session_id,
            handoff=summary,
        )

    async def _ask_handoff(
        self,
        backend: SessionHandoff,
        request: AgentRequest,
        session_id: str,
        reporter: InboxReporter,
    ) -> str | None:
        """The stopped session's own handoff; None when it gives none in time."""
        timeout = self._config.handoff_timeout_s
        try:
            return await asyncio.wait_for(
                backend.handoff(request, session_id, HANDOFF_PROMPT, reporter), timeout
            )
        except asyncio.CancelledError:  # stopped again (shutdown, cancel): no more waiting
            _uncancel()
            reason = "stopped"
        except TimeoutError:
            reason = f"no answer within {timeout:g}s"
        except TrafficControlError as exc:
            reason = exc.message
        except Exception as exc:  # an adapter bug must not lose the attempt's end
            log.exception("handoff_crashed attempt=%s", request.attempt_id)
            reason = repr(exc)
        log.warning("handoff_missing attempt=%s reason=%s", request.attempt_id, reason)
        return None

    async def handoff_of(self, rotated: AttemptRecord) -> str | None:
        """The rotated attempt's journaled handoff, else one extracted from its log (the
        orchestrator died before it could journal one)."""
        if rotated.handoff:
            return rotated.handoff
        backend = self._backends.get(rotated.backend)
        if not isinstance(backend, SessionHandoff):
            return None
        return await asyncio.to_thread(backend.handoff_from_log, Path(rotated.log_path))


def _uncancel() -> None:
    """Forget the cancellations this task has received (it handled them)."""
    task = asyncio.current_task()
    while task is not None and task.cancelling():
        task.uncancel()
