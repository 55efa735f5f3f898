"""``python -m trafficcontrol.cli.supervise SPEC``: the supervisor of one attempt
(``--launcher``: the warm process that forks them, ``adapters.agents.launcher``).

The composition root of the supervisor process (``adapters.agents.shim``): it reads
the spec the orchestrator wrote, builds the one backend the attempt runs on from its
own environment, and runs it. It imports only what that needs, so it starts fast:
no Typer, no store, no runtime. Exit status 0 once the exit record is written, 2 when
the spec cannot be used (the reason goes to stderr, which is the attempt's
``.supervisor`` file).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from trafficcontrol.adapters.agents.launcher import LAUNCHER_FLAG, serve
from trafficcontrol.adapters.agents.shim import supervise
from trafficcontrol.adapters.agents.supervision import Spec, read_spec
from trafficcontrol.errors import TrafficControlError
from trafficcontrol.ports import AgentBackend


def backend_for(spec: Spec, environ: Mapping[str, str]) -> AgentBackend:
    """The backend ``spec`` names, configured as the orchestrator's would be."""
    if spec.backend == "command":
        from trafficcontrol.adapters.agents.command import CommandBackend

        return CommandBackend(environ=environ, grace_s=spec.grace_s)
    if spec.backend == "claude":
        from trafficcontrol.adapters.agents.claude_sdk import ClaudeBackend

        return ClaudeBackend(environ=environ, cli_path=spec.cli_path, grace_s=spec.grace_s)
    raise TrafficControlError(
        f"backend {spec.backend!r} cannot run under a supervisor (command, claude can)"
    )


def run_spec(spec_path: Path, environ: Mapping[str, str] | None = None) -> int:
    """Supervise the attempt ``spec_path`` describes: 0 once its exit record is written,
    2 when the spec cannot be used. ``environ`` (a supervisor forked by the launcher)
    becomes this process's environment first, as an exec would have made it."""
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    try:
        spec = read_spec(spec_path)
        backend = backend_for(spec, os.environ)
    except TrafficControlError as e:
        print(f"supervisor: {e.message}", file=sys.stderr)
        return 2
    asyncio.run(supervise(spec, backend))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == [LAUNCHER_FLAG]:  # the warm launcher forking supervisors (launcher)
        return serve(run_spec)
    if len(args) != 1:
        print(
            "usage: python -m trafficcontrol.cli.supervise SPEC | --launcher",
            file=sys.stderr,
        )
        return 2
    return run_spec(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
