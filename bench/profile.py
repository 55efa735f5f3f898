"""Profiler benchmark: what the always-on spans cost, and the orchestrator's share of
task latency with supervisors forked from the warm launcher against started directly.

Run from the repository root::

    python -m bench.profile            # the full run (a few minutes on 2 cores)
    python -m bench.profile --quick    # a small run for smoke tests
    python -m bench.profile --json     # the same numbers as one JSON object

Numbers are reported, never asserted (exit code 0 whatever they are).

(a) Span overhead: ``bench.scheduling``'s workload (a seeded DAG of no-op ``sim``
    tasks) with ``[profile] spans`` on and off, ``--repeat`` interleaved pairs; the
    best of each for tasks/s and for the loop thread's CPU per task (goal: CPU on/off
    ≤ 1.02, i.e. < 2% overhead); beside it one span's own cost (``timeit``) times the
    spans per task, as a share of the loop's CPU per task, which the noise of a
    shared machine does not blur.
(b) Task latency: ``--tasks`` ``command`` agents (``/bin/sh -c 'echo hi'``) in
    ``--chains`` dependency chains through a real ``tc run --max-agents 10`` process,
    once with ``fork_supervisors = false`` (a new interpreter per supervisor, as
    before) and once with the launcher; ``domain.profile`` reads each journal:
    ready → agent started, and a dependency's agent exit → its dependent's agent
    start, p50 and p99 (goal: both p50 ≥ 25% lower with the launcher).
(c) ``--claude``: the same comparison with the real Claude Code CLI (the SDK's bundled
    one) against the local Anthropic-protocol server, ``--claude-chains`` chains of 4
    tasks at 4 agents: ready → the agent's first output, and dependency exit →
    dependent start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.helpers import journal_events

from bench.scheduling import dag_tasks, make_app, submit, verify_journal
from trafficcontrol.domain.profile import Stat, profile
from trafficcontrol.runtime.stats import Spans


def run_spans(n: int, concurrency: int, seed: int, *, spans: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tc-bench-profile-a-") as tmp:
        root = Path(tmp)
        app = make_app(root / "state", concurrency)
        submit(app, root, dag_tasks(n, seed))
        orch = app.orchestrator()
        orch.stats.spans.enabled = spans
        orch.recover()
        cpu = time.thread_time()
        start = time.perf_counter()
        asyncio.run(orch.run(until_idle=True))
        wall = time.perf_counter() - start
        cpu = time.thread_time() - cpu
        observed = sum(h.count for h in orch.stats.spans.histograms.values())
        app.close()
        result = verify_journal(root / "state" / "journal.db", n)
    result.update(
        spans=spans,
        run_wall_s=wall,
        loop_cpu_us_per_task=cpu / n * 1e6,
        spans_observed=observed,
    )
    return result


def backlog(root: Path, tasks: int, chains: int) -> Path:
    (root / "w").mkdir(parents=True, exist_ok=True)
    lines = [
        "[[projects]]",
        'id = "w"',
        'path = "w"',
        'agent = "command"',
        'command = ["/bin/sh", "-c", "echo hi"]',
        "lock_in_place = false",
        "",
    ]
    per_chain = max(1, tasks // chains)
    for c in range(chains):
        for i in range(per_chain):
            lines += ["[[tasks]]", f'id = "c{c}-{i}"', 'project = "w"', 'prompt = "x"']
            if i:
                lines.append(f'depends_on = ["c{c}-{i - 1}"]')
            lines.append("")
    path = root / "backlog.toml"
    path.write_text("\n".join(lines))
    return path


def run_latency(tasks: int, chains: int, *, fork: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tc-bench-profile-b-") as tmp:
        root = Path(tmp)
        home = root / "home"
        home.mkdir()
        (home / "config.toml").write_text(
            f"[run]\nfork_supervisors = {'true' if fork else 'false'}\n"
        )
        env = {**os.environ, "TC_HOME": str(home)}
        tc = [sys.executable, "-m", "trafficcontrol"]
        subprocess.run(
            [*tc, "submit", str(backlog(root, tasks, chains))],
            env=env,
            check=True,
            capture_output=True,
        )
        start = time.perf_counter()
        subprocess.run(
            [*tc, "run", "--no-live", "--max-agents", "10"],
            env=env,
            check=True,
            capture_output=True,
            timeout=600,
        )
        wall = time.perf_counter() - start
        result = profile(journal_events(home))
    return {
        "fork_supervisors": fork,
        "wall_s": wall,
        "makespan_s": result.makespan_s,
        "attempts": len(result.attempts),
        "ready_to_agent_p50_s": result.orchestration.p50,
        "ready_to_agent_p99_s": result.orchestration.p99,
        "exit_to_dependent_p50_s": result.handoffs.p50,
        "exit_to_dependent_p99_s": result.handoffs.p99,
        "spawn_p50_s": result.phases["spawn"].p50,
        "teardown_p50_s": result.phases["teardown"].p50,
        "bottlenecks": [
            {"phase": p, "seconds": s, "share": share} for p, s, share in result.bottlenecks()
        ],
    }


def span_cost_us() -> float:
    """One span's own cost (two clock reads, the histogram), best of five timings."""
    import timeit

    spans = Spans()
    clock = time.monotonic

    def one() -> None:
        started = clock()
        spans.observe("fold", started, clock())

    return min(timeit.repeat(one, number=100_000, repeat=5)) / 100_000 * 1e6


def run_claude(chains: int, per_chain: int, *, fork: bool) -> dict[str, Any]:
    """(c): real Claude Code tasks through ``tc run --max-agents 4`` against the local
    Anthropic-protocol server (``tests/provider``), each answering at once."""
    from tests.helpers import git_repo
    from tests.provider.fixtures import offline_claude_env
    from tests.provider.server import ProviderServer

    with tempfile.TemporaryDirectory(prefix="tc-bench-profile-c-") as tmp:
        root = Path(tmp)
        git_repo(root / "repo")
        lines = [
            "[[projects]]",
            'id = "r"',
            'path = "repo"',
            'agent = "claude"',
            'model = "sonnet"',
        ]
        for c in range(chains):
            for i in range(per_chain):
                lines += ["", "[[tasks]]", f'id = "c{c}-{i}"', 'project = "r"', 'prompt = "hi"']
                if i:
                    lines.append(f'depends_on = ["c{c}-{i - 1}"]')
        (root / "b.toml").write_text("\n".join(lines) + "\n")
        (root / "home").mkdir()
        (root / "home" / "config.toml").write_text(
            f"[run]\nfork_supervisors = {'true' if fork else 'false'}\n"
        )
        with ProviderServer() as provider:
            env = {
                **os.environ,
                "TC_HOME": str(root / "home"),
                **offline_claude_env(provider.url, root / "claude"),
            }
            tc = [sys.executable, "-m", "trafficcontrol"]
            subprocess.run(
                [*tc, "submit", str(root / "b.toml")], env=env, check=True, capture_output=True
            )
            subprocess.run(
                [*tc, "run", "--no-live", "--max-agents", "4"],
                env=env,
                check=True,
                capture_output=True,
                timeout=600,
            )
        result = profile(journal_events(root / "home"))
    firsts = sorted(
        a.first_output_at - a.ready_at
        for a in result.attempts
        if a.first_output_at is not None and a.ready_at is not None
    )
    first = Stat.of(firsts)
    return {
        "fork_supervisors": fork,
        "attempts": len(result.attempts),
        "makespan_s": result.makespan_s,
        "ready_to_first_output_p50_s": first.p50,
        "ready_to_first_output_p99_s": first.p99,
        "exit_to_dependent_p50_s": result.handoffs.p50,
        "exit_to_dependent_p99_s": result.handoffs.p99,
    }


def _ratio(on: float, off: float) -> float:
    return on / off if off else float("nan")


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    on: list[dict[str, Any]] = []
    off: list[dict[str, Any]] = []
    for i in range(args.repeat):
        print(f"  .. (a) {i + 1}/{args.repeat}: spans on, then off", file=sys.stderr)
        on.append(run_spans(args.spans_tasks, 50, args.seed + i, spans=True))
        off.append(run_spans(args.spans_tasks, 50, args.seed + i, spans=False))
    # The best of each (least disturbed by the rest of the machine), as bench.gate does.
    tps_on = max(r["tasks_per_s"] for r in on)
    tps_off = max(r["tasks_per_s"] for r in off)
    cpu_on = min(r["loop_cpu_us_per_task"] for r in on)
    cpu_off = min(r["loop_cpu_us_per_task"] for r in off)
    span_us = span_cost_us()
    per_task = statistics.median(r["spans_observed"] for r in on) / args.spans_tasks
    print("  .. (b) task latency: supervisors started directly, then forked", file=sys.stderr)
    before = run_latency(args.tasks, args.chains, fork=False)
    after = run_latency(args.tasks, args.chains, fork=True)
    cut = {
        key: 1 - _ratio(after[key], before[key])
        for key in (
            "ready_to_agent_p50_s",
            "ready_to_agent_p99_s",
            "exit_to_dependent_p50_s",
            "exit_to_dependent_p99_s",
            "makespan_s",
        )
    }
    claude: dict[str, Any] | None = None
    if args.claude:
        print("  .. (c) Claude Code at 4 agents: direct start, then forked", file=sys.stderr)
        claude_before = run_claude(args.claude_chains, 4, fork=False)
        claude_after = run_claude(args.claude_chains, 4, fork=True)
        claude = {
            "before": claude_before,
            "after": claude_after,
            "cut": {
                key: 1 - _ratio(claude_after[key], claude_before[key])
                for key in claude_before
                if key.endswith("_s")
            },
        }
    return {
        "claude": claude,
        "spans": {
            "tasks": args.spans_tasks,
            "repeat": args.repeat,
            "tasks_per_s_on": tps_on,
            "tasks_per_s_off": tps_off,
            "ratio": _ratio(tps_on, tps_off),
            "loop_cpu_us_per_task_on": cpu_on,
            "loop_cpu_us_per_task_off": cpu_off,
            "cpu_ratio": _ratio(cpu_on, cpu_off),
            "spans_observed_per_run": statistics.median(r["spans_observed"] for r in on),
            "span_cost_us": span_us,
            "computed_overhead": span_us * per_task / cpu_off if cpu_off else float("nan"),
            "exactly_once": all(r["verified"] for r in on + off),
        },
        "latency": {"before": before, "after": after, "cut": cut},
        "pass": {
            "span_overhead_lt_2pct": _ratio(cpu_on, cpu_off) <= 1.02,
            "ready_to_agent_p50_cut_25pct": cut["ready_to_agent_p50_s"] >= 0.25,
            "exit_to_dependent_p50_cut_25pct": cut["exit_to_dependent_p50_s"] >= 0.25,
        },
    }


def report(r: dict[str, Any]) -> str:
    s, lat = r["spans"], r["latency"]
    b, a, cut = lat["before"], lat["after"], lat["cut"]
    lines = [
        "TrafficControl profiler bench (2 cores: every number is beside its floor, same run)",
        f"(a) spans on/off, {s['tasks']:,} sim tasks, {s['repeat']} pairs: "
        f"{s['tasks_per_s_on']:,.0f} vs {s['tasks_per_s_off']:,.0f} tasks/s = {s['ratio']:.3f}x;"
        f" loop CPU/task {s['loop_cpu_us_per_task_on']:.1f} vs"
        f" {s['loop_cpu_us_per_task_off']:.1f} µs = {s['cpu_ratio']:.3f}x;"
        f" {s['spans_observed_per_run']:,.0f} spans per run; one span costs"
        f" {s['span_cost_us']:.2f} µs: {s['computed_overhead']:.2%} of the loop's CPU per task",
        f"(b) {b['attempts']} command tasks at 10 agents   direct start   launcher   cut",
    ]
    for key, label in (
        ("ready_to_agent_p50_s", "ready → agent started p50"),
        ("ready_to_agent_p99_s", "ready → agent started p99"),
        ("exit_to_dependent_p50_s", "dep. exit → dependent start p50"),
        ("exit_to_dependent_p99_s", "dep. exit → dependent start p99"),
        ("makespan_s", "makespan"),
    ):
        lines.append(f"    {label:<32} {b[key]:>8.3f} s   {a[key]:>7.3f} s   {cut[key]:>5.0%}")
    if r.get("claude"):
        cb, ca, cc = r["claude"]["before"], r["claude"]["after"], r["claude"]["cut"]
        lines.append(
            f"(c) {cb['attempts']} Claude Code tasks at 4 agents   direct start   launcher"
        )
        for key, label in (
            ("ready_to_first_output_p50_s", "ready → first output p50"),
            ("ready_to_first_output_p99_s", "ready → first output p99"),
            ("exit_to_dependent_p50_s", "dep. exit → dependent start p50"),
            ("exit_to_dependent_p99_s", "dep. exit → dependent start p99"),
            ("makespan_s", "makespan"),
        ):
            lines.append(f"    {label:<32} {cb[key]:>8.3f} s   {ca[key]:>7.3f} s   {cc[key]:>5.0%}")
    lines.append(
        "pass: " + ", ".join(f"{k}={'PASS' if v else 'MISS'}" for k, v in r["pass"].items())
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans-tasks", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--chains", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--claude", action="store_true", help="also (c): the real Claude Code CLI, 4 agents"
    )
    parser.add_argument("--claude-chains", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="small and fast (smoke test)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.spans_tasks, args.repeat, args.tasks, args.chains = 500, 1, 20, 4
    result = run_all(args)
    print(json.dumps(result, indent=1) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
