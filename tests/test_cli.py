"""``tc`` as a user runs it: real processes, real state homes."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.cli_helpers import spawn_tc, tc, tc_json
from tests.helpers import AGENT, blocking_backlog, journal_events

pytestmark = pytest.mark.e2e

GOOD = """
[[projects]]
id = "api"
path = "api"
agent = "sim"
sim = {{ duration = 0.0, jitter = 0.0 }}

[[tasks]]
id = "db-migration"
project = "api"
title = "Add the migration"
prompt = "Write it."
priority = "P0"

[[tasks]]
id = "auth-refactor"
project = "api"
title = "Refactor the auth middleware"
prompt = "Split token parsing out of middleware.py and add tests."
priority = "P1"
depends_on = ["db-migration"]
resources = ["repo:api"]
{extra}
"""


def write_backlog(tmp_path: Path, extra: str = "", name: str = "backlog.toml") -> Path:
    (tmp_path / "api").mkdir(exist_ok=True)
    path = tmp_path / name
    path.write_text(GOOD.format(extra=extra))
    return path


BAD_CASES = {
    # The unterminated string is on line 25 of the file.
    "syntax": ('\n[[tasks]]\nid = "x\n', "backlog.toml:25: TOML syntax error"),
    "unknown field": (
        '\n[[tasks]]\nid = "x"\nproject = "api"\nprompt = "p"\ncolour = "red"\n',
        "unknown field `colour`",
    ),
    "wrong type": (
        '\n[[tasks]]\nid = "x"\nproject = "api"\nprompt = "p"\npriority = 3\n',
        "Expected `str`, got `int` - at `tasks[2] (id 'x').priority`",
    ),
    "duplicate id": (
        '\n[[tasks]]\nid = "db-migration"\nproject = "api"\nprompt = "again"\n',
        "task 'db-migration' is defined twice",
    ),
    "unknown dependency": (
        '\n[[tasks]]\nid = "x"\nproject = "api"\nprompt = "p"\ndepends_on = ["ghost"]\n',
        "task 'x' depends on unknown task 'ghost'",
    ),
    "cycle": (
        '\n[[tasks]]\nid = "a"\nproject = "api"\nprompt = "p"\ndepends_on = ["b"]\n'
        '\n[[tasks]]\nid = "b"\nproject = "api"\nprompt = "p"\ndepends_on = ["a"]\n',
        "dependency cycle: a -> b -> a",
    ),
    "missing path": (
        '\n[[projects]]\nid = "web"\npath = "nowhere"\n',
        "project 'web': path 'nowhere' is not a directory",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_a_bad_backlog_is_refused_whole_and_changes_nothing(tmp_path: Path, case: str) -> None:
    home = tmp_path / "home"
    tc("submit", str(write_backlog(tmp_path, name="first.toml")), home=home)
    before = journal_events(home)
    extra, message = BAD_CASES[case]

    done = tc("submit", str(write_backlog(tmp_path, extra)), home=home, check=False)

    assert done.returncode == 1
    assert message in " ".join(done.stderr.split()), done.stderr
    assert journal_events(home) == before


def test_submit_is_idempotent_and_tasks_can_be_listed_and_shown(tmp_path: Path) -> None:
    home = tmp_path / "home"
    backlog = write_backlog(tmp_path)
    assert "accepted" in tc("submit", str(backlog), home=home).stdout
    assert "no change" in tc("submit", str(backlog), home=home).stdout
    assert len(journal_events(home)) == 1

    listed = tc_json("tasks", home=home)
    assert [(t["id"], t["state"]) for t in listed] == [
        ("db-migration", "ready"),
        ("auth-refactor", "pending"),
    ]
    shown = tc_json("show", "auth-refactor", home=home)
    assert shown["waiting_on"] == ["db-migration"]
    assert shown["resources"] == ["repo:api"]
    missing = tc("show", "nope", home=home, check=False)
    assert missing.returncode == 1 and "no task 'nope'" in missing.stderr


def test_run_finishes_the_backlog_and_reports_usage(tmp_path: Path) -> None:
    home = tmp_path / "home"
    tc("submit", str(write_backlog(tmp_path)), home=home)
    tc(
        "add",
        "docs",
        "--project",
        "api",
        "--prompt",
        "Write docs",
        "--depends-on",
        "auth-refactor",
        home=home,
    )

    done = tc("run", "--no-live", home=home)

    assert "done 3" in done.stdout
    assert "simulated" in done.stdout
    status = tc_json("status", home=home)
    assert status["by_state"]["done"] == 3
    assert status["orchestrator_running"] is False
    usage = status["usage_by_model"]["sonnet"]  # routed: default tier
    assert usage["simulated"] is True and usage["input_tokens"] > 0
    shown = tc_json("show", "docs", home=home)
    attempt = shown["attempt_list"][0]
    assert attempt["outcome"] == "succeeded" and attempt["simulated"] is True
    assert "[simulated]" in tc("logs", "docs#1", home=home).stdout
    assert "[simulated]" in tc("logs", "docs", home=home).stdout
    followed = tc("logs", "docs#1", "--follow", home=home)  # ended: prints all, returns
    assert followed.stdout == tc("logs", "docs#1", home=home).stdout
    missing = tc("logs", "nope#1", home=home, check=False)
    assert missing.returncode == 1 and "no attempt 'nope#1'" in missing.stderr


def test_reads_work_and_cancel_reaches_a_running_orchestrator(tmp_path: Path) -> None:
    home = tmp_path / "home"
    backlog, started = blocking_backlog(tmp_path, "forever")
    tc("submit", str(backlog), home=home)
    runner = spawn_tc("run", "--no-live", home=home)
    try:
        assert started.read_text() == "started\n"  # blocks until the agent runs
        busy = tc("run", home=home, check=False)
        assert busy.returncode == 1 and "another tc run" in busy.stderr
        status = tc_json("status", home=home)
        assert status["orchestrator_running"] is True
        assert [r["attempt"] for r in status["running"]] == ["forever#1"]
        assert "agent running in" in tc("logs", "forever#1", home=home).stdout

        assert "accepted" in tc("cancel", "forever", home=home).stdout
        assert runner.wait(timeout=60) == 0
    finally:
        if runner.poll() is None:
            runner.kill()
        runner.communicate()
    assert tc_json("show", "forever", home=home)["state"] == "cancelled"
    again = tc("cancel", "forever", home=home, check=False)
    assert again.returncode == 1 and "already cancelled" in again.stderr
    assert "accepted" in tc("retry", "forever", home=home).stdout
    assert tc_json("show", "forever", home=home)["state"] == "ready"


def test_sigterm_stops_run_gracefully(tmp_path: Path) -> None:
    home = tmp_path / "home"
    backlog, started = blocking_backlog(tmp_path, "t")
    tc("submit", str(backlog), home=home)
    runner = spawn_tc("run", "--no-live", home=home)
    assert started.read_text() == "started\n"
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=60) == 0
    runner.communicate()
    shown = tc_json("show", "t", home=home)
    assert shown["state"] == "ready"
    assert shown["attempt_list"][0]["outcome"] == "interrupted"


def test_git_projects_get_worktrees_that_prune_only_when_safe(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    (repo / "a.txt").write_text("a\n")
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=repo, check=True)
    (tmp_path / "g.toml").write_text(
        f"""
[[projects]]
id = "g"
path = "repo"
agent = "command"
command = ["{os.sys.executable}", "{AGENT}", "--write", "out-{{task_id}}.txt=hi"]

[[tasks]]
id = "one"
project = "g"
prompt = "p"

[[tasks]]
id = "two"
project = "g"
prompt = "p"
"""
    )
    home = tmp_path / "home"
    tc("submit", str(tmp_path / "g.toml"), home=home)
    tc("run", "--no-live", home=home)

    shown = tc_json("show", "one", home=home)["attempt_list"][0]
    assert shown["branch"] == "tc/one/1"
    workdir = Path(shown["workdir"])
    assert (workdir / "out-one.txt").read_text() == "hi"
    assert not (repo / "out-one.txt").exists()
    listed = {w["attempt"]: w for w in tc_json("workspaces", home=home)}
    assert listed["one#1"]["status"] == "dirty" and not listed["one#1"]["prunable"]

    refused = tc("workspaces", "prune", home=home, check=False, stdin=subprocess.DEVNULL)
    assert "nothing to prune" in refused.stdout
    # Once the work is committed and merged, the worktree may go.
    subprocess.run(["git", "add", "."], cwd=workdir, check=True)
    subprocess.run([*git, "commit", "-qm", "work"], cwd=workdir, check=True)
    subprocess.run([*git, "merge", "-q", "tc/one/1"], cwd=repo, check=True)
    listed = {w["attempt"]: w for w in tc_json("workspaces", home=home)}
    assert listed["one#1"]["status"] == "merged" and listed["one#1"]["prunable"]
    no_stdin = tc("workspaces", "prune", home=home, check=False, stdin=subprocess.DEVNULL)
    assert no_stdin.returncode == 1 and "--yes" in no_stdin.stderr
    assert workdir.exists()
    tc("workspaces", "prune", "--yes", home=home)
    assert not workdir.exists()
    assert Path(tc_json("show", "two", home=home)["attempt_list"][0]["workdir"]).exists()
