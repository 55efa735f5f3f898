"""The HTTP entry point: dashboard pages, the JSON API, ``/metrics`` and health checks.

It sits beside ``cli`` (both present the same folded state; the JSON here is what
``tc … --json`` prints) and never decides anything: reads come from the state the loop
folded, writes go through the same request path as the CLI.
"""
