"""Git worktrees for attempts, on real git repositories in temporary directories.

Git runs with no global or system configuration (as on a fresh machine with no
identity): only the test's own commits set an identity, on the command line.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from trafficcontrol.adapters.workspaces.git import GitWorkspaces, is_git_repo
from trafficcontrol.domain.model import ProjectId, ProjectSpec, TaskId
from trafficcontrol.errors import WorkspaceError

IDENTITY = ("-c", "user.name=Test", "-c", "user.email=test@example.invalid")


@pytest.fixture(autouse=True)
def bare_git_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for leaked in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR"):
        monkeypatch.delenv(leaked, raising=False)


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *IDENTITY, "-C", str(cwd), *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def commit(cwd: Path, name: str, content: str = "x\n") -> str:
    (cwd / name).write_text(content)
    git(cwd, "add", name)
    git(cwd, "commit", "-q", "-m", f"add {name}")
    return git(cwd, "rev-parse", "HEAD")


def new_repo(path: Path, *, commits: bool = True) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    if commits:
        commit(path, "README.md", "hello\n")
    return path


def spec(path: Path, *, is_git: bool = True, project_id: str = "proj") -> ProjectSpec:
    return ProjectSpec(id=ProjectId(project_id), path=str(path), is_git=is_git)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return new_repo(tmp_path / "repo")


@pytest.fixture
def workspaces(tmp_path: Path) -> GitWorkspaces:
    return GitWorkspaces(tmp_path / "worktrees")


def test_each_attempt_gets_its_own_worktree_and_branch(
    repo: Path, tmp_path: Path, workspaces: GitWorkspaces
) -> None:
    project = spec(repo)
    head = git(repo, "rev-parse", "HEAD")
    made = {
        (task, n): workspaces.prepare(project, TaskId(task), n)
        for task in ("fix-login", "add-docs")
        for n in (1, 2)
    }
    for (task, n), ws in made.items():
        assert ws.path == tmp_path / "worktrees" / "proj" / f"{task}-{n}"
        assert ws.branch == f"tc/{task}/{n}" and ws.base_commit == head
        assert git(ws.path, "symbolic-ref", "--short", "HEAD") == ws.branch
        assert (ws.path / "README.md").read_text() == "hello\n"
    assert len({ws.path for ws in made.values()}) == 4
    branches = git(repo, "branch", "--list", "tc/*", "--format=%(refname:short)").split()
    assert sorted(branches) == sorted(f"tc/{t}/{n}" for t, n in made)
    assert git(repo, "symbolic-ref", "--short", "HEAD") == "main"


def test_base_commit_is_the_head_at_prepare_time(repo: Path, workspaces: GitWorkspaces) -> None:
    first = workspaces.prepare(spec(repo), TaskId("t"), 1)
    newer = commit(repo, "later.txt")
    second = workspaces.prepare(spec(repo), TaskId("t"), 2)
    assert first.base_commit != newer and second.base_commit == newer
    assert (second.path / "later.txt").exists() and not (first.path / "later.txt").exists()


def test_prepare_again_reuses_the_same_attempts_worktree(
    repo: Path, workspaces: GitWorkspaces
) -> None:
    ws = workspaces.prepare(spec(repo), TaskId("t"), 1)
    (ws.path / "work-in-progress.txt").write_text("keep me\n")
    commit(repo, "moved-on.txt")  # the project's HEAD moves after the crash
    again = workspaces.prepare(spec(repo), TaskId("t"), 1)
    assert again == ws
    assert (again.path / "work-in-progress.txt").read_text() == "keep me\n"


def test_prepare_recreates_a_worktree_whose_directory_vanished(
    repo: Path, workspaces: GitWorkspaces
) -> None:
    ws = workspaces.prepare(spec(repo), TaskId("t"), 1)
    on_branch = commit(ws.path, "done.txt")
    shutil.rmtree(ws.path)
    again = workspaces.prepare(spec(repo), TaskId("t"), 1)
    assert again.path == ws.path and again.base_commit == ws.base_commit
    assert git(again.path, "rev-parse", "HEAD") == on_branch


def test_prepare_refuses_a_path_on_another_branch(
    repo: Path, tmp_path: Path, workspaces: GitWorkspaces
) -> None:
    path = tmp_path / "worktrees" / "proj" / "t-1"
    git(repo, "worktree", "add", "-q", "-b", "someone-else", str(path))
    with pytest.raises(WorkspaceError, match=r"exists on someone-else, expected branch tc/t/1"):
        workspaces.prepare(spec(repo), TaskId("t"), 1)


def test_prepare_refuses_a_plain_directory_in_the_way(
    repo: Path, tmp_path: Path, workspaces: GitWorkspaces
) -> None:
    path = tmp_path / "worktrees" / "proj" / "t-1"
    path.mkdir(parents=True)
    with pytest.raises(WorkspaceError, match="exists but is not a worktree of"):
        workspaces.prepare(spec(repo), TaskId("t"), 1)


def test_dirty_and_merged(repo: Path, workspaces: GitWorkspaces) -> None:
    project = spec(repo)
    ws = workspaces.prepare(project, TaskId("t"), 1)
    assert ws.branch is not None

    def status() -> tuple[bool, bool, bool]:
        assert ws.branch is not None
        st = workspaces.inspect(project, ws.path, ws.branch)
        assert (st.path, st.branch, st.project_id) == (ws.path, ws.branch, "proj")
        return st.exists, st.dirty, st.merged

    assert status() == (True, False, True)  # fresh: nothing to merge
    (ws.path / "new.txt").write_text("untracked\n")
    assert status() == (True, True, True)
    git(ws.path, "add", "new.txt")
    git(ws.path, "commit", "-q", "-m", "agent work")
    assert status() == (True, False, False)
    (ws.path / "README.md").write_text("changed\n")
    assert status() == (True, True, False)
    git(ws.path, "checkout", "-q", "--", "README.md")
    git(repo, "merge", "-q", "--no-edit", ws.branch)
    assert status() == (True, False, True)


def test_remove_deletes_worktree_and_branch(repo: Path, workspaces: GitWorkspaces) -> None:
    project = spec(repo)
    ws = workspaces.prepare(project, TaskId("t"), 1)
    assert ws.branch is not None
    commit(ws.path, "unmerged.txt")
    (ws.path / "dirty.txt").write_text("uncommitted\n")
    workspaces.remove(project, ws.path, ws.branch)
    assert not ws.path.exists()
    assert git(repo, "branch", "--list", ws.branch) == ""
    assert str(ws.path) not in git(repo, "worktree", "list", "--porcelain")
    assert workspaces.inspect(project, ws.path, ws.branch).exists is False
    workspaces.remove(project, ws.path, ws.branch)  # already gone: nothing to do


def test_non_git_project_works_in_its_own_directory(
    tmp_path: Path, workspaces: GitWorkspaces
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    ws = workspaces.prepare(spec(plain, is_git=False), TaskId("t"), 1)
    assert (ws.path, ws.branch, ws.base_commit) == (plain, None, None)
    assert not (tmp_path / "worktrees").exists()


def test_empty_repository_is_a_clear_error(tmp_path: Path, workspaces: GitWorkspaces) -> None:
    empty = new_repo(tmp_path / "empty", commits=False)
    with pytest.raises(WorkspaceError, match=r"project proj has no commits; commit once in "):
        workspaces.prepare(spec(empty), TaskId("t"), 1)


def test_git_failures_name_project_path_and_stderr(repo: Path, workspaces: GitWorkspaces) -> None:
    git(repo, "branch", "tc/t")  # a ref "tc/t" makes "tc/t/1" impossible to create
    with pytest.raises(WorkspaceError) as caught:
        workspaces.prepare(spec(repo), TaskId("t"), 1)
    message = caught.value.message
    assert message.startswith("project proj: 'git worktree add -b tc/t/1 ") and str(repo) in message
    assert "tc/t/1" in message and "fatal" in message.lower()


@pytest.mark.parametrize("task_id", ["../escape", "a/b", "..", "bad..ref", "x~1"])
def test_unsafe_task_ids_are_refused(repo: Path, workspaces: GitWorkspaces, task_id: str) -> None:
    with pytest.raises(WorkspaceError, match=r"task id"):
        workspaces.prepare(spec(repo), TaskId(task_id), 1)


def test_is_git_repo(repo: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    (repo / "sub").mkdir()
    plain.mkdir()
    assert is_git_repo(repo)
    assert is_git_repo(new_repo(tmp_path / "empty", commits=False))
    assert not is_git_repo(plain)
    assert not is_git_repo(repo / "sub")  # inside a repository, but not its top level
    assert not is_git_repo(tmp_path / "missing")
