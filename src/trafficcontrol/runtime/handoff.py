"""Handoffs at the edge: a step's structured output out of the agent's last answer.

The agent is asked to end with one JSON object matching its step's schema
(``domain.workflows.first_prompt``). Agents wrap JSON in prose or code fences, so the
*last* JSON object in the text is taken: a fenced ```json block if there is one, else
the last balanced ``{...}`` that parses. It is validated with ``jsonschema`` (Draft
2020-12); the error names the failing path, so the re-ask can say exactly what to fix.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from trafficcontrol.domain.workflows import StepOutcome

_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL)
_MAX_ERRORS = 3


def _objects(text: str) -> list[str]:
    """Candidate JSON object texts, last first: fenced blocks, then balanced braces."""
    fenced = [m.group(1).strip() for m in _FENCE.finditer(text)]
    candidates = list(reversed(fenced))
    depth, start = 0, -1
    spans: list[str] = []
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"' and depth > 0:
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    candidates.extend(reversed(spans))
    return candidates


def extract_json(text: str) -> dict[str, Any] | None:
    for candidate in _objects(text):
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def check_output(text: str | None, schema: dict[str, Any]) -> StepOutcome:
    """The step's output if ``text`` ends with a JSON object valid under ``schema``."""
    if not text or not text.strip():
        return StepOutcome(error="the answer was empty; end with one JSON object")
    value = extract_json(text)
    if value is None:
        return StepOutcome(error="no JSON object found in the answer; end with one JSON object")
    if not schema:
        return StepOutcome(output=value)
    try:
        validator = Draft202012Validator(schema)
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    except SchemaError as exc:  # validated at load time; a bad schema must not crash a run
        return StepOutcome(error=f"the step's output_schema is invalid: {exc.message}")
    if not errors:
        return StepOutcome(output=value)
    described = []
    for error in errors[:_MAX_ERRORS]:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        described.append(f"{where}: {error.message}")
    more = f" (and {len(errors) - _MAX_ERRORS} more)" if len(errors) > _MAX_ERRORS else ""
    return StepOutcome(error="; ".join(described) + more)
