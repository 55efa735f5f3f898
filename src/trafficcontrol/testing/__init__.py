"""Fakes of the ports and conformance suites, for our tests and for users' own."""
