"""Pytest fixtures for the scripted provider.

Use them with ``from tests.provider.fixtures import provider, claude_env  # noqa: F401``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.provider.server import TEST_API_KEY, ProviderServer


@pytest.fixture
def provider() -> Iterator[ProviderServer]:
    """A running :class:`ProviderServer`; script it with ``provider.script(...)``."""
    with ProviderServer() as server:
        yield server


def offline_claude_env(provider_url: str, root: Path) -> dict[str, str]:
    """Environment overrides that run the real Claude Code CLI offline against the
    provider at ``provider_url``, its config and home under ``root`` (created).

    Laid over the caller's environment (the SDK does that), so every value that could
    send the CLI elsewhere is set here, some to "" which the CLI treats as unset
    (verified): a developer's own token must not win over the test key.
    """
    config = root / "claude-config"
    home = root / "home"
    config.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    return {
        "ANTHROPIC_BASE_URL": provider_url,
        "ANTHROPIC_API_KEY": TEST_API_KEY,
        "ANTHROPIC_AUTH_TOKEN": "",
        "CLAUDE_CODE_OAUTH_TOKEN": "",
        "CLAUDE_CODE_USE_BEDROCK": "",
        "CLAUDE_CODE_USE_VERTEX": "",
        "ANTHROPIC_MODEL": "",
        # No HEAD /api/hello probe, no telemetry or update checks to the public hosts.
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        # Transcripts, settings and .claude.json go here, not to the developer's ~/.claude.
        "CLAUDE_CONFIG_DIR": str(config),
        "HOME": str(home),
    }


@pytest.fixture
def claude_env(provider: ProviderServer, tmp_path: Path) -> dict[str, str]:
    """``offline_claude_env`` for ``provider``, under the test's ``tmp_path``."""
    return offline_claude_env(provider.url, tmp_path)
