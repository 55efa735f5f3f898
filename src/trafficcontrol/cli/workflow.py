"""``tc workflow list`` and ``tc workflow show NAME|TASK [--mermaid]``."""

from __future__ import annotations

from typing import Annotated

import msgspec
import typer
from rich.table import Table
from rich.text import Text

from trafficcontrol.bootstrap import App
from trafficcontrol.cli.app import HomeOption, JsonOption, emit_json, fail, make_app, out
from trafficcontrol.domain.model import TaskId
from trafficcontrol.domain.workflows import WorkflowRun, WorkflowSpec, mermaid
from trafficcontrol.errors import TrafficControlError

workflow_app = typer.Typer(help="Workflow templates: list them, show one or a task's run.")


def _templates(app_: App) -> dict[str, WorkflowSpec]:
    try:
        return app_.workflows()
    except TrafficControlError as exc:
        fail(exc.message)


@workflow_app.command("list")
def list_workflows(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Bundled workflows and the user's (<home>/workflows/*.toml)."""
    workflows = _templates(make_app(home))
    if as_json:
        emit_json([msgspec.to_builtins(w) for w in workflows.values()])
        return
    table = Table()
    for column in ("workflow", "steps", "description"):
        table.add_column(column)
    for spec in workflows.values():
        table.add_row(spec.name, " -> ".join(s.name for s in spec.steps), spec.description)
    out.print(table)


def _render(spec: WorkflowSpec, run: WorkflowRun | None) -> Text:
    text = Text()
    text.append(f"{spec.name}", style="bold")
    if spec.description:
        text.append(f" — {spec.description}")
    text.append("\n")
    for step in spec.steps:
        current = run is not None and run.step == step.name
        marker = "▶ " if current else "  "
        style = "bold reverse" if current else ""
        text.append(f"{marker}{step.name}", style=style)
        text.append(f"  [{step.tier}]")
        if step.timeout_s:
            text.append(f" timeout {step.timeout_s:g}s")
        if step.tools is not None:
            text.append(f" tools {', '.join(step.tools)}")
        text.append("\n")
        if step.inputs:
            text.append(f"      receives {', '.join(step.inputs)}\n")
        if step.handoff:
            text.append(f"      hands off {', '.join(step.handoff)}\n")
        text.append(f"      ok -> {step.next or 'done'}\n")
        if step.on_fail is not None:
            loops = run.loops.get(step.name, 0) if run is not None else 0
            text.append(
                f"      {step.pass_field} = false -> {step.on_fail}"
                f" (at most {step.max_loops}x; taken {loops}x)\n"
            )
    rule = spec.inherit
    text.append(
        f"children inherit: {', '.join(rule.fields) or 'no fields'};"
        f" conventions {', '.join(rule.conventions) or 'none'};"
        f" budget {rule.budget_tokens} tokens\n"
    )
    if run is not None and run.history:
        text.append(f"done so far: {' | '.join(run.history)}\n")
    return text


@workflow_app.command("show")
def show_workflow(
    name: Annotated[str, typer.Argument(help="A workflow name, or a task id.")],
    as_mermaid: Annotated[bool, typer.Option("--mermaid", help="A Mermaid flowchart.")] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """The steps and transitions; for a task, its current step highlighted."""
    app_ = make_app(home)
    run: WorkflowRun | None = None
    spec: WorkflowSpec | None = None
    if app_.has_state():
        state = app_.read_state()
        record = state.tasks.get(TaskId(name))
        if record is not None:
            if record.workflow_run is None:
                fail(f"task {name!r} runs no workflow")
            run = record.workflow_run
            spec = state.workflows[run.workflow]
    if spec is None:
        workflows = _templates(app_)
        spec = workflows.get(name)
        if spec is None:
            fail(f"no workflow or task {name!r} (workflows: {', '.join(sorted(workflows))})")
    if as_json:
        emit_json(
            {
                "workflow": msgspec.to_builtins(spec),
                "run": None if run is None else msgspec.to_builtins(run),
                "mermaid": mermaid(spec, run.step if run else None),
            }
        )
        return
    if as_mermaid:
        print(mermaid(spec, run.step if run else None))
        return
    out.print(_render(spec, run))


def register(app: typer.Typer) -> None:
    app.add_typer(workflow_app, name="workflow")
