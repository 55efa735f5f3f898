"""Git worktrees as attempt workspaces, through the real ``git`` CLI.

Each attempt of a task in a git project works in its own worktree,
``<root>/<project>/<task>-<n>``, on its own branch ``tc/<task>/<n>`` forked from
the project's HEAD, so parallel agents never share a checkout and every attempt's
work stays reviewable (and mergeable) after it ends.

Calls block (the runtime runs them in a thread). No call commits, so no git
identity is needed. Every git failure becomes a ``WorkspaceError`` naming the
project, the path and git's own message.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from trafficcontrol.domain.model import ProjectSpec, TaskId
from trafficcontrol.errors import WorkspaceError
from trafficcontrol.ports import Workspace, WorkspaceStatus


@dataclass(frozen=True, slots=True)
class _Git:
    """Runs git in one directory on behalf of one project (for error messages)."""

    project: ProjectSpec
    cwd: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                ["git", "-C", str(self.cwd), *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
            )
        except FileNotFoundError as exc:
            raise WorkspaceError("git is not installed (no 'git' on PATH)") from exc

    def out(self, *args: str) -> str:
        """stdout of a command that must succeed."""
        done = self.run(*args)
        if done.returncode != 0:
            raise self.error(args, done.stderr)
        return done.stdout.strip()

    def ok(self, *args: str) -> bool:
        """Whether a yes/no command (exit 0 or 1) said yes; other codes are errors."""
        done = self.run(*args)
        if done.returncode not in (0, 1):
            raise self.error(args, done.stderr)
        return done.returncode == 0

    def error(self, args: tuple[str, ...], stderr: str) -> WorkspaceError:
        return WorkspaceError(
            f"project {self.project.id}: 'git {' '.join(args)}' failed in {self.cwd}: "
            f"{stderr.strip() or 'no message'}"
        )


def is_git_repo(path: Path) -> bool:
    """Whether ``path`` is the top level of a git work tree (a subdirectory is not:
    its worktree would hold the whole repository, not the project)."""
    if not path.is_dir():
        return False
    try:
        done = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--show-toplevel"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return False
    return done.returncode == 0 and Path(done.stdout.strip()).resolve() == path.resolve()


def branch_name(task_id: TaskId, attempt_no: int) -> str:
    return f"tc/{task_id}/{attempt_no}"


class GitWorkspaces:
    """The ``Workspaces`` port on git worktrees under ``root``."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def worktree_path(self, project: ProjectSpec, task_id: TaskId, attempt_no: int) -> Path:
        return self._root / project.id / f"{task_id}-{attempt_no}"

    def prepare(self, project: ProjectSpec, task_id: TaskId, attempt_no: int) -> Workspace:
        repo_dir = Path(project.path)
        if not project.is_git:
            return Workspace(path=repo_dir)
        repo = _Git(project, repo_dir)
        _check_repo(repo)
        path = self.worktree_path(project, task_id, attempt_no)
        branch = branch_name(task_id, attempt_no)
        _check_names(repo, project, task_id, branch)
        if path.exists():
            return _reuse(repo, path, branch)
        # A crash may have left the branch without its worktree (or a stale entry).
        repo.out("worktree", "prune")
        if _branch_exists(repo, branch):
            path.parent.mkdir(parents=True, exist_ok=True)
            repo.out("worktree", "add", str(path), branch)
            return Workspace(path=path, branch=branch, base_commit=_fork_point(repo, branch))
        base = repo.out("rev-parse", "--verify", "HEAD^{commit}")
        path.parent.mkdir(parents=True, exist_ok=True)
        # From the sha, not "HEAD": the recorded base is what was checked out
        # even if the project's HEAD moves meanwhile.
        repo.out("worktree", "add", "-b", branch, str(path), base)
        return Workspace(path=path, branch=branch, base_commit=base)

    def inspect(self, project: ProjectSpec, path: Path, branch: str) -> WorkspaceStatus:
        repo = _Git(project, Path(project.path))
        exists = path.is_dir() and _is_worktree_of(repo, path)
        dirty = exists and bool(
            _Git(project, path).out("status", "--porcelain", "--untracked-files=normal")
        )
        # A branch that is gone has nothing left to merge.
        merged = not _branch_exists(repo, branch) or repo.ok(
            "merge-base", "--is-ancestor", f"refs/heads/{branch}", "HEAD"
        )
        return WorkspaceStatus(
            path=path,
            branch=branch,
            project_id=project.id,
            exists=exists,
            dirty=dirty,
            merged=merged,
        )

    def remove(self, project: ProjectSpec, path: Path, branch: str) -> None:
        repo = _Git(project, Path(project.path))
        if path.exists():
            repo.out("worktree", "remove", "--force", str(path))
        repo.out("worktree", "prune")
        if _branch_exists(repo, branch):
            repo.out("branch", "-D", branch)


def _check_repo(repo: _Git) -> None:
    if not is_git_repo(repo.cwd):
        raise WorkspaceError(
            f"project {repo.project.id}: {repo.cwd} is not the top level of a git work tree"
        )
    if not repo.ok("rev-parse", "--verify", "--quiet", "HEAD^{commit}"):
        raise WorkspaceError(
            f"project {repo.project.id} has no commits; commit once in {repo.cwd} "
            "(worktrees fork from HEAD) or mark the project as not git"
        )


def _check_names(repo: _Git, project: ProjectSpec, task_id: TaskId, branch: str) -> None:
    # Ids become a path component and a ref name: neither may escape or be invalid.
    for what, value in (("project id", project.id), ("task id", task_id)):
        if not value or "/" in value or value in (".", ".."):
            raise WorkspaceError(f"project {project.id}: {what} {value!r} is not a safe path name")
    if not repo.ok("check-ref-format", f"refs/heads/{branch}"):
        raise WorkspaceError(
            f"project {project.id}: task id {task_id!r} does not make a valid branch {branch!r}"
        )


def _reuse(repo: _Git, path: Path, branch: str) -> Workspace:
    """The worktree of an earlier, interrupted try of the same attempt, if it is one."""
    if not _is_worktree_of(repo, path):
        raise WorkspaceError(
            f"project {repo.project.id}: {path} exists but is not a worktree of {repo.cwd}"
        )
    current = _Git(repo.project, path).run("symbolic-ref", "--quiet", "--short", "HEAD")
    if current.returncode != 0 or current.stdout.strip() != branch:
        found = current.stdout.strip() or "a detached HEAD"
        raise WorkspaceError(
            f"project {repo.project.id}: {path} exists on {found}, expected branch {branch}"
        )
    return Workspace(path=path, branch=branch, base_commit=_fork_point(repo, branch))


def _is_worktree_of(repo: _Git, path: Path) -> bool:
    listing = repo.out("worktree", "list", "--porcelain")
    wanted = path.resolve()
    return any(
        Path(line.removeprefix("worktree ")).resolve() == wanted
        for line in listing.splitlines()
        if line.startswith("worktree ")
    )


def _branch_exists(repo: _Git, branch: str) -> bool:
    return repo.ok("show-ref", "--verify", "--quiet", f"refs/heads/{branch}")


def _fork_point(repo: _Git, branch: str) -> str:
    """Base of a branch created earlier: where it left the project's history."""
    return repo.out("merge-base", "HEAD", f"refs/heads/{branch}")
