"""Performance regression gate: a small, fast set of the orchestrator's hot operations,
each timed as a ratio to a floor measured in the same run, compared with a committed
baseline.

Run from the repository root::

    ./scripts/bench --compare bench/baseline.json        # exit 1 on a regression
    ./scripts/bench gate --save bench/baseline.json      # record a new baseline
    ./scripts/bench gate --json

Why ratios: absolute times differ between machines and between a quiet and a busy
one; an operation's time divided by a floor of similar work done by plain Python in
the same process, moments apart, mostly does not. Each figure is the minimum of
``--rounds`` timings (the least disturbed one), ours and the floor's alike. A figure
regresses when its ratio grows by more than ``--threshold`` (default 15%) over the
baseline's. ``TC_GATE_SLOWDOWN=NAME:FACTOR`` makes one operation that much slower
(a busy wait after it), to show the gate catches it. A regression must show in
``--confirm`` measurements in a row (default 2), so a moment of load elsewhere on the
machine does not fail a build.

Operations (all on the same seeded 2,000-task DAG, folded once):

- ``decide``: one ``decide`` over the whole state; floor: one pass over its tasks
  reading each task's state and dependencies.
- ``fold``: ``apply`` of a finished run's journal into a fresh state; floor: a
  counter and a field count per event of it, in plain Python.
- ``snapshot``: ``snapshot.encode`` of the state; floor: msgpack of the tasks' specs.
- ``profile``: ``domain.profile`` of a finished run's journal; floor: ``fold`` of it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from bench.scheduling import dag_tasks, project_spec
from trafficcontrol.domain import snapshot
from trafficcontrol.domain.decide import SchedulerConfig, decide
from trafficcontrol.domain.events import AnyEvent, BacklogSubmitted
from trafficcontrol.domain.profile import profile
from trafficcontrol.domain.requests import SubmitRequest
from trafficcontrol.domain.state import State, apply
from trafficcontrol.runtime.simulator import Simulator

THRESHOLD = 0.15
TASKS = 2000


def _slowdown() -> tuple[str, float]:
    raw = os.environ.get("TC_GATE_SLOWDOWN", "")
    name, _, factor = raw.partition(":")
    try:
        return name, float(factor) if name else 1.0
    except ValueError:
        raise SystemExit(
            f"TC_GATE_SLOWDOWN={raw!r}: expected NAME:FACTOR, e.g. decide:1.3"
        ) from None


def _timed(fn: Callable[[], object], rounds: int, *, repeat: int = 1, slow: float = 1.0) -> float:
    """The least of ``rounds`` timings of ``repeat`` calls of ``fn`` (with an injected
    slowdown), per call."""
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        gc.disable()  # a collection inside one timing and not the other is noise
        try:
            start = time.perf_counter()
            for _ in range(repeat):
                fn()
            took = time.perf_counter() - start
        finally:
            gc.enable()
        if slow > 1.0:  # the injected regression: a busy wait of the extra share
            until = time.perf_counter() + took * (slow - 1.0)
            while time.perf_counter() < until:
                pass
            took = time.perf_counter() - start
        best = min(best, took)
    return best / repeat


def _workload(tasks: int, seed: int) -> tuple[State, list[AnyEvent], list[AnyEvent]]:
    """(the submitted state, its submission events, a finished simulated run's journal)."""
    specs = dag_tasks(tasks, seed)
    project = project_spec(Path("/simulated/gate"))
    submitted = BacklogSubmitted(at=0.0, source="gate", projects=[project], tasks=specs)
    state = State()
    apply(state, submitted)
    request = SubmitRequest(source="gate", projects=[project], tasks=specs)
    sim = Simulator(request, SchedulerConfig(max_agents=50), seed=seed)
    sim.run()
    return state, [submitted], list(sim.journal)


def measure(rounds: int, tasks: int, seed: int) -> dict[str, dict[str, float]]:
    name_slow, factor = _slowdown()
    state, submission, journal = _workload(tasks, seed)
    config = SchedulerConfig(max_agents=50)
    specs = [r.spec for r in state.tasks.values()]

    def floor_decide() -> object:
        return sum(r.unfinished_deps + len(r.spec.depends_on) for r in state.tasks.values())

    def floor_fold() -> object:
        """Python work per event of the same journal: a lookup and two counters."""
        seen: dict[type, int] = {}
        fields = 0
        for event in journal:
            kind = type(event)
            seen[kind] = seen.get(kind, 0) + 1
            fields += len(kind.__struct_fields__)
        return fields

    def fold_journal() -> State:
        fresh = State()
        for event in journal:
            apply(fresh, event)
        return fresh

    pairs: dict[str, tuple[Callable[[], object], Callable[[], object], int]] = {
        "decide": (lambda: decide(state, 1.0, config), floor_decide, 100),
        "fold": (fold_journal, floor_fold, 1),
        "snapshot": (
            lambda: snapshot.encode(state),
            lambda: msgspec.msgpack.encode(specs),
            30,
        ),
        "profile": (lambda: profile(journal), fold_journal, 1),
    }
    """name: (ours, its floor, calls per timing: enough for ~10 ms, above timer noise)"""
    del submission
    out: dict[str, dict[str, float]] = {}
    for name, (ours, floor, repeat) in pairs.items():
        slow = factor if name == name_slow else 1.0
        ours_s = _timed(ours, rounds, repeat=repeat, slow=slow)
        floor_s = _timed(floor, rounds, repeat=repeat)
        out[name] = {"seconds": ours_s, "floor_s": floor_s, "ratio": ours_s / floor_s}
    return out


def compare(
    now: dict[str, dict[str, float]], baseline: dict[str, Any], threshold: float
) -> list[str]:
    """The regressions: figures whose ratio grew more than ``threshold``."""
    problems = []
    for name, figures in now.items():
        before = baseline.get("figures", {}).get(name)
        if before is None:
            continue
        growth = figures["ratio"] / before["ratio"] - 1
        if growth > threshold:
            problems.append(
                f"{name}: ratio {figures['ratio']:.3f} vs baseline {before['ratio']:.3f}"
                f" (+{growth:.0%} > {threshold:.0%})"
            )
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", type=Path, help="baseline JSON to compare with")
    parser.add_argument("--save", type=Path, help="write the figures as a new baseline")
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--confirm",
        type=int,
        default=2,
        help="measure up to this many times: a regression must show in every one [2]",
    )
    parser.add_argument("--tasks", type=int, default=TASKS)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    random.seed(args.seed)
    baseline: dict[str, Any] | None = None
    if args.compare is not None:
        try:
            baseline = json.loads(args.compare.read_text())
        except (OSError, ValueError) as exc:
            print(f"gate: cannot read the baseline {args.compare}: {exc}", file=sys.stderr)
            return 2
    figures = measure(args.rounds, args.tasks, args.seed)
    result: dict[str, Any] = {"tasks": args.tasks, "rounds": args.rounds, "figures": figures}
    problems: list[str] = []
    if baseline is not None:
        problems = compare(figures, baseline, args.threshold)
        for _ in range(args.confirm - 1):
            if not problems:
                break
            # A busy machine slows one timing now and then: a regression must reproduce.
            again = measure(args.rounds, args.tasks, args.seed)
            repeated = {p.split(":")[0] for p in compare(again, baseline, args.threshold)}
            problems = [p for p in problems if p.split(":")[0] in repeated]
        result["baseline"] = str(args.compare)
        result["regressions"] = problems
    if args.save is not None:
        # A baseline is the median of a few measurements: one lucky run must not make
        # every later one look slow.
        runs = [figures] + [measure(args.rounds, args.tasks, args.seed) for _ in range(4)]
        result["figures"] = figures = {
            name: {
                key: statistics.median(run[name][key] for run in runs)
                for key in ("seconds", "floor_s", "ratio")
            }
            for name in figures
        }
        args.save.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for name, f in figures.items():
            print(
                f"{name:<9} {f['seconds'] * 1000:8.2f} ms  floor {f['floor_s'] * 1000:7.2f} ms"
                f"  ratio {f['ratio']:.3f}"
            )
        for line in problems:
            print(f"REGRESSION {line}")
        if args.compare is not None and not problems:
            print(f"gate: no ratio grew more than {args.threshold:.0%} over {args.compare}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
