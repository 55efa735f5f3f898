"""Workflows: declarative step machines, structured handoffs, bounded loops. Pure.

Design note. A workflow (TOML, see ``trafficcontrol/workflows/``) is a list of steps.
Each step is one agent attempt with a role prompt, a model tier, tools, a timeout and
an **output schema** (JSON Schema). A step declares which of its output fields it
hands on (``handoff``) and which earlier fields it needs (``inputs``, as
``"step.field"``). The next step's first prompt is built from its role, the task and
exactly those fields (``first_prompt``) — never the previous transcript: a step starts
with a small, fresh context.

Transitions: ``next`` after a valid output; a step with ``pass_field`` whose value is
false goes to ``on_fail`` instead (verify -> implement), at most ``max_loops`` times,
then the task fails as needing a human. Invalid output is asked for once more with the
validation error; a second invalid output fails the step (class ``task``).

The run state (``WorkflowRun``: current step, loop counts, handoff fields, re-asks) is
part of the task record and changes only by folding journaled events, like everything
else. Validation of an output against its JSON Schema happens in the shell (a JSON
Schema library is I/O-free but not ours to import here); the fold receives the valid
fields or the error.

``inherit`` (per workflow) says what a child (a subtask, a delegated analysis) gets
from its parent: the task spec, the listed parent fields, the project conventions
files, all within ``budget_tokens``.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from trafficcontrol.domain.capacity.families import ModelFamily

ROUTE = "route"
"""A step tier that lets routing choose (difficulty, capacity) instead of the workflow."""


class StepSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    role: str
    """The role prompt: what this step is for and how to work."""
    tier: str = ROUTE
    """opus | sonnet | haiku | route."""
    tools: list[str] | None = None
    """Tools the agent may use in this step (None: the project's settings)."""
    timeout_s: float | None = None
    output_schema: dict[str, Any] = msgspec.field(default_factory=dict)
    """JSON Schema of the step's output (an object)."""
    handoff: list[str] = msgspec.field(default_factory=list)
    """Output fields the following steps may receive."""
    inputs: list[str] = msgspec.field(default_factory=list)
    """Fields this step receives, as "step.field"."""
    next: str | None = None
    """The step after a valid (and passing) output; None: the workflow is done."""
    pass_field: str | None = None
    """A boolean output field; false sends the run to ``on_fail``."""
    on_fail: str | None = None
    max_loops: int = 2
    """How often ``on_fail`` may be taken before the task needs a human."""


class InheritRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    fields: list[str] = msgspec.field(default_factory=list)
    """Parent fields ("step.field") a child receives."""
    conventions: list[str] = msgspec.field(default_factory=lambda: ["CLAUDE.md"])
    """Project files with conventions every child gets (read by the shell)."""
    budget_tokens: int = 4000
    """Most tokens the inherited context may take; fields are cut to fit, in order."""


class WorkflowSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    description: str = ""
    steps: list[StepSpec]
    inherit: InheritRule = msgspec.field(default_factory=InheritRule)

    @property
    def first(self) -> StepSpec:
        return self.steps[0]

    def step(self, name: str) -> StepSpec:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)


class WorkflowError(ValueError):
    """A workflow definition that cannot run; the message names the workflow and step."""


def validate(spec: WorkflowSpec) -> list[str]:
    """Every problem of ``spec`` (empty: it can run)."""
    problems: list[str] = []
    where = f"workflow {spec.name!r}"
    if not spec.steps:
        return [f"{where}: has no steps"]
    names = [s.name for s in spec.steps]
    seen: set[str] = set()
    for step in spec.steps:
        at = f"{where}, step {step.name!r}"
        if step.name in seen:
            problems.append(f"{at}: duplicate step name")
        seen.add(step.name)
        if step.tier not in (ROUTE, *(f.value for f in ModelFamily)):
            problems.append(f"{at}: tier {step.tier!r} is not opus, sonnet, haiku or route")
        for target, label in ((step.next, "next"), (step.on_fail, "on_fail")):
            if target is not None and target not in names:
                problems.append(f"{at}: {label} names unknown step {target!r}")
        if (step.pass_field is None) != (step.on_fail is None):
            problems.append(f"{at}: pass_field and on_fail go together")
        if step.max_loops < 0:
            problems.append(f"{at}: max_loops must be >= 0")
        schema = step.output_schema
        if schema and schema.get("type") not in (None, "object"):
            problems.append(f"{at}: output_schema must describe an object")
        properties = schema.get("properties", {}) if schema else {}
        for field in [*step.handoff, *([step.pass_field] if step.pass_field else [])]:
            if properties and field not in properties:
                problems.append(f"{at}: field {field!r} is not in its output_schema")
        for wanted in step.inputs:
            source, _, field = wanted.partition(".")
            if not field:
                problems.append(f"{at}: input {wanted!r} is not step.field")
                continue
            if source not in names:
                problems.append(f"{at}: input {wanted!r} names unknown step {source!r}")
                continue
            if field not in spec.step(source).handoff:
                problems.append(f"{at}: input {wanted!r}: {source} does not hand off {field!r}")
    for wanted in spec.inherit.fields:
        source, _, field = wanted.partition(".")
        if source not in names or field not in spec.step(source).handoff:
            problems.append(f"{where}: inherit field {wanted!r} is not a handoff field")
    # Without on_fail edges the steps must not cycle: a loop must be bounded.
    position = {n: i for i, n in enumerate(names)}
    for step in spec.steps:
        if step.next in position and position[step.next] <= position[step.name]:
            problems.append(f"{where}, step {step.name!r}: next must go forward (use on_fail)")
    return problems


class StepOutcome(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the shell made of a step attempt's final answer."""

    output: dict[str, Any] | None = None
    """The validated output (fields by name)."""
    error: str | None = None
    """Why the answer is not a valid output (no JSON, schema violation)."""


class WorkflowRun(msgspec.Struct, kw_only=True):
    """A task's progress through its workflow (part of the task record)."""

    workflow: str
    step: str
    loops: dict[str, int] = msgspec.field(default_factory=dict)
    """How often each step's on_fail was taken."""
    handoffs: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    """step -> the fields it handed off (the newest valid output)."""
    reask: str | None = None
    """The validation error to show when the current step is asked once more."""
    history: list[str] = msgspec.field(default_factory=list)
    """Steps in the order they completed (with "-> on_fail" marks)."""


class Advance(msgspec.Struct, frozen=True, kw_only=True):
    """The fold's verdict on a finished step attempt."""

    kind: str
    """next | done | reask | invalid | loop | exhausted"""
    step: str | None = None
    detail: str = ""


def start(spec: WorkflowSpec) -> WorkflowRun:
    return WorkflowRun(workflow=spec.name, step=spec.first.name)


def advance(spec: WorkflowSpec, run: WorkflowRun, outcome: StepOutcome) -> Advance:
    """Move ``run`` (in place) after its current step's attempt succeeded with ``outcome``."""
    step = spec.step(run.step)
    if outcome.output is None:
        error = outcome.error or "no output"
        if run.reask is None:
            run.reask = error
            return Advance(kind="reask", step=step.name, detail=error)
        run.reask = None
        return Advance(kind="invalid", step=step.name, detail=error)
    run.reask = None
    output = outcome.output
    run.handoffs[step.name] = {f: output[f] for f in step.handoff if f in output}
    if step.pass_field is not None and output.get(step.pass_field) is False:
        assert step.on_fail is not None
        loops = run.loops.get(step.name, 0) + 1
        run.loops[step.name] = loops
        if loops > step.max_loops:
            run.history.append(f"{step.name} (failed {loops}x)")
            return Advance(
                kind="exhausted",
                step=step.name,
                detail=f"{step.name} failed {loops} times; a human should look",
            )
        run.history.append(f"{step.name} -> {step.on_fail}")
        run.step = step.on_fail
        return Advance(kind="loop", step=step.on_fail, detail=f"{step.name} did not pass")
    run.history.append(step.name)
    if step.next is None:
        return Advance(kind="done", step=None)
    run.step = step.next
    return Advance(kind="next", step=step.next)


def step_inputs(run: WorkflowRun, step: StepSpec) -> dict[str, Any]:
    """The fields ``step`` receives (only those an earlier step handed off)."""
    out: dict[str, Any] = {}
    for wanted in step.inputs:
        source, _, field = wanted.partition(".")
        fields = run.handoffs.get(source)
        if fields is not None and field in fields:
            out[wanted] = fields[field]
    return out


def first_prompt(
    spec: WorkflowSpec, run: WorkflowRun, title: str, prompt: str, step: StepSpec
) -> str:
    """The step's first prompt: role, task, declared handoff fields, output contract."""
    parts = [
        step.role.strip(),
        f"# Task: {title}\n{prompt.strip()}",
    ]
    inputs = step_inputs(run, step)
    if inputs:
        parts.append("# Handoff\n" + json.dumps(inputs, indent=2, sort_keys=True))
    if step.output_schema:
        parts.append(
            "# Output\nEnd with one JSON object (and nothing after it) matching this schema:\n"
            + json.dumps(step.output_schema, sort_keys=True)
        )
    if run.reask is not None:
        parts.append(f"# Your previous output was not valid\n{run.reask}\nAnswer again.")
    return "\n\n".join(parts)


def child_context(
    spec: WorkflowSpec, run: WorkflowRun, conventions: dict[str, str], estimate: Any
) -> dict[str, Any]:
    """What a child of this task inherits under ``spec.inherit``, within its budget.

    ``conventions``: file name -> text (read by the shell); ``estimate``: text -> tokens.
    Items are added in rule order (fields, then conventions) while they fit."""
    rule = spec.inherit
    budget = rule.budget_tokens
    out: dict[str, Any] = {}
    items: list[tuple[str, Any]] = []
    for wanted in rule.fields:
        source, _, field = wanted.partition(".")
        fields = run.handoffs.get(source, {})
        if field in fields:
            items.append((wanted, fields[field]))
    items.extend(
        (f"conventions:{name}", conventions[name])
        for name in rule.conventions
        if name in conventions
    )
    for key, value in items:
        cost = int(estimate(value if isinstance(value, str) else json.dumps(value)))
        if cost > budget:
            continue
        out[key] = value
        budget -= cost
    return out


def mermaid(spec: WorkflowSpec, current: str | None = None) -> str:
    """A Mermaid flowchart of the steps and transitions (the current step highlighted)."""
    lines = ["flowchart LR"]
    for step in spec.steps:
        lines.append(f'    {step.name}["{step.name}<br/>{step.tier}"]')
    for step in spec.steps:
        if step.next is not None:
            lines.append(f"    {step.name} -->|ok| {step.next}")
        else:
            lines.append(f"    {step.name} -->|ok| done((done))")
        if step.on_fail is not None:
            label = f"{step.pass_field}=false, max {step.max_loops}"
            lines.append(f"    {step.name} -.->|{label}| {step.on_fail}")
    if current is not None:
        lines.append(f"    style {current} stroke-width:4px")
    return "\n".join(lines)
