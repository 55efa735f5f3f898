"""Supervisors forked from a warm launcher instead of started as new interpreters.

Design note
-----------
Starting each attempt's supervisor as ``python -m trafficcontrol.cli.supervise`` costs
a fresh interpreter and its imports: about 0.1 s of CPU, and on a 2-core machine with
ten attempts starting together 0.7 s p50 from dispatch to the agent's start (measured
by ``tc profile`` on a 200-task backlog of command agents) — the largest share of the
orchestrator's part of task latency. The launcher is one long-lived process that has
imported everything a supervisor needs, then forks one per attempt on request (a few
ms). It is the ``forkserver`` pattern of ``multiprocessing``:

- the orchestrator starts it on first use, in a session of its own, with a pipe each
  way; a request is one JSON line (spec, environment, working directory, stderr file),
  the answer is one line with the new supervisor's pid (or an error);
- the launcher never starts a thread or an event loop, so forking it is safe; the child
  calls ``setsid`` (its own session and group, as before), points its stdio at the
  attempt's files, takes the environment it was sent and runs the supervisor;
- the launcher reaps its children; the orchestrator, for which a supervisor is no
  longer a child, waits on it through a pidfd, as it already does for adopted ones;
- when the orchestrator dies the launcher reads end-of-file and exits; the supervisors
  it forked are re-parented and run on, exactly as directly started ones do;
- a forked supervisor's ``/proc/PID/environ`` is the launcher's (the kernel shows the
  environment a process was exec'd with), so it does not show its attempt's run
  marker; it is found by its pid and start time (journal, ``.shim`` file), and the
  agents it starts are exec'd with the marker as before. The launcher's own
  environment never holds a marker.

Any failure of the launcher (it cannot start, dies, or answers nonsense) is logged
once and the attempt's supervisor is started the direct way; a later attempt tries a
new launcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from trafficcontrol.adapters.agents.process_group import RUN_MARKER_ENV

log = logging.getLogger(__name__)

LAUNCHER_MODULE = "trafficcontrol.cli.supervise"
LAUNCHER_FLAG = "--launcher"


class LauncherError(Exception):
    """The launcher could not fork a supervisor; start it directly instead."""


class SupervisorLauncher:
    """The orchestrator's side of the launcher (module notes)."""

    def __init__(self, *, python: str = sys.executable) -> None:
        self._python = python
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self.forked = 0

    async def _started(self, environ: Mapping[str, str]) -> asyncio.subprocess.Process:
        process = self._process
        if process is not None and process.returncode is None:
            return process
        try:
            process = await asyncio.create_subprocess_exec(
                self._python,
                "-m",
                LAUNCHER_MODULE,
                LAUNCHER_FLAG,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                # Never an attempt's run marker: stopping that attempt would kill us.
                env={k: v for k, v in environ.items() if k != RUN_MARKER_ENV},
                start_new_session=True,
            )
        except OSError as exc:
            raise LauncherError(f"cannot start the supervisor launcher: {exc}") from exc
        self._process = process
        return process

    async def preload(self, modules: tuple[str, ...], environ: Mapping[str, str]) -> None:
        """Have the launcher import ``modules`` while it is idle (what the supervisors of
        a backend in use import anyway). Raises ``LauncherError``."""
        await self._ask({"preload": list(modules)}, environ)

    async def launch(
        self, spec: Path, *, environ: Mapping[str, str], cwd: Path, stderr: Path
    ) -> int:
        """Fork a supervisor for ``spec``; its pid. Raises ``LauncherError``."""
        answer = await self._ask(
            {"spec": str(spec), "env": dict(environ), "cwd": str(cwd), "stderr": str(stderr)},
            environ,
        )
        pid = answer.get("pid")
        if not isinstance(pid, int):
            self._abandon()
            raise LauncherError(f"the supervisor launcher failed: {answer}")
        self.forked += 1
        return pid

    async def _ask(
        self, message: dict[str, object], environ: Mapping[str, str]
    ) -> dict[str, object]:
        request = json.dumps(message).encode()
        async with self._lock:
            process = await self._started(environ)
            assert process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(request + b"\n")
                await process.stdin.drain()
                line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
            except (OSError, TimeoutError, ConnectionError) as exc:
                self._abandon()
                raise LauncherError(f"the supervisor launcher did not answer: {exc!r}") from exc
        try:
            answer = json.loads(line) if line else {"error": "the launcher exited"}
        except ValueError:
            answer = {"error": f"unreadable answer {line[:80]!r}"}
        if not isinstance(answer, dict) or "error" in answer:
            self._abandon()
            raise LauncherError(f"the supervisor launcher failed: {answer}")
        return answer

    def _abandon(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.kill()

    async def close(self) -> None:
        """End the launcher (its supervisors run on). Idempotent."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), timeout=5)
        except TimeoutError:
            process.kill()
            await process.wait()


# -- the launcher process -------------------------------------------------------------------
def serve(run_supervisor: Callable[[Path, dict[str, str]], int]) -> int:
    """The launcher's loop (module notes): fork a supervisor per request line until
    end-of-file. ``run_supervisor(spec_path, environ)`` runs in the child and makes
    ``environ`` its environment. Modules a ``preload``
    request names are imported one at a time while no request waits."""
    import select
    import signal

    def reap(_signum: int, _frame: object) -> None:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    signal.signal(signal.SIGCHLD, reap)
    pending: list[str] = []
    buffered = b""
    while True:
        if b"\n" not in buffered:
            if pending and not select.select([0], [], [], 0)[0]:
                with contextlib.suppress(ImportError):
                    importlib.import_module(pending.pop(0))
                continue
            chunk = os.read(0, 65536)
            if not chunk:
                return 0  # the orchestrator is gone; the supervisors run on
            buffered += chunk
            continue
        line, _, buffered = buffered.partition(b"\n")
        answer = _answer(line, pending, run_supervisor)
        os.write(1, json.dumps(answer).encode() + b"\n")


def _answer(
    line: bytes, pending: list[str], run_supervisor: Callable[[Path, dict[str, str]], int]
) -> dict[str, object]:
    """Serve the request ``line`` (a preload, or a supervisor to fork); the answer."""
    try:
        request = json.loads(line)
        if "preload" in request:
            pending.extend(str(m) for m in request["preload"])
            return {"ok": True}
        spec, env = Path(request["spec"]), dict(request["env"])
        cwd, stderr = Path(request["cwd"]), Path(request["stderr"])
    except (ValueError, KeyError, TypeError) as exc:
        return {"error": f"bad request: {exc!r}"}
    try:
        pid = os.fork()
    except OSError as exc:
        return {"error": f"fork failed: {exc}"}
    if pid == 0:  # the supervisor
        code = 2
        try:
            _become_supervisor(cwd, stderr)
            code = run_supervisor(spec, env)
        except BaseException:  # nothing may return into the launcher's loop
            log.exception("supervisor failed")
        finally:
            sys.stderr.flush()
            os._exit(code)
    return {"pid": pid}


def _become_supervisor(cwd: Path, stderr: Path) -> None:
    """In the forked child: a session of its own, the attempt's stdio and directory."""
    import signal

    os.setsid()
    for signum in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDWR)
    err = os.open(stderr, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(err, 2)
    os.close(devnull)
    os.close(err)
    os.chdir(cwd)
