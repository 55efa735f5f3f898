"""A local server speaking the Anthropic Messages API, for driving real clients in tests."""
