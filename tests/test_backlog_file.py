"""Reading backlog TOML files: the accepted shape, and errors that name file, place and field."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from trafficcontrol.adapters.backlog_file import read_backlog
from trafficcontrol.domain.model import AgentSettings, Priority, SimSettings
from trafficcontrol.errors import BacklogError

EXAMPLE = """\
[[projects]]
id = "api"
path = "../api"
agent = "claude"

[[projects]]
id = "docs"
path = "../docs"
max_concurrent = 2
timeout = 600
max_attempts = 3

[[tasks]]
id = "db-migration"
project = "api"
title = "Add the sessions table"
prompt = "Write the migration."
priority = "P0"

[[tasks]]
id = "auth-refactor"
project = "api"
title = "Refactor the auth middleware"
prompt = "Split token parsing out of middleware.py and add tests."
priority = "P1"
depends_on = ["db-migration"]
resources = ["repo:api"]

[[tasks]]
id = "readme"
project = "docs"
prompt = "Explain the new login flow."
resources = ["style-guide:shared"]
score = 2.5
"""


@pytest.fixture(autouse=True)
def bare_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Git with no user or system configuration, and no repository leaked from outside."""
    empty = tmp_path / "empty-gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for leaked in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR"):
        monkeypatch.delenv(leaked, raising=False)


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """``api`` is a git repository, ``docs`` a plain directory; returns the backlog dir."""
    (tmp_path / "api").mkdir()
    subprocess.run(["git", "init", "-q", str(tmp_path / "api")], check=True)
    (tmp_path / "docs").mkdir()
    backlog_dir = tmp_path / "backlog"
    backlog_dir.mkdir()
    return backlog_dir


def write(directory: Path, text: str) -> Path:
    path = directory / "backlog.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> BacklogError:
    with pytest.raises(BacklogError) as caught:
        read_backlog(path)
    return caught.value


MINIMAL_PROJECT = '[[projects]]\nid = "api"\npath = "../api"\n\n'


# -- accepted ------------------------------------------------------------------------------
def test_the_documented_shape_is_read_with_paths_relative_to_the_file(
    layout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(layout, EXAMPLE)
    monkeypatch.chdir(layout.parent / "docs")  # not where the file is
    request = read_backlog(path)

    assert request.source == str(path)
    api, docs = request.projects
    assert (api.id, api.path, api.is_git, api.agent) == (
        "api",
        str((layout.parent / "api").resolve()),
        True,
        "claude",
    )
    assert (docs.id, docs.path, docs.is_git) == (
        "docs",
        str((layout.parent / "docs").resolve()),
        False,
    )
    assert (docs.max_concurrent, docs.timeout_s, docs.max_attempts) == (2, 600.0, 3)
    assert docs.agent == "sim" and docs.lock_in_place is True

    migration, auth, readme = request.tasks
    assert (migration.id, migration.priority, migration.title) == (
        "db-migration",
        Priority.P0,
        "Add the sessions table",
    )
    assert auth.depends_on == ("db-migration",)
    assert auth.resources == ("repo:api",)
    assert auth.prompt == "Split token parsing out of middleware.py and add tests."
    assert readme.resources == ("style-guide:shared",) and readme.score == 2.5


def test_defaults(layout: Path) -> None:
    path = write(
        layout,
        MINIMAL_PROJECT + '[[tasks]]\nid = "t1"\nproject = "api"\nprompt = "go"\n',
    )
    request = read_backlog(path)
    (project,) = request.projects
    (spec,) = request.tasks
    assert (project.agent, project.max_attempts, project.timeout_s, project.model) == (
        "sim",
        1,
        None,
        None,
    )
    assert project.settings == AgentSettings()
    assert spec.title == "t1"
    assert spec.priority is Priority.P2
    assert (spec.score, spec.depends_on, spec.resources) == (0.0, (), ())
    assert (spec.agent, spec.model, spec.timeout_s, spec.max_attempts) == (None, None, None, None)
    assert spec.retry_backoff_s == 5.0 and spec.settings is None


def test_agent_settings_and_sim_settings_are_carried(layout: Path) -> None:
    path = write(
        layout,
        MINIMAL_PROJECT
        + '[[tasks]]\nid = "t1"\nproject = "api"\nprompt = "go"\nmax_turns = 4\n'
        + "[tasks.sim]\nduration = 0.5\nfail_attempts = 1\n",
    )
    (spec,) = read_backlog(path).tasks
    assert spec.settings == AgentSettings(
        max_turns=4, sim=SimSettings(duration_s=0.5, fail_attempts=1)
    )


# -- refused -------------------------------------------------------------------------------
def test_a_syntax_error_names_the_file_and_line(layout: Path) -> None:
    text = MINIMAL_PROJECT + '[[tasks]]\nid = "t1"\nprompt = "unterminated\nproject = "api"\n'
    assert text.splitlines()[6] == 'prompt = "unterminated'  # line 7
    path = write(layout, text)
    error = error_of(path)
    assert error.message.startswith(f"{path}:7: TOML syntax error: ")
    assert "(at line" not in error.message


def test_a_syntax_error_at_the_end_names_the_file(layout: Path) -> None:
    path = write(layout, MINIMAL_PROJECT + "x = [1,\n")
    assert error_of(path).message.startswith(f"{path}: TOML syntax error: ")


def test_an_unknown_field_names_the_field_and_the_task(layout: Path) -> None:
    path = write(
        layout,
        MINIMAL_PROJECT
        + '[[tasks]]\nid = "ok"\nproject = "api"\nprompt = "go"\n\n'
        + '[[tasks]]\nid = "typo"\nproject = "api"\nprompt = "go"\npriorty = "P1"\n',
    )
    message = error_of(path).message
    assert message.startswith(f"{path}: ")
    assert "`priorty`" in message
    assert "tasks[1] (id 'typo')" in message


def test_an_unknown_project_field_names_the_project(layout: Path) -> None:
    path = write(layout, '[[projects]]\nid = "api"\npath = "../api"\nmax_concurrency = 2\n')
    message = error_of(path).message
    assert "`max_concurrency`" in message and "projects[0] (id 'api')" in message


def test_a_wrong_type_names_the_field(layout: Path) -> None:
    path = write(
        layout,
        MINIMAL_PROJECT + '[[tasks]]\nid = "t1"\nproject = "api"\nprompt = "go"\n'
        'max_attempts = "three"\n',
    )
    message = error_of(path).message
    assert "max_attempts" in message and "(id 't1')" in message
    assert "Expected `int | null`, got `str`" in message


def test_a_bad_priority_names_the_field(layout: Path) -> None:
    path = write(
        layout,
        MINIMAL_PROJECT + '[[tasks]]\nid = "t1"\nproject = "api"\nprompt = "go"\npriority = "P9"\n',
    )
    message = error_of(path).message
    assert "'P9'" in message and "(id 't1').priority" in message


def test_a_missing_required_field_is_named(layout: Path) -> None:
    path = write(layout, MINIMAL_PROJECT + '[[tasks]]\nid = "t1"\nproject = "api"\n')
    message = error_of(path).message
    assert "missing required field `prompt`" in message and "(id 't1')" in message


def test_a_project_path_that_does_not_exist_names_the_project_and_the_path(layout: Path) -> None:
    path = write(
        layout,
        '[[projects]]\nid = "api"\npath = "../api"\n\n'
        '[[projects]]\nid = "web"\npath = "../web"\n\n'
        '[[projects]]\nid = "file"\npath = "backlog.toml"\n',
    )
    error = error_of(path)
    assert error.message == f"{path}: submission refused"
    missing = (layout.parent / "web").resolve()
    assert error.problems == [
        f"project 'web': path '../web' is not a directory ({missing})",
        f"project 'file': path 'backlog.toml' is not a directory ({path.resolve()})",
    ]


def test_an_unreadable_file_is_a_backlog_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert error_of(missing).message.startswith(f"{missing}: cannot read")
