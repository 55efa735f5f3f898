"""Adapters: the edge where drivers, processes and files meet our ports."""
