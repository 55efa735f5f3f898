"""Shared pytest configuration: the scripted Anthropic-protocol provider's fixtures."""

pytest_plugins = ["tests.provider.fixtures", "tests.pg"]
