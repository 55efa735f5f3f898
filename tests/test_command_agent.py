"""The command backend and process groups, with real subprocesses.

Children report to the test over a TCP rendezvous on localhost instead of being
waited for with sleeps: a message means "this has happened", so every assertion
after it is about a state the child is known to be in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from trafficcontrol.adapters.agents.command import CommandBackend
from trafficcontrol.adapters.agents.process_group import ProcessGroup, kill_leftover_group
from trafficcontrol.domain.model import AgentSettings, AttemptId, Outcome, ProjectId, TaskId
from trafficcontrol.errors import ConfigError
from trafficcontrol.ports import AgentRequest
from trafficcontrol.testing.fakes import RecordingReporter

PY = sys.executable
GRACE_S = 0.3
WAIT_S = 10.0
"""Upper bound on waiting for a child's message: a failing test fails, never hangs."""

AGENT_SCRIPT = r"""
import json, os, signal, socket, subprocess, sys, time

def tell(msg):
    s = socket.create_connection(("127.0.0.1", int(os.environ["RENDEZVOUS_PORT"])))
    s.sendall(msg.encode() + b"\n")
    return s

def on_term(note, leave):
    def handler(signum, frame):
        print(note, flush=True)
        tell("term " + str(os.getpid())).close()
        if leave:
            os._exit(143)
    signal.signal(signal.SIGTERM, handler)

mode, args = sys.argv[1], sys.argv[2:]
if mode == "argv":
    report = {
        "argv": args,
        "cwd": os.getcwd(),
        "stdin": sys.stdin.read(),
        "env": {k: os.environ.get(k) for k in (
            "TC_TASK_ID", "TC_ATTEMPT_ID", "TC_WORKDIR", "FROM_ENVIRON", "FROM_SETTINGS",
            "OVERRIDDEN", "TC_TEST_LEAK")},
    }
    with open("report.json", "w", encoding="utf-8") as f:
        json.dump(report, f)
elif mode == "stream":
    print("out-line", flush=True)
    print("err-line", file=sys.stderr, flush=True)
    tell("ready").recv(16)
elif mode == "tree":
    stubborn = "stubborn" in args
    g = subprocess.Popen([sys.executable, __file__, "grandchild", *args])
    on_term("child got SIGTERM", leave=True)
    tell(f"child {os.getpid()} {g.pid}")
    g.wait()
elif mode == "grandchild":
    if "stubborn" in args:
        on_term("grandchild got SIGTERM and stays", leave=False)
    tell(f"grandchild {os.getpid()}")
    while True:
        time.sleep(60)
elif mode == "leave-behind":
    g = subprocess.Popen([sys.executable, __file__, "sleep"])
    tell(f"child {os.getpid()} {g.pid}").close()
elif mode == "leftover":
    g = subprocess.Popen([sys.executable, __file__, "sleep"])
    print(g.pid, flush=True)
    time.sleep(300)
elif mode == "sleep":
    time.sleep(300)
"""


class Rendezvous:
    """A localhost server the children connect to, one message per connection."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[tuple[list[str], asyncio.StreamWriter]] = asyncio.Queue()
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        line = await reader.readline()
        await self.messages.put((line.decode().split(), writer))

    async def next(self) -> tuple[list[str], asyncio.StreamWriter]:
        async with asyncio.timeout(WAIT_S):
            return await self.messages.get()

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@pytest.fixture
async def rendezvous() -> AsyncIterator[Rendezvous]:
    rv = Rendezvous()
    server = await asyncio.start_server(rv._on_connect, "127.0.0.1", 0)
    rv.port = server.sockets[0].getsockname()[1]
    try:
        yield rv
    finally:
        await rv.close()
        server.close()
        await server.wait_closed()


@pytest.fixture
def agent_script(tmp_path: Path) -> Iterator[Path]:
    """The children's script; at teardown, kills whatever still runs it, so a broken
    stop fails its test without leaving processes behind for the next ones."""
    path = tmp_path / "agent.py"
    path.write_text(AGENT_SCRIPT, encoding="utf-8")
    yield path
    for proc in psutil.process_iter(["cmdline"]):
        if str(path) in (proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def make_request(
    tmp_path: Path,
    command: list[str] | None,
    *,
    prompt: str = "do the thing",
    env: dict[str, str] | None = None,
) -> AgentRequest:
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return AgentRequest(
        attempt_id=AttemptId("att-7"),
        task_id=TaskId("task-1"),
        project_id=ProjectId("proj"),
        attempt_no=1,
        title="A title",
        prompt=prompt,
        workdir=workdir,
        log_path=tmp_path / "logs" / "task-1" / "att-7.log",
        model="sonnet",
        settings=AgentSettings(command=command, env=env),
    )


def backend(grace_s: float = GRACE_S, **extra: str) -> CommandBackend:
    return CommandBackend(environ={"PATH": os.environ["PATH"], **extra}, grace_s=grace_s)


def reaped(proc: psutil.Process) -> bool:
    """Gone without a trace: not even a zombie (is_running also detects pid reuse)."""
    return not proc.is_running()


def gone(proc: psutil.Process) -> bool:
    """Dead: no longer running (is_running also detects pid reuse) or a zombie."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def tree_pids(rv: Rendezvous) -> tuple[psutil.Process, psutil.Process]:
    """The child's and grandchild's processes, once both have reported in."""
    seen: dict[str, list[str]] = {}
    while len(seen) < 2:
        words, _ = await rv.next()
        seen[words[0]] = words[1:]
    child, grandchild = int(seen["child"][0]), int(seen["grandchild"][0])
    assert int(seen["child"][1]) == grandchild
    return psutil.Process(child), psutil.Process(grandchild)


# -- exit codes, log, template ----------------------------------------------------------
async def test_exit_code_zero_succeeds_and_logs_both_streams(tmp_path: Path) -> None:
    script = "import sys; print('hello out'); print('hello err', file=sys.stderr)"
    request = make_request(tmp_path, [PY, "-c", script])
    reporter = RecordingReporter()
    result = await backend().run(request, reporter)
    assert (result.outcome, result.exit_code, result.error) == (Outcome.SUCCEEDED, 0, None)
    log = request.log_path.read_text()
    assert "hello out" in log and "hello err" in log and "exit code 0" in log
    # Its own group; create_time may be 0.0 here, as it may exit before it is read.
    [(pid, pgid, _)] = reporter.processes
    assert pid == pgid != os.getpgrp()


async def test_nonzero_exit_fails_with_code_and_last_lines(tmp_path: Path) -> None:
    # Braces in a template are placeholders; literal ones are doubled.
    script = "for i in range(12): print(f'line-{{i}}')\nraise SystemExit(3)"
    result = await backend().run(make_request(tmp_path, [PY, "-c", script]), RecordingReporter())
    assert (result.outcome, result.exit_code) == (Outcome.FAILED, 3)
    assert result.error is not None and result.error.startswith("exit code 3")
    assert "line-11" in result.error and "line-10" in result.error
    assert "line-1\n" not in result.error and "[tc]" not in result.error


async def test_output_reaches_the_log_while_the_agent_runs(
    tmp_path: Path, agent_script: Path, rendezvous: Rendezvous
) -> None:
    env = {"RENDEZVOUS_PORT": str(rendezvous.port)}
    request = make_request(tmp_path, [PY, str(agent_script), "stream"], env=env)
    reporter = RecordingReporter()
    run = asyncio.create_task(backend().run(request, reporter))
    words, writer = await rendezvous.next()
    assert words == ["ready"]
    log = request.log_path.read_text()
    assert "out-line" in log and "err-line" in log
    assert not run.done()
    [(pid, pgid, create_time)] = reporter.processes
    assert pid == pgid and create_time == psutil.Process(pid).create_time()
    writer.write(b"go")
    await writer.drain()
    result = await run
    assert result.outcome is Outcome.SUCCEEDED


async def test_placeholders_env_cwd_and_stdin(
    tmp_path: Path, agent_script: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TC_TEST_LEAK", "the backend must not read os.environ")
    prompt = 'Fix "the bug" in it\'s {core};\n  $HOME `rm -rf` \\n ünïcode\n'
    names = "prompt prompt_file workdir task_id attempt_id project title log_file model"
    template = [PY, str(agent_script), "argv", *(f"{{{n}}}" for n in names.split())]
    template += ["--id=task-{task_id}!", "{{literal}}"]
    env = {"FROM_SETTINGS": "s", "OVERRIDDEN": "by settings"}
    request = make_request(tmp_path, template, prompt=prompt, env=env)
    agent = backend(FROM_ENVIRON="e", OVERRIDDEN="by environ")
    result = await agent.run(request, RecordingReporter())
    assert result.outcome is Outcome.SUCCEEDED, result.error
    report = json.loads((request.workdir / "report.json").read_text(encoding="utf-8"))
    prompt_file = request.log_path.with_name("att-7.log.prompt.txt")
    assert report["argv"] == [
        prompt,
        str(prompt_file),
        str(request.workdir),
        "task-1",
        "att-7",
        "proj",
        "A title",
        str(request.log_path),
        "sonnet",
        "--id=task-task-1!",
        "{literal}",
    ]
    assert prompt_file.read_text(encoding="utf-8") == prompt
    assert Path(report["cwd"]) == request.workdir and report["stdin"] == ""
    assert report["env"] == {
        "TC_TASK_ID": "task-1",
        "TC_ATTEMPT_ID": "att-7",
        "TC_WORKDIR": str(request.workdir),
        "FROM_ENVIRON": "e",
        "FROM_SETTINGS": "s",
        "OVERRIDDEN": "by settings",
        "TC_TEST_LEAK": None,
    }


@pytest.mark.parametrize(
    ("element", "named"),
    [
        ("--x={nope}", "{nope}"),
        ("{prompt.upper}", "{prompt.upper}"),
        ("{0}", "{0}"),
        ("{}", "{}"),
        ("{prompt!r}", "{prompt!r}"),
        ("{title:>9}", "{title:>9}"),
    ],
)
async def test_unknown_placeholder_fails_naming_it(
    tmp_path: Path, element: str, named: str
) -> None:
    reporter = RecordingReporter()
    result = await backend().run(make_request(tmp_path, ["echo", element]), reporter)
    assert result.outcome is Outcome.FAILED and result.error is not None
    assert f"unknown placeholder {named} in settings.command[1]" in result.error
    assert "{prompt_file}" in result.error  # lists what is known
    assert reporter.processes == []


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (None, "settings.command is empty or not set"),
        ([], "settings.command is empty or not set"),
        (["echo", "{prompt"], "settings.command[1] '{prompt' is malformed"),
    ],
)
async def test_bad_template_fails_clearly(
    tmp_path: Path, command: list[str] | None, expected: str
) -> None:
    result = await backend().run(make_request(tmp_path, command), RecordingReporter())
    assert result.outcome is Outcome.FAILED and result.error is not None
    assert expected in result.error


async def test_missing_executable_fails_naming_it(tmp_path: Path) -> None:
    request = make_request(tmp_path, ["tc-no-such-agent-7f3a", "{prompt}"])
    reporter = RecordingReporter()
    result = await backend().run(request, reporter)
    assert result.outcome is Outcome.FAILED and result.exit_code is None
    assert result.error is not None
    assert result.error.startswith("executable not found: 'tc-no-such-agent-7f3a'")
    assert reporter.processes == []
    assert "tc-no-such-agent-7f3a" in request.log_path.read_text()


def test_check_and_settings_validation() -> None:
    backend().check()
    with pytest.raises(ConfigError, match="grace_s"):
        CommandBackend(environ={}, grace_s=-1)


# -- stopping the whole tree --------------------------------------------------------------
async def test_cancel_kills_child_and_grandchild(
    tmp_path: Path, agent_script: Path, rendezvous: Rendezvous
) -> None:
    env = {"RENDEZVOUS_PORT": str(rendezvous.port)}
    request = make_request(tmp_path, [PY, str(agent_script), "tree"], env=env)
    reporter = RecordingReporter()
    run = asyncio.create_task(backend(grace_s=WAIT_S).run(request, reporter))
    child, grandchild = await tree_pids(rendezvous)
    assert reporter.processes[0][0] == child.pid and os.getpgid(grandchild.pid) == child.pid
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert reaped(child) and gone(grandchild)
    assert "child got SIGTERM" in request.log_path.read_text()


async def test_grandchild_ignoring_sigterm_gets_sigkill_even_if_cancelled_again(
    tmp_path: Path, agent_script: Path, rendezvous: Rendezvous
) -> None:
    env = {"RENDEZVOUS_PORT": str(rendezvous.port)}
    request = make_request(tmp_path, [PY, str(agent_script), "tree", "stubborn"], env=env)
    run = asyncio.create_task(backend().run(request, RecordingReporter()))
    child, grandchild = await tree_pids(rendezvous)
    run.cancel()
    terms = {int((await rendezvous.next())[0][1]) for _ in range(2)}
    assert terms == {child.pid, grandchild.pid}
    run.cancel()  # mid-escalation: must not cut the grace period short into an orphan
    with pytest.raises(asyncio.CancelledError):
        await run
    assert reaped(child) and gone(grandchild)
    log = request.log_path.read_text()
    assert "child got SIGTERM" in log and "grandchild got SIGTERM and stays" in log


async def test_timeout_around_run_kills_the_tree(
    tmp_path: Path, agent_script: Path, rendezvous: Rendezvous
) -> None:
    env = {"RENDEZVOUS_PORT": str(rendezvous.port)}
    request = make_request(tmp_path, [PY, str(agent_script), "tree"], env=env)
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(None) as deadline:
            run = asyncio.create_task(backend().run(request, RecordingReporter()))
            child, grandchild = await tree_pids(rendezvous)
            deadline.reschedule(loop.time())
            await run
    assert run.cancelled()
    assert reaped(child) and gone(grandchild)


async def test_grandchild_left_behind_by_an_exited_child_is_stopped(
    tmp_path: Path, agent_script: Path, rendezvous: Rendezvous
) -> None:
    env = {"RENDEZVOUS_PORT": str(rendezvous.port)}
    request = make_request(tmp_path, [PY, str(agent_script), "leave-behind"], env=env)
    run = asyncio.create_task(backend().run(request, RecordingReporter()))
    words, _ = await rendezvous.next()
    grandchild = psutil.Process(int(words[2]))
    assert not gone(grandchild)
    result = await run
    assert result.outcome is Outcome.SUCCEEDED
    assert gone(grandchild)


async def test_stop_is_idempotent(tmp_path: Path) -> None:
    group = await ProcessGroup.spawn(
        [PY, "-c", "import time; time.sleep(300)"],
        cwd=tmp_path,
        env={},
        output=subprocess.DEVNULL,
    )
    await asyncio.gather(group.stop(GRACE_S), group.stop(GRACE_S))
    await group.stop(GRACE_S)
    assert group.returncode == -signal.SIGTERM


# -- leftovers of a dead orchestrator -----------------------------------------------------
@pytest.fixture
def detached_group(agent_script: Path) -> Iterator[tuple[subprocess.Popen[str], psutil.Process]]:
    """A group leader (plus a grandchild) in its own session, as a dead orchestrator
    would have left it."""
    with subprocess.Popen(
        [PY, str(agent_script), "leftover"],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    ) as leader:
        try:
            assert leader.stdout is not None
            grandchild = psutil.Process(int(leader.stdout.readline()))
            yield leader, grandchild
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(leader.pid, signal.SIGKILL)


def test_kill_leftover_group_kills_the_whole_group(
    detached_group: tuple[subprocess.Popen[str], psutil.Process],
) -> None:
    leader, grandchild = detached_group
    create_time = psutil.Process(leader.pid).create_time()
    assert kill_leftover_group(leader.pid, leader.pid, create_time, GRACE_S)
    assert leader.wait(timeout=WAIT_S) == -signal.SIGTERM
    assert gone(grandchild)


def test_kill_leftover_group_refuses_another_process(
    detached_group: tuple[subprocess.Popen[str], psutil.Process],
) -> None:
    leader, grandchild = detached_group
    create_time = psutil.Process(leader.pid).create_time()
    assert not kill_leftover_group(leader.pid, leader.pid, create_time + 1.0, GRACE_S)
    assert leader.poll() is None and not gone(grandchild)


def test_kill_leftover_group_of_a_vanished_process_does_nothing() -> None:
    with subprocess.Popen([PY, "-c", "pass"]) as done:
        pass
    assert done.returncode == 0
    assert not kill_leftover_group(done.pid, done.pid, 1.0, GRACE_S)
