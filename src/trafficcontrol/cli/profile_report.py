"""What ``tc profile --json`` and ``/api/profile`` show (``domain.profile``), and the
operation spans ``tc run`` leaves in the state home at exit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trafficcontrol.domain.profile import PHASES, Operations, Profile, Stat, recommend

PROFILE_FILE = "profile.json"
"""Where ``tc run`` leaves its operation spans at exit (``runtime.stats.Spans``)."""


def save_spans(path: Path, summary: Operations) -> None:
    """Written atomically: a reader sees the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(path)


def read_saved(path: Path) -> Operations | None:
    """The saved spans, or None (absent or unreadable: the profile is the journal's)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        return None
    return data


def stat_dict(stat: Stat) -> dict[str, Any]:
    return {
        "count": stat.count,
        "total_s": stat.total,
        "p50_s": stat.p50,
        "p99_s": stat.p99,
        "max_s": stat.max,
    }


def profile_dict(
    result: Profile, *, max_agents: int, cores: int, operations: Operations | None = None
) -> dict[str, Any]:
    """``tc profile --json`` and ``/api/profile``; ``operations`` are the spans of the
    orchestrator that ran (live, or saved in ``<home>/profile.json`` at its exit)."""
    return {
        "operations": dict(operations or {}),
        "makespan_s": result.makespan_s,
        "attempts": len(result.attempts),
        "tasks": len({a.task_id for a in result.attempts}),
        "phases": [{"phase": p, **stat_dict(result.phases[p])} for p in PHASES],
        "orchestration": stat_dict(result.orchestration),
        "dependency_gaps": stat_dict(result.dependency_gaps),
        "handoffs": stat_dict(result.handoffs),
        "critical_path": [
            {"task": s.task_id, "attempt": s.attempt_id, "gap_s": s.gap_s, "phases": s.phases}
            for s in result.critical_path
        ],
        "critical_path_by_phase": result.path_by_phase,
        "critical_path_orchestration_s": result.path_orchestration_s,
        "bottlenecks": [
            {"phase": phase, "seconds": seconds, "share": share}
            for phase, seconds, share in result.bottlenecks()
        ],
        "recommendations": [
            {"text": r.text, "figure": r.figure, "key": r.key}
            for r in recommend(result, max_agents=max_agents, cores=cores, operations=operations)
        ],
    }
