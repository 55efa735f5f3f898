"""Workflow templates from TOML: the bundled ones, then the user's (``<home>/workflows``).

A user file with a bundled name replaces the bundled workflow. Every problem (TOML
syntax, unknown fields, a broken step reference) is reported with the file it is in,
and a file with problems is refused as a whole.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import msgspec
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from trafficcontrol.domain.workflows import WorkflowSpec, validate
from trafficcontrol.errors import ConfigError

BUNDLED_PACKAGE = "trafficcontrol.workflows"


def parse_workflow(text: str, where: str) -> WorkflowSpec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    try:
        spec = msgspec.convert(data, WorkflowSpec)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    problems = validate(spec)
    for step in spec.steps:
        try:
            Draft202012Validator.check_schema(step.output_schema)
        except SchemaError as exc:
            problems.append(
                f"step {step.name!r}: output_schema is not a JSON Schema: {exc.message}"
            )
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
    return spec


def bundled_workflows() -> dict[str, WorkflowSpec]:
    out: dict[str, WorkflowSpec] = {}
    for entry in sorted(resources.files(BUNDLED_PACKAGE).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            spec = parse_workflow(entry.read_text(encoding="utf-8"), f"bundled {entry.name}")
            out[spec.name] = spec
    return out


def load_workflows(user_dir: Path | None) -> dict[str, WorkflowSpec]:
    """Bundled workflows, overridden and extended by ``user_dir/*.toml``."""
    workflows = bundled_workflows()
    if user_dir is not None and user_dir.is_dir():
        for path in sorted(user_dir.glob("*.toml")):
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"{path}: cannot read: {exc}") from exc
            spec = parse_workflow(text, str(path))
            workflows[spec.name] = spec
    return workflows
