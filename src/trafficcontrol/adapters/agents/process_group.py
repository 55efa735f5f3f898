"""Agent processes in their own process group, and how they are stopped.

Design note
-----------
An agent is rarely one process: it runs shells, test runners, language servers.
Signalling only the direct child would orphan all of them, so every agent starts
a new session (``start_new_session=True``): it leads a process group whose id is
its pid, and every descendant that does not create a session of its own is in it.

Stopping escalates, as trio's ``_posix_deliver_cancel`` does:

1. SIGTERM to the whole group, so the agent can flush its work and clean up;
2. a grace period, until the leader is reaped *and* the group is empty;
3. SIGKILL to the group, which nothing can ignore;
4. reap the leader and wait (briefly) until the group has no live member.

The group, not the leader, decides when we are done: a grandchild that outlives
the leader still carries the group id, and Linux does not reuse a pid while it
names a live group, so ``killpg`` keeps reaching it after the leader is reaped.
Zombies count as gone: they are dead, and whoever their parent is reaps them.

Invariants: ``stop`` is idempotent (later calls await the first one), and once
started it runs to its end even if the caller is cancelled again; the
cancellation is re-raised afterwards. If the stop task itself is cancelled (the
event loop is closing), it sends SIGKILL before giving up.

Rejected: killing ``psutil.Process.children(recursive=True)`` instead of the
group (misses descendants re-parented after their parent exits; the snapshot
races with new forks). Not covered: a descendant that calls ``setsid`` itself
(a daemon) leaves the group on purpose and is beyond our reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Collection, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil

from trafficcontrol.ports import AgentRequest

_POLL_S = 0.02
"""How often the group is checked once its leader is reaped (only while stopping)."""
_KILL_WAIT_S = 5.0
"""How long to wait for SIGKILLed members to die (only a process stuck in the
kernel takes longer; then we give up rather than hang the orchestrator)."""
_CREATE_TIME_TOLERANCE_S = 0.01
"""psutil derives create_time from clock ticks (1/100 s): equal within one tick."""


_T = TypeVar("_T")


async def to_the_end(work: Coroutine[Any, Any, _T]) -> _T:
    """Await ``work`` even if we are cancelled meanwhile; re-raise the cancellation after
    (a stop that must run to its end)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


def alive_since(pid: int, create_time: float | None) -> bool:
    """Process ``pid`` lives (not a zombie) and is the one that started at ``create_time``
    (a reused pid is another process)."""
    try:
        proc = psutil.Process(pid)
        if create_time is None:
            return False
        if abs(proc.create_time() - create_time) >= _CREATE_TIME_TOLERANCE_S:
            return False
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def create_time_of(pid: int) -> float:
    """psutil's create_time of ``pid``, or 0.0 when it has already been reaped.

    0.0 never matches a live process, so ``kill_leftover_group`` will refuse it.
    """
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        return 0.0


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to group ``pgid``; False when the group no longer exists."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Only a member that changed its uid (setuid binary) can cause this; we
        # cannot signal it, so waiting for it would only hang the caller.
        return False
    return True


def group_alive(pgid: int) -> bool:
    """Whether group ``pgid`` has a member that is not a zombie."""
    if not signal_group(pgid, 0):
        return False
    # Members exist, but they may all be zombies awaiting their parent; only a
    # scan tells. This runs only while stopping, so its cost does not matter.
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return False


class ProcessGroup:
    """A child process that leads its own process group."""

    def __init__(self, process: asyncio.subprocess.Process, create_time: float) -> None:
        self._process = process
        self._create_time = create_time
        self._stopping: asyncio.Task[None] | None = None

    @classmethod
    async def spawn(
        cls,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        output: int,
    ) -> ProcessGroup:
        """Start ``argv`` (no shell) in a new session, stdin from /dev/null and
        stdout and stderr both written straight to the file descriptor ``output``.

        Raises ``OSError`` (``FileNotFoundError``, ``PermissionError``) as exec does.
        """
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        return cls(process, create_time_of(process.pid))

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def pgid(self) -> int:
        """Equal to ``pid``: the child leads the session it created."""
        return self._process.pid

    @property
    def create_time(self) -> float:
        """psutil's create_time of the leader (0.0 if it died before we looked)."""
        return self._create_time

    @property
    def returncode(self) -> int | None:
        """The leader's exit status (negative: killed by that signal), None while it runs."""
        return self._process.returncode

    async def wait(self) -> int:
        """Wait for the leader to exit; the rest of the group may live on."""
        return await self._process.wait()

    async def stop(self, grace_s: float) -> None:
        """SIGTERM, grace, SIGKILL, reap; idempotent and not interruptible.

        A cancellation that arrives meanwhile is re-raised once the group is stopped.
        """
        if self._stopping is None:
            self._stopping = asyncio.create_task(
                self._escalate(grace_s), name=f"stop-process-group-{self.pgid}"
            )
        cancelled = False
        while True:
            try:
                await asyncio.shield(self._stopping)
                break
            except asyncio.CancelledError:
                if self._stopping.done():
                    raise
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    async def _escalate(self, grace_s: float) -> None:
        try:
            if not signal_group(self.pgid, signal.SIGTERM):
                await self._process.wait()
                return
            if await self._wait_gone(grace_s):
                return
            signal_group(self.pgid, signal.SIGKILL)
            await self._wait_gone(_KILL_WAIT_S)
        except asyncio.CancelledError:
            signal_group(self.pgid, signal.SIGKILL)
            raise

    async def _wait_gone(self, timeout_s: float) -> bool:
        """Wait until the leader is reaped and the group is empty; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            await asyncio.wait_for(self._process.wait(), timeout=max(timeout_s, 0.0))
        except TimeoutError:
            return False
        while group_alive(self.pgid):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(_POLL_S)
        return True


def kill_leftover_group(pid: int, pgid: int, create_time: float, grace_s: float) -> bool:
    """Stop a process group left behind by an orchestrator that died. Blocking.

    Acts only if process ``pid`` still exists with the recorded ``create_time``
    and still leads ``pgid``: a reused pid must never be killed. Escalates like
    ``ProcessGroup.stop`` but cannot reap (the process is not our child; init or
    a subreaper does that). Returns whether a live process was signalled.
    """
    try:
        leader = psutil.Process(pid)
        same = abs(float(leader.create_time()) - create_time) < _CREATE_TIME_TOLERANCE_S
        if not same or os.getpgid(pid) != pgid:
            return False
    except (psutil.NoSuchProcess, ProcessLookupError):
        return False
    if not group_alive(pgid) or not signal_group(pgid, signal.SIGTERM):
        return False
    if not _poll_until_gone(pgid, grace_s):
        signal_group(pgid, signal.SIGKILL)
        _poll_until_gone(pgid, _KILL_WAIT_S)
    return True


def _poll_until_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True


# -- finding an attempt's processes by the marker they inherit ------------------------------
RUN_MARKER_ENV = "TC_AGENT_RUN"
"""Every agent process carries it (and passes it on), and so does the attempt's
supervisor: the attempt's log path, unique per state home and attempt, and journaled at
dispatch — so a restarted orchestrator finds an attempt's processes even when their pid
never reached the journal, or when they left the process group (Claude Code's Bash tool
starts each command in a new session)."""


def run_marker(request: AgentRequest) -> str:
    return str(request.log_path)


def marked_processes(marker: str) -> list[psutil.Process]:
    """Live processes of any parentage that inherited ``marker``. Blocking (a /proc scan)."""
    found = []
    me = os.getpid()  # a supervisor carries its attempt's marker: it never stops itself
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.pid != me and proc.environ().get(RUN_MARKER_ENV) == marker and not _gone(proc):
                found.append(proc)
    return found


async def stop_marked(marker: str, grace_s: float) -> None:
    """SIGTERM what still carries ``marker``, wait ``grace_s``, SIGKILL the rest."""
    procs = await asyncio.to_thread(marked_processes, marker)
    for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, _MARKED_KILL_WAIT_S)):
        if not procs:
            return
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signum)
        procs = await asyncio.to_thread(_wait_gone, procs, wait_s)


def _gone(proc: psutil.Process) -> bool:
    """Dead, or a zombie: dead too, whoever its parent is will reap it (or not)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # cannot look: assume it lives, the deadline bounds the wait
        return False


_MARKED_KILL_WAIT_S = 5.0


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    _gone_now, alive = psutil.wait_procs(procs, timeout=timeout_s)
    return [p for p in alive if not _gone(p)]


def kill_marked(markers: Collection[str], grace_s: float) -> set[str]:
    """Blocking: SIGTERM every live process carrying one of ``markers``, SIGKILL what is
    left after ``grace_s``; the markers that had processes."""
    if not markers:
        return set()
    wanted = set(markers)
    procs = []
    found: set[str] = set()
    me = os.getpid()
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            marker = proc.environ().get(RUN_MARKER_ENV)
            if proc.pid != me and marker in wanted and not _gone(proc):
                procs.append(proc)
                found.add(marker)
    for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, _MARKED_KILL_WAIT_S)):
        if not procs:
            break
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signum)
        procs = _wait_gone(procs, wait_s)
    return found
