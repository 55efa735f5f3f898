"""Workspaces for attempts: git worktrees, or the project directory itself."""
