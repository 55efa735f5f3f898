"""A seeded simulated agent for the demo, tests and benchmarks.

Everything it produces is labelled simulated: its log lines, its session ids
(``sim-…``) and the ``simulated`` flag of its result, which the journal keeps.
Each attempt draws from its own generator seeded by (seed, attempt id), so an
attempt behaves the same whatever else runs beside it.
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trafficcontrol.domain.model import SIMULATED_LABEL, Outcome, SimSettings, Usage
from trafficcontrol.ports import AgentRequest, AgentResult, AttemptReporter, Clock

# Simulated prices in USD per million tokens (input, output); labelled simulated.
_PRICES = {"opus": (15.0, 75.0), "sonnet": (3.0, 15.0), "haiku": (0.8, 4.0)}
# Bigger models write more per turn in the simulation.
_OUTPUT_SHARE = {"opus": 0.3, "sonnet": 0.2, "haiku": 0.15}
_TIER = {"haiku": 0, "sonnet": 1, "opus": 2}


def model_family(model: str | None) -> str:
    name = (model or "sonnet").lower()
    for family in _PRICES:
        if family in name:
            return family
    return "sonnet"


@dataclass(frozen=True, slots=True)
class SimDraw:
    """Everything random about one simulated attempt, drawn up front."""

    session_id: str
    duration_s: float
    fails: bool
    family: str
    usage: Usage


def simulated_usage(family: str, tokens_in: int) -> Usage:
    tokens_out = int(tokens_in * _OUTPUT_SHARE[family])
    price_in, price_out = _PRICES[family]
    return Usage(
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        cache_read_tokens=tokens_in * 2,
        cost_usd=(tokens_in * price_in + tokens_out * price_out) / 1e6,
    )


def draw_attempt(
    seed: int, sim: SimSettings, attempt_id: str, attempt_no: int, model: str | None
) -> SimDraw:
    """The attempt's behaviour, from its own generator seeded by (seed, attempt id): the
    same for ``tc run`` and for the simulator in virtual time."""
    rng = random.Random(zlib.crc32(f"{seed}:{sim.seed}:{attempt_id}".encode()))
    session_id = f"sim-{rng.getrandbits(64):016x}"
    duration = max(0.0, sim.duration_s * rng.uniform(1 - sim.jitter, 1 + sim.jitter))
    family = model_family(model)
    # Draw the roll only when it decides (the draw order keeps old seeds' attempts as they were).
    fails = attempt_no <= sim.fail_attempts
    if not fails:
        roll = rng.random()
        fails = roll < sim.failure_rate
        if sim.needs is not None and _TIER[family] < sim.needs.tier:
            fails = roll < max(sim.failure_rate, sim.underpowered_failure_rate)
    tokens_in = int(sim.tokens_in * rng.uniform(0.5, 1.5))
    return SimDraw(session_id, duration, fails, family, simulated_usage(family, tokens_in))


def sample_output(schema: dict[str, Any], rng: random.Random, reject_rate: float) -> Any:
    """A value valid under the simple schemas workflows use (objects, arrays, strings,
    enums, numbers, booleans); a boolean is false with probability ``reject_rate``."""
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        props: dict[str, Any] = schema.get("properties", {})
        return {name: sample_output(sub, rng, reject_rate) for name, sub in props.items()}
    if kind == "array":
        return [sample_output(schema.get("items", {"type": "string"}), rng, reject_rate)]
    if kind == "boolean":
        return rng.random() >= reject_rate
    if kind in ("integer", "number"):
        return 1
    return f"{SIMULATED_LABEL} text"


class SimBackend:
    name = "sim"

    def __init__(self, *, clock: Clock, seed: int = 0, write_logs: bool = True) -> None:
        self._clock = clock
        self._seed = seed
        self._write_logs = write_logs

    def check(self) -> None:
        """Simulated agents need nothing."""

    async def run(self, request: AgentRequest, reporter: AttemptReporter) -> AgentResult:
        sim = request.settings.sim or SimSettings()
        draw = draw_attempt(self._seed, sim, request.attempt_id, request.attempt_no, request.model)
        session_id, duration, fails, family, usage = (
            draw.session_id,
            draw.duration_s,
            draw.fails,
            draw.family,
            draw.usage,
        )
        reporter.session_started(session_id)
        if self._write_logs:
            self._log(request.log_path, f"start {request.title!r} model={family}")
        if duration > 0:
            await self._clock.sleep(duration)
        outcome = Outcome.FAILED if fails else Outcome.SUCCEEDED
        if self._write_logs:
            self._log(request.log_path, f"end {outcome} after {duration:.2f}s")
        text = None
        if request.output_schema is not None and not fails:
            rng = random.Random(zlib.crc32(f"out:{request.attempt_id}".encode()))
            value = sample_output(request.output_schema, rng, sim.reject_rate)
            text = f"{SIMULATED_LABEL} done.\n```json\n{json.dumps(value)}\n```"
        return AgentResult(
            outcome=outcome,
            exit_code=1 if fails else 0,
            error="simulated failure" if fails else None,
            usage=usage,
            session_id=session_id,
            simulated=True,
            text=text,
        )

    @staticmethod
    def _log(path: Path, line: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as log:
            log.write(f"{SIMULATED_LABEL} {line}\n")
